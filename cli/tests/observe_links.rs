//! Black-box tests of what links show operators, through real `skiff site run` processes on
//! loopback: bytes each way, round trip and ups in `GET /v1/links` and in `/metrics` (over
//! QUIC and TLS/TCP, counters never decreasing), a link that goes down and comes back, and
//! refusals (a certificate from another network, a revoked site) worded the same in the
//! accepting site's log and in the dialing site's `skiff link list`. A link's `/metrics`
//! series keep their labels and never decrease across a disconnect and reconnect, or when
//! one of two sites of one name leaves; an outbound link names its peer before it connects.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Echo, Site, admin_text, expose_echo, is_link, link_over, ok, text};
use serde_json::Value;

/// The link named `name` in `GET /v1/links`.
fn link_status(site: &Site, name: &str) -> Value {
    let v: Value = serde_json::from_str(&admin_text(site, "/v1/links")).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no link {name} at {}: {v:#}", site.name))
}

/// Polls the link `name` (every 50 ms, at most `within`) until `pred` holds.
fn wait_status(site: &Site, name: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let l = link_status(site, name);
        if pred(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{}: link {name} not as expected within {within:?}: {l:#}",
            site.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample of a Prometheus text: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

fn parse_metrics(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of `name` whose labels include every `k="v"` of `want`.
fn metric(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|s| s.value)
}

/// Every counter-like sample of `before` (`_total`, histogram `_count`, `_sum`, `_bucket`)
/// that is in `after` too has not decreased there.
fn assert_counters_never_decrease(before: &[Sample], after: &[Sample]) -> usize {
    let mut compared = 0;
    for b in before.iter().filter(|s| {
        s.name.starts_with("skiff_link")
            && ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .any(|suffix| s.name.ends_with(suffix))
    }) {
        if let Some(a) = after
            .iter()
            .find(|a| a.name == b.name && a.labels == b.labels)
        {
            assert!(
                a.value >= b.value,
                "counter {}{{{}}} went down: {} then {}",
                b.name,
                b.labels,
                b.value,
                a.value
            );
            compared += 1;
        }
    }
    compared
}

/// The `skiff_link_*` series (name and labels, histogram buckets aside) of the link `name`.
fn link_series(samples: &[Sample], name: &str) -> std::collections::BTreeSet<String> {
    samples
        .iter()
        .filter(|s| {
            s.name.starts_with("skiff_link_")
                && !s.name.ends_with("_bucket")
                && s.labels.contains(&format!("link=\"{name}\""))
        })
        .map(|s| format!("{}{{{}}}", s.name, s.labels))
        .collect()
}

/// Sends `n` bytes through the echo at `addr` and reads them back; panics unless they are
/// intact. Returns how long it took.
fn echo_bytes(addr: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let pattern = |i: usize| (i * 31 % 251) as u8;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
        let mut sent = 0;
        while sent < n {
            let k = chunk.len().min(n - sent);
            w.write_all(&chunk[..k]).unwrap();
            sent += k;
        }
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < n {
        let k = c.read(&mut buf).expect("echo read");
        assert!(k > 0, "echo ended after {got} of {n} bytes");
        for (j, b) in buf[..k].iter().enumerate() {
            assert_eq!(
                *b,
                pattern((got + j) % (64 * 1024)),
                "byte {} changed",
                got + j
            );
        }
        got += k;
    }
    writer.join().unwrap();
    t0.elapsed()
}

/// Whether 4 bytes sent through the echo at `addr` come back within 2 s.
fn echo_answers(addr: &str) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut back = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok() && &back == b"ping"
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {v:#}"))
}

fn counters_rtt_and_metrics(transport: &str) {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    link_over(&east, &west, transport);
    east.wait_link(Duration::from_secs(5), "up to west", is_link("up", "west"));
    west.wait_link(
        Duration::from_secs(5),
        "up from east",
        is_link("up", "east"),
    );
    let echo = Echo::start();
    expose_echo(&echo, &west, &east);
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    // The key is known at east once west's advertisement arrived: a first small echo.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !echo_answers(&addr) {
        assert!(
            Instant::now() < deadline,
            "the echo never answered through east"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out_before = link_status(&east, "west");
    let in_before = link_status(&west, "from-east");
    let m1 = parse_metrics(&admin_text(&east, "/metrics"));
    const MOVED: usize = 8 * 1024 * 1024;
    let took = echo_bytes(&addr, MOVED);
    let moved = MOVED as u64;

    // Both ends counted the 8 MiB each way; the round trip is known; the link came up once.
    let up_rtt = |l: &Value| l["rtt_ms"].as_f64().is_some();
    let out = wait_status(&east, "west", Duration::from_secs(5), up_rtt);
    let inb = wait_status(&west, "from-east", Duration::from_secs(5), up_rtt);
    let delta = |after: &Value, before: &Value, f: &str| n(after, f) - n(before, f);
    let (east_sent, east_received) = (
        delta(&out, &out_before, "bytes_sent"),
        delta(&out, &out_before, "bytes_received"),
    );
    let (west_sent, west_received) = (
        delta(&inb, &in_before, "bytes_sent"),
        delta(&inb, &in_before, "bytes_received"),
    );
    eprintln!(
        "{transport}: {moved} bytes each way in {took:?}: east sent {east_sent} received {east_received}, west sent {west_sent} received {west_received}; rtt {} ms at east, {} ms at west",
        out["rtt_ms"], inb["rtt_ms"]
    );
    for (what, d) in [
        ("east sent", east_sent),
        ("east received", east_received),
        ("west sent", west_sent),
        ("west received", west_received),
    ] {
        assert!(d >= moved, "{transport}: {what} {d} < {moved}");
    }
    let overhead = |sent: u64, received: u64| {
        // What arrived is the data plus framing (20 % + 64 KiB), and was sent. TLS/TCP loses
        // nothing on the way; a QUIC sender also counts retransmissions of datagrams lost on
        // loopback under a bulk transfer.
        let framing = moved / 5 + 64 * 1024;
        assert!(
            received <= moved + framing && received <= sent + 64 * 1024,
            "{transport}: sent {sent}, received {received}"
        );
        if transport == "tls" {
            assert!(
                sent.abs_diff(received) <= sent / 5 + 64 * 1024,
                "{transport}: sent {sent}, received {received}"
            );
        }
    };
    overhead(east_sent, west_received);
    overhead(west_sent, east_received);
    for l in [&out, &inb] {
        let rtt = l["rtt_ms"].as_f64().unwrap();
        assert!(
            rtt > 0.0 && rtt < 1000.0,
            "{transport}: rtt {rtt} ms: {l:#}"
        );
        assert_eq!(l["ups"], 1, "{l:#}");
        assert_eq!(l["transport"], transport, "{l:#}");
    }

    // /metrics has the per-link families with the same figures, and no counter went down.
    std::thread::sleep(Duration::from_millis(1500));
    let m2 = parse_metrics(&admin_text(&east, "/metrics"));
    let labels = [
        ("link", "west"),
        ("peer", "west"),
        ("link_direction", "outbound"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = labels.to_vec();
        l.push(extra);
        l
    };
    let got = |name: &str, want: &[(&str, &str)]| {
        metric(&m2, name, want).unwrap_or_else(|| {
            panic!(
                "{transport}: no {name} {want:?} in /metrics:\n{}",
                m2.iter()
                    .filter(|s| s.name.starts_with("skiff_link"))
                    .map(|s| format!("{}{{{}}} {}", s.name, s.labels, s.value))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    };
    assert_eq!(got("skiff_link_up", &labels), 1.0);
    let on = |t: &'static str| {
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        l.push(("transport", t));
        metric(&m2, "skiff_link_transport", &l)
    };
    let (this, other) = if transport == "quic" {
        ("quic", "tls")
    } else {
        ("tls", "quic")
    };
    assert_eq!(on(this), Some(1.0), "{transport}: skiff_link_transport");
    assert_eq!(on(other), None, "{transport}: skiff_link_transport");
    assert!(
        m2.iter()
            .filter(|s| s.name.starts_with("skiff_link_") && s.name != "skiff_link_transport")
            .all(|s| !s.labels.contains("transport=")),
        "the transport is a label of skiff_link_transport only"
    );
    assert_eq!(got("skiff_link_ups_total", &labels), 1.0);
    let sent = got("skiff_link_bytes_total", &with(("direction", "sent")));
    let received = got("skiff_link_bytes_total", &with(("direction", "received")));
    assert!(
        sent >= n(&out, "bytes_sent") as f64 && received >= n(&out, "bytes_received") as f64,
        "{transport}: /metrics {sent}/{received}, /v1/links {out:#}"
    );
    let rtt = got("skiff_link_rtt_seconds", &labels);
    assert!(rtt > 0.0 && rtt < 1.0, "{transport}: rtt {rtt} s");
    let samples = got("skiff_link_rtt_samples_seconds_count", &labels);
    assert!(samples >= 1.0, "{transport}: {samples} round-trip samples");
    assert_eq!(got("skiff_links", &[("status", "up")]), 1.0);
    eprintln!(
        "{transport}: /metrics at east, link families:\n{}",
        m2.iter()
            .filter(|s| s.name.starts_with("skiff_link") && !s.name.ends_with("_bucket"))
            .map(|s| format!("{}{{{}}} {}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let compared = assert_counters_never_decrease(&m1, &m2);
    let m3 = parse_metrics(&admin_text(&east, "/metrics"));
    let compared3 = assert_counters_never_decrease(&m2, &m3);
    assert!(
        compared >= 10 && compared3 >= 10,
        "{compared} / {compared3}"
    );
    eprintln!(
        "{transport}: /metrics at east: sent {sent} received {received} bytes, rtt {rtt} s, {samples} rtt samples; {compared} + {compared3} counter samples compared between scrapes, none went down"
    );
}

#[test]
fn link_counters_rtt_and_metrics_over_quic() {
    counters_rtt_and_metrics("quic");
}

#[test]
fn link_counters_rtt_and_metrics_over_tls() {
    counters_rtt_and_metrics("tls");
}

#[test]
fn a_link_that_goes_down_and_comes_back_counts_two_ups() {
    let mut west = Site::create_on_fixed_port("west");
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    link_over(&east, &west, "auto");
    let first = wait_status(&east, "west", Duration::from_secs(5), |l| {
        l["status"] == "up" && n(l, "bytes_sent") > 0
    });
    assert_eq!(first["ups"], 1, "{first:#}");
    // Wait for a round-trip sample, so the histogram is in the first scrape too.
    wait_status(&east, "west", Duration::from_secs(5), |l| {
        l["rtt_ms"].as_f64().is_some()
    });
    let m1 = parse_metrics(&admin_text(&east, "/metrics"));

    assert!(west.stop().success(), "{}", west.log());
    let down = wait_status(&east, "west", Duration::from_secs(10), |l| {
        l["status"] != "up"
    });
    assert_eq!(
        down["rtt_ms"],
        Value::Null,
        "no round trip while down: {down:#}"
    );
    assert!(
        n(&down, "bytes_sent") >= n(&first, "bytes_sent"),
        "{down:#}"
    );
    west.start();
    let t = Instant::now();
    let again = wait_status(&east, "west", Duration::from_secs(10), |l| {
        l["status"] == "up"
    });
    eprintln!(
        "west restarted: east's link up again in {:?}, ups {}, bytes sent {} -> {}",
        t.elapsed(),
        again["ups"],
        first["bytes_sent"],
        again["bytes_sent"]
    );
    assert_eq!(again["ups"], 2, "{again:#}");
    assert!(
        n(&again, "bytes_sent") >= n(&down, "bytes_sent"),
        "{again:#}"
    );
    let m = parse_metrics(&admin_text(&east, "/metrics"));
    assert_eq!(
        metric(&m, "skiff_link_ups_total", &[("link", "west")]),
        Some(2.0),
        "{m:#?}"
    );
    // The same series before and after (labels from the configuration, the transport in a
    // gauge of its own), and none of their counters went down.
    let (s1, s2) = (link_series(&m1, "west"), link_series(&m, "west"));
    // (auto may come back on QUIC or on TLS/TCP: only skiff_link_transport may differ.)
    let (transports, counters): (Vec<String>, Vec<String>) = s1
        .iter()
        .chain(&s2)
        .filter(|x| !x.starts_with("skiff_link_rtt_seconds"))
        .cloned()
        .partition(|x| x.starts_with("skiff_link_transport"));
    let kept = |s: &std::collections::BTreeSet<String>| {
        s.iter()
            .filter(|x| counters.contains(x))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&s1), kept(&s2), "labels changed over a relink");
    assert_eq!(kept(&s1).len(), 6, "{s1:#?}");
    let compared = assert_counters_never_decrease(&m1, &m);
    assert!(compared >= 10, "{compared} counter samples compared");
    eprintln!(
        "relink: {} series of link west kept their labels (transport before/after: {transports:?}), {compared} counter samples compared, none went down",
        kept(&s2).len()
    );
}

#[test]
fn an_outbound_link_names_its_peer_before_it_first_connects() {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    link_over(&east, &west, "auto");
    east.wait_link(Duration::from_secs(5), "up to west", is_link("up", "west"));
    assert!(west.stop().success(), "{}", west.log());
    assert!(east.stop().success(), "{}", east.log());
    // east starts again with west gone: its link has never connected in this process.
    east.start();
    let l = wait_status(&east, "west", Duration::from_secs(5), |l| {
        l["status"] == "connecting"
    });
    assert_eq!(l["peer_site_name"], "west", "{l:#}");
    assert_eq!(l["ups"], 0, "{l:#}");
    // What a person reads: the peer's name, not the first digits of its id.
    let o = east.run(&["network", "status"]);
    let shown = text(&o);
    let id = l["peer_site_id"].as_str().unwrap();
    assert!(
        shown.contains("link to west") && !shown.contains(&id[..8]),
        "{shown}"
    );
    let m = parse_metrics(&admin_text(&east, "/metrics"));
    let labels = [
        ("link", "west"),
        ("peer", "west"),
        ("link_direction", "outbound"),
    ];
    assert_eq!(metric(&m, "skiff_link_up", &labels), Some(0.0), "{m:#?}");
    assert_eq!(
        metric(&m, "skiff_link_transport", &[("link", "west")]),
        None,
        "no transport before the first connection"
    );
}

/// Lines of `site`'s log at WARN that contain every one of `words`.
fn warn_lines(site: &Site, words: &[&str]) -> Vec<String> {
    site.log()
        .lines()
        .filter(|l| l.contains("WARN") && words.iter().all(|w| l.contains(w)))
        .map(String::from)
        .collect()
}

/// Waits (at most `within`) for a WARN line of `site` with every one of `words`.
fn wait_warn(site: &Site, within: Duration, words: &[&str]) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = warn_lines(site, words).into_iter().next() {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{} logged no WARN line with {words:?} within {within:?}:\n{}",
            site.name,
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_link_certificate_from_another_network_is_refused_in_the_same_words_at_both_ends() {
    use skiff_site_controller::resources::{Link, from_yaml, to_yaml};
    // west holds links to east and to north, two networks (two CAs). Its link file for east
    // is given north's certificate, as a link file mixed up between networks would.
    let mut east = Site::create("east", true);
    let mut north = Site::create("north", true);
    let mut west = Site::create("west", false);
    east.start();
    north.start();
    link_over(&west, &east, "auto");
    link_over(&west, &north, "auto");
    let path = |name: &str| west.dir.join("links").join(format!("{name}.yaml"));
    let read = |name: &str| -> Link {
        from_yaml(&std::fs::read_to_string(path(name)).unwrap(), &path(name)).unwrap()
    };
    let mut to_east = read("east");
    to_east.spec.client_certificate = read("north").spec.client_certificate;
    std::fs::write(path("east"), to_yaml(&to_east)).unwrap();
    west.start();

    let refused = west.wait_link(Duration::from_secs(15), "east refused", |l| {
        l["name"] == "east" && l["status"] == "refused"
    });
    let reason = refused["reason"].as_str().unwrap().to_string();
    let line = wait_warn(
        &east,
        Duration::from_secs(10),
        // "refused a QUIC connection from …" or "refused a connection on the link port
        // from …", as the dialer's happy eyeballs went.
        &["refused a", "from 127.0.0.1:", "check=ca"],
    );
    eprintln!("east logged: {line}\nwest's link list reason: {reason}");
    // The accepting side: who (address), which check, what to do.
    for words in [
        "not issued by this site's CA",
        "from another network, or from before this site was re-created",
        "the dialing site must redeem a new token issued by this site",
        "addr=127.0.0.1:",
    ] {
        assert!(line.contains(words), "east's line lacks {words:?}: {line}");
    }
    // The dialing side, in its link list: the same check and the same remedy.
    for words in [
        "refused this link: our link certificate was not issued by its CA",
        "from another network, or from before that site was re-created",
        "redeem a new token issued by that site",
    ] {
        assert!(
            reason.contains(words),
            "west's reason lacks {words:?}: {reason}"
        );
    }
    // And the link to north, with its own certificate, is up meanwhile.
    west.wait_link(Duration::from_secs(5), "north up", is_link("up", "north"));
}

#[test]
fn a_revoked_site_is_refused_in_the_same_words_at_both_ends() {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    link_over(&east, &west, "tls");
    east.wait_link(Duration::from_secs(5), "up to west", is_link("up", "west"));
    ok(&["link", "revoke", "east", "--dir", west.d()]);
    let refused = east.wait_link(Duration::from_secs(15), "refused by west", |l| {
        l["name"] == "west" && l["status"] == "refused"
    });
    let reason = refused["reason"].as_str().unwrap().to_string();
    let line = wait_warn(
        &west,
        Duration::from_secs(10),
        &["refused an inbound link from 127.0.0.1:", "check=revoked"],
    );
    eprintln!("west logged: {line}\neast's link list reason: {reason}");
    for words in [
        "was revoked here: its links are refused until the revocation is undone here",
        "skiff link revoke",
        "--undo",
    ] {
        assert!(line.contains(words), "west's line lacks {words:?}: {line}");
        assert!(
            reason.contains(words),
            "east's reason lacks {words:?}: {reason}"
        );
    }
    assert!(
        line.contains("site=") && line.contains("addr=127.0.0.1:"),
        "{line}"
    );
    assert!(reason.starts_with("peer 127.0.0.1:"), "{reason}");
    // The dialing site's own log says the same, and when it tries again.
    let dialer = wait_warn(
        &east,
        Duration::from_secs(5),
        &["link refused:", "retrying in 180 s"],
    );
    eprintln!("east logged: {dialer}");
    assert!(dialer.contains(&reason), "{dialer}");
    assert!(dialer.contains("link=west"), "{dialer}");
}

#[test]
fn two_sites_of_one_name_linking_here_are_named_in_a_warning() {
    let mut west = Site::create("west", true);
    let mut first = Site::create("east", false);
    let mut second = Site::create("east", false);
    west.start();
    first.start();
    second.start();
    link_over(&first, &west, "tls");
    first.wait_link(Duration::from_secs(5), "up to west", is_link("up", "west"));
    link_over(&second, &west, "tls");
    second.wait_link(Duration::from_secs(5), "up to west", is_link("up", "west"));
    let line = wait_warn(
        &west,
        Duration::from_secs(5),
        &["two sites named east link here", "check=name-taken"],
    );
    eprintln!("west logged: {line}");
    assert!(line.contains("give one another name"), "{line}");
    // Both links stay up: a warning, not a refusal.
    let up = west
        .links()
        .iter()
        .filter(|l| l["name"] == "from-east" && l["status"] == "up")
        .count();
    assert_eq!(up, 2, "{:#?}", west.links());

    // One series for both (same labels), and when the second leaves it does not go down.
    std::thread::sleep(Duration::from_millis(1500));
    let m1 = parse_metrics(&admin_text(&west, "/metrics"));
    let inbound = [
        ("link", "from-east"),
        ("peer", "east"),
        ("link_direction", "inbound"),
    ];
    let sent = |m: &[Sample]| {
        let mut l = inbound.to_vec();
        l.push(("direction", "sent"));
        metric(m, "skiff_link_bytes_total", &l)
    };
    assert_eq!(metric(&m1, "skiff_link_ups_total", &inbound), Some(2.0));
    assert_eq!(metric(&m1, "skiff_link_up", &inbound), Some(1.0));
    assert!(second.stop().success(), "{}", second.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    while west
        .links()
        .iter()
        .filter(|l| l["name"] == "from-east")
        .count()
        != 1
    {
        assert!(
            Instant::now() < deadline,
            "the second east's link is still listed: {:#?}",
            west.links()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m2 = parse_metrics(&admin_text(&west, "/metrics"));
    assert_eq!(
        link_series(&m1, "from-east"),
        link_series(&m2, "from-east"),
        "labels changed"
    );
    assert_eq!(metric(&m2, "skiff_link_ups_total", &inbound), Some(2.0));
    let compared = assert_counters_never_decrease(&m1, &m2);
    assert!(compared >= 10, "{compared} counter samples compared");
    eprintln!(
        "one of two sites named east left: bytes sent to from-east {:?} then {:?}, ups 2 then 2; {compared} counter samples compared, none went down",
        sent(&m1),
        sent(&m2)
    );
}

#[test]
fn a_link_to_a_site_re_created_with_a_new_ca_is_refused_in_the_same_words_at_both_ends() {
    // east is deleted and created again on the same port: a new CA. west's link still pins
    // the old one, so west refuses east's certificate and east hears why.
    let mut east = Site::create_on_fixed_port("east");
    let mut west = Site::create("west", false);
    east.start();
    west.start();
    link_over(&west, &east, "auto");
    let up = west.wait_link(Duration::from_secs(5), "up to east", is_link("up", "east"));
    let endpoint = up["endpoint"].as_str().unwrap().to_string();
    let port = endpoint.rsplit_once(':').unwrap().1.to_string();
    assert!(east.stop().success(), "{}", east.log());
    ok(&["site", "delete", "--dir", east.d()]);
    ok(&[
        "site",
        "create",
        "east",
        "--enable-link-access",
        "--link-host",
        "127.0.0.1",
        "--link-port",
        &port,
        "--dir",
        east.d(),
    ]);
    east.start();
    let refused = west.wait_link(Duration::from_secs(15), "refused by east", |l| {
        l["name"] == "east" && l["status"] == "refused"
    });
    let reason = refused["reason"].as_str().unwrap().to_string();
    let line = wait_warn(
        &east,
        Duration::from_secs(10),
        &["refused a", "from 127.0.0.1:", "check=peer-distrusts-us"],
    );
    eprintln!("east logged: {line}\nwest's link list reason: {reason}");
    for words in [
        "does not trust this router's certificate",
        "from another network, or from before this site was re-created",
        "the dialing site must redeem a new token from this site",
    ] {
        assert!(line.contains(words), "east's line lacks {words:?}: {line}");
    }
    for words in [
        "presents a certificate not signed by the CA pinned for this link",
        "from another network, or from before that site was re-created",
        "redeem a new token",
    ] {
        assert!(
            reason.contains(words),
            "west's reason lacks {words:?}: {reason}"
        );
    }
}
