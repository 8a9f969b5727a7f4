//! Attacks that claim the id of a site that is linked: east is linked to west over the same
//! transport; an attacker presents east's site id with a forged, expired, not-yet-valid or
//! wrongly keyed certificate. Each is refused with the reason in west's log, and east's link
//! is left alone: still up at both ends, same `since`, no "link down" logged.

use std::time::Duration;

use serde_json::Value;
use skiff_certs::{SiteCa, SiteId, link_client_config};

use super::common::{Site, ok};
use super::hostile::{
    State, Target, Via, attempt, block_on, dial_as, expired, forge_link_cert, new_key,
    not_yet_valid, target, valid_now, wait_log_line,
};

/// West accepts links; east is linked to it over one transport.
struct Scene {
    west: Site,
    east: Site,
    t: Target,
    via: Via,
    east_id: SiteId,
    /// east's link identity key (`link.key`): what its link certificate certifies.
    east_key: String,
    /// The link as each end lists it before the attack.
    at_west: Value,
    at_east: Value,
    before: State,
}

impl Scene {
    fn new(via: Via) -> Scene {
        let mut west = Site::create("west", true);
        let mut east = Site::create("east", false);
        west.start();
        let token = west.dir.with_file_name("for-east.token");
        west.issue(&token, &[]);
        ok(&[
            "token",
            "redeem",
            token.to_str().unwrap(),
            "--transport",
            via.name(),
            "--dir",
            east.d(),
        ]);
        east.start();
        let up = |l: &Value, peer: &str| {
            l["status"] == "up" && l["peer_site_name"] == peer && l["transport"] == via.name()
        };
        let at_west = west.wait_link(Duration::from_secs(15), "from east", |l| up(l, "east"));
        let at_east = east.wait_link(Duration::from_secs(15), "to west", |l| up(l, "west"));
        west.issue(&west.dir.with_file_name("unused.token"), &[]);
        let before = State::of(&west);
        assert_eq!(before.count("peers"), 1, "{before:?}");
        let status = east.run(&["site", "status", "--output", "json"]);
        let v: Value = serde_json::from_slice(&status.stdout).unwrap();
        let east_id = v["site"]["id"].as_str().unwrap().parse().unwrap();
        let east_key = std::fs::read_to_string(east.dir.join("link.key")).unwrap();
        let t = target(&west);
        Scene {
            west,
            east,
            t,
            via,
            east_id,
            east_key,
            at_west,
            at_east,
            before,
        }
    }

    /// West logged the refusal (a line with every one of `log_says`), and nothing else moved:
    /// east's link is the same link at both ends, the state files are as they were.
    fn assert_east_undisturbed(&self, log_says: &[&str]) -> String {
        let line = wait_log_line(&self.west, log_says);
        let same = |site: &Site, before: &Value| {
            let links = site.links();
            assert_eq!(links.len(), 1, "{}: {links:#?}", site.name);
            let now = &links[0];
            for field in ["status", "since", "name", "endpoint", "transport"] {
                assert_eq!(
                    now[field], before[field],
                    "{}: {field} changed: {now:#} (was {before:#})",
                    site.name
                );
            }
        };
        same(&self.west, &self.at_west);
        same(&self.east, &self.at_east);
        assert!(
            !self.west.log().contains("link down"),
            "{}",
            self.west.log()
        );
        assert!(
            !self.east.log().contains("link down"),
            "{}",
            self.east.log()
        );
        assert_eq!(State::of(&self.west), self.before, "state was changed");
        line
    }

    /// The log words of the transport this scene uses.
    fn transport_words(&self) -> &'static str {
        match self.via {
            Via::Tls => "transport=tls",
            Via::Quic => "transport=quic",
        }
    }
}

over_both_transports!(
    expired_certificate_with_the_linked_sites_id_and_key,
    not_yet_valid_certificate_with_the_linked_sites_id_and_key,
    right_ca_and_site_id_with_another_key,
    another_ca_with_the_linked_sites_id_and_key,
    hello_claiming_the_linked_site_over_another_sites_certificate,
    the_linked_sites_key_under_another_site_id,
);

fn expired_certificate_with_the_linked_sites_id_and_key(via: Via) {
    let s = Scene::new(via);
    let cert = forge_link_cert(
        &s.t.ca_pem,
        &s.t.ca_key_pem,
        s.east_id,
        &s.east_key,
        expired(),
    );
    let cfg = link_client_config(&cert, &s.east_key, &s.t.ca_pem, s.t.id).unwrap();
    let a = block_on(attempt(&s.t, via, cfg));
    a.assert_refused();
    eprintln!("{via:?} east's id, expired: refused after {:?}", a.took);
    s.assert_east_undisturbed(&[s.transport_words(), "client certificate expired at"]);
}

fn not_yet_valid_certificate_with_the_linked_sites_id_and_key(via: Via) {
    let s = Scene::new(via);
    let cert = forge_link_cert(
        &s.t.ca_pem,
        &s.t.ca_key_pem,
        s.east_id,
        &s.east_key,
        not_yet_valid(),
    );
    let cfg = link_client_config(&cert, &s.east_key, &s.t.ca_pem, s.t.id).unwrap();
    let a = block_on(attempt(&s.t, via, cfg));
    a.assert_refused();
    eprintln!(
        "{via:?} east's id, not yet valid: refused after {:?}",
        a.took
    );
    s.assert_east_undisturbed(&[
        s.transport_words(),
        "client certificate is not valid before",
    ]);
}

fn right_ca_and_site_id_with_another_key(via: Via) {
    // A thief of west's CA key mints a certificate for east's id; east's own key stays at
    // east, so the certificate certifies another key. The key check refuses it, and the
    // dialer is told why on both transports.
    let s = Scene::new(via);
    let key = new_key();
    let cert = forge_link_cert(&s.t.ca_pem, &s.t.ca_key_pem, s.east_id, &key, valid_now());
    let (reason, took) = block_on(dial_as(&s.t, via, s.east_id, &cert, &key));
    assert!(
        reason.contains("refused the link: the certificate for site")
            && reason.contains("certifies a key other than the one that site linked with"),
        "the dialer must be told why: {reason}"
    );
    eprintln!("{via:?} east's id, another key: refused after {took:?}");
    let line = s.assert_east_undisturbed(&["refused", s.transport_words(), "key other than"]);
    assert!(line.contains(&s.east_id.to_string()), "{line}");
}

fn another_ca_with_the_linked_sites_id_and_key(via: Via) {
    let s = Scene::new(via);
    let other = SiteCa::generate("mallory", SiteId::random()).unwrap();
    let cert = forge_link_cert(
        other.cert_pem(),
        other.key_pem(),
        s.east_id,
        &s.east_key,
        valid_now(),
    );
    let cfg = link_client_config(&cert, &s.east_key, &s.t.ca_pem, s.t.id).unwrap();
    let a = block_on(attempt(&s.t, via, cfg));
    a.assert_refused();
    eprintln!("{via:?} east's id, another CA: refused after {:?}", a.took);
    s.assert_east_undisturbed(&[s.transport_words(), "not issued by this site's CA"]);
}

fn hello_claiming_the_linked_site_over_another_sites_certificate(via: Via) {
    // A genuine certificate from west's CA for some site id X (as a thief of the CA key, or a
    // site that redeemed, would hold), used by a router whose hello says it is east.
    let s = Scene::new(via);
    let x = SiteId::random();
    let key = new_key();
    let cert = forge_link_cert(&s.t.ca_pem, &s.t.ca_key_pem, x, &key, valid_now());
    let (reason, took) = block_on(dial_as(&s.t, via, s.east_id, &cert, &key));
    // The certificate's site never redeemed a grant: refused right after TLS, before its
    // hello (which claims east) is even read.
    assert!(
        reason.contains(&format!("site {x} never redeemed a token here")),
        "the dialer must be told why: {reason}"
    );
    eprintln!("{via:?} hello claims east: refused after {took:?}");
    s.assert_east_undisturbed(&[
        "refused an inbound link",
        s.transport_words(),
        "never redeemed",
    ]);
}

fn the_linked_sites_key_under_another_site_id(via: Via) {
    // A certificate from west's CA certifying east's key, but for a site id X that never
    // redeemed: the key is bound to east's id, not X's, and X was never granted.
    let s = Scene::new(via);
    let x = SiteId::random();
    let cert = forge_link_cert(&s.t.ca_pem, &s.t.ca_key_pem, x, &s.east_key, valid_now());
    let (reason, took) = block_on(dial_as(&s.t, via, x, &cert, &s.east_key));
    assert!(
        reason.contains(&format!("site {x} never redeemed a token here")),
        "the dialer must be told why: {reason}"
    );
    eprintln!("{via:?} east's key, another id: refused after {took:?}");
    s.assert_east_undisturbed(&[
        "refused an inbound link",
        s.transport_words(),
        "never redeemed",
    ]);
}
