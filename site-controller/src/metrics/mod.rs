//! `GET /metrics`: the site's Prometheus text, encoded by prometheus-client from snapshots the
//! router keeps (lock-free counters on the hot paths; nothing here runs per packet).
//!
//! One [`Collector`] per scrape reads the router and writes the families: this file holds the
//! site-wide ones (`skiff_info`), [`links`] the per-link ones, [`flows`] the per-key ones and
//! [`udp`] the per-key UDP datagram ones.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::run::SiteState;

mod flows;
mod links;
mod udp;

/// What a scrape reads, copied out of the router first so no lock is held while encoding.
#[derive(Debug)]
struct Scrape {
    site: String,
    links: Vec<skiff_router::link::LinkStatus>,
    http: std::collections::BTreeMap<String, skiff_router::flow::KeyMetricsSnapshot>,
    flows: Vec<skiff_router::flow::FlowKeyStats>,
    listeners: Vec<skiff_router::flow::ListenerStatus>,
    connectors: Vec<skiff_router::flow::ConnectorStatus>,
    udp: Vec<skiff_router::flow::UdpKeyStats>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = prometheus_client::metrics::info::Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("site", self.site.clone()),
        ]);
        let e =
            encoder.encode_descriptor("skiff", "Build information.", None, info.metric_type())?;
        info.encode(e)?;
        links::encode(&self.links, &mut encoder)?;
        flows::encode_flows(&self.flows, &mut encoder)?;
        flows::encode_status(&self.listeners, &self.connectors, &mut encoder)?;
        flows::encode_http(&self.http, &mut encoder)?;
        udp::encode(&self.udp, &mut encoder)?;
        Ok(())
    }
}

/// The Prometheus text (format 0.0.4) of `state`.
pub fn render(state: &SiteState) -> String {
    let router = state.router();
    let scrape = Scrape {
        site: state.site_name().to_string(),
        links: router.links(),
        http: router.http_metrics(),
        flows: router.flow_stats(),
        listeners: router.listeners(),
        connectors: router.connectors(),
        udp: router.udp_stats(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail; a collector's own error would leave a partial answer.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(cause = %e, "metrics encoding failed");
    }
    out
}

/// Writes one counter or gauge sample per `(labels, value)` under `name`.
pub(crate) fn samples<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut m = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => {
                m.encode_counter::<prometheus_client::encoding::NoLabelSet, V, f64>(&value, None)?
            }
            _ => m.encode_gauge(&value)?,
        }
    }
    Ok(())
}
