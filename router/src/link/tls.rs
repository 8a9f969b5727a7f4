//! TLS over TCP: dialing a link, and the inbound side of the link port's TCP socket, where
//! ALPN tells a link (skiff-link/1, then yamux) from a token redemption (skiff-grant/1, handed
//! to the [`GrantHandler`](super::GrantHandler)).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use skiff_certs::{ALPN_GRANT, ALPN_LINK, SiteId};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::Instrument;

use super::Transport;
use super::mux::YamuxConnection;
use super::router::{Shared, serve_inbound};

/// How long an inbound TLS handshake may take.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a link's TCP socket at once. rustls asks for at most 4 KiB per read;
/// serving those from this buffer makes one system call per 64 KiB instead of sixteen
/// (docs/benchmarks.md, "Where the time goes").
pub(crate) const SOCKET_READ_BUFFER: usize = 64 * 1024;

/// The TCP socket under a TLS link or a token redemption: reads are buffered.
pub type LinkSocket = tokio::io::BufReader<TcpStream>;

fn link_socket(tcp: TcpStream) -> LinkSocket {
    tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp)
}

/// Dials `peer` over TCP, does the TLS handshake as `expected`'s server name, and starts a
/// yamux session on it.
pub(crate) async fn dial(
    cfg: Arc<rustls::ClientConfig>,
    peer: SocketAddr,
    expected: SiteId,
) -> Result<YamuxConnection, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(peer).await?;
    tcp.set_nodelay(true)?;
    dial_over(cfg, link_socket(tcp), expected).await
}

/// Like [`dial`], on a socket already connected to the peer (a proxy's CONNECT tunnel).
pub(crate) async fn dial_over(
    cfg: Arc<rustls::ClientConfig>,
    socket: LinkSocket,
    expected: SiteId,
) -> Result<YamuxConnection, Box<dyn std::error::Error + Send + Sync>> {
    let name = ServerName::try_from(expected.server_name())?;
    let tls = TlsConnector::from(cfg).connect(name, socket).await?;
    Ok(YamuxConnection::start(tls, true))
}

/// Accepts TCP connections on the link port until shutdown; each is handled on its own task.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limit = max_pending(open_file_limit());
    let pending = Arc::new(tokio::sync::Semaphore::new(limit));
    // Each kind of failure is logged once, then at most every ACCEPT_LOG_EVERY with a count,
    // so a flood cannot flood the log too.
    let mut refused = RateLimitedLog::default();
    let mut failed = RateLimitedLog::default();
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, remote)) => {
                // Connections not yet authenticated (TLS handshake, token redemption) are
                // capped, so a flood cannot take every file descriptor and task.
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    if let Some(count) = refused.due() {
                        tracing::warn!(addr = %remote, limit, refused = count, check = %"too-many-handshakes",
                            "refused connections on the link port: too many handshakes in progress (a flood, or many sites redialing at once after an outage: they back off and retry)");
                    }
                    continue;
                };
                let shared2 = shared.clone();
                let acceptor = acceptor.clone();
                shared.tasks.spawn(
                    handle_tcp(shared2, acceptor, tcp, remote, permit)
                        .instrument(tracing::debug_span!("link_port", remote = %remote)),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: pause, and keep serving.
                if let Some(count) = failed.due() {
                    tracing::warn!(cause = %e, failed = count,
                        "accepting TCP connections on the link port fails; retrying every 100 ms");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Most connections on the link port that are still in the TLS handshake or redeeming a
/// token. Beyond it new connections are closed at once (and logged).
pub(crate) const MAX_PENDING_CONNECTIONS: usize = 256;

/// How often at most the link port logs refused or failed accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Pending connections allowed on the link port: [`MAX_PENDING_CONNECTIONS`], and never more
/// than a quarter of the open-file limit, so a flood of connections that never finish their
/// handshake leaves descriptors for the admin API, the links and the flows.
fn max_pending(open_file_limit: Option<u64>) -> usize {
    let quarter =
        open_file_limit.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
    MAX_PENDING_CONNECTIONS.min(quarter).max(1)
}

/// The soft limit on open files of this process (`ulimit -n`), from /proc/self/limits: it
/// bounds the link port's pending handshakes here and the listeners' client slots in
/// flow/config.rs. `None` where it cannot be read or is unlimited.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counts events and says when one should be logged: the first, then one every
/// [`ACCEPT_LOG_EVERY`] (with how many happened since the last log line).
#[derive(Default)]
pub(crate) struct RateLimitedLog {
    since_last: u64,
    last: Option<tokio::time::Instant>,
}

impl RateLimitedLog {
    /// Counts one event; `Some(events since the last log line)` when this one is logged.
    pub(crate) fn due(&mut self) -> Option<u64> {
        self.due_every(ACCEPT_LOG_EVERY)
    }

    /// As [`RateLimitedLog::due`], one line per `period`.
    pub(crate) fn due_every(&mut self, period: Duration) -> Option<u64> {
        self.since_last += 1;
        if self.last.is_some_and(|t| t.elapsed() < period) {
            return None;
        }
        self.last = Some(tokio::time::Instant::now());
        Some(std::mem::take(&mut self.since_last))
    }
}

/// How often at most one address's refusals of one kind are logged at WARN: a
/// misconfigured peer re-dialing with backoff (every 5 s) makes one line per 30 s, with the
/// count of refusals since the previous line.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// Most addresses whose refusals are tracked one by one; beyond it (a flood from many
/// addresses) they share one limit per kind.
const MAX_TRACKED_ADDRESSES: usize = 1024;

/// One limit per kind of line and per source address (an IP address, or an IP address and
/// the site id its certificate names), shared by the tasks of the link port: what
/// unauthenticated clients can cause (failed handshakes, refused links) is logged at WARN at
/// most once per [`REFUSAL_LOG_EVERY`] per kind and source, with a count; every event is
/// logged at debug level.
#[derive(Default)]
pub(crate) struct LogLimits {
    kinds: std::sync::Mutex<std::collections::HashMap<(&'static str, String), RateLimitedLog>>,
}

impl LogLimits {
    /// Counts one event of `kind` from `source`; `Some(events since the last line)` when it
    /// is logged.
    pub(crate) fn due(&self, kind: &'static str, source: impl std::fmt::Display) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = (kind, source.to_string());
        if kinds.len() >= MAX_TRACKED_ADDRESSES && !kinds.contains_key(&key) {
            kinds.retain(|_, log| log.last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY));
            if kinds.len() >= MAX_TRACKED_ADDRESSES {
                key.1 = "many addresses".into();
            }
        }
        kinds.entry(key).or_default().due_every(REFUSAL_LOG_EVERY)
    }
}

/// Logs a WARN line for an event of `kind` from `source` unless one was logged less than
/// [`REFUSAL_LOG_EVERY`] ago (then DEBUG); the WARN line counts the events since the last one
/// (`count`, this one included).
macro_rules! limited_warn {
    ($limits:expr, $kind:literal, $source:expr, $($field:tt)+) => {
        match $limits.due($kind, $source) {
            Some(count) => tracing::warn!(count, $($field)+),
            None => tracing::debug!($($field)+),
        }
    };
}
pub(crate) use limited_warn;

async fn handle_tcp(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(link_socket(tcp)))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let why = super::explain::inbound_handshake_failure(&e);
            limited_warn!(shared.log_limits, "tls-handshake", remote.ip(), addr = %remote, transport = %Transport::Tls, check = %why.check, cause = %e,
                "refused a connection on the link port from {remote}: {why}");
            return;
        }
        Err(_) => {
            limited_warn!(shared.log_limits, "tls-handshake-timeout", remote.ip(), addr = %remote, transport = %Transport::Tls, check = %"handshake-timeout",
                "refused a connection on the link port from {remote}: no TLS handshake within {} s (a stalled client or a path that drops packets; not a skiff router?)",
                TLS_HANDSHAKE_TIMEOUT.as_secs());
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    match alpn.as_deref() {
        Some(p) if p == ALPN_GRANT => match &shared.grants {
            Some(handler) => handler.serve(tls, remote).await,
            None => {
                limited_warn!(shared.log_limits, "no-grants", remote.ip(), addr = %remote, check = %"no-grants",
                    "refused a token redemption from {remote}: this router serves no grants")
            }
        },
        Some(p) if p == ALPN_LINK => {
            // Counts as pending until the hello exchange finished or the refusal was told: a
            // site that may not link cannot hold connections open beyond the cap.
            let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
                limited_warn!(shared.log_limits, "no-client-cert", remote.ip(), addr = %remote, transport = %Transport::Tls, check = %"client-certificate",
                    "refused an inbound link from {remote}: the peer presented no client certificate (links need one from a redeemed token)");
                return;
            };
            let site = match super::router::client_identity(cert, &*shared.policy) {
                Ok(site) => site,
                Err((site, refusal)) => {
                    let who = site.map(|s| s.to_string()).unwrap_or_default();
                    limited_warn!(shared.log_limits, "link-refused", format!("{}/{who}", remote.ip()), addr = %remote, site = %who, transport = %Transport::Tls, check = %refusal.check,
                        "refused an inbound link from {remote}: {refusal}");
                    // Tell the dialer why on its control stream (QUIC says it in the close).
                    let conn = YamuxConnection::start(tls, false);
                    super::handshake::refuse_before_hello(&conn, &refusal.reason).await;
                    super::mux::MuxConnection::close(&conn, &refusal.reason);
                    return;
                }
            };
            let conn = Arc::new(YamuxConnection::start(tls, false));
            serve_inbound(shared, conn, site, Transport::Tls, remote, pending).await;
        }
        other => {
            limited_warn!(shared.log_limits, "no-alpn", remote.ip(), addr = %remote, transport = %Transport::Tls, check = %"alpn", alpn = ?other.map(String::from_utf8_lossy),
                "refused a connection on the link port from {remote}: no skiff ALPN (expected skiff-link/1 or skiff-grant/1): not a skiff router or token client");
        }
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn pending_handshakes_take_at_most_a_quarter_of_the_descriptors() {
        assert_eq!(max_pending(Some(256)), 64);
        assert_eq!(max_pending(Some(20_000)), MAX_PENDING_CONNECTIONS);
        assert_eq!(max_pending(None), MAX_PENDING_CONNECTIONS);
        assert_eq!(max_pending(Some(2)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_failures_is_logged_once_per_period_with_a_count() {
        let mut log = RateLimitedLog::default();
        assert_eq!(log.due(), Some(1));
        for _ in 0..99 {
            assert_eq!(log.due(), None);
        }
        tokio::time::advance(ACCEPT_LOG_EVERY).await;
        assert_eq!(log.due(), Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_once_per_address_and_kind_every_30_s() {
        let limits = LogLimits::default();
        let (a, b) = ("10.0.0.1", "10.0.0.2");
        assert_eq!(limits.due("link-refused", a), Some(1));
        // Another address, or another kind, has its own line.
        assert_eq!(limits.due("link-refused", b), Some(1));
        assert_eq!(limits.due("tls-handshake", a), Some(1));
        // A peer redialing every 5 s: one line per 30 s, counting the refusals.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(limits.due("link-refused", a), None);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limits.due("link-refused", a), Some(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_many_addresses_shares_one_limit_beyond_the_tracked_ones() {
        let limits = LogLimits::default();
        let mut logged = 0;
        for i in 0..(MAX_TRACKED_ADDRESSES + 500) {
            if limits
                .due("tls-handshake", format!("10.1.{}.{}", i / 256, i % 256))
                .is_some()
            {
                logged += 1;
            }
        }
        // One line per tracked address, then one for all the others.
        assert_eq!(logged, MAX_TRACKED_ADDRESSES + 1);
        assert!(limits.kinds.lock().unwrap().len() <= MAX_TRACKED_ADDRESSES + 1);
    }
}
