//! Link tests with real sockets on loopback, real TLS and QUIC, and certificates from
//! skiff-certs: two routers per test, one accepting and one dialing.

use std::sync::Arc;
use std::time::Duration;

use skiff_certs::{SiteCa, SiteId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::wire::{PROTOCOL_VERSION, ProtocolVersion, RouterMode};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct Site {
    pub(crate) id: SiteId,
    pub(crate) name: String,
    pub(crate) ca: SiteCa,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

pub(crate) fn site(name: &str) -> Site {
    skiff_certs::install_crypto_provider();
    let id = SiteId::random();
    let ca = SiteCa::generate(name, id).unwrap();
    let issued = ca.issue_router_cert(id, &["127.0.0.1".into()]).unwrap();
    Site {
        id,
        name: name.into(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem.unwrap(),
        ca,
    }
}

pub(crate) fn config(site: &Site, listen: Option<std::net::SocketAddr>) -> RouterConfig {
    let mut cfg = RouterConfig::new(
        site.id,
        site.name.clone(),
        RouterMode::Interior,
        site.cert_pem.clone(),
        site.key_pem.clone(),
        site.ca.cert_pem(),
    );
    cfg.link_listen = listen;
    cfg
}

pub(crate) fn loopback() -> Option<std::net::SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

/// The link spec `dialer` gets by redeeming a token of `acceptor` (without the HTTP part).
pub(crate) fn spec(
    acceptor: &Site,
    dialer: &Site,
    endpoint: String,
    transport: TransportChoice,
) -> LinkSpec {
    let (csr, key) = skiff_certs::generate_link_csr(dialer.id, &dialer.name).unwrap();
    let (_, issued) = acceptor
        .ca
        .sign_link_csr(&csr, Duration::from_secs(3600))
        .unwrap();
    LinkSpec {
        name: format!("to-{}", acceptor.name),
        peer_site_id: acceptor.id,
        peer_site_name: Some(acceptor.name.clone()),
        peer_ca_pem: acceptor.ca.cert_pem().to_string(),
        endpoints: vec![endpoint],
        client_cert_pem: issued.cert_pem,
        client_key_pem: key,
        transport,
        cost: 3,
        proxy: None,
    }
}

pub(crate) struct AllowAll;
impl InboundPolicy for AllowAll {
    fn admit(&self, _: SiteId) -> Result<(), String> {
        Ok(())
    }
}

/// Admits until revoked.
#[derive(Default)]
struct Revocable(std::sync::Mutex<Option<String>>);
impl InboundPolicy for Revocable {
    fn admit(&self, _: SiteId) -> Result<(), String> {
        match &*self.0.lock().unwrap() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}

pub(crate) async fn start(site: &Site, listen: Option<std::net::SocketAddr>) -> Router {
    Router::start(config(site, listen), Arc::new(AllowAll), None)
        .await
        .unwrap()
}

/// Waits until `cond` holds for the router's links; panics with the links after [`WAIT`].
async fn wait_links(
    router: &Router,
    what: &str,
    cond: impl Fn(&[LinkStatus]) -> bool,
) -> Vec<LinkStatus> {
    let mut changes = router.link_changes();
    let result = tokio::time::timeout(WAIT, async {
        loop {
            let links = router.links();
            if cond(&links) {
                return links;
            }
            changes.changed().await.unwrap();
        }
    })
    .await;
    match result {
        Ok(links) => links,
        Err(_) => panic!("timed out waiting for {what}; links: {:#?}", router.links()),
    }
}

/// Polls the single link of each router (every 50 ms, for at most 5 s) until `cond` holds
/// for the pair; figures such as round trips change without a table change.
async fn poll_links(
    a: &Router,
    b: &Router,
    what: &str,
    cond: impl Fn(&LinkStatus, &LinkStatus) -> bool,
) -> (LinkStatus, LinkStatus) {
    for _ in 0..100 {
        if let ([x], [y]) = (&a.links()[..], &b.links()[..])
            && cond(x, y)
        {
            return (x.clone(), y.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}: {:#?} {:#?}",
        a.links(),
        b.links()
    )
}

fn is_up(l: &LinkStatus) -> bool {
    l.state == LinkState::Up
}

async fn link_up(transport: TransportChoice, expected: Transport) {
    let a = site("east");
    let b = site("west");
    let ra = start(&a, loopback()).await;
    let rb = start(&b, None).await;
    let addr = ra.link_addr().unwrap();
    rb.set_links(vec![spec(&a, &b, addr.to_string(), transport)]);

    let out = wait_links(&rb, "outbound link up", |l| l.len() == 1 && is_up(&l[0])).await;
    assert_eq!(out[0].name, "to-east");
    assert_eq!(out[0].direction, Direction::Outbound);
    assert_eq!(out[0].transport, Some(expected));
    assert_eq!(out[0].peer_site_name.as_deref(), Some("east"));
    assert_eq!(out[0].peer_site_id, Some(a.id));
    assert_eq!(out[0].cost, 3);
    let inb = wait_links(&ra, "inbound link up", |l| l.len() == 1 && is_up(&l[0])).await;
    assert_eq!(inb[0].name, "from-west");
    assert_eq!(inb[0].direction, Direction::Inbound);
    assert_eq!(inb[0].peer_site_id, Some(b.id));
    assert_eq!(inb[0].transport, Some(expected));
    assert_eq!(
        inb[0].cost, 3,
        "the dialer's link cost arrives in its hello"
    );

    // Streams each way, bytes intact, half-close honoured.
    let mut a_in = ra.take_incoming().unwrap();
    let mut b_in = rb.take_incoming().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    for (opener, peer, incoming, from) in
        [(&rb, a.id, &mut a_in, b.id), (&ra, b.id, &mut b_in, a.id)]
    {
        let link = opener.link_to(peer).expect("an up link to the peer");
        assert_eq!(link.transport(), expected);
        let mut s = link.open_stream().await.unwrap();
        let echo = async {
            let mut got = incoming.recv().await.unwrap();
            assert_eq!(got.peer, from);
            let mut buf = Vec::new();
            got.stream.reader.read_to_end(&mut buf).await.unwrap();
            got.stream.writer.write_all(&buf).await.unwrap();
            got.stream.writer.shutdown().await.unwrap();
        };
        let send = async {
            s.writer.write_all(&data).await.unwrap();
            s.writer.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.reader.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(echo, send);
        assert!(back == data, "echoed bytes differ");
    }

    // 6 MB crossed each way (3 MB out and echoed, twice): both ends counted at least that,
    // the sender's count matches the receiver's within framing overhead, the round trip was
    // measured and the link came up once.
    let (out, inb) = poll_links(&rb, &ra, "round trips sampled at both ends", |o, i| {
        o.rtt_samples.count() >= 1 && i.rtt_samples.count() >= 1
    })
    .await;
    let moved = 2 * data.len() as u64;
    for l in [&out, &inb] {
        assert!(
            l.bytes_sent >= moved && l.bytes_received >= moved,
            "{expected}: {} counted {} sent, {} received for {moved} each way",
            l.name,
            l.bytes_sent,
            l.bytes_received
        );
        let rtt = l.rtt_ms.unwrap();
        assert!(rtt > 0.0 && rtt < 1000.0, "{expected}: rtt {rtt} ms");
        assert_eq!(l.ups, 1, "{expected}: {l:?}");
        assert!(l.rtt_samples.count() >= 1, "{expected}: {l:?}");
    }
    for (from, to) in [(&out, &inb), (&inb, &out)] {
        let (s, r) = (from.bytes_sent, to.bytes_received);
        // What arrived is the data plus framing (20 % + 64 KiB at most), and was sent.
        assert!(
            r <= moved + moved / 5 + 64 * 1024 && r <= s + 64 * 1024,
            "{expected}: {} sent {s}, {} received {r}",
            from.name,
            to.name
        );
        // TLS/TCP loses nothing on the way; QUIC counts its retransmissions of datagrams
        // lost on loopback under a bulk transfer (6-28 % seen) on the sender's side only.
        let slack = match expected {
            Transport::Tls => s / 5 + 64 * 1024,
            Transport::Quic => s / 2 + 64 * 1024,
        };
        assert!(
            s.abs_diff(r) <= slack,
            "{expected}: {} sent {s}, {} received {r}",
            from.name,
            to.name
        );
    }
    eprintln!(
        "{expected}: {moved} bytes each way: dialer sent {} received {}, acceptor sent {} received {}; rtt {:?} / {:?} ms",
        out.bytes_sent,
        out.bytes_received,
        inb.bytes_sent,
        inb.bytes_received,
        out.rtt_ms,
        inb.rtt_ms
    );

    // Removing the spec closes the link at both ends.
    rb.set_links(vec![]);
    wait_links(&rb, "outbound link removed", |l| l.is_empty()).await;
    wait_links(&ra, "inbound link closed", |l| l.is_empty()).await;
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::test]
async fn quic_link_comes_up_and_carries_streams_both_ways() {
    link_up(TransportChoice::Quic, Transport::Quic).await;
}

#[tokio::test]
async fn tls_link_comes_up_and_carries_streams_both_ways() {
    link_up(TransportChoice::Tls, Transport::Tls).await;
}

#[tokio::test]
async fn auto_prefers_quic() {
    link_up(TransportChoice::Auto, Transport::Quic).await;
}

#[tokio::test]
async fn auto_falls_back_to_tls_when_udp_is_silent() {
    let a = site("east");
    let b = site("west");
    let ra = start(&a, loopback()).await;
    let rb = start(&b, None).await;
    let target = ra.link_addr().unwrap();
    // A port whose UDP side swallows everything and whose TCP side forwards to the router.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let _black_hole = std::net::UdpSocket::bind(front_addr).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            tokio::spawn(async move {
                let mut out = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    rb.set_links(vec![spec(
        &a,
        &b,
        front_addr.to_string(),
        TransportChoice::Auto,
    )]);
    let out = wait_links(&rb, "link up", |l| l.len() == 1 && is_up(&l[0])).await;
    assert_eq!(out[0].transport, Some(Transport::Tls));
    wait_links(&ra, "inbound link up", |l| l.len() == 1 && is_up(&l[0])).await;
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::test]
async fn a_link_keeps_its_metric_labels_and_totals_when_it_falls_back_from_quic_to_tls() {
    let a = site("east");
    let b = site("west");
    let ra = start(&a, loopback()).await;
    let rb = start(&b, None).await;
    let target = ra.link_addr().unwrap();
    rb.set_links(vec![spec(
        &a,
        &b,
        target.to_string(),
        TransportChoice::Auto,
    )]);
    wait_links(&rb, "link up over QUIC", |l| l.len() == 1 && is_up(&l[0])).await;
    // A keepalive interval for a round-trip sample (samples do not wake wait_links).
    tokio::time::sleep(DEFAULT_KEEPALIVE_INTERVAL + Duration::from_millis(300)).await;
    let quic = rb.links().remove(0);
    assert_eq!(quic.transport, Some(Transport::Quic));
    assert!(quic.rtt_samples.count() >= 1, "{quic:?}");
    // The link file now points at a port whose UDP side swallows everything: the link is
    // dialed again (a new dial loop) and comes up over TLS/TCP.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let _black_hole = std::net::UdpSocket::bind(front_addr).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            tokio::spawn(async move {
                let mut out = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    rb.set_links(vec![spec(
        &a,
        &b,
        front_addr.to_string(),
        TransportChoice::Auto,
    )]);
    let tls = wait_links(&rb, "link up over TLS", |l| {
        l.len() == 1 && is_up(&l[0]) && l[0].transport == Some(Transport::Tls)
    })
    .await
    .remove(0);
    assert_eq!(tls.metric_key(), quic.metric_key(), "labels changed");
    assert_eq!(tls.peer_label, "east");
    assert_eq!(tls.ups, 2, "{tls:?}");
    assert!(
        tls.bytes_sent >= quic.bytes_sent && tls.bytes_received >= quic.bytes_received,
        "bytes went down: {quic:?} then {tls:?}"
    );
    assert!(tls.rtt_samples.count() >= quic.rtt_samples.count());
    eprintln!(
        "QUIC then TLS under one key {:?}: ups {} -> {}, bytes sent {} -> {}, rtt samples {} -> {}",
        tls.metric_key(),
        quic.ups,
        tls.ups,
        quic.bytes_sent,
        tls.bytes_sent,
        quic.rtt_samples.count(),
        tls.rtt_samples.count()
    );
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::test]
async fn a_restarted_peer_is_relinked() {
    for transport in [TransportChoice::Quic, TransportChoice::Tls] {
        let a = site("east");
        let b = site("west");
        let ra = start(&a, loopback()).await;
        let addr = ra.link_addr().unwrap();
        let rb = start(&b, None).await;
        rb.set_links(vec![spec(&a, &b, addr.to_string(), transport.clone())]);
        wait_links(&rb, "link up", |l| l.len() == 1 && is_up(&l[0])).await;

        ra.shutdown().await;
        // Down, and retrying (a shut-down peer is not a refusal).
        let down = wait_links(&rb, "link down", |l| !is_up(&l[0])).await;
        assert!(
            matches!(down[0].state, LinkState::Connecting { .. }),
            "{:?}",
            down[0].state
        );

        let sent_before = down[0].bytes_sent;
        assert!(sent_before > 0, "{:?}", down[0]);
        let ra = start(&a, Some(addr)).await;
        let again = wait_links(&rb, "link up again", |l| l.len() == 1 && is_up(&l[0])).await;
        // The dialer's link came up twice; its counters went on from where they were.
        assert_eq!(again[0].ups, 2, "{:?}", again[0]);
        assert!(again[0].bytes_sent >= sent_before, "{:?}", again[0]);
        wait_links(&ra, "inbound link up again", |l| {
            l.len() == 1 && is_up(&l[0])
        })
        .await;
        rb.shutdown().await;
        ra.shutdown().await;
    }
}

fn refusal(links: &[LinkStatus]) -> Option<String> {
    match links.first().map(|l| &l.state) {
        Some(LinkState::Refused { reason }) => Some(reason.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn policy_refusal_and_revocation_are_shown_at_the_dialer() {
    for transport in [TransportChoice::Quic, TransportChoice::Tls] {
        let a = site("east");
        let b = site("west");
        let policy = Arc::new(Revocable::default());
        let ra = Router::start(config(&a, loopback()), policy.clone(), None)
            .await
            .unwrap();
        let rb = start(&b, None).await;
        rb.set_links(vec![spec(
            &a,
            &b,
            ra.link_addr().unwrap().to_string(),
            transport,
        )]);
        wait_links(&rb, "link up", |l| l.len() == 1 && is_up(&l[0])).await;

        // Revocation: the policy says no from now on and the site's links close at once.
        *policy.0.lock().unwrap() = Some("site west was revoked at east".into());
        ra.disconnect_peer(b.id, "site west was revoked at east");
        wait_links(&ra, "inbound link closed", |l| l.is_empty()).await;
        let links = wait_links(&rb, "refusal", |l| refusal(l).is_some()).await;
        let reason = refusal(&links).unwrap();
        assert!(
            reason.contains("refused the link: site west was revoked at east"),
            "{reason}"
        );
        assert!(ra.links().is_empty(), "a refused dialer left a link");
        rb.shutdown().await;
        ra.shutdown().await;
    }
}

#[tokio::test]
async fn a_major_version_mismatch_is_refused_with_both_versions() {
    let a = site("east");
    let b = site("west");
    let ra = start(&a, loopback()).await;
    let v2 = ProtocolVersion { major: 2, minor: 0 };
    let rb = Router::start_with_hello(config(&b, None), Arc::new(AllowAll), None, v2)
        .await
        .unwrap();
    rb.set_links(vec![spec(
        &a,
        &b,
        ra.link_addr().unwrap().to_string(),
        TransportChoice::Auto,
    )]);
    let links = wait_links(&rb, "refusal", |l| refusal(l).is_some()).await;
    let reason = refusal(&links).unwrap();
    assert!(
        reason.contains(&format!(
            "speaks link protocol {PROTOCOL_VERSION}, this router 2.0; upgrade the older router"
        )),
        "{reason}"
    );
    assert!(ra.links().is_empty());
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::test]
async fn a_peer_with_another_sites_certificate_is_refused_with_both_ids() {
    for transport in [TransportChoice::Quic, TransportChoice::Tls] {
        let a = site("east");
        let b = site("west");
        // East's router runs with a certificate from east's CA but for another site id.
        let other = SiteId::random();
        let issued = a.ca.issue_router_cert(other, &[]).unwrap();
        let mut cfg = config(&a, loopback());
        cfg.router_cert_pem = issued.cert_pem;
        cfg.router_key_pem = issued.key_pem.unwrap();
        let ra = Router::start(cfg, Arc::new(AllowAll), None).await.unwrap();
        let rb = start(&b, None).await;
        let addr = ra.link_addr().unwrap();
        rb.set_links(vec![spec(&a, &b, addr.to_string(), transport)]);
        let links = wait_links(&rb, "refusal", |l| refusal(l).is_some()).await;
        let reason = refusal(&links).unwrap();
        let short = |id: SiteId| id.to_string()[..8].to_string();
        assert!(
            reason.starts_with(&format!("peer {addr}"))
                && reason.contains(&format!("is not site {}… named in the link", short(a.id)))
                && reason.contains(&format!("its certificate is for site {}…", short(other))),
            "{reason}"
        );
        rb.shutdown().await;
        ra.shutdown().await;
    }
}

#[tokio::test]
async fn a_link_certificate_from_another_ca_is_refused_by_the_peer() {
    for transport in [TransportChoice::Quic, TransportChoice::Tls] {
        let a = site("east");
        let b = site("west");
        let elsewhere = site("elsewhere");
        let ra = start(&a, loopback()).await;
        let rb = start(&b, None).await;
        // West's link certificate was signed by some other site's CA, not east's.
        let mut bad = spec(
            &elsewhere,
            &b,
            ra.link_addr().unwrap().to_string(),
            transport,
        );
        bad.peer_site_id = a.id;
        bad.peer_ca_pem = a.ca.cert_pem().to_string();
        rb.set_links(vec![bad]);
        let links = wait_links(&rb, "refusal", |l| refusal(l).is_some()).await;
        let reason = refusal(&links).unwrap();
        assert!(
            reason.contains("refused this link: our link certificate was not issued by its CA")
                && reason.contains("redeem a new token issued by that site"),
            "{reason}"
        );
        assert!(ra.links().is_empty());
        rb.shutdown().await;
        ra.shutdown().await;
    }
}

#[tokio::test]
async fn plaintext_and_wrong_alpn_are_refused_and_leave_no_link() {
    let a = site("east");
    let ra = start(&a, loopback()).await;
    let addr = ra.link_addr().unwrap();

    // Plaintext HTTP: the TLS handshake fails and the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(!buf.starts_with(b"HTTP"), "got an HTTP answer");

    let tls_with_alpn = |alpn: Vec<Vec<u8>>| {
        let base = skiff_certs::grant_client_config(a.ca.cert_pem(), a.id).unwrap();
        let mut cfg = (*base).clone();
        cfg.alpn_protocols = alpn;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    };
    let name = rustls_pki_types::ServerName::try_from(a.id.server_name()).unwrap();

    // An ALPN the port does not serve: the handshake is refused.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = tls_with_alpn(vec![b"h2".to_vec()])
        .connect(name.clone(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");

    // No ALPN at all: the handshake completes but the router hangs up.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tls_with_alpn(vec![])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    assert!(buf.is_empty());

    // The link ALPN without a client certificate: the router hangs up too.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tls_with_alpn(vec![skiff_certs::ALPN_LINK.to_vec()])
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    assert!(buf.is_empty());

    assert!(ra.links().is_empty());
    ra.shutdown().await;
}

#[tokio::test]
async fn grant_connections_go_to_the_grant_handler() {
    struct Echo;
    impl GrantHandler for Echo {
        fn serve(
            &self,
            mut stream: tokio_rustls::server::TlsStream<super::LinkSocket>,
            _peer: std::net::SocketAddr,
        ) -> futures_util::future::BoxFuture<'static, ()> {
            Box::pin(async move {
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).await.unwrap();
                stream.write_all(&buf).await.unwrap();
                stream.shutdown().await.unwrap();
            })
        }
    }
    let a = site("east");
    let ra = Router::start(
        config(&a, loopback()),
        Arc::new(AllowAll),
        Some(Arc::new(Echo)),
    )
    .await
    .unwrap();
    let cfg = skiff_certs::grant_client_config(a.ca.cert_pem(), a.id).unwrap();
    let tcp = tokio::net::TcpStream::connect(ra.link_addr().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(a.id.server_name()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    tls.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello");
    assert!(ra.links().is_empty());
    ra.shutdown().await;
}

/// Dead-peer detection on a link over an in-memory pipe, in virtual time.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_declared_dead_after_dead_after() {
    use super::driver::{Established, IncomingSink, LinkCloser, LinkEnd, Timing, run_link};
    use super::handshake::{LocalHello, accept_hello, dial_hello};
    use super::mux::YamuxConnection;

    let a = SiteId::from_bytes([1; 16]);
    let b = SiteId::from_bytes([2; 16]);
    let hello = |id| LocalHello {
        site_id: id,
        site_name: "x".into(),
        mode: RouterMode::Interior,
        version: PROTOCOL_VERSION,
    };
    let (x, y) = tokio::io::duplex(64 * 1024);
    let dialer = Arc::new(YamuxConnection::start(x, true));
    let acceptor = Arc::new(YamuxConnection::start(y, false));
    let (hello_b, hello_a) = (hello(b), hello(a));
    let (d, acc) = tokio::join!(
        dial_hello(&*dialer, &hello_b, a, "pipe", 1),
        accept_hello(&*acceptor, &hello_a, b, &AllowAll)
    );
    let (control, peer) = d.unwrap();
    // The acceptor's side never runs a driver: it stops answering after the hello.
    let _silent = acc.unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let timing = Timing {
        keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
        dead_after: DEFAULT_DEAD_AFTER,
    };
    let (routes, _events) = super::routes::Routes::new(b, "x".into(), RouterMode::Interior);
    let t0 = tokio::time::Instant::now();
    let end = run_link(
        Established {
            conn: dialer,
            control,
            peer,
            transport: Transport::Tls,
            endpoint: "pipe".into(),
        },
        "l",
        LinkCloser::default(),
        timing,
        IncomingSink { tx },
        &routes,
        &Default::default(),
    )
    .await;
    assert_eq!(end, LinkEnd::Dead(DEFAULT_DEAD_AFTER));
    assert_eq!(t0.elapsed(), DEFAULT_DEAD_AFTER);
}

#[tokio::test]
async fn a_taken_link_port_is_reported_with_a_hint() {
    let a = site("east");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = match Router::start(
        config(&a, Some(taken.local_addr().unwrap())),
        Arc::new(AllowAll),
        None,
    )
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("bound a taken port"),
    };
    assert!(err.to_string().contains("--link-port"), "{err}");
}

#[test]
fn status_serializes_for_operators() {
    let s = LinkStatus {
        name: "to-east".into(),
        direction: Direction::Outbound,
        peer_site_id: None,
        peer_site_name: None,
        transport: Some(Transport::Quic),
        endpoint: None,
        proxy: None,
        cost: 1,
        state: LinkState::Refused {
            reason: "no".into(),
        },
        since: "2026-01-01T00:00:00Z".into(),
        bytes_sent: 5,
        bytes_received: 7,
        rtt_ms: Some(0.25),
        ups: 2,
        rtt_samples: Default::default(),
        peer_label: "east".into(),
    };
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["bytes_sent"], 5);
    assert_eq!(v["bytes_received"], 7);
    assert_eq!(v["rtt_ms"], 0.25);
    assert_eq!(v["ups"], 2);
    assert!(v.get("rtt_samples").is_none(), "{v}");
    assert_eq!(v["status"], "refused");
    assert_eq!(v["reason"], "no");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["transport"], "quic");
    assert_eq!("auto".parse::<TransportChoice>(), Ok(TransportChoice::Auto));
    assert_eq!(TransportChoice::Tls.to_string(), "tls");
    assert!("udp".parse::<TransportChoice>().is_err());
}

#[test]
fn a_router_config_never_shows_its_keys_when_printed() {
    let mut cfg = RouterConfig::new(
        SiteId::random(),
        "west",
        RouterMode::Interior,
        "ROUTER-CERT",
        "ROUTER-KEY-SECRET",
        "CA-CERT",
    );
    cfg.stateless_reset_secret = Some("CA-KEY-SECRET".into());
    let shown = format!("{cfg:?}");
    assert!(shown.contains("west"), "{shown}");
    assert!(
        !shown.contains("SECRET"),
        "a key is printed by Debug: {shown}"
    );
}

/// A CONNECT relay on loopback (real sockets; tinyproxy in cli/tests/proxy.rs is the real
/// proxy): answers 200 and copies bytes both ways. Returns its address and the request lines
/// it saw.
async fn connect_relay() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut client, &mut line)
                    .await
                    .unwrap();
                seen.lock().unwrap().push(line.trim_end().to_string());
                let target = line.split(' ').nth(1).unwrap_or_default().to_string();
                loop {
                    let mut header = String::new();
                    let n = tokio::io::AsyncBufReadExt::read_line(&mut client, &mut header)
                        .await
                        .unwrap();
                    if n == 0 || header == "\r\n" {
                        break;
                    }
                }
                // The proxy resolves the name, not the router.
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_proxied_link_is_tls_through_the_tunnel_and_quic_through_a_proxy_is_refused() {
    let a = site("east");
    let b = site("west");
    let ra = start(&a, loopback()).await;
    let rb = start(&b, None).await;
    let (proxy, seen) = connect_relay().await;
    // auto with a proxy dials TLS; the endpoint's name goes to the proxy unresolved.
    let endpoint = format!("localhost:{}", ra.link_addr().unwrap().port());
    let mut proxied = spec(&a, &b, endpoint.clone(), TransportChoice::Auto);
    proxied.proxy = Some(format!("http://{proxy}").parse().unwrap());
    rb.set_links(vec![proxied.clone()]);
    let links = wait_links(&rb, "link up", |l| l.len() == 1 && is_up(&l[0])).await;
    assert_eq!(links[0].transport, Some(Transport::Tls));
    assert_eq!(links[0].proxy.as_deref(), Some(proxy.to_string().as_str()));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("CONNECT {endpoint} HTTP/1.1")]
    );
    // A stream through the tunnel, echoed back intact.
    let mut a_in = ra.take_incoming().unwrap();
    let mut s = rb.link_to(a.id).unwrap().open_stream().await.unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let echo = async {
        let mut got = a_in.recv().await.unwrap();
        let mut buf = Vec::new();
        got.stream.reader.read_to_end(&mut buf).await.unwrap();
        got.stream.writer.write_all(&buf).await.unwrap();
        got.stream.writer.shutdown().await.unwrap();
    };
    let send = async {
        s.writer.write_all(&data).await.unwrap();
        s.writer.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.reader.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(echo, send);
    assert!(back == data, "echoed bytes differ");

    // quic with a proxy: refused, and said why.
    let mut quic = proxied;
    quic.transport = TransportChoice::Quic;
    rb.set_links(vec![quic]);
    let links = wait_links(&rb, "refusal", |l| refusal(l).is_some()).await;
    let reason = refusal(&links).unwrap();
    assert!(
        reason.contains("an HTTP proxy tunnels TCP only and QUIC is UDP"),
        "{reason}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a quic link dialled the proxy"
    );
    rb.shutdown().await;
    ra.shutdown().await;
}
