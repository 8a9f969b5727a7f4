//! Micro-benchmarks of the router's pure hot paths (wire codecs, target choice, shortest-path
//! recomputation), so a performance regression in them shows in review.
//!
//! Run: `cargo bench -p skiff-router --bench hot_paths` (add `-- --quick` for a short run).
//! Everything here goes through the crate's public API; nothing does I/O.
//!
//! - `wire/*`: encode and decode of the frames every flow and link exchanges: the flow header
//!   and status (once per flow), control frames (hello once per link, keepalive every few
//!   seconds) and a link-state advertisement with 50 keys (flooded on every change and
//!   refresh).
//! - `routing/*`: a 50-router [`Topology`] with one key served at 5 routers: the target
//!   ranking done for each new connection (`targets`, `choose`), and the route recomputation
//!   (Dijkstra over the whole database) after an advertisement that changes a link cost.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use skiff_router::routing::{
    Advertisement, KeyAd, Protocol, RouterMode, RoutingKey, SiteId, Strategy, Topology,
};
use skiff_router::wire::{
    ControlFrame, FlowHeader, FlowStatusCode, FlowStatusFrame, PROTOCOL_VERSION,
};

/// Routers in the benchmark network (router 0 is the one whose topology is measured).
const ROUTERS: usize = 50;
/// Routers serving [`HOT_KEY`] (spread over the network, none of them router 0).
const SERVERS: [usize; 5] = [9, 18, 25, 33, 46];
/// The key looked up per connection: 20 characters, like a `service.namespace` name.
const HOT_KEY: &str = "orders-api.shop-prod";

/// A site id that does not sort like its index (ids are random in real networks).
fn site(i: usize) -> SiteId {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&x.to_be_bytes());
    b[8..].copy_from_slice(&x.rotate_left(29).to_be_bytes());
    SiteId::from_bytes(b)
}

fn key(s: &str) -> RoutingKey {
    s.parse().expect("benchmark keys are valid")
}

fn key_ad(name: &str, connectors: u32) -> KeyAd {
    KeyAd {
        key: key(name),
        connectors,
        protocol: Protocol::Tcp,
        port: 8080,
    }
}

fn encoded(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    f(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------------------
// Wire codecs

fn flow_frames(c: &mut Criterion) {
    let header = FlowHeader {
        routing_key: HOT_KEY.into(),
        destination: *site(25).as_bytes(),
        origin: *site(0).as_bytes(),
        flow_id: 0x0000_0172_9a3c_11f4,
        protocol: Protocol::Tcp,
        hops: 0,
        client: None,
    };
    let header_bytes = encoded(|b| header.encode(b));
    let status = FlowStatusFrame::fail(
        FlowStatusCode::ConnectRefused,
        "connector orders-api.shop-prod: 10.42.7.19:8080 refused the connection",
    );
    let status_bytes = encoded(|b| status.encode(b));

    let mut g = c.benchmark_group("wire");
    let mut buf = BytesMut::with_capacity(256);
    g.throughput(Throughput::Bytes(header_bytes.len() as u64));
    g.bench_function("flow_header_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&header).encode(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("flow_header_decode", |b| {
        b.iter_batched(
            || header_bytes.clone(),
            |mut src| FlowHeader::decode(black_box(&mut src)).expect("valid header"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Bytes(status_bytes.len() as u64));
    g.bench_function("flow_status_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&status).encode(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("flow_status_decode", |b| {
        b.iter_batched(
            || status_bytes.clone(),
            |mut src| FlowStatusFrame::decode(black_box(&mut src)).expect("valid status"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A link-state advertisement as a busy interior router sends it: 4 links, 50 keys.
fn advertisement() -> Advertisement {
    Advertisement {
        origin: site(7),
        site_name: "eu-west-1-prod".into(),
        mode: RouterMode::Interior,
        seq: 4_812,
        links: (1..=4).map(|p| (site(7 + p), p as u32)).collect(),
        keys: (0..50)
            .map(|i| key_ad(&format!("service-{i:02}.shop-prod"), 1 + i % 3))
            .collect(),
    }
}

fn control_frames(c: &mut Criterion) {
    let hello = ControlFrame::Hello {
        version: PROTOCOL_VERSION,
        site_id: *site(3).as_bytes(),
        site_name: "eu-west-1-prod".into(),
        mode: RouterMode::Interior,
        cost: 1,
    };
    let keepalive = ControlFrame::Keepalive { id: 90_210 };
    let link_state = ControlFrame::LinkState(advertisement());

    let mut g = c.benchmark_group("wire");
    for (name, frame) in [
        ("control_hello", &hello),
        ("control_keepalive", &keepalive),
        ("link_state_50_keys", &link_state),
    ] {
        let bytes = encoded(|b| frame.encode(b));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut buf = BytesMut::with_capacity(bytes.len());
        g.bench_function(format!("{name}_encode"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(frame).encode(&mut buf);
                black_box(&buf);
            })
        });
        g.bench_function(format!("{name}_decode"), |b| {
            b.iter_batched(
                || bytes.clone(),
                |mut src| ControlFrame::decode(black_box(&mut src)).expect("valid frame"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Routing

/// The links of router `i`: a ring plus a chord 7 routers on (about 4 links per router, the
/// network diameter is about 8 hops). Costs 1..=10, the same at both ends.
fn links_of(i: usize) -> Vec<(usize, u32)> {
    let cost = |a: usize, b: usize| ((a.min(b) * 7 + a.max(b) * 3) % 10) as u32 + 1;
    let mut peers = vec![
        (i + 1) % ROUTERS,
        (i + ROUTERS - 1) % ROUTERS,
        (i + 7) % ROUTERS,
        (i + ROUTERS - 7) % ROUTERS,
    ];
    peers.sort_unstable();
    peers.dedup();
    peers.into_iter().map(|p| (p, cost(i, p))).collect()
}

/// Router `i`'s advertisement: its links, its own service key, and [`HOT_KEY`] at the
/// [`SERVERS`] (2 connectors each).
fn router_ad(i: usize, seq: u64) -> Advertisement {
    let mut keys = vec![key_ad(&format!("service-{i:02}.shop-prod"), 1)];
    if SERVERS.contains(&i) {
        keys.push(key_ad(HOT_KEY, 2));
    }
    Advertisement {
        origin: site(i),
        site_name: format!("site-{i:02}"),
        mode: RouterMode::Interior,
        seq,
        links: links_of(i).into_iter().map(|(p, c)| (site(p), c)).collect(),
        keys,
    }
}

/// Router 0's topology after every router's advertisement arrived (routes computed).
fn network(now: Instant) -> Topology {
    let mut t = Topology::new(site(0), "site-00".into(), RouterMode::Interior, now);
    let neighbors = links_of(0);
    for &(p, c) in &neighbors {
        t.handle_neighbor_up(site(p), c, now);
    }
    let from = site(neighbors[0].0);
    for i in 1..ROUTERS {
        t.handle_advertisement(from, router_ad(i, 1), now);
    }
    while t.poll_transmit().is_some() {}
    let served = t.targets(&key(HOT_KEY), &|_| 0);
    assert_eq!(served.len(), SERVERS.len(), "every server is reachable");
    t
}

fn routing(c: &mut Criterion) {
    let now = Instant::now();
    let mut t = network(now);
    let hot = key(HOT_KEY);
    // Outstanding flows per router, as the flow layer's counters would report them.
    let outstanding = |r: SiteId| u32::from(r.as_bytes()[0] % 4);

    let mut g = c.benchmark_group("routing");
    g.bench_function("targets_50_routers_5_servers", |b| {
        b.iter(|| t.targets(black_box(&hot), &outstanding))
    });
    let balanced = Strategy::Balanced(hot.clone());
    g.bench_function("choose_balanced", |b| {
        b.iter(|| t.choose(black_box(&balanced), &outstanding, black_box(7)))
    });
    let weighted = Strategy::Weighted(vec![
        (hot.clone(), 3),
        (key("service-12.shop-prod"), 1),
        (key("service-40.shop-prod"), 1),
    ]);
    g.bench_function("choose_weighted_3_keys", |b| {
        b.iter(|| t.choose(black_box(&weighted), &outstanding, black_box(7)))
    });

    // A far router re-advertises with one link cost changed (alternating), so the database
    // changes and the next query runs the shortest-path computation over all 50 routers.
    let far = 25;
    let base = router_ad(far, 1);
    let far_id = site(far);
    let mut seq = 1;
    g.bench_function("spf_after_advertisement_50_routers", |b| {
        b.iter_batched(
            || {
                seq += 1;
                let mut ad = base.clone();
                ad.seq = seq;
                ad.links[0].1 += (seq % 2) as u32;
                ad
            },
            |ad| {
                t.handle_advertisement(site(1), ad, now);
                t.path_cost(black_box(far_id))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, flow_frames, control_frames, routing);
criterion_main!(benches);
