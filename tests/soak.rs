//! The soak's 2-minute version (issue 14 item 7): `benches/soak.sh --minutes 2 --warmup 15`
//! (15 s of load and reloads before the clock starts; docs/TESTING.md says why) on the binary
//! cargo built for the tests (or `$TOLLGATE_BIN`), which drives mixed load (wrk plain forward,
//! httpx credential-injected, denied, intercepted HTTP/1.1 and HTTP/2, curl with an X.509-SVID
//! over mTLS) while the policy data is reloaded every 4 s, the victim's SPIFFE ID killed or
//! lifted every 8 s and the credential's secret rotated every 20 s (the 30-minute intervals
//! scaled by 2/30; docs/TESTING.md, "Soak"). The script checks its own pass criteria and exits
//! non-zero on any failure; this test asserts that, and that the run really exercised what the
//! criteria speak about (so a run that did nothing cannot pass).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

#[test]
fn soak_two_minutes_passes() {
    for tool in ["nginx", "wrk", "curl", "openssl"] {
        require_tool(tool);
    }
    let out_dir = tempfile::Builder::new()
        .prefix("tollgate-soak-test-")
        .tempdir()
        .expect("tempdir");
    let bin = Tollgate::bin();
    let mut cmd = command("bash");
    cmd.arg(repo_root().join("benches/soak.sh"))
        .args(["--minutes", "2", "--warmup", "15", "--tollgate-bin"])
        .arg(&bin)
        .arg("--out")
        .arg(out_dir.path())
        .env("TOLLGATE_TEST_PYTHON", python())
        // Two minutes cannot show a trend in RSS (a reload or a burst of connections moves it
        // by a few per cent, and 3 of 6 trials of an earlier setting crossed 5 %): the short
        // run holds RSS to 15 %; the 5 % of the issue is for the 30-minute run.
        .env("SOAK_RSS_TOLERANCE", "0.15");
    // 15 s of warm-up and 120 s of load, then the checks; past 4 minutes is a hang (killed).
    let out = run_with_timeout(&mut cmd, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "benches/soak.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("SOAK PASS"), "{stdout}");

    let summary: Value = serde_json::from_slice(
        &std::fs::read(out_dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    let n = |ptr: &str| {
        summary
            .pointer(ptr)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("summary.json has no number at {ptr}:\n{summary:#}"))
    };
    // Every event happened: 25 reloads (every 4 s) after the warm-up's, 5 kills and 5 lifts
    // (every 8 s), 5 rotations (every 20 s).
    assert!(
        n("/events/reloads") - n("/events/warmup_reloads") >= 25.0,
        "{summary:#}"
    );
    assert!(
        n("/events/kills") >= 5.0 && n("/events/lifts") >= 5.0,
        "{summary:#}"
    );
    assert!(n("/events/rotations") >= 5.0, "{summary:#}");
    // Each reload was a new revision, and the killed caller was refused while killed.
    assert_eq!(n("/distinct_revisions"), n("/events/reloads") + 1.0);
    assert!(n("/killed/victim_403_killed") >= 1.0, "{summary:#}");
    // Every client kind was answered, and the secret rotated through to the origin.
    for kind in ["plain", "cred", "denied", "tls_h1", "tls_h2", "victim"] {
        assert!(
            n(&format!("/responses_or_errors_per_client/{kind}")) >= 20.0,
            "{kind}: {summary:#}"
        );
    }
    let gens = summary["credential_generations_seen"]
        .as_array()
        .expect("generations");
    assert!(gens.len() >= 5, "{summary:#}");
    // The pass criteria, as numbers.
    for zero in [
        "/stale_revision/clients",
        "/stale_revision/decision_log",
        "/killed/clients",
        "/killed/decision_log",
        "/lost_lines/missing_from_log",
        "/lost_lines/dropped_metric",
        "/client_transport_errors",
    ] {
        assert_eq!(n(zero), 0.0, "{zero}: {summary:#}");
    }
    assert_eq!(
        n("/lost_lines/decision_ids_received"),
        n("/lost_lines/responses")
    );
    assert!(n("/samples") >= 12.0, "{summary:#}");
    assert!(
        summary["secrets"]["hits"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{summary:#}"
    );
    assert!(n("/secrets/files_scanned") >= 10.0, "{summary:#}");
}
