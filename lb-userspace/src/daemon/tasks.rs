//! The daemon's async tasks: one probing task per backend target, and neighbour upkeep. They
//! read the controller's snapshot and send it results; none of them waits for the controller.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use log::debug;
use tokio::task::JoinHandle;

use crate::{
    config::HealthCheck,
    controller::thread::{Command, Handle},
    health::probe::{self, ProbeTarget},
    metrics::{BackendLabels, ProbeMetrics},
    sys::neighbors,
};

/// IPv4 addresses among `addrs` (neighbour warm-up reads /proc/net/arp).
pub fn backend_v4(addrs: &[IpAddr]) -> BTreeSet<Ipv4Addr> {
    addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// One probing task per target; re-synced whenever the controller says targets changed.
pub async fn health_scheduler(h: Handle, m: ProbeMetrics) {
    let mut tasks: BTreeMap<ProbeTarget, (HealthCheck, JoinHandle<()>)> = BTreeMap::new();
    let mut changes = h.changes.clone();
    loop {
        let wanted = h.snapshot().probe_targets();
        tasks.retain(|t, (hc, task)| {
            let keep = wanted.get(t) == Some(hc);
            if !keep {
                task.abort();
            }
            keep
        });
        for (t, hc) in wanted {
            if tasks.contains_key(&t) {
                continue;
            }
            let task = tokio::spawn(probe_loop(h.clone(), t.clone(), hc.clone(), m.clone()));
            tasks.insert(t, (hc, task));
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn probe_loop(h: Handle, t: ProbeTarget, hc: HealthCheck, m: ProbeMetrics) {
    tokio::time::sleep(probe::first_delay(&t, hc.interval)).await;
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let labels = BackendLabels {
        vip: t.vip.clone(),
        backend: t.backend.to_string(),
    };
    loop {
        let due = tick.tick().await;
        m.lateness.observe(
            tokio::time::Instant::now()
                .saturating_duration_since(due)
                .as_secs_f64(),
        );
        let r = probe::probe(&hc, t.probe_addr).await;
        m.rtt.get_or_create(&labels).observe(r.rtt.as_secs_f64());
        if h.send(Command::Probe(t.clone(), r)).is_err() {
            return;
        }
    }
}

/// Keeps backend neighbour entries fresh, and resolves new backends right after a change.
pub async fn neighbor_loop(h: Handle) {
    let mut changes = h.changes.clone();
    loop {
        let addrs = backend_v4(&h.snapshot().backend_addresses());
        if let Err(e) = tokio::task::spawn_blocking(move || neighbors::poke(&addrs)).await {
            debug!("neighbour upkeep: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
