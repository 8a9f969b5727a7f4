//! TCP flows: the ingress (a listener's client connection) and egress roles (transit:
//! `super::transit`).
//!
//! Ingress, per client connection: rank targets; for each in turn (at most
//! [`MAX_ATTEMPTS`]): a local target is connected directly; a remote one gets a new stream on
//! the link to its next hop carrying the header, then the client's bytes as they come, while
//! the ingress waits for the egress's status. Until the status arrives the ingress reads at
//! most [`REPLAY_LIMIT`] bytes from the client and keeps them; a retryable status
//! (no-route, connect-refused, connect-timeout) sends header and kept bytes to the next
//! target. With no target at all the client is refused at once with a TCP reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_certs::SiteId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::{Connector, Listener};
use super::records::{Flow, FlowOutcome};
use super::splice::{FlowEnd, Pump, SpliceEnd, splice};
use super::{
    CONNECT_TIMEOUT, FlowRole, Flows, HEADER_TIMEOUT, MAX_ATTEMPTS, REPLAY_LIMIT,
    TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_INTERVAL,
};
use crate::link::{IncomingStream, LinkStream};
use crate::routing::{Protocol, RoutingKey, Target};
use crate::wire::{FlowHeader, FlowStatusCode, FlowStatusFrame};

/// Refuses a client connection with a TCP reset.
fn refuse(mut client: TcpStream) {
    client.abort();
    drop(client);
}

pub(super) fn log_end(end: &SpliceEnd) {
    match end {
        SpliceEnd::Clean => tracing::debug!("flow ended"),
        SpliceEnd::Aborted(side, e) => tracing::debug!(?side, cause = %e, "flow reset"),
    }
}

/// A backend in words, for reasons.
fn backend_words(c: &Connector) -> String {
    format!("the backend {}:{}", c.spec.host, c.spec.port)
}

/// Serves one client connection accepted by `listener` from `remote`.
pub(crate) async fn serve_client(
    flows: Arc<Flows>,
    listener: Arc<Listener>,
    client: TcpStream,
    remote: SocketAddr,
) {
    let key = super::config::first_key(&listener);
    let mut flow = Flow::start(
        &flows,
        flows.new_flow_id(),
        key,
        flows.me,
        FlowRole::Ingress,
    )
    .accepted(Some(remote), &listener.spec.name);
    let client_hash = match listener.spec.affinity {
        crate::routing::Affinity::ClientIp => Some(crate::routing::client_ip_hash(remote.ip())),
        _ => None,
    };
    let targets = flows.choose_family(
        &listener.spec.strategy,
        crate::routing::Family::Tcp,
        client_hash,
    );
    if targets.is_empty() {
        listener.counters.fail();
        let why = super::config::no_target_reason(&flows, &listener);
        tracing::debug!(reason = %why, "refused a client: no reachable target");
        flow.fail(FlowOutcome::NoRoute, why);
        refuse(client);
        return;
    }
    configure_accepted(&client);
    let _active = listener.counters.start();
    let _in_progress = flows.tcp_flows.token();
    let mut client = client;
    let mut replay = BytesMut::new();
    let mut client_eof = false;
    let mut last = (FlowOutcome::NoRoute, String::new());
    let mut tried = 0;
    for target in targets.into_iter().take(MAX_ATTEMPTS) {
        let _outstanding = flows.hold(target.router);
        tried += 1;
        flow.towards(target.key.as_str(), target.router);
        match target.next_hop {
            None => match connect_local(&flows, &target.key).await {
                Ok((mut backend, connector)) => {
                    let _c = connector.counters.start();
                    flow.via_connector(&connector.spec.name);
                    let (fwd, back) = flow.connected(target.key.as_str(), flows.me);
                    let forward = Pump::new(replay.freeze(), client_eof, fwd);
                    let back = Pump::new(Bytes::new(), false, back);
                    let end =
                        splice(&mut client, &mut backend, forward, back, &flows.shutdown).await;
                    log_end(&end);
                    flow.spliced(&end, "the client", &backend_words(&connector));
                    return;
                }
                Err(status) => {
                    last = (FlowOutcome::of_code(status.code), status.message);
                }
            },
            Some(hop) => {
                match attempt_remote(
                    &flows,
                    &target,
                    hop,
                    &flow,
                    &mut client,
                    &mut replay,
                    &mut client_eof,
                )
                .await
                {
                    Attempt::Connected(mut stream, leftover) => {
                        let (fwd, back) = flow.connected(target.key.as_str(), target.router);
                        fwd.fetch_add(replay.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let forward = if client_eof {
                            Pump::finished(fwd)
                        } else {
                            Pump::new(Bytes::new(), false, fwd)
                        };
                        let back = Pump::new(leftover, false, back);
                        let end =
                            splice(&mut client, &mut stream, forward, back, &flows.shutdown).await;
                        log_end(&end);
                        flow.spliced(&end, "the client", "the link stream to the egress site");
                        return;
                    }
                    Attempt::Retry(outcome, reason) => last = (outcome, reason),
                    Attempt::Fail(outcome, reason) => {
                        tracing::debug!(%reason, "flow failed");
                        listener.counters.fail();
                        flow.fail(outcome, reason);
                        refuse(client);
                        return;
                    }
                }
            }
        }
        tracing::debug!(reason = %last.1, "target failed; trying the next");
    }
    tracing::debug!(reason = %last.1, "every target failed; client refused");
    listener.counters.fail();
    let (outcome, mut reason) = last;
    if tried > 1 {
        reason = format!("{reason} (the last of {tried} sites tried)");
    }
    flow.fail(outcome, reason);
    refuse(client);
}

/// Which end failed while an ingress waited for the egress's answer.
enum Failed {
    /// The link stream (the path to the egress).
    Stream(String),
    /// The client (it reset or failed; no point in another target).
    Client(String),
}

/// The outcome of one remote attempt.
enum Attempt {
    /// The egress answered ok: the stream, and payload bytes read after the status.
    Connected(LinkStream, Bytes),
    /// Nothing reached a backend: try the next target (how this one failed, and why).
    Retry(FlowOutcome, String),
    /// Give up on the client (reset it).
    Fail(FlowOutcome, String),
}

async fn attempt_remote(
    flows: &Arc<Flows>,
    target: &Target,
    hop: SiteId,
    flow: &Flow,
    client: &mut TcpStream,
    replay: &mut BytesMut,
    client_eof: &mut bool,
) -> Attempt {
    let opened = flows
        .open_flow(target, hop, flow.id(), Protocol::Tcp, flow.client())
        .await;
    let (mut stream, mut out) = match opened {
        Ok(opened) => opened,
        Err(why) => return Attempt::Retry(FlowOutcome::NoRoute, why),
    };
    out.extend_from_slice(replay);
    let opened = async {
        stream.writer.write_all(&out).await?;
        if *client_eof {
            stream.writer.shutdown().await?;
        }
        stream.writer.flush().await
    };
    // Part of the header and bytes may have reached the egress, which may have passed them
    // to a backend: only an answer from it says whether a retry elsewhere is safe, so a
    // failed write waits for the status like any other.
    let mut write_failed = opened.await.is_err();
    let mut answer = BytesMut::with_capacity(256);
    let mut chunk = vec![0u8; 16 * 1024];
    let wait = async {
        loop {
            match FlowStatusFrame::decode(&mut answer) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => return Err(Failed::Stream(format!("bad status frame: {e}"))),
            }
            let room = REPLAY_LIMIT - replay.len();
            let read_client = !*client_eof && room > 0 && !write_failed;
            tokio::select! {
                r = stream.reader.read_buf(&mut answer) => match r {
                    Ok(0) => return Err(Failed::Stream("the stream ended before the egress answered".to_owned())),
                    Ok(_) => {}
                    Err(e) => return Err(Failed::Stream(format!("the stream failed before the egress answered: {e}"))),
                },
                r = client.read(&mut chunk[..room.min(16 * 1024)]), if read_client => match r {
                    Ok(0) => {
                        *client_eof = true;
                        if stream.writer.shutdown().await.is_err() {
                            write_failed = true;
                        }
                    }
                    Ok(n) => {
                        replay.extend_from_slice(&chunk[..n]);
                        if stream.writer.write_all(&chunk[..n]).await.is_err() {
                            write_failed = true;
                        }
                    }
                    Err(e) => return Err(Failed::Client(format!("client: {e}"))),
                },
            }
        }
    };
    let status = match tokio::time::timeout(HEADER_TIMEOUT, wait).await {
        Ok(Ok(status)) => status,
        // The stream failed before the answer (the link to that site was lost, which a site
        // killed mid-flight causes) and the client has sent nothing yet: no backend can have
        // seen a byte of this client, so the next target may take it.
        Ok(Err(Failed::Stream(reason))) if replay.is_empty() => {
            stream.reset();
            return Attempt::Retry(FlowOutcome::Error, reason);
        }
        Ok(Err(Failed::Stream(reason) | Failed::Client(reason))) => {
            stream.reset();
            return Attempt::Fail(FlowOutcome::Error, reason);
        }
        Err(_) => {
            stream.reset();
            return Attempt::Fail(
                FlowOutcome::Error,
                format!(
                    "no answer from {} within {} s",
                    flows.site_name(target.router),
                    HEADER_TIMEOUT.as_secs()
                ),
            );
        }
    };
    match status.code {
        FlowStatusCode::Ok => Attempt::Connected(stream, answer.freeze()),
        code if code.is_retryable() => {
            stream.reset();
            Attempt::Retry(FlowOutcome::of_code(code), status.message)
        }
        code => {
            stream.reset();
            Attempt::Fail(FlowOutcome::of_code(code), status.message)
        }
    }
}

/// Connects to the least busy local connector of `key` that answers.
async fn connect_local(
    flows: &Flows,
    key: &RoutingKey,
) -> Result<(TcpStream, Arc<Connector>), FlowStatusFrame> {
    let connectors = flows
        .config
        .connectors_for_family(key, crate::routing::Family::Tcp);
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
    let mut last = None;
    // All connectors together get one CONNECT_TIMEOUT, so the ingress hears back (and can
    // retry at another site) well within its HEADER_TIMEOUT.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    for c in connectors {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let attempt = tokio::time::timeout(left, connect_backend(&c.spec.host, c.spec.port));
        let result = attempt.await.unwrap_or_else(|_| {
            Err(FlowStatusFrame::fail(
                FlowStatusCode::ConnectTimeout,
                format!(
                    "backend {}:{} did not accept in time",
                    c.spec.host, c.spec.port
                ),
            ))
        });
        match result {
            Ok(tcp) => {
                c.backend_ok();
                return Ok((tcp, c));
            }
            Err(status) => {
                c.backend_failed(&status.message);
                tracing::debug!(connector = %c.spec.name, reason = %status.message, "backend connect failed");
                last = Some(status);
            }
        }
    }
    Err(last.unwrap_or_else(|| FlowStatusFrame::fail(FlowStatusCode::NoRoute, "no connector")))
}

/// Connects to host:port within [`CONNECT_TIMEOUT`], trying each address in turn.
pub(crate) async fn connect_backend(host: &str, port: u16) -> Result<TcpStream, FlowStatusFrame> {
    let work = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                FlowStatusFrame::fail(
                    FlowStatusCode::ConnectRefused,
                    format!("cannot resolve backend host {host}: {e}"),
                )
            })?
            .collect();
        let mut last = FlowStatusFrame::fail(
            FlowStatusCode::ConnectRefused,
            format!("backend host {host} has no address"),
        );
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    set_keepalive(&tcp);
                    return Ok(tcp);
                }
                Err(e) => {
                    // The address only when the host is a name.
                    let at = if host.parse::<std::net::IpAddr>().is_ok() {
                        String::new()
                    } else {
                        format!(" at {addr}")
                    };
                    last = FlowStatusFrame::fail(
                        FlowStatusCode::ConnectRefused,
                        format!("backend {host}:{port}{at} refused the connection ({e})"),
                    );
                }
            }
        }
        Err(last)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(FlowStatusFrame::fail(
            FlowStatusCode::ConnectTimeout,
            format!(
                "backend {host}:{port} did not accept within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Reads from `stream` into `buf` until `decode` gives one frame (`what` names it in errors:
/// "its flow header", "the egress's answer"); bytes after the frame stay in `buf`.
pub(crate) async fn read_frame<T, E: std::fmt::Display>(
    stream: &mut LinkStream,
    buf: &mut BytesMut,
    what: &str,
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, E>,
) -> Result<T, String> {
    loop {
        match decode(buf) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(format!("bad {what}: {e}")),
        }
        match stream.reader.read_buf(buf).await {
            Ok(0) => return Err(format!("the stream ended before {what}")),
            Ok(_) => {}
            Err(e) => return Err(format!("the stream failed before {what}: {e}")),
        }
    }
}

/// Reads the header of a stream a peer opened; returns it and the payload bytes read after it.
async fn read_header(stream: &mut LinkStream) -> Result<(FlowHeader, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(512);
    let work = read_frame(stream, &mut buf, "its flow header", FlowHeader::decode);
    match tokio::time::timeout(HEADER_TIMEOUT, work).await {
        Ok(Ok(h)) => Ok((h, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no flow header within {} s",
            HEADER_TIMEOUT.as_secs()
        )),
    }
}

/// Answers a flow with a failure status and ends the stream.
pub(crate) async fn answer_failure(stream: &mut LinkStream, status: FlowStatusFrame) {
    tracing::debug!(code = %status.code, reason = %status.message, "flow refused");
    let mut out = BytesMut::new();
    status.encode(&mut out);
    let send = async {
        stream.writer.write_all(&out).await?;
        stream.writer.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .map_or(true, |r| r.is_err())
    {
        stream.reset();
    }
}

/// Serves a stream a peer opened: transit when its header names another router, egress when
/// it names us.
pub(crate) async fn serve_stream(flows: Arc<Flows>, incoming: IncomingStream) {
    let IncomingStream {
        peer,
        mut stream,
        datagrams,
        ..
    } = incoming;
    let (header, leftover) = match read_header(&mut stream).await {
        Ok(h) => h,
        Err(reason) => {
            tracing::debug!(%peer, %reason, "stream dropped");
            stream.reset();
            return;
        }
    };
    // HTTP connections are not waited for at shutdown (pooled connections between routers
    // and kept-alive clients would hold every stop for the whole grace), nor UDP flows (they
    // end only when idle).
    let waited = !header.protocol.is_http() && header.protocol != Protocol::Udp;
    let _in_progress = waited.then(|| flows.tcp_flows.token());
    let origin = SiteId::from_bytes(header.origin);
    let destination = SiteId::from_bytes(header.destination);
    let key: RoutingKey = match header.routing_key.parse() {
        Ok(k) => k,
        Err(e) => {
            let why = format!("bad routing key: {e}");
            let key = super::records::cap(&header.routing_key);
            let role = if destination == flows.me {
                FlowRole::Egress
            } else {
                FlowRole::Transit
            };
            let mut flow =
                Flow::start(&flows, header.flow_id, &key, origin, role).with_client(header.client);
            flow.fail(FlowOutcome::Denied, why.clone());
            answer_failure(
                &mut stream,
                FlowStatusFrame::fail(FlowStatusCode::Denied, why),
            )
            .await;
            return;
        }
    };
    if header.protocol == Protocol::Udp {
        if destination == flows.me {
            super::udp::egress::egress(&flows, stream, datagrams, &header, key, origin, leftover)
                .await;
        } else {
            super::udp::transit::transit(
                &flows,
                stream,
                datagrams,
                header,
                key,
                origin,
                destination,
                leftover,
            )
            .await;
        }
    } else if destination == flows.me {
        egress(&flows, stream, &header, key, origin, leftover).await;
    } else {
        super::transit::transit(&flows, stream, header, key, origin, destination, leftover).await;
    }
}

async fn egress(
    flows: &Arc<Flows>,
    mut stream: LinkStream,
    header: &FlowHeader,
    key: RoutingKey,
    origin: SiteId,
    leftover: BytesMut,
) {
    if header.protocol.is_http() {
        super::http::serve_egress(flows, stream, header, key, origin, leftover).await;
        return;
    }
    let mut flow = Flow::start(
        flows,
        header.flow_id,
        key.as_str(),
        origin,
        FlowRole::Egress,
    )
    .with_client(header.client);
    flow.towards(key.as_str(), flows.me);
    let (mut backend, connector) = match connect_local(flows, &key).await {
        Ok(c) => c,
        Err(status) => {
            flow.fail(FlowOutcome::of_code(status.code), status.message.clone());
            answer_failure(&mut stream, status).await;
            return;
        }
    };
    flow.via_connector(&connector.spec.name);
    let _c = connector.counters.start();
    let mut ok = BytesMut::new();
    FlowStatusFrame::ok().encode(&mut ok);
    if let Err(e) = stream.writer.write_all(&ok).await {
        tracing::debug!(cause = %e, "the stream failed before the status was sent");
        flow.fail(
            FlowOutcome::Error,
            format!("the link stream from the ingress failed before the answer was sent: {e}"),
        );
        stream.reset();
        backend.abort();
        return;
    }
    let (fwd, back) = flow.connected(key.as_str(), flows.me);
    let forward = Pump::new(leftover.freeze(), false, fwd);
    let back = Pump::new(Bytes::new(), false, back);
    let end = splice(&mut stream, &mut backend, forward, back, &flows.shutdown).await;
    log_end(&end);
    flow.spliced(
        &end,
        "the link stream from the ingress",
        &backend_words(&connector),
    );
}

/// Turns on TCP keepalive, so a flow to a host that vanished ends instead of holding its
/// task, sockets and buffers forever.
pub(crate) fn set_keepalive<S: std::os::fd::AsFd>(tcp: &S) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(cause = %e, "could not turn on TCP keepalive");
    }
}

/// Sets up a client connection a listener accepted: no Nagle delay, keepalive. On Linux (and
/// Android) the accepted socket inherits both from the listening socket
/// ([`configure_listening`]), which saves five system calls per connection.
pub(crate) fn configure_accepted(client: &TcpStream) {
    if cfg!(not(any(target_os = "linux", target_os = "android"))) {
        let _ = client.set_nodelay(true);
        set_keepalive(client);
    }
}

/// Sets on a listening socket what its accepted connections need (see
/// [`configure_accepted`]).
pub(crate) fn configure_listening(listener: &std::net::TcpListener) {
    let _ = socket2::SockRef::from(listener).set_tcp_nodelay(true);
    set_keepalive(listener);
}
