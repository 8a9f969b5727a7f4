//! Per-key families of `/metrics`: flows by role and outcome, running flows, bytes each way,
//! flow durations and setup times; listener and connector status; and HTTP requests by status
//! class, their latency and body bytes.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use skiff_router::flow::{
    ConnectorStatus, FlowKeyStats, FlowRole, HistogramSnapshot, KeyMetricsSnapshot, ListenerStatus,
    ResourceState,
};

use super::samples;

fn role(r: FlowRole) -> &'static str {
    r.as_str()
}

/// Every status a listener or connector may have, in labels.
const STATUSES: [(ResourceState, &str); 4] = [
    (ResourceState::Active, "active"),
    (ResourceState::NoTarget, "no-target"),
    (ResourceState::Failing, "failing"),
    (ResourceState::Error, "error"),
];

/// Writes `skiff_flows_total`, `skiff_flows_active`, `skiff_flow_bytes_total`,
/// `skiff_flow_duration_seconds` and `skiff_flow_setup_seconds`.
pub(super) fn encode_flows(
    stats: &[FlowKeyStats],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    samples(
        encoder,
        "skiff_flows",
        "Flows that ended at this site, by routing key, this site's role and outcome.",
        MetricType::Counter,
        stats.iter().flat_map(|s| {
            s.flows.iter().map(move |(r, outcome, n)| {
                (
                    [
                        ("key", s.key.as_str()),
                        ("role", role(*r)),
                        ("outcome", outcome.as_str()),
                    ],
                    *n,
                )
            })
        }),
    )?;
    samples(
        encoder,
        "skiff_flows_active",
        "Flows running through this site now, by routing key and role.",
        MetricType::Gauge,
        stats.iter().flat_map(|s| {
            s.active
                .iter()
                .map(move |(r, n)| ([("key", s.key.as_str()), ("role", role(*r))], *n))
        }),
    )?;
    samples(
        encoder,
        "skiff_flow_bytes",
        "Flow bytes through this site by routing key, this site's role and direction \
         (forward: client to backend), running flows included.",
        MetricType::Counter,
        stats.iter().flat_map(|s| {
            s.bytes.iter().flat_map(move |(r, forward, back)| {
                [("forward", *forward), ("back", *back)].map(|(direction, n)| {
                    (
                        [
                            ("key", s.key.as_str()),
                            ("role", role(*r)),
                            ("direction", direction),
                        ],
                        n,
                    )
                })
            })
        }),
    )?;
    histogram(
        encoder,
        "skiff_flow_duration_seconds",
        "How long connected flows lasted at this site (any role), by routing key.",
        stats.iter().map(|s| (s.key.as_str(), &s.duration)),
    )?;
    histogram(
        encoder,
        "skiff_flow_setup_seconds",
        "At the ingress: from accepting a client to the egress's ok (or the local backend's \
         connect), by routing key.",
        stats
            .iter()
            .filter(|s| s.setup.count > 0)
            .map(|s| (s.key.as_str(), &s.setup)),
    )
}

fn histogram<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    per_key: impl Iterator<Item = (&'a str, &'a HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (key, h) in per_key {
        metric
            .encode_family(&[("key", key)])?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
    }
    Ok(())
}

/// Writes `skiff_listener_status` and `skiff_connector_status`: 1 for each one's current
/// status, 0 for the others.
pub(super) fn encode_status(
    listeners: &[ListenerStatus],
    connectors: &[ConnectorStatus],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    samples(
        encoder,
        "skiff_listener_status",
        "Listeners of this site: 1 for the current status (active, no-target, error).",
        MetricType::Gauge,
        listeners.iter().flat_map(|l| {
            STATUSES
                .iter()
                .filter(|(s, _)| *s != ResourceState::Failing)
                .map(move |(s, word)| {
                    (
                        [
                            ("listener", l.name.as_str()),
                            ("key", l.routing_key.as_str()),
                            ("status", *word),
                        ],
                        u64::from(l.status == *s),
                    )
                })
        }),
    )?;
    samples(
        encoder,
        "skiff_connector_status",
        "Connectors of this site: 1 for the current status (active, failing, error).",
        MetricType::Gauge,
        connectors.iter().flat_map(|c| {
            STATUSES
                .iter()
                .filter(|(s, _)| *s != ResourceState::NoTarget)
                .map(move |(s, word)| {
                    (
                        [
                            ("connector", c.name.as_str()),
                            ("key", c.routing_key.as_str()),
                            ("status", *word),
                        ],
                        u64::from(c.status == *s),
                    )
                })
        }),
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use skiff_router::flow::FlowOutcome;

    struct Families(BTreeMap<String, KeyMetricsSnapshot>, Vec<FlowKeyStats>);

    impl std::fmt::Debug for Families {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Families")
        }
    }

    impl Collector for Families {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_flows(&self.1, &mut encoder)?;
            encode_http(&self.0, &mut encoder)
        }
    }

    fn text(f: Families) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(f));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn http_and_flow_families_in_prometheus_text() {
        let http = KeyMetricsSnapshot {
            requests: [("2xx".to_owned(), 2), ("error".to_owned(), 1)].into(),
            latency_buckets: vec![("0.001".into(), 1), ("0.005".into(), 2), ("+Inf".into(), 4)],
            latency_sum_seconds: 20.5,
            bytes_in: 10,
            bytes_out: 2048,
        };
        let flows = FlowKeyStats {
            key: "redis".into(),
            flows: vec![
                (FlowRole::Ingress, FlowOutcome::Ok, 5),
                (FlowRole::Ingress, FlowOutcome::ConnectRefused, 1),
            ],
            active: vec![(FlowRole::Ingress, 2)],
            bytes: vec![(FlowRole::Ingress, 700, 900), (FlowRole::Egress, 700, 900)],
            duration: HistogramSnapshot {
                buckets: vec![(0.1, 4), (f64::INFINITY, 1)],
                sum_seconds: 3.0,
                count: 5,
            },
            setup: HistogramSnapshot {
                buckets: vec![(0.001, 5), (f64::INFINITY, 0)],
                sum_seconds: 0.002,
                count: 5,
            },
        };
        let text = text(Families([("web".to_owned(), http)].into(), vec![flows]));
        for want in [
            "skiff_http_requests_total{key=\"web\",class=\"2xx\"} 2",
            "skiff_http_request_duration_seconds_count{key=\"web\"} 4",
            "skiff_http_request_duration_seconds_bucket{le=\"0.005\",key=\"web\"} 2",
            "skiff_http_bytes_total{key=\"web\",direction=\"out\"} 2048",
            "skiff_flows_total{key=\"redis\",role=\"ingress\",outcome=\"ok\"} 5",
            "skiff_flows_total{key=\"redis\",role=\"ingress\",outcome=\"connect-refused\"} 1",
            "skiff_flows_active{key=\"redis\",role=\"ingress\"} 2",
            "skiff_flow_bytes_total{key=\"redis\",role=\"ingress\",direction=\"forward\"} 700",
            "skiff_flow_bytes_total{key=\"redis\",role=\"ingress\",direction=\"back\"} 900",
            "skiff_flow_bytes_total{key=\"redis\",role=\"egress\",direction=\"forward\"} 700",
            "skiff_flow_duration_seconds_count{key=\"redis\"} 5",
            "skiff_flow_duration_seconds_bucket{le=\"0.1\",key=\"redis\"} 4",
            "skiff_flow_duration_seconds_bucket{le=\"+Inf\",key=\"redis\"} 5",
            "skiff_flow_setup_seconds_count{key=\"redis\"} 5",
        ] {
            assert!(text.contains(want), "no {want} in:\n{text}");
        }
    }
}
