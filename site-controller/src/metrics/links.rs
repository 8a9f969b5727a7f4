//! Per-link families of `/metrics`: links by status, and per link whether it is up, its bytes
//! each way, its round trip (last value and a histogram of samples) and how often it came up.
//!
//! Per-link labels, fixed for the link's life so no series changes its labels or starts over:
//! `link` (its name), `peer` (outbound: the peer site name of the link's configuration, its id
//! when the link file names none; inbound: the name the peer gave when it was accepted) and
//! `link_direction` (outbound: this site dials; inbound: the peer dialed). The bytes family
//! adds `direction` (sent|received), which is why the link's own direction is
//! `link_direction`. The transport is not a label of these: `skiff_link_transport` (1 per
//! link and transport of its current or last connection) says it, so a QUIC→TLS fallback
//! does not start new counter series. Entries with the same labels (two sites of one name;
//! an inbound link from a restarted peer while its old connection is still being declared
//! dead) are one series: bytes, `ups` and samples summed, up if either is; the router's link
//! table carries a removed entry's totals to the next with the same labels, so a counter
//! never goes down while the site runs.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use skiff_router::link::{Direction, LinkState, LinkStatus, RttHistogram, Transport};

use super::samples;

/// The words of a link's state in labels.
fn status(l: &LinkStatus) -> &'static str {
    match l.state {
        LinkState::Up => "up",
        LinkState::Connecting { .. } => "connecting",
        LinkState::Refused { .. } => "refused",
        LinkState::Closing { .. } => "closing",
    }
}

/// The label values of one link series: link, peer, direction.
type LinkLabels = [(&'static str, String); 3];

/// One link series: the entries with the same labels added up.
#[derive(Default)]
struct Series {
    up: bool,
    sent: u64,
    received: u64,
    ups: u64,
    rtt_seconds: Option<f64>,
    rtt: RttHistogram,
    /// Transports of the entries' current or last connections.
    transports: BTreeSet<&'static str>,
}

fn labels(l: &LinkStatus) -> LinkLabels {
    let (name, direction, peer) = l.metric_key();
    let direction = match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    };
    [
        ("link", name),
        ("peer", peer),
        ("link_direction", direction.to_string()),
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
        if let Some(t) = l.transport {
            s.transports.insert(match t {
                Transport::Quic => "quic",
                Transport::Tls => "tls",
            });
        }
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
        ["up", "connecting", "refused", "closing"].map(|s| ([("status", s)], count(s))),
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
        "skiff_link_transport",
        "1 for the transport (quic|tls) of the link's current connection, or of its last one \
         while it is down; absent before the first connection.",
        MetricType::Gauge,
        series.iter().flat_map(|(l, s)| {
            s.transports.iter().map(|t| {
                let mut labels = l.to_vec();
                labels.push(("transport", t.to_string()));
                (labels, 1u64)
            })
        }),
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
