//! A deterministic simulator of many routers on a virtual clock (tests only), in the manner
//! of quinn-proto's test `Pair`: N [`Topology`] instances, a message queue with per-message
//! delay and optional loss from a seeded xorshift generator, links that can be cut and
//! healed, routers that can die and restart, and a global oracle (plain Dijkstra over the
//! simulator's own link table) to check every router's routes against.
//!
//! Control streams are modelled as the real ones are: in order per direction (a message
//! never overtakes an earlier one on the same link) and gone with the link (messages in
//! flight on a cut link are dropped). Loss, when switched on, drops single messages, which a
//! real stream would not do; it stands for everything that makes a router miss an update.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::{Advertisement, KeyAd, Protocol, RouterMode, RoutingKey, SiteId, Topology};

/// A tiny xorshift64 generator: deterministic, no dependencies.
pub(super) struct XorShift(u64);

impl XorShift {
    pub(super) fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in `0..n` (n > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One configured link between two routers.
#[derive(Debug, Clone, Copy)]
pub(super) struct SimLink {
    pub(super) cost: u32,
    /// Cut by the test (stays down until healed).
    pub(super) cut: bool,
    /// Bumped whenever the link goes down, so messages in flight on it are dropped.
    epoch: u64,
}

/// A message in flight.
struct InFlight {
    from: usize,
    to: usize,
    epoch: u64,
    ad: Advertisement,
}

/// Counters of one run segment.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    /// Advertisements handed to the network.
    pub(super) sent: u64,
    /// Delivered.
    pub(super) delivered: u64,
    /// Dropped by simulated loss.
    pub(super) lost: u64,
}

/// N routers and the network between them.
pub(super) struct Sim {
    pub(super) now: Instant,
    pub(super) ids: Vec<SiteId>,
    pub(super) modes: Vec<RouterMode>,
    pub(super) keys: Vec<Vec<KeyAd>>,
    /// `None`: the router is dead.
    pub(super) routers: Vec<Option<Topology>>,
    index: HashMap<SiteId, usize>,
    /// Keyed (low index, high index).
    pub(super) links: BTreeMap<(usize, usize), SimLink>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, InFlight>,
    next_msg: u64,
    /// Last delivery time per directed link, to keep each direction in order.
    last_delivery: HashMap<(usize, usize), Instant>,
    pub(super) rng: XorShift,
    /// Loss probability in parts per million.
    pub(super) loss_ppm: u64,
    /// Per-message delay range in milliseconds (inclusive).
    pub(super) delay_ms: (u64, u64),
    pub(super) counters: Counters,
    /// (timeout, router) as last polled; stale entries are skipped when they surface.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Each router's timeout as last pushed, to push only changes.
    armed: Vec<Option<Instant>>,
    /// Time of the last delivery.
    pub(super) last_activity: Instant,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `modes.len()` routers, none linked yet.
    pub(super) fn new(modes: Vec<RouterMode>, seed: u64) -> Self {
        let n = modes.len();
        let mut rng = XorShift::new(seed);
        let start = Instant::now();
        let ids: Vec<SiteId> = (0..modes.len())
            .map(|i| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&rng.next().to_be_bytes());
                b[8..].copy_from_slice(&(i as u64).to_be_bytes());
                SiteId::from_bytes(b)
            })
            .collect();
        let routers = ids
            .iter()
            .zip(&modes)
            .enumerate()
            .map(|(i, (id, mode))| Some(Topology::new(*id, format!("site-{i}"), *mode, start)))
            .collect();
        Sim {
            now: start,
            index: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            keys: vec![Vec::new(); modes.len()],
            ids,
            modes,
            routers,
            links: BTreeMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_msg: 0,
            last_delivery: HashMap::new(),
            rng,
            loss_ppm: 0,
            delay_ms: (1, 20),
            counters: Counters::default(),
            timers: BinaryHeap::new(),
            armed: vec![None; n],
            last_activity: start,
        }
    }

    pub(super) fn n(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn alive(&self, i: usize) -> bool {
        self.routers[i].is_some()
    }

    pub(super) fn topo(&self, i: usize) -> &Topology {
        self.routers[i].as_ref().expect("router is alive")
    }

    /// Whether the link a–b carries traffic now.
    pub(super) fn link_up(&self, a: usize, b: usize) -> bool {
        self.links
            .get(&pair(a, b))
            .is_some_and(|l| !l.cut && self.alive(a) && self.alive(b))
    }

    /// Up neighbours of `a` with link costs.
    pub(super) fn up_links(&self, a: usize) -> Vec<(usize, u32)> {
        self.links
            .iter()
            .filter(|((x, y), _)| (*x == a || *y == a) && self.link_up(*x, *y))
            .map(|(&(x, y), l)| (if x == a { y } else { x }, l.cost))
            .collect()
    }

    /// Configures a link without bringing it up (see [`Sim::start_all`]).
    pub(super) fn add_link(&mut self, a: usize, b: usize, cost: u32) {
        assert_ne!(a, b);
        self.links.insert(
            pair(a, b),
            SimLink {
                cost,
                cut: false,
                epoch: 0,
            },
        );
    }

    /// Gives router `i` connectors for `keys`; remembered across restarts.
    pub(super) fn set_keys(&mut self, i: usize, keys: Vec<KeyAd>) {
        self.keys[i] = keys.clone();
        let now = self.now;
        if let Some(t) = self.routers[i].as_mut() {
            t.set_local_keys(keys, now);
        }
        self.flush(i);
    }

    /// Brings every configured link up at once (all hellos finish at the same instant).
    pub(super) fn start_all(&mut self) {
        let now = self.now;
        let links: Vec<((usize, usize), u32)> = self
            .links
            .iter()
            .filter(|((a, b), _)| self.link_up(*a, *b))
            .map(|(p, l)| (*p, l.cost))
            .collect();
        for ((a, b), cost) in links {
            self.routers[a]
                .as_mut()
                .unwrap()
                .handle_neighbor_up(self.ids[b], cost, now);
            self.routers[b]
                .as_mut()
                .unwrap()
                .handle_neighbor_up(self.ids[a], cost, now);
        }
        for i in 0..self.n() {
            self.flush(i);
        }
    }

    /// Cuts a link: both ends notice at once (the keepalive window is outside this model).
    pub(super) fn cut(&mut self, a: usize, b: usize) {
        let was_up = self.link_up(a, b);
        let l = self.links.get_mut(&pair(a, b)).expect("no such link");
        l.cut = true;
        l.epoch += 1;
        if was_up {
            self.down_ends(a, b);
        }
    }

    /// Heals a cut link: both ends see it come up.
    pub(super) fn heal(&mut self, a: usize, b: usize) {
        let l = self.links.get_mut(&pair(a, b)).expect("no such link");
        l.cut = false;
        if self.link_up(a, b) {
            self.up_ends(a, b);
        }
    }

    /// Kills router `i`: its neighbours see their links to it go down.
    pub(super) fn kill(&mut self, i: usize) {
        let neighbours = self.up_links(i);
        self.routers[i] = None;
        self.armed[i] = None;
        for (n, _) in neighbours {
            self.links.get_mut(&pair(i, n)).unwrap().epoch += 1;
            let now = self.now;
            self.routers[n]
                .as_mut()
                .unwrap()
                .handle_neighbor_down(self.ids[i], now);
            self.flush(n);
        }
    }

    /// Restarts router `i` with an empty database (a fresh process) and its keys; its links
    /// come back up.
    pub(super) fn restart(&mut self, i: usize) {
        let now = self.now;
        let mut t = Topology::new(self.ids[i], format!("site-{i}"), self.modes[i], now);
        t.set_local_keys(self.keys[i].clone(), now);
        self.routers[i] = Some(t);
        for (n, _) in self.up_links(i) {
            self.up_ends(i, n);
        }
        self.flush(i);
    }

    fn up_ends(&mut self, a: usize, b: usize) {
        let now = self.now;
        let cost = self.links[&pair(a, b)].cost;
        self.routers[a]
            .as_mut()
            .unwrap()
            .handle_neighbor_up(self.ids[b], cost, now);
        self.routers[b]
            .as_mut()
            .unwrap()
            .handle_neighbor_up(self.ids[a], cost, now);
        self.flush(a);
        self.flush(b);
    }

    fn down_ends(&mut self, a: usize, b: usize) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            self.routers[x]
                .as_mut()
                .unwrap()
                .handle_neighbor_down(self.ids[y], now);
            self.flush(x);
        }
    }

    /// Moves everything router `i` wants to send onto the network and re-arms its timer.
    fn flush(&mut self, i: usize) {
        let Some(t) = self.routers[i].as_mut() else {
            return;
        };
        let at = t.poll_timeout();
        if at != self.armed[i] {
            self.armed[i] = at;
            if let Some(at) = at {
                self.timers.push(Reverse((at, i)));
            }
        }
        let mut out = Vec::new();
        while let Some(m) = t.poll_transmit() {
            out.push(m);
        }
        for (to_id, ad) in out {
            let to = self.index[&to_id];
            assert!(
                self.link_up(i, to),
                "router {i} sent to {to} over a down link"
            );
            self.counters.sent += 1;
            if self.loss_ppm > 0 && self.rng.below(1_000_000) < self.loss_ppm {
                self.counters.lost += 1;
                continue;
            }
            let (lo, hi) = self.delay_ms;
            let delay = Duration::from_millis(lo + self.rng.below(hi - lo + 1));
            let last = self.last_delivery.entry((i, to)).or_insert(self.now);
            let at = (self.now + delay).max(*last);
            *last = at;
            let id = self.next_msg;
            self.next_msg += 1;
            let epoch = self.links[&pair(i, to)].epoch;
            self.in_flight.insert(
                id,
                InFlight {
                    from: i,
                    to,
                    epoch,
                    ad,
                },
            );
            self.queue.push(Reverse((at, id)));
        }
    }

    /// The earliest armed timer of a live router (every handle_* call is followed by
    /// `flush`, which pushes the router's current timeout; entries that no longer match are
    /// dropped here).
    fn next_timer(&mut self) -> Option<(Instant, usize)> {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            match &self.routers[i] {
                Some(t) if t.poll_timeout() == Some(at) => return Some((at, i)),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Runs the next event (a delivery or a timer) if it is due by `until`.
    fn step(&mut self, until: Instant) -> bool {
        let msg = self.queue.peek().map(|Reverse((at, _))| *at);
        let timer = self.next_timer();
        match (msg, timer) {
            (Some(at), t) if at <= until && t.is_none_or(|(tt, _)| at <= tt) => {
                let Reverse((_, id)) = self.queue.pop().unwrap();
                let m = self.in_flight.remove(&id).unwrap();
                self.now = at;
                if !self.link_up(m.from, m.to) || self.links[&pair(m.from, m.to)].epoch != m.epoch {
                    return true;
                }
                self.counters.delivered += 1;
                self.last_activity = at;
                let from = self.ids[m.from];
                self.routers[m.to]
                    .as_mut()
                    .unwrap()
                    .handle_advertisement(from, m.ad, at);
                self.flush(m.to);
                true
            }
            (_, Some((at, i))) if at <= until => {
                self.timers.pop();
                self.now = self.now.max(at);
                let now = self.now;
                self.routers[i].as_mut().unwrap().handle_timeout(now);
                self.flush(i);
                true
            }
            _ => false,
        }
    }

    /// Runs until no message is in flight (timers due before the last message included).
    /// Returns how long it took.
    pub(super) fn run_quiet(&mut self) -> Duration {
        let t0 = self.now;
        self.last_activity = t0;
        while !self.queue.is_empty() {
            let at = self.queue.peek().unwrap().0.0;
            self.step(at);
        }
        self.last_activity - t0
    }

    /// Runs every event up to `now + d`, then sets the clock there.
    pub(super) fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = until;
    }

    /// Up links of every router.
    pub(super) fn adjacency(&self) -> Vec<Vec<(usize, u32)>> {
        let mut adj = vec![Vec::new(); self.n()];
        for (&(a, b), l) in &self.links {
            if self.link_up(a, b) {
                adj[a].push((b, l.cost));
                adj[b].push((a, l.cost));
            }
        }
        adj
    }

    /// Shortest path costs from `src` over up links, paths never through an edge router.
    pub(super) fn truth_from(&self, src: usize, adj: &[Vec<(usize, u32)>]) -> Vec<Option<u64>> {
        let mut dist = vec![None; self.n()];
        let mut heap = BinaryHeap::new();
        dist[src] = Some(0);
        heap.push(Reverse((0u64, src)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if dist[u].is_some_and(|du| du < d) {
                continue;
            }
            if u != src && self.modes[u] == RouterMode::Edge {
                continue;
            }
            for &(v, c) in &adj[u] {
                let nd = d + u64::from(c.max(1));
                if dist[v].is_none_or(|dv| nd < dv) {
                    dist[v] = Some(nd);
                    heap.push(Reverse((nd, v)));
                }
            }
        }
        dist
    }

    /// Checks every live router's routes and key targets against the global truth; panics
    /// with the first difference. Checked:
    /// - `next_hop(dest)` is `None` exactly when `dest` is dead or unreachable;
    /// - otherwise it is an up neighbour on a shortest path, and not an edge router unless it
    ///   is `dest` itself, and `path_cost` is the shortest cost;
    /// - following every router's own next hops from any source reaches `dest` at exactly
    ///   the shortest cost, through interior routers only;
    /// - `targets(key)` is exactly the reachable live routers with connectors for the key,
    ///   at their shortest cost.
    pub(super) fn check(&self) {
        let n = self.n();
        let adj = self.adjacency();
        let truth: Vec<Vec<Option<u64>>> = (0..n)
            .map(|i| {
                if self.alive(i) {
                    self.truth_from(i, &adj)
                } else {
                    vec![None; n]
                }
            })
            .collect();
        let cost = |a: usize, b: usize| u64::from(self.links[&pair(a, b)].cost.max(1));
        for i in (0..n).filter(|i| self.alive(*i)) {
            let t = self.topo(i);
            for j in (0..n).filter(|j| *j != i) {
                let got = t.next_hop(self.ids[j]);
                let Some(d) = truth[i][j] else {
                    assert_eq!(got, None, "router {i} has a route to unreachable {j}");
                    assert_eq!(t.path_cost(self.ids[j]), None);
                    continue;
                };
                let hop = got.unwrap_or_else(|| panic!("router {i} has no route to {j}"));
                let k = self.index[&hop];
                assert!(self.link_up(i, k), "router {i} next hop {k} is not up");
                assert!(
                    k == j || self.modes[k] == RouterMode::Interior,
                    "router {i} routes to {j} through edge router {k}"
                );
                assert_eq!(
                    Some(cost(i, k) + truth[k][j].unwrap_or(u64::MAX / 2)),
                    Some(d),
                    "router {i} next hop {k} to {j} is not on a shortest path"
                );
                assert_eq!(t.path_cost(self.ids[j]), Some(d as u32), "cost {i}->{j}");
                // Follow the hops router by router.
                let (mut at, mut total, mut hops) = (i, 0, 0);
                while at != j {
                    let next = self.index[&self.topo(at).next_hop(self.ids[j]).unwrap()];
                    if at != i {
                        assert_eq!(
                            self.modes[at],
                            RouterMode::Interior,
                            "path {i}->{j} transits edge {at}"
                        );
                    }
                    total += cost(at, next);
                    at = next;
                    hops += 1;
                    assert!(hops <= n, "routing loop from {i} to {j}");
                }
                assert_eq!(total, d, "path {i}->{j} is not shortest");
            }
            let mut all_keys: Vec<&RoutingKey> =
                self.keys.iter().flatten().map(|k| &k.key).collect();
            all_keys.sort();
            all_keys.dedup();
            for key in all_keys {
                let mut want: Vec<(SiteId, u32)> = (0..n)
                    .filter(|j| self.alive(*j) && truth[i][*j].is_some())
                    .filter(|j| {
                        self.keys[*j]
                            .iter()
                            .any(|k| &k.key == key && k.connectors > 0)
                    })
                    .map(|j| (self.ids[j], truth[i][j].unwrap() as u32))
                    .collect();
                want.sort();
                let mut got: Vec<(SiteId, u32)> = t
                    .targets(key, &|_| 0)
                    .into_iter()
                    .map(|tg| (tg.router, tg.cost))
                    .collect();
                got.sort();
                assert_eq!(got, want, "router {i} targets for {key}");
                assert_eq!(t.has_route(key), !want.is_empty());
            }
        }
    }
}

/// A key advertisement with one connector.
pub(super) fn key_ad(key: &str) -> KeyAd {
    KeyAd {
        key: key.parse().unwrap(),
        connectors: 1,
        protocol: Protocol::Tcp,
        port: 8080,
    }
}

/// `n` routers (about one in ten edge), interior routers joined by a random spanning tree
/// plus extra random links (about 2 per router in all), each edge router linked to one or
/// two interior routers; costs 1..=10. Five keys spread over a few routers each.
pub(super) fn random_network(n: usize, seed: u64) -> Sim {
    let mut rng = XorShift::new(seed ^ 0xA5A5);
    let modes: Vec<RouterMode> = (0..n)
        .map(|i| {
            if i > 1 && rng.below(10) == 0 {
                RouterMode::Edge
            } else {
                RouterMode::Interior
            }
        })
        .collect();
    let mut sim = Sim::new(modes.clone(), seed);
    let interior: Vec<usize> = (0..n)
        .filter(|i| modes[*i] == RouterMode::Interior)
        .collect();
    for (pos, &i) in interior.iter().enumerate().skip(1) {
        let j = interior[rng.below(pos as u64) as usize];
        let c = 1 + rng.below(10) as u32;
        sim.add_link(i, j, c);
    }
    for _ in 0..interior.len() {
        let a = interior[rng.below(interior.len() as u64) as usize];
        let b = interior[rng.below(interior.len() as u64) as usize];
        if a != b {
            let c = 1 + rng.below(10) as u32;
            sim.add_link(a, b, c);
        }
    }
    for i in (0..n).filter(|i| modes[*i] == RouterMode::Edge) {
        for _ in 0..1 + rng.below(2) {
            let j = interior[rng.below(interior.len() as u64) as usize];
            let c = 1 + rng.below(10) as u32;
            sim.add_link(i, j, c);
        }
    }
    for k in 0..5 {
        for _ in 0..3 {
            let i = rng.below(n as u64) as usize;
            let mut keys = sim.keys[i].clone();
            keys.push(key_ad(&format!("svc-{k}")));
            sim.set_keys(i, keys);
        }
    }
    sim
}

/// `n` interior routers in a ring, cost 1, key `svc` at router 0 and router `n / 2`.
pub(super) fn ring_network(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(vec![RouterMode::Interior; n], seed);
    for i in 0..n {
        sim.add_link(i, (i + 1) % n, 1);
    }
    sim.set_keys(0, vec![key_ad("svc")]);
    sim.set_keys(n / 2, vec![key_ad("svc")]);
    sim
}
