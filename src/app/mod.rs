//! Running tollgate: [`start`] loads and binds everything in an order that fails early,
//! [`reload`] keeps what is reloadable current, [`banner`] greets a local developer, and
//! [`run`] ties them together until SIGTERM, then drains.

mod banner;
pub mod reload;
mod start;

use std::time::Duration;

pub use start::{
    RunOptions, StartError, build_credentials, client_verifier, load_policy, state_dir,
    trust_bundles,
};

use crate::config::Config;

/// With any listener that intercepts TLS, says (whatever the configuration) which CA file agents
/// must trust and the variables that make common clients trust it: without them an agent
/// fails with `CERTIFICATE_VERIFY_FAILED` and nothing else would name the file.
fn intercepting(listeners: &[crate::server::BoundListener], ca: &std::path::Path) {
    if !listeners.iter().any(|l| l.config.intercept) {
        return;
    }
    let ca = ca.display();
    let proxy = listeners
        .iter()
        .find(|l| l.config.intercept && l.config.mode == crate::config::ListenerMode::Forward)
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("HTTPS_PROXY={scheme}://{} ", l.local_addr)
        })
        .unwrap_or_default();
    tracing::info!(
        ca = %ca,
        agent_env = %format!(
            "{proxy}SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca} NODE_EXTRA_CA_CERTS={ca} CURL_CA_BUNDLE={ca}"
        ),
        "TLS interception on: agents must trust this CA"
    );
}

/// Runs the proxy until SIGINT or SIGTERM.
pub async fn run(config: Config, options: RunOptions) -> Result<(), StartError> {
    crate::tls::install_crypto_provider();
    // Before anything is announced: a signal sent once a listener is ready must find its handler.
    let signals = reload::Signals::take();
    let started = start::start(&config, &options).await?;
    let (revision, engine) = start::revision(&started.watchers.live);
    if options.banner {
        banner::Banner {
            config: &config,
            listeners: &started.listeners,
            admin: &started.admin_addr,
            ca_path: &started.ca_path,
            caller: &started.server.default_caller,
            revision: &revision,
            dry_run: started.dry_run,
        }
        .print();
    }
    tracing::info!(
        revision = %revision,
        engine,
        source = config.policy.source.path().map(|p| p.display().to_string()).unwrap_or_else(|| "bundled".to_string()),
        dry_run = started.dry_run,
        "policy loaded"
    );
    if started.dry_run {
        tracing::warn!("dry run: decisions are logged but not enforced");
    }
    intercepting(&started.listeners, &started.ca_path);
    for listener in started.listeners {
        tracing::info!(
            listener = %listener.config.name,
            address = %listener.local_addr,
            mode = listener.config.mode.as_str(),
            tls = listener.tls.is_some(),
            intercept = listener.config.intercept,
            "listener ready"
        );
        tokio::spawn(crate::server::accept_loop(started.server.clone(), listener));
    }
    tokio::spawn(reload::run(
        started.watchers,
        started.workload_api,
        started.admin_state.metrics.clone(),
    ));
    if let Some(listener) = started.metrics {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(crate::admin::serve_scrape(
            listener,
            started.admin_state.clone(),
        ));
        tracing::info!(%address, routes = "/metrics /healthz /readyz", "metrics ready");
    }
    match started.admin {
        start::BoundAdmin::Tcp(listener) => tokio::spawn(crate::admin::serve(
            listener,
            started.admin_state,
            started.admin_tls,
        )),
        start::BoundAdmin::Unix(admin) => {
            tokio::spawn(crate::admin::unix::serve(admin, started.admin_state))
        }
    };
    tracing::info!(address = %started.admin_addr, "admin ready");
    started.health.set_ready(true);

    signals.wait_for_shutdown(started.reloader.as_ref()).await;
    started.health.set_ready(false);
    let deadline = config.limits.drain_timeout;
    tracing::info!(
        deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        "draining: no new connections; finishing requests in flight"
    );
    let unfinished = started.drain.drain(deadline).await;
    if unfinished > 0 {
        tracing::warn!(unfinished, "drain deadline passed; closing what is left");
    }
    if !started.decision_log.flush(Duration::from_secs(5)).await {
        tracing::error!("the decision log could not be flushed before exit");
    }
    tracing::info!("stopped");
    Ok(())
}
