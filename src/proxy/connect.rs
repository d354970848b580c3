//! CONNECT: a connection-level decision before any byte flows. The answer is a
//! [`TunnelPlan`] — what the server then does with the connection: interception (TLS
//! terminated with a minted leaf; every request inside authorized on its own) or, when the
//! policy asks for `mode: tunnel` or the listener does not intercept, bytes passed unread. The
//! tunnel itself is the server's (`server::tunnel`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};

use crate::error::ProxyError;
use crate::intent::{Intent, TaskName};
use crate::policy::ConnectionMode;

use super::body::ResponseBody;
use super::ctx::ConnCtx;
use super::forward::DECISION_ID;
use super::record::Recorder;
use super::target::{Resolution, TunnelAuthority};
use super::{Live, Proxy, authorize, error_response, intent, target};

/// What the server does with an allowed CONNECT.
#[derive(Debug, Clone)]
pub struct TunnelPlan {
    /// Where the tunnel goes.
    pub authority: TunnelAuthority,
    /// The vetted addresses (empty for an intercepted tunnel whose name did not resolve: each
    /// request inside gets its own answer).
    pub ips: Arc<[IpAddr]>,
    /// Intercept, or pass bytes unread.
    pub mode: ConnectionMode,
    /// The task the CONNECT declared: a blind tunnel closes when it is killed.
    pub task: Option<TaskName>,
    decision_id: String,
}

impl TunnelPlan {
    /// The `200` that tells the agent the tunnel is open.
    pub fn established(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::OK;
        if let Ok(id) = HeaderValue::from_str(&self.decision_id) {
            response.headers_mut().insert(DECISION_ID, id);
        }
        response
    }
}

/// Decides a CONNECT: the plan, or tollgate's answer (403, 400, 502…). Its decision-log line
/// is written before this returns.
pub async fn connect<B>(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: &Request<B>,
) -> Result<TunnelPlan, Response<ResponseBody>> {
    let mut record = conn.recorder(proxy, http::Method::CONNECT);
    match stages(proxy, conn, request, &mut record).await {
        Ok(plan) => Ok(plan),
        Err(error) => Err(error_response(&error, &mut record)),
    }
}

async fn stages<B>(
    proxy: &Proxy,
    conn: &ConnCtx,
    request: &Request<B>,
    record: &mut Recorder,
) -> Result<TunnelPlan, ProxyError> {
    // 0. record: the CONNECT's decision-log line has its place, or the CONNECT ends here.
    record.reserve().await?;
    // The policy revision this CONNECT is decided by, read once.
    let live = proxy.live.current();
    // 1. target: the CONNECT's host:port, resolved; non-public addresses refused.
    let (authority, resolution) = target::tunnel_destination(proxy, request, record).await?;
    // 2. intent: optional context for the connection-level check.
    let intent = intent::declared(proxy, conn, request.headers(), record)?;
    plan(proxy, conn, &live, authority, resolution, intent, record)
}

/// Decides a transparent listener's connection (TLS, or bytes tollgate cannot read) at
/// connection level, as a CONNECT to `host` at the port the agent dialled: `host` is the SNI,
/// else the original IP. The name must resolve to the original address
/// ([`target::bind_original`]), so the plan's only address is the one the agent dialled. Its
/// decision-log line (method `CONNECT`) is written before this returns; a refusal is only
/// logged: there is no HTTP to answer in, so the server closes the connection.
pub async fn transparent(
    proxy: &Proxy,
    conn: &ConnCtx,
    host: &str,
    original: SocketAddr,
) -> Result<TunnelPlan, ProxyError> {
    let mut record = conn.recorder(proxy, http::Method::CONNECT);
    let result = async {
        record.reserve().await?;
        let live = proxy.live.current();
        let authority = TunnelAuthority {
            host: target::normalize_host(host)?,
            port: original.port(),
        };
        record.authority(&authority.host, authority.port);
        let resolution = target::bind_original(proxy, &authority.host, original.ip()).await?;
        let intent = Intent::default();
        record.intent(&intent);
        plan(
            proxy,
            conn,
            &live,
            authority,
            resolution,
            intent,
            &mut record,
        )
    }
    .await;
    if let Err(error) = &result {
        record.ended_with(error);
        tracing::info!(decision_id = %record.decision_id(), reason = error.reason().as_str(), %error, "transparent connection refused; closing");
    }
    result
}

/// Stages 3 and 4 of a connection-level decision: the policy, then what the connection
/// becomes.
fn plan(
    proxy: &Proxy,
    conn: &ConnCtx,
    live: &Live,
    authority: TunnelAuthority,
    resolution: Resolution,
    intent: Intent,
    record: &mut Recorder,
) -> Result<TunnelPlan, ProxyError> {
    // 3. authorize: the kill switch, then the policy at connection level.
    let permit = authorize::connection(proxy, conn, live, &authority, &resolution, intent, record)?;
    // 4. mode: a listener that does not intercept only ever tunnels. Intercepted tunnels stay
    // open even to a name that did not resolve, so each request inside gets its own precise
    // answer; a blind tunnel to such a name can carry nothing (502).
    let mode = if conn.intercept {
        permit.decision().mode
    } else {
        ConnectionMode::Tunnel
    };
    let ips = match mode {
        ConnectionMode::Tunnel => resolution.addresses()?.clone(),
        ConnectionMode::Intercept => match resolution.addresses() {
            Ok(ips) => ips.clone(),
            Err(_) => Arc::from([]),
        },
    };
    Ok(TunnelPlan {
        authority,
        ips,
        mode,
        task: permit.intent().task.clone(),
        decision_id: record.decision_id().to_owned(),
    })
}
