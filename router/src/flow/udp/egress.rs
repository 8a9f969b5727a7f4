//! The UDP egress role: a flow stream for this router with protocol `udp` gets one connected
//! UDP socket to the least busy local connector of its key, and datagrams pass between the
//! flow's [`Hop`] and that socket, one for one, until the ingress ends the flow (a clean end
//! of its stream), the hop fails (a reset), or nothing moved either way for
//! [`EGRESS_IDLE_TIMEOUT`](super::EGRESS_IDLE_TIMEOUT) (`Flows::udp_egress_idle`; the egress then ends the flow cleanly
//! itself: the ingress may have vanished with its link).
//!
//! Counting (`skiff_udp_*`, role `egress`): `forward` is a datagram the socket took towards
//! the backend, `back` a reply passed to the hop; a reply that went whole on the stream of a
//! QUIC link counts `oversize` too. Drops: the socket refused the datagram (`too-large` for
//! `EMSGSIZE`, `socket-error` otherwise, `congested` when its send buffer was full) or the
//! hop could not take a reply (`congested`, `closed`). A backend whose port is closed shows
//! as `socket-error` drops (the kernel reports the host's ICMP port unreachable on the next
//! call; the datagram it answers had been counted `forward`) and marks the connector failing,
//! as a refused TCP connection does; a reply marks it healthy again.
//!
//! Memory: one 64 KiB receive buffer per flow (a UDP datagram may be that large), plus the
//! hop's bounded queues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use skiff_certs::SiteId;
use tokio::net::UdpSocket;

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

/// Receive buffer of a flow's backend socket: the largest UDP payload, and one byte to spare.
const RECV_BUFFER: usize = 64 * 1024;

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
    );
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
    let mut buf = vec![0u8; RECV_BUFFER];
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
                        }
                        Err(e) => {
                            counters.dropped(send_drop_reason(&e));
                            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                connector.backend_failed(&refused(&backend, &e));
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
            got = socket.recv(&mut buf) => match got {
                Ok(n) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    connector.backend_ok();
                    let reply = &buf[..n];
                    match hop.send(reply) {
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
                    } else {
                        tracing::debug!(cause = %e, "backend socket error");
                    }
                }
            },
            () = &mut idle => {
                tracing::debug!(idle_ms = idle_after.as_millis(), "UDP flow idle: ended by the egress");
                hop.finish();
                flow.ok();
                return;
            }
        }
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
async fn connect_local(
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
    Ok(socket)
}
