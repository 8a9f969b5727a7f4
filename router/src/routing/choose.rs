//! Target choice for new flows: [`Target`], [`Strategy`], and the [`Topology`] queries that
//! rank routers serving a key by `path cost + outstanding flows` (Skupper's "balanced").

use skiff_certs::SiteId;

use super::{RoutingKey, Topology};

/// A router that can take a flow for a key, and how to get there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// The key this target serves (with [`Strategy::Priority`] and [`Strategy::Weighted`]
    /// candidates for several keys come back in one list; the flow header needs it).
    pub key: RoutingKey,
    /// The router with the connectors.
    pub router: SiteId,
    /// The neighbour to send the flow to; `None`: the router is us (local connector).
    pub next_hop: Option<SiteId>,
    /// Path cost to the router; 0 when local.
    pub cost: u32,
    /// Connectors for the key at that router.
    pub connectors: u32,
}

/// How a listener picks among keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One key; its targets ranked by path cost + outstanding flows.
    Balanced(RoutingKey),
    /// Failover order: the first key with any reachable target wins.
    Priority(Vec<RoutingKey>),
    /// Pick a key by weight among the keys with reachable targets (weight 0: never picked
    /// while another key has targets).
    Weighted(Vec<(RoutingKey, u32)>),
}

impl Topology {
    /// Reachable targets for a key, best first by (path cost + outstanding(router)), local
    /// connectors cost 0. Ties: lower path cost first, then lower site id. Routers with 0
    /// connectors and routers we cannot reach give no target.
    pub fn targets(&self, key: &RoutingKey, outstanding: &dyn Fn(SiteId) -> u32) -> Vec<Target> {
        let Some(routers) = self.key_index.get(key) else {
            return Vec::new();
        };
        let mut ranked: Vec<(u64, Target)> = routers
            .iter()
            .filter(|(_, connectors)| **connectors > 0)
            .filter_map(|(&router, &connectors)| {
                let (next_hop, cost) = if router == self.me {
                    (None, 0)
                } else {
                    let r = self.routes().get(&router)?;
                    (Some(r.next_hop), r.cost_u32())
                };
                Some(Target {
                    key: key.clone(),
                    router,
                    next_hop,
                    cost,
                    connectors,
                })
            })
            .map(|t| (u64::from(t.cost) + u64::from(outstanding(t.router)), t))
            .collect();
        ranked.sort_by(|(sa, a), (sb, b)| {
            sa.cmp(sb)
                .then(a.cost.cmp(&b.cost))
                .then(a.router.cmp(&b.router))
        });
        ranked.into_iter().map(|(_, t)| t).collect()
    }

    /// Ordered candidates for a listener's strategy: try the first, on connect failure the
    /// next. `pick` is a random number from the caller (only [`Strategy::Weighted`] uses it).
    ///
    /// - Balanced: [`targets`](Self::targets) of the key.
    /// - Priority: the targets of the first key that has any, then those of the later keys in
    ///   order (so a retry fails over down the list).
    /// - Weighted: among keys with targets, key `i` is picked with probability
    ///   `weight_i / sum(weights)`; its targets come first, then the other keys' targets in
    ///   list order.
    ///
    /// Empty: no reachable target; refuse the connection.
    pub fn choose(
        &self,
        strategy: &Strategy,
        outstanding: &dyn Fn(SiteId) -> u32,
        pick: u64,
    ) -> Vec<Target> {
        match strategy {
            Strategy::Balanced(key) => self.targets(key, outstanding),
            Strategy::Priority(keys) => keys
                .iter()
                .flat_map(|k| self.targets(k, outstanding))
                .collect(),
            Strategy::Weighted(keys) => {
                let per_key = self.weighted_targets(keys, outstanding);
                let total: u64 = per_key.iter().map(|(_, w, _)| u64::from(*w)).sum();
                let chosen = if total == 0 {
                    0
                } else {
                    let mut at = pick % total;
                    per_key
                        .iter()
                        .position(|(_, w, _)| {
                            if at < u64::from(*w) {
                                true
                            } else {
                                at -= u64::from(*w);
                                false
                            }
                        })
                        .unwrap_or(0)
                };
                chosen_first(per_key, chosen)
            }
        }
    }

    /// [`Topology::choose`] for one client with session affinity (its hash `client`): targets
    /// ranked by path cost alone (outstanding flows do not move a pinned client), and a
    /// weighted listener's key picked by weighted rendezvous hashing, so a key coming or going
    /// moves only the clients it takes or had. The caller orders each key's targets with
    /// [`super::affinity_order`].
    pub fn choose_for_client(&self, strategy: &Strategy, client: u64) -> Vec<Target> {
        match strategy {
            Strategy::Weighted(keys) => {
                let per_key = self.weighted_targets(keys, &|_| 0);
                let chosen = per_key
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, w, _))| *w > 0)
                    .map(|(i, (k, w, _))| (i, super::affinity::key_score(client, k, *w)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(i, _)| i);
                chosen_first(per_key, chosen)
            }
            other => self.choose(other, &|_| 0, client),
        }
    }

    /// The keys of a weighted listener that have targets, with their weights and targets.
    fn weighted_targets(
        &self,
        keys: &[(RoutingKey, u32)],
        outstanding: &dyn Fn(SiteId) -> u32,
    ) -> Vec<(RoutingKey, u32, Vec<Target>)> {
        keys.iter()
            .map(|(k, w)| (k.clone(), *w, self.targets(k, outstanding)))
            .filter(|(_, _, t)| !t.is_empty())
            .collect()
    }

    /// The protocol `router` advertises for `key`, if it advertises the key.
    pub fn key_protocol(&self, router: SiteId, key: &RoutingKey) -> Option<super::Protocol> {
        self.db
            .get(&router)?
            .ad
            .keys
            .iter()
            .find(|k| &k.key == key)
            .map(|k| k.protocol)
    }

    /// Whether any router we can reach (ourselves included) has a connector for `key`.
    pub fn has_route(&self, key: &RoutingKey) -> bool {
        self.key_index.get(key).is_some_and(|routers| {
            routers
                .iter()
                .any(|(r, c)| *c > 0 && (*r == self.me || self.routes().contains_key(r)))
        })
    }
}

/// The targets of key `chosen` first, then the other keys' targets in list order.
fn chosen_first(per_key: Vec<(RoutingKey, u32, Vec<Target>)>, chosen: usize) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some((_, _, first)) = per_key.get(chosen) {
        out.extend(first.iter().cloned());
    }
    for (i, (_, _, t)) in per_key.into_iter().enumerate() {
        if i != chosen {
            out.extend(t);
        }
    }
    out
}
