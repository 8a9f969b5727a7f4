//! [`Router`]: starts the link port, reconciles dialers, reports link status, closes links of
//! revoked sites, and hands out links (to open streams) and streams peers opened.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_certs::{ALPN_GRANT, ALPN_LINK, SiteId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dialer::{plan, run_dialer};
use super::driver::{IncomingSink, LinkCloser, Timing, run_link};
use super::explain::{Refusal, policy_refusal};
use super::handshake::{LocalHello, accept_hello};
use super::mux::{LinkStream, MuxConnection};
use super::quic::{self, QuicConnection, QuicDialers, TrackedRuntime};
use super::routes::{self, Routes};
use super::table::{LinkTable, UpLink, now_rfc3339};
use super::{
    Direction, GrantHandler, InboundPolicy, LinkSpec, LinkState, LinkStatus, RouterConfig,
    RouterError, Transport, port, tls,
};
use crate::flow::{
    self, ConnectorSpec, ConnectorStatus, FlowStatus, Flows, ListenerSpec, ListenerStatus,
};
use crate::wire::PROTOCOL_VERSION;

/// Streams opened by peers that wait for [`Router::take_incoming`]'s receiver; more are reset.
const INCOMING_QUEUE: usize = 1024;
/// How long [`Router::shutdown`] waits for TCP flows in progress to finish (then resets them),
/// and then for links to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping router that withdrew its connectors keeps its links up at least, so
/// the withdrawal reaches the other routers before they could send a flow into a closing
/// link (milliseconds on small networks; docs/routing.md has the convergence figures).
const WITHDRAWAL_QUIESCE: Duration = Duration::from_millis(500);

/// State shared by the router's tasks.
pub(crate) struct Shared {
    pub(crate) hello: LocalHello,
    pub(crate) timing: Timing,
    pub(crate) policy: Arc<dyn InboundPolicy>,
    pub(crate) grants: Option<Arc<dyn GrantHandler>>,
    pub(crate) table: LinkTable,
    pub(crate) sink: IncomingSink,
    /// The topology and the routing task's inbox.
    pub(crate) routes: Arc<Routes>,
    pub(crate) quic_dialers: QuicDialers,
    pub(crate) shutdown: CancellationToken,
    /// Our tasks: accept loops, dialers, inbound links.
    pub(crate) tasks: TaskTracker,
    /// quinn's endpoint and connection drivers.
    pub(crate) quinn_tasks: TaskTracker,
    /// Rate limits of the log lines unauthenticated peers can cause.
    pub(crate) log_limits: tls::LogLimits,
    /// What every QUIC link of this router did with datagrams since it started.
    datagram_counters: Arc<super::datagram::DatagramCounters>,
}

impl Shared {
    /// The datagram counters of every QUIC link of this router, since it started (links
    /// that reconnect keep counting in them): datagrams that arrived for no flow, or for a
    /// flow whose queue was full, are lost here.
    pub(crate) fn datagram_counters(&self) -> &Arc<super::datagram::DatagramCounters> {
        &self.datagram_counters
    }

    /// An up link to `peer` (the cheapest if there are several), for opening streams.
    pub(crate) fn link_handle(&self, peer: SiteId) -> Option<LinkHandle> {
        self.table
            .up_links(peer)
            .into_iter()
            .next()
            .map(|(status, up)| LinkHandle {
                peer,
                name: status.name,
                transport: status.transport.unwrap_or(Transport::Tls),
                conn: up.conn,
                version: up.version,
                closer: up.closer,
            })
    }
}

/// A stream a peer opened on a link (not the control stream).
#[derive(Debug)]
pub struct IncomingStream {
    /// The site at the other end of the link.
    pub peer: SiteId,
    /// The link's name as in [`LinkStatus::name`].
    pub link: String,
    /// The stream.
    pub stream: LinkStream,
    /// The link's datagrams (QUIC links; UDP flows use them with [`LinkStream::channel`]).
    pub datagrams: Option<Arc<super::datagram::Datagrams>>,
}

/// A link that is up, for opening streams to the peer.
#[derive(Clone)]
pub struct LinkHandle {
    peer: SiteId,
    name: String,
    transport: Transport,
    conn: Arc<dyn MuxConnection>,
    /// The link protocol the peer speaks (from its hello).
    version: crate::wire::ProtocolVersion,
    /// Whether the link's close was requested ([`LinkHandle::is_closing`]).
    closer: LinkCloser,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle")
            .field("peer", &self.peer)
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("version", &self.version)
            .finish()
    }
}

impl LinkHandle {
    /// Opens a stream to the peer; it arrives there through [`Router::take_incoming`].
    pub async fn open_stream(&self) -> io::Result<LinkStream> {
        self.conn.open_stream().await
    }

    /// The site at the other end.
    pub fn peer(&self) -> SiteId {
        self.peer
    }

    /// The link's name as in [`LinkStatus::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The link's transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The link's datagrams (QUIC links only).
    pub fn datagrams(&self) -> Option<Arc<super::datagram::Datagrams>> {
        self.conn.datagrams()
    }

    /// The link protocol the peer speaks (what it said in its hello).
    pub fn version(&self) -> crate::wire::ProtocolVersion {
        self.version
    }

    /// Whether this router asked the link to close (it is `closing`): it must carry no new
    /// flow, and what pools streams on it (HTTP connections to peer routers) must stop
    /// using it; streams in progress may finish until the peer hangs up.
    pub fn is_closing(&self) -> bool {
        self.closer.is_requested()
    }

    /// What tells whether the link is closing, without holding the link's connection.
    pub(crate) fn closing(&self) -> Closing {
        Closing(self.closer.clone())
    }

    /// Whether a flow header to the peer may carry the client's address: a router older
    /// than link protocol 1.3 refuses a header with it.
    pub fn carries_client(&self) -> bool {
        let (v, since) = (self.version, super::driver::CLIENT_SINCE);
        (v.major, v.minor) >= (since.major, since.minor)
    }

    /// Whether a UDP flow may go to the peer: a router older than link protocol 1.2 cannot
    /// decode a flow header of protocol `udp`. The error says why (naming the peer
    /// `peer_name`), for a no-route answer.
    pub fn carries_udp(&self, peer_name: &str) -> Result<(), String> {
        let v = self.version;
        if (v.major, v.minor)
            < (
                super::driver::UDP_SINCE.major,
                super::driver::UDP_SINCE.minor,
            )
        {
            return Err(format!(
                "the next hop {peer_name} speaks link protocol {}.{}; UDP needs {}.{} on every router of the path",
                v.major,
                v.minor,
                super::driver::UDP_SINCE.major,
                super::driver::UDP_SINCE.minor
            ));
        }
        Ok(())
    }
}

/// Whether a link is being closed ([`LinkHandle::closing`]): for what outlives a lookup of
/// the link (a pooled connection on it) and must not keep the link's connection alive.
#[derive(Clone, Debug)]
pub(crate) struct Closing(LinkCloser);

impl Closing {
    /// Whether this router asked the link to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.0.is_requested()
    }
}

struct Dialer {
    spec: LinkSpec,
    /// New credentials for the dial loop (a renewal): no redial.
    renewals: tokio::sync::watch::Sender<LinkSpec>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The link layer of one site's router.
pub struct Router {
    shared: Arc<Shared>,
    link_addr: Option<SocketAddr>,
    quic_server: Option<quinn::Endpoint>,
    /// The certificate the link port presents (TLS/TCP and QUIC), when it has link access.
    server_cert: Option<Arc<skiff_certs::RouterCertificate>>,
    dialers: Mutex<BTreeMap<String, Dialer>>,
    /// Where streams peers open go instead of the flow layer, once [`Router::take_incoming`]
    /// was called.
    tap: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>>,
    tap_taken: std::sync::atomic::AtomicBool,
    flows: Arc<Flows>,
    runtime: tokio::runtime::Handle,
}

impl Router {
    /// Binds the link port (if `cfg.link_listen` is set) and starts accepting links.
    pub async fn start(
        cfg: RouterConfig,
        policy: Arc<dyn InboundPolicy>,
        grants: Option<Arc<dyn GrantHandler>>,
    ) -> Result<Router, RouterError> {
        Self::start_with_hello(cfg, policy, grants, PROTOCOL_VERSION).await
    }

    /// [`Router::start`] speaking `version` in hellos (tests of version mismatch).
    pub(crate) async fn start_with_hello(
        cfg: RouterConfig,
        policy: Arc<dyn InboundPolicy>,
        grants: Option<Arc<dyn GrantHandler>>,
        version: crate::wire::ProtocolVersion,
    ) -> Result<Router, RouterError> {
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let (routes, route_events) = Routes::new(cfg.site_id, cfg.site_name.clone(), cfg.mode);
        let quinn_runtime = Arc::new(TrackedRuntime {
            tasks: TaskTracker::new(),
        });
        let timing = Timing {
            keepalive_interval: cfg.keepalive_interval,
            dead_after: cfg.dead_after,
        };
        let datagram_counters = Arc::new(super::datagram::DatagramCounters::default());
        let shared = Arc::new(Shared {
            hello: LocalHello {
                site_id: cfg.site_id,
                site_name: cfg.site_name.clone(),
                mode: cfg.mode,
                version,
            },
            timing,
            policy,
            grants,
            table: LinkTable::default(),
            sink: IncomingSink { tx },
            routes: routes.clone(),
            quic_dialers: QuicDialers::new(quinn_runtime.clone(), datagram_counters.clone()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            quinn_tasks: quinn_runtime.tasks.clone(),
            log_limits: tls::LogLimits::default(),
            datagram_counters,
        });
        shared.tasks.spawn(
            routes::run(routes.clone(), route_events, shared.shutdown.clone())
                .instrument(tracing::debug_span!("routing")),
        );
        let flows = Flows::new(cfg.site_id, cfg.mode, shared.clone(), routes);
        let tap: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>> = Arc::default();
        shared.tasks.spawn(dispatch_incoming(
            rx,
            tap.clone(),
            flows.clone(),
            shared.shutdown.clone(),
        ));
        let mut link_addr = None;
        let mut quic_server = None;
        let mut server_cert = None;
        if let Some(listen) = cfg.link_listen {
            let tls_err = |e: skiff_certs::CertError| RouterError::Tls(Box::new(e));
            let mut tcp_alpn: Vec<&[u8]> = vec![ALPN_LINK];
            if shared.grants.is_some() {
                tcp_alpn.push(ALPN_GRANT);
            }
            // One certificate behind both configs, replaceable while they serve.
            let cert = Arc::new(
                skiff_certs::RouterCertificate::from_pem(&cfg.router_cert_pem, &cfg.router_key_pem)
                    .map_err(tls_err)?,
            );
            let tcp_tls =
                skiff_certs::link_server_config_with(cert.clone(), &cfg.site_ca_pem, &tcp_alpn)
                    .map_err(tls_err)?;
            let quic_tls =
                skiff_certs::link_server_config_with(cert.clone(), &cfg.site_ca_pem, &[ALPN_LINK])
                    .map_err(tls_err)?;
            server_cert = Some(cert);
            let quic_cfg =
                quic::server_config(quic_tls, timing).map_err(|e| RouterError::Tls(Box::new(e)))?;

            let (tcp, udp) = port::bind_link_port(listen)?;
            let addr = tcp.local_addr().map_err(|source| RouterError::Bind {
                proto: "TCP",
                addr: listen,
                source,
            })?;
            let udp_addr = udp.local_addr().unwrap_or(addr);
            let listener =
                tokio::net::TcpListener::from_std(tcp).map_err(|source| RouterError::Bind {
                    proto: "TCP",
                    addr,
                    source,
                })?;
            let endpoint = quic::endpoint(
                udp,
                quic::link_port_endpoint_config(
                    cfg.stateless_reset_secret
                        .as_deref()
                        .unwrap_or(&cfg.router_key_pem),
                ),
                Some(quic_cfg),
                quinn_runtime,
            )
            .map_err(|source| RouterError::Quic {
                addr: udp_addr,
                source,
            })?;
            let span = tracing::info_span!("link_port", addr = %addr);
            shared.tasks.spawn(
                tls::accept_loop(shared.clone(), listener, tcp_tls).instrument(span.clone()),
            );
            shared
                .tasks
                .spawn(quic_accept_loop(shared.clone(), endpoint.clone()).instrument(span));
            tracing::info!(%addr, "accepting links (TLS/TCP and QUIC/UDP on one port number)");
            link_addr = Some(addr);
            quic_server = Some(endpoint);
        }
        Ok(Router {
            shared,
            link_addr,
            quic_server,
            server_cert,
            dialers: Mutex::new(BTreeMap::new()),
            tap,
            tap_taken: std::sync::atomic::AtomicBool::new(false),
            flows,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The bound link address (port 0 resolved); `None` without link access.
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.link_addr
    }

    /// Presents `cert_pem` (with `key_pem`) on the link port from the next handshake on, over
    /// TLS/TCP and QUIC alike; established links keep running on the certificate they were
    /// made with. Without link access there is nothing to replace. `Err` (a bad or mismatched
    /// pair) keeps the current certificate.
    pub fn replace_router_certificate(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), RouterError> {
        match &self.server_cert {
            Some(c) => c
                .replace(cert_pem, key_pem)
                .map_err(|e| RouterError::Tls(Box::new(e))),
            None => Ok(()),
        }
    }

    /// The certificate the link port presents now (DER); `None` without link access.
    pub fn router_certificate(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.server_cert.as_ref().map(|c| c.end_entity())
    }

    /// Reconciles outbound links with `specs`, by name: new names start dialing, removed names
    /// are closed and stop, changed specs restart, unchanged ones are left alone. A spec whose
    /// client certificate or key alone changed (a renewal) does not restart: the link up now
    /// keeps running and the next dial presents the new certificate.
    pub fn set_links(&self, specs: Vec<LinkSpec>) {
        let mut dialers = self.dialers.lock().unwrap();
        let current: BTreeMap<String, LinkSpec> = dialers
            .iter()
            .map(|(n, d)| (n.clone(), d.spec.clone()))
            .collect();
        let p = plan(&current, specs);
        for name in p.stop.iter().chain(p.restart.iter().map(|s| &s.name)) {
            if let Some(d) = dialers.remove(name) {
                d.cancel.cancel();
                // The old task removes its table entry when it has closed the link.
                drop(d.task);
            }
        }
        for spec in p.renew {
            if let Some(d) = dialers.get_mut(&spec.name) {
                d.renewals.send_replace(spec.clone());
                d.spec = spec;
            }
        }
        for spec in p.start.into_iter().chain(p.restart) {
            let cancel = self.shared.shutdown.child_token();
            let span = tracing::debug_span!("link", name = %spec.name, peer = %spec.peer_site_id);
            let (renewals, renewals_rx) = tokio::sync::watch::channel(spec.clone());
            let task = self.shared.tasks.spawn(
                run_dialer(
                    self.shared.clone(),
                    spec.clone(),
                    renewals_rx,
                    cancel.clone(),
                )
                .instrument(span),
            );
            dialers.insert(
                spec.name.clone(),
                Dialer {
                    spec,
                    renewals,
                    cancel,
                    task,
                },
            );
        }
    }

    /// Every link, outbound and inbound, sorted by name.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.shared.table.snapshot()
    }

    /// A receiver whose value changes whenever [`Router::links`] may have changed (a link was
    /// added, removed, went up or down, or its error changed). For status pages and tests.
    pub fn link_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.table.subscribe()
    }

    /// Closes every link to or from `peer` now, telling it `reason` (revocation). Outbound
    /// dialers keep running; remove their specs to stop them.
    pub fn disconnect_peer(&self, peer: SiteId, reason: &str) {
        for closer in self.shared.table.closers(Some(peer)) {
            closer.close(reason);
        }
    }

    /// An up link to `peer` (the cheapest if there are several), for opening streams.
    pub fn link_to(&self, peer: SiteId) -> Option<LinkHandle> {
        self.shared.link_handle(peer)
    }

    /// Diverts the streams peers open on any link to the returned receiver, instead of
    /// serving them as flows (tests and tools that speak their own protocol on streams).
    /// Only the first call gets it; streams arriving while the receiver is full are reset.
    pub fn take_incoming(&self) -> Option<mpsc::Receiver<IncomingStream>> {
        if self
            .tap_taken
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        *self.tap.lock().unwrap() = Some(tx);
        Some(rx)
    }

    /// Reconciles listeners with `specs`, by name: new ones are bound, removed ones closed,
    /// changed ones rebound, unchanged ones (and every flow) left alone. A listener that
    /// cannot be bound, or whose type is not served yet, shows the reason in
    /// [`Router::listeners`].
    pub fn set_listeners(&self, specs: Vec<ListenerSpec>) {
        let _rt = self.runtime.enter();
        flow::config_set_listeners(&self.flows, specs);
    }

    /// Reconciles connectors with `specs`, by name, and advertises their routing keys to the
    /// network (connector count, protocol, port).
    pub fn set_connectors(&self, specs: Vec<ConnectorSpec>) {
        flow::config_set_connectors(&self.flows, specs);
    }

    /// Every listener, sorted by name.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        flow::config_listeners(&self.flows)
    }

    /// Every connector, sorted by name.
    pub fn connectors(&self) -> Vec<ConnectorStatus> {
        flow::config_connectors(&self.flows)
    }

    /// Active flows through this router.
    pub fn flows(&self) -> Vec<FlowStatus> {
        self.flows.snapshot()
    }

    /// Flows that ended at this router recently (at most [`crate::flow::RECENT_FLOWS`]),
    /// oldest first, with site names as the routing view knows them.
    pub fn recent_flows(&self) -> Vec<crate::flow::FlowRecord> {
        self.flows.recent_flows()
    }

    /// Per-key flow statistics (flows by role and outcome, bytes, durations, setup times),
    /// sorted by key.
    pub fn flow_stats(&self) -> Vec<crate::flow::FlowKeyStats> {
        self.flows.key_stats()
    }

    /// Datagram counts of UDP flows per routing key (forwarded, oversize, dropped by
    /// reason), sorted by key.
    pub fn udp_stats(&self) -> Vec<crate::flow::UdpKeyStats> {
        self.flows.udp_stats()
    }

    /// The flow side of this router (tests tune it, e.g. the UDP idle timeout).
    #[cfg(test)]
    pub(crate) fn flow_state(&self) -> &Arc<Flows> {
        &self.flows
    }

    /// Request metrics of HTTP listeners, by routing key.
    pub fn http_metrics(
        &self,
    ) -> std::collections::BTreeMap<String, crate::flow::KeyMetricsSnapshot> {
        self.flows.http_metrics.snapshot()
    }

    /// The network as this router knows it: every router, its links, every routing key.
    pub fn network(&self) -> super::NetworkStatus {
        super::NetworkStatus::of(&self.shared.routes.read())
    }

    /// A receiver whose value changes whenever the routing table may have changed (routers,
    /// links or keys learnt or lost). For status pages and tests.
    pub fn route_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.routes.subscribe()
    }

    /// Drains, then closes every link with a Close frame, stops all tasks and releases the
    /// link port: when this returns, a new router can bind the same port.
    ///
    /// Draining: listeners close at once (new clients are refused) and connectors are
    /// withdrawn (new flows from other sites go elsewhere), while TCP flows in progress go on
    /// over links still up, for up to [`SHUTDOWN_GRACE`]; flows left after that, and HTTP
    /// connections, are reset.
    pub async fn shutdown(mut self) {
        self.set_listeners(Vec::new());
        // Connectors go too: the keys are withdrawn from the network, and a flow that arrives
        // meanwhile is answered "no route" before any byte moved, so its ingress tries the
        // next site instead of starting a flow here that the end of the grace would reset.
        // Flows already running keep their connector.
        let withdrew =
            !self.connectors().is_empty() && self.links().iter().any(|l| l.state == LinkState::Up);
        self.set_connectors(Vec::new());
        self.flows.tcp_flows.close();
        let drained = async {
            // The links stay up while the withdrawal reaches the other routers: a flow sent
            // here meanwhile is answered "no route" and retried elsewhere, where a link closed
            // under it would fail it.
            if withdrew {
                tokio::time::sleep(WITHDRAWAL_QUIESCE).await;
            }
            self.flows.tcp_flows.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            tracing::warn!(
                "some flows did not finish within {} s; resetting them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        self.shared.shutdown.cancel();
        self.flows.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.flows.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some flows did not stop within {} s",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        for closer in self.shared.table.closers(None) {
            closer.close("router shutting down");
        }
        self.shared.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some link tasks did not stop within {} s",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        if let Some(ep) = self.quic_server.take() {
            quic::close_endpoint(ep).await;
        }
        self.shared.quic_dialers.close().await;
        // With every endpoint handle gone, quinn's drivers end and drop the UDP sockets.
        self.shared.quinn_tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.shared.quinn_tasks.wait()).await;
    }
}

impl Drop for Router {
    /// A router dropped without [`Router::shutdown`] still stops its tasks (in the background).
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Hands each stream a peer opens to the flow layer, or to the tap once one is installed.
async fn dispatch_incoming(
    mut rx: mpsc::Receiver<IncomingStream>,
    tap: Arc<Mutex<Option<mpsc::Sender<IncomingStream>>>>,
    flows: Arc<Flows>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => return,
            i = rx.recv() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let tapped = tap.lock().unwrap().clone();
        match tapped {
            Some(tx) => {
                if let Err(e) = tx.try_send(incoming) {
                    tracing::warn!(cause = %e, "reset a stream from a peer: the stream receiver (take_incoming) is full or gone");
                }
            }
            None => flow::serve_stream(&flows, incoming),
        }
    }
}

async fn quic_accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let pending = Arc::new(tokio::sync::Semaphore::new(tls::MAX_PENDING_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let remote = incoming.remote_address();
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tls::limited_warn!(shared.log_limits, "quic-pending", remote.ip(), addr = %remote, check = %"too-many-handshakes", limit = tls::MAX_PENDING_CONNECTIONS,
                "refused a QUIC connection from {remote}: too many handshakes in progress (a flood, or many sites redialing at once after an outage: they back off and retry)");
            incoming.refuse();
            continue;
        };
        let shared2 = shared.clone();
        shared.tasks.spawn(
            async move {
                let conn = match tokio::time::timeout(tls::TLS_HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        let why = super::explain::inbound_handshake_failure(&e);
                        tls::limited_warn!(shared2.log_limits, "quic-handshake", remote.ip(), addr = %remote, transport = %Transport::Quic, check = %why.check, cause = %e,
                            "refused a QUIC connection from {remote}: {why}");
                        return;
                    }
                    Err(_) => {
                        tls::limited_warn!(shared2.log_limits, "quic-handshake-timeout", remote.ip(), addr = %remote, transport = %Transport::Quic, check = %"handshake-timeout",
                            "refused a QUIC connection from {remote}: no handshake within {} s (a path that drops large UDP packets, or not a skiff router; if a site cannot link, try --transport tls there)",
                            tls::TLS_HANDSHAKE_TIMEOUT.as_secs());
                        return;
                    }
                };
                let site = match quic_peer_site(&conn, &*shared2.policy) {
                    Ok(site) => site,
                    Err((site, refusal)) => {
                        let who = site.map(|s| s.to_string()).unwrap_or_default();
                        tls::limited_warn!(shared2.log_limits, "quic-link-refused", format!("{}/{who}", remote.ip()), addr = %remote, site = %who, transport = %Transport::Quic, check = %refusal.check,
                            "refused an inbound link from {remote}: {refusal}");
                        conn.close(super::explain::REFUSED_CODE, refusal.reason.as_bytes());
                        return;
                    }
                };
                // Still pending until the hello exchange finished.
                let counters = shared2.datagram_counters.clone();
                serve_inbound(shared2, Arc::new(QuicConnection::new(conn, counters)), site, Transport::Quic, remote, permit)
                    .await;
            }
            .instrument(tracing::debug_span!("link_port_quic", remote = %remote)),
        );
    }
}

/// [`client_identity`] of a QUIC connection's client certificate.
fn quic_peer_site(
    conn: &quinn::Connection,
    policy: &dyn InboundPolicy,
) -> Result<SiteId, (Option<SiteId>, Refusal)> {
    let none = || {
        (
            None,
            Refusal::new(
                "client-certificate",
                "the peer presented no client certificate (links need one from a redeemed token)",
            ),
        )
    };
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(none)?;
    let first = certs.first().ok_or_else(none)?;
    client_identity(first, policy)
}

/// The site id of an inbound link's client certificate, once its key is the one granted to
/// that site id and its serial is one that site may still link with. `Err`: the site id the
/// certificate names (if it names one) and the check that failed.
pub(crate) fn client_identity(
    cert: &rustls_pki_types::CertificateDer<'_>,
    policy: &dyn InboundPolicy,
) -> Result<SiteId, (Option<SiteId>, Refusal)> {
    let unusable = |e: skiff_certs::CertError| {
        Refusal::new(
            "client-certificate",
            format!(
                "unusable client certificate: {e}; links present the certificate a token \
                 redemption returned"
            ),
        )
    };
    let site = skiff_certs::peer_site_id(cert).map_err(|e| (None, unusable(e)))?;
    let fail = |r: Refusal| (Some(site), r);
    // A revoked or unknown site is refused right after TLS, before it may send anything.
    policy
        .admit(site)
        .map_err(|reason| fail(policy_refusal(policy, site, reason)))?;
    let key = skiff_certs::key_fingerprint(cert).map_err(|e| fail(unusable(e)))?;
    policy
        .check_key(site, &key)
        .map_err(|reason| fail(Refusal::new("key", reason)))?;
    let serial = skiff_certs::certificate_serial(cert).map_err(|e| fail(unusable(e)))?;
    policy
        .check_serial(site, &serial)
        .map_err(|reason| fail(Refusal::new("serial", reason)))?;
    Ok(site)
}

/// Acceptor side of a link whose transport handshake verified a client certificate for
/// `cert_site`: hello exchange, then the driver, until the link ends. `pending` (the link
/// port's slot of a connection not yet linked) is released once the hello exchange ended.
pub(crate) async fn serve_inbound(
    shared: Arc<Shared>,
    conn: Arc<dyn MuxConnection>,
    cert_site: SiteId,
    transport: Transport,
    remote: SocketAddr,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let hello = tokio::time::timeout(
        tls::TLS_HANDSHAKE_TIMEOUT,
        accept_hello(&*conn, &shared.hello, cert_site, &*shared.policy),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Refusal::new(
            "handshake-timeout",
            format!(
                "no hello within {} s after the TLS handshake: the dialing router stalled or \
                 the path drops packets",
                tls::TLS_HANDSHAKE_TIMEOUT.as_secs()
            ),
        ))
    });
    let (control, peer) = match hello {
        Ok(h) => h,
        Err(refusal) => {
            tls::limited_warn!(shared.log_limits, "hello-refused", format!("{}/{cert_site}", remote.ip()), addr = %remote, site = %cert_site, %transport, check = %refusal.check,
                "refused an inbound link from {remote}: {refusal}");
            conn.close(&refusal.reason);
            return;
        }
    };
    drop(pending);
    let name = format!("from-{}", peer.site_name);
    let span = tracing::debug_span!("link", name = %name, peer = %cert_site);
    async {
        let closer = LinkCloser::default();
        let id = shared.table.insert(LinkStatus {
            name: name.clone(),
            direction: Direction::Inbound,
            peer_site_id: Some(cert_site),
            peer_site_name: Some(peer.site_name.clone()),
            transport: Some(transport),
            endpoint: Some(remote.to_string()),
            proxy: None,
            cost: peer.cost,
            state: LinkState::Connecting { last_error: None },
            since: now_rfc3339(),
            bytes_sent: 0,
            bytes_received: 0,
            rtt_ms: None,
            ups: 0,
            rtt_samples: Default::default(),
            peer_label: peer.site_name.clone(),
        });
        shared.table.set_up(
            id,
            UpLink {
                peer: cert_site,
                conn: conn.clone(),
                closer: closer.clone(),
                version: peer.version,
            },
            &peer.site_name,
            transport,
            &remote.to_string(),
        );
        // A revocation that raced with this handshake has closed the links it saw; ask
        // again now that this link is visible to it.
        if let Err(reason) = shared.policy.admit(cert_site) {
            closer.close(&reason);
        }
        if shared.shutdown.is_cancelled() {
            closer.close("router shutting down");
        }
        if let Some(other) = shared.table.inbound_name_taken(&name, cert_site) {
            tracing::warn!(link = %name, peer = %cert_site, addr = %remote, check = %"name-taken",
                "two sites named {} link here (site ids {other} and {cert_site}): both show as {name} in link list and /metrics; give one another name (its site.yaml) or revoke the one that should not link (skiff link revoke ID)",
                peer.site_name);
        }
        tracing::info!(link = %name, %transport, peer = %peer.site_name, addr = %remote, "inbound link up");
        let peer_name = peer.site_name.clone();
        let established = super::driver::Established {
            conn,
            control,
            peer,
            transport,
            endpoint: remote.to_string(),
        };
        let end = run_link(
            established,
            &name,
            closer,
            shared.timing,
            shared.sink.clone(),
            &shared.routes,
            &shared.table.rtt_samples(id),
        )
        .await;
        tracing::info!(link = %name, peer = %peer_name, reason = %end, "inbound link down");
        shared.table.remove(id);
    }
    .instrument(span)
    .await;
}
