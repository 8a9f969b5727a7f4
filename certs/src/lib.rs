//! Site identity and trust for skiff: site ids, the site CA, certificates, CSR signing, access
//! tokens and grants, and the rustls configurations every link and grant connection uses.
//!
//! The trust model (see DESIGN.md, "Identity and trust"): every site has its own CA; a router's
//! identity is its [`SiteId`], carried as the URI SAN `skiff://site/<id>` in its certificates.
//! Dialers pin the peer's CA *and* the expected site id, never the address they dialled.
//!
//! # Layout
//!
//! - [`id`]: [`SiteId`], the random 128-bit site identity and its text/URI/server-name forms.
//! - [`ca`]: [`SiteCa`]: the site CA, router certificates, and signing a linking peer's CSR.
//! - [`token`]: [`AccessToken`] and [`AccessGrant`] YAML resources, codes and durations.
//! - [`tls`]: rustls client/server configs for links and grants, and the site-id verifier.
//! - [`error`]: [`CertError`], grouped by who is at fault.
//! - `encode`: hex and base64 helpers (private).
//! - `fuzzing`: the body of the fuzz target, shared with the seed replay test (hidden).

#![forbid(unsafe_code)]

pub mod ca;
mod encode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
pub mod tls;
pub mod token;

pub use ca::{
    CsrBinding, IssuedCert, SiteCa, certifiable_host, certificate_serial, certificate_serial_pem,
    certificate_validity_pem, csr_binding, first_certificate, generate_link_csr, generate_link_key,
    key_fingerprint, key_fingerprint_pem, link_csr, private_key_fingerprint, redemption_csr,
    renewal_csr, renewal_csr_binding,
};
pub use error::CertError;
pub use id::SiteId;
pub use tls::{
    ALPN_GRANT, ALPN_LINK, RouterCertificate, grant_client_config, link_client_config,
    link_server_config, link_server_config_with, peer_site_id,
};
pub use token::{
    API_VERSION, AccessGrant, AccessGrantSpec, AccessToken, AccessTokenSpec, GrantRefusal,
    Metadata, codes_match, format_duration, generate_code, parse_duration,
};

/// Installs rustls's `ring` crypto provider as the process-wide default.
///
/// Idempotent: a provider that is already installed (by an earlier call or by another crate)
/// is left in place. Call it first thing in `main` and in test setup; the configs built by this
/// crate do not depend on it (they pass the provider explicitly), but other rustls users in the
/// process (kube's client, for one) do.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
