//! Anycast announcement. wklb keeps one blackhole host route (/32, /128) per announced VIP address in a
//! kernel routing table of its own (`announce.table`), present exactly while this edge should
//! receive new connections for that address. The host's BGP daemon (BIRD's kernel protocol
//! with `learn`, FRR's `ip import-table`, GoBGP through zebra) imports that table and
//! advertises what it holds; wklb never speaks BGP itself.
//!
//! A route is withdrawn when the edge is drained (`wklb edge drain`, remembered in
//! `announce.drain_file` across restarts), when an announced VIP on the address cannot serve
//! (`plan`), when the address leaves the config, and by `wklb unload`. A daemon that merely
//! stops (a hitless restart) leaves the routes where they are: the data plane keeps serving.

pub mod drain;
pub mod plan;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use log::{info, warn};

use crate::{
    config::{Config, ProbeKind},
    controller::Snapshot,
    report::{AddressReport, EdgeReport},
    sys::routes::{Routes, VipRoute},
};
pub use plan::AddressPlan;

/// How often the announcer re-reads the table from the kernel (repairing routes removed by
/// hand); in between it changes only what its own plan changed.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

pub struct Announcer {
    routes: Option<Routes>,
    /// The routes the kernel holds, as of the last sync and our own changes since.
    installed: BTreeSet<VipRoute>,
    /// Every table this daemon has announced into (a reload that moves `announce.table`
    /// withdraws from the old one).
    tables: BTreeSet<u32>,
    last_sync: Option<Instant>,
    /// A fresh edge announces nothing until its first health verdicts are in; routes a previous
    /// daemon installed stay meanwhile (a hitless restart must not flap).
    settle_until: Instant,
    plans: Vec<AddressPlan>,
    since: BTreeMap<IpAddr, SystemTime>,
    last_error: Option<String>,
}

impl Announcer {
    pub fn new(cfg: &Config) -> Self {
        Announcer {
            routes: None,
            installed: BTreeSet::new(),
            tables: cfg.announce.iter().map(|a| a.table).collect(),
            last_sync: None,
            settle_until: Instant::now() + settle_time(cfg),
            plans: Vec::new(),
            since: BTreeMap::new(),
            last_error: None,
        }
    }

    /// Brings the table in line with the plan for `snap`; logs every change.
    pub async fn reconcile(&mut self, snap: &Snapshot) -> Result<()> {
        let r = self.try_reconcile(snap).await;
        match &r {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let msg = format!("{e:#}");
                if self.last_error.as_deref() != Some(&msg) {
                    warn!("announce: {msg} (retrying)");
                }
                self.last_error = Some(msg);
                // The kernel may hold something other than what we think: re-read next time.
                self.last_sync = None;
            }
        }
        r
    }

    async fn try_reconcile(&mut self, snap: &Snapshot) -> Result<()> {
        let plans = match &snap.config.announce {
            Some(a) => {
                self.tables.insert(a.table);
                plan::plan(a, &snap.vips, drain::since(&a.drain_file).is_some())
            }
            None => Vec::new(),
        };
        self.note_changes(&plans);
        self.plans = plans;
        if self.tables.is_empty() {
            return Ok(());
        }
        let want: BTreeSet<VipRoute> = match &snap.config.announce {
            Some(a) => self
                .plans
                .iter()
                .filter(|p| p.announce)
                .map(|p| VipRoute {
                    table: a.table,
                    address: p.address,
                })
                .collect(),
            None => BTreeSet::new(),
        };
        if self.routes.is_none() {
            self.routes = Some(Routes::connect()?);
        }
        let routes = self.routes.as_ref().expect("connected above");
        if self.last_sync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY) {
            let mut held = BTreeSet::new();
            for t in &self.tables {
                held.extend(routes.list(Some(*t)).await?);
            }
            self.installed = held;
            self.last_sync = Some(Instant::now());
        }
        let settling = Instant::now() < self.settle_until;
        for r in self
            .installed
            .difference(&want)
            .copied()
            .collect::<Vec<_>>()
        {
            routes.remove(r).await?;
            self.installed.remove(&r);
            info!("announce: removed the route {r}");
        }
        if !settling {
            for r in want
                .difference(&self.installed)
                .copied()
                .collect::<Vec<_>>()
            {
                routes.add(r).await?;
                self.installed.insert(r);
                info!("announce: installed the route {r}");
            }
        }
        Ok(())
    }

    fn note_changes(&mut self, plans: &[AddressPlan]) {
        for p in plans {
            let before = self.plans.iter().find(|q| q.address == p.address);
            if before.map(|q| (q.announce, &q.why)) != Some((p.announce, &p.why)) {
                if before.is_some_and(|q| q.announce != p.announce) || before.is_none() {
                    self.since.insert(p.address, SystemTime::now());
                }
                if p.announce {
                    info!("announce {}: serving ({})", p.address, p.vips.join(", "));
                } else {
                    info!("announce {}: withdrawn: {}", p.address, p.why);
                }
            }
        }
        self.since
            .retain(|a, _| plans.iter().any(|p| p.address == *a));
    }

    /// Removes every route this daemon manages (`wklb unload`).
    pub async fn withdraw_all(&mut self) -> Result<Vec<VipRoute>> {
        if self.tables.is_empty() {
            return Ok(Vec::new());
        }
        if self.routes.is_none() {
            self.routes = Some(Routes::connect()?);
        }
        let routes = self.routes.as_ref().expect("connected above");
        let mut removed = Vec::new();
        for t in &self.tables {
            for r in routes.list(Some(*t)).await? {
                routes.remove(r).await?;
                removed.push(r);
            }
        }
        self.installed.clear();
        Ok(removed)
    }

    /// The edge's state for `wklb edge status`, `stats` and metrics (None: announcing is off).
    pub fn report(&self, snap: &Snapshot, open_flows: u64) -> Option<EdgeReport> {
        let a = snap.config.announce.as_ref()?;
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .ok()
        };
        let settling = Instant::now() < self.settle_until;
        Some(EdgeReport {
            table: a.table,
            drained: drain::since(&a.drain_file).is_some(),
            drained_since: drain::since(&a.drain_file).and_then(unix),
            when_all_backends_down: a.when_all_down.name().into(),
            addresses: self
                .plans
                .iter()
                .map(|p| {
                    let announced = self.installed.contains(&VipRoute {
                        table: a.table,
                        address: p.address,
                    });
                    AddressReport {
                        address: p.address.to_string(),
                        announced,
                        why: if p.announce && !announced && settling {
                            "waiting for the first health verdicts".into()
                        } else {
                            p.why.clone()
                        },
                        vips: p.vips.clone(),
                        since: self.since.get(&p.address).copied().and_then(unix),
                    }
                })
                .collect(),
            open_flows,
            last_error: self.last_error.clone(),
        })
    }
}

/// How long a fresh edge waits for its health checks before announcing: long enough for every
/// announced VIP's backends to be judged (`fall` failed probes, or `rise` good ones).
fn settle_time(cfg: &Config) -> Duration {
    let Some(a) = &cfg.announce else {
        return Duration::ZERO;
    };
    cfg.vips
        .iter()
        .filter(|v| a.vips.contains(&v.name) && v.health.kind != ProbeKind::None)
        .map(|v| v.health.interval * v.health.rise.max(v.health.fall) + v.health.timeout)
        .max()
        .unwrap_or(Duration::ZERO)
}
