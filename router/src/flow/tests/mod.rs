//! Flow tests: in-process routers on loopback with real certificates, real TCP clients and
//! backends, on both link transports.
//!
//! # Layout
//! - this file: networks of routers (chains, stars), backends, waiting helpers.
//! - `transfer`: bytes arrive intact over 1–3 hops; half-close; server-speaks-first.
//! - `failures`: resets, refusals, balancing, failover, retries, reconciliation.
//! - `http`: HTTP flows: per-request balancing, trailers, retries, upgrades.
//! - `records`: flow records and per-key statistics at every role.
//! - `udp`: UDP listeners end to end: replies to the right client, counters, idle, affinity.
//! - `udp_edges`: UDP flows at the edges: failover at setup, wildcard listeners, one-shot
//!   flows, the byte budget, a link gone under a hop, coalesced datagrams.
//! - `udp_transit`: UDP hops over QUIC and TLS links, the UDP egress and transit roles.
//! - `affinity`: HTTP session affinity (header, cookie, client-ip; upgrades): clients keep
//!   their site.

mod affinity;
mod failures;
mod http;
mod records;
mod transfer;
mod udp;
mod udp_edges;
mod udp_transit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::flow::{ConnectorSpec, ListenerSpec, ResourceState};
use crate::link::tests::{AllowAll, Site, WAIT, config, loopback, site, spec};
use crate::link::{Router, TransportChoice};
use crate::routing::{Protocol, RoutingKey, Strategy};

/// Routers with their sites; `routers[i]` runs `sites[i]`.
pub(crate) struct Net {
    pub(crate) sites: Vec<Site>,
    pub(crate) routers: Vec<Router>,
}

impl Net {
    pub(crate) async fn shutdown(self) {
        for r in self.routers {
            r.shutdown().await;
        }
    }
}

async fn start_router(site: &Site) -> Router {
    Router::start(config(site, loopback()), Arc::new(AllowAll), None)
        .await
        .unwrap()
}

/// `n` routers in a line: router `i + 1` dials router `i`.
pub(crate) async fn chain(n: usize, transport: TransportChoice) -> Net {
    chain_speaking(n, transport, |_| crate::wire::PROTOCOL_VERSION).await
}

/// [`chain`], router `i` saying in its hellos that it speaks `version(i)` (mixed versions).
pub(crate) async fn chain_speaking(
    n: usize,
    transport: TransportChoice,
    version: impl Fn(usize) -> crate::wire::ProtocolVersion,
) -> Net {
    let sites: Vec<Site> = (0..n).map(|i| site(&format!("r{i}"))).collect();
    let mut routers = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        let config = config(s, loopback());
        let r = Router::start_with_hello(config, Arc::new(AllowAll), None, version(i)).await;
        routers.push(r.unwrap());
    }
    for i in 1..n {
        let addr = routers[i - 1].link_addr().unwrap().to_string();
        routers[i].set_links(vec![spec(
            &sites[i - 1],
            &sites[i],
            addr,
            transport.clone(),
        )]);
    }
    Net { sites, routers }
}

/// A hub (router 0) that routers `1..n` dial.
pub(crate) async fn star(n: usize, transport: TransportChoice) -> Net {
    let sites: Vec<Site> = (0..n).map(|i| site(&format!("s{i}"))).collect();
    let mut routers = Vec::new();
    for s in &sites {
        routers.push(start_router(s).await);
    }
    let hub = routers[0].link_addr().unwrap().to_string();
    for i in 1..n {
        routers[i].set_links(vec![spec(
            &sites[0],
            &sites[i],
            hub.clone(),
            transport.clone(),
        )]);
    }
    Net { sites, routers }
}

pub(crate) fn key(s: &str) -> RoutingKey {
    s.parse().unwrap()
}

pub(crate) fn listener(name: &str, k: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        strategy: Strategy::Balanced(key(k)),
        host: "127.0.0.1".into(),
        port: 0,
        protocol: Protocol::Tcp,
        affinity: Default::default(),
    }
}

pub(crate) fn connector(name: &str, k: &str, backend: SocketAddr) -> ConnectorSpec {
    ConnectorSpec {
        name: name.into(),
        routing_key: key(k),
        host: backend.ip().to_string(),
        port: backend.port(),
        advertised_port: None,
        protocol: Protocol::Tcp,
    }
}

/// The bound address of a listener.
pub(crate) fn listener_addr(router: &Router, name: &str) -> SocketAddr {
    let l = router.listeners();
    let l = l.iter().find(|l| l.name == name).expect("listener exists");
    l.address.as_ref().expect("listener bound").parse().unwrap()
}

/// Waits until `cond` holds, re-checking whenever links or routes change; panics after
/// [`WAIT`] with `what`.
pub(crate) async fn wait_for(router: &Router, what: &str, cond: impl Fn(&Router) -> bool) {
    let mut links = router.link_changes();
    let mut routes = router.route_changes();
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            if cond(router) {
                return;
            }
            tokio::select! {
                _ = links.changed() => {}
                _ = routes.changed() => {}
            }
        }
    })
    .await;
    if ok.is_err() {
        panic!(
            "timed out waiting for {what}; network: {}",
            serde_json::to_string_pretty(&router.network()).unwrap()
        );
    }
}

/// Whether `router` has a path to every router in `others`.
pub(crate) fn reaches(router: &Router, others: &[&Site]) -> bool {
    let net = router.network();
    others
        .iter()
        .all(|s| net.routers.iter().any(|r| r.id == s.id && r.reachable))
}

/// Waits until every router reaches every other one.
pub(crate) async fn converge(net: &Net) {
    let all: Vec<&Site> = net.sites.iter().collect();
    for r in &net.routers {
        wait_for(r, "every router reachable", |r| reaches(r, &all)).await;
    }
}

/// Waits until `router`'s listener `name` has a target.
pub(crate) async fn wait_active(router: &Router, name: &str) {
    wait_for(router, &format!("listener {name} active"), |r| {
        r.listeners()
            .iter()
            .any(|l| l.name == name && l.status == ResourceState::Active)
    })
    .await;
}

/// Deterministic test bytes: `len` bytes from seed `seed`.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// A backend on loopback; each connection is served by `serve` on its own task.
pub(crate) async fn backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Echoes everything; after the client's FIN, finishes its own side.
pub(crate) async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// Reads to the client's FIN, then answers `<count> <sha256 hex>\n` and `reply_len` pattern
/// bytes, then FIN.
pub(crate) async fn digest_then_reply(mut s: TcpStream, reply_len: usize) {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut n = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => {
                ctx.update(&buf[..k]);
                n += k;
            }
            Err(_) => return,
        }
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = format!("{n} {hex}\n").into_bytes();
    out.extend_from_slice(&pattern(7, reply_len));
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

/// Connects to a listener and checks an echo round trip.
pub(crate) async fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(msg).await?;
    c.shutdown().await?;
    let mut back = Vec::new();
    c.read_to_end(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other(format!(
            "echo differs: sent {} bytes, got {}",
            msg.len(),
            back.len()
        )));
    }
    Ok(())
}

/// Bounded wait for a future in a test.
pub(crate) async fn within<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {d:?}"),
    }
}
