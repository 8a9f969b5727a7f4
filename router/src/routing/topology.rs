//! [`Topology`]: one router's link-state database: accepting and flooding advertisements,
//! sequence numbers, refresh and ageing, and the routes computed from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::Instant;

use skiff_certs::SiteId;

use super::spf::{self, Route};
use super::{
    Advertisement, KeyAd, MAX_AGE, MAX_KEYS_PER_AD, MAX_LINKS_PER_AD, MAX_ROUTERS,
    REFRESH_INTERVAL, RouterMode, RoutingKey,
};

/// One advertisement in the database.
#[derive(Debug)]
pub(super) struct Stored {
    /// As received (or, for our own, as sent).
    pub(super) ad: Advertisement,
    /// `ad.links` as a map, for the two-way check. A peer listed twice keeps its lowest cost.
    pub(super) links: BTreeMap<SiteId, u32>,
    /// When it is forgotten unless a newer one arrives (`None` for our own).
    pub(super) expires: Option<Instant>,
}

/// The link-state database and route computation of one router.
///
/// `Topology` does no I/O and reads no clock. The link layer feeds it events and sends what it
/// asks to send; queries always reflect every event handled so far. (Routes are recomputed
/// by the first query after a change that may affect them, not by every advertisement, so a
/// burst of advertisements costs one shortest-path run. Queries take `&self`; the cache is a
/// `OnceLock`, so a `Topology` may be shared behind an `RwLock`.)
///
/// # How to drive it
///
/// 1. Make one with [`Topology::new`] at router start.
/// 2. On events, call the matching `handle_*` / `set_*` method with the current time:
///    - a link's hello exchange completed: [`handle_neighbor_up`](Self::handle_neighbor_up);
///    - a link was lost or closed (keepalive timeout included):
///      [`handle_neighbor_down`](Self::handle_neighbor_down);
///    - a [`ControlFrame::LinkState`](crate::wire::ControlFrame::LinkState) arrived on a
///      link: [`handle_advertisement`](Self::handle_advertisement) with the link's peer id
///      (the id its mTLS certificate proved), not the advertisement's origin;
///    - this site's connectors changed: [`set_local_keys`](Self::set_local_keys).
/// 3. After handling events, drain [`poll_transmit`](Self::poll_transmit) until `None`, and
///    write each advertisement as a link-state frame on the control stream to that neighbour.
/// 4. Arm a timer at [`poll_timeout`](Self::poll_timeout); when it fires call
///    [`handle_timeout`](Self::handle_timeout), then go to 3. Call `poll_timeout` again after
///    every event: it moves.
/// 5. For new flows, ask [`choose`](Self::choose) / [`targets`](Self::targets), and for
///    forwarding [`next_hop`](Self::next_hop). [`version`](Self::version) changes whenever
///    their answers may have changed, so callers can cache.
///
/// Advertisements are flooded: one accepted as newer (higher sequence number from its origin)
/// is queued to every neighbour but the one it came from; a neighbour that comes up gets
/// every advertisement of a router we can reach (ours included). An older copy received is
/// answered with our newer one.
#[derive(Debug)]
pub struct Topology {
    pub(super) me: SiteId,
    pub(super) site_name: String,
    pub(super) mode: RouterMode,
    /// Sequence number of our current advertisement.
    seq: u64,
    /// Our keys, sorted, deduplicated, cut to fit one frame.
    local_keys: Vec<KeyAd>,
    /// Up neighbours and the cost we give the link.
    pub(super) neighbors: BTreeMap<SiteId, u32>,
    /// Newest advertisement per router, ours included.
    pub(super) db: HashMap<SiteId, Stored>,
    /// (expiry, origin) of every stored advertisement but ours.
    expiry: BTreeSet<(Instant, SiteId)>,
    /// For each key, the routers advertising it and their connector counts.
    pub(super) key_index: HashMap<RoutingKey, BTreeMap<SiteId, u32>>,
    /// Shortest paths to every reachable router but us; empty after a change, filled by the
    /// next query (see [`Topology::routes`]).
    routes: OnceLock<HashMap<SiteId, Route>>,
    /// (neighbour, origin): send origin's current advertisement to neighbour.
    outbox: VecDeque<(SiteId, SiteId)>,
    queued: HashSet<(SiteId, SiteId)>,
    next_refresh: Instant,
    version: u64,
    dropped_ads: u64,
    dropped_local_keys: usize,
}

impl Topology {
    /// A router that knows only itself. Its first advertisement has sequence number 1; if
    /// older ones of a previous run are still out there, the first neighbour to send one back
    /// makes this router jump above it (see [`handle_advertisement`](Self::handle_advertisement)).
    pub fn new(me: SiteId, site_name: String, mode: RouterMode, now: Instant) -> Self {
        let mut t = Topology {
            me,
            site_name,
            mode,
            seq: 0,
            local_keys: Vec::new(),
            neighbors: BTreeMap::new(),
            db: HashMap::new(),
            expiry: BTreeSet::new(),
            key_index: HashMap::new(),
            routes: OnceLock::new(),
            outbox: VecDeque::new(),
            queued: HashSet::new(),
            next_refresh: now,
            version: 0,
            dropped_ads: 0,
            dropped_local_keys: 0,
        };
        t.originate(now);
        t
    }

    /// This router's id.
    pub fn me(&self) -> SiteId {
        self.me
    }

    /// Sequence number of this router's current advertisement.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A link to `peer` came up (its hello exchange finished) with this cost. Our
    /// advertisement now lists it and is flooded; `peer` is sent every advertisement of a
    /// router we can reach. The link carries traffic once `peer`'s advertisement lists us too.
    /// A link cost of 0 counts as 1.
    pub fn handle_neighbor_up(&mut self, peer: SiteId, cost: u32, now: Instant) {
        if peer == self.me {
            return;
        }
        self.neighbors.insert(peer, cost);
        self.originate(now);
        let mut sync: Vec<SiteId> = self
            .db
            .keys()
            .copied()
            .filter(|o| *o == self.me || self.routes().contains_key(o))
            .collect();
        sync.sort();
        for origin in sync {
            self.queue(peer, origin);
        }
    }

    /// The link to `peer` is gone. Routes through it are withdrawn before this returns; our
    /// advertisement without it is flooded to the remaining neighbours.
    pub fn handle_neighbor_down(&mut self, peer: SiteId, now: Instant) {
        if self.neighbors.remove(&peer).is_none() {
            return;
        }
        self.outbox.retain(|(n, _)| *n != peer);
        self.queued.retain(|(n, _)| *n != peer);
        self.originate(now);
    }

    /// An advertisement arrived on the link to neighbour `from`.
    ///
    /// - Newer than the one held (higher `seq`, or none held): stored (routes reflect it from
    ///   the next query on), queued to every neighbour but `from`.
    /// - Older than the one held: ours is queued back to `from`, so it catches up.
    /// - Equal: ignored, unless it has more keys than the one held (the held one is a copy a
    ///   router older than link protocol 1.2 relayed, without the UDP keys it was never
    ///   sent): then it replaces it, as a newer one would.
    /// - Our own id with a `seq` at or above ours (a previous run of this router, or a copy
    ///   flooded back): we jump to a higher `seq` and flood a fresh advertisement, which
    ///   replaces the old one everywhere.
    /// - From a new router when [`MAX_ROUTERS`] are held: dropped and counted.
    pub fn handle_advertisement(&mut self, from: SiteId, mut ad: Advertisement, now: Instant) {
        if ad.origin == self.me {
            if ad.seq >= self.seq {
                self.seq = ad.seq;
                self.originate(now);
            } else if self.neighbors.contains_key(&from) {
                self.queue(from, self.me);
            }
            return;
        }
        match self.db.get(&ad.origin) {
            Some(held) if held.ad.seq > ad.seq => {
                if self.neighbors.contains_key(&from) {
                    self.queue(from, ad.origin);
                }
                return;
            }
            // A copy relayed by a router older than link protocol 1.2 lacks the origin's UDP
            // keys (it was sent one without them) under the same `seq`: the full copy, with
            // more keys, replaces it wherever the stripped one arrived first, and floods on.
            Some(held)
                if held.ad.seq == ad.seq
                    && ad.keys.len().min(MAX_KEYS_PER_AD) <= held.ad.keys.len() =>
            {
                return;
            }
            None if self.db.len() >= MAX_ROUTERS => {
                self.dropped_ads += 1;
                tracing::warn!(
                    origin = %ad.origin,
                    limit = MAX_ROUTERS,
                    "routing database full; advertisement of a new router dropped"
                );
                return;
            }
            _ => {}
        }
        ad.links.truncate(MAX_LINKS_PER_AD);
        ad.keys.truncate(MAX_KEYS_PER_AD);
        let origin = ad.origin;
        self.install(ad, Some(now + MAX_AGE));
        let others: Vec<SiteId> = self
            .neighbors
            .keys()
            .copied()
            .filter(|n| *n != from)
            .collect();
        for n in others {
            self.queue(n, origin);
        }
    }

    /// This router's connectors changed: `keys` is the whole new set. Keys are sorted by name;
    /// a key listed twice keeps its first entry. Keys that do not fit one advertisement frame
    /// (see [`crate::wire::link_state`]) are left out, last names first, and counted
    /// ([`dropped_local_keys`](Self::dropped_local_keys)).
    pub fn set_local_keys(&mut self, mut keys: Vec<KeyAd>, now: Instant) {
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        keys.dedup_by(|b, a| a.key == b.key);
        if keys == self.local_keys {
            return;
        }
        self.local_keys = keys;
        self.originate(now);
    }

    /// Timers: refreshes our advertisement every [`REFRESH_INTERVAL`] and forgets other
    /// routers' advertisements not renewed for [`MAX_AGE`]. Harmless to call early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_refresh {
            self.originate(now);
        }
        let mut expired = false;
        while let Some(&(at, origin)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(old) = self.db.remove(&origin) {
                self.unindex(&old.ad);
                expired = true;
            }
        }
        if expired {
            self.recompute();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ageing = self.expiry.first().map(|(at, _)| *at);
        Some(ageing.map_or(self.next_refresh, |a| a.min(self.next_refresh)))
    }

    /// The next advertisement to send: (neighbour, advertisement). Each (neighbour, origin)
    /// pair is queued at most once and sends the origin's newest advertisement, so the queue
    /// never holds more than neighbours x routers entries.
    pub fn poll_transmit(&mut self) -> Option<(SiteId, Advertisement)> {
        while let Some((n, origin)) = self.outbox.pop_front() {
            self.queued.remove(&(n, origin));
            if !self.neighbors.contains_key(&n) {
                continue;
            }
            if let Some(s) = self.db.get(&origin) {
                return Some((n, s.ad.clone()));
            }
        }
        None
    }

    /// The neighbour to forward to for router `dest`; `None` when `dest` is unreachable or is
    /// this router.
    pub fn next_hop(&self, dest: SiteId) -> Option<SiteId> {
        self.routes().get(&dest).map(|r| r.next_hop)
    }

    /// Cost of the shortest path to `dest` (0 for this router); `None` when unreachable.
    pub fn path_cost(&self, dest: SiteId) -> Option<u32> {
        if dest == self.me {
            return Some(0);
        }
        self.routes().get(&dest).map(|r| r.cost_u32())
    }

    /// Increases whenever routes or key targets may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Advertisements of new routers dropped because [`MAX_ROUTERS`] were held.
    pub fn dropped_ads(&self) -> u64 {
        self.dropped_ads
    }

    /// Local keys left out of our advertisement because they did not fit one frame.
    pub fn dropped_local_keys(&self) -> usize {
        self.dropped_local_keys
    }

    /// Neighbours whose links are up, with our cost for each.
    pub fn neighbors(&self) -> impl Iterator<Item = (SiteId, u32)> + '_ {
        self.neighbors.iter().map(|(n, c)| (*n, *c))
    }

    /// Makes, stores and floods a new advertisement of ours with the next sequence number.
    fn originate(&mut self, now: Instant) {
        // The decoder refuses sequence numbers past `MAX_SEQ`, so this cannot wrap.
        self.seq = self.seq.saturating_add(1);
        self.next_refresh = now + REFRESH_INTERVAL;
        let links: Vec<(SiteId, u32)> = self
            .neighbors
            .iter()
            .take(MAX_LINKS_PER_AD)
            .map(|(n, c)| (*n, *c))
            .collect();
        if self.neighbors.len() > MAX_LINKS_PER_AD {
            tracing::warn!(
                neighbors = self.neighbors.len(),
                limit = MAX_LINKS_PER_AD,
                "more links than one advertisement carries; the highest site ids are left out"
            );
        }
        let mut ad = Advertisement {
            origin: self.me,
            site_name: self.site_name.clone(),
            mode: self.mode,
            seq: self.seq,
            links,
            keys: self.local_keys.clone(),
        };
        while !ad.encoded_len().1 && !ad.keys.is_empty() {
            ad.keys.pop();
        }
        let dropped = self.local_keys.len() - ad.keys.len();
        if dropped != self.dropped_local_keys && dropped > 0 {
            tracing::warn!(
                dropped,
                "local routing keys do not fit one advertisement and are not offered"
            );
        }
        self.dropped_local_keys = dropped;
        self.install(ad, None);
        let all: Vec<SiteId> = self.neighbors.keys().copied().collect();
        for n in all {
            self.queue(n, self.me);
        }
    }

    /// Replaces `ad.origin`'s advertisement, reindexes its keys, recomputes routes if its
    /// links or mode changed.
    fn install(&mut self, ad: Advertisement, expires: Option<Instant>) {
        let mut links = BTreeMap::new();
        for (peer, cost) in &ad.links {
            let c = links.entry(*peer).or_insert(*cost);
            *c = (*c).min(*cost);
        }
        let origin = ad.origin;
        let new = Stored { ad, links, expires };
        let old = self.db.insert(origin, new);
        let topology_changed = match &old {
            Some(old) => {
                self.unindex(&old.ad);
                if let Some(at) = old.expires {
                    self.expiry.remove(&(at, origin));
                }
                let new = &self.db[&origin];
                old.links != new.links || old.ad.mode != new.ad.mode
            }
            None => true,
        };
        let new = &self.db[&origin];
        if let Some(at) = new.expires {
            self.expiry.insert((at, origin));
        }
        for k in &new.ad.keys {
            self.key_index
                .entry(k.key.clone())
                .or_default()
                .insert(origin, k.connectors);
        }
        if topology_changed {
            self.recompute();
        } else {
            self.version += 1;
        }
    }

    fn unindex(&mut self, ad: &Advertisement) {
        for k in &ad.keys {
            if let Some(routers) = self.key_index.get_mut(&k.key) {
                routers.remove(&ad.origin);
                if routers.is_empty() {
                    self.key_index.remove(&k.key);
                }
            }
        }
    }

    /// Shortest paths to every reachable router but us, computed on first use after a change.
    pub(super) fn routes(&self) -> &HashMap<SiteId, Route> {
        self.routes
            .get_or_init(|| spf::shortest_paths(self.me, &self.db))
    }

    /// Forgets the routes (recomputed by the next query) and bumps the version.
    fn recompute(&mut self) {
        self.routes = OnceLock::new();
        self.version += 1;
    }

    fn queue(&mut self, neighbor: SiteId, origin: SiteId) {
        if self.queued.insert((neighbor, origin)) {
            self.outbox.push_back((neighbor, origin));
        }
    }
}
