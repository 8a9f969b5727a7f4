//! Black-box tests of what a running site does with hostile or broken connections to its link
//! port: each is refused, logged with the reason, and creates no link and no state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Site;
use rustls_pki_types::ServerName;
use skiff_certs::{SiteCa, SiteId, grant_client_config, link_client_config};
use skiff_router::link::{
    InboundPolicy, LinkSpec, LinkState, Router, RouterConfig, TransportChoice,
};
use skiff_router::wire::RouterMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Target {
    addr: String,
    id: SiteId,
    ca_pem: String,
}

fn target(west: &Site) -> Target {
    let status = west.run(&["site", "status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    Target {
        addr: v["site"]["linkAddress"].as_str().unwrap().to_string(),
        id: v["site"]["id"].as_str().unwrap().parse().unwrap(),
        ca_pem: std::fs::read_to_string(west.dir.join("ca.crt")).unwrap(),
    }
}

/// Connects with `config` and tries to use the connection; returns what the client saw.
async fn attempt(t: &Target, config: Arc<rustls::ClientConfig>) -> String {
    let tcp = TcpStream::connect(&t.addr).await.unwrap();
    let name = ServerName::try_from(t.id.server_name()).unwrap();
    match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Err(e) => format!("handshake failed: {e}"),
        Ok(mut tls) => {
            // TLS 1.3: a refused client certificate shows on the first read.
            let _ = tls.write_all(b"\0\0\0\0\0\0\0\0").await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
                Ok(Ok(0)) => "closed".into(),
                Ok(Ok(n)) => format!("read {n} bytes"),
                Ok(Err(e)) => format!("read failed: {e}"),
                Err(_) => "no answer in 10s".into(),
            }
        }
    }
}

fn assert_refused(west: &Site, seen: &str, log_says: &[&str]) {
    let accepted = seen.starts_with("read ") && !seen.starts_with("read failed");
    assert!(
        !accepted && !seen.starts_with("no answer"),
        "the connection was not refused: {seen}"
    );
    assert!(
        west.links().is_empty(),
        "a refused connection made a link: {:?}",
        west.links()
    );
    let log = west.log();
    assert!(
        log_says.iter().any(|s| log.contains(s)),
        "the site's log does not give the reason (one of {log_says:?}):\n{log}"
    );
    assert!(
        std::fs::read_dir(west.dir.join("peers"))
            .unwrap()
            .next()
            .is_none(),
        "state was created"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    skiff_certs::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn plaintext_to_the_link_port_is_refused_and_logged() {
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let seen = runtime().block_on(async {
        let mut tcp = TcpStream::connect(&t.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    assert!(!seen.contains("HTTP/1.1 200"), "{seen}");
    assert_refused(
        &west,
        "closed",
        &["TLS handshake failed (not a skiff router or token client?)"],
    );
}

#[test]
fn a_wrong_alpn_is_refused_and_logged() {
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let seen = runtime().block_on(async {
        let mut cfg = (*grant_client_config(&t.ca_pem, t.id).unwrap()).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        attempt(&t, Arc::new(cfg)).await
    });
    assert!(seen.contains("handshake failed"), "{seen}");
    assert_refused(&west, &seen, &["peer doesn't support any known protocol"]);
}

#[test]
fn a_link_without_a_client_certificate_is_refused_and_logged() {
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let seen = runtime().block_on(async {
        let mut cfg = (*grant_client_config(&t.ca_pem, t.id).unwrap()).clone();
        cfg.alpn_protocols = vec![skiff_certs::ALPN_LINK.to_vec()];
        attempt(&t, Arc::new(cfg)).await
    });
    assert_refused(
        &west,
        &seen,
        &["refused a link: the peer presented no client certificate"],
    );
}

#[test]
fn a_self_signed_client_certificate_is_refused_and_logged() {
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let stranger = SiteId::random();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(stranger.uri()).unwrap(),
    )];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let seen = runtime().block_on(attempt(
        &t,
        link_client_config(&cert.pem(), &key.serialize_pem(), &t.ca_pem, t.id).unwrap(),
    ));
    assert!(
        seen.contains("alert"),
        "the client must be told by an alert: {seen}"
    );
    assert_refused(&west, &seen, &["invalid peer certificate: UnknownIssuer"]);
}

#[test]
fn a_client_certificate_from_another_sites_ca_is_refused_and_logged() {
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let stranger = SiteId::random();
    let other_ca = SiteCa::generate("mallory", stranger).unwrap();
    let (csr, key) = skiff_certs::generate_link_csr(stranger, "mallory").unwrap();
    let (_, cert) = other_ca
        .sign_link_csr(&csr, Duration::from_secs(3600))
        .unwrap();
    let seen = runtime().block_on(attempt(
        &t,
        link_client_config(&cert.cert_pem, &key, &t.ca_pem, t.id).unwrap(),
    ));
    assert!(
        seen.contains("alert"),
        "the client must be told by an alert: {seen}"
    );
    assert_refused(&west, &seen, &["invalid peer certificate: UnknownIssuer"]);
}

#[test]
fn a_certificate_from_the_right_ca_for_a_site_that_never_redeemed_is_refused() {
    // Someone with west's CA key could mint certificates; a site must also have redeemed a
    // grant. Here the certificate is genuine but its site id is unknown to west.
    let mut west = Site::create("west", true);
    west.start();
    let t = target(&west);
    let ca = SiteCa::from_pem(
        &std::fs::read_to_string(west.dir.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(west.dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let intruder = SiteId::random();
    let (csr, key) = skiff_certs::generate_link_csr(intruder, "intruder").unwrap();
    let (_, cert) = ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    // The intruder dials with a real router, so the refusal travels back as a reason.
    let own_ca = SiteCa::generate("intruder", intruder).unwrap();
    let own = own_ca.issue_router_cert(intruder, &[]).unwrap();
    let reason = runtime().block_on(async {
        let cfg = RouterConfig::new(
            intruder,
            "intruder",
            RouterMode::Interior,
            own.cert_pem.clone(),
            own.key_pem.clone().unwrap(),
            own_ca.cert_pem(),
        );
        let router = Router::start(cfg, Arc::new(AdmitAll), None).await.unwrap();
        router.set_links(vec![LinkSpec {
            name: "to-west".into(),
            peer_site_id: t.id,
            peer_ca_pem: t.ca_pem.clone(),
            endpoints: vec![t.addr.clone()],
            client_cert_pem: cert.cert_pem.clone(),
            client_key_pem: key.clone(),
            transport: TransportChoice::Tls,
            cost: 1,
        }]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let reason = loop {
            if let Some(LinkState::Refused { reason }) =
                router.links().first().map(|l| l.state.clone())
            {
                break reason;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                router.links()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        router.shutdown().await;
        reason
    });
    assert!(
        reason.contains("never redeemed"),
        "the intruder must be told why: {reason}"
    );
    assert!(
        west.links().iter().all(|l| l["status"] != "up"),
        "{:?}",
        west.links()
    );
    let log = west.log();
    assert!(
        log.contains("never redeemed"),
        "the log must say why:\n{log}"
    );
}

struct AdmitAll;
impl InboundPolicy for AdmitAll {
    fn admit(&self, _: SiteId) -> Result<(), String> {
        Ok(())
    }
}
