//! Flow records and statistics at every role: one flow over two hops leaves one record at
//! the ingress, the transit router and the egress, with the same id, the same bytes and the
//! site names; the per-key statistics count it once per role.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flow_over_two_hops_is_recorded_at_every_router() {
    let net = chain(3, TransportChoice::Quic).await;
    let echo_addr = backend(echo).await;
    net.routers[0].set_connectors(vec![connector("db", "db", echo_addr)]);
    net.routers[2].set_listeners(vec![listener("db", "db")]);
    converge(&net).await;
    wait_active(&net.routers[2], "db").await;
    let addr = listener_addr(&net.routers[2], "db");

    let data = pattern(7, 100_000);
    let mut c = TcpStream::connect(addr).await.unwrap();
    let client = c.local_addr().unwrap().to_string();
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(WAIT, "the echo", c.read_to_end(&mut back))
        .await
        .unwrap();
    assert!(back == data, "the echo differs");

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
    assert_eq!(ingress.client.as_deref(), Some(client.as_str()));
    assert_eq!(ingress.listener.as_deref(), Some("db"));
    assert_eq!(egress.connector.as_deref(), Some("db"));
    assert!(transit.client.is_none() && transit.listener.is_none());

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
        assert_eq!((s.bytes_forward, s.bytes_back), (n, n), "router {i}");
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
