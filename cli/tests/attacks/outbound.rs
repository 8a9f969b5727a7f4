//! The dialing side: a router dials a server that presents a certificate from the CA pinned
//! for the link, but for another site id (the address now belongs to another site of the
//! same CA, or a thief of the CA key poses as the site), or for the right site outside its
//! validity. The dialer refuses it and says why (which site it expected and which it met; when
//! the certificate expired or becomes valid), the link never comes up, and the server never
//! sees a finished handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use skiff_certs::{ALPN_LINK, SiteCa, SiteId, link_server_config};
use skiff_router::link::{LinkSpec, Router, RouterConfig};
use skiff_router::wire::RouterMode;
use tokio::sync::mpsc;

use super::hostile::{
    ANSWER_WITHIN, AdmitAll, Validity, Via, block_on, expired, forge_link_cert, forge_router_cert,
    new_key, not_yet_valid, valid_now, wait_refused,
};

/// A server on loopback presenting `cert`; reports the outcome of every handshake.
async fn impostor(
    via: Via,
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<(), String>>) {
    let tls = link_server_config(cert_pem, key_pem, client_ca_pem, &[ALPN_LINK]).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    match via {
        Via::Tls => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            // Ends with the runtime (the end of the test).
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let r = acceptor.accept(tcp).await.map(drop);
                    if tx.send(r.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            });
            (addr, rx)
        }
        Via::Quic => {
            let crypto = QuicServerConfig::try_from(tls).unwrap();
            let cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = ep.local_addr().unwrap();
            tokio::spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let r = incoming.await.map(drop);
                    if tx.send(r.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            });
            (addr, rx)
        }
    }
}

/// A router dials site west at the address of a server presenting `make_cert(west's CA,
/// west's id)`. Returns the dialer's refusal and the server's first handshake outcome (an
/// error: the dialer aborted).
fn dial_the_impostor(
    via: Via,
    make_cert: impl FnOnce(&SiteCa, SiteId) -> (String, String),
) -> (String, String) {
    let west = SiteId::random();
    let west_ca = SiteCa::generate("west", west).unwrap();
    let (cert, key) = make_cert(&west_ca, west);
    block_on(async {
        let (addr, mut handshakes) = impostor(via, &cert, &key, west_ca.cert_pem()).await;
        // The dialer is a genuine linked site: its client certificate is from west's CA.
        let me = SiteId::random();
        let own_ca = SiteCa::generate("east", me).unwrap();
        let own = own_ca.issue_router_cert(me, &[]).unwrap();
        let link_key = new_key();
        let link_cert = forge_link_cert(
            west_ca.cert_pem(),
            west_ca.key_pem(),
            me,
            &link_key,
            valid_now(),
        );
        let cfg = RouterConfig::new(
            me,
            "east",
            RouterMode::Interior,
            own.cert_pem.clone(),
            own.key_pem.clone().unwrap(),
            own_ca.cert_pem(),
        );
        let router = Router::start(cfg, Arc::new(AdmitAll), None).await.unwrap();
        let start = std::time::Instant::now();
        router.set_links(vec![LinkSpec {
            name: "to-west".into(),
            peer_site_id: west,
            peer_ca_pem: west_ca.cert_pem().into(),
            endpoints: vec![addr.to_string()],
            client_cert_pem: link_cert,
            client_key_pem: link_key,
            transport: via.choice(),
            cost: 1,
        }]);
        let reason = wait_refused(&router, ANSWER_WITHIN).await;
        eprintln!(
            "{via:?}: the dialer refused the impostor after {:?}",
            start.elapsed()
        );
        let at_server = tokio::time::timeout(ANSWER_WITHIN, handshakes.recv())
            .await
            .expect("the impostor saw no handshake")
            .unwrap();
        router.shutdown().await;
        (
            reason,
            at_server.expect_err("the impostor finished a handshake"),
        )
    })
}

/// West's CA signs a certificate for `impostor` (URI SAN) whose DNS SAN names
/// `dns_site(west, impostor)`; the dialer must name the site it expected and the one it met.
fn dial_another_site(via: Via, dns_site: fn(SiteId, SiteId) -> SiteId) -> String {
    let impostor_id = SiteId::random();
    let mut west_id = None;
    let (reason, at_server) = dial_the_impostor(via, |ca, west| {
        west_id = Some(west);
        forge_router_cert(
            ca.cert_pem(),
            ca.key_pem(),
            impostor_id,
            dns_site(west, impostor_id),
            valid_now(),
        )
    });
    let short = |id: SiteId| id.to_string()[..8].to_string();
    assert!(
        reason.contains(&format!("is not site {}", short(west_id.unwrap())))
            && reason.contains(&format!(
                "its certificate is for site {}",
                short(impostor_id)
            )),
        "the dialer must name the site it expected and the one it met: {reason}"
    );
    at_server
}

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

over_both_transports!(
    server_certificate_from_the_pinned_ca_for_another_site,
    server_certificate_with_the_expected_name_but_another_site_id,
    expired_server_certificate,
    not_yet_valid_server_certificate,
);

fn server_certificate_from_the_pinned_ca_for_another_site(via: Via) {
    // A router certificate of another site of the same CA: both its SANs name that site.
    let at_server = dial_another_site(via, |_, impostor| impostor);
    assert_peer_aborted(via, &at_server);
}

fn server_certificate_with_the_expected_name_but_another_site_id(via: Via) {
    // Its DNS SAN is the server name the dialer asks for, so TLS name checking passes; only
    // the site id in the URI SAN gives it away.
    let at_server = dial_another_site(via, |west, _| west);
    assert_peer_aborted(via, &at_server);
}

/// The right site's certificate from the pinned CA, valid over `validity`.
fn right_site_cert(validity: Validity) -> impl FnOnce(&SiteCa, SiteId) -> (String, String) {
    move |ca, west| forge_router_cert(ca.cert_pem(), ca.key_pem(), west, west, validity)
}

fn expired_server_certificate(via: Via) {
    let (reason, at_server) = dial_the_impostor(via, right_site_cert(expired()));
    assert!(
        reason.contains("'s certificate expired at ") && reason.contains(" ago)"),
        "the dialer must say when the certificate expired: {reason}"
    );
    assert_peer_aborted(via, &at_server);
}

fn not_yet_valid_server_certificate(via: Via) {
    let (reason, at_server) = dial_the_impostor(via, right_site_cert(not_yet_valid()));
    assert!(
        reason.contains("'s certificate is not valid before ") && reason.contains("from now)"),
        "the dialer must say from when the certificate is valid: {reason}"
    );
    assert_peer_aborted(via, &at_server);
}

/// The server saw the dialer abort the handshake with a certificate alert.
fn assert_peer_aborted(via: Via, at_server: &str) {
    let ok = match via {
        Via::Tls => at_server.contains("received fatal alert"),
        Via::Quic => at_server.contains("aborted by peer: the cryptographic handshake failed"),
    };
    assert!(ok, "{via:?}: the impostor saw: {at_server}");
}
