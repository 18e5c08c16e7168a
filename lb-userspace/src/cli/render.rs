//! Aligned tables for people (`--json` prints the reports as they are).

use comfy_table::{Table, presets::NOTHING};

use crate::report::{
    BackendReport, ConnsReport, EdgeReport, LookupReport, SourceEntry, StatsReport, VipReport,
};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

pub fn vips(v: &[VipReport]) -> String {
    let mut t = table(&[
        "vip",
        "address",
        "proto",
        "backends",
        "in table",
        "table",
        "active",
        "packets",
        "new flows",
        "no-backend drops",
        "syn cookies",
        "proxy (headers)",
        "syns",
        "cookies sent/valid/bad",
        "denied/rate/conns limited",
        "groups: healthy, new flows",
        "rtt p50/p99 ms: backend | client",
    ]);
    for x in v {
        t.add_row(vec![
            x.name.clone(),
            format!("{}:{}", x.address, x.port),
            x.protocol.clone(),
            x.backends_total.to_string(),
            x.backends_in_table.to_string(),
            if x.fail_open {
                "FAIL-OPEN".into()
            } else {
                x.table_mode.clone()
            },
            x.active_flows.to_string(),
            x.packets.to_string(),
            x.new_flows.to_string(),
            x.no_backend_drops.to_string(),
            cookie_mode(x),
            match x.proxy_protocol.as_str() {
                "" | "off" => "off".into(),
                v => format!("{v} ({})", x.proxy_headers),
            },
            x.syns.to_string(),
            format!(
                "{}/{}/{}",
                x.cookies_sent, x.cookies_valid, x.cookies_invalid
            ),
            format!("{}/{}/{}", x.denied, x.rate_limited, x.conn_limited),
            x.groups
                .iter()
                .map(|g| {
                    format!(
                        "{} (p{}): {}/{}, {:.0}%",
                        g.name,
                        g.priority,
                        g.healthy,
                        g.backends,
                        g.new_flow_share * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            format!("{} | {}", rtt(&x.backend_rtt), rtt(&x.client_rtt)),
        ]);
    }
    t.to_string()
}

/// "p50/p99" of handshake round trips, or "-" without samples.
fn rtt(r: &crate::report::RttReport) -> String {
    match (r.p50_ms, r.p99_ms) {
        (Some(a), Some(b)) => format!("{a:.2}/{b:.2}"),
        _ => "-".into(),
    }
}

/// "auto", "auto: ON", "always", "off".
fn cookie_mode(x: &VipReport) -> String {
    if x.syn_cookies == "auto" && x.syn_cookies_active {
        "auto: ON".into()
    } else {
        x.syn_cookies.clone()
    }
}

pub fn backends(v: &[BackendReport]) -> String {
    let mut t = table(&[
        "vip",
        "backend",
        "group",
        "health",
        "weight",
        "in table",
        "active",
        "closing",
        "new flows",
        "refused",
        "syn again",
        "pkts in",
        "bytes in",
        "pkts out",
        "bytes out",
        "probe rtt ms",
        "handshake rtt p50/p99 ms",
    ]);
    for b in v {
        let mut weight = if b.weight == b.configured_weight {
            b.weight.to_string()
        } else {
            format!("{} (cfg {})", b.weight, b.configured_weight)
        };
        if b.weight == 0 {
            weight.push_str(" drain");
        }
        t.add_row(vec![
            b.vip.clone(),
            format!("{}:{}", b.address, b.port),
            b.group.clone(),
            if b.health == "down" {
                "DOWN".into()
            } else {
                b.health.clone()
            },
            weight,
            if b.in_table { "yes" } else { "no" }.into(),
            b.active_flows.to_string(),
            b.closing_flows.to_string(),
            b.new_flows.to_string(),
            b.refused.to_string(),
            b.syn_retransmits.to_string(),
            b.packets_in.to_string(),
            b.bytes_in.to_string(),
            b.packets_out.to_string(),
            b.bytes_out.to_string(),
            b.probe_rtt_ms
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            rtt(&b.backend_rtt),
        ]);
    }
    t.to_string()
}

pub fn stats(s: &StatsReport) -> String {
    let mut out = format!("{}\n\n{}\n\n", vips(&s.vips), backends(&s.backends));
    out += &format!(
        "flows: {} active, {} in all, of {} ({} expired so far)\n",
        s.active_flows, s.flows, s.max_flows, s.expired_flows_total
    );
    for n in &s.snat {
        out += &format!(
            "snat {}: {} flows of {} ports{}\n",
            n.address,
            n.flows,
            n.ports,
            if n.active { "" } else { " (draining)" }
        );
    }
    let xdp: Vec<String> = s
        .interfaces
        .iter()
        .map(|a| format!("{} ({})", a.interface, a.mode))
        .collect();
    out += &format!(
        "xdp: {}\n\n",
        if xdp.is_empty() {
            "NOT ATTACHED".to_string()
        } else {
            xdp.join(", ")
        }
    );
    for v in &s.vips {
        for p in &v.pins {
            out += &format!(
                "pin {} of {}: {} -> groups {}{}; {} backends in its table; new flows {}, refused {}, spilled {}\n",
                p.name,
                v.name,
                p.sources.join(", "),
                p.groups.join(", "),
                if p.spill { " (spills)" } else { "" },
                p.backends_in_table,
                p.new_flows,
                p.refused,
                p.spilled
            );
        }
    }
    if let Some(e) = &s.edge {
        out += &format!("{}\n\n", edge(e));
    }
    if let Some(l) = &s.conn_log {
        out += &format!(
            "connection log {}: {} opens, {} closes written, {} lost (ring buffer full), {} write errors\n\n",
            l.path, l.opens, l.closes, l.lost, l.write_errors
        );
    }
    let mut t = table(&["verdict", "packets"]);
    for (r, n) in &s.reasons {
        if *n > 0 {
            t.add_row(vec![r.clone(), n.to_string()]);
        }
    }
    out + &t.to_string()
}

pub fn conns(r: &ConnsReport) -> String {
    let mut t = table(&[
        "vip", "proto", "client", "backend", "snat", "state", "age s", "idle s",
    ]);
    for x in &r.conns {
        t.add_row(vec![
            x.vip.clone(),
            x.protocol.clone(),
            x.client.clone(),
            x.backend.clone(),
            x.snat.clone(),
            x.state.clone(),
            format!("{:.0}", x.age_secs),
            format!("{:.0}", x.idle_secs),
        ]);
    }
    let shown = r.conns.len() as u64;
    let tail = if shown < r.total {
        format!(
            "{shown} of {} connection(s) shown, {} left out (--limit N for more, --limit 0 for all)",
            r.total,
            r.total - shown
        )
    } else {
        format!("{} connection(s)", r.total)
    };
    format!("{t}\n{tail}")
}

pub fn edge(r: &EdgeReport) -> String {
    let mut t = table(&["address", "announced", "why", "vips", "since"]);
    for a in &r.addresses {
        t.add_row(vec![
            a.address.clone(),
            if a.announced { "yes" } else { "no" }.to_string(),
            a.why.clone(),
            a.vips.join(", "),
            a.since.map(unix_time).unwrap_or_default(),
        ]);
    }
    let mut out = format!(
        "table {} | {} | when all backends are down: {} | {} open connection(s)\n{t}",
        r.table,
        match r.drained_since {
            Some(s) if r.drained => format!("DRAINED since {}", unix_time(s)),
            _ if r.drained => "DRAINED".to_string(),
            _ => "not drained".to_string(),
        },
        r.when_all_backends_down,
        r.open_flows,
    );
    if let Some(e) = &r.last_error {
        out += &format!("\nlast error (retrying): {e}");
    }
    out
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

pub fn lookup(r: &LookupReport) -> String {
    let mut s = match &r.backend {
        Some(b) => format!(
            "{} -> vip {}: new flows go to {b} (hash {:#010x}, slot {})",
            r.client, r.vip, r.flow_hash, r.slot
        ),
        None => format!(
            "{} -> vip {}: no backend (the table is empty)",
            r.client, r.vip
        ),
    };
    if let Some(g) = &r.group {
        s += &format!(" in group {g}");
    }
    match (&r.pin, &r.pin_outcome) {
        (Some(p), None) => s += &format!("\nthe client is in pin {p}: its groups decide"),
        (Some(p), Some(o)) => {
            s += &format!(
                "\nthe client is in pin {p}, whose groups have no backend now: new connections are {o}"
            )
        }
        _ => {}
    }
    if let Some(e) = &r.existing_flow_backend {
        s += &format!("\nan existing flow for this tuple goes to {e} (it wins until it ends)");
    }
    s
}

pub fn sources(v: &[SourceEntry]) -> String {
    if v.is_empty() {
        return "no entries".into();
    }
    let mut t = table(&["vip", "list", "prefix"]);
    for e in v {
        t.add_row(vec![e.vip.clone(), e.list.clone(), e.prefix.clone()]);
    }
    t.to_string()
}
