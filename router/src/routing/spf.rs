//! Shortest paths from this router over the link-state database (Dijkstra on a binary heap).
//!
//! A link A–B is used only when both A's and B's advertisements list it (two-way check), at
//! the higher of the two advertised costs; a cost of 0 counts as 1. Paths never pass
//! *through* an edge router: an edge router is relaxed from only when it is the source. Among
//! equal-cost paths the next hop with the lowest site id wins, so the answer is deterministic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use skiff_certs::SiteId;

use super::RouterMode;
use super::topology::Stored;

/// The shortest path to one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    /// The neighbour to forward to.
    pub(super) next_hop: SiteId,
    /// Sum of link costs.
    pub(super) cost: u64,
}

impl Route {
    pub(super) fn cost_u32(&self) -> u32 {
        u32::try_from(self.cost).unwrap_or(u32::MAX)
    }
}

/// Cost of the link `a`–`b` if both ends advertise it.
pub(super) fn link_cost(db: &HashMap<SiteId, Stored>, a: SiteId, b: SiteId) -> Option<u64> {
    let ab = *db.get(&a)?.links.get(&b)?;
    let ba = *db.get(&b)?.links.get(&a)?;
    Some(u64::from(ab.max(ba).max(1)))
}

/// Shortest paths from `me` to every router reachable from it (`me` excluded).
pub(super) fn shortest_paths(me: SiteId, db: &HashMap<SiteId, Stored>) -> HashMap<SiteId, Route> {
    // dist[v] = (cost, first hop from me)
    let mut dist: HashMap<SiteId, (u64, SiteId)> = HashMap::new();
    let mut done: HashSet<SiteId> = HashSet::new();
    let mut heap = BinaryHeap::new();
    dist.insert(me, (0, me));
    heap.push(Reverse((0u64, me)));
    while let Some(Reverse((d, u))) = heap.pop() {
        if !done.insert(u) {
            continue;
        }
        let Some(su) = db.get(&u) else { continue };
        if u != me && su.ad.mode == RouterMode::Edge {
            continue;
        }
        let first = dist[&u].1;
        for (&v, &c_uv) in &su.links {
            if v == u || done.contains(&v) {
                continue;
            }
            let Some(c_vu) = db.get(&v).and_then(|sv| sv.links.get(&u)) else {
                continue;
            };
            let nd = d + u64::from(c_uv.max(*c_vu).max(1));
            let hop = if u == me { v } else { first };
            match dist.get_mut(&v) {
                Some((old, old_hop)) if *old < nd || (*old == nd && *old_hop <= hop) => {}
                Some((old, old_hop)) if *old == nd => {
                    *old_hop = hop;
                }
                _ => {
                    dist.insert(v, (nd, hop));
                    heap.push(Reverse((nd, v)));
                }
            }
        }
    }
    dist.into_iter()
        .filter(|(v, _)| *v != me)
        .map(|(v, (cost, next_hop))| (v, Route { next_hop, cost }))
        .collect()
}
