//! Reports built from the published snapshot, the counters and the flow table, never from the
//! controller itself: `stats`, `conns`, `lookup` and /metrics never wait behind a table install
//! or an expiry pass, and flow counts are exact at the moment of asking.

use std::{
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::{Result, bail};
use lb_common::{
    Flow4Key, FlowEntry, MAGLEV_TABLE_SIZE, NO_BACKEND, Reason, conntrack::State,
    hash::flow_hash_v4_key, slot,
};

use super::{
    Snapshot,
    plan::TableMode,
    state::{BackendState, VipState},
};
use crate::{
    config::SourceList,
    dataplane::{Counters, Flows},
    health::Status,
    report::{
        BackendReport, ConnReport, ConnsReport, GroupReport, LookupReport, PinReport, RttReport,
        SnatReport, SourceEntry, StatsReport, VipReport,
    },
};

fn ip(word: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
}

/// A flow's client address, of either family.
fn client_ip(e: &FlowEntry) -> IpAddr {
    if e.flags & FlowEntry::CLIENT_V6 != 0 {
        super::adopt::ip6(&e.client)
    } else {
        ip(e.client[0])
    }
}

const fn mode_name(m: TableMode) -> &'static str {
    match m {
        TableMode::Normal => "normal",
        TableMode::Starting => "starting",
        TableMode::FailOpen => "fail_open",
        TableMode::Empty => "empty",
    }
}

const fn status_name(s: Status) -> &'static str {
    match s {
        Status::Up => "up",
        Status::Down => "down",
        Status::Pending => "pending",
    }
}

/// Flow counts from one scan of the table.
#[derive(Default)]
struct FlowCounts {
    /// backend id → (open, closing)
    per_backend: HashMap<u32, (u64, u64)>,
    per_vip: HashMap<u32, u64>,
    half_open_per_vip: HashMap<u32, u64>,
    per_snat: HashMap<u32, u64>,
    total: u64,
    open: u64,
}

fn count(flows: &dyn Flows) -> FlowCounts {
    let mut c = FlowCounts::default();
    flows.scan(&mut |s, e| {
        if !e.is_live() {
            return;
        }
        c.total += 1;
        *c.per_snat.entry(slot::snat_index_of(s)).or_default() += 1;
        let b = c.per_backend.entry(e.backend_id as u32).or_default();
        if State::from_u8(e.state).is_some_and(State::is_open) {
            b.0 += 1;
            c.open += 1;
            *c.per_vip.entry(e.vip_id as u32).or_default() += 1;
            if e.state == State::SynSent as u8 {
                *c.half_open_per_vip.entry(e.vip_id as u32).or_default() += 1;
            }
        } else {
            b.1 += 1;
        }
    });
    c
}

pub fn stats(snap: &Snapshot, counters: &dyn Counters, flows: &dyn Flows) -> Result<StatsReport> {
    let reasons = counters.reasons()?;
    let fc = count(flows);
    let cfg = &snap.config;
    let ports = cfg.snat.port_max as u64 - cfg.snat.port_min as u64 + 1;
    let mut r = StatsReport {
        reasons: Reason::ALL
            .iter()
            .map(|x| (x.name().to_string(), reasons[*x as usize]))
            .collect(),
        flows: fc.total,
        active_flows: fc.open,
        max_flows: flows.max_flows(),
        expired_flows_total: snap.expired_total,
        snat: snap
            .snat
            .iter()
            .map(|s| SnatReport {
                address: s.address.to_string(),
                active: s.active,
                flows: fc.per_snat.get(&s.index).copied().unwrap_or(0),
                ports,
            })
            .collect(),
        interfaces: snap.attachments.clone(),
        ..Default::default()
    };
    for v in &snap.vips {
        let mut vr = vip_report(v, counters, &fc)?;
        let first = r.backends.len();
        for b in &v.backends {
            r.backends.push(backend_report(v, b, counters, &fc)?);
        }
        let mine = &r.backends[first..];
        vr.groups = group_reports(v, mine);
        vr.pins = v
            .pins
            .iter()
            .map(|p| {
                let s = counters.pin(p.table_id).unwrap_or_default();
                PinReport {
                    name: p.cfg.name.clone(),
                    sources: p.cfg.sources.iter().map(|n| n.to_string()).collect(),
                    groups: p.cfg.groups.clone(),
                    spill: p.cfg.spill,
                    backends_in_table: p.members.len(),
                    new_flows: s.new_flows,
                    refused: s.refused,
                    spilled: s.spilled,
                    client_rtt: RttReport::of(counters.pin_rtt(p.table_id)),
                }
            })
            .collect();
        vr.backend_rtt = RttReport::sum(mine.iter().map(|b| &b.backend_rtt));
        vr.client_rtt = RttReport::sum(mine.iter().map(|b| &b.client_rtt));
        r.vips.push(vr);
    }
    Ok(r)
}

/// Each group's health and share of new flows: its level's load, split among the level's
/// groups by the weight of their healthy backends (as the table splits it).
fn group_reports(v: &VipState, backends: &[BackendReport]) -> Vec<GroupReport> {
    let mut groups: Vec<&crate::config::Group> = v.spec.groups.groups.iter().collect();
    groups.sort_by_key(|g| (g.priority, g.name.clone()));
    let up_weight = |name: &str| -> u64 {
        v.backends
            .iter()
            .filter(|b| b.weight > 0 && b.status() == Status::Up)
            .filter(|b| v.spec.groups.group_of(b.address, b.port) == name)
            .map(|b| b.weight as u64)
            .sum()
    };
    let levels = v.levels();
    groups
        .into_iter()
        .map(|g| {
            let mine: Vec<&BackendState> = v
                .backends
                .iter()
                .filter(|b| v.spec.groups.group_of(b.address, b.port) == g.name)
                .collect();
            let eligible = mine.iter().filter(|b| b.weight > 0).count() as u32;
            let healthy = mine
                .iter()
                .filter(|b| b.weight > 0 && b.status() == Status::Up)
                .count() as u32;
            let level = levels.iter().find(|l| l.priority == g.priority);
            let level_up: u64 = v
                .spec
                .groups
                .groups
                .iter()
                .filter(|o| o.priority == g.priority)
                .map(|o| up_weight(&o.name))
                .sum();
            let share = match level {
                Some(l) if v.mode == TableMode::Normal && level_up > 0 => {
                    l.load_pct as f64 / 100.0 * up_weight(&g.name) as f64 / level_up as f64
                }
                _ => 0.0,
            };
            GroupReport {
                name: g.name.clone(),
                priority: g.priority,
                backends: eligible,
                healthy,
                healthy_share: if eligible > 0 {
                    healthy as f64 / eligible as f64
                } else {
                    0.0
                },
                level_health: level.map_or(0.0, |l| l.health_pct as f64 / 100.0),
                new_flow_share: share,
                new_flows: backends
                    .iter()
                    .filter(|b| b.group == g.name)
                    .map(|b| b.new_flows)
                    .sum(),
                backend_rtt: RttReport::sum(
                    backends
                        .iter()
                        .filter(|b| b.group == g.name)
                        .map(|b| &b.backend_rtt),
                ),
            }
        })
        .collect()
}

fn vip_report(v: &VipState, counters: &dyn Counters, fc: &FlowCounts) -> Result<VipReport> {
    let s = counters.vip(v.id)?;
    let proxy = counters.proxy(v.id)?;
    Ok(VipReport {
        name: v.spec.name.clone(),
        address: v.spec.address.to_string(),
        port: v.spec.port,
        protocol: v.spec.protocol.name().into(),
        table_mode: mode_name(v.mode).into(),
        fail_open: v.mode == TableMode::FailOpen,
        packets: s.packets,
        bytes: s.bytes,
        new_flows: s.new_flows,
        no_backend_drops: s.no_backend,
        active_flows: fc.per_vip.get(&v.id).copied().unwrap_or(0),
        half_open_flows: fc.half_open_per_vip.get(&v.id).copied().unwrap_or(0),
        backends_total: v.backends.len(),
        backends_in_table: v.backends.iter().filter(|b| v.has_in_table(b.id)).count(),
        syn_cookies: v.spec.syn_cookies.name().into(),
        syn_cookies_active: v.cookies_on(),
        syn_cookies_since: v.cookies_changed.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        }),
        syns: s.syns,
        handshakes: s.handshakes,
        cookies_sent: s.cookies_sent,
        cookies_valid: s.cookies_valid,
        cookies_invalid: s.cookies_invalid,
        deny_entries: v.spec.sources.deny.len(),
        allow_entries: v.spec.sources.allow.len(),
        source_rate: v.spec.sources.rate,
        source_burst: v.spec.sources.burst,
        denied: s.denied,
        allowed: s.allowed,
        rate_limited: s.rate_limited,
        source_max_conns: v.spec.sources.max_conns,
        conn_limited: s.conn_limited,
        max_flows: v.spec.max_flows,
        over_share: s.over_share,
        proxy_protocol: v.spec.proxy_protocol.name().into(),
        proxy_headers: proxy.headers,
        proxy_refused: proxy.refused,
        proxy_sack_mapped: proxy.sack_mapped,
        groups: Vec::new(),
        pins: Vec::new(),
        backend_rtt: RttReport::default(),
        client_rtt: RttReport::default(),
    })
}

fn backend_report(
    v: &VipState,
    b: &BackendState,
    counters: &dyn Counters,
    fc: &FlowCounts,
) -> Result<BackendReport> {
    let s = counters.backend(b.id)?;
    let passive = counters.passive(b.id)?;
    let (open, closing) = fc.per_backend.get(&b.id).copied().unwrap_or_default();
    Ok(BackendReport {
        vip: v.spec.name.clone(),
        address: b.address.to_string(),
        port: b.port,
        group: v.spec.groups.group_of(b.address, b.port).to_string(),
        weight: b.weight,
        configured_weight: b.configured_weight,
        health: status_name(b.status()).into(),
        healthy: b.status() == Status::Up,
        in_table: v.has_in_table(b.id),
        packets_in: s.packets_in,
        bytes_in: s.bytes_in,
        packets_out: s.packets_out,
        bytes_out: s.bytes_out,
        new_flows: s.new_flows,
        refused: passive.refused,
        syn_retransmits: passive.syn_retransmits,
        active_flows: open,
        closing_flows: closing,
        probe_rtt_ms: b.probe_rtt_ms(),
        backend_rtt: RttReport::of(counters.rtt(b.id, lb_common::rtt::RTT_BACKEND)),
        client_rtt: RttReport::of(counters.rtt(b.id, lb_common::rtt::RTT_CLIENT)),
        last_probe_error: b.last_error.clone(),
    })
}

/// Filters of a connection listing.
#[derive(Clone, Debug, Default)]
pub struct ConnFilter {
    pub vip: Option<String>,
    /// Address, and port when given.
    pub backend: Option<(IpAddr, Option<u16>)>,
    pub client: Option<(IpAddr, Option<u16>)>,
    /// A SNAT address and port the data node saw: maps it back to the client.
    pub snat: Option<(IpAddr, Option<u16>)>,
    pub limit: Option<usize>,
}

fn matches(want: &Option<(IpAddr, Option<u16>)>, a: IpAddr, p: u16) -> bool {
    want.is_none_or(|(wa, wp)| wa == a && wp.is_none_or(|wp| wp == p))
}

fn conn_row(snap: &Snapshot, s: u32, e: &FlowEntry, now_ns: u64) -> ConnReport {
    let vip = snap
        .vip_by_id(e.vip_id as u32)
        .map(|v| v.spec.name.clone())
        .unwrap_or_else(|| "(removed)".into());
    let snat_addr = snap
        .snat
        .iter()
        .find(|x| x.index == slot::snat_index_of(s))
        .map(|x| x.address)
        .unwrap_or(ip(e.client[2]));
    ConnReport {
        vip,
        protocol: if e.proto == lb_common::PROTO_TCP {
            "tcp"
        } else {
            "udp"
        }
        .into(),
        client: SocketAddr::new(client_ip(e), e.client_port).to_string(),
        backend: SocketAddr::new(snap.backend_ip(e), e.backend_port).to_string(),
        snat: SocketAddr::new(snat_addr, slot::port_of(s)).to_string(),
        state: State::from_u8(e.state)
            .map(|s| s.name())
            .unwrap_or("unknown")
            .into(),
        age_secs: (now_ns / 1_000_000_000).saturating_sub(e.created_s as u64) as f64,
        idle_secs: now_ns.saturating_sub(e.last_seen_ns) as f64 / 1e9,
    }
}

/// Live connections matching `f`, the first `limit` by (VIP, backend, client), and how many
/// matched in all. Keeps only `limit` rows in memory however large the table is.
pub fn conns(
    snap: &Snapshot,
    flows: &dyn Flows,
    f: &ConnFilter,
    now_ns: u64,
) -> Result<ConnsReport> {
    if let Some(name) = &f.vip {
        snap.vip(name)?;
    }
    let vip_id = f.vip.as_ref().and_then(|n| snap.vip(n).ok()).map(|v| v.id);
    let limit = f.limit.unwrap_or(usize::MAX);
    let mut heap: BinaryHeap<(String, String, String, u32)> = BinaryHeap::new();
    let mut rows: BTreeMap<u32, FlowEntry> = BTreeMap::new();
    let mut total = 0u64;
    flows.scan(&mut |s, e| {
        if !e.is_live() || vip_id.is_some_and(|id| id != e.vip_id as u32) {
            return;
        }
        let snat_addr = snap
            .snat
            .iter()
            .find(|x| x.index == slot::snat_index_of(s))
            .map(|x| x.address)
            .unwrap_or(ip(e.client[2]));
        if !matches(&f.backend, snap.backend_ip(e), e.backend_port)
            || !matches(&f.client, client_ip(e), e.client_port)
            || !matches(&f.snat, snat_addr, slot::port_of(s))
        {
            return;
        }
        total += 1;
        let key = (
            snap.vip_by_id(e.vip_id as u32)
                .map(|v| v.spec.name.clone())
                .unwrap_or_default(),
            SocketAddr::new(snap.backend_ip(e), e.backend_port).to_string(),
            SocketAddr::new(client_ip(e), e.client_port).to_string(),
            s,
        );
        heap.push(key);
        rows.insert(s, *e);
        if heap.len() > limit
            && let Some(evicted) = heap.pop()
        {
            rows.remove(&evicted.3);
        }
    });
    let mut conns: Vec<ConnReport> = heap
        .into_sorted_vec()
        .into_iter()
        .filter_map(|k| rows.get(&k.3).map(|e| conn_row(snap, k.3, e, now_ns)))
        .collect();
    conns.sort_by(|a, b| (&a.vip, &a.backend, &a.client).cmp(&(&b.vip, &b.backend, &b.client)));
    Ok(ConnsReport { total, conns })
}

/// Which backend a new flow from `client` to the VIP gets, from the same hash and table the
/// kernel uses (and the existing flow, if one is recorded for that tuple).
pub fn lookup(
    snap: &Snapshot,
    flows: &dyn Flows,
    client: SocketAddr,
    vip: &str,
) -> Result<LookupReport> {
    let v = snap.vip(vip)?;
    let proto = v.spec.protocol.number();
    // The tuple as the data path keys and hashes it, and the recorded flow of that tuple.
    let (h, existing_ref, client_v4) = match (client, v.spec.address) {
        (SocketAddr::V4(c), IpAddr::V4(va)) => {
            let key = Flow4Key::new(c.ip().octets(), va.octets(), c.port(), v.spec.port, proto);
            (
                flow_hash_v4_key(&key),
                flows.refs4().get(&key)?,
                Some(*c.ip()),
            )
        }
        (SocketAddr::V6(c), IpAddr::V6(va)) => {
            let key = lb_common::Flow6Key::new(
                c.ip().octets(),
                va.octets(),
                c.port(),
                v.spec.port,
                proto,
            );
            (
                lb_common::hash::flow_hash_v6_key(&key),
                flows.refs6().get(&key)?,
                None,
            )
        }
        _ => bail!(
            "client {client} and VIP {} ({}) are of different address families",
            v.spec.name,
            v.spec.address
        ),
    };
    let table_slot = h % MAGLEV_TABLE_SIZE;
    let at = |t: &[u32]| t.get(table_slot as usize).copied().unwrap_or(NO_BACKEND);
    // The data path's choice: the pin's table when one covers the client, else the VIP's.
    let pin = client_v4.and_then(|c| v.pin_of(c));
    let mut pin_outcome = None;
    let id = match pin {
        Some(p) if at(&p.table) != NO_BACKEND => at(&p.table),
        Some(p) if p.cfg.spill => {
            pin_outcome = Some("spilled".to_string());
            at(&v.table)
        }
        Some(_) => {
            pin_outcome = Some("refused".to_string());
            NO_BACKEND
        }
        None => at(&v.table),
    };
    let backend = v
        .backends
        .iter()
        .find(|b| b.id == id)
        .map(|b| b.socket().to_string());
    let existing = existing_ref.and_then(|r| {
        let e = flows.entry(r.slot);
        (e.owner == r.token).then(|| SocketAddr::new(ip(e.backend), e.backend_port).to_string())
    });
    let group = v
        .backends
        .iter()
        .find(|b| b.id == id)
        .map(|b| v.spec.groups.group_of(b.address, b.port).to_string());
    Ok(LookupReport {
        vip: v.spec.name.clone(),
        client: client.to_string(),
        flow_hash: h,
        slot: table_slot,
        backend,
        existing_flow_backend: existing,
        pin: pin.map(|p| p.cfg.name.clone()),
        group,
        pin_outcome,
    })
}

/// The entries of one list, VIP by VIP.
pub fn source_list(snap: &Snapshot, list: SourceList, vip: Option<&str>) -> Vec<SourceEntry> {
    snap.vips
        .iter()
        .filter(|v| vip.is_none_or(|n| v.spec.name == n))
        .flat_map(|v| {
            v.spec.sources.list(list).iter().map(|net| SourceEntry {
                vip: v.spec.name.clone(),
                list: list.name().into(),
                prefix: net.to_string(),
            })
        })
        .collect()
}
