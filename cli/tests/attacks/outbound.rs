//! The dialing side: a running site (`skiff site run`) dials a server that presents a
//! certificate from the CA pinned for the link, but for another site id (the address now
//! belongs to another site of the same CA, or a thief of the CA key poses as the site), or
//! for the right site outside its validity. The dialer refuses it and says why in `link list` and its log (which site it
//! expected and which it met; when the certificate expired or becomes valid), the link never
//! comes up, and the server never sees a finished handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn::crypto::rustls::QuicServerConfig;
use skiff_certs::{ALPN_LINK, SiteCa, SiteId, link_server_config};
use tokio::sync::mpsc;

use super::common::Site;
use super::hostile::{
    ANSWER_WITHIN, Validity, Via, expired, forge_link_cert, forge_router_cert, not_yet_valid,
    valid_now, wait_log_line,
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

/// A running site, east, has a link to site west whose endpoint is a server presenting
/// `make_cert(west's CA, west's id)`. Returns the refusal `link list` shows at east (after
/// east's log said it) and the server's first handshake outcome (an error: east aborted).
fn dial_the_impostor(
    via: Via,
    make_cert: impl FnOnce(&SiteCa, SiteId) -> (String, String),
) -> (String, String) {
    let west = SiteId::random();
    let west_ca = SiteCa::generate("west", west).unwrap();
    let (cert, key) = make_cert(&west_ca, west);
    skiff_certs::install_crypto_provider();
    // The impostor serves from this runtime's worker while the test polls east.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (addr, mut handshakes) = rt.block_on(impostor(via, &cert, &key, west_ca.cert_pem()));

    // East is a genuine linked site: its client certificate is from west's CA and certifies
    // east's own link key, as a redemption would have made it.
    let mut east = Site::create("east", false);
    let east_id = site_id(&east);
    let east_key = std::fs::read_to_string(east.dir.join("link.key")).unwrap();
    let link_cert = forge_link_cert(
        west_ca.cert_pem(),
        west_ca.key_pem(),
        east_id,
        &east_key,
        valid_now(),
    );
    std::fs::write(
        east.dir.join("links/to-west.yaml"),
        link_yaml(west, west_ca.cert_pem(), &link_cert, addr, via),
    )
    .unwrap();
    let start = Instant::now();
    east.start();
    let refused = east.wait_link(ANSWER_WITHIN * 2, "refused", |l| {
        assert_ne!(l["status"], "up", "east linked to the impostor: {l:#}");
        l["name"] == "to-west" && l["status"] == "refused"
    });
    eprintln!(
        "{via:?}: east refused the impostor within {:?} of starting",
        start.elapsed()
    );
    let reason = refused["reason"].as_str().unwrap().to_string();
    let line = wait_log_line(&east, &["link refused", "to-west"]);
    assert!(line.contains(&reason), "east's log must say why: {line}");
    let at_server = rt
        .block_on(async { tokio::time::timeout(ANSWER_WITHIN, handshakes.recv()).await })
        .expect("the impostor saw no handshake")
        .unwrap();
    (
        reason,
        at_server.expect_err("the impostor finished a handshake"),
    )
}

fn site_id(site: &Site) -> SiteId {
    let yaml = std::fs::read_to_string(site.dir.join("site.yaml")).unwrap();
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("id: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// A Link resource (as `token redeem` writes one) to site `west` at `addr`.
fn link_yaml(west: SiteId, ca_pem: &str, cert_pem: &str, addr: SocketAddr, via: Via) -> String {
    let block = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: skiff.io/v1alpha1\nkind: Link\nmetadata:\n  name: to-west\nspec:\n  \
         peerSiteId: {west}\n  peerSiteName: west\n  endpoints:\n  - \"{addr}\"\n  \
         peerCa: |\n{}  clientCertificate: |\n{}  cost: 1\n  transport: {}\n",
        block(ca_pem),
        block(cert_pem),
        via.name()
    )
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
