//! Per-link families of `/metrics`: links by status, and per link whether it is up, its bytes
//! each way, its round trip (last value and a histogram of samples) and how often it came up.
//!
//! Per-link labels: `link` (its name), `peer` (the peer site's name, else its id),
//! `link_direction` (outbound: this site dials; inbound: the peer dialed) and `transport`
//! (quic|tls, empty before the first connection). The bytes family adds `direction`
//! (sent|received), which is why the link's own direction is `link_direction`. Two entries with the same labels (an inbound link from a restarted peer
//! while its old connection is still being declared dead) are one series: bytes and `ups`
//! summed, up if either is, so a counter never goes down (see the router's link table).

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use skiff_router::link::{Direction, LinkState, LinkStatus, RttHistogram};

use super::samples;

/// The words of a link's state in labels.
fn status(l: &LinkStatus) -> &'static str {
    match l.state {
        LinkState::Up => "up",
        LinkState::Connecting { .. } => "connecting",
        LinkState::Refused { .. } => "refused",
    }
}

/// The label values of one link series: link, peer, direction, transport.
type LinkLabels = [(&'static str, String); 4];

/// One link series: the entries with the same labels added up.
#[derive(Default)]
struct Series {
    up: bool,
    sent: u64,
    received: u64,
    ups: u64,
    rtt_seconds: Option<f64>,
    rtt: RttHistogram,
}

fn labels(l: &LinkStatus) -> LinkLabels {
    let peer = l
        .peer_site_name
        .clone()
        .or_else(|| l.peer_site_id.map(|id| id.to_string()))
        .unwrap_or_default();
    let direction = match l.direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    [
        ("link", l.name.clone()),
        ("peer", peer),
        ("link_direction", direction.to_string()),
        (
            "transport",
            l.transport.map(|t| t.to_string()).unwrap_or_default(),
        ),
    ]
}

fn series(links: &[LinkStatus]) -> BTreeMap<LinkLabels, Series> {
    let mut out: BTreeMap<LinkLabels, Series> = BTreeMap::new();
    for l in links {
        let s = out.entry(labels(l)).or_default();
        let up = l.state == LinkState::Up;
        s.up |= up;
        s.sent += l.bytes_sent;
        s.received += l.bytes_received;
        s.ups += l.ups;
        if up && l.rtt_ms.is_some() {
            s.rtt_seconds = l.rtt_ms.map(|ms| ms / 1000.0);
        }
        s.rtt.merge(&l.rtt_samples);
    }
    out
}

/// Writes the link families.
pub(super) fn encode(
    links: &[LinkStatus],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let count = |want: &str| links.iter().filter(|l| status(l) == want).count() as u64;
    samples(
        encoder,
        "skiff_links",
        "Links of this site by status.",
        MetricType::Gauge,
        ["up", "connecting", "refused"].map(|s| ([("status", s)], count(s))),
    )?;
    let series = series(links);
    samples(
        encoder,
        "skiff_link_up",
        "1 while the link is up, else 0.",
        MetricType::Gauge,
        series.iter().map(|(l, s)| (l.clone(), u64::from(s.up))),
    )?;
    samples(
        encoder,
        "skiff_link_bytes",
        "Bytes on the link since this site started, by direction (sent|received): QUIC UDP \
         payload bytes, or yamux bytes through the TLS stream on TLS/TCP.",
        MetricType::Counter,
        series.iter().flat_map(|(l, s)| {
            let with = |d: &'static str| {
                let mut labels = l.to_vec();
                labels.push(("direction", d.to_string()));
                labels
            };
            [(with("sent"), s.sent), (with("received"), s.received)]
        }),
    )?;
    samples(
        encoder,
        "skiff_link_ups",
        "Times the link came up since this site started.",
        MetricType::Counter,
        series.iter().map(|(l, s)| (l.clone(), s.ups)),
    )?;
    samples(
        encoder,
        "skiff_link_rtt_seconds",
        "Round trip to the peer while the link is up (QUIC: quinn's estimate; TLS/TCP: the \
         last keepalive round trip).",
        MetricType::Gauge,
        series
            .iter()
            .filter_map(|(l, s)| Some((l.clone(), s.rtt_seconds?))),
    )?;
    let mut metric = encoder.encode_descriptor(
        "skiff_link_rtt_samples_seconds",
        "Round-trip samples, one per keepalive interval (1 s) while the link is up.",
        None,
        MetricType::Histogram,
    )?;
    for (l, s) in &series {
        if s.rtt.buckets.is_empty() {
            continue;
        }
        // Counts per bucket, as prometheus-client takes them (it sums them itself).
        metric
            .encode_family(&l.to_vec())?
            .encode_histogram::<NoLabelSet>(
                s.rtt.sum_seconds,
                s.rtt.count(),
                &s.rtt.buckets,
                None,
            )?;
    }
    Ok(())
}
