//! Runs the README's five-minute walkthrough as written: `tollgate run` with the built-in
//! configuration (fixed ports 15001/15000, as the README says), the export lines taken from the
//! banner it prints, the local API started by the README's own command, and every `curl` line
//! of the walkthrough compared with the output the README shows under it.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The walkthrough's shell lines, in order, with the expected output (`# …`) under each.
fn walkthrough() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("## Five minutes with curl")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the walkthrough section");
    let mut steps: Vec<(String, Option<String>)> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(expected) = line.strip_prefix("# ") {
            if let Some(last) = steps.last_mut() {
                last.1 = Some(expected.to_string());
            }
        } else if !line.trim().is_empty() {
            steps.push((line.to_string(), None));
        }
    }
    steps
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    let steps = walkthrough();
    let step = |prefix: &str| {
        steps
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("README walkthrough has no `{prefix}` line"))
            .0
            .clone()
    };
    assert!(step("./target/release/tollgate run").contains("tollgate run"));

    // 1. Start tollgate with the built-in configuration (no -c).
    let tg = Tollgate::builder()
        .expect_listeners(1)
        .expect_admin(true)
        .start();
    assert_eq!(tg.proxy_url(), "http://127.0.0.1:15001");
    assert_eq!(
        tg.admin_addr().map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:15000")
    );

    // 2. The banner's export lines, as an agent's shell would take them.
    let banner = tg.stderr_text();
    let exports: Vec<(String, String)> = banner
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: Vec<&str> = exports.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
    ] {
        assert!(
            names.contains(&name),
            "banner lacks export {name}:\n{banner}"
        );
    }
    assert!(
        banner.contains("export HTTPS_PROXY=http://127.0.0.1:15001"),
        "{banner}"
    );
    let ca = &exports
        .iter()
        .find(|(k, _)| k == "CURL_CA_BUNDLE")
        .unwrap()
        .1;
    assert!(
        std::path::Path::new(ca).is_file(),
        "the development CA exists: {ca}"
    );

    // 3. The local API, by the README's own commands (in a temp dir instead of /tmp/api).
    let api = tempfile::tempdir().unwrap();
    let api_dir = api.path().to_str().unwrap();
    let mkdir = step("mkdir -p /tmp/api").replace("/tmp/api", api_dir);
    let out = run_with_timeout(command("sh").args(["-c", &mkdir]), WAIT);
    assert!(out.status.success());
    let serve = step("python3 -m http.server").replace("/tmp/api", api_dir);
    let serve = serve.trim_end().trim_end_matches('&').trim();
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8765").is_ok(),
        "port 8765 (the README's local API) is taken by another process"
    );
    let _server = ChildGuard::new(
        command("sh")
            .args(["-c", &format!("exec {serve}")])
            .spawn()
            .unwrap(),
    );
    wait_for_port("127.0.0.1:8765".parse().unwrap(), WAIT).expect("the README's local API");

    // 4. Every curl line, with the banner's environment, against the README's expected output.
    let curls: Vec<&(String, Option<String>)> = steps
        .iter()
        .filter(|(l, _)| l.starts_with("curl "))
        .collect();
    assert_eq!(curls.len(), 2, "one allowed call, one denied call");
    for (line, expected) in curls {
        let mut cmd = command("sh");
        cmd.args(["-c", line]);
        for (k, v) in &exports {
            cmd.env(k, v);
        }
        let out = run_with_timeout(&mut cmd, WAIT);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let expected = expected
            .as_deref()
            .unwrap_or_else(|| panic!("no expected output under `{line}`"));
        match expected.split_once('…') {
            None => assert_eq!(got, expected, "`{line}`"),
            Some((before, after)) => {
                assert!(
                    got.starts_with(before) && got.ends_with(after),
                    "`{line}`: got {got}, README shows {expected}"
                );
            }
        }
    }

    // 5. The decision log: the allowed GET, the CONNECT to GitHub, the denied DELETE inside it.
    let get = tg.wait_decision(|d| d["request"]["method"] == "GET", WAIT);
    assert_eq!(get["decision"]["allow"], true);
    assert_eq!(
        get["source"]["spiffe_id"],
        "spiffe://tollgate.local/dev/agent"
    );
    let connect = tg.wait_decision(|d| d["request"]["method"] == "CONNECT", WAIT);
    assert_eq!(connect["request"]["host"], "api.github.com");
    let delete = tg.wait_decision(|d| d["request"]["method"] == "DELETE", WAIT);
    assert_eq!(delete["decision"]["reason"], "method_not_allowed");
}
