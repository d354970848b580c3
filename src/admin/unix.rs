//! The admin API on a Unix socket (`admin.address: unix:///run/tollgate/admin.sock`), the
//! sidecar's choice: in a pod the agent shares loopback with tollgate, but not its UID, and a
//! Unix socket lets the kernel say who is calling.
//!
//! - **Created mode 0600, owned by tollgate's UID.** The socket is bound under a temporary
//!   name in the same folder, set to 0600, then renamed over the final path, so the final
//!   path is never connectable with looser permissions.
//! - **A stale socket is replaced safely.** An existing socket that still accepts connections
//!   belongs to a running tollgate: refused. One that refuses connections is stale and is
//!   replaced atomically by the rename. Anything else at the path (a file, a folder, a link)
//!   is never replaced.
//! - **Each peer's UID is checked** (`SO_PEERCRED`) against `admin.allowed_uids` (default:
//!   tollgate's own UID). A refused peer gets 403 on every request, a warning in the log and
//!   `tollgate_admin_refusals_total{reason="peer_uid"}`; a peer whose UID the kernel does not
//!   report is refused too.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use super::{Access, AdminState, accept_failed, serve_http};
use crate::telemetry::metrics::AdminRefusal;

/// The socket's permissions: read and write (connect) for its owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// Why the admin socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum UnixBindError {
    /// Another process (most likely another tollgate) is serving on the path.
    #[error("{0}: a live socket is already there (another tollgate running?)")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path; it is never replaced.
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path has no folder or file name.
    #[error("{0}: not a socket path")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> UnixBindError + '_ {
    move |source| UnixBindError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bound admin socket and the UIDs it serves.
#[derive(Debug)]
pub struct UnixAdmin {
    /// The listening socket.
    pub listener: UnixListener,
    /// Where it is.
    pub path: PathBuf,
    /// The peer UIDs allowed to use the API.
    pub allowed_uids: Vec<u32>,
    /// The socket's owner: tollgate's effective UID.
    pub owner_uid: u32,
}

/// Whatever is at `path` may be replaced: nothing, or a socket no process serves.
fn check_replaceable(path: &Path) -> Result<(), UnixBindError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path)(e)),
    };
    if !metadata.file_type().is_socket() {
        return Err(UnixBindError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixBindError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
        // Permission denied and the like: someone else's socket, whose state is unknown.
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Creates the admin socket at `path` (mode 0600, replacing a stale socket), serving
/// `allowed_uids`, or tollgate's own UID alone when `None`. Must run inside the runtime.
pub fn bind(path: &Path, allowed_uids: Option<&[u32]>) -> Result<UnixAdmin, UnixBindError> {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(UnixBindError::BadPath(path.to_path_buf()));
    };
    check_replaceable(path)?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = folder.join(temporary_name);
    // A leftover of an earlier start with the same PID; only ever a socket of ours.
    if std::fs::symlink_metadata(&temporary).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&temporary).map_err(io_error(&temporary))?;
    }
    let listener =
        std::os::unix::net::UnixListener::bind(&temporary).map_err(io_error(&temporary))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_error(path)(e));
    }
    let owner_uid = std::fs::metadata(path).map_err(io_error(path))?.uid();
    listener.set_nonblocking(true).map_err(io_error(path))?;
    let listener = UnixListener::from_std(listener).map_err(io_error(path))?;
    Ok(UnixAdmin {
        listener,
        path: path.to_path_buf(),
        allowed_uids: allowed_uids.map_or_else(|| vec![owner_uid], <[u32]>::to_vec),
        owner_uid,
    })
}

/// What a peer with this UID (if the kernel told it) may do.
pub fn access_for(peer_uid: Option<u32>, allowed_uids: &[u32]) -> Access {
    match peer_uid {
        Some(uid) if allowed_uids.contains(&uid) => Access::Full,
        Some(uid) => Access::Refused(format!("peer UID {uid} is not in admin.allowed_uids").into()),
        None => Access::Refused("the peer's UID is unknown (SO_PEERCRED failed)".into()),
    }
}

/// Serves the admin API on the socket until the process stops, each connection with the
/// access its peer's UID gives it.
pub async fn serve(admin: UnixAdmin, state: Arc<AdminState>) {
    let allowed: Arc<[u32]> = admin.allowed_uids.into();
    loop {
        let stream = match admin.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let credentials = stream.peer_cred().ok();
        let peer_uid = credentials.map(|c| c.uid());
        let access = access_for(peer_uid, &allowed);
        if matches!(access, Access::Refused(_)) {
            let peer_pid = credentials.and_then(|c| c.pid()).unwrap_or(0);
            match peer_uid {
                Some(uid) => tracing::warn!(
                    peer_uid = uid,
                    peer_pid,
                    "admin caller refused: peer UID not in admin.allowed_uids"
                ),
                None => tracing::warn!("admin caller refused: the kernel did not report its UID"),
            }
            state.metrics.admin_refused(AdminRefusal::PeerUid);
        }
        tokio::spawn(serve_http(stream, state.clone(), access));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_the_socket_0600_owned_by_this_process_and_defaults_to_its_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let admin = bind(&path, None).unwrap();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.mode() & 0o777, SOCKET_MODE);
        let own_uid = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!((admin.owner_uid, metadata.uid()), (own_uid, own_uid));
        assert_eq!(admin.allowed_uids, vec![own_uid]);
        // Only the socket is left in the folder: no temporary name.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("admin.sock")]);
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_never_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        // Stale: bound, then its listener dropped (connections are refused).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let admin = bind(&path, Some(&[4242])).unwrap();
        assert_eq!(admin.allowed_uids, vec![4242]);
        // Live: the socket just bound still listens.
        assert!(matches!(bind(&path, None), Err(UnixBindError::InUse(_))));
        drop(admin);
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            bind(&file, None),
            Err(UnixBindError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(
            bind(&link, None),
            Err(UnixBindError::NotASocket(_))
        ));
    }

    #[test]
    fn a_peer_is_allowed_only_by_a_listed_uid() {
        assert!(matches!(access_for(Some(1337), &[1337]), Access::Full));
        match access_for(Some(1000), &[1337]) {
            Access::Refused(message) => {
                assert_eq!(&*message, "peer UID 1000 is not in admin.allowed_uids")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(access_for(None, &[1337]), Access::Refused(_)));
        assert!(matches!(access_for(Some(0), &[1337]), Access::Refused(_)));
    }
}
