//! Secret sources: a file (re-read when it changes: rotation) or an environment variable.
//!
//! A file source is a [`Watched`] value: the request path reads the current value without a
//! lock; the reload loop (`app::reload`) polls the file's stamp and re-reads it only on a
//! change. An unreadable or empty file makes the credential unavailable (fail closed: a
//! removed secret must stop being injected, so its failure replaces the value rather than
//! keeping the last good one), reported once per change without the value.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::credentials::SecretRef;
use crate::watch::{Inputs, Rebuilt, Reloaded, Source, Watched};

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
    current: Watched<Result<Arc<Secret>, SourceError>>,
}

/// Reads a secret once: file contents (trailing whitespace and newlines trimmed) or env var.
pub fn read(source: &SecretRef) -> Result<Secret, SourceError> {
    match source {
        SecretRef::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| SourceError::File {
                path: path.clone(),
                // The OS's words ("No such file or directory", "Permission denied"): an
                // io::Error from a read never holds the file's contents.
                reason: e.to_string(),
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
    /// `what` names it in reload logs (the credential).
    pub fn load(source: SecretRef, what: &str) -> (WatchedSecret, Option<SourceError>) {
        let inputs = match &source {
            SecretRef::File(path) => Inputs::none().file(path),
            SecretRef::Env(_) => Inputs::none(),
        };
        let initial = read(&source).map(Arc::new);
        let failure = initial.as_ref().err().cloned();
        let rebuild = {
            let source = source.clone();
            move |_: &Arc<Result<Arc<Secret>, SourceError>>| match read(&source) {
                Ok(secret) => Rebuilt::Ok(Ok(Arc::new(secret))),
                Err(e) => {
                    let why = e.to_string();
                    Rebuilt::Degraded(Err(e), why)
                }
            }
        };
        let current = Watched::new(Source::Secret, what, initial, inputs, rebuild);
        (WatchedSecret { source, current }, failure)
    }

    /// The current value; `Err` says why there is none.
    pub fn current(&self) -> Result<Arc<Secret>, SourceError> {
        (**self.current.load()).clone()
    }

    /// Re-reads a file source whose stamp changed; `None` when nothing changed.
    pub fn poll(&self) -> Option<Reloaded<()>> {
        self.current.poll().map(Reloaded::erase)
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
        let (watched, failure) = WatchedSecret::load(SecretRef::File(path.clone()), "t");
        assert!(failure.is_none());
        assert_eq!(watched.current().unwrap().expose(), "first-value");
        assert!(watched.poll().is_none(), "unchanged file is not re-read");
        std::fs::write(&path, "second-value-longer\n").unwrap();
        assert!(watched.poll().unwrap().outcome.is_ok());
        assert_eq!(watched.current().unwrap().expose(), "second-value-longer");
        std::fs::remove_file(&path).unwrap();
        assert!(watched.poll().unwrap().outcome.is_err());
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
