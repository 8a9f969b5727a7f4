//! Real TLS 1.3 handshakes (tokio-rustls over in-memory duplex pipes and loopback TCP) between
//! the configs of `skiff_certs::tls`, with certificates from `skiff_certs::ca`.

use std::sync::Arc;
use std::time::Duration;

use rustls::CertificateError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use skiff_certs::{
    ALPN_GRANT, ALPN_LINK, CertError, IssuedCert, SiteCa, SiteId, generate_link_csr,
    grant_client_config, link_client_config, link_server_config, peer_site_id,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// A site: its id, CA and router certificate.
struct Site {
    id: SiteId,
    ca: SiteCa,
    router: IssuedCert,
}

fn site(name: &str) -> Site {
    skiff_certs::install_crypto_provider();
    let id = SiteId::random();
    let ca = SiteCa::generate(name, id).unwrap();
    let router = ca.issue_router_cert(id, &["127.0.0.1".into()]).unwrap();
    Site { id, ca, router }
}

impl Site {
    /// This site's link-port server config, offering both ALPNs.
    fn server(&self) -> Arc<rustls::ServerConfig> {
        server_with_cert(&self.router, &self.ca)
    }

    /// `redeemer` redeems a token of this site: its CSR signed by this site's CA.
    /// Returns (client cert PEM, client key PEM).
    fn grant(&self, redeemer: &Site) -> (String, String) {
        let (csr, key) = generate_link_csr(redeemer.id, "redeemer").unwrap();
        let (id, cert) = self
            .ca
            .sign_link_csr(&csr, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(id, redeemer.id);
        (cert.cert_pem, key)
    }
}

fn server_with_cert(cert: &IssuedCert, ca: &SiteCa) -> Arc<rustls::ServerConfig> {
    link_server_config(
        &cert.cert_pem,
        cert.key_pem.as_deref().unwrap(),
        ca.cert_pem(),
        &[ALPN_LINK, ALPN_GRANT],
    )
    .unwrap()
}

type Outcome<S> = (
    std::io::Result<server::TlsStream<S>>,
    std::io::Result<client::TlsStream<S>>,
);

/// Runs both ends of a handshake over an in-memory pipe, dialling `expected`'s server name.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    expected: SiteId,
) -> Outcome<tokio::io::DuplexStream> {
    let (s, c) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(expected.server_name()).unwrap();
    handshake_over(server, client, name, s, c).await
}

async fn handshake_over<S>(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    s: S,
    c: S,
) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::join!(
        TlsAcceptor::from(server).accept(s),
        TlsConnector::from(client).connect(name, c)
    )
}

/// The rustls error inside an I/O error from tokio-rustls.
fn rustls_error(e: &std::io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
}

fn certificate_error(e: &std::io::Error) -> &CertificateError {
    match rustls_error(e) {
        rustls::Error::InvalidCertificate(c) => c,
        other => panic!("not a certificate error: {other:?}"),
    }
}

/// Proves application data flows both ways.
async fn ping_pong<S: AsyncRead + AsyncWrite + Unpin>(
    server: &mut server::TlsStream<S>,
    client: &mut client::TlsStream<S>,
) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

fn leaf(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn good_link_verifies_both_sides() {
    let east = site("east");
    let west = site("west");
    let (cert, key) = east.grant(&west);
    let client = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();

    let (s, c) = handshake(east.server(), client, east.id).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());

    let (_, server_conn) = s.get_ref();
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_LINK));
    let client_chain = server_conn
        .peer_certificates()
        .expect("client presented a cert");
    assert_eq!(peer_site_id(&client_chain[0]).unwrap(), west.id);

    let (_, client_conn) = c.get_ref();
    assert_eq!(
        client_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let server_chain = client_conn.peer_certificates().unwrap();
    assert_eq!(peer_site_id(&server_chain[0]).unwrap(), east.id);

    ping_pong(&mut s, &mut c).await;
}

#[tokio::test]
async fn good_link_over_loopback_tcp_dialled_by_ip_address() {
    let east = site("east");
    let west = site("west");
    let (cert, key) = east.grant(&west);
    let client = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, dialled) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
    let (server_tcp, _) = accepted.unwrap();
    // A dialer that (wrongly) uses the dialled address as the server name is still held to the
    // expected site: identity comes from the site id, not the address.
    let name = ServerName::IpAddress(addr.ip().into());
    let (s, c) = handshake_over(east.server(), client, name, server_tcp, dialled.unwrap()).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    let chain = s.get_ref().1.peer_certificates().unwrap();
    assert_eq!(peer_site_id(&chain[0]).unwrap(), west.id);
    ping_pong(&mut s, &mut c).await;
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused_as_unknown_issuer() {
    let east = site("east");
    let west = site("west");
    let mallory = site("mallory");
    let (cert, key) = east.grant(&west);
    // Mallory's CA issues a certificate that claims to be east.
    let fake = mallory.ca.issue_router_cert(east.id, &[]).unwrap();
    let client = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();

    let (s, c) = handshake(server_with_cert(&fake, &mallory.ca), client, east.id).await;
    assert!(s.is_err());
    let e = c.unwrap_err();
    assert_eq!(
        certificate_error(&e),
        &CertificateError::UnknownIssuer,
        "{e}"
    );
}

#[tokio::test]
async fn right_ca_but_wrong_site_is_refused_with_both_ids() {
    let east = site("east");
    let west = site("west");
    let other = SiteId::random();
    // East's own CA, but a certificate for another site id (e.g. a token pasted for the wrong
    // site behind the same address).
    let wrong = east.ca.issue_router_cert(other, &[]).unwrap();
    let (cert, key) = east.grant(&west);
    let want = format!(
        "certificate is for site {other}, but the token/link expects site {}",
        east.id
    );

    let link = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();
    let (_, c) = handshake(server_with_cert(&wrong, &east.ca), link, east.id).await;
    let e = c.unwrap_err();
    assert!(e.to_string().contains(&want), "{e}");
    let CertificateError::Other(other_err) = certificate_error(&e) else {
        panic!("{e:?}")
    };
    let cert_error = other_err.0.downcast_ref::<CertError>().unwrap();
    assert!(
        matches!(cert_error, CertError::SiteMismatch { presented, expected }
        if *presented == other && *expected == east.id)
    );
    assert_eq!(cert_error.to_string(), want);

    // Even if the certificate also carries the expected site's server name as a DNS SAN, the
    // URI SAN decides.
    let both = east
        .ca
        .issue_router_cert(other, &[east.id.server_name()])
        .unwrap();
    let link = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();
    let (_, c) = handshake(server_with_cert(&both, &east.ca), link, east.id).await;
    let e = c.unwrap_err();
    assert!(e.to_string().contains(&want), "{e}");

    // The same check guards token redemption.
    let grant = grant_client_config(east.ca.cert_pem(), east.id).unwrap();
    let (_, c) = handshake(server_with_cert(&wrong, &east.ca), grant, east.id).await;
    let e = c.unwrap_err();
    assert!(e.to_string().contains(&want), "{e}");
}

#[tokio::test]
async fn self_signed_server_cert_is_refused() {
    let east = site("east");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![east.id.server_name()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(east.id.uri().try_into().unwrap()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).unwrap();
    let self_signed = IssuedCert {
        cert_pem: cert.pem(),
        key_pem: Some(key.serialize_pem()),
        serial: String::new(),
        not_after: time::OffsetDateTime::now_utc(),
    };
    let grant = grant_client_config(east.ca.cert_pem(), east.id).unwrap();
    let (_, c) = handshake(server_with_cert(&self_signed, &east.ca), grant, east.id).await;
    let e = c.unwrap_err();
    assert_eq!(
        certificate_error(&e),
        &CertificateError::UnknownIssuer,
        "{e}"
    );
}

#[tokio::test]
async fn grant_client_without_cert_passes_tls_but_presents_nothing() {
    let east = site("east");
    let grant = grant_client_config(east.ca.cert_pem(), east.id).unwrap();
    let (s, c) = handshake(east.server(), grant, east.id).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    let (_, server_conn) = s.get_ref();
    assert!(server_conn.peer_certificates().is_none());
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_GRANT));
    ping_pong(&mut s, &mut c).await;
}

#[tokio::test]
async fn client_cert_from_a_foreign_ca_is_refused_by_the_server() {
    let east = site("east");
    let west = site("west");
    let mallory = site("mallory");
    // West holds a client cert from mallory's CA, not east's.
    let (cert, key) = mallory.grant(&west);
    let client = link_client_config(&cert, &key, east.ca.cert_pem(), east.id).unwrap();
    let (s, c) = handshake(east.server(), client, east.id).await;
    let e = s.unwrap_err();
    assert_eq!(
        certificate_error(&e),
        &CertificateError::UnknownIssuer,
        "{e}"
    );
    // TLS 1.3: the client finished first, but the server's alert stops any data.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).await.is_err() || buf == [0]);
    }
}

#[tokio::test]
async fn router_cert_cannot_be_used_by_a_site_holding_only_a_link_cert() {
    // A redeemer's link cert (clientAuth only, signed by east's CA) cannot serve as east.
    let east = site("east");
    let west = site("west");
    let (cert, key) = east.grant(&west);
    let as_server = IssuedCert {
        cert_pem: cert,
        key_pem: Some(key),
        serial: String::new(),
        not_after: time::OffsetDateTime::now_utc(),
    };
    let grant = grant_client_config(east.ca.cert_pem(), west.id).unwrap();
    let (_, c) = handshake(server_with_cert(&as_server, &east.ca), grant, west.id).await;
    let e = c.unwrap_err();
    assert!(
        matches!(rustls_error(&e), rustls::Error::InvalidCertificate(_)),
        "{e}"
    );
}

#[test]
fn configs_reject_bad_pem_with_user_errors() {
    let east = site("east");
    let e = grant_client_config("not pem", east.id).unwrap_err();
    assert!(e.is_user_input(), "{e}");
    let e = link_server_config(
        &east.router.cert_pem,
        "nope",
        east.ca.cert_pem(),
        &[ALPN_LINK],
    )
    .unwrap_err();
    assert!(e.to_string().contains("router key"), "{e}");
    // A key that does not match the certificate.
    let other = site("other");
    let e = link_server_config(
        &east.router.cert_pem,
        other.router.key_pem.as_deref().unwrap(),
        east.ca.cert_pem(),
        &[ALPN_LINK],
    )
    .unwrap_err();
    assert!(e.to_string().contains("link server"), "{e}");
    let e = peer_site_id(&leaf(east.ca.cert_pem()));
    assert_eq!(e.unwrap(), east.id);
    skiff_certs::install_crypto_provider();
    skiff_certs::install_crypto_provider();
}
