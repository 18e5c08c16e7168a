//! The controller on its own thread, fed by a command channel. Async tasks send commands and
//! await replies; nothing on the async runtime ever blocks on a table install or a map write.
//! A snapshot of the state is published after every change (and after probe figures move, at
//! most every `PUBLISH_EVERY`).

use std::{
    net::IpAddr,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use arc_swap::ArcSwap;
use log::{error, info};
use tokio::sync::{Notify, oneshot, watch};

use super::{Controller, Snapshot, edits::InUse};
use ipnet::Ipv4Net;

use crate::{
    config::{Config, SourceList},
    dataplane::{Maps, links::Attachment},
    health::probe::{ProbeResult, ProbeTarget},
    systemd::Watchdog,
};

const PUBLISH_EVERY: Duration = Duration::from_millis(200);

type Reply<T> = oneshot::Sender<Result<T, String>>;

pub enum Command {
    Reload(Box<Config>, Reply<Vec<String>>),
    /// (VIP, address, port, weight, group).
    AddBackend(
        String,
        IpAddr,
        Option<u16>,
        u32,
        Option<String>,
        Reply<String>,
    ),
    RemoveBackend(String, IpAddr, Option<u16>, Reply<String>),
    SetWeight(String, IpAddr, Option<u16>, u32, Reply<String>),
    /// (VIP, list, prefix, add or remove).
    SourceList(String, SourceList, Ipv4Net, bool, Reply<String>),
    Probe(ProbeTarget, ProbeResult),
    InUse(InUse),
    Attached(Vec<Attachment>),
    /// Engage (true) or release `auto` SYN-cookie mode on a VIP, and why.
    Cookies(String, bool, String),
    /// End the thread (probe tasks may still hold senders).
    Stop,
}

/// How the rest of the daemon reaches the controller.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Bumped when VIPs or backends (and so probe targets and neighbours) may have changed.
    pub changes: watch::Receiver<u64>,
    /// Notified when the controller thread ends (a panic included): the daemon then exits.
    pub stopped: Arc<Notify>,
}

impl Handle {
    pub fn send(&self, c: Command) -> Result<()> {
        self.tx
            .send(c)
            .map_err(|_| anyhow!("the controller has stopped"))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await
            .map_err(|_| anyhow!("the controller stopped before answering"))?
            .map_err(|e| anyhow!(e))
    }

    pub async fn reload(&self, cfg: Config) -> Result<Vec<String>> {
        self.ask(|r| Command::Reload(Box::new(cfg), r)).await
    }
    pub async fn add_backend(
        &self,
        vip: String,
        a: IpAddr,
        port: Option<u16>,
        w: u32,
        group: Option<String>,
    ) -> Result<String> {
        self.ask(|r| Command::AddBackend(vip, a, port, w, group, r))
            .await
    }
    pub async fn remove_backend(
        &self,
        vip: String,
        a: IpAddr,
        port: Option<u16>,
    ) -> Result<String> {
        self.ask(|r| Command::RemoveBackend(vip, a, port, r)).await
    }
    pub async fn set_weight(
        &self,
        vip: String,
        a: IpAddr,
        port: Option<u16>,
        w: u32,
    ) -> Result<String> {
        self.ask(|r| Command::SetWeight(vip, a, port, w, r)).await
    }

    pub async fn edit_source_list(
        &self,
        vip: String,
        list: SourceList,
        net: Ipv4Net,
        add: bool,
    ) -> Result<String> {
        self.ask(|r| Command::SourceList(vip, list, net, add, r))
            .await
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// Starts the controller thread; it pings `watchdog` on every turn of its loop.
pub fn spawn<M: Maps + 'static>(
    c: Controller<M>,
    watchdog: Watchdog,
) -> Result<(Handle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::of(c.state(), 0, &[])));
    let (changes_tx, changes) = watch::channel(0u64);
    let h = Handle {
        tx,
        snapshot: snapshot.clone(),
        changes,
        stopped: Arc::new(Notify::new()),
    };
    let stopped = h.stopped.clone();
    let join = std::thread::Builder::new()
        .name("wklb-controller".into())
        .spawn(move || {
            let _guard = StopGuard(stopped);
            run(c, rx, snapshot, changes_tx, watchdog);
        })
        .context("starting the controller thread")?;
    Ok((h, join))
}

/// Notifies `stopped` however the thread ends.
struct StopGuard(Arc<Notify>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!(
                "the controller thread panicked; the daemon stops so its service manager can restart it (restarts keep every connection)"
            );
        }
        self.0.notify_one();
    }
}

fn run<M: Maps>(
    mut c: Controller<M>,
    rx: mpsc::Receiver<Command>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    changes: watch::Sender<u64>,
    mut watchdog: Watchdog,
) {
    let mut attachments: Vec<Attachment> = Vec::new();
    let mut dirty = false;
    let mut published = Instant::now();
    loop {
        watchdog.tick();
        let cmd = match rx.recv_timeout(PUBLISH_EVERY) {
            Ok(Command::Stop) => return,
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let structural = match cmd {
            Some(cmd) => {
                let s = handle(&mut c, cmd, &mut attachments);
                dirty = true;
                s
            }
            None => false,
        };
        if structural || (dirty && published.elapsed() >= PUBLISH_EVERY) {
            snapshot.store(Arc::new(Snapshot::of(
                c.state(),
                c.expired_total(),
                &attachments,
            )));
            published = Instant::now();
            dirty = false;
            if structural {
                changes.send_modify(|g| *g += 1);
            }
        }
    }
}

fn reply<T>(r: Reply<T>, v: Result<T>) {
    let _ = r.send(v.map_err(|e| format!("{e:#}")));
}

/// Handles one command; true when the state's structure (not just probe figures) changed.
fn handle<M: Maps>(c: &mut Controller<M>, cmd: Command, attachments: &mut Vec<Attachment>) -> bool {
    match cmd {
        Command::Reload(cfg, r) => {
            let res = crate::config::diff::global_changes(c.config(), &cfg)
                .map_err(|e| anyhow!(e))
                .and_then(|mut lines| {
                    lines.extend(c.apply(*cfg)?);
                    Ok(lines)
                });
            reply(r, res);
        }
        Command::AddBackend(vip, a, port, w, g, r) => {
            reply(r, c.add_backend(&vip, a, port, w, g.as_deref()))
        }
        Command::RemoveBackend(vip, a, port, r) => reply(r, c.remove_backend(&vip, a, port)),
        Command::SetWeight(vip, a, port, w, r) => reply(r, c.set_weight(&vip, a, port, w)),
        Command::SourceList(vip, list, net, add, r) => {
            reply(r, c.edit_source_list(&vip, list, net, add))
        }
        Command::Probe(t, res) => {
            return match c.record_probe(&t, &res) {
                Ok(tr) => tr.is_some(),
                Err(e) => {
                    error!("applying the health of {} failed: {e:#}", t.backend);
                    false
                }
            };
        }
        Command::InUse(u) => match c.release_unused(&u) {
            Ok(lines) => lines.iter().for_each(|l| info!("{l}")),
            Err(e) => error!("releasing unused backend ids and SNAT addresses failed: {e:#}"),
        },
        Command::Attached(a) => {
            *attachments = a;
            if let Err(e) = c.entry_attached() {
                error!("programming the PROXY protocol VIPs after attaching failed: {e:#}");
            }
        }
        Command::Cookies(vip, on, why) => {
            if let Err(e) = c.set_cookies_engaged(&vip, on, &why) {
                error!("vip {vip}: changing SYN-cookie mode failed: {e:#}");
            }
        }
        Command::Stop => {}
    }
    true
}
