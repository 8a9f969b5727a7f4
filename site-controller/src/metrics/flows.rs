//! Per-key families of `/metrics`: HTTP requests by status class, their latency and body bytes.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use skiff_router::flow::KeyMetricsSnapshot;

use super::samples;

/// Writes `skiff_http_requests_total`, `skiff_http_request_duration_seconds` and
/// `skiff_http_bytes_total`.
pub(super) fn encode_http(
    http: &BTreeMap<String, KeyMetricsSnapshot>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    samples(
        encoder,
        "skiff_http_requests",
        "HTTP requests by routing key and status class (error: answered by skiff).",
        MetricType::Counter,
        http.iter().flat_map(|(key, m)| {
            m.requests
                .iter()
                .map(move |(class, n)| ([("key", key.as_str()), ("class", class.as_str())], *n))
        }),
    )?;
    let mut metric = encoder.encode_descriptor(
        "skiff_http_request_duration_seconds",
        "Time to the response head.",
        None,
        MetricType::Histogram,
    )?;
    for (key, m) in http {
        let buckets: Vec<(f64, u64)> = m
            .latency_buckets
            .iter()
            .map(|(le, n)| (le.parse().unwrap_or(f64::INFINITY), *n))
            .collect();
        let count = buckets.last().map(|(_, n)| *n).unwrap_or(0);
        metric
            .encode_family(&[("key", key.as_str())])?
            .encode_histogram::<NoLabelSet>(
                m.latency_sum_seconds,
                count,
                &per_bucket(&buckets),
                None,
            )?;
    }
    samples(
        encoder,
        "skiff_http_bytes",
        "HTTP body bytes by direction (in: from clients).",
        MetricType::Counter,
        http.iter().flat_map(|(key, m)| {
            [
                ([("key", key.as_str()), ("direction", "in")], m.bytes_in),
                ([("key", key.as_str()), ("direction", "out")], m.bytes_out),
            ]
        }),
    )
}

/// prometheus-client takes a count per bucket and sums them itself; our snapshots are
/// cumulative already.
pub(super) fn per_bucket(cumulative: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut before = 0;
    cumulative
        .iter()
        .map(|(le, n)| {
            let own = n.saturating_sub(before);
            before = *n;
            (*le, own)
        })
        .collect()
}
