//! The attacker's tools: raw TLS/TCP and QUIC clients that present whatever a test hands them,
//! a real skiff router dialing with forged credentials, certificates minted with a site's own
//! CA key, and the site state an attack must leave untouched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::ServerName;
use skiff_certs::{SiteCa, SiteId};
use skiff_router::link::{
    InboundPolicy, LinkSpec, LinkState, Router, RouterConfig, TransportChoice, error_chain,
};
use skiff_router::wire::RouterMode;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Site;

/// How long a site may take to refuse before a test calls it silence (refusals take
/// milliseconds on loopback).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The transport an attack uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// TLS over TCP.
    Tls,
    /// QUIC over UDP, on the same port number.
    Quic,
}

impl Via {
    /// The transport choice of a link spec or `token redeem --transport`.
    pub fn choice(self) -> TransportChoice {
        match self {
            Via::Tls => TransportChoice::Tls,
            Via::Quic => TransportChoice::Quic,
        }
    }

    /// `tls` or `quic`, as in `link list`.
    pub fn name(self) -> &'static str {
        match self {
            Via::Tls => "tls",
            Via::Quic => "quic",
        }
    }
}

/// A site under attack as an attacker knows it: its link address, site id and CA (all in any
/// token it issued), and its CA key (as a thief of the site folder would, to forge).
pub struct Target {
    /// The link port (TCP and UDP).
    pub addr: SocketAddr,
    /// The site id.
    pub id: SiteId,
    /// `ca.crt`.
    pub ca_pem: String,
    /// `ca.key`.
    pub ca_key_pem: String,
}

/// The target a running site offers.
pub fn target(site: &Site) -> Target {
    let status = site.run(&["site", "status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    Target {
        addr: v["site"]["linkAddress"].as_str().unwrap().parse().unwrap(),
        id: v["site"]["id"].as_str().unwrap().parse().unwrap(),
        ca_pem: std::fs::read_to_string(site.dir.join("ca.crt")).unwrap(),
        ca_key_pem: std::fs::read_to_string(site.dir.join("ca.key")).unwrap(),
    }
}

/// What a hostile client saw.
#[derive(Debug)]
pub enum Seen {
    /// The handshake failed at the client: an alert, a close or a reset.
    HandshakeFailed(String),
    /// The client's side of the handshake completed, then the site closed the connection.
    Closed(String),
    /// The site sent bytes back: the connection was served.
    Answered,
    /// Nothing within [`ANSWER_WITHIN`].
    Silence,
}

/// One attempt and how long the site took to answer it.
#[derive(Debug)]
pub struct Attempt {
    /// What the client saw.
    pub seen: Seen,
    /// From the first packet to the refusal.
    pub took: Duration,
}

impl Attempt {
    /// The client's error text (empty if there was none).
    pub fn text(&self) -> &str {
        match &self.seen {
            Seen::HandshakeFailed(s) | Seen::Closed(s) => s,
            _ => "",
        }
    }

    /// Panics unless the site refused: a handshake error or a close, never bytes or silence.
    pub fn assert_refused(&self) {
        assert!(
            matches!(self.seen, Seen::HandshakeFailed(_) | Seen::Closed(_)),
            "the connection was not refused: {self:?}"
        );
        assert!(self.took < ANSWER_WITHIN, "{self:?}");
    }
}

/// Runs `f` on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    skiff_certs::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Connects to `t` over `via` with `config` and tries to use the connection.
pub async fn attempt(t: &Target, via: Via, config: Arc<rustls::ClientConfig>) -> Attempt {
    match via {
        Via::Tls => {
            let start = Instant::now();
            let seen = tls_attempt(t, config).await;
            Attempt {
                seen,
                took: start.elapsed(),
            }
        }
        Via::Quic => quic_attempt(t, config).await,
    }
}

async fn tls_attempt(t: &Target, config: Arc<rustls::ClientConfig>) -> Seen {
    let tcp = TcpStream::connect(t.addr).await.unwrap();
    let name = ServerName::try_from(t.id.server_name()).unwrap();
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let mut tls = match tokio::time::timeout(ANSWER_WITHIN, connect).await {
        Err(_) => return Seen::Silence,
        Ok(Err(e)) => return Seen::HandshakeFailed(e.to_string()),
        Ok(Ok(tls)) => tls,
    };
    // TLS 1.3: the server judges the client certificate after the client finished; a
    // refusal shows on the first read.
    let _ = tls.write_all(b"\0\0\0\0\0\0\0\0").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(ANSWER_WITHIN, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Seen::Closed("closed".into()),
        Ok(Ok(_)) => Seen::Answered,
        Ok(Err(e)) => Seen::Closed(e.to_string()),
        Err(_) => Seen::Silence,
    }
}

/// A quinn client endpoint on an ephemeral loopback port.
pub fn quic_client() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

async fn quic_attempt(t: &Target, config: Arc<rustls::ClientConfig>) -> Attempt {
    let crypto = QuicClientConfig::try_from(config).unwrap();
    let ep = quic_client();
    let start = Instant::now();
    let connecting = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            t.addr,
            &t.id.server_name(),
        )
        .unwrap();
    let seen = match tokio::time::timeout(ANSWER_WITHIN, connecting).await {
        Err(_) => Seen::Silence,
        Ok(Err(e)) => Seen::HandshakeFailed(e.to_string()),
        Ok(Ok(conn)) => {
            // As with TLS 1.3, the site judges our certificate after our side finished.
            let used = async {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(b"\0\0\0\0\0\0\0\0").await?;
                let mut buf = [0u8; 64];
                Ok::<_, Box<dyn std::error::Error>>(recv.read(&mut buf).await?)
            };
            match tokio::time::timeout(ANSWER_WITHIN, used).await {
                Ok(Ok(Some(_))) => Seen::Answered,
                Ok(Ok(None)) => Seen::Closed("stream finished".into()),
                Ok(Err(e)) => Seen::Closed(error_chain(&*e)),
                Err(_) => Seen::Silence,
            }
        }
    };
    let took = start.elapsed();
    ep.close(0u32.into(), b"");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    Attempt { seen, took }
}

/// A validity window.
pub type Validity = (OffsetDateTime, OffsetDateTime);

/// Valid from an hour ago to an hour from now.
pub fn valid_now() -> Validity {
    let now = OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
    )
}

/// Valid from two days ago until yesterday.
pub fn expired() -> Validity {
    let now = OffsetDateTime::now_utc();
    (now - time::Duration::days(2), now - time::Duration::days(1))
}

/// Valid from tomorrow on.
pub fn not_yet_valid() -> Validity {
    let now = OffsetDateTime::now_utc();
    (now + time::Duration::days(1), now + time::Duration::days(2))
}

/// A fresh P-256 key, PEM.
pub fn new_key() -> String {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

/// A link client certificate as a site CA issues one (clientAuth, URI SAN of `site`)
/// certifying `key_pem`, signed by the CA `ca_pem`/`ca_key_pem`, valid over `validity`.
pub fn forge_link_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    site: SiteId,
    key_pem: &str,
    validity: Validity,
) -> String {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("skiff link {site}"));
    params.subject_alt_names = vec![uri_san(site)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = validity.0;
    params.not_after = validity.1;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::from_pem(key_pem).unwrap();
    params.signed_by(&key, &issuer).unwrap().pem()
}

/// A router (server) certificate signed by the CA `ca_pem`/`ca_key_pem` whose URI SAN names
/// `uri_site` and whose DNS SAN names `dns_site`'s server name, valid over `validity`;
/// returns `(cert, key)` PEM.
pub fn forge_router_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    uri_site: SiteId,
    dns_site: SiteId,
    validity: Validity,
) -> (String, String) {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("skiff router {uri_site}"));
    params.subject_alt_names = vec![
        uri_san(uri_site),
        SanType::DnsName(dns_site.server_name().try_into().unwrap()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = validity.0;
    params.not_after = validity.1;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn uri_san(site: SiteId) -> SanType {
    SanType::URI(site.uri().try_into().unwrap())
}

/// A self-signed certificate naming `site`, and its key.
pub fn self_signed(site: SiteId) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![uri_san(site)];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Dials `t` over `via` with a real skiff router that says it is `claimed` in its hello and
/// presents `cert_pem`/`key_pem`; returns the refusal the dialer was given and how long the
/// first attempt took to be refused.
pub async fn dial_as(
    t: &Target,
    via: Via,
    claimed: SiteId,
    cert_pem: &str,
    key_pem: &str,
) -> (String, Duration) {
    let own_ca = SiteCa::generate("intruder", claimed).unwrap();
    let own = own_ca.issue_router_cert(claimed, &[]).unwrap();
    let cfg = RouterConfig::new(
        claimed,
        "intruder",
        RouterMode::Interior,
        own.cert_pem.clone(),
        own.key_pem.clone().unwrap(),
        own_ca.cert_pem(),
    );
    let router = Router::start(cfg, Arc::new(AdmitAll), None).await.unwrap();
    let start = Instant::now();
    router.set_links(vec![LinkSpec {
        name: "to-target".into(),
        peer_site_id: t.id,
        peer_site_name: None,
        peer_ca_pem: t.ca_pem.clone(),
        endpoints: vec![t.addr.to_string()],
        client_cert_pem: cert_pem.into(),
        client_key_pem: key_pem.into(),
        transport: via.choice(),
        cost: 1,
        proxy: None,
    }]);
    let refused = wait_refused(&router, ANSWER_WITHIN * 2).await;
    let took = start.elapsed();
    router.shutdown().await;
    (refused, took)
}

/// Polls `router`'s only link until it is refused; panics if it comes up or nothing is
/// refused within `within`.
pub async fn wait_refused(router: &Router, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let links = router.links();
        match links.first().map(|l| &l.state) {
            Some(LinkState::Refused { reason }) => return reason.clone(),
            Some(LinkState::Up) => panic!("the link came up: {links:?}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not refused within {within:?}: {links:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Admits every site (the hostile router accepts nothing anyway: it has no link port).
pub struct AdmitAll;

impl InboundPolicy for AdmitAll {
    fn admit(&self, _: SiteId) -> Result<(), String> {
        Ok(())
    }
}

/// The files an attack must leave as they were: `peers/` (the sites that may link in, with
/// their keys) and `grants/` (tokens and how often each was redeemed).
#[derive(Debug, PartialEq, Eq)]
pub struct State(BTreeMap<String, String>);

impl State {
    /// The state of `site` now.
    pub fn of(site: &Site) -> State {
        let mut files = BTreeMap::new();
        for dir in ["peers", "grants"] {
            let Ok(entries) = std::fs::read_dir(site.dir.join(dir)) else {
                continue;
            };
            for e in entries {
                let e = e.unwrap();
                let name = format!("{dir}/{}", e.file_name().to_string_lossy());
                files.insert(name, std::fs::read_to_string(e.path()).unwrap());
            }
        }
        State(files)
    }

    /// How many files of `dir` (`peers` or `grants`) there are.
    pub fn count(&self, dir: &str) -> usize {
        let prefix = format!("{dir}/");
        self.0.keys().filter(|k| k.starts_with(&prefix)).count()
    }
}

/// Waits until `site`'s log has a line containing every one of `needles`; returns the line.
pub fn wait_log_line(site: &Site, needles: &[&str]) -> String {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let log = site.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the site's log has no line with all of {needles:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
