//! Congestion control of QUIC links: quinn's Cubic, except that a link that has sent nothing
//! for a round trip may always send one packet, so the ACKs it owes its peer get out.
//!
//! Why: quinn (0.11) sends nothing on a connection whose congestion window is full while it
//! has stream data queued, not even the ACK frames it owes (RFC 9002 §7 exempts ACK-only
//! packets from congestion control; quinn skips the whole packet space). A link carries flows
//! both ways, so under load both ends are window-full, and each end's ACKs ride on its data
//! packets. When loss leaves both ends waiting for an ACK the other holds, only probe timeouts
//! (PTO) end the wait: the ACK-holding waits then count in the round-trip estimate, which
//! grows the PTO, which doubles with every probe round that goes unanswered. At 20 % loss
//! each way that ended in silences of 4 s that took the link down (docs/reliability.md): a
//! smoothed RTT of 150 ms on a 0.1 ms path, windows of 5-50 KB but 0-2 packets sent a second.
//!
//! The fix: when quinn asks for the window (it does when a packet has arrived, when the
//! application writes and when a timer fires) and nothing has been sent for a smoothed round
//! trip, the window lets one packet more than is in flight out. That packet carries our ACKs,
//! which open the peer's window in turn. The cost is at most one packet per round trip beyond
//! Cubic's window, the floor every TCP sender keeps; Cubic's window and its reaction to loss
//! are unchanged. With it, the same transfer never went more than ~0.2 s without a packet and
//! moved twice as fast.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// The shortest stall after which a packet may go whatever the window (quinn's timer
/// granularity), for a path whose round trip is shorter or not yet measured.
const MIN_STALL: Duration = Duration::from_millis(1);

/// Builds [`StallFreeCubic`] controllers for QUIC links.
#[derive(Debug, Default)]
pub(crate) struct StallFreeCubicConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for StallFreeCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(StallFreeCubic {
            cubic: self.cubic.clone().build(now, current_mtu),
            mtu: u64::from(current_mtu),
            in_flight: 0,
            last_sent: None,
            rtt: Duration::ZERO,
        })
    }
}

/// Cubic, whose window lets one packet out after a round trip with nothing sent (see the
/// module's documentation).
pub(crate) struct StallFreeCubic {
    cubic: Box<dyn Controller>,
    /// The path's current MTU: the size of the packet a stall lets out.
    mtu: u64,
    /// Bytes in flight: quinn's own count after each acknowledgement, then what was sent
    /// added and what was lost taken away (quinn tells a controller nothing else).
    in_flight: u64,
    /// When the last packets left.
    last_sent: Option<Instant>,
    /// quinn's smoothed round-trip estimate, as of the last acknowledgement.
    rtt: Duration,
}

impl StallFreeCubic {
    /// The window at `now`: Cubic's, or one packet above what is in flight once nothing has
    /// been sent for a round trip. quinn sends while in flight plus a packet stays below the
    /// window, hence the `+ 1`; once that packet is sent, `last_sent` is now and the release
    /// ends.
    fn window_at(&self, now: Instant) -> u64 {
        let window = self.cubic.window();
        let stalled = self
            .last_sent
            .is_some_and(|at| now.saturating_duration_since(at) >= self.rtt.max(MIN_STALL));
        if stalled {
            window.max(self.in_flight + self.mtu + 1)
        } else {
            window
        }
    }
}

impl Controller for StallFreeCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        self.in_flight += bytes;
        self.last_sent = Some(now);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        self.rtt = rtt.get();
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.in_flight = in_flight;
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    /// quinn's trait gives this no `now`: the clock is read here, the logic is in
    /// [`StallFreeCubic::window_at`].
    fn window(&self) -> u64 {
        self.window_at(Instant::now())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.cubic.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(StallFreeCubic {
            cubic: self.cubic.clone_box(),
            mtu: self.mtu,
            in_flight: self.in_flight,
            last_sent: self.last_sent,
            rtt: self.rtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1452;

    fn controller(t0: Instant) -> StallFreeCubic {
        let built = Arc::new(StallFreeCubicConfig::default()).build(t0, MTU);
        *built
            .into_any()
            .downcast::<StallFreeCubic>()
            .expect("the factory builds a StallFreeCubic")
    }

    #[test]
    fn a_full_window_lets_one_packet_out_after_a_round_trip_with_nothing_sent() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        let cubic = c.cubic.window();
        // A loss cut Cubic's window below what is in flight: quinn may send nothing.
        c.on_sent(t0, cubic + 4 * u64::from(MTU), 1);
        c.on_congestion_event(t0, t0, false, u64::from(MTU));
        let in_flight = cubic + 3 * u64::from(MTU);
        assert!(c.window_at(t0) < in_flight, "Cubic's window was not cut");
        assert_eq!(
            c.window_at(t0 + MIN_STALL / 2),
            c.cubic.window(),
            "released before a round trip passed"
        );
        // A round trip later (none measured yet: the 1 ms floor), exactly one packet may go.
        let w = c.window_at(t0 + MIN_STALL);
        assert_eq!(w, in_flight + u64::from(MTU) + 1);
        // Once it is sent, the window is Cubic's again.
        let t1 = t0 + MIN_STALL;
        c.on_sent(t1, u64::from(MTU), 2);
        assert_eq!(c.window_at(t1), c.cubic.window());
        assert!(c.window_at(t1) < in_flight + u64::from(MTU));
        // quinn's count of what is in flight replaces ours at each acknowledgement.
        c.on_end_acks(t1, u64::from(MTU), false, Some(2));
        assert_eq!(
            c.window_at(t1 + Duration::from_secs(1)),
            c.cubic.window(),
            "an idle link's window is Cubic's"
        );
    }
}
