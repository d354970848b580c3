//! Hot state from its sources: trust bundles and certificates (files polled, Workload API
//! pushes), policy files (`policy.watch`) and intent-token key sets. Each watcher rebuilds what
//! depends on a source off the request path and swaps it in; a broken source keeps the last
//! good state in force and is reported. Start-up (`app`) decides what to watch.

use std::path::PathBuf;
use std::sync::Arc;

/// The files a policy revision is made of, with size and modification time.
fn policy_stamps(
    policy: &crate::config::PolicyConfig,
) -> Vec<(PathBuf, Option<(u64, std::time::SystemTime)>)> {
    fn walk(path: &std::path::Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), out);
                }
            }
        } else {
            out.push(path.to_path_buf());
        }
    }
    let mut files = Vec::new();
    if let Some(path) = policy.source.path() {
        walk(path, &mut files);
    }
    if let crate::config::DataSource::File(path) = &policy.data {
        files.push(path.clone());
    }
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let stamp = crate::identity::bundles::stamp(&file);
            (file, stamp)
        })
        .collect()
}

/// `policy.watch`: polls the policy folder and data file; any change (a file edited, added or
/// removed) reloads like `POST /v1/reload`. A broken update keeps the running revision.
pub async fn watch_policy(
    policy: crate::config::PolicyConfig,
    reloader: Arc<dyn crate::admin::Reload>,
) {
    let mut last = policy_stamps(&policy);
    let mut tick = tokio::time::interval(crate::identity::bundles::POLL_INTERVAL);
    loop {
        tick.tick().await;
        let now = policy_stamps(&policy);
        if now == last {
            continue;
        }
        last = now;
        tracing::info!("policy files changed: reloading");
        let reloader = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

/// Re-reads intent-token JWKS files when they change; a broken file keeps the last good keys.
pub async fn watch_jwks(issuers: Arc<crate::intent_token::IntentIssuers>) {
    let mut tick = tokio::time::interval(crate::intent_token::POLL_INTERVAL);
    loop {
        tick.tick().await;
        let issuers = issuers.clone();
        match tokio::task::spawn_blocking(move || issuers.reload_if_changed()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(reloaded)) => tracing::info!(reloaded, "intent-token key sets reloaded"),
            Ok(Err(errors)) => {
                for error in errors {
                    tracing::error!(error = %error, "intent-token key set not reloaded; the last good keys stay in force");
                }
            }
            Err(_) => {}
        }
    }
}

/// A TLS config that verifies SVIDs and must be rebuilt when trust bundles rotate.
pub struct Rotating {
    /// Certificate and key files; `None`: tollgate's own SVID from the Workload API.
    pub files: Option<(PathBuf, PathBuf)>,
    pub mode: crate::config::ClientAuth,
    pub config: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    /// The optional-mode verifier used inside intercepted TLS (listeners only).
    pub inner: Option<Arc<arc_swap::ArcSwap<crate::proxy::ctx::InnerVerifier>>>,
}

/// A listener TLS config from its files, or from tollgate's own Workload API SVID.
pub fn listener_tls(
    files: Option<&(PathBuf, PathBuf)>,
    workload_api: Option<&crate::identity::workload_api::WorkloadApiSource>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    match (files, workload_api) {
        (Some((cert, key)), _) => {
            crate::tls::listener_server_config(cert, key, verifier).map_err(|e| e.to_string())
        }
        (None, Some(source)) => {
            let (chain, key, _id) = source
                .svid()
                .ok_or_else(|| "the Workload API has no SVID for tollgate".to_string())?;
            crate::tls::server_config_from_der(chain, key, verifier)
        }
        (None, None) => Err("no certificate: neither tls files nor identity.workload_api".into()),
    }
}

/// File bundles, plus the Workload API's for trust domains the files do not name (a bundle
/// an operator pinned in a file wins).
pub fn merge_bundles(
    files: &crate::identity::svid::TrustBundles,
    workload_api: Option<&crate::identity::workload_api::WorkloadApiSource>,
) -> crate::identity::svid::TrustBundles {
    let mut merged = files.clone();
    if let Some(source) = workload_api {
        for (domain, certs) in source.bundles() {
            merged.entry(domain).or_insert(certs);
        }
    }
    merged
}

/// Watches the trust bundles — files polled, Workload API pushes — and on a change rebuilds
/// every SVID-verifying TLS config for new handshakes. A broken bundle file keeps the last good
/// configs and is reported.
pub async fn watch_bundles(
    mut files: crate::identity::bundles::BundleFiles,
    mut file_bundles: crate::identity::svid::TrustBundles,
    workload_api: Option<Arc<crate::identity::workload_api::WorkloadApiSource>>,
    rotating: Vec<Rotating>,
    origin: String,
) {
    let mut tick = tokio::time::interval(crate::identity::bundles::POLL_INTERVAL);
    let mut pushes = workload_api.as_ref().map(|source| source.subscribe());
    // The listeners' own certificate and key files rotate too.
    let mut certificates = crate::identity::bundles::BundleFiles::new(
        rotating
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.files.clone().map(|files| (i, files)))
            .flat_map(|(i, (cert, key))| [(format!("{i}.cert"), cert), (format!("{i}.key"), key)])
            .collect(),
    );
    loop {
        let changed = tokio::select! {
            _ = tick.tick() => match files.poll() {
                None => certificates.stamps_changed(),
                Some(Err(why)) => {
                    tracing::error!(error = %why, "trust bundle reload failed; the last good bundles stay in force");
                    false
                }
                Some(Ok(bundles)) => {
                    file_bundles = bundles;
                    true
                }
            },
            pushed = async {
                match pushes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => pushed,
        };
        if !changed {
            continue;
        }
        let bundles = merge_bundles(&file_bundles, workload_api.as_deref());
        let mut rebuilt = 0;
        for target in &rotating {
            let mode = match target.mode {
                crate::config::ClientAuth::None => None,
                crate::config::ClientAuth::Optional => {
                    Some(crate::identity::svid::ClientAuthMode::Optional)
                }
                crate::config::ClientAuth::Required => {
                    Some(crate::identity::svid::ClientAuthMode::Required)
                }
            };
            let verifier: Result<
                Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
                String,
            > = match mode {
                None => Ok(None),
                Some(mode) => crate::identity::svid::SpiffeClientVerifier::new(&bundles, mode)
                    .map(|v| {
                        Some(Arc::new(v) as Arc<dyn rustls::server::danger::ClientCertVerifier>)
                    })
                    .map_err(|e| e.to_string()),
            };
            let built = verifier.and_then(|verifier| {
                listener_tls(target.files.as_ref(), workload_api.as_deref(), verifier)
            });
            if let Some(inner) = &target.inner
                && let Ok(verifier) = crate::identity::svid::SpiffeClientVerifier::new(
                    &bundles,
                    crate::identity::svid::ClientAuthMode::Optional,
                )
            {
                inner.store(Arc::new(crate::proxy::ctx::InnerVerifier(Arc::new(
                    verifier,
                ))));
            }
            match built {
                Ok(server) => {
                    target.config.store(server);
                    rebuilt += 1;
                }
                Err(why) => {
                    tracing::error!(error = %why, "{origin}: cannot rebuild a TLS config with the new trust bundles; keeping the last good one")
                }
            }
        }
        let domains: Vec<&String> = bundles.keys().collect();
        tracing::info!(trust_domains = ?domains, tls_configs = rebuilt, "trust bundles reloaded");
    }
}
