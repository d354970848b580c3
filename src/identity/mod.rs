//! Workload identity: SPIFFE IDs and who the caller of a request is.
//!
//! This module owns the representation of an identity ([`SpiffeId`], [`Caller`]), its
//! verification from a TLS peer certificate ([`svid`]: the X.509-SVID checks and the rustls
//! verifier that runs them), and the SPIFFE Workload API as a source of bundles and of
//! tollgate's own SVID ([`workload_api`]). A caller is the verified X.509-SVID, else the
//! configured `identity.workload_spiffe_id`, else unauthenticated. Rebuilding TLS configs when
//! bundles rotate is `app::reload`'s, through [`crate::watch`].

mod spiffe_id;
pub mod svid;
pub mod workload_api;

pub use spiffe_id::{SpiffeId, SpiffeIdError};

/// Who is calling, as the policy sees it (`input.source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A SPIFFE ID the proxy vouches for (configured workload identity or verified SVID).
    Authenticated(SpiffeId),
    /// Nobody the proxy can vouch for: the policy sees `authenticated=false`.
    Anonymous,
}

impl Caller {
    /// The SPIFFE ID, if any.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match self {
            Caller::Authenticated(id) => Some(id),
            Caller::Anonymous => None,
        }
    }
}
