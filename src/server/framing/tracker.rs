//! The incremental framing tracker behind [`FramingGuard`](super::FramingGuard): finds request
//! heads in the raw stream exactly as hyper frames them (same parser, same configuration),
//! judges each head's framing, and skips bodies by counting.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::chunked::{ChunkStep, Chunked};
use super::{
    FramingVerdicts, FramingViolation, H2_PREFACE, INLINE_HEADERS, MAX_CONTENT_LENGTH,
    RETAINED_HEAD_CAPACITY,
};

/// Where the tracker is in the request stream.
#[derive(Debug)]
pub(super) enum Phase {
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
pub(super) struct Tracker {
    pub(super) phase: Phase,
    /// While the connection so far matches the HTTP/2 preface: how many bytes matched.
    /// Those bytes are not tracked yet; they are replayed if the preface diverges.
    preface_matched: Option<usize>,
    /// The current head, only when it spans reads; bounded by `max_header_bytes`.
    pub(super) head: Vec<u8>,
    /// End-of-head scanner state for the bytes in `head`.
    scan: HeadScan,
    /// Index of the next request head.
    index: u64,
    max_header_bytes: usize,
    verdicts: Arc<FramingVerdicts>,
}

impl Tracker {
    pub(super) fn new(max_header_bytes: usize, verdicts: Arc<FramingVerdicts>) -> Self {
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
    pub(super) fn feed(&mut self, data: &[u8]) {
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
