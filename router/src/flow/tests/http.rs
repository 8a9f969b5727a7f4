//! HTTP flows between in-process routers: real hyper backends and clients. Per-request
//! balancing on one connection, trailers from an HTTP/2 backend, a request never sent moving
//! on to the next site, and an upgrade across two hops with half-close.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ::http::{Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// An HTTP/1.1 (or, with `h2`, HTTP/2) backend answering `name` and counting requests.
async fn named_backend(
    name: &'static str,
    h2: bool,
    seen: Arc<Mutex<BTreeMap<&'static str, usize>>>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    *seen.lock().unwrap().entry(name).or_default() += 1;
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name)))) }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                }
            });
        }
    });
    addr
}

/// A GET of `uri` on an HTTP/1.1 client connection, once it is ready.
async fn get(
    h1: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: &str,
) -> Response<Incoming> {
    h1.ready().await.unwrap();
    let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    within(WAIT, "a response", h1.send_request(req))
        .await
        .unwrap()
}

/// An HTTP/1.1 client connection to `addr`.
async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    h1
}

fn http_listener(name: &str, k: &str) -> ListenerSpec {
    let mut l = listener(name, k);
    l.protocol = Protocol::Http;
    l
}

fn http_connector(name: &str, k: &str, addr: SocketAddr, protocol: Protocol) -> ConnectorSpec {
    let mut c = connector(name, k, addr);
    c.protocol = protocol;
    c
}

async fn two_sites(net: &Net, k: &str) {
    wait_for(&net.routers[0], "the key at two sites", |r| {
        r.network()
            .keys
            .iter()
            .any(|x| x.routing_key == k && x.sites.iter().filter(|s| s.reachable).count() == 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_one_connection_are_balanced_over_two_sites() {
    let net = star(3, TransportChoice::Tls).await;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let a = named_backend("one", false, seen.clone()).await;
    let b = named_backend("two", true, seen.clone()).await;
    net.routers[1].set_connectors(vec![http_connector("web", "web", a, Protocol::Http)]);
    net.routers[2].set_connectors(vec![http_connector("web", "web", b, Protocol::Http2)]);
    net.routers[0].set_listeners(vec![http_listener("web", "web")]);
    converge(&net).await;
    two_sites(&net, "web").await;
    let addr = listener_addr(&net.routers[0], "web");

    // HTTP/1.1, one keep-alive connection, one request after the other.
    let mut h1 = h1_client(addr).await;
    for _ in 0..60 {
        let resp = get(&mut h1, "http://web/").await;
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let counts = seen.lock().unwrap().clone();
    assert!(
        counts["one"] >= 10 && counts["two"] >= 10,
        "spread {counts:?}"
    );
    // The connection still open: its bytes are in the key's statistics already, and it
    // counts as one running ingress flow (not listed among the active flows, which show
    // the pooled connections between routers).
    let stats = net.routers[0].flow_stats();
    let web = stats
        .iter()
        .find(|s| s.key == "web")
        .expect("web's statistics");
    assert!(
        web.bytes_forward() > 60 * 16 && web.bytes_back() > 60 * 40,
        "a running HTTP connection's bytes are missing: {web:?}"
    );
    assert!(
        web.active.contains(&(crate::flow::FlowRole::Ingress, 1)),
        "{web:?}"
    );
    assert!(net.routers[0].recent_flows().is_empty());
    assert!(
        net.routers[0]
            .flows()
            .iter()
            .all(|f| f.routing_key == "web" && f.bytes_forward == 0),
        "the client connection is listed: {:?}",
        net.routers[0].flows()
    );

    // HTTP/2 (h2c), one connection, 60 requests at once.
    seen.lock().unwrap().clear();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut all = Vec::new();
    for _ in 0..60 {
        let mut h2 = h2.clone();
        all.push(tokio::spawn(async move {
            let req = Request::get("http://web/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for t in all {
        let (status, body) = within(WAIT, "an HTTP/2 response", t).await.unwrap();
        assert_eq!(status, 200);
        assert!(body == "one" || body == "two", "{body:?}");
    }
    let counts = seen.lock().unwrap().clone();
    assert!(
        counts["one"] >= 5 && counts["two"] >= 5,
        "HTTP/2 spread {counts:?}"
    );
    let m = net.routers[0].http_metrics();
    assert_eq!(m["web"].requests["2xx"], 120);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_from_an_http2_backend_reach_the_client() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let mut trailers = ::http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "fine".parse().unwrap());
                    let frames = vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                            b"\0\0\0\0\x02hi",
                        ))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let net = chain(2, TransportChoice::Quic).await;
    net.routers[0].set_connectors(vec![http_connector("grpc", "grpc", grpc, Protocol::Http2)]);
    net.routers[1].set_listeners(vec![http_listener("grpc", "grpc")]);
    wait_active(&net.routers[1], "grpc").await;
    let addr = listener_addr(&net.routers[1], "grpc");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://grpc/svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = within(WAIT, "a gRPC response", h2.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_sent_moves_on_and_errors_say_why() {
    let net = star(3, TransportChoice::Quic).await;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let good = named_backend("good", false, seen.clone()).await;
    // A port nothing listens on: every connect is refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    net.routers[1].set_connectors(vec![http_connector("web", "web", closed, Protocol::Http)]);
    net.routers[2].set_connectors(vec![http_connector("web", "web", good, Protocol::Http)]);
    net.routers[0].set_listeners(vec![
        http_listener("web", "web"),
        http_listener("none", "nothing-serves-this"),
    ]);
    converge(&net).await;
    two_sites(&net, "web").await;
    let addr = listener_addr(&net.routers[0], "web");
    let mut h1 = h1_client(addr).await;
    for _ in 0..20 {
        let resp = get(&mut h1, "http://web/").await;
        assert_eq!(resp.status(), 200, "{:?}", resp.headers());
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(seen.lock().unwrap()["good"], 20);

    // Only the refusing site: 503 with the reason; no site at all: 503 no-route.
    net.routers[2].set_connectors(vec![]);
    wait_for(&net.routers[0], "the key at one site", |r| {
        r.network()
            .keys
            .iter()
            .any(|x| x.routing_key == "web" && x.sites.iter().filter(|s| s.reachable).count() == 1)
    })
    .await;
    let resp = get(&mut h1, "http://web/").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["skiff-error"], "connect-refused");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("refused"),
        "{body:?}"
    );
    let none = listener_addr(&net.routers[0], "none");
    let mut h1 = h1_client(none).await;
    let resp = get(&mut h1, "http://x/").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["skiff-error"], "no-route");
    net.shutdown().await;
}

/// A backend that switches protocols on any request, then echoes until the client's FIN and
/// finishes its side.
async fn upgrade_echo(mut s: TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut b).await.is_err() {
            return;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    assert!(text.contains("upgrade: echo"), "{text}");
    let _ = s
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await;
    echo(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_crosses_two_hops_with_half_close() {
    let net = chain(3, TransportChoice::Tls).await;
    let ws = backend(upgrade_echo).await;
    net.routers[0].set_connectors(vec![http_connector("ws", "ws", ws, Protocol::Http)]);
    net.routers[2].set_listeners(vec![http_listener("ws", "ws")]);
    wait_active(&net.routers[2], "ws").await;
    let addr = listener_addr(&net.routers[2], "ws");
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within(WAIT, "the 101", c.read_exact(&mut b)).await.unwrap();
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: echo"), "{text}");
    let payload = pattern(3, 200_000);
    let (mut r, mut w) = c.into_split();
    let send = {
        let payload = payload.clone();
        tokio::spawn(async move {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        })
    };
    let mut back = Vec::new();
    within(WAIT, "the echo and its end", r.read_to_end(&mut back))
        .await
        .unwrap();
    send.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
    // At the transit router the pooled HTTP/2 connection between routers shows among the
    // active flows, but it is no client flow: no bytes in the key's statistics, no record.
    let transit = &net.routers[1];
    let pooled = transit.flows();
    assert!(
        pooled
            .iter()
            .any(|f| f.role == crate::flow::FlowRole::Transit && f.routing_key == "ws"),
        "{pooled:?}"
    );
    let stats = transit.flow_stats();
    assert!(
        stats
            .iter()
            .filter(|s| s.key == "ws")
            .all(|s| s.bytes_forward() == 0 && s.bytes_back() == 0 && s.duration.count == 0),
        "{stats:?}"
    );
    assert!(
        transit.recent_flows().is_empty(),
        "{:?}",
        transit.recent_flows()
    );
    net.shutdown().await;
}

/// An HTTP/2 backend (the h2 crate, frame-level): on `/reset-me` it sends its response head
/// then resets the stream with ENHANCE_YOUR_CALM; on `/wait` it reports the reason the
/// client's reset arrived with.
async fn resetting_backend(
    seen_reset: tokio::sync::mpsc::Sender<Option<h2::Reason>>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen_reset = seen_reset.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let seen_reset = seen_reset.clone();
                    tokio::spawn(async move {
                        if req.uri().path() == "/reset-me" {
                            let mut send = respond.send_response(Response::new(()), false).unwrap();
                            let _ = send.send_data(Bytes::from_static(b"partial"), false);
                            // Let the head and the data leave before the reset (a reset
                            // drops what is still queued).
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            send.send_reset(h2::Reason::ENHANCE_YOUR_CALM);
                        } else {
                            let mut body = req.into_body();
                            let reason = loop {
                                match body.data().await {
                                    Some(Ok(_)) => {}
                                    Some(Err(e)) => break e.reason(),
                                    None => break None,
                                }
                            };
                            let _ = seen_reset.send(reason).await;
                        }
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_resets_cross_the_routers_with_their_code() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let be = resetting_backend(tx).await;
    let net = chain(2, TransportChoice::Quic).await;
    net.routers[0].set_connectors(vec![http_connector("h2", "h2", be, Protocol::Http2)]);
    net.routers[1].set_listeners(vec![http_listener("h2", "h2")]);
    wait_active(&net.routers[1], "h2").await;
    let addr = listener_addr(&net.routers[1], "h2");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();

    // The backend resets after its head: the client's stream is reset with the same code.
    let req = Request::get("http://h2/reset-me").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = within(WAIT, "the head", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let reason = loop {
        match within(WAIT, "the body", body.data()).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.reason(),
            None => break None,
        }
    };
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM));

    // The client resets its request: the backend's stream is reset, with the client's code.
    let mut client = client.ready().await.unwrap();
    let req = Request::post("http://h2/wait").body(()).unwrap();
    let (_resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(Bytes::from_static(b"some"), false).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    send.send_reset(h2::Reason::STREAM_CLOSED);
    let seen = within(WAIT, "the backend to see the reset", rx.recv()).await;
    // A reset, never a clean end: the client's code when the reset reaches the request body
    // first, CANCEL when it cancels the request at the ingress first (hyper decides).
    assert!(
        matches!(
            seen,
            Some(Some(h2::Reason::STREAM_CLOSED | h2::Reason::CANCEL))
        ),
        "{seen:?}"
    );
    net.shutdown().await;
}

/// An HTTP/1.1 backend that answers with `skiff-not-sent: 1` (as if it were a router) and
/// records every request's headers.
async fn forging_backend(seen: Arc<Mutex<Vec<::http::HeaderMap>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(req.headers().clone());
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"forged")));
                        r.headers_mut()
                            .insert("skiff-not-sent", "1".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_routers_use_between_them_cannot_be_forged() {
    let net = star(3, TransportChoice::Quic).await;
    let forged = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(Mutex::new(BTreeMap::new()));
    let a = forging_backend(forged.clone()).await;
    let b = named_backend("plain", false, other.clone()).await;
    net.routers[1].set_connectors(vec![http_connector("web", "web", a, Protocol::Http)]);
    net.routers[2].set_connectors(vec![http_connector("web", "web", b, Protocol::Http)]);
    net.routers[0].set_listeners(vec![http_listener("web", "web")]);
    converge(&net).await;
    two_sites(&net, "web").await;
    let addr = listener_addr(&net.routers[0], "web");
    let mut h1 = h1_client(addr).await;
    for _ in 0..30 {
        h1.ready().await.unwrap();
        // A client's forged upgrade header, and an h2c upgrade (not an upgrade here).
        let req = Request::get("http://web/")
            .header("skiff-upgrade", "websocket")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = within(WAIT, "a response", h1.send_request(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("skiff-not-sent"));
        resp.into_body().collect().await.unwrap();
    }
    // Every request reached exactly one backend: a backend's "not sent" made no second send.
    let (f, o) = (forged.lock().unwrap().len(), other.lock().unwrap()["plain"]);
    assert_eq!(f + o, 30, "forged {f}, plain {o}");
    assert!(f > 0, "the forging backend got no request");
    for h in forged.lock().unwrap().iter() {
        assert!(!h.contains_key("skiff-upgrade"), "{h:?}");
        assert!(
            !h.contains_key("upgrade") && !h.contains_key("http2-settings"),
            "{h:?}"
        );
    }
    net.shutdown().await;
}

/// A TCP relay on loopback to `to` that stops forwarding (both ways, its connections held
/// open) once `frozen` is set: a link through it that this router closes never hears the
/// peer hang up, as when the peer is unreachable or slow, so it lingers.
async fn freezable_relay(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            let Ok(outbound) = TcpStream::connect(to).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(ri) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(ro), Box::new(wi)),
            ] {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if flag.load(Ordering::SeqCst) {
                            // Held, not closed: the runtime's end drops it.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, frozen)
}

/// Two links from the ingress to the egress router; the cheaper one carries the pooled HTTP/2
/// connection. Once its close is requested (its link file deleted) while the peer cannot
/// hear it, the next request goes on a new connection over the other link at once. Before,
/// it went on the pooled connection of the closing link and failed when that link closed
/// (LINGER, 2 s, later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_on_a_closing_link_takes_no_new_request() {
    let (ingress, egress) = (site("ingress"), site("egress"));
    let ri = start_router(&ingress).await;
    let re = start_router(&egress).await;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = named_backend("egress", false, seen.clone()).await;
    re.set_connectors(vec![http_connector("web", "web", backend, Protocol::Http)]);
    ri.set_listeners(vec![http_listener("web", "web")]);
    let direct = re.link_addr().unwrap();
    let (relayed, frozen) = freezable_relay(direct).await;
    let mut closing = spec(&egress, &ingress, relayed.to_string(), TransportChoice::Tls);
    closing.name = "cheap".into();
    closing.cost = 1;
    let mut other = spec(&egress, &ingress, direct.to_string(), TransportChoice::Tls);
    other.name = "dear".into();
    other.cost = 5;
    ri.set_links(vec![closing, other.clone()]);
    wait_for(&ri, "both links up", |r| {
        r.links()
            .iter()
            .filter(|l| l.state == crate::link::LinkState::Up)
            .count()
            == 2
    })
    .await;
    wait_active(&ri, "web").await;
    let addr = listener_addr(&ri, "web");
    let mut h1 = h1_client(addr).await;
    let resp = get(&mut h1, "http://web/").await;
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    // The cheap link's close is requested; the egress never hears of it.
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    ri.set_links(vec![other]);
    wait_for(&ri, "the cheap link closing", |r| {
        r.links().iter().any(|l| {
            l.name == "cheap"
                && matches!(&l.state, crate::link::LinkState::Closing { reason } if reason.contains("link removed"))
        })
    })
    .await;
    let shown = t0.elapsed();
    // Up to 2 s (LINGER) on, the old code still put this request on the closing link.
    let t1 = std::time::Instant::now();
    let resp = get(&mut h1, "http://web/").await;
    let took = t1.elapsed();
    assert_eq!(resp.status(), 200, "the request after the close failed");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"egress");
    assert!(
        took < Duration::from_millis(1500),
        "the request after the close took {took:?}: it waited on the closing link"
    );
    assert_eq!(seen.lock().unwrap()["egress"], 2);
    // The closing link goes once it gives up on the peer (LINGER, 2 s); the other stays up.
    wait_for(&ri, "the cheap link gone", |r| {
        let links = r.links();
        !links.iter().any(|l| l.name == "cheap")
            && links
                .iter()
                .any(|l| l.name == "dear" && l.state == crate::link::LinkState::Up)
    })
    .await;
    eprintln!(
        "closing shown {shown:?} after the close was asked for; next request {took:?}; closing link gone {:?} after",
        t0.elapsed()
    );
    ri.shutdown().await;
    re.shutdown().await;
}
