//! Scenarios on the simulator: convergence of 200 routers (random and ring), link cuts,
//! partitions and healing, router death and restart, message loss. Each prints its simulated
//! convergence time and messages per router (run with `--nocapture` to see them; the numbers
//! in docs/routing.md come from here).

use std::time::Duration;

use super::sim::{Sim, key_ad, random_network, ring_network};
use super::{MAX_AGE, REFRESH_INTERVAL, RouterMode, SiteId};

fn report(what: &str, sim: &Sim, took: Duration) {
    let routers = sim.routers.iter().filter(|r| r.is_some()).count();
    println!(
        "routing-sim: {what}: converged in {took:?} simulated, {} messages delivered ({:.1} per router, {} lost)",
        sim.counters.delivered,
        sim.counters.delivered as f64 / routers as f64,
        sim.counters.lost,
    );
}

fn converge(sim: &mut Sim, what: &str) {
    sim.start_all();
    let took = sim.run_quiet();
    report(what, sim, took);
    sim.check();
}

/// Messages per router over one refresh interval once converged (the steady-state cost).
fn steady_state(sim: &mut Sim, what: &str) {
    sim.counters = Default::default();
    sim.run_for(REFRESH_INTERVAL);
    let routers = sim.routers.iter().filter(|r| r.is_some()).count();
    println!(
        "routing-sim: {what}: steady state {:.1} messages per router per {REFRESH_INTERVAL:?} refresh interval",
        sim.counters.delivered as f64 / routers as f64
    );
    sim.check();
}

/// No live router's next hop to any destination goes over the link a–b.
fn no_route_over(sim: &Sim, a: usize, b: usize) {
    for (x, y) in [(a, b), (b, a)] {
        if !sim.alive(x) {
            continue;
        }
        for d in 0..sim.n() {
            assert_ne!(
                sim.topo(x).next_hop(sim.ids[d]),
                Some(sim.ids[y]),
                "{x}->{d}"
            );
        }
    }
}

#[test]
fn random_200_converges() {
    let mut sim = random_network(200, 1);
    converge(&mut sim, "random 200 (start)");
    assert!(sim.modes.contains(&RouterMode::Edge));
    println!(
        "routing-sim: random 200: {} links, {} edge routers",
        sim.links.len(),
        sim.modes.iter().filter(|m| **m == RouterMode::Edge).count()
    );
    steady_state(&mut sim, "random 200");
}

#[test]
fn ring_200_converges() {
    let mut sim = ring_network(200, 2);
    converge(&mut sim, "ring 200 (start)");
    steady_state(&mut sim, "ring 200");
}

#[test]
fn random_200_link_cut_and_heal() {
    let mut sim = random_network(200, 3);
    converge(&mut sim, "random 200 (start)");
    // Cut the three links of the busiest routes: those of router 0's first neighbours.
    let cuts: Vec<(usize, usize)> = sim.links.keys().copied().take(3).collect();
    for (a, b) in &cuts {
        sim.counters = Default::default();
        sim.cut(*a, *b);
        // The two ends withdraw routes over the link before anything else happens.
        no_route_over(&sim, *a, *b);
        let took = sim.run_quiet();
        report(&format!("random 200 (cut {a}-{b})"), &sim, took);
        sim.check();
    }
    for (a, b) in &cuts {
        sim.heal(*a, *b);
    }
    sim.counters = Default::default();
    let took = sim.run_quiet();
    report("random 200 (heal 3 links)", &sim, took);
    sim.check();
}

#[test]
fn ring_200_link_cut_partition_and_heal() {
    let mut sim = ring_network(200, 4);
    converge(&mut sim, "ring 200 (start)");
    sim.counters = Default::default();
    sim.cut(50, 51);
    no_route_over(&sim, 50, 51);
    let took = sim.run_quiet();
    report("ring 200 (cut one link)", &sim, took);
    sim.check();
    // A second cut splits the ring into 51..=150 (with svc at 100) and the rest (svc at 0).
    sim.counters = Default::default();
    sim.cut(150, 151);
    let took = sim.run_quiet();
    report("ring 200 (partition)", &sim, took);
    sim.check();
    let svc = "svc".parse().unwrap();
    for i in 0..200 {
        let targets = sim.topo(i).targets(&svc, &|_| 0);
        assert_eq!(targets.len(), 1, "router {i}");
        let home = if (51..=150).contains(&i) { 100 } else { 0 };
        assert_eq!(targets[0].router, sim.ids[home], "router {i}");
    }
    // The other half's advertisements are kept (unreachable) so healing is immediate.
    assert!(sim.topo(0).routers().iter().any(|r| !r.reachable));
    sim.counters = Default::default();
    sim.heal(150, 151);
    sim.heal(50, 51);
    let took = sim.run_quiet();
    report("ring 200 (heal partition)", &sim, took);
    sim.check();
    assert!(sim.topo(0).routers().iter().all(|r| r.reachable));
}

fn seq_seen(sim: &Sim, at: usize, of: SiteId) -> Option<u64> {
    sim.topo(at)
        .routers()
        .into_iter()
        .find(|r| r.id == of)
        .map(|r| r.seq)
}

#[test]
fn router_death_restart_and_ageing() {
    let mut sim = random_network(200, 5);
    converge(&mut sim, "random 200 (start)");
    // Kill an interior router that serves a key and has several links.
    let victim = (0..200)
        .filter(|i| sim.modes[*i] == RouterMode::Interior && !sim.keys[*i].is_empty())
        .max_by_key(|i| sim.up_links(*i).len())
        .unwrap();
    let id = sim.ids[victim];
    // Let it bump its sequence number a few times first, so the restart has something to beat.
    sim.run_for(REFRESH_INTERVAL * 3 + Duration::from_secs(1));
    let old_seq = sim.topo(victim).seq();
    assert!(old_seq >= 4);
    sim.counters = Default::default();
    sim.kill(victim);
    let took = sim.run_quiet();
    report(&format!("random 200 (kill router {victim})"), &sim, took);
    sim.check();
    // Everyone still holds its (old) advertisement, unreachable.
    for i in (0..200).filter(|i| *i != victim) {
        assert_eq!(seq_seen(&sim, i, id), Some(old_seq), "router {i}");
        assert_eq!(sim.topo(i).next_hop(id), None);
    }
    // Restart: it starts at seq 1, learns its old seq from a neighbour's sync and jumps
    // above it; every router ends up with the new advertisement.
    sim.counters = Default::default();
    sim.restart(victim);
    let took = sim.run_quiet();
    report(&format!("random 200 (restart router {victim})"), &sim, took);
    sim.check();
    let new_seq = sim.topo(victim).seq();
    assert!(new_seq > old_seq, "{new_seq} <= {old_seq}");
    for i in 0..200 {
        assert_eq!(seq_seen(&sim, i, id), Some(new_seq), "router {i}");
    }
    // Killed for good: after MAX_AGE every router has forgotten it.
    sim.kill(victim);
    sim.run_for(MAX_AGE + Duration::from_secs(1));
    sim.check();
    for i in (0..200).filter(|i| *i != victim) {
        assert_eq!(seq_seen(&sim, i, id), None, "router {i} still holds it");
    }
}

#[test]
fn five_percent_loss_converges_through_refresh() {
    let mut sim = random_network(200, 6);
    sim.loss_ppm = 50_000;
    sim.start_all();
    // Refreshes at 30, 60 and 90 s repair whatever the losses broke.
    sim.run_for(REFRESH_INTERVAL * 3 + Duration::from_secs(10));
    report(
        "random 200, 5% loss (after 100 s)",
        &sim,
        Duration::from_secs(100),
    );
    assert!(sim.counters.lost > 1000, "the loss was not exercised");
    sim.check();
}

#[test]
fn edge_router_is_never_a_transit_hop() {
    // 0 and 2 interior, 1 edge linked to both cheaply; 0-2 directly at a high cost.
    let mut sim = Sim::new(
        vec![RouterMode::Interior, RouterMode::Edge, RouterMode::Interior],
        7,
    );
    sim.add_link(0, 1, 1);
    sim.add_link(1, 2, 1);
    sim.add_link(0, 2, 100);
    sim.set_keys(2, vec![key_ad("db")]);
    sim.start_all();
    sim.run_quiet();
    sim.check();
    assert_eq!(sim.topo(0).next_hop(sim.ids[2]), Some(sim.ids[2]));
    assert_eq!(sim.topo(0).path_cost(sim.ids[2]), Some(100));
    // The edge router itself may use either link.
    assert_eq!(sim.topo(1).path_cost(sim.ids[2]), Some(1));
    // Without the direct link, 0 cannot reach 2 at all, though the edge router links both.
    sim.cut(0, 2);
    sim.run_quiet();
    sim.check();
    assert_eq!(sim.topo(0).next_hop(sim.ids[2]), None);
    assert!(!sim.topo(0).has_route(&"db".parse().unwrap()));
    assert!(sim.topo(1).has_route(&"db".parse().unwrap()));
}
