//! Prometheus metrics (prometheus-client): a report built at scrape time from the controller's
//! snapshot and the maps (never the controller itself), and a probe round-trip-time histogram
//! per backend fed by the health checks. A scrape that cannot read the counters answers 500;
//! the body is OpenMetrics when the scraper accepts it, Prometheus text 0.0.4 otherwise.

//!
//! `encode` turns a report into metric families, `text` converts OpenMetrics to Prometheus
//! text 0.0.4, `server` answers the scrapes.

mod encode;
mod server;
mod text;

pub use server::{bind, serve};
pub use text::to_prometheus_text;

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::report::StatsReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

pub type ProbeRtt = Family<BackendLabels, Histogram>;

/// What the probing tasks record: round-trip times per backend, and how late each probe
/// started after its scheduled time (a stalled runtime shows there first).
#[derive(Clone)]
pub struct ProbeMetrics {
    pub rtt: ProbeRtt,
    pub lateness: Histogram,
}

impl ProbeMetrics {
    pub fn new() -> Self {
        ProbeMetrics {
            // 0.1 ms .. ~1.6 s
            rtt: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 15))
            }),
            lateness: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        }
    }
}

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// The registry and the slot the collector reads the current scrape's report from.
pub struct Metrics {
    registry: Registry,
    report: Arc<Mutex<Option<StatsReport>>>,
    /// One scrape at a time (the report slot is shared).
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(probes: &ProbeMetrics) -> Self {
        let report = Arc::new(Mutex::new(None));
        let mut registry = Registry::default();
        registry.register(
            "wklb_probe_rtt_seconds",
            "Health probe round-trip time",
            probes.rtt.clone(),
        );
        registry.register(
            "wklb_probe_start_lateness_seconds",
            "How late health probes started after their scheduled time",
            probes.lateness.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::logging::VERSION.into(),
                commit: crate::logging::COMMIT.into(),
            })
            .set(1);
        registry.register(
            "wklb_build_info",
            "The running wklb's version and commit (always 1)",
            build,
        );
        registry.register_collector(Box::new(encode::ReportCollector {
            report: report.clone(),
        }));
        Metrics {
            registry,
            report,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The OpenMetrics text of `report`.
    fn encode(&self, report: StatsReport) -> Result<String, std::fmt::Error> {
        *self.report.lock().map_err(|_| std::fmt::Error)? = Some(report);
        let mut text = String::new();
        let r = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        *self.report.lock().map_err(|_| std::fmt::Error)? = None;
        r.map(|()| text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_encodes_with_every_family() {
        let m = Metrics::new(&ProbeMetrics::new());
        let mut r = StatsReport::default();
        r.reasons.insert("forwarded".into(), 7);
        r.interfaces.push(crate::dataplane::links::Attachment {
            interface: "eth0".into(),
            mode: "driver".into(),
        });
        let text = m.encode(r).unwrap();
        assert!(
            text.contains("wklb_packets_total{reason=\"forwarded\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("wklb_xdp_attached{interface=\"eth0\",mode=\"driver\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.contains(&format!(
                "wklb_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                crate::logging::VERSION,
                crate::logging::COMMIT
            )),
            "{text}"
        );
    }
}
