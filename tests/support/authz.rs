//! `tests/authz/oidc_server.mjs` as a child process: a real OAuth 2.0 authorization server
//! (node-oidc-provider) for the `oauth2` credential tests (SPEC §5). Client credentials,
//! introspection (RFC 7662), revocation (RFC 7009) and resource indicators (RFC 8707) are the
//! real provider's; the RFC 8693 token-exchange grant handler, the counters and the failure
//! switch are test code in that script (see its header and docs/TESTING.md).

use super::http::{HttpReply, basic_auth, form_body, http_request};
use super::{ChildGuard, Lines, command, repo_root};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The only `subject_token_type` the exchange handler accepts.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client authenticates at the token, introspection and revocation endpoints
/// (oidc-provider enforces the one registered for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1), the default.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

impl ClientAuth {
    fn metadata(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        }
    }
}

/// One registered OAuth client.
#[derive(Debug, Clone)]
pub struct AuthzClient {
    pub id: String,
    pub secret: String,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub auth: ClientAuth,
}

impl AuthzClient {
    /// A `client_secret_basic` client allowed the client-credentials grant and no scope.
    pub fn new(id: &str, secret: &str) -> AuthzClient {
        AuthzClient {
            id: id.into(),
            secret: secret.into(),
            scopes: Vec::new(),
            grant_types: vec!["client_credentials".into()],
            auth: ClientAuth::Basic,
        }
    }
    /// The scopes this client may ask for.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }
    /// `client_secret_post` instead of `client_secret_basic`.
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }
    /// Also allows the RFC 8693 token-exchange grant.
    pub fn token_exchange(mut self) -> Self {
        self.grant_types.push(TOKEN_EXCHANGE_GRANT.into());
        self
    }
    /// Replaces the allowed grant types (e.g. only token exchange).
    pub fn grant_types(mut self, grants: &[&str]) -> Self {
        self.grant_types = grants.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// What the server is started with: its clients, the access-token lifetime and the
/// token-exchange settings.
#[derive(Debug, Clone)]
pub struct AuthzConfig {
    pub clients: Vec<AuthzClient>,
    /// Access-token lifetime (`expires_in`), seconds. Default 300.
    pub access_token_ttl: u64,
    /// Where the exchange handler fetches the JWK Set that signs subject tokens (every
    /// exchange fetches it). Can also be set after start: [`AuthzServer::set_exchange_jwks_url`].
    pub exchange_jwks_url: Option<String>,
    /// Required `iss` of subject tokens, if set.
    pub exchange_issuer: Option<String>,
    /// Required `aud` of subject tokens, if set.
    pub exchange_audience: Option<String>,
    /// `resource` (RFC 8707) → (scopes, ttl seconds). Empty: any absolute URI is accepted,
    /// with every scope and the default TTL.
    pub resource_servers: BTreeMap<String, (Vec<String>, Option<u64>)>,
    /// Refuse (401 `invalid_client`) a token request authenticated otherwise than the client
    /// is registered (basic vs post). Default true; oidc-provider itself accepts either.
    pub strict_auth_method: bool,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            clients: Vec::new(),
            access_token_ttl: 300,
            exchange_jwks_url: None,
            exchange_issuer: None,
            exchange_audience: None,
            resource_servers: BTreeMap::new(),
            strict_auth_method: true,
        }
    }
}

impl AuthzConfig {
    pub fn new() -> AuthzConfig {
        AuthzConfig::default()
    }
    pub fn client(mut self, c: AuthzClient) -> Self {
        self.clients.push(c);
        self
    }
    pub fn access_token_ttl(mut self, secs: u64) -> Self {
        self.access_token_ttl = secs;
        self
    }
    pub fn exchange_jwks_url(mut self, url: &str) -> Self {
        self.exchange_jwks_url = Some(url.into());
        self
    }
    pub fn exchange_issuer(mut self, iss: &str) -> Self {
        self.exchange_issuer = Some(iss.into());
        self
    }
    pub fn exchange_audience(mut self, aud: &str) -> Self {
        self.exchange_audience = Some(aud.into());
        self
    }
    /// Lets a client authenticate with basic or post whatever it is registered for
    /// (oidc-provider's own behaviour).
    pub fn lenient_auth_method(mut self) -> Self {
        self.strict_auth_method = false;
        self
    }
    /// Registers a resource server (RFC 8707): once any is registered, other `resource`
    /// values are refused with `invalid_target`.
    pub fn resource_server(mut self, resource: &str, scopes: &[&str], ttl: Option<u64>) -> Self {
        self.resource_servers.insert(
            resource.into(),
            (scopes.iter().map(|s| s.to_string()).collect(), ttl),
        );
        self
    }

    /// The JSON the script reads (see the header of tests/authz/oidc_server.mjs).
    pub fn to_json(&self) -> Value {
        let clients: Vec<Value> = self
            .clients
            .iter()
            .map(|c| {
                json!({
                    "client_id": c.id,
                    "client_secret": c.secret,
                    "scopes": c.scopes,
                    "grant_types": c.grant_types,
                    "token_endpoint_auth_method": c.auth.metadata(),
                })
            })
            .collect();
        let mut v = json!({
            "clients": clients,
            "access_token_ttl": self.access_token_ttl,
            "strict_auth_method": self.strict_auth_method,
            "exchange": {
                "jwks_url": self.exchange_jwks_url,
                "issuer": self.exchange_issuer,
                "audience": self.exchange_audience,
            },
        });
        if !self.resource_servers.is_empty() {
            let rs: serde_json::Map<String, Value> = self
                .resource_servers
                .iter()
                .map(|(k, (scopes, ttl))| (k.clone(), json!({"scopes": scopes, "ttl": ttl})))
                .collect();
            v["resource_servers"] = Value::Object(rs);
        }
        v
    }
}

/// A running authorization server on 127.0.0.1 (port chosen by the server), killed on drop.
pub struct AuthzServer {
    child: ChildGuard,
    port: u16,
    config: AuthzConfig,
    discovery: Value,
    stdout: Lines,
    stderr: Lines,
    _dir: tempfile::TempDir,
}

impl AuthzServer {
    /// Writes the config to a temp file, starts the server, waits (bounded: 30 s) for its
    /// `ready <port>` line and reads its discovery document. Panics with the server's output
    /// when it does not come up.
    pub fn start(config: &AuthzConfig) -> AuthzServer {
        let node_modules = repo_root().join("tests/agents/node_modules");
        assert!(
            node_modules.join("oidc-provider").is_dir(),
            "tests/agents/node_modules/oidc-provider is missing: run `npm ci` in tests/agents \
             (or `bash .ci/run`)"
        );
        let dir = tempfile::Builder::new()
            .prefix("tollgate-authz-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("authz.json");
        std::fs::write(&config_path, config.to_json().to_string()).expect("write authz config");
        let mut cmd = command(node());
        cmd.arg(script()).arg(&config_path);
        let mut child = cmd
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = Lines::capture(child.stdout.take().unwrap(), "authz stdout");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "authz stderr");
        let child = ChildGuard::new(child);
        let Some((_, line)) = stdout.wait_for(0, |l| l.starts_with("ready "), READY_TIMEOUT) else {
            panic!(
                "oidc_server.mjs printed no `ready` line within {READY_TIMEOUT:?}; stdout:\n{}\n\
                 stderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        };
        let port: u16 = line["ready ".len()..].trim().parse().expect("ready <port>");
        let discovery = http_request(
            "GET",
            &format!("http://127.0.0.1:{port}/.well-known/openid-configuration"),
            &[],
            None,
            HTTP_TIMEOUT,
        );
        assert_eq!(discovery.status, 200, "discovery: {}", discovery.body);
        AuthzServer {
            child,
            port,
            config: config.clone(),
            discovery: discovery.json(),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// The issuer identifier, `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        self.discovery_str("issuer")
    }
    /// From discovery: `http://127.0.0.1:PORT/token`.
    pub fn token_endpoint(&self) -> String {
        self.discovery_str("token_endpoint")
    }
    /// From discovery: `http://127.0.0.1:PORT/token/introspection`.
    pub fn introspection_endpoint(&self) -> String {
        self.discovery_str("introspection_endpoint")
    }
    /// From discovery: `http://127.0.0.1:PORT/token/revocation`.
    pub fn revocation_endpoint(&self) -> String {
        self.discovery_str("revocation_endpoint")
    }
    /// The whole discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> &Value {
        &self.discovery
    }
    fn discovery_str(&self, key: &str) -> String {
        self.discovery[key]
            .as_str()
            .unwrap_or_else(|| panic!("discovery has no {key}: {}", self.discovery))
            .to_string()
    }

    /// How the server expects `client_id` to authenticate (Basic for unknown ids, so a test
    /// can probe with made-up credentials).
    pub fn auth_of(&self, client_id: &str) -> ClientAuth {
        self.config
            .clients
            .iter()
            .find(|c| c.id == client_id)
            .map_or(ClientAuth::Basic, |c| c.auth)
    }

    /// POSTs a form to `url` with client authentication in the client's registered way.
    pub fn post_form_as(
        &self,
        url: &str,
        client_id: &str,
        secret: &str,
        auth: ClientAuth,
        params: &[(&str, &str)],
    ) -> HttpReply {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let authorization;
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
        match auth {
            ClientAuth::Basic => {
                authorization = basic_auth(client_id, secret);
                headers.push(("Authorization", &authorization));
            }
            ClientAuth::Post => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret));
            }
        }
        let body = form_body(&form);
        http_request(
            "POST",
            url,
            &headers,
            Some(("application/x-www-form-urlencoded", body.as_bytes())),
            HTTP_TIMEOUT,
        )
    }

    /// Any token request (`grant_type` and the rest in `params`), authenticated the way the
    /// client is registered. Returns the reply whatever its status.
    pub fn token_request(
        &self,
        client_id: &str,
        secret: &str,
        params: &[(&str, &str)],
    ) -> HttpReply {
        self.post_form_as(
            &self.token_endpoint(),
            client_id,
            secret,
            self.auth_of(client_id),
            params,
        )
    }

    /// A client-credentials token (RFC 6749 §4.4), with `scope` and `resource` when given.
    /// Returns the reply whatever its status (tests of refusals need it).
    pub fn try_client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> HttpReply {
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            params.push(("scope", s));
        }
        if let Some(r) = resource {
            params.push(("resource", r));
        }
        self.token_request(client_id, secret, &params)
    }

    /// [`Self::try_client_credentials`] that must succeed: the token response JSON
    /// (`access_token`, `expires_in`, `scope`, `token_type`).
    pub fn client_credentials(&self, client_id: &str, secret: &str, scope: Option<&str>) -> Value {
        let r = self.try_client_credentials(client_id, secret, scope, None);
        assert_eq!(
            r.status, 200,
            "client_credentials for {client_id}: {}",
            r.body
        );
        r.json()
    }

    /// A token exchange (RFC 8693) of a JWT subject token. Returns the reply whatever its
    /// status.
    pub fn token_exchange(
        &self,
        client_id: &str,
        secret: &str,
        subject_token: &str,
        scope: Option<&str>,
    ) -> HttpReply {
        let mut params = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject_token),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ];
        if let Some(s) = scope {
            params.push(("scope", s));
        }
        self.token_request(client_id, secret, &params)
    }

    /// RFC 7662 introspection of `token`, authenticated as `client_id`; the response JSON
    /// (`{"active": false}` for an unknown, expired or revoked token).
    pub fn introspect(&self, client_id: &str, secret: &str, token: &str) -> Value {
        let r = self.post_form_as(
            &self.introspection_endpoint(),
            client_id,
            secret,
            self.auth_of(client_id),
            &[("token", token)],
        );
        assert_eq!(r.status, 200, "introspection: {}", r.body);
        r.json()
    }

    /// RFC 7009 revocation of `token` (an access token), authenticated as `client_id`;
    /// returns the reply (200 with an empty body on success).
    pub fn revoke(&self, client_id: &str, secret: &str, token: &str) -> HttpReply {
        self.post_form_as(
            &self.revocation_endpoint(),
            client_id,
            secret,
            self.auth_of(client_id),
            &[("token", token), ("token_type_hint", "access_token")],
        )
    }

    /// The counters: `{"token": {"total", "by_grant", "by_status", "by_client",
    /// "by_auth_method" ("client_secret_basic" | "client_secret_post" | "none"),
    /// "injected_failures", "in_flight", "max_in_flight"}, "introspection": {"total",
    /// "by_status", "by_client"}, "revocation": {"total", "by_status", "by_client"},
    /// "exchanges": [{"sub", "iss", "aud", "client_id", "scope", "resource", "audience",
    /// "claims" (the verified subject token's)}], "fail_next_token", "token_delay_ms"}`.
    pub fn stats(&self) -> Value {
        let r = http_request("GET", &self.url("/_stats"), &[], None, HTTP_TIMEOUT);
        assert_eq!(r.status, 200, "/_stats: {}", r.body);
        r.json()
    }

    /// Number of token requests with this `grant_type` so far (0 when none).
    pub fn token_requests(&self, grant_type: &str) -> u64 {
        self.stats()["token"]["by_grant"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits (polling every 20 ms, bounded by `timeout`) until at least `n` token requests
    /// with `grant_type` were counted; returns the stats then. Panics with them on timeout.
    pub fn wait_token_requests(&self, grant_type: &str, n: u64, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.stats();
            if s["token"]["by_grant"][grant_type].as_u64().unwrap_or(0) >= n {
                return s;
            }
            if std::time::Instant::now() >= deadline {
                panic!("fewer than {n} {grant_type} token requests within {timeout:?}: {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Zeroes every counter and forgets recorded exchanges.
    pub fn reset_stats(&self) {
        self.control("/_stats/reset", json!({}));
    }

    /// The next `n` token requests are answered `503 {"error":"temporarily_unavailable"}`
    /// without reaching the provider (counted under `injected_failures`).
    pub fn fail_next_token_requests(&self, n: u32) {
        self.control("/_fail", json!({ "token": n }));
    }

    /// Every token response waits `ms` milliseconds first (0: no delay).
    pub fn delay_token_responses(&self, ms: u64) {
        self.control("/_fail", json!({ "delay_ms": ms }));
    }

    /// Sets the JWK Set URL for subject tokens after start (e.g. tollgate's admin
    /// `/.well-known/jwks.json` once tollgate runs).
    pub fn set_exchange_jwks_url(&self, url: &str) {
        self.control("/_exchange", json!({ "jwks_url": url }));
    }

    fn control(&self, path: &str, body: Value) {
        let text = body.to_string();
        let r = http_request(
            "POST",
            &self.url(path),
            &[],
            Some(("application/json", text.as_bytes())),
            HTTP_TIMEOUT,
        );
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }

    /// The server's stdout so far: `ready`, then one `token grant=… client=… auth=…
    /// scope="…" status=…[ detail="…"]` line per token request.
    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }
    /// The `token …` log lines so far.
    pub fn token_log_lines(&self) -> Vec<String> {
        self.stdout
            .snapshot()
            .into_iter()
            .filter(|l| l.starts_with("token "))
            .collect()
    }
    /// The token log once it has at least `count` lines (or after 10 s, whatever it has): the
    /// server writes a line as it answers, and the reader thread may not have it yet when the
    /// client has its answer.
    pub fn wait_token_log_lines(&self, count: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let lines = self.token_log_lines();
            if lines.len() >= count || std::time::Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }
}

/// Node.js for the server: `$TOLLGATE_TEST_NODE` or `node`.
fn node() -> String {
    std::env::var("TOLLGATE_TEST_NODE").unwrap_or_else(|_| "node".into())
}

fn script() -> PathBuf {
    repo_root().join("tests/authz/oidc_server.mjs")
}

/// Runs `tests/agents/mint_token.py` (Python joserfc) on `plan` — keys, JWK Sets and tokens,
/// see the script's docstring — with `dir` for the plan file; returns the tokens by name.
pub fn mint_tokens(dir: &Path, plan: &Value) -> BTreeMap<String, String> {
    let plan_path = dir.join("mint-plan.json");
    std::fs::write(&plan_path, plan.to_string()).expect("write mint plan");
    let mut cmd = command(super::python());
    cmd.arg(repo_root().join("tests/agents/mint_token.py"))
        .arg(&plan_path);
    let out = super::run_checked(&mut cmd, Duration::from_secs(60));
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("mint_token.py prints JSON");
    serde_json::from_value(parsed["tokens"].clone()).expect("tokens by name")
}
