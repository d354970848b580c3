//! Requests in flight per caller (`limits.max_requests_per_caller`): one caller — a SPIFFE ID,
//! or every unauthenticated caller together — cannot hold more than its share of tollgate, on
//! however many connections and streams it spreads its requests.
//!
//! A request takes a place ([`InFlight::admit`]) before any stage runs and keeps it, in its
//! [`Recorder`](super::record::Recorder), until its response body has ended or been dropped;
//! over the limit it is refused with 429 `too_many_requests`.
//!
//! Why the shape: admitting happens on every request, so it must not serialize workers on one
//! lock. The counts are sharded by a hash of the caller: a request locks only its caller's
//! shard, for one map operation, and two callers share a lock only when their hashes share a
//! shard. A caller's entry is removed when its last request ends, so the map holds only the
//! callers with requests in flight (its memory is bounded by the requests in flight).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::identity::SpiffeId;

/// Shards of the count map: enough that unrelated callers rarely share one.
const SHARDS: usize = 64;

/// A caller as counted: its SPIFFE ID, or `None` for every unauthenticated caller.
type CallerKey = Option<SpiffeId>;

/// One shard: in-flight counts of the callers that hash to it.
type Shard = Mutex<HashMap<CallerKey, usize>>;

/// The in-flight counts of every caller (see the module documentation).
pub struct InFlight {
    limit: usize,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The caller already has `limit` requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the caller already has {limit} requests in flight (limits.max_requests_per_caller)")]
pub struct TooManyRequests {
    /// The limit in force.
    pub limit: usize,
}

impl InFlight {
    /// Counts with `limit` requests in flight per caller at most (at least 1).
    pub fn new(limit: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            limit: limit.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Takes a place for one request of `caller`, or refuses when the caller is at the limit.
    /// The place is given back when the returned guard drops.
    pub fn admit(
        self: &Arc<Self>,
        caller: Option<&SpiffeId>,
    ) -> Result<InFlightGuard, TooManyRequests> {
        let shard = self.shard_of(caller);
        // One clone of the caller per request (an atomic increment on a count every worker of
        // that caller shares): the guard keeps it, and the lookup borrows it.
        let key = caller.cloned();
        let mut counts = lock(&self.shards[shard]);
        match counts.get_mut(&key) {
            Some(n) if *n >= self.limit => {
                return Err(TooManyRequests { limit: self.limit });
            }
            Some(n) => *n += 1,
            None => {
                counts.insert(key.clone(), 1);
            }
        }
        drop(counts);
        Ok(InFlightGuard {
            owner: self.clone(),
            shard,
            caller: key,
        })
    }

    /// How many requests `caller` has in flight now.
    pub fn current(&self, caller: Option<&SpiffeId>) -> usize {
        let counts = lock(&self.shards[self.shard_of(caller)]);
        counts.get(&caller.cloned()).copied().unwrap_or(0)
    }

    fn shard_of(&self, caller: Option<&SpiffeId>) -> usize {
        // The modulo keeps the value below SHARDS, so the cast cannot truncate it.
        (self.hasher.hash_one(caller) % SHARDS as u64) as usize
    }

    fn release(&self, shard: usize, caller: &CallerKey) {
        let mut counts = lock(&self.shards[shard]);
        if let Some(n) = counts.get_mut(caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(caller);
            }
        }
    }
}

/// A shard's lock; a panic elsewhere while it was held leaves counts that are still counts.
fn lock(shard: &Shard) -> MutexGuard<'_, HashMap<CallerKey, usize>> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request's place among its caller's requests in flight; given back on drop.
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    shard: usize,
    caller: CallerKey,
}

impl std::fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightGuard").finish_non_exhaustive()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.owner.release(self.shard, &self.caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn refuses_a_caller_at_its_limit_and_no_one_else() {
        let counts = InFlight::new(2);
        let a = id("spiffe://example.org/a");
        let b = id("spiffe://example.org/b");
        let first = counts.admit(Some(&a)).unwrap();
        let _second = counts.admit(Some(&a)).unwrap();
        assert_eq!(
            counts.admit(Some(&a)).unwrap_err(),
            TooManyRequests { limit: 2 }
        );
        let _other = counts.admit(Some(&b)).unwrap();
        let _anonymous = counts.admit(None).unwrap();
        drop(first);
        assert_eq!(counts.current(Some(&a)), 1);
        let _again = counts.admit(Some(&a)).unwrap();
        assert_eq!(counts.current(Some(&a)), 2);
    }

    #[test]
    fn forgets_a_caller_whose_last_request_ended() {
        let counts = InFlight::new(4);
        let a = id("spiffe://example.org/a");
        let guards: Vec<_> = (0..4).map(|_| counts.admit(Some(&a)).unwrap()).collect();
        drop(guards);
        assert_eq!(counts.current(Some(&a)), 0);
        let held: usize = counts.shards.iter().map(|s| lock(s).len()).sum();
        assert_eq!(
            held, 0,
            "no entry is kept for a caller with nothing in flight"
        );
    }

    #[test]
    fn counts_exactly_under_concurrent_admits() {
        let counts = InFlight::new(50);
        let a = id("spiffe://example.org/a");
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let held = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        if let Ok(guard) = counts.admit(Some(&a)) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            lock_vec(&held).push(guard);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 50);
        assert_eq!(counts.current(Some(&a)), 50);
    }

    fn lock_vec<T>(m: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
        m.lock().unwrap()
    }
}
