//! UDP listeners (the ingress role) end to end: real UDP clients, each on its own socket,
//! send datagrams that name them through in-process routers (a local connector, one hop and
//! two hops, over QUIC and over TLS/TCP links) to a real UDP echo server; each reply must
//! reach the socket that sent the request, large datagrams must arrive whole, and the
//! `skiff_udp_*` counters must account for every datagram. Also: a listener without a target
//! (no-route drops, its status says why), the idle timeout (and the one-shot idle), client-ip
//! affinity and a listener changed in place (the edge cases are in `udp_edges.rs`, which uses
//! the helpers here).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::*;
use crate::flow::{FlowOutcome, FlowRole, UdpDropReason, UdpKeyStats};
use crate::routing::Affinity;

/// How long a client waits for the reply to one datagram before counting it lost.
pub(super) const REPLY_WAIT: Duration = Duration::from_secs(2);

/// A UDP echo server on loopback that prefixes each reply with `tag` (empty: a plain echo);
/// it stops with the test's runtime.
pub(super) async fn udp_echo(tag: &str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let tag = tag.as_bytes().to_vec();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = tag.clone();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    addr
}

pub(super) fn udp_listener(name: &str, k: &str) -> ListenerSpec {
    ListenerSpec {
        protocol: Protocol::Udp,
        ..listener(name, k)
    }
}

pub(super) fn udp_connector(name: &str, k: &str, backend: SocketAddr) -> ConnectorSpec {
    ConnectorSpec {
        protocol: Protocol::Udp,
        ..connector(name, k, backend)
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub(super) struct ClientResult {
    pub(super) sent: u64,
    /// Distinct requests whose reply came back.
    pub(super) answered: u64,
    /// The tags (echo servers) that answered, with counts.
    pub(super) tags: BTreeMap<String, u64>,
}

/// A client on its own socket (bound to `local`) sends `n` datagrams `<name>-<j>` padded to
/// `len` bytes (at least the name), one at a time, each waiting up to [`REPLY_WAIT`] for its
/// echo. Panics if a reply is not one of its own requests, came from elsewhere than the
/// listener, or differs from the request.
pub(super) async fn client(
    local: &str,
    listener: SocketAddr,
    name: &str,
    n: usize,
    len: usize,
) -> ClientResult {
    let s = UdpSocket::bind(local).await.unwrap();
    client_on(&s, listener, name, n, len).await
}

pub(super) async fn client_on(
    s: &UdpSocket,
    listener: SocketAddr,
    name: &str,
    n: usize,
    len: usize,
) -> ClientResult {
    let mut r = ClientResult::default();
    let mut answered = BTreeSet::new();
    let mut buf = vec![0u8; 65_536];
    for j in 0..n {
        let mut msg = format!("{name}-{j:05}|").into_bytes();
        let pad = pattern(j as u64 + 1, len.saturating_sub(msg.len()));
        msg.extend_from_slice(&pad);
        s.send_to(&msg, listener).await.unwrap();
        r.sent += 1;
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        loop {
            let Ok(got) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await else {
                break; // lost
            };
            let (k, from) = got.unwrap();
            assert_eq!(from, listener, "client {name}: a reply from elsewhere");
            let reply = &buf[..k];
            // "<tag><name>-<j>|<pad>"
            let own = format!("{name}-");
            let at = reply
                .windows(own.len())
                .position(|w| w == own.as_bytes())
                .unwrap_or_else(|| {
                    panic!(
                        "client {name} got a reply that is not its own: {:?}",
                        String::from_utf8_lossy(&reply[..k.min(40)])
                    )
                });
            let (tag, body) = reply.split_at(at);
            let seq: usize = std::str::from_utf8(&body[own.len()..own.len() + 5])
                .unwrap()
                .parse()
                .unwrap();
            let mut want = format!("{name}-{seq:05}|").into_bytes();
            want.extend_from_slice(&pattern(seq as u64 + 1, len.saturating_sub(want.len())));
            assert!(
                body == want.as_slice(),
                "client {name}: reply {seq} differs from its request ({} bytes, want {})",
                body.len(),
                want.len()
            );
            if answered.insert(seq) {
                *r.tags
                    .entry(String::from_utf8_lossy(tag).into_owned())
                    .or_default() += 1;
            }
            if seq == j {
                break;
            }
        }
    }
    r.answered = answered.len() as u64;
    r
}

/// `router`'s UDP counters of `key`.
pub(super) fn udp_key(router: &Router, key: &str) -> UdpKeyStats {
    router
        .udp_stats()
        .into_iter()
        .find(|k| k.key == key)
        .unwrap_or_else(|| UdpKeyStats {
            key: key.into(),
            ..Default::default()
        })
}

pub(super) fn by_role(v: &[(FlowRole, u64)], role: FlowRole) -> u64 {
    v.iter().find(|x| x.0 == role).map_or(0, |x| x.1)
}

pub(super) fn dropped(k: &UdpKeyStats, reason: UdpDropReason) -> u64 {
    k.dropped.iter().find(|d| d.0 == reason).map_or(0, |d| d.1)
}

pub(super) fn total_dropped(k: &UdpKeyStats) -> u64 {
    k.dropped.iter().map(|d| d.1).sum()
}

/// Waits (at most [`WAIT`]) until `cond` holds for `router`; panics with `what`.
pub(super) async fn eventually(router: &Router, what: &str, cond: impl Fn(&Router) -> bool) {
    let t0 = Instant::now();
    while !cond(router) {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 20 clients x 50 datagrams at once; every reply reached its own client.
pub(super) async fn twenty_clients(addr: SocketAddr) -> Vec<ClientResult> {
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            client("127.0.0.1:0", addr, &format!("client{i:02}"), 50, 24).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(within(WAIT * 3, "20 clients", t).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_local_connector_replies_reach_their_clients() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    let echo = udp_echo("").await;
    r.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    r.set_listeners(vec![udp_listener("dns", "dns")]);
    wait_active(r, "dns").await;
    let addr = listener_addr(r, "dns");
    let results = twenty_clients(addr).await;
    let answered: u64 = results.iter().map(|c| c.answered).sum();
    assert_eq!(answered, 1000, "every request answered, to its own client");
    eventually(r, "counters of 1000 each way", |r| {
        let k = udp_key(r, "dns");
        by_role(&k.back, FlowRole::Ingress) == 1000
    })
    .await;
    let k = udp_key(r, "dns");
    assert_eq!(by_role(&k.forward, FlowRole::Ingress), 1000);
    assert_eq!(total_dropped(&k), 0, "{k:?}");
    assert_eq!(k.oversize, 0);
    let l = r.listeners().into_iter().find(|l| l.name == "dns").unwrap();
    assert_eq!(l.protocol, Protocol::Udp);
    assert_eq!(
        (l.flows_total, l.flows_active),
        (20, 20),
        "one flow per client"
    );
    // Each flow shows with its bytes (24 each way per datagram).
    let flows = r.flows();
    let ingress: Vec<_> = flows
        .iter()
        .filter(|f| f.role == FlowRole::Ingress && f.routing_key == "dns")
        .collect();
    assert_eq!(ingress.len(), 20);
    assert!(
        ingress
            .iter()
            .all(|f| f.bytes_forward == 50 * 24 && f.bytes_back == 50 * 24),
        "{ingress:?}"
    );
    let c = r
        .connectors()
        .into_iter()
        .find(|c| c.name == "dns")
        .unwrap();
    assert_eq!(c.flows_active, 20, "one backend socket per flow");
    net.shutdown().await;
}

async fn one_hop(transport: TransportChoice) {
    let quic = matches!(transport, TransportChoice::Quic);
    let net = chain(2, transport).await;
    let echo = udp_echo("").await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    net.routers[1].set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    wait_active(&net.routers[1], "dns").await;
    let addr = listener_addr(&net.routers[1], "dns");
    let results = twenty_clients(addr).await;
    let answered: u64 = results.iter().map(|c| c.answered).sum();
    assert_eq!(answered, 1000, "every request answered, to its own client");
    // Large datagrams, whole: 1 000 bytes fit a QUIC datagram, 8 000 do not. Each after a
    // small one, so the flow is set up (before its status a flow's datagrams all go on the
    // stream).
    let big = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(client_on(&big, addr, "small", 1, 16).await.answered, 1);
    let r = client_on(&big, addr, "big1000", 1, 1000).await;
    assert_eq!(r.answered, 1, "a 1000-byte datagram came back whole");
    let r = client_on(&big, addr, "big8000", 1, 8000).await;
    assert_eq!(r.answered, 1, "an 8000-byte datagram came back whole");
    let ingress = &net.routers[1];
    let egress = &net.routers[0];
    eventually(ingress, "counters of 1003 each way", |r| {
        by_role(&udp_key(r, "dns").back, FlowRole::Ingress) == 1003
    })
    .await;
    let i = udp_key(ingress, "dns");
    let e = udp_key(egress, "dns");
    assert_eq!(by_role(&i.forward, FlowRole::Ingress), 1003, "{i:?}");
    assert_eq!(by_role(&e.forward, FlowRole::Egress), 1003, "{e:?}");
    assert_eq!(by_role(&e.back, FlowRole::Egress), 1003, "{e:?}");
    assert_eq!(total_dropped(&i) + total_dropped(&e), 0, "{i:?} {e:?}");
    // What a QUIC datagram carries on this link (the premise of the next check: 1 000 bytes
    // fit, 8 000 do not).
    let max_payload = ingress
        .link_to(net.sites[0].id)
        .and_then(|l| l.datagrams())
        .and_then(|d| d.max_payload(0));
    if quic {
        let m = max_payload.expect("a QUIC link takes datagrams");
        assert!((1000..8000).contains(&m), "QUIC datagram payload {m}");
        eprintln!("QUIC datagram payload on a loopback link: up to {m} bytes");
    } else {
        assert_eq!(max_payload, None, "no datagrams on TLS/TCP");
    }
    // The 8000-byte datagram went whole on the stream both ways on QUIC (oversize at each
    // end); on TLS/TCP every datagram goes on the stream, none is oversize.
    let want = u64::from(quic);
    assert_eq!((i.oversize, e.oversize), (want, want), "{i:?} {e:?}");
    let l = ingress
        .listeners()
        .into_iter()
        .find(|l| l.name == "dns")
        .unwrap();
    assert_eq!(l.flows_total, 21);
    eprintln!(
        "one hop (quic: {quic}): 1003 datagrams each way, no loss; oversize: ingress {}, \
         egress {}",
        i.oversize, e.oversize
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_udp_one_hop_replies_reach_their_clients_and_large_datagrams_arrive_whole() {
    one_hop(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_udp_one_hop_replies_reach_their_clients_and_large_datagrams_arrive_whole() {
    one_hop(TransportChoice::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_listener_without_target_drops_as_no_route_and_says_why() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    r.set_listeners(vec![udp_listener("dns", "nowhere")]);
    let addr = listener_addr(r, "dns");
    let l = r.listeners().into_iter().find(|l| l.name == "dns").unwrap();
    assert_eq!(l.status, ResourceState::NoTarget);
    let why = l.reason.unwrap();
    assert!(
        why.contains("no site in the network has a connector for key \"nowhere\""),
        "{why}"
    );
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5u8 {
        s.send_to(&[i; 10], addr).await.unwrap();
    }
    eventually(r, "5 no-route drops", |r| {
        dropped(&udp_key(r, "nowhere"), UdpDropReason::NoRoute) == 5
    })
    .await;
    // One refused flow for the burst (the address is held for a second), with the reason.
    let l = r.listeners().into_iter().find(|l| l.name == "dns").unwrap();
    assert_eq!((l.flows_total, l.flows_refused), (0, 1));
    eventually(r, "the refused flow's record", |r| {
        !r.recent_flows().is_empty()
    })
    .await;
    let rec = r.recent_flows().pop().unwrap();
    assert_eq!(rec.outcome, FlowOutcome::NoRoute);
    assert_eq!(rec.client, Some(s.local_addr().unwrap().to_string()));
    assert!(rec.reason.unwrap().contains("\"nowhere\""));
    // After the hold, the next datagram tries again: a second refusal.
    tokio::time::sleep(crate::flow::udp::ingress::FAILED_HOLD + Duration::from_millis(200)).await;
    s.send_to(b"again", addr).await.unwrap();
    eventually(r, "a second refusal", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.flows_refused == 2)
    })
    .await;
    assert_eq!(dropped(&udp_key(r, "nowhere"), UdpDropReason::NoRoute), 6);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_ends_when_idle_and_the_next_datagram_makes_a_new_flow() {
    let net = chain(2, TransportChoice::Quic).await;
    let echo = udp_echo("").await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    let ingress = &net.routers[1];
    *ingress.flow_state().udp_idle.lock().unwrap() = Duration::from_millis(300);
    ingress.set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    wait_active(ingress, "dns").await;
    let addr = listener_addr(ingress, "dns");
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = client_on(&s, addr, "idle", 3, 16).await;
    assert_eq!(first.answered, 3);
    let active: Vec<_> = ingress
        .flows()
        .into_iter()
        .filter(|f| f.role == FlowRole::Ingress)
        .collect();
    assert_eq!(active.len(), 1);
    let id = active[0].id.clone();
    let t0 = Instant::now();
    eventually(ingress, "the idle flow's end", |r| {
        r.recent_flows().iter().any(|f| f.id == id)
    })
    .await;
    let ended_after = t0.elapsed();
    let rec = ingress
        .recent_flows()
        .into_iter()
        .find(|f| f.id == id)
        .unwrap();
    assert_eq!(rec.outcome, FlowOutcome::Ok, "{rec:?}");
    assert_eq!((rec.bytes_forward, rec.bytes_back), (48, 48));
    assert!(ingress.flows().is_empty(), "no flow left at the ingress");
    // The clean end reached the egress too.
    eventually(&net.routers[0], "the flow's end at the egress", |r| {
        r.recent_flows()
            .iter()
            .any(|f| f.id == id && f.role == FlowRole::Egress && f.outcome == FlowOutcome::Ok)
    })
    .await;
    // The egress knows the client too (the flow header carries it).
    let at_egress = net.routers[0]
        .recent_flows()
        .into_iter()
        .find(|f| f.id == id && f.role == FlowRole::Egress)
        .unwrap();
    let client = s.local_addr().unwrap().to_string();
    assert_eq!(at_egress.client.as_deref(), Some(client.as_str()));
    // The same client address again: a new flow.
    let again = client_on(&s, addr, "idle", 1, 16).await;
    assert_eq!(again.answered, 1);
    let active: Vec<_> = ingress
        .flows()
        .into_iter()
        .filter(|f| f.role == FlowRole::Ingress)
        .collect();
    assert_eq!(active.len(), 1);
    assert_ne!(active[0].id, id, "a new flow id");
    let l = ingress
        .listeners()
        .into_iter()
        .find(|l| l.name == "dns")
        .unwrap();
    assert_eq!(l.flows_total, 2);
    eprintln!("idle flow (timeout 300 ms) ended after {ended_after:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_gives_its_clients_address_only_to_routers_that_read_it() {
    use super::records::{assert_the_client_stops_before_1_2, chain_with_a_1_2_router};
    for old in [1, 0] {
        let net = chain_with_a_1_2_router(old, TransportChoice::Quic).await;
        let echo = udp_echo("").await;
        net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
        let ingress = &net.routers[2];
        // The flow ends (and leaves its records) soon after its last datagram.
        *ingress.flow_state().udp_idle.lock().unwrap() = Duration::from_millis(300);
        ingress.set_listeners(vec![udp_listener("dns", "dns")]);
        converge(&net).await;
        wait_active(ingress, "dns").await;
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = client_on(&s, listener_addr(ingress, "dns"), "c", 3, 16).await;
        assert_eq!(got.answered, 3, "old router r{old}");
        let client = s.local_addr().unwrap().to_string();
        assert_the_client_stops_before_1_2(&net, old, "dns", &client).await;
        net.shutdown().await;
    }
}

async fn two_hops(transport: TransportChoice) {
    let net = chain(3, transport).await;
    let echo = udp_echo("").await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    net.routers[2].set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    wait_active(&net.routers[2], "dns").await;
    let addr = listener_addr(&net.routers[2], "dns");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(tokio::spawn(async move {
            client("127.0.0.1:0", addr, &format!("c{i:02}"), 200, 32).await
        }));
    }
    let mut sent = 0;
    let mut answered = 0;
    for t in tasks {
        let r = within(WAIT * 6, "50 clients", t).await.unwrap();
        sent += r.sent;
        answered += r.answered;
    }
    let elapsed = t0.elapsed();
    assert_eq!(sent, 10_000);
    // Every loss is counted somewhere on the way (drops at some router, a QUIC link's
    // losses show as datagrams one router sent and the next did not receive).
    let (ingress, transit, egress) = (&net.routers[2], &net.routers[1], &net.routers[0]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let i = udp_key(ingress, "dns");
    let t = udp_key(transit, "dns");
    let e = udp_key(egress, "dns");
    let drops = total_dropped(&i) + total_dropped(&t) + total_dropped(&e);
    let links: u64 = net
        .routers
        .iter()
        .map(|r| udp_key(r, "").dropped.iter().map(|d| d.1).sum::<u64>())
        .sum();
    eprintln!(
        "two hops: {sent} sent, {answered} answered, {drops} drops at routers, {links} at \
         links, in {elapsed:?} ({:.0} request/reply per s; 50 clients, one datagram in \
         flight each)",
        answered as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(by_role(&i.back, FlowRole::Ingress), answered, "{i:?}");
    // Each role passed on what it got, less what it counted as dropped.
    let lost = sent - answered;
    assert!(
        lost <= drops + links,
        "{lost} datagrams lost, only {} counted: {i:?} {t:?} {e:?}",
        drops + links
    );
    assert!(
        by_role(&t.forward, FlowRole::Transit) <= by_role(&i.forward, FlowRole::Ingress)
            && by_role(&e.forward, FlowRole::Egress) <= by_role(&t.forward, FlowRole::Transit),
        "{i:?} {t:?} {e:?}"
    );
    assert_eq!(
        answered, sent,
        "no loss expected on loopback at this pace (counted: {drops} drops, {links} at links)"
    );
    assert_eq!(by_role(&i.forward, FlowRole::Ingress), 10_000, "{i:?}");
    assert_eq!(by_role(&t.forward, FlowRole::Transit), 10_000, "{t:?}");
    assert_eq!(by_role(&e.forward, FlowRole::Egress), 10_000, "{e:?}");
    assert_eq!(by_role(&t.back, FlowRole::Transit), 10_000, "{t:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_udp_two_hops_10000_datagrams_from_50_clients() {
    two_hops(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_udp_two_hops_10000_datagrams_from_50_clients() {
    two_hops(TransportChoice::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_client_ip_affinity_keeps_each_client_on_its_site_until_it_goes() {
    // s0 has the listener; s1 and s2 each an echo that names its site.
    let mut net = star(3, TransportChoice::Quic).await;
    let e1 = udp_echo("s1:").await;
    let e2 = udp_echo("s2:").await;
    net.routers[1].set_connectors(vec![udp_connector("dns", "dns", e1)]);
    net.routers[2].set_connectors(vec![udp_connector("dns", "dns", e2)]);
    net.routers[0].set_listeners(vec![ListenerSpec {
        affinity: Affinity::ClientIp,
        ..udp_listener("dns", "dns")
    }]);
    converge(&net).await;
    let hub = &net.routers[0];
    wait_for(hub, "both sites as targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 2)
    })
    .await;
    let addr = listener_addr(hub, "dns");
    // 50 client addresses (127.0.0.2 ...), 20 flows each (a new port each time).
    let rounds = |n: usize| async move {
        let mut sites: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
        for _ in 0..n {
            let mut tasks = Vec::new();
            for c in 0..50u8 {
                tasks.push(tokio::spawn(async move {
                    let r = client(
                        &format!("127.0.0.{}:0", c + 2),
                        addr,
                        &format!("ip{c}"),
                        1,
                        16,
                    )
                    .await;
                    (c, r)
                }));
            }
            for t in tasks {
                let (c, r) = within(WAIT, "50 clients", t).await.unwrap();
                assert_eq!(r.answered, 1, "client {c} answered");
                sites.entry(c).or_default().extend(r.tags.into_keys());
            }
        }
        sites
    };
    let before = rounds(20).await;
    assert!(
        before.values().all(|s| s.len() == 1),
        "each client stayed on one site over 20 flows: {before:?}"
    );
    let on_s1: Vec<u8> = before
        .iter()
        .filter(|(_, s)| s.contains("s1:"))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        !on_s1.is_empty() && on_s1.len() < 50,
        "clients spread over both sites: {} on s1",
        on_s1.len()
    );
    // s1 goes away: its clients move to s2 and stay; the others never move.
    let s1 = net.routers.remove(1);
    s1.shutdown().await;
    let hub = &net.routers[0];
    wait_for(hub, "s1 gone from the targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 1)
    })
    .await;
    let after = rounds(20).await;
    assert!(
        after.values().all(|s| s.len() == 1 && s.contains("s2:")),
        "every client on s2 over 20 flows: {after:?}"
    );
    eprintln!(
        "affinity: {} of 50 clients on s1 before, all 50 on s2 after s1 stopped",
        on_s1.len()
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_without_affinity_spread_over_equal_sites() {
    let net = star(3, TransportChoice::Quic).await;
    let e1 = udp_echo("s1:").await;
    let e2 = udp_echo("s2:").await;
    net.routers[1].set_connectors(vec![udp_connector("dns", "dns", e1)]);
    net.routers[2].set_connectors(vec![udp_connector("dns", "dns", e2)]);
    net.routers[0].set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    let hub = &net.routers[0];
    wait_for(hub, "both sites as targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 2)
    })
    .await;
    let addr = listener_addr(hub, "dns");
    // 40 flows that stay open (idle timeout 60 s), one after another: each counts against
    // its site, so the next goes to the less busy one.
    let mut per_site: BTreeMap<String, u64> = BTreeMap::new();
    let mut sockets = Vec::new();
    for c in 0..40 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = client_on(&s, addr, &format!("c{c}"), 1, 16).await;
        assert_eq!(r.answered, 1);
        for (tag, n) in r.tags {
            *per_site.entry(tag).or_default() += n;
        }
        sockets.push(s);
    }
    let counts: Vec<u64> = per_site.values().copied().collect();
    assert_eq!(counts.len(), 2, "both sites took flows: {per_site:?}");
    assert!(
        counts.iter().all(|n| *n >= 15),
        "flows balanced over the sites: {per_site:?}"
    );
    eprintln!("without affinity: {per_site:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_udp_listener_rebinds_its_port_at_once_and_ends_its_flows() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    let echo = udp_echo("").await;
    r.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    r.set_listeners(vec![udp_listener("dns", "dns")]);
    wait_active(r, "dns").await;
    let addr = listener_addr(r, "dns");
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(client_on(&s, addr, "before", 1, 16).await.answered, 1);
    // Same port, affinity changed: the old socket closes first, so the port binds.
    r.set_listeners(vec![ListenerSpec {
        port: addr.port(),
        affinity: Affinity::ClientIp,
        ..udp_listener("dns", "dns")
    }]);
    let l = r.listeners().into_iter().find(|l| l.name == "dns").unwrap();
    assert_eq!(l.status, ResourceState::Active, "{:?}", l.reason);
    assert_eq!(l.address, Some(addr.to_string()));
    eventually(r, "the old flow's end", |r| {
        r.recent_flows()
            .iter()
            .any(|f| f.role == FlowRole::Ingress && f.outcome == FlowOutcome::Ok)
    })
    .await;
    assert_eq!(client_on(&s, addr, "after", 1, 16).await.answered, 1);
    // Removed: the port is free again at once.
    r.set_listeners(vec![]);
    std::net::UdpSocket::bind(addr).expect("the port is free once the listener is removed");
    net.shutdown().await;
}

/// Kernel drops of the IPv4 UDP sockets bound to one of `local` or connected to one of
/// `remote`.
pub(super) fn kernel_drops_of(local: &[SocketAddr], remote: &[SocketAddr]) -> u64 {
    // "0100007F:1F90" is 127.0.0.1:8080 (the address's bytes in host order, the port in hex).
    let hex = |a: &SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let local: Vec<String> = local.iter().map(hex).collect();
    let remote: Vec<String> = remote.iter().map(hex).collect();
    let text = std::fs::read_to_string("/proc/net/udp").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let mine = local.iter().any(|l| l == f[1]) || remote.iter().any(|r| r == f[2]);
            mine.then(|| f[12].parse::<u64>().unwrap())
        })
        .sum()
}

/// Datagrams the QUIC links of these routers sent and nobody received (lost on the way).
pub(super) fn lost_on_links(routers: &[Router]) -> u64 {
    let (mut sent, mut got) = (0, 0);
    for r in routers {
        let c = r.flow_state().links.datagram_counters();
        sent += c.sent.load(std::sync::atomic::Ordering::Relaxed);
        got += c.received.load(std::sync::atomic::Ordering::Relaxed)
            + c.no_flow.load(std::sync::atomic::Ordering::Relaxed)
            + c.queue_full.load(std::sync::atomic::Ordering::Relaxed);
    }
    sent.saturating_sub(got)
}

/// One client blasts 20 000 datagrams through one hop without waiting (far more than the
/// path carries): every datagram lost on loopback must show once in a counter (skiff's
/// drops, a QUIC link's sent-but-not-received, or the kernel's drops on the client's or the
/// backend's sockets), and every reply that arrives is the client's own.
async fn burst(transport: TransportChoice) {
    const N: usize = 20_000;
    let tls = matches!(transport, TransportChoice::Tls);
    let net = chain(2, transport).await;
    let echo = udp_echo("").await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", echo)]);
    net.routers[1].set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    wait_active(&net.routers[1], "dns").await;
    let addr = listener_addr(&net.routers[1], "dns");
    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client_addr = s.local_addr().unwrap();
    let rx = s.clone();
    let receiver = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut buf = vec![0u8; 2048];
        // Until nothing came for a second (bounded: N replies at most, and the test's
        // overall timeout).
        while let Ok(Ok((k, from))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv_from(&mut buf)).await
        {
            assert_eq!(from, addr);
            let text = std::str::from_utf8(&buf[..k]).unwrap();
            let seq: usize = text
                .strip_prefix("blast-")
                .unwrap_or_else(|| panic!("not the client's own: {text:?}"))[..6]
                .parse()
                .unwrap();
            assert!(seen.insert(seq), "reply {seq} twice");
        }
        seen.len() as u64
    });
    let t0 = Instant::now();
    for j in 0..N {
        let mut msg = format!("blast-{j:06}|").into_bytes();
        msg.resize(200, b'.');
        s.send_to(&msg, addr).await.unwrap();
    }
    let send_time = t0.elapsed();
    let answered = within(WAIT * 3, "the replies", receiver).await.unwrap();
    let lost = N as u64 - answered;
    let (ingress, egress) = (&net.routers[1], &net.routers[0]);
    let i = udp_key(ingress, "dns");
    let e = udp_key(egress, "dns");
    let links_keyless: u64 = net
        .routers
        .iter()
        .map(|r| total_dropped(&udp_key(r, "")))
        .sum();
    let skiff_drops = total_dropped(&i) + total_dropped(&e) + links_keyless;
    // Outside skiff: the client's socket, the echo server's, and the egress's socket to it
    // (connected to the echo server).
    let kernel = kernel_drops_of(&[client_addr, echo], &[echo]);
    let in_flight = lost_on_links(&net.routers);
    eprintln!(
        "burst (tls: {tls}): {N} sent in {send_time:?}, {answered} answered, {lost} lost; \
         counted: skiff drops {skiff_drops} (ingress {:?}, egress {:?}, links {links_keyless}), \
         kernel socket drops {kernel} (listener socket-buffer {}), lost on QUIC links \
         {in_flight}",
        i.dropped.iter().filter(|d| d.1 > 0).collect::<Vec<_>>(),
        e.dropped.iter().filter(|d| d.1 > 0).collect::<Vec<_>>(),
        dropped(&i, UdpDropReason::SocketBuffer)
    );
    assert_eq!(
        lost,
        skiff_drops + kernel + in_flight,
        "every lost datagram is counted once: skiff drops, the kernel's drops on the client's \
         and the backend's sockets, QUIC datagrams lost between the routers"
    );
    // The ingress accounts for each datagram the client sent: passed on, or dropped with a
    // reason (requests and replies), the kernel's drops on its socket included.
    let i_in = by_role(&i.forward, FlowRole::Ingress) + by_role(&i.back, FlowRole::Ingress);
    // Replies the ingress sent that the client did not get: the kernel dropped them on the
    // client's socket (counted in `kernel`).
    let unreceived = by_role(&i.back, FlowRole::Ingress) - answered;
    assert!(unreceived <= kernel, "{unreceived} replies vanished: {i:?}");
    if tls {
        // No loss between the routers on TLS/TCP: what the egress sent back reached the
        // ingress.
        assert_eq!(
            i_in + total_dropped(&i),
            N as u64 + by_role(&e.back, FlowRole::Egress),
            "{i:?} {e:?}"
        );
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_udp_burst_losses_are_counted() {
    burst(TransportChoice::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_udp_burst_losses_are_counted() {
    burst(TransportChoice::Tls).await;
}
