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
const SOCKET_READ_BUFFER: usize = 64 * 1024;

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
    let name = ServerName::try_from(expected.server_name())?;
    let tls = TlsConnector::from(cfg)
        .connect(name, link_socket(tcp))
        .await?;
    Ok(YamuxConnection::start(tls, true))
}

/// Accepts TCP connections on the link port until shutdown; each is handled on its own task.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_CONNECTIONS));
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
                    tracing::warn!(peer = %remote, limit = MAX_PENDING_CONNECTIONS,
                        "refused a connection on the link port: too many handshakes in progress");
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
                // Out of file descriptors and the like: log, pause, and keep serving.
                tracing::warn!(cause = %e, "accepting a TCP connection on the link port failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Most connections on the link port that are still in the TLS handshake or redeeming a
/// token. Beyond it new connections are closed at once (and logged).
pub(crate) const MAX_PENDING_CONNECTIONS: usize = 256;

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
            tracing::warn!(peer = %remote, transport = %Transport::Tls, cause = %e,
                "refused a connection on the link port: {why}");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %remote, transport = %Transport::Tls,
                "refused a connection on the link port: no TLS handshake within {} s",
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
                tracing::warn!(peer = %remote, "refused a token redemption: this router serves no grants")
            }
        },
        Some(p) if p == ALPN_LINK => {
            // Authenticated from here on (or refused): no longer counts as pending.
            drop(pending);
            let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
                tracing::warn!(peer = %remote, transport = %Transport::Tls,
                    "refused a link: the peer presented no client certificate (links need one from a redeemed token)");
                return;
            };
            let site = match super::router::client_identity(cert, &*shared.policy) {
                Ok(site) => site,
                Err(reason) => {
                    tracing::warn!(peer = %remote, transport = %Transport::Tls, %reason, "refused a link");
                    return;
                }
            };
            let conn = Arc::new(YamuxConnection::start(tls, false));
            serve_inbound(shared, conn, site, Transport::Tls, remote).await;
        }
        other => {
            tracing::warn!(peer = %remote, transport = %Transport::Tls, alpn = ?other.map(String::from_utf8_lossy),
                "refused a connection on the link port: no skiff ALPN (expected skiff-link/1 or skiff-grant/1)");
        }
    }
}
