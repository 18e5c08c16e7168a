//! A read-only copy of the controller's state, published after every change: reports, /metrics,
//! `lookup` and the health scheduler read it without ever waiting for the controller.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    plan::{Level, TableMode, level_loads},
    state::{PinState, State},
};
use crate::{
    config::{CookieMode, Groups, HealthCheck, ProbeKind, Protocol, SourcePolicy},
    dataplane::links::Attachment,
    health::{Status, probe::ProbeTarget},
};

#[derive(Clone, Debug)]
pub struct BackendView {
    pub address: IpAddr,
    pub port: u16,
    pub id: u32,
    pub weight: u32,
    pub configured_weight: u32,
    pub status: Status,
    pub in_table: bool,
    pub probe_rtt_ms: Option<f64>,
    pub last_error: Option<String>,
}

impl BackendView {
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[derive(Clone, Debug)]
pub struct VipView {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub id: u32,
    pub mode: TableMode,
    pub health: HealthCheck,
    /// The live Maglev table (for `lookup`).
    pub table: Arc<Vec<u32>>,
    pub backends: Vec<BackendView>,
    pub syn_cookies: CookieMode,
    /// `auto` mode is engaged.
    pub cookies_engaged: bool,
    /// SYNs are answered with cookies now (`always`, or `auto` engaged).
    pub cookies_on: bool,
    pub cookies_changed: Option<std::time::SystemTime>,
    pub sources: SourcePolicy,
    pub groups: Groups,
    /// Priority levels with their health and load, as the table was built.
    pub levels: Vec<Level>,
    /// Pinned source prefixes and their tables.
    pub pins: Vec<PinState>,
}

impl VipView {
    /// The pin whose prefix is the longest match for `client` (the data path's LPM answer).
    pub fn pin_of(&self, client: std::net::Ipv4Addr) -> Option<&PinState> {
        self.pins
            .iter()
            .flat_map(|p| p.cfg.sources.iter().map(move |n| (n, p)))
            .filter(|(n, _)| n.contains(&client))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, p)| p)
    }
}

#[derive(Clone, Debug)]
pub struct SnatView {
    pub index: u32,
    pub address: IpAddr,
    pub active: bool,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The running configuration (expiry reads its timeouts and interval here).
    pub config: Arc<crate::config::Config>,
    pub vips: Vec<VipView>,
    pub snat: Vec<SnatView>,
    pub attachments: Vec<Attachment>,
    pub expired_total: u64,
    /// Backend ids retired but still referenced by flows → the VIP they served.
    pub retired: BTreeMap<u32, u32>,
    /// Retired IPv6 backends' addresses (flows name IPv6 backends by id).
    pub retired_v6: BTreeMap<u32, IpAddr>,
}

impl Snapshot {
    pub fn of(s: &State, expired_total: u64, attachments: &[Attachment]) -> Self {
        let vips = s
            .vips
            .iter()
            .map(|v| {
                let in_table = v.in_table();
                VipView {
                    name: v.name.clone(),
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol,
                    id: v.id,
                    mode: v.mode,
                    health: v.health.clone(),
                    table: Arc::clone(&v.table),
                    syn_cookies: v.syn_cookies,
                    cookies_engaged: v.cookies_engaged,
                    cookies_on: v.cookies_on(),
                    cookies_changed: v.cookies_changed,
                    sources: v.sources.clone(),
                    groups: v.groups.clone(),
                    levels: level_loads(v),
                    pins: v.pins.clone(),
                    backends: v
                        .backends
                        .iter()
                        .map(|b| BackendView {
                            address: b.address,
                            port: b.port,
                            id: b.id,
                            weight: b.weight,
                            configured_weight: b.configured_weight,
                            status: b.health.status,
                            in_table: in_table.contains(&b.id),
                            probe_rtt_ms: b.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                            last_error: b.last_error.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        Snapshot {
            config: Arc::new(s.cfg.clone()),
            vips,
            snat: s
                .snat
                .iter()
                .map(|(i, (n, _))| SnatView {
                    index: *i,
                    address: n.address,
                    active: n.active,
                })
                .collect(),
            attachments: attachments.to_vec(),
            expired_total,
            retired: s
                .retired_backends
                .iter()
                .map(|(id, (b, _))| (*id, b.vip_id))
                .collect(),
            retired_v6: s
                .retired_backends
                .iter()
                .filter(|(_, (b, _))| b.family == lb_common::FAMILY_IPV6)
                .map(|(id, (b, _))| (*id, super::adopt::ip6(&b.addr.words)))
                .collect(),
        }
    }

    /// A flow's backend address: in the flow for IPv4, by backend id for IPv6.
    pub fn backend_ip(&self, e: &lb_common::FlowEntry) -> IpAddr {
        self.backend_ip_of(e.flags, e.backend, e.backend_id as u32)
    }

    /// The same from a flow's `flags`, `backend` word and backend `id`.
    pub fn backend_ip_of(&self, flags: u8, backend: u32, id: u32) -> IpAddr {
        if flags & lb_common::FlowEntry::BACKEND_V6 == 0 {
            return IpAddr::from(backend.to_ne_bytes());
        }
        self.vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.id == id)
            .map(|b| b.address)
            .or_else(|| self.retired_v6.get(&id).copied())
            .unwrap_or(IpAddr::from([0u16; 8]))
    }

    pub fn vip(&self, name: &str) -> anyhow::Result<&VipView> {
        self.vips.iter().find(|v| v.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.vips.iter().map(|v| v.name.as_str()).collect();
            anyhow::anyhow!("no VIP named {name:?} (known: {})", known.join(", "))
        })
    }

    pub fn vip_by_id(&self, id: u32) -> Option<&VipView> {
        self.vips.iter().find(|v| v.id == id)
    }

    /// Every target the health scheduler must probe, with its check.
    pub fn probe_targets(&self) -> BTreeMap<ProbeTarget, HealthCheck> {
        let mut out = BTreeMap::new();
        for v in &self.vips {
            if v.health.kind == ProbeKind::None {
                continue;
            }
            for b in &v.backends {
                let port = v.health.port.unwrap_or(b.port);
                out.insert(
                    ProbeTarget {
                        vip: v.name.clone(),
                        backend: b.socket(),
                        probe_addr: SocketAddr::new(b.address, port),
                    },
                    v.health.clone(),
                );
            }
        }
        out
    }

    /// Every backend address (neighbour warm-up).
    pub fn backend_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.address))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
