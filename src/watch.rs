//! One way to keep a value built from files current: [`Watched<T>`].
//!
//! Everything tollgate reloads — trust bundles, listener and admin TLS, intent-token keys,
//! static secrets, the policy and the credentials built with it — is a `Watched` value: it
//! knows its [`Inputs`] (files, folders, and the versions of the values it is built from),
//! notices when they change (size and modification time, polled: Kubernetes replaces mounted
//! secrets by swapping symlinks, which inotify watches on the old inode miss), rebuilds off the
//! request path, and publishes the result with one atomic swap. A rebuild that fails keeps the
//! last good value in force ([`Rebuilt::Failed`]); a source that must not outlive its file (a
//! secret that was removed) publishes its failure instead ([`Rebuilt::Degraded`]).
//!
//! Readers never lock: [`Watched::load`] is one atomic load. Every rebuild returns a
//! [`Reloaded`], which the owner (`app::reload`) counts in
//! `tollgate_reloads_total{source,result}` and logs, in one place.
//!
//! This module depends on nothing else in tollgate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

/// How often watched inputs are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies a file version cheaply (size and modification time); `None` when the file
/// cannot be read.
pub type Stamp = Option<(u64, SystemTime)>;

/// The stamp of a file now.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// What a watched value is built from. A change in any of them rebuilds it.
#[derive(Default, Clone)]
pub struct Inputs {
    files: Vec<PathBuf>,
    trees: Vec<PathBuf>,
    versions: Vec<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

/// The state of the inputs at one moment; compared to notice a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint {
    files: Vec<(PathBuf, Stamp)>,
    versions: Vec<u64>,
}

impl Inputs {
    /// No inputs: the value changes only when [`Watched::reload`] is asked to.
    pub fn none() -> Inputs {
        Inputs::default()
    }

    /// Also watch this file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Inputs {
        self.files.push(path.into());
        self
    }

    /// Also watch every file under this folder (or this file): one edited, added or removed
    /// is a change.
    pub fn tree(mut self, path: impl Into<PathBuf>) -> Inputs {
        self.trees.push(path.into());
        self
    }

    /// Also rebuild whenever `version` returns a new number (another source's generation).
    pub fn version(mut self, version: impl Fn() -> u64 + Send + Sync + 'static) -> Inputs {
        self.versions.push(Arc::new(version));
        self
    }

    /// Also rebuild whenever `other` publishes a new value.
    pub fn after<U: Send + Sync + 'static>(self, other: &Arc<Watched<U>>) -> Inputs {
        let other = other.clone();
        self.version(move || other.generation())
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut files: Vec<PathBuf> = self.files.clone();
        for tree in &self.trees {
            walk(tree, &mut files);
        }
        files.sort();
        Fingerprint {
            files: files
                .into_iter()
                .map(|file| {
                    let stamp = stamp(&file);
                    (file, stamp)
                })
                .collect(),
            versions: self.versions.iter().map(|version| version()).collect(),
        }
    }
}

/// The files under `path` (bounded: a policy folder is small; links are not followed).
fn walk(path: &Path, out: &mut Vec<PathBuf>) {
    const MAX_FILES: usize = 10_000;
    let mut todo = vec![path.to_path_buf()];
    while let Some(next) = todo.pop() {
        if out.len() >= MAX_FILES {
            return;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(&next) {
                    todo.extend(entries.flatten().map(|entry| entry.path()));
                }
            }
            _ => out.push(next),
        }
    }
}

/// What one rebuild produced.
pub enum Rebuilt<T> {
    /// A new value: published.
    Ok(T),
    /// Unusable: the last good value stays in force.
    Failed(String),
    /// The source is broken, and this value (which says so) replaces the last one all the
    /// same: for what must not outlive its file, such as a secret that was removed.
    Degraded(T, String),
}

/// The source label of `tollgate_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The configuration's policy and credentials (`POST /v1/reload`, SIGHUP, `policy.watch`).
    Policy,
    /// Trust bundles, from files and the Workload API.
    TrustBundles,
    /// A listener's (or the admin listener's) TLS configuration.
    ListenerTls,
    /// An intent-token issuer's JWKS.
    IntentTokenKeys,
    /// A static secret file (a `static` credential, an oauth2 client secret).
    Secret,
}

impl Source {
    /// Every source: metric series are created for each at start-up.
    pub const ALL: [Source; 5] = [
        Source::Policy,
        Source::TrustBundles,
        Source::ListenerTls,
        Source::IntentTokenKeys,
        Source::Secret,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Policy => "policy",
            Source::TrustBundles => "trust_bundles",
            Source::ListenerTls => "listener_tls",
            Source::IntentTokenKeys => "intent_token_keys",
            Source::Secret => "secret",
        }
    }
}

/// The outcome of one rebuild, to be counted and logged by the owner.
#[derive(Debug)]
pub struct Reloaded<T> {
    /// What kind of value.
    pub source: Source,
    /// Which one, for the log (a configuration key such as `listeners.agents.tls`).
    pub what: Arc<str>,
    /// The value now in force, or why the rebuild failed (the value in force is then the last
    /// good one, or for [`Rebuilt::Degraded`] the degraded one).
    pub outcome: Result<Arc<T>, String>,
}

impl<T> Reloaded<T> {
    /// The same outcome without the value, for reporting values of different types together.
    pub fn erase(self) -> Reloaded<()> {
        Reloaded {
            source: self.source,
            what: self.what,
            outcome: self.outcome.map(|_| Arc::new(())),
        }
    }
}

type Build<T> = Box<dyn Fn(&Arc<T>) -> Rebuilt<T> + Send + Sync>;

/// A value built from files, kept current: see the module documentation.
pub struct Watched<T> {
    value: ArcSwap<T>,
    /// Bumped on every publish: dependents rebuild when it moves.
    generation: AtomicU64,
    source: Source,
    what: Arc<str>,
    inputs: Inputs,
    /// The inputs as of the last rebuild; also serializes rebuilds.
    seen: Mutex<Fingerprint>,
    build: Build<T>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Starts from `initial` (built by the caller, who reports a start-up failure its own
    /// way); later values come from `build`, which receives the value in force.
    pub fn new(
        source: Source,
        what: impl Into<Arc<str>>,
        initial: T,
        inputs: Inputs,
        build: impl Fn(&Arc<T>) -> Rebuilt<T> + Send + Sync + 'static,
    ) -> Watched<T> {
        let seen = inputs.fingerprint();
        Watched {
            value: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(0),
            source,
            what: what.into(),
            inputs,
            seen: Mutex::new(seen),
            build: Box::new(build),
        }
    }

    /// A value that never changes (no inputs, no rebuild): for callers that take a
    /// `Watched` where nothing is configured to reload.
    pub fn fixed(source: Source, what: impl Into<Arc<str>>, value: T) -> Watched<T> {
        Watched::new(source, what, value, Inputs::none(), |_| {
            Rebuilt::Failed("this value is not reloadable".into())
        })
    }

    /// The value in force, without a lock (hold it briefly).
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    /// The value in force, to keep.
    pub fn current(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// How many values were published after the first.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What kind of value this is.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Rebuilds when the inputs changed since the last rebuild; `None` when they did not.
    /// Blocking (reads files): call it off the request path.
    pub fn poll(&self) -> Option<Reloaded<T>> {
        let mut seen = self.lock_seen();
        let now = self.inputs.fingerprint();
        if *seen == now {
            return None;
        }
        // Noted before building: a change made while building is seen on the next poll.
        *seen = now;
        Some(self.rebuild())
    }

    /// Rebuilds now, whatever the inputs say (SIGHUP, `POST /v1/reload`). Blocking.
    pub fn reload(&self) -> Reloaded<T> {
        let mut seen = self.lock_seen();
        *seen = self.inputs.fingerprint();
        self.rebuild()
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, Fingerprint> {
        // A rebuild that panicked published nothing: the fingerprint is safe to reuse.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called with `seen` locked, so rebuilds of one value never overlap.
    fn rebuild(&self) -> Reloaded<T> {
        let outcome = match (self.build)(&self.value.load_full()) {
            Rebuilt::Ok(value) => Ok(self.publish(value)),
            Rebuilt::Failed(why) => Err(why),
            Rebuilt::Degraded(value, why) => {
                self.publish(value);
                Err(why)
            }
        };
        Reloaded {
            source: self.source,
            what: self.what.clone(),
            outcome,
        }
    }

    fn publish(&self, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.value.store(value.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(dir: &Path) -> (PathBuf, Watched<String>) {
        let file = dir.join("value.txt");
        std::fs::write(&file, "one").unwrap();
        let read = {
            let file = file.clone();
            move |_: &Arc<String>| match std::fs::read_to_string(&file) {
                Ok(text) if !text.is_empty() => Rebuilt::Ok(text),
                Ok(_) => Rebuilt::Failed("empty".into()),
                Err(e) => Rebuilt::Failed(e.to_string()),
            }
        };
        let watched = Watched::new(
            Source::Secret,
            "value",
            "one".to_string(),
            Inputs::none().file(&file),
            read,
        );
        (file, watched)
    }

    /// Writes `text` so that the stamp surely changes (another size).
    fn rewrite(file: &Path, text: &str) {
        std::fs::write(file, text).unwrap();
    }

    #[test]
    fn accepts_a_changed_file_and_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, watched) = counter(dir.path());
        assert!(watched.poll().is_none(), "nothing changed");
        rewrite(&file, "second");
        let reloaded = watched.poll().expect("a change");
        assert_eq!(reloaded.source, Source::Secret);
        assert_eq!(reloaded.outcome.unwrap().as_str(), "second");
        assert_eq!(watched.current().as_str(), "second");
        assert_eq!(watched.generation(), 1);
        assert!(watched.poll().is_none(), "seen once");
    }

    #[test]
    fn keeps_the_last_good_value_when_a_rebuild_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (file, watched) = counter(dir.path());
        rewrite(&file, "");
        let reloaded = watched.poll().expect("a change");
        assert_eq!(reloaded.outcome.unwrap_err(), "empty");
        assert_eq!(watched.current().as_str(), "one");
        assert_eq!(watched.generation(), 0);
        std::fs::remove_file(&file).unwrap();
        assert!(watched.poll().unwrap().outcome.is_err());
        rewrite(&file, "back");
        assert_eq!(watched.poll().unwrap().outcome.unwrap().as_str(), "back");
    }

    #[test]
    fn publishes_a_degraded_value_and_counts_it_failed() {
        let watched = Watched::new(
            Source::Secret,
            "secret",
            Ok(1),
            Inputs::none(),
            |_: &Arc<Result<i32, String>>| {
                Rebuilt::Degraded(Err("gone".to_string()), "gone".into())
            },
        );
        assert_eq!(watched.reload().outcome.unwrap_err(), "gone");
        assert_eq!(*watched.current(), Err("gone".to_string()));
    }

    #[test]
    fn rebuilds_after_what_it_depends_on() {
        let dir = tempfile::tempdir().unwrap();
        let (file, base) = counter(dir.path());
        let base = Arc::new(base);
        let derived = {
            let base_for_build = base.clone();
            Watched::new(
                Source::ListenerTls,
                "derived",
                base.current().len(),
                Inputs::none().after(&base),
                move |_| Rebuilt::Ok(base_for_build.current().len()),
            )
        };
        assert!(derived.poll().is_none());
        rewrite(&file, "three");
        base.poll().unwrap().outcome.unwrap();
        assert_eq!(*derived.poll().unwrap().outcome.unwrap(), 5);
        assert!(derived.poll().is_none());
    }

    #[test]
    fn notices_files_added_to_and_removed_from_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let builds = Arc::new(AtomicU64::new(0));
        let watched = {
            let builds = builds.clone();
            Watched::new(
                Source::Policy,
                "policy",
                (),
                Inputs::none().tree(dir.path()),
                move |_| {
                    builds.fetch_add(1, Ordering::Relaxed);
                    Rebuilt::Ok(())
                },
            )
        };
        assert!(watched.poll().is_none());
        std::fs::write(dir.path().join("sub/a.rego"), "x").unwrap();
        assert!(watched.poll().is_some());
        std::fs::remove_file(dir.path().join("sub/a.rego")).unwrap();
        assert!(watched.poll().is_some());
        assert!(watched.poll().is_none());
        assert_eq!(builds.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn reloads_on_demand_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (_file, watched) = counter(dir.path());
        assert_eq!(watched.reload().outcome.unwrap().as_str(), "one");
        assert_eq!(watched.generation(), 1);
    }
}
