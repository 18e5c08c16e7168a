//! Probes: a TCP connect, or an HTTP GET with headers and an expected status, bounded by the
//! check's timeout.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use http_body_util::Empty;
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{HealthCheck, ProbeKind};

/// One probe target, for the scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeTarget {
    pub vip: String,
    pub backend: SocketAddr,
    /// Where the probe connects (the health-check port may differ from the backend's).
    pub probe_addr: SocketAddr,
}

/// Delay before a target's first probe: spread over one interval by a hash of the whole
/// target, so backends on one port (or one address) do not probe in lockstep.
pub fn first_delay(t: &ProbeTarget, interval: Duration) -> Duration {
    let key = format!("{}|{}|{}", t.vip, t.backend, t.probe_addr);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    pub rtt: Duration,
    /// Why it failed, for the log.
    pub error: Option<String>,
}

/// Probes `target` once according to `hc`, bounded by its timeout.
pub async fn probe(hc: &HealthCheck, target: SocketAddr) -> ProbeResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(hc.timeout, probe_inner(&hc.kind, target)).await;
    let rtt = start.elapsed();
    match outcome {
        Ok(Ok(())) => ProbeResult {
            ok: true,
            rtt,
            error: None,
        },
        Ok(Err(e)) => ProbeResult {
            ok: false,
            rtt,
            error: Some(format!("{e:#}")),
        },
        Err(_) => ProbeResult {
            ok: false,
            rtt,
            error: Some(format!(
                "no answer within {}",
                humantime::format_duration(hc.timeout)
            )),
        },
    }
}

async fn probe_inner(kind: &ProbeKind, target: SocketAddr) -> Result<()> {
    match kind {
        ProbeKind::None => Ok(()),
        ProbeKind::Tcp => {
            TcpStream::connect(target).await.context("tcp connect")?;
            Ok(())
        }
        ProbeKind::Http {
            path,
            headers,
            expect_status,
        } => {
            let stream = TcpStream::connect(target).await.context("tcp connect")?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("http handshake")?;
            let driver = tokio::spawn(conn);
            let mut req = Request::get(path.as_str())
                .header(hyper::header::HOST, target.to_string())
                .header(hyper::header::USER_AGENT, "wklb-health-check")
                .header(hyper::header::CONNECTION, "close");
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let res = sender
                .send_request(req.body(Empty::<Bytes>::new())?)
                .await
                .context("http request")?;
            driver.abort();
            let status = res.status().as_u16();
            if status != *expect_status {
                bail!("http status {status}, expected {expect_status}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probes_spread_over_the_interval() {
        let interval = Duration::from_millis(1000);
        let mut delays: Vec<u128> = (0..30)
            .map(|i| {
                let t = ProbeTarget {
                    vip: "im".into(),
                    backend: format!("10.2.0.{}:5100", 11 + i).parse().unwrap(),
                    probe_addr: format!("10.2.0.{}:5001", 11 + i).parse().unwrap(),
                };
                let d = first_delay(&t, interval);
                assert!(d < interval);
                d.as_millis()
            })
            .collect();
        delays.sort_unstable();
        delays.dedup();
        // Same port, same address length: the old hash put all of these on one instant.
        assert!(delays.len() >= 25, "{delays:?}");
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_loopback() {
        // A listener that answers HTTP 200 or 500 by path, on loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..4 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let ok =
                    req.starts_with("GET /health ") && req.to_lowercase().contains("token: s3cret");
                let line = if ok {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let mut hc = HealthCheck {
            kind: ProbeKind::Tcp,
            ..HealthCheck::default()
        };
        assert!(probe(&hc, addr).await.ok);
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("token".to_string(), "s3cret".to_string());
        hc.kind = ProbeKind::Http {
            path: "/health".into(),
            headers,
            expect_status: 200,
        };
        let r = probe(&hc, addr).await;
        assert!(r.ok, "{r:?}");
        hc.kind = ProbeKind::Http {
            path: "/health".into(),
            headers: Default::default(),
            expect_status: 200,
        };
        let r = probe(&hc, addr).await;
        assert!(
            !r.ok && r.error.as_deref().unwrap().contains("500"),
            "{r:?}"
        );
        hc.kind = ProbeKind::Http {
            path: "/other".into(),
            headers: Default::default(),
            expect_status: 500,
        };
        assert!(probe(&hc, addr).await.ok);
        server.await.unwrap();
        // Nothing listens any more: connect fails.
        hc.kind = ProbeKind::Tcp;
        assert!(!probe(&hc, addr).await.ok);
    }
}
