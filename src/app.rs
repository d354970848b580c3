//! Start-up: turn a validated [`Config`] into running listeners, in an order that fails early
//! (policy and certificates before any socket is bound) and reports readiness only when every
//! listener accepts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::Health;
use crate::config::Config;
use crate::identity::Caller;
use crate::policy::{PolicyRevision, PolicyStore};
use crate::proxy::Proxy;
use crate::server::{BoundListener, ServerContext};
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::Metrics;
use crate::tls::intercept::InterceptAuthority;
use crate::upstream::Upstream;

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

/// Reloads from the configuration file: a configuration or policy that does not load keeps the
/// running revision and says why. The policy (path, data, entrypoint) and the credentials
/// (`credentials`, `agent_secrets`) take effect on reload; listeners, limits and upstream
/// settings need a restart.
struct ConfigReloader {
    config_path: Option<PathBuf>,
    proxy: Arc<Proxy>,
}

impl crate::admin::Reload for ConfigReloader {
    fn reload(&self) -> Result<String, String> {
        let metrics = &self.proxy.metrics;
        let loaded = match &self.config_path {
            Some(path) => crate::config::load_file(path),
            None => crate::config::builtin(),
        }
        .map_err(|errors| errors.to_string())
        .and_then(|config| {
            let revision = load_policy(&config).map_err(|e| e.to_string())?;
            // On reload only: at start-up there is no better revision to keep, and a mistyped
            // decision still fails closed on every request (policy_error).
            revision.check_decision_type().map_err(|e| e.to_string())?;
            let previous = self.proxy.credentials.load_full();
            let store =
                build_credentials(&config, metrics, Some(&previous)).map_err(|e| e.to_string())?;
            Ok((revision, store))
        });
        match loaded {
            Ok((revision, store)) => {
                let id = revision.revision.to_string();
                metrics.set_policy_info(&id, revision.engine.as_str());
                self.proxy.policy.publish(revision);
                self.proxy.credentials.store(Arc::new(store));
                metrics.policy_reloaded(true);
                tracing::info!(revision = %id, "reloaded: policy revision in force");
                Ok(id)
            }
            Err(why) => {
                metrics.policy_reloaded(false);
                tracing::warn!(error = %why, revision = %self.proxy.policy.current().revision, "reload failed; the running configuration and policy stay in force");
                Err(why)
            }
        }
    }
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
pub fn trust_bundles(config: &Config) -> Result<crate::identity::svid::TrustBundles, StartError> {
    let mut bundles = crate::identity::svid::TrustBundles::new();
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

/// The SVID verifier for a listener's `client_auth` (none: no client certificates asked).
pub fn client_verifier(
    config: &Config,
    bundles: &crate::identity::svid::TrustBundles,
    mode: crate::config::ClientAuth,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, StartError> {
    use crate::identity::svid::{ClientAuthMode, SpiffeClientVerifier};
    let mode = match mode {
        crate::config::ClientAuth::None => return Ok(None),
        crate::config::ClientAuth::Optional => ClientAuthMode::Optional,
        crate::config::ClientAuth::Required => ClientAuthMode::Required,
    };
    let verifier = SpiffeClientVerifier::new(bundles, mode).map_err(|e| {
        StartError::Config(format!("{}: identity.trust_domains: {e}", config.origin))
    })?;
    Ok(Some(Arc::new(verifier)))
}

/// Builds the credential store (start-up, reload); an unusable signing key or CA is a
/// configuration error, an unreadable secret only makes its credential unavailable.
pub fn build_credentials(
    config: &Config,
    metrics: &Metrics,
    previous: Option<&crate::credentials::CredentialStore>,
) -> Result<crate::credentials::CredentialStore, StartError> {
    crate::credentials::CredentialStore::build(
        &config.credentials,
        &config.agent_secrets,
        metrics,
        previous,
        false,
    )
    .map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {e}", config.origin))
            .collect();
        StartError::Config(lines.join("\n"))
    })
}

/// Loads the policy named by the configuration (also used by `tollgate check`).
pub fn load_policy(config: &Config) -> Result<PolicyRevision, StartError> {
    PolicyRevision::load(&config.policy)
        .map_err(|e| StartError::Config(format!("{}: policy: {e}", config.origin)))
}

/// Runs the proxy until SIGINT or SIGTERM.
pub async fn run(config: Config, options: RunOptions) -> Result<(), StartError> {
    crate::tls::install_crypto_provider();
    let revision = load_policy(&config)?;
    let revision_id = revision.revision.clone();
    let engine = revision.engine;
    let intercept = match &config.intercept_ca {
        Some(paths) => InterceptAuthority::load(&paths.cert, &paths.key)
            .map_err(|e| StartError::Config(format!("{}: intercept_ca: {e}", config.origin)))?,
        None => InterceptAuthority::development(&state_dir())
            .map_err(|e| StartError::Runtime(format!("development CA: {e}")))?,
    };
    let upstream = Upstream::new(&config.upstream)
        .map_err(|e| StartError::Config(format!("{}: upstream.ca: {e}", config.origin)))?;
    let decision_log = DecisionLog::start(&config.telemetry.decision_log)
        .map_err(|e| StartError::Runtime(format!("telemetry.decision_log: {e}")))?;

    let file_bundles = trust_bundles(&config)?;
    let workload_api = match &config.identity.workload_api {
        None => None,
        Some(endpoint) => {
            let source = crate::identity::workload_api::WorkloadApiSource::connect(endpoint)
                .await
                .map_err(|e| StartError::Runtime(format!("identity.workload_api: {e}")))?;
            tracing::info!(endpoint = %endpoint, trust_domains = source.bundles().len(), "connected to the SPIFFE Workload API");
            Some(Arc::new(source))
        }
    };
    let bundles = crate::watch::merge_bundles(&file_bundles, workload_api.as_deref());
    let mut rotating: Vec<crate::watch::Rotating> = Vec::new();
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let verifier = client_verifier(&config, &bundles, listener.client_auth)?;
        let mut inner_verifier = None;
        let files = listener
            .tls
            .as_ref()
            .map(|p| (p.cert.clone(), p.key.clone()));
        let wants_tls = files.is_some() || listener.tls_from_workload_api;
        let tls = match wants_tls {
            true => {
                let server =
                    crate::watch::listener_tls(files.as_ref(), workload_api.as_deref(), verifier)
                        .map_err(|e| {
                        StartError::Config(format!(
                            "{}: listeners.{}.tls: {e}",
                            config.origin, listener.name
                        ))
                    })?;
                let swappable = Arc::new(arc_swap::ArcSwap::new(server));
                let inner = if listener.client_auth == crate::config::ClientAuth::None {
                    None
                } else {
                    client_verifier(&config, &bundles, crate::config::ClientAuth::Optional)?.map(
                        |v| {
                            Arc::new(arc_swap::ArcSwap::from_pointee(
                                crate::proxy::ctx::InnerVerifier(v),
                            ))
                        },
                    )
                };
                inner_verifier = inner.clone();
                rotating.push(crate::watch::Rotating {
                    files,
                    mode: listener.client_auth,
                    config: swappable.clone(),
                    inner,
                });
                Some(swappable)
            }
            false => None,
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
        bound.push(BoundListener {
            config: listener.clone(),
            tcp,
            tls,
            inner_verifier,
            local_addr,
        });
    }
    let admin = TcpListener::bind(config.admin.address).await.map_err(|e| {
        StartError::Runtime(format!("admin cannot bind {}: {e}", config.admin.address))
    })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| StartError::Runtime(format!("admin: {e}")))?;

    let listener_names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let metrics = Arc::new(
        Metrics::new(&listener_names, config.telemetry.metrics_label_destination)
            .map_err(|e| StartError::Runtime(e.to_string()))?,
    );
    metrics.set_policy_info(&revision_id, engine.as_str());
    let dry_run = options.dry_run || config.policy.dry_run;
    let ca_path = intercept.ca_cert_path.clone();
    let kills = Arc::new(
        crate::kill::KillSwitch::open(config.admin.kill_file.clone())
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
    let (drain, lifecycle) = crate::server::lifecycle::lifecycle();
    let intent_issuers = Arc::new(
        crate::intent_token::IntentIssuers::load(&config.intent_issuers).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {e}", config.origin))
                .collect();
            StartError::Config(lines.join("\n"))
        })?,
    );
    if !intent_issuers.is_empty() {
        tokio::spawn(crate::watch::watch_jwks(intent_issuers.clone()));
    }
    let decision_log_handle = decision_log.clone();
    let credentials = Arc::new(arc_swap::ArcSwap::from_pointee(build_credentials(
        &config, &metrics, None,
    )?));
    if !config.credentials.is_empty() {
        tokio::spawn(crate::credentials::watch(credentials.clone()));
        tracing::info!(credentials = config.credentials.len(), "credentials ready");
    }
    let proxy = Arc::new(Proxy {
        credentials: credentials.clone(),
        policy: {
            let store = Arc::new(PolicyStore::new(revision));
            crate::policy::prepare_on_idle(store.clone());
            store
        },
        upstream,
        intercept,
        decision_log,
        metrics: metrics.clone(),
        kills: kills.clone(),
        intent_issuers,
        lifecycle,
        dry_run,
        max_header_bytes: config.limits.max_header_bytes,
        header_read_timeout: config.limits.header_read_timeout,
    });
    let reloader: Arc<dyn crate::admin::Reload> = Arc::new(ConfigReloader {
        config_path: options.config_path.clone(),
        proxy: proxy.clone(),
    });
    if config.policy.watch {
        tokio::spawn(crate::watch::watch_policy(
            config.policy.clone(),
            reloader.clone(),
        ));
    }
    let default_caller = config
        .identity
        .workload_spiffe_id
        .clone()
        .map_or(Caller::Anonymous, Caller::Authenticated);
    let server = Arc::new(ServerContext {
        proxy,
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        default_caller: default_caller.clone(),
    });
    let health = Arc::new(Health::default());

    if options.banner {
        print_banner(
            &config,
            &bound,
            admin_addr,
            &ca_path,
            &default_caller,
            &revision_id,
            dry_run,
        );
    }
    tracing::info!(
        revision = %revision_id,
        engine = engine.as_str(),
        source = config.policy.source.path().map(|p| p.display().to_string()).unwrap_or_else(|| "bundled".to_string()),
        dry_run,
        "policy loaded"
    );
    if dry_run {
        tracing::warn!("dry run: decisions are logged but not enforced");
    }
    let mut addresses = Vec::new();
    for listener in bound {
        tracing::info!(
            listener = %listener.config.name,
            address = %listener.local_addr,
            mode = listener.config.mode.as_str(),
            tls = listener.tls.is_some(),
            intercept = listener.config.intercept,
            "listener ready"
        );
        addresses.push(listener.local_addr);
        tokio::spawn(crate::server::accept_loop(server.clone(), listener));
    }
    let admin_tls = match &config.admin.tls {
        None => None,
        Some(paths) => {
            let verifier = client_verifier(&config, &bundles, crate::config::ClientAuth::Required)?;
            let server = crate::tls::listener_server_config(&paths.cert, &paths.key, verifier)
                .map_err(|e| StartError::Config(format!("{}: admin.tls: {e}", config.origin)))?;
            let allowed: Vec<String> = config
                .admin
                .allowed_spiffe_ids
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(address = %admin_addr, allowed_spiffe_ids = ?allowed, "admin API requires mTLS with an X.509-SVID");
            let swappable = Arc::new(arc_swap::ArcSwap::new(server));
            rotating.push(crate::watch::Rotating {
                files: Some((paths.cert.clone(), paths.key.clone())),
                mode: crate::config::ClientAuth::Required,
                config: swappable.clone(),
                inner: None,
            });
            Some(Arc::new(crate::admin::AdminTls {
                config: swappable,
                allowed: config.admin.allowed_spiffe_ids.clone(),
            }))
        }
    };
    if !rotating.is_empty() {
        let files =
            crate::identity::bundles::BundleFiles::new(config.identity.trust_domains.clone());
        tokio::spawn(crate::watch::watch_bundles(
            files,
            file_bundles,
            workload_api,
            rotating,
            config.origin.clone(),
        ));
    }
    tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(crate::admin::AdminState {
            health: health.clone(),
            metrics,
            kills,
            credentials,
            recent: decision_log_handle.recent.clone(),
            reloader: reloader.clone(),
        }),
        admin_tls,
    ));
    tracing::info!(address = %admin_addr, "admin ready");
    health.set_ready(true);

    wait_for_shutdown(reloader.as_ref()).await;
    health.set_ready(false);
    let deadline = config.limits.drain_timeout;
    tracing::info!(
        deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        "draining: no new connections; finishing requests in flight"
    );
    let unfinished = drain.drain(deadline).await;
    if unfinished > 0 {
        tracing::warn!(unfinished, "drain deadline passed; closing what is left");
    }
    if !decision_log_handle.flush(Duration::from_secs(5)).await {
        tracing::error!("the decision log could not be flushed before exit");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads meanwhile.
async fn wait_for_shutdown(reloader: &dyn crate::admin::Reload) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = tokio::task::block_in_place(|| reloader.reload());
            }
        }
    }
}

fn print_banner(
    config: &Config,
    listeners: &[BoundListener],
    admin: std::net::SocketAddr,
    ca_path: &std::path::Path,
    caller: &Caller,
    revision: &str,
    dry_run: bool,
) {
    let Some(first) = listeners.first() else {
        return;
    };
    let scheme = if first.tls.is_some() { "https" } else { "http" };
    let proxy_url = format!("{scheme}://{}", first.local_addr);
    let ca = ca_path.display();
    let caller = caller
        .spiffe_id()
        .map_or("unauthenticated".to_string(), |id| id.to_string());
    let mode = if dry_run {
        "DRY RUN: decisions are logged, not enforced"
    } else {
        "enforcing"
    };
    eprintln!(
        "\ntollgate {version} — {origin}\n\
         \x20 proxy    {proxy_url}  (listener \"{name}\", TLS interception on)\n\
         \x20 admin    http://{admin}\n\
         \x20 caller   {caller}\n\
         \x20 policy   bundled policy-wasm/ (revision {revision}, engine rego), {mode}\n\
         \x20 CA       {ca}\n\
         \nPoint an agent at tollgate (copy these lines into its shell):\n\
         \x20 export HTTPS_PROXY={proxy_url}\n\
         \x20 export HTTP_PROXY={proxy_url}\n\
         \x20 export https_proxy={proxy_url}\n\
         \x20 export http_proxy={proxy_url}\n\
         \x20 export SSL_CERT_FILE={ca}\n\
         \x20 export REQUESTS_CA_BUNDLE={ca}\n\
         \x20 export NODE_EXTRA_CA_CERTS={ca}\n\
         \x20 export CURL_CA_BUNDLE={ca}\n\
         \nEvery decision is a JSON line on stdout. Stop with Ctrl-C.\n",
        version = env!("CARGO_PKG_VERSION"),
        origin = config.origin,
        name = first.config.name,
    );
}
