//! HTTP/2 connections from this router to the egress routers of HTTP keys, carried in flow
//! streams (flow header protocol `http`) and shared by every request to the same (router,
//! key): up to [`STREAMS_PER_CONNECTION`] requests at a time each, up to
//! [`CONNECTIONS_PER_PEER`] connections. A connection that ends, or whose link this router
//! is closing (a link file deleted or changed, a revocation: the link is `closing`), is
//! replaced on the next request, on a link that is up; requests in progress on it finish.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use skiff_certs::SiteId;
use tokio::io::AsyncWriteExt;

use super::CONNECTION_TIMEOUT;
use super::io::{Body, StreamIo};
use crate::flow::{FlowRole, Flows};
use crate::routing::{Protocol, Target};
use crate::wire::{FlowStatusCode, FlowStatusFrame};

/// Requests one connection carries at a time before another is opened.
pub(crate) const STREAMS_PER_CONNECTION: usize = 100;
/// Connections to one (router, key) at most: long-lived requests (WebSocket, SSE, gRPC
/// streams) hold their stream, so up to 64 x 100 may be open at once.
pub(crate) const CONNECTIONS_PER_PEER: usize = 64;

/// One HTTP/2 connection to an egress router.
pub(crate) struct PeerConn {
    sender: http2::SendRequest<Body>,
    in_flight: AtomicUsize,
    /// Whether the link its flow stream rides on is closing: then no new request goes here
    /// (it would be lost when the link closes, up to `dead_after` + 2 s later).
    link: crate::link::Closing,
}

impl PeerConn {
    /// Whether it may take a new request.
    fn usable(&self) -> bool {
        !self.sender.is_closed() && !self.link.is_closing()
    }
}

/// Counts a request on a connection until dropped.
pub(crate) struct InFlight(Arc<PeerConn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    /// The connection's sender.
    pub(crate) fn sender(&self) -> http2::SendRequest<Body> {
        self.0.sender.clone()
    }
}

/// The connections to one (egress router, key), and when opening one last failed; the lock is
/// held while one is opened (within [`CONNECTION_TIMEOUT`]), so a burst of first requests
/// opens one connection, not many.
type PeerEntry = Arc<tokio::sync::Mutex<Entry>>;

#[derive(Default)]
struct Entry {
    conns: Vec<Arc<PeerConn>>,
    failed: Option<(std::time::Instant, String)>,
}

/// After a failed open, requests fail over at once for this long instead of trying again.
const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(1);

/// The connections of one router, by (egress router, key).
#[derive(Default)]
pub(crate) struct Peers {
    conns: std::sync::Mutex<HashMap<(SiteId, String), PeerEntry>>,
}

impl Peers {
    /// A connection to `target` with room for one more request, opened if needed, within
    /// [`CONNECTION_TIMEOUT`]. `Err`: no connection could be had (nothing was sent; another
    /// target may be tried).
    pub(crate) async fn get(
        &self,
        flows: &Arc<Flows>,
        target: &Target,
    ) -> Result<InFlight, String> {
        match tokio::time::timeout(CONNECTION_TIMEOUT, self.get_now(flows, target)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no connection to {} within {} s",
                target.router,
                CONNECTION_TIMEOUT.as_secs()
            )),
        }
    }

    async fn get_now(&self, flows: &Arc<Flows>, target: &Target) -> Result<InFlight, String> {
        let entry = self
            .conns
            .lock()
            .unwrap()
            .entry((target.router, target.key.as_str().to_owned()))
            .or_default()
            .clone();
        let mut entry = entry.lock().await;
        // Dropped from the pool; requests in progress hold their own reference.
        entry.conns.retain(|c| c.usable());
        let best = entry
            .conns
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))
            .cloned();
        let conn = match best {
            Some(c)
                if c.in_flight.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION
                    || entry.conns.len() >= CONNECTIONS_PER_PEER =>
            {
                c
            }
            _ => {
                if let Some((at, why)) = &entry.failed
                    && at.elapsed() < FAILURE_MEMORY
                {
                    return Err(why.clone());
                }
                match open(flows, target).await {
                    Ok(c) => {
                        let c = Arc::new(c);
                        entry.conns.push(c.clone());
                        entry.failed = None;
                        c
                    }
                    Err(why) => {
                        entry.failed = Some((std::time::Instant::now(), why.clone()));
                        return Err(why);
                    }
                }
            }
        };
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight(conn))
    }
}

/// Opens a flow stream to the target's router and an HTTP/2 connection on it.
async fn open(flows: &Arc<Flows>, target: &Target) -> Result<PeerConn, String> {
    let hop = target
        .next_hop
        .ok_or_else(|| "a local target has no peer connection".to_owned())?;
    let flow_id = flows.new_flow_id();
    let (mut stream, out, handle) = flows
        .open_flow_on(target, hop, flow_id, Protocol::Http, None)
        .await?;
    let mut answer = BytesMut::with_capacity(256);
    let handshake = async {
        stream
            .writer
            .write_all(&out)
            .await
            .map_err(|e| format!("writing the flow header: {e}"))?;
        stream
            .writer
            .flush()
            .await
            .map_err(|e| format!("writing the flow header: {e}"))?;
        crate::flow::tcp::read_frame(
            &mut stream,
            &mut answer,
            "the egress's answer",
            FlowStatusFrame::decode,
        )
        .await
    };
    let status = match handshake.await {
        Ok(s) => s,
        Err(why) => {
            stream.reset();
            return Err(why);
        }
    };
    if status.code != FlowStatusCode::Ok {
        stream.reset();
        return Err(format!("{}: {}", status.code, status.message));
    }
    let io = TokioIo::new(StreamIo::new(stream, answer.freeze()));
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(super::PEER_STREAM_WINDOW)
        .initial_connection_window_size(super::PEER_CONNECTION_WINDOW)
        .max_frame_size(super::PEER_MAX_FRAME)
        .max_header_list_size(super::PEER_MAX_HEADER_LIST)
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {}: {e}", target.router))?;
    let guard = flows.register(
        flow_id,
        &target.key,
        flows.me,
        target.router,
        FlowRole::Ingress,
    );
    let shutdown = flows.shutdown.clone();
    flows.tasks.spawn(async move {
        let _registered = guard;
        tokio::select! {
            () = shutdown.cancelled() => {}
            r = conn => if let Err(e) = r {
                tracing::debug!(cause = %e, "HTTP/2 connection to a peer router ended");
            },
        }
    });
    Ok(PeerConn {
        sender,
        in_flight: AtomicUsize::new(0),
        link: handle.closing(),
    })
}
