//! The TOML configuration: schema (`schema`), validation (`validate`) and what a reload may
//! change (`diff`).
//!
//! Parsing and validation never touch the kernel (`wklb check-config`). Every problem is
//! reported with its key path and line, all at once (unknown keys included), and an invalid
//! file changes nothing.

pub mod diff;
#[cfg(test)]
mod docs;
pub mod schema;
mod validate;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{PROTO_TCP, PROTO_UDP, conntrack::Timeouts};
use serde::Serialize;

use crate::dataplane::links::AttachMode;

/// Largest backend weight accepted (config and CLI).
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub conntrack: Conntrack,
    pub snat: Snat,
    pub data_path: DataPath,
    pub syn_cookies: SynCookies,
    /// None: this edge installs no VIP route (no `[announce]` section).
    pub announce: Option<Announce>,
    /// None: no connection log (`[conn_log]` absent or `enabled = false`).
    pub conn_log: Option<ConnLog>,
    pub vips: Vec<Vip>,
}

/// What this edge announces: a /32 route per VIP address in a kernel routing table that the
/// host's BGP daemon (BIRD, FRR, GoBGP) reads and advertises, present while the edge can serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    /// Kernel routing table wklb owns for its VIP routes (not used for forwarding).
    pub table: u32,
    /// Names of the VIPs whose addresses are announced.
    pub vips: Vec<String>,
    /// What a VIP whose backends are all down does to its address's route.
    pub when_all_down: WhenAllDown,
    /// Exists while the edge is drained (`wklb edge drain`): survives restarts and reboots.
    pub drain_file: PathBuf,
}

/// Where every connection's open and close records go (JSON lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLog {
    /// A file (rotated by size), or None for stdout (journald).
    pub path: Option<PathBuf>,
    /// Rotate when the file reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` .. `path.N`).
    pub keep: u32,
}

/// When every backend of an announced VIP is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenAllDown {
    /// Keep announcing: fail-open sends new flows to every backend (a cluster-wide health
    /// failure, such as a leader election, must not withdraw the VIP from every edge at once).
    Keep,
    /// Withdraw the address: other edges, whose view may differ, take the traffic.
    Withdraw,
}

impl WhenAllDown {
    pub const fn name(self) -> &'static str {
        match self {
            WhenAllDown::Keep => "keep",
            WhenAllDown::Withdraw => "withdraw",
        }
    }
}

/// SYN-cookie mode of a TCP VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieMode {
    /// SYNs always go to the backends.
    Off,
    /// Cookies while the VIP is under SYN pressure (see `SynCookies`).
    #[default]
    Auto,
    /// Every SYN is answered with a cookie.
    Always,
}

impl CookieMode {
    pub const fn name(self) -> &'static str {
        match self {
            CookieMode::Off => "off",
            CookieMode::Auto => "auto",
            CookieMode::Always => "always",
        }
    }
}

/// The PROXY protocol header a TCP VIP puts in front of each connection's first bytes toward
/// its data node (the client's address under full NAT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

impl ProxyProtocol {
    pub const fn name(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// When `auto` cookie mode engages and releases.
#[derive(Clone, Debug, PartialEq)]
pub struct SynCookies {
    /// SYNs per second to one VIP that do not complete a handshake, at which cookie mode
    /// engages (a new flow refused for lack of SNAT ports or table space engages it too).
    pub engage_syn_rate: u64,
    /// Cookie mode releases after this long below half the engage rate with no refusal.
    pub release_after: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Daemon {
    pub interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    pub pin_path: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub gc_interval: Duration,
    /// Print the data path's rare events (internal errors, first "table full") in the log.
    pub log_data_path_events: bool,
    /// The log level unless `--log-level` or `RUST_LOG` says otherwise (reloadable).
    pub log_level: crate::logging::LogLevel,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conntrack {
    pub max_flows: u32,
    pub timeouts: Timeouts,
    pub non_syn_pass: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
}

impl Snat {
    /// Concurrent flows the SNAT addresses can carry (ports are unique per SNAT address).
    pub fn capacity(&self) -> u64 {
        lb_common::slot::capacity(self.addresses.len() as u32, self.port_min, self.port_max)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MssClamp {
    Off,
    /// The egress MTU minus the IP and TCP headers.
    Auto,
    Fixed(u16),
}

#[derive(Clone, Debug, PartialEq)]
pub struct DataPath {
    pub mss_clamp: MssClamp,
    pub echo_reply: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub health: HealthCheck,
    /// SYN-cookie mode (UDP VIPs: always off).
    pub syn_cookies: CookieMode,
    /// PROXY protocol toward the data nodes (UDP VIPs: always off).
    pub proxy_protocol: ProxyProtocol,
    pub sources: SourcePolicy,
    pub backends: Vec<BackendConfig>,
    /// Backend groups with priorities, and which group each backend is in.
    pub groups: Groups,
    /// Source prefixes pinned to some of the groups.
    pub pins: Vec<Pin>,
    /// The VIP's guaranteed share of the connection table and of the SNAT ports (`max_flows`);
    /// None: an even split of what the set ones leave (see lb_common::shares).
    pub max_flows: Option<u32>,
}

impl Vip {
    /// A VIP with every option at its default and no backends.
    pub fn new(name: impl Into<String>, address: IpAddr, port: u16, protocol: Protocol) -> Self {
        Vip {
            name: name.into(),
            address,
            port,
            protocol,
            health: HealthCheck::default(),
            syn_cookies: if protocol == Protocol::Tcp {
                CookieMode::Auto
            } else {
                CookieMode::Off
            },
            proxy_protocol: ProxyProtocol::Off,
            sources: SourcePolicy::default(),
            backends: Vec::new(),
            groups: Groups::default(),
            pins: Vec::new(),
            max_flows: None,
        }
    }
}

/// Clients in `sources` are only ever sent to backends of `groups` (data residency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub sources: std::collections::BTreeSet<ipnet::Ipv4Net>,
    pub groups: Vec<String>,
    /// When the pinned groups have no backend: the VIP's table decides (true) instead of a
    /// refusal (false).
    pub spill: bool,
}

/// The group every backend is in unless it names another.
pub const DEFAULT_GROUP: &str = "default";

/// A VIP's backend groups: a group at a lower priority number is preferred, and new flows
/// spill to the next priority as its healthy share falls (`controller::priority`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Declared groups, and `default` (priority 0) when a backend is in no declared group.
    pub groups: Vec<Group>,
    /// Backend (address, port) → group name; a backend not listed is in `default`.
    pub of_backend: BTreeMap<(IpAddr, u16), String>,
    /// Overprovisioning factor in percent (140 = 1.4).
    pub overprovisioning_pct: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub priority: u32,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            groups: vec![Group {
                name: DEFAULT_GROUP.into(),
                priority: 0,
            }],
            of_backend: BTreeMap::new(),
            overprovisioning_pct: schema::defaults::OVERPROVISIONING_PCT,
        }
    }
}

impl Groups {
    /// The group of a backend.
    pub fn group_of(&self, address: IpAddr, port: u16) -> &str {
        self.of_backend
            .get(&(address, port))
            .map(String::as_str)
            .unwrap_or(DEFAULT_GROUP)
    }

    pub fn get(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The priority of a backend's group.
    pub fn priority_of(&self, address: IpAddr, port: u16) -> u32 {
        self.get(self.group_of(address, port))
            .map(|g| g.priority)
            .unwrap_or(0)
    }
}

/// Which sources may open connections to a VIP, and how fast.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    pub deny: std::collections::BTreeSet<ipnet::Ipv4Net>,
    pub allow: std::collections::BTreeSet<ipnet::Ipv4Net>,
    /// New connections per second per source; 0 = no limit.
    pub rate: u32,
    /// Connections at once before the rate applies.
    pub burst: u32,
    /// Concurrent connections per source (enforced at every expiry pass); 0 = no limit.
    pub max_conns: u32,
}

/// A VIP's source lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceList {
    Deny,
    Allow,
}

impl SourceList {
    pub const fn name(self) -> &'static str {
        match self {
            SourceList::Deny => "deny",
            SourceList::Allow => "allow",
        }
    }
}

impl SourcePolicy {
    pub fn list(&self, l: SourceList) -> &std::collections::BTreeSet<ipnet::Ipv4Net> {
        match l {
            SourceList::Deny => &self.deny,
            SourceList::Allow => &self.allow,
        }
    }
    pub fn list_mut(&mut self, l: SourceList) -> &mut std::collections::BTreeSet<ipnet::Ipv4Net> {
        match l {
            SourceList::Deny => &mut self.deny,
            SourceList::Allow => &mut self.allow,
        }
    }
}

/// Parses a source prefix: IPv4 CIDR (a bare address is a /32) without host bits.
pub fn parse_prefix(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let net = if s.contains('/') {
        s.parse::<ipnet::Ipv4Net>()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix like \"203.0.113.0/24\""))?
    } else {
        let a: std::net::Ipv4Addr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or prefix"))?;
        ipnet::Ipv4Net::new(a, 32).expect("/32 is valid")
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; the prefix is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    None,
    Tcp,
    Http {
        path: String,
        headers: BTreeMap<String, String>,
        expect_status: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: ProbeKind,
    /// Port probed on each backend; None = the backend's own port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        use schema::defaults as d;
        HealthCheck {
            kind: ProbeKind::Tcp,
            port: None,
            interval: humantime::parse_duration(d::HC_INTERVAL).expect("default"),
            timeout: humantime::parse_duration(d::HC_TIMEOUT).expect("default"),
            rise: d::HC_RISE as u32,
            fall: d::HC_FALL as u32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 0 = keep the client's destination port (any-port VIPs).
    pub port: u16,
    pub weight: u32,
}

/// What the command line sets over the file. Applied to the file's config at start and again
/// to every reloaded one, so a value given on the command line is never taken for a change of
/// a restart-only key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--socket` / `WKLB_SOCKET` with `wklb daemon`: `daemon.control_socket`.
    pub control_socket: Option<PathBuf>,
    /// `--log-level`: `daemon.log_level`.
    pub log_level: Option<crate::logging::LogLevel>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(s) = &self.control_socket {
            cfg.daemon.control_socket = s.clone();
        }
        if let Some(l) = self.log_level {
            cfg.daemon.log_level = l;
        }
    }
}

impl Config {
    pub fn vip(&self, name: &str) -> Option<&Vip> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// SNAT addresses the flow table gets slots for (65,536 each): enough for the configured
    /// addresses and for `max_flows`, so adding addresses later (a reload) rarely needs a
    /// restart. Fixed for the life of the pinned maps.
    pub fn snat_slots(&self) -> u32 {
        let range = (self.snat.port_max as u64 - self.snat.port_min as u64 + 1).max(1);
        let for_flows = (self.conntrack.max_flows as u64).div_ceil(range) as u32;
        (self.snat.addresses.len() as u32)
            .max(for_flows)
            .clamp(1, lb_common::MAX_SNAT_ADDRS)
    }
}

// ---------------------------------------------------------------- errors

/// One problem (or warning) in a config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// Key path, e.g. `vip[0].backend[1].weight`.
    pub path: String,
    /// 1-based line, when the value came from the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} error(s):",
            self.file.display(),
            self.errors.len()
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What validation checks beyond the file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    /// The file only.
    Offline,
    /// Also this host: interfaces exist, SNAT addresses are assigned here.
    Host,
}

/// A valid configuration and what deserves a warning in it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// Reads and validates a file.
pub fn load(file: &Path, checks: Checks) -> Result<Loaded, ConfigErrors> {
    let src = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        errors: vec![ConfigError {
            path: "(file)".into(),
            line: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&src, checks).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}

/// Parses and validates TOML text.
pub fn parse(src: &str, checks: Checks) -> Result<Loaded, Vec<ConfigError>> {
    validate::parse(src, checks)
}

#[cfg(test)]
mod tests;
