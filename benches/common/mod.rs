//! The request fixture the benches share: what an agent's `GET https://api.github.com/...`
//! looks like to the policy stage (headers as sent, the `PolicyInput` built from them).
#![allow(dead_code)] // each bench uses its part

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;

use tollgate::identity::{Caller, SpiffeId};
use tollgate::intent::parse_intent;
use tollgate::policy::input::{
    ConnectionFacts, DestinationFacts, PolicyInput, RequestFacts, SourceFacts, policy_headers,
};

/// The caller of every bench request (an agent of the bundled example data).
pub const CALLER: &str = "spiffe://tollgate.local/dev/agent";

/// An agent's request headers, a secret and an intent among them.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "api.github.com".parse().unwrap());
    h.insert("user-agent", "agent/1.0".parse().unwrap());
    h.insert("accept", "application/vnd.github+json".parse().unwrap());
    h.insert("authorization", "Bearer not-a-real-token".parse().unwrap());
    h.insert("x-agent-intent", "issues.read".parse().unwrap());
    h.insert("x-agent-task", "t-42".parse().unwrap());
    h
}

/// The policy input of `method https://api.github.com<path>?state=open` with `headers`.
pub fn input(method: &str, path: &str, headers: &HeaderMap) -> PolicyInput {
    PolicyInput {
        time: SystemTime::now(),
        source: SourceFacts {
            caller: Caller::Authenticated(SpiffeId::parse(CALLER).unwrap()),
            listener: Arc::from("agents"),
            address: "127.0.0.1:51234".parse().unwrap(),
        },
        intent: parse_intent(headers).unwrap(),
        request: Some(RequestFacts {
            method: method.into(),
            scheme: "https",
            host: "api.github.com".into(),
            port: 443,
            path: path.into(),
            query: Some("state=open".into()),
            headers: policy_headers(headers, &[]),
            protocol: "HTTP/1.1",
        }),
        destination: DestinationFacts {
            host: "api.github.com".into(),
            port: 443,
            ip: Some("140.82.112.6".parse().unwrap()),
        },
        connection: ConnectionFacts {
            mode: "forward",
            intercepted: true,
            tls_sni: Some("api.github.com".into()),
        },
    }
}
