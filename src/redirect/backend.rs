//! Which firewall command this machine has, and running it.
//!
//! Found on `PATH`, in this order: `iptables` (its nf_tables backend, or legacy, which also
//! needs NET_RAW), then `nft`. Nothing else is searched, so an image or a test chooses the
//! backend by what it puts on `PATH`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::RedirectError;

/// The firewall command in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// iptables with the nf_tables backend (`iptables -V` says `nf_tables`).
    IptablesNft(Tools),
    /// iptables with the legacy x_tables backend: needs NET_RAW as well as NET_ADMIN.
    IptablesLegacy(Tools),
    /// The nftables command.
    Nft(PathBuf),
}

/// The iptables family of programs, all from the same installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `iptables`.
    pub iptables: PathBuf,
    /// `ip6tables` (absent: IPv6 cannot be handled with this backend).
    pub ip6tables: Option<PathBuf>,
    /// `iptables-restore`.
    pub restore: PathBuf,
    /// `ip6tables-restore`.
    pub restore6: Option<PathBuf>,
}

impl Backend {
    /// Detects the backend from `PATH`; `Ok(None)` when neither iptables nor nft is there.
    pub fn detect() -> Result<Option<Backend>, RedirectError> {
        if let (Some(iptables), Some(restore)) =
            (find_on_path("iptables"), find_on_path("iptables-restore"))
        {
            let tools = Tools {
                iptables,
                ip6tables: find_on_path("ip6tables"),
                restore,
                restore6: find_on_path("ip6tables-restore"),
            };
            let version = run(&tools.iptables, &["-V"], None)?;
            return Ok(Some(if version.contains("legacy") {
                Backend::IptablesLegacy(tools)
            } else {
                Backend::IptablesNft(tools)
            }));
        }
        Ok(find_on_path("nft").map(Backend::Nft))
    }

    /// How the backend is named in messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::IptablesNft(_) => "iptables (nf_tables)",
            Backend::IptablesLegacy(_) => "iptables (legacy)",
            Backend::Nft(_) => "nft",
        }
    }
}

/// The first executable called `name` in a `PATH` directory.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args…` (with `stdin` fed in when given) and returns its stdout; a non-zero
/// exit is [`RedirectError::Command`] with the command line and the first line of stderr.
pub fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, RedirectError> {
    let command_line = || {
        let mut words = vec![program.display().to_string()];
        words.extend(args.iter().map(|a| a.to_string()));
        words.join(" ")
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RedirectError::Command {
            command: command_line(),
            detail: e.to_string(),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| RedirectError::Command {
                command: command_line(),
                detail: format!("writing its input: {e}"),
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| RedirectError::Command {
            command: command_line(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| output.status.to_string());
    Err(RedirectError::Command {
        command: command_line(),
        detail,
    })
}
