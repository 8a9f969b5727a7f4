//! Session affinity of HTTP listeners between in-process routers: with `header:NAME`,
//! `cookie:NAME` or `client-ip` every client stays on one site while it is reachable, the clients spread over
//! the sites, a lost site moves only its own clients, a new site takes only a share of them;
//! upgrades are placed like requests; without affinity the same clients are spread per
//! request.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;

use ::http::{Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::routing::Affinity;

/// Clients in every run.
const CLIENTS: usize = 50;
/// Requests each client makes in one run.
const REQUESTS: usize = 20;
/// Clients when a site is added, and their requests in each run: with 50 clients, whether more
/// than 40% move (1/4 expected) would be left to chance about once in 70 runs; with 200 it is
/// below once in a million.
const MANY_CLIENTS: usize = 200;
const FEW_REQUESTS: usize = 5;

/// An HTTP/1.1 backend that answers every request with `name` (the site it stands for).
async fn site_backend(name: String) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let name = Bytes::from(name.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(name))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Gives router `i` of `net` a connector for `web` to a backend that answers `net.sites[i]`'s
/// name.
async fn serve_web(net: &Net, i: usize) {
    let backend = site_backend(net.sites[i].name.clone()).await;
    let mut c = connector("web", "web", backend);
    c.protocol = Protocol::Http;
    net.routers[i].set_connectors(vec![c]);
}

/// Router 0's HTTP listener for `web` with `affinity`.
fn web_listener(affinity: Affinity) -> ListenerSpec {
    let mut l = listener("web", "web");
    l.protocol = Protocol::Http;
    l.affinity = affinity;
    l
}

/// Waits until router 0 sees `web` served at exactly `n` reachable sites.
async fn web_at(net: &Net, n: usize) {
    wait_for(&net.routers[0], &format!("web at {n} sites"), |r| {
        r.network()
            .keys
            .iter()
            .any(|k| k.routing_key == "web" && k.sites.iter().filter(|s| s.reachable).count() == n)
    })
    .await;
}

/// How a client says who it is.
#[derive(Clone, Copy)]
enum Identity {
    /// `x-user: client-N`.
    Header,
    /// `cookie: theme=dark; session=client-N; lang=en` (among other cookies, and after a
    /// cookie whose name ends in "session").
    Cookie,
    /// Its connections come from 127.0.0.(10 + N).
    Address,
}

/// Requests a client makes on one connection before it opens the next.
const PER_CONNECTION: usize = 5;

/// An HTTP/1.1 client connection to `addr` for client `c`.
async fn connect(
    addr: SocketAddr,
    c: usize,
    identity: Identity,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Identity::Address = identity {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, 10 + c as u8);
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
    }
    let tcp = within(WAIT, "a connection", socket.connect(addr))
        .await
        .unwrap();
    let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    h1
}

/// `clients` clients at once, each making `requests` requests one after the other, on a new
/// keep-alive connection every `PER_CONNECTION` requests: the sites each client reached (every
/// request must succeed).
async fn run_n(
    addr: SocketAddr,
    identity: Identity,
    clients: usize,
    requests: usize,
) -> BTreeMap<usize, BTreeSet<String>> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut sites = BTreeSet::new();
            let mut h1 = connect(addr, c, identity).await;
            for n in 0..requests {
                if n > 0 && n % PER_CONNECTION == 0 {
                    h1 = connect(addr, c, identity).await;
                }
                h1.ready().await.unwrap();
                let req = Request::get("http://web/");
                let req = match identity {
                    Identity::Header => req.header("x-user", format!("client-{c}")),
                    Identity::Cookie => req.header(
                        "cookie",
                        format!("theme=dark; oldsession=x; session=client-{c}; lang=en"),
                    ),
                    Identity::Address => req,
                };
                let resp = h1.send_request(req.body(Empty::<Bytes>::new()).unwrap());
                let resp = within(WAIT, "a response", resp).await.unwrap();
                assert_eq!(resp.status(), 200, "client {c}: {resp:?}");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                sites.insert(String::from_utf8(body.to_vec()).unwrap());
            }
            (c, sites)
        }));
    }
    let mut seen = BTreeMap::new();
    for t in tasks {
        let (c, sites) = within(WAIT, "a client's requests", t).await.unwrap();
        seen.insert(c, sites);
    }
    seen
}

/// [`run_n`] with `CLIENTS` clients of `REQUESTS` requests.
async fn run(addr: SocketAddr, identity: Identity) -> BTreeMap<usize, BTreeSet<String>> {
    run_n(addr, identity, CLIENTS, REQUESTS).await
}

/// The one site each client reached; panics naming a client that reached several.
fn one_site_each(seen: &BTreeMap<usize, BTreeSet<String>>, when: &str) -> BTreeMap<usize, String> {
    seen.iter()
        .map(|(c, sites)| {
            assert_eq!(sites.len(), 1, "{when}: client {c} reached {sites:?}");
            (*c, sites.first().unwrap().clone())
        })
        .collect()
}

/// Clients per site.
fn per_site(sites: &BTreeMap<usize, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for s in sites.values() {
        *n.entry(s.clone()).or_default() += 1;
    }
    n
}

/// Three egress sites for `web`, 50 clients x 20 requests: each client keeps one site, the
/// clients spread over all three; stop the site with the most clients: its clients move to
/// another site and stay there, the others do not move at all.
async fn clients_stay_and_only_a_lost_sites_clients_move(
    transport: TransportChoice,
    affinity: Affinity,
    identity: Identity,
) {
    let mut net = star(4, transport).await;
    for i in 1..4 {
        serve_web(&net, i).await;
    }
    net.routers[0].set_listeners(vec![web_listener(affinity.clone())]);
    converge(&net).await;
    web_at(&net, 3).await;
    let addr = listener_addr(&net.routers[0], "web");

    let before = one_site_each(&run(addr, identity).await, "three sites");
    let spread = per_site(&before);
    println!("{affinity}: clients per site with three sites: {spread:?}");
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n >= 5), "{spread:?}");

    // Stop the site with the most clients.
    let (lost, _) = spread.iter().max_by_key(|(_, n)| **n).unwrap();
    let i = net.sites.iter().position(|s| &s.name == lost).unwrap();
    net.sites.remove(i);
    let stopped = std::time::Instant::now();
    net.routers.remove(i).shutdown().await;
    web_at(&net, 2).await;
    println!(
        "{affinity}: router 0 dropped {lost} {} ms after it was stopped",
        stopped.elapsed().as_millis()
    );

    let after = one_site_each(&run(addr, identity).await, "after a site stopped");
    println!(
        "{affinity}: clients per site after {lost} stopped: {:?}",
        per_site(&after)
    );
    for (c, site) in &before {
        if site == lost {
            assert_ne!(&after[c], lost, "client {c} still reached the stopped site");
        } else {
            assert_eq!(&after[c], site, "client {c} moved though its site stayed");
        }
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_affinity_keeps_each_client_on_its_site_until_it_is_lost() {
    clients_stay_and_only_a_lost_sites_clients_move(
        TransportChoice::Quic,
        Affinity::Header("x-user".into()),
        Identity::Header,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_keeps_each_client_on_its_site_until_it_is_lost() {
    clients_stay_and_only_a_lost_sites_clients_move(
        TransportChoice::Tls,
        Affinity::Cookie("session".into()),
        Identity::Cookie,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_of_an_http_listener_keeps_each_address_on_its_site() {
    clients_stay_and_only_a_lost_sites_clients_move(
        TransportChoice::Quic,
        Affinity::ClientIp,
        Identity::Address,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_site_takes_few_clients_and_takes_them_all_onto_itself() {
    let mut net = star(4, TransportChoice::Quic).await;
    for i in 1..4 {
        serve_web(&net, i).await;
    }
    net.routers[0].set_listeners(vec![web_listener(Affinity::Header("x-user".into()))]);
    converge(&net).await;
    web_at(&net, 3).await;
    let addr = listener_addr(&net.routers[0], "web");
    let many = |addr| run_n(addr, Identity::Header, MANY_CLIENTS, FEW_REQUESTS);
    let before = one_site_each(&many(addr).await, "three sites");
    println!("clients per site with three sites: {:?}", per_site(&before));

    // A fourth site joins.
    let new = site("s4");
    let router = start_router(&new).await;
    let hub = net.routers[0].link_addr().unwrap().to_string();
    router.set_links(vec![spec(&net.sites[0], &new, hub, TransportChoice::Quic)]);
    net.sites.push(new);
    net.routers.push(router);
    serve_web(&net, 4).await;
    web_at(&net, 4).await;

    let after = one_site_each(&many(addr).await, "four sites");
    println!("clients per site with four sites: {:?}", per_site(&after));
    let moved: Vec<usize> = before
        .keys()
        .copied()
        .filter(|c| before[c] != after[c])
        .collect();
    println!("{} of {MANY_CLIENTS} clients moved to s4", moved.len());
    for c in &moved {
        assert_eq!(after[c], "s4", "client {c} moved between old sites");
    }
    assert!(!moved.is_empty(), "the new site took no client");
    assert!(
        moved.len() * 100 < MANY_CLIENTS * 40,
        "{} of {MANY_CLIENTS} clients moved",
        moved.len()
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_affinity_each_request_is_balanced_on_its_own() {
    let net = star(4, TransportChoice::Quic).await;
    for i in 1..4 {
        serve_web(&net, i).await;
    }
    net.routers[0].set_listeners(vec![web_listener(Affinity::None)]);
    converge(&net).await;
    web_at(&net, 3).await;
    let addr = listener_addr(&net.routers[0], "web");
    // The header the affinity tests use is there, and ignored.
    let seen = run(addr, Identity::Header).await;
    let several = seen.values().filter(|s| s.len() > 1).count();
    println!("without affinity {several} of {CLIENTS} clients reached more than one site");
    assert!(several >= CLIENTS * 4 / 5, "{seen:?}");
    net.shutdown().await;
}

/// A backend that switches protocols on any request, then writes `name` and closes.
async fn upgrade_then_name(mut s: TcpStream, name: String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut b).await.is_err() {
            return;
        }
        head.push(b[0]);
    }
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: name\r\n\r\n{name}"
    );
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// One upgrade as `x-user: client-N`: the site that answered after the 101.
async fn upgrade_as(addr: SocketAddr, c: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /live HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: name\r\n\
         x-user: client-{c}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    within(
        WAIT,
        "the upgrade",
        (&mut s).take(4096).read_to_end(&mut all),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, name) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("client {c}: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 101"), "client {c}: {head}");
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_placed_by_the_affinity_too() {
    let net = star(4, TransportChoice::Tls).await;
    for i in 1..4 {
        let name = net.sites[i].name.clone();
        let backend = backend(move |s| upgrade_then_name(s, name.clone())).await;
        let mut c = connector("web", "web", backend);
        c.protocol = Protocol::Http;
        net.routers[i].set_connectors(vec![c]);
    }
    net.routers[0].set_listeners(vec![web_listener(Affinity::Header("x-user".into()))]);
    converge(&net).await;
    web_at(&net, 3).await;
    let addr = listener_addr(&net.routers[0], "web");
    let mut sites = BTreeMap::new();
    for c in 0..CLIENTS {
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            seen.insert(upgrade_as(addr, c).await);
        }
        sites.insert(c, seen);
    }
    let sites = one_site_each(&sites, "upgrades");
    let spread = per_site(&sites);
    println!("upgrades: clients per site: {spread:?}");
    assert_eq!(spread.len(), 3, "{spread:?}");
    net.shutdown().await;
}
