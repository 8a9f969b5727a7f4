//! QUIC links (quinn): endpoint and transport configuration, dialing, and
//! [`MuxConnection`] for a quinn connection.
//!
//! The link port's UDP socket carries one quinn endpoint that accepts links (ALPN
//! skiff-link/1 only; token redemption is TCP-only). Dialing uses a separate client endpoint
//! per address family on an ephemeral port, made on first use, so a router without link access
//! (an edge) can dial and dialing does not depend on the listen address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio_util::task::TaskTracker;

use super::datagram::DatagramCounters;
use super::driver::Timing;
use super::mux::{LinkStream, MuxConnection};

/// Kernel buffer sizes asked for on QUIC link sockets (each way). The kernel's default
/// (`net.core.rmem_default`, 208 KiB on most Linux systems) overflows under bursts of UDP
/// flows' datagrams and bulk flows alike: the packets it drops are retransmitted (stream
/// data) or lost (datagrams). The kernel caps the request at `net.core.rmem_max` /
/// `wmem_max` (docs/udp.md says how to raise them).
pub(crate) const QUIC_SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`QUIC_SOCKET_BUFFER`] on a QUIC socket; what the kernel grants is kept.
pub(crate) fn size_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(QUIC_SOCKET_BUFFER) {
        tracing::debug!(cause = %e, "could not size the QUIC socket's receive buffer");
    }
    if let Err(e) = s.set_send_buffer_size(QUIC_SOCKET_BUFFER) {
        tracing::debug!(cause = %e, "could not size the QUIC socket's send buffer");
    }
    // Linux caps the request at the sysctl without an error, and reports twice what it
    // granted: say so once, or the loss it causes has no explanation.
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Ok(got) = s.recv_buffer_size()
        && got < QUIC_SOCKET_BUFFER
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            asked = QUIC_SOCKET_BUFFER,
            granted = got / 2,
            "the kernel caps UDP socket buffers below what QUIC links and UDP listeners ask for: \
             bursts of datagrams may be dropped by the kernel; raise net.core.rmem_max and \
             net.core.wmem_max to 4194304 (sysctl)"
        );
    }
}

/// Concurrent streams a peer may open on one QUIC link.
const MAX_STREAMS: u32 = 16 * 1024;
/// quinn's buffers of QUIC datagrams, each way, per link (see [`transport_config`]).
pub(crate) const DATAGRAM_BUFFER: usize = 1024 * 1024;

/// Transport parameters of link connections: quinn's own keepalive and idle timeout back up
/// the control-stream keepalive (they also keep NAT bindings warm).
pub(crate) fn transport_config(timing: Timing) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timing.keepalive_interval));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timing.dead_after).ok());
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(super::mux::QUIC_STREAM_WINDOW.into());
    // Bytes received and not yet read, across all streams: the per-link memory bound
    // (quinn's default is unlimited).
    t.receive_window(super::mux::QUIC_CONNECTION_WINDOW.into());
    // Bytes we buffer, sent or not, until acknowledged, across all streams of the connection:
    // this bounds the send side per link (quinn's default is 8 stream windows).
    t.send_window(super::mux::QUIC_SEND_WINDOW);
    // QUIC datagrams (UDP flows). Received ones wait here until the link's datagram task
    // moves them to their flows' queues (where a full queue is counted); when this buffer is
    // full quinn drops the oldest without a trace, so it holds a burst of about 800 full-size
    // datagrams while that task is scheduled. Its size is also what the peer may send at
    // most in one datagram, so it must stay above any path MTU.
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    // Datagrams waiting to be sent: `Datagrams::send` refuses a datagram (counted as
    // congested) once this is full, rather than let quinn drop older ones silently. 1 MiB is
    // about 8 ms at 1 Gbit/s: enough to ride out a burst, not enough to add a queue of
    // latency to every datagram behind it.
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    // Cubic, but a link that has sent nothing for a round trip may send one packet: quinn
    // holds the ACKs it owes behind a full window, and under heavy loss both ends of a busy
    // link did so until the link fell silent (super::congestion says how).
    t.congestion_controller_factory(Arc::new(super::congestion::StallFreeCubicConfig::default()));
    Arc::new(t)
}

/// Server side of the link port's UDP socket.
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    timing: Timing,
) -> Result<quinn::ServerConfig, quinn::crypto::rustls::NoInitialCipherSuite> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config(timing));
    Ok(cfg)
}

/// Client side of one link.
pub(crate) fn client_config(
    tls: Arc<rustls::ClientConfig>,
    timing: Timing,
) -> Result<quinn::ClientConfig, quinn::crypto::rustls::NoInitialCipherSuite> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config(timing));
    Ok(cfg)
}

/// quinn's tokio runtime, with every task quinn spawns (endpoint and connection drivers)
/// tracked, so shutdown can wait until the UDP sockets are really closed and a restarted
/// router can bind the same port at once.
#[derive(Debug)]
pub(crate) struct TrackedRuntime {
    pub(crate) tasks: TaskTracker,
}

impl quinn::Runtime for TrackedRuntime {
    fn new_timer(&self, i: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.tasks.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        t: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(t)
    }
}

/// Creates an endpoint on an already bound UDP socket; `cfg` makes it accept connections.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    endpoint_cfg: quinn::EndpointConfig,
    cfg: Option<quinn::ServerConfig>,
    runtime: Arc<TrackedRuntime>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(endpoint_cfg, cfg, socket, runtime)
}

/// Endpoint settings of the link port. Its stateless-reset key is derived from `secret_pem`
/// (a secret that outlives restarts and router certificate renewals: the site CA's key)
/// instead of drawn at random, and any short-header packet of an unknown
/// connection is answered (quinn's default connection ids are checked against a key drawn at
/// every start, which drops a previous run's packets silently). So a router restarted on the
/// same port answers the packets of its previous run's connections with resets its peers
/// recognise: they redial at once instead of waiting out the keepalive window on a dead
/// connection. Resets stay smaller than the packet that caused them and at most one per
/// 20 ms (quinn), so this amplifies nothing.
pub(crate) fn link_port_endpoint_config(secret_pem: &str) -> quinn::EndpointConfig {
    use ring::hmac;
    let master = hmac::Key::new(hmac::HMAC_SHA256, secret_pem.as_bytes());
    let derived = hmac::sign(&master, b"skiff-link/1 QUIC stateless reset key");
    let mut cfg = quinn::EndpointConfig::new(Arc::new(hmac::Key::new(
        hmac::HMAC_SHA256,
        derived.as_ref(),
    )));
    cfg.cid_generator(|| Box::new(RandomCids));
    cfg
}

/// Random 8-byte connection ids, every one accepted as possibly ours (see
/// [`link_port_endpoint_config`]).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .expect("the system random source failed");
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Closes an endpoint and waits (bounded) for its connections to drain.
pub(crate) async fn close_endpoint(ep: quinn::Endpoint) {
    ep.close(0u32.into(), b"router shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
}

/// Client endpoints for dialing, one per address family, made on first use.
pub(crate) struct QuicDialers {
    runtime: Arc<TrackedRuntime>,
    /// The router's datagram counters, for the links dialed.
    datagram_counters: Arc<DatagramCounters>,
    v4: Mutex<Option<quinn::Endpoint>>,
    v6: Mutex<Option<quinn::Endpoint>>,
}

impl QuicDialers {
    pub(crate) fn new(
        runtime: Arc<TrackedRuntime>,
        datagram_counters: Arc<DatagramCounters>,
    ) -> Self {
        QuicDialers {
            runtime,
            datagram_counters,
            v4: Mutex::default(),
            v6: Mutex::default(),
        }
    }

    fn endpoint_for(&self, peer: SocketAddr) -> io::Result<quinn::Endpoint> {
        let (slot, bind): (_, SocketAddr) = if peer.is_ipv4() {
            (&self.v4, "0.0.0.0:0".parse().unwrap())
        } else {
            (&self.v6, "[::]:0".parse().unwrap())
        };
        let mut g = slot.lock().unwrap();
        if let Some(ep) = g.as_ref() {
            return Ok(ep.clone());
        }
        let socket = std::net::UdpSocket::bind(bind)?;
        size_buffers(&socket);
        let ep = endpoint(
            socket,
            quinn::EndpointConfig::default(),
            None,
            self.runtime.clone(),
        )?;
        *g = Some(ep.clone());
        Ok(ep)
    }

    /// Dials `peer`, sending `server_name` as SNI; returns once the QUIC handshake is done.
    pub(crate) async fn connect(
        &self,
        cfg: quinn::ClientConfig,
        peer: SocketAddr,
        server_name: &str,
    ) -> Result<QuicConnection, Box<dyn std::error::Error + Send + Sync>> {
        let ep = self.endpoint_for(peer)?;
        let conn = ep.connect_with(cfg, peer, server_name)?.await?;
        Ok(QuicConnection::new(conn, self.datagram_counters.clone()))
    }

    /// Closes the dialing endpoints and waits (bounded) for their connections to drain.
    pub(crate) async fn close(&self) {
        let eps: Vec<quinn::Endpoint> = [&self.v4, &self.v6]
            .into_iter()
            .filter_map(|s| s.lock().unwrap().take())
            .collect();
        for ep in eps {
            close_endpoint(ep).await;
        }
    }
}

/// A QUIC link connection, and its datagrams.
pub(crate) struct QuicConnection(
    pub(crate) quinn::Connection,
    Arc<super::datagram::Datagrams>,
);

impl QuicConnection {
    /// A link connection whose datagrams count in `counters` (the router's).
    pub(crate) fn new(conn: quinn::Connection, counters: Arc<DatagramCounters>) -> Self {
        let datagrams = super::datagram::Datagrams::new(conn.clone(), counters);
        QuicConnection(conn, datagrams)
    }
}

impl super::mux::LinkRead for quinn::RecvStream {
    fn stop(&mut self) {
        let _ = quinn::RecvStream::stop(self, super::mux::FLOW_RESET_CODE.into());
    }
}

/// Resolves once the peer has acknowledged every byte of a finished stream (or stopped it).
type Delivered =
    Pin<Box<dyn Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>> + Send + Sync>>;

/// The sending half of a QUIC link stream. Its shutdown (our FIN) completes only once the
/// peer has acknowledged every byte of the stream, so a flow stays in progress until its
/// bytes are delivered. A stopping router waits for the flows in progress before it closes
/// its links, and closing a QUIC connection discards what is not yet acknowledged: without
/// this wait, an egress stopped right after its backend's last byte cut the reply short.
struct QuicSend {
    stream: quinn::SendStream,
    delivered: Option<Delivered>,
    /// The shutdown has completed: later calls answer at once (the future must not be
    /// polled again).
    shut: bool,
}

impl tokio::io::AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.stream), cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.stream), cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shut {
            return std::task::Poll::Ready(Ok(()));
        }
        if this.delivered.is_none() {
            this.stream.finish().map_err(io::Error::from)?;
            this.delivered = Some(Box::pin(this.stream.stopped()));
        }
        let delivered = this.delivered.as_mut().expect("set above");
        let polled = delivered.as_mut().poll(cx);
        if polled.is_ready() {
            this.shut = true;
            this.delivered = None;
        }
        match polled {
            std::task::Poll::Pending => std::task::Poll::Pending,
            // Acknowledged, or the peer stopped reading after our FIN (as quinn's own
            // shutdown, this is not an error of ours).
            std::task::Poll::Ready(Ok(_)) => std::task::Poll::Ready(Ok(())),
            std::task::Poll::Ready(Err(e)) => {
                std::task::Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)))
            }
        }
    }
}

impl super::mux::LinkWrite for QuicSend {
    fn reset(&mut self) {
        let _ = self.stream.reset(super::mux::FLOW_RESET_CODE.into());
    }
}

fn link_stream((send, recv): (quinn::SendStream, quinn::RecvStream)) -> LinkStream {
    LinkStream {
        channel: Some(u64::from(send.id())),
        reader: Box::new(recv),
        writer: Box::new(QuicSend {
            stream: send,
            delivered: None,
            shut: false,
        }),
    }
}

impl MuxConnection for QuicConnection {
    fn open_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let pair = self.0.open_bi().await.map_err(io::Error::other)?;
            Ok(link_stream(pair))
        })
    }

    fn accept_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let pair = self.0.accept_bi().await.map_err(io::Error::other)?;
            Ok(link_stream(pair))
        })
    }

    fn close(&self, reason: &str) {
        self.0.close(0u32.into(), reason.as_bytes());
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.0.closed().await;
        })
    }

    fn received(&self) -> u64 {
        // STREAM and DATAGRAM frames only: quinn's own PINGs and ACKs keep coming from a peer
        // whose router is wedged, and they must not keep its link alive.
        let rx = self.0.stats().frame_rx;
        rx.stream + rx.datagram
    }

    fn wire_bytes(&self) -> super::mux::WireBytes {
        let stats = self.0.stats();
        super::mux::WireBytes {
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
        }
    }

    fn transport_rtt(&self) -> Option<Duration> {
        Some(self.0.rtt())
    }

    fn datagrams(&self) -> Option<Arc<super::datagram::Datagrams>> {
        Some(self.1.clone())
    }
}
