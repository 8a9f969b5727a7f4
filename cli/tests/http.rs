//! Black-box tests of HTTP services across sites (`--type http` / `http2`, docs/http.md) with
//! the real `skiff` binary and real clients (curl, h2load, Python `websockets`, hyper):
//! requests balanced one by one over sites, gRPC trailers, rescue responses with a reason,
//! hop-by-hop stripping, intact bodies, WebSocket through two hops, SSE streaming, metrics.

mod common;
#[path = "http/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use common::{Site, is_link, link};
use support::*;

/// West (listener, no backend) linked to east and south, which both serve `web` over HTTP
/// with a backend answering its site name: both one link away, so every request ties.
struct Balanced {
    sites: Vec<Site>,
    addr: String,
    east: Arc<Seen>,
    south: Arc<Seen>,
}

fn balanced(rt: &tokio::runtime::Runtime) -> Balanced {
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", true);
    let mut south = Site::create("south", true);
    let (ep, east_seen) = web_backend(rt, "east");
    let (sp, south_seen) = web_backend(rt, "south");
    http_connector(&east, "web", "web", ep, "http");
    http_connector(&south, "web", "web", sp, "http");
    http_listener(&west, "web", "web");
    east.start();
    south.start();
    west.start();
    link(&west, &east);
    link(&west, &south);
    west.wait_link(Duration::from_secs(10), "to east", is_link("up", "east"));
    west.wait_link(Duration::from_secs(10), "to south", is_link("up", "south"));
    wait_key_served(&west, "web", 2, Duration::from_secs(15));
    let addr = west.wait_listener_active("web", Duration::from_secs(10));
    Balanced {
        sites: vec![west, east, south],
        addr,
        east: east_seen,
        south: south_seen,
    }
}

/// Samples of one metric family in Prometheus text: (labels, value).
fn samples(metrics: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn one_keep_alive_connection_is_balanced_over_two_sites_and_counted_in_metrics() {
    if !have("curl", "curl") {
        return;
    }
    let rt = runtime();
    let net = balanced(&rt);
    let west = &net.sites[0];
    let url = format!("http://{}/", net.addr);
    let n = 100;
    // curl fetches the URLs one after another on one keep-alive connection; after each body
    // it prints how many connections it had to open for it.
    let mut args = vec![
        "-s".to_string(),
        "--http1.1".into(),
        "--max-time".into(),
        "60".into(),
    ];
    for _ in 0..n {
        args.extend(["-w".into(), "\\n%{num_connects}\\n".into(), url.clone()]);
    }
    let o = Command::new("curl").args(&args).output().unwrap();
    assert!(o.status.success(), "curl failed: {}", common::text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 * n, "curl output: {out}");
    let mut by = BTreeMap::<&str, usize>::new();
    let mut connects = 0;
    for pair in lines.chunks(2) {
        *by.entry(pair[0]).or_default() += 1;
        connects += pair[1].parse::<usize>().unwrap();
    }
    eprintln!("{n} requests on one connection: {by:?}, {connects} connection(s) opened");
    assert_eq!(connects, 1, "curl did not keep one connection: {out}");
    assert!(
        by.get("east").copied().unwrap_or(0) >= 20 && by.get("south").copied().unwrap_or(0) >= 20,
        "{n} requests of one keep-alive connection were not spread over both sites: {by:?}"
    );
    assert_eq!(
        by.values().sum::<usize>(),
        n,
        "some answers were not a site's name: {by:?}"
    );
    let served =
        net.east.requests.load(Ordering::Relaxed) + net.south.requests.load(Ordering::Relaxed);
    assert_eq!(served, n as u64, "the backends answered {served} requests");

    // Metrics at the ingress: n requests of key web, all 2xx.
    let metrics = admin_get(west, "/metrics");
    let total = samples(&metrics, "skiff_http_requests_total");
    let ok_web: f64 = total
        .iter()
        .filter(|(l, _)| l.get("key").map(String::as_str) == Some("web"))
        .filter(|(l, _)| l.get("class").map(String::as_str) == Some("2xx"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        ok_web, n as f64,
        "skiff_http_requests_total{{key=\"web\",class=\"2xx\"}} is not {n}:\n{metrics}"
    );
    let other: f64 = total
        .iter()
        .filter(|(l, _)| l.get("class").map(String::as_str) != Some("2xx"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(other, 0.0, "requests counted in other classes:\n{metrics}");
    assert!(
        samples(&metrics, "skiff_http_request_duration_seconds_count")
            .iter()
            .any(|(l, v)| l.get("key").map(String::as_str) == Some("web") && *v == n as f64),
        "no latency histogram with {n} requests for key web:\n{metrics}"
    );
    let bytes = samples(&metrics, "skiff_http_bytes_total");
    assert!(
        bytes
            .iter()
            .any(|(l, v)| l.get("key").map(String::as_str) == Some("web") && *v >= 400.0),
        "no body bytes counted for key web (100 answers of 4-5 bytes):\n{metrics}"
    );

    // `listener list` shows the requests by class (docs/cli.md: JSON field `requests`).
    let l = listener_json(west, "web");
    assert_eq!(
        l["requests"]["2xx"].as_u64(),
        Some(n as u64),
        "listener list --output json does not count {n} requests of class 2xx: {l:#}"
    );
    let table = west.run(&["listener", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    let row = table
        .lines()
        .find(|r| r.starts_with("web "))
        .unwrap_or_else(|| panic!("no row for listener web:\n{table}"));
    assert!(
        row.contains("2xx")
            && row
                .split(|c: char| !c.is_ascii_digit())
                .any(|w| w == n.to_string()),
        "listener list shows no count of {n} 2xx requests:\n{table}"
    );
}

#[test]
fn one_http2_connection_from_h2load_is_balanced_over_two_sites() {
    if !have("h2load", "nghttp2-client") {
        return;
    }
    let rt = runtime();
    let net = balanced(&rt);
    let o = Command::new("timeout")
        .args(["60", "h2load", "-n", "100", "-c", "1", "-m", "10"])
        .arg(format!("http://{}/", net.addr))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "h2load failed: {}", common::text(&o));
    assert!(
        out.contains("100 succeeded") && out.contains("100 2xx"),
        "h2load did not get 100 successful answers:\n{out}"
    );
    assert!(
        out.contains("Application protocol: h2c"),
        "h2load did not speak h2c:\n{out}"
    );
    let (e, s) = (
        net.east.requests.load(Ordering::Relaxed),
        net.south.requests.load(Ordering::Relaxed),
    );
    eprintln!("one HTTP/2 connection, 100 requests: east {e}, south {s}");
    assert_eq!(e + s, 100, "the backends answered {e} + {s} requests");
    assert!(
        e >= 20 && s >= 20,
        "100 requests of one HTTP/2 connection were not spread over both sites: east {e}, south {s}"
    );
}

#[test]
fn grpc_trailers_come_back_through_an_http2_connector() {
    let rt = runtime();
    let (port, seen) = grpc_backend(&rt);
    let (_west, _east, addr) = pair("grpc", port, "http2");
    // A gRPC-style client: HTTP/2 prior knowledge, 10 calls at once on one connection.
    let results = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake with the listener");
        tokio::spawn(conn);
        let calls = (0..10u8).map(|i| {
            let mut sender = sender.clone();
            let addr = addr.clone();
            async move {
                let mut msg = vec![0u8, 0, 0, 0, 6];
                msg.extend_from_slice(b"call-");
                msg.push(b'0' + i);
                let req = hyper::Request::post(format!("http://{addr}/skiff.Echo/Say"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from(msg.clone())))
                    .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
                    .await
                    .map_err(|_| "no response within 20 s".to_string())?
                    .map_err(|e| format!("request failed: {e}"))?;
                let status = resp.status();
                let collected =
                    tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
                        .await
                        .map_err(|_| "body did not end within 20 s".to_string())?
                        .map_err(|e| format!("body failed: {e}"))?;
                let trailers = collected.trailers().cloned();
                let body = collected.to_bytes();
                Ok::<_, String>((status, body == msg, trailers))
            }
        });
        futures_join(calls.collect()).await
    });
    for (i, r) in results.into_iter().enumerate() {
        let (status, echoed, trailers) = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(status, 200, "call {i}");
        assert!(echoed, "call {i}: the message did not come back intact");
        let t = trailers.unwrap_or_else(|| panic!("call {i}: no trailers reached the client"));
        assert_eq!(
            t.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "call {i}: trailers {t:?}"
        );
        assert_eq!(
            t.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"all-good"[..]),
            "call {i}: trailers {t:?}"
        );
    }
    assert_eq!(seen.requests.load(Ordering::Relaxed), 10);
}

/// Awaits every future (no futures crate here): spawns them and joins in order.
async fn futures_join<T: Send + 'static>(
    futs: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn errors_are_rescued_into_503_502_and_504_with_a_reason() {
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", true);
    http_listener(&west, "none", "nothing");
    http_listener(&west, "refused", "refused");
    http_listener(&west, "silent", "silent");
    http_connector(&east, "refused", "refused", refusing_port(), "http");
    http_connector(&east, "silent", "silent", silent_backend(), "http");
    east.start();
    west.start();
    link(&west, &east);
    west.wait_link(Duration::from_secs(10), "to east", is_link("up", "east"));
    wait_key_served(&west, "refused", 1, Duration::from_secs(15));
    wait_key_served(&west, "silent", 1, Duration::from_secs(15));
    let none = wait_listener_bound(&west, "none", Duration::from_secs(10));
    let refused = west.wait_listener_active("refused", Duration::from_secs(10));
    let silent = west.wait_listener_active("silent", Duration::from_secs(10));

    // The 30 s response-head timeout runs while the other cases are checked.
    let timed = std::thread::spawn(move || {
        let t = Instant::now();
        let r = get(&silent, "/", "");
        (r, t.elapsed())
    });

    let mut failures = Vec::new();
    let t = Instant::now();
    let r = get(&none, "/", "");
    eprintln!(
        "no connector anywhere: {} {:?} in {:?}",
        r.status,
        r.header("skiff-error"),
        t.elapsed()
    );
    if r.status != 503 || r.header("skiff-error").is_none_or(str::is_empty) {
        failures.push(format!(
            "no connector anywhere: want 503 with skiff-error, got {r:?}"
        ));
    }
    if t.elapsed() > Duration::from_secs(2) {
        failures.push(format!("the 503 took {:?}", t.elapsed()));
    }

    let r = get(&refused, "/", "");
    eprintln!(
        "backend refuses: {} {:?}",
        r.status,
        r.header("skiff-error")
    );
    // docs/http.md: 502 when the backend failed, 503 when every target refused.
    if !(r.status == 502 || r.status == 503)
        || r.header("skiff-error")
            .is_none_or(|v| !v.contains("refused"))
    {
        failures.push(format!(
            "backend refusing connections: want 502/503 with skiff-error naming the refusal, got {r:?}"
        ));
    }

    let (r, took) = timed.join().unwrap();
    eprintln!(
        "backend never answers: {} {:?} after {took:?}",
        r.status,
        r.header("skiff-error")
    );
    if r.status != 504 || r.header("skiff-error").is_none_or(str::is_empty) {
        failures.push(format!(
            "backend never answering: want 504 with skiff-error, got {r:?}"
        ));
    }
    if took < Duration::from_secs(25) || took > Duration::from_secs(40) {
        failures.push(format!(
            "the 504 came after {took:?}, not at the 30 s response-head timeout"
        ));
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nwest log:\n{}",
        west.log()
    );
}

#[test]
fn a_request_is_retried_elsewhere_only_when_it_was_never_sent() {
    let rt = runtime();
    // Two keys served at east and south, one link from west each, so requests tie: at east,
    // `refused` has no backend listening and `dropped` has one that reads each request and
    // closes without answering; at south both are answered.
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", true);
    let mut south = Site::create("south", true);
    let (dp, dropped_heads) = dropping_backend();
    http_connector(&east, "refused", "refused", refusing_port(), "http");
    http_connector(&east, "dropped", "dropped", dp, "http");
    let (sp, south_seen) = web_backend(&rt, "south");
    http_connector(&south, "refused", "refused", sp, "http");
    http_connector(&south, "dropped", "dropped", sp, "http");
    http_listener(&west, "refused", "refused");
    http_listener(&west, "dropped", "dropped");
    east.start();
    south.start();
    west.start();
    link(&west, &east);
    link(&west, &south);
    wait_key_served(&west, "refused", 2, Duration::from_secs(15));
    wait_key_served(&west, "dropped", 2, Duration::from_secs(15));
    let refused = west.wait_listener_active("refused", Duration::from_secs(10));
    let dropped = west.wait_listener_active("dropped", Duration::from_secs(10));
    let post = |addr: &str, i: usize| {
        let body = format!("payload {i} {}", "x".repeat(1000));
        let req = format!(
            "POST /item HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (raw, _) = exchange(addr, req.as_bytes(), Duration::from_secs(40));
        parse_reply(&raw).map(|r| (r.status, r.text()))
    };

    // Never sent (east's backend refused the connection): every method goes on to south.
    let refusals = || {
        let o = east.run(&["connector", "list", "--output", "json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "refused")
            .and_then(|c| c["flowsFailed"].as_u64())
            .unwrap_or(0)
    };
    let mut failed = Vec::new();
    let start = refusals();
    for i in 0..30 {
        match post(&refused, i) {
            Some((200, b)) if b == "south" => {}
            other => failed.push(format!("POST {i}: {other:?}")),
        }
    }
    let after_posts = refusals();
    for i in 0..30 {
        let g = get(&refused, "/", "");
        if (g.status, g.text().as_str()) != (200, "south") {
            failed.push(format!(
                "GET {i}: {} {:?} {:?}",
                g.status,
                g.header("skiff-error"),
                g.text()
            ));
        }
    }
    let after_gets = refusals();
    eprintln!(
        "east's backend refused {} of 30 POSTs and {} of 30 GETs",
        after_posts - start,
        after_gets - after_posts
    );
    assert!(
        after_posts > start && after_gets > after_posts,
        "east's connector counted no refusals (flowsFailed {start} -> {after_posts} -> {after_gets}): \
         the test did not exercise a request that was never sent"
    );

    // Sent (east's backend read it, then failed): never made again at south.
    let before = south_seen.requests.load(Ordering::Relaxed);
    let mut answered = 0u64;
    let mut gateway_errors = 0u64;
    let mut other = Vec::new();
    for i in 0..30 {
        match post(&dropped, i) {
            Some((200, b)) if b == "south" => answered += 1,
            Some((502, _)) => gateway_errors += 1,
            r => other.push(format!("POST {i}: {r:?}")),
        }
    }
    let at_south = south_seen.requests.load(Ordering::Relaxed) - before;
    let at_east = dropped_heads.load(Ordering::Relaxed);
    eprintln!(
        "30 POSTs: {answered} answered by south, {gateway_errors} 502; east's backend read {at_east}, south's {at_south}"
    );
    assert!(
        other.is_empty(),
        "answers other than 200 or 502: {other:#?}"
    );
    assert!(
        gateway_errors > 0,
        "no request ever went to east: the test did not exercise a failure"
    );
    assert_eq!(
        at_south, answered,
        "south's backend saw {at_south} requests but answered {answered}: a request that reached east was made again"
    );
    assert_eq!(
        at_east, gateway_errors,
        "east's backend read {at_east} requests, {gateway_errors} came back as 502"
    );
}

#[test]
fn http2_resets_pass_both_ways() {
    let rt = runtime();
    let (hold_port, heads, ended) = holding_backend();
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", true);
    http_connector(&east, "hold", "hold", hold_port, "http");
    http_connector(&east, "broken", "broken", truncating_backend(), "http");
    http_listener(&west, "hold", "hold");
    http_listener(&west, "broken", "broken");
    east.start();
    west.start();
    link(&west, &east);
    wait_key_served(&west, "hold", 1, Duration::from_secs(15));
    wait_key_served(&west, "broken", 1, Duration::from_secs(15));
    let hold = west.wait_listener_active("hold", Duration::from_secs(10));
    let broken = west.wait_listener_active("broken", Duration::from_secs(10));
    let h2 = |addr: String| async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake with the listener");
        tokio::spawn(conn);
        sender
    };
    rt.block_on(async {
        // The client resets its stream (RST_STREAM CANCEL) while the backend works on it:
        // the backend's request is given up (its connection ends).
        let mut sender = h2(hold.clone()).await;
        let req = hyper::Request::get(format!("http://{hold}/work"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let pending = tokio::spawn(async move { sender.send_request(req).await.map(|_| ()) });
        let deadline = Instant::now() + Duration::from_secs(10);
        while heads.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the request never reached the backend");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pending.abort();
        let reset_at = Instant::now();
        while ended.load(Ordering::Relaxed) == 0 {
            assert!(
                reset_at.elapsed() < Duration::from_secs(5),
                "the client reset its stream, yet 5 s later the backend still held the request"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("client reset reached the backend in {:?}", reset_at.elapsed());

        // The backend breaks its response: the client's stream is reset, not ended cleanly.
        let mut sender = h2(broken.clone()).await;
        let req = hyper::Request::get(format!("http://{broken}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
            .await
            .expect("no response head within 20 s");
        match resp {
            Err(e) => eprintln!("broken response: the request failed: {e}"),
            Ok(resp) => {
                let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
                    .await
                    .expect("the broken body neither ended nor failed within 20 s");
                match body {
                    Ok(b) => panic!(
                        "a response broken at the backend after 10 of 100000 bytes ended cleanly at the client with {} bytes",
                        b.to_bytes().len()
                    ),
                    Err(e) => eprintln!("broken response: the stream was reset: {e}"),
                }
            }
        }
    });
}

#[test]
fn hop_by_hop_headers_are_stripped_and_bodies_arrive_intact() {
    if !have("curl", "curl") {
        return;
    }
    let rt = runtime();
    let (port, seen) = web_backend(&rt, "east");
    let (_west, _east, addr) = pair("web", port, "http");

    // Request and response heads.
    let req = format!(
        "GET /headers HTTP/1.1\r\nHost: {addr}\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\
         Proxy-Authorization: Basic dTpw\r\nUser-Agent: skiff-test\r\n\r\n"
    );
    let (raw, _) = exchange(&addr, req.as_bytes(), Duration::from_secs(20));
    let r = parse_reply(&raw)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(r.status, 200, "{r:?}");
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "the backend saw {} requests", heads.len());
    let h = &heads[0];
    let at = |name: &str| {
        h.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    eprintln!("the backend saw: {h:?}");
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            at(gone).is_empty(),
            "hop-by-hop header {gone} reached the backend: {h:?}"
        );
    }
    assert!(
        at("connection")
            .iter()
            .all(|v| !v.to_lowercase().contains("x-secret")),
        "the client's Connection header reached the backend: {h:?}"
    );
    assert_eq!(at("x-end-to-end"), ["kept"], "end-to-end header: {h:?}");
    assert_eq!(at("proxy-authorization"), ["Basic dTpw"], "{h:?}");
    assert_eq!(at("user-agent"), ["skiff-test"], "{h:?}");
    assert!(
        at("via").iter().any(|v| v.contains("skiff")),
        "no Via naming skiff at the backend: {h:?}"
    );
    eprintln!("the client saw: {:?}", r.headers);
    assert_eq!(r.header("x-backend"), Some("yes"), "{r:?}");
    assert!(
        r.header("x-internal").is_none(),
        "the backend's hop-by-hop header X-Internal reached the client: {r:?}"
    );
    assert!(
        r.header("keep-alive").is_none(),
        "the backend's Keep-Alive reached the client: {r:?}"
    );
    assert!(
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .all(|(_, v)| !v.to_lowercase().contains("x-internal")),
        "the backend's Connection header reached the client: {r:?}"
    );

    // A 1 MiB upload, with Content-Length and chunked, arrives byte-exact.
    let tmp = tempfile::tempdir().unwrap();
    let upload: Vec<u8> = (0..1 << 20).map(pattern).collect();
    let file = tmp.path().join("upload");
    std::fs::write(&file, &upload).unwrap();
    let want = format!("{} {:016x}", upload.len(), fnv(&upload));
    for extra in [None, Some("Transfer-Encoding: chunked")] {
        let mut c = Command::new("curl");
        c.args(["-s", "--http1.1", "--max-time", "30", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .args(["-H", "Content-Type: application/octet-stream"]);
        if let Some(h) = extra {
            c.args(["-H", h]);
        }
        let o = c.arg(format!("http://{addr}/upload")).output().unwrap();
        assert!(
            o.status.success(),
            "curl upload failed: {}",
            common::text(&o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            want,
            "the 1 MiB upload ({}) did not arrive intact",
            extra.unwrap_or("Content-Length")
        );
    }

    // A 5 MiB response streams back intact, over HTTP/1.1 and over HTTP/2.
    let expected: Vec<u8> = (0..BIG).map(pattern).collect();
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out = tmp.path().join("big");
        let o = Command::new("curl")
            .args(["-s", version, "--max-time", "30", "-o"])
            .arg(&out)
            .arg(format!("http://{addr}/big"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl {version} /big failed: {}",
            common::text(&o)
        );
        let got = std::fs::read(&out).unwrap();
        assert_eq!(
            got.len(),
            expected.len(),
            "{version}: the 5 MiB response was cut"
        );
        assert!(
            got == expected,
            "{version}: the 5 MiB response arrived with different bytes"
        );
    }
}

#[test]
fn a_websocket_echo_works_through_two_hops_and_half_close_passes() {
    let Some(py) = venv_python() else { return };
    // west -> middle -> east: west and east both link to middle only.
    let mut middle = Site::create("middle", true);
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", false);
    let (_echo, ws_port) = spawn_with_port(&py, &[script("ws_echo.py").to_str().unwrap()]);
    http_connector(&east, "ws", "ws", ws_port, "http");
    http_connector(&east, "raw", "raw", upgrade_echo_backend(), "http");
    http_listener(&west, "ws", "ws");
    http_listener(&west, "raw", "raw");
    middle.start();
    east.start();
    west.start();
    link(&west, &middle);
    link(&east, &middle);
    west.wait_link(
        Duration::from_secs(10),
        "to middle",
        is_link("up", "middle"),
    );
    east.wait_link(
        Duration::from_secs(10),
        "to middle",
        is_link("up", "middle"),
    );
    wait_key_served(&west, "ws", 1, Duration::from_secs(15));
    wait_key_served(&west, "raw", 1, Duration::from_secs(15));
    let ws = west.wait_listener_active("ws", Duration::from_secs(10));
    let raw = west.wait_listener_active("raw", Duration::from_secs(10));

    // A real WebSocket client against a real WebSocket server.
    let o = Command::new("timeout")
        .arg("40")
        .arg(&py)
        .arg(script("ws_client.py"))
        .arg(format!("ws://{ws}/echo"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("ws_client.py: {}", common::text(&o)));
    eprintln!("WebSocket through two hops: {out}");
    assert!(
        out.get("error").is_none(),
        "WebSocket client failed: {out}\nwest log:\n{}",
        west.log()
    );
    assert_eq!(
        out["echoes"],
        serde_json::json!(["message 0", "message 1", "message 2"]),
        "{out}"
    );
    assert_eq!(
        out["close_code"], 1000,
        "the closing handshake did not complete: {out}"
    );
    assert_eq!(out["closed"], true, "{out}");
    assert!(
        out["close_seconds"].as_f64().unwrap_or(99.0) < 3.0,
        "the close took {} s: the server's end of the connection did not reach the client",
        out["close_seconds"]
    );

    // Half-close through an upgrade: the client ends its side, the backend still answers.
    let mut c = TcpStream::connect(&raw).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /raw HTTP/1.1\r\nHost: raw\r\nConnection: Upgrade\r\nUpgrade: raw-echo\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, b"\r\n\r\n").is_none() {
        let n = c.read(&mut buf).expect("the 101 answer");
        assert!(
            n > 0,
            "closed before the upgrade answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let end = find(&got, b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    let mut after = got[end + 4..].to_vec();
    c.write_all(b"ping-1").unwrap();
    while after.len() < 6 {
        let n = c.read(&mut buf).expect("the echo");
        assert!(n > 0, "closed before the echo");
        after.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&after[..6], b"ping-1");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = after[6..].to_vec();
    let ended = loop {
        match c.read(&mut buf) {
            Ok(0) => break "end",
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => {
                break if e.kind() == std::io::ErrorKind::WouldBlock {
                    "timeout"
                } else {
                    "error"
                };
            }
        }
    };
    assert_eq!(
        (String::from_utf8_lossy(&rest).as_ref(), ended),
        ("bye", "end"),
        "after the client's FIN the backend's last bytes and FIN must arrive"
    );
}

/// Reads `r` until it ends, noting when each `data: N` event (N = 0..5) first arrived.
fn event_arrivals(mut r: impl Read, started: Instant) -> (Vec<Duration>, Duration) {
    let mut seen = Vec::new();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                while seen.len() < 5
                    && find(&all, format!("data: {}\n\n", seen.len()).as_bytes()).is_some()
                {
                    seen.push(started.elapsed());
                }
            }
        }
    }
    (seen, started.elapsed())
}

#[test]
fn server_sent_events_arrive_one_by_one() {
    let (_sse, port) = spawn_with_port(
        Path::new("python3"),
        &[script("sse_server.py").to_str().unwrap()],
    );
    let (west, _east, addr) = pair("events", port, "http");
    // The backend sends 5 events 300 ms apart: the first must arrive ~1.2 s before the last.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    write!(
        c,
        "GET /events HTTP/1.1\r\nHost: events\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (at, end) = event_arrivals(&c, started);
    eprintln!("HTTP/1.1: events arrived at {at:?}, the response ended at {end:?}");
    assert_eq!(
        at.len(),
        5,
        "not every event arrived\nwest log:\n{}",
        west.log()
    );
    assert!(
        at[4] - at[0] >= Duration::from_millis(800),
        "HTTP/1.1: the events arrived together, not one by one: {at:?}"
    );

    // The same over HTTP/2 (curl, prior knowledge, no buffering).
    if have("curl", "curl") {
        let started = Instant::now();
        let mut child = Command::new("curl")
            .args(["-sN", "--http2-prior-knowledge", "--max-time", "15"])
            .arg(format!("http://{addr}/events"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (at, end) = event_arrivals(child.stdout.take().unwrap(), started);
        let _ = child.wait();
        eprintln!("HTTP/2: events arrived at {at:?}, the response ended at {end:?}");
        assert_eq!(at.len(), 5, "HTTP/2: not every event arrived");
        assert!(
            at[4] - at[0] >= Duration::from_millis(800),
            "HTTP/2: the events arrived together, not one by one: {at:?}"
        );
    }
}
