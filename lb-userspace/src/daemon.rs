//! `wklb daemon --config FILE`: loads (or adopts) the data plane, programs it from the config,
//! runs health checks, expires flows, serves the control socket and /metrics.
//!
//! SIGTERM/SIGINT stop the daemon and leave the program attached and every map pinned: a new
//! daemon adopts them and no connection breaks. `wklb unload` removes everything.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
    task::JoinHandle,
};

use crate::{
    config::{self, Config, ProbeKind},
    controller::{Controller, ProbeTarget},
    dataplane::{Dataplane, LoadOptions},
    health,
    metrics::{self, BackendLabels, ProbeRtt},
};

/// State shared by the daemon's tasks.
pub struct Shared {
    pub ctl: Arc<Mutex<Controller>>,
    pub config_path: PathBuf,
    /// Probe targets changed (reload, add, remove): the scheduler re-syncs.
    pub targets_changed: Notify,
    /// Same event, for the neighbour warm-up task.
    pub targets_changed_neigh: Notify,
    /// Stop the daemon; `unload` also detaches and removes the pinned objects.
    pub shutdown: Notify,
    pub unload_requested: Mutex<bool>,
    pub rtt: ProbeRtt,
}

impl Shared {
    /// The backend set changed: re-sync probes and resolve new neighbours.
    pub fn changed(&self) {
        self.targets_changed.notify_one();
        self.targets_changed_neigh.notify_one();
    }

    pub fn lock(&self) -> Result<std::sync::MutexGuard<'_, Controller>> {
        self.ctl
            .lock()
            .map_err(|_| anyhow!("controller state poisoned by an earlier panic"))
    }

    /// Re-reads the config file and applies only the difference. An invalid file changes
    /// nothing.
    pub fn reload(&self) -> Result<Vec<String>> {
        let new = config::load(&self.config_path, true).map_err(|e| anyhow!("{e}"))?;
        let mut ctl = self.lock()?;
        let old = ctl.config().clone();
        for (what, a, b) in [
            (
                "daemon.pin_path",
                format!("{:?}", old.daemon.pin_path),
                format!("{:?}", new.daemon.pin_path),
            ),
            (
                "daemon.control_socket",
                format!("{:?}", old.daemon.control_socket),
                format!("{:?}", new.daemon.control_socket),
            ),
            (
                "daemon.metrics_listen",
                old.daemon.metrics_listen.to_string(),
                new.daemon.metrics_listen.to_string(),
            ),
            (
                "daemon.interfaces",
                format!("{:?}", old.daemon.interfaces),
                format!("{:?}", new.daemon.interfaces),
            ),
            (
                "conntrack.max_flows",
                old.conntrack.max_flows.to_string(),
                new.conntrack.max_flows.to_string(),
            ),
        ] {
            if a != b {
                bail!(
                    "{what} changed ({a} -> {b}): that needs a daemon restart; nothing was applied"
                );
            }
        }
        let summary = ctl.apply(new)?;
        drop(ctl);
        self.changed();
        Ok(summary)
    }
}

/// An exclusive lock on a file, held while the daemon runs and removed when it ends.
struct LockFile {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_file(path: &Path, what: &str) -> Result<LockFile> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another wklb daemon already uses {what} (lock {} is held)",
            path.display()
        );
    }
    Ok(LockFile {
        _file: f,
        path: path.to_path_buf(),
    })
}

/// Lock file of a pin directory: one daemon per pin path.
fn pin_lock_path(pin: &Path) -> PathBuf {
    let name: String = pin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/wklb/locks").join(format!("pin{name}.lock"))
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_coarse_ns, used for flow timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn run(config_path: &Path) -> Result<()> {
    let cfg = config::load(config_path, true).map_err(|e| anyhow!("{e}"))?;
    crate::privileges::require_root("wklb daemon")?;
    let _pin_lock = lock_file(
        &pin_lock_path(&cfg.daemon.pin_path),
        &format!("pin path {}", cfg.daemon.pin_path.display()),
    )?;
    let sock_lock = cfg.daemon.control_socket.with_extension("lock");
    let _sock_lock = lock_file(
        &sock_lock,
        &format!("control socket {}", cfg.daemon.control_socket.display()),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(config_path.to_path_buf(), cfg))
}

async fn run_async(config_path: PathBuf, cfg: Config) -> Result<()> {
    let dp = Dataplane::load(&LoadOptions {
        max_flows: cfg.conntrack.max_flows,
        pin_dir: Some(cfg.daemon.pin_path.clone()),
    })?;
    let adopted = dp.adopted();
    info!(
        "data plane {} (pinned under {})",
        if adopted {
            "adopted: flows and counters kept"
        } else {
            "loaded"
        },
        cfg.daemon.pin_path.display()
    );
    let (mut ctl, summary) = Controller::new(dp, cfg.clone())?;
    for line in &summary {
        info!("{line}");
    }
    // Resolve the backends' MACs before traffic arrives (see neighbors.rs).
    let addrs = ctl.backend_addresses();
    let n = crate::neighbors::warm(&addrs, Duration::from_secs(1));
    info!(
        "neighbour entries: {n} of {} backend address(es) resolved",
        addrs.len()
    );
    // Interfaces: attach (or adopt the pinned link); detach ones no longer configured.
    let pin_dir = ctl
        .dataplane()
        .pin_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.daemon.pin_path.clone());
    for iface in Dataplane::pinned_interfaces(&pin_dir) {
        if !cfg.daemon.interfaces.contains(&iface) {
            Dataplane::detach_pinned(&pin_dir, &iface)?;
            info!("detached XDP from {iface} (no longer in daemon.interfaces)");
        }
    }
    for iface in &cfg.daemon.interfaces {
        let how = ctl.dataplane().attach_pinned(iface, cfg.daemon.xdp_mode)?;
        info!("XDP on {iface}: {how}");
    }
    let ctl = Arc::new(Mutex::new(ctl));
    let shared = Arc::new(Shared {
        ctl: ctl.clone(),
        config_path,
        targets_changed: Notify::new(),
        targets_changed_neigh: Notify::new(),
        shutdown: Notify::new(),
        unload_requested: Mutex::new(false),
        rtt: metrics::probe_rtt_family(),
    });

    let registry = Arc::new(metrics::registry(ctl.clone(), shared.rtt.clone()));
    let metrics_listener = metrics::bind(cfg.daemon.metrics_listen).await?;
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, registry));
    let socket = cfg.daemon.control_socket.clone();
    let listener = crate::control::bind(&socket)?;
    let control_task = tokio::spawn(crate::control::serve(listener, shared.clone()));
    let health_task = tokio::spawn(health_scheduler(shared.clone()));
    let gc_task = tokio::spawn(expiry_loop(shared.clone(), cfg.daemon.gc_interval));
    let neigh_task = tokio::spawn(neighbor_loop(shared.clone()));
    info!(
        "wklb daemon ready: control socket {}, metrics http://{}/metrics",
        socket.display(),
        cfg.daemon.metrics_listen
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; the data plane stays attached"); break; }
            _ = int.recv() => { info!("SIGINT: stopping; the data plane stays attached"); break; }
            _ = hup.recv() => match shared.reload() {
                Ok(s) if s.is_empty() => info!("SIGHUP: config reloaded, nothing changed"),
                Ok(s) => for line in s { info!("SIGHUP reload: {line}"); },
                Err(e) => error!("SIGHUP reload refused, nothing applied: {e:#}"),
            },
            _ = shared.shutdown.notified() => break,
        }
    }
    for t in [control_task, health_task, gc_task, metrics_task, neigh_task] {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if *shared
        .unload_requested
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
    {
        // Drop our handles (program, maps) first so only the pins hold the objects.
        let pin = cfg.daemon.pin_path.clone();
        drop(shared);
        drop(ctl);
        for line in Dataplane::unload_pinned(&pin)? {
            info!("unload: {line}");
        }
    }
    Ok(())
}

/// One probing task per backend target; re-synced when the target set changes.
async fn health_scheduler(shared: Arc<Shared>) {
    let mut tasks: BTreeMap<ProbeTarget, (config::HealthCheck, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let wanted = match shared.lock() {
            Ok(c) => c.probe_targets(),
            Err(e) => {
                error!("{e:#}");
                return;
            }
        };
        let wanted: BTreeMap<ProbeTarget, config::HealthCheck> = wanted.into_iter().collect();
        tasks.retain(|t, (hc, h)| {
            let keep = wanted.get(t) == Some(hc);
            if !keep {
                h.abort();
            }
            keep
        });
        for (t, hc) in wanted {
            if tasks.contains_key(&t) || hc.kind == ProbeKind::None {
                continue;
            }
            let h = tokio::spawn(probe_loop(shared.clone(), t.clone(), hc.clone()));
            tasks.insert(t, (hc, h));
        }
        shared.targets_changed.notified().await;
    }
}

async fn probe_loop(shared: Arc<Shared>, t: ProbeTarget, hc: config::HealthCheck) {
    // Spread the first probes over one interval so many backends do not probe in lockstep.
    let jitter = (t.probe_addr.port() as u64 * 7919
        + t.probe_addr.ip().to_string().len() as u64 * 104_729)
        % hc.interval.as_millis().max(1) as u64;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let labels = BackendLabels {
        vip: t.vip.clone(),
        backend: t.backend.to_string(),
    };
    loop {
        tick.tick().await;
        let r = health::probe(&hc, t.probe_addr).await;
        shared
            .rtt
            .get_or_create(&labels)
            .observe(r.rtt.as_secs_f64());
        let res = shared.lock().and_then(|mut c| c.record_probe(&t, &r));
        if let Err(e) = res {
            error!("applying the health of {} failed: {e:#}", t.backend);
        }
    }
}

/// Keeps backend neighbour entries fresh, and resolves new backends right after a change.
async fn neighbor_loop(shared: Arc<Shared>) {
    loop {
        if let Ok(c) = shared.lock() {
            crate::neighbors::poke(&c.backend_addresses());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = shared.targets_changed_neigh.notified() => {}
        }
    }
}

async fn expiry_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let res = shared.lock().and_then(|mut c| c.expire(monotonic_ns()));
        match res {
            Ok(0) => {}
            Ok(n) => log::debug!("expired {n} idle flow(s)"),
            Err(e) => warn!("flow expiry pass failed: {e:#}"),
        }
    }
}
