//! Links between routers: transports, per-link driver tasks, dialers and the link port.
//!
//! A [`Router`] binds the link port (TCP for TLS links and token redemptions, UDP on the same
//! port number for QUIC links), accepts links from sites we granted, and dials the links it is
//! given with [`Router::set_links`]. Every link, whatever its transport, is a
//! [`mux::MuxConnection`]: streams either side may open. The first stream the dialer opens is
//! the control stream: hello exchange, keepalives, close (frames in [`crate::wire`]). One
//! driver task per link owns it from hello to close.
//!
//! Timings (defaults in [`RouterConfig::new`]):
//! - keepalive every 1 s, a link is dead after 4 s without any frame (cost: one 13-byte frame
//!   plus its answer per second per link, each way; a dead peer is noticed within 4 s);
//! - reconnect backoff starts at 100 ms, doubles, is capped at 5 s, with jitter (each delay is
//!   drawn from its upper half), so a restarted peer is re-linked within ~5 s of coming back;
//! - TLS handshake and hello exchange each time out after 10 s;
//! - `auto` transport: QUIC first, TLS/TCP 250 ms later (or at once if QUIC fails);
//! - a proxied link (TLS/TCP only): connecting to the proxy and its answer to CONNECT take at
//!   most 5 s ([`proxy::PROXY_TIMEOUT`]) of the attempt's 10 s.
//!
//! # Layout
//! - `router`: [`Router`], the public face: start, reconcile dialers, listeners and
//!   connectors, status, revocation.
//! - [`mux`]: the [`mux::MuxConnection`] trait, [`LinkStream`], yamux over TLS/TCP.
//! - `quic`: quinn endpoint and connection setup; `MuxConnection` for quinn.
//! - `congestion`: QUIC links' congestion control: Cubic that lets a packet (and the ACKs it
//!   carries) out after a round trip with nothing sent, so heavy loss cannot silence a link.
//! - [`datagram`]: QUIC datagrams of a link, by channel (UDP flows).
//! - `tls`: TLS/TCP dial and the inbound TCP port (link vs grant by ALPN).
//! - [`proxy`]: HTTP CONNECT proxies: the proxy URL and the tunnel a proxied link dials through.
//! - `port`: binding TCP and UDP on one port number.
//! - `handshake`: the hello exchange on the control stream, both sides.
//! - `driver`: the per-link task: keepalives, liveness, inbound streams, close.
//! - `dialer`: per-link dial loop, happy eyeballs, backoff, reconciling link specs.
//! - `table`: the router's table of links and their status (with per-link byte counts).
//! - `rtt`: round-trip samples of a link (last one, fixed-bucket histogram).
//! - `explain`: turning failures into operator-readable refusals or network errors.
//! - `routes`: the routing task: feeds link events and link-state frames to the topology.

mod congestion;
pub mod datagram;
mod dialer;
mod driver;
mod explain;
mod handshake;
pub mod mux;
mod port;
pub mod proxy;
mod quic;
pub(crate) mod router;
pub(crate) mod routes;
mod rtt;
mod table;
pub(crate) mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use skiff_certs::SiteId;

use crate::wire::RouterMode;

pub use explain::chain as error_chain;
pub use mux::{LinkRead, LinkStream, LinkWrite, StreamReader, StreamWriter};
pub use proxy::{ProxyConfig, ProxyError, ProxyUrlError};
pub(crate) use router::Closing;
pub use router::{IncomingStream, LinkHandle, Router};
pub use routes::{KeySite, KeyStatus, NetworkStatus};
pub use rtt::{RTT_BUCKETS, RttHistogram};
pub use tls::LinkSocket;

/// Default keepalive interval on the control stream.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Default time without any frame after which a link is declared dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(4);

/// What a router needs to run its links. Its `Debug` leaves the secrets out.
#[derive(Clone)]
pub struct RouterConfig {
    /// This site's id (its certificates carry it).
    pub site_id: SiteId,
    /// This site's name, sent in the hello (for display at peers).
    pub site_name: String,
    /// Interior or edge.
    pub mode: RouterMode,
    /// The router certificate (PEM, may include a chain) presented on the link port.
    pub router_cert_pem: String,
    /// The router certificate's private key (PEM).
    pub router_key_pem: String,
    /// This site's CA: inbound link client certificates must chain to it.
    pub site_ca_pem: String,
    /// Where to accept links: TCP on this address, UDP (QUIC) on the same port number.
    /// `None`: no link access (edge, or link access not enabled); the router only dials.
    pub link_listen: Option<SocketAddr>,
    /// How often each side sends a keepalive on a link's control stream.
    pub keepalive_interval: Duration,
    /// A link with no frame received for this long is closed as dead.
    pub dead_after: Duration,
    /// The secret the link port's QUIC stateless-reset key is derived from. It must outlive
    /// restarts and router certificate renewals, or the first restart after a renewal sends
    /// resets peers do not recognise (the site controller passes the site CA's key). `None`:
    /// the router key.
    pub stateless_reset_secret: Option<String>,
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field("site_id", &self.site_id)
            .field("site_name", &self.site_name)
            .field("mode", &self.mode)
            .field("link_listen", &self.link_listen)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("dead_after", &self.dead_after)
            .finish_non_exhaustive()
    }
}

impl RouterConfig {
    /// A configuration with the default timings ([`DEFAULT_KEEPALIVE_INTERVAL`],
    /// [`DEFAULT_DEAD_AFTER`]) and no link access.
    pub fn new(
        site_id: SiteId,
        site_name: impl Into<String>,
        mode: RouterMode,
        router_cert_pem: impl Into<String>,
        router_key_pem: impl Into<String>,
        site_ca_pem: impl Into<String>,
    ) -> Self {
        RouterConfig {
            site_id,
            site_name: site_name.into(),
            mode,
            router_cert_pem: router_cert_pem.into(),
            router_key_pem: router_key_pem.into(),
            site_ca_pem: site_ca_pem.into(),
            link_listen: None,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
            stateless_reset_secret: None,
        }
    }
}

/// Decides whether a site that presented a valid link certificate may link to us (it was
/// granted and is not revoked).
pub trait InboundPolicy: Send + Sync + 'static {
    /// `Err(reason)` refuses the link; the reason is shown at the dialing site.
    fn admit(&self, peer: SiteId) -> Result<(), String>;

    /// Whether the key of the certificate presented for `peer` (its [SHA-256 fingerprint]) is
    /// the one this site granted to that site id. Checked right after the TLS handshake: a
    /// site id claimed with another key is refused before anything else. The default accepts
    /// any key.
    ///
    /// [SHA-256 fingerprint]: skiff_certs::key_fingerprint
    fn check_key(&self, _peer: SiteId, _key_fingerprint: &str) -> Result<(), String> {
        Ok(())
    }

    /// Whether the certificate with serial `serial` (lowercase hex, as
    /// [`skiff_certs::certificate_serial`]) may still link for `peer`: after a renewal only
    /// the current certificate, and the previous one within its overlap window, may. Checked
    /// with [`InboundPolicy::check_key`], before the hello. The default accepts any serial.
    fn check_serial(&self, _peer: SiteId, _serial: &str) -> Result<(), String> {
        Ok(())
    }

    /// `Some(why)` when `peer` was revoked at this site: its inbound links are refused, and
    /// this site's own outbound links to it are not dialled either. The default: never.
    fn revoked(&self, _peer: SiteId) -> Option<String> {
        None
    }
}

/// Serves token redemptions arriving on the link port.
pub trait GrantHandler: Send + Sync + 'static {
    /// Called for each TCP connection that negotiated ALPN skiff-grant/1 (token redemption).
    /// The handler speaks HTTP/1.1 on it.
    fn serve(
        &self,
        stream: tokio_rustls::server::TlsStream<LinkSocket>,
        peer: SocketAddr,
    ) -> BoxFuture<'static, ()>;
}

/// Which transport a link may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tls,
    /// QUIC first, TLS over TCP if QUIC does not answer quickly (happy eyeballs).
    Auto,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(TransportChoice::Quic),
            "tls" => Ok(TransportChoice::Tls),
            "auto" => Ok(TransportChoice::Auto),
            other => Err(format!(
                "unknown transport {other:?}: expected quic, tls or auto"
            )),
        }
    }
}

impl std::fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportChoice::Quic => "quic",
            TransportChoice::Tls => "tls",
            TransportChoice::Auto => "auto",
        })
    }
}

/// The transport an established link runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP, multiplexed with yamux.
    Tls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::Tls => "tls",
        })
    }
}

/// An outbound link this router should keep up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// The link's name (unique among this router's outbound links).
    pub name: String,
    /// The site we link to; its server certificate must name it.
    pub peer_site_id: SiteId,
    /// The peer site's name as the link file gives it (`spec.peerSiteName`), if it does:
    /// shown as the link's peer before it first connects, and its `peer` in `/metrics`.
    pub peer_site_name: Option<String>,
    /// The peer site's CA (PEM), pinned for this link.
    pub peer_ca_pem: String,
    /// `host:port` link endpoints of the peer, tried in order.
    pub endpoints: Vec<String>,
    /// Our client certificate for this link (signed by the peer's CA).
    pub client_cert_pem: String,
    /// Its private key.
    pub client_key_pem: String,
    /// Which transport to use.
    pub transport: TransportChoice,
    /// Routing cost of the link.
    pub cost: u32,
    /// An HTTP proxy to tunnel the link through with CONNECT: TLS over TCP only (a `quic`
    /// link with a proxy is refused; `auto` dials TLS). The endpoint's name is resolved by
    /// the proxy, not here.
    pub proxy: Option<ProxyConfig>,
}

impl LinkSpec {
    /// Whether `self` and `other` differ at most in the link's client certificate and key (a
    /// renewal): the router keeps such a link up and the next dial presents the new ones.
    pub fn same_but_credentials(&self, other: &LinkSpec) -> bool {
        let strip = |s: &LinkSpec| LinkSpec {
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// Which side made a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dial it.
    Outbound,
    /// The peer dialed us.
    Inbound,
}

/// What a link is doing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum LinkState {
    /// Dialing or retrying after a network error.
    Connecting {
        /// The last attempt's error, if any.
        last_error: Option<String>,
    },
    /// Hellos exchanged; the link carries traffic.
    Up,
    /// The peer refused us, or its identity is not the one the link names. Still retried at
    /// the backoff cap (a revocation may be undone, a peer repaired).
    Refused {
        /// Why, in words.
        reason: String,
    },
    /// This router asked the link to close (its link file deleted or changed, its site
    /// revoked, shutting down): its routes are withdrawn and it takes no new flow or pooled
    /// HTTP request; flows in progress may finish until the peer hangs up (the entry goes
    /// then, after at most `dead_after` + 2 s).
    Closing {
        /// Why, in words (what the peer is told).
        reason: String,
    },
}

/// One link as shown to operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkStatus {
    /// Outbound: the link's name; inbound: `from-<peer site name>`.
    pub name: String,
    /// Who dialed.
    pub direction: Direction,
    /// The peer's site id (outbound: from the spec; inbound: from its certificate).
    pub peer_site_id: Option<SiteId>,
    /// The peer's site name: from its hello once known; before that, for an outbound link,
    /// the name its link file gives.
    pub peer_site_name: Option<String>,
    /// The transport of the current connection.
    pub transport: Option<Transport>,
    /// The remote address of the current (or last tried) connection.
    pub endpoint: Option<String>,
    /// Outbound links through an HTTP proxy: its `host:port` (never its credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Routing cost (inbound links: 1 until the routing protocol says otherwise).
    pub cost: u32,
    /// State and its details.
    #[serde(flatten)]
    pub state: LinkState,
    /// When the link entered this state: RFC 3339 UTC, second precision.
    pub since: String,
    /// Bytes sent to the peer over this link since this router started: cumulative across
    /// the connections with the same [`LinkStatus::metric_key`] (an outbound link's
    /// reconnects, and its restarts by a changed link file; an inbound link's connections
    /// under the same name, including those of another site of that name that left), never
    /// decreasing while the process lives.
    /// QUIC: UDP payload bytes; TLS/TCP: yamux bytes through the TLS stream
    /// ([`mux::MuxConnection::wire_bytes`]).
    pub bytes_sent: u64,
    /// Bytes received from the peer over this link, counted like `bytes_sent`.
    pub bytes_received: u64,
    /// The round trip to the peer in milliseconds (microsecond precision) while the link is
    /// up: QUIC: quinn's smoothed estimate; TLS/TCP: the last keepalive round trip on the
    /// control stream. `None` while down or before the first sample.
    pub rtt_ms: Option<f64>,
    /// How many times this link came up since this router started (counted like
    /// `bytes_sent`).
    pub ups: u64,
    /// The link's round-trip samples, for `/metrics` (not in the JSON).
    #[serde(skip)]
    pub rtt_samples: RttHistogram,
    /// The peer as `/metrics` labels it, fixed for the life of the entry so that a series
    /// never changes its labels: outbound links the peer site name of the link's
    /// configuration (its id when the link file names none); inbound links the name the
    /// peer gave in its hello when it was accepted. Not in the JSON.
    #[serde(skip)]
    pub peer_label: String,
}

impl LinkStatus {
    /// What identifies the link in `/metrics`: name, direction and [`Self::peer_label`].
    /// Totals carry over between entries with the same key (see the link table).
    pub fn metric_key(&self) -> (String, Direction, String) {
        (self.name.clone(), self.direction, self.peer_label.clone())
    }
}

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A listening socket could not be bound.
    #[error(
        "cannot listen for links on {proto} {addr} (port in use? choose another with --link-port)"
    )]
    Bind {
        /// "TCP" or "UDP".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The router's certificate, key or CA could not be turned into a TLS configuration.
    #[error("the router's TLS configuration is unusable")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The QUIC endpoint could not be created.
    #[error("cannot start the QUIC endpoint on {addr}")]
    Quic {
        /// The UDP address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
