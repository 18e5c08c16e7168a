//! `wklb daemon --config FILE`: checks the host, binds its sockets, loads (or adopts) the data
//! plane, programs it from the config, attaches XDP, then runs the controller thread, expiry,
//! health checks, neighbour upkeep, the control socket and /metrics until a signal.
//!
//! SIGTERM/SIGINT stop the daemon and leave the program attached and every map pinned (when the
//! pins are on a persistent bpffs): a new daemon adopts them and no connection breaks.
//! `wklb unload` removes everything.

pub mod locks;
mod tasks;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, anyhow, bail};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    announce::Announcer,
    config::{self, Checks, Config},
    controller::{
        Controller, reports,
        state::Interface,
        thread::{self, Command, Handle},
    },
    dataplane::{
        Counters, Flows,
        kernel::{self, LoadOptions, Loaded},
        links,
    },
    metrics,
    report::StatsReport,
    sys::{bpffs, netdev},
};

/// What the daemon's tasks share.
pub struct Ctx {
    pub handle: Handle,
    pub counters: Arc<dyn Counters>,
    pub flows: Arc<dyn Flows>,
    pub config_path: PathBuf,
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

/// `socket`: the `--socket` given on the command line, which overrides the config's.
pub fn run(config_path: &Path, socket: Option<PathBuf>) -> Result<()> {
    let loaded = config::load(config_path, Checks::Host).map_err(|e| anyhow!("{e}"))?;
    for w in &loaded.warnings {
        warn!("config: {w}");
    }
    let mut cfg = loaded.config;
    if let Some(s) = socket {
        info!(
            "control socket {} (from --socket, not daemon.control_socket)",
            s.display()
        );
        cfg.daemon.control_socket = s;
    }
    bpffs::require_root("wklb daemon")?;
    let _pin_lock = locks::lock(
        &locks::pin_lock_path(&cfg.daemon.pin_path),
        &format!("pin path {}", cfg.daemon.pin_path.display()),
    )?;
    let _sock_lock = locks::lock(
        &cfg.daemon.control_socket.with_extension("lock"),
        &format!("control socket {}", cfg.daemon.control_socket.display()),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(config_path.to_path_buf(), cfg))
}

/// Refuses interfaces on which some other XDP program runs (another wklb daemon with its own
/// pin path, or anything else): attaching would fail after the maps were pinned.
fn check_interfaces_free(cfg: &Config) -> Result<()> {
    let ours = links::pinned_interfaces(
        &bpffs::resolve_pin_dir(&cfg.daemon.pin_path)
            .map(|p| p.path)
            .unwrap_or_else(|_| cfg.daemon.pin_path.clone()),
    );
    for iface in &cfg.daemon.interfaces {
        if let Some((id, name)) = netdev::attached_xdp(iface)
            && !ours.contains(iface)
        {
            bail!(
                "interface {iface} already runs XDP program {name:?} (id {id}) that pin path {} does not own: another wklb daemon (with another pin_path) or another XDP program holds it; stop it, or run this daemon with that daemon's pin_path",
                cfg.daemon.pin_path.display()
            );
        }
        if netdev::driver(iface).as_deref() == Some("veth") {
            warn!(
                "{iface} is a veth: frames redirected into a veth reach its peer only if the peer has GRO on (`ethtool -K PEER gro on`) or an XDP program, frames the edge answers itself (XDP_TX: SYN-cookie handshakes, echo replies, fragmentation-needed) reach the peer promptly only if the peer runs an XDP program (XDP_PASS will do), and locally generated packets need tx checksum offload off on the senders (`ethtool -K DEV tx off`); see the README's namespace lab notes"
            );
        }
    }
    Ok(())
}

fn interfaces(cfg: &Config) -> Result<Vec<Interface>> {
    cfg.daemon
        .interfaces
        .iter()
        .map(|name| {
            Ok(Interface {
                name: name.clone(),
                ifindex: netdev::ifindex(name)
                    .with_context(|| format!("interface {name} is gone"))?,
                mtu: netdev::mtu(name).unwrap_or(1500),
            })
        })
        .collect()
}

/// Removes pins this daemon created if start-up fails after loading (adopted pins stay).
struct CreatedPins(Option<PathBuf>);

impl Drop for CreatedPins {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            match links::unload_pinned(&dir) {
                Ok(_) => warn!(
                    "start-up failed: removed the pins it had created under {}",
                    dir.display()
                ),
                Err(e) => error!(
                    "start-up failed and removing its pins under {} failed too: {e:#}",
                    dir.display()
                ),
            }
        }
    }
}

async fn run_async(config_path: PathBuf, cfg: Config) -> Result<()> {
    check_interfaces_free(&cfg)?;
    // Sockets first: a clash stops the daemon before anything is attached.
    let control = crate::control::bind(&cfg.daemon.control_socket)?;
    let metrics_listener = metrics::bind(cfg.daemon.metrics_listen).await?;
    let (mut program, maps, counters, flows, pins, conn_opens) = load_data_plane(&cfg)?;
    let mut created = CreatedPins((!pins.adopted).then(|| pins.dir.path.clone()));
    let snat_capacity = flows.slots() / lb_common::SLOTS_PER_SNAT_ADDR;
    let (ctl, summary) = Controller::new(maps, cfg.clone(), interfaces(&cfg)?, snat_capacity)?;
    summary.iter().for_each(|l| info!("{l}"));
    warm_neighbors(&ctl).await;
    let attachments = attach(&mut program, &pins.dir.path, &cfg)?;
    created.0 = None;
    let (handle, controller_thread) = thread::spawn(ctl)?;
    handle.send(Command::Attached(attachments))?;
    let ctx = Arc::new(Ctx {
        handle: handle.clone(),
        counters,
        flows: flows.clone(),
        config_path,
        shutdown: Notify::new(),
        unload_requested: AtomicBool::new(false),
        announcer: tokio::sync::Mutex::new(Announcer::new(&cfg)),
        conn_log: Arc::new(Default::default()),
    });
    let stop_expiry = Arc::new(AtomicBool::new(false));
    let log = match &cfg.conn_log {
        Some(l) => {
            let tx = crate::connlog::spawn_writer(l, ctx.conn_log.clone())?;
            info!(
                "connection log: {}",
                l.path
                    .as_ref()
                    .map_or("standard output".to_string(), |p| p.display().to_string())
            );
            Some(tx)
        }
        None => None,
    };
    let expiry =
        crate::controller::expiry::spawn(flows, handle.clone(), stop_expiry.clone(), log.clone());
    let probes = metrics::ProbeMetrics::new();
    let h2 = handle.clone();
    let m = Arc::new(metrics::Metrics::new(&probes));
    let tasks = [
        tokio::spawn(metrics::serve(metrics_listener, m, ctx.clone())),
        tokio::spawn(crate::control::serve(control.publish()?, ctx.clone())),
        tokio::spawn(tasks::health_scheduler(handle.clone(), probes)),
        tokio::spawn(tasks::neighbor_loop(handle.clone())),
        tokio::spawn(tasks::cookie_watch(handle.clone(), ctx.counters.clone())),
        tokio::spawn(tasks::announce_loop(ctx.clone())),
        tokio::spawn(async move {
            if let Some(tx) = log
                && let Err(e) = crate::connlog::read_opens(conn_opens, h2, tx).await
            {
                error!("connection log: reading open records stopped: {e:#}");
            }
        }),
    ];
    info!(
        "wklb daemon ready: control socket {}, metrics http://{}/metrics",
        cfg.daemon.control_socket.display(),
        cfg.daemon.metrics_listen
    );
    let failed = signals(&ctx, &handle, pins.dir.persistent, &cfg).await?;
    for t in tasks {
        t.abort();
    }
    stop_expiry.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&cfg.daemon.control_socket);
    let unload = ctx.unload_requested.load(Ordering::SeqCst);
    if unload {
        // Withdraw first: the BGP daemon stops sending traffic before XDP goes away.
        match ctx.announcer.lock().await.withdraw_all().await {
            Ok(removed) => removed
                .iter()
                .for_each(|r| info!("unload: withdrew the route {r}")),
            Err(e) => error!("unload: withdrawing the VIP routes failed: {e:#}"),
        }
    }
    // Drop our handles (program, maps) first so only the pins hold the objects.
    let _ = handle.send(Command::Stop);
    drop((ctx, handle));
    let _ = expiry.join();
    let _ = controller_thread.join();
    drop(program);
    finish(unload, failed, &pins)
}

type DataPlane = (
    kernel::Program,
    kernel::KernelMaps,
    Arc<kernel::KernelCounters>,
    Arc<kernel::KernelFlows>,
    kernel::Pins,
    aya::maps::RingBuf<aya::maps::MapData>,
);

/// Loads the XDP object, adopting the maps pinned by an earlier daemon when there are any.
fn load_data_plane(cfg: &Config) -> Result<DataPlane> {
    let Loaded {
        mut program,
        maps,
        counters,
        flows,
        pins,
        ..
    } = kernel::load(&LoadOptions {
        max_flows: cfg.conntrack.max_flows,
        snat_slots: cfg.snat_slots(),
        pin_dir: Some(cfg.daemon.pin_path.clone()),
        conn_log: cfg.conn_log.is_some(),
    })?;
    let pins = pins.context("the data plane was loaded without pins")?;
    // Printed only when daemon.log_data_path_events lets the program emit them (CONFIG flag).
    program.forward_log_events();
    info!(
        "data plane {} (pinned under {})",
        if pins.adopted {
            "adopted: flows and counters kept"
        } else {
            "loaded"
        },
        cfg.daemon.pin_path.display()
    );
    let conn_opens = program.take_conn_opens()?;
    Ok((program, maps, counters, flows, pins, conn_opens))
}

/// Resolves the backends' neighbour entries before XDP needs them (up to a second).
async fn warm_neighbors<M: crate::dataplane::Maps>(ctl: &Controller<M>) {
    let addrs: std::collections::BTreeSet<std::net::IpAddr> = ctl
        .state()
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.address))
        .collect();
    match crate::sys::neighbors::warm(&addrs, std::time::Duration::from_secs(1)).await {
        Ok(n) => info!(
            "neighbour entries: {n} of {} backend address(es) resolved",
            addrs.len()
        ),
        Err(e) => warn!("neighbour warm-up: {e:#} (the kernel resolves backends on first use)"),
    }
}

/// After every handle is dropped: unload when asked, and fail when the controller died.
fn finish(unload: bool, failed: bool, pins: &kernel::Pins) -> Result<()> {
    if unload {
        for line in links::unload_pinned(&pins.dir.path)? {
            info!("unload: {line}");
        }
    }
    if failed {
        bail!(
            "the controller stopped unexpectedly; the data plane stays attached with its last tables"
        );
    }
    Ok(())
}

/// Attaches (or adopts the pinned link) on every configured interface; detaches pinned links on
/// interfaces no longer configured.
fn attach(
    program: &mut kernel::Program,
    pin_dir: &Path,
    cfg: &Config,
) -> Result<Vec<links::Attachment>> {
    for iface in links::pinned_interfaces(pin_dir) {
        if !cfg.daemon.interfaces.contains(&iface) {
            links::detach_pinned(pin_dir, &iface)?;
            info!("detached XDP from {iface} (no longer in daemon.interfaces)");
        }
    }
    let mut out = Vec::new();
    for iface in &cfg.daemon.interfaces {
        let a = program.attach_pinned(pin_dir, iface, cfg.daemon.xdp_mode)?;
        info!("XDP on {iface}: {}", a.mode);
        out.push(a);
    }
    Ok(out)
}

/// Waits for a reason to stop; true when it is a failure (the controller died).
async fn signals(ctx: &Ctx, handle: &Handle, persistent: bool, cfg: &Config) -> Result<bool> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stopping = |sig: &str| {
        if persistent {
            info!(
                "{sig}: stopping; XDP stays attached on {} and every flow is kept for the next daemon",
                cfg.daemon.interfaces.join(", ")
            );
        } else {
            warn!(
                "{sig}: stopping; the pins live in this process's own bpffs, so XDP on {} is detached when it exits and every connection breaks; start the daemon where /sys/fs/bpf is the host's bpffs to make restarts hitless",
                cfg.daemon.interfaces.join(", ")
            );
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { stopping("SIGTERM"); return Ok(false); }
            _ = int.recv() => { stopping("SIGINT"); return Ok(false); }
            _ = hup.recv() => match crate::control::reload(ctx).await {
                Ok(c) if c.changes.is_empty() => info!("SIGHUP: config reloaded, nothing changed"),
                Ok(_) => info!("SIGHUP: config reloaded"),
                Err(e) => error!("SIGHUP reload refused, nothing applied: {e:#}"),
            },
            _ = ctx.shutdown.notified() => return Ok(false),
            _ = handle.stopped.notified() => {
                error!("the controller thread stopped; exiting non-zero so the service manager restarts the daemon");
                return Ok(true);
            }
        }
    }
}
