//! Start-up: turn a validated [`Config`] into running listeners, in an order that fails early
//! (policy and certificates before any socket is bound) and reports readiness only when every
//! listener accepts. Also the pieces `tollgate check` runs on its own.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::{AdminState, AdminTls, Health, Reload};
use crate::config::{AdminAddress, ClientAuth, Config, ListenerMode};
use crate::credentials::CredentialStore;
use crate::identity::svid::TrustBundles;
use crate::identity::workload_api::WorkloadApiSource;
use crate::identity::{Caller, SpiffeId};
use crate::intent_token::IntentIssuers;
use crate::kill::KillSwitch;
use crate::policy::PolicyRevision;
use crate::proxy::{Live, Proxy};
use crate::rebuild_thread::RebuildThread;
use crate::server::lifecycle::Drain;
use crate::server::{BoundListener, ConnLimits, Server};
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::Metrics;
use crate::tls::ListenerTls;
use crate::tls::intercept::InterceptAuthority;
use crate::watch::Watched;

use super::reload::{self, ConfigReloader, TlsSpec, Watchers};

/// Why tollgate could not start; the variant decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something the configuration references is unusable (exit 2).
    #[error("{0}")]
    Config(String),
    /// The environment refused (port in use, unwritable state dir…) (exit 1).
    #[error("{0}")]
    Runtime(String),
}

/// Options of `tollgate run` that are not in the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--dry-run`: evaluate and log every decision, enforce none.
    pub dry_run: bool,
    /// Print the local-development banner (built-in configuration).
    pub banner: bool,
    /// The configuration file (`None`: built-in), re-read on reload.
    pub config_path: Option<PathBuf>,
}

/// Where the development CA lives: `$TOLLGATE_STATE_DIR`, else `$XDG_STATE_HOME/tollgate`,
/// else `~/.local/state/tollgate`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tollgate");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/tollgate")
}

/// Loads the trust bundle of every configured trust domain (also used by `tollgate check`).
pub fn trust_bundles(config: &Config) -> Result<TrustBundles, StartError> {
    let mut bundles = TrustBundles::new();
    for (domain, path) in &config.identity.trust_domains {
        let certs = crate::identity::svid::load_bundle(path).map_err(|e| {
            StartError::Config(format!(
                "{}: identity.trust_domains.{domain}.bundle: {e}",
                config.origin
            ))
        })?;
        bundles.insert(domain.clone(), certs);
    }
    Ok(bundles)
}

/// The SVID verifier for a listener's `client_auth` (`tollgate check`).
pub fn client_verifier(
    config: &Config,
    bundles: &TrustBundles,
    mode: ClientAuth,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, StartError> {
    crate::tls::client_verifier(bundles, mode)
        .map_err(|e| StartError::Config(format!("{}: identity.trust_domains: {e}", config.origin)))
}

/// Builds the credential store (start-up, reload); an unusable signing key or CA is a
/// configuration error, an unreadable secret only makes its credential unavailable.
pub fn build_credentials(
    config: &Config,
    metrics: &Metrics,
    previous: Option<&CredentialStore>,
) -> Result<CredentialStore, StartError> {
    CredentialStore::build(
        &config.credentials,
        &config.agent_secrets,
        metrics,
        previous,
        false,
    )
    .map_err(|errors| StartError::Config(lines(config, &errors)))
}

/// Loads the policy named by the configuration (also used by `tollgate check`).
pub fn load_policy(config: &Config) -> Result<PolicyRevision, StartError> {
    PolicyRevision::load(&config.policy)
        .map_err(|e| StartError::Config(format!("{}: policy: {e}", config.origin)))
}

/// One line per error, each naming the configuration.
fn lines<E: std::fmt::Display>(config: &Config, errors: &[E]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", config.origin))
        .collect();
    lines.join("\n")
}

/// Everything running, once started.
pub struct Started {
    pub listeners: Vec<BoundListener>,
    pub admin: BoundAdmin,
    /// `admin.address` as bound (a TCP port 0 resolved), for logs and the banner.
    pub admin_addr: String,
    /// `admin.metrics_address`, bound.
    pub metrics: Option<TcpListener>,
    pub server: Arc<Server>,
    pub admin_state: Arc<AdminState>,
    pub admin_tls: Option<Arc<AdminTls>>,
    pub watchers: Watchers,
    pub workload_api: Option<Arc<WorkloadApiSource>>,
    pub drain: Drain,
    pub decision_log: DecisionLog,
    pub health: Arc<Health>,
    pub reloader: Arc<dyn Reload>,
    pub ca_path: PathBuf,
    pub dry_run: bool,
}

/// Loads, checks and binds everything, in an order that fails before a socket is bound when
/// the configuration cannot work; spawns nothing yet.
pub async fn start(config: &Config, options: &RunOptions) -> Result<Started, StartError> {
    let intercept = match &config.intercept_ca {
        Some(paths) => InterceptAuthority::load(&paths.cert, &paths.key)
            .map_err(|e| StartError::Config(format!("{}: intercept_ca: {e}", config.origin)))?,
        None => InterceptAuthority::development(&state_dir())
            .map_err(|e| StartError::Runtime(format!("development CA: {e}")))?,
    };
    let upstream = reload::build_upstream(config)?;
    let workload_api = workload_api(config).await?;
    let bundles = reload::trust_bundles_watched(config, workload_api.clone())?;
    let (listeners, mut tls) = bind_listeners(config, &bundles, &workload_api).await?;
    let (admin, admin_addr) = bind_admin(config).await?;
    let (metrics_listener, metrics_port) = bind_metrics(config).await?;

    let listener_names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let metrics = Arc::new(
        Metrics::new(&listener_names, config.telemetry.metrics_label_destination)
            .map_err(|e| StartError::Runtime(e.to_string()))?,
    );
    let decision_log = DecisionLog::start(
        &config.telemetry.decision_log,
        config.telemetry.decision_log_queue,
        metrics.decision_log_dropped.clone(),
    )
    .map_err(|e| StartError::Runtime(format!("telemetry.decision_log: {e}")))?;
    let kills = open_kills(config, &metrics)?;
    let intent_issuers = Arc::new(
        IntentIssuers::load(&config.intent_issuers)
            .map_err(|errors| StartError::Config(lines(config, &errors)))?,
    );
    let live = reload::live(config, options.config_path.clone(), &metrics, upstream)?;
    crate::policy::prepare_on_idle(live.clone());
    {
        let running = live.load();
        metrics.set_policy_info(&running.policy.revision, running.policy.engine.as_str());
        if !config.credentials.is_empty() {
            tracing::info!(credentials = config.credentials.len(), "credentials ready");
        }
    }
    let dry_run = options.dry_run || config.policy.dry_run;
    let proxy = Arc::new(Proxy {
        live: live.clone(),
        decision_log: decision_log.clone(),
        metrics: metrics.clone(),
        intent_issuers: intent_issuers.clone(),
        kills: kills.clone(),
        in_flight: crate::proxy::in_flight::InFlight::new(config.limits.max_requests_per_caller),
        dry_run,
    });
    let (drain, lifecycle) = crate::server::lifecycle::lifecycle();
    let ca_path = intercept.ca_cert_path.clone();
    let server = Arc::new(Server::new(
        proxy,
        intercept,
        lifecycle,
        config.limits.max_connections,
        default_caller(config),
        ConnLimits {
            max_header_bytes: config.limits.max_header_bytes,
            header_read_timeout: config.limits.header_read_timeout,
            max_concurrent_streams: config.limits.max_concurrent_streams,
        },
        listeners
            .iter()
            .map(|l| l.local_addr.port())
            .chain(admin.tcp_port())
            .chain(metrics_port)
            .collect(),
    ));
    let admin_tls = admin_tls(config, &bundles, &workload_api, &admin_addr)?;
    if let Some(admin) = &admin_tls {
        tls.push(admin.config.clone());
    }
    let rebuilds = RebuildThread::start()
        .map_err(|e| StartError::Runtime(format!("the rebuild thread: {e}")))?;
    let reloader: Arc<dyn Reload> = Arc::new(ConfigReloader {
        live: live.clone(),
        metrics: metrics.clone(),
        rebuilds: rebuilds.clone(),
    });
    let health = Arc::new(Health::default());
    let admin_state = Arc::new(AdminState {
        health: health.clone(),
        metrics,
        kills,
        credentials: {
            let live = live.clone();
            Arc::new(move || live.load().credentials.clone())
        },
        recent: decision_log.recent.clone(),
        reloader: reloader.clone(),
    });
    let watchers = Watchers {
        bundles: (!config.identity.trust_domains.is_empty() || workload_api.is_some())
            .then_some(bundles),
        tls,
        issuers: intent_issuers,
        live,
        policy_watch: config.policy.watch,
        rebuilds,
    };
    Ok(Started {
        listeners,
        admin,
        admin_addr,
        metrics: metrics_listener,
        server,
        admin_state,
        admin_tls,
        watchers,
        workload_api,
        drain,
        decision_log,
        health,
        reloader,
        ca_path,
        dry_run,
    })
}

/// Connects to the SPIFFE Workload API, when configured.
async fn workload_api(config: &Config) -> Result<Option<Arc<WorkloadApiSource>>, StartError> {
    let Some(endpoint) = &config.identity.workload_api else {
        return Ok(None);
    };
    let source = WorkloadApiSource::connect(endpoint)
        .await
        .map_err(|e| StartError::Runtime(format!("identity.workload_api: {e}")))?;
    tracing::info!(endpoint = %endpoint, trust_domains = source.bundles().len(), "connected to the SPIFFE Workload API");
    Ok(Some(Arc::new(source)))
}

/// Binds every listener, with its TLS built first (a broken certificate fails start-up
/// before any socket is bound). Returns the listeners and their watched TLS.
async fn bind_listeners(
    config: &Config,
    bundles: &Arc<Watched<TrustBundles>>,
    workload_api: &Option<Arc<WorkloadApiSource>>,
) -> Result<(Vec<BoundListener>, Vec<Arc<Watched<ListenerTls>>>), StartError> {
    let mut bound = Vec::new();
    let mut watched = Vec::new();
    for listener in &config.listeners {
        let what = format!("listeners.{}.tls", listener.name);
        let tls = if listener.tls.is_some() || listener.tls_from_workload_api {
            let spec = TlsSpec {
                what: what.clone(),
                files: listener.tls.clone(),
                client_auth: listener.client_auth,
                inner: true,
            };
            let tls = reload::listener_tls_watched(spec, workload_api.clone(), bundles)
                .map_err(|e| StartError::Config(format!("{}: {what}: {e}", config.origin)))?;
            watched.push(tls.clone());
            Some(tls)
        } else {
            None
        };
        let tcp = TcpListener::bind(listener.address).await.map_err(|e| {
            StartError::Runtime(format!(
                "listener {} cannot bind {}: {e}",
                listener.name, listener.address
            ))
        })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|e| StartError::Runtime(format!("listener {}: {e}", listener.name)))?;
        let svid_id = workload_api
            .as_ref()
            .and_then(|source| source.svid())
            .map(|(_, _, id)| id);
        let default_caller = listener_caller(
            config.identity.workload_spiffe_id.as_ref(),
            listener.mode,
            svid_id,
        );
        bound.push(BoundListener {
            default_caller,
            config: listener.clone(),
            tcp,
            tls,
            local_addr,
        });
    }
    Ok((bound, watched))
}

/// The admin listener, on TCP or on a Unix socket.
pub enum BoundAdmin {
    /// `IP:port`, with or without mTLS.
    Tcp(TcpListener),
    /// `unix:///path`, peers checked by UID.
    Unix(crate::admin::unix::UnixAdmin),
}

impl BoundAdmin {
    /// The TCP port, when it is TCP (the loop guard refuses connections to tollgate's ports).
    fn tcp_port(&self) -> Option<u16> {
        match self {
            BoundAdmin::Tcp(listener) => listener.local_addr().ok().map(|a| a.port()),
            BoundAdmin::Unix(_) => None,
        }
    }
}

/// Binds the admin listener.
async fn bind_admin(config: &Config) -> Result<(BoundAdmin, String), StartError> {
    let address = match &config.admin.address {
        AdminAddress::Tcp(address) => *address,
        AdminAddress::Unix(path) => {
            let admin = crate::admin::unix::bind(path, config.admin.allowed_uids.as_deref())
                .map_err(|e| StartError::Runtime(format!("admin cannot bind {e}")))?;
            tracing::info!(
                socket = %path.display(),
                owner_uid = admin.owner_uid,
                allowed_uids = ?admin.allowed_uids,
                "admin API on a Unix socket (mode 0600, peer UID checked)"
            );
            return Ok((BoundAdmin::Unix(admin), config.admin.address.to_string()));
        }
    };
    let admin = TcpListener::bind(address)
        .await
        .map_err(|e| StartError::Runtime(format!("admin cannot bind {address}: {e}")))?;
    let addr = admin
        .local_addr()
        .map_err(|e| StartError::Runtime(format!("admin: {e}")))?;
    Ok((BoundAdmin::Tcp(admin), addr.to_string()))
}

/// Binds `admin.metrics_address`, when set; returns it and its port.
async fn bind_metrics(config: &Config) -> Result<(Option<TcpListener>, Option<u16>), StartError> {
    let Some(address) = config.admin.metrics_address else {
        return Ok((None, None));
    };
    let listener = TcpListener::bind(address).await.map_err(|e| {
        StartError::Runtime(format!("admin.metrics_address cannot bind {address}: {e}"))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| StartError::Runtime(format!("admin.metrics_address: {e}")))?
        .port();
    Ok((Some(listener), Some(port)))
}

/// The admin listener's mTLS, when configured.
fn admin_tls(
    config: &Config,
    bundles: &Arc<Watched<TrustBundles>>,
    workload_api: &Option<Arc<WorkloadApiSource>>,
    admin_addr: &str,
) -> Result<Option<Arc<AdminTls>>, StartError> {
    let Some(paths) = &config.admin.tls else {
        return Ok(None);
    };
    let spec = TlsSpec {
        what: "admin.tls".into(),
        files: Some(paths.clone()),
        client_auth: ClientAuth::Required,
        inner: false,
    };
    let tls = reload::listener_tls_watched(spec, workload_api.clone(), bundles)
        .map_err(|e| StartError::Config(format!("{}: admin.tls: {e}", config.origin)))?;
    let allowed: Vec<String> = config
        .admin
        .allowed_spiffe_ids
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(address = %admin_addr, allowed_spiffe_ids = ?allowed, "admin API requires mTLS with an X.509-SVID");
    Ok(Some(Arc::new(AdminTls {
        config: tls,
        allowed: config.admin.allowed_spiffe_ids.clone(),
    })))
}

/// Opens the kill switch (kills restored from `admin.kill_file` are in force at once).
fn open_kills(config: &Config, metrics: &Metrics) -> Result<Arc<KillSwitch>, StartError> {
    let kills = Arc::new(
        KillSwitch::open(config.admin.kill_file.clone())
            .map_err(|e| StartError::Config(format!("{}: admin.kill_file: {e}", config.origin)))?,
    );
    metrics
        .kills_active
        .set(i64::try_from(kills.active()).unwrap_or(i64::MAX));
    if kills.active() > 0 {
        tracing::warn!(
            kills = kills.active(),
            "kills restored from admin.kill_file are in force"
        );
    }
    Ok(kills)
}

/// Who callers without a verified SVID are (`identity.workload_spiffe_id`).
fn default_caller(config: &Config) -> Caller {
    config
        .identity
        .workload_spiffe_id
        .clone()
        .map_or(Caller::Anonymous, Caller::Authenticated)
}

/// Who callers without a verified SVID are on a listener of `mode`: the configured
/// `identity.workload_spiffe_id`; without one, on a transparent listener, `svid_id` (the SPIFFE
/// ID of tollgate's own SVID from the Workload API: a sidecar's callers are all the pod SPIRE
/// attested); otherwise unauthenticated. A forward listener never takes tollgate's own ID for
/// its callers: they are other workloads.
fn listener_caller(
    configured: Option<&SpiffeId>,
    mode: ListenerMode,
    svid_id: Option<SpiffeId>,
) -> Caller {
    match (configured, mode, svid_id) {
        (Some(id), _, _) => Caller::Authenticated(id.clone()),
        (None, ListenerMode::Transparent, Some(id)) => Caller::Authenticated(id),
        _ => Caller::Anonymous,
    }
}

/// The running [`Live`] value's revision (for the start-up log and the banner).
pub fn revision(live: &Watched<Live>) -> (String, &'static str) {
    let running = live.load();
    (
        running.policy.revision.to_string(),
        running.policy.engine.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transparent_listener_takes_the_workload_api_svid_only_without_a_configured_id() {
        let configured = SpiffeId::parse("spiffe://example.org/ns/agents/sa/configured").unwrap();
        let svid = SpiffeId::parse("spiffe://example.org/ns/agents/sa/pod").unwrap();
        let id = |caller: Caller| caller.spiffe_id().map(|id| id.as_str().to_string());
        assert_eq!(
            id(listener_caller(
                Some(&configured),
                ListenerMode::Transparent,
                Some(svid.clone())
            )),
            Some(configured.as_str().to_string())
        );
        assert_eq!(
            id(listener_caller(
                None,
                ListenerMode::Transparent,
                Some(svid.clone())
            )),
            Some(svid.as_str().to_string())
        );
        assert_eq!(
            id(listener_caller(None, ListenerMode::Forward, Some(svid))),
            None
        );
        assert_eq!(
            id(listener_caller(None, ListenerMode::Transparent, None)),
            None
        );
    }
}
