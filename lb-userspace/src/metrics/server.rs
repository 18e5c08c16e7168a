//! The /metrics HTTP endpoint (hyper): one scrape at a time, OpenMetrics when the scraper
//! accepts it, Prometheus text otherwise, 500 when the counters cannot be read.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};

use super::{Metrics, to_prometheus_text};
use crate::ctx::Ctx;

/// Binds the metrics listener (at startup, so a bad address stops the daemon right away).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr} (daemon.metrics_listen)"))
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ctx: Arc<Ctx>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, ctx) = (metrics.clone(), ctx.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, ctx) = (metrics.clone(), ctx.clone());
                async move { respond(&req, &metrics, &ctx).await }
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

async fn respond(
    req: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    ctx: &Ctx,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    if req.uri().path() != "/metrics" {
        return text(
            404,
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".into(),
        );
    }
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        });
    let _one = metrics.scrape.lock().await;
    let report = match ctx.stats().await {
        Ok(r) => r,
        Err(e) => {
            warn!("metrics: reading the counters failed: {e:#}");
            return text(
                500,
                "text/plain; charset=utf-8",
                format!("reading the counters failed: {e:#}\n"),
            );
        }
    };
    match metrics.encode(report) {
        Ok(body) if openmetrics => text(200, OPENMETRICS, body),
        Ok(body) => text(200, PROMETHEUS_TEXT, to_prometheus_text(&body)),
        Err(_) => text(500, "text/plain; charset=utf-8", "encoding failed\n".into()),
    }
}

fn text(
    status: u16,
    content_type: &str,
    body: String,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
}
