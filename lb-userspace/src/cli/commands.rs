//! What each CLI command does: ask the daemon (or the kernel, for `verify` and `unload` without
//! a daemon) and print the answer as a table or as JSON.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Serialize, de::DeserializeOwned};

use super::{BackendCmd, Cli, Cmd, EdgeCmd, SourceCmd, VipCmd, render};
use crate::{
    config::{self, Checks, SourceList, schema::defaults},
    control::protocol::{Changes, EdgeChange, Endpoint, Request, Response, call},
    daemon::{self, locks},
    dataplane::{kernel, links},
    report::{
        BackendReport, ConnsReport, EdgeReport, LookupReport, SourceEntry, StatsReport, VipReport,
    },
    sys::bpffs,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Stdout was closed by the reader (e.g. `| head -1`): stop quietly.
#[derive(Debug)]
pub struct PipeClosed;

impl std::fmt::Display for PipeClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for PipeClosed {}

/// Prints a line, turning a closed pipe into `PipeClosed`.
fn out(s: impl std::fmt::Display) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match writeln!(o, "{s}").and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(PipeClosed.into()),
        Err(e) => Err(e.into()),
    }
}

/// The `--json` shape of a success.
fn out_json(data: impl Serialize, pretty: bool) -> Result<()> {
    let v = Response::ok(data);
    out(if pretty {
        serde_json::to_string_pretty(&v)?
    } else {
        serde_json::to_string(&v)?
    })
}

struct Client {
    socket: PathBuf,
    json: bool,
}

impl Client {
    fn request<T: DeserializeOwned>(&self, req: &Request) -> Result<T> {
        let resp = call(&self.socket, req, TIMEOUT)?;
        if !resp.ok {
            bail!(
                "{}",
                resp.error
                    .unwrap_or_else(|| "the daemon refused without a reason".into())
            );
        }
        serde_json::from_value(resp.data).context("unexpected answer from the daemon")
    }

    /// A command that changes something: prints what changed (or JSON).
    fn change(&self, req: &Request) -> Result<()> {
        let c: Changes = self.request(req)?;
        if self.json {
            return out_json(&c, true);
        }
        if c.changes.is_empty() {
            out("nothing changed")?;
        }
        for l in &c.changes {
            out(l)?;
        }
        if let Some(n) = &c.note {
            out(format!("({n})"))?;
        }
        Ok(())
    }
}

/// "10.0.0.2", "10.0.0.2:5100" or "[2001:db8::2]:5100".
pub fn parse_endpoint(s: &str) -> Result<Endpoint> {
    if let Ok(address) = s.parse::<IpAddr>() {
        return Ok(Endpoint {
            address,
            port: None,
        });
    }
    match s.parse::<SocketAddr>() {
        Ok(a) => Ok(Endpoint {
            address: a.ip(),
            port: Some(a.port()),
        }),
        Err(_) => bail!("{s:?} is not ADDRESS or ADDRESS:PORT"),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let c = Client {
        socket: cli
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::CONTROL_SOCKET)),
        json,
    };
    match cli.cmd {
        Cmd::Daemon { config } => daemon::run(
            &config,
            crate::config::Overrides {
                control_socket: cli.socket,
                log_level: cli.log_level,
            },
        ),
        Cmd::CheckConfig { file, offline } => check_config(&file, offline, json),
        Cmd::Vip { cmd: VipCmd::List } => {
            let v: Vec<VipReport> = c.request(&Request::VipList)?;
            show(json, &v, |v| render::vips(v))
        }
        Cmd::Backend { cmd } => backend(&c, cmd),
        Cmd::Deny { cmd } => source_list(&c, SourceList::Deny, cmd),
        Cmd::Allow { cmd } => source_list(&c, SourceList::Allow, cmd),
        Cmd::Stats { watch, count } => stats(&c, watch, count),
        Cmd::Conns {
            vip,
            backend,
            client,
            snat,
            limit,
        } => {
            let ep = |s: Option<String>| s.as_deref().map(parse_endpoint).transpose();
            let r: ConnsReport = c.request(&Request::Conns {
                vip,
                backend: ep(backend)?,
                client: ep(client)?,
                snat: ep(snat)?,
                limit: (limit > 0).then_some(limit),
            })?;
            show(json, &r, render::conns)
        }
        Cmd::Lookup { vip, client } => {
            let (vip, client) = lookup_args(vip, client)?;
            let r: LookupReport = c.request(&Request::Lookup { client, vip })?;
            show(json, &r, render::lookup)
        }
        Cmd::Edge { cmd } => edge(&c, cmd),
        Cmd::Reload => c.change(&Request::Reload),
        Cmd::Unload { pin_path } => unload(&c, &pin_path),
        Cmd::Completions { shell } => {
            let mut cmd = <super::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "wklb", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => manual(),
        Cmd::Verify => verify(json),
    }
}

/// The manual page, rendered from the clap definitions.
fn manual() -> Result<()> {
    let cmd = <super::Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(())
}

/// Loads the data plane without pins and prints the verifier's instruction count of every
/// program.
fn verify(json: bool) -> Result<()> {
    let mut l = kernel::load(&kernel::LoadOptions::default())?;
    let mut counts = serde_json::Map::new();
    for name in kernel::program_names() {
        counts.insert(
            name.to_string(),
            l.program.verified_instructions(name)?.into(),
        );
    }
    let v = serde_json::json!({ "verified_instructions": counts });
    show(json, &v, |_| {
        let mut lines = vec!["verified instructions per program:".to_string()];
        lines.extend(counts.iter().map(|(n, c)| format!("  {n:<14} {c}")));
        lines.join("\n")
    })
}

/// Prints `v` as the `--json` document, or as `text` renders it.
fn show<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        out_json(v, true)
    } else {
        out(text(v))
    }
}

fn backend(c: &Client, cmd: BackendCmd) -> Result<()> {
    match cmd {
        BackendCmd::List { vip } => {
            let v: Vec<BackendReport> = c.request(&Request::BackendList { vip })?;
            if c.json {
                out_json(&v, true)
            } else {
                out(render::backends(&v))
            }
        }
        BackendCmd::Add {
            vip,
            backend,
            weight,
            group,
        } => c.change(&Request::BackendAdd {
            vip,
            backend: parse_endpoint(&backend)?,
            weight,
            group,
        }),
        BackendCmd::Remove { vip, backend } => c.change(&Request::BackendRemove {
            vip,
            backend: parse_endpoint(&backend)?,
        }),
        BackendCmd::Drain { vip, backend } => c.change(&Request::BackendWeight {
            vip,
            backend: parse_endpoint(&backend)?,
            weight: 0,
        }),
        BackendCmd::Weight {
            vip,
            backend,
            weight,
        } => c.change(&Request::BackendWeight {
            vip,
            backend: parse_endpoint(&backend)?,
            weight,
        }),
    }
}

fn source_list(c: &Client, list: SourceList, cmd: SourceCmd) -> Result<()> {
    let edit = |vip: String, prefix: String, add: bool| {
        // Checked here too, so a typo is reported without a round trip.
        crate::config::parse_prefix(&prefix).map_err(|e| anyhow!(e))?;
        c.change(&Request::SourceEdit {
            vip,
            list,
            prefix,
            add,
        })
    };
    match cmd {
        SourceCmd::List { vip } => {
            let v: Vec<SourceEntry> = c.request(&Request::SourceList { list, vip })?;
            if c.json {
                out_json(&v, true)
            } else {
                out(render::sources(&v))
            }
        }
        SourceCmd::Add { vip, prefix } => edit(vip, prefix, true),
        SourceCmd::Remove { vip, prefix } => edit(vip, prefix, false),
    }
}

fn check_config(file: &Path, offline: bool, json: bool) -> Result<()> {
    let checks = if offline {
        Checks::Offline
    } else {
        Checks::Host
    };
    match config::load(file, checks) {
        Ok(l) => {
            let c = &l.config;
            let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
            if json {
                return out_json(
                    serde_json::json!({
                        "file": file.display().to_string(),
                        "vips": c.vips.len(),
                        "backends": backends,
                        "warnings": l.warnings,
                    }),
                    true,
                );
            }
            for w in &l.warnings {
                out(format!("warning: {w}"))?;
            }
            out(format!(
                "{}: OK ({} VIP(s), {backends} backend(s){})",
                file.display(),
                c.vips.len(),
                if offline { "; host not checked" } else { "" }
            ))
        }
        Err(e) if json => {
            // The errors as data, for scripts.
            let v = serde_json::json!({
                "ok": false,
                "error": e.to_string(),
                "errors": e.errors,
            });
            out(serde_json::to_string_pretty(&v)?)?;
            Err(Silent.into())
        }
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// An error already printed in full.
#[derive(Debug)]
pub struct Silent;

impl std::fmt::Display for Silent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(reported above)")
    }
}

impl std::error::Error for Silent {}

fn edge(c: &Client, cmd: EdgeCmd) -> Result<()> {
    let (req, wait, timeout) = match cmd {
        EdgeCmd::Status => {
            let r: EdgeReport = c.request(&Request::EdgeStatus)?;
            return if c.json {
                out_json(&r, true)
            } else {
                out(render::edge(&r))
            };
        }
        EdgeCmd::Drain { wait, timeout } => (Request::EdgeDrain, wait, timeout),
        EdgeCmd::Undrain => (Request::EdgeUndrain, false, None),
    };
    let mut r: EdgeChange = c.request(&req)?;
    if !c.json {
        for l in &r.changes {
            out(l)?;
        }
        out(render::edge(&r.edge))?;
    }
    if wait {
        let start = std::time::Instant::now();
        let mut last = None;
        while r.edge.open_flows > 0 {
            if timeout.is_some_and(|t| start.elapsed() >= Duration::from_secs(t)) {
                if c.json {
                    out_json(&r, true)?;
                }
                bail!(
                    "{} connection(s) still open after {} s; the edge stays drained",
                    r.edge.open_flows,
                    start.elapsed().as_secs()
                );
            }
            if last != Some(r.edge.open_flows) {
                // Progress goes to stderr so `--json` stays one document on stdout.
                eprintln!(
                    "{} open connection(s) on this edge ({} s)",
                    r.edge.open_flows,
                    start.elapsed().as_secs()
                );
                last = Some(r.edge.open_flows);
            }
            std::thread::sleep(Duration::from_secs(1));
            r.edge = c.request(&Request::EdgeStatus)?;
        }
        eprintln!(
            "no open connection left on this edge after {} s",
            start.elapsed().as_secs()
        );
    }
    if c.json {
        out_json(&r, true)?;
    }
    Ok(())
}

fn stats(c: &Client, watch: Option<u64>, count: Option<u64>) -> Result<()> {
    let Some(secs) = watch else {
        let s: StatsReport = c.request(&Request::Stats)?;
        return if c.json {
            out_json(&s, true)
        } else {
            out(render::stats(&s))
        };
    };
    if secs == 0 {
        bail!("--watch needs a period of at least 1 second");
    }
    let mut n = 0;
    loop {
        let s: StatsReport = c.request(&Request::Stats)?;
        if c.json {
            // One document per line, for scripts.
            out_json(&s, false)?;
        } else {
            out(format!(
                "--- {} ---\n{}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                render::stats(&s)
            ))?;
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// `lookup VIP CLIENT`; the order of earlier releases (`CLIENT VIP`) still works, with a note.
fn lookup_args(vip: String, client: String) -> Result<(String, SocketAddr)> {
    if let Ok(c) = client.parse() {
        return Ok((vip, c));
    }
    if let Ok(c) = vip.parse::<SocketAddr>() {
        eprintln!(
            "wklb: note: `lookup CLIENT VIP` is the old order; the VIP comes first now: `wklb lookup {client} {c}`"
        );
        return Ok((client, c));
    }
    bail!("{client:?} is not CLIENT_IP:PORT (usage: wklb lookup VIP CLIENT_IP:PORT)")
}

/// Through the daemon when one answers; without one, directly, unless a daemon holds the pin
/// path (then its socket is simply another one than we were given).
fn unload(c: &Client, pin_path: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(&c.socket).is_ok() {
        return c.change(&Request::Unload);
    }
    if locks::is_held(&locks::pin_lock_path(pin_path)) {
        bail!(
            "a wklb daemon is running on pin path {} but does not answer on {}: unload through its socket (`--socket PATH`), or stop it first; nothing was removed",
            pin_path.display(),
            c.socket.display()
        );
    }
    bpffs::require_root("unloading the data plane")?;
    let dir = bpffs::resolve_pin_dir(pin_path)?.path;
    // Withdraw first, so the BGP daemon stops sending traffic before XDP goes away; only the
    // routes of this pin path's VIPs (another instance's stay).
    let vips = links::pinned_vip_addresses(&dir)?;
    let mut removed: Vec<String> = crate::sys::routes::withdraw_blocking(&vips)?
        .iter()
        .map(|r| format!("withdrew the route {r}"))
        .collect();
    removed.extend(links::unload_pinned(&dir)?);
    if c.json {
        return out_json(
            Changes {
                changes: removed,
                note: None,
            },
            true,
        );
    }
    if removed.is_empty() {
        out(format!("nothing pinned under {}", pin_path.display()))?;
    }
    for r in removed {
        out(r)?;
    }
    Ok(())
}
