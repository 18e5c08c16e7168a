//! `wklb`: the daemon and its CLI in one binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::{cli, config, daemon, dataplane::Dataplane, protocol::Request};

/// wklb: XDP L4 load balancer for WuKongIM edge hosts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Control socket of the daemon.
    #[arg(
        long,
        global = true,
        env = "WKLB_SOCKET",
        default_value = "/run/wklb/wklb.sock"
    )]
    socket: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller: load/adopt the data plane, health checks, control socket, metrics.
    Daemon {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without touching the kernel.
    CheckConfig { file: PathBuf },
    /// VIPs.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Backends: list, add, remove, drain, weight (runtime changes; the file is the truth on reload).
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Counters per VIP and backend, and every drop/pass reason.
    Stats {
        /// Repeat every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// With --watch: stop after N reports.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Live connections: client, backend, SNAT address:port, state, age.
    Conns {
        #[arg(long)]
        vip: Option<String>,
        /// ADDRESS:PORT of a backend.
        #[arg(long)]
        backend: Option<SocketAddr>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Which backend a new flow from CLIENT_IP:PORT to the VIP gets (the kernel's hash and table).
    Lookup { client: String, vip: String },
    /// Re-read the config file and apply only the difference.
    Reload,
    /// Detach XDP and remove every pinned object (breaks live connections).
    Unload {
        /// Pin directory, when no daemon is running.
        #[arg(long, default_value = "/sys/fs/bpf/wklb")]
        pin_path: PathBuf,
    },
    /// Load the XDP program, print the verifier's instruction count, unload.
    Verify,
}

#[derive(Subcommand)]
enum VipCmd {
    List,
}

#[derive(Subcommand)]
enum BackendCmd {
    List {
        #[arg(long)]
        vip: Option<String>,
    },
    Add {
        vip: String,
        /// ADDRESS or ADDRESS:PORT (port defaults to the VIP's).
        backend: String,
        #[arg(long, default_value_t = 100)]
        weight: u32,
    },
    Remove {
        vip: String,
        backend: String,
    },
    /// Weight 0: no new connections; existing ones stay until they end.
    Drain {
        vip: String,
        backend: String,
    },
    Weight {
        vip: String,
        backend: String,
        weight: u32,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wklb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `backend weight` and `backend drain` (weight 0).
fn set_weight(
    s: &std::path::Path,
    vip: String,
    backend: &str,
    weight: u32,
    json: bool,
) -> Result<()> {
    let (address, port) = cli::parse_backend(backend)?;
    cli::simple(
        s,
        &Request::BackendWeight {
            vip,
            address,
            port,
            weight,
        },
        json,
    )
}

fn run(cli: Cli) -> Result<()> {
    let s = cli.socket.as_path();
    let json = cli.json;
    match cli.cmd {
        Cmd::Daemon { config } => daemon::run(&config),
        Cmd::CheckConfig { file } => match config::load(&file, true) {
            Ok(c) => {
                let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
                println!(
                    "{}: OK ({} VIP(s), {backends} backend(s))",
                    file.display(),
                    c.vips.len()
                );
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        Cmd::Vip { cmd: VipCmd::List } => cli::vip_list(s, json),
        Cmd::Backend { cmd } => match cmd {
            BackendCmd::List { vip } => cli::backend_list(s, vip, json),
            BackendCmd::Add {
                vip,
                backend,
                weight,
            } => {
                let (address, port) = cli::parse_backend(&backend)?;
                cli::simple(
                    s,
                    &Request::BackendAdd {
                        vip,
                        address,
                        port,
                        weight,
                    },
                    json,
                )
            }
            BackendCmd::Remove { vip, backend } => {
                let (address, port) = cli::parse_backend(&backend)?;
                cli::simple(s, &Request::BackendRemove { vip, address, port }, json)
            }
            BackendCmd::Drain { vip, backend } => set_weight(s, vip, &backend, 0, json),
            BackendCmd::Weight {
                vip,
                backend,
                weight,
            } => set_weight(s, vip, &backend, weight, json),
        },
        Cmd::Stats { watch, count } => cli::stats(s, json, watch, count),
        Cmd::Conns {
            vip,
            backend,
            limit,
        } => cli::conns(s, vip, backend, limit, json),
        Cmd::Lookup { client, vip } => cli::lookup(s, &client, &vip, json),
        Cmd::Reload => cli::simple(s, &Request::Reload, json),
        Cmd::Unload { pin_path } => {
            if s.exists() && std::os::unix::net::UnixStream::connect(s).is_ok() {
                return cli::simple(s, &Request::Unload, json);
            }
            let removed = Dataplane::unload_pinned(&pin_path)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_path.display());
            }
            for r in removed {
                println!("{r}");
            }
            Ok(())
        }
        Cmd::Verify => {
            let mut dp = Dataplane::load(&Default::default())?;
            println!("verified instructions: {}", dp.verified_instructions()?);
            Ok(())
        }
    }
}
