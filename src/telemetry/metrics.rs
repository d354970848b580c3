//! Prometheus metrics (SPEC §8, docs/METRICS.md): one registry, built at start-up.
//!
//! Every time series the request path touches is created up front — per listener and closed
//! [`Reason`] (whose outcome is the `decision` label), per identity rejection, per reload
//! source — and kept in tables that are never written after start-up, so recording is an
//! index plus an atomic add: no lock, no string lookup on the request path. Series whose labels
//! cannot be known in advance (destination hosts, with `telemetry.metrics_label_destination`
//! on) are made once through the prometheus crate's label lookup, which takes a read lock, and
//! then kept in a per-thread cache of counter handles, so a request takes no lock either.

use std::cell::RefCell;
use std::collections::HashMap;

use super::h2_errors::H2ConnectionError;
use crate::identity::svid::SvidRejection;
use crate::kill::flows::FlowKind;
use crate::per_thread::{self, OwnerId};
use crate::reason::{Outcome, Reason};
use crate::watch::Source;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
const POLICY_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.1,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Per-thread handles of destination-labelled counters (bounded; a miss falls back to the
/// registry's label lookup). Keyed level by level — reason, then listener, then destination —
/// so a hit looks the strings up by `&str` and allocates nothing; the count of handles kept
/// comes first.
type DestinationCounters = (
    usize,
    HashMap<Reason, HashMap<String, HashMap<String, IntCounter>>>,
);
const DESTINATION_CACHE_LIMIT: usize = 4096;

thread_local! {
    /// This thread's handles, and the registry they belong to.
    static DESTINATION_COUNTERS: per_thread::Slot<DestinationCounters> = const { RefCell::new(None) };
}

/// Series of one listener, created at start-up.
struct ListenerSeries {
    /// `tollgate_requests_total` of each [`Reason`], at `reason.index()` (without destination
    /// labels; with them, the series depend on the traffic and are made on demand).
    requests: Option<Vec<IntCounter>>,
    duration: Histogram,
    active: IntGauge,
}

/// The metrics registry and the handles the request path records into.
pub struct Metrics {
    /// Tells this registry's per-thread handles from another's (tests build several).
    id: OwnerId,
    registry: Registry,
    listeners: HashMap<String, ListenerSeries>,
    /// Set when requests carry a `destination` label (then looked up per request).
    by_destination: Option<IntCounterVec>,
    policy_eval_rego: Histogram,
    policy_eval_wasm: Histogram,
    upstream_duration: Histogram,
    reload_success: IntCounter,
    reload_failure: IntCounter,
    /// `tollgate_reloads_total{source,result}`: success at `2 * source`, failure at `+ 1`.
    reloads: Vec<IntCounter>,
    policy_info: IntGaugeVec,
    /// `tollgate_credential_issued_total{credential,kind}` (credentials release).
    pub credential_issued: IntCounterVec,
    /// `tollgate_credential_cache_hits_total{credential}` (credentials release).
    pub credential_cache_hits: IntCounterVec,
    /// `tollgate_credential_errors_total{credential}` (credentials release).
    pub credential_errors: IntCounterVec,
    /// `tollgate_identity_rejections_total{reason}`, one series per `SvidRejection`.
    identity_rejections: Vec<IntCounter>,
    tls_errors_agent: IntCounter,
    tls_errors_origin: IntCounter,
    /// `tollgate_kills_active`.
    pub kills_active: IntGauge,
    /// `tollgate_config_pending_restart{key}`: 1 for each configuration key changed on disk
    /// and reloaded that only a restart puts in force.
    pending_restart: IntGaugeVec,
    /// `tollgate_tls_agent_unknown_ca_total`: agent handshakes that failed because the agent
    /// does not trust the interception CA.
    tls_agent_unknown_ca: IntCounter,
    /// `tollgate_admin_refusals_total{reason}`, one series per [`AdminRefusal`].
    admin_refusals: Vec<IntCounter>,
    /// `tollgate_decision_log_dropped_total`: decision-log lines dropped because the queue was
    /// full (`telemetry.decision_log_on_full: drop`) or the writer was gone.
    pub decision_log_dropped: IntCounter,
    /// `tollgate_flows_killed_total{kind}`, one series per `FlowKind` (in its order).
    flows_killed: Vec<IntCounter>,
    /// `tollgate_h2_connection_errors_total{reason}`, one series per label of
    /// [`H2ConnectionError::labels`] (in its order).
    h2_connection_errors: Vec<(&'static str, IntCounter)>,
}

/// Why the admin API refused a caller that reached it (`tollgate_admin_refusals_total`): a
/// closed set, so a refused agent can never mint a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// A Unix-socket peer whose UID is not in `admin.allowed_uids` (or whose UID the kernel
    /// would not tell).
    PeerUid,
    /// An mTLS caller with a valid SVID whose SPIFFE ID is not in `admin.allowed_spiffe_ids`.
    SpiffeId,
}

impl AdminRefusal {
    /// Every refusal, in label order.
    pub const ALL: [AdminRefusal; 2] = [AdminRefusal::PeerUid, AdminRefusal::SpiffeId];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AdminRefusal::PeerUid => "peer_uid",
            AdminRefusal::SpiffeId => "spiffe_id",
        }
    }
}

/// Makes metric families and registers each as it is made.
struct Families<'r>(&'r Registry);

impl Families<'_> {
    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(family.clone()))?;
        Ok(family)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        let family = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(family.clone()))?;
        Ok(family)
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let family = HistogramVec::new(opts, labels)?;
        self.0.register(Box::new(family.clone()))?;
        Ok(family)
    }
}

/// A metric could not be registered (a programming error, caught at start-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Builds every series for these listeners.
    pub fn new(
        listener_names: &[String],
        label_destination: bool,
    ) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let family = Families(&registry);
        let mut request_labels = vec!["listener", "decision", "reason"];
        if label_destination {
            request_labels.push("destination");
        }
        let requests = family.counters(
            "tollgate_requests_total",
            "Decisions made, by outcome and closed reason.",
            &request_labels,
        )?;
        let durations = family.histograms(
            "tollgate_request_duration_seconds",
            "End-to-end request time, until the response body ends.",
            REQUEST_BUCKETS,
            &["listener"],
        )?;
        let active = family.gauges(
            "tollgate_active_connections",
            "Agent connections open now.",
            &["listener"],
        )?;
        let policy_eval = family.histograms(
            "tollgate_policy_eval_duration_seconds",
            "One policy evaluation.",
            POLICY_BUCKETS,
            &["engine"],
        )?;
        let upstream_duration = family.histograms(
            "tollgate_upstream_duration_seconds",
            "From sending to the origin until its response head.",
            UPSTREAM_BUCKETS,
            &[],
        )?;
        let reloads = family.counters(
            "tollgate_policy_reloads_total",
            "Policy reloads, by result.",
            &["result"],
        )?;
        let reloads_by_source = family.counters(
            "tollgate_reloads_total",
            "Values rebuilt from their files (or the Workload API), by source and result.",
            &["source", "result"],
        )?;
        let policy_info = family.gauges(
            "tollgate_policy_info",
            "The policy revision in force (value 1).",
            &["revision", "engine"],
        )?;
        let credential_issued = family.counters(
            "tollgate_credential_issued_total",
            "Credentials fetched or minted.",
            &["credential", "kind"],
        )?;
        let credential_cache_hits = family.counters(
            "tollgate_credential_cache_hits_total",
            "Credentials served from the cache.",
            &["credential"],
        )?;
        let credential_errors = family.counters(
            "tollgate_credential_errors_total",
            "Credential provider failures.",
            &["credential"],
        )?;
        let identity_rejections = family.counters(
            "tollgate_identity_rejections_total",
            "Peers refused during identity checks.",
            &["reason"],
        )?;
        let tls_errors = family.counters(
            "tollgate_tls_handshake_errors_total",
            "Failed TLS handshakes, by side.",
            &["side"],
        )?;
        let admin_refusals = family.counters(
            "tollgate_admin_refusals_total",
            "Admin API callers refused after they connected, by reason.",
            &["reason"],
        )?;
        let kills_active = IntGauge::new("tollgate_kills_active", "Kills in force.")?;
        registry.register(Box::new(kills_active.clone()))?;
        let pending_restart = family.gauges(
            "tollgate_config_pending_restart",
            "Configuration keys changed and reloaded that only a restart applies (value 1).",
            &["key"],
        )?;
        let tls_agent_unknown_ca = IntCounter::new(
            "tollgate_tls_agent_unknown_ca_total",
            "Agent TLS handshakes refused by the agent because it does not trust the interception CA.",
        )?;
        registry.register(Box::new(tls_agent_unknown_ca.clone()))?;
        let decision_log_dropped = IntCounter::new(
            "tollgate_decision_log_dropped_total",
            "Decision-log lines dropped because the queue was full (telemetry.decision_log_on_full: drop).",
        )?;
        registry.register(Box::new(decision_log_dropped.clone()))?;
        let flows_killed = family.counters(
            "tollgate_flows_killed_total",
            "Open flows a kill or a task's end cut, by kind of flow.",
            &["kind"],
        )?;
        let h2_connection_errors = family.counters(
            "tollgate_h2_connection_errors_total",
            "Agent HTTP/2 connections that ended in an error, by the RFC 9113 code of tollgate's GOAWAY (enhance_your_calm: an abuse refused), agent_go_away, io or other.",
            &["reason"],
        )?;

        let mut listeners = HashMap::new();
        for name in listener_names {
            // With destination labels the series depend on the traffic and are made on demand.
            let series = ListenerSeries {
                requests: (!label_destination).then(|| {
                    Reason::ALL
                        .iter()
                        .map(|reason| {
                            requests.with_label_values(&[
                                name.as_str(),
                                reason.outcome().as_str(),
                                reason.as_str(),
                            ])
                        })
                        .collect()
                }),
                duration: durations.with_label_values(&[name.as_str()]),
                active: active.with_label_values(&[name.as_str()]),
            };
            listeners.insert(name.clone(), series);
        }
        Ok(Metrics {
            id: OwnerId::new(),
            registry,
            listeners,
            by_destination: label_destination.then_some(requests),
            policy_eval_rego: policy_eval.with_label_values(&["rego"]),
            policy_eval_wasm: policy_eval.with_label_values(&["wasm"]),
            upstream_duration: upstream_duration.with_label_values::<&str>(&[]),
            reload_success: reloads.with_label_values(&["success"]),
            reload_failure: reloads.with_label_values(&["failure"]),
            reloads: Source::ALL
                .iter()
                .flat_map(|source| {
                    ["success", "failure"].map(|result| {
                        reloads_by_source.with_label_values(&[source.as_str(), result])
                    })
                })
                .collect(),
            policy_info,
            credential_issued,
            credential_cache_hits,
            credential_errors,
            identity_rejections: SvidRejection::ALL
                .iter()
                .map(|reason| identity_rejections.with_label_values(&[reason.as_str()]))
                .collect(),
            tls_errors_agent: tls_errors.with_label_values(&["agent"]),
            tls_errors_origin: tls_errors.with_label_values(&["origin"]),
            kills_active,
            pending_restart,
            tls_agent_unknown_ca,
            admin_refusals: AdminRefusal::ALL
                .iter()
                .map(|reason| admin_refusals.with_label_values(&[reason.as_str()]))
                .collect(),
            decision_log_dropped,
            flows_killed: FlowKind::ALL
                .iter()
                .map(|kind| flows_killed.with_label_values(&[kind.as_str()]))
                .collect(),
            h2_connection_errors: H2ConnectionError::labels()
                .map(|label| (label, h2_connection_errors.with_label_values(&[label])))
                .collect(),
        })
    }

    /// The admin API refused a caller.
    pub fn admin_refused(&self, reason: AdminRefusal) {
        if let Some(counter) = AdminRefusal::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.admin_refusals.get(i))
        {
            counter.inc();
        }
    }

    /// Counts one open flow a kill (or a task's end) cut.
    pub fn flow_killed(&self, kind: FlowKind) {
        if let Some(counter) = FlowKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.flows_killed.get(i))
        {
            counter.inc();
        }
    }

    /// Counts one agent HTTP/2 connection that ended in an error.
    pub fn h2_connection_error(&self, error: H2ConnectionError) {
        let label = error.label();
        if let Some((_, counter)) = self.h2_connection_errors.iter().find(|(l, _)| *l == label) {
            counter.inc();
        }
    }

    /// Records one decision-log line: its closed reason (which says its outcome) and duration.
    pub fn record_request(
        &self,
        listener: &str,
        reason: Reason,
        destination: Option<&str>,
        seconds: f64,
    ) {
        let Some(series) = self.listeners.get(listener) else {
            return;
        };
        series.duration.observe(seconds);
        if let Some(vec) = &self.by_destination {
            // Only destinations the policy let through are labelled: anyone can ask for random
            // hosts, and denied ones must not grow the series without bound.
            let destination = match reason.outcome() {
                Outcome::Deny => "",
                Outcome::Allow | Outcome::Error => destination.unwrap_or(""),
            };
            let fresh = || (0, HashMap::new());
            per_thread::with(
                &DESTINATION_COUNTERS,
                self.id,
                fresh,
                |(cached, by_reason)| {
                    let hit = by_reason
                        .get(&reason)
                        .and_then(|by_listener| by_listener.get(listener))
                        .and_then(|by_destination| by_destination.get(destination));
                    if let Some(counter) = hit {
                        counter.inc();
                        return;
                    }
                    let counter = vec.with_label_values(&[
                        listener,
                        reason.outcome().as_str(),
                        reason.as_str(),
                        destination,
                    ]);
                    counter.inc();
                    if *cached < DESTINATION_CACHE_LIMIT {
                        *cached += 1;
                        by_reason
                            .entry(reason)
                            .or_default()
                            .entry(listener.to_string())
                            .or_default()
                            .insert(destination.to_string(), counter);
                    }
                },
            );
            return;
        }
        if let Some(counter) = series
            .requests
            .as_ref()
            .and_then(|counters| counters.get(reason.index()))
        {
            counter.inc();
        }
    }

    /// One policy evaluation by `engine` took `micros`.
    pub fn observe_policy_eval(&self, engine: crate::config::EngineKind, micros: u64) {
        let histogram = match engine {
            crate::config::EngineKind::Rego => &self.policy_eval_rego,
            crate::config::EngineKind::Wasm => &self.policy_eval_wasm,
        };
        histogram.observe(micros as f64 / 1_000_000.0);
    }

    /// The origin answered (or failed) after `seconds`.
    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    /// A policy reload ended.
    pub fn policy_reloaded(&self, success: bool) {
        if success {
            self.reload_success.inc();
        } else {
            self.reload_failure.inc();
        }
    }

    /// Publishes the revision in force (and only it).
    pub fn set_policy_info(&self, revision: &str, engine: &str) {
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[revision, engine])
            .set(1);
    }

    /// A peer's certificate was refused as an X.509-SVID.
    pub fn identity_rejected(&self, reason: SvidRejection) {
        if let Some(counter) = SvidRejection::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.identity_rejections.get(i))
        {
            counter.inc();
        }
    }

    /// A watched value was rebuilt (`ok`) or could not be.
    pub fn reloaded(&self, source: Source, ok: bool) {
        let at = Source::ALL.iter().position(|s| *s == source).unwrap_or(0) * 2 + usize::from(!ok);
        if let Some(counter) = self.reloads.get(at) {
            counter.inc();
        }
    }

    /// A TLS handshake with an agent failed.
    pub fn agent_tls_error(&self) {
        self.tls_errors_agent.inc();
    }

    /// An agent refused the interception CA (its handshake ended with `UnknownCA`).
    pub fn agent_unknown_ca(&self) {
        self.tls_agent_unknown_ca.inc();
    }

    /// Publishes the keys pending a restart after the latest reload (and only them).
    pub fn set_pending_restart(&self, keys: &[String]) {
        self.pending_restart.reset();
        for key in keys {
            self.pending_restart
                .with_label_values(&[key.as_str()])
                .set(1);
        }
    }

    /// A TLS handshake with an origin failed.
    pub fn origin_tls_error(&self) {
        self.tls_errors_origin.inc();
    }

    /// Counts an agent connection as open until the guard drops.
    pub fn connection_opened(&self, listener: &str) -> Option<ConnectionGauge> {
        self.listeners.get(listener).map(|series| {
            series.active.inc();
            ConnectionGauge(series.active.clone())
        })
    }

    /// The text exposition for `GET /metrics`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Decrements `tollgate_active_connections` when the connection ends.
pub struct ConnectionGauge(IntGauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    #[test]
    fn counts_outcomes_under_closed_reasons() {
        let m = Metrics::new(&["agents".to_string()], false).unwrap();
        m.record_request("agents", Reason::Allowed, None, 0.01);
        m.record_request("agents", Reason::MethodNotAllowed, None, 0.01);
        m.record_request(
            "agents",
            Reason::of_policy_deny("a custom policy's free text"),
            None,
            0.01,
        );
        m.record_request("agents", Reason::UpstreamTimeout, None, 0.01);
        let t = text(&m);
        assert!(
            t.contains(
                r#"tollgate_requests_total{decision="allow",listener="agents",reason="allowed"} 1"#
            ),
            "{t}"
        );
        assert!(t.contains(r#"tollgate_requests_total{decision="deny",listener="agents",reason="method_not_allowed"} 1"#));
        assert!(t.contains(
            r#"tollgate_requests_total{decision="deny",listener="agents",reason="policy_denied"} 1"#
        ));
        assert!(t.contains(r#"tollgate_requests_total{decision="error",listener="agents",reason="upstream_timeout"} 1"#));
        assert!(!t.contains("free text"));
        assert!(t.contains("tollgate_request_duration_seconds_count{listener=\"agents\"} 4"));
    }

    #[test]
    fn labels_destination_only_when_asked() {
        let m = Metrics::new(&["agents".to_string()], true).unwrap();
        m.record_request("agents", Reason::Allowed, Some("api.github.com"), 0.01);
        m.record_request(
            "agents",
            Reason::DestinationNotAllowed,
            Some("random-1.example"),
            0.01,
        );
        let t = text(&m);
        assert!(t.contains(r#"destination="api.github.com""#), "{t}");
        assert!(
            !t.contains("random-1.example"),
            "denied destinations are not labelled: {t}"
        );
        let m = Metrics::new(&["agents".to_string()], false).unwrap();
        m.record_request("agents", Reason::Allowed, Some("api.github.com"), 0.01);
        assert!(!text(&m).contains("destination=\""));
    }

    #[test]
    fn tracks_active_connections_with_a_guard() {
        let m = Metrics::new(&["agents".to_string()], false).unwrap();
        let guard = m.connection_opened("agents");
        assert!(text(&m).contains("tollgate_active_connections{listener=\"agents\"} 1"));
        drop(guard);
        assert!(text(&m).contains("tollgate_active_connections{listener=\"agents\"} 0"));
    }

    #[test]
    fn shows_only_the_revision_in_force() {
        let m = Metrics::new(&["agents".to_string()], false).unwrap();
        m.set_policy_info("aaa", "rego");
        m.set_policy_info("bbb", "rego");
        let t = text(&m);
        assert!(t.contains(r#"tollgate_policy_info{engine="rego",revision="bbb"} 1"#));
        assert!(!t.contains("aaa"));
    }
}
