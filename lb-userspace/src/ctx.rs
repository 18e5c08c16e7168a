//! What the daemon's long-running tasks share (the control socket, /metrics, signals): the
//! controller's handle, readers of the maps, the announcer, the connection log's tallies and
//! the command-line overrides a reload must keep. Built by the daemon; control and metrics use
//! it without importing the daemon.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Result;
use tokio::sync::Notify;

use crate::{
    announce::Announcer,
    config::Overrides,
    controller::{reports, thread::Handle},
    dataplane::{Counters, Flows},
    report::StatsReport,
};

/// What the daemon's tasks share.
pub struct Ctx {
    pub handle: Handle,
    pub counters: Arc<dyn Counters>,
    pub flows: Arc<dyn Flows>,
    pub config_path: PathBuf,
    /// What the command line set over the file (kept on every reload).
    pub overrides: Overrides,
    /// Stop the daemon; with `unload_requested`, detach and remove the pinned objects too.
    pub shutdown: Notify,
    pub unload_requested: AtomicBool,
    /// The VIP routes this edge announces (one holder at a time: the loop or a CLI command).
    pub announcer: tokio::sync::Mutex<Announcer>,
    /// What the connection log wrote.
    pub conn_log: Arc<crate::connlog::Written>,
}

impl Ctx {
    /// The stats report, built off the async workers (it scans the flow table).
    pub async fn stats(&self) -> Result<StatsReport> {
        let (snap, counters, flows) = (
            self.handle.snapshot(),
            self.counters.clone(),
            self.flows.clone(),
        );
        let snap2 = snap.clone();
        let mut r = tokio::task::spawn_blocking(move || {
            reports::stats(&snap2, counters.as_ref(), flows.as_ref())
        })
        .await??;
        r.edge = self.edge_report(&snap, &r).await;
        if let Some(l) = &snap.config.conn_log {
            use std::sync::atomic::Ordering::Relaxed;
            r.conn_log = Some(crate::report::ConnLogReport {
                path: l
                    .path
                    .as_ref()
                    .map_or("-".to_string(), |p| p.display().to_string()),
                opens: self.conn_log.opens.load(Relaxed),
                closes: self.conn_log.closes.load(Relaxed),
                write_errors: self.conn_log.errors.load(Relaxed),
                lost: self.counters.conn_log_lost()?,
            });
        }
        Ok(r)
    }

    /// The announcer's state with the open flows of the announced VIPs.
    async fn edge_report(
        &self,
        snap: &crate::controller::Snapshot,
        r: &StatsReport,
    ) -> Option<crate::report::EdgeReport> {
        let announced = &snap.config.announce.as_ref()?.vips;
        let open = r
            .vips
            .iter()
            .filter(|v| announced.contains(&v.name))
            .map(|v| v.active_flows)
            .sum();
        self.announcer.lock().await.report(snap, open)
    }
}
