//! Session affinity with real `skiff site run` processes: a TCP listener with
//! `--affinity client-ip` at west, the same routing key served at east1, east2 and east3 by
//! backends that answer with their site's name; 50 clients (50 source addresses on loopback)
//! each keep their site across 20 connections, and after the site with the most clients is
//! killed its clients move and stay on their new site while the others never move. The same
//! for an HTTP listener with `--affinity header:x-user` (50 users on keep-alive connections).
//! A listener without affinity on the same network spreads each client's connections (the
//! test can fail).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Clients, each with its own source address 127.0.0.(10 + i).
const CLIENTS: usize = 50;
/// Connections each client makes in one run.
const CONNECTIONS: usize = 20;
/// How long one connection may take to answer.
const ANSWER: Duration = Duration::from_secs(10);
/// How long routing may take to notice a killed site (QUIC idle timeout and more).
const CONVERGENCE: Duration = Duration::from_secs(60);

/// A backend that answers every connection with its site's name and closes (with `http`, after
/// reading a request head, as an HTTP/1.1 response); stopped (its thread joined) on drop.
struct NameServer {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl NameServer {
    fn start(name: &str, http: bool) -> NameServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reply = if http {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                name.len()
            )
        } else {
            name.to_owned()
        };
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        use std::io::Write;
                        if http && !read_head(&mut c) {
                            continue;
                        }
                        // A few bytes into a new socket's buffer: never blocks.
                        let _ = c.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        NameServer {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head (at most 16 KiB, within 5 s); whether it came whole.
fn read_head(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(n) if n > 0 && head.len() + n <= 16 * 1024 => head.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// Client `i`'s source address.
fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

/// One connection from client `i` to `listener`: the name the backend answered.
async fn connect_once(i: usize, listener: SocketAddr) -> Result<String, String> {
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(client_ip(i), 0)))?;
        let mut s = socket.connect(listener).await?;
        let mut name = Vec::new();
        (&mut s).take(256).read_to_end(&mut name).await?;
        Ok::<_, std::io::Error>(name)
    };
    match tokio::time::timeout(ANSWER, attempt).await {
        Ok(Ok(name)) if !name.is_empty() => Ok(String::from_utf8_lossy(&name).into_owned()),
        Ok(Ok(_)) => Err("closed without an answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER:?}")),
    }
}

/// Every client at once, each making `CONNECTIONS` connections one after the other: the sites
/// each client reached. Every connection must be answered.
fn run(rt: &tokio::runtime::Runtime, listener: SocketAddr) -> BTreeMap<usize, BTreeSet<String>> {
    rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            clients.push(tokio::spawn(async move {
                let mut sites = BTreeSet::new();
                for n in 0..CONNECTIONS {
                    match connect_once(i, listener).await {
                        Ok(site) => sites.insert(site),
                        Err(e) => panic!("client {} connection {n}: {e}", client_ip(i)),
                    };
                }
                (i, sites)
            }));
        }
        let mut seen = BTreeMap::new();
        for c in clients {
            let (i, sites) = c.await.unwrap();
            seen.insert(i, sites);
        }
        seen
    })
}

/// Every user at once, each on its own keep-alive HTTP/1.1 connection making `CONNECTIONS`
/// requests with `x-user: user-N`: the sites each user reached. Every request must succeed.
fn run_http(
    rt: &tokio::runtime::Runtime,
    listener: SocketAddr,
) -> BTreeMap<usize, BTreeSet<String>> {
    use http_body_util::{BodyExt, Empty};
    rt.block_on(async {
        let mut users = Vec::new();
        for i in 0..CLIENTS {
            users.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(listener).await.unwrap();
                let io = hyper_util::rt::TokioIo::new(tcp);
                let (mut h1, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                let mut sites = BTreeSet::new();
                for n in 0..CONNECTIONS {
                    let req = http::Request::get("http://web/")
                        .header("x-user", format!("user-{i}"))
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let answer = async {
                        h1.ready().await?;
                        let resp = h1.send_request(req).await?;
                        let status = resp.status();
                        let body = resp.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>((status, body))
                    };
                    match tokio::time::timeout(ANSWER, answer).await {
                        Ok(Ok((status, body))) if status == 200 => {
                            sites.insert(String::from_utf8_lossy(&body).into_owned());
                        }
                        other => panic!("user {i} request {n}: {other:?}"),
                    }
                }
                (i, sites)
            }));
        }
        let mut seen = BTreeMap::new();
        for u in users {
            let (i, sites) = u.await.unwrap();
            seen.insert(i, sites);
        }
        seen
    })
}

/// One request as `user-i` on a new connection: the site that answered, or what went wrong.
async fn request_once(i: usize, listener: SocketAddr) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(listener)
            .await
            .map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut h1, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("http://web/")
            .header("x-user", format!("user-{i}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = h1.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("{status}: {}", body.trim()))
        }
    };
    match tokio::time::timeout(ANSWER, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {ANSWER:?}")),
    }
}

/// The one site each client reached; panics naming a client that reached several.
fn one_site_each(seen: &BTreeMap<usize, BTreeSet<String>>, when: &str) -> BTreeMap<usize, String> {
    seen.iter()
        .map(|(i, sites)| {
            assert_eq!(
                sites.len(),
                1,
                "{when}: client {} reached {sites:?}",
                client_ip(*i)
            );
            (*i, sites.first().unwrap().clone())
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

/// The site names listener `name` at `site` lists as its targets.
fn targets(site: &Site, name: &str) -> BTreeSet<String> {
    let o = site.run(&["listener", "list", "--output", "json"]);
    assert!(o.status.success(), "listener list: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}: {v:#}"));
    l["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["siteName"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls until listener `name` at `site` lists exactly `want`, or panics after `within`;
/// returns how long it took.
fn wait_targets(site: &Site, name: &str, want: &BTreeSet<String>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = targets(site, name);
        if &got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "listener {name} targets {got:?}, not {want:?}, after {within:?}\nlog:\n{}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_ip_affinity_keeps_clients_on_their_site_until_it_is_killed_quic() {
    clients_keep_their_site_until_it_is_killed("quic");
}

#[test]
fn client_ip_affinity_keeps_clients_on_their_site_until_it_is_killed_tls() {
    clients_keep_their_site_until_it_is_killed("tls");
}

/// The whole story over links of `transport`.
fn clients_keep_their_site_until_it_is_killed(transport: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut west = Site::create("west", true);
    let names = ["east1", "east2", "east3"];
    let mut east: Vec<Site> = names.iter().map(|n| Site::create(n, false)).collect();
    let servers: Vec<NameServer> = names.iter().map(|n| NameServer::start(n, false)).collect();
    let web: Vec<NameServer> = names.iter().map(|n| NameServer::start(n, true)).collect();
    for ((site, server), web) in east.iter().zip(&servers).zip(&web) {
        let port = server.port.to_string();
        ok(&["connector", "create", "svc", &port, "--dir", site.d()]);
        let port = web.port.to_string();
        let d = site.d();
        ok(&[
            "connector",
            "create",
            "web",
            &port,
            "--type",
            "http",
            "--dir",
            d,
        ]);
    }
    ok(&[
        "listener",
        "create",
        "web",
        "0",
        "--type",
        "http",
        "--host",
        "127.0.0.1",
        "--affinity",
        "header:x-user",
        "--dir",
        west.d(),
    ]);
    for (listener, affinity) in [("svc", "client-ip"), ("svc-any", "none")] {
        ok(&[
            "listener",
            "create",
            listener,
            "0",
            "--routing-key",
            "svc",
            "--host",
            "127.0.0.1",
            "--affinity",
            affinity,
            "--dir",
            west.d(),
        ]);
    }
    west.start();
    for site in &mut east {
        link_over(site, &west, transport);
        site.start();
    }
    let all: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    for listener in ["svc", "svc-any", "web"] {
        wait_targets(&west, listener, &all, Duration::from_secs(30));
    }
    let addr: SocketAddr = west
        .wait_listener_active("svc", Duration::from_secs(5))
        .parse()
        .unwrap();
    let any: SocketAddr = west
        .wait_listener_active("svc-any", Duration::from_secs(5))
        .parse()
        .unwrap();
    let web_addr: SocketAddr = west
        .wait_listener_active("web", Duration::from_secs(5))
        .parse()
        .unwrap();

    // Without affinity, each connection is balanced on its own.
    let spread = run(&rt, any);
    let several = spread.values().filter(|s| s.len() > 1).count();
    println!(
        "{transport}: without affinity: {several} of {CLIENTS} clients reached more than one site"
    );
    assert!(several >= CLIENTS * 4 / 5, "{spread:?}");

    // With client-ip affinity, each client keeps one site; the clients spread over all three.
    let before = one_site_each(&run(&rt, addr), "three sites");
    let counts = per_site(&before);
    println!("{transport}: client-ip: clients per site with three sites: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 5), "{counts:?}");
    let users_before = one_site_each(&run_http(&rt, web_addr), "HTTP, three sites");
    let users = per_site(&users_before);
    println!("{transport}: header:x-user: users per site with three sites: {users:?}");
    assert_eq!(users.len(), 3, "{users:?}");
    assert!(users.values().all(|&n| n >= 5), "{users:?}");

    // Kill the site with the most clients.
    let (lost, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let lost = lost.clone();
    let lost_clients: Vec<usize> = before
        .iter()
        .filter(|(_, s)| **s == lost)
        .map(|(i, _)| *i)
        .collect();
    let lost_user = *users_before.iter().find(|(_, s)| **s == lost).unwrap().0;
    let killed = Instant::now();
    east[names.iter().position(|n| *n == lost).unwrap()].kill();

    // One of its HTTP users does the same, meanwhile.
    let http_probe = {
        let lost = lost.clone();
        rt.spawn(async move {
            let mut failed = Vec::new();
            loop {
                match request_once(lost_user, web_addr).await {
                    Ok(site) if site != lost => return (killed.elapsed(), failed),
                    Ok(_) => panic!("the killed site {lost} answered"),
                    Err(e) => failed.push(format!("{e} after {} ms", killed.elapsed().as_millis())),
                }
                assert!(
                    killed.elapsed() < CONVERGENCE,
                    "user {lost_user} not answered by another site within {CONVERGENCE:?} of \
                     the kill (failed attempts: {failed:?})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // One of its clients tries again and again until it is answered by another site.
    let probe = lost_clients[0];
    let mut failed = Vec::new();
    let moved_in = loop {
        match rt.block_on(connect_once(probe, addr)) {
            Ok(site) if site != lost => break killed.elapsed(),
            Ok(_) => panic!("the killed site {lost} answered"),
            Err(e) => failed.push(format!("{e} after {} ms", killed.elapsed().as_millis())),
        }
        assert!(
            killed.elapsed() < CONVERGENCE,
            "client {} not answered by another site within {CONVERGENCE:?} of the kill \
             (failed attempts: {failed:?})",
            client_ip(probe)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut left = all.clone();
    left.remove(&lost);
    wait_targets(&west, "svc", &left, CONVERGENCE);
    wait_targets(&west, "web", &left, CONVERGENCE);
    let dropped_in = killed.elapsed();
    println!(
        "{transport}: client-ip: after {lost} was killed, client {} was answered by another \
         site after {} ms (failed attempts first: {failed:?}); the listener dropped {lost} \
         from its targets after {} ms",
        client_ip(probe),
        moved_in.as_millis(),
        dropped_in.as_millis()
    );
    let (http_moved_in, http_failed) = rt.block_on(http_probe).unwrap();
    println!(
        "{transport}: header:x-user: after {lost} was killed, user {lost_user} was answered by \
         another site after {} ms (failed attempts first: {http_failed:?})",
        http_moved_in.as_millis()
    );

    // Its clients moved and stay on their new site; the others never moved.
    let after = one_site_each(&run(&rt, addr), "after the kill");
    println!(
        "{transport}: client-ip: clients per site after {lost} was killed: {:?}",
        per_site(&after)
    );
    for (i, site) in &before {
        if *site == lost {
            assert_ne!(after[i], lost);
        } else {
            assert_eq!(
                &after[i],
                site,
                "client {} moved though its site stayed",
                client_ip(*i)
            );
        }
    }
    let users_after = one_site_each(&run_http(&rt, web_addr), "HTTP, after the kill");
    println!(
        "{transport}: header:x-user: users per site after {lost} was killed: {:?}",
        per_site(&users_after)
    );
    for (i, site) in &users_before {
        if *site == lost {
            assert_ne!(users_after[i], lost);
        } else {
            assert_eq!(
                &users_after[i], site,
                "user {i} moved though its site stayed"
            );
        }
    }
    drop(east);
    drop(west);
    drop(servers);
    drop(web);
}
