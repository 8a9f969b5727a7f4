//! Resets, refusals, balancing, failover, retries, backpressure and reconciliation.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;
use crate::flow::splice::FlowEnd;

/// Outcome of a read that should fail: `Ok(n)` bytes (0 = clean EOF) or the error kind.
type ReadOutcome = Result<usize, std::io::ErrorKind>;

async fn read_outcome(s: &mut TcpStream) -> ReadOutcome {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Ok(0),
            Ok(_) => continue,
            Err(e) => return Err(e.kind()),
        }
    }
}

/// A backend that reads "hello", reports it, then either reports how its next read ended
/// (`reset_it == false`) or resets the connection itself.
async fn reset_probe(
    reset_it: bool,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ReadOutcome>,
    mpsc::UnboundedReceiver<()>,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (got_tx, got_rx) = mpsc::unbounded_channel();
    let addr = backend(move |mut s: TcpStream| {
        let out_tx = out_tx.clone();
        let got_tx = got_tx.clone();
        async move {
            let mut hello = [0u8; 5];
            if s.read_exact(&mut hello).await.is_err() {
                return;
            }
            let _ = got_tx.send(());
            if reset_it {
                s.abort();
                drop(s);
            } else {
                let _ = out_tx.send(read_outcome(&mut s).await);
            }
        }
    })
    .await;
    (addr, out_rx, got_rx)
}

async fn resets(transport: TransportChoice) {
    let net = chain(3, transport).await;
    let (seen_addr, mut outcomes, mut got) = reset_probe(false).await;
    let (resetter_addr, _unused, mut got2) = reset_probe(true).await;
    net.routers[0].set_connectors(vec![
        connector("seen", "seen", seen_addr),
        connector("resetter", "resetter", resetter_addr),
    ]);
    net.routers[2].set_listeners(vec![
        listener("seen", "seen"),
        listener("resetter", "resetter"),
    ]);
    converge(&net).await;
    wait_active(&net.routers[2], "seen").await;
    wait_active(&net.routers[2], "resetter").await;

    // Client reset -> the backend's read fails with a reset, not a clean end.
    let mut c = TcpStream::connect(listener_addr(&net.routers[2], "seen"))
        .await
        .unwrap();
    c.write_all(b"hello").await.unwrap();
    within(WAIT, "hello at the backend", got.recv())
        .await
        .unwrap();
    c.abort();
    drop(c);
    let outcome = within(WAIT, "the backend's read", outcomes.recv())
        .await
        .unwrap();
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));

    // Backend reset -> the client's read fails with a reset.
    let mut c = TcpStream::connect(listener_addr(&net.routers[2], "resetter"))
        .await
        .unwrap();
    c.write_all(b"hello").await.unwrap();
    within(WAIT, "hello at the backend", got2.recv())
        .await
        .unwrap();
    let outcome = within(WAIT, "the client's read", read_outcome(&mut c)).await;
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
    net.shutdown().await;
}

#[tokio::test]
async fn quic_resets_are_propagated_both_ways() {
    resets(TransportChoice::Quic).await;
}

#[tokio::test]
async fn tls_resets_are_propagated_both_ways() {
    resets(TransportChoice::Tls).await;
}

#[tokio::test]
async fn no_connector_anywhere_is_refused_at_once() {
    let net = chain(2, TransportChoice::Quic).await;
    converge(&net).await;
    net.routers[1].set_listeners(vec![listener("nothing", "nothing")]);
    let l = net.routers[1].listeners();
    assert_eq!(l[0].status, ResourceState::NoTarget);
    let addr = listener_addr(&net.routers[1], "nothing");
    for _ in 0..200 {
        let refused = async {
            let mut c = TcpStream::connect(addr).await.unwrap();
            read_outcome(&mut c).await
        };
        let outcome = within(Duration::from_secs(1), "a refusal", refused).await;
        assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
    }
    assert_eq!(net.routers[1].listeners()[0].flows_refused, 200);
    assert_eq!(net.routers[1].listeners()[0].flows_active, 0);
    net.shutdown().await;
}

/// An echo backend that counts its connections.
async fn counted_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let addr = backend(move |s| {
        n2.fetch_add(1, Ordering::SeqCst);
        echo(s)
    })
    .await;
    (addr, n)
}

/// Opens `count` connections one after the other, each proven by a 1-byte echo, and keeps
/// them open (so outstanding flows count); returns them.
async fn hold_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        within(WAIT, "a 1-byte echo", c.read_exact(&mut b))
            .await
            .unwrap();
        held.push(c);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_two_sites_is_balanced_and_fails_over() {
    let net = star(3, TransportChoice::Quic).await;
    let (a1, n1) = counted_echo().await;
    let (a2, n2) = counted_echo().await;
    net.routers[1].set_connectors(vec![connector("echo", "echo", a1)]);
    net.routers[2].set_connectors(vec![connector("echo", "echo", a2)]);
    net.routers[0].set_listeners(vec![listener("echo", "echo")]);
    converge(&net).await;
    let two_sites = |r: &Router| {
        r.network()
            .keys
            .iter()
            .any(|k| k.routing_key == "echo" && k.sites.iter().filter(|s| s.reachable).count() == 2)
    };
    wait_for(&net.routers[0], "the key at two sites", two_sites).await;
    let addr = listener_addr(&net.routers[0], "echo");

    let held = hold_connections(addr, 100).await;
    let (c1, c2) = (n1.load(Ordering::SeqCst), n2.load(Ordering::SeqCst));
    assert_eq!(c1 + c2, 100);
    assert!(c1 >= 40 && c2 >= 40, "spread {c1} / {c2}");
    assert_eq!(net.routers[0].listeners()[0].flows_active, 100);
    drop(held);

    // One short connection after the other (nothing outstanding): ties are broken at random.
    let (b1, b2) = (n1.load(Ordering::SeqCst), n2.load(Ordering::SeqCst));
    for i in 0..100 {
        echo_roundtrip(addr, format!("s{i}").as_bytes())
            .await
            .unwrap();
    }
    let (d1, d2) = (
        n1.load(Ordering::SeqCst) - b1,
        n2.load(Ordering::SeqCst) - b2,
    );
    assert!(d1 >= 20 && d2 >= 20, "sequential spread {d1} / {d2}");

    // Site 1 goes away: once its loss is known, every new connection works via site 2.
    let mut routers = net.routers;
    let sites = net.sites;
    let r1 = routers.remove(1);
    r1.shutdown().await;
    let s1 = sites[1].id;
    wait_for(&routers[0], "site 1 unreachable", |r| {
        r.network()
            .routers
            .iter()
            .all(|v| v.id != s1 || !v.reachable)
    })
    .await;
    let before = n2.load(Ordering::SeqCst);
    for i in 0..50 {
        within(
            WAIT,
            "an echo via site 2",
            echo_roundtrip(addr, format!("m{i}").as_bytes()),
        )
        .await
        .unwrap();
    }
    assert_eq!(n2.load(Ordering::SeqCst), before + 50);

    // Site 1 comes back: new connections go there again.
    let r1 = start_router(&sites[1]).await;
    r1.set_connectors(vec![connector("echo", "echo", a1)]);
    let hub = routers[0].link_addr().unwrap().to_string();
    r1.set_links(vec![spec(&sites[0], &sites[1], hub, TransportChoice::Quic)]);
    wait_for(&routers[0], "the key at two sites again", two_sites).await;
    let back_before = n1.load(Ordering::SeqCst);
    let held = hold_connections(addr, 20).await;
    assert!(
        n1.load(Ordering::SeqCst) > back_before,
        "no flow returned to site 1"
    );
    drop(held);
    r1.shutdown().await;
    for r in routers {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_at_the_next_site_with_the_first_bytes() {
    let sites: Vec<Site> = (0..3).map(|i| site(&format!("s{i}"))).collect();
    let mut routers = Vec::new();
    for s in &sites {
        routers.push(start_router(s).await);
    }
    let hub = routers[0].link_addr().unwrap().to_string();
    routers[1].set_links(vec![spec(
        &sites[0],
        &sites[1],
        hub.clone(),
        TransportChoice::Tls,
    )]);
    // Site 2 is further away, so site 1 (whose backend is down) is always tried first.
    let mut far = spec(&sites[0], &sites[2], hub, TransportChoice::Tls);
    far.cost = 50;
    routers[2].set_links(vec![far]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (up, n) = counted_echo().await;
    routers[1].set_connectors(vec![connector("echo", "echo", closed)]);
    routers[2].set_connectors(vec![connector("echo", "echo", up)]);
    routers[0].set_listeners(vec![listener("echo", "echo")]);
    let net = Net { sites, routers };
    converge(&net).await;
    wait_for(&net.routers[0], "the key at two sites", |r| {
        r.network().keys.iter().any(|k| k.sites.len() == 2)
    })
    .await;
    let addr = listener_addr(&net.routers[0], "echo");
    for size in [1usize, 1000, 70_000] {
        // The client sends everything before reading anything; the bytes sent to site 1 are
        // replayed to site 2 (up to 64 KiB are held back until site 2 answers).
        let msg = pattern(size as u64, size);
        within(WAIT, "an echo after a retry", echo_roundtrip(addr, &msg))
            .await
            .unwrap();
    }
    assert_eq!(n.load(Ordering::SeqCst), 3);
    let failed = net.routers[1].connectors()[0].flows_failed;
    assert_eq!(failed, 3, "site 1's backend was tried for every connection");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_bounded_memory_and_stalls_no_other_flow() {
    for transport in [TransportChoice::Quic, TransportChoice::Tls] {
        let net = chain(2, transport.clone()).await;
        let written = Arc::new(AtomicUsize::new(0));
        let w2 = written.clone();
        // A backend that writes as fast as it can, forever.
        let firehose = backend(move |mut s: TcpStream| {
            let w2 = w2.clone();
            async move {
                let chunk = vec![0x5au8; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {
                    w2.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            }
        })
        .await;
        let echo_addr = backend(echo).await;
        net.routers[0].set_connectors(vec![
            connector("firehose", "firehose", firehose),
            connector("echo", "echo", echo_addr),
        ]);
        net.routers[1].set_listeners(vec![
            listener("firehose", "firehose"),
            listener("echo", "echo"),
        ]);
        converge(&net).await;
        wait_active(&net.routers[1], "firehose").await;
        wait_active(&net.routers[1], "echo").await;
        let stalled = TcpStream::connect(listener_addr(&net.routers[1], "firehose"))
            .await
            .unwrap();
        // Ten flows on the same link move 8 MiB each while the stalled one holds its window.
        let echo_at = listener_addr(&net.routers[1], "echo");
        let data = pattern(3, 8 << 20);
        let mut runs = Vec::new();
        for _ in 0..10 {
            let data = data.clone();
            runs.push(tokio::spawn(
                async move { echo_roundtrip(echo_at, &data).await },
            ));
        }
        for r in runs {
            within(
                Duration::from_secs(120),
                "an 8 MiB echo beside a stalled flow",
                r,
            )
            .await
            .unwrap()
            .unwrap();
        }
        // Kernel socket buffers (three sockets, a few MiB each on loopback) + one stream
        // window per hop + two copy buffers per router: far below what an unbounded relay
        // would have taken from a backend writing at loopback speed meanwhile.
        let in_flight = written.load(Ordering::SeqCst);
        assert!(
            in_flight < 32 << 20,
            "{transport}: {in_flight} bytes left the backend for a client that reads nothing"
        );
        drop(stalled);
        net.shutdown().await;
    }
}

#[tokio::test]
async fn listeners_and_connectors_reconcile_without_disturbing_flows() {
    let net = chain(2, TransportChoice::Tls).await;
    let echo_addr = backend(echo).await;
    net.routers[0].set_connectors(vec![connector("a", "a", echo_addr)]);
    net.routers[1].set_listeners(vec![listener("a", "a")]);
    converge(&net).await;
    wait_active(&net.routers[1], "a").await;
    let addr = listener_addr(&net.routers[1], "a");
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    // Add a second listener and connector, with a port taken and an address not of this host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut busy = listener("busy", "a");
    busy.port = taken.local_addr().unwrap().port();
    let mut foreign = listener("foreign", "a");
    foreign.host = "192.0.2.1".into();
    net.routers[0].set_connectors(vec![
        connector("a", "a", echo_addr),
        connector("b", "b", echo_addr),
    ]);
    net.routers[1].set_listeners(vec![listener("a", "a"), listener("b", "b"), busy, foreign]);
    let l = net.routers[1].listeners();
    assert_eq!(
        l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "busy", "foreign"]
    );
    assert_eq!(
        listener_addr(&net.routers[1], "a"),
        addr,
        "listener a was rebound"
    );
    assert_eq!(l[2].status, ResourceState::Error);
    assert!(
        l[2].reason.as_deref().unwrap().contains("port in use"),
        "{:?}",
        l[2].reason
    );
    assert_eq!(l[3].status, ResourceState::Error);
    assert!(
        l[3].reason.as_deref().unwrap().contains("192.0.2.1"),
        "{:?}",
        l[3].reason
    );
    wait_active(&net.routers[1], "b").await;
    echo_roundtrip(listener_addr(&net.routers[1], "b"), b"via b")
        .await
        .unwrap();

    // Remove the new ones again; the first flow never noticed.
    net.routers[0].set_connectors(vec![connector("a", "a", echo_addr)]);
    net.routers[1].set_listeners(vec![listener("a", "a")]);
    held.write_all(b"2").await.unwrap();
    held.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"2");
    for r in &net.routers {
        assert!(
            r.flows().iter().any(|f| f.routing_key == "a"),
            "{:?}",
            r.flows()
        );
    }
    drop(held);
    net.shutdown().await;
}

#[tokio::test]
async fn a_local_connector_is_preferred_and_used_directly() {
    let net = chain(2, TransportChoice::Quic).await;
    let (here, n_here) = counted_echo().await;
    let (there, n_there) = counted_echo().await;
    net.routers[1].set_connectors(vec![connector("echo", "echo", here)]);
    net.routers[0].set_connectors(vec![connector("echo", "echo", there)]);
    net.routers[1].set_listeners(vec![listener("echo", "echo")]);
    converge(&net).await;
    wait_for(&net.routers[1], "the key at both routers", |r| {
        r.network().keys.iter().any(|k| k.sites.len() == 2)
    })
    .await;
    let addr = listener_addr(&net.routers[1], "echo");
    for i in 0..10 {
        echo_roundtrip(addr, format!("local {i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(n_here.load(Ordering::SeqCst), 10);
    assert_eq!(n_there.load(Ordering::SeqCst), 0);
    assert_eq!(net.routers[1].connectors()[0].flows_total, 10);
    net.shutdown().await;
}
