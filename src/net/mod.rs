//! Socket facts the kernel knows and the standard library does not expose.
//!
//! Owns: reading them from a connected socket. Does not own: what a listener does with them
//! (that is `server`'s).

pub mod original_dst;
