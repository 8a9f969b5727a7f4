//! rustls configurations for links and grant redemptions, and the verifier that pins a peer's
//! CA *and* its site id.
//!
//! All configs are TLS 1.3 only (QUIC requires it and we own both ends) and use the `ring`
//! provider explicitly, so they work whether or not a process-wide provider is installed.
//!
//! Who presents what:
//!
//! | connection | server presents | client presents | client checks |
//! |---|---|---|---|
//! | link (`skiff-link/1`) | router cert | link client cert signed by the *server's* CA | server's CA + site id |
//! | grant (`skiff-grant/1`) | router cert | nothing | server's CA (from the token) + site id |
//!
//! The server accepts both on one port, so client certificates are optional at the TLS layer;
//! the router requires one after the handshake when the negotiated ALPN is [`ALPN_LINK`], and
//! reads the peer's identity with [`peer_site_id`].

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::ca::first_cert;
use crate::id::URI_PREFIX;
use crate::{CertError, SiteId};

/// ALPN of a link connection (QUIC or TLS/TCP).
pub const ALPN_LINK: &[u8] = b"skiff-link/1";
/// ALPN of a grant redemption (HTTP/1.1 over TLS on the link port).
pub const ALPN_GRANT: &[u8] = b"skiff-grant/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config of a site's link port.
///
/// Presents the router certificate (`router_cert_pem` may hold a chain). Client certificates
/// are verified against `site_ca_pem` (our own CA, which signed the link client certificates
/// we granted) but are optional at the TLS layer: grant connections present none, and the
/// router must require one for [`ALPN_LINK`] after the handshake. `alpn` is offered as given.
pub fn link_server_config(
    router_cert_pem: &str,
    router_key_pem: &str,
    site_ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CertError> {
    let cert = RouterCertificate::from_pem(router_cert_pem, router_key_pem)?;
    link_server_config_with(Arc::new(cert), site_ca_pem, alpn)
}

/// [`link_server_config`] presenting `cert`, which may be replaced while the config serves
/// ([`RouterCertificate::replace`]): TLS/TCP and QUIC configs built on the same `cert` both
/// present the new certificate from their next handshake on.
pub fn link_server_config_with(
    cert: Arc<RouterCertificate>,
    site_ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CertError> {
    const WHAT: &str = "link server";
    let roots = root_store("site CA certificate", site_ca_pem)?;
    let provider = provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(tls_config(WHAT))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_config(WHAT))?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificate a link port presents (the router certificate and its key), replaceable
/// while the port serves: handshakes after [`RouterCertificate::replace`] get the new one,
/// connections already established keep theirs.
pub struct RouterCertificate {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl std::fmt::Debug for RouterCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCertificate").finish_non_exhaustive()
    }
}

impl RouterCertificate {
    /// From a certificate chain and its key (PEM); the key must match the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Ok(RouterCertificate {
            current: std::sync::RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    /// Presents `cert_pem` (with `key_pem`) from the next handshake on; `Err` (a bad or
    /// mismatched pair) leaves the current one in place.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let new = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The certificate presented now (DER of the end-entity certificate).
    pub fn end_entity(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }
}

impl rustls::server::ResolvesServerCert for RouterCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, CertError> {
    let chain = cert_chain("router certificate", cert_pem)?;
    let key = private_key("router key", key_pem)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(tls_config("link server"))
}

/// Dialer side of a link: presents `client_cert_pem` (signed by the peer's CA), trusts only
/// `peer_ca_pem`, and requires the server certificate to name site `expected`. ALPN
/// [`ALPN_LINK`].
///
/// Dial with `ServerName` = [`SiteId::server_name`] of `expected` (it is sent as SNI). The
/// verifier checks the certificate against that name whatever name the connection was given,
/// so a dialer that passes the dialled address cannot weaken the check.
pub fn link_client_config(
    client_cert_pem: &str,
    client_key_pem: &str,
    peer_ca_pem: &str,
    expected: SiteId,
) -> Result<Arc<ClientConfig>, CertError> {
    const WHAT: &str = "link client";
    let chain = cert_chain("link client certificate", client_cert_pem)?;
    let key = private_key("link client key", client_key_pem)?;
    let mut config = client_builder(peer_ca_pem, expected, WHAT)?
        .with_client_auth_cert(chain, key)
        .map_err(tls_config(WHAT))?;
    config.alpn_protocols = vec![ALPN_LINK.to_vec()];
    Ok(Arc::new(config))
}

/// Token redemption: no client certificate; the server is verified as in
/// [`link_client_config`] (CA from the token, site id from the token). ALPN [`ALPN_GRANT`].
pub fn grant_client_config(
    peer_ca_pem: &str,
    expected: SiteId,
) -> Result<Arc<ClientConfig>, CertError> {
    const WHAT: &str = "grant client";
    let mut config = client_builder(peer_ca_pem, expected, WHAT)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN_GRANT.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS 1.3 client builder that trusts only `peer_ca_pem` and requires the server to be site
/// `expected`; the caller adds (or not) its client certificate.
fn client_builder(
    peer_ca_pem: &str,
    expected: SiteId,
    what: &'static str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, CertError> {
    let provider = provider();
    let verifier = SiteVerifier::new(peer_ca_pem, expected, provider.clone(), what)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_config(what))?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// The site id in a certificate's URI SAN. Exactly one `skiff://site/<id>` URI SAN is
/// required; other URI SANs are errors too (a skiff certificate carries no others).
pub fn peer_site_id(cert: &CertificateDer<'_>) -> Result<SiteId, CertError> {
    let identity = |reason: String| CertError::PeerIdentity { reason };
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| identity(format!("the certificate is not valid X.509 ({e})")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| identity(format!("its subject alternative names are malformed ({e})")))?
        .ok_or_else(|| identity("it has no subject alternative names".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SiteId::from_uri(one).map_err(|e| identity(e.to_string())),
        [] => Err(identity(format!("it has no {URI_PREFIX}<id> URI SAN"))),
        _ => Err(identity(format!(
            "it has {} URI SANs; exactly one is allowed",
            uris.len()
        ))),
    }
}

/// Verifies a server certificate against one pinned CA (delegating to rustls's webpki
/// verifier, name = the expected site's server name), then requires its URI SAN to name the
/// expected site.
#[derive(Debug)]
struct SiteVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: SiteId,
    expected_name: ServerName<'static>,
}

impl SiteVerifier {
    fn new(
        peer_ca_pem: &str,
        expected: SiteId,
        provider: Arc<CryptoProvider>,
        what: &'static str,
    ) -> Result<Arc<Self>, CertError> {
        let roots = root_store("peer CA certificate", peer_ca_pem)?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(tls_config(what))?;
        let expected_name =
            ServerName::try_from(expected.server_name()).map_err(tls_config(what))?;
        Ok(Arc::new(SiteVerifier {
            inner,
            expected,
            expected_name,
        }))
    }

    fn identity_error(err: CertError) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
    }

    /// `Some(error)` if the certificate names a site other than the expected one.
    fn mismatch(&self, end_entity: &CertificateDer<'_>) -> Option<rustls::Error> {
        match peer_site_id(end_entity) {
            Ok(presented) if presented == self.expected => None,
            Ok(presented) => Some(Self::identity_error(CertError::SiteMismatch {
                presented,
                expected: self.expected,
            })),
            Err(e) => Some(Self::identity_error(e)),
        }
    }
}

impl ServerCertVerifier for SiteVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => match self.mismatch(end_entity) {
                None => Ok(verified),
                Some(e) => Err(e),
            },
            // The chain is good (webpki checks the name last) but the certificate is for
            // another name: say which site it is for, if it names one.
            Err(rustls::Error::InvalidCertificate(
                e @ (CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }),
            )) => match peer_site_id(end_entity) {
                Ok(presented) if presented != self.expected => {
                    Err(Self::identity_error(CertError::SiteMismatch {
                        presented,
                        expected: self.expected,
                    }))
                }
                _ => Err(rustls::Error::InvalidCertificate(e)),
            },
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

fn tls_config<E>(what: &'static str) -> impl FnOnce(E) -> CertError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| CertError::TlsConfig {
        what,
        source: Box::new(e),
    }
}

fn cert_chain(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            reason: "malformed PEM".into(),
            source: Some(Box::new(e)),
        })?;
    if chain.is_empty() {
        return Err(CertError::pem(what, "no CERTIFICATE block found"));
    }
    Ok(chain)
}

fn private_key(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what,
        reason: "no usable private key".into(),
        source: Some(Box::new(e)),
    })
}

/// A root store holding exactly the first certificate of `pem`.
fn root_store(what: &'static str, pem: &str) -> Result<Arc<RootCertStore>, CertError> {
    let der = first_cert(what, pem)?;
    let mut roots = RootCertStore::empty();
    roots.add(der).map_err(|e| CertError::Pem {
        what,
        reason: "cannot be used as a trust anchor".into(),
        source: Some(Box::new(e)),
    })?;
    Ok(Arc::new(roots))
}
