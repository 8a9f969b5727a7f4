//! The UDP ingress role: a UDP listener's receive loop and one flow per client address.
//!
//! The receive loop reads each datagram (into a 64 KiB buffer: any UDP payload fits) and
//! hands it to the flow of its source address, made on the address's first datagram. It
//! never waits for a flow: a flow whose queue ([`CLIENT_QUEUE`]) is full loses the datagram
//! (`congested`), as does one past the listener's byte budget ([`super::MAX_QUEUED_BYTES`] of
//! datagrams waiting in queues or kept for a retry), and past [`MAX_FLOWS_PER_LISTENER`]
//! flows a new address's datagrams are dropped (`flow-limit`) until a flow ends. On a
//! wildcard address (`0.0.0.0`, `::`) each datagram also tells the address it was sent to
//! (packet info), and the flow's replies leave from that address.
//!
//! A flow chooses its targets as a TCP connection does (with `client-ip` affinity when the
//! listener asks for it). A local target gets a UDP socket connected to the least busy
//! local connector's backend; a remote one a stream on the link to its next hop ([`Hop`]),
//! on which the client's datagrams go at once while the egress answers. Until the answer
//! they are kept (at most [`CLIENT_QUEUE`]): a retryable answer (no backend got them) sends
//! them to the next target, at most [`MAX_ATTEMPTS`] in all. Then datagrams pass both ways,
//! replies from the listener's socket to the client's address, until nothing moved either
//! way for the idle timeout ([`super::IDLE_TIMEOUT`]; [`super::ONE_SHOT_IDLE`] for a flow
//! that carried one datagram from its client and had its reply): the flow then ends cleanly
//! (the stream's end ends it at every router on the way), and the address's next datagram
//! makes a new flow. A stream that fails before the egress answers, or no answer within
//! [`HEADER_TIMEOUT`], also sends the kept datagrams to the next target: an egress passes
//! nothing to its backend before its ok.
//!
//! A flow that found no target, or whose every target refused it, keeps its address for
//! [`FAILED_HOLD`], dropping what the client sends meanwhile as `no-route`, so a client
//! hammering a key nobody serves costs one flow (one record, one refusal) per second, not
//! one per datagram.
//!
//! Counting (`skiff_udp_*`, role `ingress`): `forward` is a datagram passed to the hop or
//! the local backend, `back` one sent to the client; every other datagram received from
//! either side is counted as a drop with its reason.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{Interest, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::hop::{Dropped, Hop, Via};
use super::{CLIENT_QUEUE, Direction, DropReason, MAX_FLOWS_PER_LISTENER, UdpKeyCounters};
use crate::flow::config::{Connector, Listener, first_key, no_target_reason};
use crate::flow::records::{Flow, FlowOutcome};
use crate::flow::{FlowRole, Flows, HEADER_TIMEOUT, MAX_ATTEMPTS, Outstanding};
use crate::routing::{Affinity, Family, Protocol, RoutingKey, Target, client_ip_hash};
use crate::wire::FlowStatusCode;

/// Receive buffer of a listener's socket and of a flow's backend socket: the largest UDP
/// payload fits.
const RECV_BUFFER: usize = 64 * 1024;

/// How long a flow that found no target (or was refused by every target) keeps its client
/// address, dropping its datagrams as `no-route`, before the next datagram tries again.
pub(crate) const FAILED_HOLD: Duration = Duration::from_secs(1);

/// Pause after a receive error on a listener's socket before reading again.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

thread_local! {
    /// The receive buffer of local backends' sockets: one per runtime thread, used only
    /// while a datagram is read (an idle flow holds none).
    static BACKEND_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0u8; RECV_BUFFER]);
}

/// The bytes of client datagrams a listener holds (queued for its flows or kept for a retry)
/// and their limit.
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// `data` counted in the budget until the returned value drops; `None` when it would
    /// go past the limit.
    fn take(self: &Arc<Self>, data: Bytes) -> Option<Queued> {
        let n = data.len();
        if self.used.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(Queued {
            data,
            budget: self.clone(),
        })
    }
}

/// A client datagram held by the listener, counted in its [`Budget`] until dropped.
struct Queued {
    data: Bytes,
    budget: Arc<Budget>,
}

impl std::ops::Deref for Queued {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.data.len(), Ordering::AcqRel);
    }
}

/// The flows of one listener by client address.
struct FlowTable {
    flows: Mutex<HashMap<SocketAddr, Entry>>,
    budget: Arc<Budget>,
}

/// A client address's flow: its queue, and a number telling it from a later flow of the
/// same address.
struct Entry {
    tx: mpsc::Sender<Queued>,
    generation: u64,
}

impl FlowTable {
    /// Removes the entry of `client` if it is still flow `generation`'s.
    fn remove(&self, client: SocketAddr, generation: u64) {
        let mut t = self.flows.lock().unwrap();
        if t.get(&client).is_some_and(|e| e.generation == generation) {
            t.remove(&client);
        }
    }
}

/// One read from a listener's socket: `len` bytes from `from`, sent to `to` (known on a
/// wildcard address), in datagrams of `stride` bytes (the last may be shorter; more than
/// one when the kernel coalesced a client's segments).
struct Received {
    len: usize,
    stride: usize,
    from: SocketAddr,
    to: Option<IpAddr>,
}

/// Reads a UDP listener's socket until the listener stops, handing each datagram to its
/// client's flow.
pub(crate) async fn receive_loop(flows: Arc<Flows>, listener: Arc<Listener>) {
    let table = Arc::new(FlowTable {
        flows: Mutex::default(),
        budget: Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit: *flows.udp_queued_bytes.lock().unwrap(),
        }),
    });
    let key_counters = flows.udp_stats.key(first_key(&listener));
    let cancel = listener.cancel().clone();
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut generation = 0u64;
    let mut failed = crate::link::tls::RateLimitedLog::default();
    loop {
        let recv = poll_fn(|cx| {
            let socket = listener.udp_socket();
            let Some(s) = socket.as_ref() else {
                return Poll::Ready(None);
            };
            let Some(state) = &listener.udp_state else {
                let mut rb = ReadBuf::new(&mut buf);
                return s.poll_recv_from(cx, &mut rb).map(|r| {
                    Some(r.map(|from| Received {
                        len: rb.filled().len(),
                        stride: rb.filled().len(),
                        from,
                        to: None,
                    }))
                });
            };
            loop {
                if let Err(e) = ready!(s.poll_recv_ready(cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
                let mut meta = [quinn_udp::RecvMeta::default()];
                let read = s.try_io(Interest::READABLE, || {
                    state.recv(s.into(), &mut [IoSliceMut::new(&mut buf)], &mut meta)
                });
                match read {
                    Ok(_) => {
                        let m = &meta[0];
                        return Poll::Ready(Some(Ok(Received {
                            len: m.len,
                            stride: m.stride,
                            from: m.addr,
                            to: m.dst_ip,
                        })));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
        });
        let got = tokio::select! {
            () = cancel.cancelled() => break,
            got = recv => got,
        };
        let got = match got {
            None => break,
            Some(Ok(got)) => got,
            Some(Err(e)) => {
                if let Some(count) = failed.due() {
                    tracing::warn!(cause = %e, failed = count,
                        "receiving on the UDP listener's socket fails; retrying every {} ms",
                        RECV_ERROR_PAUSE.as_millis());
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(RECV_ERROR_PAUSE) => {}
                }
                continue;
            }
        };
        let received = &buf[..got.len.min(buf.len())];
        let mut datagrams = received.chunks(got.stride.max(1));
        // An empty datagram is a datagram too.
        let empty: &[u8] = &[];
        let mut first = Some(datagrams.next().unwrap_or(empty));
        for d in std::iter::from_fn(|| first.take()).chain(datagrams) {
            let datagram = Bytes::copy_from_slice(d);
            let mut t = table.flows.lock().unwrap();
            if let Some(entry) = t.get(&got.from) {
                let Some(q) = table.budget.take(datagram) else {
                    key_counters.dropped(DropReason::Congested);
                    continue;
                };
                match entry.tx.try_send(q) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        key_counters.dropped(DropReason::Congested);
                        continue;
                    }
                    // Its flow is gone (it always removes its entry first; this is a flow
                    // task that stopped abnormally): a new one takes the address.
                    Err(mpsc::error::TrySendError::Closed(q)) => {
                        t.remove(&got.from);
                        if t.len() >= MAX_FLOWS_PER_LISTENER {
                            key_counters.dropped(DropReason::FlowLimit);
                            continue;
                        }
                        let new = NewFlow {
                            client: got.from,
                            local_ip: got.to,
                            first: q,
                        };
                        start_flow(&flows, &listener, &table, &mut t, new, &mut generation);
                    }
                }
            } else if t.len() >= MAX_FLOWS_PER_LISTENER {
                key_counters.dropped(DropReason::FlowLimit);
            } else {
                let Some(q) = table.budget.take(datagram) else {
                    key_counters.dropped(DropReason::Congested);
                    continue;
                };
                let new = NewFlow {
                    client: got.from,
                    local_ip: got.to,
                    first: q,
                };
                start_flow(&flows, &listener, &table, &mut t, new, &mut generation);
            }
        }
    }
    // The listener stopped: its flows see their queues close and end.
    table.flows.lock().unwrap().clear();
}

/// A new client address: where it sent to, and its first datagram.
struct NewFlow {
    client: SocketAddr,
    local_ip: Option<IpAddr>,
    first: Queued,
}

/// Makes the flow of a new client address with its first datagram.
fn start_flow(
    flows: &Arc<Flows>,
    listener: &Arc<Listener>,
    table: &Arc<FlowTable>,
    t: &mut HashMap<SocketAddr, Entry>,
    new: NewFlow,
    generation: &mut u64,
) {
    let NewFlow {
        client,
        local_ip,
        first,
    } = new;
    *generation += 1;
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    // Room for it is certain: the queue is new.
    let _ = tx.try_send(first);
    t.insert(
        client,
        Entry {
            tx,
            generation: *generation,
        },
    );
    let span = tracing::debug_span!("udp client", %client);
    let task = ClientFlow {
        flows: flows.clone(),
        listener: listener.clone(),
        table: table.clone(),
        client,
        local_ip,
        generation: *generation,
        rx,
    };
    flows.tasks.spawn(task.run().instrument(span));
}

/// Where a flow's datagrams go once it is set up.
enum Peer {
    /// A local connector's backend, through a connected socket.
    Local {
        socket: UdpSocket,
        connector: Arc<Connector>,
        /// Counts the flow among the connector's while it lives.
        _active: crate::flow::config::CounterGuard,
    },
    /// The next router, through the flow's stream (and QUIC datagrams) on the link.
    Remote(Hop),
}

/// What came from a peer.
enum PeerEvent {
    Datagram(Bytes),
    /// The far end ended the flow cleanly.
    Ended,
    /// The flow's stream failed.
    Failed(String),
    /// The backend socket reported an error (an earlier datagram was refused); it goes on.
    SocketError(std::io::Error),
}

impl Peer {
    /// The next datagram or event from the peer. Cancel-safe.
    async fn recv(&mut self) -> PeerEvent {
        match self {
            Peer::Local { socket, .. } => loop {
                // The buffer is borrowed only for the read itself: a waiting flow holds none.
                if let Err(e) = socket.readable().await {
                    return PeerEvent::SocketError(e);
                }
                let read = BACKEND_BUFFER.with_borrow_mut(|buf| {
                    socket
                        .try_recv(buf)
                        .map(|n| Bytes::copy_from_slice(&buf[..n]))
                });
                match read {
                    Ok(d) => return PeerEvent::Datagram(d),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return PeerEvent::SocketError(e),
                }
            },
            Peer::Remote(hop) => match hop.recv().await {
                Ok(Some(d)) => PeerEvent::Datagram(d),
                Ok(None) => PeerEvent::Ended,
                Err(e) => PeerEvent::Failed(e),
            },
        }
    }

    /// Passes one client datagram on; counts it.
    fn send(&self, d: &[u8], counters: &UdpKeyCounters) -> bool {
        let result = match self {
            // Straight to the kernel: tokio's `try_send` refuses until its reactor has seen
            // the new socket writable, which dropped a flow's first datagram on a busy router.
            Peer::Local {
                socket, connector, ..
            } => socket2::SockRef::from(socket)
                .send(d)
                .map(|_| ())
                .map_err(|e| {
                    tracing::debug!(cause = %e, "the backend socket refused a datagram");
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        // The backend's port is closed (ICMP): failing, and new flows skip it
                        // for a while as the egress's do (super::egress::connect_local).
                        connector.backend_failed(&format!(
                            "the backend {}:{} refused a datagram (is it listening on UDP?): {e}",
                            connector.spec.host, connector.spec.port
                        ));
                        super::egress::note_refused(connector);
                    }
                    send_error_reason(&e)
                }),
            Peer::Remote(hop) => match hop.send(d) {
                Ok(via) => {
                    if via == Via::Stream && hop.quic_datagrams() {
                        counters.oversize();
                    }
                    Ok(())
                }
                Err(Dropped::Congested) => Err(DropReason::Congested),
                Err(Dropped::Closed) => Err(DropReason::Closed),
            },
        };
        match result {
            Ok(()) => {
                counters.count(FlowRole::Ingress, Direction::Forward, 1);
                true
            }
            Err(reason) => {
                counters.dropped(reason);
                false
            }
        }
    }

    /// Ends the flow cleanly towards the peer.
    fn finish(&mut self) {
        if let Peer::Remote(hop) = self {
            hop.finish();
        }
    }
}

/// The drop reason of a refused `send`.
fn send_error_reason(e: &std::io::Error) -> DropReason {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        DropReason::Congested
    } else if e.raw_os_error() == Some(libc_emsgsize()) {
        DropReason::TooLarge
    } else {
        DropReason::SocketError
    }
}

/// `EMSGSIZE` (90 on Linux, 40 on the BSDs and macOS).
fn libc_emsgsize() -> i32 {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        90
    } else {
        40
    }
}

/// A set-up flow: its peer, its target (counted as one flow to its router while the flow
/// lives, for balancing), the local connector (if local), and the kept datagrams that still
/// have to go to the peer.
type Connected = (
    Peer,
    Target,
    Outstanding,
    Option<Arc<Connector>>,
    Vec<Queued>,
);

/// How setting a flow up ended.
enum Setup {
    /// Datagrams may pass: the peer, the target (counted as one flow to its router while
    /// the flow lives, for balancing), the local connector (if local), and the kept
    /// datagrams that still have to go to the peer (those that went before its answer stay
    /// in `kept`).
    Connected(Box<Connected>),
    /// No target took the flow: the outcome and why.
    Failed(FlowOutcome, String),
    /// The listener or router stopped, or the client's queue closed.
    Stopped,
}

/// One client address's flow.
struct ClientFlow {
    flows: Arc<Flows>,
    listener: Arc<Listener>,
    table: Arc<FlowTable>,
    client: SocketAddr,
    /// The address the client sent to, when the listener is on a wildcard address: replies
    /// leave from it.
    local_ip: Option<IpAddr>,
    generation: u64,
    rx: mpsc::Receiver<Queued>,
}

impl ClientFlow {
    async fn run(mut self) {
        let flows = self.flows.clone();
        let listener = self.listener.clone();
        let key = first_key(&listener).to_owned();
        let mut flow = Flow::start(
            &flows,
            flows.new_flow_id(),
            &key,
            flows.me,
            FlowRole::Ingress,
        )
        .accepted(Some(self.client), &listener.spec.name);
        let hash = match listener.spec.affinity {
            Affinity::ClientIp => Some(client_ip_hash(self.client.ip())),
            _ => None,
        };
        let targets = flows.choose_family(&listener.spec.strategy, Family::Udp, hash);
        if targets.is_empty() {
            listener.counters.fail();
            let why = no_target_reason(&flows, &listener);
            tracing::debug!(reason = %why, "UDP client refused: no reachable target");
            flow.fail(FlowOutcome::NoRoute, why);
            drop(flow);
            self.hold_failed(&flows.udp_stats.key(&key)).await;
            return;
        }
        let _active = listener.counters.start();
        let mut kept: Vec<Queued> = Vec::new();
        let setup = self.set_up(&mut flow, targets, &mut kept).await;
        let (mut peer, target, _outstanding, to_send) = match setup {
            Setup::Connected(connected) => {
                let (peer, target, outstanding, connector, to_send) = *connected;
                if let Some(c) = connector {
                    flow.via_connector(&c.spec.name);
                }
                (peer, target, outstanding, to_send)
            }
            Setup::Failed(outcome, reason) => {
                tracing::debug!(%reason, "UDP flow failed");
                listener.counters.fail();
                flow.fail(outcome, reason);
                drop(flow);
                let counters = flows.udp_stats.key(&key);
                // Kept datagrams that went down a failed stream were lost on their way;
                // those that no site took found no route.
                let lost = if outcome == FlowOutcome::Error {
                    DropReason::Closed
                } else {
                    DropReason::NoRoute
                };
                counters.dropped_n(lost, kept.len() as u64);
                self.hold_failed(&counters).await;
                return;
            }
            Setup::Stopped => {
                let counters = flows.udp_stats.key(&key);
                counters.dropped_n(DropReason::Closed, kept.len() as u64);
                flow.fail(
                    FlowOutcome::Error,
                    "the listener stopped before the flow was set up",
                );
                self.end();
                return;
            }
        };
        let counters = flows.udp_stats.key(target.key.as_str());
        let (fwd, back) = flow.connected(target.key.as_str(), target.router);
        // What went to the peer before it answered.
        let mut from_client = (kept.len() + to_send.len()) as u64;
        for d in &kept {
            counters.count(FlowRole::Ingress, Direction::Forward, 1);
            fwd.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        kept.clear();
        for d in to_send {
            if peer.send(&d, &counters) {
                fwd.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        let end = self
            .relay(&mut peer, &counters, (&fwd, &back), &mut from_client)
            .await;
        match end {
            RelayEnd::Idle | RelayEnd::Stopped => {
                peer.finish();
                flow.ok();
            }
            RelayEnd::PeerEnded => {
                // Our side of the stream ends cleanly too.
                peer.finish();
                flow.ok();
            }
            RelayEnd::Failed(reason) => {
                if let Peer::Remote(hop) = &mut peer {
                    hop.reset();
                }
                flow.fail(FlowOutcome::Reset, reason);
            }
        }
        self.end_with(&counters);
    }

    /// Tries the targets in turn until one takes the flow. Datagrams sent to a target
    /// before its answer are kept in `kept` (in order), for the next target when this one
    /// answers that nothing reached a backend.
    async fn set_up(
        &mut self,
        flow: &mut Flow,
        targets: Vec<Target>,
        kept: &mut Vec<Queued>,
    ) -> Setup {
        let flows = self.flows.clone();
        let cancel = self.listener.cancel().clone();
        let mut last = (FlowOutcome::NoRoute, String::new());
        let mut tried = 0;
        for target in targets.into_iter().take(MAX_ATTEMPTS) {
            let outstanding = flows.hold(target.router);
            tried += 1;
            flow.towards(target.key.as_str(), target.router);
            match target.next_hop {
                None => match local_backend(&flows, &target.key).await {
                    Ok((socket, connector)) => {
                        let peer = Peer::Local {
                            socket,
                            _active: connector.counters.start(),
                            connector: connector.clone(),
                        };
                        // Kept datagrams go now.
                        let to_send = std::mem::take(kept);
                        return Setup::Connected(Box::new((
                            peer,
                            target,
                            outstanding,
                            Some(connector),
                            to_send,
                        )));
                    }
                    Err((outcome, reason)) => last = (outcome, reason),
                },
                Some(hop_router) => {
                    let (stream, header, link) = match flows
                        .open_flow_on(&target, hop_router, flow.id(), Protocol::Udp, flow.client())
                        .await
                    {
                        Ok(opened) => opened,
                        Err(why) => {
                            last = (FlowOutcome::NoRoute, why);
                            continue;
                        }
                    };
                    // The datagrams of the link the stream is on (its channel is there).
                    let datagrams = link.datagrams();
                    let mut hop = Hop::opened(stream, datagrams, header.freeze());
                    // Before the answer every datagram goes as a frame on the stream, after
                    // the header; those the stream's queue has no room for wait.
                    let mut waiting = 0usize;
                    for d in kept.iter() {
                        if waiting > 0 || hop.send(d).is_err() {
                            waiting += 1;
                        }
                    }
                    let answer = tokio::time::timeout(HEADER_TIMEOUT, async {
                        loop {
                            let room = kept.len() < CLIENT_QUEUE;
                            tokio::select! {
                                () = cancel.cancelled() => return None,
                                status = hop.read_status() => return Some(status),
                                d = self.rx.recv(), if room => match d {
                                    None => return None,
                                    Some(d) => {
                                        if waiting > 0 || hop.send(&d).is_err() {
                                            waiting += 1;
                                        }
                                        kept.push(d);
                                    }
                                },
                            }
                        }
                    })
                    .await;
                    let status = match answer {
                        Ok(None) => {
                            hop.reset();
                            return Setup::Stopped;
                        }
                        Ok(Some(Ok(status))) => status,
                        // No backend got anything (an egress passes nothing on before its
                        // ok): the kept datagrams go to the next target.
                        Ok(Some(Err(reason))) => {
                            hop.reset();
                            last = (
                                FlowOutcome::Error,
                                format!("{}: {reason}", flows.site_name(target.router)),
                            );
                            tracing::debug!(reason = %last.1, "target failed; trying the next");
                            continue;
                        }
                        Err(_) => {
                            hop.reset();
                            last = (
                                FlowOutcome::Error,
                                format!(
                                    "no answer from {} within {} s",
                                    flows.site_name(target.router),
                                    HEADER_TIMEOUT.as_secs()
                                ),
                            );
                            tracing::debug!(reason = %last.1, "target failed; trying the next");
                            continue;
                        }
                    };
                    match status.code {
                        FlowStatusCode::Ok => {
                            // Those that waited for room go now (as QUIC datagrams when
                            // they fit).
                            let first_waiting = kept.len() - waiting;
                            let to_send = kept.drain(first_waiting..).collect();
                            return Setup::Connected(Box::new((
                                Peer::Remote(hop),
                                target,
                                outstanding,
                                None,
                                to_send,
                            )));
                        }
                        code if code.is_retryable() => {
                            hop.reset();
                            last = (FlowOutcome::of_code(code), status.message);
                        }
                        code => {
                            hop.reset();
                            return Setup::Failed(FlowOutcome::of_code(code), status.message);
                        }
                    }
                }
            }
            tracing::debug!(reason = %last.1, "target failed; trying the next");
        }
        let (outcome, mut reason) = last;
        if tried > 1 {
            reason = format!("{reason} (the last of {tried} sites tried)");
        }
        Setup::Failed(outcome, reason)
    }

    /// Passes datagrams both ways until the flow is idle, the peer ends or fails it, or the
    /// listener stops. `from_client` counts the client's datagrams the flow carried.
    async fn relay(
        &mut self,
        peer: &mut Peer,
        counters: &UdpKeyCounters,
        (fwd, back): (&std::sync::atomic::AtomicU64, &std::sync::atomic::AtomicU64),
        from_client: &mut u64,
    ) -> RelayEnd {
        let conversation_idle = *self.flows.udp_idle.lock().unwrap();
        let one_shot_idle = *self.flows.udp_one_shot_idle.lock().unwrap();
        let mut replies = 0u64;
        // One datagram from the client and its reply(ies): a one-shot exchange (a DNS query
        // from a new source port) ends sooner.
        let idle_for = |from_client: u64, replies: u64| {
            if from_client <= 1 && replies >= 1 {
                one_shot_idle
            } else {
                conversation_idle
            }
        };
        let mut idle_after = idle_for(*from_client, replies);
        let cancel = self.listener.cancel().clone();
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        loop {
            enum Event {
                Client(Option<Queued>),
                Peer(PeerEvent),
                Idle,
                Stopped,
            }
            // Unbiased: a client sending fast must not starve its replies, nor the reverse.
            let event = tokio::select! {
                () = cancel.cancelled() => Event::Stopped,
                d = self.rx.recv() => Event::Client(d),
                e = peer.recv() => Event::Peer(e),
                () = &mut idle => Event::Idle,
            };
            match event {
                Event::Stopped | Event::Client(None) => return RelayEnd::Stopped,
                Event::Client(Some(d)) => {
                    *from_client += 1;
                    idle_after = idle_for(*from_client, replies);
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + idle_after);
                    if peer.send(&d, counters) {
                        fwd.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                Event::Peer(PeerEvent::Datagram(d)) => {
                    replies += 1;
                    idle_after = idle_for(*from_client, replies);
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + idle_after);
                    if let Peer::Local { connector, .. } = peer {
                        connector.backend_ok();
                    }
                    let sent = self.reply(&d);
                    match sent {
                        Ok(()) => {
                            counters.count(FlowRole::Ingress, Direction::Back, 1);
                            back.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        Err(reason) => counters.dropped(reason),
                    }
                }
                Event::Peer(PeerEvent::SocketError(e)) => {
                    counters.dropped(DropReason::SocketError);
                    if let Peer::Local { connector, .. } = peer
                        && e.kind() == std::io::ErrorKind::ConnectionRefused
                    {
                        connector.backend_failed(&format!(
                            "the backend {}:{} refused a datagram (is it listening on UDP?): {e}",
                            connector.spec.host, connector.spec.port
                        ));
                    }
                }
                Event::Peer(PeerEvent::Ended) => return RelayEnd::PeerEnded,
                Event::Peer(PeerEvent::Failed(e)) => {
                    return RelayEnd::Failed(format!("the link stream to the egress site: {e}"));
                }
                Event::Idle => {
                    // Idle only if nothing is queued: the entry goes under the table's lock,
                    // so no datagram can slip into a queue nobody reads.
                    let mut t = self.table.flows.lock().unwrap();
                    if !self.rx.is_empty() {
                        idle.as_mut()
                            .reset(tokio::time::Instant::now() + idle_after);
                        continue;
                    }
                    if t.get(&self.client)
                        .is_some_and(|e| e.generation == self.generation)
                    {
                        t.remove(&self.client);
                    }
                    drop(t);
                    tracing::debug!(
                        idle_ms = idle_after.as_millis() as u64,
                        "UDP flow idle: ended"
                    );
                    return RelayEnd::Idle;
                }
            }
        }
    }

    /// Sends a reply to the client from the listener's socket (from the address the client
    /// sent to, on a wildcard address).
    fn reply(&self, d: &[u8]) -> Result<(), DropReason> {
        let socket = self.listener.udp_socket();
        let Some(s) = socket.as_ref() else {
            return Err(DropReason::Closed);
        };
        let sent = match (&self.listener.udp_state, self.local_ip) {
            (Some(state), Some(src)) => {
                let transmit = quinn_udp::Transmit {
                    destination: self.client,
                    ecn: None,
                    contents: d,
                    segment_size: None,
                    src_ip: Some(src),
                };
                s.try_io(Interest::WRITABLE, || state.try_send(s.into(), &transmit))
            }
            _ => s.try_send_to(d, self.client).map(|_| ()),
        };
        sent.map_err(|e| send_error_reason(&e))
    }

    /// After a failed setup: keeps the client's address for [`FAILED_HOLD`], dropping its
    /// datagrams as `no-route`.
    async fn hold_failed(mut self, counters: &UdpKeyCounters) {
        let cancel = self.listener.cancel().clone();
        let hold = tokio::time::sleep(FAILED_HOLD);
        tokio::pin!(hold);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = &mut hold => break,
                d = self.rx.recv() => match d {
                    Some(_) => counters.dropped(DropReason::NoRoute),
                    None => break,
                },
            }
        }
        self.table.remove(self.client, self.generation);
        // Those that came as the entry went.
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            counters.dropped(DropReason::NoRoute);
        }
    }

    /// Removes the flow's entry; datagrams still queued are counted as `closed`.
    fn end_with(mut self, counters: &UdpKeyCounters) {
        self.table.remove(self.client, self.generation);
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            counters.dropped(DropReason::Closed);
        }
    }

    /// [`ClientFlow::end_with`] under the listener's first key.
    fn end(self) {
        let counters = self.flows.udp_stats.key(first_key(&self.listener));
        self.end_with(&counters);
    }
}

/// How a set-up flow ended.
enum RelayEnd {
    /// Nothing moved for the idle timeout.
    Idle,
    /// The listener or the router stopped.
    Stopped,
    /// The egress ended the flow (its own idle timeout).
    PeerEnded,
    /// The flow's stream failed.
    Failed(String),
}

/// A UDP socket connected to the least busy usable local connector of `key`, as the egress
/// connects one (a connector whose backend refused datagrams lately is skipped the same way);
/// else the outcome and why.
async fn local_backend(
    flows: &Flows,
    key: &RoutingKey,
) -> Result<(UdpSocket, Arc<Connector>), (FlowOutcome, String)> {
    super::egress::connect_local(flows, key)
        .await
        .map_err(|status| (FlowOutcome::of_code(status.code), status.message))
}
