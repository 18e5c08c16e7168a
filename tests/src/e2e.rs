//! Helpers shared by the end-to-end tests (daemon, scenarios, demo).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{root::require_root, topology::*};

/// End-to-end tests share two cores with their own traffic: run them one at a time so timing
/// bounds (failover within 1.5 s) measure wklb, not the neighbouring test.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Serial<T> {
    pub t: T,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl<T> Serial<T> {
    pub fn new(t: T, guard: std::sync::MutexGuard<'static, ()>) -> Self {
        Serial { t, _guard: guard }
    }
}

impl<T> std::ops::Deref for Serial<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.t
    }
}

impl<T> std::ops::DerefMut for Serial<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.t
    }
}

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A topology whose backends are not started yet (for fault modes).
pub fn bare_topology(test: &str, n: usize) -> Option<Serial<Topology>> {
    if !require_root(test) {
        return None;
    }
    let guard = serial();
    let t = Topology::new(n).expect("topology");
    Some(Serial { t, _guard: guard })
}

pub fn topology(test: &str, n: usize) -> Option<Serial<Topology>> {
    shaped_topology(test, n, Shape::TwoArmed)
}

/// A topology of the given shape with `n` backends and their health endpoints running.
pub fn shaped_topology(test: &str, n: usize, shape: Shape) -> Option<Serial<Topology>> {
    if !require_root(test) {
        return None;
    }
    let guard = serial();
    let mut t = Topology::with_shape(n, shape).expect("topology");
    for i in 0..n {
        t.start_backend(i).expect("backend");
        t.start_health(i).expect("health endpoint");
    }
    Some(Serial { t, _guard: guard })
}

pub fn backend_row<'a>(stats: &'a Value, vip: &str, i: usize) -> &'a Value {
    backend_row_at(stats, vip, &backend_addr(i).to_string())
}

/// The same for backend `i`'s IPv6 address (`enable_ipv6_backends`).
pub fn backend_row6<'a>(stats: &'a Value, vip: &str, i: usize) -> &'a Value {
    backend_row_at(stats, vip, &crate::topology::backend_addr6(i).to_string())
}

fn backend_row_at<'a>(stats: &'a Value, vip: &str, addr: &str) -> &'a Value {
    stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vip"] == vip && b["address"] == addr)
        .unwrap_or_else(|| panic!("no stats row for {vip} {addr}: {stats:#}"))
}

/// Polls `cond` on stats until it holds or `limit` passes; returns the time it took.
pub fn wait_stats(
    t: &Topology,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = t.stats().expect("stats");
        if cond(&s) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not reached within {limit:?}: {s:#}\n{}",
            t.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the first VIP (im-tcp) has at least `n` active flows: the client connected.
pub fn wait_connected(t: &Topology, n: usize) {
    wait_stats(
        t,
        Duration::from_secs(30),
        &format!("{n} connections"),
        |s| s["vips"][0]["active_flows"].as_u64().unwrap_or(0) >= n as u64,
    );
}

pub fn tcp_client(t: &Topology, conns: usize, ping_ms: u64, secs: u64) -> std::process::Child {
    tcp_client_with(t, conns, ping_ms, secs, &[])
}

/// `tcp_client` with more wk-client arguments (`--parallel`, `--source`, `--reconnect`, ...).
pub fn tcp_client_with(
    t: &Topology,
    conns: usize,
    ping_ms: u64,
    secs: u64,
    extra: &[&str],
) -> std::process::Child {
    tcp_client_to(t, &format!("{VIP}:{TCP_PORT}"), conns, ping_ms, secs, extra)
}

/// `tcp_client_with` toward any `target` (an IPv6 VIP: `[addr]:port`).
pub fn tcp_client_to(
    t: &Topology,
    target: &str,
    conns: usize,
    ping_ms: u64,
    secs: u64,
    extra: &[&str],
) -> std::process::Child {
    let (conns, ping, secs) = (conns.to_string(), ping_ms.to_string(), secs.to_string());
    let mut args = vec![
        "tcp",
        "--target",
        target,
        "--conns",
        &conns,
        "--ping-interval-ms",
        &ping,
        "--duration-s",
        &secs,
    ];
    args.extend_from_slice(extra);
    t.client(&args).unwrap()
}

pub fn count(r: &Value, key: &str, b: &str) -> u64 {
    r[key][b].as_u64().unwrap_or(0)
}

/// After b2 died: some of its clients' connections ended, and none of b1's or b3's.
pub fn assert_only_b2_broke(r: &Value, what: &str) {
    assert!(count(r, "broken_per_backend", "b2") > 0, "{what}: {r:#}");
    assert_eq!(
        count(r, "broken_per_backend", "b1") + count(r, "broken_per_backend", "b3"),
        0,
        "{what}: healthy backends' connections broke: {r:#}"
    );
}

pub fn udp_client(t: &Topology, requests: usize) -> std::process::Child {
    t.client(&[
        "udp",
        "--target",
        &format!("{VIP}:{UDP_PORT}"),
        "--requests",
        &requests.to_string(),
    ])
    .unwrap()
}

/// Asserts every backend's count is its weight share of `total`, within `tol` (relative) or four
/// standard deviations of a binomial draw, whichever is wider: client ports are effectively
/// random, so a fixed percentage alone fails now and then for small shares.
pub fn assert_spread(r: &Value, weights: &[(&str, u32)], total: u64, tol: f64) {
    let wsum: u32 = weights.iter().map(|(_, w)| w).sum();
    for (b, w) in weights {
        let p = *w as f64 / wsum as f64;
        let want = total as f64 * p;
        let sigma = (total as f64 * p * (1.0 - p)).sqrt();
        let bound = (want * tol).max(4.0 * sigma);
        let got = count(r, "per_backend", b) as f64;
        assert!(
            (got - want).abs() <= bound,
            "{b}: {got} connections, weight share {want:.0} (bound +-{bound:.0}): {r:#}"
        );
    }
}
