//! A TCP service through skiff (listener at one router, connector at another, one hop) against
//! the same service over a direct TCP connection, in the same run: single-stream throughput,
//! 1-byte ping-pong on one connection, and new connections per second.
//!
//! Run: `cargo run --release -p skiff-router --example flow_throughput [MiB] [rounds] [conns]`
//! (defaults 1024, 20000, 2000).

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{router, site};

use skiff_router::flow::{ConnectorSpec, ListenerSpec, ResourceState};
use skiff_router::link::{LinkSpec, Router, TransportChoice};
use skiff_router::routing::{Protocol, Strategy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Backends: a sink (reads to EOF, then closes) and an echo.
async fn backends() -> (SocketAddr, SocketAddr) {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (sink.local_addr().unwrap(), echo.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = s.shutdown().await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addrs
}

/// MB/s of `total` bytes written to `addr` until the sink's close comes back.
async fn throughput(addr: SocketAddr, total: usize) -> f64 {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        c.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    sent as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Round trips per second of 1 byte on one connection.
async fn ping_pong(addr: SocketAddr, rounds: usize) -> f64 {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    // Warm up (the first round trip also sets the flow up).
    c.write_all(b"x").await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    let start = Instant::now();
    for _ in 0..rounds {
        c.write_all(b"x").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }
    rounds as f64 / start.elapsed().as_secs_f64()
}

/// New connections per second, each proven by a 1-byte echo, one after the other.
async fn connection_rate(addr: SocketAddr, conns: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..conns {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        c.write_all(b"x").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }
    conns as f64 / start.elapsed().as_secs_f64()
}

/// Two linked routers with the sink and echo behind connectors at east and listeners at west;
/// returns the routers and the listener addresses (sink, echo).
async fn skiff_path(
    transport: TransportChoice,
    sink: SocketAddr,
    echo: SocketAddr,
) -> (Router, Router, SocketAddr, SocketAddr) {
    let (a, b) = (site("east"), site("west"));
    let ra = router(&a, "east", true).await;
    let rb = router(&b, "west", false).await;
    let (csr, key) = skiff_certs::generate_link_csr(b.id, "west").unwrap();
    let (_, issued) = a.ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    rb.set_links(vec![LinkSpec {
        name: "to-east".into(),
        peer_site_id: a.id,
        peer_site_name: Some("east".into()),
        peer_ca_pem: a.ca.cert_pem().to_string(),
        endpoints: vec![ra.link_addr().unwrap().to_string()],
        client_cert_pem: issued.cert_pem,
        client_key_pem: key,
        transport,
        cost: 1,
        proxy: None,
    }]);
    let connector = |name: &str, addr: SocketAddr| ConnectorSpec {
        name: name.into(),
        routing_key: name.parse().unwrap(),
        host: addr.ip().to_string(),
        port: addr.port(),
        advertised_port: None,
        protocol: Protocol::Tcp,
    };
    let listener = |name: &str| ListenerSpec {
        name: name.into(),
        strategy: Strategy::Balanced(name.parse().unwrap()),
        host: "127.0.0.1".into(),
        port: 0,
        protocol: Protocol::Tcp,
        affinity: Default::default(),
    };
    ra.set_connectors(vec![connector("sink", sink), connector("echo", echo)]);
    rb.set_listeners(vec![listener("sink"), listener("echo")]);
    let mut changes = rb.route_changes();
    while !rb
        .listeners()
        .iter()
        .all(|l| l.status == ResourceState::Active)
    {
        tokio::time::timeout(Duration::from_secs(20), changes.changed())
            .await
            .expect("routes within 20 s")
            .unwrap();
    }
    let l = rb.listeners();
    let addr = |name: &str| -> SocketAddr {
        let l = l.iter().find(|l| l.name == name).unwrap();
        l.address.as_ref().unwrap().parse().unwrap()
    };
    let (s, e) = (addr("sink"), addr("echo"));
    (ra, rb, s, e)
}

struct Numbers {
    mbps: f64,
    rtts: f64,
    conns: f64,
}

async fn measure(
    sink: SocketAddr,
    echo: SocketAddr,
    total: usize,
    rounds: usize,
    conns: usize,
) -> Numbers {
    Numbers {
        mbps: throughput(sink, total).await,
        rtts: ping_pong(echo, rounds).await,
        conns: connection_rate(echo, conns).await,
    }
}

fn row(label: &str, n: &Numbers, direct: &Numbers) {
    println!(
        "{label:>6}: {:>6.0} MB/s ({:>3.0} %) | {:>6.0} round trips/s ({:>3.0} %) | {:>5.0} connections/s ({:>3.0} %)",
        n.mbps,
        100.0 * n.mbps / direct.mbps,
        n.rtts,
        100.0 * n.rtts / direct.rtts,
        n.conns,
        100.0 * n.conns / direct.conns
    );
}

#[tokio::main]
async fn main() {
    skiff_certs::install_crypto_provider();
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (total, rounds, conns) = (arg(1, 1024) << 20, arg(2, 20_000), arg(3, 2_000));
    let (sink, echo) = backends().await;
    for round in 1..=3 {
        println!(
            "round {round}: {} MiB, {rounds} ping-pongs, {conns} connections",
            total >> 20
        );
        let direct = measure(sink, echo, total, rounds, conns).await;
        row("direct", &direct, &direct);
        for transport in [TransportChoice::Quic, TransportChoice::Tls] {
            let (ra, rb, s, e) = skiff_path(transport.clone(), sink, echo).await;
            let n = measure(s, e, total, rounds, conns).await;
            row(&transport.to_string(), &n, &direct);
            rb.shutdown().await;
            ra.shutdown().await;
        }
    }
}
