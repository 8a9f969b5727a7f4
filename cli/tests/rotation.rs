//! Black-box tests of link certificate rotation through the real binary: `skiff link renew`
//! with 50 flows running breaks none of them and keeps the link; the certificate it replaces
//! links only within the issuer's overlap window; a revoked site cannot renew; a renewal for
//! another key is refused.

mod common;
#[path = "rotation/relays.rs"]
mod relays;

use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Echo, Site, fails, is_link, link_over, ok};
use relays::{SlowRelay, answer_losing_relay};
use serde_json::Value;

fn link_named(site: &Site, name: &str) -> Option<Value> {
    site.links().into_iter().find(|l| l["name"] == name)
}

/// Sets `spec.certificateOverlap` in a stopped site's site.yaml.
fn set_overlap(site: &Site, overlap: &str) {
    let path = site.dir.join("site.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        out.push(l.to_string());
        if l == "spec:" {
            let next = lines.peek().copied().unwrap_or("  ");
            let indent = &next[..next.len() - next.trim_start().len()];
            out.push(format!("{indent}certificateOverlap: {overlap}"));
        }
    }
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// The value of `key:` in the one linked-site record of `site`.
fn peer_field(site: &Site, key: &str) -> String {
    let mut records = std::fs::read_dir(site.dir.join("peers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".yaml"));
    let record = records.next().expect("a linked-site record");
    assert!(records.next().is_none(), "one linked site expected");
    let text = std::fs::read_to_string(record.path()).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .unwrap_or_default()
}

fn link_file(site: &Site, link: &str) -> std::path::PathBuf {
    site.dir.join("links").join(format!("{link}.yaml"))
}

fn renew_json(site: &Site) -> Value {
    let out = ok(&["link", "renew", "--dir", site.d(), "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v:#}");
    assert!(v[0]["error"].is_null(), "{v:#}");
    v[0].clone()
}

/// What one flow did: bytes sent and echoed back, digests of both, and why it ended.
struct FlowResult {
    sent: u64,
    received: u64,
    sent_digest: u64,
    received_digest: u64,
    end: String,
}

/// A flow through `addr` that streams pseudo-random 4 KiB chunks and reads them back until
/// `stop`; `progress` counts bytes echoed.
fn flow(
    addr: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> JoinHandle<FlowResult> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sent_h = std::collections::hash_map::DefaultHasher::new();
        let mut recv_h = std::collections::hash_map::DefaultHasher::new();
        let mut r = FlowResult {
            sent: 0,
            received: 0,
            sent_digest: 0,
            received_digest: 0,
            end: "stopped".into(),
        };
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut chunk = vec![0u8; 4096];
        let mut back = vec![0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if let Err(e) = c.write_all(&chunk) {
                r.end = format!("write failed: {e}");
                break;
            }
            sent_h.write(&chunk);
            r.sent += chunk.len() as u64;
            if let Err(e) = c.read_exact(&mut back) {
                r.end = format!("read failed: {e}");
                break;
            }
            recv_h.write(&back);
            r.received += back.len() as u64;
            progress.store(r.received, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        r.sent_digest = sent_h.finish();
        r.received_digest = recv_h.finish();
        r
    })
}

fn renew_with_flows_running(transport: &str) {
    const FLOWS: usize = 50;
    const OVERLAP: Duration = Duration::from_secs(3);
    let echo = Echo::start();
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    set_overlap(&a, "3s");
    a.start();
    b.start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        a.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "echo",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        b.d(),
    ]);
    link_over(&b, &a, transport);
    b.wait_link(Duration::from_secs(5), "b up to a", is_link("up", "a"));
    let addr = b.wait_listener_active("echo", Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..FLOWS).map(|_| Arc::default()).collect();
    let flows: Vec<JoinHandle<FlowResult>> = (0..FLOWS)
        .map(|i| {
            flow(
                addr.clone(),
                i as u64 + 1,
                stop.clone(),
                progress[i].clone(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress
        .iter()
        .any(|p| p.load(Ordering::Relaxed) < 64 * 1024)
    {
        assert!(
            Instant::now() < deadline,
            "not every flow moved 64 KiB within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out_before = link_named(&b, "a").expect("b's link");
    let in_before = link_named(&a, "from-b").expect("a's inbound link");
    let serial_before = peer_field(&a, "certificateSerial");
    let cert_before = std::fs::read_to_string(link_file(&b, "a")).unwrap();

    let t0 = Instant::now();
    let renewed = renew_json(&b);
    let took = t0.elapsed();
    let at_renewal: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let serial = renewed["serial"].as_str().unwrap().to_string();
    assert_ne!(serial, serial_before);
    assert_eq!(peer_field(&a, "certificateSerial"), serial);
    // The replaced certificate, listed with the end of its window.
    assert_eq!(peer_field(&a, "- serial"), serial_before);
    assert_ne!(
        std::fs::read_to_string(link_file(&b, "a")).unwrap(),
        cert_before
    );

    // Let the flows run past the end of the overlap window: the link established with the
    // replaced certificate is not cut by it.
    std::thread::sleep(OVERLAP + Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<FlowResult> = flows.into_iter().map(|f| f.join().unwrap()).collect();
    let mut total = 0;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.end, "stopped", "flow {i} broke");
        assert_eq!(r.sent, r.received, "flow {i}");
        assert_eq!(r.sent_digest, r.received_digest, "flow {i}: bytes changed");
        assert!(
            r.received > at_renewal[i],
            "flow {i} moved nothing after the renewal"
        );
        total += r.received;
    }
    let out_after = link_named(&b, "a").expect("b's link");
    let in_after = link_named(&a, "from-b").expect("a's inbound link");
    assert_eq!(out_after["status"], "up");
    assert_eq!(
        out_after["since"], out_before["since"],
        "b's link redialled"
    );
    assert_eq!(
        in_after["since"], in_before["since"],
        "a's inbound link redialled"
    );
    eprintln!(
        "{transport}: renew took {took:?}; {FLOWS} flows, {} MiB echoed intact, none broken, link since unchanged",
        total / (1024 * 1024)
    );

    // Forced reconnect: b comes back with the new certificate (the old one's window is over,
    // so it could not link with the old one).
    b.kill();
    b.start();
    let t = Instant::now();
    b.wait_link(
        Duration::from_secs(10),
        "up after restart with the new certificate",
        is_link("up", "a"),
    );
    eprintln!(
        "{transport}: b restarted, up with the renewed certificate in {:?}",
        t.elapsed()
    );
    // Every refusal at the link port reads so: the key and serial checks right after TLS as
    // well as the hello.
    assert!(
        !a.log().contains("refused an inbound link"),
        "a refused b: {}",
        a.log()
    );
}

#[test]
fn renewing_with_50_flows_running_breaks_none_and_keeps_the_link_over_quic() {
    renew_with_flows_running("quic");
}

#[test]
fn renewing_with_50_flows_running_breaks_none_and_keeps_the_link_over_tls() {
    renew_with_flows_running("tls");
}

#[test]
fn the_replaced_certificate_links_within_the_overlap_window_and_is_refused_after_over_quic() {
    overlap_window("quic");
}

#[test]
fn the_replaced_certificate_links_within_the_overlap_window_and_is_refused_after_over_tls() {
    overlap_window("tls");
}

fn overlap_window(transport: &str) {
    const OVERLAP: Duration = Duration::from_secs(6);
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    set_overlap(&a, "6s");
    a.start();
    b.start();
    link_over(&b, &a, transport);
    b.wait_link(Duration::from_secs(5), "up", is_link("up", "a"));
    let old = std::fs::read_to_string(link_file(&b, "a")).unwrap();

    let renewed_at = Instant::now();
    renew_json(&b);
    // b comes back holding the replaced certificate (as a stolen copy would): within the
    // window it still links.
    b.kill();
    std::fs::write(link_file(&b, "a"), &old).unwrap();
    b.start();
    b.wait_link(
        Duration::from_secs(4),
        "up with the old certificate",
        is_link("up", "a"),
    );
    let within = renewed_at.elapsed();
    assert!(within < OVERLAP, "linked only {within:?} after the renewal");
    eprintln!(
        "{transport}: old certificate linked {within:?} after the renewal (window {OVERLAP:?})"
    );

    // After the window, the old certificate is refused, and both ends say why.
    let wait = (renewed_at + OVERLAP + Duration::from_millis(500))
        .saturating_duration_since(Instant::now());
    std::thread::sleep(wait);
    b.kill();
    b.start();
    let refused_at = Instant::now();
    let deadline = refused_at + Duration::from_secs(10);
    while !a.log().contains("overlap window ended") {
        assert!(
            Instant::now() < deadline,
            "a's log does not say why: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The dialer is told why, over QUIC (close reason) and TLS/TCP (refusal on the control
    // stream) alike.
    let refused = b.wait_link(Duration::from_secs(10), "refused", |l| {
        l["name"] == "a" && l["status"] == "refused"
    });
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("overlap window ended"), "{refused:#}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        link_named(&b, "a").is_some_and(|l| l["status"] != "up"),
        "the old certificate linked after the window"
    );

    // Renewing repairs it: the dialer takes the new certificate for its next dial.
    let t = Instant::now();
    renew_json(&b);
    b.wait_link(
        Duration::from_secs(10),
        "up after renewing",
        is_link("up", "a"),
    );
    eprintln!(
        "{transport}: renewed after refusal: up again in {:?}",
        t.elapsed()
    );
}

#[test]
fn a_revoked_site_cannot_renew() {
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    a.start();
    b.start();
    link_over(&b, &a, "auto");
    b.wait_link(Duration::from_secs(5), "up", is_link("up", "a"));
    ok(&["link", "revoke", "b", "--dir", a.d()]);
    let before = std::fs::read_to_string(link_file(&b, "a")).unwrap();
    let err = fails(&["link", "renew", "a", "--dir", b.d()]);
    assert!(
        err.contains("was revoked here and cannot renew its link certificate"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(std::fs::read_to_string(link_file(&b, "a")).unwrap(), before);
    assert!(
        a.log().contains("certificate renewal refused"),
        "{}",
        a.log()
    );
}

#[test]
fn a_renewal_for_another_key_is_refused() {
    let mut a = Site::create("a", true);
    let b = Site::create("b", false);
    a.start();
    link_over(&b, &a, "auto");
    let serial = peer_field(&a, "certificateSerial");
    // b's link key replaced by another one: the CSR proves possession of a key the issuer
    // never bound to b's id.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    write_key(&b.dir.join("link.key"), &other.serialize_pem());
    let err = fails(&["link", "renew", "--dir", b.d()]);
    assert!(
        err.contains("certifies a key other than the one site"),
        "{err}"
    );
    assert_eq!(peer_field(&a, "certificateSerial"), serial);
    // Unknown link name: the error says so.
    let err = fails(&["link", "renew", "nope", "--dir", b.d()]);
    assert!(err.contains("nope"), "{err}");
    // Deleting the site removes what renewals left (renew.lock) too.
    assert!(b.dir.join("renew.lock").exists());
    ok(&["site", "delete", "--dir", b.d()]);
    assert!(
        !b.dir.exists(),
        "the folder of a deleted site is left behind"
    );
}

/// The `spec.id` in a site's site.yaml.
fn site_id(site: &Site) -> skiff_certs::SiteId {
    let yaml = std::fs::read_to_string(site.dir.join("site.yaml")).unwrap();
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("id:"))
        .unwrap()
        .trim()
        .trim_matches(['"', '\''])
        .parse()
        .unwrap()
}

/// Site x, where b redeemed a token too, replays what b sent it (its redemption CSR, a
/// renewal CSR made for x) at y's renewal endpoint, twice, as b would see no difference until
/// its next dial to y. y must refuse each (the CSR names another issuer, or is no renewal
/// request at all, or is stale), keep b's record as it was, and b must still link to y after
/// a restart.
#[test]
fn a_renewal_request_replayed_at_another_issuer_is_refused_and_cuts_nobody_off() {
    let mut x = Site::create("x", true);
    let mut y = Site::create_on_fixed_port("y");
    let mut b = Site::create("b", false);
    x.start();
    y.start();
    b.start();
    link_over(&b, &x, "auto");
    link_over(&b, &y, "auto");
    b.wait_link(Duration::from_secs(5), "up to y", is_link("up", "y"));
    let serial = peer_field(&y, "certificateSerial");

    // What x holds from b: a CSR of b's link key in the redemption's form, and one made for
    // a renewal at x.
    let key = std::fs::read_to_string(b.dir.join("link.key")).unwrap();
    let (bid, xid, yid) = (site_id(&b), site_id(&x), site_id(&y));
    let now = time::OffsetDateTime::now_utc();
    let redemption = skiff_certs::link_csr(bid, "b", &key).unwrap();
    let renewal_at_x = skiff_certs::renewal_csr(bid, xid, now, &key).unwrap();
    let stale_for_y =
        skiff_certs::renewal_csr(bid, yid, now - Duration::from_secs(600), &key).unwrap();
    let y_ca = std::fs::read_to_string(y.dir.join("ca.crt")).unwrap();
    let link_y = std::fs::read_to_string(link_file(&b, "y")).unwrap();
    let endpoint = link_y
        .lines()
        .find_map(|l| l.trim().strip_prefix("- "))
        .expect("an endpoint in b's link to y")
        .trim_matches(['"', '\''])
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases = [
        (&redemption, "binds neither the issuing site nor a time"),
        (&renewal_at_x, "is for issuing site"),
        (&stale_for_y, "away from this site's clock"),
    ];
    for (csr, expected) in cases {
        for _ in 0..2 {
            let answer = rt.block_on(skiff_site_controller::grant::renew_certificate(
                &y_ca, yid, &endpoint, bid, csr,
            ));
            match answer {
                Err(skiff_site_controller::grant::IssuerAnswer::Refused(why)) => {
                    assert!(why.contains(expected), "{why}")
                }
                other => panic!("y answered a replayed renewal with {other:?}"),
            }
        }
    }
    assert_eq!(peer_field(&y, "certificateSerial"), serial);
    assert_eq!(peer_field(&y, "renewed"), "");

    // b redials y with the certificate it holds: still admitted.
    b.kill();
    b.start();
    b.wait_link(
        Duration::from_secs(10),
        "up to y after the replays",
        is_link("up", "y"),
    );
    // b's own renewal at y (bound to y, fresh) still works.
    let out = ok(&["link", "renew", "y", "--dir", b.d(), "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["error"].is_null(), "{v:#}");
    assert_ne!(peer_field(&y, "certificateSerial"), serial);
}

/// Anybody can make the link port refuse: 200 renewal requests that are refused, 200 TCP
/// connections that fail the TLS handshake. Each kind is logged at WARN once per 10 s with a
/// count, not once per event; and a grant connection answers one request only (no
/// keep-alive to send many over one connection).
#[test]
fn floods_of_refusals_log_one_warn_line_per_kind_and_a_grant_connection_serves_one_request() {
    const FLOOD: usize = 200;
    let mut a = Site::create_on_fixed_port("a");
    let b = Site::create("b", false);
    a.start();
    link_over(&b, &a, "auto");
    let (aid, bid) = (site_id(&a), site_id(&b));
    let a_ca = std::fs::read_to_string(a.dir.join("ca.crt")).unwrap();
    let link = std::fs::read_to_string(link_file(&b, "a")).unwrap();
    let endpoint = link
        .lines()
        .find_map(|l| l.trim().strip_prefix("- "))
        .unwrap()
        .trim_matches(['"', '\''])
        .to_string();
    // A request of b's form that a refuses: not a renewal request.
    let key = std::fs::read_to_string(b.dir.join("link.key")).unwrap();
    let csr = skiff_certs::link_csr(bid, "b", &key).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    for _ in 0..FLOOD {
        let answer = rt.block_on(skiff_site_controller::grant::renew_certificate(
            &a_ca, aid, &endpoint, bid, &csr,
        ));
        assert!(
            matches!(
                answer,
                Err(skiff_site_controller::grant::IssuerAnswer::Refused(_))
            ),
            "{answer:?}"
        );
    }
    for _ in 0..FLOOD {
        let mut c = TcpStream::connect(&endpoint).unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = c.read(&mut [0u8; 64]);
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let warns = |words: &str| {
        a.log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(words))
            .count()
    };
    let renewals = warns("certificate renewal refused");
    let handshakes = warns("refused a connection on the link port");
    eprintln!(
        "{FLOOD} refused renewals and {FLOOD} failed handshakes in {took:?}: {renewals} and {handshakes} WARN lines"
    );
    assert!(
        renewals >= 1 && renewals <= 1 + took.as_secs() as usize / 10,
        "{renewals}"
    );
    assert!(
        handshakes >= 1 && handshakes <= 1 + took.as_secs() as usize / 10,
        "{handshakes}"
    );

    // Two requests on one grant connection: the second is not served.
    let config = skiff_certs::grant_client_config(&a_ca, aid).unwrap();
    let second = rt.block_on(async {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(aid.server_name()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = || {
            http::Request::post("/v1/renew")
                .header(http::header::HOST, "a")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                .unwrap()
        };
        let first = sender.send_request(request()).await.unwrap();
        assert_eq!(first.status(), 400);
        let _ = first.into_body().collect().await;
        tokio::time::timeout(Duration::from_secs(5), sender.send_request(request())).await
    });
    assert!(
        !matches!(second, Ok(Ok(_))),
        "a second request on one grant connection was answered"
    );
}

/// A link deleted, and another edited, while its renewal is on the way (a slow path to the
/// issuer): the renewal writes only the new certificate into the link files as they are then,
/// so the deleted link stays deleted and the edit stays.
#[test]
fn a_renewal_brings_back_no_deleted_link_and_undoes_no_edit() {
    let a = Site::create_on_fixed_port("a");
    let b = Site::create("b", false);
    let mut a = a;
    a.start();
    link_over(&b, &a, "auto");
    let link = std::fs::read_to_string(link_file(&b, "a")).unwrap();
    let endpoint = link
        .lines()
        .find_map(|l| l.trim().strip_prefix("- "))
        .unwrap()
        .trim_matches(['"', '\''])
        .to_string();
    // b's link to a goes through a relay that waits 2 s; a second link to a (same peer, same
    // certificate) is made by copying the file.
    let relay = SlowRelay::start(endpoint.clone(), Duration::from_secs(2));
    let slow = link.replace(&endpoint, &format!("127.0.0.1:{}", relay.port));
    std::fs::write(link_file(&b, "a"), &slow).unwrap();
    std::fs::write(link_file(&b, "a2"), slow.replace("name: a\n", "name: a2\n")).unwrap();
    let renew = {
        let d = b.d().to_string();
        std::thread::spawn(move || {
            common::skiff(&["link", "renew", "--dir", &d, "--output", "json"])
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    // Meanwhile: a deleted, a2's cost edited.
    ok(&["link", "delete", "a", "--dir", b.d()]);
    let edited = std::fs::read_to_string(link_file(&b, "a2"))
        .unwrap()
        .replace("cost: 1\n", "cost: 7\n");
    assert!(edited.contains("cost: 7"), "{edited}");
    std::fs::write(link_file(&b, "a2"), &edited).unwrap();
    let out = renew.join().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["error"].is_null(), "{v:#}");
    assert_eq!(v[0]["links"], serde_json::json!(["a2"]), "{v:#}");
    assert!(
        !link_file(&b, "a").exists(),
        "the renewal brought back the deleted link"
    );
    let after = std::fs::read_to_string(link_file(&b, "a2")).unwrap();
    assert!(
        after.contains("cost: 7"),
        "the renewal undid the edit: {after}"
    );
    assert_ne!(after, edited, "the renewed certificate was not stored");
    drop(relay);
}

/// The renewal request reached the issuer through the first endpoint, but its answer was lost.
/// The issuer may have renewed: asking again at the second endpoint at once would replace
/// that certificate too, so `link renew` stops, says so, and the link keeps its certificate,
/// which still links.
#[test]
fn a_renewal_whose_answer_was_lost_is_not_repeated_at_another_endpoint() {
    let mut a = Site::create_on_fixed_port("a");
    let mut b = Site::create("b", false);
    a.start();
    link_over(&b, &a, "auto");
    let link = std::fs::read_to_string(link_file(&b, "a")).unwrap();
    let endpoint = link
        .lines()
        .find_map(|l| l.trim().strip_prefix("- "))
        .unwrap()
        .trim_matches(['"', '\''])
        .to_string();
    let (port, relay) = answer_losing_relay(endpoint.clone());
    let line = link
        .lines()
        .find(|l| l.trim().starts_with("- ") && l.contains(&endpoint))
        .unwrap();
    let indent = &line[..line.len() - line.trim_start().len()];
    let two = link.replacen(line, &format!("{indent}- 127.0.0.1:{port}\n{line}"), 1);
    std::fs::write(link_file(&b, "a"), &two).unwrap();
    let out = common::skiff(&["link", "renew", "--dir", b.d()]);
    relay.join().unwrap();
    let said = common::text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("may have renewed"), "{said}");
    // The link file kept its certificate, and a renewed at most once.
    assert_eq!(std::fs::read_to_string(link_file(&b, "a")).unwrap(), two);
    let replaced = std::fs::read_to_string(
        std::fs::read_dir(a.dir.join("peers"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".yaml"))
            .unwrap()
            .path(),
    )
    .unwrap()
    .matches("- serial:")
    .count();
    eprintln!("answer lost: a renewed {replaced} time(s), b stopped: {said}");
    assert!(replaced <= 1, "a renewed {replaced} times");
    // The certificate b holds still links (within the window).
    b.start();
    b.wait_link(
        Duration::from_secs(10),
        "up with its certificate",
        is_link("up", "a"),
    );
}

fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
}

/// A router certificate for `site` signed by its CA with the given validity around now
/// (cert and key PEM, as router.pem holds them).
fn router_pem(site: &Site, valid_before_now: Duration, valid_after_now: Duration) -> String {
    let ca_cert = std::fs::read_to_string(site.dir.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(site.dir.join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let yaml = std::fs::read_to_string(site.dir.join("site.yaml")).unwrap();
    let id = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("id:"))
        .unwrap()
        .trim()
        .trim_matches(['"', '\''])
        .to_string();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(format!("skiff://site/{id}").try_into().unwrap()),
        rcgen::SanType::DnsName(server_name(&id).try_into().unwrap()),
        rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - valid_before_now;
    params.not_after = now + valid_after_now;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn server_name(id: &str) -> String {
    let parsed: skiff_certs::SiteId = id.parse().unwrap();
    parsed.server_name()
}

/// The certificate the link port at `port` presents over TLS/TCP, read with openssl.
fn presented_serial(port: u16, server_name: &str) -> String {
    let out = std::process::Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            server_name,
            "-alpn",
            "skiff-grant/1",
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("openssl printed no certificate: {text}"));
    skiff_certs::certificate_serial_pem(&text[start..]).unwrap()
}

#[test]
fn the_router_certificate_is_renewed_with_a_third_left_and_swapped_in_without_touching_links() {
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    let mut c = Site::create("c", false);
    a.start();
    b.start();
    c.start();
    link_over(&b, &a, "tls");
    link_over(&c, &a, "quic");
    a.wait_link(Duration::from_secs(5), "b", is_link("up", "b"));
    a.wait_link(Duration::from_secs(5), "c", is_link("up", "c"));
    let before: Vec<Value> = a.links();
    let status: Value =
        serde_json::from_slice(&ok(&["site", "status", "--output", "json", "--dir", a.d()]).stdout)
            .unwrap();
    let port = status["site"]["linkPort"].as_u64().expect("link port") as u16;
    let id = status["site"]["id"].as_str().unwrap().to_string();
    let name = server_name(&id);
    let first = presented_serial(port, &name);

    // Time passes: router.pem has 60 of its 360 days left (less than a third).
    let day = Duration::from_secs(24 * 3600);
    let aged = router_pem(&a, 300 * day, 60 * day);
    std::fs::write(a.dir.join("router.pem"), &aged).unwrap();
    let aged_serial = skiff_certs::certificate_serial_pem(&aged).unwrap();
    // Any reload checks it (as the 12-hourly check and the start do).
    ok(&[
        "listener",
        "create",
        "nudge",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        a.d(),
    ]);
    let renewed = std::fs::read_to_string(a.dir.join("router.pem")).unwrap();
    let serial = skiff_certs::certificate_serial_pem(&renewed).unwrap();
    assert_ne!(serial, aged_serial, "router.pem was not renewed");
    assert_ne!(serial, first);
    let (_, end) = skiff_certs::certificate_validity_pem(&renewed).unwrap();
    let left = end - time::OffsetDateTime::now_utc();
    assert!(left.whole_days() >= 364, "renewed for {left}");
    assert!(
        a.log().contains("router certificate renewed"),
        "{}",
        a.log()
    );

    // New handshakes get the new certificate; established links were not touched.
    assert_eq!(presented_serial(port, &name), serial);
    let after = a.links();
    for l in &before {
        let now = after
            .iter()
            .find(|x| x["name"] == l["name"])
            .unwrap_or_else(|| panic!("link {} gone: {after:#?}", l["name"]));
        assert_eq!(now["status"], "up");
        assert_eq!(now["since"], l["since"], "{} was re-made", l["name"]);
    }
    // Dialers accept it (it chains to the CA they pinned).
    b.kill();
    b.start();
    b.wait_link(Duration::from_secs(10), "b up again", is_link("up", "a"));
    c.kill();
    c.start();
    c.wait_link(Duration::from_secs(10), "c up again", is_link("up", "a"));

    // A restart keeps the renewed one (nothing due).
    a.kill();
    a.start();
    assert_eq!(
        std::fs::read_to_string(a.dir.join("router.pem")).unwrap(),
        renewed
    );
}

/// A link client certificate for `dialer`'s link key, signed by `issuer`'s CA, with the given
/// validity around now (as an issuer would have made it long ago).
fn aged_client_certificate(
    dialer: &Site,
    issuer: &Site,
    valid_before_now: Duration,
    valid_after_now: Duration,
) -> String {
    let ca_cert = std::fs::read_to_string(issuer.dir.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(issuer.dir.join("ca.key")).unwrap())
            .unwrap();
    let ca = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dialer.dir.join("link.key")).unwrap())
            .unwrap();
    let yaml = std::fs::read_to_string(dialer.dir.join("site.yaml")).unwrap();
    let id = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("id:"))
        .unwrap()
        .trim()
        .trim_matches(['"', '\''])
        .to_string();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("skiff://site/{id}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - valid_before_now;
    params.not_after = now + valid_after_now;
    params.signed_by(&key, &ca).unwrap().pem()
}

#[test]
fn a_site_renews_a_link_certificate_with_a_third_left_by_itself_at_start() {
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    a.start();
    link_over(&b, &a, "auto");
    let serial = peer_field(&a, "certificateSerial");

    // Years pass: b's certificate has 1 of its 5 years left (less than a third).
    let year = Duration::from_secs(365 * 24 * 3600);
    let aged = aged_client_certificate(&b, &a, 4 * year, year);
    let path = link_file(&b, "a");
    let text = std::fs::read_to_string(&path).unwrap();
    let current = text
        .split("clientCertificate:")
        .nth(1)
        .expect("a clientCertificate field")
        .to_string();
    // Replace the block scalar's certificate lines with the aged certificate's.
    let indent = current
        .lines()
        .nth(1)
        .map(|l| &l[..l.len() - l.trim_start().len()])
        .unwrap()
        .to_string();
    let old_body: String = current
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(&indent) || l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let new_body: String = aged.lines().map(|l| format!("{indent}{l}\n")).collect();
    let updated = text.replacen(&old_body, &new_body, 1);
    assert_ne!(
        updated,
        text,
        "the certificate in {} was not replaced",
        path.display()
    );
    std::fs::write(&path, &updated).unwrap();

    b.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while peer_field(&a, "certificateSerial") == serial {
        assert!(
            Instant::now() < deadline,
            "b did not renew at start:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log().contains("link certificate renewed") {
        assert!(Instant::now() < deadline, "{}", b.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let renewed = std::fs::read_to_string(&path).unwrap();
    assert_ne!(
        renewed, updated,
        "links/a.yaml still holds the aged certificate"
    );
    b.wait_link(
        Duration::from_secs(10),
        "up with the renewed certificate",
        is_link("up", "a"),
    );
}
