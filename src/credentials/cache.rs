//! The token cache: keyed by (credential, sorted scopes, caller, task[, destination]).
//!
//! - **Hit path without a shared lock**: the map is split into shards (a read lock on one of
//!   64), and each entry's current token sits in an `ArcSwapOption`, read without a lock.
//!   The lookup is by a borrowed [`KeyRef`] (no allocation); an owned [`CacheKey`] is made
//!   only when an entry is added.
//! - **Single flight**: a miss takes the entry's own async mutex; whoever gets it first
//!   fetches, the others wait and then find the fresh token (one fetch for N concurrent misses).
//! - **Never stale**: an entry is used until min(token expiry, decision ttl) minus a refresh
//!   margin (a tenth of the lifetime, at most 30 s), and a later decision with a shorter ttl
//!   is honoured too (`issued + ttl`).
//! - **Fail closed with backoff**: a failed fetch is an error for the caller; the entry then
//!   refuses fast until its backoff (250 ms doubling to 30 s) has passed.

use std::borrow::Cow;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use hashbrown::{Equivalent, HashMap};

use super::inject::Injection;
use super::secret::Secret;

const SHARDS: usize = 64;

/// One shard of the map: a read lock on the hit path, a write lock to add or remove.
type Shard = RwLock<HashMap<CacheKey, Arc<Slot>, RandomState>>;
const MAX_MARGIN: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a cached token is cached for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub credential: Arc<str>,
    /// Sorted and de-duplicated, so `[b, a]` and `[a, b]` share a token.
    pub scopes: Arc<[String]>,
    pub caller: Option<Arc<str>>,
    pub task: Option<Arc<str>>,
    /// `jwt` only: a JWT is per task *and* destination (its `aud`).
    pub destination: Option<Arc<str>>,
}

/// A [`CacheKey`] borrowed from the request: what a lookup hashes and compares, without
/// allocating. Hashes exactly as the owned key does (same fields, same order, `str` and
/// `[String]` underneath).
#[derive(Debug, Hash)]
pub struct KeyRef<'a> {
    pub credential: &'a str,
    /// Borrowed when the decision's list is already sorted and free of duplicates (the usual
    /// case); sorted into a copy otherwise.
    pub scopes: Cow<'a, [String]>,
    pub caller: Option<&'a str>,
    pub task: Option<&'a str>,
    pub destination: Option<&'a str>,
}

impl<'a> KeyRef<'a> {
    /// Builds a lookup key, normalizing the scope list.
    pub fn new(
        credential: &'a str,
        scopes: &'a [String],
        caller: Option<&'a str>,
        task: Option<&'a str>,
        destination: Option<&'a str>,
    ) -> KeyRef<'a> {
        let scopes = if scopes.windows(2).all(|pair| pair[0] < pair[1]) {
            Cow::Borrowed(scopes)
        } else {
            let mut sorted = scopes.to_vec();
            sorted.sort();
            sorted.dedup();
            Cow::Owned(sorted)
        };
        KeyRef {
            credential,
            scopes,
            caller,
            task,
            destination,
        }
    }

    /// The owned key, for a new entry.
    pub fn to_key(&self) -> CacheKey {
        CacheKey {
            credential: Arc::from(self.credential),
            scopes: Arc::from(&*self.scopes),
            caller: self.caller.map(Arc::from),
            task: self.task.map(Arc::from),
            destination: self.destination.map(Arc::from),
        }
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.credential == &*key.credential
            && *self.scopes == *key.scopes
            && self.caller == key.caller.as_deref()
            && self.task == key.task.as_deref()
            && self.destination == key.destination.as_deref()
    }
}

/// A freshly fetched token.
pub struct Fresh {
    pub injection: Injection,
    /// Kept for revocation (RFC 7009) when `revocable`.
    pub token: Secret,
    pub expires_at: SystemTime,
    pub revocable: bool,
}

/// A token in the cache.
pub struct CachedToken {
    pub injection: Injection,
    pub token: Secret,
    pub revocable: bool,
    issued: Instant,
    use_until: Instant,
}

impl CachedToken {
    fn usable(&self, now: Instant, ttl: Option<Duration>) -> bool {
        now < self.use_until && ttl.is_none_or(|ttl| now < self.issued + ttl)
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    current: ArcSwapOption<CachedToken>,
    fetch: tokio::sync::Mutex<Backoff>,
}

/// Why the cache has no token for a request (the fetch error is the provider's, secret-free).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError<E> {
    #[error("retrying after a failure in {0:?}")]
    Backoff(Duration),
    #[error("{0}")]
    Fetch(E),
}

/// The sharded token cache.
pub struct TokenCache {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }
}

/// How long a token is used: min(expiry, ttl) minus the refresh margin.
fn use_until(now: Instant, expires_at: SystemTime, ttl: Option<Duration>) -> Instant {
    let to_expiry = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let lifetime = ttl.map_or(to_expiry, |ttl| ttl.min(to_expiry));
    let margin = (lifetime / 10).min(MAX_MARGIN);
    now + lifetime.saturating_sub(margin)
}

impl TokenCache {
    fn shard(&self, key: &KeyRef<'_>) -> &Shard {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    fn slot(&self, key: &KeyRef<'_>) -> Arc<Slot> {
        let shard = self.shard(key);
        if let Some(slot) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return slot.clone();
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get(key) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        map.insert(key.to_key(), slot.clone());
        slot
    }

    /// A usable cached token, without fetching.
    pub fn peek(&self, key: &KeyRef<'_>, ttl: Option<Duration>) -> Option<Arc<CachedToken>> {
        let shard = self.shard(key);
        let slot = shard
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()?;
        slot.current
            .load_full()
            .filter(|t| t.usable(Instant::now(), ttl))
    }

    /// The cached token, or the result of `fetch` (run by at most one caller per key at a
    /// time). `Ok((token, hit))`.
    pub async fn get_or_fetch<E, F, Fut>(
        &self,
        key: &KeyRef<'_>,
        ttl: Option<Duration>,
        fetch: F,
    ) -> Result<(Arc<CachedToken>, bool), CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fresh, E>>,
    {
        let slot = self.slot(key);
        if let Some(token) = slot.current.load_full()
            && token.usable(Instant::now(), ttl)
        {
            return Ok((token, true));
        }
        let mut backoff = slot.fetch.lock().await;
        // Someone else may have fetched while we waited: that is the single flight.
        let now = Instant::now();
        if let Some(token) = slot.current.load_full()
            && token.usable(now, ttl)
        {
            return Ok((token, true));
        }
        if let Some(retry_at) = backoff.retry_at
            && now < retry_at
        {
            return Err(CacheError::Backoff(retry_at - now));
        }
        match fetch().await {
            Ok(fresh) => {
                let now = Instant::now();
                let token = Arc::new(CachedToken {
                    use_until: use_until(now, fresh.expires_at, ttl),
                    issued: now,
                    injection: fresh.injection,
                    token: fresh.token,
                    revocable: fresh.revocable,
                });
                slot.current.store(Some(token.clone()));
                *backoff = Backoff::default();
                Ok((token, false))
            }
            Err(e) => {
                backoff.failures = backoff.failures.saturating_add(1);
                let delay = FIRST_BACKOFF
                    .saturating_mul(1 << backoff.failures.saturating_sub(1).min(16))
                    .min(MAX_BACKOFF);
                backoff.retry_at = Some(Instant::now() + delay);
                Err(CacheError::Fetch(e))
            }
        }
    }

    /// Removes every entry whose key matches; returns the tokens they held (still valid or
    /// not), for revocation.
    pub fn remove_matching(
        &self,
        mut matches: impl FnMut(&CacheKey) -> bool,
    ) -> Vec<(CacheKey, Arc<CachedToken>)> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|key, slot| {
                if !matches(key) {
                    return true;
                }
                if let Some(token) = slot.current.swap(None) {
                    removed.push((key.clone(), token));
                }
                false
            });
        }
        removed
    }

    /// Drops entries that hold no usable token and are neither fetching nor backing off.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, slot| {
                let expired = slot
                    .current
                    .load()
                    .as_ref()
                    .is_none_or(|t| now >= t.use_until);
                let idle = match slot.fetch.try_lock() {
                    Ok(backoff) => backoff.retry_at.is_none_or(|at| now >= at),
                    Err(_) => false,
                };
                let keep = !(expired && idle);
                if !keep {
                    dropped += 1;
                }
                keep
            });
        }
        dropped
    }

    /// Entries in the cache (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(task: &'static str) -> KeyRef<'static> {
        let scopes: &'static [String] = Box::leak(Box::new(["b".to_string(), "a".to_string()]));
        KeyRef::new("c", scopes, Some("spiffe://x/y"), Some(task), None)
    }

    fn fresh(value: &str, lifetime: Duration) -> Fresh {
        let token = Secret::new(value.to_string());
        Fresh {
            injection: Injection::Header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap(),
            ),
            token,
            expires_at: SystemTime::now() + lifetime,
            revocable: true,
        }
    }

    #[test]
    fn scopes_are_normalized() {
        let (sorted, unsorted) = (
            ["x".to_string(), "y".to_string()],
            ["y".to_string(), "x".to_string(), "x".to_string()],
        );
        let a = KeyRef::new("c", &sorted, None, None, None);
        let b = KeyRef::new("c", &unsorted, None, None, None);
        assert!(
            matches!(a.scopes, Cow::Borrowed(_)),
            "a sorted list is not copied"
        );
        assert!(matches!(b.scopes, Cow::Owned(_)));
        assert_eq!(a.to_key(), b.to_key());
    }

    #[test]
    fn a_borrowed_key_finds_its_owned_entry() {
        let scopes = ["a".to_string()];
        let borrowed = KeyRef::new("c", &scopes, Some("spiffe://x/y"), Some("t"), Some("h"));
        let owned = borrowed.to_key();
        let hasher = RandomState::new();
        assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&owned));
        assert!(borrowed.equivalent(&owned));
        for other in [
            KeyRef::new("d", &scopes, Some("spiffe://x/y"), Some("t"), Some("h")),
            KeyRef::new("c", &[], Some("spiffe://x/y"), Some("t"), Some("h")),
            KeyRef::new("c", &scopes, None, Some("t"), Some("h")),
            KeyRef::new("c", &scopes, Some("spiffe://x/y"), Some("u"), Some("h")),
            KeyRef::new("c", &scopes, Some("spiffe://x/y"), Some("t"), None),
        ] {
            assert!(!other.equivalent(&owned), "{other:?}");
        }
        let cache = TokenCache::default();
        let slot = cache.slot(&borrowed);
        assert!(
            Arc::ptr_eq(&slot, &cache.slot(&borrowed)),
            "one entry per key"
        );
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_fetch_once() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch::<String, _, _>(&key("t"), None, || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(fresh("tok", Duration::from_secs(600)))
                    })
                    .await
                    .map(|(t, _)| t.token.expose().to_string())
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "tok");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn honours_ttl_and_expiry_with_a_margin() {
        let cache = TokenCache::default();
        let (_, hit) = cache
            .get_or_fetch::<String, _, _>(&key("t"), Some(Duration::from_secs(100)), || async {
                Ok(fresh("a", Duration::from_secs(600)))
            })
            .await
            .unwrap();
        assert!(!hit);
        assert!(
            cache
                .peek(&key("t"), Some(Duration::from_secs(100)))
                .is_some()
        );
        // A later decision with a ttl shorter than the token's age does not use it.
        assert!(cache.peek(&key("t"), Some(Duration::ZERO)).is_none());
        // A token that expires now is never used.
        cache
            .get_or_fetch::<String, _, _>(&key("short"), None, || async {
                Ok(fresh("b", Duration::ZERO))
            })
            .await
            .unwrap();
        assert!(cache.peek(&key("short"), None).is_none());
        let lifetime = Duration::from_secs(100);
        let now = Instant::now();
        let until = use_until(
            now,
            SystemTime::now() + Duration::from_secs(600),
            Some(lifetime),
        );
        assert!(until <= now + Duration::from_secs(90));
        assert!(until >= now + Duration::from_secs(89));
    }

    #[tokio::test]
    async fn failures_back_off_then_recover() {
        let cache = TokenCache::default();
        let failed = cache
            .get_or_fetch(&key("t"), None, || async { Err::<Fresh, _>("down") })
            .await;
        assert!(matches!(failed, Err(CacheError::Fetch("down"))));
        let fast = cache
            .get_or_fetch::<&str, _, _>(&key("t"), None, || async {
                panic!("must not fetch during backoff")
            })
            .await;
        assert!(matches!(fast, Err(CacheError::Backoff(_))));
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(20)).await;
        let (token, _) = cache
            .get_or_fetch::<&str, _, _>(&key("t"), None, || async {
                Ok(fresh("ok", Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "ok");
    }

    #[tokio::test]
    async fn removes_by_task() {
        let cache = TokenCache::default();
        for task in ["t1", "t2"] {
            cache
                .get_or_fetch::<String, _, _>(&key(task), None, || async {
                    Ok(fresh(task, Duration::from_secs(60)))
                })
                .await
                .unwrap();
        }
        let removed = cache.remove_matching(|k| k.task.as_deref() == Some("t1"));
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].1.token.expose(), "t1");
        assert_eq!(cache.len(), 1);
    }
}
