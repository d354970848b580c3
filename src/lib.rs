//! tollgate: an egress proxy for AI agents.
//!
//! # The life of a request
//! An agent sends a request through tollgate (absolute-form HTTP, or HTTPS inside a CONNECT
//! tunnel that tollgate intercepts). The [`server`] accepts the connection, enforces limits,
//! establishes who the caller is and guards the request framing; [`proxy::handle`] then runs
//! the stages in order — target, intent, secrets, authorize (the [`policy`]), credential,
//! inject, forward ([`upstream`]) — and the [`proxy::record`] guard writes one decision-log
//! line ([`telemetry`]) however the request ends. Every failure is an [`error::ProxyError`]
//! with a closed [`reason::Reason`], turned into a JSON response in one place.
//!
//! # Modules
//! - [`app`]: start-up, reload and shutdown
//! - [`config`]: YAML → validated configuration, every error at once
//! - [`server`]: listeners, TLS handshakes, framing guard, HTTP serving, tunnels, drain
//! - [`proxy`]: the request path: one stage per file, and the decision-log record
//! - [`policy`]: input and decision contracts, the Rego and Wasm engines, revisions
//! - [`identity`]: SPIFFE IDs, callers, X.509-SVID verification, the Workload API
//! - [`intent`]: the `X-Agent-*` headers and the task-name rule; [`intent_token`]: signed
//!   intent tokens
//! - [`credentials`]: static, jwt and oauth2 credentials, their cache and injection
//! - [`kill`]: the kill switch (persisted, lock-free to check) and the open flows it cuts
//! - [`tls`]: TLS handshakes, listener TLS, CAs, interception, the origin's TLS
//! - [`pki`]: the crypto provider and PEM files
//! - [`per_thread`]: per-thread state of a shared owner (no lock shared between workers)
//! - [`upstream`]: resolution with the private-address guard, the origin client
//! - [`telemetry`]: metrics, decision log and operational log
//! - [`admin`]: the admin API, one file per resource
//! - [`watch`]: `Watched<T>`, one way to keep a value built from files current
//! - [`rebuild_thread`]: the one thread every reload and rebuild runs on
//! - [`reason`]: the closed set of reasons (responses, decision log, metric labels)
//! - [`error`]: `ProxyError`, every way a request fails
//! - [`net`]: socket facts from the kernel (the original destination of a redirected connection)
//! - [`redirect`]: `tollgate redirect`, the sidecar's init step (nat rules)
//! - [`inject`]: `tollgate inject`, the Kubernetes mutating admission webhook
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod credentials;
pub mod error;
pub mod identity;
pub mod inject;
pub mod intent;
pub mod intent_token;
pub mod kill;
pub mod net;
pub mod per_thread;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod reason;
pub mod rebuild_thread;
pub mod redirect;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
