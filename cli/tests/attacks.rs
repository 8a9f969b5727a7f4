//! Black-box tests of the security matrix (issue 7) on both transports: what a running site
//! does with hostile or broken connections to its link port over TLS/TCP and over QUIC, and
//! what a dialing router does with a server that is not the site its link names. Every case
//! is refused (an error or a close, never "accepted then silence"), the refusing side says
//! which check failed, and no link, peer record or grant use is created.
//!
//! # Layout
//! - `hostile`: raw TLS and QUIC clients, a router dialing with forged credentials, forged
//!   certificates, the site state an attack must not change.
//! - `inbound`: the matrix against a site nobody linked to yet.
//! - `linked`: attacks claiming the id of a linked site; its link stays up.
//! - `outbound`: a dialer meets a server with the pinned CA but another site id.

mod common;
#[path = "attacks/hostile.rs"]
mod hostile;
#[path = "attacks/inbound.rs"]
mod inbound;
#[path = "attacks/linked.rs"]
mod linked;
#[path = "attacks/outbound.rs"]
mod outbound;
