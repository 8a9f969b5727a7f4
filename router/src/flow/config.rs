//! Listeners and connectors of a router: their specs, reconciliation by name (unchanged ones
//! are left alone, so adding or removing one never disturbs the others' flows), the accept
//! loops of listeners, the keys advertised for connectors, and their status.
//!
//! Removing or changing a listener closes its socket at once (a restarted listener may bind
//! the same port right away); TCP flows it already accepted run on, its UDP flows end (their
//! replies would have to leave from its socket). Removing a connector stops new flows to it;
//! flows already connected run on.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Flows;
use crate::link::routes::RouteEvent;
use crate::link::tls::{RateLimitedLog, open_file_limit};
use crate::routing::{KeyAd, Protocol, RoutingKey, Strategy};

/// Pause after a failed `accept` (out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// File descriptors kept free of client connections: the admin socket and its connections,
/// link sockets and re-dials, backends of flows other sites send here, the log.
const FD_RESERVE: u64 = 64;

/// Client connections all listeners of a router may hold at once: each may use two file
/// descriptors here (the client's socket and, at a local connector, the backend's), and
/// [`FD_RESERVE`] stay free, so a storm of clients can never take the descriptors the admin
/// API, the links and other flows need. Beyond it new connections wait in the kernel's
/// accept queue until a flow ends.
fn client_slots(open_file_limit: Option<u64>) -> usize {
    match open_file_limit {
        Some(n) => usize::try_from((n.saturating_sub(FD_RESERVE) / 2).max(1)).unwrap_or(usize::MAX),
        None => tokio::sync::Semaphore::MAX_PERMITS,
    }
}

/// "Accept connections on host:port here and send them to a key."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Unique among this router's listeners.
    pub name: String,
    /// Where connections go (`Balanced(key)` for a plain listener).
    pub strategy: Strategy,
    /// Bind address, e.g. `0.0.0.0` or `127.0.0.1`.
    pub host: String,
    /// Port; 0 picks a free one (see [`ListenerStatus::address`]).
    pub port: u16,
    /// TCP connections, HTTP requests routed one by one (`Http`, `Http2`), or UDP datagrams.
    pub protocol: Protocol,
    /// What keeps a client on one site (`client-ip` for TCP and UDP, `header:`/`cookie:`
    /// for HTTP); none by default.
    pub affinity: crate::routing::Affinity,
}

/// "Traffic for a key goes to host:port here."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorSpec {
    /// Unique among this router's connectors.
    pub name: String,
    /// The key it serves.
    pub routing_key: RoutingKey,
    /// The backend's host name or address.
    pub host: String,
    /// The backend's port (also advertised: the port consumers expect, unless
    /// `advertised_port` says otherwise).
    pub port: u16,
    /// The port consumers expect when it differs from the backend's, e.g. a Kubernetes
    /// Service's port in front of pods that listen on another.
    pub advertised_port: Option<u16>,
    /// What the backend speaks: TCP, HTTP/1.1 (`Http`) or HTTP/2 (`Http2`).
    pub protocol: Protocol,
}

/// Whether a listener or connector works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceState {
    /// Serving.
    Active,
    /// A listener whose keys have no reachable connector: connections are refused at once.
    NoTarget,
    /// A connector whose backend failed the last attempt (refused, timed out); the reason
    /// says what and when. A later success makes it active again.
    Failing,
    /// Not serving; see the reason.
    Error,
}

/// A listener as shown to operators.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// The key it sends to (the first key for priority and weighted listeners).
    pub routing_key: String,
    /// Every key it may send to.
    pub routing_keys: Vec<String>,
    /// The configured bind host.
    pub host: String,
    /// The configured port.
    pub port: u16,
    /// The bound address (port 0 resolved); absent when binding failed.
    pub address: Option<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// Active, no-target or error.
    pub status: ResourceState,
    /// Why it is in error or has no target, or which sites it reaches
    /// (`reachable: east (cost 1), north (cost 2)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sites it can send flows to now, best first.
    pub targets: Vec<super::reasons::ListenerTarget>,
    /// Client connections in progress.
    pub flows_active: u64,
    /// Client connections accepted since the listener started.
    pub flows_total: u64,
    /// Client connections refused (no target, or every target failed).
    pub flows_refused: u64,
    /// HTTP listeners: requests to its first key by status class (`2xx`, ..., `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, u64>>,
    /// The session affinity it runs with (`client-ip`, `header:NAME`, `cookie:NAME`); absent
    /// for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
}

/// A connector as shown to operators.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// Its name.
    pub name: String,
    /// The key it serves.
    pub routing_key: String,
    /// The backend host.
    pub host: String,
    /// The backend port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Active, failing (the last backend attempt failed) or error.
    pub status: ResourceState,
    /// Why it is in error or failing (what the backend did, when, and how often).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Backend connections in progress.
    pub flows_active: u64,
    /// Backend connections made since the connector was configured.
    pub flows_total: u64,
    /// Backend connections that failed (refused, timed out).
    pub flows_failed: u64,
}

/// Flow counters of one listener or connector.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    active: AtomicU64,
    total: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// Counts a flow as active (and in the total) until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> CounterGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        CounterGuard(self.clone())
    }

    /// Counts a refused or failed flow.
    pub(crate) fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements the active count of a [`Counters`] on drop.
pub(crate) struct CounterGuard(Arc<Counters>);

impl Drop for CounterGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes asked for as the send and receive buffers of a UDP listener's socket (the kernel may
/// grant less: `net.core.rmem_max`, `net.core.wmem_max`): room for bursts of datagrams
/// while the receive loop is busy.
pub(crate) const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// A running (or failed) listener.
pub(crate) struct Listener {
    pub(crate) spec: ListenerSpec,
    /// The socket; taken (closed) when the listener is removed or changed.
    socket: Mutex<Option<TcpListener>>,
    /// A UDP listener's socket; taken (closed) when the listener is removed or changed. The
    /// receive loop and the flows borrow it per datagram, so taking it closes it at once.
    udp: RwLock<Option<tokio::net::UdpSocket>>,
    /// A UDP listener bound to a wildcard address (`0.0.0.0`, `::`): the socket's packet-info
    /// state, so each datagram tells the address it was sent to and each reply leaves from
    /// that address (the kernel would otherwise pick one by route, and a connected client
    /// drops a reply from another address than it sent to). `None` on a specific address.
    pub(crate) udp_state: Option<quinn_udp::UdpSocketState>,
    /// A UDP listener's socket, watched for kernel drops ([`super::udp::UdpStats`]).
    udp_watch: Option<u64>,
    address: Option<SocketAddr>,
    error: Option<String>,
    pub(crate) counters: Arc<Counters>,
    cancel: CancellationToken,
    /// HTTP listeners: client connections it may still take.
    pub(crate) http_slots: Arc<tokio::sync::Semaphore>,
    /// Why it has no target, and the topology version that was worked out at (refused
    /// clients reuse it until the topology changes).
    no_target: Mutex<Option<(u64, String)>>,
}

/// A configured connector.
pub(crate) struct Connector {
    pub(crate) spec: ConnectorSpec,
    error: Option<String>,
    pub(crate) counters: Arc<Counters>,
    /// Connections to the backend of an `http` or `http2` connector.
    pub(crate) http_pool: Option<Arc<super::http::BackendPool>>,
    /// What the backend did on the last attempts.
    pub(crate) health: Mutex<super::reasons::BackendHealth>,
    /// The last attempts all succeeded (as many as [`super::BACKEND_ATTEMPTS`]): another
    /// success changes nothing, so it skips `health`'s lock (once per HTTP request).
    healthy: AtomicBool,
}

impl Listener {
    /// Cancelled when the listener stops (removed, changed, or the router stopping).
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// A UDP listener's socket (`None` once it stopped). Hold the guard briefly, never
    /// across an await.
    pub(crate) fn udp_socket(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Option<tokio::net::UdpSocket>> {
        self.udp
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Connector {
    /// Backend connections in progress.
    pub(crate) fn active(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// The backend accepted a connection (or answered a request).
    pub(crate) fn backend_ok(&self) {
        if self.healthy.load(Ordering::Relaxed) {
            return;
        }
        let mut health = self.health.lock().unwrap();
        health.success();
        self.healthy.store(health.settled(), Ordering::Relaxed);
    }

    /// The backend failed an attempt: counted, and shown in the status until a success.
    pub(crate) fn backend_failed(&self, what: &str) {
        self.counters.fail();
        let mut health = self.health.lock().unwrap();
        self.healthy.store(false, Ordering::Relaxed);
        health.failure(what, std::time::SystemTime::now());
    }
}

/// The listeners and connectors of a router.
pub(crate) struct Config {
    listeners: Mutex<BTreeMap<String, Arc<Listener>>>,
    connectors: RwLock<BTreeMap<String, Arc<Connector>>>,
    /// Client connections the listeners may still accept (see [`client_slots`]).
    client_slots: Arc<tokio::sync::Semaphore>,
    /// The number [`Self::client_slots`] started with.
    client_slot_count: usize,
    /// Shared by all listeners: under sustained saturation (clients coming and going, every
    /// listener finding the slots taken) the router warns once, then at most every 10 s with
    /// a count, instead of once per client and listener.
    held_back_log: Mutex<RateLimitedLog>,
}

impl Default for Config {
    fn default() -> Self {
        let n = client_slots(open_file_limit());
        Config {
            listeners: Mutex::default(),
            connectors: RwLock::default(),
            client_slots: Arc::new(tokio::sync::Semaphore::new(n)),
            client_slot_count: n,
            held_back_log: Mutex::default(),
        }
    }
}

/// What reconciling a set of named specs does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan<S> {
    /// Names to stop (removed, or changed and restarted).
    pub(crate) stop: Vec<String>,
    /// Specs to start (new, or changed).
    pub(crate) start: Vec<S>,
}

/// The difference between the running specs and the desired ones, by name. A later duplicate
/// name in `desired` wins.
pub(crate) fn plan<S: Clone + PartialEq>(
    current: &BTreeMap<String, S>,
    desired: Vec<S>,
    name: impl Fn(&S) -> &str,
) -> Plan<S> {
    let desired: BTreeMap<String, S> = desired
        .into_iter()
        .map(|s| (name(&s).to_owned(), s))
        .collect();
    let mut p = Plan {
        stop: Vec::new(),
        start: Vec::new(),
    };
    for (n, s) in current {
        match desired.get(n) {
            Some(d) if d == s => {}
            Some(_) | None => p.stop.push(n.clone()),
        }
    }
    for (n, d) in desired {
        if current.get(&n) != Some(&d) {
            p.start.push(d);
        }
    }
    p
}

fn strategy_keys(s: &Strategy) -> Vec<&RoutingKey> {
    match s {
        Strategy::Balanced(k) => vec![k],
        Strategy::Priority(keys) => keys.iter().collect(),
        Strategy::Weighted(keys) => keys.iter().map(|(k, _)| k).collect(),
    }
}

/// The addresses a listener's host and port resolve to.
fn bind_addresses(spec: &ListenerSpec) -> Result<(&str, Vec<SocketAddr>), String> {
    let host = if spec.host.is_empty() {
        "0.0.0.0"
    } else {
        spec.host.as_str()
    };
    let addrs: Vec<SocketAddr> = (host, spec.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve bind address {host}: {e}"))?
        .collect();
    Ok((host, addrs))
}

/// A bound UDP listener socket and, on a wildcard address, its packet-info state.
type BoundUdp = (tokio::net::UdpSocket, Option<quinn_udp::UdpSocketState>);

/// Binds a UDP listener's socket, asking for [`UDP_SOCKET_BUFFER`] bytes of buffers. On a
/// wildcard address it turns packet info on (`IP_PKTINFO`, `IPV6_RECVPKTINFO`, through
/// quinn-udp), so replies can leave from the address each client sent to.
fn bind_udp(spec: &ListenerSpec) -> Result<BoundUdp, String> {
    let (host, addrs) = bind_addresses(spec)?;
    let mut last = format!("no address for {host}");
    for addr in addrs {
        let made = (|| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            // What the kernel grants is kept (it caps at net.core.rmem_max/wmem_max).
            let _ = s.set_recv_buffer_size(UDP_SOCKET_BUFFER);
            let _ = s.set_send_buffer_size(UDP_SOCKET_BUFFER);
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            Ok::<_, std::io::Error>(std::net::UdpSocket::from(s))
        })();
        match made {
            Ok(s) => {
                let state = if addr.ip().is_unspecified() {
                    Some(packet_info(&s).map_err(|e| {
                        format!("cannot listen on {addr}/udp: cannot turn packet info on: {e}")
                    })?)
                } else {
                    None
                };
                let s = tokio::net::UdpSocket::from_std(s)
                    .map_err(|e| format!("cannot listen on {addr}/udp: {e}"))?;
                return Ok((s, state));
            }
            Err(e) => {
                last =
                    format!("cannot listen on {addr}/udp: {e} (port in use? choose another port)")
            }
        }
    }
    Err(last)
}

/// Turns packet info on for `socket` (quinn-udp's state). quinn-udp also sets what QUIC
/// wants and a UDP service does not: IPv4 path MTU discovery goes back to the kernel's
/// default (`IP_PMTUDISC_WANT`: a reply larger than the path is fragmented as without skiff).
/// Segments a client coalesced (UDP GRO) are split again by the receive loop.
fn packet_info(socket: &std::net::UdpSocket) -> std::io::Result<quinn_udp::UdpSocketState> {
    let state = quinn_udp::UdpSocketState::new(socket.into())?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::net::sockopt;
        // A dual-stack IPv6 socket sends to IPv4 clients under the IPv4 option.
        let _ = sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::WANT);
        if socket.local_addr()?.is_ipv6() {
            let _ = sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::WANT);
        }
    }
    Ok(state)
}

fn bind(spec: &ListenerSpec) -> Result<TcpListener, String> {
    let (host, addrs) = bind_addresses(spec)?;
    let mut last = format!("no address for {host}");
    for addr in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                super::tcp::configure_listening(&l);
                l.set_nonblocking(true)
                    .map_err(|e| format!("cannot configure {addr}: {e}"))?;
                return TcpListener::from_std(l)
                    .map_err(|e| format!("cannot listen on {addr}: {e}"));
            }
            Err(e) => {
                last = format!("cannot listen on {addr}: {e} (port in use? choose another port)")
            }
        }
    }
    Err(last)
}

impl Config {
    /// The connectors serving `key` with a protocol of the family, least busy first.
    pub(crate) fn connectors_for_family(
        &self,
        key: &RoutingKey,
        family: crate::routing::Family,
    ) -> Vec<Arc<Connector>> {
        let mut out: Vec<Arc<Connector>> = self
            .connectors
            .read()
            .unwrap()
            .values()
            .filter(|c| {
                c.error.is_none()
                    && &c.spec.routing_key == key
                    && c.spec.protocol.family() == family
            })
            .cloned()
            .collect();
        out.sort_by_key(|c| c.active());
        out
    }

    /// Whether this router has a connector for `key` (of any protocol).
    pub(crate) fn has_connector(&self, key: &RoutingKey) -> bool {
        self.connectors
            .read()
            .unwrap()
            .values()
            .any(|c| &c.spec.routing_key == key)
    }
}

/// Reconciles listeners with `specs` (binds new and changed ones, closes removed ones).
pub(crate) fn set_listeners(flows: &Arc<Flows>, specs: Vec<ListenerSpec>) {
    let mut listeners = flows.config.listeners.lock().unwrap();
    // A listener that could not bind (its port was taken) is tried again at every call, even
    // with its spec unchanged: the port may be free now.
    let current: BTreeMap<String, ListenerSpec> = listeners
        .iter()
        .filter(|(_, l)| l.error.is_none())
        .map(|(n, l)| (n.clone(), l.spec.clone()))
        .collect();
    let mut p = plan(&current, specs, |s| &s.name);
    p.stop.extend(
        listeners
            .iter()
            .filter(|(_, l)| l.error.is_some())
            .map(|(n, _)| n.clone()),
    );
    for name in p.stop {
        if let Some(old) = listeners.remove(&name) {
            // Closing the socket now frees the port for a restarted listener.
            drop(old.socket.lock().unwrap().take());
            if let Some(id) = old.udp_watch {
                flows.udp_stats.unwatch(id);
            }
            drop(
                old.udp
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take(),
            );
            old.cancel.cancel();
            tracing::info!(listener = %name, "listener stopped");
        }
    }
    for spec in p.start {
        let (tcp, (udp, udp_state), address, error) = if spec.protocol == Protocol::Udp {
            let bound = bind_udp(&spec);
            let address = bound.as_ref().ok().and_then(|(l, _)| l.local_addr().ok());
            let error = bound.as_ref().err().cloned();
            let (udp, state) = match bound {
                Ok((udp, state)) => (Some(udp), state),
                Err(_) => (None, None),
            };
            (None, (udp, state), address, error)
        } else {
            let bound = bind(&spec);
            let address = bound.as_ref().ok().and_then(|l| l.local_addr().ok());
            let error = bound.as_ref().err().cloned();
            (bound.ok(), (None, None), address, error)
        };
        let udp_watch = udp
            .as_ref()
            .and_then(super::udp::socket_inode)
            .map(|inode| {
                let key = strategy_keys(&spec.strategy)
                    .first()
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default();
                flows.udp_stats.watch_socket(&key, inode)
            });
        let listener = Arc::new(Listener {
            spec: spec.clone(),
            socket: Mutex::new(tcp),
            udp: RwLock::new(udp),
            udp_state,
            udp_watch,
            address,
            error: error.clone(),
            counters: Arc::default(),
            cancel: flows.shutdown.child_token(),
            http_slots: Arc::new(tokio::sync::Semaphore::new(
                super::http::MAX_CLIENT_CONNECTIONS,
            )),
            no_target: Mutex::default(),
        });
        match (&error, address) {
            (Some(reason), _) => {
                tracing::warn!(listener = %spec.name, %reason, "listener not started")
            }
            (None, Some(addr)) => {
                tracing::info!(listener = %spec.name, %addr, "listener started");
                let span = tracing::info_span!("listener", name = %spec.name, %addr);
                if spec.protocol == Protocol::Udp {
                    flows.tasks.spawn(
                        super::udp::ingress::receive_loop(flows.clone(), listener.clone())
                            .instrument(span),
                    );
                } else {
                    flows
                        .tasks
                        .spawn(accept_loop(flows.clone(), listener.clone()).instrument(span));
                }
            }
            (None, None) => {}
        }
        listeners.insert(spec.name.clone(), listener);
    }
}

async fn accept_loop(flows: Arc<Flows>, listener: Arc<Listener>) {
    let slots = flows.config.client_slots.clone();
    // Failed accepts: logged the first time, then at most every 10 s with a count.
    let mut failed = RateLimitedLog::default();
    loop {
        // A slot first: at the router's limit, new clients wait in the kernel's queue
        // instead of taking the descriptors everything else needs.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let due = flows
                    .config
                    .held_back_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .due();
                if let Some(count) = due {
                    tracing::warn!(
                        limit = flows.config.client_slot_count,
                        held_back = count,
                        "holding new client connections back: the listeners hold as many as \
                         this router's open-file limit allows (ulimit -n, minus a reserve); \
                         they are accepted as flows end. Raise the limit (ulimit -n, systemd \
                         LimitNOFILE) to serve more at once"
                    );
                }
                let waited = tokio::select! {
                    () = listener.cancel.cancelled() => return,
                    s = slots.clone().acquire_owned() => s,
                };
                let Ok(slot) = waited else { return };
                tracing::debug!("accepting client connections again");
                slot
            }
        };
        let accept = poll_fn(|cx| match listener.socket.lock().unwrap().as_ref() {
            Some(l) => l.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        });
        let accepted = tokio::select! {
            () = listener.cancel.cancelled() => return,
            a = accept => a,
        };
        match accepted {
            None => return,
            Some(Ok((tcp, remote))) => {
                let span = tracing::debug_span!("client", %remote);
                let (f, l) = (flows.clone(), listener.clone());
                if listener.spec.protocol.is_http() {
                    flows.tasks.spawn(
                        async move {
                            let _slot = slot;
                            super::http::serve_client(f, l, tcp, remote).await;
                        }
                        .instrument(span),
                    );
                } else {
                    flows.tasks.spawn(
                        async move {
                            let _slot = slot;
                            super::tcp::serve_client(f, l, tcp, remote).await;
                        }
                        .instrument(span),
                    );
                }
            }
            Some(Err(e)) => {
                // Out of descriptors despite the slots (other flows took them): pause and
                // retry; the connection stays queued. Logged at most every 10 s.
                if let Some(count) = failed.due() {
                    tracing::warn!(cause = %e, failed = count,
                        "accepting client connections fails; retrying every {} ms",
                        ACCEPT_ERROR_PAUSE.as_millis());
                }
                tokio::select! {
                    () = listener.cancel.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Reconciles connectors with `specs` and advertises their keys.
pub(crate) fn set_connectors(flows: &Arc<Flows>, specs: Vec<ConnectorSpec>) {
    let keys = {
        let mut connectors = flows.config.connectors.write().unwrap();
        let current: BTreeMap<String, ConnectorSpec> = connectors
            .iter()
            .map(|(n, c)| (n.clone(), c.spec.clone()))
            .collect();
        let p = plan(&current, specs, |s| &s.name);
        for name in p.stop {
            connectors.remove(&name);
        }
        for spec in p.start {
            let http_pool = spec.protocol.is_http().then(|| {
                Arc::new(super::http::BackendPool::new(
                    &spec.host,
                    spec.port,
                    spec.protocol == Protocol::Http2,
                ))
            });
            connectors.insert(
                spec.name.clone(),
                Arc::new(Connector {
                    spec,
                    error: None,
                    counters: Arc::default(),
                    http_pool,
                    health: Mutex::default(),
                    healthy: AtomicBool::new(false),
                }),
            );
        }
        advertised_keys(connectors.values().map(|c| &**c))
    };
    flows.routes.send(RouteEvent::LocalKeys(keys));
}

/// One [`KeyAd`] per key served by working connectors: the protocol and port of the first (by
/// name), and the count of those of its family (TCP, HTTP or UDP; a key is served by one
/// family).
fn advertised_keys<'a>(connectors: impl Iterator<Item = &'a Connector>) -> Vec<KeyAd> {
    let mut by_key: BTreeMap<&RoutingKey, KeyAd> = BTreeMap::new();
    for c in connectors.filter(|c| c.error.is_none()) {
        by_key
            .entry(&c.spec.routing_key)
            .and_modify(|ad| {
                if ad.protocol.family() == c.spec.protocol.family() {
                    ad.connectors += 1
                }
            })
            .or_insert_with(|| KeyAd {
                key: c.spec.routing_key.clone(),
                connectors: 1,
                protocol: c.spec.protocol,
                port: c.spec.advertised_port.unwrap_or(c.spec.port),
            });
    }
    by_key.into_values().collect()
}

/// Listener status, sorted by name.
pub(crate) fn listeners(flows: &Flows) -> Vec<ListenerStatus> {
    let listeners: Vec<Arc<Listener>> = flows
        .config
        .listeners
        .lock()
        .unwrap()
        .values()
        .cloned()
        .collect();
    let routers = flows.routes.read().routers();
    listeners
        .iter()
        .map(|l| {
            let keys = strategy_keys(&l.spec.strategy);
            let (targets, why) = super::reasons::listener_targets(&routers, &keys, l.spec.protocol);
            let (status, reason) = if let Some(e) = &l.error {
                (ResourceState::Error, e.clone())
            } else if targets.is_empty() {
                (ResourceState::NoTarget, why)
            } else {
                (ResourceState::Active, why)
            };
            ListenerStatus {
                name: l.spec.name.clone(),
                routing_key: keys
                    .first()
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default(),
                routing_keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
                host: l.spec.host.clone(),
                port: l.spec.port,
                address: l.address.map(|a| a.to_string()),
                protocol: l.spec.protocol,
                status,
                reason: Some(reason),
                targets,
                flows_active: l.counters.active.load(Ordering::Relaxed),
                flows_total: l.counters.total.load(Ordering::Relaxed),
                flows_refused: l.counters.failed.load(Ordering::Relaxed),
                requests: l.spec.protocol.is_http().then(|| {
                    keys.first()
                        .map(|k| flows.http_metrics.key(k.as_str()).snapshot().requests)
                        .unwrap_or_default()
                }),
                affinity: (l.spec.affinity != crate::routing::Affinity::None)
                    .then(|| l.spec.affinity.to_string()),
            }
        })
        .collect()
}

/// Why `listener` has no target now (for a refused client's record and log line).
pub(crate) fn no_target_reason(flows: &Flows, listener: &Listener) -> String {
    let topo = flows.routes.read();
    let mut cached = listener.no_target.lock().unwrap();
    if let Some((version, why)) = &*cached
        && *version == topo.version()
    {
        return why.clone();
    }
    let keys = strategy_keys(&listener.spec.strategy);
    let why = super::reasons::listener_targets(&topo.routers(), &keys, listener.spec.protocol).1;
    *cached = Some((topo.version(), why.clone()));
    why
}

/// The first key of a listener (the one its records and metrics use before a target is
/// chosen).
pub(crate) fn first_key(listener: &Listener) -> &str {
    strategy_keys(&listener.spec.strategy)
        .first()
        .map(|k| k.as_str())
        .unwrap_or_default()
}

/// Connector status, sorted by name.
pub(crate) fn connectors(flows: &Flows) -> Vec<ConnectorStatus> {
    flows
        .config
        .connectors
        .read()
        .unwrap()
        .values()
        .map(|c| {
            let failing = c.health.lock().unwrap().failing();
            let (status, reason) = match (&c.error, failing) {
                (Some(e), _) => (ResourceState::Error, Some(e.clone())),
                (None, Some(f)) => (ResourceState::Failing, Some(f)),
                (None, None) => (ResourceState::Active, None),
            };
            ConnectorStatus {
                name: c.spec.name.clone(),
                routing_key: c.spec.routing_key.as_str().to_owned(),
                host: c.spec.host.clone(),
                port: c.spec.port,
                protocol: c.spec.protocol,
                status,
                reason,
                flows_active: c.counters.active.load(Ordering::Relaxed),
                flows_total: c.counters.total.load(Ordering::Relaxed),
                flows_failed: c.counters.failed.load(Ordering::Relaxed),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct S(&'static str, u32);

    #[test]
    fn client_slots_leave_the_reserve_and_two_descriptors_per_client() {
        assert_eq!(client_slots(Some(256)), 96);
        assert_eq!(client_slots(Some(1024)), 480);
        assert_eq!(client_slots(Some(10)), 1);
        assert_eq!(client_slots(None), tokio::sync::Semaphore::MAX_PERMITS);
        // This process has a limit on Linux, and it is read.
        if cfg!(target_os = "linux") {
            assert!(open_file_limit().is_some_and(|n| n > 0));
        }
    }

    #[tokio::test]
    async fn accepted_clients_get_nodelay_and_keepalive() {
        let spec = ListenerSpec {
            name: "l".into(),
            strategy: Strategy::Balanced("k".parse().unwrap()),
            host: "127.0.0.1".into(),
            port: 0,
            protocol: Protocol::Tcp,
            affinity: Default::default(),
        };
        let l = bind(&spec).unwrap();
        let _c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (a, _) = l.accept().await.unwrap();
        super::super::tcp::configure_accepted(&a);
        let s = socket2::SockRef::from(&a);
        assert!(
            s.tcp_nodelay().unwrap(),
            "TCP_NODELAY on the accepted client"
        );
        assert!(
            s.keepalive().unwrap(),
            "SO_KEEPALIVE on the accepted client"
        );
        assert_eq!(
            s.tcp_keepalive_time().unwrap(),
            crate::flow::TCP_KEEPALIVE_IDLE,
            "keepalive idle time"
        );
    }

    #[test]
    fn plan_touches_only_what_changed() {
        let current: BTreeMap<String, S> = [S("a", 1), S("b", 1), S("c", 1)]
            .into_iter()
            .map(|s| (s.0.to_owned(), s))
            .collect();
        let p = plan(&current, vec![S("a", 1), S("b", 2), S("d", 1)], |s| s.0);
        assert_eq!(p.stop, vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(p.start, vec![S("b", 2), S("d", 1)]);
        let same = plan(&current, vec![S("c", 1), S("b", 1), S("a", 1)], |s| s.0);
        assert!(same.stop.is_empty() && same.start.is_empty());
    }

    #[test]
    fn keys_are_advertised_once_with_their_connector_count() {
        let key: RoutingKey = "db".parse().unwrap();
        let c = |name: &str, port, protocol| Connector {
            spec: ConnectorSpec {
                name: name.into(),
                routing_key: key.clone(),
                host: "localhost".into(),
                port,
                advertised_port: None,
                protocol,
            },
            error: None,
            counters: Arc::default(),
            http_pool: None,
            health: Mutex::default(),
            healthy: AtomicBool::new(false),
        };
        let all = [
            c("a", 5432, Protocol::Tcp),
            c("b", 5433, Protocol::Tcp),
            c("h", 80, Protocol::Http),
        ];
        let ads = advertised_keys(all.iter());
        assert_eq!(ads.len(), 1);
        // A connector of the other family for the same key is not counted.
        assert_eq!((ads[0].connectors, ads[0].port), (2, 5432));
        assert_eq!(ads[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn successes_past_a_full_window_skip_the_lock_and_change_nothing() {
        let c = Connector {
            spec: ConnectorSpec {
                name: "db".into(),
                routing_key: "db".parse().unwrap(),
                host: "localhost".into(),
                port: 5432,
                advertised_port: None,
                protocol: Protocol::Http,
            },
            error: None,
            counters: Arc::default(),
            http_pool: None,
            health: Mutex::default(),
            healthy: AtomicBool::new(false),
        };
        c.backend_failed("backend localhost:5432 refused the connection");
        for _ in 1..super::super::BACKEND_ATTEMPTS {
            c.backend_ok();
        }
        assert!(
            !c.healthy.load(Ordering::Relaxed),
            "a failure is still in the window"
        );
        c.backend_ok();
        assert!(c.healthy.load(Ordering::Relaxed));
        for _ in 0..1000 {
            c.backend_ok();
        }
        c.backend_failed("backend localhost:5432 refused the connection");
        assert!(!c.healthy.load(Ordering::Relaxed));
        let failing = c.health.lock().unwrap().failing().unwrap();
        assert!(
            failing.ends_with(&format!(
                "1 of the last {} attempts failed",
                super::super::BACKEND_ATTEMPTS
            )),
            "{failing}"
        );
        c.backend_ok();
        assert_eq!(c.health.lock().unwrap().failing(), None);
    }
}
