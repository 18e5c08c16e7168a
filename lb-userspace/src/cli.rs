//! The CLI side of `wklb`: talks to the daemon over its socket, prints aligned tables for people
//! and JSON (`--json`) for scripts.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use comfy_table::{Table, presets::NOTHING};
use serde::de::DeserializeOwned;

use crate::{
    protocol::{Request, call},
    report::{BackendReport, ConnReport, LookupReport, StatsReport, VipReport},
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `req`; returns the `data` of a successful answer or the daemon's error.
pub fn request<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T> {
    let resp = call(socket, req, TIMEOUT)?;
    if !resp.ok {
        bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "the daemon refused without a reason".into())
        );
    }
    serde_json::from_value(resp.data).context("unexpected answer from the daemon")
}

/// "10.0.0.2" or "10.0.0.2:5100".
pub fn parse_backend(s: &str) -> Result<(Ipv4Addr, Option<u16>)> {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok((a, None));
    }
    match s.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => Ok((*a.ip(), Some(a.port()))),
        Ok(SocketAddr::V6(_)) => bail!("{s:?}: backends are IPv4"),
        Err(_) => bail!("{s:?} is not ADDRESS or ADDRESS:PORT (IPv4)"),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn vips_table(v: &[VipReport]) -> Table {
    let mut t = table(&[
        "vip",
        "address",
        "proto",
        "backends",
        "in table",
        "fail-open",
        "packets",
        "new flows",
        "no-backend drops",
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
                "no".into()
            },
            x.packets.to_string(),
            x.new_flows.to_string(),
            x.no_backend_drops.to_string(),
        ]);
    }
    t
}

pub fn backends_table(v: &[BackendReport]) -> Table {
    let mut t = table(&[
        "vip",
        "backend",
        "health",
        "weight",
        "in table",
        "active",
        "new flows",
        "pkts in",
        "bytes in",
        "pkts out",
        "bytes out",
        "rtt ms",
    ]);
    for b in v {
        let weight = if b.weight == b.configured_weight {
            b.weight.to_string()
        } else {
            format!("{} (cfg {})", b.weight, b.configured_weight)
        };
        t.add_row(vec![
            b.vip.clone(),
            format!("{}:{}", b.address, b.port),
            if b.healthy {
                "up".into()
            } else {
                "DOWN".into()
            },
            if b.weight == 0 {
                format!("{weight} drain")
            } else {
                weight
            },
            if b.in_table {
                "yes".into()
            } else {
                "no".into()
            },
            b.active_flows.to_string(),
            b.new_flows.to_string(),
            b.packets_in.to_string(),
            b.bytes_in.to_string(),
            b.packets_out.to_string(),
            b.bytes_out.to_string(),
            b.probe_rtt_ms
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

pub fn print_stats(s: &StatsReport) {
    println!("{}\n", vips_table(&s.vips));
    println!("{}\n", backends_table(&s.backends));
    println!(
        "flows: {} of {} ({} expired so far)",
        s.flows, s.max_flows, s.expired_flows_total
    );
    let mut t = table(&["verdict", "packets"]);
    for (r, n) in &s.reasons {
        if *n > 0 {
            t.add_row(vec![r.clone(), n.to_string()]);
        }
    }
    println!("{t}");
}

pub fn stats(socket: &Path, json: bool, watch: Option<u64>, count: Option<u64>) -> Result<()> {
    let Some(secs) = watch else {
        let s: StatsReport = request(socket, &Request::Stats)?;
        return if json {
            print_json(&s)
        } else {
            print_stats(&s);
            Ok(())
        };
    };
    if secs == 0 {
        bail!("--watch needs a period of at least 1 second");
    }
    let mut n = 0;
    loop {
        let s: StatsReport = request(socket, &Request::Stats)?;
        if json {
            // One document per line, for scripts.
            println!("{}", serde_json::to_string(&s)?);
        } else {
            println!(
                "--- {} ---",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            print_stats(&s);
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(secs));
    }
}

pub fn conns(
    socket: &Path,
    vip: Option<String>,
    backend: Option<SocketAddr>,
    limit: Option<usize>,
    json: bool,
) -> Result<()> {
    let c: Vec<ConnReport> = request(
        socket,
        &Request::Conns {
            vip,
            backend,
            limit,
        },
    )?;
    if json {
        return print_json(&c);
    }
    let mut t = table(&[
        "vip", "proto", "client", "backend", "snat", "state", "age s", "idle s",
    ]);
    for x in &c {
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
    println!("{t}\n{} connection(s)", c.len());
    Ok(())
}

pub fn lookup(socket: &Path, client: &str, vip: &str, json: bool) -> Result<()> {
    let client: SocketAddr = client
        .parse()
        .map_err(|_| anyhow!("{client:?} is not CLIENT_IP:PORT"))?;
    let r: LookupReport = request(
        socket,
        &Request::Lookup {
            client,
            vip: vip.into(),
        },
    )?;
    if json {
        return print_json(&r);
    }
    match &r.backend {
        Some(b) => println!(
            "{} -> vip {}: new flows go to {b} (hash {:#010x}, slot {})",
            r.client, r.vip, r.flow_hash, r.slot
        ),
        None => println!(
            "{} -> vip {}: no backend (the table is empty)",
            r.client, r.vip
        ),
    }
    if let Some(e) = &r.existing_flow_backend {
        println!("an existing flow for this tuple goes to {e} (it wins until it ends)");
    }
    Ok(())
}

pub fn vip_list(socket: &Path, json: bool) -> Result<()> {
    let v: Vec<VipReport> = request(socket, &Request::VipList)?;
    if json {
        print_json(&v)
    } else {
        println!("{}", vips_table(&v));
        Ok(())
    }
}

pub fn backend_list(socket: &Path, vip: Option<String>, json: bool) -> Result<()> {
    let v: Vec<BackendReport> = request(socket, &Request::BackendList { vip })?;
    if json {
        print_json(&v)
    } else {
        println!("{}", backends_table(&v));
        Ok(())
    }
}

/// Prints a one-line result (or its JSON).
pub fn simple(socket: &Path, req: &Request, json: bool) -> Result<()> {
    let v: serde_json::Value = request(socket, req)?;
    if json {
        return print_json(&v);
    }
    match v {
        serde_json::Value::String(s) => println!("{s}"),
        serde_json::Value::Array(lines) if lines.is_empty() => println!("nothing changed"),
        serde_json::Value::Array(lines) => {
            for l in lines {
                println!(
                    "{}",
                    l.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| l.to_string())
                );
            }
        }
        other => println!("{other}"),
    }
    Ok(())
}
