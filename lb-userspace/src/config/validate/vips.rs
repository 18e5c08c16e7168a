//! The `[[vip]]` tables: name, address, protocol, cookie mode, source policy, backends and
//! health check (groups and pins in `groups`).

use std::collections::HashSet;

use super::{Collector, groups};
use crate::config::{
    BackendConfig, ConfigError, CookieMode, HealthCheck, MAX_WEIGHT, ProbeKind, Protocol,
    ProxyProtocol, SourceList, SourcePolicy, Vip, parse_prefix,
    schema::{RawBackend, RawHealthCheck, RawVip},
};

/// A VIP's cookie mode; UDP has no handshake to answer, so only "off" (or nothing) is accepted.
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

/// A VIP's PROXY protocol version. The data path inserts the header for IPv4 clients of IPv4
/// data nodes, over TCP: on UDP, IPv6 VIPs and VIPs with IPv6 data nodes the key is refused.
fn proxy_protocol(
    c: &mut Collector,
    p: &str,
    v: &RawVip,
    protocol: Protocol,
    ipv6: Option<&str>,
) -> ProxyProtocol {
    let key = format!("{p}.proxy_protocol");
    let version = match v.proxy_protocol.get_ref().as_str() {
        "off" => ProxyProtocol::Off,
        "v1" => ProxyProtocol::V1,
        "v2" => ProxyProtocol::V2,
        other => {
            c.err(
                key,
                &v.proxy_protocol,
                format!("{other:?} is not one of off, v1, v2"),
            );
            return ProxyProtocol::Off;
        }
    };
    if version == ProxyProtocol::Off {
        return version;
    }
    if protocol == Protocol::Udp {
        c.err(
            key,
            &v.proxy_protocol,
            "PROXY protocol applies to TCP VIPs only; remove the key or set \"off\"",
        );
        return ProxyProtocol::Off;
    }
    if let Some(what) = ipv6 {
        c.err(
            key,
            &v.proxy_protocol,
            format!(
                "PROXY protocol needs IPv4 clients and IPv4 data nodes for now; remove the key or set \"off\" on {what}"
            ),
        );
        return ProxyProtocol::Off;
    }
    version
}

/// Deny and allow lists and the per-source rate of one VIP.
fn source_policy(c: &mut Collector, p: &str, v: &RawVip) -> SourcePolicy {
    let mut out = SourcePolicy::default();
    for (list, raw) in [(SourceList::Deny, &v.deny), (SourceList::Allow, &v.allow)] {
        for (i, e) in raw.iter().enumerate() {
            let key = format!("{p}.{}[{i}]", list.name());
            match parse_prefix(e.get_ref()) {
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
            .find(|e| parse_prefix(e.get_ref()) == Ok(*net));
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

pub(super) fn vips(c: &mut Collector, raw: &[RawVip]) -> Vec<Vip> {
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
        let groups = groups::groups(c, &p, v, &backends);
        let pins = groups::pins(c, &p, v, &groups);
        let mut syn_cookies = cookie_mode(c, &p, v, protocol);
        let sources = source_policy(c, &p, v);
        let max_flows = c.ranged(
            &format!("{p}.max_flows"),
            &v.max_flows,
            0,
            u32::MAX as i64,
            "flows guaranteed to this VIP (0 = an even share)",
        ) as u32;
        let ipv6 = if address.is_ipv6() {
            ipv6_vip_limits(c, &p, v, &mut syn_cookies);
            Some("an IPv6 VIP")
        } else if backends.iter().any(|b| b.address.is_ipv6()) {
            no_cookies(c, &p, v, &mut syn_cookies, "a VIP with IPv6 backends");
            Some("a VIP with IPv6 backends")
        } else {
            None
        };
        let proxy_protocol = proxy_protocol(c, &p, v, protocol, ipv6);
        vips.push(Vip {
            name,
            address,
            port,
            protocol,
            health,
            syn_cookies,
            proxy_protocol,
            sources,
            backends,
            groups,
            pins,
            max_flows: (max_flows > 0).then_some(max_flows),
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
