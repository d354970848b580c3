//! Credentials through the real proxy (SPEC §5): static secrets from files and environment
//! variables (rotation included), header/query/basic injection, the agent's own secret headers
//! never reaching the origin, `jwt` tokens verified with an independent JOSE library
//! (joserfc) against tollgate's JWKS, the cache (hits, task end, kills), fail-closed denies,
//! and a leak test over every byte tollgate wrote.
//!
//! The policy is a tiny test policy: the intent name picks a credential from `data.routes`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER: &str = "spiffe://tollgate.test/ns/agents/sa/triage";

const POLICY: &str = r#"package tollgate

import rego.v1

default decision := {"allow": true, "reason": "no credential asked"}

decision := {"allow": true, "reason": "credential asked", "credential": data.routes[input.intent.name]} if {
	data.routes[input.intent.name]
}
"#;

/// tollgate with the test policy, `routes` (intent → credential request) and `extra` YAML.
fn start(builder: TollgateBuilder, routes: Value, extra: &str) -> Tollgate {
    let policy = builder.write_file("policy/policy.rego", POLICY);
    let data = builder.write_file(
        "policy/data.json",
        serde_json::to_vec(&json!({ "routes": routes })).unwrap(),
    );
    builder
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             identity: {{workload_spiffe_id: '{CALLER}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8]}}\n{extra}\n",
            policy.display(),
            data.display()
        ))
        .start()
}

fn route(name: &str, scopes: &[&str], ttl: Option<&str>) -> Value {
    let mut r = json!({"name": name, "scopes": scopes});
    if let Some(ttl) = ttl {
        r["ttl"] = ttl.into();
    }
    r
}

/// One call through the proxy with intent (and optionally task and extra headers).
fn call(
    tg: &Tollgate,
    url: &str,
    intent: &str,
    task: Option<&str>,
    headers: &[(&str, &str)],
) -> AgentResponse {
    let mut req = AgentRequest::get(url)
        .proxy(tg.proxy_url())
        .header("X-Agent-Intent", intent);
    if let Some(task) = task {
        req = req.header("X-Agent-Task", task);
    }
    for (k, v) in headers {
        req = req.header(k, v);
    }
    python_agent(&req)
}

/// The value of one sample line of `/metrics` (0 when absent).
fn metric(tg: &Tollgate, series: &str) -> f64 {
    let text = tg.admin("GET", "/metrics", None).1;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn deny_reason(r: &AgentResponse) -> String {
    assert_eq!(r.status, 403, "{:?}", r.raw);
    r.json()["reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn injects_static_secrets_from_file_and_env_as_header_query_and_basic() {
    let builder = Tollgate::builder().env("TOLLGATE_TEST_ENV_TOKEN", "env-token-value-7");
    let file = builder.write_file("secrets/gh", "file-token-value-1\n");
    let tg = start(
        builder,
        json!({"use.header": route("gh", &[], None), "use.env": route("envcred", &[], None),
               "use.query": route("q", &[], None), "use.basic": route("basic", &[], None)}),
        &format!(
            "credentials:\n\
             \x20 gh: {{kind: static, source: {{file: '{f}'}}}}\n\
             \x20 envcred: {{kind: static, source: {{env: TOLLGATE_TEST_ENV_TOKEN}}, inject: {{header: X-Token, value: 'Token {{token}};v=1'}}}}\n\
             \x20 q: {{kind: static, source: {{file: '{f}'}}, inject: {{query: access_token}}}}\n\
             \x20 basic: {{kind: static, source: {{file: '{f}'}}, inject: {{basic: {{username: x-access-token}}}}}}\n",
            f = file.display()
        ),
    );
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo?state=open&access_token=agent-supplied");

    let r = call(
        &tg,
        &url,
        "use.header",
        None,
        &[("Authorization", "Bearer agent-own-secret")],
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    let echoed = r.json();
    assert_eq!(
        echoed["headers"]["authorization"],
        "Bearer file-token-value-1"
    );

    let echoed = call(&tg, &url, "use.env", None, &[]).json();
    assert_eq!(echoed["headers"]["x-token"], "Token env-token-value-7;v=1");
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");

    let echoed = call(&tg, &url, "use.query", None, &[]).json();
    assert_eq!(
        echoed["query"],
        "state=open&access_token=file-token-value-1"
    );

    let echoed = call(&tg, &url, "use.basic", None, &[]).json();
    let expected = format!("Basic {}", base64_std("x-access-token:file-token-value-1"));
    assert_eq!(echoed["headers"]["authorization"], expected.as_str());

    // The decision log names the credential, never its value.
    let id = r.header("x-tollgate-decision-id").unwrap().to_string();
    let decision = tg.wait_decision(|d| d["decision_id"] == id.as_str(), WAIT);
    assert_eq!(decision["decision"]["credential"], "gh");
    assert!(!tg.stdout_text().contains("file-token-value-1"));
}

fn base64_std(text: &str) -> String {
    let out = command(python())
        .args([
            "-c",
            "import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())",
            text,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_rotated_secret_file_is_injected_from_the_next_request_on() {
    let builder = Tollgate::builder();
    let file = builder.write_file("secrets/token", "rotation-old-value");
    let tg = start(
        builder,
        json!({"use.gh": route("gh", &[], None)}),
        &format!(
            "credentials:\n  gh: {{kind: static, source: {{file: '{}'}}}}\n",
            file.display()
        ),
    );
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    assert_eq!(
        call(&tg, &url, "use.gh", None, &[]).json()["headers"]["authorization"],
        "Bearer rotation-old-value"
    );
    // Written elsewhere and renamed in place, as Kubernetes secret volumes do.
    let staged = tg.write_file("secrets/token.new", "rotation-new-value-longer\n");
    std::fs::rename(&staged, &file).unwrap();
    poll(WAIT, "the rotated secret at the origin", || {
        let seen = call(&tg, &url, "use.gh", None, &[]).json()["headers"]["authorization"].clone();
        (seen == "Bearer rotation-new-value-longer").then_some(())
    });
}

#[test]
fn the_agents_own_secret_headers_never_reach_the_origin() {
    let builder = Tollgate::builder();
    let file = builder.write_file("secrets/gh", "injected-value");
    let tg = start(
        builder,
        json!({"use.gh": route("gh", &[], None)}),
        &format!(
            "credentials:\n  gh: {{kind: static, source: {{file: '{}'}}}}\n\
             agent_secrets: {{headers: [X-Goog-Api-Key]}}\n",
            file.display()
        ),
    );
    let origin = PyOrigin::start(None);
    let secrets = [
        ("Authorization", "Bearer agent-authorization-value"),
        ("Proxy-Authorization", "Basic YWdlbnQ6cHJveHk="),
        ("X-Api-Key", "agent-api-key-value"),
        ("Cookie", "session=agent-cookie-value"),
        ("X-Goog-Api-Key", "agent-goog-key-value"),
    ];
    for intent in ["no.credential", "use.gh"] {
        let r = call(&tg, &origin.url("/echo"), intent, None, &secrets);
        assert_eq!(r.status, 200, "{:?}", r.raw);
        let headers = r.json()["headers"].clone();
        for name in [
            "proxy-authorization",
            "x-api-key",
            "cookie",
            "x-goog-api-key",
        ] {
            assert!(
                headers.get(name).is_none(),
                "{name} reached the origin: {headers}"
            );
        }
        match intent {
            "use.gh" => assert_eq!(headers["authorization"], "Bearer injected-value"),
            _ => assert!(headers.get("authorization").is_none(), "{headers}"),
        }
    }
    // Removal is logged with the header names only.
    tg.wait_log(|l| l.to_string().contains("x-goog-api-key"), WAIT);
    let everything = format!("{}{}", tg.stdout_text(), tg.stderr_text());
    for (_, value) in secrets {
        assert!(
            !everything.contains(value),
            "{value} was written by tollgate"
        );
    }
}

#[test]
fn on_present_deny_refuses_a_request_carrying_a_secret() {
    let tg = start(
        Tollgate::builder(),
        json!({}),
        "agent_secrets: {headers: [x-goog-api-key], on_present: deny}\n",
    );
    let origin = PyOrigin::start(None);
    for (name, value) in [
        ("X-Api-Key", "k"),
        ("X-Goog-Api-Key", "g"),
        ("Cookie", "c=1"),
    ] {
        let r = call(&tg, &origin.url("/echo"), "any", None, &[(name, value)]);
        assert_eq!(deny_reason(&r), "agent_secret_present", "{name}");
    }
    assert_eq!(
        call(&tg, &origin.url("/echo"), "any", None, &[]).status,
        200
    );
    assert!(
        metric(
            &tg,
            "tollgate_requests_total{decision=\"deny\",destination=\"\",listener=\"agents\",reason=\"agent_secret_present\"}"
        ) >= 3.0
    );
}

#[test]
fn an_undefined_credential_or_an_unreadable_secret_denies_and_the_proxy_keeps_serving() {
    let builder = Tollgate::builder();
    let missing = builder.dir().join("secrets/not-there");
    let tg = start(
        builder,
        json!({"use.undefined": route("nope", &[], None), "use.missing": route("missing", &[], None)}),
        &format!(
            "credentials:\n  missing: {{kind: static, source: {{file: '{}'}}}}\n",
            missing.display()
        ),
    );
    let origin = PyOrigin::start(None);
    let r = call(&tg, &origin.url("/echo"), "use.undefined", None, &[]);
    assert_eq!(deny_reason(&r), "credential_unavailable");
    let id = r.header("x-tollgate-decision-id").unwrap().to_string();
    let d = tg.wait_decision(|d| d["decision_id"] == id.as_str(), WAIT);
    assert_eq!(d["decision"]["allow"], false);
    assert_eq!(d["decision"]["reason"], "credential_unavailable");
    assert_eq!(d["decision"]["credential"], "nope");
    tg.wait_log(|l| l.to_string().contains("`nope`"), WAIT);

    let r = call(&tg, &origin.url("/echo"), "use.missing", None, &[]);
    assert_eq!(deny_reason(&r), "credential_unavailable");
    assert_eq!(
        call(&tg, &origin.url("/echo"), "no.credential", None, &[]).status,
        200
    );
    assert!(
        metric(
            &tg,
            "tollgate_credential_errors_total{credential=\"missing\"}"
        ) >= 1.0
    );

    // The file appears: the credential becomes available without a restart.
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::write(&missing, "now-there").unwrap();
    poll(WAIT, "the secret once its file exists", || {
        let r = call(&tg, &origin.url("/echo"), "use.missing", None, &[]);
        (r.status == 200)
            .then(|| assert_eq!(r.json()["headers"]["authorization"], "Bearer now-there"))
    });
}

/// Verifies a JWT with joserfc (an independent JOSE library) against a JWKS document, checking
/// iss, sub, aud and the time claims; prints the header and claims as JSON.
const VERIFY_JWT: &str = r#"
import json, sys
from joserfc import jwt
from joserfc.jwk import KeySet
token, jwks, iss, sub, aud = sys.argv[1:6]
keys = KeySet.import_key_set(json.loads(jwks))
decoded = jwt.decode(token, keys, algorithms=["ES256", "EdDSA"])
registry = jwt.JWTClaimsRegistry(
    iss={"essential": True, "value": iss},
    sub={"essential": True, "value": sub},
    aud={"essential": True, "value": aud},
    exp={"essential": True},
    iat={"essential": True},
)
registry.validate(decoded.claims)
print(json.dumps({"header": decoded.header, "claims": decoded.claims}))
"#;

fn verify_jwt(token: &str, jwks: &str, aud: &str) -> Value {
    let out = command(python())
        .args(["-c", VERIFY_JWT, token, jwks, "tollgate-test", CALLER, aud])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "joserfc refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn jwt_key(dir: &Path, algorithm: &str) -> String {
    let path = dir.join(format!("jwt-{algorithm}.pem"));
    let p = path.to_str().unwrap();
    match algorithm {
        "ES256" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        _ => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
    };
    p.to_string()
}

fn jwt_tollgate(max_ttl: &str) -> Tollgate {
    let builder = Tollgate::builder();
    let es = jwt_key(builder.dir(), "ES256");
    let ed = jwt_key(builder.dir(), "EdDSA");
    start(
        builder,
        json!({"call.internal": route("internal", &["orders:read", "orders:list"], Some("10m")),
               "call.edwards": route("edwards", &["a"], None)}),
        &format!(
            "credentials:\n\
             \x20 internal: {{kind: jwt, signing_key: {{file: '{es}'}}, issuer: tollgate-test, max_ttl: {max_ttl}, default_ttl: 1m}}\n\
             \x20 edwards: {{kind: jwt, signing_key: {{file: '{ed}'}}, issuer: tollgate-test, max_ttl: 5m, default_ttl: 2m}}\n"
        ),
    )
}

fn bearer(echoed: &Value) -> String {
    echoed["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token at the origin: {echoed}"))
        .to_string()
}

#[test]
fn jwt_tokens_verify_against_the_jwks_with_every_claim() {
    let tg = jwt_tollgate("5m");
    let (status, jwks) = tg.admin("GET", "/.well-known/jwks.json", None);
    assert_eq!(status, 200);
    let keys: Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    for key in keys["keys"].as_array().unwrap() {
        assert!(
            key.get("d").is_none(),
            "private key material in the JWKS: {key}"
        );
    }
    // The origin verifies the token it receives against tollgate's JWKS (Python joserfc).
    let origin = PyOrigin::start_with_jwks(&tg.admin_url("/.well-known/jwks.json"));

    for (intent, alg, ttl, scope) in [
        // The decision asks for 10m; max_ttl (5m) caps it.
        ("call.internal", "ES256", 300, "orders:read orders:list"),
        // No ttl in the decision: default_ttl (2m).
        ("call.edwards", "EdDSA", 120, "a"),
    ] {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = call(
            &tg,
            &origin.url("/jwt/orders"),
            intent,
            Some("t-jwt-1"),
            &[("Authorization", "Bearer agent-forged")],
        );
        assert_eq!(r.status, 200, "{:?}", r.raw);
        let verified = r.json();
        assert_eq!(verified["verified"], true, "{verified}");
        let (header, claims) = (&verified["header"], &verified["claims"]);
        assert_eq!(header["alg"], alg);
        assert!(
            keys["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == header["kid"])
        );
        assert_eq!(claims["iss"], "tollgate-test");
        assert_eq!(claims["sub"], CALLER);
        assert_eq!(claims["aud"], "127.0.0.1");
        assert_eq!(claims["intent"], intent);
        assert_eq!(claims["task"], "t-jwt-1");
        assert_eq!(claims["scope"], scope);
        let exp = claims["exp"].as_u64().unwrap();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(exp <= after + ttl, "exp {exp} beyond now + {ttl}");
        assert!(exp >= before + ttl, "exp {exp} shorter than {ttl}s");
        assert!(claims["iat"].as_u64().unwrap() >= before);
    }
    // An independent check of iss/sub/aud/exp with joserfc's claims registry, on a token the
    // echo origin received.
    let echo = PyOrigin::start(None);
    let echoed = call(
        &tg,
        &echo.url("/echo"),
        "call.internal",
        Some("t-jwt-1"),
        &[],
    )
    .json();
    verify_jwt(&bearer(&echoed), &jwks, "127.0.0.1");
    let origin = echo;

    // Per task and destination: the same task reuses the token (a cache hit), another task
    // gets its own.
    let first = bearer(
        &call(
            &tg,
            &origin.url("/echo"),
            "call.internal",
            Some("t-jwt-1"),
            &[],
        )
        .json(),
    );
    let again = bearer(
        &call(
            &tg,
            &origin.url("/echo"),
            "call.internal",
            Some("t-jwt-1"),
            &[],
        )
        .json(),
    );
    assert_eq!(first, again);
    let other = bearer(
        &call(
            &tg,
            &origin.url("/echo"),
            "call.internal",
            Some("t-jwt-2"),
            &[],
        )
        .json(),
    );
    assert_ne!(first, other);
    assert!(
        metric(
            &tg,
            "tollgate_credential_cache_hits_total{credential=\"internal\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &tg,
            "tollgate_credential_issued_total{credential=\"internal\",kind=\"jwt\"}"
        ),
        2.0
    );
}

#[test]
fn ending_a_task_drops_its_tokens_and_a_kill_drops_the_killed_callers() {
    let tg = jwt_tollgate("15m");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let issued = |tg: &Tollgate| {
        metric(
            tg,
            "tollgate_credential_issued_total{credential=\"internal\",kind=\"jwt\"}",
        )
    };

    let first = bearer(&call(&tg, &url, "call.internal", Some("t-end"), &[]).json());
    assert_eq!(
        bearer(&call(&tg, &url, "call.internal", Some("t-end"), &[]).json()),
        first
    );
    let (status, body) = tg.admin_json("DELETE", "/v1/tasks/t-end", None);
    assert_eq!(status, 200);
    // No flow of the task was open (each call had ended); `ending_id` names the ending.
    assert!(body["ending_id"].is_string(), "{body}");
    let mut body = body;
    body.as_object_mut().unwrap().remove("ending_id");
    assert_eq!(
        body,
        json!({"task": "t-end", "credentials_dropped": 1, "credentials_revoked": 0, "flows_ended": 0})
    );
    let fresh = bearer(&call(&tg, &url, "call.internal", Some("t-end"), &[]).json());
    assert_ne!(fresh, first, "a task that ended got its old token back");
    assert_eq!(issued(&tg), 2.0);
    let (_, body) = tg.admin_json("DELETE", "/v1/tasks/t-end", None);
    assert_eq!(body["credentials_dropped"], 1);
    let (_, body) = tg.admin_json("DELETE", "/v1/tasks/t-end", None);
    assert_eq!(body["credentials_dropped"], 0);

    // A kill of the caller drops its cached tokens: after the kill is lifted, a new one.
    let before_kill = bearer(&call(&tg, &url, "call.internal", Some("t-kill"), &[]).json());
    assert_eq!(issued(&tg), 3.0);
    let (status, _) = tg.admin_json(
        "POST",
        "/v1/kill",
        Some(&json!({"spiffe_id": CALLER}).to_string()),
    );
    assert_eq!(status, 201);
    tg.wait_log(
        |l| l.to_string().contains("kill: cached credentials dropped"),
        WAIT,
    );
    assert_eq!(
        deny_reason(&call(&tg, &url, "call.internal", Some("t-kill"), &[])),
        "killed"
    );
    let (status, _) = tg.admin_json(
        "DELETE",
        "/v1/kill",
        Some(&json!({"spiffe_id": CALLER}).to_string()),
    );
    assert_eq!(status, 200);
    let after_kill = bearer(&call(&tg, &url, "call.internal", Some("t-kill"), &[]).json());
    assert_ne!(after_kill, before_kill);
    assert_eq!(issued(&tg), 4.0);
}

#[test]
fn a_reload_keeps_the_tokens_of_unchanged_credentials_and_applies_new_ones() {
    let builder = Tollgate::builder();
    let es = jwt_key(builder.dir(), "ES256");
    let secret = builder.write_file("secrets/s", "reload-static-value");
    let tg = start(
        builder,
        json!({"call.internal": route("internal", &["x"], None), "call.static": route("added", &[], None)}),
        &format!("credentials:\n  internal: {{kind: jwt, signing_key: {{file: '{es}'}}}}\n"),
    );
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    let before = bearer(&call(&tg, &url, "call.internal", Some("t-r"), &[]).json());
    assert_eq!(
        deny_reason(&call(&tg, &url, "call.static", None, &[])),
        "credential_unavailable"
    );
    let jwks = tg.admin("GET", "/.well-known/jwks.json", None).1;

    // Same jwt definition, one credential added.
    let config = std::fs::read_to_string(tg.config_path().unwrap()).unwrap();
    let config = config.replace(
        "credentials:\n",
        &format!(
            "credentials:\n  added: {{kind: static, source: {{file: '{}'}}}}\n",
            secret.display()
        ),
    );
    std::fs::write(tg.config_path().unwrap(), config).unwrap();
    assert_eq!(tg.admin("POST", "/v1/reload", None).0, 200);
    assert_eq!(
        bearer(&call(&tg, &url, "call.internal", Some("t-r"), &[]).json()),
        before
    );
    assert_eq!(tg.admin("GET", "/.well-known/jwks.json", None).1, jwks);
    assert_eq!(
        call(&tg, &url, "call.static", None, &[]).json()["headers"]["authorization"],
        "Bearer reload-static-value"
    );
    assert_eq!(
        metric(
            &tg,
            "tollgate_credential_issued_total{credential=\"added\",kind=\"static\"}"
        ),
        1.0
    );

    // The same definition with a rotated key (same path): new tokens, new JWKS.
    std::fs::create_dir_all(tg.dir().join("rotated")).unwrap();
    let rotated = jwt_key(&tg.dir().join("rotated"), "ES256");
    std::fs::rename(&rotated, &es).unwrap();
    assert_eq!(tg.admin("POST", "/v1/reload", None).0, 200);
    let after_rotation = bearer(&call(&tg, &url, "call.internal", Some("t-r"), &[]).json());
    assert_ne!(after_rotation, before);
    let rotated_jwks = tg.admin("GET", "/.well-known/jwks.json", None).1;
    assert_ne!(rotated_jwks, jwks);
    let before = after_rotation;

    // A broken signing key fails the reload; the running credentials stay.
    std::fs::write(&es, "not a key").unwrap();
    let config = std::fs::read_to_string(tg.config_path().unwrap()).unwrap();
    std::fs::write(
        tg.config_path().unwrap(),
        config.replace(
            "  internal: {kind: jwt,",
            "  internal: {kind: jwt, issuer: changed,",
        ),
    )
    .unwrap();
    let (status, body) = tg.admin("POST", "/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("credentials.internal"), "{body}");
    assert_eq!(
        bearer(&call(&tg, &url, "call.internal", Some("t-r"), &[]).json()),
        before
    );
}

#[test]
fn check_reports_unresolvable_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.pem");
    std::fs::write(&key, "not a key").unwrap();
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        "listeners: [{name: agents, address: '127.0.0.1:0'}]\n\
         credentials:\n\
         \x20 missing: {kind: static, source: {file: nowhere/token}}\n\
         \x20 unset: {kind: static, source: {env: TOLLGATE_TEST_SURELY_UNSET}}\n\
         \x20 badkey: {kind: jwt, signing_key: {file: bad.pem}}\n",
    )
    .unwrap();
    let out = Tollgate::run_cli(&["check".as_ref(), "-c".as_ref(), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "credentials.missing",
        "credentials.unset",
        "credentials.badkey",
    ] {
        assert!(stderr.contains(name), "{name} not reported: {stderr}");
    }
}

#[test]
fn metrics_series_exist_for_every_configured_credential_from_the_start() {
    let tg = jwt_tollgate("5m");
    let text = tg.admin("GET", "/metrics", None).1;
    for series in [
        "tollgate_credential_issued_total{credential=\"internal\",kind=\"jwt\"} 0",
        "tollgate_credential_cache_hits_total{credential=\"edwards\"} 0",
        "tollgate_credential_errors_total{credential=\"internal\"} 0",
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
}

/// Every byte tollgate wrote, every admin answer and every response the agent received, for
/// a whole scenario with known secrets, searched for those secrets. The origin is nginx
/// serving a file: it does not echo request headers (an echo origin would leak them itself).
#[test]
fn no_secret_value_is_ever_written_anywhere() {
    const FILE_SECRET: &str = "leaktest-file-secret-4f1c9a";
    const ROTATED_SECRET: &str = "leaktest-rotated-secret-77be02";
    const ENV_SECRET: &str = "leaktest-env-secret-d2e8b1";
    const AGENT_SECRET: &str = "leaktest-agent-own-secret-9a0c33";
    const CLIENT_SECRET: &str = "leaktest-oauth-client-secret-c61d";
    let authz = AuthzServer::start(
        &AuthzConfig::new().client(AuthzClient::new("leak-client", CLIENT_SECRET).scopes(&["s"])),
    );
    let builder = Tollgate::builder().env("TOLLGATE_LEAK_ENV", ENV_SECRET);
    let file = builder.write_file("secrets/file", FILE_SECRET);
    let client_secret = builder.write_file("secrets/client", CLIENT_SECRET);
    let key = jwt_key(builder.dir(), "ES256");
    let tg = start(
        builder,
        json!({"use.file": route("file", &[], None), "use.env": route("env", &[], None),
               "use.oauth": route("partner", &["s"], None),
               "use.query": route("query", &[], None), "use.jwt": route("internal", &["s"], None),
               "use.undefined": route("nope", &[], None)}),
        &format!(
            "credentials:\n\
             \x20 file: {{kind: static, source: {{file: '{f}'}}}}\n\
             \x20 env: {{kind: static, source: {{env: TOLLGATE_LEAK_ENV}}, inject: {{basic: {{username: u}}}}}}\n\
             \x20 query: {{kind: static, source: {{file: '{f}'}}, inject: {{query: token}}}}\n\
             \x20 internal: {{kind: jwt, signing_key: {{file: '{key}'}}}}\n\
             \x20 partner: {{kind: oauth2, token_endpoint: '{token}', client_id: leak-client, client_secret: {{file: '{cs}'}}, revocation_endpoint: '{revoke}'}}\n\
             telemetry: {{decision_log: stdout}}\n",
            f = file.display(),
            cs = client_secret.display(),
            token = authz.token_endpoint(),
            revoke = authz.revocation_endpoint(),
        ),
    );
    let nginx = Nginx::start(&NginxOptions::plain());
    nginx.write_file("hello.txt", b"hello\n");
    let url = nginx.url("/hello.txt");
    let mut seen_by_agent: Vec<String> = Vec::new();
    let agent_auth = format!("Bearer {AGENT_SECRET}");
    for intent in [
        "use.file",
        "use.env",
        "use.query",
        "use.jwt",
        "use.oauth",
        "use.undefined",
        "none",
    ] {
        for _ in 0..2 {
            let r = call(
                &tg,
                &url,
                intent,
                Some("t-leak"),
                &[("Authorization", &agent_auth), ("X-Api-Key", AGENT_SECRET)],
            );
            assert!(matches!(r.status, 200 | 403), "{:?}", r.raw);
            seen_by_agent.push(r.raw.to_string());
        }
    }
    // curl too: raw status line, headers and body as the agent received them.
    let cookie = format!("Cookie: s={AGENT_SECRET}");
    let out = curl(&[
        "-s",
        "-i",
        "-x",
        &tg.proxy_url(),
        "-H",
        "X-Agent-Intent: use.file",
        "-H",
        &cookie,
        &url,
    ]);
    seen_by_agent.push(String::from_utf8_lossy(&out.stdout).into_owned());
    // nginx received the injected values (so the scenario really used them), never the agent's.
    let log = serde_json::to_string(&nginx.access_log_lines()).unwrap();
    assert!(log.contains(&format!("Bearer {FILE_SECRET}")), "{log}");
    assert!(log.contains(&format!("token={FILE_SECRET}")), "{log}");
    assert!(!log.contains(AGENT_SECRET), "{log}");
    // Rotation to a new value, then to an unreadable file (credential unavailable).
    let staged = tg.write_file("secrets/file.new", ROTATED_SECRET);
    std::fs::rename(&staged, &file).unwrap();
    tg.wait_log(
        |l| l.to_string().contains("secret file changed: re-read"),
        WAIT,
    );
    seen_by_agent.push(call(&tg, &url, "use.file", None, &[]).raw.to_string());
    std::fs::remove_file(&file).unwrap();
    tg.wait_log(|l| l.to_string().contains("cannot be read"), WAIT);
    let r = call(&tg, &url, "use.file", None, &[]);
    assert_eq!(deny_reason(&r), "credential_unavailable");
    seen_by_agent.push(r.raw.to_string());
    let log = serde_json::to_string(&nginx.access_log_lines()).unwrap();
    assert!(log.contains(ROTATED_SECRET), "{log}");
    // Every credential value the origin received (static, basic, JWT, OAuth2 access tokens).
    let injected: Vec<String> = nginx
        .access_log_lines()
        .iter()
        .filter_map(|l| l["headers"]["authorization"].as_str().map(str::to_string))
        .filter_map(|v| v.split_once(' ').map(|(_, t)| t.to_string()))
        .filter(|t| !t.is_empty())
        .collect();
    assert!(injected.len() >= 8, "{injected:?}");
    // An OAuth2 token and a JWT really were among them.
    assert!(
        injected.iter().any(|t| t.matches('.').count() == 2),
        "{injected:?}"
    );

    let mut admin_text = String::new();
    for (method, path, body) in [
        ("GET", "/metrics", None),
        ("GET", "/v1/decisions?limit=1000", None),
        ("GET", "/.well-known/jwks.json", None),
        ("POST", "/v1/kill", Some(r#"{"task": "t-leak"}"#)),
        ("GET", "/v1/kill", None),
        ("DELETE", "/v1/tasks/t-leak", None),
        ("POST", "/v1/reload", None),
    ] {
        admin_text.push_str(&tg.admin(method, path, body).1);
    }
    tg.terminate(WAIT);
    let written = format!(
        "{}\n{}\n{admin_text}\n{}",
        tg.stdout_text(),
        tg.stderr_text(),
        seen_by_agent.join("\n")
    );
    // The JWT signing key: one line of its PEM body.
    let pem = std::fs::read_to_string(&key).unwrap();
    let key_line = pem.lines().nth(1).unwrap().to_string();
    let basic = base64_std(&format!("u:{ENV_SECRET}"));
    for secret in [
        FILE_SECRET,
        ROTATED_SECRET,
        ENV_SECRET,
        AGENT_SECRET,
        CLIENT_SECRET,
        &basic,
        &key_line,
    ] {
        assert!(
            !written.contains(secret),
            "secret {secret} found in what tollgate wrote"
        );
    }
    for token in &injected {
        assert!(
            !written.contains(token.as_str()),
            "an injected credential was written by tollgate"
        );
    }
    assert!(
        authz.stats()["token"]["by_grant"]["client_credentials"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // The decision log named the credentials it used.
    assert!(tg.stdout_text().contains("\"credential\":\"file\""));
}

// ---------------------------------------------------------------------------------------
// oauth2 against a real authorization server (node-oidc-provider, tests/authz/oidc_server.mjs)

const CC_ID: &str = "tollgate-cc";
const CC_SECRET: &str = "cc-client-secret-3b9d7e";
const TX_ID: &str = "tollgate-tx";
const TX_SECRET: &str = "tx-client-secret-51ac0f";
const INSPECTOR_ID: &str = "inspector";
const INSPECTOR_SECRET: &str = "inspector-secret-0d2e";
const ORDERS_API: &str = "https://orders.example/";

fn authz_server() -> AuthzServer {
    AuthzServer::start(
        &AuthzConfig::new()
            .access_token_ttl(600)
            .client(AuthzClient::new(CC_ID, CC_SECRET).scopes(&["orders:read", "orders:write"]))
            .client(
                AuthzClient::new(TX_ID, TX_SECRET)
                    .scopes(&["orders:read"])
                    .auth(ClientAuth::Post)
                    .grant_types(&[TOKEN_EXCHANGE_GRANT]),
            )
            .client(AuthzClient::new(INSPECTOR_ID, INSPECTOR_SECRET))
            .resource_server(ORDERS_API, &["orders:read", "orders:write"], None)
            .exchange_issuer("tollgate-test"),
    )
}

/// tollgate with `partner` (client credentials, resource, revocation) and `exchanged` (token
/// exchange of a JWT minted by `subject`, client_secret_post).
fn oauth_tollgate(authz: &AuthzServer, builder: TollgateBuilder, extra: &str) -> Tollgate {
    let cc = builder.write_file("secrets/cc", CC_SECRET);
    let key = jwt_key(builder.dir(), "ES256");
    let tg = start(
        builder,
        json!({"call.partner": route("partner", &["orders:read"], None),
               "call.exchanged": route("exchanged", &["orders:read"], None)}),
        &format!(
            "credentials:\n\
             \x20 partner: {{kind: oauth2, token_endpoint: '{token}', client_id: {CC_ID}, client_secret: {{file: '{cc}'}},\n\
             \x20           resource: '{ORDERS_API}', revocation_endpoint: '{revoke}', timeout: 5s}}\n\
             \x20 subject: {{kind: jwt, signing_key: {{file: '{key}'}}, issuer: tollgate-test}}\n\
             \x20 exchanged: {{kind: oauth2, grant: token_exchange, token_endpoint: '{token}', client_id: {TX_ID},\n\
             \x20           client_secret: {{env: TOLLGATE_TEST_TX_SECRET}}, client_auth: post,\n\
             \x20           subject_token: {{jwt: subject}}, revocation_endpoint: '{revoke}'}}\n{extra}",
            token = authz.token_endpoint(),
            revoke = authz.revocation_endpoint(),
            cc = cc.display(),
        ),
    );
    authz.set_exchange_jwks_url(&tg.admin_url("/.well-known/jwks.json"));
    tg
}

fn oauth_builder() -> TollgateBuilder {
    Tollgate::builder().env("TOLLGATE_TEST_TX_SECRET", TX_SECRET)
}

fn introspect(authz: &AuthzServer, token: &str) -> Value {
    authz.introspect(INSPECTOR_ID, INSPECTOR_SECRET, token)
}

#[test]
fn oauth2_client_credentials_token_is_active_until_its_task_ends() {
    let authz = authz_server();
    let tg = oauth_tollgate(&authz, oauth_builder(), "");
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");

    let r = call(
        &tg,
        &url,
        "call.partner",
        Some("t-oauth"),
        &[("Authorization", "Bearer agent-own-token")],
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    let first = bearer(&r.json());
    assert_ne!(first, "agent-own-token");
    let info = introspect(&authz, &first);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], CC_ID);
    assert_eq!(info["scope"], "orders:read");
    assert_eq!(info["aud"], ORDERS_API);
    // tollgate authenticated with client_secret_basic, as configured.
    let stats = authz.stats();
    assert_eq!(
        stats["token"]["by_auth_method"]["client_secret_basic"], 1,
        "{stats}"
    );

    // Cached: the same task reuses the token; another task gets its own.
    assert_eq!(
        bearer(&call(&tg, &url, "call.partner", Some("t-oauth"), &[]).json()),
        first
    );
    assert_eq!(authz.token_requests("client_credentials"), 1);
    let other = bearer(&call(&tg, &url, "call.partner", Some("t-other"), &[]).json());
    assert_ne!(other, first);
    assert_eq!(authz.token_requests("client_credentials"), 2);
    assert!(
        metric(
            &tg,
            "tollgate_credential_cache_hits_total{credential=\"partner\"}"
        ) >= 1.0
    );

    // Ending the task revokes its token at the server; the other task's stays active.
    let (status, body) = tg.admin_json("DELETE", "/v1/tasks/t-oauth", None);
    assert_eq!(status, 200);
    // No flow of the task was open (each call had ended); `ending_id` names the ending.
    assert!(body["ending_id"].is_string(), "{body}");
    let mut body = body;
    body.as_object_mut().unwrap().remove("ending_id");
    assert_eq!(
        body,
        json!({"task": "t-oauth", "credentials_dropped": 1, "credentials_revoked": 1, "flows_ended": 0})
    );
    assert_eq!(introspect(&authz, &first)["active"], false);
    assert_eq!(introspect(&authz, &other)["active"], true);
    assert_eq!(authz.stats()["revocation"]["by_client"][CC_ID], 1);

    // The next call of that task fetches afresh (the policy still allows it).
    let fresh = bearer(&call(&tg, &url, "call.partner", Some("t-oauth"), &[]).json());
    assert_ne!(fresh, first);
    assert_eq!(introspect(&authz, &fresh)["active"], true);
    assert_eq!(authz.token_requests("client_credentials"), 3);

    // A kill of the task drops and revokes its token; after the kill is lifted, a new one.
    let (status, _) = tg.admin_json("POST", "/v1/kill", Some(r#"{"task": "t-oauth"}"#));
    assert_eq!(status, 201);
    poll(WAIT, "the killed task's token to be revoked", || {
        (introspect(&authz, &fresh)["active"] == false).then_some(())
    });
    assert_eq!(
        deny_reason(&call(&tg, &url, "call.partner", Some("t-oauth"), &[])),
        "killed"
    );
    assert_eq!(
        tg.admin_json("DELETE", "/v1/kill/task/t-oauth", None).0,
        200
    );
    let after_kill = bearer(&call(&tg, &url, "call.partner", Some("t-oauth"), &[]).json());
    assert_ne!(after_kill, fresh);
    assert_eq!(authz.token_requests("client_credentials"), 4);
}

/// RFC 8693: oidc-provider has no token-exchange grant; the handler is test code registered
/// on the real server (tests/authz/oidc_server.mjs), verifying the subject JWT against
/// tollgate's JWKS and issuing the provider's own access tokens.
#[test]
fn oauth2_token_exchange_trades_a_minted_subject_jwt_for_an_access_token() {
    let authz = authz_server();
    let tg = oauth_tollgate(&authz, oauth_builder(), "");
    let origin = PyOrigin::start(None);
    let r = call(
        &tg,
        &origin.url("/echo"),
        "call.exchanged",
        Some("t-x"),
        &[],
    );
    assert_eq!(r.status, 200, "{:?} {}", r.raw, tg.stderr_text());
    let token = bearer(&r.json());
    let info = introspect(&authz, &token);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], TX_ID);
    let stats = authz.stats();
    assert_eq!(
        stats["token"]["by_grant"][TOKEN_EXCHANGE_GRANT], 1,
        "{stats}"
    );
    assert_eq!(
        stats["token"]["by_auth_method"]["client_secret_post"], 1,
        "{stats}"
    );
    let exchange = &stats["exchanges"][0];
    assert_eq!(exchange["sub"], CALLER);
    assert_eq!(exchange["iss"], "tollgate-test");
    assert_eq!(exchange["aud"], authz.token_endpoint());
    assert_eq!(exchange["client_id"], TX_ID);
    assert_eq!(exchange["scope"], "orders:read");
    assert_eq!(exchange["claims"]["task"], "t-x");
    assert_eq!(exchange["claims"]["intent"], "call.exchanged");
    let (_, body) = tg.admin_json("DELETE", "/v1/tasks/t-x", None);
    assert_eq!(body["credentials_revoked"], 1, "{body}");
    assert_eq!(introspect(&authz, &token)["active"], false);
}

/// 200 concurrent agent calls (Python httpx + asyncio) that need one credential: one token
/// request at the server, while the server delays its answer so the calls really overlap.
#[test]
fn two_hundred_concurrent_calls_make_one_token_request() {
    let authz = authz_server();
    let tg = oauth_tollgate(&authz, oauth_builder(), "limits: {max_connections: 1000}\n");
    authz.delay_token_responses(1000);
    let nginx = Nginx::start(&NginxOptions::plain());
    nginx.write_file("hello.txt", b"hello\n");
    let script = r#"
import asyncio, json, sys
import httpx
proxy, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def main():
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(proxy=proxy, limits=limits, timeout=60) as client:
        headers = {"X-Agent-Intent": "call.partner", "X-Agent-Task": "t-flight"}
        replies = await asyncio.gather(*[client.get(url, headers=headers) for _ in range(n)])
    print(json.dumps([r.status_code for r in replies]))
asyncio.run(main())
"#;
    let out = command(python())
        .args([
            "-c",
            script,
            &tg.proxy_url(),
            &nginx.url("/hello.txt"),
            "200",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<u16> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let stats = authz.stats();
    assert_eq!(
        stats["token"]["by_grant"]["client_credentials"], 1,
        "{stats}"
    );
    assert_eq!(stats["token"]["max_in_flight"], 1, "{stats}");
    // Every call carried the one token.
    let log = nginx.access_log_lines();
    assert_eq!(log.len(), 200);
    let tokens: std::collections::BTreeSet<String> = log
        .iter()
        .map(|l| {
            l["headers"]["authorization"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(tokens.iter().next().unwrap().starts_with("Bearer "));
    assert_eq!(
        metric(
            &tg,
            "tollgate_credential_issued_total{credential=\"partner\",kind=\"oauth2\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &tg,
            "tollgate_credential_cache_hits_total{credential=\"partner\"}"
        ),
        199.0
    );
}

#[test]
fn a_failing_token_endpoint_denies_then_recovers_after_backoff() {
    let authz = authz_server();
    let tg = oauth_tollgate(&authz, oauth_builder(), "");
    let nginx = Nginx::start(&NginxOptions::plain());
    nginx.write_file("hello.txt", b"hello\n");
    let url = nginx.url("/hello.txt");
    authz.fail_next_token_requests(1000);
    let calls = 8;
    for _ in 0..calls {
        let r = call(&tg, &url, "call.partner", Some("t-fail"), &[]);
        assert_eq!(deny_reason(&r), "credential_unavailable");
    }
    assert!(
        nginx.access_log_lines().is_empty(),
        "forwarded without the credential"
    );
    // Backoff (250 ms doubling): fewer token requests than calls; the others were refused fast.
    let asked = authz.stats()["token"]["injected_failures"]
        .as_u64()
        .unwrap();
    assert!(
        (1..calls).contains(&asked),
        "{asked} token requests for {calls} calls"
    );
    authz.fail_next_token_requests(0);
    let recovered = poll(WAIT, "recovery after the backoff", || {
        let r = call(&tg, &url, "call.partner", Some("t-fail"), &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(recovered.status, 200);
    let log = nginx.access_log_lines();
    assert!(
        log.iter().all(|l| l["headers"]["authorization"]
            .as_str()
            .unwrap_or("")
            .starts_with("Bearer ")),
        "{log:?}"
    );
    assert!(
        metric(
            &tg,
            "tollgate_credential_errors_total{credential=\"partner\"}"
        ) >= 1.0
    );
    let warned = tg.wait_log(
        |l| l.to_string().contains("credential unavailable; denying"),
        WAIT,
    );
    assert!(warned.to_string().contains("503"), "{warned}");
    assert!(!tg.stderr_text().contains(CC_SECRET));
}

/// Inside an intercepted CONNECT tunnel (HTTPS to the origin), with HTTP/2 between agent and
/// tollgate: the same stages, the same injection, the same removal of the agent's secrets.
#[test]
fn injects_inside_intercepted_https_with_http2_from_the_agent() {
    let pki = Pki::new();
    let builder = Tollgate::builder();
    let file = builder.write_file("secrets/gh", "intercepted-token-value");
    let policy = builder.write_file("policy/policy.rego", POLICY);
    let data = builder.write_file(
        "policy/data.json",
        serde_json::to_vec(&json!({"routes": {"use.gh": route("gh", &[], None)}})).unwrap(),
    );
    let tg = builder
        .config(format!(
            "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             identity: {{workload_spiffe_id: '{CALLER}'}}\n\
             policy: {{path: '{}', data: '{}'}}\n\
             upstream: {{allow_private: [127.0.0.0/8], ca: '{}'}}\n\
             credentials:\n  gh: {{kind: static, source: {{file: '{}'}}}}\n",
            policy.display(),
            data.display(),
            pki.ca_cert().display(),
            file.display()
        ))
        .start();
    let origin = PyOrigin::start(Some(&pki));
    let r = python_agent(
        &AgentRequest::get(origin.url("/echo"))
            .proxy(tg.proxy_url())
            .cacert(tg.dir().join("state/intercept-ca.pem"))
            .http2()
            .header("X-Agent-Intent", "use.gh")
            .header("Authorization", "Bearer agent-own-value")
            .header("Cookie", "c=agent"),
    );
    assert_eq!(r.status, 200, "{:?}", r.raw);
    assert_eq!(r.http_version, "HTTP/2");
    let echoed = r.json();
    assert_eq!(echoed["tls"], true, "{echoed}");
    assert_eq!(
        echoed["headers"]["authorization"],
        "Bearer intercepted-token-value"
    );
    assert!(echoed["headers"].get("cookie").is_none(), "{echoed}");
}

/// A token is never used past its expiry (server `expires_in`) nor past the decision's ttl:
/// every call that starts later than that after the first token arrived carries a new one.
#[test]
fn tokens_are_not_used_past_their_expiry_or_the_decisions_ttl() {
    let authz = AuthzServer::start(
        &AuthzConfig::new()
            .access_token_ttl(2)
            .client(AuthzClient::new(CC_ID, CC_SECRET).scopes(&["orders:read"]))
            .client(AuthzClient::new(INSPECTOR_ID, INSPECTOR_SECRET)),
    );
    let builder = Tollgate::builder();
    let cc = builder.write_file("secrets/cc", CC_SECRET);
    let tg = start(
        builder,
        json!({"call.expiring": route("partner", &["orders:read"], None),
               "call.short": route("partner", &[], Some("1s"))}),
        &format!(
            "credentials:\n  partner: {{kind: oauth2, token_endpoint: '{}', client_id: {CC_ID}, client_secret: {{file: '{}'}}}}\n",
            authz.token_endpoint(),
            cc.display()
        ),
    );
    let origin = PyOrigin::start(None);
    let url = origin.url("/echo");
    // (intent, the bound: expires_in = 2 s, or the decision's ttl = 1 s)
    for (intent, bound) in [
        ("call.expiring", Duration::from_secs(2)),
        ("call.short", Duration::from_secs(1)),
    ] {
        let first = bearer(&call(&tg, &url, intent, Some("t-exp"), &[]).json());
        let got_first = Instant::now();
        let mut renewed = false;
        while got_first.elapsed() < bound + Duration::from_secs(1) {
            let started = Instant::now();
            let token = bearer(&call(&tg, &url, intent, Some("t-exp"), &[]).json());
            if started >= got_first + bound {
                assert_ne!(
                    token, first,
                    "{intent}: a token was used past its bound {bound:?}"
                );
            }
            renewed |= token != first;
        }
        assert!(renewed, "{intent}: never renewed");
    }
}
