//! The UDP transit role: a UDP flow stream for another router is forwarded on a new stream
//! to the next hop towards it (header first, hops + 1), and datagrams pass between the two
//! [`Hop`]s, each choosing QUIC datagrams or stream frames on its own link.
//!
//! Refusals are the TCP transit's (edge routers carry no transit, [`MAX_HOPS`], no route,
//! no stream within [`OPEN_TIMEOUT`]: answered no-route), and a next hop whose router speaks
//! a link protocol older than 1.2 (it cannot decode a UDP flow: answered no-route, so the
//! ingress tries elsewhere). Then: datagrams from upstream go
//! down as frames while the egress has not answered; its status passes up as soon as it
//! arrives (within [`HEADER_TIMEOUT`]); a failure status ends the flow after it passed. A
//! clean end of either side ends the other cleanly; a failure of either side resets the
//! other.
//!
//! Counting (role `transit`): `forward`/`back` are datagrams passed to the next hop; a
//! datagram that went whole on the stream of a QUIC link counts `oversize`; one a hop could
//! not take is dropped (`congested`, `closed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use skiff_certs::SiteId;

use super::hop::{Dropped, Hop, Via};
use super::{Direction, DropReason, UdpKeyCounters};
use crate::flow::records::{Flow, FlowOutcome};
use crate::flow::tcp::answer_failure;
use crate::flow::transit::open_next;
use crate::flow::{FlowRole, Flows, HEADER_TIMEOUT, MAX_HOPS};
use crate::link::LinkStream;
use crate::link::datagram::Datagrams;
use crate::routing::RoutingKey;
use crate::wire::{FlowHeader, FlowStatusCode, FlowStatusFrame, RouterMode};

/// Serves a UDP flow stream whose header names another router.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn transit(
    flows: &Arc<Flows>,
    mut stream: LinkStream,
    datagrams: Option<Arc<Datagrams>>,
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
    let Some(link) = next.and_then(|hop| flows.link_to(hop)) else {
        let why = format!("router {} has no route to router {destination}", flows.me);
        no_route(&mut flow, &mut stream, why).await;
        return;
    };
    if let Err(why) = link.carries_udp(&flows.site_name(link.peer())) {
        no_route(&mut flow, &mut stream, why).await;
        return;
    }
    let out = match open_next(flows, &link).await {
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
    let mut down = Hop::opened(out, link.datagrams(), first.freeze());
    let mut up = Hop::accepted(stream, datagrams, leftover);
    let counters = flows.udp_stats.key(key.as_str());
    let fwd = Arc::new(AtomicU64::new(0));
    let back = Arc::new(AtomicU64::new(0));
    let relay = Relay {
        counters: &counters,
        fwd: &fwd,
        back: &back,
    };

    // Until the egress answers: datagrams go down (as frames), the answer goes up.
    let answer = async {
        loop {
            tokio::select! {
                status = down.read_status() => return status,
                got = up.recv() => match got {
                    Ok(Some(d)) => relay.pass(&down, &d, Direction::Forward),
                    Ok(None) => return Err("the previous router ended the flow before the egress answered".to_owned()),
                    Err(e) => return Err(format!("the link stream from the previous router: {e}")),
                },
            }
        }
    };
    let status = match tokio::time::timeout(HEADER_TIMEOUT, answer).await {
        Ok(Ok(status)) => status,
        Ok(Err(why)) => {
            flow.fail(FlowOutcome::Error, why);
            up.reset();
            down.reset();
            return;
        }
        Err(_) => {
            flow.fail(
                FlowOutcome::Error,
                format!(
                    "no answer from {} within {} s",
                    flows.site_name(destination),
                    HEADER_TIMEOUT.as_secs()
                ),
            );
            up.reset();
            down.reset();
            return;
        }
    };
    if up.write_status(&status).await.is_err() {
        flow.fail(
            FlowOutcome::Error,
            "the link stream from the previous router failed before the answer passed",
        );
        up.reset();
        down.reset();
        return;
    }
    if status.code != FlowStatusCode::Ok {
        flow.fail(FlowOutcome::of_code(status.code), status.message);
        up.finish();
        down.finish();
        return;
    }
    flow.connected_with(fwd.clone(), back.clone());

    loop {
        tokio::select! {
            got = up.recv() => match got {
                Ok(Some(d)) => relay.pass(&down, &d, Direction::Forward),
                Ok(None) => {
                    // The ingress ended the flow.
                    down.finish();
                    up.finish();
                    flow.ok();
                    return;
                }
                Err(e) => {
                    flow.fail(FlowOutcome::Reset, format!("the link stream from the previous router: {e}"));
                    down.reset();
                    up.reset();
                    return;
                }
            },
            got = down.recv() => match got {
                Ok(Some(d)) => relay.pass(&up, &d, Direction::Back),
                Ok(None) => {
                    // The egress ended the flow (idle there).
                    up.finish();
                    down.finish();
                    flow.ok();
                    return;
                }
                Err(e) => {
                    flow.fail(FlowOutcome::Reset, format!("the link stream to the next router: {e}"));
                    up.reset();
                    down.reset();
                    return;
                }
            },
        }
    }
}

/// Passes datagrams on and counts them.
struct Relay<'a> {
    counters: &'a UdpKeyCounters,
    fwd: &'a AtomicU64,
    back: &'a AtomicU64,
}

impl Relay<'_> {
    /// Sends `d` on `to`, counting it in `direction` (or its drop).
    fn pass(&self, to: &Hop, d: &[u8], direction: Direction) {
        match to.send(d) {
            Ok(via) => {
                self.counters.count(FlowRole::Transit, direction, 1);
                let bytes = match direction {
                    Direction::Forward => self.fwd,
                    Direction::Back => self.back,
                };
                bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                if via == Via::Stream && to.quic_datagrams() {
                    self.counters.oversize();
                }
            }
            Err(Dropped::Congested) => self.counters.dropped(DropReason::Congested),
            Err(Dropped::Closed) => self.counters.dropped(DropReason::Closed),
        }
    }
}

/// A transit router answers no-route (and records it).
async fn no_route(flow: &mut Flow, stream: &mut LinkStream, why: String) {
    flow.fail(FlowOutcome::NoRoute, why.clone());
    answer_failure(stream, FlowStatusFrame::fail(FlowStatusCode::NoRoute, why)).await;
}
