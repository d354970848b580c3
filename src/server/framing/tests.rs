//! The framing guard against split, pipelined, random and mutated request streams, alone and
//! under hyper.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::FramingViolation::*;
use super::tracker::{Phase, Tracker};
use super::*;
use std::task::Context;
use tokio::io::ReadBuf;

const MAX: usize = 8 * 1024;

/// A reader that hands out the given pieces one per read, to simulate TCP splits.
struct Pieces(VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads `pieces` through a guard; returns what came out and the verdicts.
async fn run_pieces(pieces: Vec<Vec<u8>>, max: usize) -> (Vec<u8>, Arc<FramingVerdicts>) {
    // An empty read means EOF, so empty pieces are dropped.
    let pieces = pieces.into_iter().filter(|p| !p.is_empty()).collect();
    let (mut guard, verdicts) = FramingGuard::new(Pieces(pieces), max);
    let mut out = Vec::new();
    guard.read_to_end(&mut out).await.unwrap();
    (out, verdicts)
}

async fn run(input: &[u8]) -> Arc<FramingVerdicts> {
    let (out, verdicts) = run_pieces(vec![input.to_vec()], MAX).await;
    assert_eq!(out, input, "bytes must pass through unchanged");
    verdicts
}

fn first(verdicts: &FramingVerdicts, n: u64) -> Vec<Option<FramingViolation>> {
    (0..n).map(|i| verdicts.verdict(i)).collect()
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n";
const CL_THEN_TE: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
const TE_THEN_CL: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
    Content-Length: 4\r\n\r\n0\r\n\r\n";

/// A keep-alive stream whose bodies contain request-looking text, ending in a CL+TE.
fn mixed_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(GET);
    // The CL body looks like a smuggled request; it must be skipped, not parsed.
    let body = b"GET /evil HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.extend_from_slice(
        format!(
            "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    s.extend_from_slice(body);
    s.extend_from_slice(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value;x\r\nhello\r\n1A\r\nGET / HTTP/1.1\r\n\r\nabcdefgh\r\n\
          0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n",
    );
    s.extend_from_slice(b"\r\n"); // a stray empty line between requests, as httparse allows
    s.extend_from_slice(b"GET /d HTTP/1.1\nHost: bare-lf\n\n");
    s.extend_from_slice(TE_THEN_CL);
    s
}

const MIXED_VERDICTS: [Option<FramingViolation>; 5] = [
    None,
    None,
    None,
    None,
    Some(ContentLengthWithTransferEncoding),
];

#[tokio::test]
async fn accepts_plain_get() {
    let v = run(GET).await;
    assert_eq!(v.verdict(0), None);
    assert_eq!(v.heads_seen(), 1);
}

#[tokio::test]
async fn rejects_request_index_not_yet_observed() {
    let v = run(GET).await;
    assert_eq!(v.verdict(1), Some(Unobserved));
}

#[tokio::test]
async fn accepts_keep_alive_content_length_and_chunked_requests() {
    let mut s = mixed_stream();
    s.truncate(s.len() - TE_THEN_CL.len());
    s.extend_from_slice(GET);
    let v = run(&s).await;
    assert_eq!(v.heads_seen(), 5);
    assert_eq!(first(&v, 5), vec![None; 5]);
}

#[tokio::test]
async fn rejects_content_length_then_transfer_encoding() {
    let v = run(CL_THEN_TE).await;
    assert_eq!(v.verdict(0), Some(ContentLengthWithTransferEncoding));
}

#[tokio::test]
async fn rejects_transfer_encoding_then_content_length_on_second_request() {
    let v = run(&[GET, TE_THEN_CL].concat()).await;
    assert_eq!(
        first(&v, 2),
        vec![None, Some(ContentLengthWithTransferEncoding)]
    );
    // Tracking stopped there: later requests fail closed.
    assert_eq!(v.verdict(7), Some(ContentLengthWithTransferEncoding));
}

#[tokio::test]
async fn rejects_transfer_encoding_list_with_content_length() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\
        Content-Length: 3\r\n\r\n0\r\n\r\n";
    assert_eq!(
        run(req).await.verdict(0),
        Some(ContentLengthWithTransferEncoding)
    );
}

#[tokio::test]
async fn rejects_non_chunked_transfer_encoding_with_content_length() {
    let req = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc";
    assert_eq!(
        run(req).await.verdict(0),
        Some(ContentLengthWithTransferEncoding)
    );
}

#[tokio::test]
async fn rejects_several_transfer_encoding_lines_with_content_length() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(
        run(req).await.verdict(0),
        Some(ContentLengthWithTransferEncoding)
    );
}

#[tokio::test]
async fn rejects_transfer_encoding_not_ending_in_chunked() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
    assert_eq!(run(req).await.verdict(0), Some(Malformed));
}

#[tokio::test]
async fn rejects_transfer_encoding_in_http_1_0() {
    let req = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(run(req).await.verdict(0), Some(Malformed));
}

#[tokio::test]
async fn accepts_several_transfer_encoding_lines_ending_in_chunked() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\
        \r\n3\r\nabc\r\n0\r\n\r\n";
    let v = run(&[&req[..], GET].concat()).await;
    assert_eq!((first(&v, 2), v.heads_seen()), (vec![None, None], 2));
}

#[tokio::test]
async fn rejects_different_duplicate_content_lengths() {
    let req = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let v = run(&[GET, &req[..]].concat()).await;
    assert_eq!(first(&v, 2), vec![None, Some(ConflictingContentLength)]);
}

#[tokio::test]
async fn accepts_identical_duplicate_content_lengths() {
    let req = b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
    let v = run(&[&req[..], GET].concat()).await;
    assert_eq!((first(&v, 2), v.heads_seen()), (vec![None, None], 2));
}

#[tokio::test]
async fn rejects_content_length_that_hyper_cannot_parse() {
    for value in ["+3", "3, 3", "", "0x3", "99999999999999999999"] {
        let req = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\nabc");
        assert_eq!(
            run(req.as_bytes()).await.verdict(0),
            Some(Malformed),
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn accepts_chunked_with_extensions_and_trailers() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        4;ext=1;quoted=\"a b\"\r\nwiki\r\n5 ;x\r\npedia\r\nA \r\n0123456789\r\n\
        0;last\r\nExpires: never\r\nX-Sum: 42\r\n\r\n";
    let v = run(&[&req[..], GET, CL_THEN_TE].concat()).await;
    // The boundary after the trailers is right: the next two heads are where hyper sees them.
    assert_eq!(
        first(&v, 3),
        vec![None, None, Some(ContentLengthWithTransferEncoding)]
    );
}

#[tokio::test]
async fn rejects_requests_after_a_broken_chunked_body() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let v = run(&[&req[..], GET].concat()).await;
    assert_eq!(first(&v, 2), vec![None, Some(Malformed)]);
}

#[tokio::test]
async fn rejects_chunk_extension_with_bare_lf() {
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n";
    let v = run(&[&req[..], GET].concat()).await;
    assert_eq!(first(&v, 2), vec![None, Some(Malformed)]);
}

#[tokio::test]
async fn accepts_heads_split_at_every_byte_boundary() {
    let input = mixed_stream();
    for split in 0..=input.len() {
        let pieces = vec![input[..split].to_vec(), input[split..].to_vec()];
        let (out, v) = run_pieces(pieces, MAX).await;
        assert_eq!(out, input, "split at {split}");
        assert_eq!(first(&v, 5), MIXED_VERDICTS, "split at {split}");
    }
    let bytewise = input.iter().map(|&b| vec![b]).collect();
    let (out, v) = run_pieces(bytewise, MAX).await;
    assert_eq!(out, input);
    assert_eq!(first(&v, 5), MIXED_VERDICTS);
}

#[tokio::test]
async fn accepts_request_starting_like_the_h2_preface() {
    // "P", "PRI" match the preface's first bytes; they must be replayed, not lost.
    for req in [
        &b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"[..],
        b"PRI / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let input = [req, CL_THEN_TE].concat();
        let bytewise = input.iter().map(|&b| vec![b]).collect();
        let (out, v) = run_pieces(bytewise, MAX).await;
        assert_eq!(out, input);
        assert_eq!(
            first(&v, 2),
            vec![None, Some(ContentLengthWithTransferEncoding)]
        );
    }
}

#[tokio::test]
async fn stops_tracking_after_h2_preface() {
    let input = [H2_PREFACE, CL_THEN_TE, b"\x00\x01garbage\r\n\r\n"].concat();
    for pieces in [
        vec![input.clone()],
        input.iter().map(|&b| vec![b]).collect::<Vec<_>>(),
    ] {
        let (out, v) = run_pieces(pieces, MAX).await;
        assert_eq!(out, input);
        assert_eq!((first(&v, 3), v.heads_seen()), (vec![None; 3], 0));
    }
}

#[tokio::test]
async fn accepts_tunnel_bytes_after_connect() {
    let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    // A TLS ClientHello-like start: not HTTP, so tracking stops at its first byte.
    let tunnel: Vec<u8> = [&b"\x16\x03\x01\x02\x00"[..], &[0u8; 100_000]].concat();
    let input = [&connect[..], &tunnel].concat();
    let (mut guard, v) = FramingGuard::new(Pieces(vec![input.clone()].into()), MAX);
    let mut out = Vec::new();
    guard.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, input);
    assert_eq!(v.verdict(0), None);
    // Index 1 is never dispatched once the tunnel is up; it only fails closed.
    assert_eq!(v.verdict(1), Some(Malformed));
    assert!(matches!(guard.tracker.phase, Phase::Stopped));
    assert_eq!(guard.tracker.head.capacity(), 0);
}

#[tokio::test]
async fn stops_tracking_when_told_the_connection_switched_protocols() {
    let connect = b"CONNECT example.com:80 HTTP/1.1\r\nHost: example.com:80\r\n\r\n";
    let (mut guard, v) = FramingGuard::new(Pieces(vec![connect.to_vec()].into()), MAX);
    let mut out = Vec::new();
    guard.read_to_end(&mut out).await.unwrap();
    v.stop_tracking();
    // Plain HTTP inside the tunnel is the upstream's business, not ours.
    guard.tracker.feed(CL_THEN_TE);
    assert_eq!(first(&v, 3), vec![None; 3]);
}

#[tokio::test]
async fn rejects_smuggling_after_refused_connect_or_ignored_upgrade() {
    // hyper keeps the connection as HTTP/1 unless the answer is 2xx / 101, so the next
    // request must still be judged.
    for head in [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let v = run(&[head, TE_THEN_CL].concat()).await;
        assert_eq!(
            first(&v, 2),
            vec![None, Some(ContentLengthWithTransferEncoding)]
        );
    }
}

#[tokio::test]
async fn rejects_malformed_head_and_everything_after_it() {
    let v = run(&[GET, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", GET].concat()).await;
    assert_eq!(first(&v, 3), vec![None, Some(Malformed), Some(Malformed)]);
}

#[test]
fn rejects_oversized_head_with_bounded_memory() {
    let max = 1024;
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    while head.len() < 1_000_000 {
        head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    head.extend_from_slice(b"\r\n");
    for piece_len in [1, 7, 4096, head.len()] {
        let verdicts = Arc::new(FramingVerdicts::new());
        let mut tracker = Tracker::new(max, Arc::clone(&verdicts));
        for piece in head.chunks(piece_len) {
            tracker.feed(piece);
            assert!(tracker.head.capacity() <= max, "piece length {piece_len}");
        }
        assert_eq!(
            verdicts.verdict(0),
            Some(HeadersTooLarge),
            "piece {piece_len}"
        );
        assert_eq!(tracker.head.capacity(), 0);
    }
}

#[tokio::test]
async fn rejects_complete_head_one_byte_over_the_limit() {
    let max = GET.len() - 1;
    for pieces in [vec![GET.to_vec()], GET.iter().map(|&b| vec![b]).collect()] {
        let (_, v) = run_pieces(pieces, max).await;
        assert_eq!(v.verdict(0), Some(HeadersTooLarge));
    }
    let (_, v) = run_pieces(vec![GET.to_vec()], GET.len()).await;
    assert_eq!(v.verdict(0), None);
}

#[tokio::test]
async fn accepts_more_headers_than_the_inline_slots() {
    let mut req = b"POST / HTTP/1.1\r\n".to_vec();
    for i in 0..150 {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"Content-Length: 2\r\n\r\nhi");
    let v = run(&[&req[..], TE_THEN_CL].concat()).await;
    assert_eq!(
        first(&v, 2),
        vec![None, Some(ContentLengthWithTransferEncoding)]
    );
}

#[tokio::test]
async fn accepts_large_content_length_body_skipped_by_counting() {
    let body = vec![b'x'; 3 * 1024 * 1024];
    let head = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    let input = [head.as_bytes(), &body, CL_THEN_TE].concat();
    let pieces = input.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let (out, v) = run_pieces(pieces, MAX).await;
    assert_eq!(out, input);
    assert_eq!(
        first(&v, 2),
        vec![None, Some(ContentLengthWithTransferEncoding)]
    );
}

// ---- through a real hyper server ----

/// The service shape the proxy uses: one counter per connection, the verdict asked before
/// anything else. Refuses a framing verdict with 400 and `connection: close`, answers 403
/// to CONNECT (keeping the connection), 500 if a path `/<n>` arrives as another request
/// index than n, and 200 otherwise.
fn verdict_service(
    verdicts: Arc<FramingVerdicts>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let next_index = Arc::new(AtomicU64::new(0));
    service_fn(move |mut req: Request<Incoming>| {
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        let verdict = verdicts.verdict(index);
        async move {
            if verdict.is_none() {
                // Read the body, as the proxy does when it forwards it.
                let _ = req.body_mut().collect().await;
            }
            let path_index = req
                .uri()
                .path()
                .strip_prefix('/')
                .and_then(|p| p.parse().ok());
            let response = match verdict {
                Some(_) => Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("connection", "close")
                    .body(Full::new(Bytes::from_static(b"bad framing"))),
                None if path_index.is_some_and(|n: u64| n != index) => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::new())),
                None if req.method() == hyper::Method::CONNECT => Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .body(Full::new(Bytes::new())),
                None => Response::builder().body(Full::new(Bytes::from_static(b"ok"))),
            };
            Ok::<_, Infallible>(response.unwrap())
        }
    })
}

/// Serves one connection with hyper's HTTP/1 server over a guard and `verdict_service`;
/// returns everything the client read until EOF.
async fn serve_and_collect(raw: &[u8]) -> String {
    serve_pieces_and_collect(vec![raw.to_vec()]).await
}

/// Like `serve_and_collect`, writing `pieces` one by one.
async fn serve_pieces_and_collect(pieces: Vec<Vec<u8>>) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (guard, verdicts) = FramingGuard::new(server, MAX);
    let service = verdict_service(verdicts);
    let conn = tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(guard), service),
    );
    for piece in pieces {
        // The server may close early (that is what a 400 does); the answers tell.
        if client.write_all(&piece).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("server must close the connection")
        .unwrap();
    drop(client);
    let _ = conn.await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A small deterministic generator, so the randomized test needs no extra crate.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One request with index `i` in its path and a randomly chosen, valid framing.
fn random_request(rng: &mut XorShift, i: usize) -> Vec<u8> {
    let eol: &[u8] = if rng.below(4) == 0 { b"\n" } else { b"\r\n" };
    let mut r = Vec::new();
    if rng.below(5) == 0 {
        r.extend_from_slice(b"\r\n"); // stray empty line before the request line
    }
    let method = ["GET", "POST", "PUT"][rng.below(3) as usize];
    r.extend_from_slice(format!("{method} /{i} HTTP/1.1").as_bytes());
    r.extend_from_slice(eol);
    for h in 0..rng.below(4) {
        r.extend_from_slice(format!("X-Filler-{h}: value {h}").as_bytes());
        r.extend_from_slice(eol);
    }
    match rng.below(3) {
        0 => {
            r.extend_from_slice(eol);
        }
        1 => {
            let len = rng.below(40) as usize;
            let copies = 1 + rng.below(2);
            for _ in 0..copies {
                r.extend_from_slice(format!("Content-Length: {len}").as_bytes());
                r.extend_from_slice(eol);
            }
            r.extend_from_slice(eol);
            // Bodies that look like heads must be skipped, not parsed.
            let filler = b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\n".repeat(2);
            r.extend_from_slice(&filler[..len]);
        }
        _ => {
            r.extend_from_slice(b"Transfer-Encoding: gzip, chunked");
            r.extend_from_slice(eol);
            r.extend_from_slice(eol);
            for _ in 0..rng.below(4) {
                let len = 1 + rng.below(20) as usize;
                let ext = if rng.below(2) == 0 { ";a=b" } else { "" };
                r.extend_from_slice(format!("{len:X}{ext}\r\n").as_bytes());
                r.extend_from_slice(&b"0\r\n\r\nPOST / HTTP/1.1\r\n\r\n"[..len]);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n");
            if rng.below(2) == 0 {
                r.extend_from_slice(b"X-Trailer: yes\r\n");
            }
            r.extend_from_slice(b"\r\n");
        }
    }
    r
}

#[tokio::test]
async fn accepts_random_keep_alive_streams_through_hyper_and_rejects_the_smuggler() {
    let mut rng = XorShift(0x5eed_1234_abcd_9876);
    for _ in 0..150 {
        let n = 1 + rng.below(6) as usize;
        let mut stream = Vec::new();
        for i in 0..n {
            stream.extend_from_slice(&random_request(&mut rng, i));
        }
        let smuggle = rng.below(2) == 0;
        if smuggle {
            stream.extend_from_slice(if rng.below(2) == 0 {
                CL_THEN_TE
            } else {
                TE_THEN_CL
            });
        } else {
            stream.extend_from_slice(
                format!("GET /{n} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
            );
        }
        // Random write sizes, with a yield between writes so hyper reads them separately.
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let len = (1 + rng.below(64) as usize).min(stream.len() - at);
            pieces.push(stream[at..at + len].to_vec());
            at += len;
        }
        let out = serve_pieces_and_collect(pieces).await;
        let mut expected = vec!["200"; n];
        expected.push(if smuggle { "400" } else { "200" });
        assert_eq!(
            statuses(&out),
            expected,
            "{}",
            String::from_utf8_lossy(&stream)
        );
    }
}

/// Rewrites one random occurrence of a framing-relevant token, keeping the result
/// plausible so hyper often still accepts it and re-frames what follows.
fn mutate(rng: &mut XorShift, stream: &mut Vec<u8>) {
    const REWRITES: &[(&str, &str)] = &[
        ("Content-Length: ", "content-length:\t"),
        ("Content-Length: ", "Content-Length:  1"),
        (
            "Content-Length: ",
            "Transfer-Encoding: chunked\r\nContent-Length: ",
        ),
        ("gzip, chunked", "chunked"),
        ("gzip, chunked", "CHUNKED "),
        ("gzip, chunked", "chunked, gzip"),
        ("gzip, chunked", "chunked\r\nContent-Length: 3"),
        (" HTTP/1.1\r\n", " HTTP/1.1\r\nContent-Length: 7\r\n"),
        (
            " HTTP/1.1\r\n",
            " HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
        ),
        (" HTTP/1.1\r\n", " HTTP/1.0\r\n"),
        ("\r\n0\r\n", "\r\n0;x=y\r\n"),
        ("\r\n0\r\n", "\r\n00\r\n"),
        ("\r\n0\r\n", "\r\n0 \r\n"),
        (";a=b\r\n", ";a=b\n"),
        ("\r\n\r\n", "\n\n"),
        ("\r\n\r\n", "\r\n\n"),
        ("\r\n\r\n", "\n\r\n"),
        ("\r\n", "\n"),
        ("\r\n", "\r\r\n"),
        ("1", "2"),
        ("A", "a"),
    ];
    let (from, to) = REWRITES[rng.below(REWRITES.len() as u64) as usize];
    let hits: Vec<usize> = stream
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from.as_bytes())
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return;
    }
    let at = hits[rng.below(hits.len() as u64) as usize];
    stream.splice(at..at + from.len(), to.bytes());
}

#[tokio::test]
async fn rejects_every_smuggler_hyper_dispatches_from_mutated_streams() {
    const SMUGGLERS: &[&[u8]] = &[
        b"POST /smuggle HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /smuggle HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"GET /smuggle HTTP/1.1\ntransfer-encoding: gzip, CHUNKED\ncontent-length: 0\n\n0\r\n\r\n",
    ];
    let mut rng = XorShift(0x0dd_ba11_cafe_f00d);
    let mut dispatched_smugglers = 0;
    for round in 0..400 {
        let mut stream = Vec::new();
        for i in 0..1 + rng.below(5) as usize {
            stream.extend_from_slice(&random_request(&mut rng, i));
        }
        for _ in 0..rng.below(3) {
            mutate(&mut rng, &mut stream);
        }
        // Smugglers anywhere: between requests, inside bodies, inside heads.
        for _ in 0..rng.below(3) {
            let at = rng.below(stream.len() as u64 + 1) as usize;
            let smuggler = SMUGGLERS[rng.below(SMUGGLERS.len() as u64) as usize];
            stream.splice(at..at, smuggler.iter().copied());
        }
        stream.extend_from_slice(SMUGGLERS[0]);

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (guard, verdicts) = FramingGuard::new(server, MAX);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let next_index = Arc::new(AtomicU64::new(0));
        let service = service_fn(move |mut req: Request<Incoming>| {
            let index = next_index.fetch_add(1, Ordering::Relaxed);
            let verdict = verdicts.verdict(index);
            record
                .lock()
                .unwrap()
                .push((req.uri().path().to_owned(), verdict));
            async move {
                if verdict.is_some() {
                    let resp = Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .header("connection", "close")
                        .body(Full::new(Bytes::new()));
                    return Ok::<_, Infallible>(resp.unwrap());
                }
                let _ = req.body_mut().collect().await;
                Ok(Response::new(Full::new(Bytes::new())))
            }
        });
        let conn = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(guard), service),
        );
        let mut at = 0;
        while at < stream.len() {
            let len = (1 + rng.below(48) as usize).min(stream.len() - at);
            if client.write_all(&stream[at..at + len]).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
            at += len;
        }
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
            .await
            .expect("server must finish");
        let _ = conn.await;

        for (path, verdict) in seen.lock().unwrap().iter() {
            // A smuggler hyper dispatched must carry its verdict; anything else hyper
            // dispatched must not carry a verdict hyper's own framing contradicts.
            let expected: &[Option<FramingViolation>] = if path == "/smuggle" {
                dispatched_smugglers += 1;
                &[Some(ContentLengthWithTransferEncoding)]
            } else {
                &[None, Some(ContentLengthWithTransferEncoding)]
            };
            assert!(
                expected.contains(verdict),
                "round {round}: {path} dispatched with {verdict:?}:\n{}",
                String::from_utf8_lossy(&stream)
            );
        }
    }
    // The oracle must actually have been exercised.
    assert!(dispatched_smugglers > 50, "{dispatched_smugglers}");
}

fn statuses(responses: &str) -> Vec<&str> {
    responses
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &responses[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn rejects_cl_te_through_hyper_with_400_and_close() {
    for smuggler in [CL_THEN_TE, TE_THEN_CL] {
        // The trailing GET is pipelined behind the smuggler and must never be answered.
        let out = serve_and_collect(&[GET, smuggler, GET].concat()).await;
        assert_eq!(statuses(&out), vec!["200", "400"], "{out}");
        assert!(out.contains("connection: close"), "{out}");
    }
}

#[tokio::test]
async fn rejects_cl_te_through_hyper_after_refused_connect() {
    let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let out = serve_and_collect(&[&connect[..], TE_THEN_CL].concat()).await;
    assert_eq!(statuses(&out), vec!["403", "400"], "{out}");
}

#[tokio::test]
async fn accepts_keep_alive_through_hyper() {
    let close = b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let mut s = mixed_stream();
    s.truncate(s.len() - TE_THEN_CL.len());
    let out = serve_and_collect(&[&s[..], close].concat()).await;
    assert_eq!(statuses(&out), vec!["200"; 5], "{out}");
}

#[tokio::test]
async fn accepts_http1_and_http2_through_hyper_util_auto() {
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;

    // HTTP/1: the bytes hyper-util peeks at for the preface are tracked like any others.
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (guard, verdicts) = FramingGuard::new(server, MAX);
    let conn = tokio::spawn(async move {
        auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(guard), verdict_service(verdicts))
            .await
    });
    client.write_all(&[GET, TE_THEN_CL].concat()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&out), vec!["200", "400"], "{out}");
    drop(client);
    let _ = conn.await;

    // HTTP/2: nothing is tracked and no request is refused.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (guard, verdicts) = FramingGuard::new(server, MAX);
    let shared = Arc::clone(&verdicts);
    tokio::spawn(async move {
        auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(guard), verdict_service(shared))
            .await
    });
    let (mut sender, client_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(client_conn);
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("http://example.com/{i}"))
            .header("content-length", "2")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(verdicts.heads_seen(), 0);
}
