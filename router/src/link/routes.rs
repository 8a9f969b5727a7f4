//! The routing task of a running router: it owns the [`Topology`] and connects it to the links.
//!
//! Events come in on one channel, in the order they happened: a link came up (with its cost
//! and a sender for its control stream) or went down, an advertisement arrived on a control
//! stream, the local keys changed (connectors were reconciled). Per peer site the task keeps
//! one neighbour, up while any link to it is, with the cost of the cheapest such link.
//! Advertisements the topology wants sent go out on the cheapest up link's control stream;
//! timers come from [`Topology::poll_timeout`].
//!
//! Flows read the topology through a read lock held for one query (a few microseconds); the
//! task holds the write lock only while feeding it one event. [`Routes::subscribe`] gives the
//! topology version after every change (status pages and tests wait on it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use skiff_certs::SiteId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::routing::{Advertisement, KeyAd, Topology};
use crate::wire::{ControlFrame, RouterMode};

/// Identifies one up link to the routing task (several links may join the same peers).
pub(crate) type RouteLinkId = u64;

/// Something the routing task must learn.
pub(crate) enum RouteEvent {
    /// A link's hello exchange finished.
    LinkUp {
        link: RouteLinkId,
        peer: SiteId,
        cost: u32,
        control: mpsc::UnboundedSender<ControlFrame>,
    },
    /// That link ended.
    LinkDown { link: RouteLinkId },
    /// A link-state frame arrived from `from`.
    Advertisement { from: SiteId, ad: Advertisement },
    /// This router's keys (from its connectors).
    LocalKeys(Vec<KeyAd>),
}

/// The topology, shared between the routing task (writer) and flows (readers).
pub(crate) struct Routes {
    topology: RwLock<Topology>,
    events: mpsc::UnboundedSender<RouteEvent>,
    changes: watch::Sender<u64>,
    next_link: AtomicU64,
}

impl Routes {
    /// A topology that knows only this router, and the receiver the routing task reads.
    pub(crate) fn new(
        me: SiteId,
        site_name: String,
        mode: RouterMode,
    ) -> (Arc<Routes>, mpsc::UnboundedReceiver<RouteEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let routes = Routes {
            topology: RwLock::new(Topology::new(me, site_name, mode, Instant::now())),
            events: tx,
            changes: watch::Sender::new(0),
            next_link: AtomicU64::new(1),
        };
        (Arc::new(routes), rx)
    }

    /// The topology for one query. Do not hold it across an await.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the routing task about an event (dropped if the router is shutting down).
    pub(crate) fn send(&self, event: RouteEvent) {
        let _ = self.events.send(event);
    }

    /// A fresh id for a link coming up.
    pub(crate) fn link_id(&self) -> RouteLinkId {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver that sees the topology version after every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

struct UpLink {
    peer: SiteId,
    cost: u32,
    control: mpsc::UnboundedSender<ControlFrame>,
}

/// The links the routing task knows, grouped into neighbours.
#[derive(Default)]
struct Neighbours {
    links: HashMap<RouteLinkId, UpLink>,
}

impl Neighbours {
    /// The neighbour cost of `peer`: its cheapest up link.
    fn cost(&self, peer: SiteId) -> Option<u32> {
        self.links
            .values()
            .filter(|l| l.peer == peer)
            .map(|l| l.cost)
            .min()
    }

    /// Sends on the cheapest link to `peer` whose driver still runs.
    fn send(&self, peer: SiteId, frame: ControlFrame) {
        let mut links: Vec<&UpLink> = self.links.values().filter(|l| l.peer == peer).collect();
        links.sort_by_key(|l| l.cost);
        let mut frame = frame;
        for l in links {
            match l.control.send(frame) {
                Ok(()) => return,
                Err(mpsc::error::SendError(f)) => frame = f,
            }
        }
        tracing::debug!(%peer, "no link left to send a link-state frame on");
    }
}

/// Runs the routing task until `shutdown`.
pub(crate) async fn run(
    routes: Arc<Routes>,
    mut events: mpsc::UnboundedReceiver<RouteEvent>,
    shutdown: CancellationToken,
) {
    let mut neighbours = Neighbours::default();
    loop {
        let (outbox, deadline, version) = {
            let mut topo = routes.topology.write().unwrap_or_else(|e| e.into_inner());
            let mut outbox = Vec::new();
            while let Some(t) = topo.poll_transmit() {
                outbox.push(t);
            }
            (outbox, topo.poll_timeout(), topo.version())
        };
        for (peer, ad) in outbox {
            neighbours.send(peer, ControlFrame::LinkState(ad));
        }
        routes.changes.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => {
                let Some(event) = event else { return };
                let mut topo = routes.topology.write().unwrap_or_else(|e| e.into_inner());
                apply(&mut topo, &mut neighbours, event, Instant::now());
                // Take whatever else is queued under the same lock.
                while let Ok(event) = events.try_recv() {
                    apply(&mut topo, &mut neighbours, event, Instant::now());
                }
            }
            () = sleep => {
                let mut topo = routes.topology.write().unwrap_or_else(|e| e.into_inner());
                topo.handle_timeout(Instant::now());
            }
        }
    }
}

fn apply(topo: &mut Topology, neighbours: &mut Neighbours, event: RouteEvent, now: Instant) {
    match event {
        RouteEvent::LinkUp {
            link,
            peer,
            cost,
            control,
        } => {
            let before = neighbours.cost(peer);
            neighbours.links.insert(
                link,
                UpLink {
                    peer,
                    cost,
                    control,
                },
            );
            let after = neighbours.cost(peer);
            if let Some(cost) = after.filter(|_| before != after) {
                topo.handle_neighbor_up(peer, cost, now);
            }
        }
        RouteEvent::LinkDown { link } => {
            let Some(peer) = neighbours.links.get(&link).map(|l| l.peer) else {
                return;
            };
            neighbours.links.remove(&link);
            match neighbours.cost(peer) {
                None => topo.handle_neighbor_down(peer, now),
                // Still a neighbour through another link: advertisements queued on the lost
                // link may be gone with it, so sync the peer again (same cost or not).
                Some(cost) => topo.handle_neighbor_up(peer, cost, now),
            }
        }
        RouteEvent::Advertisement { from, ad } => topo.handle_advertisement(from, ad, now),
        RouteEvent::LocalKeys(keys) => topo.set_local_keys(keys, now),
    }
}

/// The network as one router knows it, for `skiff network status`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// This router's site id.
    pub site_id: SiteId,
    /// Every router known (this one included), sorted by site id: name, mode, reachability,
    /// path cost, its links with their costs, its keys.
    pub routers: Vec<crate::routing::RouterView>,
    /// Every routing key advertised anywhere, sorted, with the routers that serve it.
    pub keys: Vec<KeyStatus>,
}

/// One routing key in the network.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// The key.
    pub routing_key: String,
    /// Routers with connectors for it.
    pub sites: Vec<KeySite>,
}

/// A router serving a key.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySite {
    /// Its site id.
    pub site_id: SiteId,
    /// Its site name.
    pub site_name: String,
    /// Its connectors for the key.
    pub connectors: u32,
    /// Their protocol.
    pub protocol: crate::routing::Protocol,
    /// The port consumers expect.
    pub port: u16,
    /// Whether flows from here can reach it.
    pub reachable: bool,
}

impl NetworkStatus {
    /// The view of `topology`.
    pub(crate) fn of(topology: &Topology) -> Self {
        let routers = topology.routers();
        let mut keys: std::collections::BTreeMap<String, Vec<KeySite>> = Default::default();
        for r in &routers {
            for k in r.keys.iter().filter(|k| k.connectors > 0) {
                keys.entry(k.key.as_str().to_owned())
                    .or_default()
                    .push(KeySite {
                        site_id: r.id,
                        site_name: r.name.clone(),
                        connectors: k.connectors,
                        protocol: k.protocol,
                        port: k.port,
                        reachable: r.reachable,
                    });
            }
        }
        NetworkStatus {
            site_id: topology.me(),
            routers,
            keys: keys
                .into_iter()
                .map(|(routing_key, sites)| KeyStatus { routing_key, sites })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_one_neighbour_at_the_cost_of_its_cheapest_up_link() {
        let me = SiteId::from_bytes([1; 16]);
        let peer = SiteId::from_bytes([2; 16]);
        let now = Instant::now();
        let mut topo = Topology::new(me, "me".into(), RouterMode::Interior, now);
        let mut n = Neighbours::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let up = |link, cost| RouteEvent::LinkUp {
            link,
            peer,
            cost,
            control: tx.clone(),
        };
        let cost = |t: &Topology| t.neighbors().find(|(p, _)| *p == peer).map(|(_, c)| c);
        apply(&mut topo, &mut n, up(1, 5), now);
        assert_eq!(cost(&topo), Some(5));
        apply(&mut topo, &mut n, up(2, 2), now);
        assert_eq!(cost(&topo), Some(2));
        apply(&mut topo, &mut n, RouteEvent::LinkDown { link: 2 }, now);
        assert_eq!(cost(&topo), Some(5));
        apply(&mut topo, &mut n, RouteEvent::LinkDown { link: 1 }, now);
        assert_eq!(cost(&topo), None);
    }
}
