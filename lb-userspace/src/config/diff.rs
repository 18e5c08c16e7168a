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
    (
        "conntrack.max_flows",
        "the connection table is allocated at start",
    ),
];

fn restart_only_values(c: &Config) -> [String; 6] {
    [
        c.daemon.pin_path.display().to_string(),
        format!("{:?}", c.daemon.interfaces),
        c.daemon.xdp_mode.name().to_string(),
        c.daemon.control_socket.display().to_string(),
        c.daemon.metrics_listen.to_string(),
        c.conntrack.max_flows.to_string(),
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
    let mut notes: Vec<(String, String, String)> = Vec::new();
    let mut note = |key: &str, x: String, y: String| notes.push((key.to_string(), x, y));
    let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let ns = |n: u64| dur(std::time::Duration::from_nanos(n));
    note(
        "daemon.gc_interval",
        dur(old.daemon.gc_interval),
        dur(new.daemon.gc_interval),
    );
    note(
        "daemon.log_data_path_events",
        old.daemon.log_data_path_events.to_string(),
        new.daemon.log_data_path_events.to_string(),
    );
    let (t, u) = (old.conntrack.timeouts, new.conntrack.timeouts);
    note(
        "conntrack.tcp_syn_timeout",
        ns(t.syn_sent_ns),
        ns(u.syn_sent_ns),
    );
    note(
        "conntrack.tcp_established_timeout",
        ns(t.established_ns),
        ns(u.established_ns),
    );
    note(
        "conntrack.tcp_closing_timeout",
        ns(t.closing_ns),
        ns(u.closing_ns),
    );
    note(
        "conntrack.tcp_closed_timeout",
        ns(t.closed_ns),
        ns(u.closed_ns),
    );
    note("conntrack.udp_timeout", ns(t.udp_ns), ns(u.udp_ns));
    let policy = |pass: bool| if pass { "pass" } else { "drop" }.to_string();
    note(
        "conntrack.non_syn_policy",
        policy(old.conntrack.non_syn_pass),
        policy(new.conntrack.non_syn_pass),
    );
    note(
        "snat.port_min",
        old.snat.port_min.to_string(),
        new.snat.port_min.to_string(),
    );
    note(
        "snat.port_max",
        old.snat.port_max.to_string(),
        new.snat.port_max.to_string(),
    );
    let mss = |m: MssClamp| match m {
        MssClamp::Off => "off".to_string(),
        MssClamp::Auto => "auto".to_string(),
        MssClamp::Fixed(n) => n.to_string(),
    };
    note(
        "data_path.mss_clamp",
        mss(old.data_path.mss_clamp),
        mss(new.data_path.mss_clamp),
    );
    note(
        "data_path.echo_reply",
        old.data_path.echo_reply.to_string(),
        new.data_path.echo_reply.to_string(),
    );
    let mut out: Vec<String> = notes
        .drain(..)
        .filter(|(_, x, y)| x != y)
        .map(|(k, x, y)| format!("{k}: {x} -> {y}"))
        .collect();
    let removed: Vec<String> = old
        .snat
        .addresses
        .iter()
        .filter(|a| !new.snat.addresses.contains(a))
        .map(|a| format!("-{a}"))
        .collect();
    let added: Vec<String> = new
        .snat
        .addresses
        .iter()
        .filter(|a| !old.snat.addresses.contains(a))
        .map(|a| format!("+{a}"))
        .collect();
    if !removed.is_empty() || !added.is_empty() {
        let mut all = removed;
        all.extend(added);
        out.push(format!(
            "snat.addresses: {} (removed addresses take no new flows; their flows end normally)",
            all.join(" ")
        ));
    }
    Ok(out)
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
