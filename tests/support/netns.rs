//! Network namespaces for the sidecar tests: an "agent pod" namespace and an "origin" namespace
//! joined by a veth pair (IPv4 and IPv6), and ways to run a command inside one as the parties
//! of a pod run: root with every capability (setup), root with only NET_ADMIN (the init
//! container), or another UID with no capability at all (tollgate, the agent).
//!
//! Include it next to the shared harness:
//! ```ignore
//! mod support;
//! #[path = "support/netns.rs"]
//! mod netns;
//! ```
//!
//! Rules it keeps: it needs root and fails (never skips) without it, as CI runs as root; every
//! namespace is deleted when its owner drops, also while a test panics, and namespaces a killed
//! test run left behind are deleted by the next one; every command runs with a deadline.
//! Addresses are from the documentation ranges (192.0.2.0/24, 2001:db8::/32), only inside the
//! namespaces the test creates.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::support::{
    ChildGuard, Lines, command, is_root, require_tool, run_checked, run_with_timeout,
};

/// The UID the tests give tollgate (the proxy): its connections are exempt from the redirect.
pub const PROXY_UID: u32 = 1337;
/// The UID the tests give the agent: a different, unprivileged UID.
pub const AGENT_UID: u32 = 2000;

/// The agent pod's address on the veth pair.
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The origin namespace's first IPv4 address.
pub const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The origin namespace's second IPv4 address (for exclusion tests).
pub const ORIGIN_V4_ALT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// The agent pod's IPv6 address.
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The origin namespace's first IPv6 address.
pub const ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The origin namespace's second IPv6 address (for exclusion tests).
pub const ORIGIN_V6_ALT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);

/// How long one setup command may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Prefix of every namespace this harness creates: `tgns-<pid>-<n>-<role>`.
const PREFIX: &str = "tgns-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless the tests can create namespaces (root, `ip`, `setpriv`): in CI they must run.
pub fn require_netns_support() {
    assert!(
        is_root(),
        "the network-namespace tests need root (CI runs them as root); run `sudo -E cargo test`"
    );
    require_tool("ip");
    require_tool("setpriv");
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up; `role` becomes part of its name.
    pub fn create(role: &str) -> Netns {
        require_netns_support();
        remove_stale_namespaces();
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        setup(command(require_tool("ip")).args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.setup(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` inside the namespace as root with every capability: setup steps only.
    pub fn root(&self, program: impl AsRef<Path>) -> Command {
        let mut c = command(require_tool("ip"));
        c.args(["netns", "exec", &self.name]);
        c.arg(program.as_ref());
        c
    }

    /// `program` inside the namespace as root with NET_ADMIN as its only capability: what the
    /// injected init container has (`runAsUser: 0`, `drop: [ALL]`, `add: [NET_ADMIN]`).
    pub fn net_admin(&self, program: impl AsRef<Path>) -> Command {
        self.root_with_caps(&["net_admin"], program)
    }

    /// `program` inside the namespace as root with exactly the capabilities `caps` (lower-case
    /// names without `CAP_`, as setpriv takes them).
    pub fn root_with_caps(&self, caps: &[&str], program: impl AsRef<Path>) -> Command {
        let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
        let mut c = self.root(require_tool("setpriv"));
        c.arg(format!("--bounding-set=-all{set}"))
            .arg(format!("--inh-caps=-all{set}"))
            .arg(format!("--ambient-caps=-all{set}"))
            .arg("--");
        c.arg(program.as_ref());
        c
    }

    /// `program` inside the namespace as root with no capability at all.
    pub fn root_without_caps(&self, program: impl AsRef<Path>) -> Command {
        let mut c = self.root(require_tool("setpriv"));
        c.args(["--bounding-set=-all", "--inh-caps=-all", "--"]);
        c.arg(program.as_ref());
        c
    }

    /// `program` inside the namespace as `uid` (and gid `uid`), no supplementary groups, no
    /// capabilities, no new privileges: tollgate or the agent. `program` and every file it
    /// reads must be reachable by that UID (see [`stage_for_all_uids`]).
    pub fn user(&self, uid: u32, program: impl AsRef<Path>) -> Command {
        let mut c = self.root(require_tool("setpriv"));
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args([
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]);
        c.arg(program.as_ref());
        c.env("HOME", "/nonexistent");
        c
    }

    /// Runs a setup command (`args[0]` found on PATH) as root inside the namespace; panics with
    /// its stderr unless it succeeds.
    pub fn setup(&self, args: &[&str]) -> Output {
        let mut c = self.root(require_tool(args[0]));
        c.args(&args[1..]);
        setup(&mut c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = command("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` with the setup deadline; panics with its output unless it exits 0.
fn setup(cmd: &mut Command) -> Output {
    run_checked(cmd, SETUP_TIMEOUT)
}

/// Deletes `tgns-<pid>-…` namespaces whose test process no longer runs.
fn remove_stale_namespaces() {
    let out = run_with_timeout(
        command(require_tool("ip")).args(["netns", "list"]),
        SETUP_TIMEOUT,
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_with_timeout(
                command(require_tool("ip")).args(["netns", "del", name]),
                SETUP_TIMEOUT,
            );
        }
    }
}

/// An agent pod and an origin host: two namespaces joined by a veth pair, with
/// [`POD_V4`]/[`POD_V6`] on the pod's side and [`ORIGIN_V4`], [`ORIGIN_V4_ALT`],
/// [`ORIGIN_V6`], [`ORIGIN_V6_ALT`] on the origin's (same /24 and /64: no routes needed).
#[derive(Debug)]
pub struct PodNetwork {
    /// The agent pod's namespace (tollgate, the agent, the redirect rules).
    pub pod: Netns,
    /// The origin's namespace (servers the agent wants to reach).
    pub origin: Netns,
}

impl PodNetwork {
    /// Creates both namespaces and the link, and waits until each side reaches the other.
    pub fn new() -> PodNetwork {
        let pod = Netns::create("pod");
        let origin = Netns::create("origin");
        setup(command(require_tool("ip")).args([
            "link",
            "add",
            "tgpod0",
            "netns",
            pod.name(),
            "type",
            "veth",
            "peer",
            "name",
            "tgorigin0",
            "netns",
            origin.name(),
        ]));
        for (ns, dev, v4s, v6s) in [
            (&pod, "tgpod0", vec![POD_V4], vec![POD_V6]),
            (
                &origin,
                "tgorigin0",
                vec![ORIGIN_V4, ORIGIN_V4_ALT],
                vec![ORIGIN_V6, ORIGIN_V6_ALT],
            ),
        ] {
            for v4 in v4s {
                ns.setup(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            }
            for v6 in v6s {
                // nodad: the address is usable at once, not "tentative" for a second or two.
                ns.setup(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
            }
            ns.setup(&["ip", "link", "set", dev, "up"]);
        }
        wait_carrier(&pod, "tgpod0");
        wait_carrier(&origin, "tgorigin0");
        PodNetwork { pod, origin }
    }
}

/// Polls `ip link show` until `dev` has carrier (`LOWER_UP`): 200 tries, 10 ms apart.
fn wait_carrier(ns: &Netns, dev: &str) {
    let mut last = String::new();
    for _ in 0..200 {
        let out = ns.setup(&["ip", "-o", "link", "show", "dev", dev]);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if last.contains("LOWER_UP") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{dev} in {} never got carrier: {last}", ns.name());
}

/// A long-running process inside a namespace, killed on drop, its output captured by line.
pub struct NetnsProcess {
    /// The process (killed and reaped on drop).
    pub child: ChildGuard,
    /// Its stdout, line by line.
    pub stdout: Lines,
    /// Its stderr, line by line.
    pub stderr: Lines,
}

impl NetnsProcess {
    /// Spawns `cmd` with its stdout and stderr captured line by line.
    pub fn spawn(mut cmd: Command, label: &str) -> NetnsProcess {
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let stdout = Lines::capture(child.stdout.take().expect("piped stdout"), label);
        let stderr = Lines::capture(child.stderr.take().expect("piped stderr"), label);
        NetnsProcess {
            child: ChildGuard::new(child),
            stdout,
            stderr,
        }
    }

    /// Starts `cmd` and waits (up to `timeout`) for a stdout line for which `ready` is true.
    pub fn start(
        cmd: Command,
        label: &str,
        ready: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> NetnsProcess {
        let desc = format!("{cmd:?}");
        let process = NetnsProcess::spawn(cmd, label);
        if process.stdout.wait_for(0, ready, timeout).is_none() {
            panic!(
                "{desc} was not ready within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                process.stdout.text(),
                process.stderr.text()
            );
        }
        process
    }
}

/// Copies `files` into a fresh world-readable folder (mode 0755, files 0755), so a process
/// running as another UID can read or execute them wherever the checkout lives (a clone under
/// `/root` is out of reach of every other UID). The folder is removed when the `TempDir` drops.
pub fn stage_for_all_uids(files: &[&Path]) -> (tempfile::TempDir, Vec<PathBuf>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("tollgate-netns-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let mut staged = Vec::new();
    for file in files {
        let name = file.file_name().expect("a file name");
        let target = dir.path().join(name);
        std::fs::copy(file, &target)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", file.display(), target.display()));
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .expect("chmod staged file");
        staged.push(target);
    }
    (dir, staged)
}

/// Debian's own Python, which every UID can run (a pyenv interpreter under `/root` is not).
pub fn system_python() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    assert!(
        python.is_file(),
        "/usr/bin/python3 is missing; the network-namespace tests run Debian's python3 as \
         unprivileged UIDs (scripts/install-test-deps installs it)"
    );
    python
}

/// `tests/k8s/transparent_origin.py` in `origin` as root (HTTP on 80, HTTPS on 443 with
/// `origin.pem`/`origin-key.pem`, a banner service on 2222), all files in `dir`; waits for it.
pub fn start_transparent_origin(origin: &Netns, dir: &Path, timeout: Duration) -> NetnsProcess {
    let mut cmd = origin.root(system_python());
    cmd.arg("-I")
        .arg(dir.join("transparent_origin.py"))
        .args(["--name", "origin", "--cert"])
        .arg(dir.join("origin.pem"))
        .arg("--key")
        .arg(dir.join("origin-key.pem"));
    NetnsProcess::start(cmd, "origin", |l| l == "ready", timeout)
}

/// `tollgate redirect install` in `pod` with NET_ADMIN only, as the init step runs it; its
/// stdout.
pub fn install_redirect(
    pod: &Netns,
    tollgate: &Path,
    proxy_port: u16,
    timeout: Duration,
) -> String {
    let out = run_checked(
        pod.net_admin(tollgate).args([
            "redirect",
            "install",
            "--proxy-uid",
            &PROXY_UID.to_string(),
            "--proxy-port",
            &proxy_port.to_string(),
        ]),
        timeout,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tollgate run -c CONFIG` in `pod` as [`PROXY_UID`] with no capability, as the sidecar runs;
/// waits (up to `timeout`) for its `admin ready` line, which follows every listener's.
pub fn start_sidecar(
    pod: &Netns,
    tollgate: &Path,
    config: &Path,
    timeout: Duration,
) -> NetnsProcess {
    let mut cmd = pod.user(PROXY_UID, tollgate);
    cmd.arg("run").arg("-c").arg(config).env("RUST_LOG", "info");
    let process = NetnsProcess::spawn(cmd, "tollgate");
    assert!(
        process
            .stderr
            .wait_for(0, |l| l.contains("admin ready"), timeout)
            .is_some(),
        "tollgate not ready within {timeout:?}; stderr:\n{}",
        process.stderr.text()
    );
    process
}
