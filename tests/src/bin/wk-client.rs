//! Client driver for end-to-end scenarios: many long-lived TCP connections that ping like
//! WuKongIM clients, or UDP request/response from many source ports. Prints one JSON report.
//! Every run is bounded by --duration (TCP) or --requests (UDP) plus timeouts.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Long-lived TCP connections, each pinging at an interval.
    Tcp(TcpArgs),
    /// UDP requests from distinct source ports; each expects the backend's name.
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        requests: usize,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

#[derive(clap::Args)]
struct TcpArgs {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// 0: connect, read the greeting, hold without pinging.
    #[arg(long, default_value_t = 1000)]
    ping_interval_ms: u64,
    /// How long every connection stays open after all are connected.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// A PONG later than this is lost.
    #[arg(long, default_value_t = 3000)]
    pong_timeout_ms: u64,
    /// Bytes per ping: the PING byte followed by filler, all echoed back (large messages
    /// exercise path MTU handling).
    #[arg(long, default_value_t = 1)]
    message_bytes: usize,
    /// A connection that breaks connects again (as IM clients do) and goes on pinging;
    /// the break is still counted.
    #[arg(long)]
    reconnect: bool,
    /// Connect from this local address (one of the client namespace's).
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    /// Client first, as behind a PROXY protocol edge: send a line before reading the
    /// greeting, and check that the greeting's `NAME@ADDR:PORT` names this connection's own
    /// address (`peer_checked`, `peer_mismatches` in the report).
    #[arg(long)]
    proxied: bool,
    /// With --proxied: the line sent first (a newline is added). A client that sends a PROXY
    /// header of its own: `--first-line $'PROXY TCP4 1.2.3.4 ... \r'`.
    #[arg(long, default_value = "HELLO")]
    first_line: String,
    /// Write `NAME ADDR:PORT` for every connection that connected (its backend and its own
    /// address), for checking what a consumer behind the edge logged.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
}

/// `--proxied`, and what it found (set once, read by every connection).
static PROXIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static FIRST_LINE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
static PEER_CHECKED: AtomicU64 = AtomicU64::new(0);
static PEER_MISMATCHES: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Default)]
struct TcpReport {
    attempted: usize,
    connected: usize,
    connect_failures: usize,
    /// Connections per backend name (from the greeting).
    per_backend: BTreeMap<String, usize>,
    /// Connections that ended early (reset, EOF, error, lost pong), per backend.
    broken_per_backend: BTreeMap<String, usize>,
    broken: usize,
    /// With --reconnect: broken connections that connected again, per backend of the new one.
    reconnected_per_backend: BTreeMap<String, usize>,
    reconnected: usize,
    /// With --reconnect: broken connections that could not connect again before the end.
    reconnect_failures: usize,
    pongs: u64,
    lost_pongs: u64,
    connect_ms_p50: f64,
    connect_ms_p99: f64,
    rtt_ms_p50: f64,
    rtt_ms_p99: f64,
    bytes_sent: u64,
    bytes_received: u64,
    /// With --proxied: greetings checked, and those that named another address than the
    /// connection's own.
    peer_checked: u64,
    peer_mismatches: u64,
}

#[derive(Serialize, Default)]
struct UdpReport {
    requests: usize,
    answered: usize,
    lost: usize,
    per_backend: BTreeMap<String, usize>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Conn {
    name: String,
    connect_ms: f64,
}

enum Outcome {
    Done {
        rtts: Vec<f64>,
    },
    Broken {
        name: String,
        rtts: Vec<f64>,
        lost: u64,
    },
}

/// One connection's life under --reconnect: its first outcome, then where it reconnected.
struct Life {
    outcome: Outcome,
    /// Backend (greeting) of the connection that replaced a broken one.
    reconnected: Option<String>,
    reconnect_failed: bool,
}

/// Connects (from `source` when given) and reads the greeting (the backend's name).
async fn connect(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Option<(String, BufReader<TcpStream>)> {
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4().ok()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6().ok()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).ok()?;
    }
    let s = tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .ok()?
        .ok()?;
    s.set_nodelay(true).ok()?;
    let proxied = PROXIED.load(Relaxed);
    let own = s.local_addr().ok()?;
    let mut r = BufReader::new(s);
    if proxied {
        let line = FIRST_LINE.get().map_or(&b"HELLO\n"[..], |l| l.as_slice());
        r.get_mut().write_all(line).await.ok()?;
    }
    let mut name = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut name))
        .await
        .ok()?
        .ok()?;
    let mut name = name.trim().to_string();
    if proxied {
        let (n, peer) = name.split_once('@').unwrap_or((name.as_str(), ""));
        PEER_CHECKED.fetch_add(1, Relaxed);
        if peer.parse::<SocketAddr>().ok() != Some(own) {
            PEER_MISMATCHES.fetch_add(1, Relaxed);
            eprintln!("greeting {name:?} on a connection from {own}");
        }
        name = n.to_string();
    }
    (!name.is_empty()).then_some((name, r))
}

/// What every connection's ping loop shares.
struct Pinger {
    ping_ms: u64,
    deadline: tokio::time::Instant,
    pong_timeout: Duration,
    message: Vec<u8>,
    sent: AtomicU64,
    recv: AtomicU64,
}

/// Pings on one connection until the deadline (or holds it, with `ping_ms` 0).
async fn ping_until(
    name: String,
    mut r: BufReader<TcpStream>,
    spread: Duration,
    p: &Pinger,
) -> Outcome {
    let Pinger {
        ping_ms,
        deadline,
        pong_timeout,
        ref message,
        ref sent,
        ref recv,
    } = *p;
    let mut rtts = Vec::new();
    let mut answer = vec![0u8; message.len()];
    // Spread pings over the interval.
    tokio::time::sleep(spread).await;
    let mut lost = 0;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Outcome::Done { rtts };
        }
        if ping_ms == 0 {
            // Hold: any byte or EOF before the deadline means the connection broke.
            let mut b = [0u8; 1];
            return match tokio::time::timeout_at(deadline, r.read(&mut b)).await {
                Err(_) => Outcome::Done { rtts },
                Ok(_) => Outcome::Broken { name, rtts, lost },
            };
        }
        let t0 = Instant::now();
        if r.get_mut().write_all(message).await.is_err() {
            return Outcome::Broken { name, rtts, lost };
        }
        sent.fetch_add(message.len() as u64, Relaxed);
        match tokio::time::timeout(pong_timeout, r.read_exact(&mut answer)).await {
            Ok(Ok(_)) if answer[0] == 0x80 && answer[1..] == message[1..] => {
                recv.fetch_add(answer.len() as u64, Relaxed);
                rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Err(_) => {
                lost += 1;
                return Outcome::Broken { name, rtts, lost };
            }
            _ => return Outcome::Broken { name, rtts, lost },
        }
        let next = now + Duration::from_millis(ping_ms);
        tokio::time::sleep_until(next.min(deadline)).await;
    }
}

async fn run_tcp(a: TcpArgs) -> TcpReport {
    let TcpArgs {
        target,
        conns,
        ping_interval_ms: ping_ms,
        duration_s,
        parallel,
        pong_timeout_ms,
        message_bytes,
        reconnect,
        source,
        proxied,
        first_line,
        record,
    } = a;
    PROXIED.store(proxied, Relaxed);
    let _ = FIRST_LINE.set(format!("{first_line}\n").into_bytes());
    let (duration, pong_timeout) = (
        Duration::from_secs(duration_s),
        Duration::from_millis(pong_timeout_ms),
    );
    let message_bytes = message_bytes.max(1);
    let message: Vec<u8> = std::iter::once(0x70)
        .chain(std::iter::repeat_n(0x41, message_bytes.saturating_sub(1)))
        .collect();
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let recv = Arc::new(AtomicU64::new(0));
    // Phase 1: connect everything (bounded parallelism), read greetings.
    let mut handles = Vec::new();
    for _ in 0..conns {
        let sem = sem.clone();
        let recv = recv.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.ok()?;
            let t0 = Instant::now();
            let (name, r) = connect(target, source).await?;
            recv.fetch_add(name.len() as u64 + 1, Relaxed);
            let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
            Some((Conn { name, connect_ms }, r))
        }));
    }
    let mut report = TcpReport {
        attempted: conns,
        ..Default::default()
    };
    let mut live = Vec::new();
    let mut connect_ms = Vec::new();
    for h in handles {
        match h.await.ok().flatten() {
            Some((c, r)) => {
                *report.per_backend.entry(c.name.clone()).or_default() += 1;
                connect_ms.push(c.connect_ms);
                live.push((c, r));
            }
            None => report.connect_failures += 1,
        }
    }
    report.connected = live.len();
    if let Some(path) = &record {
        let lines: String = live
            .iter()
            .filter_map(|(c, r)| Some(format!("{} {}\n", c.name, r.get_ref().local_addr().ok()?)))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("wk-client: writing {}: {e}", path.display());
        }
    }
    eprintln!(
        "wk-client: {} of {conns} connected; holding for {}s",
        live.len(),
        duration.as_secs()
    );
    // Phase 2: every connection pings until the deadline.
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    let pinger = Arc::new(Pinger {
        ping_ms,
        deadline,
        pong_timeout,
        message,
        sent: AtomicU64::new(0),
        recv: AtomicU64::new(recv.load(Relaxed)),
    });
    for (i, (c, r)) in live.into_iter().enumerate() {
        let p = pinger.clone();
        tasks.push(tokio::spawn(async move {
            let spread = if ping_ms > 0 {
                Duration::from_millis((i as u64 * 37) % ping_ms)
            } else {
                Duration::ZERO
            };
            let outcome = ping_until(c.name, r, spread, &p).await;
            let mut life = Life {
                outcome,
                reconnected: None,
                reconnect_failed: false,
            };
            if reconnect && matches!(life.outcome, Outcome::Broken { .. }) {
                // Retry until the deadline, as an IM client's reconnect loop does.
                loop {
                    if tokio::time::Instant::now() >= deadline {
                        life.reconnect_failed = true;
                        break;
                    }
                    if let Some((name, r)) = connect(target, source).await {
                        p.recv.fetch_add(name.len() as u64 + 1, Relaxed);
                        life.reconnected = Some(name.clone());
                        let _ = ping_until(name, r, Duration::ZERO, &p).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            life
        }));
    }
    let mut all_rtts = Vec::new();
    for t in tasks {
        let Ok(life) = t.await else {
            report.broken += 1;
            continue;
        };
        if let Some(n) = life.reconnected {
            report.reconnected += 1;
            *report.reconnected_per_backend.entry(n).or_default() += 1;
        }
        report.reconnect_failures += life.reconnect_failed as usize;
        match life.outcome {
            Outcome::Done { rtts, .. } => {
                report.pongs += rtts.len() as u64;
                all_rtts.extend(rtts);
            }
            Outcome::Broken { name, rtts, lost } => {
                report.pongs += rtts.len() as u64;
                report.lost_pongs += lost;
                all_rtts.extend(rtts);
                report.broken += 1;
                *report.broken_per_backend.entry(name).or_default() += 1;
            }
        }
    }
    report.connect_ms_p50 = pct(&mut connect_ms, 0.5);
    report.connect_ms_p99 = pct(&mut connect_ms, 0.99);
    report.rtt_ms_p50 = pct(&mut all_rtts, 0.5);
    report.rtt_ms_p99 = pct(&mut all_rtts, 0.99);
    report.bytes_sent = pinger.sent.load(Relaxed);
    report.bytes_received = pinger.recv.load(Relaxed);
    report.peer_checked = PEER_CHECKED.load(Relaxed);
    report.peer_mismatches = PEER_MISMATCHES.load(Relaxed);
    report
}

async fn run_udp(target: SocketAddr, requests: usize, timeout: Duration) -> UdpReport {
    let mut report = UdpReport {
        requests,
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for i in 0..requests {
        tasks.push(tokio::spawn(async move {
            let s = UdpSocket::bind("0.0.0.0:0").await.ok()?;
            s.connect(target).await.ok()?;
            s.send(format!("req {i}").as_bytes()).await.ok()?;
            let mut buf = [0u8; 512];
            let answer = match tokio::time::timeout(timeout, s.recv(&mut buf)).await {
                Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
                _ => None,
            };
            // The socket goes back with the answer and stays open until every request is done,
            // so no source port is reused: each request is a distinct flow.
            Some((s, answer))
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        match t.await.ok().flatten() {
            Some((s, Some(name))) => {
                keep.push(s);
                report.answered += 1;
                *report.per_backend.entry(name).or_default() += 1;
            }
            Some((s, None)) => {
                keep.push(s);
                report.lost += 1;
            }
            None => report.lost += 1,
        }
    }
    drop(keep);
    report
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let json = match cli.mode {
        Mode::Tcp(a) => serde_json::to_string(&run_tcp(a).await),
        Mode::Udp {
            target,
            requests,
            timeout_ms,
        } => serde_json::to_string(
            &run_udp(target, requests, Duration::from_millis(timeout_ms)).await,
        ),
    };
    println!("{}", json.expect("report serialises"));
}
