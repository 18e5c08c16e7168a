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
    config::{self, Checks, Config, Overrides},
    controller::{
        Controller,
        state::Interface,
        thread::{self, Command, Handle},
    },
    ctx::Ctx,
    dataplane::{
        Flows as _,
        kernel::{self, LoadOptions, Loaded},
        links,
    },
    logging::{self, VERSION_LINE},
    metrics,
    sys::{bpffs, netdev},
};

/// `overrides`: what the command line sets over the file (`--socket`, `--log-level`); kept on
/// every reload.
pub fn run(config_path: &Path, overrides: Overrides) -> Result<()> {
    info!(
        "wklb {VERSION_LINE} starting: config {}, pid {}",
        config_path.display(),
        std::process::id()
    );
    let loaded = config::load(config_path, Checks::Host).map_err(|e| anyhow!("{e}"))?;
    for w in &loaded.warnings {
        warn!("config: {w}");
    }
    let mut cfg = loaded.config;
    overrides.apply(&mut cfg);
    logging::apply_config(overrides.log_level, cfg.daemon.log_level);
    if let Some(s) = &overrides.control_socket {
        info!(
            "control socket {} (from --socket, not daemon.control_socket)",
            s.display()
        );
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
    rt.block_on(run_async(config_path.to_path_buf(), cfg, overrides))
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

async fn run_async(config_path: PathBuf, cfg: Config, overrides: Overrides) -> Result<()> {
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
    let heartbeat = crate::systemd::Heartbeat::default();
    heartbeat.beat();
    let (handle, controller_thread) =
        thread::spawn(ctl, crate::systemd::Watchdog::from_env(heartbeat.clone()))?;
    handle.send(Command::Attached(attachments))?;
    let ctx = Arc::new(Ctx {
        handle: handle.clone(),
        counters,
        flows: flows.clone(),
        config_path,
        overrides,
        shutdown: Notify::new(),
        unload_requested: AtomicBool::new(false),
        announcer: tokio::sync::Mutex::new(Announcer::new(&cfg)),
        conn_log: Arc::new(Default::default()),
    });
    let stop_expiry = Arc::new(AtomicBool::new(false));
    let log = conn_log_writer(&cfg, &ctx)?;
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
        tokio::spawn(tasks::cookie_watch(
            handle.clone(),
            ctx.counters.clone(),
            ctx.flows.clone(),
        )),
        tokio::spawn(tasks::announce_loop(ctx.clone())),
        tokio::spawn(crate::systemd::ready_and_status(ctx.clone(), heartbeat)),
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
    crate::systemd::stopping();
    for t in tasks {
        t.abort();
    }
    stop_expiry.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&cfg.daemon.control_socket);
    let unload = ctx.unload_requested.load(Ordering::SeqCst);
    if unload {
        withdraw_all(&ctx).await;
    }
    // Drop our handles (program, maps) first so only the pins hold the objects.
    let _ = handle.send(Command::Stop);
    drop((ctx, handle));
    let _ = expiry.join();
    let _ = controller_thread.join();
    drop(program);
    finish(unload, failed, &pins)
}

/// The connection log's writer thread, when the log is on.
fn conn_log_writer(
    cfg: &Config,
    ctx: &Ctx,
) -> Result<Option<std::sync::mpsc::Sender<crate::connlog::Record>>> {
    let Some(l) = &cfg.conn_log else {
        return Ok(None);
    };
    let tx = crate::connlog::spawn_writer(l, ctx.conn_log.clone())?;
    info!(
        "connection log: {}",
        l.path
            .as_ref()
            .map_or("standard output".to_string(), |p| p.display().to_string())
    );
    Ok(Some(tx))
}

/// `wklb unload`: the routes go first, so the BGP daemon stops sending traffic before XDP goes.
async fn withdraw_all(ctx: &Ctx) {
    match ctx.announcer.lock().await.withdraw_all().await {
        Ok(removed) => removed
            .iter()
            .for_each(|r| info!("unload: withdrew the route {r}")),
        Err(e) => error!("unload: withdrawing the VIP routes failed: {e:#}"),
    }
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
