//! UDP flows at the edges: a refused or dying first choice, replies from the address a client
//! sent to on a wildcard listener, one-shot flows, the listener's byte budget, a QUIC link
//! that goes away under a hop, and coalesced client datagrams. The common helpers are in
//! `udp.rs`.

use std::collections::BTreeSet;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::udp::*;
use super::*;
use crate::flow::{FlowOutcome, FlowRole, UdpDropReason};

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
        client: None,
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
