//! Request-framing guard for HTTP/1 client connections.
//!
//! hyper resolves a request that carries both `Content-Length` and `Transfer-Encoding` by
//! dropping the length (RFC 9112 §6.3), and when `Transfer-Encoding` comes first the length
//! leaves no trace in the `Request` a service sees. tollgate must answer such a request with 400
//! and close the connection (request-smuggling defence), so this module sits *under* hyper's
//! HTTP/1 server: [`FramingGuard`] passes every byte through unchanged and, as hyper reads them,
//! tracks request boundaries exactly as hyper frames them, recording per request index any
//! [`FramingViolation`] in a shared [`FramingVerdicts`] that the service queries.
//!
//! Owns: finding request heads and skipping bodies (`Content-Length`, chunked) in the raw
//! stream; the verdict for each request index; bounding the memory that costs per connection.
//!
//! Does not own: answering a violation (the service does: 400, `connection: close`); enforcing
//! anything on HTTP/2 (after the client preface nothing is tracked); looking inside upgraded or
//! CONNECT tunnels beyond what it takes to fail fast; TLS.
//!
//! Why tracking goes on after a CONNECT or `Upgrade:` head: hyper only switches protocols when
//! the service answers 2xx to CONNECT or 101; otherwise the connection stays HTTP/1 and the next
//! request must be judged like any other. Tunnel bytes that follow a real switch fail to parse
//! at once (TLS, WebSocket frames), which records a violation for an index hyper will never
//! dispatch, and stops tracking. The service may also call [`FramingVerdicts::stop_tracking`]
//! once it has switched protocols.
//!
//! The head parser is `httparse` with its default configuration, the same parser and
//! configuration hyper's HTTP/1 server uses, so both sides agree on where each head ends. If
//! hyper is configured more leniently (`ignore_invalid_headers(true)`), the guard records
//! `Malformed` for heads hyper would accept: it fails closed, never open.

mod chunked;
mod tracker;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tracker::Tracker;

/// The HTTP/2 client connection preface; hyper-util's auto server serves HTTP/2 when a
/// connection starts with exactly these bytes, so HTTP/1 framing no longer applies.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header slots tried before falling back to a heap array; hyper's own default limit.
const INLINE_HEADERS: usize = 100;

/// Largest body length hyper accepts (`DecodedLength::MAX_LEN`); above it hyper rejects.
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// A head buffer larger than this is freed after use rather than kept for the next request,
/// so an idle keep-alive connection holds little memory.
const RETAINED_HEAD_CAPACITY: usize = 4096;

/// Sentinel for "no violation recorded" in [`FramingVerdicts`].
const NO_VIOLATION: u64 = u64::MAX;

/// Why a request on an HTTP/1 connection must be refused: its framing is ambiguous, too large
/// or was not seen. Every variant means "answer 400 and close the connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum FramingViolation {
    /// Both `Content-Length` and `Transfer-Encoding` were sent; hyper would silently prefer the
    /// chunked framing while a peer might use the length — the classic smuggling shape.
    #[error("request has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding = 1,
    /// Several `Content-Length` headers disagree, so the body length is ambiguous.
    #[error("request has Content-Length headers with different values")]
    ConflictingContentLength = 2,
    /// The request head exceeded the configured limit; the guard stops buffering it.
    #[error("request head is larger than the configured limit")]
    HeadersTooLarge = 3,
    /// The head or framing could not be parsed (hyper rejects these itself), or an earlier
    /// body on the connection was malformed so later request boundaries are unknown.
    #[error("request framing could not be parsed")]
    Malformed = 4,
    /// The guard never saw this request's head: the guard is not wired under the connection
    /// that produced the request, or the caller's request counter is off. Fails closed.
    #[error("request head was not observed by the framing guard")]
    Unobserved = 5,
}

impl FramingViolation {
    /// A stable snake_case name, for the decision log and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Self::ConflictingContentLength => "conflicting_content_length",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Malformed => "malformed",
            Self::Unobserved => "unobserved",
        }
    }

    /// Decodes the value stored in [`FramingVerdicts`]; anything unexpected fails closed.
    pub(super) fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::ContentLengthWithTransferEncoding,
            2 => Self::ConflictingContentLength,
            3 => Self::HeadersTooLarge,
            5 => Self::Unobserved,
            _ => Self::Malformed,
        }
    }
}

/// Per-connection verdicts, shared between the [`FramingGuard`] (which writes them while hyper
/// reads) and the service (which asks about each request it is handed). Lock-free: the guard is
/// the only writer and records at most one violation, after which it stops tracking.
#[derive(Debug)]
pub struct FramingVerdicts {
    /// How many request heads the guard has completed.
    heads_seen: AtomicU64,
    /// Index of the first violating request, or [`NO_VIOLATION`].
    violation_at: AtomicU64,
    /// The violation at `violation_at`, as `FramingViolation as u8`.
    violation: AtomicU8,
    /// Tracking ended without a violation (HTTP/2 preface, or `stop_tracking`).
    untracked: AtomicBool,
}

impl FramingVerdicts {
    pub(super) fn new() -> Self {
        Self {
            heads_seen: AtomicU64::new(0),
            violation_at: AtomicU64::new(NO_VIOLATION),
            violation: AtomicU8::new(0),
            untracked: AtomicBool::new(false),
        }
    }

    /// The verdict for the `request_index`-th request on the connection (0 for the first),
    /// so the service can refuse it before doing any work. `None` means its framing is sound.
    ///
    /// Once a violation is recorded for request `k`, every request `>= k` carries it too: the
    /// guard stopped tracking there, so later boundaries are unknown (and the service closes
    /// the connection after answering `k` anyway). A request whose head the guard has not seen
    /// gets [`FramingViolation::Unobserved`] unless tracking was stopped without a violation.
    pub fn verdict(&self, request_index: u64) -> Option<FramingViolation> {
        // Load order pairs with the guard's store order: violation before heads_seen.
        let seen = self.heads_seen.load(Ordering::Acquire);
        let at = self.violation_at.load(Ordering::Acquire);
        if at != NO_VIOLATION && request_index >= at {
            return Some(FramingViolation::from_u8(
                self.violation.load(Ordering::Relaxed),
            ));
        }
        if request_index < seen || self.untracked.load(Ordering::Acquire) {
            None
        } else {
            Some(FramingViolation::Unobserved)
        }
    }

    /// How many request heads the guard has read so far; for diagnostics and assertions.
    pub fn heads_seen(&self) -> u64 {
        self.heads_seen.load(Ordering::Acquire)
    }

    /// Tells the guard the connection has switched protocols (2xx to CONNECT, or 101), so the
    /// tunnel's bytes are not parsed as HTTP/1. Calling it in any other situation removes the
    /// smuggling defence for the rest of the connection.
    pub fn stop_tracking(&self) {
        self.untracked.store(true, Ordering::Release);
    }

    /// Records the first violation; the guard stops tracking right after, so there is no second.
    pub(super) fn record(&self, request_index: u64, violation: FramingViolation) {
        if self.violation_at.load(Ordering::Relaxed) != NO_VIOLATION {
            return;
        }
        tracing::debug!(
            request_index,
            violation = violation.as_str(),
            "HTTP/1 request framing violation"
        );
        self.violation.store(violation as u8, Ordering::Relaxed);
        self.violation_at.store(request_index, Ordering::Release);
    }
}

/// An HTTP/1 client connection wrapped so that every byte hyper reads is also run through a
/// request-framing tracker, because hyper hides the framing facts the proxy must refuse on.
///
/// Place it directly around the accepted stream (or the TLS stream), under hyper:
/// `http1::Builder::new().serve_connection(TokioIo::new(guard), service)`. Bytes pass through
/// unchanged in both directions. Memory per connection is bounded by about
/// `max_header_bytes`; bodies are skipped by counting, not buffered.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    inner: IO,
    tracker: Tracker,
}

impl<IO> FramingGuard<IO> {
    /// Wraps `inner` and returns the verdicts the service should consult for each request;
    /// a request head longer than `max_header_bytes` gets [`FramingViolation::HeadersTooLarge`].
    pub fn new(inner: IO, max_header_bytes: usize) -> (Self, Arc<FramingVerdicts>) {
        let verdicts = Arc::new(FramingVerdicts::new());
        let guard = Self {
            inner,
            tracker: Tracker::new(max_header_bytes, Arc::clone(&verdicts)),
        };
        (guard, verdicts)
    }

    /// The wrapped stream, e.g. for its peer address. Reading from it directly would bypass
    /// the tracker, hence no `get_mut`.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Unwraps the stream once HTTP/1 framing no longer matters.
    pub fn into_inner(self) -> IO {
        self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // Track before returning: hyper can only parse (and dispatch) what we hand back, so the
        // verdict for a request is in place before the service is called for it.
        if let Some(new) = buf.filled().get(before..) {
            this.tracker.feed(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
