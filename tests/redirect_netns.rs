//! `tollgate redirect install|remove` in real network namespaces (root; CI runs as root).
//!
//! An agent-pod namespace and an origin namespace are joined by a veth pair (IPv4 and IPv6).
//! The rules are installed by the real binary running with NET_ADMIN as its only capability,
//! as the injected init container does. In the pod, a probe listener runs as the proxy's UID on
//! the proxy port and answers with the original destination it reads from the kernel
//! (`tests/k8s/netns_peer.py`, Python's own `getsockopt`, independent of tollgate's code);
//! clients (curl, Python) run as the agent's UID with no capabilities. Each answer says which
//! server a connection really reached: the probe (redirected) or an origin (direct).
//!
//! These tests fail, never skip, when they cannot create namespaces.

#[path = "support/netns.rs"]
mod netns;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use netns::*;
use support::*;

/// The proxy port the rules redirect to (the transparent listener's, in a real pod).
const PROXY_PORT: u16 = 15001;
/// A UID that is neither the proxy nor the agent, for the pod's own local server.
const LOCAL_UID: u32 = 3000;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn tollgate() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// The namespaces, with a probe on the proxy port, an origin on ports 80 and 2222 (both origin
/// addresses, both families), and a local server in the pod on port 8081.
struct Scene {
    // Processes first: they are killed before the namespaces go.
    _probe: NetnsProcess,
    _origin: NetnsProcess,
    _local: NetnsProcess,
    net: PodNetwork,
    _staged: tempfile::TempDir,
}

fn scene() -> Scene {
    let net = PodNetwork::new();
    let (staged, files) = stage_for_all_uids(&[&repo_root().join("tests/k8s/netns_peer.py")]);
    let peer = |cmd: &mut std::process::Command, args: &[&str]| {
        cmd.arg("-I").arg(&files[0]).args(args);
    };
    let python = system_python();
    let mut probe = net.pod.user(PROXY_UID, &python);
    peer(&mut probe, &["probe", "--port", &PROXY_PORT.to_string()]);
    let mut origin = net.origin.root(&python);
    peer(
        &mut origin,
        &[
            "origin", "--name", "origin", "--port", "80", "--port", "2222",
        ],
    );
    let mut local = net.pod.user(LOCAL_UID, &python);
    peer(&mut local, &["origin", "--name", "local", "--port", "8081"]);
    let ready = |line: &str| line == "ready";
    Scene {
        _probe: NetnsProcess::start(probe, "probe", ready, READY_TIMEOUT),
        _origin: NetnsProcess::start(origin, "origin", ready, READY_TIMEOUT),
        _local: NetnsProcess::start(local, "local", ready, READY_TIMEOUT),
        net,
        _staged: staged,
    }
}

/// `tollgate redirect ARGS…` in the pod with NET_ADMIN only; `path` replaces PATH when given
/// (to choose the backend by what is found).
fn redirect_cmd(net: &PodNetwork, args: &[&str], path: Option<&Path>) -> Command {
    let mut cmd = net.pod.net_admin(tollgate());
    cmd.arg("redirect").args(args);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd
}

/// [`redirect_cmd`] run to completion, whatever its exit.
fn redirect(net: &PodNetwork, args: &[&str], path: Option<&Path>) -> Output {
    run_with_timeout(&mut redirect_cmd(net, args, path), COMMAND_TIMEOUT)
}

/// [`redirect_cmd`] that must succeed: its stdout.
fn redirect_ok(net: &PodNetwork, args: &[&str], path: Option<&Path>) -> String {
    stdout_of(&mut redirect_cmd(net, args, path))
}

/// Runs `cmd`, which must succeed; its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_checked(cmd, COMMAND_TIMEOUT).stdout).into_owned()
}

/// GETs `url` with curl in the pod as `uid`: the JSON the answering server wrote, or curl's error.
fn curl_as(net: &PodNetwork, uid: u32, url: &str) -> Result<serde_json::Value, String> {
    let out = run_with_timeout(
        net.pod
            .user(uid, require_tool("curl"))
            .args(["-sS", "-g", "--max-time", "5", url]),
        COMMAND_TIMEOUT,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Which server answered `url` (`probe`, `origin`, `local`), and what it reported.
fn reached(net: &PodNetwork, uid: u32, url: &str) -> (String, String) {
    let body = curl_as(net, uid, url).unwrap_or_else(|e| panic!("{url} as uid {uid}: {e}"));
    let via = body["via"].as_str().unwrap_or_default().to_string();
    let detail = body["original_dst"]
        .as_str()
        .or(body["local"].as_str())
        .unwrap_or_default()
        .to_string();
    (via, detail)
}

fn assert_redirected(net: &PodNetwork, uid: u32, host_port: &str) {
    let url = format!("http://{host_port}/");
    assert_eq!(
        reached(net, uid, &url),
        ("probe".to_string(), host_port.to_string()),
        "{url} as uid {uid} must land on the proxy port with its original destination"
    );
}

fn assert_direct(net: &PodNetwork, uid: u32, host_port: &str, server: &str) {
    let url = format!("http://{host_port}/");
    let (via, _) = reached(net, uid, &url);
    assert_eq!(via, server, "{url} as uid {uid} must not be redirected");
}

/// `iptables-save` and `ip6tables-save` of the pod, without their timestamp comments.
fn iptables_snapshot(net: &PodNetwork) -> String {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .map(|tool| {
            let out = net.pod.setup(&[tool]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn nft_snapshot(net: &PodNetwork) -> String {
    String::from_utf8_lossy(&net.pod.setup(&["nft", "list", "ruleset"]).stdout).into_owned()
}

/// A folder whose only entries are symlinks to `tools`: as PATH, it decides the backend.
fn path_with_only(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for tool in tools {
        std::os::unix::fs::symlink(require_tool(tool), dir.path().join(tool)).expect("symlink");
    }
    dir
}

/// `install` with only the required flags.
const INSTALL_PLAIN: &[&str] = &["install", "--proxy-uid", "1337", "--proxy-port", "15001"];

const INSTALL: &[&str] = &[
    "install",
    "--proxy-uid",
    "1337",
    "--proxy-port",
    "15001",
    "--exclude-ports",
    "2222",
    "--exclude-cidrs",
    "192.0.2.3,2001:db8::3",
];

#[test]
fn redirects_agent_tcp_to_the_proxy_port_except_proxy_uid_loopback_and_exclusions() {
    let scene = scene();
    let net = &scene.net;
    // Before: the agent reaches the origin directly.
    assert_direct(net, AGENT_UID, "192.0.2.2:80", "origin");

    let stdout = redirect_ok(net, INSTALL, None);
    assert!(
        stdout.contains("ipv4: installed") && stdout.contains("ipv6: installed"),
        "{stdout}"
    );

    // The agent's connections, IPv4 and IPv6, any port: on the proxy port, original
    // destination intact.
    assert_redirected(net, AGENT_UID, "192.0.2.2:80");
    assert_redirected(net, AGENT_UID, "[2001:db8::2]:80");
    assert_redirected(net, AGENT_UID, "192.0.2.2:8443");
    // Another client (Python's http.client) is redirected the same way.
    let python = stdout_of(net.pod.user(AGENT_UID, system_python()).args([
        "-I",
        "-c",
        "import http.client,sys; c=http.client.HTTPConnection(sys.argv[1], 80, timeout=5); \
             c.request('GET','/'); print(c.getresponse().read().decode())",
        "2001:db8::2",
    ]));
    let body: serde_json::Value = serde_json::from_str(&python).expect("json");
    assert_eq!(body["original_dst"], "[2001:db8::2]:80", "{body}");

    // The proxy's own UID goes out directly: its upstream connections must not loop.
    assert_direct(net, PROXY_UID, "192.0.2.2:80", "origin");
    assert_direct(net, PROXY_UID, "[2001:db8::2]:80", "origin");
    // Loopback and the pod's own addresses stay local.
    assert_direct(net, AGENT_UID, "127.0.0.1:8081", "local");
    assert_direct(net, AGENT_UID, "[::1]:8081", "local");
    assert_direct(net, AGENT_UID, "192.0.2.1:8081", "local");
    assert_direct(net, AGENT_UID, "[2001:db8::1]:8081", "local");
    // Excluded ports and CIDRs, both families.
    assert_direct(net, AGENT_UID, "192.0.2.2:2222", "origin");
    assert_direct(net, AGENT_UID, "[2001:db8::2]:2222", "origin");
    assert_direct(net, AGENT_UID, "192.0.2.3:80", "origin");
    assert_direct(net, AGENT_UID, "[2001:db8::3]:80", "origin");
}

#[test]
fn second_install_changes_nothing_and_remove_restores_direct_access_leaving_other_rules() {
    let scene = scene();
    let net = &scene.net;
    // Someone else's rules, in the same tables tollgate uses and in another one.
    net.pod.setup(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "203.0.113.9/32",
        "-j",
        "RETURN",
    ]);
    net.pod.setup(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-d",
        "203.0.113.10/32",
        "-j",
        "ACCEPT",
    ]);
    net.pod.setup(&[
        "ip6tables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "2001:db8:ffff::9/128",
        "-j",
        "RETURN",
    ]);
    let before = iptables_snapshot(net);

    redirect_ok(net, INSTALL, None);
    let installed = iptables_snapshot(net);
    assert!(installed.contains("-A TOLLGATE_OUTPUT -p tcp -j REDIRECT --to-ports 15001"));
    assert!(installed.contains("-A OUTPUT -d 203.0.113.9/32 -j RETURN"));

    let again = redirect_ok(net, INSTALL, None);
    assert_eq!(
        again,
        "ipv4: unchanged (iptables (nf_tables))\nipv6: unchanged (iptables (nf_tables))\n"
    );
    assert_eq!(
        iptables_snapshot(net),
        installed,
        "a second install changed the rules"
    );
    assert_redirected(net, AGENT_UID, "192.0.2.2:80");

    // Different flags converge: the chain is rewritten, the single jump kept.
    let changed = redirect_ok(net, INSTALL_PLAIN, None);
    assert!(changed.contains("ipv4: installed"), "{changed}");
    assert_redirected(net, AGENT_UID, "192.0.2.3:80");
    let converged = iptables_snapshot(net);
    assert_eq!(
        converged.matches("-j TOLLGATE_OUTPUT").count(),
        2,
        "one jump per family: {converged}"
    );

    let removed = redirect_ok(net, &["remove"], None);
    assert!(
        removed.contains("ipv4: removed") && removed.contains("ipv6: removed"),
        "{removed}"
    );
    assert_eq!(
        iptables_snapshot(net),
        before,
        "remove must restore exactly the rules before"
    );
    assert_direct(net, AGENT_UID, "192.0.2.2:80", "origin");
    assert_direct(net, AGENT_UID, "[2001:db8::2]:80", "origin");
    let twice = redirect_ok(net, &["remove"], None);
    assert!(twice.contains("ipv4: nothing to remove"), "{twice}");
}

#[test]
fn nft_backend_redirects_is_idempotent_and_removes_only_its_tables() {
    let scene = scene();
    let net = &scene.net;
    let only_nft = path_with_only(&["nft"]);
    net.pod.setup(&["nft", "add", "table", "inet", "unrelated"]);
    net.pod.setup(&[
        "nft",
        "add chain inet unrelated out { type filter hook output priority 0; policy accept; }",
    ]);
    net.pod.setup(&[
        "nft",
        "add rule inet unrelated out ip daddr 203.0.113.9 accept",
    ]);
    let before = nft_snapshot(net);

    let first = redirect_ok(net, INSTALL, Some(only_nft.path()));
    assert_eq!(first, "ipv4: installed (nft)\nipv6: installed (nft)\n");
    let installed = nft_snapshot(net);
    assert!(installed.contains("table ip tollgate") && installed.contains("table ip6 tollgate"));
    assert_redirected(net, AGENT_UID, "192.0.2.2:80");
    assert_redirected(net, AGENT_UID, "[2001:db8::2]:80");
    assert_direct(net, PROXY_UID, "[2001:db8::2]:80", "origin");
    assert_direct(net, AGENT_UID, "192.0.2.3:80", "origin");
    assert_direct(net, AGENT_UID, "[2001:db8::2]:2222", "origin");
    assert_direct(net, AGENT_UID, "[::1]:8081", "local");

    let second = redirect_ok(net, INSTALL, Some(only_nft.path()));
    assert_eq!(second, "ipv4: unchanged (nft)\nipv6: unchanged (nft)\n");
    assert_eq!(nft_snapshot(net), installed);

    redirect_ok(net, &["remove"], Some(only_nft.path()));
    assert_eq!(
        nft_snapshot(net),
        before,
        "remove must leave exactly the other tables"
    );
    assert_direct(net, AGENT_UID, "192.0.2.2:80", "origin");
}

#[test]
fn legacy_iptables_needs_net_raw_as_well_and_then_redirects() {
    let scene = scene();
    let net = &scene.net;
    let legacy = tempfile::tempdir().unwrap();
    for name in [
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
    ] {
        std::os::unix::fs::symlink(
            require_tool("xtables-legacy-multi"),
            legacy.path().join(name),
        )
        .unwrap();
    }
    let refused = redirect(net, INSTALL, Some(legacy.path()));
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "tollgate redirect: needs the NET_ADMIN and NET_RAW capabilities (legacy iptables opens \
         a raw socket); this process does not have it (as the init container: runAsUser 0, \
         capabilities add [NET_ADMIN, NET_RAW], drop [ALL])\n"
    );
    let with_raw = |args: &[&str]| {
        let mut cmd = net
            .pod
            .root_with_caps(&["net_admin", "net_raw"], tollgate());
        cmd.arg("redirect").args(args).env("PATH", legacy.path());
        stdout_of(&mut cmd)
    };
    assert_eq!(
        with_raw(INSTALL),
        "ipv4: installed (iptables (legacy))\nipv6: installed (iptables (legacy))\n"
    );
    assert_eq!(
        with_raw(INSTALL),
        "ipv4: unchanged (iptables (legacy))\nipv6: unchanged (iptables (legacy))\n"
    );
    assert_redirected(net, AGENT_UID, "192.0.2.2:80");
    assert_redirected(net, AGENT_UID, "[2001:db8::2]:80");
    assert_direct(net, PROXY_UID, "192.0.2.2:80", "origin");
    assert!(with_raw(&["remove"]).contains("ipv4: removed"));
    assert_direct(net, AGENT_UID, "192.0.2.2:80", "origin");
}

#[test]
fn ipv6_off_leaves_ipv6_alone_and_refuses_ipv6_exclusions() {
    let net = PodNetwork::new();
    let out = redirect_ok(&net, &[INSTALL_PLAIN, &["--ipv6", "off"]].concat(), None);
    assert_eq!(
        out,
        "ipv4: installed (iptables (nf_tables))\nipv6: not redirected (--ipv6) (iptables (nf_tables))\n"
    );
    let rules = iptables_snapshot(&net);
    let (v4, v6) = rules.split_once("\n---\n").expect("two snapshots");
    assert!(
        v4.contains("TOLLGATE_OUTPUT") && !v6.contains("TOLLGATE_OUTPUT"),
        "{rules}"
    );

    let refused = redirect(
        &net,
        &[
            INSTALL_PLAIN,
            &["--ipv6", "off", "--exclude-cidrs", "fd00::/8"],
        ]
        .concat(),
        None,
    );
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "--exclude-cidrs: fd00::/8 is an IPv6 range, but --ipv6 is off\n"
    );
}

#[test]
fn refuses_without_net_admin_with_exit_2_and_one_clear_line() {
    let net = PodNetwork::new();
    let expected = "tollgate redirect: needs the NET_ADMIN capability (to change the network \
                    namespace's nat rules); this process does not have it (as the init \
                    container: runAsUser 0, capabilities add [NET_ADMIN], drop [ALL])\n";
    // A copy every UID can execute, wherever the checkout lives.
    let (_staged, staged) = stage_for_all_uids(&[&tollgate()]);
    let without_caps = || net.pod.root_without_caps(tollgate());
    let unprivileged = || net.pod.user(AGENT_UID, &staged[0]);
    let callers: [(&str, &dyn Fn() -> std::process::Command); 2] = [
        ("root without capabilities", &without_caps),
        ("an unprivileged UID", &unprivileged),
    ];
    for (who, make) in callers {
        for args in [INSTALL, &["remove"]] {
            let out = run_with_timeout(make().arg("redirect").args(args), COMMAND_TIMEOUT);
            assert_eq!(out.status.code(), Some(2), "{who} {args:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                expected,
                "{who} {args:?}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    assert!(!iptables_snapshot(&net).contains("TOLLGATE"));
}

#[test]
fn dry_run_prints_one_rule_per_line_and_changes_nothing() {
    let net = PodNetwork::new();
    let mut cmd = net.pod.root_without_caps(tollgate());
    cmd.arg("redirect").args(INSTALL).arg("--dry-run");
    let out = stdout_of(&mut cmd);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 14, "{out}");
    assert_eq!(lines[0], "iptables -t nat -N TOLLGATE_OUTPUT");
    assert!(lines.contains(&"iptables -t nat -A TOLLGATE_OUTPUT -d 192.0.2.3/32 -j RETURN"));
    assert!(lines.contains(&"ip6tables -t nat -A TOLLGATE_OUTPUT -d 2001:db8::3/128 -j RETURN"));
    assert!(lines.contains(
        &"iptables -t nat -A TOLLGATE_OUTPUT -p tcp -m multiport --dports 2222 -j RETURN"
    ));
    assert_eq!(
        lines[13],
        "ip6tables -t nat -I OUTPUT 1 -p tcp -j TOLLGATE_OUTPUT"
    );
    assert!(!iptables_snapshot(&net).contains("TOLLGATE"));
}

/// tollgate's own SO_ORIGINAL_DST helper, run inside the pod namespace (this test binary
/// re-executes itself there, as root, running [`original_dst_probe_inside_the_pod`]).
#[test]
fn original_dst_helper_recovers_ipv4_and_ipv6_destinations() {
    let net = PodNetwork::new();
    redirect_ok(&net, INSTALL, None);
    let mut cmd = net.pod.root(std::env::current_exe().expect("current exe"));
    cmd.args([
        "--exact",
        "original_dst_probe_inside_the_pod",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TOLLGATE_NETNS_PROBE_PORT", PROXY_PORT.to_string());
    let out = stdout_of(&mut cmd);
    assert!(out.contains("1 passed"), "{out}");
}

#[test]
#[ignore = "runs inside the pod namespace, started by original_dst_helper_recovers_ipv4_and_ipv6_destinations"]
fn original_dst_probe_inside_the_pod() {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let port: u16 = std::env::var("TOLLGATE_NETNS_PROBE_PORT")
        .expect("started by original_dst_helper_recovers_ipv4_and_ipv6_destinations")
        .parse()
        .expect("a port");
    for (listen, target) in [
        (format!("127.0.0.1:{port}"), "192.0.2.2:443"),
        (format!("[::1]:{port}"), "[2001:db8::2]:8443"),
    ] {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind(&listen).expect("bind the proxy port");
        listener.set_nonblocking(true).unwrap();
        // Nothing listens at the target: only the redirect can make this connect succeed.
        let client = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {target}: {e}"));
        assert_eq!(
            client.peer_addr().unwrap(),
            target,
            "the client sees the original"
        );
        let mut accepted = None;
        for _ in 0..500 {
            match listener.accept() {
                Ok((stream, _)) => {
                    accepted = Some(stream);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        let server = accepted.expect("the redirected connection arrives within 5 s");
        let local = server.local_addr().unwrap();
        let found = tollgate::net::original_dst::original_dst(&server, local)
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(found, target);
        println!("{listen}: original destination {found}");
    }
}
