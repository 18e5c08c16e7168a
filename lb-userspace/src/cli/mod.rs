//! The `wklb` command line: argument definitions here, what each command does in `commands`,
//! tables in `render`. Every command honours `--json` with one shape,
//! `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`.

mod commands;
pub mod render;

pub use commands::{PipeClosed, Silent, parse_endpoint};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::schema::defaults;

/// Rows `wklb conns` shows unless `--limit` says otherwise (a busy edge has millions).
pub const CONNS_LIMIT: usize = 100;

/// wklb: an XDP L4 load balancer for WuKongIM edge ("access layer") hosts.
#[derive(Parser)]
#[command(name = "wklb", version = crate::logging::VERSION_LINE, about, propagate_version = true)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace). Default: RUST_LOG when set, else the
    /// config's daemon.log_level, else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<crate::logging::LogLevel>,
    /// Control socket of the daemon [default: /run/wklb/wklb.sock]. With `daemon`, overrides
    /// daemon.control_socket.
    #[arg(long, global = true, env = "WKLB_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output: one JSON document, {"ok": true, "data": ...} or
    /// {"ok": false, "error": "..."}.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the controller: load or adopt the data plane, health checks, control socket, metrics.
    Daemon {
        /// The TOML configuration (see examples/wklb.toml).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (and this host: interfaces, SNAT addresses) without touching the
    /// kernel.
    CheckConfig {
        file: PathBuf,
        /// Check the file only, not this host.
        #[arg(long)]
        offline: bool,
    },
    /// VIPs and their counters.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Backends: list, add, remove, drain, weight. Runtime changes; the file is the truth on
    /// reload.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// A VIP's deny list: sources (IPv4 prefixes) refused new connections. Runtime changes; the
    /// file is the truth on reload.
    Deny {
        #[command(subcommand)]
        cmd: SourceCmd,
    },
    /// A VIP's allow list: sources always admitted (exceptions to the deny list and to the
    /// per-source rate limit). Runtime changes; the file is the truth on reload.
    Allow {
        #[command(subcommand)]
        cmd: SourceCmd,
    },
    /// Counters per VIP and backend, flows, SNAT use, interfaces, and every verdict reason.
    Stats {
        /// Repeat every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// Stop after N reports (needs --watch).
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Live connections: client, backend, SNAT address:port, state, age. Maps what a data node
    /// sees (SNAT address:port) back to the client.
    Conns {
        /// Only this VIP's.
        #[arg(long)]
        vip: Option<String>,
        /// Only those to this backend: ADDRESS or ADDRESS:PORT.
        #[arg(long, value_name = "ADDR[:PORT]")]
        backend: Option<String>,
        /// Only those from this client: ADDRESS or ADDRESS:PORT.
        #[arg(long, value_name = "ADDR[:PORT]")]
        client: Option<String>,
        /// Only those using this SNAT address (and port): what the data node saw.
        #[arg(long, value_name = "ADDR[:PORT]")]
        snat: Option<String>,
        /// At most N rows (the total and how many were left out are still reported);
        /// 0 = every row.
        #[arg(long, value_name = "N", default_value_t = CONNS_LIMIT)]
        limit: usize,
    },
    /// Which backend a new flow from CLIENT_IP:PORT to the VIP gets (the kernel's hash and
    /// table), and the existing flow of that tuple if there is one.
    Lookup {
        /// VIP name
        vip: String,
        /// CLIENT_IP:PORT
        client: String,
    },
    /// This edge's anycast announcement: status, drain (withdraw every VIP route, keep serving
    /// existing connections), undrain. Needs an [announce] section.
    Edge {
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Re-read the config file and apply only the difference (SIGHUP does the same).
    Reload,
    /// Detach XDP and remove every pinned object (breaks live connections).
    Unload {
        /// Pin directory, when no daemon is running.
        #[arg(long, default_value = defaults::PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Load the XDP program, print the verifier's instruction count, unload.
    Verify,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), generated from
    /// these definitions. bash: `wklb completions bash > /etc/bash_completion.d/wklb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these definitions: `wklb man | man -l -`.
    Man,
}

#[derive(Subcommand)]
pub enum EdgeCmd {
    /// Each VIP address: announced or withdrawn, and why; the drain mark; open connections.
    Status,
    /// Withdraw every VIP route (remembered across restarts) and keep serving existing
    /// connections; prints how many are open.
    Drain {
        /// Then check the open connections every second, report the count whenever it changes,
        /// and return once none is left.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after SECS seconds (exit status 1 if connections remain).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
    },
    /// Clear the drain mark: each VIP address is announced again while it can serve.
    Undrain,
}

#[derive(Subcommand)]
pub enum VipCmd {
    /// Every VIP with its table mode and counters.
    List,
}

#[derive(Subcommand)]
pub enum SourceCmd {
    /// The list's entries.
    List {
        /// Only this VIP's.
        #[arg(long)]
        vip: Option<String>,
    },
    /// Add a prefix (ADDRESS or ADDRESS/LEN) for new connections to VIP.
    Add { vip: String, prefix: String },
    /// Remove a prefix.
    Remove { vip: String, prefix: String },
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Backends with health, weight and counters.
    List {
        /// Only this VIP's.
        #[arg(long)]
        vip: Option<String>,
    },
    /// Add a backend; it takes new connections once its health checks pass.
    Add {
        vip: String,
        /// ADDRESS or ADDRESS:PORT (port defaults to the VIP's).
        backend: String,
        #[arg(long, default_value_t = defaults::WEIGHT as u32)]
        weight: u32,
        /// Its backend group ([[vip.group]]); default: `default`.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove a backend: no new connections; its existing ones keep working until they end.
    Remove {
        vip: String,
        /// ADDRESS or ADDRESS:PORT.
        backend: String,
    },
    /// Weight 0: no new connections; existing ones stay until they end.
    Drain {
        vip: String,
        /// ADDRESS or ADDRESS:PORT.
        backend: String,
    },
    /// Set a backend's weight (relative share of new connections).
    Weight {
        vip: String,
        /// ADDRESS or ADDRESS:PORT.
        backend: String,
        weight: u32,
    },
}

/// Runs the command; errors are printed by the caller (as text or in the JSON shape).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    commands::run(cli)
}

/// Prints an error in the shape `--json` promises.
pub fn print_error(json: bool, e: &anyhow::Error) {
    if json {
        let v = crate::control::protocol::Response::err(format!("{e:#}"));
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprintln!("wklb: {e:#}");
    }
}
