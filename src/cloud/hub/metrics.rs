//! The hub's `/metrics`: per site, whether its link is up, how far its
//! acknowledged revision lags the desired one, when it was last seen and
//! the bytes its link carried. Read from `Sites` on each scrape.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::sites::{SiteFigures, Sites};

/// The hub's registry.
pub struct HubExporter {
    registry: Registry,
}

impl HubExporter {
    pub fn new(sites: Arc<Sites>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Live { sites }));
        Self { registry }
    }
}

impl crate::metrics::Render for HubExporter {
    fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct Live {
    sites: Arc<Sites>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hub sites")
    }
}

/// One sample per site of `value`, under `name`.
fn per_site<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    rows: &[SiteFigures],
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&SiteFigures) -> M,
) -> Result<(), fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for row in rows {
        let labels = [("site", row.site.as_str())];
        value(row).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let rows = self.sites.link_figures();
        let connected = rows.iter().filter(|r| r.connected).count();
        let g = ConstGauge::new(connected as i64);
        g.encode(e.encode_descriptor(
            "gantry_hub_sites_connected",
            "Sites whose link is up",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(rows.len() as i64);
        g.encode(e.encode_descriptor(
            "gantry_hub_sites",
            "Sites this hub knows",
            None,
            g.metric_type(),
        )?)?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_connected",
            "1 while the site's link is up",
            MetricType::Gauge,
            |r| ConstGauge::new(i64::from(r.connected)),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_desired_revision",
            "The site's desired revision on this hub",
            MetricType::Gauge,
            |r| ConstGauge::new(r.desired_revision as i64),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_acked_revision",
            "The last revision the site said it committed",
            MetricType::Gauge,
            |r| ConstGauge::new(r.acked_revision as i64),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_revision_lag",
            "Desired revisions the site has not acknowledged yet",
            MetricType::Gauge,
            |r| ConstGauge::new(r.desired_revision.saturating_sub(r.acked_revision) as i64),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_last_seen_timestamp_seconds",
            "When the site's last link ended (0: never, or connected since the hub started)",
            MetricType::Gauge,
            |r| ConstGauge::new(r.last_seen_ms as f64 / 1000.0),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_link_received_bytes",
            "gRPC message bytes received from the site since the hub started",
            MetricType::Counter,
            |r| ConstCounter::new(r.bytes_in),
        )?;
        per_site(
            &mut e,
            &rows,
            "gantry_hub_site_link_sent_bytes",
            "gRPC message bytes sent to the site since the hub started",
            MetricType::Counter,
            |r| ConstCounter::new(r.bytes_out),
        )?;
        Ok(())
    }
}
