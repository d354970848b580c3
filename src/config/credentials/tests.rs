//! Credential configuration, key by key.

use super::*;

fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.pem"), "x").unwrap();
    crate::config::load_str(
        &format!("listeners: [{{name: a, address: '127.0.0.1:0'}}]\n{text}"),
        dir.path(),
        "test.yaml",
    )
}

fn keys(errors: &crate::config::ConfigErrors) -> Vec<String> {
    errors.errors.iter().map(|e| e.key.clone()).collect()
}

#[test]
fn accepts_every_kind_with_defaults() {
    let config = load(
        "credentials:\n\
         \x20 github: {kind: static, source: {env: GH_TOKEN}}\n\
         \x20 internal: {kind: jwt, signing_key: {file: jwt.pem}, max_ttl: 10m}\n\
         \x20 partner: {kind: oauth2, token_endpoint: 'https://as.example/token', client_id: c,\n\
         \x20           client_secret: {file: s.txt}, inject: {query: access_token}}\n\
         \x20 exchanged: {kind: oauth2, grant: token_exchange, token_endpoint: 'http://127.0.0.1:1/t',\n\
         \x20           client_id: c, client_secret: {env: S}, client_auth: post,\n\
         \x20           subject_token: {jwt: internal}, inject: {basic: {username: x}}}\n\
         agent_secrets: {headers: [X-Goog-Api-Key], on_present: deny}\n",
    )
    .unwrap();
    assert_eq!(config.credentials.len(), 4);
    assert_eq!(config.credentials["github"].inject, InjectConfig::default());
    let CredentialKind::Jwt(jwt) = &config.credentials["internal"].kind else {
        panic!()
    };
    assert_eq!(jwt.max_ttl, Duration::from_secs(600));
    assert_eq!(jwt.default_ttl, Duration::from_secs(300));
    assert_eq!(jwt.issuer, "tollgate");
    assert_eq!(config.agent_secrets.on_present, OnPresent::Deny);
    assert_eq!(config.agent_secrets.headers[0].as_str(), "x-goog-api-key");
}

#[test]
fn reports_every_problem_with_its_key() {
    let errors = load(
        "credentials:\n\
         \x20 a: {kind: static, source: {file: f, env: E}, token_endpoint: 'https://x/'}\n\
         \x20 b: {kind: magic}\n\
         \x20 c: {kind: static, source: {env: E}, inject: {header: 'bad name', value: 'x'}}\n\
         \x20 d: {kind: static, source: {env: E}, inject: {value: 'no placeholder'}}\n\
         \x20 e: {kind: oauth2, grant: token_exchange, token_endpoint: 'ftp://x', client_id: c,\n\
         \x20     client_secret: {env: S}, subject_token: {jwt: a}, colour: red}\n\
         \x20 f: {kind: static, source: {env: E}, secret: inline-value}\n\
         agent_secrets: {headers: ['bad header'], on_present: maybe}\n",
    )
    .unwrap_err();
    let keys = keys(&errors);
    for expected in [
        "credentials.a.source",
        "credentials.a.token_endpoint",
        "credentials.b.kind",
        "credentials.c.inject.header",
        "credentials.d.inject.value",
        "credentials.e.token_endpoint",
        "credentials.e.subject_token.jwt",
        "credentials.e.colour",
        "credentials.f.secret",
        "agent_secrets.headers[0]",
        "agent_secrets.on_present",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "missing {expected} in {keys:?}"
        );
    }
    assert!(!errors.to_string().contains("inline-value"), "{errors}");
}
