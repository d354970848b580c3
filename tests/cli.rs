//! The command line (SPEC §1): exit codes, `check` on every example configuration and on broken
//! ones, `certs` verified with openssl, `policy eval` / `policy test`, `version`.

mod support;

use std::path::Path;

use support::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn prints_version_revision_and_engines() {
    let out = Tollgate::run_cli(&["version"]);
    assert!(out.status.success());
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!("tollgate {} (git ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains("engines: rego, wasm"), "{line}");
}

#[test]
fn accepts_every_example_configuration() {
    // The examples reference certs/ and ../policy-wasm/: give them both, made with tollgate and
    // openssl, in a copy of the repository layout.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("config"), &dir.path().join("config"));
    copy_dir(
        &repo_root().join("policy-wasm"),
        &dir.path().join("policy-wasm"),
    );
    let certs = dir.path().join("config/certs");
    let out = Tollgate::run_cli(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--trust-domain",
        "example.org",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        certs.join("proxy-key.pem").to_str().unwrap(),
        "-out",
        certs.join("proxy.pem").to_str().unwrap(),
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Tollgate::run_cli(&["check", "-c", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            assert!(text(&out.stdout).ends_with(": ok\n"));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example configurations");
}

#[test]
fn reports_every_problem_of_a_broken_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - name: Agents!\n    address: nowhere\n    colour: blue\n\
         upstream: {connect_timeout: soon, allow_private: [bogus]}\n\
         credentials: {github: {kind: static}}\n\
         policy: {path: missing-folder/}\n\
         surprise: true\n",
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for key in [
        "listeners[0].name",
        "listeners[0].address",
        "listeners[0].colour: unknown key",
        "upstream.connect_timeout",
        "upstream.allow_private[0]",
        "credentials.github.source: is required for kind static",
        "policy.path",
        "surprise: unknown key",
    ] {
        assert!(stderr.contains(key), "missing `{key}` in:\n{stderr}");
    }
    for line in stderr.lines() {
        assert!(
            line.starts_with(file.to_str().unwrap()),
            "every line names the file: {line}"
        );
    }
    // `run` refuses the same file with the same exit code and starts nothing.
    let out = Tollgate::run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn refuses_a_policy_that_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policy")).unwrap();
    std::fs::write(
        dir.path().join("policy/p.rego"),
        "package tollgate\ndecision := {\n",
    )
    .unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "listeners: [{name: a, address: '127.0.0.1:0'}]\npolicy: {path: policy/}\n",
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("policy does not compile"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exits_1_when_the_listener_port_is_taken() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!("listeners: [{{name: a, address: '127.0.0.1:{port}'}}]\nadmin: {{address: '127.0.0.1:0'}}\n"),
    )
    .unwrap();
    let out = Tollgate::run_cli_with(
        &["run", "-c", file.to_str().unwrap()],
        &[("TOLLGATE_STATE_DIR", dir.path().to_str().unwrap())],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot bind"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn issues_svids_that_openssl_verifies_with_one_spiffe_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for td in ["example.org", "other.test"] {
        let out = Tollgate::run_cli(&["certs", "init", "--dir", d, "--trust-domain", td]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = Tollgate::run_cli(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--spiffe-id",
        "spiffe://example.org/ns/agents/sa/triage",
        "--ttl",
        "2h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cert = dir.path().join("example.org_ns_agents_sa_triage.pem");
    assert!(
        dir.path()
            .join("example.org_ns_agents_sa_triage-key.pem")
            .exists()
    );

    let verify = openssl(&[
        "verify",
        "-CAfile",
        dir.path().join("example.org.ca.pem").to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    // The other trust domain's CA does not vouch for it.
    let command_output = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            dir.path().join("other.test.ca.pem").to_str().unwrap(),
            cert.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!command_output.status.success());

    let dump = text(&openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]).stdout);
    assert_eq!(dump.matches("URI:").count(), 1, "{dump}");
    assert!(
        dump.contains("URI:spiffe://example.org/ns/agents/sa/triage"),
        "{dump}"
    );
    assert!(dump.contains("CA:FALSE"), "{dump}");
    assert!(dump.contains("Digital Signature"), "{dump}");

    // The interception CA made by init is a CA.
    let ca = text(
        &openssl(&[
            "x509",
            "-in",
            dir.path().join("intercept-ca.pem").to_str().unwrap(),
            "-noout",
            "-text",
        ])
        .stdout,
    );
    assert!(ca.contains("CA:TRUE"), "{ca}");
}

#[test]
fn refuses_bad_certs_arguments_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = Tollgate::run_cli(&["certs", "init", "--dir", d, "--trust-domain", "Example.ORG"]);
    assert_eq!(out.status.code(), Some(2));
    let out = Tollgate::run_cli(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--spiffe-id",
        "https://example.org/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = Tollgate::run_cli(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--spiffe-id",
        "spiffe://nowhere.test/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("certs init"),
        "{}",
        text(&out.stderr)
    );
    let out = Tollgate::run_cli(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--spiffe-id",
        "spiffe://a.test/x",
        "--ttl",
        "forever",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = Tollgate::run_cli(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn runs_the_bundled_rego_unit_tests() {
    let out = Tollgate::run_cli(&[
        "policy",
        "test",
        repo_root().join("policy-wasm").to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("PASS data."))
        .count();
    assert!(passed >= 100, "{passed} tests");
}

#[test]
fn policy_test_says_a_wasm_module_has_no_test_rules() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let out = Tollgate::run_cli(&["policy", "test", module.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("carries no test rules"), "{stderr}");
}

#[test]
fn reports_failing_rego_tests_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p\ntest_good if { true }\ntest_bad if { 1 == 2 }\n",
    )
    .unwrap();
    let out = Tollgate::run_cli(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("PASS data.p.test_good"), "{stdout}");
    assert!(stdout.contains("FAIL data.p.test_bad"), "{stdout}");
    assert!(stdout.contains("FAIL: 1/2"), "{stdout}");
}

/// `tollgate policy eval -p POLICY -i INPUT`.
fn policy_eval(policy: &Path, input: &Path) -> std::process::Output {
    Tollgate::run_cli(&[
        "policy",
        "eval",
        "-p",
        policy.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ])
}

#[test]
fn evaluates_one_input_with_policy_eval() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"version":1,"time":"2026-11-22T10:00:00.123Z",
            "source":{"spiffe_id":"spiffe://tollgate.local/dev/agent","trust_domain":"tollgate.local","path":"/dev/agent","authenticated":true,"listener":"agents","address":"127.0.0.1:5"},
            "intent":{"name":null,"task":null,"purpose":null,"delegation":[],"verified":false,"issuer":null,"claims":{}},
            "request":{"method":"DELETE","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/app","query":"","headers":{},"protocol":"HTTP/1.1"},
            "destination":{"host":"api.github.com","port":443,"ip":null},
            "connection":{"mode":"forward","intercepted":true,"tls_sni":"api.github.com"}}"#,
    )
    .unwrap();
    let policy = repo_root().join("policy-wasm");
    let out = policy_eval(&policy, &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["allow"], false);
    assert_eq!(decision["reason"], "method_not_allowed");

    // A policy whose decision is not valid fails closed, exit 1.
    std::fs::write(
        dir.path().join("bad.rego"),
        "package tollgate\ndecision := {\"allow\": \"yes\"}\n",
    )
    .unwrap();
    let out = policy_eval(&dir.path().join("bad.rego"), &input);
    assert_eq!(out.status.code(), Some(1));
    // stdout is the policy's own value; stderr says what tollgate would apply.
    let own: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(own, serde_json::json!({"allow": "yes"}));
    assert!(
        text(&out.stderr)
            .contains(r#"tollgate would apply {"allow":false,"reason":"policy_error"}"#),
        "{}",
        text(&out.stderr)
    );
}

/// OPA keeps an integer of any size exact (a `*big.Int`): in the input, in the policy's
/// arithmetic and in what `opa eval` prints. tollgate read such an input number as a double
/// and printed big results as doubles (`1.975308642197531e+20`).
#[test]
fn policy_eval_keeps_integers_beyond_64_bits_exact() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("big.rego"),
        r#"package tollgate

import rego.v1

decision := {
	"allow": false,
	"reason": "big numbers",
	"same": input.big == 98765432109876543210,
	"next": input.big + 1,
	"twice": input.big * 2,
	"literal": 123456789012345678901234567890,
	"text": sprintf("%d", [input.big]),
	"half": input.half,
}
"#,
    )
    .unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"big": 98765432109876543210, "half": 0.5}"#).unwrap();
    let out = policy_eval(&dir.path().join("big.rego"), &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for want in [
        r#""same":true"#,
        r#""next":98765432109876543211"#,
        r#""twice":197530864219753086420"#,
        r#""literal":123456789012345678901234567890"#,
        r#""text":"98765432109876543210""#,
        r#""half":0.5"#,
    ] {
        assert!(printed.contains(want), "{want} not in {printed}");
    }
}

#[test]
fn answers_health_and_readiness_and_exits_0_on_sigterm() {
    let tg = Tollgate::start("listeners: [{name: agents, address: '127.0.0.1:0'}]\n");
    for path in ["/healthz", "/readyz"] {
        let out = curl(&[
            "-s",
            "--max-time",
            "10",
            "-w",
            " %{http_code}",
            &tg.admin_url(path),
        ]);
        let text = text(&out.stdout);
        assert!(text.ends_with(" 200"), "{path}: {text}");
    }
    let out = curl(&[
        "-s",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &tg.admin_url("/nope"),
    ]);
    assert_eq!(text(&out.stdout), "404");
    let status = tg.terminate(std::time::Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}
