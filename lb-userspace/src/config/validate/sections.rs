//! The sections besides the VIPs: daemon, conntrack, snat, data_path, syn_cookies, announce,
//! conn_log. Pure: nothing here reads the host.

use std::{net::SocketAddr, time::Duration};

use lb_common::conntrack::Timeouts;

use super::Collector;
use crate::{
    config::{
        Announce, ConnLog, Conntrack, Daemon, DataPath, MssClamp, Snat, SynCookies, Vip,
        WhenAllDown,
        schema::{RawAnnounce, RawConfig, RawConnLog},
    },
    dataplane::links::AttachMode,
    logging::LogLevel,
};

pub(super) fn daemon(c: &mut Collector, raw: &RawConfig) -> Daemon {
    let d = &raw.daemon;
    if d.interfaces.get_ref().is_empty() {
        c.err(
            "daemon.interfaces",
            &d.interfaces,
            "at least one interface is needed",
        );
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
    let log_level = d
        .log_level
        .get_ref()
        .parse::<LogLevel>()
        .unwrap_or_else(|e| {
            c.err("daemon.log_level", &d.log_level, e);
            LogLevel::Info
        });
    Daemon {
        log_level,
        interfaces: d.interfaces.get_ref().clone(),
        xdp_mode,
        pin_path: d.pin_path.clone(),
        control_socket: d.control_socket.clone(),
        metrics_listen,
        gc_interval: c.duration("daemon.gc_interval", &d.gc_interval),
        log_data_path_events: d.log_data_path_events,
    }
}

pub(super) fn conntrack(c: &mut Collector, raw: &RawConfig) -> Conntrack {
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

pub(super) fn snat(c: &mut Collector, raw: &RawConfig) -> Snat {
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
        let path = format!("snat.addresses[{i}]");
        let ip = c.ip_any(&path, a, "SNAT address");
        if addresses.contains(&ip) {
            c.err(&path, a, format!("{ip} is listed twice"));
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
    Snat {
        addresses,
        port_min,
        port_max,
    }
}

pub(super) fn data_path(c: &mut Collector, raw: &RawConfig) -> DataPath {
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

pub(super) fn syn_cookies(c: &mut Collector, raw: &RawConfig) -> SynCookies {
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

/// `[announce]`: the table, the VIPs announced and what happens when all backends are down.
pub(super) fn announce(c: &mut Collector, a: &RawAnnounce, vips: &[Vip]) -> Announce {
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

pub(super) fn conn_log(c: &mut Collector, l: &RawConnLog) -> Option<ConnLog> {
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
    l.enabled.then(|| ConnLog {
        path: (path != "-").then(|| std::path::PathBuf::from(path)),
        max_bytes,
        keep,
    })
}
