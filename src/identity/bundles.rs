//! Trust bundles from PEM files, re-read when they change: rotation without a restart.
//!
//! Files are polled (size and modification time, every [`POLL_INTERVAL`]) rather than watched
//! with inotify, because Kubernetes replaces mounted secrets by swapping symlinks, which inotify
//! watches on the old inode miss. When any file changes the whole set is reloaded; a file that
//! cannot be read or parsed keeps the last good set in force and is reported. Consumers rebuild
//! their TLS configs from the new set; handshakes already done are unaffected.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::svid::{TrustBundles, load_bundle};

/// How often bundle files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies a file version cheaply (size and modification time).
pub type Stamp = Option<(u64, SystemTime)>;

/// The configured bundle files and the stamps of the versions last loaded.
pub struct BundleFiles {
    paths: BTreeMap<String, PathBuf>,
    stamps: BTreeMap<String, Stamp>,
}

/// The stamp of a file now (`None` when it cannot be read).
pub fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

impl BundleFiles {
    /// Tracks these files (trust domain → PEM bundle path).
    pub fn new(paths: BTreeMap<String, PathBuf>) -> BundleFiles {
        let stamps = paths.iter().map(|(td, p)| (td.clone(), stamp(p))).collect();
        BundleFiles { paths, stamps }
    }

    /// Loads every bundle now.
    pub fn load(&self) -> Result<TrustBundles, String> {
        let mut bundles = TrustBundles::new();
        for (domain, path) in &self.paths {
            let certs = load_bundle(path)
                .map_err(|e| format!("identity.trust_domains.{domain}.bundle: {e}"))?;
            bundles.insert(domain.clone(), certs);
        }
        Ok(bundles)
    }

    /// `Some(result)` when a file changed since the last call (the new set, or why it was not
    /// usable); `None` when nothing changed.
    pub fn poll(&mut self) -> Option<Result<TrustBundles, String>> {
        self.stamps_changed().then(|| self.load())
    }

    /// Whether any tracked file changed since the last call (without loading them).
    pub fn stamps_changed(&mut self) -> bool {
        let mut changed = false;
        for (name, path) in &self.paths {
            let now = stamp(path);
            if self.stamps.get(name) != Some(&now) {
                self.stamps.insert(name.clone(), now);
                changed = true;
            }
        }
        changed
    }
}
