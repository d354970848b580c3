//! Reload: how each watched value is rebuilt, the one loop that polls them, and where every
//! rebuild is counted (`tollgate_reloads_total{source,result}`, and for the policy also
//! `tollgate_policy_reloads_total{result}`, SPEC §8) and logged.
//!
//! What reloads, and from what:
//! - the policy, the credentials and the upstream settings (one [`Live`] value): `POST
//!   /v1/reload`, SIGHUP, and with `policy.watch` a change under the policy path or its data
//!   file. The configuration file is read again; a configuration or policy that does not load
//!   keeps the running one. Keys only a restart applies (listeners, admin, identity, limits,
//!   telemetry…: [`crate::config::restart`]) are named in the reply, the log and
//!   `tollgate_config_pending_restart` when they changed; the rest is applied.
//! - trust bundles: their files, and Workload API pushes;
//! - every TLS listener's configuration (and the admin listener's): its certificate and key
//!   files (or tollgate's own SVID from the Workload API), and the trust bundles;
//! - intent-token keys: each issuer's JWKS file;
//! - static secrets and oauth2 client secrets: their files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{ClientAuth, Config, DataSource, KeyPairPaths};
use crate::identity::svid::TrustBundles;
use crate::identity::workload_api::WorkloadApiSource;
use crate::intent_token::IntentIssuers;
use crate::proxy::Live;
use crate::rebuild_thread::RebuildThread;
use crate::telemetry::metrics::Metrics;
use crate::tls::ListenerTls;
use crate::upstream::Upstream;
use crate::watch::{Inputs, POLL_INTERVAL, Rebuilt, Reloaded, Source, Watched};

use super::start::{StartError, build_credentials, load_policy, trust_bundles};

/// The policy, credentials and upstream client from `config`, first built at start-up
/// (`upstream` is built before any socket is bound: [`build_upstream`]).
pub fn live(
    config: &Config,
    config_path: Option<PathBuf>,
    metrics: &Arc<Metrics>,
    upstream: Upstream,
) -> Result<Arc<Watched<Live>>, StartError> {
    let initial = Live {
        policy: Arc::new(load_policy(config)?),
        credentials: Arc::new(build_credentials(config, metrics, None)?),
        upstream: Arc::new(upstream),
        pending_restart: Vec::new(),
    };
    let started = config.clone();
    let mut inputs = Inputs::none();
    if config.policy.watch {
        if let Some(path) = config.policy.source.path() {
            inputs = inputs.tree(path);
        }
        if let DataSource::File(path) = &config.policy.data {
            inputs = inputs.file(path);
        }
    }
    let metrics = metrics.clone();
    let rebuild = move |running: &Arc<Live>| match reread(
        config_path.as_deref(),
        &started,
        &metrics,
        running,
    ) {
        Ok(live) => Rebuilt::Ok(live),
        Err(why) => Rebuilt::Failed(why),
    };
    Ok(Arc::new(Watched::new(
        Source::Policy,
        "policy",
        initial,
        inputs,
        rebuild,
    )))
}

/// The upstream client of `config`.
pub fn build_upstream(config: &Config) -> Result<Upstream, StartError> {
    Upstream::new(&config.upstream)
        .map_err(|e| StartError::Config(format!("{}: upstream.ca: {e}", config.origin)))
}

/// Reads the configuration again and builds its policy, credentials (keeping the running
/// credentials that did not change, with their cached tokens) and upstream client; names the
/// keys that differ from `started` and need a restart.
fn reread(
    config_path: Option<&std::path::Path>,
    started: &Config,
    metrics: &Metrics,
    running: &Live,
) -> Result<Live, String> {
    let config = match config_path {
        Some(path) => crate::config::load_file(path),
        None => crate::config::builtin(),
    }
    .map_err(|errors| errors.to_string())?;
    let policy = load_policy(&config).map_err(|e| e.to_string())?;
    // On reload only: at start-up there is no better revision to keep, and a mistyped
    // decision still fails closed on every request (policy_error).
    policy.check_decision_type().map_err(|e| e.to_string())?;
    let credentials = build_credentials(&config, metrics, Some(&running.credentials))
        .map_err(|e| e.to_string())?;
    let upstream = build_upstream(&config).map_err(|e| e.to_string())?;
    Ok(Live {
        policy: Arc::new(policy),
        credentials: Arc::new(credentials),
        upstream: Arc::new(upstream),
        pending_restart: crate::config::restart::pending_restart(started, &config),
    })
}

/// The trust bundles: the configured files, plus the Workload API's bundles for trust domains
/// the files do not name (a bundle an operator pinned in a file wins). A broken file keeps the
/// last good files' bundles in force, still merged with the Workload API's latest.
pub fn trust_bundles_watched(
    config: &Config,
    workload_api: Option<Arc<WorkloadApiSource>>,
) -> Result<Arc<Watched<TrustBundles>>, StartError> {
    let files = trust_bundles(config)?;
    let initial = merge(&files, workload_api.as_deref());
    let mut inputs = Inputs::none();
    for path in config.identity.trust_domains.values() {
        inputs = inputs.file(path);
    }
    if let Some(source) = &workload_api {
        let source = source.clone();
        inputs = inputs.version(move || source.version());
    }
    let last_good = Mutex::new(files);
    let config = config.clone();
    let rebuild = move |_: &Arc<TrustBundles>| {
        let mut last = last_good.lock().unwrap_or_else(|e| e.into_inner());
        match trust_bundles(&config) {
            Ok(files) => {
                *last = files;
                Rebuilt::Ok(merge(&last, workload_api.as_deref()))
            }
            Err(why) if workload_api.is_some() => {
                Rebuilt::Degraded(merge(&last, workload_api.as_deref()), why.to_string())
            }
            Err(why) => Rebuilt::Failed(why.to_string()),
        }
    };
    Ok(Arc::new(Watched::new(
        Source::TrustBundles,
        "identity.trust_domains",
        initial,
        inputs,
        rebuild,
    )))
}

/// File bundles, plus the Workload API's for trust domains the files do not name.
fn merge(files: &TrustBundles, workload_api: Option<&WorkloadApiSource>) -> TrustBundles {
    let mut merged = files.clone();
    if let Some(source) = workload_api {
        for (domain, certs) in source.bundles() {
            merged.entry(domain).or_insert(certs);
        }
    }
    merged
}

/// How one listener's TLS is built (`what`: its configuration key, for messages).
pub struct TlsSpec {
    pub what: String,
    pub files: Option<KeyPairPaths>,
    pub client_auth: ClientAuth,
    /// Also build the verifier asked with inside intercepted tunnels.
    pub inner: bool,
}

/// A listener's TLS, rebuilt when its files, the trust bundles or tollgate's own SVID change.
pub fn listener_tls_watched(
    spec: TlsSpec,
    workload_api: Option<Arc<WorkloadApiSource>>,
    bundles: &Arc<Watched<TrustBundles>>,
) -> Result<Arc<Watched<ListenerTls>>, String> {
    let build = {
        let bundles = bundles.clone();
        let workload_api = workload_api.clone();
        let (files, client_auth, inner) = (spec.files.clone(), spec.client_auth, spec.inner);
        move || {
            crate::tls::listener_tls(
                files.as_ref(),
                workload_api.as_deref(),
                &bundles.load(),
                client_auth,
                inner,
            )
        }
    };
    let initial = build()?;
    let mut inputs = Inputs::none().after(bundles);
    match &spec.files {
        Some(files) => inputs = inputs.file(&files.cert).file(&files.key),
        None => {
            if let Some(source) = &workload_api {
                let source = source.clone();
                inputs = inputs.version(move || source.version());
            }
        }
    }
    Ok(Arc::new(Watched::new(
        Source::ListenerTls,
        spec.what,
        initial,
        inputs,
        move |_| match build() {
            Ok(tls) => Rebuilt::Ok(tls),
            Err(why) => Rebuilt::Failed(why),
        },
    )))
}

/// Everything the reload loop polls, in dependency order (bundles before the TLS built on
/// them).
pub struct Watchers {
    pub bundles: Option<Arc<Watched<TrustBundles>>>,
    pub tls: Vec<Arc<Watched<ListenerTls>>>,
    pub issuers: Arc<IntentIssuers>,
    pub live: Arc<Watched<Live>>,
    /// `policy.watch`: poll the policy files too.
    pub policy_watch: bool,
    /// Where every poll (and every reload) runs.
    pub rebuilds: RebuildThread,
}

impl Watchers {
    /// One pass over every watched value. Blocking: runs on the rebuild thread.
    fn poll(&self) -> (Vec<Reloaded<()>>, Option<Reloaded<Live>>) {
        let mut changes = Vec::new();
        if let Some(bundles) = &self.bundles {
            changes.extend(bundles.poll().map(Reloaded::erase));
        }
        for tls in &self.tls {
            changes.extend(tls.poll().map(Reloaded::erase));
        }
        changes.extend(self.issuers.poll());
        let policy = if self.policy_watch {
            self.live.poll()
        } else {
            None
        };
        changes.extend(self.live.current().credentials.poll_secrets());
        (changes, policy)
    }
}

/// Polls every watched value every [`POLL_INTERVAL`] (and at once on a Workload API push),
/// counts and logs what changed, and keeps the credential cache small.
pub async fn run(
    watchers: Watchers,
    workload_api: Option<Arc<WorkloadApiSource>>,
    metrics: Arc<Metrics>,
) {
    const SWEEP_EVERY: u64 = 60;
    let watchers = Arc::new(watchers);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut pushes = workload_api.as_ref().map(|source| source.subscribe());
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => ticks += 1,
            pushed = async {
                match pushes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => if !pushed { pushes = None; },
        }
        let polled = {
            let polling = watchers.clone();
            watchers.rebuilds.run(move || polling.poll()).await
        };
        // Counted and logged after the whole pass: when "trust bundles reloaded" is logged,
        // the TLS configs built on them are in force too.
        if let Ok((changes, policy)) = polled {
            for change in &changes {
                report(&metrics, change);
            }
            if let Some(policy) = &policy {
                report_policy(&metrics, policy);
            }
        }
        if ticks.is_multiple_of(SWEEP_EVERY) {
            watchers.live.current().credentials.cache().sweep();
        }
    }
}

/// Counts and logs one rebuild (every source but the policy: [`report_policy`]).
fn report(metrics: &Metrics, change: &Reloaded<()>) {
    metrics.reloaded(change.source, change.outcome.is_ok());
    let what = &*change.what;
    match (change.source, &change.outcome) {
        (Source::TrustBundles, Ok(_)) => tracing::info!(what, "trust bundles reloaded"),
        (Source::TrustBundles, Err(why)) => {
            tracing::error!(what, error = %why, "trust bundle reload failed; the last good bundles stay in force")
        }
        (Source::ListenerTls, Ok(_)) => tracing::info!(what, "TLS configuration rebuilt"),
        (Source::ListenerTls, Err(why)) => {
            tracing::error!(what, error = %why, "cannot rebuild a TLS configuration; keeping the last good one")
        }
        (Source::IntentTokenKeys, Ok(_)) => tracing::info!(what, "intent token keys reloaded"),
        (Source::IntentTokenKeys, Err(why)) => {
            tracing::error!(what, error = %why, "intent token keys not reloaded; the last good keys stay in force")
        }
        (Source::Secret, Ok(_)) => {
            tracing::info!(credential = what, "secret file changed: re-read")
        }
        (Source::Secret, Err(why)) => {
            tracing::error!(credential = what, error = %why, "secret file changed and cannot be read: credential unavailable")
        }
        (Source::Policy, _) => {}
    }
}

/// Counts and logs a reload of the policy and credentials, and publishes the revision in force.
fn report_policy(metrics: &Metrics, reloaded: &Reloaded<Live>) {
    metrics.reloaded(Source::Policy, reloaded.outcome.is_ok());
    metrics.policy_reloaded(reloaded.outcome.is_ok());
    match &reloaded.outcome {
        Ok(live) => {
            let revision = &live.policy.revision;
            metrics.set_policy_info(revision, live.policy.engine.as_str());
            metrics.set_pending_restart(&live.pending_restart);
            tracing::info!(revision = %revision, "reloaded: policy revision in force");
            if !live.pending_restart.is_empty() {
                tracing::warn!(
                    pending_restart = %live.pending_restart.join(", "),
                    "reloaded, but these changed keys need a restart to take effect"
                );
            }
        }
        Err(why) => {
            tracing::warn!(error = %why, "reload failed; the running configuration and policy stay in force");
        }
    }
}

/// `POST /v1/reload` and SIGHUP: rebuild the policy and credentials now, on the rebuild thread.
pub struct ConfigReloader {
    pub live: Arc<Watched<Live>>,
    pub metrics: Arc<Metrics>,
    pub rebuilds: RebuildThread,
}

impl crate::admin::Reload for ConfigReloader {
    fn reload(&self) -> crate::admin::ReloadOutcome {
        let (live, metrics) = (self.live.clone(), self.metrics.clone());
        Box::pin(self.rebuilds.run(move || {
            let reloaded = live.reload();
            report_policy(&metrics, &reloaded);
            reloaded.outcome.map(|live| crate::admin::Reloaded {
                revision: live.policy.revision.to_string(),
                pending_restart: live.pending_restart.clone(),
            })
        }))
    }
}

/// SIGTERM, SIGINT and SIGHUP, taken from their default action (which ends the process) before
/// tollgate says it is ready: a SIGHUP sent as soon as `/readyz` answers reloads, and a SIGTERM
/// drains, instead of killing the process.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Takes the three signals (one that cannot be taken keeps its default action).
    pub fn take() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP reloads meanwhile.
    pub async fn wait_for_shutdown(mut self, reloader: &dyn crate::admin::Reload) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            tokio::select! {
                _ = next(&mut self.term) => return,
                _ = next(&mut self.int) => return,
                _ = next(&mut self.hup) => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = reloader.reload().await;
                }
            }
        }
    }
}
