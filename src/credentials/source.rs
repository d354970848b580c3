//! Secret sources: a file (re-read when it changes: rotation) or an environment variable.
//!
//! The request path reads the current value from an `ArcSwapOption` without a lock. A watcher
//! (started by `app`) calls [`WatchedSecret::refresh`] every 500 ms; it compares the file's
//! stamp (size, modification time — the same stamps the trust-bundle watcher uses) and re-reads
//! only on a change. An unreadable or empty file makes the credential unavailable (fail closed:
//! a removed secret must stop being injected), reported once per change without the value.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use crate::config::credentials::SecretRef;
use crate::identity::bundles::{Stamp, stamp};

use super::secret::Secret;

/// Why a secret could not be read (never carries the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the secret file {0} is empty")]
    Empty(PathBuf),
    #[error("the environment variable {0} is not set or empty")]
    Env(String),
}

/// A secret kept current from its source.
pub struct WatchedSecret {
    source: SecretRef,
    current: ArcSwapOption<Secret>,
    /// The last load failure, for the log line of a request that found no value.
    failure: ArcSwapOption<SourceError>,
    /// Stamp of the version last read; only the watcher touches it.
    stamp: Mutex<Stamp>,
}

/// Reads a secret once: file contents (trailing whitespace and newlines trimmed) or env var.
pub fn read(source: &SecretRef) -> Result<Secret, SourceError> {
    match source {
        SecretRef::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| SourceError::File {
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| SourceError::File {
                path: path.clone(),
                reason: "not UTF-8".to_string(),
            })?;
            let secret = Secret::new(text.trim_end().to_string());
            drop(zeroize::Zeroizing::new(text));
            if secret.is_empty() {
                return Err(SourceError::Empty(path.clone()));
            }
            Ok(secret)
        }
        SecretRef::Env(name) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_string())),
            _ => Err(SourceError::Env(name.clone())),
        },
    }
}

impl WatchedSecret {
    /// Reads the source now; a failure is kept (and reported by the caller), not fatal.
    pub fn load(source: SecretRef) -> (WatchedSecret, Option<SourceError>) {
        let file_stamp = match &source {
            SecretRef::File(path) => stamp(path),
            SecretRef::Env(_) => None,
        };
        let watched = WatchedSecret {
            source,
            current: ArcSwapOption::empty(),
            failure: ArcSwapOption::empty(),
            stamp: Mutex::new(file_stamp),
        };
        let failure = watched.reload().err();
        (watched, failure)
    }

    fn reload(&self) -> Result<(), SourceError> {
        match read(&self.source) {
            Ok(secret) => {
                self.current.store(Some(Arc::new(secret)));
                self.failure.store(None);
                Ok(())
            }
            Err(e) => {
                self.current.store(None);
                self.failure.store(Some(Arc::new(e.clone())));
                Err(e)
            }
        }
    }

    /// The current value; `Err` says why there is none.
    pub fn current(&self) -> Result<Arc<Secret>, SourceError> {
        match self.current.load_full() {
            Some(secret) => Ok(secret),
            None => Err(self
                .failure
                .load_full()
                .map(|e| (*e).clone())
                .unwrap_or_else(|| SourceError::Env(String::new()))),
        }
    }

    /// Re-reads a file source whose stamp changed. `Some(result)` when it was re-read.
    pub fn refresh(&self) -> Option<Result<(), SourceError>> {
        let SecretRef::File(path) = &self.source else {
            return None;
        };
        let now = stamp(path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return None;
            }
            *last = now;
        }
        Some(self.reload())
    }

    /// Where the secret comes from (for log lines: a path or variable name, never a value).
    pub fn source(&self) -> &SecretRef {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rotates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-value\n").unwrap();
        let (watched, failure) = WatchedSecret::load(SecretRef::File(path.clone()));
        assert!(failure.is_none());
        assert_eq!(watched.current().unwrap().expose(), "first-value");
        assert!(watched.refresh().is_none(), "unchanged file is not re-read");
        std::fs::write(&path, "second-value-longer\n").unwrap();
        assert!(watched.refresh().unwrap().is_ok());
        assert_eq!(watched.current().unwrap().expose(), "second-value-longer");
        std::fs::remove_file(&path).unwrap();
        assert!(watched.refresh().unwrap().is_err());
        let error = watched.current().unwrap_err();
        assert!(matches!(error, SourceError::File { .. }), "{error}");
    }

    #[test]
    fn an_empty_or_missing_source_is_an_error_without_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(
            read(&SecretRef::File(path.clone())).unwrap_err(),
            SourceError::Empty(path)
        );
        assert!(read(&SecretRef::Env("TOLLGATE_TEST_SURELY_UNSET_VAR".into())).is_err());
    }
}
