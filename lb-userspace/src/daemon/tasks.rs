//! The daemon's async tasks: one probing task per backend target, and neighbour upkeep. They
//! read the controller's snapshot and send it results; none of them waits for the controller.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use std::sync::Arc;

use lb_common::Reason;
use log::{debug, warn};
use tokio::task::JoinHandle;

use crate::{
    config::{CookieMode, HealthCheck},
    controller::{
        syn_pressure::{Change, Sample, Watch},
        thread::{Command, Handle},
    },
    ctx::Ctx,
    dataplane::{Counters, Flows},
    health::probe::{self, ProbeTarget},
    metrics::{BackendLabels, ProbeMetrics},
    sys::{clock::monotonic_ns, neighbors},
};

/// How often the cookie watch samples the counters (cookie mode engages within about a second
/// of a flood: the rate needs a few samples).
const COOKIE_WATCH_EVERY: Duration = Duration::from_millis(200);

/// Reports `auto` SYN-cookie mode per VIP when the data path engages it (or engages it on the
/// data path's refusals of new flows: no SNAT port, table full), and releases it when calm.
pub async fn cookie_watch(h: Handle, counters: Arc<dyn Counters>, flows: Arc<dyn Flows>) {
    // Per VIP: its watch, and its count of new flows refused over its share at the last tick.
    let mut watches: BTreeMap<String, (Watch, u64)> = BTreeMap::new();
    let mut refusals_before: Option<u64> = None;
    let mut tick = tokio::time::interval(COOKIE_WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = h.snapshot();
        let refusals = match counters.reasons() {
            Ok(r) => r[Reason::DropSnatExhausted as usize] + r[Reason::DropConntrackFull as usize],
            Err(e) => {
                warn!("cookie watch: reading the verdict counters failed: {e:#}");
                continue;
            }
        };
        let refused = refusals_before.is_some_and(|b| refusals > b);
        refusals_before = Some(refusals);
        let now = monotonic_ns();
        let live = flows.live();
        watches.retain(|name, _| {
            snap.vips
                .iter()
                .any(|v| &v.spec.name == name && v.spec.syn_cookies == CookieMode::Auto)
        });
        for v in &snap.vips {
            // A mark left from when the VIP was `auto` (or by the previous VIP of its id).
            if v.spec.syn_cookies != CookieMode::Auto
                && live
                    .get(v.id as usize)
                    .is_some_and(|l| l.cookies_engaged_ns != 0)
            {
                flows.release_cookies(v.id, now);
            }
        }
        for v in snap
            .vips
            .iter()
            .filter(|v| v.spec.syn_cookies == CookieMode::Auto)
        {
            let Ok(stats) = counters.vip(v.id) else {
                continue;
            };
            let (w, over_share) = watches
                .entry(v.spec.name.clone())
                .or_insert_with(|| (Watch::new(v.cookies_engaged), stats.over_share));
            // This VIP's new flows refused over its share count as refusals too.
            let refused_here = stats.over_share > *over_share;
            *over_share = stats.over_share;
            let sample = Sample {
                now,
                syns: stats.syns,
                completed: stats.handshakes + stats.cookies_valid,
                refused: refused || refused_here,
                data_path_engaged: live
                    .get(v.id as usize)
                    .is_some_and(|l| l.cookies_engaged_ns != 0),
            };
            let (on, why) = match w.observe(sample, &snap.config.syn_cookies) {
                Some(Change::Engage(why)) => (true, why),
                Some(Change::Release(why)) => {
                    // The data path's mark first: with the VIP's flag still on, no SYN slips
                    // through between the two.
                    flows.release_cookies(v.id, now);
                    (false, why)
                }
                None => continue,
            };
            if h.send(Command::Cookies(v.spec.name.clone(), on, why))
                .is_err()
            {
                return;
            }
        }
    }
}

/// How often the announcer compares the routes with the plan (a withdraw follows a drain or a
/// health change within this, plus the BGP daemon's own delay).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(200);

/// Keeps the VIP routes in line with the controller's state and the drain mark.
pub async fn announce_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = ctx.handle.snapshot();
        // Failures are logged (once per distinct error) and retried on the next tick.
        let _ = ctx.announcer.lock().await.reconcile(&snap).await;
    }
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
        let addrs: BTreeSet<IpAddr> = h.snapshot().backend_addresses().into_iter().collect();
        if let Err(e) = tokio::task::spawn_blocking(move || neighbors::poke(&addrs)).await {
            debug!("neighbour upkeep: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
