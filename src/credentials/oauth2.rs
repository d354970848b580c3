//! `oauth2` credentials: tokens from an operator-configured authorization server.
//!
//! Client credentials (RFC 6749 §4.4) or token exchange (RFC 8693), with the decision's scopes,
//! RFC 8707 `resource` and `audience` where configured; revocation per RFC 7009. The client
//! is its own hyper-util client: token endpoints are operator-configured, so the private-
//! address guard that protects agent destinations does not apply to them. Error bodies of the
//! server are never echoed (they may quote the request); only the status and the RFC 6749
//! `error` code, when it is a plain code, reach a log line.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::credentials::{ClientAuthMethod, Grant, OAuth2Config};

use super::secret::Secret;
use super::source::WatchedSecret;

/// Characters escaped in `application/x-www-form-urlencoded` (everything but unreserved).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Lifetime assumed when the server sends no `expires_in`.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(300);

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why a token request failed (never carries a secret or a response body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuth2Error {
    #[error("the client secret is unavailable: {0}")]
    ClientSecret(String),
    #[error("the token endpoint could not be reached: {0}")]
    Transport(String),
    #[error("the token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the token endpoint answered {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status { status: u16, code: Option<String> },
    #[error("the token response is not usable: {0}")]
    BadResponse(&'static str),
    #[error("the subject token could not be minted: {0}")]
    SubjectToken(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One token as the server issued it.
pub struct IssuedToken {
    pub access_token: Secret,
    pub expires_at: SystemTime,
}

/// The token endpoint client of one credential.
pub struct OAuth2Client {
    config: OAuth2Config,
    client_secret: WatchedSecret,
    http: HttpsClient,
}

/// What a token request asks for besides the configuration.
pub struct TokenRequest<'a> {
    pub scopes: &'a [String],
    /// Token exchange: the subject token (a JWT minted for the caller).
    pub subject_token: Option<&'a Secret>,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", k, utf8_percent_encode(v, FORM)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The RFC 6749 §5.2 `error` code of a response, only when it is a plain code.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    (code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()))
    .then(|| code.to_string())
}

impl OAuth2Client {
    /// Builds the client of credential `name`; the client secret is read now (a failure is
    /// reported, not fatal).
    pub fn new(
        config: OAuth2Config,
        name: &str,
    ) -> Result<(OAuth2Client, Option<super::source::SourceError>), String> {
        let tls =
            crate::tls::upstream::client_config(config.ca.as_deref()).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        let (client_secret, failure) = WatchedSecret::load(config.client_secret.clone(), name);
        Ok((
            OAuth2Client {
                config,
                client_secret,
                http,
            },
            failure,
        ))
    }

    /// The configuration (grant, endpoints, timeout).
    pub fn config(&self) -> &OAuth2Config {
        &self.config
    }

    /// The client secret source, for the file watcher.
    pub fn client_secret(&self) -> &WatchedSecret {
        &self.client_secret
    }

    /// POSTs a form with client authentication; returns status and body.
    async fn post(
        &self,
        uri: &Uri,
        mut pairs: Vec<(&str, &str)>,
    ) -> Result<(u16, Bytes), OAuth2Error> {
        let secret = self
            .client_secret
            .current()
            .map_err(|e| OAuth2Error::ClientSecret(e.to_string()))?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "tollgate");
        match self.config.client_auth {
            ClientAuthMethod::Basic => {
                // RFC 6749 §2.3.1: both parts form-encoded before base64.
                let credentials = zeroize::Zeroizing::new(format!(
                    "{}:{}",
                    utf8_percent_encode(&self.config.client_id, FORM),
                    utf8_percent_encode(secret.expose(), FORM)
                ));
                let mut value = http::HeaderValue::from_str(&format!(
                    "Basic {}",
                    STANDARD.encode(&*credentials)
                ))
                .map_err(|_| OAuth2Error::ClientSecret("not usable in a header".into()))?;
                value.set_sensitive(true);
                builder = builder.header(header::AUTHORIZATION, value);
            }
            ClientAuthMethod::Post => {
                pairs.push(("client_id", &self.config.client_id));
                pairs.push(("client_secret", secret.expose()));
            }
        }
        let body = zeroize::Zeroizing::new(form(&pairs));
        let request = builder
            .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
            .map_err(|_| OAuth2Error::Transport("cannot build the request".into()))?;
        let timeout = self.config.timeout;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| OAuth2Error::Transport(transport_reason(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|_| OAuth2Error::BadResponse("the body could not be read"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OAuth2Error::Timeout(timeout))?
    }

    /// Asks the token endpoint for a token.
    pub async fn fetch(&self, request: &TokenRequest<'_>) -> Result<IssuedToken, OAuth2Error> {
        let scope = request.scopes.join(" ");
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        match self.config.grant {
            Grant::ClientCredentials => pairs.push(("grant_type", "client_credentials")),
            Grant::TokenExchange => {
                let subject = request
                    .subject_token
                    .ok_or_else(|| OAuth2Error::SubjectToken("none was minted".into()))?;
                pairs.push(("grant_type", TOKEN_EXCHANGE));
                pairs.push(("subject_token", subject.expose()));
                pairs.push(("subject_token_type", JWT_TOKEN_TYPE));
                pairs.push(("requested_token_type", ACCESS_TOKEN_TYPE));
            }
        }
        if !scope.is_empty() {
            pairs.push(("scope", &scope));
        }
        if let Some(resource) = &self.config.resource {
            pairs.push(("resource", resource));
        }
        if let Some(audience) = &self.config.audience {
            pairs.push(("audience", audience));
        }
        let requested = SystemTime::now();
        let (status, body) = self.post(&self.config.token_endpoint, pairs).await?;
        if !(200..300).contains(&status) {
            return Err(OAuth2Error::Status {
                status,
                code: error_code(&body),
            });
        }
        parse_token_response(&body, requested)
    }

    /// Revokes a token (RFC 7009); `Ok(false)` when no revocation endpoint is configured.
    pub async fn revoke(&self, token: &Secret) -> Result<bool, OAuth2Error> {
        let Some(endpoint) = &self.config.revocation_endpoint else {
            return Ok(false);
        };
        let pairs = vec![
            ("token", token.expose()),
            ("token_type_hint", "access_token"),
        ];
        let (status, body) = self.post(endpoint, pairs).await?;
        if (200..300).contains(&status) {
            Ok(true)
        } else {
            Err(OAuth2Error::Status {
                status,
                code: error_code(&body),
            })
        }
    }
}

fn transport_reason(error: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        reason = inner.to_string();
        source = inner.source();
    }
    reason
}

/// Parses `access_token`, `token_type`, `expires_in` (RFC 6749 §5.1).
pub fn parse_token_response(
    body: &[u8],
    requested: SystemTime,
) -> Result<IssuedToken, OAuth2Error> {
    #[derive(serde::Deserialize)]
    struct Response {
        access_token: Option<serde_json::Value>,
        token_type: Option<String>,
        expires_in: Option<serde_json::Value>,
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| OAuth2Error::BadResponse("not JSON"))?;
    if !value.is_object() {
        return Err(OAuth2Error::BadResponse("not a JSON object"));
    }
    let parsed: Response = serde_json::from_value(value)
        .map_err(|_| OAuth2Error::BadResponse("a field has the wrong type"))?;
    let token = match parsed.access_token {
        None => return Err(OAuth2Error::BadResponse("no access_token")),
        Some(serde_json::Value::String(token)) if !token.is_empty() => token,
        Some(serde_json::Value::String(_)) => {
            return Err(OAuth2Error::BadResponse("the access_token is empty"));
        }
        Some(_) => return Err(OAuth2Error::BadResponse("the access_token is not a string")),
    };
    let access_token = Secret::new(token);
    if access_token
        .expose()
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b))
    {
        return Err(OAuth2Error::BadResponse(
            "the access_token has characters a header cannot carry",
        ));
    }
    match parsed.token_type.as_deref() {
        // RFC 8693 §2.2.1: N_A when the token is not an access token; anything else is a
        // scheme tollgate does not inject.
        Some(t) if t.eq_ignore_ascii_case("bearer") || t == "N_A" => {}
        None => return Err(OAuth2Error::BadResponse("no token_type")),
        Some(_) => return Err(OAuth2Error::BadResponse("token_type is not Bearer")),
    }
    let expires_in = match parsed.expires_in {
        None => DEFAULT_EXPIRES_IN,
        Some(serde_json::Value::Number(n)) => Duration::from_secs(
            n.as_u64()
                .ok_or(OAuth2Error::BadResponse("bad expires_in"))?,
        ),
        Some(serde_json::Value::String(s)) => Duration::from_secs(
            s.parse()
                .map_err(|_| OAuth2Error::BadResponse("bad expires_in"))?,
        ),
        Some(_) => return Err(OAuth2Error::BadResponse("bad expires_in")),
    };
    Ok(IssuedToken {
        access_token,
        expires_at: requested + expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_token_response() {
        let now = SystemTime::now();
        let token = parse_token_response(
            br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3600,"scope":"x"}"#,
            now,
        )
        .unwrap();
        assert_eq!(token.access_token.expose(), "abc.def");
        assert_eq!(token.expires_at, now + Duration::from_secs(3600));
        assert!(matches!(
            parse_token_response(br#"{"token_type":"Bearer"}"#, now),
            Err(OAuth2Error::BadResponse(_))
        ));
        assert!(matches!(
            parse_token_response(br#"{"access_token":"a","token_type":"mac"}"#, now),
            Err(OAuth2Error::BadResponse(_))
        ));
        assert!(matches!(
            parse_token_response(br#"{"access_token":"a b","token_type":"bearer"}"#, now),
            Err(OAuth2Error::BadResponse(_))
        ));
        for (body, why) in [
            (&b"<html>"[..], "not JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"token":"x"}"#, "no access_token"),
            (
                br#"{"access_token":12345}"#,
                "the access_token is not a string",
            ),
            (br#"{"access_token":""}"#, "the access_token is empty"),
            (
                br#"{"access_token":"a","token_type":7}"#,
                "a field has the wrong type",
            ),
        ] {
            assert_eq!(
                parse_token_response(body, now).err(),
                Some(OAuth2Error::BadResponse(why))
            );
        }
    }

    #[test]
    fn error_codes_are_kept_only_when_plain() {
        assert_eq!(
            error_code(br#"{"error":"invalid_scope"}"#).as_deref(),
            Some("invalid_scope")
        );
        assert_eq!(error_code(br#"{"error":"secret=hunter2"}"#), None);
        assert_eq!(error_code(b"<html>"), None);
    }

    #[test]
    fn form_encodes_reserved_characters() {
        assert_eq!(
            form(&[("scope", "a b:c"), ("x", "1&2=3")]),
            "scope=a%20b%3Ac&x=1%262%3D3"
        );
    }
}
