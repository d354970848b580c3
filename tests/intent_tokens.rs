//! Signed intent tokens (SPEC §3.2) against tokens, keys and JWK Sets minted by an independent
//! JOSE library (Python joserfc, `tests/agents/mint_token.py`), never by tollgate's own code.
//!
//! These tests drive [`tollgate::intent_token`] directly through the library crate: each
//! refused token must be refused with its exact reason, each valid one accepted with the
//! fields it carries. The proxy's end-to-end tests (deny responses, decision log) build on the
//! same helper.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tollgate::identity::SpiffeId;
use tollgate::intent::{Intent, TaskName};
use tollgate::intent_token::{IntentIssuers, IssuerConfig, TokenError};

use support::{
    AgentRequest, PyOrigin, Tollgate, command, python, python_agent, repo_root, run_checked,
};

const ISS: &str = "https://orchestrator.example.org";
const CALLER: &str = "spiffe://example.org/ns/agents/sa/triage";
const OTHER: &str = "spiffe://example.org/ns/agents/sa/intruder";
/// Every verification runs at this instant, so no test depends on the clock.
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

/// Runs `mint_token.py` on `plan` (see its docstring) and returns the minted tokens by name.
fn mint(dir: &Path, plan: &Value) -> BTreeMap<String, String> {
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let mut cmd = command(python());
    cmd.arg(repo_root().join("tests/agents/mint_token.py"))
        .arg(&plan_path);
    let out = run_checked(&mut cmd, Duration::from_secs(60));
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("mint_token.py prints JSON");
    serde_json::from_value(parsed["tokens"].clone()).unwrap()
}

/// The claims of a valid token for `CALLER`, with `changes` applied (`null` removes a claim).
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISS,
        "sub": CALLER,
        "aud": ["tollgate", "https://orchestrator.example.org"],
        "intent": "issues.read",
        "task": "t-42",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
        "scope": "issues:read",
        "delegation": ["spiffe://example.org/orchestrator", "spiffe://example.org/planner"],
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn token(key: &str, changes: Value) -> Value {
    json!({"key": key, "claims": claims(changes)})
}

fn issuers(jwks: &Path) -> IntentIssuers {
    IntentIssuers::load(&[IssuerConfig {
        issuer: ISS.into(),
        jwks: jwks.to_path_buf(),
        audience: None,
    }])
    .unwrap_or_else(|e| panic!("{e:?}"))
}

struct Minted {
    dir: tempfile::TempDir,
    tokens: BTreeMap<String, String>,
}

impl Minted {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token {name}"))
    }
}

/// The issuer publishes an EC, an Ed25519 and an RSA key; a stranger holds another of each
/// kind, one of them under a kid the issuer also uses.
fn corpus() -> Minted {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("issuer-jwks.json");
    let plan = json!({
        "keys": {
            "ec": {"kty": "EC", "kid": "ec-1"},
            "ed": {"kty": "OKP", "kid": "ed-1"},
            "rsa": {"kty": "RSA", "kid": "rsa-1"},
            "stranger": {"kty": "EC", "kid": "stranger-1"},
            "impostor": {"kty": "EC", "kid": "ec-1"},
        },
        "jwks": { jwks.to_str().unwrap(): ["ec", "ed", "rsa"] },
        "tokens": {
            "valid_es256": token("ec", json!({})),
            "valid_eddsa": token("ed", json!({})),
            "valid_rs256": token("rsa", json!({})),
            "valid_ed25519_name": {"key": "ed", "alg": "Ed25519", "claims": claims(json!({}))},
            "valid_no_kid": {"key": "rsa", "kid": false, "claims": claims(json!({}))},
            "valid_minimal": token("ec", json!({
                "aud": "tollgate", "iat": null, "nbf": null, "scope": null, "delegation": null,
            })),
            "expired": token("ec", json!({"iat": NOW - 900, "nbf": NOW - 900, "exp": NOW - 60})),
            "not_yet_valid": token("ed", json!({"nbf": NOW + 600, "exp": NOW + 900})),
            "wrong_audience": token("ec", json!({"aud": ["api.github.com"]})),
            "other_subject": token("ec", json!({"sub": OTHER})),
            "unknown_issuer": token("ec", json!({"iss": "https://evil.example.org"})),
            "no_exp": token("rsa", json!({"exp": null})),
            "no_task": token("ec", json!({"task": null})),
            "bad_intent": token("ec", json!({"intent": "delete everything"})),
            "long_delegation": token("ec", json!({
                "delegation": vec!["spiffe://example.org/a"; 9],
            })),
            "unknown_key": token("stranger", json!({})),
            "impostor_same_kid": token("impostor", json!({})),
            "tampered": {"key": "ec", "mode": "tamper", "claims": claims(json!({})),
                         "tamper": {"intent": "repos.delete"}},
            "tampered_subject": {"key": "ed", "mode": "tamper", "claims": claims(json!({"sub": OTHER})),
                                 "tamper": {"sub": CALLER}},
            "alg_none": {"key": "ec", "mode": "none", "claims": claims(json!({}))},
            "hs256_public_pem_ec": {"key": "ec", "mode": "hs256-public-pem", "claims": claims(json!({}))},
            "hs256_public_pem_rsa": {"key": "rsa", "mode": "hs256-public-pem", "claims": claims(json!({}))},
            "hs256_public_jwk": {"key": "ed", "mode": "hs256-public-jwk", "claims": claims(json!({}))},
            "too_large": token("ec", json!({"padding": "x".repeat(9000)})),
        },
    });
    let tokens = mint(dir.path(), &plan);
    Minted { dir, tokens }
}

fn verify(issuers: &IntentIssuers, token: &str, caller: Option<&str>) -> Result<(), TokenError> {
    let caller = caller.map(id);
    issuers.verify(token, caller.as_ref(), now()).map(|_| ())
}

#[test]
fn accepts_valid_tokens_of_each_algorithm_with_their_fields() {
    let m = corpus();
    let issuers = issuers(&m.path("issuer-jwks.json"));
    for name in [
        "valid_es256",
        "valid_eddsa",
        "valid_rs256",
        "valid_ed25519_name",
        "valid_no_kid",
    ] {
        let verified = issuers
            .verify(m.token(name), Some(&id(CALLER)), now())
            .unwrap_or_else(|e| panic!("{name}: {e} ({})", e.reason()));
        assert_eq!(verified.name, "issues.read", "{name}");
        assert_eq!(verified.task.as_str(), "t-42", "{name}");
        assert_eq!(verified.issuer, ISS, "{name}");
        let delegation: Vec<&str> = verified.delegation.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            delegation,
            [
                "spiffe://example.org/orchestrator",
                "spiffe://example.org/planner"
            ],
            "{name}"
        );
        assert_eq!(verified.claims["scope"], "issues:read", "{name}");
        assert_eq!(verified.claims["sub"], CALLER, "{name}");
        assert_eq!(verified.claims["exp"], NOW + 300, "{name}");
    }
    let minimal = issuers
        .verify(m.token("valid_minimal"), Some(&id(CALLER)), now())
        .unwrap();
    assert!(minimal.delegation.is_empty());
    assert!(!minimal.claims.contains_key("scope"));
}

#[test]
fn accepts_token_over_plain_headers() {
    let m = corpus();
    let issuers = issuers(&m.path("issuer-jwks.json"));
    let plain = Intent {
        name: Some("repos.delete".into()),
        task: TaskName::parse("t-666").ok(),
        purpose: Some("triage new issues".into()),
        delegation: vec![id("spiffe://example.org/someone-else")],
        ..Intent::default()
    };
    let intent = issuers
        .apply(m.token("valid_es256"), Some(&id(CALLER)), now(), plain)
        .unwrap();
    assert!(intent.verified);
    assert_eq!(intent.issuer.as_deref(), Some(ISS));
    assert_eq!(intent.name.as_deref(), Some("issues.read"));
    assert_eq!(intent.task.as_deref(), Some("t-42"));
    assert_eq!(intent.purpose.as_deref(), Some("triage new issues"));
    assert_eq!(intent.delegation.len(), 2);
    assert_eq!(intent.claims["iss"], ISS);
}

#[test]
fn rejects_each_bad_token_with_its_reason() {
    let m = corpus();
    let issuers = issuers(&m.path("issuer-jwks.json"));
    let cases: [(&str, Option<&str>, &str); 20] = [
        ("expired", Some(CALLER), "token_expired"),
        ("not_yet_valid", Some(CALLER), "token_not_yet_valid"),
        ("wrong_audience", Some(CALLER), "token_wrong_audience"),
        // Minted for another workload, presented by this one.
        ("other_subject", Some(CALLER), "token_subject_mismatch"),
        // A valid token stolen and replayed by another workload, or by a caller without one.
        ("valid_es256", Some(OTHER), "token_subject_mismatch"),
        ("valid_es256", None, "token_subject_mismatch"),
        ("unknown_issuer", Some(CALLER), "token_unknown_issuer"),
        ("no_exp", Some(CALLER), "token_missing_claim"),
        ("no_task", Some(CALLER), "token_missing_claim"),
        ("bad_intent", Some(CALLER), "token_invalid_claim"),
        ("long_delegation", Some(CALLER), "token_invalid_claim"),
        ("unknown_key", Some(CALLER), "token_unknown_key"),
        ("impostor_same_kid", Some(CALLER), "token_bad_signature"),
        ("tampered", Some(CALLER), "token_bad_signature"),
        ("tampered_subject", Some(CALLER), "token_bad_signature"),
        ("alg_none", Some(CALLER), "token_alg_not_allowed"),
        ("hs256_public_pem_ec", Some(CALLER), "token_alg_not_allowed"),
        (
            "hs256_public_pem_rsa",
            Some(CALLER),
            "token_alg_not_allowed",
        ),
        ("hs256_public_jwk", Some(CALLER), "token_alg_not_allowed"),
        ("too_large", Some(CALLER), "token_too_large"),
    ];
    for (name, caller, reason) in cases {
        let got = verify(&issuers, m.token(name), caller);
        assert_eq!(
            got.map_err(|e| e.reason().as_str()),
            Err(reason),
            "{name} presented by {caller:?}"
        );
    }
}

#[test]
fn rejects_every_token_when_no_issuer_is_configured() {
    let m = corpus();
    assert_eq!(
        verify(&IntentIssuers::none(), m.token("valid_es256"), Some(CALLER)),
        Err(TokenError::UnknownIssuer)
    );
}

#[test]
fn rejects_issuer_with_wrong_audience_configured() {
    let m = corpus();
    let issuers = IntentIssuers::load(&[IssuerConfig {
        issuer: ISS.into(),
        jwks: m.path("issuer-jwks.json"),
        audience: Some("tollgate-prod".into()),
    }])
    .unwrap();
    assert_eq!(
        verify(&issuers, m.token("valid_es256"), Some(CALLER)),
        Err(TokenError::WrongAudience)
    );
}

#[test]
fn rejects_jwks_with_a_p384_key_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p384 = dir.path().join("p384.json");
    mint(
        dir.path(),
        &json!({
            "keys": {"ok": {"kty": "EC", "kid": "ok"}, "big": {"kty": "EC", "crv": "P-384", "kid": "big"}},
            "jwks": { p384.to_str().unwrap(): ["ok", "big"] },
        }),
    );
    let errors = IntentIssuers::load(&[IssuerConfig {
        issuer: ISS.into(),
        jwks: p384.clone(),
        audience: None,
    }])
    .err()
    .expect("a P-384 key is refused");
    let text = errors[0].to_string();
    assert!(
        text.starts_with("intent_tokens.issuers[0].jwks: ")
            && text.contains("p384.json")
            && text.contains("keys[1] (kid \"big\")")
            && text.contains("P-256"),
        "{text}"
    );
}

#[test]
fn accepts_rotated_jwks_and_keeps_last_good_on_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("jwks.json");
    let next = dir.path().join("next.json");
    let tokens = mint(
        dir.path(),
        &json!({
            "keys": {"old": {"kty": "EC", "kid": "old"}, "new": {"kty": "RSA", "kid": "new"}},
            "jwks": { live.to_str().unwrap(): ["old"], next.to_str().unwrap(): ["new"] },
            "tokens": {"old": token("old", json!({})), "new": token("new", json!({}))},
        }),
    );
    let issuers = issuers(&live);
    assert_eq!(verify(&issuers, &tokens["old"], Some(CALLER)), Ok(()));
    assert_eq!(
        verify(&issuers, &tokens["new"], Some(CALLER)),
        Err(TokenError::UnknownKey)
    );
    assert_eq!(issuers.reload_if_changed(), Ok(0));

    // Replaced the way Kubernetes updates a mounted secret: a new file renamed over the old.
    std::fs::rename(&next, &live).unwrap();
    assert_eq!(issuers.reload_if_changed(), Ok(1));
    assert_eq!(verify(&issuers, &tokens["new"], Some(CALLER)), Ok(()));
    assert_eq!(
        verify(&issuers, &tokens["old"], Some(CALLER)),
        Err(TokenError::UnknownKey)
    );

    std::fs::write(&live, b"{\"keys\": [{\"kty\": \"EC\"").unwrap();
    let errors = issuers.reload_if_changed().expect_err("garbage is refused");
    assert_eq!(errors[0].key, "intent_tokens.issuers[0].jwks");
    assert!(errors[0].message.contains("jwks.json"), "{}", errors[0]);
    assert_eq!(verify(&issuers, &tokens["new"], Some(CALLER)), Ok(()));
    assert_eq!(
        issuers.reload_if_changed(),
        Ok(0),
        "a broken file is reported once"
    );

    std::fs::remove_file(&live).unwrap();
    assert!(issuers.reload_if_changed().is_err());
    assert_eq!(verify(&issuers, &tokens["new"], Some(CALLER)), Ok(()));
}

/// Through the real proxy: a valid token (signed for this caller) reaches the policy as
/// `intent.verified`, with its intent winning over the plain header; a token of another
/// workload is refused with its reason — never a fall-back to the plain headers.
#[test]
fn the_proxy_applies_verified_intents_and_refuses_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let caller = "spiffe://tollgate.local/test/agent";
    let jwks = dir.path().join("issuer.jwks.json");
    let token_claims = |sub: &str| {
        json!({"iss": "https://orchestrator.test", "sub": sub, "aud": "tollgate",
               "intent": "files.write", "task": "t-7", "exp": now + 300})
    };
    let tokens = mint(
        dir.path(),
        &json!({
            "keys": {"k": {"kty": "EC", "kid": "k1"}},
            "jwks": {jwks.to_str().unwrap(): ["k"]},
            "tokens": {
                "good": {"key": "k", "claims": token_claims(caller)},
                "stolen": {"key": "k", "claims": token_claims("spiffe://tollgate.local/test/other")},
            }
        }),
    );
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(
        policy.join("p.rego"),
        "package tollgate\n\
         decision := {\"allow\": true, \"reason\": input.intent.name} if input.intent.verified\n\
         else := {\"allow\": false, \"reason\": \"unverified\"}\n",
    )
    .unwrap();
    let tg = Tollgate::start(&format!(
        "listeners: [{{name: agents, address: '127.0.0.1:0'}}]\n\
         identity: {{workload_spiffe_id: '{caller}'}}\n\
         intent_tokens: {{issuers: [{{issuer: 'https://orchestrator.test', jwks: '{}', audience: tollgate}}]}}\n\
         policy: {{path: '{}'}}\n\
         upstream: {{allow_private: [127.0.0.0/8]}}\n",
        jwks.display(),
        policy.display()
    ));
    let origin = PyOrigin::start(None);
    let call = |token: Option<&str>| {
        let mut request = AgentRequest::get(origin.url("/echo"))
            .proxy(tg.proxy_url())
            .header("X-Agent-Intent", "files.read");
        if let Some(token) = token {
            request = request.header("X-Agent-Intent-Token", token);
        }
        python_agent(&request)
    };
    let good = call(Some(&tokens["good"]));
    assert_eq!(good.status, 200, "{:?}", good.raw);
    assert!(
        good.json()["headers"].get("x-agent-intent-token").is_none(),
        "token removed upstream"
    );
    let id = good.header("x-tollgate-decision-id").unwrap().to_string();
    let d = tg.wait_decision(|d| d["decision_id"] == id, Duration::from_secs(20));
    assert_eq!(
        d["decision"]["reason"], "files.write",
        "the token's intent, not the header's"
    );
    assert_eq!(d["intent"]["verified"], true);
    assert_eq!(d["intent"]["task"], "t-7");

    let stolen = call(Some(&tokens["stolen"]));
    assert_eq!(stolen.status, 403);
    assert_eq!(stolen.json()["reason"], "token_subject_mismatch");
    let plain = call(None);
    assert_eq!(plain.status, 403);
    assert_eq!(plain.json()["reason"], "unverified");
}
