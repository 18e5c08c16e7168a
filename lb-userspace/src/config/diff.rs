//! What a reload may change: settings that need a restart are refused by name, the rest is
//! reported change by change (VIPs and backends are the controller's to report).

use super::{Config, MssClamp};

/// Settings the running daemon cannot change in place, with why.
const RESTART_ONLY: &[(&str, &str)] = &[
    ("daemon.pin_path", "the pinned maps live there"),
    ("daemon.interfaces", "XDP is attached to them at start"),
    ("daemon.xdp_mode", "XDP is attached at start"),
    (
        "daemon.control_socket",
        "the CLI talks to the socket bound at start",
    ),
    ("daemon.metrics_listen", "the listener is bound at start"),
    ("conn_log", "its per-flow counters are sized at start"),
    (
        "conntrack.max_flows",
        "the connection table is allocated at start",
    ),
];

fn restart_only_values(c: &Config) -> [String; 7] {
    [
        c.daemon.pin_path.display().to_string(),
        format!("{:?}", c.daemon.interfaces),
        c.daemon.xdp_mode.name().to_string(),
        c.daemon.control_socket.display().to_string(),
        c.daemon.metrics_listen.to_string(),
        format!("{:?}", c.conn_log),
        c.conntrack.max_flows.to_string(),
    ]
}

/// The settings a reload applies in place, as `(key, value shown to the operator)`.
fn reloadable_values(c: &Config) -> Vec<(&'static str, String)> {
    let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let ns = |n: u64| dur(std::time::Duration::from_nanos(n));
    let t = c.conntrack.timeouts;
    let policy = if c.conntrack.non_syn_pass {
        "pass"
    } else {
        "drop"
    };
    let mss = match c.data_path.mss_clamp {
        MssClamp::Off => "off".to_string(),
        MssClamp::Auto => "auto".to_string(),
        MssClamp::Fixed(n) => n.to_string(),
    };
    vec![
        ("daemon.gc_interval", dur(c.daemon.gc_interval)),
        ("daemon.log_level", c.daemon.log_level.name().to_string()),
        (
            "daemon.log_data_path_events",
            c.daemon.log_data_path_events.to_string(),
        ),
        ("conntrack.tcp_syn_timeout", ns(t.syn_sent_ns)),
        ("conntrack.tcp_established_timeout", ns(t.established_ns)),
        ("conntrack.tcp_closing_timeout", ns(t.closing_ns)),
        ("conntrack.tcp_closed_timeout", ns(t.closed_ns)),
        ("conntrack.udp_timeout", ns(t.udp_ns)),
        ("conntrack.non_syn_policy", policy.to_string()),
        ("snat.port_min", c.snat.port_min.to_string()),
        ("snat.port_max", c.snat.port_max.to_string()),
        ("data_path.mss_clamp", mss),
        ("data_path.echo_reply", c.data_path.echo_reply.to_string()),
        (
            "syn_cookies.engage_syn_rate",
            c.syn_cookies.engage_syn_rate.to_string(),
        ),
        (
            "syn_cookies.release_after",
            dur(c.syn_cookies.release_after),
        ),
        (
            "announce",
            match &c.announce {
                None => "off".to_string(),
                Some(a) => format!(
                    "table {}, VIPs {:?}, when all backends are down: {}, drain file {}",
                    a.table,
                    a.vips,
                    a.when_all_down.name(),
                    a.drain_file.display()
                ),
            },
        ),
    ]
}

/// Err names every restart-only key that differs; Ok lists the other global changes.
pub fn global_changes(old: &Config, new: &Config) -> Result<Vec<String>, String> {
    let (a, b) = (restart_only_values(old), restart_only_values(new));
    let refused: Vec<String> = RESTART_ONLY
        .iter()
        .zip(a.iter().zip(&b))
        .filter(|(_, (x, y))| x != y)
        .map(|((key, why), (x, y))| format!("{key} {x} -> {y} ({why})"))
        .collect();
    if !refused.is_empty() {
        return Err(format!(
            "these settings need a daemon restart, so nothing was applied: {}",
            refused.join("; ")
        ));
    }
    let mut out: Vec<String> = reloadable_values(old)
        .into_iter()
        .zip(reloadable_values(new))
        .filter(|((_, x), (_, y))| x != y)
        .map(|((k, x), (_, y))| format!("{k}: {x} -> {y}"))
        .collect();
    if let Some(line) = snat_address_changes(old, new) {
        out.push(line);
    }
    Ok(out)
}

/// SNAT addresses removed (-) and added (+), both sides named.
fn snat_address_changes(old: &Config, new: &Config) -> Option<String> {
    let (o, n) = (&old.snat.addresses, &new.snat.addresses);
    let mut all: Vec<String> = o
        .iter()
        .filter(|a| !n.contains(a))
        .map(|a| format!("-{a}"))
        .collect();
    all.extend(n.iter().filter(|a| !o.contains(a)).map(|a| format!("+{a}")));
    (!all.is_empty()).then(|| {
        format!(
            "snat.addresses: {} (removed addresses take no new flows; their flows end normally)",
            all.join(" ")
        )
    })
}

/// What a reload changes in one VIP's settings (its backends and pins are diffed apart), a
/// line each, named by the VIP's new name.
pub fn vip_changes(old: &super::Vip, new: &super::Vip) -> Vec<String> {
    let mut out = Vec::new();
    let name = &new.name;
    if old.syn_cookies != new.syn_cookies {
        out.push(format!(
            "vip {name}: syn_cookies {} -> {}",
            old.syn_cookies.name(),
            new.syn_cookies.name()
        ));
    }
    if old.proxy_protocol != new.proxy_protocol {
        out.push(format!(
            "vip {name}: proxy_protocol {} -> {} (new connections only)",
            old.proxy_protocol.name(),
            new.proxy_protocol.name()
        ));
    }
    if old.sources != new.sources {
        let s = &new.sources;
        out.push(format!(
            "vip {name}: sources: {} deny, {} allow, rate {}/s (burst {}), at most {} connections each",
            s.deny.len(),
            s.allow.len(),
            s.rate,
            s.burst,
            s.max_conns
        ));
    }
    if old.groups != new.groups {
        out.push(format!(
            "vip {name}: groups {}, overprovisioning {:.2}",
            new.groups
                .groups
                .iter()
                .map(|g| format!("{} (priority {})", g.name, g.priority))
                .collect::<Vec<_>>()
                .join(", "),
            new.groups.overprovisioning_pct as f64 / 100.0
        ));
    }
    if old.max_flows != new.max_flows {
        let share = |m: Option<u32>| m.map_or("an even share".to_string(), |n| n.to_string());
        out.push(format!(
            "vip {name}: max_flows {} -> {}",
            share(old.max_flows),
            share(new.max_flows)
        ));
    }
    if old.health != new.health {
        out.push(format!("vip {name}: health check changed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Checks, parse};

    fn cfg(extra: &str) -> Config {
        let src = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n{extra}\n[snat]\naddresses = [\"192.0.2.10\"]\n"
        );
        parse(&src, Checks::Offline).unwrap().config
    }

    #[test]
    fn restart_only_keys_are_refused_by_name() {
        let e = global_changes(&cfg(""), &cfg("xdp_mode = \"generic\"")).unwrap_err();
        assert!(e.contains("daemon.xdp_mode auto -> generic"), "{e}");
        assert!(e.contains("nothing was applied"), "{e}");
    }

    #[test]
    fn every_reloadable_change_is_reported() {
        let mut new = cfg("gc_interval = \"2s\"");
        new.conntrack.non_syn_pass = true;
        new.conntrack.timeouts.udp_ns = 5_000_000_000;
        new.snat.port_min = 2000;
        new.snat.addresses = vec!["192.0.2.11".parse().unwrap()];
        new.data_path.mss_clamp = MssClamp::Fixed(1360);
        let c = global_changes(&cfg(""), &new).unwrap();
        let all = c.join("\n");
        for want in [
            "daemon.gc_interval: 5s -> 2s",
            "conntrack.non_syn_policy: drop -> pass",
            "conntrack.udp_timeout: 1m -> 5s",
            "snat.port_min: 1024 -> 2000",
            "snat.addresses: -192.0.2.10 +192.0.2.11",
            "data_path.mss_clamp: auto -> 1360",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(global_changes(&cfg(""), &cfg("")).unwrap().is_empty());
    }
}
