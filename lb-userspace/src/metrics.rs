//! Prometheus metrics (prometheus-client): kernel counters read at scrape time through a
//! collector, and a probe round-trip-time histogram per backend fed by the health checks.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::ConstCounter,
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{controller::Controller, report::StatsReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

pub type ProbeRtt = Family<BackendLabels, Histogram>;

pub fn probe_rtt_family() -> ProbeRtt {
    // 0.1 ms .. ~1.6 s
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 15)))
}

/// Reads the data plane's counters on every scrape.
#[derive(Debug)]
struct KernelCollector {
    ctl: Arc<Mutex<Controller>>,
}

impl KernelCollector {
    fn snapshot(&self) -> Option<StatsReport> {
        let ctl = self.ctl.lock().ok()?;
        match ctl.stats() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("metrics: reading counters failed: {e:#}");
                None
            }
        }
    }
}

fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.snapshot() else {
            return Ok(());
        };
        let bl = |b: &crate::report::BackendReport| BackendLabels {
            vip: b.vip.clone(),
            backend: format!("{}:{}", b.address, b.port),
        };
        counter_family(
            &mut enc,
            "wklb_backend_packets_in",
            "Packets client -> backend",
            s.backends.iter().map(|b| (bl(b), b.packets_in)),
        )?;
        counter_family(
            &mut enc,
            "wklb_backend_bytes_in",
            "L3 bytes client -> backend",
            s.backends.iter().map(|b| (bl(b), b.bytes_in)),
        )?;
        counter_family(
            &mut enc,
            "wklb_backend_packets_out",
            "Packets backend -> client",
            s.backends.iter().map(|b| (bl(b), b.packets_out)),
        )?;
        counter_family(
            &mut enc,
            "wklb_backend_bytes_out",
            "L3 bytes backend -> client",
            s.backends.iter().map(|b| (bl(b), b.bytes_out)),
        )?;
        counter_family(
            &mut enc,
            "wklb_backend_new_flows",
            "Flows created toward the backend",
            s.backends.iter().map(|b| (bl(b), b.new_flows)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_backend_active_flows",
            "Flows in the connection table (as of the last expiry pass)",
            s.backends.iter().map(|b| (bl(b), b.active_flows as i64)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_backend_healthy",
            "1 when the backend passes its health check",
            s.backends.iter().map(|b| (bl(b), b.healthy as i64)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_backend_weight",
            "Current weight (0 = drained)",
            s.backends.iter().map(|b| (bl(b), b.weight as i64)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_backend_in_table",
            "1 when the backend is in the VIP's live Maglev table",
            s.backends.iter().map(|b| (bl(b), b.in_table as i64)),
        )?;
        let vl = |name: &str| VipLabels {
            vip: name.to_string(),
        };
        gauge_family(
            &mut enc,
            "wklb_vip_fail_open",
            "1 when every backend of the VIP fails its health check and all are kept (fail-open)",
            s.vips.iter().map(|v| (vl(&v.name), v.fail_open as i64)),
        )?;
        counter_family(
            &mut enc,
            "wklb_vip_packets",
            "Packets client -> VIP",
            s.vips.iter().map(|v| (vl(&v.name), v.packets)),
        )?;
        counter_family(
            &mut enc,
            "wklb_vip_new_flows",
            "Flows created for the VIP",
            s.vips.iter().map(|v| (vl(&v.name), v.new_flows)),
        )?;
        counter_family(
            &mut enc,
            "wklb_vip_no_backend_drops",
            "Packets dropped for want of a backend",
            s.vips.iter().map(|v| (vl(&v.name), v.no_backend_drops)),
        )?;
        counter_family(
            &mut enc,
            "wklb_packets",
            "Every packet the XDP program saw, by verdict reason",
            s.reasons
                .iter()
                .map(|(r, v)| (ReasonLabels { reason: r.clone() }, *v)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_flows",
            "Entries in the connection table",
            std::iter::once((Vec::<(String, String)>::new(), s.flows as i64)),
        )?;
        gauge_family(
            &mut enc,
            "wklb_flows_max",
            "Capacity of the connection table",
            std::iter::once((Vec::<(String, String)>::new(), s.max_flows as i64)),
        )?;
        counter_family(
            &mut enc,
            "wklb_flows_expired",
            "Flows removed by idle expiry",
            std::iter::once((Vec::<(String, String)>::new(), s.expired_flows_total)),
        )?;
        Ok(())
    }
}

/// The registry: kernel counters plus the probe RTT histograms.
pub fn registry(ctl: Arc<Mutex<Controller>>, rtt: ProbeRtt) -> Registry {
    let mut r = Registry::default();
    r.register(
        "wklb_probe_rtt_seconds",
        "Health probe round-trip time",
        rtt,
    );
    r.register_collector(Box::new(KernelCollector { ctl }));
    r
}

/// Binds the metrics listener (at startup, so a bad address stops the daemon right away).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr} (daemon.metrics_listen)"))
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        let mut text = String::new();
                        match prometheus_client::encoding::text::encode(&mut text, &registry) {
                            Ok(()) => (200, text),
                            Err(_) => (500, "encoding failed\n".to_string()),
                        }
                    } else {
                        (404, "only /metrics is served here\n".to_string())
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("metrics connection: {e}");
            }
        });
    }
}
