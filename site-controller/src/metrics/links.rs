//! Per-link families of `/metrics`: links by status, and per link its state.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use skiff_router::link::{LinkState, LinkStatus};

use super::samples;

/// The words of a link's state in labels.
fn status(l: &LinkStatus) -> &'static str {
    match l.state {
        LinkState::Up => "up",
        LinkState::Connecting { .. } => "connecting",
        LinkState::Refused { .. } => "refused",
    }
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
    )
}
