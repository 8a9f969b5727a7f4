//! Per-key UDP families of `/metrics`: datagrams this site passed on each way by its role,
//! datagrams that went whole on a flow's stream because a QUIC datagram was too small
//! (oversize), and datagrams dropped inside skiff by reason (docs/udp.md says what each reason
//! means and what to do).
//!
//! Labels: `key` (`""` for drops that belong to no key, e.g. a datagram arriving on a
//! link for a flow that had ended), `role` (ingress|transit|egress) and `direction`
//! (forward: towards the backend; back: towards the client). Every drop reason is written for
//! every key the router reports, zeros included, so a rate over a reason exists before the
//! first drop.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use skiff_router::flow::{UdpDropReason, UdpKeyStats};

use super::samples;

/// Writes `skiff_udp_datagrams_total`, `skiff_udp_oversize_total` and
/// `skiff_udp_dropped_total` (the encoder adds `_total` to counters).
pub(super) fn encode(
    stats: &[UdpKeyStats],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    samples(
        encoder,
        "skiff_udp_datagrams",
        "UDP datagrams this site passed on, by routing key, this site's role in their flows \
         and direction (forward: client to backend; at the egress, those sent to the backend; \
         back: at the ingress, those sent to the client).",
        MetricType::Counter,
        stats.iter().flat_map(|s| {
            s.forward
                .iter()
                .map(move |(role, n)| (s.key.as_str(), role.as_str(), "forward", *n))
                .chain(
                    s.back
                        .iter()
                        .map(move |(role, n)| (s.key.as_str(), role.as_str(), "back", *n)),
                )
                .map(|(key, role, direction, n)| {
                    ([("key", key), ("role", role), ("direction", direction)], n)
                })
        }),
    )?;
    samples(
        encoder,
        "skiff_udp_oversize",
        "UDP datagrams that went whole as frames on their flow's stream over a QUIC link, \
         because a QUIC datagram on that path was too small for them, by routing key.",
        MetricType::Counter,
        stats
            .iter()
            .map(|s| ([("key", s.key.as_str())], s.oversize)),
    )?;
    samples(
        encoder,
        "skiff_udp_dropped",
        "UDP datagrams dropped at this site, by routing key (\"\" for those of no flow) and \
         reason (no-route, flow-limit, congested, closed, too-large, socket-error, no-flow, \
         socket-buffer; docs/udp.md).",
        MetricType::Counter,
        stats.iter().flat_map(|s| {
            UdpDropReason::ALL.into_iter().map(move |reason| {
                let n = s
                    .dropped
                    .iter()
                    .filter(|(r, _)| *r == reason)
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                ([("key", s.key.as_str()), ("reason", reason.as_str())], n)
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use skiff_router::flow::FlowRole;

    #[derive(Debug)]
    struct Udp(Vec<UdpKeyStats>);

    impl Collector for Udp {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode(&self.0, &mut encoder)
        }
    }

    fn text(stats: Vec<UdpKeyStats>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Udp(stats)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn udp_families_in_prometheus_text() {
        let out = text(vec![
            UdpKeyStats {
                key: String::new(),
                dropped: vec![(UdpDropReason::NoFlow, 3)],
                ..Default::default()
            },
            UdpKeyStats {
                key: "dns".into(),
                forward: vec![(FlowRole::Ingress, 10_000), (FlowRole::Transit, 9_990)],
                back: vec![(FlowRole::Ingress, 9_980)],
                oversize: 2,
                dropped: vec![
                    (UdpDropReason::Congested, 7),
                    (UdpDropReason::SocketBuffer, 3),
                ],
            },
        ]);
        for line in [
            "# TYPE skiff_udp_datagrams counter",
            r#"skiff_udp_datagrams_total{key="dns",role="ingress",direction="forward"} 10000"#,
            r#"skiff_udp_datagrams_total{key="dns",role="transit",direction="forward"} 9990"#,
            r#"skiff_udp_datagrams_total{key="dns",role="ingress",direction="back"} 9980"#,
            "# TYPE skiff_udp_oversize counter",
            r#"skiff_udp_oversize_total{key="dns"} 2"#,
            "# TYPE skiff_udp_dropped counter",
            r#"skiff_udp_dropped_total{key="dns",reason="congested"} 7"#,
            r#"skiff_udp_dropped_total{key="dns",reason="socket-buffer"} 3"#,
            r#"skiff_udp_dropped_total{key="dns",reason="no-route"} 0"#,
            r#"skiff_udp_dropped_total{key="",reason="no-flow"} 3"#,
            r#"skiff_udp_dropped_total{key="",reason="flow-limit"} 0"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in:\n{out}");
        }
        // Every reason for every key, no role the router did not report.
        let dropped = out
            .lines()
            .filter(|l| l.starts_with("skiff_udp_dropped_total"))
            .count();
        assert_eq!(dropped, 2 * UdpDropReason::ALL.len(), "{out}");
        assert!(!out.contains(r#"role="egress""#), "{out}");
        // Nothing to report: the descriptors, no samples.
        let empty = text(vec![]);
        assert!(
            !empty.lines().any(|l| l.starts_with("skiff_udp")),
            "{empty}"
        );
    }
}
