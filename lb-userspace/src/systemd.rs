//! systemd's notify protocol (`Type=notify`), through the sd-notify crate. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call here does nothing.
//!
//! - `READY=1` once XDP is attached and every probed backend has its first health verdict (or
//!   after `FIRST_VERDICTS_MAX`, saying which are still unprobed): before that the tables hold
//!   the config's guess, not the probes' answer.
//! - `WATCHDOG=1` from the controller thread's own loop, and only while the async runtime (the
//!   control socket, probes, /metrics) also shows it is alive: a hung controller or a stalled
//!   runtime stops the pings and systemd restarts the daemon (restarts keep every flow).
//! - `STATUS=` a one-line summary, refreshed every few seconds.
//! - `RELOADING=1` … `READY=1` around a reload; `STOPPING=1` on the way out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use log::{info, warn};
use sd_notify::NotifyState;

use crate::{controller::Snapshot, ctx::Ctx, sys::clock::monotonic_ns};

/// Longest wait for the first health verdicts before READY=1 is sent anyway.
pub const FIRST_VERDICTS_MAX: Duration = Duration::from_secs(30);
/// How often STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often the runtime's heartbeat beats (well inside the shortest sensible WatchdogSec).
const BEAT_EVERY: Duration = Duration::from_millis(250);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("systemd notify: {e}");
    }
}

/// The async runtime's heartbeat, read by the controller thread before it pings the watchdog.
#[derive(Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(monotonic_ns(), Ordering::Relaxed);
    }
    fn age(&self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// Pings systemd's watchdog from the controller loop (`tick` on every turn of it).
pub struct Watchdog {
    period: Option<Duration>,
    last: Instant,
    runtime: Heartbeat,
}

impl Watchdog {
    /// `WATCHDOG_USEC` from the environment (None: no watchdog, `tick` does nothing).
    pub fn from_env(runtime: Heartbeat) -> Self {
        Self::new(sd_notify::watchdog_enabled(), runtime)
    }

    pub fn new(period: Option<Duration>, runtime: Heartbeat) -> Self {
        if let Some(p) = period {
            info!(
                "systemd watchdog: {} (pinged from the controller loop every {})",
                humantime::format_duration(p),
                humantime::format_duration(p / 2)
            );
        }
        Watchdog {
            period,
            last: Instant::now(),
            runtime,
        }
    }

    /// Pings when a quarter of the period has passed and the runtime is alive; true when it
    /// pinged.
    pub fn tick(&mut self) -> bool {
        let Some(p) = self.period else { return false };
        if self.last.elapsed() < p / 4 {
            return false;
        }
        // A runtime that has not beaten for half the period is stuck: stay silent.
        if self.runtime.age() > p / 2 {
            return false;
        }
        self.last = Instant::now();
        send(&[NotifyState::Watchdog]);
        true
    }
}

/// Backends whose VIP probes them and that have no verdict yet.
pub fn unprobed(s: &Snapshot) -> Vec<String> {
    s.vips
        .iter()
        .filter(|v| v.spec.health.kind != crate::config::ProbeKind::None)
        .flat_map(|v| {
            v.backends
                .iter()
                .filter(|b| b.probe_rtt_ms().is_none())
                .map(move |b| format!("{}/{}", v.spec.name, b.socket()))
        })
        .collect()
}

/// The one-line STATUS= summary.
pub fn summary(s: &Snapshot) -> String {
    let backends: usize = s.vips.iter().map(|v| v.backends.len()).sum();
    let up: usize = s
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .filter(|b| b.status() == crate::health::Status::Up)
        .count();
    let fail_open: Vec<&str> = s
        .vips
        .iter()
        .filter(|v| v.mode == crate::controller::plan::TableMode::FailOpen)
        .map(|v| v.spec.name.as_str())
        .collect();
    let cookies: Vec<&str> = s
        .vips
        .iter()
        .filter(|v| v.cookies_engaged)
        .map(|v| v.spec.name.as_str())
        .collect();
    let mut line = format!(
        "{} VIP(s), {up}/{backends} backends up, XDP on {}",
        s.vips.len(),
        s.attachments
            .iter()
            .map(|a| a.interface.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    if !fail_open.is_empty() {
        line.push_str(&format!("; FAIL-OPEN: {}", fail_open.join(",")));
    }
    if !cookies.is_empty() {
        line.push_str(&format!("; SYN cookies engaged: {}", cookies.join(",")));
    }
    line
}

/// Waits for the first health verdicts, sends READY=1, then keeps STATUS= current and the
/// runtime's heartbeat beating. Runs for the daemon's life.
pub async fn ready_and_status(ctx: Arc<Ctx>, heartbeat: Heartbeat) {
    let started = Instant::now();
    loop {
        heartbeat.beat();
        let snap = ctx.handle.snapshot();
        let waiting = unprobed(&snap);
        if waiting.is_empty() || started.elapsed() >= FIRST_VERDICTS_MAX {
            let mut status = summary(&snap);
            if !waiting.is_empty() {
                status.push_str(&format!("; no health verdict yet: {}", waiting.join(", ")));
            }
            info!(
                "ready: XDP attached and first health verdicts in ({:.1} s): {status}",
                started.elapsed().as_secs_f64()
            );
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tick = tokio::time::interval(BEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    let mut status_at = Instant::now();
    loop {
        tick.tick().await;
        heartbeat.beat();
        if status_at.elapsed() < STATUS_EVERY {
            continue;
        }
        status_at = Instant::now();
        let status = summary(&ctx.handle.snapshot());
        if status != last {
            send(&[NotifyState::Status(&status)]);
            last = status;
        }
    }
}

/// Around a reload: RELOADING=1 (with the monotonic time systemd wants) now, READY=1 when the
/// returned guard drops.
pub fn reloading() -> ReloadGuard {
    match NotifyState::monotonic_usec_now() {
        Ok(t) => send(&[NotifyState::Reloading, t]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
    ReloadGuard
}

pub struct ReloadGuard;

impl Drop for ReloadGuard {
    fn drop(&mut self) {
        send(&[NotifyState::Ready]);
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_only_while_the_runtime_beats() {
        let beat = Heartbeat::default();
        beat.beat();
        // Quarter period 500 ms, a runtime silent for over 1 s counts as stuck.
        let mut w = Watchdog::new(Some(Duration::from_secs(2)), beat.clone());
        assert!(!w.tick(), "not before a quarter of the period");
        std::thread::sleep(Duration::from_millis(550));
        beat.beat();
        assert!(w.tick());
        assert!(!w.tick(), "once per quarter period");
        // The runtime stops beating: the controller alone does not keep the daemon alive.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!w.tick());
        beat.beat();
        assert!(w.tick());
        let mut off = Watchdog::new(None, beat);
        std::thread::sleep(Duration::from_millis(550));
        assert!(!off.tick());
    }
}
