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

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    fn from_u8(value: u8) -> Self {
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
    fn new() -> Self {
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
    fn record(&self, request_index: u64, violation: FramingViolation) {
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

/// Where the tracker is in the request stream.
#[derive(Debug)]
enum Phase {
    /// Reading a request head (possibly not started yet).
    Head,
    /// Skipping this many remaining `Content-Length` body bytes.
    Length(u64),
    /// Walking a chunked body.
    Chunked(Chunked),
    /// Not tracking any more: a violation was recorded, or the connection left HTTP/1.
    Stopped,
}

/// The incremental framing tracker behind [`FramingGuard`].
#[derive(Debug)]
struct Tracker {
    phase: Phase,
    /// While the connection so far matches the HTTP/2 preface: how many bytes matched.
    /// Those bytes are not tracked yet; they are replayed if the preface diverges.
    preface_matched: Option<usize>,
    /// The current head, only when it spans reads; bounded by `max_header_bytes`.
    head: Vec<u8>,
    /// End-of-head scanner state for the bytes in `head`.
    scan: HeadScan,
    /// Index of the next request head.
    index: u64,
    max_header_bytes: usize,
    verdicts: Arc<FramingVerdicts>,
}

impl Tracker {
    fn new(max_header_bytes: usize, verdicts: Arc<FramingVerdicts>) -> Self {
        Self {
            phase: Phase::Head,
            preface_matched: Some(0),
            head: Vec::new(),
            scan: HeadScan::default(),
            index: 0,
            max_header_bytes,
            verdicts,
        }
    }

    /// Runs newly read bytes through the tracker.
    fn feed(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::Stopped) || data.is_empty() {
            return;
        }
        if self.verdicts.untracked.load(Ordering::Relaxed) {
            self.stop();
            return;
        }
        let Some(matched) = self.preface_matched else {
            self.track(data);
            return;
        };
        let want = H2_PREFACE.get(matched..).unwrap_or_default();
        let same = data.iter().zip(want).take_while(|(a, b)| a == b).count();
        if same == want.len() {
            // HTTP/2: hyper-util serves it as h2, where none of this applies.
            self.verdicts.untracked.store(true, Ordering::Release);
            self.stop();
        } else if same == data.len() {
            self.preface_matched = Some(matched + same);
        } else {
            self.preface_matched = None;
            if let Some(held) = H2_PREFACE.get(..matched) {
                self.track(held);
            }
            self.track(data);
        }
    }

    /// Walks `data` through heads and bodies.
    fn track(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let used = match &mut self.phase {
                Phase::Stopped => return,
                Phase::Head => self.feed_head(rest),
                Phase::Length(remaining) => {
                    // O(1) per read, whatever the body size.
                    let n = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.phase = Phase::Head;
                    }
                    n
                }
                Phase::Chunked(chunked) => match chunked.feed(rest) {
                    ChunkStep::NeedMore => rest.len(),
                    ChunkStep::Done(n) => {
                        self.phase = Phase::Head;
                        n
                    }
                    ChunkStep::Invalid => {
                        // hyper fails this body and closes; nothing after it can be framed.
                        self.fail(self.index, FramingViolation::Malformed);
                        return;
                    }
                },
            };
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    /// Consumes head bytes from `data`; returns how many belong to the head.
    fn feed_head(&mut self, data: &[u8]) -> usize {
        if self.head.is_empty() {
            // Common case: the whole head is in this read; parse it in place, no copy.
            return match parse_head(data, self.max_header_bytes) {
                HeadParse::Complete(len, outcome) => {
                    self.finish_head(len, outcome);
                    len
                }
                HeadParse::Partial => {
                    self.scan = HeadScan::default();
                    if data.len() > self.max_header_bytes {
                        self.fail(self.index, FramingViolation::HeadersTooLarge);
                    } else if self.scan.find_end(data).is_some() {
                        // httparse wants more, so the head cannot end inside `data`; if the
                        // scanner disagrees, boundaries are in doubt: fail closed.
                        self.fail(self.index, FramingViolation::Malformed);
                    } else {
                        self.append_head(data);
                    }
                    data.len()
                }
                HeadParse::TooLarge => {
                    self.fail(self.index, FramingViolation::HeadersTooLarge);
                    data.len()
                }
                HeadParse::Invalid => {
                    self.fail(self.index, FramingViolation::Malformed);
                    data.len()
                }
            };
        }
        // The head spans reads: scan only the new bytes, and parse once it has ended, so a
        // head sent byte by byte costs linear time, not a re-parse per byte.
        let Some(end) = self.scan.find_end(data) else {
            if self.head.len() + data.len() > self.max_header_bytes {
                self.fail(self.index, FramingViolation::HeadersTooLarge);
            } else {
                self.append_head(data);
            }
            return data.len();
        };
        if self.head.len() + end > self.max_header_bytes {
            self.fail(self.index, FramingViolation::HeadersTooLarge);
            return end;
        }
        self.append_head(data.get(..end).unwrap_or_default());
        match parse_head(&self.head, self.max_header_bytes) {
            HeadParse::Complete(len, outcome) if len == self.head.len() => {
                self.release_head();
                self.finish_head(len, outcome);
            }
            HeadParse::TooLarge => self.fail(self.index, FramingViolation::HeadersTooLarge),
            // Invalid, or httparse and the scanner disagree on where the head ends (which the
            // grammar rules out): either way the boundaries are in doubt, so fail closed.
            HeadParse::Complete(..) | HeadParse::Partial | HeadParse::Invalid => {
                self.fail(self.index, FramingViolation::Malformed);
            }
        }
        end
    }

    /// Records the outcome of a complete head of `len` bytes and moves on to its body.
    fn finish_head(&mut self, len: usize, outcome: HeadOutcome) {
        let index = self.index;
        self.index += 1;
        let violation = if len > self.max_header_bytes {
            Some(FramingViolation::HeadersTooLarge)
        } else {
            outcome.violation
        };
        if let Some(violation) = violation {
            self.fail(index, violation);
        }
        // After the violation (if any), so a reader that sees the head also sees its verdict.
        self.verdicts
            .heads_seen
            .store(self.index, Ordering::Release);
        if violation.is_some() {
            return;
        }
        self.phase = match outcome.body {
            Body::Empty => Phase::Head,
            Body::Length(n) => Phase::Length(n),
            Body::Chunked => Phase::Chunked(Chunked::default()),
        };
    }

    /// Records `violation` for `request_index` (and, through the verdict rule, every later
    /// request) and stops tracking.
    fn fail(&mut self, request_index: u64, violation: FramingViolation) {
        self.verdicts.record(request_index, violation);
        self.stop();
    }

    fn stop(&mut self) {
        self.phase = Phase::Stopped;
        self.preface_matched = None;
        self.head = Vec::new();
    }

    /// Appends to the head buffer, never letting its capacity outgrow `max_header_bytes`.
    fn append_head(&mut self, bytes: &[u8]) {
        let needed = self.head.len() + bytes.len();
        if needed > self.head.capacity() {
            let target = needed
                .max(self.head.capacity().saturating_mul(2))
                .max(256)
                .min(self.max_header_bytes.max(needed));
            self.head.reserve_exact(target - self.head.len());
        }
        self.head.extend_from_slice(bytes);
    }

    fn release_head(&mut self) {
        if self.head.capacity() > RETAINED_HEAD_CAPACITY {
            self.head = Vec::new();
        } else {
            self.head.clear();
        }
        self.scan = HeadScan::default();
    }
}

/// Finds the end of a head (the first empty line after the request line has started) one
/// read at a time, remembering only where the previous read left off.
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// A byte other than CR/LF has been seen; before that, empty lines are skipped, as
    /// httparse does.
    started: bool,
    line: LineState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Inside a line.
    #[default]
    Text,
    /// Just after a LF: a line ended.
    Lf,
    /// A LF then a CR: an empty line, if a LF follows.
    LfCr,
}

impl HeadScan {
    /// Returns the offset just past the head's final empty line, if it is in `data`.
    fn find_end(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            if !self.started {
                if b != b'\r' && b != b'\n' {
                    self.started = true;
                    self.line = LineState::Text;
                }
                continue;
            }
            self.line = match (self.line, b) {
                (LineState::Lf | LineState::LfCr, b'\n') => {
                    *self = Self::default();
                    return Some(i + 1);
                }
                (_, b'\n') => LineState::Lf,
                (LineState::Lf, b'\r') => LineState::LfCr,
                _ => LineState::Text,
            };
        }
        None
    }
}

/// The result of parsing a (possibly incomplete) head.
#[derive(Debug)]
enum HeadParse {
    Complete(usize, HeadOutcome),
    Partial,
    TooLarge,
    Invalid,
}

/// What a complete head means for its request.
#[derive(Debug, Clone, Copy)]
struct HeadOutcome {
    violation: Option<FramingViolation>,
    body: Body,
}

/// How the request body is framed, as hyper frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
}

/// Parses a request head with httparse, as hyper does.
fn parse_head(buf: &[u8], max_header_bytes: usize) -> HeadParse {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => {
            HeadParse::Complete(len, judge(req.version, req.headers))
        }
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => parse_head_with_many_headers(buf, max_header_bytes),
        Err(_) => HeadParse::Invalid,
    }
}

/// Rare path: more headers than hyper's default allows (hyper may be configured higher).
/// Slots are sized by the head's line count within the allowed head size, so this stays
/// bounded by `max_header_bytes`.
fn parse_head_with_many_headers(buf: &[u8], max_header_bytes: usize) -> HeadParse {
    let window = buf.get(..max_header_bytes).unwrap_or(buf);
    // Count lines of the head only, not of whatever body bytes follow it in this read.
    let end = HeadScan::default().find_end(window).unwrap_or(window.len());
    let head = window.get(..end).unwrap_or(window);
    let lines = head.iter().filter(|&&b| b == b'\n').count();
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            HeadParse::Complete(len, judge(req.version, req.headers))
        }
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        // Still too many: the head has more lines than fit in the allowed size.
        Err(httparse::Error::TooManyHeaders) => HeadParse::TooLarge,
        Err(_) => HeadParse::Invalid,
    }
}

/// Decides a head's framing the way hyper's HTTP/1 server does (`role.rs`, `Server::parse`),
/// and names what the proxy refuses. Whatever hyper itself would reject becomes `Malformed`.
fn judge(version: Option<u8>, headers: &[httparse::Header<'_>]) -> HeadOutcome {
    let http11 = version == Some(1);
    let mut is_te = false;
    let mut te_chunked = false;
    let mut is_cl = false;
    let mut content_length: Option<u64> = None;
    let mut conflicting = false;
    let mut hyper_rejects = false;

    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // hyper: HTTP/1.0 must not use Transfer-Encoding.
            hyper_rejects |= !http11;
            is_te = true;
            content_length = None;
            // hyper: the last Transfer-Encoding line decides.
            te_chunked = ends_in_chunked(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            is_cl = true;
            if is_te {
                // hyper ignores a length after Transfer-Encoding without a trace.
                continue;
            }
            match (parse_decimal(header.value), content_length) {
                (None, _) => hyper_rejects = true,
                (Some(len), Some(prev)) if len != prev => {
                    conflicting = true;
                    hyper_rejects = true;
                }
                (Some(_), Some(_)) => {} // identical duplicate: accepted, as hyper does
                (Some(len), None) => {
                    hyper_rejects |= len > MAX_CONTENT_LENGTH;
                    content_length = Some(len);
                }
            }
        }
    }
    // hyper: a request's Transfer-Encoding must end in chunked.
    hyper_rejects |= is_te && !te_chunked;

    let violation = if is_te && is_cl {
        Some(FramingViolation::ContentLengthWithTransferEncoding)
    } else if conflicting {
        Some(FramingViolation::ConflictingContentLength)
    } else if hyper_rejects {
        Some(FramingViolation::Malformed)
    } else {
        None
    };
    let body = match (is_te, content_length) {
        (true, _) => Body::Chunked,
        (false, Some(len)) if len > 0 => Body::Length(len),
        (false, _) => Body::Empty,
    };
    HeadOutcome { violation, body }
}

/// hyper's `is_chunked_`: the value must be visible ASCII, and its last comma-separated coding
/// must be `chunked` (case-insensitive).
fn ends_in_chunked(value: &[u8]) -> bool {
    let visible = value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    visible
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// hyper's `from_digits`: one or more ASCII digits, no sign, no list, no overflow.
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// A chunked body, walked with the same grammar as hyper's decoder (`decode.rs`), so the
/// body ends where hyper thinks it ends. Chunk data is skipped by counting.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the chunk data still to skip.
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What a chunked body did with some bytes.
#[derive(Debug, PartialEq, Eq)]
enum ChunkStep {
    /// All bytes belong to the body; it has not ended.
    NeedMore,
    /// The body ended after this many bytes.
    Done(usize),
    /// The body is not valid chunked encoding; hyper fails it.
    Invalid,
}

impl Chunked {
    fn feed(&mut self, data: &[u8]) -> ChunkStep {
        let mut i = 0;
        while i < data.len() {
            if self.state == ChunkState::Data {
                let available = data.len() - i;
                let n = usize::try_from(self.size).map_or(available, |s| s.min(available));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let Some(&b) = data.get(i) else { break };
            i += 1;
            self.state = match (self.state, b) {
                (ChunkState::Start | ChunkState::Size, _) if b.is_ascii_hexdigit() => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        _ => b - b'A' + 10,
                    };
                    let Some(size) = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                    else {
                        return ChunkStep::Invalid;
                    };
                    self.size = size;
                    ChunkState::Size
                }
                (ChunkState::Size | ChunkState::SizeLws, b'\t' | b' ') => ChunkState::SizeLws,
                (ChunkState::Size | ChunkState::SizeLws, b';') => ChunkState::Extension,
                (ChunkState::Size | ChunkState::SizeLws | ChunkState::Extension, b'\r') => {
                    ChunkState::SizeLf
                }
                // hyper refuses a bare LF inside an extension.
                (ChunkState::Extension, b'\n') => return ChunkStep::Invalid,
                (ChunkState::Extension, _) => ChunkState::Extension,
                (ChunkState::SizeLf, b'\n') if self.size == 0 => ChunkState::EndCr,
                (ChunkState::SizeLf, b'\n') => ChunkState::Data,
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Start,
                (ChunkState::Trailer, b'\r') => ChunkState::TrailerLf,
                (ChunkState::Trailer, _) => ChunkState::Trailer,
                (ChunkState::TrailerLf, b'\n') => ChunkState::EndCr,
                (ChunkState::EndCr, b'\r') => ChunkState::EndLf,
                (ChunkState::EndCr, _) => ChunkState::Trailer,
                (ChunkState::EndLf, b'\n') => return ChunkStep::Done(i),
                _ => return ChunkStep::Invalid,
            };
        }
        ChunkStep::NeedMore
    }
}

#[cfg(test)]
mod tests {
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
    use super::*;

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
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(guard), service),
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
}
