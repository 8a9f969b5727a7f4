//! UDP flows between routers, below the listener: a [`Hop`] over a real QUIC link and a real
//! TLS/TCP link (datagrams both ways before and after the status, QUIC datagrams for small
//! ones, stream frames for large ones, clean ends and resets), the UDP egress with a real
//! UDP echo backend (and a closed backend port), and the UDP transit role on three routers
//! in a line. Flow streams are opened by hand (header, then datagram frames), as the UDP
//! ingress opens them.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use skiff_certs::SiteId;
use tokio::net::UdpSocket;

use super::*;
use crate::flow::udp::egress::{REFUSED_HOLD, REFUSED_RESET};
use crate::flow::udp::hop::{Hop, Via};
use crate::flow::{FlowOutcome, FlowRecord, FlowRole, UdpDropReason, UdpKeyStats};
use crate::link::LinkSpec;
use crate::link::datagram::DatagramCounters;
use crate::wire::{FlowHeader, FlowStatusCode};

/// A UDP echo server on loopback; it stops with the test's runtime.
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A loopback UDP port nobody listens on (bound, then closed).
fn closed_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn udp_connector(name: &str, k: &str, backend: SocketAddr) -> ConnectorSpec {
    ConnectorSpec {
        protocol: Protocol::Udp,
        ..connector(name, k, backend)
    }
}

/// The encoded header of a UDP flow from `origin` to `destination` for `key`.
fn udp_header(key: &str, origin: SiteId, destination: SiteId, flow_id: u64) -> Bytes {
    let mut out = BytesMut::new();
    FlowHeader {
        routing_key: key.into(),
        destination: *destination.as_bytes(),
        origin: *origin.as_bytes(),
        flow_id,
        protocol: Protocol::Udp,
        hops: 0,
        client: None,
    }
    .encode(&mut out);
    out.freeze()
}

/// Opens a UDP flow on the link from `from` to its neighbour `next`, for `key` at
/// `destination`.
async fn open_flow(from: (&Router, SiteId), next: SiteId, destination: SiteId, key: &str) -> Hop {
    let link = from.0.link_to(next).expect("an up link to the next hop");
    let stream = link.open_stream().await.unwrap();
    let header = udp_header(key, from.1, destination, crate::flow::random_u64());
    Hop::opened(stream, link.datagrams(), header)
}

/// The next datagram of `hop` within [`WAIT`].
async fn next(hop: &mut Hop) -> Bytes {
    within(WAIT, "a datagram", hop.recv())
        .await
        .expect("the hop works")
        .expect("the flow goes on")
}

/// The datagram counters of `router`'s QUIC links (router-wide).
fn link_counters(router: &Router, peer: SiteId) -> Option<Arc<DatagramCounters>> {
    router
        .link_to(peer)
        .and_then(|l| l.datagrams())
        .map(|d| d.counters.clone())
}

fn load(c: &Option<Arc<DatagramCounters>>) -> (u64, u64) {
    c.as_ref().map_or((0, 0), |c| {
        (
            c.sent.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
        )
    })
}

/// `key`'s UDP statistics at `router`.
fn udp_stats(router: &Router, key: &str) -> UdpKeyStats {
    router
        .udp_stats()
        .into_iter()
        .find(|s| s.key == key)
        .unwrap_or_default()
}

fn count(v: &[(FlowRole, u64)], role: FlowRole) -> u64 {
    v.iter().find(|x| x.0 == role).map_or(0, |x| x.1)
}

fn dropped(s: &UdpKeyStats, reason: UdpDropReason) -> u64 {
    s.dropped.iter().find(|x| x.0 == reason).map_or(0, |x| x.1)
}

/// Polls `router`'s recent flows for one of `role` and `key`, within [`WAIT`].
async fn record_of(router: &Router, role: FlowRole, key: &str) -> FlowRecord {
    within(WAIT, "a flow record", async {
        loop {
            let found = router
                .recent_flows()
                .into_iter()
                .find(|r| r.role == role && r.routing_key == key);
            if let Some(r) = found {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Distinct datagrams: `n` of `len` bytes each, numbered in their first bytes.
fn datagrams(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut d = pattern(seed + i as u64, len);
            d[..4].copy_from_slice(&(i as u32).to_be_bytes());
            d
        })
        .collect()
}

/// Sends 20 small datagrams from `from` to `to`, one at a time (as requests and answers go:
/// nothing queues anywhere), each going `via`; every one arrives whole.
async fn exchange(from: &mut Hop, to: &mut Hop, seed: u64, via: Via) {
    let sent = datagrams(seed, 20, 100);
    let mut received = BTreeSet::new();
    for d in &sent {
        assert_eq!(from.send(d), Ok(via));
        received.insert(next(to).await.to_vec());
    }
    assert_eq!(received, sent.into_iter().collect(), "every datagram whole");
}

async fn hop_carries_datagrams(transport: TransportChoice, quic: bool) {
    let net = chain(2, transport).await;
    converge(&net).await;
    let (a, b) = (&net.routers[0], &net.routers[1]);
    let (a_id, b_id) = (net.sites[0].id, net.sites[1].id);
    let mut incoming = a.take_incoming().unwrap();
    let (b_dg, a_dg) = (link_counters(b, a_id), link_counters(a, b_id));
    assert_eq!(b_dg.is_some(), quic, "datagrams on QUIC links only");
    let (b_sent0, _) = load(&b_dg);
    let (a_sent0, a_recv0) = load(&a_dg);

    // B opens; three datagrams (one empty) before the status go as frames.
    let mut opener = open_flow((b, b_id), a_id, a_id, "dns").await;
    let early = [b"".to_vec(), b"q1".to_vec(), pattern(1, 1000)];
    for d in &early {
        assert_eq!(opener.send(d), Ok(Via::Stream));
    }
    let mut got = within(WAIT, "the stream", incoming.recv()).await.unwrap();
    let mut buf = BytesMut::new();
    let header = crate::flow::tcp::read_frame(
        &mut got.stream,
        &mut buf,
        "its flow header",
        FlowHeader::decode,
    )
    .await
    .unwrap();
    assert_eq!(header.protocol, Protocol::Udp);
    let mut acceptor = Hop::accepted(got.stream, got.datagrams, buf);
    acceptor
        .write_status(&crate::wire::FlowStatusFrame::ok())
        .await
        .unwrap();
    for d in &early {
        assert_eq!(&next(&mut acceptor).await[..], &d[..], "boundaries kept");
    }
    let status = within(WAIT, "the status", opener.read_status())
        .await
        .unwrap();
    assert_eq!(status.code, FlowStatusCode::Ok);
    assert_eq!(opener.quic_datagrams(), quic);
    assert_eq!(acceptor.quic_datagrams(), quic);

    // After the status: small ones as QUIC datagrams on QUIC, frames on TLS; both ways.
    let small_via = if quic { Via::Datagram } else { Via::Stream };
    exchange(&mut opener, &mut acceptor, 10, small_via).await;
    exchange(&mut acceptor, &mut opener, 20, small_via).await;
    if quic {
        let (b_sent, _) = load(&b_dg);
        let (a_sent, a_recv) = load(&a_dg);
        assert_eq!(b_sent - b_sent0, 20, "B sent 20 QUIC datagrams");
        assert_eq!(a_recv - a_recv0, 20, "A received them as QUIC datagrams");
        assert_eq!(a_sent - a_sent0, 20, "and sent 20 back");
    }

    // 8 000 bytes exceed any QUIC datagram: whole, on the stream, boundaries kept.
    let large = datagrams(30, 3, 8000);
    for d in &large {
        assert_eq!(opener.send(d), Ok(Via::Stream));
    }
    for d in &large {
        assert_eq!(&next(&mut acceptor).await[..], &d[..]);
    }
    for d in &large {
        assert_eq!(acceptor.send(d), Ok(Via::Stream));
    }
    for d in &large {
        assert_eq!(&next(&mut opener).await[..], &d[..]);
    }
    if quic {
        assert_eq!(
            load(&b_dg).0 - b_sent0,
            20,
            "large ones were no QUIC datagrams"
        );
        // What one QUIC datagram carries on loopback (docs/udp.md quotes it): the path MTU
        // quinn settled on, less QUIC's and the channel's overhead.
        let max = b.link_to(a_id).unwrap().datagrams().unwrap().max_payload(0);
        eprintln!("largest QUIC datagram payload on loopback: {max:?} bytes");
        assert!(max.is_some_and(|m| (1000..8000).contains(&m)), "{max:?}");
    }

    // A clean end arrives as the end of the flow.
    opener.finish();
    let end = within(WAIT, "the end", acceptor.recv()).await;
    assert_eq!(end, Ok(None), "finish() ends the flow cleanly at the peer");
    acceptor.finish();
    assert_eq!(within(WAIT, "the end", opener.recv()).await, Ok(None));

    // A reset arrives as a failure, from either side.
    for reset_opener in [true, false] {
        let mut opener = open_flow((b, b_id), a_id, a_id, "dns").await;
        opener.send(b"x").unwrap();
        let mut got = within(WAIT, "the stream", incoming.recv()).await.unwrap();
        let mut buf = BytesMut::new();
        crate::flow::tcp::read_frame(&mut got.stream, &mut buf, "header", FlowHeader::decode)
            .await
            .unwrap();
        let mut acceptor = Hop::accepted(got.stream, got.datagrams, buf);
        acceptor
            .write_status(&crate::wire::FlowStatusFrame::ok())
            .await
            .unwrap();
        assert_eq!(&next(&mut acceptor).await[..], b"x");
        opener.read_status().await.unwrap();
        let (resetter, peer) = if reset_opener {
            (&mut opener, &mut acceptor)
        } else {
            (&mut acceptor, &mut opener)
        };
        resetter.reset();
        let end = within(WAIT, "the reset", peer.recv()).await;
        assert!(end.is_err(), "reset() fails the peer's flow: {end:?}");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_over_quic_carries_datagrams_both_ways() {
    hop_carries_datagrams(TransportChoice::Quic, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_over_tls_carries_datagrams_both_ways() {
    hop_carries_datagrams(TransportChoice::Tls, false).await;
}

/// Sends each datagram and waits for its echo; returns what came back.
async fn echo_each(hop: &mut Hop, sent: &[Vec<u8>]) -> BTreeSet<Vec<u8>> {
    let mut back = BTreeSet::new();
    for d in sent {
        hop.send(d).unwrap();
        back.insert(next(hop).await.to_vec());
    }
    back
}

async fn egress_serves_a_udp_backend(transport: TransportChoice) {
    let net = chain(2, transport).await;
    let (a, b) = (&net.routers[0], &net.routers[1]);
    let (a_id, b_id) = (net.sites[0].id, net.sites[1].id);
    let echo = udp_echo().await;
    a.set_connectors(vec![
        udp_connector("dns", "dns", echo),
        udp_connector("gone", "gone", closed_udp_port()),
    ]);
    converge(&net).await;

    // Datagrams sent before the status are served after it, then the rest.
    let mut hop = open_flow((b, b_id), a_id, a_id, "dns").await;
    let sent = datagrams(40, 30, 200);
    for d in &sent[..2] {
        hop.send(d).unwrap();
    }
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::Ok, "{status:?}");
    let mut back = BTreeSet::new();
    for _ in 0..2 {
        back.insert(next(&mut hop).await.to_vec());
    }
    back.extend(echo_each(&mut hop, &sent[2..]).await);
    assert_eq!(
        back,
        sent.iter().cloned().collect(),
        "every echo came back whole"
    );
    let large = pattern(41, 9000);
    assert_eq!(
        echo_each(&mut hop, std::slice::from_ref(&large))
            .await
            .into_iter()
            .next(),
        Some(large.clone())
    );
    hop.finish();
    assert_eq!(
        within(WAIT, "the end", hop.recv()).await,
        Ok(None),
        "the egress ends its side too"
    );

    let rec = record_of(a, FlowRole::Egress, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    assert_eq!(rec.connector.as_deref(), Some("dns"));
    let bytes = sent.iter().map(|d| d.len() as u64).sum::<u64>() + large.len() as u64;
    assert_eq!(
        (rec.bytes_forward, rec.bytes_back),
        (bytes, bytes),
        "{rec:?}"
    );
    let s = udp_stats(a, "dns");
    assert_eq!(count(&s.forward, FlowRole::Egress), 31, "{s:?}");
    assert_eq!(count(&s.back, FlowRole::Egress), 31, "{s:?}");
    let quic = a.link_to(b_id).unwrap().transport() == crate::link::Transport::Quic;
    assert_eq!(
        s.oversize,
        u64::from(quic),
        "the 9 000-byte reply went on the stream: {s:?}"
    );
    assert!(s.dropped.iter().all(|d| d.1 == 0), "{s:?}");

    // A key without a connector here: no-route, in the TCP egress's words.
    let mut hop = open_flow((b, b_id), a_id, a_id, "nothing").await;
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::NoRoute);
    assert_eq!(status.message, "key nothing: no connector for it here");

    // A closed backend port: the datagrams are counted as socket errors, and the connector
    // shows failing.
    let mut hop = open_flow((b, b_id), a_id, a_id, "gone").await;
    assert_eq!(
        within(WAIT, "the status", hop.read_status())
            .await
            .unwrap()
            .code,
        FlowStatusCode::Ok,
        "UDP has no connection to refuse: the flow starts"
    );
    let mut refused = 0;
    for i in 0..100u32 {
        hop.send(&i.to_be_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        refused = dropped(&udp_stats(a, "gone"), UdpDropReason::SocketError);
        if refused >= 3 {
            break;
        }
    }
    assert!(
        refused >= 3,
        "socket-error drops: {:?}",
        udp_stats(a, "gone")
    );
    let c = a.connectors();
    let gone = c.iter().find(|c| c.name == "gone").unwrap();
    assert_eq!(gone.status, ResourceState::Failing, "{gone:?}");
    assert!(
        gone.reason
            .as_deref()
            .is_some_and(|r| r.contains("refused a datagram")),
        "{gone:?}"
    );
    let s = udp_stats(a, "gone");
    assert_eq!(count(&s.back, FlowRole::Egress), 0, "{s:?}");
    hop.finish();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_serves_a_udp_backend_over_quic() {
    egress_serves_a_udp_backend(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_serves_a_udp_backend_over_tls() {
    egress_serves_a_udp_backend(TransportChoice::Tls).await;
}

async fn transit_passes_datagrams(transport: TransportChoice) {
    // r2 dials r1, which dials r0: a flow opened at r2 for r0 passes r1.
    let net = chain(3, transport.clone()).await;
    let echo = udp_echo().await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    converge(&net).await;
    let ids: Vec<SiteId> = net.sites.iter().map(|s| s.id).collect();
    let (ingress, transit) = (&net.routers[2], &net.routers[1]);
    let quic = transport == TransportChoice::Quic;
    let dg = link_counters(transit, ids[0]);
    let (t_sent0, t_recv0) = load(&dg);

    wait_for(ingress, "the key dns known", |r| {
        r.network().keys.iter().any(|k| k.routing_key == "dns")
    })
    .await;
    let mut hop = open_flow((ingress, ids[2]), ids[1], ids[0], "dns").await;
    hop.send(b"early").unwrap();
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::Ok, "{status:?}");
    assert_eq!(&next(&mut hop).await[..], b"early");
    let sent = datagrams(50, 40, 300);
    let back = echo_each(&mut hop, &sent).await;
    assert_eq!(
        back,
        sent.iter().cloned().collect(),
        "every echo came back whole"
    );
    let large = pattern(51, 5000);
    hop.send(&large).unwrap();
    assert_eq!(&next(&mut hop).await[..], &large[..]);
    hop.finish();
    assert_eq!(within(WAIT, "the end", hop.recv()).await, Ok(None));

    let rec = record_of(transit, FlowRole::Transit, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    let bytes = 5 + sent.iter().map(|d| d.len() as u64).sum::<u64>() + large.len() as u64;
    assert_eq!(
        (rec.bytes_forward, rec.bytes_back),
        (bytes, bytes),
        "{rec:?}"
    );
    assert_eq!(rec.origin.id, ids[2]);
    assert_eq!(rec.destination.as_ref().map(|d| d.id), Some(ids[0]));
    let s = udp_stats(transit, "dns");
    assert_eq!(count(&s.forward, FlowRole::Transit), 42, "{s:?}");
    assert_eq!(count(&s.back, FlowRole::Transit), 42, "{s:?}");
    assert_eq!(count(&s.forward, FlowRole::Egress), 0, "{s:?}");
    assert_eq!(s.oversize, if quic { 2 } else { 0 }, "{s:?}");
    let e = udp_stats(&net.routers[0], "dns");
    assert_eq!(count(&e.forward, FlowRole::Egress), 42, "{e:?}");
    if quic {
        // After the status the small ones crossed r1's link to r0 as QUIC datagrams.
        let (t_sent, t_recv) = load(&dg);
        assert!(t_sent - t_sent0 >= 40 && t_recv - t_recv0 >= 40, "{dg:?}");
    }

    // A failure status passes back through, and ends the flow there.
    let mut hop = open_flow((ingress, ids[2]), ids[1], ids[0], "nothing").await;
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::NoRoute);
    assert_eq!(status.message, "key nothing: no connector for it here");
    assert_eq!(within(WAIT, "the end", hop.recv()).await, Ok(None));
    let rec = record_of(transit, FlowRole::Transit, "nothing").await;
    assert_eq!(rec.outcome, FlowOutcome::NoRoute, "{rec:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_passes_datagrams_over_quic() {
    transit_passes_datagrams(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_passes_datagrams_over_tls() {
    transit_passes_datagrams(TransportChoice::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_bridges_a_quic_link_and_a_tls_link() {
    // r2 dials r1 over QUIC, r1 dials r0 over TLS: each hop of the flow picks its own way.
    let sites: Vec<Site> = (0..3).map(|i| site(&format!("m{i}"))).collect();
    let mut routers = Vec::new();
    for s in &sites {
        routers.push(start_router(s).await);
    }
    for (i, transport) in [(1, TransportChoice::Tls), (2, TransportChoice::Quic)] {
        let addr = routers[i - 1].link_addr().unwrap().to_string();
        routers[i].set_links(vec![spec(&sites[i - 1], &sites[i], addr, transport)]);
    }
    let net = Net { sites, routers };
    let echo = udp_echo().await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    converge(&net).await;
    let ids: Vec<SiteId> = net.sites.iter().map(|s| s.id).collect();
    let (ingress, transit) = (&net.routers[2], &net.routers[1]);
    wait_for(ingress, "the key dns known", |r| {
        r.network().keys.iter().any(|k| k.routing_key == "dns")
    })
    .await;
    assert!(link_counters(transit, ids[0]).is_none(), "r1 to r0 is TLS");
    let up = link_counters(transit, ids[2]).expect("r1 to r2 is QUIC");
    let (sent0, recv0) = load(&Some(up.clone()));

    let mut hop = open_flow((ingress, ids[2]), ids[1], ids[0], "dns").await;
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::Ok, "{status:?}");
    assert!(hop.quic_datagrams());
    let sent = datagrams(60, 30, 500);
    let back = echo_each(&mut hop, &sent).await;
    assert_eq!(
        back,
        sent.iter().cloned().collect(),
        "every echo came back whole"
    );
    let large = pattern(61, 3000);
    hop.send(&large).unwrap();
    assert_eq!(&next(&mut hop).await[..], &large[..]);
    hop.finish();
    assert_eq!(within(WAIT, "the end", hop.recv()).await, Ok(None));

    let (sent1, recv1) = load(&Some(up));
    assert_eq!(
        (recv1 - recv0, sent1 - sent0),
        (30, 30),
        "the small ones crossed the QUIC hop as QUIC datagrams, both ways"
    );
    let s = udp_stats(transit, "dns");
    assert_eq!(count(&s.forward, FlowRole::Transit), 31, "{s:?}");
    assert_eq!(count(&s.back, FlowRole::Transit), 31, "{s:?}");
    assert_eq!(
        s.oversize, 1,
        "only the large reply on the QUIC hop went on a stream for its size: {s:?}"
    );
    let rec = record_of(transit, FlowRole::Transit, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_is_ended_by_its_egress_and_the_end_passes_transit() {
    // The ingress (here: the test, at r2) never ends the flow; r0's egress does, once idle.
    let net = chain(3, TransportChoice::Quic).await;
    let echo = udp_echo().await;
    let egress = &net.routers[0];
    let idle = Duration::from_millis(500);
    *egress.flow_state().udp_egress_idle.lock().unwrap() = idle;
    egress.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    converge(&net).await;
    let ids: Vec<SiteId> = net.sites.iter().map(|s| s.id).collect();
    wait_for(&net.routers[2], "the key dns known", |r| {
        r.network().keys.iter().any(|k| k.routing_key == "dns")
    })
    .await;
    let mut hop = open_flow((&net.routers[2], ids[2]), ids[1], ids[0], "dns").await;
    within(WAIT, "the status", hop.read_status()).await.unwrap();
    // Datagrams keep it alive past the idle time...
    let started = std::time::Instant::now();
    for i in 0..8u32 {
        if i > 0 {
            tokio::time::sleep(idle / 4).await;
        }
        echo_each(&mut hop, &[i.to_be_bytes().to_vec()]).await;
    }
    assert!(started.elapsed() > idle * 3 / 2);
    // ... then silence ends it, cleanly, at every router.
    let quiet = std::time::Instant::now();
    assert_eq!(within(WAIT, "the end", hop.recv()).await, Ok(None));
    let waited = quiet.elapsed();
    assert!(
        waited >= idle - Duration::from_millis(50) && waited < idle * 4,
        "ended after {waited:?} of silence (idle {idle:?})"
    );
    let rec = record_of(egress, FlowRole::Egress, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    assert_eq!((rec.bytes_forward, rec.bytes_back), (32, 32), "{rec:?}");
    let rec = record_of(&net.routers[1], FlowRole::Transit, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    hop.finish();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_speaking_1_1_is_told_no_udp_key() {
    // r1 (this build, 1.2) serves a UDP key and a TCP key; r0 says it speaks 1.1 (whose
    // decoder refuses UDP keys) and must learn only the TCP one.
    let sites = [site("old"), site("new")];
    let old = Router::start_with_hello(
        config(&sites[0], loopback()),
        Arc::new(AllowAll),
        None,
        crate::wire::ProtocolVersion { major: 1, minor: 1 },
    )
    .await
    .unwrap();
    let new = start_router(&sites[1]).await;
    let echo = udp_echo().await;
    new.set_connectors(vec![
        udp_connector("dns", "dns", echo),
        connector("db", "db", echo),
    ]);
    let addr = old.link_addr().unwrap().to_string();
    new.set_links(vec![spec(
        &sites[0],
        &sites[1],
        addr,
        TransportChoice::Quic,
    )]);
    let net = Net {
        sites: sites.into(),
        routers: vec![old, new],
    };
    converge(&net).await;
    let keys = |r: &Router| {
        r.network()
            .keys
            .into_iter()
            .map(|k| k.routing_key)
            .collect::<Vec<_>>()
    };
    wait_for(&net.routers[0], "the key db known", |r| {
        keys(r).contains(&"db".to_owned())
    })
    .await;
    assert_eq!(
        keys(&net.routers[0]),
        ["db"],
        "the 1.1 router learnt no UDP key"
    );
    // The 1.2 router itself knows both.
    assert_eq!(keys(&net.routers[1]), ["db", "dns"]);
    net.shutdown().await;
}

/// A UDP echo on loopback whose replies start with `tag`; it stops with the test's runtime.
async fn tagged_udp_echo(tag: &'static [u8]) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = tag.to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_resets_its_flow_and_the_next_flow_goes_to_another_site() {
    // s0 has the UDP listener; s1 (link cost 3, the first choice) a connector to a closed
    // port; s2 (link cost 30) a live echo that tags its replies.
    let sites: Vec<Site> = (0..3).map(|i| site(&format!("f{i}"))).collect();
    let mut routers = Vec::new();
    for s in &sites {
        routers.push(start_router(s).await);
    }
    let hub = routers[0].link_addr().unwrap().to_string();
    for (i, cost) in [(1, 3), (2, 30)] {
        routers[i].set_links(vec![LinkSpec {
            cost,
            ..spec(&sites[0], &sites[i], hub.clone(), TransportChoice::Quic)
        }]);
    }
    let net = Net { sites, routers };
    let closed = closed_udp_port();
    net.routers[1].set_connectors(vec![udp_connector("dns", "dns", closed)]);
    let live = tagged_udp_echo(b"s2:").await;
    net.routers[2].set_connectors(vec![udp_connector("dns", "dns", live)]);
    net.routers[0].set_listeners(vec![ListenerSpec {
        protocol: Protocol::Udp,
        ..listener("dns", "dns")
    }]);
    converge(&net).await;
    wait_for(&net.routers[0], "both sites as targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 2)
    })
    .await;
    let addr = listener_addr(&net.routers[0], "dns");

    // One client sends a query every 100 ms; its first flow goes to s1, whose backend
    // refuses. No reply can come until s1 resets that flow and the next one goes to s2.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();
    let mut first_reply = None;
    let mut answered = Vec::new();
    let mut buf = vec![0u8; 2048];
    for i in 0..150u32 {
        let q = format!("q{i:03}");
        client.send_to(q.as_bytes(), addr).await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(got) = tokio::time::timeout_at(until, client.recv_from(&mut buf)).await {
            let (n, from) = got.unwrap();
            assert_eq!(from, addr, "replies come from the listener");
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(reply.starts_with("s2:q"), "only s2 answers: {reply:?}");
            first_reply.get_or_insert(started.elapsed());
            answered.push(reply);
        }
        if answered.len() >= 10 {
            break;
        }
        tokio::time::sleep_until(until).await;
    }
    let first = first_reply.expect("a reply from s2 within 15 s");
    eprintln!(
        "refused backend: first reply (from s2) {first:?} after the first query; {} answered",
        answered.len()
    );
    assert!(
        first >= REFUSED_RESET - Duration::from_millis(200) && first < REFUSED_HOLD,
        "the refused flow lasted about {REFUSED_RESET:?}, then the next went to s2 at once: {first:?}"
    );
    assert!(answered.len() >= 10, "s2 kept answering: {answered:?}");

    // s1 recorded the reset flow, then refused the next one without trying its backend.
    let recs: Vec<FlowRecord> = net.routers[1]
        .recent_flows()
        .into_iter()
        .filter(|r| r.role == FlowRole::Egress && r.routing_key == "dns")
        .collect();
    let reset = recs
        .iter()
        .find(|r| {
            r.reason
                .as_deref()
                .is_some_and(|w| w.contains("sent no reply for 2 s"))
        })
        .unwrap_or_else(|| panic!("a reset flow at s1: {recs:?}"));
    assert_eq!(reset.outcome, FlowOutcome::ConnectRefused, "{reset:?}");
    assert!(
        reset.duration_ms >= 2000 && reset.duration_ms < 4000,
        "reset about 2 s after the first refusal: {reset:?}"
    );
    let held = recs
        .iter()
        .find(|r| {
            r.reason
                .as_deref()
                .is_some_and(|w| w.contains("refused datagrams") && w.contains("no reply since"))
        })
        .unwrap_or_else(|| panic!("a flow refused at once by s1: {recs:?}"));
    assert_eq!(held.outcome, FlowOutcome::ConnectRefused, "{held:?}");
    assert!(
        held.reason
            .as_deref()
            .is_some_and(|w| w.contains(&format!("127.0.0.1:{}", closed.port()))),
        "names the backend: {held:?}"
    );
    eprintln!(
        "refused backend: s1's flow reset after {} ms; next flow answered: {:?}",
        reset.duration_ms, held.reason
    );
    let s1 = net.routers[1].connectors();
    assert_eq!(s1[0].status, ResourceState::Failing, "{s1:?}");

    // Once REFUSED_HOLD has passed since the last refusal, s1 tries its backend again: a new
    // client's flow goes there first, is reset after REFUSED_RESET, and its next goes to s2.
    tokio::time::sleep(REFUSED_HOLD + Duration::from_millis(300)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let again = std::time::Instant::now();
    let mut second = None;
    for i in 0..100u32 {
        client
            .send_to(format!("r{i:03}").as_bytes(), addr)
            .await
            .unwrap();
        if let Ok(got) =
            tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf)).await
        {
            let (n, _) = got.unwrap();
            assert!(buf[..n].starts_with(b"s2:r"), "{:?}", &buf[..n]);
            second = Some(again.elapsed());
            break;
        }
    }
    let second = second.expect("s2 answered the new client within 10 s");
    let resets = net.routers[1]
        .recent_flows()
        .into_iter()
        .filter(|r| {
            r.reason
                .as_deref()
                .is_some_and(|w| w.contains("sent no reply for 2 s"))
        })
        .count();
    eprintln!("refused backend, after the hold: s1 tried again, s2 answered after {second:?}");
    assert_eq!(resets, 2, "s1 tried its backend again after the hold");
    assert!(
        second >= REFUSED_RESET - Duration::from_millis(200) && second < REFUSED_HOLD,
        "{second:?}"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_udp_flow_is_sent_to_a_router_speaking_1_1() {
    // r0 says it speaks 1.1 and has a UDP connector; r1 (1.2) dials it and has a UDP
    // listener for the key; r2 (1.2) dials r1. Neither the ingress at r1 nor r1 as a transit
    // for r2 may send a UDP flow to r0: it answers no-route, naming r0 and the versions.
    let sites: Vec<Site> = (0..3).map(|i| site(&format!("v{i}"))).collect();
    let old = Router::start_with_hello(
        config(&sites[0], loopback()),
        Arc::new(AllowAll),
        None,
        crate::wire::ProtocolVersion { major: 1, minor: 1 },
    )
    .await
    .unwrap();
    let mut routers = vec![old];
    for s in &sites[1..] {
        routers.push(start_router(s).await);
    }
    for i in 1..3 {
        let addr = routers[i - 1].link_addr().unwrap().to_string();
        routers[i].set_links(vec![spec(
            &sites[i - 1],
            &sites[i],
            addr,
            TransportChoice::Quic,
        )]);
    }
    let net = Net { sites, routers };
    let echo = udp_echo().await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    net.routers[1].set_listeners(vec![ListenerSpec {
        protocol: Protocol::Udp,
        ..listener("dns", "dns")
    }]);
    converge(&net).await;
    let ids: Vec<SiteId> = net.sites.iter().map(|s| s.id).collect();
    let (r1, r2) = (&net.routers[1], &net.routers[2]);
    // r0 advertises its own UDP key unstripped to a 1.2 peer: r1 sees a target at r0.
    wait_for(r1, "r0 as a target", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 1)
    })
    .await;
    let want =
        "the next hop v0 speaks link protocol 1.1; UDP needs 1.2 on every router of the path";

    // The ingress: no reply, and the flow's record says why.
    let addr = listener_addr(r1, "dns");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"query", addr).await.unwrap();
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
    assert!(got.is_err(), "no reply through a 1.1 router: {got:?}");
    let rec = record_of(r1, FlowRole::Ingress, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::NoRoute, "{rec:?}");
    assert!(
        rec.reason.as_deref().is_some_and(|r| r.contains(want)),
        "{rec:?}"
    );

    // The transit: a UDP flow from r2 for r0 is answered no-route by r1.
    wait_for(r2, "a route to r0", |r| reaches(r, &[&net.sites[0]])).await;
    let mut hop = open_flow((r2, ids[2]), ids[1], ids[0], "dns").await;
    hop.send(b"early").unwrap();
    let status = within(WAIT, "the status", hop.read_status()).await.unwrap();
    assert_eq!(status.code, FlowStatusCode::NoRoute, "{status:?}");
    assert_eq!(status.message, want);
    let rec = record_of(r1, FlowRole::Transit, "dns").await;
    assert_eq!(rec.outcome, FlowOutcome::NoRoute, "{rec:?}");
    eprintln!("1.1 next hop: {}", status.message);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_comes_back_without_replying_keeps_its_flow() {
    // A syslog-like backend: it never replies. Its port is closed for the first datagram
    // (refused), then it listens again; the flow must not be reset REFUSED_RESET later, and
    // every datagram after its return reaches it.
    let net = chain(2, TransportChoice::Quic).await;
    let backend_addr = closed_udp_port();
    net.routers[0].set_connectors(vec![udp_connector("log", "log", backend_addr)]);
    net.routers[1].set_listeners(vec![ListenerSpec {
        protocol: Protocol::Udp,
        ..listener("log", "log")
    }]);
    converge(&net).await;
    wait_for(&net.routers[1], "the listener's target", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "log" && !l.targets.is_empty())
    })
    .await;
    let addr = listener_addr(&net.routers[1], "log");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"lost-0", addr).await.unwrap();
    // The refusal is seen (the connector fails) before the backend comes back.
    within(WAIT, "the refusal", async {
        while !net.routers[0]
            .connectors()
            .iter()
            .any(|c| c.name == "log" && c.status == crate::flow::ResourceState::Failing)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let backend = UdpSocket::bind(backend_addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256];
    for i in 0..35u32 {
        client
            .send_to(format!("m{i:02}").as_bytes(), addr)
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, backend.recv_from(&mut buf)).await
        {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        tokio::time::sleep_until(until).await;
    }
    let want: Vec<String> = (0..35u32).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        got, want,
        "every datagram after the backend came back reached it"
    );
    let reset = net.routers[0]
        .recent_flows()
        .into_iter()
        .find(|r| r.routing_key == "log" && r.outcome == FlowOutcome::ConnectRefused);
    assert!(
        reset.is_none(),
        "the flow was reset though its backend was back: {reset:?}"
    );
    let active = net.routers[0]
        .connectors()
        .into_iter()
        .find(|c| c.name == "log")
        .unwrap();
    assert_eq!(
        active.status,
        crate::flow::ResourceState::Active,
        "the connector is active again: {active:?}"
    );
}
