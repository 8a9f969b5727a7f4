//! The dialing side: a router dials a server that presents a certificate from the CA pinned
//! for the link, but for another site id (the address now belongs to another site of the
//! same CA, or a thief of the CA key poses as the site). The dialer refuses it, says which
//! site it expected and which it met, and the link never comes up; the server never sees a
//! finished handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use skiff_certs::{ALPN_LINK, SiteCa, SiteId, link_server_config};
use skiff_router::link::{LinkSpec, Router, RouterConfig};
use skiff_router::wire::RouterMode;
use tokio::sync::mpsc;

use super::hostile::{
    ANSWER_WITHIN, AdmitAll, Via, block_on, forge_link_cert, forge_router_cert, new_key, valid_now,
    wait_refused,
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

/// West's CA signs a server certificate for `impostor` (URI SAN) whose DNS SAN names
/// `dns_site(west, impostor)`; a router dials west at the impostor's address. Returns the
/// dialer's refusal and the impostor's first handshake outcome.
fn dial_the_impostor(via: Via, dns_site: fn(SiteId, SiteId) -> SiteId) -> (String, String) {
    let west = SiteId::random();
    let west_ca = SiteCa::generate("west", west).unwrap();
    let impostor_id = SiteId::random();
    let (cert, key) = forge_router_cert(
        west_ca.cert_pem(),
        west_ca.key_pem(),
        impostor_id,
        dns_site(west, impostor_id),
    );
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
        let short = |id: SiteId| id.to_string()[..8].to_string();
        assert!(
            reason.contains(&format!("is not site {}", short(west)))
                && reason.contains(&format!(
                    "its certificate is for site {}",
                    short(impostor_id)
                )),
            "the dialer must name the site it expected and the one it met: {reason}"
        );
        (
            reason,
            at_server.expect_err("the impostor finished a handshake"),
        )
    })
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
);

fn server_certificate_from_the_pinned_ca_for_another_site(via: Via) {
    // A router certificate of another site of the same CA: both its SANs name that site.
    let (_, at_server) = dial_the_impostor(via, |_, impostor| impostor);
    assert_peer_aborted(via, &at_server);
}

fn server_certificate_with_the_expected_name_but_another_site_id(via: Via) {
    // Its DNS SAN is the server name the dialer asks for, so TLS name checking passes; only
    // the site id in the URI SAN gives it away.
    let (_, at_server) = dial_the_impostor(via, |west, _| west);
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
