//! A read-only copy of the controller's state, published after every change: reports, /metrics,
//! `lookup` and the health scheduler read it without ever waiting for the controller.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::state::{State, VipState};
use crate::{
    config::{HealthCheck, ProbeKind},
    dataplane::links::Attachment,
    health::probe::ProbeTarget,
};

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
    /// The controller's VIPs as they were (tables shared, not copied).
    pub vips: Vec<VipState>,
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
        Snapshot {
            config: Arc::new(s.cfg.clone()),
            vips: s.vips.clone(),
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

    pub fn vip(&self, name: &str) -> anyhow::Result<&VipState> {
        self.vips
            .iter()
            .find(|v| v.spec.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.vips.iter().map(|v| v.spec.name.as_str()).collect();
                anyhow::anyhow!("no VIP named {name:?} (known: {})", known.join(", "))
            })
    }

    pub fn vip_by_id(&self, id: u32) -> Option<&VipState> {
        self.vips.iter().find(|v| v.id == id)
    }

    /// Every target the health scheduler must probe, with its check.
    pub fn probe_targets(&self) -> BTreeMap<ProbeTarget, HealthCheck> {
        let mut out = BTreeMap::new();
        for v in &self.vips {
            if v.spec.health.kind == ProbeKind::None {
                continue;
            }
            for b in &v.backends {
                let port = v.spec.health.port.unwrap_or(b.port);
                out.insert(
                    ProbeTarget {
                        vip: v.spec.name.clone(),
                        backend: b.socket(),
                        probe_addr: SocketAddr::new(b.address, port),
                    },
                    v.spec.health.clone(),
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
