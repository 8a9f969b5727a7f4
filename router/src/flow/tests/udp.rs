//! UDP listeners (the ingress role) end to end: real UDP clients, each on its own socket,
//! send datagrams that name them through in-process routers (a local connector, one hop and
//! two hops, over QUIC and over TLS/TCP links) to a real UDP echo server; each reply must
//! reach the socket that sent the request, large datagrams must arrive whole, and the
//! `skiff_udp_*` counters must account for every datagram. Also: a listener without a target
//! (no-route drops, its status says why), the idle timeout (and the one-shot idle), client-ip
//! affinity, a listener changed in place, replies from the address a client sent to on a
//! wildcard listener, the listener's byte budget, and a flow whose stream dies before the
//! egress answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::*;
use crate::flow::{FlowOutcome, FlowRole, UdpDropReason, UdpKeyStats};
use crate::routing::Affinity;

/// How long a client waits for the reply to one datagram before counting it lost.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// A UDP echo server on loopback that prefixes each reply with `tag` (empty: a plain echo);
/// it stops with the test's runtime.
async fn udp_echo(tag: &str) -> SocketAddr {
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

fn udp_listener(name: &str, k: &str) -> ListenerSpec {
    ListenerSpec {
        protocol: Protocol::Udp,
        ..listener(name, k)
    }
}

fn udp_connector(name: &str, k: &str, backend: SocketAddr) -> ConnectorSpec {
    ConnectorSpec {
        protocol: Protocol::Udp,
        ..connector(name, k, backend)
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientResult {
    sent: u64,
    /// Distinct requests whose reply came back.
    answered: u64,
    /// The tags (echo servers) that answered, with counts.
    tags: BTreeMap<String, u64>,
}

/// A client on its own socket (bound to `local`) sends `n` datagrams `<name>-<j>` padded to
/// `len` bytes (at least the name), one at a time, each waiting up to [`REPLY_WAIT`] for its
/// echo. Panics if a reply is not one of its own requests, came from elsewhere than the
/// listener, or differs from the request.
async fn client(
    local: &str,
    listener: SocketAddr,
    name: &str,
    n: usize,
    len: usize,
) -> ClientResult {
    let s = UdpSocket::bind(local).await.unwrap();
    client_on(&s, listener, name, n, len).await
}

async fn client_on(
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
fn udp_key(router: &Router, key: &str) -> UdpKeyStats {
    router
        .udp_stats()
        .into_iter()
        .find(|k| k.key == key)
        .unwrap_or_else(|| UdpKeyStats {
            key: key.into(),
            ..Default::default()
        })
}

fn by_role(v: &[(FlowRole, u64)], role: FlowRole) -> u64 {
    v.iter().find(|x| x.0 == role).map_or(0, |x| x.1)
}

fn dropped(k: &UdpKeyStats, reason: UdpDropReason) -> u64 {
    k.dropped.iter().find(|d| d.0 == reason).map_or(0, |d| d.1)
}

fn total_dropped(k: &UdpKeyStats) -> u64 {
    k.dropped.iter().map(|d| d.1).sum()
}

/// Waits (at most [`WAIT`]) until `cond` holds for `router`; panics with `what`.
async fn eventually(router: &Router, what: &str, cond: impl Fn(&Router) -> bool) {
    let t0 = Instant::now();
    while !cond(router) {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 20 clients x 50 datagrams at once; every reply reached its own client.
async fn twenty_clients(addr: SocketAddr) -> Vec<ClientResult> {
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
fn kernel_drops_of(local: &[SocketAddr], remote: &[SocketAddr]) -> u64 {
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
fn lost_on_links(routers: &[Router]) -> u64 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_udp_flow_goes_to_the_next_site_with_its_first_datagrams() {
    // r2 (listener) - r1 (nearest; its connector cannot send: a broadcast address without
    // SO_BROADCAST) - r0 (an echo that names it).
    let net = chain(3, TransportChoice::Quic).await;
    let good = udp_echo("r0:").await;
    let bad: SocketAddr = "255.255.255.255:53".parse().unwrap();
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", good)]);
    net.routers[1].set_connectors(vec![udp_connector("dns", "dns", bad)]);
    net.routers[2].set_listeners(vec![udp_listener("dns", "dns")]);
    converge(&net).await;
    let ingress = &net.routers[2];
    wait_for(ingress, "both sites as targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 2)
    })
    .await;
    let addr = listener_addr(ingress, "dns");
    // Five datagrams at once: they go to r1 before its refusal, and must reach r0.
    let t0 = Instant::now();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for j in 0..5 {
        s.send_to(format!("first-{j}").as_bytes(), addr)
            .await
            .unwrap();
    }
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 256];
    while got.len() < 5 {
        let (n, _) = within(WAIT, "the replies", s.recv_from(&mut buf))
            .await
            .unwrap();
        got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    eprintln!(
        "refused at r1, all 5 first datagrams answered by r0 after {:?}",
        t0.elapsed()
    );
    let want: BTreeSet<String> = (0..5).map(|j| format!("r0:first-{j}")).collect();
    assert_eq!(got, want, "every first datagram answered by r0, once");
    let i = udp_key(ingress, "dns");
    assert_eq!(by_role(&i.forward, FlowRole::Ingress), 5, "{i:?}");
    assert_eq!(total_dropped(&i), 0, "{i:?}");
    // r1 refused the flow and says why; the flow runs to r0.
    let refused = net.routers[1]
        .recent_flows()
        .into_iter()
        .find(|f| f.role == FlowRole::Egress)
        .expect("r1's record of the refused flow");
    assert_eq!(refused.outcome, FlowOutcome::ConnectRefused, "{refused:?}");
    let active = ingress.flows();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].destination, net.sites[0].id);
    net.shutdown().await;
}

/// A client whose socket is connected to `to` (as dig and glibc's resolver do) sends
/// `datagram` and waits for the reply; the kernel delivers only replies from `to`.
async fn connected_exchange(local: &str, to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind(local).await.unwrap();
    s.connect(to).await.unwrap();
    s.send(datagram).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(REPLY_WAIT, s.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_udp_listener_replies_from_the_address_each_client_sent_to() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    let echo = udp_echo("echo:").await;
    r.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    r.set_listeners(vec![
        ListenerSpec {
            host: "0.0.0.0".into(),
            ..udp_listener("any4", "dns")
        },
        ListenerSpec {
            host: "::".into(),
            ..udp_listener("any6", "dns")
        },
    ]);
    wait_active(r, "any4").await;
    wait_active(r, "any6").await;
    let port4 = listener_addr(r, "any4").port();
    let port6 = listener_addr(r, "any6").port();
    // Connected clients, each to another local address of the host; the kernel's route to
    // each of them goes out from 127.0.0.1 (or ::1), which the client would drop.
    let cases = [
        ("127.0.0.1:0", SocketAddr::from(([127, 0, 0, 2], port4))),
        ("127.0.0.1:0", SocketAddr::from(([127, 0, 0, 3], port4))),
        ("127.0.0.1:0", SocketAddr::from(([127, 0, 0, 1], port4))),
        // IPv4 clients of the dual-stack IPv6 wildcard.
        ("127.0.0.1:0", SocketAddr::from(([127, 0, 0, 2], port6))),
        ("[::1]:0", format!("[::1]:{port6}").parse().unwrap()),
    ];
    for (local, to) in cases {
        let msg = format!("to {to}");
        let reply = connected_exchange(local, to, msg.as_bytes()).await;
        assert_eq!(
            reply.as_deref(),
            Some(format!("echo:{msg}").as_bytes()),
            "a client connected to {to} gets its reply from {to}"
        );
    }
    let k = udp_key(r, "dns");
    assert_eq!(by_role(&k.back, FlowRole::Ingress), cases.len() as u64);
    assert_eq!(total_dropped(&k), 0, "{k:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_datagram_udp_flow_ends_after_the_one_shot_idle_a_conversation_stays() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    let echo = udp_echo("").await;
    *r.flow_state().udp_idle.lock().unwrap() = Duration::from_secs(30);
    let one_shot = Duration::from_millis(300);
    *r.flow_state().udp_one_shot_idle.lock().unwrap() = one_shot;
    r.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    r.set_listeners(vec![udp_listener("dns", "dns")]);
    wait_active(r, "dns").await;
    let addr = listener_addr(r, "dns");
    // 20 one-query clients (a stub resolver's new port per query) and one conversation.
    let talker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let talk = client_on(&talker, addr, "talk", 2, 16).await;
    assert_eq!(talk.answered, 2);
    let t0 = Instant::now();
    for j in 0..20 {
        let once = client("127.0.0.1:0", addr, &format!("q{j:02}"), 1, 16).await;
        assert_eq!(once.answered, 1);
    }
    let active = |r: &Router| {
        r.flows()
            .iter()
            .filter(|f| f.role == FlowRole::Ingress)
            .count()
    };
    assert!(active(r) >= 2, "the one-shot flows live until their idle");
    eventually(r, "the one-shot flows' end", |r| active(r) == 1).await;
    let ended = t0.elapsed();
    // The conversation is still there, well past the one-shot idle.
    tokio::time::sleep(one_shot * 3).await;
    assert_eq!(
        active(r),
        1,
        "the two-datagram flow keeps the full idle timeout"
    );
    let rec = r.recent_flows();
    assert_eq!(rec.len(), 20, "20 one-shot flows ended");
    assert!(
        rec.iter()
            .all(|f| f.outcome == FlowOutcome::Ok && f.bytes_forward == 16),
        "{rec:?}"
    );
    eprintln!("20 one-shot flows (one-shot idle 300 ms, idle 30 s) ended within {ended:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_listener_past_its_byte_budget_drops_as_congested_and_frees_the_budget() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    let echo = udp_echo("").await;
    // Room for 4 datagrams of 500 bytes waiting in the listener at once.
    *r.flow_state().udp_queued_bytes.lock().unwrap() = 2000;
    r.set_connectors(vec![udp_connector("dns", "dns", echo)]);
    r.set_listeners(vec![udp_listener("dns", "dns")]);
    wait_active(r, "dns").await;
    let addr = listener_addr(r, "dns");
    // A burst of 200 (fewer than a flow's queue of 256 datagrams): only the byte budget
    // can refuse some of them.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = 200u64;
    for j in 0..sent {
        let mut d = format!("burst-{j:05}|").into_bytes();
        d.resize(500, b'.');
        s.send_to(&d, addr).await.unwrap();
    }
    let mut answered = BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    while let Ok(got) = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
        let n = got.unwrap();
        assert_eq!(n, 500, "a reply whole");
        answered.insert(buf[..12].to_vec());
    }
    let k = udp_key(r, "dns");
    let congested = dropped(&k, UdpDropReason::Congested);
    eprintln!(
        "burst of {sent} x 500 B against a 2000 B budget: {} answered, {congested} dropped as congested",
        answered.len()
    );
    assert!(congested > 0, "the budget refused some: {k:?}");
    assert_eq!(
        answered.len() as u64 + congested,
        sent,
        "every datagram answered or counted: {k:?}"
    );
    // The budget is free again: datagrams of 1 500 bytes (of 2 000) pass one by one.
    let after = client("127.0.0.1:0", addr, "after", 5, 1500).await;
    assert_eq!(after.answered, 5, "the budget was given back");
    assert_eq!(
        dropped(&udp_key(r, "dns"), UdpDropReason::Congested),
        congested
    );
    net.shutdown().await;
}

/// A TCP proxy on loopback to `upstream` that, once `armed`, closes the connection carrying
/// the next bytes from its client instead of passing them on (and disarms). It stops with
/// the test's runtime.
async fn cutting_proxy(
    upstream: SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::AcqRel) {
                            return; // cut: these bytes never arrive
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                // Whichever ends first ends the connection both ways.
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_whose_stream_dies_before_the_answer_goes_to_the_next_site() {
    // i (listener) dials a (cost 1, through a proxy that cuts the link as the flow's header
    // passes) and b (cost 10); both serve the key with a tagging echo.
    let sites: Vec<Site> = ["i", "a", "b"].iter().map(|n| site(n)).collect();
    let mut routers = Vec::new();
    for s in &sites {
        routers.push(start_router(s).await);
    }
    let net = Net { sites, routers };
    let (i, a, b) = (&net.routers[0], &net.routers[1], &net.routers[2]);
    a.set_connectors(vec![udp_connector("dns", "dns", udp_echo("a:").await)]);
    b.set_connectors(vec![udp_connector("dns", "dns", udp_echo("b:").await)]);
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = cutting_proxy(a.link_addr().unwrap(), armed.clone()).await;
    let mut to_a = spec(
        &net.sites[1],
        &net.sites[0],
        proxy.to_string(),
        TransportChoice::Tls,
    );
    to_a.cost = 1;
    let mut to_b = spec(
        &net.sites[2],
        &net.sites[0],
        b.link_addr().unwrap().to_string(),
        TransportChoice::Tls,
    );
    to_b.cost = 10;
    i.set_links(vec![to_a, to_b]);
    i.set_listeners(vec![udp_listener("dns", "dns")]);
    wait_for(i, "both sites as targets", |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == "dns" && l.targets.len() == 2)
    })
    .await;
    let addr = listener_addr(i, "dns");
    // Before the cut, a's the cheaper site: a flow goes there.
    let before = client("127.0.0.1:0", addr, "before", 1, 16).await;
    assert_eq!(before.tags.get("a:"), Some(&1), "{before:?}");
    // The next flow's header is cut with a's link: the flow must go to b, its datagram
    // answered once.
    armed.store(true, std::sync::atomic::Ordering::Release);
    let t0 = Instant::now();
    let cut = client("127.0.0.1:0", addr, "cut", 1, 16).await;
    assert!(
        !armed.load(std::sync::atomic::Ordering::Acquire),
        "the proxy cut a's link"
    );
    assert_eq!(cut.answered, 1, "{cut:?}");
    assert_eq!(cut.tags.get("b:"), Some(&1), "answered by b: {cut:?}");
    eprintln!(
        "the flow cut on its way to a was answered by b after {:?}",
        t0.elapsed()
    );
    let k = udp_key(i, "dns");
    assert_eq!(total_dropped(&k), 0, "{k:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_whose_quic_link_is_gone_refuses_datagrams_as_closed() {
    use crate::flow::udp::hop::{Dropped, Hop, Via};
    let net = chain(2, TransportChoice::Quic).await;
    net.routers[0].set_connectors(vec![udp_connector("dns", "dns", udp_echo("").await)]);
    converge(&net).await;
    let (egress_id, opener_id) = (net.sites[0].id, net.sites[1].id);
    let mut routers = net.routers;
    let opener = routers.pop().unwrap();
    let egress = routers.pop().unwrap();
    let link = opener.link_to(egress_id).expect("the QUIC link is up");
    let stream = link.open_stream().await.unwrap();
    let mut header = bytes::BytesMut::new();
    crate::wire::FlowHeader {
        routing_key: "dns".into(),
        destination: *egress_id.as_bytes(),
        origin: *opener_id.as_bytes(),
        flow_id: crate::flow::random_u64(),
        protocol: Protocol::Udp,
        hops: 0,
    }
    .encode(&mut header);
    let mut hop = Hop::opened(stream, link.datagrams(), header.freeze());
    let status = within(WAIT, "the egress's status", hop.read_status())
        .await
        .unwrap();
    assert_eq!(status.code, crate::wire::FlowStatusCode::Ok, "{status:?}");
    assert_eq!(hop.send(b"ping"), Ok(Via::Datagram));
    let reply = within(WAIT, "the echo", hop.recv()).await.unwrap();
    assert_eq!(reply.as_deref(), Some(&b"ping"[..]));
    // The egress's router goes: its link closes.
    egress.shutdown().await;
    wait_for(&opener, "the link down", |r| r.link_to(egress_id).is_none()).await;
    // Not counted as oversize and queued into a dead stream: refused as closed.
    assert_eq!(hop.send(b"after"), Err(Dropped::Closed));
    drop(hop);
    opener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_udp_listener_splits_a_clients_coalesced_segments() {
    let net = chain(1, TransportChoice::Quic).await;
    let r = &net.routers[0];
    r.set_connectors(vec![udp_connector("dns", "dns", udp_echo("").await)]);
    r.set_listeners(vec![ListenerSpec {
        host: "0.0.0.0".into(),
        ..udp_listener("any4", "dns")
    }]);
    wait_active(r, "any4").await;
    let to = SocketAddr::from(([127, 0, 0, 1], listener_addr(r, "any4").port()));
    // A client sending with GSO (as QUIC stacks do): three datagrams of 100, 100 and 50
    // bytes in one send; the kernel may hand them to the listener's socket coalesced (GRO).
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let state = quinn_udp::UdpSocketState::new((&s).into()).unwrap();
    assert!(state.max_gso_segments() > 1, "this kernel sends with GSO");
    let mut contents = Vec::new();
    for (i, len) in [100usize, 100, 50].into_iter().enumerate() {
        contents.extend(std::iter::repeat_n(b'a' + i as u8, len));
    }
    let transmit = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: &contents,
        segment_size: Some(100),
        src_ip: None,
    };
    within(WAIT, "the send", async {
        loop {
            s.writable().await.unwrap();
            match s.try_io(tokio::io::Interest::WRITABLE, || {
                state.try_send((&s).into(), &transmit)
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("GSO send: {e}"),
            }
        }
    })
    .await;
    let mut replies = Vec::new();
    let mut buf = [0u8; 1024];
    while replies.len() < 3 {
        let Ok(got) = tokio::time::timeout(REPLY_WAIT, s.recv(&mut buf)).await else {
            break;
        };
        let n = got.unwrap();
        replies.push(buf[..n].to_vec());
    }
    replies.sort();
    let want: Vec<Vec<u8>> = vec![vec![b'a'; 100], vec![b'b'; 100], vec![b'c'; 50]];
    assert_eq!(
        replies.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50],
        "each segment a datagram of its own"
    );
    assert_eq!(replies, want);
    let k = udp_key(r, "dns");
    assert_eq!(by_role(&k.forward, FlowRole::Ingress), 3, "{k:?}");
    net.shutdown().await;
}
