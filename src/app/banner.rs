//! The local-development banner (`tollgate run` without `-c`): where the proxy and the admin
//! API listen, who the caller is, and the lines an agent's shell needs.

use std::path::Path;

use crate::config::Config;
use crate::identity::Caller;
use crate::server::BoundListener;

/// What the banner shows.
pub struct Banner<'a> {
    pub config: &'a Config,
    pub listeners: &'a [BoundListener],
    pub admin: &'a str,
    pub ca_path: &'a Path,
    pub caller: &'a Caller,
    pub revision: &'a str,
    pub dry_run: bool,
}

impl Banner<'_> {
    /// Prints it on stderr (stdout carries the decision log).
    pub fn print(&self) {
        let Some(first) = self.listeners.first() else {
            return;
        };
        let scheme = if first.tls.is_some() { "https" } else { "http" };
        let proxy_url = format!("{scheme}://{}", first.local_addr);
        let ca = self.ca_path.display();
        let caller = self
            .caller
            .spiffe_id()
            .map_or("unauthenticated".to_string(), |id| id.to_string());
        let mode = if self.dry_run {
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
            origin = self.config.origin,
            name = first.config.name,
            admin = self.admin,
            revision = self.revision,
        );
    }
}
