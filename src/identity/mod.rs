//! Workload identity: SPIFFE IDs and who the caller of a request is.
//!
//! This module owns the representation of an identity ([`SpiffeId`], [`Caller`]) and its
//! verification from a TLS peer certificate ([`svid`]). A caller is the verified X.509-SVID,
//! else the configured `identity.workload_spiffe_id`, else unauthenticated.

pub mod bundles;
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
