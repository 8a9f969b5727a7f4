//! The skiff router: the data plane of one site.
//!
//! # Layout
//! - [`wire`]: versioned, length-prefixed frames; decoders over bytes; no I/O.
//! - [`link`]: [`link::Router`]: link transports (QUIC, TLS/TCP + yamux), per-link drivers, dialers, the link port.

pub mod link;
pub mod wire;
