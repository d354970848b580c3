//! tollgate: an egress proxy for AI agents.
//!
//! # The life of a request
//! An agent sends a request through tollgate (absolute-form HTTP, or HTTPS inside a CONNECT
//! tunnel that tollgate intercepts). The [`server`] accepts the connection, enforces limits and
//! establishes who the caller is. [`proxy::handle`] then runs the stages in order — target,
//! intent, authorize (the [`policy`]), inject, forward ([`upstream`]) — and the
//! [`proxy::record`] guard writes one decision-log line ([`telemetry`]) however the request
//! ends. Every failure is a [`error::ProxyError`], turned into a JSON response in one place.
//!
//! # Modules
//! - [`config`]: YAML → validated configuration, every error at once
//! - [`identity`]: SPIFFE IDs and callers
//! - [`intent`]: the `X-Agent-*` headers
//! - [`kill`]: the kill switch (persisted, lock-free to check)
//! - [`policy`]: input and decision contracts, the Rego engine, revisions
//! - [`proxy`]: the request path
//! - [`server`]: listeners, connection limits, framing guard
//! - [`tls`]: CAs, interception, TLS configs
//! - [`upstream`]: resolution with the private-address guard, the origin client
//! - [`telemetry`]: decision log and operational log
//! - [`admin`]: the admin listener
//! - [`watch`]: hot state from its sources (bundles, certificates, policy files, JWKS)
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
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
