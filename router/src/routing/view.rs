//! [`RouterView`]: what one router knows about every router, for `skiff network status`.

use skiff_certs::SiteId;

use super::{KeyAd, RouterMode, Topology, spf};

/// One router as this router sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouterView {
    /// Its site id.
    pub id: SiteId,
    /// Its site name.
    pub name: String,
    /// Interior or edge.
    pub mode: RouterMode,
    /// Whether a path from us reaches it (always true for ourselves).
    pub reachable: bool,
    /// Path cost from us (0 for ourselves); `None` when unreachable.
    pub cost: Option<u32>,
    /// Neighbour we forward to for it; `None` for ourselves or when unreachable.
    pub next_hop: Option<SiteId>,
    /// Sequence number of its advertisement we hold.
    pub seq: u64,
    /// Whether this is us.
    pub local: bool,
    /// The links it advertises.
    pub links: Vec<LinkView>,
    /// The keys it advertises.
    pub keys: Vec<KeyAd>,
}

/// One advertised link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkView {
    /// The other end.
    pub peer: SiteId,
    /// The cost this router advertises for it.
    pub cost: u32,
    /// Whether the other end advertises it too, so routes may use it (at the higher cost).
    pub up: bool,
}

impl Topology {
    /// Every router known (held advertisements, ourselves included), sorted by site id.
    pub fn routers(&self) -> Vec<RouterView> {
        let mut out: Vec<RouterView> = self
            .db
            .values()
            .map(|s| {
                let id = s.ad.origin;
                let local = id == self.me;
                let route = self.routes().get(&id);
                RouterView {
                    id,
                    name: s.ad.site_name.clone(),
                    mode: s.ad.mode,
                    reachable: local || route.is_some(),
                    cost: if local {
                        Some(0)
                    } else {
                        route.map(|r| r.cost_u32())
                    },
                    next_hop: route.map(|r| r.next_hop),
                    seq: s.ad.seq,
                    local,
                    links: s
                        .links
                        .iter()
                        .map(|(peer, cost)| LinkView {
                            peer: *peer,
                            cost: *cost,
                            up: spf::link_cost(&self.db, id, *peer).is_some(),
                        })
                        .collect(),
                    keys: s.ad.keys.clone(),
                }
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }
}
