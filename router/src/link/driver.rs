//! The per-link driver task: owns an established link from hello to close.
//!
//! It loops over five event sources: frames on the control stream (keepalives are answered,
//! link-state frames go to the routing task, a `Close` ends the link), frames the routing task
//! wants sent, streams the peer opens (handed to the router's incoming-stream channel), the
//! liveness timer ([`Liveness`], a clock-free state machine, fed by control frames and by
//! the peer's flow data), and a request to close
//! ([`LinkCloser`]: configuration change, revocation, shutdown).
//!
//! It also samples the link's round trip ([`RttSamples`]) once per keepalive interval:
//! quinn's estimate on QUIC, the keepalive's own round trip on TLS/TCP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_certs::SiteId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handshake::{ControlStream, LINGER, PeerHello};
use super::mux::{LinkStream, MuxConnection};
use super::routes::{RouteEvent, Routes};
use super::rtt::RttSamples;
use super::{IncomingStream, Transport};
use crate::routing::Protocol;
use crate::wire::{ControlFrame, ProtocolVersion};

/// What the liveness timer wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LivenessAction {
    /// Send a keepalive with this id.
    Probe(u64),
    /// Nothing heard for `dead_after`: the link is dead.
    Dead,
}

/// Keepalives per interval sent to a link that has said nothing since the last keepalive
/// went out (so for about an interval), until it is heard from again.
const QUIET_PROBES: u32 = 10;

/// Keepalive and dead-peer detection, without a clock: feed it `now`.
///
/// Call [`Liveness::on_frame`] for every frame received, sleep until
/// [`Liveness::next_timeout`], then call [`Liveness::poll`] and act on what it returns.
#[derive(Debug)]
pub(crate) struct Liveness {
    interval: Duration,
    dead_after: Duration,
    last_heard: Instant,
    /// Whether anything was heard since the last probe went out.
    heard: bool,
    next_probe: Instant,
    next_id: u64,
}

impl Liveness {
    pub(crate) fn new(now: Instant, interval: Duration, dead_after: Duration) -> Self {
        Liveness {
            interval,
            dead_after,
            last_heard: now,
            // The hello was just heard.
            heard: true,
            next_probe: now + interval,
            next_id: 0,
        }
    }

    /// A frame arrived from the peer.
    pub(crate) fn on_frame(&mut self, now: Instant) {
        self.last_heard = now;
        self.heard = true;
    }

    /// When [`Liveness::poll`] has something to do next.
    pub(crate) fn next_timeout(&self) -> Instant {
        self.next_probe.min(self.last_heard + self.dead_after)
    }

    /// The due action at `now`, if any.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<LivenessAction> {
        if now >= self.last_heard + self.dead_after {
            return Some(LivenessAction::Dead);
        }
        if now >= self.next_probe {
            // A link that said nothing since the last probe (not even its answer) is probed
            // faster: on QUIC each keepalive written wakes quinn, which then gets out the ACKs
            // and data a lossy path's congestion window held (link/congestion.rs), and each is
            // another chance to be heard before `dead_after`. Asked this way, not by the time
            // since the last word, an idle link whose two ends' keepalives fall together never
            // counts as quiet because a timer fired a millisecond late.
            self.next_probe = now
                + if self.heard {
                    self.interval
                } else {
                    self.interval / QUIET_PROBES
                };
            self.heard = false;
            self.next_id += 1;
            return Some(LivenessAction::Probe(self.next_id));
        }
        None
    }
}

/// Asks a link's driver to close the link, with a reason sent to the peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkCloser {
    token: CancellationToken,
    /// The first reason given, and when (RFC 3339, as the link table's `since`).
    reason: Arc<Mutex<Option<(String, String)>>>,
    /// Told when the close is requested: the change counter of the link table that shows
    /// the link (set by [`super::table::LinkTable::set_up`]), so its watchers see `closing`.
    watcher: Arc<Mutex<Option<tokio::sync::watch::Sender<u64>>>>,
}

impl LinkCloser {
    /// Requests the close; the first reason given wins.
    pub(crate) fn close(&self, reason: &str) {
        self.reason
            .lock()
            .unwrap()
            .get_or_insert_with(|| (reason.to_owned(), super::table::now_rfc3339()));
        let first = !self.token.is_cancelled();
        self.token.cancel();
        if first && let Some(w) = &*self.watcher.lock().unwrap() {
            w.send_modify(|n| *n += 1);
        }
    }

    /// Whether a close was requested: the link is closing and must carry no new flow.
    pub(crate) fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why and since when the link is closing, once its close was requested.
    pub(crate) fn requested_with(&self) -> Option<(String, String)> {
        if !self.is_requested() {
            return None;
        }
        self.reason.lock().unwrap().clone()
    }

    /// Bumps `changes` when the close is requested.
    pub(crate) fn notify(&self, changes: tokio::sync::watch::Sender<u64>) {
        *self.watcher.lock().unwrap() = Some(changes);
    }

    async fn requested(&self) -> String {
        self.token.cancelled().await;
        self.reason
            .lock()
            .unwrap()
            .clone()
            .map(|(r, _)| r)
            .unwrap_or_default()
    }
}

/// How a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// We closed it on request.
    ClosedByUs(String),
    /// The peer sent a `Close` frame.
    ClosedByPeer(String),
    /// No frame for `dead_after`.
    Dead(Duration),
    /// The connection failed (reset, transport error, protocol violation).
    Lost(String),
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::ClosedByUs(r) => write!(f, "closed by this router: {r}"),
            LinkEnd::ClosedByPeer(r) => write!(f, "closed by the peer: {r}"),
            LinkEnd::Dead(d) => write!(f, "peer silent for {} s: link declared dead", d.as_secs()),
            LinkEnd::Lost(r) => write!(f, "connection lost: {r}"),
        }
    }
}

/// A link whose hellos have been exchanged.
pub(crate) struct Established {
    pub(crate) conn: Arc<dyn MuxConnection>,
    pub(crate) control: ControlStream,
    pub(crate) peer: PeerHello,
    pub(crate) transport: Transport,
    pub(crate) endpoint: String,
}

/// Timings of the driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) keepalive_interval: Duration,
    pub(crate) dead_after: Duration,
}

/// Where streams opened by peers go.
#[derive(Clone)]
pub(crate) struct IncomingSink {
    pub(crate) tx: mpsc::Sender<IncomingStream>,
}

impl IncomingSink {
    fn deliver(&self, peer: SiteId, link: &str, stream: LinkStream, conn: &dyn MuxConnection) {
        let incoming = IncomingStream {
            peer,
            link: link.to_owned(),
            stream,
            datagrams: conn.datagrams(),
        };
        if let Err(e) = self.tx.try_send(incoming) {
            // Dropping the stream resets it; the peer sees the failure at once.
            tracing::warn!(link = %link, peer = %peer, cause = %e,
                "reset a flow stream from the peer: this router's queue of new streams is full or closed (overloaded or shutting down); the peer's client sees a reset and may retry");
        }
    }
}

/// Runs an established link until it ends. The caller has put it in the link table. The
/// routing task learns that the link is up (with a sender for frames to put on its control
/// stream), every link-state frame that arrives on it, and when it ends. Round trips go to
/// `rtt`.
pub(crate) async fn run_link(
    link: Established,
    name: &str,
    closer: LinkCloser,
    timing: Timing,
    sink: IncomingSink,
    routes: &Routes,
    rtt: &RttSamples,
) -> LinkEnd {
    let Established {
        conn,
        mut control,
        peer,
        ..
    } = link;
    let route_link = routes.link_id();
    let (outgoing_tx, mut outgoing) = mpsc::unbounded_channel();
    routes.send(RouteEvent::LinkUp {
        link: route_link,
        peer: peer.site_id,
        cost: peer.cost,
        control: outgoing_tx,
    });
    let mut live = Liveness::new(Instant::now(), timing.keepalive_interval, timing.dead_after);
    // Flow data from the peer counts as a sign of life too ([`MuxConnection::received`]): on
    // a saturated link its keepalives and answers queue behind flow data for longer than
    // `dead_after`, while that data keeps arriving. A link is dead when the peer's router
    // sends nothing at all for `dead_after`.
    let mut received = conn.received();
    // The keepalive in flight whose answer measures the round trip (TLS/TCP), and when it
    // was sent.
    let mut probe: Option<(u64, Instant)> = None;
    let end = loop {
        let deadline = live.next_timeout();
        tokio::select! {
            biased;
            reason = closer.requested() => {
                // Withdraw the routes over this link now, not after the linger: until the
                // peer hangs up (up to LINGER, or `dead_after` if it is unreachable) a new
                // flow sent here would meet a link that is going away, while a listener
                // counted the peer as reachable. The link table no longer offers it either
                // ([`LinkCloser::is_requested`]).
                routes.send(RouteEvent::LinkDown { link: route_link });
                let _ = send_within(&mut control, &ControlFrame::Close { reason: reason.clone() }, timing.dead_after).await;
                // Give the Close frame time to arrive: the peer hangs up when it reads it.
                // Finishing the stream is inside the same bound (as the send is inside
                // `dead_after`): a peer that stops reading must not keep this link `closing`
                // for ever, and the whole close takes at most `dead_after` + LINGER.
                let _ = tokio::time::timeout(LINGER, async {
                    control.finish().await;
                    conn.closed().await;
                })
                .await;
                break LinkEnd::ClosedByUs(reason);
            }
            frame = control.recv() => {
                live.on_frame(Instant::now());
                match frame {
                    Ok(Some(ControlFrame::Keepalive { id })) => {
                        if let Some(end) = send_patiently(&mut control, &ControlFrame::KeepaliveAck { id }, timing.dead_after, &*conn, &closer).await {
                            break end;
                        }
                    }
                    Ok(Some(ControlFrame::KeepaliveAck { id })) => {
                        if let Some((sent_id, at)) = probe
                            && sent_id == id
                        {
                            rtt.record(at.elapsed());
                            probe = None;
                        }
                    }
                    Ok(Some(ControlFrame::Close { reason })) => break LinkEnd::ClosedByPeer(reason),
                    Ok(Some(ControlFrame::LinkState(ad))) => {
                        routes.send(RouteEvent::Advertisement { from: peer.site_id, ad });
                    }
                    Ok(Some(other)) => {
                        break LinkEnd::Lost(format!("unexpected control frame {other:?}"));
                    }
                    Ok(None) => break LinkEnd::Lost("the peer ended the control stream".into()),
                    Err(e) => break LinkEnd::Lost(e.to_string()),
                }
            }
            Some(frame) = outgoing.recv() => {
                let frame = frame_for_peer(frame, peer.version);
                if let Some(end) = send_patiently(&mut control, &frame, timing.dead_after, &*conn, &closer).await {
                    break end;
                }
            }
            stream = conn.accept_stream() => match stream {
                Ok(stream) => sink.deliver(peer.site_id, name, stream, &*conn),
                Err(e) => break LinkEnd::Lost(e.to_string()),
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                let seen = conn.received();
                if seen != received {
                    received = seen;
                    live.on_frame(now);
                }
                match live.poll(now) {
                    Some(LivenessAction::Probe(id)) => {
                        match conn.transport_rtt() {
                            Some(estimate) => rtt.record(estimate),
                            None => probe = Some((id, now)),
                        }
                        if let Some(end) = send_patiently(&mut control, &ControlFrame::Keepalive { id }, timing.dead_after, &*conn, &closer).await {
                            break end;
                        }
                    }
                    Some(LivenessAction::Dead) => break LinkEnd::Dead(timing.dead_after),
                    None => {}
                }
            }
        }
    };
    // (Already sent when we closed it; a second one for the same link is ignored.)
    routes.send(RouteEvent::LinkDown { link: route_link });
    conn.close(&end.to_string());
    end
}

/// The first link protocol whose routers decode UDP keys (protocol 3) in link-state frames
/// and UDP flow headers.
pub(crate) const UDP_SINCE: ProtocolVersion = ProtocolVersion { major: 1, minor: 2 };

/// The first link protocol whose routers decode the client's address in a flow header.
pub(crate) const CLIENT_SINCE: ProtocolVersion = ProtocolVersion { major: 1, minor: 3 };

/// `frame` as a peer speaking `version` can decode it: a router older than
/// [`UDP_SINCE`] refuses a link-state frame with a UDP key (an unknown protocol) and
/// drops the link, so UDP keys are left out of what it is sent; it then never learns of them
/// and never starts a UDP flow it could not carry.
fn frame_for_peer(frame: ControlFrame, version: ProtocolVersion) -> ControlFrame {
    let older = (version.major, version.minor) < (UDP_SINCE.major, UDP_SINCE.minor);
    match frame {
        ControlFrame::LinkState(mut ad) if older => {
            ad.keys.retain(|k| k.protocol != Protocol::Udp);
            ControlFrame::LinkState(ad)
        }
        other => other,
    }
}

/// Longest a control frame may wait to be sent while the peer still sends: a peer that keeps
/// a link saturated but never takes control frames is cut off after this.
const CONTROL_STALL_LIMIT: Duration = Duration::from_secs(60);

/// Sends one control frame behind whatever flow data is queued; `None` once sent, else how
/// the link ends. It fails once `limit` passes with nothing received from the peer (a dead or
/// blackholed link), or after [`CONTROL_STALL_LIMIT`] in any case. A saturated but live link
/// (a slow path, many heavy flows) is not torn down because a keepalive waits behind its own
/// flows' bytes. A close requested meanwhile (revocation, deletion, shutdown) ends the wait
/// at once: the Close frame could not get through either, the connection's close carries it.
async fn send_patiently(
    control: &mut ControlStream,
    frame: &ControlFrame,
    limit: Duration,
    conn: &dyn MuxConnection,
    closer: &LinkCloser,
) -> Option<LinkEnd> {
    let give_up = Instant::now() + CONTROL_STALL_LIMIT;
    let mut received = conn.received();
    let send = control.send(frame);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            reason = closer.requested() => return Some(LinkEnd::ClosedByUs(reason)),
            sent = tokio::time::timeout(limit, &mut send) => match sent {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => return Some(LinkEnd::Lost(e.to_string())),
                Err(_) => {
                    let seen = conn.received();
                    if seen == received {
                        return Some(LinkEnd::Lost(format!(
                            "nothing arrived from the peer for {} s while a control frame waited to be sent",
                            limit.as_secs()
                        )));
                    }
                    if Instant::now() >= give_up {
                        return Some(LinkEnd::Lost(format!(
                            "the peer took no control frame for {} s",
                            CONTROL_STALL_LIMIT.as_secs()
                        )));
                    }
                    received = seen;
                }
            },
        }
    }
}

/// Sends one control frame, or fails once `limit` has passed: a peer that stops reading its
/// control stream must not freeze the driver (and its liveness timer) forever.
async fn send_within(
    control: &mut ControlStream,
    frame: &ControlFrame,
    limit: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, control.send(frame)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the peer took no control frame for {} s", limit.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_before_1_2_are_sent_no_udp_keys() {
        use crate::routing::{Advertisement, KeyAd};
        let key = |name: &str, protocol| KeyAd {
            key: name.parse().unwrap(),
            connectors: 1,
            protocol,
            port: 53,
        };
        let ad = Advertisement {
            origin: SiteId::from_bytes([1; 16]),
            site_name: "east".into(),
            mode: crate::wire::RouterMode::Interior,
            seq: 7,
            links: vec![(SiteId::from_bytes([2; 16]), 3)],
            keys: vec![
                key("dns", Protocol::Udp),
                key("db", Protocol::Tcp),
                key("web", Protocol::Http),
            ],
        };
        let v = |minor| ProtocolVersion { major: 1, minor };
        let keys_sent = |version| match frame_for_peer(ControlFrame::LinkState(ad.clone()), version)
        {
            ControlFrame::LinkState(sent) => {
                // Only keys go: the rest of the advertisement is unchanged.
                assert_eq!(
                    (sent.origin, sent.seq, &sent.links),
                    (ad.origin, ad.seq, &ad.links)
                );
                sent.keys
                    .iter()
                    .map(|k| k.key.as_str().to_owned())
                    .collect::<Vec<_>>()
            }
            other => panic!("not a link-state frame: {other:?}"),
        };
        assert_eq!(keys_sent(v(0)), ["db", "web"]);
        assert_eq!(keys_sent(v(1)), ["db", "web"]);
        assert_eq!(keys_sent(v(2)), ["dns", "db", "web"]);
        assert_eq!(keys_sent(v(9)), ["dns", "db", "web"]);
        assert_eq!(
            keys_sent(crate::wire::PROTOCOL_VERSION),
            ["dns", "db", "web"]
        );
        // Other frames pass unchanged.
        let ka = ControlFrame::Keepalive { id: 4 };
        assert_eq!(frame_for_peer(ka.clone(), v(0)), ka);
    }

    #[test]
    fn probes_every_interval_while_heard_and_dies_after_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut live = Liveness::new(t0, s, 4 * s);
        assert_eq!(live.next_timeout(), t0 + s);
        assert_eq!(live.poll(t0), None);
        // Heard within each interval: one probe a second.
        live.on_frame(t0 + s / 2);
        assert_eq!(live.poll(t0 + s), Some(LivenessAction::Probe(1)));
        assert_eq!(live.poll(t0 + s), None);
        assert_eq!(live.next_timeout(), t0 + 2 * s);
        live.on_frame(t0 + 2 * s);
        assert_eq!(live.poll(t0 + 2 * s), Some(LivenessAction::Probe(2)));
        assert_eq!(live.next_timeout(), t0 + 3 * s);
        // An answer keeps it alive past the original deadline.
        live.on_frame(t0 + 3 * s);
        assert_eq!(live.poll(t0 + 3 * s), Some(LivenessAction::Probe(3)));
        // Nothing heard since: dead 4 s after the last word, whatever the probes.
        assert_eq!(
            live.poll(t0 + 7 * s - s / 100),
            Some(LivenessAction::Probe(4))
        );
        assert_eq!(live.poll(t0 + 7 * s), Some(LivenessAction::Dead));
    }

    #[test]
    fn a_link_silent_since_its_last_probe_is_probed_ten_times_as_often_until_heard() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut live = Liveness::new(t0, s, 4 * s);
        // The hello was heard: the first probe comes at the usual pace.
        assert_eq!(live.poll(t0 + s), Some(LivenessAction::Probe(1)));
        assert_eq!(live.next_timeout(), t0 + 2 * s);
        // Nothing since: from the next probe on, ten a second.
        assert_eq!(live.poll(t0 + 2 * s), Some(LivenessAction::Probe(2)));
        assert_eq!(live.next_timeout(), t0 + 2 * s + s / 10);
        assert_eq!(live.poll(t0 + 2 * s + s / 20), None);
        let mut probes = vec![];
        let mut t = t0 + 2 * s;
        while t < t0 + 3 * s {
            t = live.next_timeout();
            if let Some(LivenessAction::Probe(id)) = live.poll(t) {
                probes.push((id, t - t0));
            }
        }
        assert_eq!(
            probes,
            (3..=12)
                .map(|id| (id, 2 * s + (id as u32 - 2) * s / 10))
                .collect::<Vec<_>>(),
            "a quiet link's probes"
        );
        // Heard again: back to one a second.
        live.on_frame(t);
        assert_eq!(live.poll(t + s / 10), Some(LivenessAction::Probe(13)));
        assert_eq!(live.next_timeout(), t + s / 10 + s);
        // A silent link dies when it did before the fast probes.
        let mut quiet = Liveness::new(t0, s, 4 * s);
        let end = loop {
            let t = quiet.next_timeout();
            if let Some(LivenessAction::Dead) = quiet.poll(t) {
                break t;
            }
        };
        assert_eq!(end, t0 + 4 * s);
    }

    #[test]
    fn an_idle_link_answering_each_probe_stays_at_one_a_second_however_late_its_timer() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let rtt = Duration::from_micros(100);
        let mut live = Liveness::new(t0, s, 4 * s);
        for _ in 0..10 {
            // The timer fires 2 ms late; the answer comes a round trip after the probe, so
            // the last word is more than an interval old at the next probe.
            let at = live.next_timeout() + Duration::from_millis(2);
            assert!(matches!(live.poll(at), Some(LivenessAction::Probe(_))));
            assert_eq!(live.next_timeout(), at + s, "probed faster while answered");
            live.on_frame(at + rtt);
        }
    }
}
