//! The skiff router: the data plane of one site.
//!
//! # Layout
//! - [`wire`]: versioned, length-prefixed frames; decoders over bytes; no I/O.
//! - [`link`]: link transports (QUIC, TLS over TCP), the per-link driver, dialers, the link port.

pub mod link;
pub mod wire;
