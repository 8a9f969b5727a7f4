//! The UDP egress role: a flow stream for this router with protocol `udp` gets one connected
//! UDP socket to the least busy local connector of its key, and datagrams pass between the
//! flow's [`Hop`] and that socket, one for one, until the ingress ends the flow (a clean end
//! of its stream), the hop fails (a reset), the backend refuses datagrams (below), or nothing
//! moved either way for [`EGRESS_IDLE_TIMEOUT`](super::EGRESS_IDLE_TIMEOUT)
//! (`Flows::udp_egress_idle`; the egress then ends the flow cleanly itself: the ingress may
//! have vanished with its link).
//!
//! A backend that refuses datagrams (its port is closed: the kernel reports the host's ICMP
//! port unreachable as `ECONNREFUSED` on the socket's next call) marks the connector failing,
//! as a refused TCP connection does, and:
//! - a flow whose backend refused a datagram and then sent no reply for [`REFUSED_RESET`]
//!   (2 s) is ended with a reset (recorded `connect-refused`), so the ingress makes a new
//!   flow for the client's next datagram and chooses its target again;
//! - a new flow is answered a retryable `connect-refused` status ("the backend ... refused
//!   datagrams N s ago, no reply since") while every usable connector of its key refused
//!   within the last [`REFUSED_HOLD`] (5 s) with no reply since, so the ingress tries its
//!   next site; after that the backend is tried again. Any reply from the backend clears
//!   both.
//!
//! Counting (`skiff_udp_*`, role `egress`): `forward` is a datagram the socket took towards
//! the backend, `back` a reply passed to the hop; a reply that went whole on the stream of a
//! QUIC link counts `oversize` too. Drops: the socket refused the datagram (`too-large` for
//! `EMSGSIZE`, `socket-error` otherwise, `congested` when its send buffer was full) or the
//! hop could not take a reply (`congested`, `closed`). A refusal the kernel reports on a
//! receive (`ECONNREFUSED` from `recv`) is counted as one `socket-error` drop too, though the
//! datagram it answers had already been counted `forward` when the socket took it: such a
//! datagram is in both counts, and `forward` minus those drops is what reached a listening
//! backend. A refusal reported on a send is that send's own datagram, counted only as the
//! drop.
//!
//! Memory: a flow holds no receive buffer; each worker thread has one of 64 KiB (the largest
//! UDP payload) that a flow reads into only once its socket is readable, copying the datagram
//! out at its size; plus the hop's bounded queues.

use std::cell::RefCell;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_certs::SiteId;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::hop::{Dropped, Hop, Via};
use super::{Direction, DropReason};
use crate::flow::config::Connector;
use crate::flow::records::{Flow, FlowOutcome};
use crate::flow::tcp::answer_failure;
use crate::flow::{CONNECT_TIMEOUT, FlowRole, Flows};
use crate::link::LinkStream;
use crate::link::datagram::Datagrams;
use crate::routing::{Family, RoutingKey};
use crate::wire::{FlowHeader, FlowStatusCode, FlowStatusFrame};

/// Receive buffer of the backend sockets (one per worker thread): the largest UDP payload,
/// and bytes to spare.
const RECV_BUFFER: usize = 64 * 1024;

/// A flow whose backend refused a datagram and sent no reply for this long is reset (so the
/// ingress chooses a target again for the client's next datagram).
pub(crate) const REFUSED_RESET: Duration = Duration::from_secs(2);
/// A datagram sent this long without a refusal coming back shows the backend takes
/// datagrams again (a backend that never replies, like a syslog collector, restarted).
pub(crate) const REFUSED_QUIET: Duration = Duration::from_secs(1);
/// New flows to a connector whose backend refused a datagram within this long, with no reply
/// since, are answered `connect-refused` (the ingress tries its next site).
pub(crate) const REFUSED_HOLD: Duration = Duration::from_secs(5);

thread_local! {
    /// What a backend socket reads into, only while it reads (see the module's memory note).
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; RECV_BUFFER]);
}

/// Connectors whose backend refused a datagram, with when it last did, until it replies.
/// Keyed by the connector itself (a reconfigured connector starts afresh); shared by the
/// routers of a process, which never share connectors.
static REFUSALS: Mutex<Vec<(Weak<Connector>, Instant)>> = Mutex::new(Vec::new());
/// Whether [`REFUSALS`] may hold an entry: replies skip its lock while it holds none.
static ANY_REFUSAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `connector`'s backend refused a datagram now.
pub(super) fn note_refused(connector: &Arc<Connector>) {
    let mut r = REFUSALS.lock().unwrap();
    ANY_REFUSAL.store(true, Ordering::Relaxed);
    r.retain(|(c, _)| c.strong_count() > 0);
    let now = Instant::now();
    match r
        .iter_mut()
        .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(connector)))
    {
        Some(entry) => entry.1 = now,
        None => r.push((Arc::downgrade(connector), now)),
    }
}

/// `connector`'s backend replied: its refusals are forgotten.
fn note_reply(connector: &Arc<Connector>) {
    let mut r = REFUSALS.lock().unwrap();
    if !r.is_empty() {
        r.retain(|(c, _)| {
            c.strong_count() > 0 && !std::ptr::eq(c.as_ptr(), Arc::as_ptr(connector))
        });
    }
    if r.is_empty() {
        ANY_REFUSAL.store(false, Ordering::Relaxed);
    }
}

/// When `connector`'s backend last refused a datagram, if it has not replied since.
fn last_refused(connector: &Arc<Connector>) -> Option<Instant> {
    if !ANY_REFUSAL.load(Ordering::Relaxed) {
        return None;
    }
    let r = REFUSALS.lock().unwrap();
    r.iter()
        .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(connector)))
        .map(|(_, at)| *at)
}

/// The next datagram from `socket`, or its pending error (a refusal: the kernel reports the
/// backend host's ICMP port unreachable as an error on the socket, which wakes no reader of
/// a readable socket: hence `ERROR` too). Read into this thread's buffer once the socket is
/// ready, and copied out at its size. Cancel-safe.
async fn recv_reply(socket: &UdpSocket) -> std::io::Result<Bytes> {
    socket
        .async_io(Interest::READABLE | Interest::ERROR, || {
            RECV_BUF.with_borrow_mut(|buf| {
                let n = (&*socket2::SockRef::from(socket)).read(buf)?;
                Ok(Bytes::copy_from_slice(&buf[..n]))
            })
        })
        .await
}

/// Serves a UDP flow stream whose header names this router.
pub(crate) async fn egress(
    flows: &Arc<Flows>,
    mut stream: LinkStream,
    datagrams: Option<Arc<Datagrams>>,
    header: &FlowHeader,
    key: RoutingKey,
    origin: SiteId,
    leftover: BytesMut,
) {
    let mut flow = Flow::start(
        flows,
        header.flow_id,
        key.as_str(),
        origin,
        FlowRole::Egress,
    )
    .with_client(header.client);
    flow.towards(key.as_str(), flows.me);
    let (socket, connector) = match connect_local(flows, &key).await {
        Ok(c) => c,
        Err(status) => {
            flow.fail(FlowOutcome::of_code(status.code), status.message.clone());
            answer_failure(&mut stream, status).await;
            return;
        }
    };
    flow.via_connector(&connector.spec.name);
    let _active = connector.counters.start();
    let mut hop = Hop::accepted(stream, datagrams, leftover);
    if hop.write_status(&FlowStatusFrame::ok()).await.is_err() {
        flow.fail(
            FlowOutcome::Error,
            "the link stream from the ingress failed before the answer was sent",
        );
        hop.reset();
        return;
    }
    let (fwd, back) = flow.connected(key.as_str(), flows.me);
    let counters = flows.udp_stats.key(key.as_str());
    let backend = format!(
        "the backend {}:{}",
        connector.spec.host, connector.spec.port
    );
    // The first refusal since the backend last replied: the flow is reset REFUSED_RESET later,
    // unless the backend took datagrams again meanwhile (below).
    let mut refused_at: Option<Instant> = None;
    // The latest refusal, and the first datagram sent after it (its backend took it if no
    // refusal came back within REFUSED_QUIET).
    let mut last_refusal: Option<Instant> = None;
    let mut sent_after_refusal: Option<Instant> = None;
    let idle_after = *flows.udp_egress_idle.lock().unwrap();
    let idle = tokio::time::sleep(idle_after);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            got = hop.recv() => match got {
                Ok(Some(d)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    // Straight to the kernel: tokio's `try_send` refuses until its reactor
                    // has seen the new socket writable, which drops a flow's first datagrams.
                    match socket2::SockRef::from(&socket).send(&d) {
                        Ok(_) => {
                            counters.count(FlowRole::Egress, Direction::Forward, 1);
                            fwd.fetch_add(d.len() as u64, Ordering::Relaxed);
                            if last_refusal.is_some() && sent_after_refusal.is_none() {
                                sent_after_refusal = Some(Instant::now());
                            }
                        }
                        Err(e) => {
                            counters.dropped(send_drop_reason(&e));
                            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                connector.backend_failed(&refused(&backend, &e));
                                note_refused(&connector);
                                refused_at.get_or_insert_with(Instant::now);
                                last_refusal = Some(Instant::now());
                                sent_after_refusal = None;
                            }
                        }
                    }
                }
                Ok(None) => {
                    // The ingress ended the flow.
                    hop.finish();
                    flow.ok();
                    return;
                }
                Err(e) => {
                    flow.fail(FlowOutcome::Reset, format!("the link stream from the ingress: {e}"));
                    hop.reset();
                    return;
                }
            },
            got = recv_reply(&socket) => match got {
                Ok(reply) => {
                    let n = reply.len();
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    connector.backend_ok();
                    if refused_at.take().is_some() || last_refused(&connector).is_some() {
                        note_reply(&connector);
                    }
                    match hop.send(&reply) {
                        Ok(via) => {
                            counters.count(FlowRole::Egress, Direction::Back, 1);
                            back.fetch_add(n as u64, Ordering::Relaxed);
                            if via == Via::Stream && hop.quic_datagrams() {
                                counters.oversize();
                            }
                        }
                        Err(Dropped::Congested) => counters.dropped(DropReason::Congested),
                        Err(Dropped::Closed) => counters.dropped(DropReason::Closed),
                    }
                }
                Err(e) => {
                    // An earlier datagram was refused (ICMP from the backend's host); the
                    // socket goes on.
                    counters.dropped(DropReason::SocketError);
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        connector.backend_failed(&refused(&backend, &e));
                        note_refused(&connector);
                        refused_at.get_or_insert_with(Instant::now);
                        last_refusal = Some(Instant::now());
                        sent_after_refusal = None;
                    } else {
                        tracing::debug!(cause = %e, "backend socket error");
                    }
                }
            },
            () = wait_until(refused_at.map(|at| at + REFUSED_RESET)) => {
                // A datagram sent after the latest refusal drew none within REFUSED_QUIET: the
                // backend (restarted, say) takes datagrams again, though it has not replied.
                if sent_after_refusal.is_some_and(|t| t.elapsed() >= REFUSED_QUIET) {
                    refused_at = None;
                    last_refusal = None;
                    sent_after_refusal = None;
                    note_reply(&connector);
                    connector.backend_ok();
                    continue;
                }
                let why = format!(
                    "{backend} refused datagrams and sent no reply for {} s: the flow was reset so that its client's next datagram chooses a target again",
                    REFUSED_RESET.as_secs()
                );
                tracing::debug!(reason = %why, "UDP flow reset by the egress");
                flow.fail(FlowOutcome::ConnectRefused, why);
                hop.reset();
                return;
            }
            () = &mut idle => {
                tracing::debug!(idle_ms = idle_after.as_millis(), "UDP flow idle: ended by the egress");
                hop.finish();
                flow.ok();
                return;
            }
        }
    }
}

/// Sleeps until `at`; forever when it is `None`.
async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the connector's health shows after a refusal.
fn refused(backend: &str, e: &std::io::Error) -> String {
    format!("{backend} refused a datagram (is it listening on UDP?): {e}")
}

/// The reason a datagram the backend socket refused is counted under.
fn send_drop_reason(e: &std::io::Error) -> DropReason {
    match e.kind() {
        std::io::ErrorKind::WouldBlock => DropReason::Congested,
        _ if e.raw_os_error() == Some(emsgsize()) => DropReason::TooLarge,
        _ => DropReason::SocketError,
    }
}

/// `EMSGSIZE` (90 on Linux, 40 on the BSDs and macOS).
fn emsgsize() -> i32 {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        90
    } else {
        40
    }
}

/// A UDP socket connected to the least busy usable local connector of `key` (whose host
/// resolves), within [`CONNECT_TIMEOUT`] in all.
pub(super) async fn connect_local(
    flows: &Flows,
    key: &RoutingKey,
) -> Result<(UdpSocket, Arc<Connector>), FlowStatusFrame> {
    let connectors = flows.config.connectors_for_family(key, Family::Udp);
    if connectors.is_empty() {
        let why = if flows.config.has_connector(key) {
            "its connectors here are not usable"
        } else {
            "no connector for it here"
        };
        return Err(FlowStatusFrame::fail(
            FlowStatusCode::NoRoute,
            format!("key {key}: {why}"),
        ));
    }
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut last = None;
    for c in connectors {
        if let Some(at) = last_refused(&c) {
            let ago = at.elapsed();
            if ago < REFUSED_HOLD {
                last = Some(FlowStatusFrame::fail(
                    FlowStatusCode::ConnectRefused,
                    format!(
                        "key {key}: the backend {}:{} refused datagrams {:.1} s ago, no reply since (tried again {} s after its last refusal)",
                        c.spec.host,
                        c.spec.port,
                        ago.as_secs_f64(),
                        REFUSED_HOLD.as_secs()
                    ),
                ));
                continue;
            }
        }
        let work = connect_backend(&c.spec.host, c.spec.port);
        let result = tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(FlowStatusFrame::fail(
                    FlowStatusCode::ConnectTimeout,
                    format!(
                        "backend host {} did not resolve within {} s",
                        c.spec.host,
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ))
            });
        match result {
            Ok(socket) => return Ok((socket, c)),
            Err(status) => {
                c.backend_failed(&status.message);
                tracing::debug!(connector = %c.spec.name, reason = %status.message, "UDP backend unusable");
                last = Some(status);
            }
        }
    }
    Err(last.unwrap_or_else(|| FlowStatusFrame::fail(FlowStatusCode::NoRoute, "no connector")))
}

/// A new UDP socket (any port) connected to `host:port`'s first address.
async fn connect_backend(host: &str, port: u16) -> Result<UdpSocket, FlowStatusFrame> {
    let refused = |what: String| FlowStatusFrame::fail(FlowStatusCode::ConnectRefused, what);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| refused(format!("cannot resolve backend host {host}: {e}")))?
        .next()
        .ok_or_else(|| refused(format!("backend host {host} has no address")))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| refused(format!("cannot open a UDP socket for {addr}: {e}")))?;
    socket.connect(addr).await.map_err(|e| {
        refused(format!(
            "cannot send to backend {host}:{port} ({addr}): {e}"
        ))
    })?;
    // Until the runtime has seen the new socket writable, `try_send` refuses at once.
    socket.writable().await.map_err(|e| {
        refused(format!(
            "cannot send to backend {host}:{port} ({addr}): {e}"
        ))
    })?;
    Ok(socket)
}
