//! The control socket: one JSON request per line, one JSON response per line. Only root can
//! connect (the socket is mode 0600), like the CLI that needs root anyway. Reads are answered
//! from the controller's snapshot and the maps; changes go to the controller thread.

pub mod protocol;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use log::{debug, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    config::{self, Checks},
    controller::reports::{self, ConnFilter},
    ctx::Ctx,
    report::EdgeReport,
    sys::clock::monotonic_ns,
};
use protocol::{Changes, EdgeChange, Endpoint, Request, Response};

/// The socket bound at start-up under a temporary name, refusing when a live daemon already
/// answers on the real one. `publish` gives it its real name once the daemon is ready, so a
/// client that can connect is talking to a daemon whose data plane is attached.
pub struct Bound {
    listener: Option<UnixListener>,
    starting: std::path::PathBuf,
    path: std::path::PathBuf,
}

pub fn bind(path: &Path) -> Result<Bound> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another wklb daemon answers on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let starting = path.with_extension("starting");
    let _ = std::fs::remove_file(&starting);
    let listener = UnixListener::bind(&starting)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(&starting, std::fs::Permissions::from_mode(0o600))?;
    Ok(Bound {
        listener: Some(listener),
        starting,
        path: path.to_path_buf(),
    })
}

impl Bound {
    /// Moves the socket to its real name: the daemon is ready.
    pub fn publish(mut self) -> Result<UnixListener> {
        std::fs::rename(&self.starting, &self.path)
            .with_context(|| format!("publishing the control socket {}", self.path.display()))?;
        self.starting = std::path::PathBuf::new();
        self.listener
            .take()
            .context("the control socket was published twice")
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if !self.starting.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.starting);
        }
    }
}

pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, ctx).await {
                debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, ctx: Arc<Ctx>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let mut unload = false;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                unload = req == Request::Unload;
                match dispatch(&ctx, req).await {
                    Ok(r) => r,
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp)?;
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
        w.flush().await?;
        if unload && resp.ok {
            // Only now: stopping earlier could end the runtime before the answer is out.
            ctx.shutdown.notify_one();
            return Ok(());
        }
    }
    Ok(())
}

/// Runs a read on a blocking thread (scans of the flow table, counter syscalls).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

const RUNTIME_NOTE: &str =
    "runtime change: the config file is unchanged, so a reload or restart reverts it";

fn changed(msg: String) -> Response {
    info!("{msg}");
    Response::ok(Changes {
        changes: vec![msg],
        note: Some(RUNTIME_NOTE.into()),
    })
}

async fn dispatch(ctx: &Arc<Ctx>, req: Request) -> Result<Response> {
    let h = &ctx.handle;
    Ok(match req {
        Request::VipList => Response::ok(ctx.stats().await?.vips),
        Request::BackendList { vip } => {
            if let Some(v) = &vip {
                h.snapshot().vip(v)?;
            }
            let all = ctx.stats().await?.backends;
            Response::ok(
                all.into_iter()
                    .filter(|b| vip.as_ref().is_none_or(|v| &b.vip == v))
                    .collect::<Vec<_>>(),
            )
        }
        Request::BackendAdd {
            vip,
            backend: Endpoint { address, port },
            weight,
            group,
        } => changed(h.add_backend(vip, address, port, weight, group).await?),
        Request::BackendRemove {
            vip,
            backend: Endpoint { address, port },
        } => changed(h.remove_backend(vip, address, port).await?),
        Request::BackendWeight {
            vip,
            backend: Endpoint { address, port },
            weight,
        } => changed(h.set_weight(vip, address, port, weight).await?),
        Request::Stats => Response::ok(ctx.stats().await?),
        Request::Conns {
            vip,
            backend,
            client,
            snat,
            limit,
        } => {
            let f = ConnFilter {
                vip,
                backend: backend.map(|e| (e.address, e.port)),
                client: client.map(|e| (e.address, e.port)),
                snat: snat.map(|e| (e.address, e.port)),
                limit,
            };
            let (snap, flows) = (h.snapshot(), ctx.flows.clone());
            Response::ok(
                blocking(move || reports::conns(&snap, flows.as_ref(), &f, monotonic_ns())).await?,
            )
        }
        Request::Lookup { client, vip } => {
            let (snap, flows) = (h.snapshot(), ctx.flows.clone());
            Response::ok(
                blocking(move || reports::lookup(&snap, flows.as_ref(), client, &vip)).await?,
            )
        }
        Request::SourceEdit {
            vip,
            list,
            prefix,
            add,
        } => {
            let net = crate::config::parse_prefix(&prefix).map_err(|e| anyhow::anyhow!(e))?;
            changed(h.edit_source_list(vip, list, net, add).await?)
        }
        Request::SourceList { list, vip } => {
            let snap = h.snapshot();
            if let Some(v) = &vip {
                snap.vip(v)?;
            }
            Response::ok(reports::source_list(&snap, list, vip.as_deref()))
        }
        Request::Reload => Response::ok(reload(ctx).await?),
        Request::EdgeStatus => Response::ok(edge_report(ctx).await?),
        Request::EdgeDrain => Response::ok(edge_drain(ctx, true).await?),
        Request::EdgeUndrain => Response::ok(edge_drain(ctx, false).await?),
        Request::Unload => {
            ctx.unload_requested.store(true, Ordering::SeqCst);
            Response::ok(Changes {
                changes: vec![
                    "unloading: detaching XDP and removing every pinned object; the daemon exits"
                        .into(),
                ],
                note: None,
            })
        }
    })
}

const NO_ANNOUNCE: &str = "announcing is off: the config has no [announce] section, so this edge installs no VIP route a BGP daemon could advertise or withdraw";

async fn edge_report(ctx: &Ctx) -> Result<EdgeReport> {
    ctx.stats()
        .await?
        .edge
        .ok_or_else(|| anyhow::anyhow!(NO_ANNOUNCE))
}

/// Sets or clears the drain mark and applies it to the routes before answering.
async fn edge_drain(ctx: &Ctx, drain: bool) -> Result<EdgeChange> {
    let snap = ctx.handle.snapshot();
    let a = snap
        .config
        .announce
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!(NO_ANNOUNCE))?;
    let was = crate::announce::drain::since(&a.drain_file).is_some();
    let msg = match (drain, was) {
        (true, true) => "already drained: no VIP route is announced".to_string(),
        (true, false) => {
            crate::announce::drain::set(&a.drain_file)?;
            "drained: every VIP route withdrawn; existing connections are served until they close"
                .to_string()
        }
        (false, false) => "not drained: nothing to undo".to_string(),
        (false, true) => {
            crate::announce::drain::clear(&a.drain_file)?;
            "undrained: each VIP address is announced again while it can serve".to_string()
        }
    };
    ctx.announcer.lock().await.reconcile(&snap).await?;
    if was != drain {
        info!("edge {msg}");
    }
    Ok(EdgeChange {
        changes: vec![msg],
        edge: edge_report(ctx).await?,
    })
}

/// Re-reads the config file and applies only the difference. An invalid file, or one that
/// changes a restart-only setting, changes nothing.
pub async fn reload(ctx: &Ctx) -> Result<Changes> {
    let _reloading = crate::systemd::reloading();
    let path = ctx.config_path.clone();
    let loaded =
        blocking(move || config::load(&path, Checks::Host).map_err(|e| anyhow::anyhow!("{e}")))
            .await?;
    for w in &loaded.warnings {
        warn!("config: {w}");
    }
    let mut cfg = loaded.config;
    // The command line's values are not changes of the file.
    ctx.overrides.apply(&mut cfg);
    let level = cfg.daemon.log_level;
    let changes = ctx.handle.reload(cfg).await?;
    crate::logging::apply_config(ctx.overrides.log_level, level);
    for line in &changes {
        info!("reload: {line}");
    }
    Ok(Changes {
        changes,
        note: None,
    })
}
