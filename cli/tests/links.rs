//! Black-box tests of links through the real `skiff` binary: two sites linked by a token over
//! QUIC and over TLS/TCP, and sites killed with SIGKILL that re-link without a new token.

mod common;

use std::time::{Duration, Instant};

use common::{Site, is_link, ok};

fn link_two_sites(transport: &str) {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    let token = west.dir.with_file_name("west.token");
    west.issue(&token, &[]);
    let started = Instant::now();
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--transport",
        transport,
        "--dir",
        east.d(),
    ]);
    let out = east.wait_link(Duration::from_secs(2), "up to west", is_link("up", "west"));
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["transport"], transport, "{out:#}");
    let inbound = west.wait_link(
        Duration::from_secs(2),
        "up from east",
        is_link("up", "east"),
    );
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(inbound["transport"], transport, "{inbound:#}");
    let took = started.elapsed();
    eprintln!("{transport}: redemption to link up on both sides in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the link took {took:?} from redemption to up on both sides"
    );

    // A clean stop (SIGTERM) exits 0 and the other side notices.
    assert!(east.stop().success(), "{}", east.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    while west.links().iter().any(is_link("up", "east")) {
        assert!(
            Instant::now() < deadline,
            "west still shows east up after east stopped"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn two_sites_link_with_a_token_over_quic() {
    link_two_sites("quic");
}

#[test]
fn two_sites_link_with_a_token_over_tls() {
    link_two_sites("tls");
}

#[test]
fn sites_killed_with_sigkill_relink_without_a_token_within_10s() {
    let mut west = Site::create_on_fixed_port("west");
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--dir",
        east.d(),
    ]);
    east.wait_link(Duration::from_secs(5), "up", is_link("up", "west"));

    // The dialing side dies and comes back.
    east.kill();
    east.start();
    let t = Instant::now();
    east.wait_link(
        Duration::from_secs(10),
        "up after east restart",
        is_link("up", "west"),
    );
    eprintln!("east restarted: link up again in {:?}", t.elapsed());

    // The accepting side dies and comes back on the same port.
    west.kill();
    east.wait_link(Duration::from_secs(10), "down after west died", |l| {
        l["peer_site_name"] == "west" && l["status"] != "up"
    });
    west.start();
    let t = Instant::now();
    east.wait_link(
        Duration::from_secs(10),
        "up after west restart",
        is_link("up", "west"),
    );
    west.wait_link(
        Duration::from_secs(10),
        "inbound after restart",
        is_link("up", "east"),
    );
    eprintln!("west restarted: link up again in {:?}", t.elapsed());
}

#[test]
fn a_redemption_answered_is_never_lost_to_sigkill() {
    // The issuer commits the linked site and the spent grant before it answers, so killing it
    // right after an answer must not lose the link.
    let mut west = Site::create_on_fixed_port("west");
    let east = Site::create("east", false);
    west.start();
    for round in 0..3 {
        let token = west.dir.with_file_name(format!("t{round}.yaml"));
        west.issue(&token, &[]);
        let name = format!("l{round}");
        ok(&[
            "token",
            "redeem",
            token.to_str().unwrap(),
            "--name",
            &name,
            "--dir",
            east.d(),
        ]);
        west.kill();
        west.start();
    }
    // Every redeemed link comes up after the kills (east dials all three).
    let mut east = east;
    east.start();
    for round in 0..3 {
        let name = format!("l{round}");
        east.wait_link(Duration::from_secs(10), &name, |l| {
            l["name"] == name.as_str() && l["status"] == "up"
        });
    }
    // And a spent one-time grant stays spent.
    let spent = west.dir.with_file_name("t0.yaml");
    let north = Site::create("north", false);
    let err = common::fails(&[
        "token",
        "redeem",
        spent.to_str().unwrap(),
        "--dir",
        north.d(),
    ]);
    assert!(err.contains("already redeemed"), "{err}");
}
