//! Per-key flow statistics for `/metrics`: flows by role and outcome, bytes each way, a flow
//! duration histogram and, at the ingress, a setup-time histogram. Lock-free atomics, touched
//! once when a flow connects and once when it ends (never per byte: the bytes of a flow are
//! its own counters, added to its key when it ends); [`super::Flows::key_stats`] adds the
//! bytes of flows still running, so a long flow shows in rates while it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::FlowRole;
use super::records::FlowOutcome;

/// Upper bounds (seconds) of the flow duration buckets; the last bucket is +Inf.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

/// Upper bounds (seconds) of the setup time buckets (accept to the egress's ok); +Inf last.
pub const SETUP_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Keys kept apart at most; flows of further keys (a peer inventing keys) count under
/// [`OTHER_KEY`], so the statistics stay bounded.
pub const MAX_KEYS: usize = 1024;

/// The key under which flows of keys past [`MAX_KEYS`] are counted.
pub const OTHER_KEY: &str = "(other)";

const ROLES: [FlowRole; 3] = [FlowRole::Ingress, FlowRole::Transit, FlowRole::Egress];

fn role_index(r: FlowRole) -> usize {
    match r {
        FlowRole::Ingress => 0,
        FlowRole::Transit => 1,
        FlowRole::Egress => 2,
    }
}

/// A histogram of durations with fixed bucket bounds.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(le, n)| (le, n.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A copy of a histogram.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative): upper bound in seconds (the last is
    /// infinity), count.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Observations.
    pub count: u64,
}

/// The statistics of one key.
#[derive(Debug)]
pub(crate) struct KeyStats {
    /// Ended flows by role and outcome.
    ended: [[AtomicU64; FlowOutcome::ALL.len()]; 3],
    /// Bytes of ended flows by role, client to backend.
    forward: [AtomicU64; 3],
    /// Bytes of ended flows by role, backend to client.
    back: [AtomicU64; 3],
    /// How long connected flows lasted (any role).
    pub(crate) duration: Histogram,
    /// Accept to the egress's ok, at the ingress.
    pub(crate) setup: Histogram,
}

impl Default for KeyStats {
    fn default() -> Self {
        KeyStats {
            ended: Default::default(),
            forward: Default::default(),
            back: Default::default(),
            duration: Histogram::new(&DURATION_BUCKETS),
            setup: Histogram::new(&SETUP_BUCKETS),
        }
    }
}

impl KeyStats {
    /// Counts a flow that ended with `outcome`.
    pub(crate) fn count_end(&self, role: FlowRole, outcome: FlowOutcome) {
        self.ended[role_index(role)][outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the bytes of a flow that ended in `role`.
    pub(crate) fn add_bytes(&self, role: FlowRole, forward: u64, back: u64) {
        self.forward[role_index(role)].fetch_add(forward, Ordering::Relaxed);
        self.back[role_index(role)].fetch_add(back, Ordering::Relaxed);
    }
}

/// Bytes of ended flows (forward, back) per role, per key by the address of its
/// [`KeyStats`].
pub(crate) type ByteTotals = HashMap<usize, [(u64, u64); 3]>;

/// The statistics of every key seen at this router.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    keys: std::sync::Mutex<HashMap<Box<str>, Arc<KeyStats>>>,
}

impl Stats {
    /// The statistics of `key` (made on first use; [`OTHER_KEY`] past [`MAX_KEYS`]).
    pub(crate) fn key(&self, key: &str) -> Arc<KeyStats> {
        let mut keys = self.keys.lock().unwrap();
        if let Some(s) = keys.get(key) {
            return s.clone();
        }
        let key = if keys.len() >= MAX_KEYS {
            OTHER_KEY
        } else {
            key
        };
        keys.entry(key.into()).or_default().clone()
    }

    /// The bytes of ended flows of every key (forward, back) per role, by the address of its
    /// [`KeyStats`]: read under the registry of active flows, with their bytes.
    pub(crate) fn byte_totals(&self) -> ByteTotals {
        self.keys
            .lock()
            .unwrap()
            .values()
            .map(|s| {
                let by_role = std::array::from_fn(|i| {
                    let f = s.forward[i].load(Ordering::Relaxed);
                    (f, s.back[i].load(Ordering::Relaxed))
                });
                (Arc::as_ptr(s) as usize, by_role)
            })
            .collect()
    }

    /// Every key's statistics; `active` gives, per key, the flows running now (role, bytes
    /// forward, bytes back), whose bytes are added to the ended flows' `totals` (read at the
    /// same moment). The locks of the keys and of the active flows are not held meanwhile.
    pub(crate) fn snapshot(
        &self,
        active: &HashMap<&str, Vec<(FlowRole, u64, u64)>>,
        totals: &ByteTotals,
    ) -> Vec<FlowKeyStats> {
        let mut keys: Vec<(Box<str>, Arc<KeyStats>)> = {
            let keys = self.keys.lock().unwrap();
            keys.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        for name in active.keys() {
            if !keys.iter().any(|(k, _)| **k == **name) {
                keys.push(((*name).into(), Arc::default()));
            }
        }
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keys.into_iter()
            .map(|(name, s)| {
                let name = &*name;
                let ended_bytes = totals
                    .get(&(Arc::as_ptr(&s) as usize))
                    .copied()
                    .unwrap_or_default();
                let running = active.get(name).map(Vec::as_slice).unwrap_or_default();
                let mut flows = Vec::new();
                let mut active_by_role = Vec::new();
                let mut bytes = Vec::new();
                for role in ROLES {
                    let counts = &s.ended[role_index(role)];
                    let n_active = running.iter().filter(|(r, _, _)| *r == role).count() as u64;
                    let (mut forward, mut back) = ended_bytes[role_index(role)];
                    // A flow's bytes are added to its key just before it is counted as ended.
                    let seen = n_active > 0
                        || forward + back > 0
                        || counts.iter().any(|c| c.load(Ordering::Relaxed) > 0);
                    if !seen {
                        continue;
                    }
                    active_by_role.push((role, n_active));
                    for (_, f, b) in running.iter().filter(|(r, _, _)| *r == role) {
                        forward += f;
                        back += b;
                    }
                    bytes.push((role, forward, back));
                    for outcome in FlowOutcome::ALL {
                        flows.push((
                            role,
                            outcome,
                            counts[outcome.index()].load(Ordering::Relaxed),
                        ));
                    }
                }
                FlowKeyStats {
                    key: name.to_owned(),
                    flows,
                    active: active_by_role,
                    bytes,
                    duration: s.duration.snapshot(),
                    setup: s.setup.snapshot(),
                }
            })
            .collect()
    }
}

/// A copy of one key's flow statistics at this router.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowKeyStats {
    /// The routing key ([`OTHER_KEY`] for keys past [`MAX_KEYS`]).
    pub key: String,
    /// Ended flows by role and outcome (every outcome of each role that saw a flow).
    pub flows: Vec<(FlowRole, FlowOutcome, u64)>,
    /// Flows running now, by role (each role that saw a flow).
    pub active: Vec<(FlowRole, u64)>,
    /// Bytes of ended and running flows through this router by role (forward: client to
    /// backend, back), for each role that saw a flow: a site that is both ingress and egress
    /// for a key passes the same bytes twice.
    pub bytes: Vec<(FlowRole, u64, u64)>,
    /// How long connected flows lasted (any role), recorded when they end.
    pub duration: HistogramSnapshot,
    /// At the ingress: accept to the egress's ok (or the local backend's connect).
    pub setup: HistogramSnapshot,
}

impl FlowKeyStats {
    /// Bytes client to backend through this router, every role added.
    pub fn bytes_forward(&self) -> u64 {
        self.bytes.iter().map(|(_, f, _)| f).sum()
    }

    /// Bytes backend to client through this router, every role added.
    pub fn bytes_back(&self) -> u64 {
        self.bytes.iter().map(|(_, _, b)| b).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_per_bucket_and_running_bytes_add_up() {
        let stats = Stats::default();
        let k = stats.key("redis");
        k.setup.observe(Duration::from_micros(300));
        k.setup.observe(Duration::from_millis(3));
        k.setup.observe(Duration::from_secs(60));
        k.count_end(FlowRole::Ingress, FlowOutcome::Ok);
        k.count_end(FlowRole::Ingress, FlowOutcome::ConnectRefused);
        k.add_bytes(FlowRole::Ingress, 10, 0);
        // A transit flow whose bytes were added, not yet counted as ended: its bytes show.
        k.add_bytes(FlowRole::Transit, 3, 4);
        let active: HashMap<&str, Vec<(FlowRole, u64, u64)>> =
            [("redis", vec![(FlowRole::Ingress, 5, 7)])].into();
        let totals = stats.byte_totals();
        // Bytes of a flow ending after the totals were read are not counted twice.
        k.add_bytes(FlowRole::Ingress, 5, 0);
        let s = &stats.snapshot(&active, &totals)[0];
        assert_eq!((s.bytes_forward(), s.bytes_back()), (18, 11));
        assert_eq!(
            s.bytes,
            vec![(FlowRole::Ingress, 15, 7), (FlowRole::Transit, 3, 4)]
        );
        assert_eq!(
            s.active,
            vec![(FlowRole::Ingress, 1), (FlowRole::Transit, 0)]
        );
        let count = |o| s.flows.iter().find(|f| f.1 == o).unwrap().2;
        assert_eq!(count(FlowOutcome::Ok), 1);
        assert_eq!(count(FlowOutcome::ConnectRefused), 1);
        assert_eq!(count(FlowOutcome::Reset), 0);
        // The egress saw nothing: not listed.
        assert_eq!(s.flows.len(), 2 * FlowOutcome::ALL.len());
        assert_eq!(s.setup.count, 3);
        assert_eq!(s.setup.buckets[0], (0.0005, 1));
        assert_eq!(s.setup.buckets[3], (0.005, 1));
        assert_eq!(s.setup.buckets.last().unwrap().1, 1);
    }

    #[test]
    fn keys_past_the_limit_count_together() {
        let stats = Stats::default();
        for i in 0..MAX_KEYS + 10 {
            stats
                .key(&format!("k{i}"))
                .count_end(FlowRole::Egress, FlowOutcome::NoRoute);
        }
        let snap = stats.snapshot(&HashMap::new(), &stats.byte_totals());
        assert_eq!(snap.len(), MAX_KEYS + 1);
        let other = snap.iter().find(|s| s.key == OTHER_KEY).unwrap();
        let n: u64 = other.flows.iter().map(|f| f.2).sum();
        assert_eq!(n, 10);
    }
}
