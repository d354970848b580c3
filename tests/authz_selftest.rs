//! Proves the credential-test peers without tollgate: the authorization server
//! (tests/authz/oidc_server.mjs: real node-oidc-provider plus test-code token exchange,
//! counters and failure switch) and the JWT-verifying origin (`/jwt/...` of echo_origin.py,
//! Python joserfc). Keys and JWTs are minted by Python joserfc (tests/agents/mint_token.py);
//! JWK Sets are served by a real nginx. If one of these fails, a failure in the credential
//! suites may be the harness's, not tollgate's.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const T: Duration = Duration::from_secs(15);
const BASIC_ID: &str = "tollgate-basic";
const BASIC_SECRET: &str = "basic-secret-do-not-log-7f3a";
const POST_ID: &str = "tollgate-post";
const POST_SECRET: &str = "post-secret-do-not-log-91c2";
const SUBJECT: &str = "spiffe://example.org/ns/agents/sa/triage";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A basic-auth client (two scopes, client credentials + token exchange) and a post-auth
/// client (one scope, client credentials only).
fn two_clients() -> AuthzConfig {
    AuthzConfig::new()
        .access_token_ttl(120)
        .client(
            AuthzClient::new(BASIC_ID, BASIC_SECRET)
                .scopes(&["repo:read", "repo:write"])
                .token_exchange(),
        )
        .client(
            AuthzClient::new(POST_ID, POST_SECRET)
                .scopes(&["repo:read"])
                .auth(ClientAuth::Post),
        )
}

fn access_token(reply: &Value) -> String {
    reply["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {reply}"))
        .to_string()
}

#[test]
fn discovery_names_the_endpoints_and_grants() {
    let authz = AuthzServer::start(&two_clients());
    assert_eq!(authz.issuer(), format!("http://127.0.0.1:{}", authz.port()));
    assert_eq!(authz.token_endpoint(), authz.url("/token"));
    assert_eq!(
        authz.introspection_endpoint(),
        authz.url("/token/introspection")
    );
    assert_eq!(authz.revocation_endpoint(), authz.url("/token/revocation"));
    let grants = authz.discovery()["grant_types_supported"]
        .as_array()
        .unwrap();
    assert!(grants.contains(&json!("client_credentials")), "{grants:?}");
    assert!(grants.contains(&json!(TOKEN_EXCHANGE_GRANT)), "{grants:?}");
    let methods = authz.discovery()["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("client_secret_basic")));
    assert!(methods.contains(&json!("client_secret_post")));
}

#[test]
fn client_credentials_with_basic_auth_introspects_active_with_scope() {
    let authz = AuthzServer::start(&two_clients());
    let before = now();
    let reply = authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read repo:write"));
    assert_eq!(reply["token_type"], "Bearer");
    assert_eq!(reply["expires_in"], 120);
    assert_eq!(reply["scope"], "repo:read repo:write");
    let token = access_token(&reply);

    let info = authz.introspect(BASIC_ID, BASIC_SECRET, &token);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], BASIC_ID);
    assert_eq!(info["scope"], "repo:read repo:write");
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["iss"], authz.issuer());
    let (iat, exp) = (info["iat"].as_u64().unwrap(), info["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 120, "{info}");
    assert!(iat >= before && iat <= now(), "{info}");

    // A narrower request gets the narrower scope.
    let narrow = authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read"));
    let info = authz.introspect(BASIC_ID, BASIC_SECRET, &access_token(&narrow));
    assert_eq!(info["scope"], "repo:read");
}

#[test]
fn client_credentials_with_post_auth_introspects_active_with_scope() {
    let authz = AuthzServer::start(&two_clients());
    let reply = authz.client_credentials(POST_ID, POST_SECRET, Some("repo:read"));
    assert_eq!(reply["scope"], "repo:read");
    let token = access_token(&reply);
    // Introspected by the client itself (post auth) and by the other client (basic auth).
    for (id, secret) in [(POST_ID, POST_SECRET), (BASIC_ID, BASIC_SECRET)] {
        let info = authz.introspect(id, secret, &token);
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["client_id"], POST_ID);
        assert_eq!(info["scope"], "repo:read");
    }
}

#[test]
fn refuses_wrong_secret_wrong_auth_method_and_unallowed_scope() {
    let authz = AuthzServer::start(&two_clients());
    let r = authz.try_client_credentials(BASIC_ID, "not-the-secret", None, None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_client");

    // Each client presenting its (right) secret the other way: refused by the strict switch.
    for (id, secret, other) in [
        (BASIC_ID, BASIC_SECRET, ClientAuth::Post),
        (POST_ID, POST_SECRET, ClientAuth::Basic),
    ] {
        let r = authz.post_form_as(
            &authz.token_endpoint(),
            id,
            secret,
            other,
            &[("grant_type", "client_credentials")],
        );
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"], "invalid_client");
    }
    let s = authz.stats();
    assert_eq!(
        s["token"]["by_auth_method"]["client_secret_basic"], 2,
        "{s}"
    );
    assert_eq!(s["token"]["by_auth_method"]["client_secret_post"], 1, "{s}");

    let r = authz.try_client_credentials(POST_ID, POST_SECRET, Some("repo:write"), None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_scope");

    // The post client may not exchange tokens.
    let r = authz.token_exchange(POST_ID, POST_SECRET, "x.y.z", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[test]
fn lenient_server_accepts_either_secret_method_like_oidc_provider() {
    let authz = AuthzServer::start(&two_clients().lenient_auth_method());
    for (id, secret, other) in [
        (BASIC_ID, BASIC_SECRET, ClientAuth::Post),
        (POST_ID, POST_SECRET, ClientAuth::Basic),
    ] {
        let r = authz.post_form_as(
            &authz.token_endpoint(),
            id,
            secret,
            other,
            &[("grant_type", "client_credentials")],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let s = authz.stats();
    assert_eq!(
        s["token"]["by_auth_method"]["client_secret_basic"], 1,
        "{s}"
    );
    assert_eq!(s["token"]["by_auth_method"]["client_secret_post"], 1, "{s}");
}

#[test]
fn revoked_token_introspects_inactive() {
    let authz = AuthzServer::start(&two_clients());
    let token = access_token(&authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read")));
    let other = access_token(&authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read")));
    assert_eq!(
        authz.introspect(BASIC_ID, BASIC_SECRET, &token)["active"],
        true
    );

    let r = authz.revoke(BASIC_ID, BASIC_SECRET, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        authz.introspect(BASIC_ID, BASIC_SECRET, &token),
        json!({"active": false})
    );
    // Only that token: the other one stays active.
    assert_eq!(
        authz.introspect(BASIC_ID, BASIC_SECRET, &other)["active"],
        true
    );
    // Revoking an unknown or already revoked token is 200 too (RFC 7009 §2.2).
    assert_eq!(authz.revoke(BASIC_ID, BASIC_SECRET, &token).status, 200);
    let s = authz.stats();
    assert_eq!(s["revocation"]["total"], 2, "{s}");
    assert_eq!(s["revocation"]["by_status"]["200"], 2, "{s}");
    assert_eq!(s["revocation"]["by_client"][BASIC_ID], 2, "{s}");

    // Another client may not revoke it (the provider's rule): 400, and it stays active.
    let r = authz.revoke(POST_ID, POST_SECRET, &other);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        authz.introspect(BASIC_ID, BASIC_SECRET, &other)["active"],
        true
    );
}

#[test]
fn expired_token_introspects_inactive() {
    let authz = AuthzServer::start(
        &AuthzConfig::new()
            .access_token_ttl(1)
            .client(AuthzClient::new(BASIC_ID, BASIC_SECRET).scopes(&["repo:read"])),
    );
    let reply = authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read"));
    assert_eq!(reply["expires_in"], 1);
    let token = access_token(&reply);
    // Poll (bounded) until the provider reports it expired.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if authz.introspect(BASIC_ID, BASIC_SECRET, &token)["active"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "token still active after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn resource_indicator_sets_audience_and_filters_scope() {
    let api = "https://api.example.org/";
    let authz = AuthzServer::start(&two_clients().resource_server(api, &["repo:read"], Some(60)));
    let r = authz.try_client_credentials(
        BASIC_ID,
        BASIC_SECRET,
        Some("repo:read repo:write"),
        Some(api),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r.json();
    assert_eq!(
        reply["scope"], "repo:read",
        "scopes outside the resource are dropped"
    );
    assert_eq!(reply["expires_in"], 60, "the resource's own TTL");
    let info = authz.introspect(BASIC_ID, BASIC_SECRET, &access_token(&reply));
    assert_eq!(info["active"], true);
    assert_eq!(info["aud"], api);
    assert_eq!(info["scope"], "repo:read");

    let r = authz.try_client_credentials(
        BASIC_ID,
        BASIC_SECRET,
        Some("repo:read"),
        Some("https://unknown.example.org/"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_target");
}

#[test]
fn counters_count_by_grant_status_client_and_endpoint_and_reset() {
    let authz = AuthzServer::start(&two_clients());
    let t1 = access_token(&authz.client_credentials(BASIC_ID, BASIC_SECRET, None));
    authz.client_credentials(POST_ID, POST_SECRET, Some("repo:read"));
    authz.try_client_credentials(BASIC_ID, "wrong", None, None);
    authz.token_exchange(BASIC_ID, BASIC_SECRET, "not-a-jwt", None);
    authz.introspect(BASIC_ID, BASIC_SECRET, &t1);
    authz.introspect(POST_ID, POST_SECRET, &t1);
    authz.revoke(BASIC_ID, BASIC_SECRET, &t1);

    let s = authz.stats();
    assert_eq!(s["token"]["total"], 4, "{s}");
    assert_eq!(s["token"]["by_grant"]["client_credentials"], 3, "{s}");
    assert_eq!(s["token"]["by_grant"][TOKEN_EXCHANGE_GRANT], 1, "{s}");
    assert_eq!(s["token"]["by_status"]["200"], 2, "{s}");
    assert_eq!(s["token"]["by_status"]["401"], 1, "{s}");
    assert_eq!(s["token"]["by_status"]["400"], 1, "{s}");
    assert_eq!(s["token"]["by_client"][BASIC_ID], 3, "{s}");
    assert_eq!(s["token"]["by_client"][POST_ID], 1, "{s}");
    assert_eq!(
        s["token"]["by_auth_method"]["client_secret_basic"], 3,
        "{s}"
    );
    assert_eq!(s["token"]["by_auth_method"]["client_secret_post"], 1, "{s}");
    assert_eq!(s["introspection"]["total"], 2, "{s}");
    assert_eq!(s["introspection"]["by_client"][BASIC_ID], 1, "{s}");
    assert_eq!(s["introspection"]["by_client"][POST_ID], 1, "{s}");
    assert_eq!(s["revocation"]["total"], 1, "{s}");
    assert_eq!(authz.token_requests("client_credentials"), 3);

    authz.reset_stats();
    let s = authz.stats();
    assert_eq!(s["token"]["total"], 0, "{s}");
    assert_eq!(s["token"]["by_grant"], json!({}), "{s}");
    assert_eq!(s["introspection"]["total"], 0, "{s}");
    assert_eq!(s["revocation"]["total"], 0, "{s}");
    assert_eq!(authz.token_requests("client_credentials"), 0);
}

#[test]
fn fail_switch_answers_503_for_the_next_n_token_requests() {
    let authz = AuthzServer::start(&two_clients());
    authz.fail_next_token_requests(2);
    for _ in 0..2 {
        let r = authz.try_client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read"), None);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "temporarily_unavailable");
    }
    let r = authz.try_client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read"), None);
    assert_eq!(
        r.status, 200,
        "the third request reaches the provider: {}",
        r.body
    );

    let s = authz.wait_token_requests("client_credentials", 3, T);
    assert_eq!(s["token"]["total"], 3, "{s}");
    assert_eq!(s["token"]["injected_failures"], 2, "{s}");
    assert_eq!(s["token"]["by_status"]["503"], 2, "{s}");
    assert_eq!(s["token"]["by_status"]["200"], 1, "{s}");
    assert_eq!(s["token"]["by_grant"]["client_credentials"], 3, "{s}");
    assert_eq!(s["token"]["by_client"][BASIC_ID], 3, "{s}");
    assert_eq!(s["fail_next_token"], 0, "{s}");
}

#[test]
fn delay_switch_holds_token_responses() {
    let authz = AuthzServer::start(&two_clients());
    authz.delay_token_responses(600);
    let started = Instant::now();
    let r = authz.try_client_credentials(BASIC_ID, BASIC_SECRET, None, None);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert_eq!(authz.stats()["token_delay_ms"], 600);

    // Concurrent requests are each delayed, not serialized behind one another.
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    authz
                        .try_client_credentials(BASIC_ID, BASIC_SECRET, None, None)
                        .status
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(
        took < Duration::from_millis(2400),
        "serialized? took {took:?}"
    );

    authz.delay_token_responses(0);
    assert_eq!(authz.stats()["token_delay_ms"], 0);
}

#[test]
fn token_log_names_grant_client_and_scope_but_never_secrets_or_tokens() {
    let authz = AuthzServer::start(&two_clients());
    let t1 = access_token(&authz.client_credentials(BASIC_ID, BASIC_SECRET, Some("repo:read")));
    let t2 = access_token(&authz.client_credentials(POST_ID, POST_SECRET, Some("repo:read")));
    authz.fail_next_token_requests(1);
    authz.try_client_credentials(POST_ID, POST_SECRET, None, None);
    let lines = authz.wait_token_log_lines(3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        format!(
            "token grant=client_credentials client={BASIC_ID} auth=client_secret_basic \
             scope=\"repo:read\" status=200"
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "token grant=client_credentials client={POST_ID} auth=client_secret_post \
             scope=\"repo:read\" status=200"
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "token grant=client_credentials client={POST_ID} auth=client_secret_post scope=\"\" \
             status=503"
        )),
        "{}",
        lines[2]
    );
    let all = format!("{}\n{}", authz.stdout_text(), authz.stderr_text());
    for secret in [BASIC_SECRET, POST_SECRET, &t1, &t2] {
        assert!(!all.contains(secret), "the server logged a secret or token");
    }
}

/// Keys `ec` (P-256, kid ec-1) and `ed` (Ed25519, kid ed-1) published in `jwks.json` on an
/// nginx; `rogue` has kid ec-1 too but is published nowhere. Tokens for SUBJECT.
struct Minted {
    nginx: Nginx,
    tokens: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Minted {
    fn jwks_url(&self) -> String {
        self.nginx.url("/jwks.json")
    }
    fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}

fn mint_subject_tokens() -> Minted {
    let nginx = Nginx::start(&NginxOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = nginx.docroot().join("jwks.json");
    let now = now();
    let claims = |changes: Value| {
        let mut c = json!({
            "iss": "tollgate", "sub": SUBJECT, "aud": "https://authz.example",
            "iat": now, "exp": now + 300, "task": "t-42", "intent": "issues.read",
        });
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let plan = json!({
        "keys": {
            "ec": {"kty": "EC", "crv": "P-256", "kid": "ec-1"},
            "ed": {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1"},
            "rogue": {"kty": "EC", "crv": "P-256", "kid": "ec-1"},
        },
        "jwks": {jwks_path.to_str().unwrap(): ["ec", "ed"]},
        "tokens": {
            "es256": {"key": "ec", "claims": claims(json!({}))},
            "eddsa": {"key": "ed", "claims": claims(json!({"sub": "spiffe://example.org/ed"}))},
            "rogue": {"key": "rogue", "claims": claims(json!({}))},
            "tampered": {"key": "ec", "claims": claims(json!({})), "mode": "tamper",
                         "tamper": {"sub": "spiffe://example.org/admin"}},
            "hs256": {"key": "ec", "claims": claims(json!({})), "mode": "hs256-public-jwk"},
            "none": {"key": "ec", "claims": claims(json!({})), "mode": "none"},
            "expired": {"key": "ec", "claims": claims(json!({"iat": now - 600, "exp": now - 300}))},
            "no_exp": {"key": "ec", "claims": claims(json!({"exp": null}))},
            "wrong_iss": {"key": "ec", "claims": claims(json!({"iss": "someone-else"}))},
        },
    });
    let tokens = mint_tokens(dir.path(), &plan);
    Minted {
        nginx,
        tokens,
        _dir: dir,
    }
}

#[test]
fn token_exchange_of_a_verified_subject_jwt_issues_an_active_token() {
    let minted = mint_subject_tokens();
    // Started without a JWKS URL: exchanges fail until it is set (as when tollgate's admin
    // port is only known after the server runs).
    let authz = AuthzServer::start(&two_clients());
    let r = authz.token_exchange(BASIC_ID, BASIC_SECRET, minted.token("es256"), None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_grant");
    authz.set_exchange_jwks_url(&minted.jwks_url());

    for (name, sub) in [("es256", SUBJECT), ("eddsa", "spiffe://example.org/ed")] {
        let r = authz.token_exchange(
            BASIC_ID,
            BASIC_SECRET,
            minted.token(name),
            Some("repo:read"),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let reply = r.json();
        assert_eq!(
            reply["issued_token_type"],
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(reply["token_type"], "Bearer");
        assert_eq!(reply["expires_in"], 120);
        assert_eq!(reply["scope"], "repo:read");
        let info = authz.introspect(BASIC_ID, BASIC_SECRET, &access_token(&reply));
        assert_eq!(info["active"], true, "{name}: {info}");
        assert_eq!(info["sub"], sub, "{info}");
        assert_eq!(info["act"], json!({"sub": BASIC_ID}), "{info}");
        assert_eq!(info["client_id"], BASIC_ID, "{info}");
        assert_eq!(info["scope"], "repo:read", "{info}");

        // A real provider token: revocation works on it too.
        assert_eq!(
            authz
                .revoke(BASIC_ID, BASIC_SECRET, &access_token(&reply))
                .status,
            200
        );
        assert_eq!(
            authz.introspect(BASIC_ID, BASIC_SECRET, &access_token(&reply))["active"],
            false
        );
    }

    let s = authz.stats();
    let exchanges = s["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 2, "{s}");
    assert_eq!(exchanges[0]["sub"], SUBJECT);
    assert_eq!(exchanges[0]["iss"], "tollgate");
    assert_eq!(exchanges[0]["client_id"], BASIC_ID);
    assert_eq!(exchanges[0]["scope"], "repo:read");
    assert_eq!(exchanges[0]["claims"]["task"], "t-42");
    assert_eq!(exchanges[0]["claims"]["aud"], "https://authz.example");
    assert_eq!(exchanges[1]["sub"], "spiffe://example.org/ed");
    assert_eq!(s["token"]["by_grant"][TOKEN_EXCHANGE_GRANT], 3, "{s}");

    // A scope the client is not allowed.
    let r = authz.token_exchange(BASIC_ID, BASIC_SECRET, minted.token("es256"), Some("admin"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_scope");
}

#[test]
fn token_exchange_refuses_bad_signatures_expired_and_malformed_requests() {
    let minted = mint_subject_tokens();
    let authz = AuthzServer::start(
        &two_clients()
            .exchange_jwks_url(&minted.jwks_url())
            .exchange_issuer("tollgate"),
    );
    for name in [
        "rogue",
        "tampered",
        "hs256",
        "none",
        "expired",
        "no_exp",
        "wrong_iss",
    ] {
        let r = authz.token_exchange(BASIC_ID, BASIC_SECRET, minted.token(name), None);
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"], "invalid_grant", "{name}: {body}");
    }
    let s = authz.stats();
    assert_eq!(s["exchanges"], json!([]), "nothing issued: {s}");

    let grant = ("grant_type", TOKEN_EXCHANGE_GRANT);
    let missing_token = authz.token_request(
        BASIC_ID,
        BASIC_SECRET,
        &[grant, ("subject_token_type", JWT_TOKEN_TYPE)],
    );
    assert_eq!(missing_token.status, 400);
    assert_eq!(missing_token.json()["error"], "invalid_request");
    let missing_type = authz.token_request(
        BASIC_ID,
        BASIC_SECRET,
        &[grant, ("subject_token", minted.token("es256"))],
    );
    assert_eq!(missing_type.status, 400);
    assert_eq!(missing_type.json()["error"], "invalid_request");
    let wrong_type = authz.token_request(
        BASIC_ID,
        BASIC_SECRET,
        &[
            grant,
            ("subject_token", minted.token("es256")),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ],
    );
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.json()["error"], "invalid_request");

    // And the valid token still works on this server.
    let ok = authz.token_exchange(BASIC_ID, BASIC_SECRET, minted.token("es256"), None);
    assert_eq!(ok.status, 200, "{}", ok.body);
}

fn jwt_get(origin: &PyOrigin, token: Option<&str>) -> HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request("GET", &origin.url("/jwt/repos/acme"), &headers, None, T)
}

#[test]
fn jwt_origin_verifies_es256_and_eddsa_tokens_and_returns_header_and_claims() {
    let minted = mint_subject_tokens();
    let origin = PyOrigin::start_with_jwks(&minted.jwks_url());
    for (name, alg, kid, sub) in [
        ("es256", "ES256", "ec-1", SUBJECT),
        ("eddsa", "EdDSA", "ed-1", "spiffe://example.org/ed"),
        // The origin checks signatures only: an expired token verifies, the test reads exp.
        ("expired", "ES256", "ec-1", SUBJECT),
    ] {
        let r = jwt_get(&origin, Some(minted.token(name)));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let body = r.json();
        assert_eq!(body["verified"], true, "{body}");
        assert_eq!(body["header"]["alg"], alg, "{body}");
        assert_eq!(body["header"]["kid"], kid, "{body}");
        assert_eq!(body["claims"]["sub"], sub, "{body}");
        assert_eq!(body["claims"]["iss"], "tollgate", "{body}");
        assert_eq!(body["claims"]["task"], "t-42", "{body}");
        assert_eq!(body["path"], "/jwt/repos/acme");
    }

    // Curl as the client: the same answer through a real HTTP client.
    let o = curl(&[
        "-sS",
        "--max-time",
        "20",
        "-H",
        &format!("Authorization: Bearer {}", minted.token("es256")),
        &origin.url("/jwt/x"),
    ]);
    let body: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(body["verified"], true, "{body}");

    // Over TLS too (the origin as tollgate reaches an https:// destination).
    let pki = Pki::new();
    let tls = PyOrigin::start_tls_with_jwks(&pki, &minted.jwks_url());
    let o = curl(&[
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        pki.ca_cert().to_str().unwrap(),
        "-H",
        &format!("Authorization: Bearer {}", minted.token("eddsa")),
        &tls.url("/jwt/x"),
    ]);
    let body: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(body["verified"], true, "{body}");
    assert_eq!(body["header"]["alg"], "EdDSA", "{body}");
}

#[test]
fn jwt_origin_refuses_tampered_hs256_none_unknown_key_and_missing_tokens() {
    let minted = mint_subject_tokens();
    let origin = PyOrigin::start_with_jwks(&minted.jwks_url());
    for name in ["tampered", "hs256", "none", "rogue"] {
        let r = jwt_get(&origin, Some(minted.token(name)));
        assert_eq!(r.status, 401, "{name}: {}", r.body);
        let body = r.json();
        assert_eq!(body["verified"], false, "{name}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(body.get("claims").is_none(), "{body}");
    }
    let r = jwt_get(&origin, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "no bearer token");
    let r = jwt_get(&origin, Some("not.a.jwt"));
    assert_eq!(r.status, 401);

    // A rotated JWKS is seen at once (the origin fetches it on every request): the token
    // that verifies now is refused once its key is no longer published.
    assert_eq!(jwt_get(&origin, Some(minted.token("es256"))).status, 200);
    minted.nginx.write_file("jwks.json", br#"{"keys": []}"#);
    let r = jwt_get(&origin, Some(minted.token("es256")));
    assert_eq!(r.status, 401, "{}", r.body);

    // Without --jwks-url, /jwt/ is an ordinary 404.
    let plain = PyOrigin::start(None);
    assert_eq!(jwt_get(&plain, Some(minted.token("es256"))).status, 404);
}
