//! Two routers on loopback: measures link establishment (dial to Up) and the throughput of one
//! stream over a QUIC link and over a TLS/TCP link.
//!
//! Run: `cargo run --release -p skiff-router --example link_throughput [MiB]` (default 256).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{router, site};

use skiff_router::link::{LinkSpec, LinkState, TransportChoice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn run(transport: TransportChoice, total: usize) {
    let (a, b) = (site("east"), site("west"));
    let ra = router(&a, "east", true).await;
    let rb = router(&b, "west", false).await;
    let (csr, key) = skiff_certs::generate_link_csr(b.id, "west").unwrap();
    let (_, issued) = a.ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    let spec = LinkSpec {
        name: "to-east".into(),
        peer_site_id: a.id,
        peer_site_name: Some("east".into()),
        peer_ca_pem: a.ca.cert_pem().to_string(),
        endpoints: vec![ra.link_addr().unwrap().to_string()],
        client_cert_pem: issued.cert_pem,
        client_key_pem: key,
        transport: transport.clone(),
        cost: 1,
        proxy: None,
    };
    let mut changes = rb.link_changes();
    let start = Instant::now();
    rb.set_links(vec![spec]);
    while !rb.links().iter().any(|l| l.state == LinkState::Up) {
        changes.changed().await.unwrap();
    }
    let up = start.elapsed();

    let mut incoming = ra.take_incoming().unwrap();
    let link = rb.link_to(a.id).unwrap();
    let mut s = link.open_stream().await.unwrap();
    let start = Instant::now();
    let send = async {
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            s.writer.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        s.writer.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = incoming.recv().await.unwrap().stream;
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            let r = got.reader.read(&mut buf).await.unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
        n
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(got, total);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{transport:>4}: dial to Up {:>6.1} ms; 1 stream {} MiB in {secs:.2} s = {:.0} MB/s",
        up.as_secs_f64() * 1e3,
        total >> 20,
        total as f64 / secs / 1e6
    );
    rb.shutdown().await;
    ra.shutdown().await;
}

#[tokio::main]
async fn main() {
    skiff_certs::install_crypto_provider();
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    for _ in 0..3 {
        run(TransportChoice::Quic, mib << 20).await;
        run(TransportChoice::Tls, mib << 20).await;
    }
}
