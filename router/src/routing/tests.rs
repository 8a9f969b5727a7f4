//! Unit tests of one [`Topology`]: the two-way check, flooding rules, sequence numbers,
//! ageing, limits, and target choice (balanced, hot standby, priority, weighted).

use std::time::{Duration, Instant};

use super::sim::key_ad;
use super::*;

fn id(n: u8) -> SiteId {
    SiteId::from_bytes([n; 16])
}

fn key(s: &str) -> RoutingKey {
    s.parse().unwrap()
}

fn ad(origin: u8, seq: u64, links: &[(u8, u32)], keys: &[&str]) -> Advertisement {
    Advertisement {
        origin: id(origin),
        site_name: format!("s{origin}"),
        mode: RouterMode::Interior,
        seq,
        links: links.iter().map(|(p, c)| (id(*p), *c)).collect(),
        keys: keys.iter().map(|k| key_ad(k)).collect(),
    }
}

fn drain(t: &mut Topology) -> Vec<(SiteId, SiteId, u64)> {
    std::iter::from_fn(|| t.poll_transmit())
        .map(|(n, a)| (n, a.origin, a.seq))
        .collect()
}

/// Router 1 linked to 2 (cost `c12`), 2 linked to 3; all ads in, outbox drained.
fn line(now: Instant, c12: u32) -> Topology {
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    t.handle_neighbor_up(id(2), c12, now);
    t.handle_advertisement(id(2), ad(2, 1, &[(1, c12), (3, 1)], &[]), now);
    t.handle_advertisement(id(2), ad(3, 1, &[(2, 1)], &["db"]), now);
    drain(&mut t);
    t
}

fn none(_: SiteId) -> u32 {
    0
}

#[test]
fn a_link_is_used_only_when_both_ends_advertise_it_at_the_higher_cost() {
    let now = Instant::now();
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    t.handle_neighbor_up(id(2), 5, now);
    assert_eq!(t.next_hop(id(2)), None, "2 has not advertised the link yet");
    t.handle_advertisement(id(2), ad(2, 1, &[(3, 1)], &[]), now);
    assert_eq!(t.next_hop(id(2)), None, "2's ad does not list 1");
    t.handle_advertisement(id(2), ad(2, 2, &[(1, 7), (3, 1)], &[]), now);
    assert_eq!(t.next_hop(id(2)), Some(id(2)));
    assert_eq!(t.path_cost(id(2)), Some(7));
    // 3 lists nothing: one-way link, unusable.
    t.handle_advertisement(id(2), ad(3, 1, &[], &["db"]), now);
    assert_eq!(t.next_hop(id(3)), None);
    assert!(!t.has_route(&key("db")));
    t.handle_advertisement(id(2), ad(3, 2, &[(2, 1)], &["db"]), now);
    assert_eq!(t.next_hop(id(3)), Some(id(2)));
    assert_eq!(t.path_cost(id(3)), Some(8));
    let view = t.routers();
    assert_eq!(view.len(), 3);
    assert!(view.iter().all(|r| r.reachable));
    assert!(view[0].links.iter().all(|l| l.up));
}

#[test]
fn neighbor_down_withdraws_routes_at_once() {
    let now = Instant::now();
    let mut t = line(now, 1);
    let v = t.version();
    assert!(t.has_route(&key("db")));
    t.handle_neighbor_down(id(2), now);
    assert!(t.version() > v);
    assert_eq!(t.next_hop(id(3)), None);
    assert_eq!(t.next_hop(id(2)), None);
    assert!(!t.has_route(&key("db")));
    assert!(t.targets(&key("db"), &none).is_empty());
    // Nothing is sent to the lost neighbour.
    assert!(drain(&mut t).is_empty());
}

#[test]
fn flooding_rules() {
    let now = Instant::now();
    let mut t = line(now, 1);
    let seq = t.seq();
    // Neighbour up: our new ad to everyone, plus a full sync (ours and every reachable
    // router's) to the new neighbour.
    t.handle_neighbor_up(id(4), 1, now);
    let mut sent = drain(&mut t);
    sent.sort();
    let mut want = vec![
        (id(2), id(1), seq + 1),
        (id(4), id(1), seq + 1),
        (id(4), id(2), 1),
        (id(4), id(3), 1),
    ];
    want.sort();
    assert_eq!(sent, want);
    // A newer ad goes to every neighbour but the sender; the same again goes nowhere.
    t.handle_advertisement(id(2), ad(3, 5, &[(2, 1)], &["db"]), now);
    assert_eq!(drain(&mut t), vec![(id(4), id(3), 5)]);
    t.handle_advertisement(id(4), ad(3, 5, &[(2, 1)], &["db"]), now);
    assert!(drain(&mut t).is_empty());
    // An older one is answered with ours.
    t.handle_advertisement(id(4), ad(3, 2, &[(2, 1)], &[]), now);
    assert_eq!(drain(&mut t), vec![(id(4), id(3), 5)]);
    assert!(t.has_route(&key("db")), "the older ad changed nothing");
    // Several updates before a poll send only the newest, once per neighbour.
    t.handle_advertisement(id(2), ad(3, 6, &[(2, 1)], &["db"]), now);
    t.handle_advertisement(id(2), ad(3, 7, &[(2, 1)], &["db"]), now);
    assert_eq!(drain(&mut t), vec![(id(4), id(3), 7)]);
}

#[test]
fn a_copy_without_udp_keys_relayed_by_an_old_router_yields_to_the_full_copy() {
    // Router 3 advertises a TCP key and a UDP key (seq 5). Neighbour 2 speaks 1.1 and relays
    // it without the UDP key, under the same seq; neighbour 4 relays the full copy.
    let now = Instant::now();
    let mut t = line(now, 1);
    t.handle_neighbor_up(id(4), 1, now);
    t.handle_advertisement(id(4), ad(4, 1, &[(1, 1), (3, 1)], &[]), now);
    drain(&mut t);
    let udp = KeyAd {
        protocol: Protocol::Udp,
        ..key_ad("dns")
    };
    let full = Advertisement {
        keys: vec![key_ad("db"), udp],
        ..ad(3, 5, &[(2, 1), (4, 1)], &[])
    };
    let stripped = ad(3, 5, &[(2, 1), (4, 1)], &["db"]);
    // The stripped copy first: the full one replaces it and floods on (but not back to 4).
    t.handle_advertisement(id(2), stripped.clone(), now);
    assert!(!t.has_route(&key("dns")));
    assert_eq!(drain(&mut t), vec![(id(4), id(3), 5)]);
    let v = t.version();
    t.handle_advertisement(id(4), full.clone(), now);
    assert!(t.has_route(&key("dns")), "the full copy won at equal seq");
    assert!(t.has_route(&key("db")));
    assert!(t.version() > v);
    assert_eq!(drain(&mut t), vec![(id(2), id(3), 5)]);
    // The stripped copy again (or first, then the full one): the full one stays.
    t.handle_advertisement(id(2), stripped.clone(), now);
    assert!(
        t.has_route(&key("dns")),
        "a copy with fewer keys never replaces it"
    );
    assert!(drain(&mut t).is_empty());
    t.handle_advertisement(id(4), full, now);
    assert!(drain(&mut t).is_empty(), "the same copy again goes nowhere");
}

#[test]
fn own_old_advertisement_flooded_back_makes_us_jump_above_it() {
    let now = Instant::now();
    // A restarted router: seq starts low, a neighbour's sync carries the previous run's ad.
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    t.handle_neighbor_up(id(2), 1, now);
    drain(&mut t);
    assert!(t.seq() < 40);
    t.handle_advertisement(id(2), ad(1, 40, &[(9, 1)], &["old"]), now);
    assert_eq!(t.seq(), 41);
    assert_eq!(drain(&mut t), vec![(id(2), id(1), 41)]);
    // Our own ad is never replaced by the copy.
    let me = t.routers().into_iter().find(|r| r.local).unwrap();
    assert_eq!(me.seq, 41);
    assert!(me.keys.is_empty());
    // An older copy of ours is answered with the current one.
    t.handle_advertisement(id(2), ad(1, 3, &[], &[]), now);
    assert_eq!(drain(&mut t), vec![(id(2), id(1), 41)]);
    assert_eq!(t.seq(), 41);
}

#[test]
fn refresh_and_ageing() {
    let t0 = Instant::now();
    let mut t = line(t0, 1);
    // Router 7 is known but unreachable.
    t.handle_advertisement(id(2), ad(7, 1, &[(8, 1)], &["x"]), t0);
    drain(&mut t);
    assert_eq!(t.poll_timeout(), Some(t0 + REFRESH_INTERVAL));
    let seq = t.seq();
    t.handle_timeout(t0 + REFRESH_INTERVAL - Duration::from_millis(1));
    assert_eq!(t.seq(), seq, "early call is harmless");
    t.handle_timeout(t0 + REFRESH_INTERVAL);
    assert_eq!(t.seq(), seq + 1);
    assert_eq!(drain(&mut t), vec![(id(2), id(1), seq + 1)]);
    // Router 2 keeps refreshing; 3 and 7 do not.
    let t1 = t0 + REFRESH_INTERVAL * 3;
    t.handle_advertisement(id(2), ad(2, 9, &[(1, 1), (3, 1)], &[]), t1);
    let mut now = t0 + REFRESH_INTERVAL;
    while now < t0 + MAX_AGE {
        now = t.poll_timeout().unwrap();
        t.handle_timeout(now);
    }
    assert_eq!(now, t0 + MAX_AGE);
    let known: Vec<SiteId> = t.routers().iter().map(|r| r.id).collect();
    assert_eq!(known, vec![id(1), id(2)]);
    assert!(!t.has_route(&key("db")));
}

#[test]
fn the_database_is_bounded() {
    let now = Instant::now();
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    t.handle_neighbor_up(id(2), 1, now);
    for i in 0..MAX_ROUTERS as u64 + 5 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i + 1000).to_be_bytes());
        let a = Advertisement {
            origin: SiteId::from_bytes(b),
            site_name: String::new(),
            mode: RouterMode::Interior,
            seq: 1,
            links: vec![],
            keys: vec![],
        };
        t.handle_advertisement(id(2), a, now);
    }
    assert_eq!(t.routers().len(), MAX_ROUTERS);
    assert_eq!(t.dropped_ads(), 6);
    // The outbox holds at most one entry per (neighbour, router): nothing to send back to 2.
    assert_eq!(
        drain(&mut t).len(),
        1,
        "only our own ad, queued at neighbour up"
    );
}

#[test]
fn local_keys_are_sorted_deduplicated_and_cut_to_one_frame() {
    let now = Instant::now();
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    let seq = t.seq();
    t.set_local_keys(vec![key_ad("b"), key_ad("a"), key_ad("b")], now);
    assert_eq!(t.seq(), seq + 1);
    let me = &t.routers()[0];
    let names: Vec<&str> = me.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    t.set_local_keys(vec![key_ad("a"), key_ad("b")], now);
    assert_eq!(t.seq(), seq + 1, "unchanged keys do not re-flood");
    // 400 keys of 253 characters cannot fit 64 KiB: the last ones are left out.
    let long: Vec<KeyAd> = (0..400).map(|i| key_ad(&format!("{i:0>253}"))).collect();
    t.set_local_keys(long, now);
    let kept = t.routers()[0].keys.len();
    assert!(kept > 200 && kept < 400, "{kept}");
    assert_eq!(t.dropped_local_keys(), 400 - kept);
    assert!(t.has_route(&key(&format!("{:0>253}", kept - 1))));
    assert!(!t.has_route(&key(&format!("{:0>253}", kept))));
}

/// Router 1 with a local `svc` connector, linked to 2 (cost 1) and 3 (cost 2); 2 and 3 serve
/// `svc`; 4 (behind 3, cost 1_000_000) serves `standby`; 3 serves `other`.
fn star(now: Instant) -> Topology {
    let mut t = Topology::new(id(1), "s1".into(), RouterMode::Interior, now);
    t.set_local_keys(vec![key_ad("svc")], now);
    t.handle_neighbor_up(id(2), 1, now);
    t.handle_neighbor_up(id(3), 2, now);
    t.handle_advertisement(id(2), ad(2, 1, &[(1, 1)], &["svc"]), now);
    t.handle_advertisement(
        id(3),
        ad(3, 1, &[(1, 2), (4, 1_000_000)], &["svc", "other"]),
        now,
    );
    t.handle_advertisement(id(3), ad(4, 1, &[(3, 1_000_000)], &["standby", "svc"]), now);
    t
}

fn routers_of(ts: &[Target]) -> Vec<SiteId> {
    ts.iter().map(|t| t.router).collect()
}

#[test]
fn balanced_ranks_by_path_cost_plus_outstanding_with_local_at_zero() {
    let t = star(Instant::now());
    let svc = key("svc");
    let ts = t.targets(&svc, &none);
    assert_eq!(routers_of(&ts), [id(1), id(2), id(3), id(4)]);
    assert_eq!(ts[0].next_hop, None);
    assert_eq!(ts[0].cost, 0);
    assert_eq!(ts[3].next_hop, Some(id(3)));
    assert_eq!(ts[3].cost, 1_000_002);
    assert!(ts.iter().all(|t| t.key == svc && t.connectors == 1));
    // Two flows outstanding locally: router 2 (1 + 0) beats us (0 + 2); 3 ties with us on
    // score 2 and loses on path cost.
    let busy_here = |r: SiteId| if r == id(1) { 2 } else { 0 };
    assert_eq!(
        routers_of(&t.targets(&svc, &busy_here)),
        [id(2), id(1), id(3), id(4)]
    );
    let spread = |r: SiteId| {
        if r == id(1) {
            5
        } else if r == id(2) {
            4
        } else {
            0
        }
    };
    assert_eq!(
        routers_of(&t.targets(&svc, &spread)),
        [id(3), id(1), id(2), id(4)]
    );
    assert_eq!(
        t.choose(&Strategy::Balanced(svc.clone()), &spread, 0),
        t.targets(&svc, &spread)
    );
}

#[test]
fn a_very_high_cost_connector_is_a_hot_standby() {
    let now = Instant::now();
    let mut t = star(now);
    let svc = key("svc");
    // However loaded the near targets are (within reason), the far one stays last ...
    let loaded = |r: SiteId| if r == id(4) { 0 } else { 10_000 };
    assert_eq!(t.targets(&svc, &loaded).last().unwrap().router, id(4));
    // ... and takes over as soon as it is the only one left.
    t.set_local_keys(vec![], now);
    t.handle_neighbor_down(id(2), now);
    t.handle_advertisement(id(3), ad(3, 2, &[(1, 2), (4, 1_000_000)], &["other"]), now);
    assert_eq!(routers_of(&t.targets(&svc, &none)), [id(4)]);
}

#[test]
fn zero_connectors_and_unknown_keys_give_no_target() {
    let now = Instant::now();
    let mut t = star(now);
    let mut zero = key_ad("svc");
    zero.connectors = 0;
    t.set_local_keys(vec![zero], now);
    assert!(!routers_of(&t.targets(&key("svc"), &none)).contains(&id(1)));
    assert!(t.targets(&key("nope"), &none).is_empty());
    assert!(!t.has_route(&key("nope")));
    assert!(
        t.choose(&Strategy::Priority(vec![key("nope")]), &none, 0)
            .is_empty()
    );
    assert!(
        t.choose(&Strategy::Weighted(vec![(key("nope"), 5)]), &none, 7)
            .is_empty()
    );
}

#[test]
fn priority_takes_the_first_key_with_a_target_and_fails_over_down_the_list() {
    let now = Instant::now();
    let mut t = star(now);
    let s = Strategy::Priority(vec![key("missing"), key("standby"), key("other")]);
    let got = t.choose(&s, &none, 0);
    let keys: Vec<&str> = got.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys, ["standby", "other"]);
    assert_eq!(routers_of(&got), [id(4), id(3)]);
    // 4 becomes unreachable: "other" is first.
    t.handle_advertisement(id(3), ad(3, 2, &[(1, 2)], &["other"]), now);
    assert_eq!(routers_of(&t.choose(&s, &none, 0)), [id(3)]);
}

#[test]
fn weighted_picks_keys_in_proportion_among_reachable_keys() {
    let t = star(Instant::now());
    let s = Strategy::Weighted(vec![
        (key("svc"), 3),
        (key("other"), 1),
        (key("missing"), 100),
        (key("standby"), 0),
    ]);
    let mut rng = sim::XorShift::new(99);
    let mut counts = std::collections::HashMap::<String, u32>::new();
    for _ in 0..10_000 {
        let got = t.choose(&s, &none, rng.next());
        *counts.entry(got[0].key.to_string()).or_default() += 1;
        // Every reachable key's targets are in the list, chosen key first.
        assert_eq!(got.len(), 4 + 1 + 1);
    }
    let svc = counts["svc"];
    let other = counts["other"];
    assert_eq!(svc + other, 10_000, "{counts:?}");
    assert!((7_200..7_800).contains(&svc), "{counts:?}");
    // Deterministic for a given pick.
    assert_eq!(t.choose(&s, &none, 42), t.choose(&s, &none, 42));
}

#[test]
fn topology_can_be_shared_behind_a_lock() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Topology>();
}
