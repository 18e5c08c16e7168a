//! The control socket: one JSON request per line, one JSON response per line. Only root can
//! connect (the socket is mode 0600), like the CLI that needs root anyway.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use anyhow::{Context as _, Result, bail};
use log::{debug, info};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    daemon::{Shared, monotonic_ns},
    protocol::{Request, Response},
};

/// Binds the socket, refusing when a live daemon already answers on it.
pub fn bind(path: &Path) -> Result<UnixListener> {
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
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, shared).await {
                debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let mut unload = false;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                unload = req == Request::Unload;
                let shared = shared.clone();
                // Map syscalls and table builds block: keep them off the async workers.
                tokio::task::spawn_blocking(move || dispatch(&shared, req)).await?
            }
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp)?;
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
        w.flush().await?;
        if unload && resp.ok {
            // Only now: stopping earlier could end the runtime before the answer is out.
            shared.shutdown.notify_one();
            return Ok(());
        }
    }
    Ok(())
}

fn dispatch(shared: &Shared, req: Request) -> Response {
    match dispatch_inner(shared, req) {
        Ok(r) => r,
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn dispatch_inner(shared: &Shared, req: Request) -> Result<Response> {
    let runtime_note =
        "runtime change: the config file is unchanged, so a reload or restart reverts it";
    Ok(match req {
        Request::VipList => Response::ok(shared.lock()?.stats()?.vips),
        Request::BackendList { vip } => {
            let ctl = shared.lock()?;
            if let Some(v) = &vip
                && !ctl.vip_names().contains(v)
            {
                bail!("no VIP named {v:?} (known: {})", ctl.vip_names().join(", "));
            }
            let all = ctl.stats()?.backends;
            Response::ok(
                all.into_iter()
                    .filter(|b| vip.as_ref().is_none_or(|v| &b.vip == v))
                    .collect::<Vec<_>>(),
            )
        }
        Request::BackendAdd {
            vip,
            address,
            port,
            weight,
        } => {
            let msg = shared.lock()?.add_backend(&vip, address, port, weight)?;
            shared.changed();
            info!("{msg}");
            Response::ok(format!("{msg} ({runtime_note})"))
        }
        Request::BackendRemove { vip, address, port } => {
            let msg = shared.lock()?.remove_backend(&vip, address, port)?;
            shared.changed();
            info!("{msg}");
            Response::ok(format!("{msg} ({runtime_note})"))
        }
        Request::BackendWeight {
            vip,
            address,
            port,
            weight,
        } => {
            let msg = shared.lock()?.set_weight(&vip, address, port, weight)?;
            info!("{msg}");
            Response::ok(format!("{msg} ({runtime_note})"))
        }
        Request::Stats => Response::ok(shared.lock()?.stats()?),
        Request::Conns {
            vip,
            backend,
            limit,
        } => {
            let mut c = shared
                .lock()?
                .conns(vip.as_deref(), backend, monotonic_ns())?;
            if let Some(n) = limit {
                c.truncate(n);
            }
            Response::ok(c)
        }
        Request::Lookup { client, vip } => Response::ok(shared.lock()?.lookup(client, &vip)?),
        Request::Reload => {
            let summary = shared.reload()?;
            for line in &summary {
                info!("reload: {line}");
            }
            Response::ok(summary)
        }
        Request::Unload => {
            *shared
                .unload_requested
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))? = true;
            Response::ok(
                "unloading: detaching XDP and removing every pinned object; the daemon exits",
            )
        }
    })
}
