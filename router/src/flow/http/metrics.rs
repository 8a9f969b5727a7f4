//! Per-key request metrics of HTTP listeners, kept at the ingress: requests by status class,
//! a latency histogram (time to the response head) and body bytes. Lock-free counters; the
//! admin API and `/metrics` (site-controller) read [`KeyMetrics::snapshot`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Status classes counted: `1xx`..`5xx`, and `error` for requests answered by skiff's rescue
/// layer (no response from a backend).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Metrics of one routing key.
#[derive(Debug, Default)]
pub struct KeyMetrics {
    classes: [AtomicU64; 6],
    buckets: [AtomicU64; 12],
    latency_micros: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of one key's metrics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMetricsSnapshot {
    /// Requests by class (`2xx`, ..., `error`).
    pub requests: BTreeMap<String, u64>,
    /// Cumulative counts per latency bucket (upper bound in seconds, then `+Inf`).
    pub latency_buckets: Vec<(String, u64)>,
    /// Sum of latencies, in seconds.
    pub latency_sum_seconds: f64,
    /// Request body bytes from clients.
    pub bytes_in: u64,
    /// Response body bytes to clients.
    pub bytes_out: u64,
}

impl KeyMetrics {
    /// Counts a response head of `status` (None: rescued) after `latency`.
    pub fn record(&self, status: Option<u16>, latency: Duration) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => 5,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts request body bytes.
    pub fn add_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts response body bytes.
    pub fn add_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A copy.
    pub fn snapshot(&self) -> KeyMetricsSnapshot {
        let mut cumulative = 0;
        let mut latency_buckets = Vec::new();
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "+Inf".into());
            latency_buckets.push((le, cumulative));
        }
        KeyMetricsSnapshot {
            requests: CLASSES
                .iter()
                .zip(&self.classes)
                .map(|(c, n)| (c.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
            latency_buckets,
            latency_sum_seconds: self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Metrics of every key that carried HTTP at this router.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    keys: std::sync::Mutex<BTreeMap<String, Arc<KeyMetrics>>>,
}

impl HttpMetrics {
    /// The metrics of `key`, made on first use.
    pub fn key(&self, key: &str) -> Arc<KeyMetrics> {
        self.keys
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Every key's metrics, by key.
    pub fn snapshot(&self) -> BTreeMap<String, KeyMetricsSnapshot> {
        self.keys
            .lock()
            .unwrap()
            .iter()
            .map(|(k, m)| (k.clone(), m.snapshot()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_buckets() {
        let m = HttpMetrics::default();
        let k = m.key("web");
        k.record(Some(200), Duration::from_millis(3));
        k.record(Some(204), Duration::from_millis(30));
        k.record(Some(503), Duration::from_secs(20));
        k.record(None, Duration::from_millis(1));
        k.add_in(10);
        k.add_out(2048);
        let s = &m.snapshot()["web"];
        assert_eq!(s.requests["2xx"], 2);
        assert_eq!(s.requests["5xx"], 1);
        assert_eq!(s.requests["error"], 1);
        // Cumulative: <=1ms: 1, <=5ms: 2, <=50ms: 3, +Inf: 4.
        let at = |le: &str| s.latency_buckets.iter().find(|(l, _)| l == le).unwrap().1;
        assert_eq!(
            (at("0.001"), at("0.005"), at("0.05"), at("+Inf")),
            (1, 2, 3, 4)
        );
    }
}
