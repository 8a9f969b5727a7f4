//! Flows: client TCP connections carried from a listener at one router to a connector at
//! another, one link stream per connection, through as many routers as the routes need.
//!
//! Roles of a router in a flow:
//! - **ingress**: a listener accepted the client. The router asks the topology for targets
//!   ([`Topology::choose`](crate::routing::Topology::choose)); a local target is connected
//!   directly, a remote one gets a stream on the link to the next hop, opened with a
//!   [`FlowHeader`](crate::wire::FlowHeader). The client's first bytes (at most
//!   [`REPLAY_LIMIT`]) are sent along at once and kept until the egress answers; a
//!   connect failure there is retried at the next target with the same bytes.
//! - **transit**: a stream for another router is forwarded on a new stream to the next hop
//!   towards it, header first, then spliced.
//! - **egress**: a stream for this router is connected to a local connector of its key
//!   (within [`CONNECT_TIMEOUT`]); the answer ([`FlowStatusFrame`](crate::wire::FlowStatusFrame))
//!   goes back before any payload byte.
//!
//! Protocol details, memory bounds and reset semantics: docs/flows.md.
//!
//! # Layout
//! - `splice`: copying both ways with bounded buffers, half-close and resets.
//! - `tcp`: the ingress and egress roles.
//! - `config`: listener and connector specs, their reconciliation, accept loops and status.
//! - `reasons`: why a listener has no target, or which sites it reaches; a connector's
//!   backend failures.
//! - `records`: each flow from start to end; the ring of recent ended flows; failure logs.
//! - `stats`: per-key flow statistics for `/metrics`.
//! - `transit`: the transit role, reading the egress's answer on its way back.
//! - `udp`: UDP flows (ingress, transit, egress) and how their datagrams travel.

mod config;
mod http;
mod reasons;
pub(crate) mod records;
mod splice;
mod stats;
mod tcp;
mod transit;
mod udp;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_certs::SiteId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::LinkHandle;
use crate::link::routes::Routes;
use crate::routing::{RoutingKey, Target};
use crate::wire::RouterMode;

pub use config::{ConnectorSpec, ConnectorStatus, ListenerSpec, ListenerStatus, ResourceState};
pub(crate) use config::{
    connectors as config_connectors, listeners as config_listeners,
    set_connectors as config_set_connectors, set_listeners as config_set_listeners,
};
pub use http::metrics::KeyMetricsSnapshot;
pub use http::{ERROR_HEADER, HEADER_READ_TIMEOUT, MAX_HEAD_BYTES, RESPONSE_TIMEOUT};
pub use reasons::{BACKEND_ATTEMPTS, ListenerTarget};
pub use records::{FLOW_LOG_EVERY, FlowOutcome, FlowRecord, FlowSite, MAX_REASON, RECENT_FLOWS};
pub use splice::COPY_BUFFER;
pub use stats::{
    DURATION_BUCKETS, FlowKeyStats, HistogramSnapshot, MAX_KEYS, OTHER_KEY, SETUP_BUCKETS,
};
pub use udp::{
    DropReason as UdpDropReason, EGRESS_IDLE_TIMEOUT as UDP_EGRESS_IDLE_TIMEOUT,
    IDLE_TIMEOUT as UDP_IDLE_TIMEOUT, MAX_FLOWS_PER_LISTENER as UDP_MAX_FLOWS_PER_LISTENER,
    MAX_QUEUED_BYTES as UDP_MAX_QUEUED_BYTES, ONE_SHOT_IDLE as UDP_ONE_SHOT_IDLE, UdpKeyStats,
};

/// Client bytes an ingress reads (and keeps, for a retry elsewhere) before the egress has
/// answered.
pub const REPLAY_LIMIT: usize = 64 * 1024;
/// How long an egress waits for a connector's backend to accept a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a router waits for a flow header on a stream a peer opened, and an ingress for
/// the egress's answer (the egress's connect timeout plus the way there and back).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a router waits to open a stream on a link (a link at its stream limit holds new
/// opens back); past it the ingress tries the next target, a transit router answers no-route.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP keepalive on client and backend sockets: a peer host that vanishes without a FIN or
/// RST is noticed after about idle + 3 x interval, and its flow ends.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Interval between TCP keepalive probes once idle.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Routers a flow may pass through; a header that has passed more is answered no-route.
pub const MAX_HOPS: u8 = 32;
/// Targets an ingress tries for one client connection before giving up.
pub const MAX_ATTEMPTS: usize = 8;

/// What a router does in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowRole {
    /// A listener here accepted the client.
    Ingress,
    /// Bytes pass through here.
    Transit,
    /// A connector here reaches the backend.
    Egress,
}

impl FlowRole {
    /// Its word in JSON, labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowRole::Ingress => "ingress",
            FlowRole::Transit => "transit",
            FlowRole::Egress => "egress",
        }
    }
}

/// One active flow as shown to operators.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatus {
    /// The flow id chosen by the origin (hex), the same at every router of the flow.
    pub id: String,
    /// The routing key.
    pub routing_key: String,
    /// The ingress router.
    pub origin: SiteId,
    /// The egress router.
    pub destination: SiteId,
    /// What this router does in it.
    pub role: FlowRole,
    /// Bytes moved from the client towards the backend through this router.
    pub bytes_forward: u64,
    /// Bytes moved from the backend towards the client through this router.
    pub bytes_back: u64,
    /// Seconds since the flow started here.
    pub age_seconds: u64,
}

/// Site names by id.
type SiteNames = Arc<HashMap<SiteId, String>>;

/// A flow in the registry of active ones.
pub(crate) struct ActiveFlow {
    id: u64,
    key: String,
    origin: SiteId,
    destination: SiteId,
    role: FlowRole,
    started: std::time::Instant,
    /// Counted in the key's statistics (client flows; not the pooled HTTP/2 connections
    /// between routers).
    counted: bool,
    /// Listed in `GET /v1/flows` (not an HTTP client connection, whose requests travel on the
    /// pooled connections listed there).
    shown: bool,
    pub(crate) forward: Arc<AtomicU64>,
    pub(crate) back: Arc<AtomicU64>,
}

/// Keeps a pooled connection between routers among the active flows while it lives.
pub(crate) struct FlowGuard {
    flows: Arc<Flows>,
    id: u64,
    active: Arc<ActiveFlow>,
}

impl FlowGuard {
    /// Its byte counters (forward, back), shown among the active flows.
    pub(crate) fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.active.forward.clone(), self.active.back.clone())
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        self.flows.active.lock().unwrap().remove(&self.id);
    }
}

/// Counts one flow (being set up, or running) against a target router, for balancing.
pub(crate) struct Outstanding {
    flows: Arc<Flows>,
    router: SiteId,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let mut o = self.flows.outstanding.lock().unwrap();
        if let Some(n) = o.get_mut(&self.router) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.remove(&self.router);
            }
        }
    }
}

/// The flow side of a router: listeners, connectors, active flows, and what flows need from
/// the links and the routes.
pub(crate) struct Flows {
    pub(crate) me: SiteId,
    pub(crate) mode: RouterMode,
    pub(crate) links: Arc<crate::link::router::Shared>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) config: config::Config,
    /// Flows in progress per target router, counted at the ingress (balancing).
    outstanding: Mutex<HashMap<SiteId, u32>>,
    /// Active flows by local registry id.
    active: Mutex<BTreeMap<u64, Arc<ActiveFlow>>>,
    /// Per-key flow statistics.
    stats: stats::Stats,
    /// Recently ended flows.
    recent: records::Recent,
    /// Site names by id, and the topology version they were read at.
    names: Mutex<Option<(u64, SiteNames)>>,
    next_registry_id: AtomicU64,
    /// Base of the flow ids this router chooses as an origin (random per run).
    next_flow_id: AtomicU64,
    pub(crate) tasks: TaskTracker,
    /// TCP flows in progress (client, transit and egress ends): a stopping router waits for
    /// them before it closes its links.
    pub(crate) tcp_flows: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Per-key request metrics of HTTP listeners.
    pub(crate) http_metrics: http::metrics::HttpMetrics,
    /// HTTP/2 connections to egress routers.
    pub(crate) http_peers: http::Peers,
    /// Per-key datagram counters of UDP flows (every role counts into them).
    pub(crate) udp_stats: udp::UdpStats,
    /// How long a UDP flow may pass no datagram either way before its ingress ends it
    /// ([`UDP_IDLE_TIMEOUT`]; tests shorten it).
    pub(crate) udp_idle: Mutex<Duration>,
    /// How long a UDP flow that carried one datagram from its client and had its reply may
    /// stay silent ([`UDP_ONE_SHOT_IDLE`]; tests shorten it).
    pub(crate) udp_one_shot_idle: Mutex<Duration>,
    /// Bytes of client datagrams one UDP listener may hold in its flows' queues and kept
    /// for a retry ([`UDP_MAX_QUEUED_BYTES`]; tests shrink it).
    pub(crate) udp_queued_bytes: Mutex<usize>,
    /// How long a UDP flow may stay idle at its egress before the egress ends it
    /// ([`UDP_EGRESS_IDLE_TIMEOUT`]; tests shorten it).
    pub(crate) udp_egress_idle: Mutex<Duration>,
}

impl Flows {
    pub(crate) fn new(
        me: SiteId,
        mode: RouterMode,
        links: Arc<crate::link::router::Shared>,
        routes: Arc<Routes>,
    ) -> Arc<Flows> {
        let shutdown = links.shutdown.child_token();
        Arc::new(Flows {
            me,
            mode,
            links,
            routes,
            config: config::Config::default(),
            outstanding: Mutex::default(),
            active: Mutex::default(),
            stats: stats::Stats::default(),
            recent: records::Recent::default(),
            names: Mutex::default(),
            next_registry_id: AtomicU64::new(1),
            next_flow_id: AtomicU64::new(random_u64() >> 16 << 16),
            tasks: TaskTracker::new(),
            tcp_flows: TaskTracker::new(),
            shutdown,
            http_metrics: http::metrics::HttpMetrics::default(),
            http_peers: http::Peers::default(),
            udp_stats: udp::UdpStats::default(),
            udp_idle: Mutex::new(udp::IDLE_TIMEOUT),
            udp_one_shot_idle: Mutex::new(udp::ONE_SHOT_IDLE),
            udp_queued_bytes: Mutex::new(udp::MAX_QUEUED_BYTES),
            udp_egress_idle: Mutex::new(udp::EGRESS_IDLE_TIMEOUT),
        })
    }

    /// A new flow id (as origin).
    pub(crate) fn new_flow_id(&self) -> u64 {
        self.next_flow_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Ranked targets for a listener's strategy. Targets that tie (same key, same path cost +
    /// outstanding flows) are shuffled, so one connection after another (none outstanding)
    /// still spreads over equally good sites.
    pub(crate) fn choose(&self, strategy: &crate::routing::Strategy) -> Vec<Target> {
        let outstanding = self.outstanding.lock().unwrap().clone();
        let f = |r: SiteId| outstanding.get(&r).copied().unwrap_or(0);
        let mut targets = self.routes.read().choose(strategy, &f, random_u64());
        let score = |t: &Target| (t.key.clone(), u64::from(t.cost) + u64::from(f(t.router)));
        shuffle_ties(&mut targets, score, random_u64);
        targets
    }

    /// [`Flows::choose`], keeping the targets whose router serves the key with a protocol
    /// of the listener's family (`tcp`; `http` and `http2`; `udp`). With a client hash
    /// (session affinity) the targets are ordered for that client instead
    /// ([`crate::routing::affinity_order`]).
    pub(crate) fn choose_family(
        &self,
        strategy: &crate::routing::Strategy,
        family: crate::routing::Family,
        client: Option<u64>,
    ) -> Vec<Target> {
        let mut targets = match client {
            None => self.choose(strategy),
            Some(hash) => self.routes.read().choose_for_client(strategy, hash),
        };
        let routes = self.routes.read();
        targets.retain(|t| {
            routes
                .key_protocol(t.router, &t.key)
                .is_some_and(|p| p.family() == family)
        });
        if let Some(hash) = client {
            crate::routing::affinity_order(&mut targets, hash);
        }
        targets
    }

    /// A new stream on the link to `hop` (within [`OPEN_TIMEOUT`]) for a flow to `target`,
    /// and the encoded flow header that must open it. `Err` says why there is none (nothing
    /// was sent: another target may be tried).
    pub(crate) async fn open_flow(
        &self,
        target: &Target,
        hop: SiteId,
        flow_id: u64,
        protocol: crate::routing::Protocol,
        client: Option<std::net::SocketAddr>,
    ) -> Result<(crate::link::LinkStream, bytes::BytesMut), String> {
        self.open_flow_on(target, hop, flow_id, protocol, client)
            .await
            .map(|(stream, header, _)| (stream, header))
    }

    /// [`Flows::open_flow`], also giving the link the stream is on (a UDP flow's QUIC
    /// datagrams must go on that same link: with two links up to the peer, another lookup
    /// could give the other one). The header carries `client` when the next hop can read it
    /// (link protocol 1.3).
    pub(crate) async fn open_flow_on(
        &self,
        target: &Target,
        hop: SiteId,
        flow_id: u64,
        protocol: crate::routing::Protocol,
        client: Option<std::net::SocketAddr>,
    ) -> Result<(crate::link::LinkStream, bytes::BytesMut, LinkHandle), String> {
        let link = self
            .link_to(hop)
            .ok_or_else(|| format!("no link up to next hop {hop}"))?;
        if protocol == crate::routing::Protocol::Udp {
            link.carries_udp(&self.site_name(hop))?;
        }
        let stream = tokio::time::timeout(OPEN_TIMEOUT, link.open_stream())
            .await
            .map_err(|_| {
                format!(
                    "no stream to {hop} within {} s (the link is at its stream limit)",
                    OPEN_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot open a stream to {hop}: {e}"))?;
        let header = crate::wire::FlowHeader {
            routing_key: target.key.as_str().to_owned(),
            destination: *target.router.as_bytes(),
            origin: *self.me.as_bytes(),
            flow_id,
            protocol,
            hops: 0,
            client: client.filter(|_| link.carries_client()),
        };
        let mut out = bytes::BytesMut::new();
        header.encode(&mut out);
        Ok((stream, out, link))
    }

    /// An up link to a neighbour.
    pub(crate) fn link_to(&self, peer: SiteId) -> Option<LinkHandle> {
        self.links.link_handle(peer)
    }

    /// Counts a flow against `router` until the guard drops. Taken when an ingress starts
    /// trying a target, so a burst of new connections spreads over the targets at once.
    pub(crate) fn hold(self: &Arc<Self>, router: SiteId) -> Outstanding {
        *self.outstanding.lock().unwrap().entry(router).or_insert(0) += 1;
        Outstanding {
            flows: self.clone(),
            router,
        }
    }

    /// Shows a pooled connection between routers (HTTP) among the active flows until the
    /// guard drops; it is not counted in the statistics or the recent flows.
    pub(crate) fn register(
        self: &Arc<Self>,
        id: u64,
        key: &RoutingKey,
        origin: SiteId,
        destination: SiteId,
        role: FlowRole,
    ) -> FlowGuard {
        let (registry_id, active) = self.insert_active(ActiveFlow {
            id,
            key: key.as_str().to_owned(),
            origin,
            destination,
            role,
            started: std::time::Instant::now(),
            counted: false,
            shown: true,
            forward: Arc::default(),
            back: Arc::default(),
        });
        FlowGuard {
            flows: self.clone(),
            id: registry_id,
            active,
        }
    }

    /// Adds a flow to the active ones; its registry id.
    fn insert_active(&self, flow: ActiveFlow) -> (u64, Arc<ActiveFlow>) {
        let registry_id = self.next_registry_id.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(flow);
        self.active
            .lock()
            .unwrap()
            .insert(registry_id, flow.clone());
        (registry_id, flow)
    }

    /// Removes a counted flow from the active ones and adds its bytes to its key's totals,
    /// both under the registry's lock, so [`Flows::key_stats`] never counts them twice or
    /// not at all. Returns its bytes (forward, back).
    fn remove_active(&self, registry_id: u64, stats: &stats::KeyStats) -> (u64, u64) {
        let mut active = self.active.lock().unwrap();
        let Some(flow) = active.remove(&registry_id) else {
            return (0, 0);
        };
        let f = flow.forward.load(Ordering::Relaxed);
        let b = flow.back.load(Ordering::Relaxed);
        stats.add_bytes(flow.role, f, b);
        (f, b)
    }

    /// Per-key flow statistics, the bytes of running flows included.
    pub(crate) fn key_stats(&self) -> Vec<FlowKeyStats> {
        // Under the registry's lock only the counters are read (a flow ending now moves its
        // bytes to its key's totals either before or after both); the rest after.
        let (running, totals) = {
            let active = self.active.lock().unwrap();
            let running: Vec<(Arc<ActiveFlow>, u64, u64)> = active
                .values()
                .filter(|f| f.counted)
                .map(|f| {
                    let fw = f.forward.load(Ordering::Relaxed);
                    (f.clone(), fw, f.back.load(Ordering::Relaxed))
                })
                .collect();
            (running, self.stats.byte_totals())
        };
        let mut by_key: HashMap<&str, Vec<(FlowRole, u64, u64)>> = HashMap::new();
        for (f, fw, b) in &running {
            by_key.entry(&f.key).or_default().push((f.role, *fw, *b));
        }
        self.stats.snapshot(&by_key, &totals)
    }

    /// Site names by id, as the routing view knows them (read again only when the topology
    /// changed, so a flood of failures does not copy it each time).
    pub(crate) fn site_names(&self) -> SiteNames {
        let topo = self.routes.read();
        let mut cached = self.names.lock().unwrap();
        if let Some((version, names)) = &*cached
            && *version == topo.version()
        {
            return names.clone();
        }
        let names: Arc<HashMap<SiteId, String>> =
            Arc::new(topo.routers().into_iter().map(|r| (r.id, r.name)).collect());
        *cached = Some((topo.version(), names.clone()));
        names
    }

    /// The name of site `id`, or its id.
    pub(crate) fn site_name(&self, id: SiteId) -> String {
        self.site_names()
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Datagram counts of UDP flows per key, sorted by key (kernel drops on UDP listener
    /// sockets read now). What the QUIC links lost before a flow saw it (datagrams for no
    /// flow, or for a flow whose queue was full) is under the key `""` as `no-flow` and
    /// `congested`.
    pub(crate) fn udp_stats(&self) -> Vec<UdpKeyStats> {
        let mut stats = self.udp_stats.snapshot();
        let links = self.links.datagram_counters();
        let no_flow = links.no_flow.load(Ordering::Relaxed);
        let queue_full = links.queue_full.load(Ordering::Relaxed);
        if no_flow + queue_full > 0 {
            if stats.first().is_none_or(|s| !s.key.is_empty()) {
                stats.insert(
                    0,
                    UdpKeyStats {
                        key: String::new(),
                        dropped: UdpDropReason::ALL.iter().map(|r| (*r, 0)).collect(),
                        ..Default::default()
                    },
                );
            }
            for (reason, n) in &mut stats[0].dropped {
                match reason {
                    UdpDropReason::NoFlow => *n += no_flow,
                    UdpDropReason::Congested => *n += queue_full,
                    _ => {}
                }
            }
        }
        stats
    }

    /// The recently ended flows, oldest first.
    pub(crate) fn recent_flows(&self) -> Vec<FlowRecord> {
        self.recent.records(&self.site_names())
    }

    /// Active flows, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<FlowStatus> {
        self.active
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.shown)
            .map(|r| FlowStatus {
                id: format!("{:016x}", r.id),
                routing_key: r.key.clone(),
                origin: r.origin,
                destination: r.destination,
                role: r.role,
                bytes_forward: r.forward.load(Ordering::Relaxed),
                bytes_back: r.back.load(Ordering::Relaxed),
                age_seconds: r.started.elapsed().as_secs(),
            })
            .collect()
    }
}

/// Shuffles each run of consecutive items with equal `score` (Fisher–Yates, `rand` as the
/// random source), leaving the order between runs alone.
pub(crate) fn shuffle_ties<T, S: PartialEq>(
    items: &mut [T],
    score: impl Fn(&T) -> S,
    mut rand: impl FnMut() -> u64,
) {
    let mut start = 0;
    while start < items.len() {
        let s = score(&items[start]);
        let mut end = start + 1;
        while end < items.len() && score(&items[end]) == s {
            end += 1;
        }
        for i in (start + 1..end).rev() {
            let j = start + (rand() % (i - start + 1) as u64) as usize;
            items.swap(i, j);
        }
        start = end;
    }
}

/// A random number (balancing picks, flow id bases).
pub(crate) fn random_u64() -> u64 {
    // A per-thread xorshift64 seeded once from the system's source: this only spreads flows
    // over equal targets (no secret depends on it), and a system call per connection for it
    // showed in the new-connection profile.
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            use ring::rand::SecureRandom;
            let mut b = [0u8; 8];
            let _ = ring::rand::SystemRandom::new().fill(&mut b);
            u64::from_le_bytes(b) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Serves a stream a peer opened: transit or egress, by its header.
pub(crate) fn serve_stream(flows: &Arc<Flows>, incoming: crate::link::IncomingStream) {
    let f = flows.clone();
    flows.tasks.spawn(async move {
        let cancel = f.shutdown.clone();
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tcp::serve_stream(f, incoming) => {}
        }
    });
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::shuffle_ties;

    #[test]
    fn only_ties_are_shuffled() {
        let mut seen_first = std::collections::BTreeSet::new();
        let mut seed = 1u64;
        for _ in 0..200 {
            let mut v = [(1, 'a'), (1, 'b'), (1, 'c'), (2, 'd'), (3, 'e'), (3, 'f')];
            shuffle_ties(
                &mut v,
                |x| x.0,
                || {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    seed >> 33
                },
            );
            assert_eq!(v.map(|x| x.0), [1, 1, 1, 2, 3, 3]);
            seen_first.insert(v[0].1);
        }
        assert_eq!(seen_first.len(), 3, "every tied item came first sometimes");
    }
}
