//! The TOML configuration: schema, parsing and validation.
//!
//! Parsing and validation never touch the kernel (`wklb check-config`). Every problem is
//! reported with its key path and line, all at once, and an invalid file changes nothing.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{DataplaneConfig, PROTO_TCP, PROTO_UDP, conntrack::Timeouts};
use serde::Deserialize;
use toml::Spanned;

use crate::dataplane::AttachMode;

// ---------------------------------------------------------------- raw schema (what the file says)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    #[serde(default)]
    conntrack: RawConntrack,
    snat: RawSnat,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    interfaces: Spanned<Vec<String>>,
    #[serde(default = "default_xdp_mode")]
    xdp_mode: Spanned<String>,
    #[serde(default = "default_pin_path")]
    pin_path: PathBuf,
    #[serde(default = "default_control_socket")]
    control_socket: PathBuf,
    #[serde(default = "default_metrics_listen")]
    metrics_listen: Spanned<String>,
    /// How often expired flows are removed.
    #[serde(default = "default_gc_interval")]
    gc_interval: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConntrack {
    #[serde(default = "default_max_flows")]
    max_flows: Spanned<i64>,
    #[serde(default = "default_established")]
    tcp_established_timeout: Spanned<String>,
    #[serde(default = "default_udp")]
    udp_timeout: Spanned<String>,
    #[serde(default = "default_syn")]
    tcp_syn_timeout: Spanned<String>,
    #[serde(default = "default_closing")]
    tcp_closing_timeout: Spanned<String>,
    #[serde(default = "default_closed")]
    tcp_closed_timeout: Spanned<String>,
    /// "drop" (default) or "pass" for TCP non-SYN packets without state.
    #[serde(default = "default_non_syn")]
    non_syn_policy: Spanned<String>,
}

impl Default for RawConntrack {
    fn default() -> Self {
        RawConntrack {
            max_flows: default_max_flows(),
            tcp_established_timeout: default_established(),
            udp_timeout: default_udp(),
            tcp_syn_timeout: default_syn(),
            tcp_closing_timeout: default_closing(),
            tcp_closed_timeout: default_closed(),
            non_syn_policy: default_non_syn(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnat {
    addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_port_min")]
    port_min: Spanned<i64>,
    #[serde(default = "default_port_max")]
    port_max: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Spanned<i64>,
    #[serde(default = "default_protocol")]
    protocol: Spanned<String>,
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(default = "default_hc_kind")]
    kind: Spanned<String>,
    port: Option<Spanned<i64>>,
    #[serde(default = "default_hc_path")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_expect_status")]
    expect_status: Spanned<i64>,
    #[serde(default = "default_interval")]
    interval: Spanned<String>,
    #[serde(default = "default_timeout")]
    timeout: Spanned<String>,
    #[serde(default = "default_rise_fall")]
    rise: Spanned<i64>,
    #[serde(default = "default_rise_fall")]
    fall: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    port: Option<Spanned<i64>>,
    #[serde(default = "default_weight")]
    weight: Spanned<i64>,
}

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_xdp_mode() -> Spanned<String> {
    sp("auto".into())
}
fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/wklb")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/wklb/wklb.sock")
}
fn default_metrics_listen() -> Spanned<String> {
    sp("127.0.0.1:9330".into())
}
fn default_gc_interval() -> Spanned<String> {
    sp("5s".into())
}
fn default_max_flows() -> Spanned<i64> {
    sp(lb_common::DEFAULT_MAX_FLOWS as i64)
}
fn default_established() -> Spanned<String> {
    sp("15m".into())
}
fn default_udp() -> Spanned<String> {
    sp("60s".into())
}
fn default_syn() -> Spanned<String> {
    sp("30s".into())
}
fn default_closing() -> Spanned<String> {
    sp("60s".into())
}
fn default_closed() -> Spanned<String> {
    sp("10s".into())
}
fn default_non_syn() -> Spanned<String> {
    sp("drop".into())
}
fn default_port_min() -> Spanned<i64> {
    sp(DataplaneConfig::DEFAULT_SNAT_PORT_MIN as i64)
}
fn default_port_max() -> Spanned<i64> {
    sp(DataplaneConfig::DEFAULT_SNAT_PORT_MAX as i64)
}
fn default_protocol() -> Spanned<String> {
    sp("tcp".into())
}
fn default_hc_kind() -> Spanned<String> {
    sp("tcp".into())
}
fn default_hc_path() -> String {
    "/health".into()
}
fn default_expect_status() -> Spanned<i64> {
    sp(200)
}
fn default_interval() -> Spanned<String> {
    sp("1s".into())
}
fn default_timeout() -> Spanned<String> {
    sp("500ms".into())
}
fn default_rise_fall() -> Spanned<i64> {
    sp(2)
}
fn default_weight() -> Spanned<i64> {
    sp(100)
}

// ---------------------------------------------------------------- validated config

/// Largest backend weight accepted (config and CLI).
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub conntrack: Conntrack,
    pub snat: Snat,
    pub vips: Vec<Vip>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Daemon {
    pub interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    pub pin_path: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub gc_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conntrack {
    pub max_flows: u32,
    pub timeouts: Timeouts,
    pub non_syn_pass: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snat {
    pub addresses: Vec<Ipv4Addr>,
    pub port_min: u16,
    pub port_max: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Vip {
    pub name: String,
    pub address: Ipv4Addr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub health: HealthCheck,
    pub backends: Vec<BackendConfig>,
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
        HealthCheck {
            kind: ProbeKind::Tcp,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    /// 0 = keep the client's destination port (any-port VIPs).
    pub port: u16,
    pub weight: u32,
}

impl Config {
    pub fn vip(&self, name: &str) -> Option<&Vip> {
        self.vips.iter().find(|v| v.name == name)
    }
}

// ---------------------------------------------------------------- errors

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
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

struct Collector<'a> {
    src: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> Option<usize> {
        if span.start == 0 && span.end == 0 {
            return None; // a default, not from the file
        }
        Some(
            self.src[..span.start.min(self.src.len())]
                .matches('\n')
                .count()
                + 1,
        )
    }

    fn err<T>(&mut self, path: impl Into<String>, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_of(at.span());
        self.errors.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, v: &Spanned<String>) -> Duration {
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(path, v, "must be longer than 0");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.err(
                    path,
                    v,
                    format!(
                        "{:?} is not a duration like \"500ms\", \"2s\", \"15m\": {e}",
                        v.get_ref()
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn ranged(&mut self, path: &str, v: &Spanned<i64>, lo: i64, hi: i64, what: &str) -> i64 {
        let n = *v.get_ref();
        if n < lo || n > hi {
            self.err(
                path,
                v,
                format!("{what} must be between {lo} and {hi}, got {n}"),
            );
            return lo;
        }
        n
    }

    fn ipv4(&mut self, path: &str, v: &Spanned<String>, role: &str) -> Ipv4Addr {
        match v.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a,
            Ok(IpAddr::V6(a)) => {
                self.err(path, v, format!("{role} {a} is IPv6; this data plane is IPv4 (VIPs, backends and SNAT addresses must all be IPv4)"));
                Ipv4Addr::UNSPECIFIED
            }
            Err(_) => {
                self.err(path, v, format!("{:?} is not an IP address", v.get_ref()));
                Ipv4Addr::UNSPECIFIED
            }
        }
    }
}

// ---------------------------------------------------------------- parsing

/// Reads and validates a file. `check_interfaces` verifies that interfaces exist here.
pub fn load(file: &Path, check_interfaces: bool) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        errors: vec![ConfigError {
            path: "(file)".into(),
            line: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&src, check_interfaces).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}

/// Parses and validates TOML text.
pub fn parse(src: &str, check_interfaces: bool) -> Result<Config, Vec<ConfigError>> {
    let de = toml::Deserializer::parse(src).map_err(|e| vec![toml_error(src, "(syntax)", &e)])?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        vec![toml_error(src, &path, e.inner())]
    })?;
    let mut c = Collector {
        src,
        errors: Vec::new(),
    };
    let cfg = validate(&mut c, raw, check_interfaces);
    if c.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(c.errors)
    }
}

fn toml_error(src: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
    let path = if path.is_empty() || path == "." {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    ConfigError {
        path,
        line,
        message: e.message().trim().to_string(),
    }
}

fn validate(c: &mut Collector, raw: RawConfig, check_interfaces: bool) -> Config {
    // [daemon]
    let d = &raw.daemon;
    if d.interfaces.get_ref().is_empty() {
        c.err(
            "daemon.interfaces",
            &d.interfaces,
            "at least one interface is needed",
        );
    }
    if check_interfaces {
        for (i, name) in d.interfaces.get_ref().iter().enumerate() {
            if crate::netdev::ifindex(name).is_none() {
                c.err(
                    format!("daemon.interfaces[{i}]"),
                    &d.interfaces,
                    format!("interface {name:?} does not exist on this host"),
                );
            }
        }
    }
    let xdp_mode = match d.xdp_mode.get_ref().parse::<AttachMode>() {
        Ok(m) => m,
        Err(_) => {
            c.err(
                "daemon.xdp_mode",
                &d.xdp_mode,
                format!(
                    "{:?} is not one of auto, driver, generic",
                    d.xdp_mode.get_ref()
                ),
            );
            AttachMode::Auto
        }
    };
    let metrics_listen = match d.metrics_listen.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.err(
                "daemon.metrics_listen",
                &d.metrics_listen,
                format!("{:?} is not an address:port", d.metrics_listen.get_ref()),
            );
            SocketAddr::from(([127, 0, 0, 1], 9330))
        }
    };
    let gc_interval = c.duration("daemon.gc_interval", &d.gc_interval);
    let daemon = Daemon {
        interfaces: d.interfaces.get_ref().clone(),
        xdp_mode,
        pin_path: d.pin_path.clone(),
        control_socket: d.control_socket.clone(),
        metrics_listen,
        gc_interval,
    };

    // [conntrack]
    let ct = &raw.conntrack;
    let max_flows = c.ranged(
        "conntrack.max_flows",
        &ct.max_flows,
        1,
        u32::MAX as i64,
        "max_flows",
    ) as u32;
    let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    let timeouts = Timeouts {
        syn_sent_ns: ns(c.duration("conntrack.tcp_syn_timeout", &ct.tcp_syn_timeout)),
        established_ns: ns(c.duration(
            "conntrack.tcp_established_timeout",
            &ct.tcp_established_timeout,
        )),
        closing_ns: ns(c.duration("conntrack.tcp_closing_timeout", &ct.tcp_closing_timeout)),
        closed_ns: ns(c.duration("conntrack.tcp_closed_timeout", &ct.tcp_closed_timeout)),
        udp_ns: ns(c.duration("conntrack.udp_timeout", &ct.udp_timeout)),
    };
    let non_syn_pass = match ct.non_syn_policy.get_ref().as_str() {
        "drop" => false,
        "pass" => true,
        other => {
            c.err(
                "conntrack.non_syn_policy",
                &ct.non_syn_policy,
                format!("{other:?} is not one of drop, pass"),
            );
            false
        }
    };
    let conntrack = Conntrack {
        max_flows,
        timeouts,
        non_syn_pass,
    };

    // [snat]
    let s = &raw.snat;
    if s.addresses.get_ref().is_empty() {
        c.err(
            "snat.addresses",
            &s.addresses,
            "at least one SNAT address is needed (replies from the backends come back to it)",
        );
    }
    if s.addresses.get_ref().len() > lb_common::MAX_SNAT_ADDRS as usize {
        c.err(
            "snat.addresses",
            &s.addresses,
            format!(
                "at most {} SNAT addresses are supported",
                lb_common::MAX_SNAT_ADDRS
            ),
        );
    }
    let mut addresses = Vec::new();
    for (i, a) in s.addresses.get_ref().iter().enumerate() {
        let ip = c.ipv4(&format!("snat.addresses[{i}]"), a, "SNAT address");
        if addresses.contains(&ip) {
            c.err(
                format!("snat.addresses[{i}]"),
                a,
                format!("{ip} is listed twice"),
            );
        }
        addresses.push(ip);
    }
    let port_min = c.ranged("snat.port_min", &s.port_min, 1, 65535, "port_min") as u16;
    let port_max = c.ranged("snat.port_max", &s.port_max, 1, 65535, "port_max") as u16;
    if port_min > port_max {
        c.err(
            "snat.port_max",
            &s.port_max,
            format!("port_max {port_max} is below port_min {port_min}"),
        );
    }
    let snat = Snat {
        addresses,
        port_min,
        port_max,
    };

    // [[vip]]
    let mut vips = Vec::new();
    let mut names = HashSet::new();
    let mut tuples = HashSet::new();
    if raw.vip.len() > lb_common::MAX_VIPS as usize {
        c.errors.push(ConfigError {
            path: "vip".into(),
            line: None,
            message: format!("at most {} VIPs are supported", lb_common::MAX_VIPS),
        });
    }
    for (vi, v) in raw.vip.iter().enumerate() {
        let p = format!("vip[{vi}]");
        let name = v.name.get_ref().clone();
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace()) {
            c.err(
                format!("{p}.name"),
                &v.name,
                "a VIP name must be non-empty without spaces",
            );
        }
        if !names.insert(name.clone()) {
            c.err(
                format!("{p}.name"),
                &v.name,
                format!("VIP name {name:?} is used twice"),
            );
        }
        let address = c.ipv4(&format!("{p}.address"), &v.address, "VIP address");
        let port = c.ranged(
            &format!("{p}.port"),
            &v.port,
            0,
            65535,
            "port (0 = every port)",
        ) as u16;
        let protocol = match v.protocol.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                c.err(
                    format!("{p}.protocol"),
                    &v.protocol,
                    format!("{other:?} is not one of tcp, udp"),
                );
                Protocol::Tcp
            }
        };
        if !tuples.insert((address, port, protocol)) {
            c.err(
                format!("{p}.address"),
                &v.address,
                format!(
                    "another VIP already serves {address}:{port}/{}",
                    protocol.name()
                ),
            );
        }
        let health = match &v.health_check {
            None => HealthCheck::default(),
            Some(h) => health_check(c, &format!("{p}.health_check"), h),
        };
        if v.backend.is_empty() {
            c.err(
                format!("{p}.backend"),
                &v.name,
                format!("VIP {name:?} has no backends ([[vip.backend]] entries)"),
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::new();
        for (bi, b) in v.backend.iter().enumerate() {
            let bp = format!("{p}.backend[{bi}]");
            let address = c.ipv4(&format!("{bp}.address"), &b.address, "backend address");
            let bport = match &b.port {
                Some(x) => c.ranged(&format!("{bp}.port"), x, 0, 65535, "port") as u16,
                None => port,
            };
            if bport == 0 && port != 0 {
                c.err(
                    format!("{bp}.port"),
                    &b.address,
                    "port 0 (keep the client's port) only fits a VIP with port 0",
                );
            }
            let w = *b.weight.get_ref();
            let weight = if w < 0 {
                c.err(
                    format!("{bp}.weight"),
                    &b.weight,
                    format!("weight must be 0 or more, got {w}"),
                );
                0
            } else if w > MAX_WEIGHT as i64 {
                c.err(
                    format!("{bp}.weight"),
                    &b.weight,
                    format!("weight must be at most {MAX_WEIGHT}, got {w}"),
                );
                0
            } else {
                w as u32
            };
            if backends
                .iter()
                .any(|x| x.address == address && x.port == bport)
            {
                c.err(
                    format!("{bp}.address"),
                    &b.address,
                    format!("backend {address}:{bport} is listed twice"),
                );
            }
            backends.push(BackendConfig {
                address,
                port: bport,
                weight,
            });
        }
        if !v.backend.is_empty() && v.backend.iter().all(|b| *b.weight.get_ref() == 0) {
            c.err(
                format!("{p}.backend"),
                &v.name,
                format!(
                    "every backend of VIP {name:?} has weight 0: it could never take a connection"
                ),
            );
        }
        vips.push(Vip {
            name,
            address,
            port,
            protocol,
            health,
            backends,
        });
    }
    Config {
        daemon,
        conntrack,
        snat,
        vips,
    }
}

fn health_check(c: &mut Collector, p: &str, h: &RawHealthCheck) -> HealthCheck {
    let interval = c.duration(&format!("{p}.interval"), &h.interval);
    let timeout = c.duration(&format!("{p}.timeout"), &h.timeout);
    if timeout >= interval {
        c.err(
            format!("{p}.timeout"),
            &h.timeout,
            format!(
                "timeout {} must be shorter than interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let rise = c.ranged(&format!("{p}.rise"), &h.rise, 1, 100, "rise") as u32;
    let fall = c.ranged(&format!("{p}.fall"), &h.fall, 1, 100, "fall") as u32;
    let port = h
        .port
        .as_ref()
        .map(|x| c.ranged(&format!("{p}.port"), x, 1, 65535, "port") as u16);
    let kind = match h.kind.get_ref().as_str() {
        "none" => ProbeKind::None,
        "tcp" => ProbeKind::Tcp,
        "http" => {
            let status = c.ranged(
                &format!("{p}.expect_status"),
                &h.expect_status,
                100,
                599,
                "expect_status",
            ) as u16;
            if !h.path.starts_with('/') {
                c.errors.push(ConfigError {
                    path: format!("{p}.path"),
                    line: c.line_of(h.kind.span()),
                    message: format!("{:?} must start with /", h.path),
                });
            }
            ProbeKind::Http {
                path: h.path.clone(),
                headers: h.headers.clone(),
                expect_status: status,
            }
        }
        other => {
            c.err(
                format!("{p}.kind"),
                &h.kind,
                format!("{other:?} is not one of tcp, http, none"),
            );
            ProbeKind::None
        }
    };
    HealthCheck {
        kind,
        port,
        interval,
        timeout,
        rise,
        fall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[snat]
addresses = ["192.0.2.10"]

[[vip]]
name = "im-tcp"
address = "198.51.100.1"
port = 5100

[vip.health_check]
kind = "http"
port = 5001
path = "/health"
headers = { token = "secret" }
interval = "1s"
timeout = "500ms"

[[vip.backend]]
address = "192.0.2.21"

[[vip.backend]]
address = "192.0.2.22"
weight = 50
"#;

    fn errors(src: &str) -> Vec<ConfigError> {
        parse(src, false).expect_err("config should be rejected")
    }

    fn one_error(src: &str) -> ConfigError {
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD, false).unwrap();
        assert_eq!(c.daemon.pin_path, PathBuf::from("/sys/fs/bpf/wklb"));
        assert_eq!(c.conntrack.max_flows, 1 << 20);
        assert_eq!(c.conntrack.timeouts.established_ns, 15 * 60 * 1_000_000_000);
        let v = &c.vips[0];
        assert_eq!((v.port, v.protocol), (5100, Protocol::Tcp));
        assert_eq!(
            v.backends[0],
            BackendConfig {
                address: "192.0.2.21".parse().unwrap(),
                port: 5100,
                weight: 100
            }
        );
        assert_eq!(v.backends[1].weight, 50);
        let ProbeKind::Http {
            headers,
            expect_status,
            ..
        } = &v.health.kind
        else {
            panic!()
        };
        assert_eq!((headers["token"].as_str(), *expect_status), ("secret", 200));
        assert_eq!(v.health.port, Some(5001));
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let e = one_error(&GOOD.replace("weight = 50", "weight = 50\nwieght = 3"));
        assert_eq!(e.path, "vip[0].backend[1].wieght");
        assert!(e.message.contains("unknown field `wieght`"), "{e}");
        assert_eq!(e.line, Some(27));
    }

    #[test]
    fn vip_without_backends() {
        let src = GOOD.split("[[vip.backend]]").next().unwrap();
        let e = one_error(src);
        assert_eq!(e.path, "vip[0].backend");
        assert!(e.message.contains("no backends"), "{e}");
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn duplicate_vip_tuple() {
        let dup = format!(
            "{GOOD}\n[[vip]]\nname = \"again\"\naddress = \"198.51.100.1\"\nport = 5100\n[[vip.backend]]\naddress = \"192.0.2.30\"\n"
        );
        let e = one_error(&dup);
        assert_eq!(e.path, "vip[1].address");
        assert!(e.message.contains("198.51.100.1:5100/tcp"), "{e}");
    }

    #[test]
    fn negative_and_all_zero_weights() {
        let e = one_error(&GOOD.replace("weight = 50", "weight = -5"));
        assert_eq!(e.path, "vip[0].backend[1].weight");
        assert!(e.message.contains("-5"), "{e}");
        assert_eq!(e.line, Some(26));
        let zero = GOOD.replace("weight = 50", "weight = 0").replace(
            "address = \"192.0.2.21\"",
            "address = \"192.0.2.21\"\nweight = 0",
        );
        let e = one_error(&zero);
        assert!(e.message.contains("weight 0"), "{e}");
    }

    #[test]
    fn wrong_family() {
        let e = one_error(&GOOD.replace("192.0.2.22", "2001:db8::22"));
        assert_eq!(e.path, "vip[0].backend[1].address");
        assert!(e.message.contains("IPv6"), "{e}");
        let e = one_error(&GOOD.replace("\"192.0.2.10\"", "\"2001:db8::10\""));
        assert_eq!(e.path, "snat.addresses[0]");
    }

    #[test]
    fn bad_duration_and_timeout_not_below_interval() {
        let e = one_error(&GOOD.replace("interval = \"1s\"", "interval = \"soon\""));
        assert_eq!(e.path, "vip[0].health_check.interval");
        assert!(e.message.contains("not a duration"), "{e}");
        let e = one_error(&GOOD.replace("timeout = \"500ms\"", "timeout = \"2s\""));
        assert_eq!(e.path, "vip[0].health_check.timeout");
        assert!(e.message.contains("shorter than interval"), "{e}");
    }

    #[test]
    fn several_errors_are_reported_together() {
        let src = GOOD
            .replace("weight = 50", "weight = -1")
            .replace("timeout = \"500ms\"", "timeout = \"5s\"");
        assert_eq!(errors(&src).len(), 2);
    }

    #[test]
    fn missing_interface_is_an_error_when_checked() {
        let e = parse(&GOOD.replace("eth0", "wklb-no-such-if0"), true).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.path == "daemon.interfaces[0]" && e.message.contains("does not exist")),
            "{e:?}"
        );
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = parse(include_str!("../../examples/wklb.toml"), false).expect("examples/wklb.toml");
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[1].port, 5200);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = one_error("[daemon\ninterfaces = []");
        assert_eq!(e.line, Some(1));
    }
}
