//! Round-trip samples of one link: the last one (for status) and a fixed-bucket histogram
//! (for `/metrics`), recorded lock-free by the link's driver about once per keepalive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram's buckets, in seconds (the last, `+Inf`, is implicit): from
/// loopback (under 0.5 ms) to a link across the world under load (2.5 s).
pub const RTT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Round-trip samples of one link, shared by its driver (writer) and the link table
/// (reader). Sampling: on QUIC, quinn's smoothed RTT at each keepalive interval; on TLS/TCP,
/// the round trip of each keepalive and its answer on the control stream.
#[derive(Debug, Default)]
pub(crate) struct RttSamples {
    /// The last sample in microseconds, plus one (0: none yet).
    last_us: AtomicU64,
    /// Samples per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; RTT_BUCKETS.len() + 1],
    /// Sum of all samples, in microseconds.
    sum_us: AtomicU64,
}

impl RttSamples {
    /// Records one round trip.
    pub(crate) fn record(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.last_us.store(us.saturating_add(1), Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        let secs = rtt.as_secs_f64();
        let i = RTT_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(RTT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the last sample (a new connection: its round trip is unknown until its first
    /// sample); the histogram keeps every sample.
    pub(crate) fn forget_last(&self) {
        self.last_us.store(0, Ordering::Relaxed);
    }

    /// The last sample, if any.
    pub(crate) fn last(&self) -> Option<Duration> {
        match self.last_us.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }

    /// A copy of the histogram.
    pub(crate) fn histogram(&self) -> RttHistogram {
        RttHistogram {
            buckets: RTT_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(&self.buckets)
                .map(|(le, n)| (le, n.load(Ordering::Relaxed)))
                .collect(),
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The round-trip histogram of a link at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RttHistogram {
    /// `(upper bound in seconds, samples in this bucket alone)`, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
}

impl RttHistogram {
    /// How many samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// Adds another link's samples (same buckets) to these.
    pub fn merge(&mut self, other: &RttHistogram) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            for ((_, n), (_, m)) in self.buckets.iter_mut().zip(&other.buckets) {
                *n += m;
            }
        }
        self.sum_seconds += other.sum_seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_bucket_and_the_last_is_kept() {
        let s = RttSamples::default();
        assert_eq!(s.last(), None);
        assert_eq!(s.histogram().count(), 0);
        s.record(Duration::from_micros(80));
        s.record(Duration::from_millis(30));
        s.record(Duration::from_secs(9));
        assert_eq!(s.last(), Some(Duration::from_secs(9)));
        let h = s.histogram();
        assert_eq!(h.count(), 3);
        assert_eq!(h.buckets.len(), RTT_BUCKETS.len() + 1);
        assert_eq!(h.buckets[0], (0.0005, 1));
        assert_eq!(h.buckets[6], (0.05, 1));
        assert_eq!(h.buckets[12], (f64::INFINITY, 1));
        assert!((h.sum_seconds - 9.03008).abs() < 1e-9, "{}", h.sum_seconds);
        // A zero round trip (a coarse clock) is still a sample.
        s.record(Duration::ZERO);
        assert_eq!(s.last(), Some(Duration::ZERO));
        // A new connection forgets the last value, not the samples.
        s.forget_last();
        assert_eq!(s.last(), None);
        assert_eq!(s.histogram().count(), 4);
    }
}
