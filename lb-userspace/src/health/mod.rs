//! Health checking: the per-backend rise/fall state machine (pure, unit-tested) and the probes
//! (TCP connect, HTTP GET with headers and an expected status) that feed it.

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

/// Rise/fall hysteresis: `fall` consecutive failures take a healthy backend down, `rise`
/// consecutive successes bring it back. A backend starts healthy, so a daemon restart never
/// empties a table before the first probes have run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    /// Consecutive results contradicting `up`.
    streak: u32,
    rise: u32,
    fall: u32,
}

/// A change of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::with_state(rise, fall, true)
    }

    pub fn with_state(rise: u32, fall: u32, up: bool) -> Self {
        Health {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

/// Whether a VIP must fail open: it has backends that may take traffic (weight > 0) and every
/// one of them is down. Then the table holds all of them rather than none (WuKongIM health is
/// cluster-wide: a leader election fails every node at once).
pub fn fail_open(eligible_up: impl IntoIterator<Item = bool>) -> bool {
    let mut any = false;
    for up in eligible_up {
        if up {
            return false;
        }
        any = true;
    }
    any
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
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Health::new(2, 3);
        assert!(h.up);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Transition::Down));
        assert!(!h.up);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Transition::Up));
        assert!(h.up);
    }

    #[test]
    fn flapping_never_completes_a_streak() {
        let mut h = Health::new(2, 2);
        for _ in 0..50 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None);
        }
        assert!(h.up);
        h.record(false);
        h.record(false);
        assert!(!h.up);
        for _ in 0..50 {
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(false), None);
        }
        assert!(!h.up);
    }

    #[test]
    fn fail_open_enters_only_when_every_eligible_backend_is_down() {
        assert!(!fail_open([true, false, false]));
        assert!(fail_open([false, false, false]));
        assert!(
            !fail_open([]),
            "no eligible backend (all drained) is not fail-open"
        );
        // Leave: one backend recovers.
        assert!(!fail_open([false, true]));
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
