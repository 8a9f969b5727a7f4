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
//! The fix: when quinn asks for the window and nothing has been sent for a smoothed round trip
//! (at least 1 ms), the window lets one send more than is in flight out. That packet carries
//! our ACKs, which open the peer's window in turn. quinn asks when it next polls the
//! connection: a packet arrived, the application wrote (the link's control stream writes a
//! keepalive every second, every 100 ms once the peer has said nothing since the last one), or
//! one of quinn's timers fired (ACK delay, probe timeout); no timer of its own is set, so on a
//! path whose round trip exceeds quinn's 25 ms ACK delay a silent stall waits for the next
//! keepalive or probe. [`MAX_RELEASES`] such sends may go out a round trip apart until an
//! acknowledgement arrives; after them, one every [`SLOW_RELEASE`], so a blackholed link does
//! not send one every millisecond, and an end whose releases all went unanswered still gets
//! its keepalive and ACKs out (before, only quinn's probes did, with their backoff, and a CI
//! run saw a 2 s silence at 20 % loss). A send is normally one packet, but our count of bytes
//! in flight can run ahead of quinn's (ACK-only packets count here, not there, until the next
//! acknowledgement resets it), so one release may let out a whole batch (quinn sends at most
//! 10 datagrams per call). Cubic's window and its reaction to loss
//! are unchanged. With it, a transfer through 20 % loss each way went at most 0.07-0.5 s
//! without a packet (measured on a 0.1 ms path only) and moved twice as fast.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// The shortest stall after which a packet may go whatever the window (quinn's timer
/// granularity), for a path whose round trip is shorter or not yet measured.
const MIN_STALL: Duration = Duration::from_millis(1);

/// Sends beyond Cubic's window allowed a round trip apart between two acknowledgements. At
/// 20 % loss each way four in a row all go unanswered about 2 % of the time (0.36^4).
pub(crate) const MAX_RELEASES: u32 = 4;

/// After [`MAX_RELEASES`] unanswered releases, the shortest stall before the next: a
/// blackholed link sends at most ten packets a second beyond its window (only when quinn
/// polls it: a packet in, a keepalive written, a timer), and an end that keeps being polled is
/// never held silent longer than this by its own window. The keepalive interval of a link that
/// has gone quiet (link/driver.rs).
pub(crate) const SLOW_RELEASE: Duration = Duration::from_millis(100);

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
            releases: 0,
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
    /// Sends beyond Cubic's window since the last acknowledgement.
    releases: u32,
}

impl StallFreeCubic {
    /// The window at `now`: Cubic's, or one packet above what is in flight once nothing has
    /// been sent for a round trip ([`MAX_RELEASES`] times between acknowledgements, then for
    /// [`SLOW_RELEASE`]). quinn sends while in flight plus a packet stays below the window,
    /// hence the `+ 1`; once that packet is sent, `last_sent` is now and the release ends.
    fn window_at(&self, now: Instant) -> u64 {
        let window = self.cubic.window();
        let stall = if self.releases < MAX_RELEASES {
            self.rtt.max(MIN_STALL)
        } else {
            self.rtt.max(SLOW_RELEASE)
        };
        let stalled = self
            .last_sent
            .is_some_and(|at| now.saturating_duration_since(at) >= stall);
        if stalled {
            window.max(self.in_flight + self.mtu + 1)
        } else {
            window
        }
    }
}

impl StallFreeCubic {
    /// A packet was acknowledged: progress, with quinn's round-trip estimate `rtt`.
    fn acked(&mut self, rtt: Duration) {
        self.rtt = rtt;
        self.releases = 0;
    }
}

impl Controller for StallFreeCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        // Only a release lets more than Cubic's window be in flight.
        if self.in_flight + bytes > self.cubic.window() {
            self.releases += 1;
        }
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
        self.acked(rtt.get());
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
            releases: self.releases,
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

    #[test]
    fn without_acknowledgements_a_few_packets_go_beyond_the_window_then_ten_a_second() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        let mtu = u64::from(MTU);
        // The window is full and nothing comes back (a blackhole); quinn polls every 1 ms.
        c.on_sent(t0, c.cubic.window(), 1);
        let mut t = t0;
        let mut released = Vec::new();
        for n in 0..10_000 {
            t += MIN_STALL;
            if c.window_at(t) > c.in_flight {
                c.on_sent(t, mtu, n + 2);
                released.push(t - t0);
            }
        }
        // The first releases go a round trip apart (the 1 ms floor: none measured yet) ...
        let quick: Vec<_> = (1..=MAX_RELEASES as u64)
            .map(Duration::from_millis)
            .collect();
        assert_eq!(
            released[..MAX_RELEASES as usize],
            quick[..],
            "the first sends beyond the window with no ACK"
        );
        // ... then one every SLOW_RELEASE: 10 a second on a blackholed link, never a longer
        // silence than that while quinn polls.
        let slow = &released[MAX_RELEASES as usize..];
        assert_eq!(slow.len(), 99, "slow releases in 10 s: {slow:?}");
        for pair in released[MAX_RELEASES as usize - 1..].windows(2) {
            assert_eq!(pair[1] - pair[0], SLOW_RELEASE, "{released:?}");
        }
        // An acknowledgement (any progress) allows releases again.
        c.acked(Duration::from_millis(1));
        assert!(
            c.window_at(t + MIN_STALL) > c.in_flight,
            "no release after an ACK"
        );
    }
}
