//! The kill file (`admin.kill_file`): kills persisted so a restart keeps them.
//!
//! Written atomically (a complete 0600 temp file, fsynced, renamed over the old one, then the
//! folder fsynced), so a crash leaves the old file or the new one, never half. Read strictly:
//! an unreadable or corrupt file is an error naming it, never an empty set, because silently
//! lifting kills is the one failure a kill switch must not have.
//!
//! Owned by one process: [`own`] takes an exclusive advisory lock (`flock`) on a sibling lock
//! file, `<kill file>.lock`, held for the life of the process, so a second tollgate naming the
//! same kill file refuses to start instead of overwriting the first one's kills. The lock is on
//! its own file because the kill file itself is replaced by rename (a lock on it would stay on
//! the old inode); the lock file is never deleted (deleting it would let a third process lock a
//! fresh inode while the first still holds the old one). The kernel drops the lock when the
//! process dies, `kill -9` included, so a restart is never blocked by a stale lock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::KillError;
use super::set::{Kill, KillTarget};

/// The only kill-file format this version reads and writes.
const FILE_VERSION: u64 = 1;

/// Now, cut to whole milliseconds: the file stores milliseconds, and a kill read back must
/// equal the kill written.
pub(super) fn now_millis() -> SystemTime {
    whole_millis(SystemTime::now())
}

/// `time` truncated to the millisecond: the precision the file keeps, so that what is read
/// is what would be written back.
fn whole_millis(time: SystemTime) -> SystemTime {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_millis() * 1_000_000)
}

/// RFC 3339 with milliseconds, as the policy input writes times. humantime's `Display` fails
/// for times it cannot write (before 1970, after 9999); those cannot come from `now()` or the
/// file's parser, but a fallback beats a panic.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if time < UNIX_EPOCH || write!(out, "{}", humantime::format_rfc3339_millis(time)).is_err() {
        return "1970-01-01T00:00:00.000Z".to_owned();
    }
    out
}

/// The kill file as written: `{"version": 1, "kills": [kill, …]}`.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u64,
    kills: Vec<&'a Kill>,
}

/// Read first on its own, so a future format gets "unsupported version" rather than a
/// confusing complaint about its fields.
#[derive(Deserialize)]
struct FileVersion {
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[allow(dead_code)] // checked through FileVersion first
    version: u64,
    kills: Vec<KillIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillIn {
    id: String,
    target: KillTarget,
    created: String,
    #[serde(default)]
    reason: Option<String>,
}

pub(super) fn load(path: &Path) -> Result<Vec<Arc<Kill>>, KillError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KillError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    parse(path, &bytes)
}

/// Parses a kill file's bytes strictly (`path` only names it in errors): the reader that
/// start-up uses, public for the fuzz target (`fuzz/src/kill_file.rs`).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Arc<Kill>>, KillError> {
    let corrupt = |message: String| KillError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // tollgate never writes an empty file (it renames a complete one into place), so an
        // empty one is damage or a hand edit; refuse it like any other corrupt file.
        return Err(corrupt("the file is empty".into()));
    }
    let version: FileVersion = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    match version.version {
        Some(FILE_VERSION) => {}
        Some(other) => {
            return Err(corrupt(format!(
                "version {other} is not supported (this tollgate reads version {FILE_VERSION})"
            )));
        }
        None => return Err(corrupt("missing field `version`".into())),
    }
    let file: FileIn = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut kills: Vec<Arc<Kill>> = Vec::with_capacity(file.kills.len());
    for (index, raw) in file.kills.into_iter().enumerate() {
        let id = uuid::Uuid::try_parse(&raw.id)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| corrupt(format!("kills[{index}].id is not a UUID")))?;
        // A hand-written time finer than a millisecond is kept to the millisecond, as written
        // back (fuzzing found `.1232Z` read as 123.2 ms and written as `.123Z`).
        let created = humantime::parse_rfc3339(&raw.created)
            .map(whole_millis)
            .map_err(|e| {
                corrupt(format!(
                    "kills[{index}].created is not an RFC 3339 UTC time: {e}"
                ))
            })?;
        super::validate_reason(raw.reason.as_deref())
            .map_err(|e| corrupt(format!("kills[{index}].reason: {e}")))?;
        if let Some(other) = kills.iter().find(|k| k.id == id || k.target == raw.target) {
            return Err(corrupt(format!(
                "kills[{index}] repeats the id or target of {other}"
            )));
        }
        kills.push(Arc::new(Kill {
            id,
            target: raw.target,
            created,
            reason: raw.reason,
        }));
    }
    Ok(kills)
}

/// The folder the kill file lives in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A temporary name next to the kill file, so the final rename stays on one file system.
fn temp_name(path: &Path, purpose: &str) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kills");
    folder(path).join(format!(
        ".{name}.{purpose}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Creates a private (0600) file that did not exist, for the temp file and the probe.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Proves at start-up that the folder takes new files (a read-only mount is the usual trap),
/// so a kill is not the first write to find out.
pub(super) fn probe_writable(path: &Path) -> Result<(), KillError> {
    let probe = temp_name(path, "probe");
    create_private(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| KillError::Read {
            path: path.to_path_buf(),
            message: format!("cannot create files in {}: {e}", folder(path).display()),
        })
}

/// The lock file that says which process owns `path`: `<kill file>.lock`, next to it.
pub fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kills");
    folder(path).join(format!("{name}.lock"))
}

/// Takes ownership of the kill file for this process: an exclusive, non-blocking `flock` on
/// [`lock_path`], created 0600 if missing. The returned file holds the lock until it is
/// dropped (or the process ends). Another holder is [`KillError::InUse`]; a lock file that
/// cannot be created or locked is [`KillError::Read`].
pub(super) fn own(path: &Path) -> Result<std::fs::File, KillError> {
    let lock = lock_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&lock).map_err(|e| KillError::Read {
        path: path.to_path_buf(),
        message: format!("cannot open its lock file {}: {e}", lock.display()),
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(KillError::InUse {
            path: path.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(KillError::Read {
            path: path.to_path_buf(),
            message: format!("cannot lock {}: {e}", lock.display()),
        }),
    }
}

/// The kill file's text for `kills`, as [`save`] writes it (and [`parse`] reads it back).
pub fn render(kills: &[Arc<Kill>]) -> Result<String, serde_json::Error> {
    let file = FileOut {
        version: FILE_VERSION,
        kills: kills.iter().map(|kill| kill.as_ref()).collect(),
    };
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    Ok(text)
}

/// Writes the kill file atomically: a complete 0600 temp file, fsynced, renamed over the old
/// one, then the folder fsynced; a crash leaves the old file or the new one, never half.
pub(super) fn save(path: &Path, kills: &[Arc<Kill>]) -> Result<(), KillError> {
    let persist = |message: String| KillError::Persist {
        path: path.to_path_buf(),
        message,
    };
    let text = render(kills).map_err(|e| persist(e.to_string()))?;
    let tmp = temp_name(path, "new");
    let written = create_private(&tmp).and_then(|mut out| {
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(persist(e.to_string()));
    }
    // The rename is done: the new file is what a restart reads, unless the machine loses power
    // before the folder's entry reaches the disk. Failing now would make memory disagree with
    // the file, so a failed folder fsync is only logged.
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(folder(path)).and_then(|dir| dir.sync_all()) {
        tracing::warn!(file = %path.display(), error = %e, "kill file: cannot fsync its folder");
    }
    Ok(())
}
