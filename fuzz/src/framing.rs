//! Fuzz target `framing`: the HTTP/1 framing guard (`tollgate::server::framing`) under hyper's
//! own HTTP/1 server, differentially. The input is a raw client byte stream; its first byte
//! says where to splice in a CL+TE smuggler (`0xff`: nowhere). Properties:
//! - no panic, and the connection ends within a bound after the client closes (no hang);
//! - every request hyper dispatches whose path is the smuggler's (`/smuggle`, when the input
//!   does not contain that path itself) carries a verdict: the guard never lets the smuggler
//!   through, whatever bytes surround it;
//! - every request hyper dispatches is one the guard saw (`heads_seen` is ahead of it).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::server::framing::{FramingGuard, FramingViolation};

/// The head limit the guard enforces in this target (small, so the limit is reached).
const MAX_HEAD: usize = 4 * 1024;
/// The smuggler spliced into the stream.
const SMUGGLER: &[u8] =
    b"POST /smuggle HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let own_marker = rest.windows(8).any(|w| w == b"/smuggle");
    let mut stream = rest.to_vec();
    if at != 0xff {
        let pos = usize::from(at) * stream.len() / 254;
        let pos = pos.min(stream.len());
        stream.splice(pos..pos, SMUGGLER.iter().copied());
    }
    let check_smuggler = at != 0xff && !own_marker;
    RUNTIME.with(|rt| rt.block_on(serve(stream, check_smuggler)));
}

/// What hyper dispatched: (request index, path, the guard's verdict, heads the guard had seen).
type Seen = Vec<(u64, String, Option<FramingViolation>, u64)>;

async fn serve(stream: Vec<u8>, check_smuggler: bool) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (guard, verdicts) = FramingGuard::new(server, MAX_HEAD);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let next = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let verdict = verdicts.verdict(index);
        if let Ok(mut seen) = record.lock() {
            seen.push((
                index,
                req.uri().path().to_owned(),
                verdict,
                verdicts.heads_seen(),
            ));
        }
        async move {
            if verdict.is_some() {
                let refused = Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("connection", "close")
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
                return Ok::<_, Infallible>(refused);
            }
            let _ = req.body_mut().collect().await;
            Ok(Response::new(Full::new(Bytes::new())))
        }
    });
    let conn = tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(guard), service),
    );
    for piece in stream.chunks(61) {
        if client.write_all(piece).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let _ = client.shutdown().await;
    let mut out = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
    assert!(finished.is_ok(), "the connection did not end (a hang)");
    let _ = conn.await;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    for (index, path, verdict, heads_seen) in seen {
        if verdict.is_none() {
            assert!(
                heads_seen > index,
                "request {index} dispatched without the guard seeing its head"
            );
        }
        if check_smuggler && path == "/smuggle" {
            assert!(
                verdict.is_some(),
                "the smuggler was dispatched as request {index} without a verdict"
            );
        }
    }
}
