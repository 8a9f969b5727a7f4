//! Flow records and statistics at every role: one flow over two hops leaves one record at
//! the ingress, the transit router and the egress, with the same id, the same bytes and the
//! site names; the per-key statistics count it once per role. At the transit router the bytes
//! back never count the egress's answer (they never go down), and a refused flow is never
//! connected there (no duration, never active).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::flow::{FlowOutcome, FlowRecord, FlowRole};

/// Polls `router`'s recent flows until one has `role` and `key`, within [`WAIT`].
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

async fn record(router: &Router, role: FlowRole) -> FlowRecord {
    record_of(router, role, "db").await
}

/// On a chain of three: key `db` served by `backend` at router 0, a listener for it at
/// router 2, whose address this returns once it can reach router 0.
async fn serve_db(net: &Net, backend: std::net::SocketAddr) -> std::net::SocketAddr {
    net.routers[0].set_connectors(vec![connector("db", "db", backend)]);
    net.routers[2].set_listeners(vec![listener("db", "db")]);
    converge(net).await;
    wait_active(&net.routers[2], "db").await;
    listener_addr(&net.routers[2], "db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flow_over_two_hops_is_recorded_at_every_router() {
    let net = chain(3, TransportChoice::Quic).await;
    let echo_addr = backend(echo).await;
    let addr = serve_db(&net, echo_addr).await;

    let data = pattern(7, 100_000);
    let mut c = TcpStream::connect(addr).await.unwrap();
    let client = c.local_addr().unwrap().to_string();
    echo_roundtrip_on(&mut c, &data).await;

    let n = data.len() as u64;
    let ingress = record(&net.routers[2], FlowRole::Ingress).await;
    let transit = record(&net.routers[1], FlowRole::Transit).await;
    let egress = record(&net.routers[0], FlowRole::Egress).await;
    for r in [&ingress, &transit, &egress] {
        assert_eq!(r.outcome, FlowOutcome::Ok, "{r:?}");
        assert_eq!((r.bytes_forward, r.bytes_back), (n, n), "{r:?}");
        assert_eq!(r.id, ingress.id, "the same flow id at every router");
        assert_eq!(r.origin.name.as_deref(), Some("r2"), "{r:?}");
        let dest = r.destination.as_ref().unwrap();
        assert_eq!(dest.name.as_deref(), Some("r0"), "{r:?}");
        assert_eq!(r.routing_key, "db");
        assert!(r.reason.is_none(), "{r:?}");
    }
    // The client's address travels in the flow header (link protocol 1.3).
    for r in [&ingress, &transit, &egress] {
        assert_eq!(r.client.as_deref(), Some(client.as_str()), "{r:?}");
    }
    assert_eq!(ingress.listener.as_deref(), Some("db"));
    assert_eq!(egress.connector.as_deref(), Some("db"));
    assert!(transit.listener.is_none());

    for (i, role) in [
        (2, FlowRole::Ingress),
        (1, FlowRole::Transit),
        (0, FlowRole::Egress),
    ] {
        let stats = net.routers[i].flow_stats();
        let s = stats.iter().find(|s| s.key == "db").unwrap();
        let ok = s
            .flows
            .iter()
            .find(|(r, o, _)| *r == role && *o == FlowOutcome::Ok)
            .map(|f| f.2);
        assert_eq!(ok, Some(1), "router {i}: {s:?}");
        assert_eq!((s.bytes_forward(), s.bytes_back()), (n, n), "router {i}");
        assert_eq!(s.duration.count, 1, "router {i}");
        // Setup time is the ingress's alone.
        assert_eq!(
            s.setup.count,
            u64::from(role == FlowRole::Ingress),
            "router {i}"
        );
    }
    net.shutdown().await;
}

/// Sends 1000 bytes, then waits for the client to close.
async fn talker(mut s: TcpStream) {
    let _ = s.write_all(&[7u8; 1000]).await;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

/// `key`'s bytes back at `router` (running flows included).
fn bytes_back(router: &Router, key: &str) -> u64 {
    router
        .flow_stats()
        .iter()
        .find(|s| s.key == key)
        .map_or(0, |s| s.bytes_back())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_bytes_back_never_count_the_answer_and_never_go_down() {
    let net = chain(3, TransportChoice::Quic).await;
    let talk = backend(talker).await;
    let addr = serve_db(&net, talk).await;

    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut got = [0u8; 1000];
    within(WAIT, "the backend's bytes", c.read_exact(&mut got))
        .await
        .unwrap();
    // Mid-flow: the transit router counted the 1000 payload bytes, not the answer's frame.
    let transit = &net.routers[1];
    let mid = bytes_back(transit, "db");
    assert_eq!(mid, 1000, "transit bytes back mid-flow");
    assert_eq!(transit.flows().len(), 1, "{:?}", transit.flows());
    drop(c);
    let rec = record(transit, FlowRole::Transit).await;
    let after = bytes_back(transit, "db");
    assert_eq!((rec.bytes_back, after), (1000, 1000), "{rec:?}");
    assert!(
        after >= mid,
        "bytes back went down: {mid} mid-flow, {after} after"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flow_is_never_connected_at_the_transit_router() {
    let net = chain(3, TransportChoice::Tls).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let addr = serve_db(&net, closed).await;
    // The refusal comes back as a reset, which on a fast machine can arrive before `connect`
    // has returned (it then fails with ECONNRESET): either way the flow was refused.
    if let Ok(mut c) = TcpStream::connect(addr).await {
        let mut rest = Vec::new();
        let _ = within(WAIT, "the refusal", c.read_to_end(&mut rest)).await;
    }
    let rec = record(&net.routers[1], FlowRole::Transit).await;
    assert_eq!(rec.outcome, FlowOutcome::ConnectRefused, "{rec:?}");
    let stats = net.routers[1].flow_stats();
    let s = stats.iter().find(|s| s.key == "db").unwrap();
    assert_eq!(
        s.duration.count, 0,
        "a refused flow is timed at transit: {s:?}"
    );
    assert_eq!((s.bytes_forward(), s.bytes_back()), (0, 0), "{s:?}");
    net.shutdown().await;
}

/// A chain r2 (ingress) → r1 (transit) → r0 (egress) over `transport` in which router
/// `old` says it speaks link protocol 1.2, whose decoder refuses a flow header with the
/// client's address. It is this build saying 1.2: it would decode and record an address if
/// one were sent, so a `None` there proves the sender left it out.
pub(super) async fn chain_with_a_1_2_router(old: usize, transport: TransportChoice) -> Net {
    chain_speaking(3, transport, |i| {
        if i == old {
            crate::wire::ProtocolVersion { major: 1, minor: 2 }
        } else {
            crate::wire::PROTOCOL_VERSION
        }
    })
    .await
}

/// On a [`chain_with_a_1_2_router`]: the flow for `key` from `client` ended well at all three
/// routers, and the client's address reached every router up to the first that says 1.2.
pub(super) async fn assert_the_client_stops_before_1_2(
    net: &Net,
    old: usize,
    key: &str,
    client: &str,
) {
    let ingress = record_of(&net.routers[2], FlowRole::Ingress, key).await;
    let transit = record_of(&net.routers[1], FlowRole::Transit, key).await;
    let egress = record_of(&net.routers[0], FlowRole::Egress, key).await;
    for r in [&ingress, &transit, &egress] {
        assert_eq!(r.outcome, FlowOutcome::Ok, "old router r{old}: {r:?}");
    }
    assert_eq!(ingress.client.as_deref(), Some(client));
    let (at_transit, at_egress) = if old == 1 {
        // The ingress's next hop speaks 1.2: nobody after it learns the client.
        (None, None)
    } else {
        // The transit router reads it and leaves it out towards the 1.2 egress.
        (Some(client), None)
    };
    assert_eq!(transit.client.as_deref(), at_transit, "old router r{old}");
    assert_eq!(egress.client.as_deref(), at_egress, "old router r{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_address_goes_only_to_routers_that_read_it_and_the_flow_passes_either_way() {
    for old in [1, 0] {
        let net = chain_with_a_1_2_router(old, TransportChoice::Tls).await;
        let echo_addr = backend(echo).await;
        let addr = serve_db(&net, echo_addr).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let client = c.local_addr().unwrap().to_string();
        echo_roundtrip_on(&mut c, &pattern(3, 10_000)).await;
        assert_the_client_stops_before_1_2(&net, old, "db", &client).await;
        net.shutdown().await;
    }
}

/// Sends `data` on `c`, half-closes, and checks the echo.
async fn echo_roundtrip_on(c: &mut TcpStream, data: &[u8]) {
    c.write_all(data).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(WAIT, "the echo", c.read_to_end(&mut back))
        .await
        .unwrap();
    assert!(back == data, "the echo differs");
}
