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
//! - `linked`: attacks claiming the id (or using the key) of a linked site; its link stays up.
//! - `outbound`: a running site dials a server with the pinned CA but another site id, or
//!   the right site's certificate outside its validity.

mod common;

/// Two tests per case function `f(Via)`: `f::over_tls` and `f::over_quic`.
macro_rules! over_both_transports {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn over_tls() {
                super::$case(super::Via::Tls)
            }
            #[test]
            fn over_quic() {
                super::$case(super::Via::Quic)
            }
        }
    )*};
}

#[path = "attacks/hostile.rs"]
mod hostile;
#[path = "attacks/inbound.rs"]
mod inbound;
#[path = "attacks/linked.rs"]
mod linked;
#[path = "attacks/outbound.rs"]
mod outbound;
