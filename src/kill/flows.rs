//! Open flows, and how a kill ends them (issue 15: "kill means now").
//!
//! A kill refuses the next request; this module ends what is already flowing. Every open flow
//! — a forwarded request (both of its bodies), an intercepted connection, a blind tunnel, a
//! transparent connection — is registered here with its caller's SPIFFE ID and task while it
//! is open ([`FlowRegistry::open`] returns a [`Flow`] guard that deregisters on drop). A kill,
//! or the end of a task, walks the registry ([`FlowRegistry::cut`]) and stops every flow it
//! covers:
//! - a flow on an HTTP/1 connection, a tunnel or a transparent connection stops the agent's
//!   whole TCP connection ([`ConnAbort::abort`]): `SO_LINGER` 0 first, so the close that
//!   follows is a reset — bytes still queued in tollgate's socket buffers are discarded, and a
//!   truncated body can never look complete to the agent;
//! - an HTTP/2 stream stops alone ([`Stop::Stream`]): its body ends with `RST_STREAM(CANCEL)`,
//!   the connection's other streams go on.
//!
//! What this module does not own: the decision-log line of a cut flow and the
//! `tollgate_flows_killed_total` counter (the flow's owner writes them when it sees
//! [`Flow::killed`]), and the kills themselves ([`super::KillSwitch`]).
//!
//! Why the shape: registering happens on every forwarded request, so it must not serialize
//! workers. The registry is sharded; each thread keeps to its own shard (assigned once per
//! thread), so the only lock a request takes is one its thread almost always has alone. A cut
//! is rare and may be slow: it visits every shard. A flow registered while a kill is being
//! published is caught either by the cut's walk or by the check [`FlowRegistry::open`] makes
//! right after inserting (the caller re-checks the kill switch), never by neither.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::identity::SpiffeId;
use crate::intent::TaskName;

use super::Kill;

/// What kind of flow a kill ended: the `kind` label of `tollgate_flows_killed_total` and the
/// decision log's `flow.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKind {
    /// A forwarded HTTP/1.x request: its request body upload and its response body download.
    Request,
    /// A forwarded request on an HTTP/2 connection (one stream), both bodies.
    Http2Stream,
    /// A CONNECT tunnel tollgate intercepts (TLS terminated, requests decided inside).
    InterceptedConnection,
    /// A blind tunnel (`mode: tunnel`): bytes passed unread.
    Tunnel,
    /// A transparent listener's redirected connection.
    TransparentConnection,
}

impl FlowKind {
    /// Every kind, for the metric's documentation and tests.
    pub const ALL: [FlowKind; 5] = [
        FlowKind::Request,
        FlowKind::Http2Stream,
        FlowKind::InterceptedConnection,
        FlowKind::Tunnel,
        FlowKind::TransparentConnection,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::Request => "request",
            FlowKind::Http2Stream => "http2_stream",
            FlowKind::InterceptedConnection => "intercepted_connection",
            FlowKind::Tunnel => "tunnel",
            FlowKind::TransparentConnection => "transparent_connection",
        }
    }
}

/// The abort handle of one agent TCP connection: what cutting an HTTP/1 flow, a tunnel or a
/// transparent connection does.
///
/// It holds a duplicate of the connection's socket, so it can switch `SO_LINGER` to 0 without
/// owning the stream (tollgate forbids `unsafe`, so no raw descriptor is kept). Because the
/// duplicate keeps the socket open, the handle must not outlive the connection's own task:
/// it lives in the connection's `ConnCtx`, dropped with the connection.
#[derive(Debug)]
pub struct ConnAbort {
    socket: Option<socket2::Socket>,
    token: CancellationToken,
}

impl ConnAbort {
    /// The handle of `stream`'s connection (one `dup` of its descriptor).
    pub fn of(stream: &tokio::net::TcpStream) -> io::Result<Arc<ConnAbort>> {
        let socket = socket2::SockRef::from(stream).try_clone()?;
        Ok(Arc::new(ConnAbort {
            socket: Some(socket),
            token: CancellationToken::new(),
        }))
    }

    /// A handle with no socket to reset: aborting only ends the connection's task (a closed
    /// connection, or a unit test). Never used for an agent's TCP connection.
    pub fn detached() -> Arc<ConnAbort> {
        Arc::new(ConnAbort {
            socket: None,
            token: CancellationToken::new(),
        })
    }

    /// Ends the connection: `SO_LINGER` 0 (so closing it sends a reset and discards what is
    /// queued), then wakes whoever serves it, which drops the stream.
    pub fn abort(&self) {
        if let Some(socket) = &self.socket
            && let Err(e) = socket.set_linger(Some(Duration::ZERO))
        {
            tracing::warn!(error = %e, "kill: cannot set SO_LINGER 0; the connection closes without a reset");
        }
        self.token.cancel();
    }

    /// Whether [`abort`](Self::abort) was called.
    pub fn is_aborted(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the connection is aborted (the server selects on it).
    pub fn aborted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// How a cut stops a flow.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Abort the agent's TCP connection (HTTP/1, tunnels, transparent connections).
    Connection(Arc<ConnAbort>),
    /// End one HTTP/2 stream (its owner resets it with `CANCEL`).
    Stream(CancellationToken),
}

impl Stop {
    /// A stop for one HTTP/2 stream.
    pub fn stream() -> Stop {
        Stop::Stream(CancellationToken::new())
    }

    fn trip(&self) {
        match self {
            Stop::Connection(abort) => abort.abort(),
            Stop::Stream(token) => token.cancel(),
        }
    }
}

/// One flow's shared state: who killed it, and the bytes it carried each way.
#[derive(Debug)]
struct FlowState {
    kind: FlowKind,
    stop: Stop,
    killed_by: OnceLock<Arc<Kill>>,
    from_agent: AtomicU64,
    to_agent: AtomicU64,
}

/// What the registry keeps of an open flow: enough to match a kill and to stop the flow.
struct Entry {
    spiffe_id: Option<SpiffeId>,
    task: Option<TaskName>,
    state: Arc<FlowState>,
}

/// A slab of open flows: slots reused through a free list, so registering allocates nothing
/// once the shard has grown to its working size.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
}

/// One shard of the registry, shared by the flows registered in it.
#[derive(Default)]
struct Shard {
    slab: Mutex<Slab>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Slab> {
        // A panic while holding the lock leaves the slab consistent (every step is a single
        // push or swap), so a poisoned lock is safe to reuse.
        self.slab
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every open flow, sharded by thread (see the module documentation).
pub struct FlowRegistry {
    shards: Box<[Arc<Shard>]>,
    /// How many flows each kill ended (by kill id), for `GET /v1/kill`.
    ended: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for FlowRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRegistry")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Default for FlowRegistry {
    fn default() -> FlowRegistry {
        FlowRegistry::new()
    }
}

thread_local! {
    /// This thread's shard number, drawn once (round robin over threads).
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The next thread's shard number.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl FlowRegistry {
    /// A registry with a shard for every worker a machine of this size runs, and spare ones so
    /// blocking threads rarely share with workers.
    pub fn new() -> FlowRegistry {
        let cores = std::thread::available_parallelism().map_or(4, std::num::NonZero::get);
        let shards = (0..(cores * 4).clamp(8, 256))
            .map(|_| Arc::new(Shard::default()))
            .collect();
        FlowRegistry {
            shards,
            ended: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a flow of `kind` by this caller and task until the returned guard drops.
    ///
    /// The caller must check the kill switch after this returns (and cut the flow with
    /// [`Flow::cut_now`] if a kill covers it): a kill published while this flow was being
    /// registered is then caught either by that check or by the kill's walk.
    pub fn open(
        &self,
        kind: FlowKind,
        spiffe_id: Option<&SpiffeId>,
        task: Option<&TaskName>,
        stop: Stop,
    ) -> Flow {
        let state = Arc::new(FlowState {
            kind,
            stop,
            killed_by: OnceLock::new(),
            from_agent: AtomicU64::new(0),
            to_agent: AtomicU64::new(0),
        });
        let shard = self.shards[self.shard_index()].clone();
        let entry = Entry {
            spiffe_id: spiffe_id.cloned(),
            task: task.cloned(),
            state: state.clone(),
        };
        let slot = {
            let mut slab = shard.lock();
            match slab.free.pop() {
                Some(slot) => {
                    slab.slots[slot] = Some(entry);
                    slot
                }
                None => {
                    slab.slots.push(Some(entry));
                    slab.slots.len() - 1
                }
            }
        };
        Flow { state, shard, slot }
    }

    /// Stops every open flow `kill` covers; returns how many it stopped (each flow counts
    /// once, for the first kill that covers it). The count is added to the kill's tally.
    pub fn cut(&self, kill: &Arc<Kill>) -> u64 {
        let mut hit = Vec::new();
        for shard in &self.shards {
            let slab = shard.lock();
            for entry in slab.slots.iter().flatten() {
                let spiffe_id = entry.spiffe_id.as_ref().map(SpiffeId::as_str);
                let task = entry.task.as_ref().map(TaskName::as_str);
                if kill.target.matches(spiffe_id, task)
                    && entry.state.killed_by.set(kill.clone()).is_ok()
                {
                    hit.push(entry.state.clone());
                }
            }
        }
        // Stopped outside the shard locks: an abort is a system call and wakes tasks.
        for state in &hit {
            state.stop.trip();
        }
        let n = hit.len() as u64;
        self.tally(&kill.id, n);
        n
    }

    /// How many flows the kill with this id ended so far.
    pub fn ended(&self, kill_id: &str) -> u64 {
        self.lock_ended().get(kill_id).copied().unwrap_or(0)
    }

    /// Forgets a lifted kill's tally.
    pub fn forget(&self, kill_id: &str) {
        self.lock_ended().remove(kill_id);
    }

    /// How many flows are open (tests, benches).
    pub fn open_flows(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let slab = shard.lock();
                slab.slots.len() - slab.free.len()
            })
            .sum()
    }

    fn tally(&self, kill_id: &str, n: u64) {
        if n > 0 {
            *self.lock_ended().entry(kill_id.to_owned()).or_insert(0) += n;
        }
    }

    fn lock_ended(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shard_index(&self) -> usize {
        let index = SHARD.with(|shard| match shard.get() {
            Some(index) => index,
            None => {
                let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                shard.set(Some(index));
                index
            }
        });
        index % self.shards.len()
    }
}

/// An open flow; deregistered when dropped.
pub struct Flow {
    state: Arc<FlowState>,
    shard: Arc<Shard>,
    slot: usize,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("kind", &self.state.kind)
            .field("killed", &self.killed().map(|k| k.id.as_str()))
            .finish()
    }
}

impl Flow {
    /// Its kind.
    pub fn kind(&self) -> FlowKind {
        self.state.kind
    }

    /// The kill that ended this flow, if one did.
    pub fn killed(&self) -> Option<&Arc<Kill>> {
        self.state.killed_by.get()
    }

    /// Ends this flow now for `kill` (a kill the registration check found). Returns whether
    /// this call ended it (false: another kill already had).
    pub fn cut_now(&self, kill: &Arc<Kill>, registry: &FlowRegistry) -> bool {
        if self.state.killed_by.set(kill.clone()).is_err() {
            return false;
        }
        self.state.stop.trip();
        registry.tally(&kill.id, 1);
        true
    }

    /// Completes once the flow is stopped (by a kill or a task's end).
    pub async fn stopped(&self) {
        match &self.state.stop {
            Stop::Connection(abort) => abort.aborted().await,
            Stop::Stream(token) => token.cancelled().await,
        }
    }

    /// For a stream flow, the future a body polls to notice the cut (`None` for a flow that
    /// stops its whole connection: the server does that).
    pub fn stream_stopped(&self) -> Option<WaitForCancellationFutureOwned> {
        match &self.state.stop {
            Stop::Stream(token) => Some(token.clone().cancelled_owned()),
            Stop::Connection(_) => None,
        }
    }

    /// Counts bytes received from the agent.
    pub fn from_agent(&self, n: u64) {
        self.state.from_agent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes sent to the agent.
    pub fn to_agent(&self, n: u64) {
        self.state.to_agent.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes carried so far: (from the agent, to the agent).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.state.from_agent.load(Ordering::Relaxed),
            self.state.to_agent.load(Ordering::Relaxed),
        )
    }

    /// A stream adapter that counts the agent's bytes of this flow (reads: from the agent;
    /// writes: to the agent).
    pub fn meter<IO>(&self, io: IO) -> Metered<IO> {
        Metered {
            io,
            state: self.state.clone(),
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let mut slab = self.shard.lock();
        if let Some(slot) = slab.slots.get_mut(self.slot) {
            *slot = None;
            slab.free.push(self.slot);
        }
    }
}

/// A request body on its way to the origin, counting the bytes the agent uploads on its flow
/// (the decision-log line of a cut request says how far the upload got).
pub struct UploadBody {
    inner: hyper::body::Incoming,
    state: Option<Arc<FlowState>>,
}

impl UploadBody {
    /// A body whose bytes are counted on no flow.
    pub fn unmetered(inner: hyper::body::Incoming) -> UploadBody {
        UploadBody { inner, state: None }
    }
}

impl Flow {
    /// The agent's request body, counted on this flow as it is forwarded.
    pub fn meter_body(&self, inner: hyper::body::Incoming) -> UploadBody {
        UploadBody {
            inner,
            state: Some(self.state.clone()),
        }
    }
}

impl http_body::Body for UploadBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(state)) = (&polled, &this.state)
            && let Some(data) = frame.data_ref()
        {
            state
                .from_agent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The agent's side of a connection flow, counting its bytes each way.
pub struct Metered<IO> {
    io: IO,
    state: Arc<FlowState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        this.state.from_agent.fetch_add(n, Ordering::Relaxed);
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.state.to_agent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kill::KillTarget;

    fn kill(target: KillTarget) -> Arc<Kill> {
        Arc::new(Kill {
            id: "k-1".into(),
            target,
            created: std::time::SystemTime::now(),
            reason: None,
        })
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn cuts_the_flows_a_kill_covers_and_only_those() {
        let registry = FlowRegistry::new();
        let (a, b) = (id("spiffe://t.local/a"), id("spiffe://t.local/b"));
        let task = TaskName::parse("t-1").unwrap();
        let fa = registry.open(FlowKind::Tunnel, Some(&a), None, Stop::stream());
        let fb = registry.open(FlowKind::Tunnel, Some(&b), Some(&task), Stop::stream());
        assert_eq!(registry.open_flows(), 2);
        let by_task = kill(KillTarget::Task(task.clone()));
        assert_eq!(registry.cut(&by_task), 1);
        assert!(fa.killed().is_none());
        assert_eq!(fb.killed().map(|k| k.id.as_str()), Some("k-1"));
        assert!(fb.stream_stopped().is_some());
        // A flow is ended once: a second kill covering it does not count it again.
        assert_eq!(registry.cut(&kill(KillTarget::All)), 1);
        assert_eq!(registry.ended("k-1"), 2);
        drop((fa, fb));
        assert_eq!(registry.open_flows(), 0);
    }

    #[tokio::test]
    async fn a_stopped_stream_flow_wakes_its_owner() {
        let registry = FlowRegistry::new();
        let flow = registry.open(FlowKind::Http2Stream, None, None, Stop::stream());
        assert!(flow.cut_now(&kill(KillTarget::All), &registry));
        tokio::time::timeout(Duration::from_secs(1), flow.stopped())
            .await
            .unwrap();
        assert!(!flow.cut_now(&kill(KillTarget::All), &registry));
    }

    #[test]
    fn aborting_a_connection_signals_it() {
        let abort = ConnAbort::detached();
        assert!(!abort.is_aborted());
        abort.abort();
        assert!(abort.is_aborted());
    }
}
