//! Black-box tests of a link deleted and made again while a listener serves a key across it:
//! as soon as `listener list` says `active`, the first client's flow must pass, also while
//! the deleted link is still closing (its peer has not hung up yet) and the new one is not up.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Echo, Site, admin_json, expose_echo, is_link, link_over, ok};
use serde_json::Value;

/// One small exchange through `addr`: `Ok` when the bytes came back whole, else what the
/// client saw.
fn one_echo(addr: &str, round: usize) -> Result<(), String> {
    let msg = format!("round {round}: the first flow after the relink");
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    c.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    c.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    if back == msg.as_bytes() {
        Ok(())
    } else {
        Err(format!("{} bytes back of {}", back.len(), msg.len()))
    }
}

/// The newest recent flow record of `site` for key `echo` in `role`.
fn last_record(site: &Site, role: &str) -> Option<Value> {
    admin_json(site, "/v1/flows")["recent"]
        .as_array()?
        .iter()
        .rfind(|r| r["routingKey"] == "echo" && r["role"] == role)
        .cloned()
}

/// A TCP relay on loopback in front of a site's link port, which can hold a link the way a
/// slow network or proxy does: [`Relay::freeze`] stops forwarding on the connections it has
/// (neither a close frame nor a hang-up passes), and [`Relay::hold_new`] keeps new connections
/// waiting, unforwarded, until [`Relay::release_new`]. Threads stop and sockets close on drop.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    held: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicBool::new(false));
        let (stop2, epoch2, held2) = (stop.clone(), epoch.clone(), held.clone());
        let accept = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (stop, epoch, held) = (stop2.clone(), epoch2.clone(), held2.clone());
                pumps.push(std::thread::spawn(move || {
                    relay_one(down, upstream, &stop, &epoch, &held)
                }));
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        Relay {
            port,
            stop,
            epoch,
            held,
            accept: Some(accept),
        }
    }

    /// From now on the connections relayed so far forward nothing more.
    fn freeze(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// From now on new connections (and those waiting) are held, not forwarded.
    fn hold_new(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    /// The connections held are forwarded, and new ones at once.
    fn release_new(&self) {
        self.held.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Relays one connection to `upstream` once it is not held, until either side ends, the
/// relay stops, or its epoch moves (then it holds both sockets open and forwards nothing).
fn relay_one(
    down: TcpStream,
    upstream: u16,
    stop: &AtomicBool,
    epoch: &AtomicU64,
    held: &AtomicBool,
) {
    let mine = epoch.load(Ordering::Relaxed);
    while held.load(Ordering::Relaxed) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    down.set_nonblocking(false).unwrap();
    let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::scope(|s| {
        s.spawn(|| pump(down, up, stop, epoch, mine));
        pump(up2, down2, stop, epoch, mine);
    });
}

/// Copies `from` to `to` while the epoch is `mine`; after that only waits for the stop.
fn pump(mut from: TcpStream, mut to: TcpStream, stop: &AtomicBool, epoch: &AtomicU64, mine: u64) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if epoch.load(Ordering::Relaxed) != mine {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) if epoch.load(Ordering::Relaxed) != mine => {}
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            // Bytes read across a freeze are held back with the rest.
            Ok(_) if epoch.load(Ordering::Relaxed) != mine => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Listener `echo`'s status and detail in `listener list`.
fn listener_echo(site: &Site) -> (String, String) {
    let o = site.run(&["listener", "list", "--output", "json"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = v
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "echo"))
        .cloned()
        .unwrap_or_default();
    (
        l["status"].as_str().unwrap_or_default().to_owned(),
        l["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// When a link entered its state (`since`, RFC 3339 with milliseconds).
fn since(l: &Value) -> time::OffsetDateTime {
    let s = l["since"].as_str().unwrap_or_default();
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("since {s:?}: {e}"))
}

const NO_TARGET: &str =
    "key \"echo\" is served by west, which is unreachable from here (no link path)";

/// Waits (at most 10 s: `dead_after` + the linger is 6 s) until no link to west is `closing`,
/// so that a round starts with only the link it deletes: a `closing` link seen after the
/// delete is that one, and the counts are exact.
fn no_link_closing(site: &Site, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let links = site.links();
        let closing: Vec<&Value> = links
            .iter()
            .filter(|l| l["peer_site_name"] == "west" && l["status"] == "closing")
            .collect();
        if closing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: a link to west is still closing after 10 s: {closing:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What [`watch_close`] saw after a delete + apply of the link to west.
#[derive(Debug, Default)]
struct CloseSeen {
    /// Samples taken (each: `link list`, `listener list`, `/metrics`, `site status`).
    samples: usize,
    /// When the listener was first `no-target` (from the delete).
    no_target_after: Option<Duration>,
    /// When `link list` first showed the deleted link `closing` with its reason.
    closing_after: Option<Duration>,
    /// The statuses of the links to west in that sample.
    closing_statuses: Vec<String>,
    /// `/metrics` counted it: `skiff_links{status="closing"} 1`.
    metrics_closing: bool,
    /// `site status` counted it: `links: 0 up, 1 connecting, 0 refused, 1 closing`.
    status_closing: bool,
}

/// Right after a delete + apply of the link to west (no link closing before it,
/// [`no_link_closing`]), while the new link cannot come up (its
/// peer stopped or its connection held): polls `link list`, `listener list`, `/metrics` and
/// `site status` together until each has shown the deleted link closing and the listener has
/// said `no-target`, or `within` is up. Once the site has acted on the delete (the link seen
/// `closing` or the listener `no-target`; `apply` returns before the site reloads), every
/// sample must show no link to west `up` (it did until the closing link's peer hung up,
/// before the status said the truth); a sample whose `link list` shows the link `closing`
/// must find the listener `no-target` with the reason (not `active` on the link being
/// closed). It does not race the linger: the closing entry only has to be caught once, and no
/// sample may contradict it.
fn watch_close(site: &Site, round: usize, deleted: Instant, within: Duration) -> CloseSeen {
    let mut seen = CloseSeen::default();
    let deadline = Instant::now() + within;
    while seen.samples < 1000 && Instant::now() < deadline {
        seen.samples += 1;
        let links = site.links();
        let west: Vec<&Value> = links
            .iter()
            .filter(|l| l["peer_site_name"] == "west")
            .collect();
        let acted =
            |seen: &CloseSeen| seen.closing_after.is_some() || seen.no_target_after.is_some();
        assert!(
            !acted(&seen) || !west.iter().any(|l| l["status"] == "up"),
            "round {round}: a link to west shows up while the deleted one closes and the new \
             one cannot be up: {west:#?}"
        );
        let closing = west.iter().any(|l| {
            l["status"] == "closing" && l["reason"] == "link removed or changed at the dialing site"
        });
        let listener = listener_echo(site);
        if closing {
            assert_eq!(
                listener,
                ("no-target".to_owned(), NO_TARGET.to_owned()),
                "round {round}: the listener is not no-target while the link is closing: \
                 {west:#?}"
            );
            if seen.closing_after.is_none() {
                seen.closing_after = Some(deleted.elapsed());
                seen.closing_statuses = west
                    .iter()
                    .map(|l| l["status"].as_str().unwrap_or_default().to_owned())
                    .collect();
            }
        }
        if listener.0 == "no-target" && seen.no_target_after.is_none() {
            assert_eq!(listener.1, NO_TARGET, "round {round}");
            seen.no_target_after = Some(deleted.elapsed());
        }
        let m = common::admin_text(site, "/metrics");
        let line = |prefix: &str| {
            m.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("round {round}: no {prefix} in /metrics:\n{m}"))
                .to_owned()
        };
        if acted(&seen) {
            assert_eq!(
                line("skiff_links{status=\"up\"}"),
                "skiff_links{status=\"up\"} 0",
                "round {round}"
            );
            let up = line("skiff_link_up{link=\"west\"");
            assert!(up.ends_with(" 0"), "round {round}: {up}");
        }
        seen.metrics_closing |=
            line("skiff_links{status=\"closing\"}") == "skiff_links{status=\"closing\"} 1";
        let status = common::text(&site.run(&["site", "status"]));
        assert!(
            !acted(&seen) || status.contains("links: 0 up, "),
            "round {round}: {status}"
        );
        seen.status_closing |= status.contains("links: 0 up, 1 connecting, 0 refused, 1 closing");
        if seen.closing_after.is_some()
            && seen.no_target_after.is_some()
            && seen.metrics_closing
            && seen.status_closing
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        seen.closing_after.is_some() && seen.metrics_closing && seen.status_closing,
        "round {round}: the deleted link was not shown closing with its reason in link list, \
         /metrics and site status: {seen:?}"
    );
    assert!(
        seen.no_target_after.is_some(),
        "round {round}: the listener never said no-target within {within:?}: {seen:?}"
    );
    seen
}

/// east links to west over TLS/TCP through a relay; west serves `echo`, east listens for it.
/// Each round: the relay freezes the link up now (its close frame never reaches west, so
/// east's end lingers) and holds the next connection until the test releases it; the link is
/// deleted and applied again; while the new link is held back, the old one must show
/// `closing` and the listener `no-target` (with the reason), no link to west `up`
/// ([`watch_close`]); then the relay lets the new link through, and as soon as the listener
/// says `active`, one flow, which must pass, in every round.
#[test]
fn a_listener_is_active_only_when_a_flow_would_pass_across_a_relink() {
    const ROUNDS: usize = 4;
    let echo = Echo::start();
    let mut west = Site::create_on_fixed_port("west");
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    let west_port = west.link_port();
    let relay = Relay::start(west_port);
    link_over(&east, &west, "tls");
    let direct = east.dir.with_file_name("direct-links.yaml");
    std::fs::write(
        &direct,
        ok(&["get", "links", "-o", "yaml", "--dir", east.d()]).stdout,
    )
    .unwrap();
    let yaml = std::fs::read_to_string(&direct).unwrap();
    let from = format!("127.0.0.1:{west_port}");
    assert!(yaml.contains(&from), "{yaml}");
    let relayed = east.dir.with_file_name("links.yaml");
    std::fs::write(
        &relayed,
        yaml.replace(&from, &format!("127.0.0.1:{}", relay.port)),
    )
    .unwrap();
    ok(&["apply", "-f", relayed.to_str().unwrap(), "--dir", east.d()]);
    east.wait_link(Duration::from_secs(10), "up to west", |l| {
        is_link("up", "west")(l)
            && l["endpoint"].as_str() == Some(&format!("127.0.0.1:{}", relay.port))
    });
    expose_echo(&echo, &west, &east);
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    one_echo(&addr, 0).expect("a flow before any relink");

    let started = Instant::now();
    let mut refused = Vec::new();
    let mut waits = Vec::new();
    let mut shown = Vec::new();
    for round in 1..=ROUNDS {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{round} rounds took {:?}",
            started.elapsed()
        );
        let old = east.wait_link(Duration::from_secs(10), "up before the delete", |l| {
            is_link("up", "west")(l)
        });
        // The previous round's link, its close frozen, lingers up to 2 s.
        no_link_closing(&east, round);
        relay.freeze();
        relay.hold_new();
        let deleted = Instant::now();
        ok(&["link", "delete", "west", "--dir", east.d()]);
        ok(&["apply", "-f", relayed.to_str().unwrap(), "--dir", east.d()]);
        // While the old link closes and the new one is held back, the old one shows closing
        // and the listener says why it has no target (polled: the close and the withdrawal
        // run in the site, not in `apply`).
        shown.push(watch_close(&east, round, deleted, Duration::from_secs(10)));
        relay.release_new();
        // The new link: it entered `up` after the old one did (`since`), which is closing.
        east.wait_link(Duration::from_secs(10), "up again", |l| {
            is_link("up", "west")(l) && since(l) > since(&old)
        });
        let addr = east.wait_listener_active("echo", Duration::from_secs(10));
        waits.push(deleted.elapsed());
        let tried = Instant::now();
        if let Err(client) = one_echo(&addr, round) {
            let ingress = last_record(&east, "ingress");
            let reason = ingress.as_ref().map(|r| {
                format!(
                    "outcome {}, reason {}",
                    r["outcome"],
                    r["reason"].as_str().unwrap_or_default()
                )
            });
            eprintln!(
                "round {round}: active {:?} after the delete, yet the flow failed after {:?}: {client}; east's ingress record: {reason:?}",
                waits[round - 1],
                tried.elapsed()
            );
            refused.push((round, client, reason));
        }
    }
    eprintln!(
        "{ROUNDS} relinks (new connection held until the close was seen) in {:?}: active after {waits:?}; first flow refused in {} of them; what was seen while the new link was held: {shown:#?}",
        started.elapsed(),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "after {} of {ROUNDS} relinks the listener said active and the first flow was refused: {refused:#?}",
        refused.len()
    );
}

/// A running site's process stopped with SIGSTOP (by its PID) until dropped (SIGCONT).
struct Stopped(u32);

impl Stopped {
    fn new(site: &Site) -> Stopped {
        let pid = site.pid();
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// east links to west over QUIC. Each round west is stopped (SIGSTOP), so the deleted link's
/// close frame is not read and east's end of it lingers, and the new link cannot come up;
/// the link is deleted and applied again. The old link must show `closing` (in `link list`,
/// `/metrics` and `site status`), and whenever it does the listener must say `no-target` with
/// the reason (not stay `active` on the link being closed), with no link to west `up`
/// ([`watch_close`]); then west resumes, and as soon as the listener is `active` again, one
/// flow, which must pass.
#[test]
fn over_quic_a_listener_is_not_active_on_a_link_being_closed() {
    const ROUNDS: usize = 3;
    let echo = Echo::start();
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    link_over(&east, &west, "quic");
    east.wait_link(Duration::from_secs(10), "up to west", is_link("up", "west"));
    expose_echo(&echo, &west, &east);
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    one_echo(&addr, 0).expect("a flow before any relink");
    let saved = east.dir.with_file_name("links.yaml");
    std::fs::write(
        &saved,
        ok(&["get", "links", "-o", "yaml", "--dir", east.d()]).stdout,
    )
    .unwrap();
    let started = Instant::now();
    let mut withdrawn = Vec::new();
    let mut back = Vec::new();
    for round in 1..=ROUNDS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{round} rounds took {:?}",
            started.elapsed()
        );
        no_link_closing(&east, round);
        let stopped = Stopped::new(&west);
        let deleted = Instant::now();
        ok(&["link", "delete", "west", "--dir", east.d()]);
        ok(&["apply", "-f", saved.to_str().unwrap(), "--dir", east.d()]);
        let seen = watch_close(&east, round, deleted, Duration::from_secs(10));
        drop(stopped);
        eprintln!("round {round}: with the peer stopped: {seen:?}");
        withdrawn.push(seen);
        let addr = east.wait_listener_active("echo", Duration::from_secs(15));
        back.push(deleted.elapsed());
        one_echo(&addr, round)
            .unwrap_or_else(|e| panic!("round {round}: active again, yet the flow failed: {e}"));
    }
    eprintln!(
        "quic: {ROUNDS} relinks with the peer stopped: {withdrawn:#?}; active again (peer \
         resumed, new link up) after {back:?}; every first flow passed"
    );
}
