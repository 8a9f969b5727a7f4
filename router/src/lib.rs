//! The skiff router: the data plane of one site.
//!
//! # Layout
//! - [`wire`]: versioned, length-prefixed frames; decoders over bytes; no I/O.
//! - [`routing`]: [`routing::Topology`]: link-state database, shortest paths, target choice; no I/O, no clock.
//! - [`flow`]: TCP flows: listeners, connectors, ingress / transit / egress, splicing.
//! - [`link`]: [`link::Router`]: link transports (QUIC, TLS/TCP + yamux), per-link drivers, dialers, the link port.

#![forbid(unsafe_code)]

pub mod flow;
pub mod link;
pub mod routing;
pub mod wire;
