//! From raw TOML to a checked `Config`: every problem collected with its key path and line.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_common::conntrack::Timeouts;
use toml::Spanned;

use super::{
    Announce, BackendConfig, Checks, Config, ConfigError, Conntrack, CookieMode, DEFAULT_GROUP,
    Daemon, DataPath, Group, Groups, HealthCheck, Loaded, MAX_WEIGHT, MssClamp, Pin, ProbeKind,
    Protocol, Snat, SourceList, SourcePolicy, SynCookies, Vip, WhenAllDown,
    schema::{RawAnnounce, RawBackend, RawConfig, RawHealthCheck, RawVip},
};
use crate::{dataplane::links::AttachMode, sys::netdev};

struct Collector<'a> {
    src: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Collector<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> Option<usize> {
        if span.start == 0 && span.end == 0 {
            return None; // a default, not from the file
        }
        Some(line_at(self.src, span.start))
    }

    fn err<T>(&mut self, path: impl Into<String>, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_of(at.span());
        self.errors.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    fn warn<T>(&mut self, path: impl Into<String>, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_of(at.span());
        self.warnings.push(ConfigError {
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

    /// An address of either family.
    fn ip_any(&mut self, path: &str, v: &Spanned<String>, role: &str) -> IpAddr {
        match v.get_ref().parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    path,
                    v,
                    format!("{role} {:?} is not an IP address", v.get_ref()),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        }
    }
}

fn line_at(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// Parses, collecting unknown keys instead of stopping at the first, then validates.
pub fn parse(src: &str, checks: Checks) -> Result<Loaded, Vec<ConfigError>> {
    let de = toml::Deserializer::parse(src).map_err(|e| vec![toml_error(src, "(syntax)", &e)])?;
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let raw: Result<RawConfig, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note_unknown));
    let mut c = Collector {
        src,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for path in unknown.iter().map(|p| bracketed(p.as_str())) {
        c.errors.push(ConfigError {
            line: key_line(src, &path),
            message: format!("unknown key `{}`", path.rsplit('.').next().unwrap_or(&path)),
            path,
        });
    }
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            c.errors.push(toml_error(src, &path, e.inner()));
            return Err(c.errors);
        }
    };
    let cfg = validate(&mut c, raw, checks);
    if c.errors.is_empty() {
        Ok(Loaded {
            config: cfg,
            warnings: c.warnings,
        })
    } else {
        Err(c.errors)
    }
}

/// `vip.0.backend.1.x` as `vip[0].backend[1].x`, like every other key path we report.
fn bracketed(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The line of the last segment of an unknown key path (`vip[0].backend[1].wieght`): the first
/// line at or after its table's header that starts with the key.
fn key_line(src: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').next()?;
    let key = key.split('[').next()?;
    src.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(key) && t[key.len()..].trim_start().starts_with(['=', '.'])
        })
        .map(|i| i + 1)
}

fn toml_error(src: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_at(src, s.start));
    let path = if path.is_empty() || path == "." {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    let mut message = e.message().trim().to_string();
    // The span of a duplicate key is the key: name it when the message does not.
    if message.contains("duplicate key")
        && let Some(s) = e.span()
    {
        let key = src.get(s).unwrap_or("").trim();
        if !key.is_empty() && !message.contains(key) {
            message = format!("{message} `{key}`");
        }
    }
    ConfigError {
        path,
        line,
        message,
    }
}

fn validate(c: &mut Collector, raw: RawConfig, checks: Checks) -> Config {
    let daemon = daemon(c, &raw, checks);
    let conntrack = conntrack(c, &raw);
    let snat = snat(c, &raw, checks);
    let data_path = data_path(c, &raw);
    let syn_cookies = syn_cookies(c, &raw);
    let vips = vips(c, &raw.vip);
    let announce = raw.announce.as_ref().map(|a| announce(c, a, &vips));
    let conn_log = raw.conn_log.as_ref().and_then(|l| conn_log(c, l));
    let cfg = Config {
        daemon,
        conntrack,
        snat,
        data_path,
        syn_cookies,
        announce,
        conn_log,
        vips,
    };
    cross_checks(c, &raw, &cfg);
    if checks == Checks::Host {
        forwarding(c, &raw, &cfg);
    }
    cfg
}

/// The data path asks the kernel's FIB for the next hop toward backends, and the kernel answers
/// only when forwarding is on for that family on the interface the packet came in on: warn for
/// each interface where a family the backends use has it off.
fn forwarding(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let families = cfg
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .fold((false, false), |(v4, v6), b| {
            (v4 || b.address.is_ipv4(), v6 || b.address.is_ipv6())
        });
    for (i, name) in cfg.daemon.interfaces.iter().enumerate() {
        for (used, family, path) in [
            (
                families.0,
                "IPv4",
                format!("/proc/sys/net/ipv4/conf/{name}/forwarding"),
            ),
            (
                families.1,
                "IPv6",
                format!("/proc/sys/net/ipv6/conf/{name}/forwarding"),
            ),
        ] {
            let off = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0");
            if used && off {
                let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
                c.warn(
                    format!("daemon.interfaces[{i}]"),
                    &raw.daemon.interfaces,
                    format!(
                        "{family} forwarding is off on {name} ({key} = 0): the kernel gives the data path no route to {family} backends for packets arriving there (dropped as drop_fib_failed); `sysctl -w {key}=1`"
                    ),
                );
            }
        }
    }
}

fn daemon(c: &mut Collector, raw: &RawConfig, checks: Checks) -> Daemon {
    let d = &raw.daemon;
    if d.interfaces.get_ref().is_empty() {
        c.err(
            "daemon.interfaces",
            &d.interfaces,
            "at least one interface is needed",
        );
    }
    if checks == Checks::Host {
        for (i, name) in d.interfaces.get_ref().iter().enumerate() {
            if netdev::ifindex(name).is_none() {
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
                    "{:?} is not one of {}",
                    d.xdp_mode.get_ref(),
                    AttachMode::NAMES
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
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    Daemon {
        interfaces: d.interfaces.get_ref().clone(),
        xdp_mode,
        pin_path: d.pin_path.clone(),
        control_socket: d.control_socket.clone(),
        metrics_listen,
        gc_interval: c.duration("daemon.gc_interval", &d.gc_interval),
        log_data_path_events: d.log_data_path_events,
    }
}

fn conntrack(c: &mut Collector, raw: &RawConfig) -> Conntrack {
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
    if timeouts.established_ns < 120_000_000_000 {
        c.warn(
            "conntrack.tcp_established_timeout",
            &ct.tcp_established_timeout,
            "below 2 minutes: WuKongIM clients ping every 25-60 s, so idle but live connections may be cut",
        );
    }
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
    Conntrack {
        max_flows,
        timeouts,
        non_syn_pass,
    }
}

fn snat(c: &mut Collector, raw: &RawConfig, checks: Checks) -> Snat {
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
    let local = if checks == Checks::Host {
        Some(netdev::ip_addresses())
    } else {
        None
    };
    let mut addresses = Vec::new();
    for (i, a) in s.addresses.get_ref().iter().enumerate() {
        let path = format!("snat.addresses[{i}]");
        let ip = c.ip_any(&path, a, "SNAT address");
        if addresses.contains(&ip) {
            c.err(&path, a, format!("{ip} is listed twice"));
        }
        if let Some(local) = &local
            && !local.iter().any(|(l, _)| *l == ip)
        {
            c.err(
                &path,
                a,
                format!(
                    "{ip} is not assigned to any interface of this host: replies from the backends would never reach it (e.g. `ip addr add {ip}/{} dev IFACE`)",
                    if ip.is_ipv4() { 32 } else { 128 }
                ),
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
    if checks == Checks::Host {
        ephemeral_overlap(c, raw, &addresses, port_min, port_max);
    }
    Snat {
        addresses,
        port_min,
        port_max,
    }
}

/// Warns when the SNAT ports overlap the host's ephemeral ports on an address the host picks
/// as a source itself: its own connections could then collide with translated flows.
fn ephemeral_overlap(c: &mut Collector, raw: &RawConfig, addrs: &[IpAddr], min: u16, max: u16) {
    let Some((lo, hi)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
    else {
        return;
    };
    if max < lo || min > hi {
        return;
    }
    let sources = netdev::route_sources();
    for (i, a) in addrs.iter().enumerate() {
        if sources.contains(a) {
            c.warn(
                format!("snat.addresses[{i}]"),
                &raw.snat.port_min,
                format!(
                    "{a} is a source address of this host's routes and ports {min}-{max} overlap its ephemeral ports {lo}-{hi}: the host's own connections from {a} may collide with translated flows; use a dedicated SNAT address or a port range outside {lo}-{hi}"
                ),
            );
        }
    }
}

fn data_path(c: &mut Collector, raw: &RawConfig) -> DataPath {
    let m = &raw.data_path.mss_clamp;
    let mss_clamp = match m.get_ref() {
        toml::Value::String(s) if s == "auto" => MssClamp::Auto,
        toml::Value::String(s) if s == "off" => MssClamp::Off,
        toml::Value::Integer(n) if (536..=9000).contains(n) => MssClamp::Fixed(*n as u16),
        other => {
            c.err(
                "data_path.mss_clamp",
                m,
                format!("{other} is not \"auto\", \"off\" or an MSS between 536 and 9000"),
            );
            MssClamp::Auto
        }
    };
    DataPath {
        mss_clamp,
        echo_reply: raw.data_path.echo_reply,
    }
}

fn syn_cookies(c: &mut Collector, raw: &RawConfig) -> SynCookies {
    let r = &raw.syn_cookies;
    SynCookies {
        engage_syn_rate: c.ranged(
            "syn_cookies.engage_syn_rate",
            &r.engage_syn_rate,
            1,
            100_000_000,
            "SYNs per second",
        ) as u64,
        release_after: c.duration("syn_cookies.release_after", &r.release_after),
    }
}

/// A VIP's cookie mode; UDP has no handshake to answer, so only "off" (or nothing) is accepted.
fn announce(c: &mut Collector, a: &RawAnnounce, vips: &[Vip]) -> Announce {
    let table = c.ranged("announce.table", &a.table, 1, 4_294_967_295, "a table id");
    if (253..=255).contains(&table) {
        c.err(
            "announce.table",
            &a.table,
            format!(
                "table {table} is the kernel's {} table, which forwards traffic; give wklb a table of its own (e.g. 200) that the BGP daemon imports",
                ["default", "main", "local"][(table - 253) as usize]
            ),
        );
    }
    let names = match &a.vips {
        // Every VIP, of both families.
        None => vips.iter().map(|v| v.name.clone()).collect(),
        Some(list) => {
            if list.get_ref().is_empty() {
                c.err(
                    "announce.vips",
                    list,
                    "is empty: name the VIPs to announce, or leave the key out to announce every VIP",
                );
            }
            let mut out: Vec<String> = Vec::new();
            for (i, n) in list.get_ref().iter().enumerate() {
                let p = format!("announce.vips[{i}]");
                let vip = vips.iter().find(|v| &v.name == n.get_ref());
                if vip.is_none() {
                    c.err(&p, n, format!("no VIP is named {:?}", n.get_ref()));
                } else if out.contains(n.get_ref()) {
                    c.err(&p, n, format!("{:?} is listed twice", n.get_ref()));
                } else {
                    out.push(n.get_ref().clone());
                }
            }
            out
        }
    };
    let when_all_down = match a.when_all_backends_down.get_ref().as_str() {
        "keep" => WhenAllDown::Keep,
        "withdraw" => WhenAllDown::Withdraw,
        other => {
            c.err(
                "announce.when_all_backends_down",
                &a.when_all_backends_down,
                format!("{other:?} is not one of keep, withdraw"),
            );
            WhenAllDown::Keep
        }
    };
    Announce {
        table: table as u32,
        vips: names,
        when_all_down,
        drain_file: a.drain_file.clone(),
    }
}

fn conn_log(c: &mut Collector, l: &super::schema::RawConnLog) -> Option<super::ConnLog> {
    let max_bytes = c.ranged(
        "conn_log.max_bytes",
        &l.max_bytes,
        4096,
        1 << 40,
        "bytes before the file is rotated",
    ) as u64;
    let keep = c.ranged("conn_log.keep", &l.keep, 0, 1000, "rotated files kept") as u32;
    let path = l.path.get_ref();
    if path.is_empty() {
        c.err(
            "conn_log.path",
            &l.path,
            "a file path, or \"-\" for standard output",
        );
    }
    l.enabled.then(|| super::ConnLog {
        path: (path != "-").then(|| std::path::PathBuf::from(path)),
        max_bytes,
        keep,
    })
}

fn cookie_mode(c: &mut Collector, p: &str, v: &RawVip, protocol: Protocol) -> CookieMode {
    let mode = match v.syn_cookies.get_ref().as_str() {
        "auto" => CookieMode::Auto,
        "always" => CookieMode::Always,
        "off" => CookieMode::Off,
        other => {
            c.err(
                format!("{p}.syn_cookies"),
                &v.syn_cookies,
                format!("{other:?} is not one of auto, always, off"),
            );
            CookieMode::Auto
        }
    };
    if protocol == Protocol::Udp {
        if mode != CookieMode::Off && c.line_of(v.syn_cookies.span()).is_some() {
            c.err(
                format!("{p}.syn_cookies"),
                &v.syn_cookies,
                "SYN cookies apply to TCP VIPs only (UDP has no handshake); remove the key or set \"off\"",
            );
        }
        return CookieMode::Off;
    }
    mode
}

/// Deny and allow lists and the per-source rate of one VIP.
fn source_policy(c: &mut Collector, p: &str, v: &RawVip) -> SourcePolicy {
    let mut out = SourcePolicy::default();
    for (list, raw) in [(SourceList::Deny, &v.deny), (SourceList::Allow, &v.allow)] {
        for (i, e) in raw.iter().enumerate() {
            let key = format!("{p}.{}[{i}]", list.name());
            match super::parse_prefix(e.get_ref()) {
                Ok(net) if !out.list_mut(list).insert(net) => {
                    c.err(key, e, format!("{net} is listed twice"));
                }
                Ok(_) => {}
                Err(m) => c.err(key, e, m),
            }
        }
    }
    for net in out.deny.intersection(&out.allow) {
        let at = v
            .allow
            .iter()
            .find(|e| super::parse_prefix(e.get_ref()) == Ok(*net));
        if let Some(at) = at {
            c.err(
                format!("{p}.allow"),
                at,
                format!("{net} is on both the deny and the allow list"),
            );
        }
    }
    out.rate = c.ranged(
        &format!("{p}.source_rate"),
        &v.source_rate,
        0,
        1_000_000,
        "new connections per second per source (0 = no limit)",
    ) as u32;
    out.burst = c.ranged(
        &format!("{p}.source_burst"),
        &v.source_burst,
        0,
        1_000_000,
        "connections at once per source (0 = source_rate)",
    ) as u32;
    if out.burst == 0 {
        out.burst = out.rate;
    }
    out.max_conns = c.ranged(
        &format!("{p}.source_max_conns"),
        &v.source_max_conns,
        0,
        1_000_000,
        "concurrent connections per source (0 = no limit)",
    ) as u32;
    if out.deny.len() + out.allow.len() > lb_common::MAX_SOURCE_ENTRIES as usize {
        c.err(
            format!("{p}.deny"),
            &v.source_rate,
            format!(
                "at most {} deny and allow entries in all",
                lb_common::MAX_SOURCE_ENTRIES
            ),
        );
    }
    out
}

fn vips(c: &mut Collector, raw: &[RawVip]) -> Vec<Vip> {
    let mut vips = Vec::new();
    let mut names = HashSet::new();
    let mut tuples = HashSet::new();
    if raw.len() > lb_common::MAX_VIPS as usize {
        c.errors.push(ConfigError {
            path: "vip".into(),
            line: None,
            message: format!("at most {} VIPs are supported", lb_common::MAX_VIPS),
        });
    }
    for (vi, v) in raw.iter().enumerate() {
        let p = format!("vip[{vi}]");
        let name = vip_name(c, &p, v, &mut names);
        let address = c.ip_any(&format!("{p}.address"), &v.address, "VIP address");
        let port = c.ranged(
            &format!("{p}.port"),
            &v.port,
            0,
            65535,
            "port (0 = every port)",
        ) as u16;
        let protocol = protocol(c, &p, v);
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
        let backends = backends(c, &p, v, &name, port);
        let groups = groups(c, &p, v, &backends);
        let pins = pins(c, &p, v, &groups);
        let mut syn_cookies = cookie_mode(c, &p, v, protocol);
        let sources = source_policy(c, &p, v);
        if address.is_ipv6() {
            ipv6_vip_limits(c, &p, v, &mut syn_cookies);
        } else if backends.iter().any(|b| b.address.is_ipv6()) {
            no_cookies(c, &p, v, &mut syn_cookies, "a VIP with IPv6 backends");
        }
        vips.push(Vip {
            name,
            address,
            port,
            protocol,
            health,
            syn_cookies,
            sources,
            backends,
            groups,
            pins,
        });
    }
    vips
}

/// What an IPv6 VIP does not have yet: SYN cookies (off unless set, an error when set),
/// source lists and limits, pins. Each is refused by its key.
fn ipv6_vip_limits(c: &mut Collector, p: &str, v: &RawVip, cookies: &mut CookieMode) {
    no_cookies(c, p, v, cookies, "an IPv6 VIP");
    for (key, list) in [("deny", &v.deny), ("allow", &v.allow)] {
        if let Some(first) = list.first() {
            c.err(
                format!("{p}.{key}"),
                first,
                "source lists are IPv4 only for now; not available on an IPv6 VIP",
            );
        }
    }
    for (key, val) in [
        ("source_rate", &v.source_rate),
        ("source_max_conns", &v.source_max_conns),
    ] {
        if *val.get_ref() != 0 {
            c.err(
                format!("{p}.{key}"),
                val,
                "per-source limits are IPv4 only for now; not available on an IPv6 VIP",
            );
        }
    }
    if let Some(pin) = v.pin.first() {
        c.err(
            format!("{p}.pin"),
            &pin.sources,
            "pins are IPv4 only for now; not available on an IPv6 VIP",
        );
    }
}

/// SYN cookies are built for IPv4 clients of IPv4 backends: off unless set, an error when set
/// on `what`.
fn no_cookies(c: &mut Collector, p: &str, v: &RawVip, cookies: &mut CookieMode, what: &str) {
    if *cookies != CookieMode::Off && c.line_of(v.syn_cookies.span()).is_some() {
        c.err(
            format!("{p}.syn_cookies"),
            &v.syn_cookies,
            format!(
                "SYN cookies need IPv4 clients and IPv4 backends for now; remove the key or set \"off\" on {what}"
            ),
        );
    }
    *cookies = CookieMode::Off;
}

/// `[[vip.pin]]`: named, with valid prefixes and declared groups.
fn pins(c: &mut Collector, p: &str, v: &RawVip, groups: &Groups) -> Vec<Pin> {
    let mut out: Vec<Pin> = Vec::new();
    for (pi, raw) in v.pin.iter().enumerate() {
        let pp = format!("{p}.pin[{pi}]");
        let name = match &raw.name {
            Some(n) => {
                if n.get_ref().is_empty() || n.get_ref().chars().any(char::is_whitespace) {
                    c.err(
                        format!("{pp}.name"),
                        n,
                        "a pin name must be non-empty without spaces",
                    );
                }
                if out.iter().any(|o| &o.name == n.get_ref()) {
                    c.err(
                        format!("{pp}.name"),
                        n,
                        format!("pin {:?} is declared twice", n.get_ref()),
                    );
                }
                n.get_ref().clone()
            }
            None => format!("pin{pi}"),
        };
        if raw.sources.get_ref().is_empty() {
            c.err(
                format!("{pp}.sources"),
                &raw.sources,
                "a pin needs at least one source prefix",
            );
        }
        let mut sources = std::collections::BTreeSet::new();
        for (si, s) in raw.sources.get_ref().iter().enumerate() {
            match super::parse_prefix(s.get_ref()) {
                Ok(net) => {
                    if let Some(o) = out.iter().find(|o| o.sources.contains(&net)) {
                        c.err(
                            format!("{pp}.sources[{si}]"),
                            s,
                            format!("{net} is already pinned by pin {:?}", o.name),
                        );
                    } else if !sources.insert(net) {
                        c.err(
                            format!("{pp}.sources[{si}]"),
                            s,
                            format!("{net} is listed twice"),
                        );
                    }
                }
                Err(e) => c.err(format!("{pp}.sources[{si}]"), s, e),
            }
        }
        if raw.groups.get_ref().is_empty() {
            c.err(
                format!("{pp}.groups"),
                &raw.groups,
                "a pin needs at least one group",
            );
        }
        let mut names = Vec::new();
        for (gi, g) in raw.groups.get_ref().iter().enumerate() {
            if groups.get(g.get_ref()).is_none() {
                let known: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
                c.err(
                    format!("{pp}.groups[{gi}]"),
                    g,
                    format!(
                        "no group {:?} in this VIP (its groups: {})",
                        g.get_ref(),
                        known.join(", ")
                    ),
                );
            } else if !names.contains(g.get_ref()) {
                names.push(g.get_ref().clone());
            }
        }
        out.push(Pin {
            name,
            sources,
            groups: names,
            spill: raw.spill,
        });
    }
    out
}

/// `[[vip.group]]`, each backend's `group` and `[vip.failover]`.
fn groups(c: &mut Collector, p: &str, v: &RawVip, backends: &[BackendConfig]) -> Groups {
    let mut out = Groups {
        groups: Vec::new(),
        ..Groups::default()
    };
    for (gi, g) in v.group.iter().enumerate() {
        let gp = format!("{p}.group[{gi}]");
        let name = g.name.get_ref();
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace()) {
            c.err(
                format!("{gp}.name"),
                &g.name,
                "a group name must be non-empty without spaces",
            );
        }
        if out.get(name).is_some() {
            c.err(
                format!("{gp}.name"),
                &g.name,
                format!("group {name:?} is declared twice"),
            );
            continue;
        }
        let priority = c.ranged(
            &format!("{gp}.priority"),
            &g.priority,
            0,
            1000,
            "priority (0 = most preferred)",
        ) as u32;
        out.groups.push(Group {
            name: name.clone(),
            priority,
        });
    }
    for (bi, b) in v.backend.iter().enumerate() {
        let Some(g) = &b.group else { continue };
        let name = g.get_ref();
        if out.get(name).is_none() && name != DEFAULT_GROUP {
            let known: Vec<&str> = out.groups.iter().map(|g| g.name.as_str()).collect();
            c.err(
                format!("{p}.backend[{bi}].group"),
                g,
                format!(
                    "no [[vip.group]] is named {name:?} (declared: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        }
        if let Some(bc) = backends.get(bi) {
            out.of_backend.insert((bc.address, bc.port), name.clone());
        }
    }
    let in_default = backends.len() > out.of_backend.len();
    if out.get(DEFAULT_GROUP).is_none() && (in_default || out.groups.is_empty()) {
        out.groups.push(Group {
            name: DEFAULT_GROUP.into(),
            priority: 0,
        });
    }
    for (gi, g) in v.group.iter().enumerate() {
        let name = g.name.get_ref();
        let used = backends
            .iter()
            .any(|b| out.group_of(b.address, b.port) == name.as_str());
        if !used {
            c.warn(
                format!("{p}.group[{gi}]"),
                &g.name,
                format!("group {name:?} has no backend: it never takes a connection"),
            );
        }
    }
    if let Some(f) = &v.failover {
        let op = *f.overprovisioning.get_ref();
        if !(1.0..=10.0).contains(&op) {
            c.err(
                format!("{p}.failover.overprovisioning"),
                &f.overprovisioning,
                format!("overprovisioning must be between 1.0 and 10.0, got {op}"),
            );
        } else {
            out.overprovisioning_pct = (op * 100.0).round() as u32;
        }
    }
    out
}

fn vip_name(c: &mut Collector, p: &str, v: &RawVip, names: &mut HashSet<String>) -> String {
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
    name
}

fn protocol(c: &mut Collector, p: &str, v: &RawVip) -> Protocol {
    match v.protocol.get_ref().as_str() {
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
    }
}

fn backends(c: &mut Collector, p: &str, v: &RawVip, name: &str, port: u16) -> Vec<BackendConfig> {
    if v.backend.is_empty() {
        c.err(
            format!("{p}.backend"),
            &v.name,
            format!("VIP {name:?} has no backends ([[vip.backend]] entries)"),
        );
    }
    let mut out: Vec<BackendConfig> = Vec::new();
    for (bi, b) in v.backend.iter().enumerate() {
        let bp = format!("{p}.backend[{bi}]");
        let address = c.ip_any(&format!("{bp}.address"), &b.address, "backend address");
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
        let weight = weight(c, &bp, b);
        if out.iter().any(|x| x.address == address && x.port == bport) {
            c.err(
                format!("{bp}.address"),
                &b.address,
                format!("backend {address}:{bport} is listed twice"),
            );
        }
        out.push(BackendConfig {
            address,
            port: bport,
            weight,
        });
    }
    if !v.backend.is_empty() && v.backend.iter().all(|b| *b.weight.get_ref() == 0) {
        c.err(
            format!("{p}.backend"),
            &v.name,
            format!("every backend of VIP {name:?} has weight 0: it could never take a connection"),
        );
    }
    out
}

fn weight(c: &mut Collector, bp: &str, b: &RawBackend) -> u32 {
    let w = *b.weight.get_ref();
    if w < 0 {
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
            if !h.path.get_ref().starts_with('/') {
                c.err(
                    format!("{p}.path"),
                    &h.path,
                    format!("{:?} must start with /", h.path.get_ref()),
                );
            }
            ProbeKind::Http {
                path: h.path.get_ref().clone(),
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

/// Rules across sections: limits of the data path's arrays, SNAT addresses that are VIPs,
/// SNAT capacity.
fn cross_checks(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let tables: usize = cfg.vips.iter().map(|v| 1 + v.pins.len()).sum();
    if tables > lb_common::MAX_VIPS as usize {
        c.errors.push(ConfigError {
            path: "vip[].pin".into(),
            line: None,
            message: format!(
                "{tables} Maglev tables (one per VIP and one per pin); the data plane holds at most {}",
                lb_common::MAX_VIPS
            ),
        });
    }
    let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
    if backends > lb_common::MAX_BACKENDS as usize {
        c.errors.push(ConfigError {
            path: "vip[].backend".into(),
            line: None,
            message: format!(
                "{backends} backends in all; the data plane holds at most {} (one per VIP and backend)",
                lb_common::MAX_BACKENDS
            ),
        });
    }
    for (i, a) in cfg.snat.addresses.iter().enumerate() {
        if let Some(v) = cfg.vips.iter().find(|v| v.address == *a) {
            c.err(
                format!("snat.addresses[{i}]"),
                &raw.snat.addresses.get_ref()[i],
                format!(
                    "{a} is also the address of VIP {:?}: replies from backends would be taken for client traffic; use another address",
                    v.name
                ),
            );
        }
    }
    snat_families(c, raw, cfg);
    let capacity = cfg.snat.capacity();
    if !cfg.snat.addresses.is_empty() && capacity < cfg.conntrack.max_flows as u64 {
        c.warn(
            "snat.addresses",
            &raw.snat.addresses,
            format!(
                "{} SNAT address(es) x ports {}-{} carry at most {capacity} concurrent flows, fewer than conntrack.max_flows {}: SNAT ports are unique per SNAT address, add addresses to use the whole table",
                cfg.snat.addresses.len(),
                cfg.snat.port_min,
                cfg.snat.port_max,
                cfg.conntrack.max_flows
            ),
        );
    }
}

/// A backend's flows take a SNAT address of the backend's family: refuse a backend whose family
/// has no SNAT address (naming the backend's key and line).
fn snat_families(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    for (vi, v) in cfg.vips.iter().enumerate() {
        for (bi, b) in v.backends.iter().enumerate() {
            let v6 = b.address.is_ipv6();
            let Some(at) = raw.vip.get(vi).and_then(|r| r.backend.get(bi)) else {
                continue;
            };
            if cfg.snat.addresses.iter().any(|a| a.is_ipv6() == v6) {
                continue;
            }
            let family = if v6 { "IPv6" } else { "IPv4" };
            c.err(
                format!("vip[{vi}].backend[{bi}].address"),
                &at.address,
                format!(
                    "backend {} of VIP {:?} is {family}, and snat.addresses holds no {family} address: its connections would have no source address; add one to snat.addresses",
                    b.address, v.name
                ),
            );
        }
    }
}
