//! Response bodies: tollgate's own small JSON bodies, or an origin's body streamed through
//! frame by frame (never buffered), bounded by the request deadline, carrying the recorder so
//! the decision-log line is written when the stream ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::reason::Reason;

use super::record::Recorder;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response tollgate sends to an agent.
pub enum ResponseBody {
    /// A body tollgate made (errors, CONNECT answers).
    Own(Option<Bytes>),
    /// An origin's body, streamed.
    Streamed(Box<StreamedBody>),
}

/// An origin body in flight.
pub struct StreamedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    recorder: Option<Recorder>,
    /// For an HTTP/2 stream, completes when a kill cuts it (then the stream is reset with
    /// `CANCEL`); an HTTP/1 flow is cut by resetting its connection, so it has none.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// A kill cut the stream: the body ends with this error, which tells hyper to reset the
/// HTTP/2 stream with `CANCEL` (hyper reads the `h2::Error` among its sources).
#[derive(Debug, thiserror::Error)]
#[error("the flow was killed")]
pub struct Killed(#[source] h2::Error);

/// The request's total time ran out while the body was streaming.
#[derive(Debug, thiserror::Error)]
#[error("upstream.request_timeout elapsed while the response was streaming")]
pub struct StreamDeadline;

impl ResponseBody {
    /// A body of fixed bytes.
    pub fn own(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Own(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::Own(None)
    }

    /// Streams `inner` until `deadline`; `recorder` is logged when the stream ends.
    pub fn streamed(inner: Incoming, deadline: Instant, recorder: Recorder) -> ResponseBody {
        let cut = recorder
            .flow()
            .and_then(crate::kill::flows::Flow::stream_stopped)
            .map(Box::pin);
        ResponseBody::Streamed(Box::new(StreamedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            recorder: Some(recorder),
            cut,
        }))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Streamed(streamed) => streamed.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Own(bytes) => bytes.is_none(),
            ResponseBody::Streamed(streamed) => streamed.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Own(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Own(None) => SizeHint::with_exact(0),
            ResponseBody::Streamed(streamed) => streamed.inner.size_hint(),
        }
    }
}

impl Drop for StreamedBody {
    /// A body dropped unfinished after its deadline was dropped by the HTTP/2 stream backstop
    /// (`server::serve`), never polled because the agent kept its window shut: the line says
    /// `upstream_timeout`, as when the deadline is seen while streaming.
    fn drop(&mut self) {
        if let Some(recorder) = &mut self.recorder
            && Instant::now() >= self.deadline.deadline()
        {
            recorder.stream_failed(Reason::UpstreamTimeout);
        }
    }
}

impl StreamedBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = &mut self.cut
            && cut.as_mut().poll(cx).is_ready()
        {
            // The recorder (with its flow) is dropped now: the line is written at the cut.
            self.recorder = None;
            self.cut = None;
            return Poll::Ready(Some(Err(Box::new(Killed(h2::Error::from(
                h2::Reason::CANCEL,
            ))))));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            if let Some(mut recorder) = self.recorder.take() {
                recorder.stream_failed(Reason::UpstreamTimeout);
            }
            return Poll::Ready(Some(Err(Box::new(StreamDeadline))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.recorder = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut recorder) = self.recorder.take() {
                    recorder.stream_failed(Reason::UpstreamProtocol);
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(flow)) = (
                    frame.data_ref(),
                    self.recorder.as_ref().and_then(Recorder::flow),
                ) {
                    flow.to_agent(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
