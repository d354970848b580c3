//! tollgate's `/metrics` against the real Prometheus tools, and the operations artefacts built
//! on it (`helm/tollgate/dashboards/tollgate.json`, `helm/tollgate/rules/tollgate-alerts.yaml`)
//! against a real Prometheus server scraping a real tollgate. Metric contract: docs/METRICS.md.
//!
//! - `promtool check metrics` accepts the live exposition, and the request counters equal the
//!   mix of calls sent through tollgate, exactly.
//! - A real `prometheus` scrapes tollgate (1 s interval) with the alert rules loaded; every
//!   dashboard expression and every alert expression is then evaluated through
//!   `/api/v1/query` and must return `status: success` and data.
//! - The dashboard is a Grafana 10 dashboard over documented metrics only, and the rules pass
//!   `promtool check rules` and fire (or stay quiet) as intended on synthetic series
//!   (`promtool test rules`).
//!
//! # Grafana variables
//!
//! Dashboard expressions are written for Grafana; before they go to the Prometheus API
//! [`grafana_to_promql`] replaces, in `$name`, `${name}` and `${name:format}` forms:
//! - the interval variables `$__rate_interval`, `$__interval`, `$__range`, `$__auto` with
//!   [`TEST_WINDOW`] (`1m`: with a 1 s scrape interval Grafana's own `$__rate_interval` would
//!   be 4 s or more, so 1 m holds every sample the test produced), and `$__range_s`,
//!   `$__range_ms`, `$__interval_ms` with the same window in seconds / milliseconds;
//! - each dashboard query variable (`$job`, `$instance`) with its "All" value (`allValue`,
//!   `.*`), which is what an operator sees by default;
//! - any other `$variable` (or the legacy `[[variable]]`) fails the test, so a new variable
//!   must be given a substitution here.
//!
//! # Which alert expressions must return data
//!
//! An alert expression such as `rate(x[5m]) > 0` is legitimately empty while the alert is not
//! firing. So for every alerting rule the test (1) evaluates the whole expression, which must
//! succeed (empty or not), and (2) evaluates its *probes*, each of which must return at least
//! one sample. The probes of an expression `e` ([`alert_probes`]) are:
//! - `e` without redundant outer parentheses;
//! - `A and B`: the probes of `A` and of `B` (the alert needs both sides; a leading
//!   `on(...)` / `ignoring(...)` of `B` is dropped);
//! - `A unless B`: the probes of `A` only (`B` is meant to be empty most of the time);
//! - `A or B`: one probe, the whole `or` with a trailing comparison stripped from each side
//!   (`X or on() vector(0)` is exactly how an expression is kept defined);
//! - `X <cmp> [bool] <number>` (`>`, `<`, `>=`, `<=`, `==`, `!=` at the top level): the probes
//!   of `X`;
//! - anything else is a probe as it is.
//!
//! Recording rules, if any, must return data as they are.
//!
//! Dashboard variable queries `label_values(selector, label)` are checked through
//! `/api/v1/label/<label>/values?match[]=selector` and must list at least one value.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// What `$__rate_interval`, `$__range`… become when a dashboard expression is sent to the
/// Prometheus API (see the module doc).
const TEST_WINDOW: &str = "1m";
const TEST_WINDOW_SECONDS: u64 = 60;
/// How long Prometheus gets to become ready, and to scrape the traffic of a test.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
const SCRAPE_JOB: &str = "tollgate";

const CALLER: &str = "spiffe://tollgate.local/test/agent";

fn dashboard_path() -> PathBuf {
    repo_root().join("helm/tollgate/dashboards/tollgate.json")
}

fn rules_path() -> PathBuf {
    repo_root().join("helm/tollgate/rules/tollgate-alerts.yaml")
}

/// tollgate with the bundled policy and the test data (GET/HEAD to 127.0.0.1 allowed, DELETE
/// denied `method_not_allowed`, POST without intent denied `intent_required`), loopback
/// reachable; `extra` adds top-level config.
fn tollgate_with(extra: &str) -> Tollgate {
    let root = repo_root();
    Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         admin: {{address: '127.0.0.1:0'}}\n\
         identity: {{workload_spiffe_id: '{CALLER}'}}\n\
         policy: {{path: '{}', data: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n{extra}\n",
        root.join("policy-wasm").display(),
        root.join("tests/fixtures/policy-data.json").display(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Calls through tollgate

/// One call through tollgate with curl: `(status, body)`.
fn call(tg: &Tollgate, method: &str, url: &str) -> (u16, String) {
    let proxy = tg.proxy_url();
    let mut args = vec!["-sS", "--max-time", "20", "-x", &proxy, "-X", method];
    if method == "POST" || method == "PUT" {
        args.extend(["-d", "x"]);
    }
    args.extend(["-w", "\n%{http_code}", url]);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {method} {url} via {proxy}: no status; stdout {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

/// A call that must be answered `status`, with `reason` in the JSON body when given.
fn expect_call(tg: &Tollgate, method: &str, url: &str, status: u16, reason: Option<&str>) {
    let (code, body) = call(tg, method, url);
    assert_eq!(code, status, "{method} {url}: {body}");
    if let Some(reason) = reason {
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {url}: body is not JSON ({e}): {body}"));
        assert_eq!(v["reason"], reason, "{method} {url}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// The exposition format

#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition (0.0.4): `name{label="value",…} value [timestamp]`,
/// comments and blank lines skipped; label values unescaped (`\\`, `\"`, `\n`).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| -> ! { panic!("/metrics line {}: {why}: {raw:?}", n + 1) };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            bad("bad metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            let mut chars = after_brace.char_indices().peekable();
            let end = loop {
                while chars
                    .next_if(|(_, c)| c.is_whitespace() || *c == ',')
                    .is_some()
                {}
                let Some((start, c)) = chars.next() else {
                    bad("unterminated label set")
                };
                if c == '}' {
                    break start + 1;
                }
                let mut key = String::from(c);
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) => key.push(c),
                        None => bad("label without value"),
                    }
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => bad("dangling escape"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                }
                if labels.insert(key.trim().to_string(), value).is_some() {
                    bad("duplicate label");
                }
            };
            rest = &after_brace[end..];
        }
        let mut fields = rest.split_whitespace();
        let value: f64 = fields
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| bad("bad value"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| bad("bad timestamp"));
        }
        if fields.next().is_some() {
            bad("trailing fields");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample with exactly this name and label set.
fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn sum_of(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// `GET /metrics` on the admin listener: status 200, a text content type; the body is also
/// written to `dir/metrics.txt` (for promtool's stdin).
fn fetch_metrics(tg: &Tollgate, dir: &Path) -> (String, PathBuf) {
    let file = dir.join("metrics.txt");
    let out = curl(&[
        "-sS".as_ref(),
        "--max-time".as_ref(),
        "10".as_ref(),
        "-o".as_ref(),
        file.as_os_str(),
        "-w".as_ref(),
        "%{http_code} %{content_type}".as_ref(),
        tg.admin_url("/metrics").as_ref(),
    ] as &[&std::ffi::OsStr]);
    let meta = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        meta.starts_with("200 "),
        "GET /metrics: {meta} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        meta["200 ".len()..].starts_with("text/plain"),
        "GET /metrics content type: {meta}"
    );
    let text = std::fs::read_to_string(&file).expect("read metrics");
    (text, file)
}

fn output_text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `promtool check metrics < file`; any non-zero exit (lint problems included) fails.
fn promtool_check_metrics(file: &Path) {
    let out = run_with_timeout(
        command(require_tool("promtool"))
            .args(["check", "metrics"])
            .stdin(File::open(file).expect("open metrics file")),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "promtool check metrics rejected tollgate's /metrics:\n{}\n--- exposition ---\n{}",
        output_text(&out),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

fn promtool_check_rules(file: &Path) {
    let out = run_with_timeout(
        command(require_tool("promtool"))
            .args(["check", "rules"])
            .arg(file),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}",
        file.display(),
        output_text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Closed label sets (docs/METRICS.md)

const DECISIONS: &[&str] = &["allow", "deny", "error"];
// The closed reason set is tollgate's own (`tollgate::reason::Reason`); that every reason has its
// series, its row in docs/METRICS.md and its status is checked below, so no side can drift.
use tollgate::reason::Reason;

/// Whether `(decision, reason)` is a label pair of the closed set.
fn is_closed(decision: &str, reason: &str) -> bool {
    Reason::ALL
        .iter()
        .any(|r| r.as_str() == reason && r.outcome().as_str() == decision)
}

/// The rows of docs/METRICS.md's reason table: `| `reason` | decision | status | … |`.
fn documented_reasons() -> BTreeMap<String, (String, String)> {
    let doc = std::fs::read_to_string(repo_root().join("docs/METRICS.md")).expect("METRICS.md");
    let section = doc
        .split("## Reasons")
        .nth(1)
        .expect("docs/METRICS.md has a Reasons section");
    let mut rows = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 4
            && let Some(reason) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`'))
        {
            rows.insert(
                reason.to_string(),
                (cells[2].to_string(), cells[3].to_string()),
            );
        }
    }
    rows
}

#[test]
fn every_reason_has_a_series_a_docs_row_and_a_status() {
    let metrics = tollgate::telemetry::metrics::Metrics::new(&["agents".to_string()], false)
        .expect("metrics");
    let text = String::from_utf8(metrics.encode()).expect("UTF-8 exposition");
    let documented = documented_reasons();
    for reason in Reason::ALL {
        let (name, decision) = (reason.as_str(), reason.outcome().as_str());
        let series = format!(
            r#"tollgate_requests_total{{decision="{decision}",listener="agents",reason="{name}"}} 0"#
        );
        assert!(text.contains(&series), "no series from start-up: {series}");
        let status = reason.status();
        assert!(
            status.is_success() || status.is_client_error() || status.is_server_error(),
            "{name}: {status}"
        );
        let row = documented
            .get(name)
            .unwrap_or_else(|| panic!("docs/METRICS.md has no row for `{name}`"));
        assert_eq!(
            row,
            &(decision.to_string(), status.as_u16().to_string()),
            "docs/METRICS.md's row for `{name}` (decision, status)"
        );
    }
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|name| !Reason::ALL.iter().any(|r| r.as_str() == name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/METRICS.md documents unknown reasons {unknown:?}"
    );
    let requests = text
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .count();
    assert_eq!(
        requests,
        Reason::COUNT,
        "one series per reason, nothing else"
    );
}

/// The metric names in docs/METRICS.md's table (`| `tollgate_…` | type | …`).
fn documented_metrics() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/METRICS.md")).expect("METRICS.md");
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && cells[1].starts_with("`tollgate_") {
            out.insert(cells[1].trim_matches('`').to_string(), cells[2].to_string());
        }
    }
    assert!(
        out.len() >= 10,
        "no metric table in docs/METRICS.md: {out:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Test 1

#[test]
fn promtool_accepts_live_metrics_and_counters_equal_the_mix() {
    require_tool("promtool");
    // Destination labels off, so every request series has exactly listener/decision/reason.
    let tg = tollgate_with("telemetry: {metrics_label_destination: false}");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");

    for _ in 0..7 {
        expect_call(&tg, "GET", &url, 200, None);
    }
    for _ in 0..3 {
        expect_call(&tg, "DELETE", &url, 403, Some("method_not_allowed"));
    }
    for _ in 0..2 {
        expect_call(&tg, "POST", &url, 403, Some("intent_required"));
    }

    // A call is counted when its decision-log line is written, which may trail the response
    // by a moment: poll until all 12 are counted (bounded), then assert exact values.
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + WAIT;
    let (text, file) = loop {
        let (text, file) = fetch_metrics(&tg, dir.path());
        let counted = sum_of(&parse_exposition(&text), "tollgate_requests_total");
        if counted >= 12.0 || Instant::now() >= deadline {
            break (text, file);
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    promtool_check_metrics(&file);

    let samples = parse_exposition(&text);
    let req = |decision: &str, reason: &str| {
        sample_value(
            &samples,
            "tollgate_requests_total",
            &[
                ("decision", decision),
                ("listener", "agents"),
                ("reason", reason),
            ],
        )
    };
    let shown = || {
        samples
            .iter()
            .filter(|s| s.name == "tollgate_requests_total" && s.value != 0.0)
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(req("allow", "allowed"), Some(7.0), "{}", shown());
    assert_eq!(req("deny", "method_not_allowed"), Some(3.0), "{}", shown());
    assert_eq!(req("deny", "intent_required"), Some(2.0), "{}", shown());
    assert_eq!(
        sum_of(&samples, "tollgate_requests_total"),
        12.0,
        "nothing else was counted:\n{}",
        shown()
    );

    // Every request series carries exactly the documented labels, from the closed sets.
    for s in samples
        .iter()
        .filter(|s| s.name == "tollgate_requests_total")
    {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["decision", "listener", "reason"], "{s:?}");
        let decision = s.labels["decision"].as_str();
        let reason = s.labels["reason"].as_str();
        assert!(DECISIONS.contains(&decision), "{s:?}");
        assert!(
            is_closed(decision, reason),
            "reason outside the closed set: {s:?}"
        );
    }
    // No unbounded value in any label: no SPIFFE ID, path or host.
    for s in &samples {
        for v in s.labels.values() {
            assert!(
                !v.contains("spiffe://") && !v.contains("/echo") && !v.contains("127.0.0.1"),
                "unbounded label value: {s:?}"
            );
        }
    }

    // One end-to-end observation per call; the 7 forwarded calls reached the origin.
    assert_eq!(
        sample_value(
            &samples,
            "tollgate_request_duration_seconds_count",
            &[("listener", "agents")]
        ),
        Some(12.0)
    );
    assert_eq!(
        sample_value(&samples, "tollgate_upstream_duration_seconds_count", &[]),
        Some(7.0)
    );

    // Histograms: the documented buckets, cumulative, `+Inf` equal to `_count`.
    type Histogram<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [f64]);
    let buckets: &[Histogram] = &[
        (
            "tollgate_request_duration_seconds",
            &[("listener", "agents")],
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0, 600.0,
            ],
        ),
        (
            "tollgate_policy_eval_duration_seconds",
            &[("engine", "rego")],
            &[
                0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                0.005, 0.01, 0.025, 0.1,
            ],
        ),
        (
            "tollgate_upstream_duration_seconds",
            &[],
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ],
        ),
    ];
    for (name, labels, bounds) in buckets {
        let series: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == format!("{name}_bucket")
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        let mut les: Vec<(f64, f64)> = series
            .iter()
            .map(|s| (s.labels["le"].parse::<f64>().expect("le"), s.value))
            .collect();
        les.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut expected: Vec<f64> = bounds.to_vec();
        expected.push(f64::INFINITY);
        assert_eq!(
            les.iter().map(|(le, _)| *le).collect::<Vec<_>>(),
            expected,
            "{name} buckets (docs/METRICS.md)"
        );
        assert!(
            les.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets not cumulative: {les:?}"
        );
        let count = samples
            .iter()
            .find(|s| {
                s.name == format!("{name}_count")
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name}_count"))
            .value;
        assert_eq!(
            les.last().unwrap().1,
            count,
            "{name}: +Inf bucket != _count"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus

/// `prometheus` scraping one target every second, with rule files; killed on drop.
struct Prometheus {
    child: ChildGuard,
    base: String,
    stderr: Lines,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let bin = require_tool("prometheus");
        let mut last_err = String::new();
        // free_port can race with another test; retry on "address already in use".
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-prometheus-")
                .tempdir()
                .expect("tempdir");
            let port = free_port();
            let rules: String = rule_files
                .iter()
                .map(|p| format!("  - '{}'\n", p.display()))
                .collect();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n{rules}\
                 scrape_configs:\n  - job_name: {SCRAPE_JOB}\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            );
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, config).expect("write prometheus.yml");
            let mut cmd = command(&bin);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=1h")
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
            let _stdout = Lines::capture(child.stdout.take().unwrap(), "prometheus stdout");
            let stderr = Lines::capture(child.stderr.take().unwrap(), "prometheus stderr");
            let mut prom = Prometheus {
                child: ChildGuard::new(child),
                base: format!("http://127.0.0.1:{port}"),
                stderr,
                _dir: dir,
            };
            let deadline = Instant::now() + PROMETHEUS_WAIT;
            loop {
                if let Some(status) = prom.child.try_wait() {
                    prom.stderr.wait_closed(Duration::from_secs(5));
                    last_err = format!("prometheus exited ({status}):\n{}", prom.stderr.text());
                    break;
                }
                if prom.http_code("/-/ready") == "200" {
                    return prom;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "prometheus not ready within {PROMETHEUS_WAIT:?}:\n{}",
                        prom.stderr.text()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !last_err.contains("address already in use") {
                break;
            }
        }
        panic!("{last_err}");
    }

    fn http_code(&self, path: &str) -> String {
        let out = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            "-w",
            "%{http_code}",
            &format!("{}{path}", self.base),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// GET `path` with URL-encoded query parameters; the JSON answer (any status).
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut args: Vec<String> = ["-sS", "-g", "--max-time", "20", "-G"]
            .map(String::from)
            .to_vec();
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.base));
        let out = curl(&args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prometheus {path} {params:?}: not JSON ({e}):\n{}",
                output_text(&out)
            )
        })
    }

    /// An instant query; the whole API answer.
    fn query(&self, expr: &str) -> Value {
        self.api("/api/v1/query", &[("query", expr)])
    }

    /// A query expected to return one sample (`sum(...)`); its value.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr);
        let result = v["data"]["result"].as_array()?;
        let sample = result.first()?;
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Polls `check` every 200 ms until it returns `Ok`, or panics after `timeout` with
    /// `what`, the last `Err` (what was seen) and Prometheus's log.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match check() {
                Ok(t) => return t,
                Err(seen) => seen,
            };
            if Instant::now() >= deadline {
                panic!(
                    "prometheus: {what} not reached within {timeout:?}; last seen: {seen}\n\
                     --- prometheus log ---\n{}",
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Non-empty `data.result` of a successful query; `Err` says why not.
fn check_has_data(answer: &Value) -> Result<usize, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "status {} ({}: {})",
            answer["status"], answer["errorType"], answer["error"]
        ));
    }
    let data = &answer["data"];
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => match data["result"].as_array() {
            Some(r) if !r.is_empty() => Ok(r.len()),
            _ => Err("empty result".into()),
        },
        Some("scalar") | Some("string") => Ok(1),
        other => Err(format!("unexpected resultType {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the rules

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_path()).expect("read dashboard");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every panel, rows' nested `panels` included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(panel title, refId, expr)` of every target in the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["refId"].as_str().unwrap_or("").to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    out
}

/// The substitution of every dashboard variable that may appear in an expression: Grafana's
/// interval variables and each query/custom variable's "All" value.
fn grafana_variables(dashboard: &Value) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("__rate_interval", TEST_WINDOW.to_string()),
        ("__interval", TEST_WINDOW.to_string()),
        ("__range", TEST_WINDOW.to_string()),
        ("__auto", TEST_WINDOW.to_string()),
        ("__range_s", TEST_WINDOW_SECONDS.to_string()),
        ("__range_ms", (TEST_WINDOW_SECONDS * 1000).to_string()),
        ("__interval_ms", (TEST_WINDOW_SECONDS * 1000).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().expect("variable name").to_string();
        match v["type"].as_str() {
            Some("query") | Some("custom") => {
                assert_eq!(
                    v["includeAll"], true,
                    "variable {name}: the test substitutes the All value; give it one"
                );
                let all = v["allValue"].as_str().unwrap_or(".*").to_string();
                vars.insert(name, all);
            }
            Some("datasource") => {} // only in `datasource` fields, never in an expression
            other => panic!("variable {name}: no test substitution for type {other:?}"),
        }
    }
    vars
}

/// A Grafana expression as PromQL: `$name`, `${name}` and `${name:format}` replaced from
/// `vars`; an unknown variable or the legacy `[[name]]` syntax panics.
fn grafana_to_promql(expr: &str, vars: &BTreeMap<String, String>) -> String {
    assert!(
        !expr.contains("[["),
        "legacy [[variable]] syntax in {expr:?}"
    );
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("unterminated ${{ in {expr:?}"));
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(""), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$'); // a literal `$` (e.g. a regex anchor)
            rest = after;
            continue;
        }
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("no test substitution for ${name} in {expr:?}"));
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// `label_values(selector, label)` → `(selector, label)`.
fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_string(), label.trim().to_string()))
}

#[derive(Debug)]
struct Rule {
    name: String,
    alert: bool,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules_yaml() -> serde_yaml::Value {
    let text = std::fs::read_to_string(rules_path()).expect("read rules");
    serde_yaml::from_str(&text).expect("rules are YAML")
}

fn rules() -> Vec<Rule> {
    let doc = rules_yaml();
    let str_map = |v: &serde_yaml::Value| -> BTreeMap<String, String> {
        v.as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.as_str().expect("key").to_string(),
                    v.as_str().expect("string value").to_string(),
                )
            })
            .collect()
    };
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for r in group["rules"].as_sequence().expect("rules") {
            let (name, alert) = match (r["alert"].as_str(), r["record"].as_str()) {
                (Some(a), None) => (a.to_string(), true),
                (None, Some(rec)) => (rec.to_string(), false),
                _ => panic!("rule is neither alert nor record: {r:?}"),
            };
            out.push(Rule {
                name,
                alert,
                expr: r["expr"].as_str().expect("expr").to_string(),
                labels: str_map(&r["labels"]),
                annotations: str_map(&r["annotations"]),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Alert probes (see the module doc)

/// For each byte: nesting depth 0 and outside a string literal.
fn top_level_mask(expr: &str) -> Vec<bool> {
    let b = expr.as_bytes();
    let mut mask = vec![false; b.len()];
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' && q != b'`' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                _ => mask[i] = depth == 0,
            }
        }
        i += 1;
    }
    mask
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Splits at top-level occurrences of the keywords: the first operand, then `(keyword,
/// operand)` pairs (operands keep any leading `on(...)` / `ignoring(...)`).
fn split_top_level<'a>(expr: &'a str, keywords: &[&'a str]) -> (&'a str, Vec<(&'a str, &'a str)>) {
    let mask = top_level_mask(expr);
    let b = expr.as_bytes();
    let mut cuts: Vec<(usize, &str)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hit = keywords.iter().find(|kw| {
            let end = i + kw.len();
            end <= b.len()
                && mask[i..end].iter().all(|m| *m)
                && expr[i..end].eq_ignore_ascii_case(kw)
                && (i == 0 || !is_ident(b[i - 1]))
                && (end == b.len() || !is_ident(b[end]))
        });
        if let Some(kw) = hit {
            cuts.push((i, kw));
            i += kw.len();
        } else {
            i += 1;
        }
    }
    let first_end = cuts.first().map_or(expr.len(), |c| c.0);
    let mut rest = Vec::new();
    for (n, (start, kw)) in cuts.iter().enumerate() {
        let end = cuts.get(n + 1).map_or(expr.len(), |c| c.0);
        rest.push((*kw, expr[start + kw.len()..end].trim()));
    }
    (expr[..first_end].trim(), rest)
}

/// Drops a leading `on (...)` / `ignoring (...)` vector-matching modifier.
fn drop_matching_modifier(operand: &str) -> &str {
    let t = operand.trim_start();
    for kw in ["on", "ignoring"] {
        if let Some(after) = t.strip_prefix(kw) {
            let after = after.trim_start();
            if let Some(close) = after.find(')').filter(|_| after.starts_with('(')) {
                return after[close + 1..].trim();
            }
        }
    }
    t.trim()
}

/// `( e )` → `e` while the outer parentheses enclose everything.
fn unwrap_parens(expr: &str) -> &str {
    let mut e = expr.trim();
    while e.starts_with('(') && matching_close(e, 0) == Some(e.len() - 1) {
        e = e[1..e.len() - 1].trim();
    }
    e
}

/// The index of the bracket closing the one at `open` (string literals skipped).
fn matching_close(expr: &str, open: usize) -> Option<usize> {
    let b = expr.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = open;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' && q != b'`' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// `X <cmp> [bool] <number>` at the top level → `X`; otherwise `None`.
fn strip_comparison(expr: &str) -> Option<&str> {
    let mask = top_level_mask(expr);
    let b = expr.as_bytes();
    let mut last: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < b.len() {
        if mask[i] {
            let two = &b[i..(i + 2).min(b.len())];
            if two.len() == 2 && mask[i + 1] && matches!(two, b"==" | b"!=" | b">=" | b"<=") {
                last = Some((i, 2));
                i += 2;
                continue;
            }
            if b[i] == b'>' || b[i] == b'<' {
                last = Some((i, 1));
            }
        }
        i += 1;
    }
    let (at, len) = last?;
    let rhs = expr[at + len..].trim();
    let rhs = rhs.strip_prefix("bool").map_or(rhs, str::trim);
    rhs.parse::<f64>().ok()?;
    Some(expr[..at].trim())
}

/// The probes of an alert expression (module doc): sub-expressions that must return data.
fn alert_probes(expr: &str) -> Vec<String> {
    let e = unwrap_parens(expr);
    let (first, ors) = split_top_level(e, &["or"]);
    if !ors.is_empty() {
        let side = |s: &str| {
            let u = unwrap_parens(s);
            strip_comparison(u).unwrap_or(u).to_string()
        };
        let mut joined = side(first);
        for (_, operand) in ors {
            // keep `on(...)` with the operator; strip comparisons from the operand itself
            let modifier_len = operand.len() - drop_matching_modifier(operand).len();
            let (modifier, rest) = operand.split_at(modifier_len);
            joined = format!("{joined} or {}{}", modifier, side(rest));
        }
        return vec![joined];
    }
    let (first, sets) = split_top_level(e, &["and", "unless"]);
    if !sets.is_empty() {
        let mut probes = alert_probes(first);
        for (kw, operand) in sets {
            if kw.eq_ignore_ascii_case("and") {
                probes.extend(alert_probes(drop_matching_modifier(operand)));
            }
        }
        return probes;
    }
    match strip_comparison(e) {
        Some(x) => alert_probes(x),
        None => vec![e.to_string()],
    }
}

// ---------------------------------------------------------------------------------------------
// Test 2

#[test]
fn prometheus_scrapes_tollgate_and_every_dashboard_and_alert_expression_returns_data() {
    require_tool("promtool");
    promtool_check_rules(&rules_path());

    // The default configuration: requests also carry a `destination` label, which every
    // dashboard expression must aggregate away.
    let tg = tollgate_with("");
    let origin = PyOrigin::start(None);
    let prom = Prometheus::start(tg.admin_addr().expect("admin listener"), &[rules_path()]);

    // allow, deny (two reasons) and error (a closed port: upstream_connect).
    let url = origin.url("/echo");
    for _ in 0..3 {
        expect_call(&tg, "GET", &url, 200, None);
    }
    for _ in 0..2 {
        expect_call(&tg, "DELETE", &url, 403, Some("method_not_allowed"));
    }
    expect_call(&tg, "POST", &url, 403, Some("intent_required"));
    let closed = format!("http://127.0.0.1:{}/echo", free_port());
    expect_call(&tg, "GET", &closed, 502, Some("upstream_connect"));
    let sent = 7.0;

    // Scraped: the target is up, the latest scrape holds every call, and every tollgate series
    // has at least two samples in the test window (so `rate` over it has data).
    let job = format!("job=\"{SCRAPE_JOB}\"");
    prom.wait_for("the traffic scraped twice", PROMETHEUS_WAIT, || {
        let up = prom.scalar(&format!("up{{{job}}}"));
        let total = prom.scalar(&format!("sum(tollgate_requests_total{{{job}}})"));
        // A range selector as an instant query: every sample of every series in the window.
        let window = prom.query(&format!(
            "{{__name__=~\"tollgate_.+\", {job}}}[{TEST_WINDOW}]"
        ));
        let min_samples = window["data"]["result"].as_array().and_then(|series| {
            series
                .iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .min()
                .map(|n| n as f64)
        });
        if up == Some(1.0) && total == Some(sent) && min_samples >= Some(2.0) {
            Ok(())
        } else {
            Err(format!(
                "up {up:?}, sum(tollgate_requests_total) {total:?} (want {sent}), \
                 min samples per series {min_samples:?}; {}",
                prom.api("/api/v1/targets", &[])["data"]["activeTargets"]
            ))
        }
    });

    // Prometheus loaded every rule and evaluated each without error.
    let rules = rules();
    let health = prom.wait_for("every rule evaluated", PROMETHEUS_WAIT, || {
        let answer = prom.api("/api/v1/rules", &[]);
        let loaded: Vec<(String, String, String)> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["health"].as_str().unwrap_or("").to_string(),
                    r["lastError"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if loaded.len() == rules.len() && loaded.iter().all(|(_, h, _)| h != "unknown") {
            Ok(loaded)
        } else {
            Err(format!(
                "{} of {} rules: {loaded:?}",
                loaded.len(),
                rules.len()
            ))
        }
    });
    for (name, h, err) in &health {
        assert_eq!(h, "ok", "rule {name}: {err}");
    }

    let mut failures = Vec::new();
    let mut report = Vec::new();

    // The dashboard: every target expression, and every variable's values.
    let dash = dashboard();
    let vars = grafana_variables(&dash);
    let exprs = dashboard_exprs(&dash);
    assert!(!exprs.is_empty(), "no expressions in the dashboard");
    for (title, ref_id, expr) in &exprs {
        let promql = grafana_to_promql(expr, &vars);
        match check_has_data(&prom.query(&promql)) {
            Ok(n) => report.push(format!("ok ({n}) dashboard {title:?}/{ref_id}: {promql}")),
            Err(e) => failures.push(format!("dashboard {title:?}/{ref_id}: {e}\n  {promql}")),
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        let (selector, label) = parse_label_values(q)
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let selector = grafana_to_promql(&selector, &vars);
        let answer = prom.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", &selector)],
        );
        match answer["data"].as_array() {
            Some(values) if answer["status"] == "success" && !values.is_empty() => {
                report.push(format!("ok variable {}: {values:?}", v["name"]))
            }
            _ => failures.push(format!("variable {}: {q} → {answer}", v["name"])),
        }
    }

    // The rules: the whole expression evaluates; its probes return data.
    for rule in &rules {
        let answer = prom.query(&rule.expr);
        if answer["status"] != "success" {
            failures.push(format!("rule {}: {answer}\n  {}", rule.name, rule.expr));
            continue;
        }
        let probes = if rule.alert {
            alert_probes(&rule.expr)
        } else {
            vec![rule.expr.clone()]
        };
        for probe in probes {
            match check_has_data(&prom.query(&probe)) {
                Ok(n) => report.push(format!("ok ({n}) rule {}: {probe}", rule.name)),
                Err(e) => failures.push(format!("rule {} probe: {e}\n  {probe}", rule.name)),
            }
        }
    }

    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} expression(s) without data:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Test 3

#[test]
fn dashboard_and_rules_are_well_formed_over_documented_metrics() {
    require_tool("promtool");
    promtool_check_rules(&rules_path());
    let dash = dashboard();

    // Importable into Grafana 10+, and bound to whichever Prometheus the importer picks.
    assert_eq!(dash["uid"], "tollgate");
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 38,
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of type prometheus"
    );
    let ds_ok = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(
            ds_ok(&v["datasource"]),
            "variable {}: {}",
            v["name"],
            v["datasource"]
        );
    }

    let mut ids = BTreeSet::new();
    for p in all_panels(&dash) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "panel without title: {p}");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title}: no id"));
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(
            x + w <= 24 && g["h"].as_u64().is_some(),
            "panel {title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ds_ok(&p["datasource"]),
            "panel {title}: datasource {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(ds_ok(&t["datasource"]), "panel {title}: target datasource");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "panel {title}: no expr"
            );
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "panel {title}: refId"
            );
        }
    }

    // The panels the operations guide describes.
    let titles: BTreeSet<&str> = all_panels(&dash)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Request rate by decision",
        "Top deny reasons",
        "Request latency (end to end)",
        "Policy evaluation latency",
        "Upstream latency (to response head)",
        "Credential errors",
        "Identity rejections by reason",
        "Active connections by listener",
        "Policy revision in force",
        "Policy reloads by result",
        "Kills active",
        "TLS handshake errors by side",
    ] {
        assert!(titles.contains(want), "no panel {want:?}; have {titles:?}");
    }

    // Grafana variables all have a test substitution, and every metric named anywhere is in
    // docs/METRICS.md (histograms through their _bucket/_sum/_count series).
    let documented = documented_metrics();
    let substitutions = grafana_variables(&dash);
    let rules = rules();
    let mut texts: Vec<String> = dashboard_exprs(&dash)
        .into_iter()
        .map(|(_, _, e)| grafana_to_promql(&e, &substitutions))
        .collect();
    texts.extend(rules.iter().map(|r| r.expr.clone()));
    for text in &texts {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("tollgate_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| documented.get(*b).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                documented.contains_key(base),
                "{name} is not in docs/METRICS.md (in {text})"
            );
            rest = &tail[end..];
        }
    }

    // Rules: a severity from the known set, a summary and a description each.
    assert!(!rules.is_empty());
    let mut names = BTreeSet::new();
    for r in &rules {
        assert!(names.insert(r.name.clone()), "duplicate rule {}", r.name);
        if !r.alert {
            continue;
        }
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{}: severity {severity:?}",
            r.name
        );
        for a in ["summary", "description"] {
            assert!(
                r.annotations.get(a).is_some_and(|t| !t.trim().is_empty()),
                "{}: no {a}",
                r.name
            );
        }
    }

    // The probe rule itself, on the shapes the rules use.
    assert_eq!(alert_probes("rate(x[5m]) > 0"), ["rate(x[5m])"]);
    assert_eq!(
        alert_probes("(a / b) > 0.25\nand\nc > bool 0.1"),
        ["a / b", "c"]
    );
    assert_eq!(
        alert_probes("(up == 0) and on (job, instance) max_over_time(i[1h])"),
        ["up", "max_over_time(i[1h])"]
    );
    assert_eq!(
        alert_probes("(sum by (c) (rate(e[5m])) or on () vector(0)) > 0"),
        ["sum by (c) (rate(e[5m])) or on () vector(0)"]
    );
    assert_eq!(alert_probes("a unless b"), ["a"]);
    assert_eq!(
        alert_probes("x{reason=~\"a|b\", y!=\"(\"} >= 2"),
        ["x{reason=~\"a|b\", y!=\"(\"}"]
    );
    assert_eq!(
        grafana_to_promql(
            "rate(x{job=~\"$job\",i=~\"${instance:regex}\"}[$__rate_interval]) / $__range_s",
            &substitutions
        ),
        "rate(x{job=~\".*\",i=~\".*\"}[1m]) / 60"
    );
}

// ---------------------------------------------------------------------------------------------
// Test 4

/// Unit tests of the alert logic on synthetic series (`promtool test rules`). Annotations are
/// removed from the copy of the rules under test (promtool compares them verbatim; their
/// templates are checked by `promtool check rules`), so these tests pin expressions, `for`
/// durations and labels.
const RULE_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  # Healthy: steady allowed traffic, nothing else. No alert fires.
  - interval: 1m
    input_series:
      - series: 'up{job="tollgate",instance="a:15000"}'
        values: '1x60'
      - series: 'tollgate_policy_info{job="tollgate",instance="a:15000",revision="r1",engine="rego"}'
        values: '1x60'
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="allow",reason="allowed"}'
        values: '0+60x60'
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="deny",reason="method_not_allowed"}'
        values: '0+1x60'
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="error",reason="upstream_connect"}'
        values: '0+1x60'
      - series: 'tollgate_policy_reloads_total{job="tollgate",instance="a:15000",result="failure"}'
        values: '0x60'
      - series: 'tollgate_kills_active{job="tollgate",instance="a:15000"}'
        values: '0x60'
      - series: 'tollgate_policy_eval_duration_seconds_bucket{job="tollgate",instance="a:15000",engine="rego",le="0.0001"}'
        values: '0+60x60'
      - series: 'tollgate_policy_eval_duration_seconds_bucket{job="tollgate",instance="a:15000",engine="rego",le="+Inf"}'
        values: '0+60x60'
    alert_rule_test:
      - {eval_time: 45m, alertname: TollgateDown, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgateDenySpike, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgateUpstreamErrors, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgatePolicyErrors, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgatePolicyEvalSlow, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgatePolicyReloadFailed, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgateCredentialErrors, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgateNoTraffic, exp_alerts: []}
      - {eval_time: 45m, alertname: TollgateKillsActive, exp_alerts: []}

  # Half the calls denied at 1/s: the spike fires after its 5 minutes; at 0.02/s it does not.
  - interval: 1m
    input_series:
      - series: 'tollgate_requests_total{job="busy",instance="a:15000",listener="agents",decision="allow",reason="allowed"}'
        values: '0+30x30'
      - series: 'tollgate_requests_total{job="busy",instance="a:15000",listener="agents",decision="deny",reason="destination_not_allowed"}'
        values: '0+30x30'
      - series: 'tollgate_requests_total{job="quiet",instance="b:15000",listener="agents",decision="allow",reason="allowed"}'
        values: '0+0.6x30'
      - series: 'tollgate_requests_total{job="quiet",instance="b:15000",listener="agents",decision="deny",reason="destination_not_allowed"}'
        values: '0+0.6x30'
    alert_rule_test:
      - eval_time: 3m
        alertname: TollgateDenySpike
        exp_alerts: []
      - eval_time: 20m
        alertname: TollgateDenySpike
        exp_alerts:
          - exp_labels: {severity: warning, job: busy}

  # 10% of allowed calls fail upstream; policy timeouts deny some calls.
  - interval: 1m
    input_series:
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="allow",reason="allowed"}'
        values: '0+54x40'
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="error",reason="upstream_timeout"}'
        values: '0+6x40'
      - series: 'tollgate_requests_total{job="tollgate",instance="a:15000",listener="agents",decision="deny",reason="policy_timeout"}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 30m
        alertname: TollgateUpstreamErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: tollgate}
      - eval_time: 30m
        alertname: TollgatePolicyErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: tollgate, reason: policy_timeout}

  # Policy evaluation p99 in the 10-25 ms bucket for good.
  - interval: 1m
    input_series:
      - series: 'tollgate_policy_eval_duration_seconds_bucket{job="tollgate",instance="a:15000",engine="rego",le="0.01"}'
        values: '0+1x40'
      - series: 'tollgate_policy_eval_duration_seconds_bucket{job="tollgate",instance="a:15000",engine="rego",le="0.025"}'
        values: '0+60x40'
      - series: 'tollgate_policy_eval_duration_seconds_bucket{job="tollgate",instance="a:15000",engine="rego",le="+Inf"}'
        values: '0+60x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: TollgatePolicyEvalSlow
        exp_alerts: []
      - eval_time: 30m
        alertname: TollgatePolicyEvalSlow
        exp_alerts:
          - exp_labels: {severity: warning, job: tollgate}

  # One failed reload at minute 10: fires at once, resolves 10 minutes later.
  - interval: 1m
    input_series:
      - series: 'tollgate_policy_reloads_total{job="tollgate",instance="a:15000",result="failure"}'
        values: '0x9 1x30'
      - series: 'tollgate_policy_reloads_total{job="tollgate",instance="a:15000",result="success"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 9m
        alertname: TollgatePolicyReloadFailed
        exp_alerts: []
      - eval_time: 12m
        alertname: TollgatePolicyReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: tollgate, instance: "a:15000"}
      - eval_time: 25m
        alertname: TollgatePolicyReloadFailed
        exp_alerts: []

  # A credential failing continuously, another one healthy.
  - interval: 1m
    input_series:
      - series: 'tollgate_credential_errors_total{job="tollgate",instance="a:15000",credential="github"}'
        values: '0+5x20'
      - series: 'tollgate_credential_errors_total{job="tollgate",instance="a:15000",credential="openai"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: TollgateCredentialErrors
        exp_alerts: []
      - eval_time: 15m
        alertname: TollgateCredentialErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: tollgate, credential: github}

  # Traffic stops at minute 10 on one job; another job is up but never had request series.
  - interval: 1m
    input_series:
      - series: 'tollgate_requests_total{job="stopped",instance="a:15000",listener="agents",decision="allow",reason="allowed"}'
        values: '0+10x10 100x50'
      - series: 'tollgate_policy_info{job="stopped",instance="a:15000",revision="r1",engine="rego"}'
        values: '1x60'
      - series: 'tollgate_policy_info{job="empty",instance="b:15000",revision="r1",engine="rego"}'
        values: '1x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: TollgateNoTraffic
        exp_alerts:
          - exp_labels: {severity: warning, job: empty}
      - eval_time: 40m
        alertname: TollgateNoTraffic
        exp_alerts:
          - exp_labels: {severity: warning, job: empty}
          - exp_labels: {severity: warning, job: stopped}

  # A tollgate target goes down at minute 10; an unrelated target is down all along.
  - interval: 1m
    input_series:
      - series: 'up{job="tollgate",instance="a:15000"}'
        values: '1x10 0x30'
      - series: 'tollgate_policy_info{job="tollgate",instance="a:15000",revision="r1",engine="rego"}'
        values: '1x10'
      - series: 'up{job="node",instance="n:9100"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 13m
        alertname: TollgateDown
        exp_alerts: []
      - eval_time: 20m
        alertname: TollgateDown
        exp_alerts:
          - exp_labels: {severity: critical, job: tollgate, instance: "a:15000"}

  # Two kills in force.
  - interval: 1m
    input_series:
      - series: 'tollgate_kills_active{job="tollgate",instance="a:15000"}'
        values: '0x5 2x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: TollgateKillsActive
        exp_alerts: []
      - eval_time: 10m
        alertname: TollgateKillsActive
        exp_alerts:
          - exp_labels: {severity: info, job: tollgate, instance: "a:15000"}
"#;

#[test]
fn promtool_fires_each_alert_on_synthetic_series() {
    let promtool = require_tool("promtool");
    let dir = tempfile::tempdir().unwrap();

    // The rules without annotations.
    let mut doc = rules_yaml();
    let mut alerts = BTreeSet::new();
    for group in doc["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            let map = rule.as_mapping_mut().expect("rule");
            map.remove("annotations");
            if let Some(a) = map.get("alert").and_then(|a| a.as_str()) {
                alerts.insert(a.to_string());
            }
        }
    }
    let rules_copy = dir.path().join("rules.yaml");
    std::fs::write(&rules_copy, serde_yaml::to_string(&doc).unwrap()).unwrap();

    // Every alert is exercised (at least by the healthy case).
    for a in &alerts {
        assert!(
            RULE_TESTS.contains(&format!("alertname: {a},"))
                || RULE_TESTS.contains(&format!("alertname: {a}\n")),
            "alert {a} has no promtool test case"
        );
    }

    let tests = dir.path().join("tests.yaml");
    std::fs::write(
        &tests,
        format!("rule_files:\n  - '{}'\n{RULE_TESTS}", rules_copy.display()),
    )
    .unwrap();
    let out = run_with_timeout(
        command(promtool).args(["test", "rules"]).arg(&tests),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "promtool test rules:\n{}",
        output_text(&out)
    );
}
