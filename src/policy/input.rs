//! The policy input document (SPEC §4.1), built directly as a regorus [`Value`].
//!
//! Building the engine's value type directly avoids a serde_json round trip on every request
//! (measured at 2–5 µs in STACK-NOTES). JSON, for `policy eval` and debugging, is derived from
//! the same value, so there is one definition of the input's shape.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use regorus::Value;
use regorus::value::Object;

use crate::identity::Caller;
use crate::intent::Intent;

/// Who asked, over which listener (`input.source`).
#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub caller: Caller,
    pub listener: Arc<str>,
    /// The peer's `ip:port`, written once per connection ([`peer_text`]).
    pub address: Arc<str>,
}

/// A connection's peer address as the policy input and the decision log write it (`ip:port`,
/// an IPv6 address in brackets): formatted once when the connection is accepted, not per
/// request.
pub fn peer_text(peer: SocketAddr) -> Arc<str> {
    Arc::from(peer.to_string())
}

/// The HTTP request, for per-request checks (`input.request`).
#[derive(Debug, Clone)]
pub struct RequestFacts {
    pub method: String,
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    /// Normalized path (see `proxy::target`).
    pub path: String,
    pub query: Option<String>,
    /// Lower-cased names; credential-bearing values already redacted.
    pub headers: Vec<(String, String)>,
    pub protocol: &'static str,
}

/// Where the call goes (`input.destination`).
#[derive(Debug, Clone)]
pub struct DestinationFacts {
    pub host: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

/// How the bytes arrived (`input.connection`).
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub mode: &'static str,
    pub intercepted: bool,
    pub tls_sni: Option<String>,
}

/// Everything the policy sees for one decision.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub time: SystemTime,
    pub source: SourceFacts,
    pub intent: Intent,
    /// `None` for connection-level checks (CONNECT, before any request flows).
    pub request: Option<RequestFacts>,
    pub destination: DestinationFacts,
    pub connection: ConnectionFacts,
}

/// Headers whose values the policy never sees.
pub const REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// What a redacted header value looks like to the policy.
pub const REDACTED: &str = "<redacted>";

/// Object keys of the input document, allocated once per thread: building the input then
/// clones strings (an atomic increment) instead of allocating ~30 keys per request. Per
/// thread, not process-wide: ~60 increments and decrements per request on reference counts
/// shared by every worker would bounce their cache lines between cores.
macro_rules! input_keys {
    ($($name:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        struct Keys { $($name: Value),* }
        thread_local! {
            static KEYS: Keys = Keys { $($name: Value::from(stringify!($name))),* };
        }
    };
}

input_keys!(
    version,
    time,
    source,
    spiffe_id,
    trust_domain,
    path,
    authenticated,
    listener,
    address,
    intent,
    name,
    task,
    purpose,
    delegation,
    verified,
    issuer,
    claims,
    request,
    method,
    scheme,
    host,
    port,
    query,
    headers,
    protocol,
    destination,
    ip,
    connection,
    mode,
    intercepted,
    tls_sni,
);

/// An object of the input document, in the engine's compact (frozen) form: the policy reads
/// the input many times per evaluation, and a frozen object is searched by a field name
/// without building a key value for it.
fn obj<const N: usize>(fields: [(&Value, Value); N]) -> Value {
    Object::from_entries(fields.into_iter().map(|(k, v)| (k.clone(), v)).collect()).into_value()
}

fn opt_str(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

impl PolicyInput {
    /// The input as the engine's value.
    pub fn to_value(&self) -> Value {
        KEYS.with(|keys| self.value_with(keys))
    }

    fn value_with(&self, k: &Keys) -> Value {
        let spiffe_id = self.source.caller.spiffe_id();
        let source = obj([
            (
                &k.spiffe_id,
                spiffe_id.map_or(Value::Null, |id| Value::String(id.shared())),
            ),
            (
                &k.trust_domain,
                opt_str(spiffe_id.map(|id| id.trust_domain())),
            ),
            (&k.path, opt_str(spiffe_id.map(|id| id.path()))),
            (&k.authenticated, Value::from(spiffe_id.is_some())),
            (&k.listener, Value::String(self.source.listener.clone())),
            (&k.address, Value::String(self.source.address.clone())),
        ]);
        let intent = obj([
            (&k.name, opt_str(self.intent.name.as_deref())),
            (&k.task, opt_str(self.intent.task.as_deref())),
            (&k.purpose, opt_str(self.intent.purpose.as_deref())),
            (
                &k.delegation,
                Value::from(
                    self.intent
                        .delegation
                        .iter()
                        .map(|id| Value::from(id.as_str()))
                        .collect::<Vec<_>>(),
                ),
            ),
            (&k.verified, Value::from(self.intent.verified)),
            (&k.issuer, opt_str(self.intent.issuer.as_deref())),
            (&k.claims, claims_value(&self.intent.claims)),
        ]);
        let request = match &self.request {
            None => Value::Null,
            Some(r) => {
                let headers = Object::from_entries(
                    r.headers
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                        .collect(),
                )
                .into_value();
                obj([
                    (&k.method, Value::from(r.method.as_str())),
                    (&k.scheme, Value::from(r.scheme)),
                    (&k.host, Value::from(r.host.as_str())),
                    (&k.port, Value::from(u64::from(r.port))),
                    (&k.path, Value::from(r.path.as_str())),
                    (&k.query, Value::from(r.query.as_deref().unwrap_or(""))),
                    (&k.headers, headers),
                    (&k.protocol, Value::from(r.protocol)),
                ])
            }
        };
        let destination = obj([
            (&k.host, Value::from(self.destination.host.as_str())),
            (&k.port, Value::from(u64::from(self.destination.port))),
            (
                &k.ip,
                self.destination
                    .ip
                    .map_or(Value::Null, |ip| Value::from(ip.to_string())),
            ),
        ]);
        let connection = obj([
            (&k.mode, Value::from(self.connection.mode)),
            (&k.intercepted, Value::from(self.connection.intercepted)),
            (&k.tls_sni, opt_str(self.connection.tls_sni.as_deref())),
        ]);
        obj([
            (&k.version, Value::from(1u64)),
            (&k.time, Value::from(format_time(self.time))),
            (&k.source, source),
            (&k.intent, intent),
            (&k.request, request),
            (&k.destination, destination),
            (&k.connection, connection),
        ])
    }
}

/// The same document as [`PolicyInput::to_value`], serialized straight from the facts: the Wasm
/// engine hands the input to the module as JSON, so it skips the engine value (and its shared,
/// atomically counted keys) altogether. Keys are written in sorted order, as the value has them.
impl serde::Serialize for PolicyInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        use serde_json::json;
        let spiffe_id = self.source.caller.spiffe_id();
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry(
            "connection",
            &json!({
                "intercepted": self.connection.intercepted,
                "mode": self.connection.mode,
                "tls_sni": self.connection.tls_sni,
            }),
        )?;
        map.serialize_entry(
            "destination",
            &json!({
                "host": self.destination.host,
                "ip": self.destination.ip.map(|ip| ip.to_string()),
                "port": self.destination.port,
            }),
        )?;
        map.serialize_entry(
            "intent",
            &IntentJson {
                intent: &self.intent,
            },
        )?;
        match &self.request {
            None => map.serialize_entry("request", &())?,
            Some(r) => map.serialize_entry("request", &RequestJson { request: r })?,
        }
        map.serialize_entry(
            "source",
            &json!({
                "address": &*self.source.address,
                "authenticated": spiffe_id.is_some(),
                "listener": &*self.source.listener,
                "path": spiffe_id.map(|id| id.path()),
                "spiffe_id": spiffe_id.map(|id| id.as_str()),
                "trust_domain": spiffe_id.map(|id| id.trust_domain()),
            }),
        )?;
        map.serialize_entry("time", &format_time(self.time))?;
        map.serialize_entry("version", &1u64)?;
        map.end()
    }
}

struct IntentJson<'a> {
    intent: &'a Intent,
}

impl serde::Serialize for IntentJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let i = self.intent;
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("claims", &i.claims)?;
        let delegation: Vec<&str> = i.delegation.iter().map(|id| id.as_str()).collect();
        map.serialize_entry("delegation", &delegation)?;
        map.serialize_entry("issuer", &i.issuer)?;
        map.serialize_entry("name", &i.name)?;
        map.serialize_entry("purpose", &i.purpose)?;
        map.serialize_entry("task", &i.task)?;
        map.serialize_entry("verified", &i.verified)?;
        map.end()
    }
}

struct RequestJson<'a> {
    request: &'a RequestFacts,
}

impl serde::Serialize for RequestJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.request;
        // Header names are unique in the list (policy_headers joins repeats), sorted like the value.
        let headers: BTreeMap<&str, &str> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut map = serializer.serialize_map(Some(8))?;
        map.serialize_entry("headers", &headers)?;
        map.serialize_entry("host", &r.host)?;
        map.serialize_entry("method", &r.method)?;
        map.serialize_entry("path", &r.path)?;
        map.serialize_entry("port", &r.port)?;
        map.serialize_entry("protocol", r.protocol)?;
        map.serialize_entry("query", r.query.as_deref().unwrap_or(""))?;
        map.serialize_entry("scheme", r.scheme)?;
        map.end()
    }
}

/// A verified token's claims as an engine value (empty object without a token).
fn claims_value(claims: &serde_json::Map<String, serde_json::Value>) -> Value {
    if claims.is_empty() {
        return Value::new_object();
    }
    Value::from(serde_json::Value::Object(claims.clone()))
}

/// RFC 3339 UTC with milliseconds, as in SPEC §4.1 (`2026-11-22T10:00:00.123Z`).
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Lower-cased header list for the policy, with secrets replaced by [`REDACTED`].
/// `extra` are the configured secret headers (`agent_secrets.headers`), redacted too.
pub fn policy_headers(
    headers: &http::HeaderMap,
    extra: &[http::HeaderName],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for name in headers.keys() {
        let key = name.as_str();
        if key.starts_with("x-agent-") {
            continue;
        }
        let value = if REDACTED_HEADERS.contains(&key) || extra.contains(name) {
            REDACTED.to_string()
        } else {
            let joined: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            joined.join(", ")
        };
        out.push((key.to_string(), value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    fn sample() -> PolicyInput {
        PolicyInput {
            time: SystemTime::UNIX_EPOCH,
            source: SourceFacts {
                caller: Caller::Authenticated(SpiffeId::parse("spiffe://example.org/a").unwrap()),
                listener: Arc::from("agents"),
                address: "10.0.0.7:51234".into(),
            },
            intent: Intent {
                name: Some("issues.read".into()),
                ..Intent::default()
            },
            request: None,
            destination: DestinationFacts {
                host: "api.github.com".into(),
                port: 443,
                ip: Some("140.82.112.6".parse().unwrap()),
            },
            connection: ConnectionFacts {
                mode: "forward",
                intercepted: true,
                tls_sni: None,
            },
        }
    }

    /// Object keys at every level, with the free-form maps (`headers`, `claims`) as leaves.
    fn keys(value: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = value {
            for (key, inner) in map {
                let path = format!("{at}.{key}");
                out.push(path.clone());
                if key != "headers" && key != "claims" {
                    keys(inner, &path, out);
                }
            }
        }
    }

    /// The sample inputs of `policy-wasm/examples/` (documented in docs/POLICY.md) have exactly
    /// the keys of the document tollgate builds, so the documentation cannot drift from it.
    #[test]
    fn the_sample_inputs_have_the_documents_keys() {
        let mut with_request = sample();
        with_request.request = Some(RequestFacts {
            method: "GET".into(),
            scheme: "https",
            host: "api.github.com".into(),
            port: 443,
            path: "/".into(),
            query: None,
            headers: Vec::new(),
            protocol: "HTTP/1.1",
        });
        for (name, text, built) in [
            (
                "request.json",
                include_str!("../../policy-wasm/examples/request.json"),
                &with_request,
            ),
            (
                "connection.json",
                include_str!("../../policy-wasm/examples/connection.json"),
                &sample(),
            ),
            (
                "transparent.json",
                include_str!("../../policy-wasm/examples/transparent.json"),
                &sample(),
            ),
        ] {
            let example: serde_json::Value = serde_json::from_str(text).unwrap();
            let built = serde_json::to_value(built).unwrap();
            let (mut want, mut got) = (Vec::new(), Vec::new());
            keys(&built, "input", &mut want);
            keys(&example, "input", &mut got);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn builds_the_spec_shape() {
        let json = serde_json::to_value(sample().to_value()).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["source"]["trust_domain"], "example.org");
        assert_eq!(json["source"]["path"], "/a");
        assert_eq!(json["source"]["authenticated"], true);
        assert_eq!(json["request"], serde_json::Value::Null);
        assert_eq!(json["destination"]["ip"], "140.82.112.6");
        assert_eq!(json["intent"]["verified"], false);
        assert_eq!(json["intent"]["delegation"], serde_json::json!([]));
    }

    #[test]
    fn serializes_the_same_document_as_the_engine_value() {
        let mut input = sample();
        let plain = serde_json::to_string(&input).unwrap();
        assert_eq!(plain, serde_json::to_string(&input.to_value()).unwrap());
        input.source.caller = Caller::Anonymous;
        input.intent.delegation = vec![SpiffeId::parse("spiffe://example.org/boss").unwrap()];
        input
            .intent
            .claims
            .insert("scope".into(), serde_json::json!(["a", {"b": 1}]));
        input.request = Some(RequestFacts {
            method: "GET".into(),
            scheme: "https",
            host: "api.github.com".into(),
            port: 443,
            path: "/repos".into(),
            query: None,
            headers: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
            protocol: "HTTP/1.1",
        });
        input.connection.tls_sni = Some("api.github.com".into());
        let json = serde_json::to_string(&input).unwrap();
        assert_eq!(json, serde_json::to_string(&input.to_value()).unwrap());
        assert!(json.contains(r#""spiffe_id":null"#), "{json}");
    }

    #[test]
    fn redacts_credential_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer sekrit".parse().unwrap());
        headers.insert("x-api-key", "sekrit".parse().unwrap());
        headers.insert("x-agent-intent", "a".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        let list = policy_headers(&headers, &[]);
        assert!(list.contains(&("authorization".into(), REDACTED.into())));
        assert!(list.contains(&("x-api-key".into(), REDACTED.into())));
        assert!(list.contains(&("accept".into(), "a, b".into())));
        assert!(!list.iter().any(|(k, _)| k.starts_with("x-agent-")));
        assert!(!format!("{list:?}").contains("sekrit"));
    }

    #[test]
    fn redacts_configured_secret_headers_too() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-goog-api-key", "k".parse().unwrap());
        headers.insert("accept", "a".parse().unwrap());
        let extra = [http::HeaderName::from_static("x-goog-api-key")];
        let list = policy_headers(&headers, &extra);
        assert!(list.contains(&("x-goog-api-key".to_string(), REDACTED.to_string())));
        assert!(list.contains(&("accept".to_string(), "a".to_string())));
    }

    /// The input's objects are built straight into the engine's frozen form (vendored regorus
    /// patch #6): the same object, field for field and in order, as inserting the fields one
    /// by one — a repeated key keeping its last value — and found by name as before.
    #[test]
    fn objects_built_from_entries_equal_objects_built_by_insertion() {
        let entries = [
            ("zeta", Value::from(1u64)),
            ("alpha", Value::from("a")),
            ("mid", Value::Null),
            ("alpha", Value::from("again")),
            ("beta", Value::from(true)),
            ("zeta", Value::from(2u64)),
        ];
        let pairs = || entries.iter().map(|(k, v)| (Value::from(*k), v.clone()));
        let frozen = Object::from_entries(pairs().collect());
        let inserted = Object::from_iter(pairs());
        assert_eq!(frozen, inserted);
        assert_eq!(frozen.len(), 4);
        let keys: Vec<_> = frozen.iter().map(|(k, _)| k.clone()).collect();
        let sorted: Vec<_> = inserted.iter_sorted().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, sorted, "frozen entries are in key order");
        assert_eq!(frozen.get_str("alpha"), Some(&Value::from("again")));
        assert_eq!(frozen.get_str("zeta"), Some(&Value::from(2u64)));
        assert_eq!(frozen.get(&Value::from("mid")), Some(&Value::Null));
        assert_eq!(frozen.get_str("absent"), None);
        assert!(Object::from_entries(Vec::new()).is_empty());
    }
}
