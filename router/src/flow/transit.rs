//! The transit role: a stream for another router is forwarded on a new stream to the next
//! hop towards it, header first, then spliced. The egress's status frame passes through as
//! bytes; [`StatusTap`] reads it on the way, so the transit's record says how the flow went and
//! counts only payload bytes, and the flow counts as connected (active, timed) only once the
//! egress said ok. A pooled HTTP/2 connection between routers is no client flow: it shows
//! among the active flows while it lives, and is neither recorded nor counted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use skiff_certs::SiteId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::records::{Flow, FlowOutcome};
use super::splice::{FlowEnd, Pump, splice};
use super::tcp::{answer_failure, log_end};
use super::{FlowRole, Flows, MAX_HOPS, OPEN_TIMEOUT};
use crate::link::LinkStream;
use crate::routing::RoutingKey;
use crate::wire::{FlowHeader, FlowStatusCode, FlowStatusFrame, RouterMode};

/// Longest status frame: the frame header, the code, the message's length and the message.
const MAX_STATUS_FRAME: usize = 5 + 1 + 2 + crate::wire::MAX_STATUS_MESSAGE_LEN + 8;

/// The link stream towards the egress, passing every byte through unchanged while it reads
/// the status frame at their front. It counts the payload bytes back (never the frame's),
/// and connects the flow once the egress said ok.
pub(crate) struct StatusTap {
    stream: LinkStream,
    /// The first bytes, until the status frame is whole (or found not to be one).
    probe: Option<BytesMut>,
    /// The status, once read.
    status: Option<FlowStatusFrame>,
    /// Its length in bytes.
    frame_len: u64,
    /// Bytes read while the probe was open.
    probed: u64,
    /// The flow, connected with `forward` and `back` once the egress answered ok.
    flow: Flow,
    forward: Arc<AtomicU64>,
    /// Payload bytes back (the status frame excluded).
    back: Arc<AtomicU64>,
}

impl StatusTap {
    fn new(stream: LinkStream, flow: Flow, forward: Arc<AtomicU64>) -> Self {
        StatusTap {
            stream,
            probe: Some(BytesMut::new()),
            status: None,
            frame_len: 0,
            probed: 0,
            flow,
            forward,
            back: Arc::default(),
        }
    }

    /// Counts `n` bytes read; the probe's bytes once it knows whether they began with a
    /// status frame (whose bytes are not counted).
    fn read(&mut self, read: &[u8]) {
        if self.probe.is_none() {
            self.back.fetch_add(read.len() as u64, Ordering::Relaxed);
            return;
        }
        self.probed += read.len() as u64;
        self.look(read);
        if self.probe.is_none() {
            let payload = self.probed.saturating_sub(self.frame_len);
            self.back.fetch_add(payload, Ordering::Relaxed);
            // Ok, or no status frame at all (the ingress will say): bytes move now.
            if self
                .status
                .as_ref()
                .is_none_or(|s| s.code == FlowStatusCode::Ok)
            {
                let (f, b) = (self.forward.clone(), self.back.clone());
                self.flow.connected_with(f, b);
            }
        }
    }

    fn look(&mut self, read: &[u8]) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        let room = MAX_STATUS_FRAME.saturating_sub(probe.len());
        probe.extend_from_slice(&read[..read.len().min(room)]);
        let mut copy = probe.clone();
        match FlowStatusFrame::decode(&mut copy) {
            Ok(None) if probe.len() < MAX_STATUS_FRAME => {}
            Ok(Some(status)) => {
                self.frame_len = (probe.len() - copy.len()) as u64;
                self.status = Some(status);
                self.probe = None;
            }
            // Not a status frame: pass it on all the same; the ingress will say.
            Ok(None) | Err(_) => self.probe = None,
        }
    }
}

impl AsyncRead for StatusTap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream.reader).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for StatusTap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream.writer).poll_shutdown(cx)
    }
}

impl FlowEnd for StatusTap {
    fn abort(&mut self) {
        self.stream.reset();
    }
}

pub(super) async fn transit(
    flows: &Arc<Flows>,
    mut stream: LinkStream,
    header: FlowHeader,
    key: RoutingKey,
    origin: SiteId,
    destination: SiteId,
    leftover: BytesMut,
) {
    let mut flow = Flow::start(
        flows,
        header.flow_id,
        key.as_str(),
        origin,
        FlowRole::Transit,
    )
    .with_client(header.client);
    flow.towards(key.as_str(), destination);
    let pooled = header.protocol.is_http();
    if pooled {
        // A failure here is the ingress's to record, per request.
        flow.discard();
    }
    if flows.mode == RouterMode::Edge {
        let why = format!(
            "router {} is an edge router and carries no transit",
            flows.me
        );
        no_route(&mut flow, &mut stream, why).await;
        return;
    }
    if header.hops >= MAX_HOPS {
        let why = format!("flow passed {MAX_HOPS} routers (routing loop?)");
        no_route(&mut flow, &mut stream, why).await;
        return;
    }
    let next = flows.routes.read().next_hop(destination);
    let link = next.and_then(|hop| flows.link_to(hop));
    let Some(link) = link else {
        let why = format!("router {} has no route to router {destination}", flows.me);
        no_route(&mut flow, &mut stream, why).await;
        return;
    };
    let mut out = match open_next(flows, &link).await {
        Ok(s) => s,
        Err(why) => {
            no_route(&mut flow, &mut stream, why).await;
            return;
        }
    };
    let mut first = BytesMut::new();
    FlowHeader {
        hops: header.hops + 1,
        client: header.client.filter(|_| link.carries_client()),
        ..header
    }
    .encode(&mut first);
    first.extend_from_slice(&leftover);
    if let Err(e) = out.writer.write_all(&first).await {
        let why = format!(
            "router {} lost the stream to {}: {e}",
            flows.me,
            link.peer()
        );
        // The next hop may have passed some of the bytes on: not retryable, reset.
        tracing::debug!(reason = %why, "transit flow reset");
        flow.fail(FlowOutcome::Error, why);
        out.reset();
        stream.reset();
        return;
    }
    if pooled {
        let guard = flows.register(header.flow_id, &key, origin, destination, FlowRole::Transit);
        let (fwd, back) = guard.counters();
        fwd.fetch_add(leftover.len() as u64, Ordering::Relaxed);
        let forward = Pump::new(Bytes::new(), false, fwd);
        let back_pump = Pump::new(Bytes::new(), false, back);
        let end = splice(&mut stream, &mut out, forward, back_pump, &flows.shutdown).await;
        log_end(&end);
        return;
    }
    let fwd = Arc::new(AtomicU64::new(leftover.len() as u64));
    let forward = Pump::new(Bytes::new(), false, fwd.clone());
    // The tap counts the bytes back (without the egress's answer): the pump's own count
    // is not used.
    let back_pump = Pump::new(Bytes::new(), false, Arc::default());
    let mut out = StatusTap::new(out, flow, fwd);
    let end = splice(&mut stream, &mut out, forward, back_pump, &flows.shutdown).await;
    log_end(&end);
    // The egress's answer says how the flow went where the splice alone would say "ok".
    let flow = &mut out.flow;
    match out.status.take() {
        Some(status) if status.code != FlowStatusCode::Ok => {
            flow.fail(FlowOutcome::of_code(status.code), status.message);
        }
        _ => flow.spliced(
            &end,
            "the link stream from the previous router",
            "the link stream to the next router",
        ),
    }
}

/// A transit router answers no-route (and records it).
async fn no_route(flow: &mut Flow, stream: &mut LinkStream, why: String) {
    flow.fail(FlowOutcome::NoRoute, why.clone());
    answer_failure(stream, FlowStatusFrame::fail(FlowStatusCode::NoRoute, why)).await;
}

/// A new stream on `link` towards the next hop, within [`OPEN_TIMEOUT`]; `Err` says why not
/// (for a no-route answer). Used by the TCP and the UDP transit.
pub(super) async fn open_next(
    flows: &Flows,
    link: &crate::link::LinkHandle,
) -> Result<LinkStream, String> {
    match tokio::time::timeout(OPEN_TIMEOUT, link.open_stream()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "router {} cannot reach {}: {e}",
            flows.me,
            link.peer()
        )),
        Err(_) => Err(format!(
            "router {} got no stream to {} within {} s",
            flows.me,
            link.peer(),
            OPEN_TIMEOUT.as_secs()
        )),
    }
}
