//! The controller: turns the configuration, health results and CLI commands into map writes.
//! It is the only writer of the configuration maps. Every change that affects which backends a
//! VIP uses ends in one atomic Maglev table swap.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_common::{
    Addr, AddrClass, Backend, DataplaneConfig, FAMILY_IPV4, FlowKey, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS, MAX_VIPS, NO_BACKEND, Reason, VipMeta,
    conntrack::{State, is_expired},
    hash::flow_hash,
    maglev::{Member, build_table},
};
use log::{info, warn};

use crate::{
    config::{BackendConfig, Config, HealthCheck, Protocol, Vip},
    dataplane::Dataplane,
    health::{Health, ProbeResult, Transition, fail_open},
    report::{BackendReport, ConnReport, LookupReport, StatsReport, VipReport},
};

pub struct BackendState {
    pub address: Ipv4Addr,
    pub port: u16,
    /// Current weight: the configured one, or what the CLI set (drain = 0).
    pub weight: u32,
    pub configured_weight: u32,
    pub id: u32,
    pub health: Health,
    pub last_rtt: Option<Duration>,
    pub last_error: Option<String>,
}

impl BackendState {
    pub fn key(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

pub struct VipState {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub health: HealthCheck,
    pub id: u32,
    pub backends: Vec<BackendState>,
    pub fail_open: bool,
    /// Backend ids in the live table.
    pub in_table: BTreeSet<u32>,
    /// The live table (for `lookup`).
    pub table: Vec<u32>,
    /// Rebuilt from pinned maps and not yet matched with the config.
    pub adopted: bool,
}

/// One probe target, for the health scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeTarget {
    pub vip: String,
    pub backend: SocketAddr,
    /// Where the probe connects (health-check port may differ from the backend's).
    pub probe_addr: SocketAddr,
}

pub struct Controller {
    dp: Dataplane,
    cfg: Config,
    vips: Vec<VipState>,
    /// Backend ids that left the configuration but may still be referenced by flows; freed by
    /// the expiry pass once no flow points at them (so counters are never misattributed).
    released_ids: BTreeSet<u32>,
    active_flows: HashMap<u32, u64>,
    flow_count: u64,
    expired_total: u64,
}

impl std::fmt::Debug for Controller {
    // prometheus-client's Collector needs Debug; the map handles inside have nothing useful to show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Controller")
    }
}

/// Lowest id in `0..max` not in `used`.
fn lowest_free(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    (0..max).find(|i| !used.contains(i))
}

impl Controller {
    /// Takes over a loaded data plane (fresh or adopted from pins) and applies `cfg`.
    /// Ids of VIPs and backends already in the pinned maps are kept, so established flows keep
    /// their counters and their backend across a daemon restart.
    pub fn new(dp: Dataplane, cfg: Config) -> Result<(Self, Vec<String>)> {
        let mut c = Controller {
            dp,
            cfg: cfg.clone(),
            vips: Vec::new(),
            released_ids: BTreeSet::new(),
            active_flows: HashMap::new(),
            flow_count: 0,
            expired_total: 0,
        };
        c.adopt()?;
        let summary = c.apply(cfg)?;
        Ok((c, summary))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Rebuilds in-memory state from pinned maps: VIPs by (address, port, protocol), backends by
    /// (vip id, address, port). Health starts "up" (nothing proven down yet).
    fn adopt(&mut self) -> Result<()> {
        let vips = self.dp.vips()?;
        let backends = self.dp.backends()?;
        for (key, meta) in vips {
            let protocol = match key.proto {
                lb_common::PROTO_TCP => Protocol::Tcp,
                lb_common::PROTO_UDP => Protocol::Udp,
                _ => continue,
            };
            let mut vs = VipState {
                name: format!("(adopted {})", meta.vip_id),
                address: Ipv4Addr::from(key.addr.v4_octets()),
                port: key.port,
                protocol,
                health: HealthCheck::default(),
                id: meta.vip_id,
                backends: Vec::new(),
                fail_open: meta.flags & VipMeta::FAIL_OPEN != 0,
                in_table: BTreeSet::new(),
                table: Vec::new(),
                adopted: true,
            };
            for (id, b) in backends.iter().filter(|(_, b)| b.vip_id == meta.vip_id) {
                if b.flags & Backend::ACTIVE == 0 {
                    continue;
                }
                vs.backends.push(BackendState {
                    address: Ipv4Addr::from(b.addr.v4_octets()),
                    port: b.port,
                    weight: 0,
                    configured_weight: 0,
                    id: *id,
                    health: Health::new(2, 2),
                    last_rtt: None,
                    last_error: None,
                });
            }
            self.vips.push(vs);
        }
        // Inactive slots that flows may still reference stay reserved until the expiry pass.
        for (id, b) in &backends {
            if b.flags & Backend::ACTIVE == 0 && b.addr != Addr::default() {
                self.released_ids.insert(*id);
            }
        }
        if !self.vips.is_empty() {
            info!("adopted {} VIP(s) from pinned maps", self.vips.len());
        }
        Ok(())
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        let mut used: BTreeSet<u32> = self.released_ids.clone();
        for v in &self.vips {
            used.extend(v.backends.iter().map(|b| b.id));
        }
        used
    }

    fn alloc_backend_id(&self) -> Result<u32> {
        lowest_free(&self.used_backend_ids(), MAX_BACKENDS)
            .ok_or_else(|| anyhow!("all {MAX_BACKENDS} backend slots are in use"))
    }

    fn vip_index(&self, name: &str) -> Result<usize> {
        self.vips
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.vips.iter().map(|v| v.name.as_str()).collect();
                anyhow!("no VIP named {name:?} (known: {})", known.join(", "))
            })
    }

    /// Makes the data plane match `new` (a validated config): global settings, SNAT addresses,
    /// VIPs and backends. Unchanged backends keep their id, health and flows. Returns a summary
    /// of what changed.
    pub fn apply(&mut self, new: Config) -> Result<Vec<String>> {
        let mut summary = Vec::new();
        let mut dp_cfg = self.dp.config()?;
        dp_cfg.snat_port_min = new.snat.port_min;
        dp_cfg.snat_port_max = new.snat.port_max;
        if new.conntrack.non_syn_pass {
            dp_cfg.flags |= DataplaneConfig::NON_SYN_PASS;
        } else {
            dp_cfg.flags &= !DataplaneConfig::NON_SYN_PASS;
        }
        self.dp.set_config(&dp_cfg)?;
        let old_snat: BTreeSet<Ipv4Addr> = self.cfg.snat.addresses.iter().copied().collect();
        let new_snat: BTreeSet<Ipv4Addr> = new.snat.addresses.iter().copied().collect();
        for gone in old_snat.difference(&new_snat) {
            self.dp.update_addr_class(*gone, 0, AddrClass::SNAT)?;
            summary.push(format!("snat: -{gone}"));
        }
        self.dp.set_snat_addrs(&new.snat.addresses)?;

        // VIPs that left the configuration.
        let wanted: BTreeSet<(Ipv4Addr, u16, Protocol)> = new
            .vips
            .iter()
            .map(|v| (v.address, v.port, v.protocol))
            .collect();
        let mut i = 0;
        while i < self.vips.len() {
            let v = &self.vips[i];
            if wanted.contains(&(v.address, v.port, v.protocol)) {
                i += 1;
                continue;
            }
            let v = self.vips.remove(i);
            self.remove_vip(&v)?;
            summary.push(format!("vip {}: removed", v.name));
        }
        for vc in &new.vips {
            let existing = self.vips.iter().position(|v| {
                (v.address, v.port, v.protocol) == (vc.address, vc.port, vc.protocol)
            });
            match existing {
                Some(idx) => {
                    let changes = self.update_vip(idx, vc)?;
                    summary.extend(changes);
                }
                None => {
                    self.add_vip(vc)?;
                    summary.push(format!(
                        "vip {}: added {}:{}/{} with {} backend(s)",
                        vc.name,
                        vc.address,
                        vc.port,
                        vc.protocol.name(),
                        vc.backends.len()
                    ));
                }
            }
        }
        self.sync_addr_classes(&new)?;
        self.cfg = new;
        Ok(summary)
    }

    /// ADDR_CLASS bits for every VIP address, recomputed from the VIP list.
    fn sync_addr_classes(&mut self, cfg: &Config) -> Result<()> {
        let mut want: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        for v in &self.vips {
            let mut bits = AddrClass::VIP;
            if v.port == 0 {
                bits |= match v.protocol {
                    Protocol::Tcp => AddrClass::VIP_ANY_PORT_TCP,
                    Protocol::Udp => AddrClass::VIP_ANY_PORT_UDP,
                };
            }
            *want.entry(v.address).or_default() |= bits;
        }
        let vip_bits = AddrClass::VIP | AddrClass::VIP_ANY_PORT_TCP | AddrClass::VIP_ANY_PORT_UDP;
        let mut addrs: BTreeSet<Ipv4Addr> = want.keys().copied().collect();
        addrs.extend(self.cfg.vips.iter().map(|v| v.address));
        addrs.extend(cfg.vips.iter().map(|v| v.address));
        for a in addrs {
            let bits = want.get(&a).copied().unwrap_or(0);
            self.dp.update_addr_class(a, bits, vip_bits & !bits)?;
        }
        Ok(())
    }

    fn add_vip(&mut self, vc: &Vip) -> Result<()> {
        let used: BTreeSet<u32> = self.vips.iter().map(|v| v.id).collect();
        let id = lowest_free(&used, MAX_VIPS)
            .ok_or_else(|| anyhow!("all {MAX_VIPS} VIP slots are in use"))?;
        let mut vs = VipState {
            name: vc.name.clone(),
            address: vc.address,
            port: vc.port,
            protocol: vc.protocol,
            health: vc.health.clone(),
            id,
            backends: Vec::new(),
            fail_open: false,
            in_table: BTreeSet::new(),
            table: Vec::new(),
            adopted: false,
        };
        for b in &vc.backends {
            let bid = self.alloc_backend_id_with(&vs)?;
            vs.backends.push(self.new_backend(b, bid, &vc.health));
            self.write_backend(id, vs.backends.last().expect("just pushed"))?;
        }
        self.vips.push(vs);
        let idx = self.vips.len() - 1;
        // The table first, the VIP entry last: the VIP goes live with a complete table.
        self.rebuild_table(idx)?;
        self.dp.set_vip(
            vc.address,
            vc.port,
            vc.protocol.number(),
            VipMeta {
                vip_id: id,
                flags: 0,
            },
        )?;
        Ok(())
    }

    fn alloc_backend_id_with(&self, pending: &VipState) -> Result<u32> {
        let mut used = self.used_backend_ids();
        used.extend(pending.backends.iter().map(|b| b.id));
        lowest_free(&used, MAX_BACKENDS)
            .ok_or_else(|| anyhow!("all {MAX_BACKENDS} backend slots are in use"))
    }

    fn new_backend(&self, b: &BackendConfig, id: u32, hc: &HealthCheck) -> BackendState {
        BackendState {
            address: b.address,
            port: b.port,
            weight: b.weight,
            configured_weight: b.weight,
            id,
            health: Health::new(hc.rise, hc.fall),
            last_rtt: None,
            last_error: None,
        }
    }

    fn write_backend(&mut self, vip_id: u32, b: &BackendState) -> Result<()> {
        let v = Backend::new(
            Addr::v4(b.address.octets()),
            b.port,
            FAMILY_IPV4,
            Backend::ACTIVE,
            vip_id,
        );
        self.dp.set_backend(b.id, &v)
    }

    /// Marks a backend slot inactive (SYNs on its flows then pick a live backend); the id is
    /// reused only once no flow references it.
    fn retire_backend(&mut self, vip_id: u32, b: &BackendState) -> Result<()> {
        let v = Backend::new(Addr::v4(b.address.octets()), b.port, FAMILY_IPV4, 0, vip_id);
        self.dp.set_backend(b.id, &v)?;
        self.released_ids.insert(b.id);
        Ok(())
    }

    fn remove_vip(&mut self, v: &VipState) -> Result<()> {
        self.dp.remove_vip(v.address, v.port, v.protocol.number())?;
        self.dp
            .install_table(v.id, &vec![NO_BACKEND; MAGLEV_TABLE_SIZE as usize])?;
        for b in &v.backends {
            self.retire_backend(v.id, b)?;
        }
        Ok(())
    }

    fn update_vip(&mut self, idx: usize, vc: &Vip) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        let vip_id = self.vips[idx].id;
        let adopted = std::mem::take(&mut self.vips[idx].adopted);
        if adopted {
            changes.push(format!(
                "vip {}: adopted from the pinned maps with {} backend(s)",
                vc.name,
                self.vips[idx].backends.len()
            ));
        } else if self.vips[idx].name != vc.name {
            changes.push(format!(
                "vip {}: renamed to {}",
                self.vips[idx].name, vc.name
            ));
        }
        self.vips[idx].name = vc.name.clone();
        if self.vips[idx].health != vc.health {
            if !adopted {
                changes.push(format!("vip {}: health check changed", vc.name));
            }
            self.vips[idx].health = vc.health.clone();
            for b in &mut self.vips[idx].backends {
                // New thresholds; a down backend stays down until it proves itself again.
                b.health = Health::with_state(vc.health.rise, vc.health.fall, b.health.up);
            }
        }
        let current: Vec<(Ipv4Addr, u16, u32)> = self.vips[idx]
            .backends
            .iter()
            .map(|b| (b.address, b.port, b.weight))
            .collect();
        let diff = diff_backends(&current, &vc.backends);
        for (address, port) in &diff.removed {
            let pos = self.vips[idx]
                .backends
                .iter()
                .position(|b| (b.address, b.port) == (*address, *port))
                .expect("diff names a current backend");
            let b = self.vips[idx].backends.remove(pos);
            self.retire_backend(vip_id, &b)?;
            changes.push(format!("vip {}: -backend {}", vc.name, b.key()));
        }
        for (address, port, old, new) in &diff.reweighted {
            let b = self.vips[idx]
                .backends
                .iter_mut()
                .find(|b| (b.address, b.port) == (*address, *port))
                .expect("diff names a current backend");
            b.weight = *new;
            if !adopted {
                changes.push(format!(
                    "vip {}: backend {} weight {old} -> {new}",
                    vc.name,
                    b.key()
                ));
            }
        }
        for b in &mut self.vips[idx].backends {
            if let Some(bc) = vc
                .backends
                .iter()
                .find(|c| (c.address, c.port) == (b.address, b.port))
            {
                b.configured_weight = bc.weight;
            }
        }
        for bc in &diff.added {
            let id = self.alloc_backend_id()?;
            let b = self.new_backend(bc, id, &vc.health);
            self.write_backend(vip_id, &b)?;
            changes.push(format!("vip {}: +backend {}", vc.name, b.key()));
            self.vips[idx].backends.push(b);
        }
        if !diff.is_empty() || self.vips[idx].table.is_empty() {
            self.rebuild_table(idx)?;
        }
        Ok(changes)
    }

    /// Recomputes a VIP's table from weights and health and swaps it in if it changed.
    /// Fail-open: when every backend that may take traffic is down, all of them stay in.
    fn rebuild_table(&mut self, idx: usize) -> Result<()> {
        let v = &self.vips[idx];
        let eligible: Vec<&BackendState> = v.backends.iter().filter(|b| b.weight > 0).collect();
        let fail_open_now = fail_open(eligible.iter().map(|b| b.health.up));
        let members: Vec<Member> = eligible
            .iter()
            .filter(|b| fail_open_now || b.health.up)
            .map(|b| Member {
                id: b.id,
                key: b.key(),
                weight: b.weight,
            })
            .collect();
        let in_table: BTreeSet<u32> = members.iter().map(|m| m.id).collect();
        let table = build_table(&members, MAGLEV_TABLE_SIZE);
        if table != v.table {
            let (vip_id, name) = (v.id, v.name.clone());
            self.dp
                .install_table(vip_id, &table)
                .with_context(|| format!("installing the table of VIP {name}"))?;
            if members.is_empty() {
                warn!("vip {name}: no backend may take new connections (all drained or removed)");
            }
        }
        let v = &mut self.vips[idx];
        if fail_open_now != v.fail_open {
            if fail_open_now {
                warn!(
                    "vip {}: FAIL-OPEN: all {} backend(s) fail their health check; forwarding to all of them",
                    v.name,
                    eligible_len(v)
                );
            } else {
                info!(
                    "vip {}: fail-open over, a backend passes its health check again",
                    v.name
                );
            }
            v.fail_open = fail_open_now;
            let meta = VipMeta {
                vip_id: v.id,
                flags: if fail_open_now { VipMeta::FAIL_OPEN } else { 0 },
            };
            let (a, p, proto) = (v.address, v.port, v.protocol.number());
            if self.dp.vip_meta(a, p, proto)?.is_some() {
                self.dp.set_vip(a, p, proto, meta)?;
            }
        }
        let v = &mut self.vips[idx];
        v.in_table = in_table;
        v.table = table;
        Ok(())
    }

    /// Every backend to probe, with where to probe it.
    pub fn probe_targets(&self) -> Vec<(ProbeTarget, HealthCheck)> {
        let mut out = Vec::new();
        for v in &self.vips {
            for b in &v.backends {
                let port = v.health.port.unwrap_or(b.port);
                out.push((
                    ProbeTarget {
                        vip: v.name.clone(),
                        backend: SocketAddr::from((b.address, b.port)),
                        probe_addr: SocketAddr::from((b.address, port)),
                    },
                    v.health.clone(),
                ));
            }
        }
        out
    }

    /// Applies one probe result; a health transition swaps the VIP's table.
    pub fn record_probe(&mut self, t: &ProbeTarget, r: &ProbeResult) -> Result<Option<Transition>> {
        let Ok(idx) = self.vip_index(&t.vip) else {
            return Ok(None);
        };
        let Some(b) = self.vips[idx]
            .backends
            .iter_mut()
            .find(|b| SocketAddr::from((b.address, b.port)) == t.backend)
        else {
            return Ok(None);
        };
        b.last_rtt = Some(r.rtt);
        b.last_error = r.error.clone();
        let tr = b.health.record(r.ok);
        match tr {
            Some(Transition::Down) => warn!(
                "vip {}: backend {} DOWN ({})",
                t.vip,
                t.backend,
                r.error.as_deref().unwrap_or("probe failed")
            ),
            Some(Transition::Up) => info!("vip {}: backend {} UP", t.vip, t.backend),
            None => {}
        }
        if tr.is_some() {
            self.rebuild_table(idx)?;
        }
        Ok(tr)
    }

    // ------------------------------------------------------------ runtime backend management

    pub fn add_backend(
        &mut self,
        vip: &str,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: u32,
    ) -> Result<String> {
        check_weight(weight)?;
        let idx = self.vip_index(vip)?;
        let port = port.unwrap_or(self.vips[idx].port);
        if self.vips[idx]
            .backends
            .iter()
            .any(|b| (b.address, b.port) == (address, port))
        {
            bail!("vip {vip} already has backend {address}:{port}");
        }
        let id = self.alloc_backend_id()?;
        let hc = self.vips[idx].health.clone();
        let b = self.new_backend(
            &BackendConfig {
                address,
                port,
                weight,
            },
            id,
            &hc,
        );
        self.write_backend(self.vips[idx].id, &b)?;
        self.vips[idx].backends.push(b);
        self.rebuild_table(idx)?;
        Ok(format!(
            "vip {vip}: added backend {address}:{port} weight {weight}"
        ))
    }

    fn backend_index(&self, idx: usize, address: Ipv4Addr, port: Option<u16>) -> Result<usize> {
        let v = &self.vips[idx];
        let matches: Vec<usize> = v
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.address == address && port.is_none_or(|p| p == b.port))
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => {
                let known: Vec<String> = v.backends.iter().map(|b| b.key()).collect();
                bail!(
                    "vip {} has no backend {address}{} (known: {})",
                    v.name,
                    port.map(|p| format!(":{p}")).unwrap_or_default(),
                    known.join(", ")
                )
            }
            _ => bail!(
                "vip {} has several backends at {address}: give the port too",
                v.name
            ),
        }
    }

    pub fn remove_backend(
        &mut self,
        vip: &str,
        address: Ipv4Addr,
        port: Option<u16>,
    ) -> Result<String> {
        let idx = self.vip_index(vip)?;
        let bi = self.backend_index(idx, address, port)?;
        if self.vips[idx].backends.len() == 1 {
            bail!(
                "vip {vip}: {address} is its last backend; drain it (weight 0) instead, or remove the VIP from the config"
            );
        }
        let b = self.vips[idx].backends.remove(bi);
        // The table first (no new flows), then the slot (SYNs on its tuples re-balance).
        self.rebuild_table(idx)?;
        self.retire_backend(self.vips[idx].id, &b)?;
        Ok(format!("vip {vip}: removed backend {}", b.key()))
    }

    /// Weight 0 = drain: no new flows, existing ones stay until they end.
    pub fn set_weight(
        &mut self,
        vip: &str,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: u32,
    ) -> Result<String> {
        check_weight(weight)?;
        let idx = self.vip_index(vip)?;
        let bi = self.backend_index(idx, address, port)?;
        let b = &mut self.vips[idx].backends[bi];
        let old = b.weight;
        b.weight = weight;
        let key = b.key();
        let others_positive = self.vips[idx].backends.iter().any(|b| b.weight > 0);
        self.rebuild_table(idx)?;
        let mut msg = format!("vip {vip}: backend {key} weight {old} -> {weight}");
        if weight == 0 {
            msg.push_str(" (draining: no new connections, existing ones stay)");
        }
        if !others_positive {
            msg.push_str("; WARNING: no backend of this VIP takes new connections now");
        }
        Ok(msg)
    }

    // ------------------------------------------------------------ expiry

    /// Removes idle flows (per-state timeouts), frees SNAT ports with them, counts active flows
    /// per backend and releases backend ids no flow references any more.
    pub fn expire(&mut self, now_ns: u64) -> Result<usize> {
        let flows = self.dp.flows()?;
        let timeouts = self.cfg.conntrack.timeouts;
        let mut active: HashMap<u32, u64> = HashMap::new();
        let mut expired = 0;
        for (k, f) in &flows {
            if is_expired(f, now_ns, &timeouts) && self.dp.remove_flow_if_unchanged(k, f)? {
                expired += 1;
            } else {
                *active.entry(f.backend_id).or_default() += 1;
            }
        }
        let referenced: BTreeSet<u32> = active.keys().copied().collect();
        let freed: Vec<u32> = self
            .released_ids
            .iter()
            .copied()
            .filter(|id| !referenced.contains(id))
            .collect();
        for id in freed {
            self.released_ids.remove(&id);
            self.dp.set_backend(id, &Backend::default())?;
        }
        self.flow_count = (flows.len() - expired) as u64;
        self.expired_total += expired as u64;
        self.active_flows = active;
        Ok(expired)
    }

    // ------------------------------------------------------------ reports

    pub fn stats(&self) -> Result<StatsReport> {
        let reasons = self.dp.reasons()?;
        let mut r = StatsReport {
            reasons: Reason::ALL
                .iter()
                .map(|x| (x.name().to_string(), reasons[*x as usize]))
                .collect(),
            flows: self.flow_count,
            max_flows: self.dp.max_flows()?,
            expired_flows_total: self.expired_total,
            ..Default::default()
        };
        for v in &self.vips {
            let s = self.dp.vip_stats(v.id)?;
            r.vips.push(VipReport {
                name: v.name.clone(),
                address: v.address.to_string(),
                port: v.port,
                protocol: v.protocol.name().into(),
                fail_open: v.fail_open,
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                no_backend_drops: s.no_backend,
                backends_total: v.backends.len(),
                backends_in_table: v.in_table.len(),
            });
            for b in &v.backends {
                let s = self.dp.backend_stats(b.id)?;
                r.backends.push(BackendReport {
                    vip: v.name.clone(),
                    address: b.address.to_string(),
                    port: b.port,
                    weight: b.weight,
                    configured_weight: b.configured_weight,
                    healthy: b.health.up,
                    in_table: v.in_table.contains(&b.id),
                    packets_in: s.packets_in,
                    bytes_in: s.bytes_in,
                    packets_out: s.packets_out,
                    bytes_out: s.bytes_out,
                    new_flows: s.new_flows,
                    active_flows: self.active_flows.get(&b.id).copied().unwrap_or(0),
                    probe_rtt_ms: b.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_probe_error: b.last_error.clone(),
                });
            }
        }
        Ok(r)
    }

    /// Live connections, optionally filtered by VIP name and backend "address:port".
    pub fn conns(
        &self,
        vip: Option<&str>,
        backend: Option<SocketAddr>,
        now_ns: u64,
    ) -> Result<Vec<ConnReport>> {
        if let Some(name) = vip {
            self.vip_index(name)?;
        }
        let by_id: HashMap<u32, &VipState> = self.vips.iter().map(|v| (v.id, v)).collect();
        let mut out = Vec::new();
        for (k, f) in self.dp.flows()? {
            let vname = by_id
                .get(&f.vip_id)
                .map(|v| v.name.as_str())
                .unwrap_or("(removed)");
            if vip.is_some_and(|n| n != vname) {
                continue;
            }
            let b = SocketAddr::from((Ipv4Addr::from(f.backend_addr.v4_octets()), f.backend_port));
            if backend.is_some_and(|x| x != b) {
                continue;
            }
            out.push(ConnReport {
                vip: vname.to_string(),
                protocol: if k.proto == lb_common::PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                }
                .into(),
                client: SocketAddr::from((Ipv4Addr::from(k.src.v4_octets()), k.src_port))
                    .to_string(),
                backend: b.to_string(),
                snat: SocketAddr::from((Ipv4Addr::from(f.snat_addr.v4_octets()), f.snat_port))
                    .to_string(),
                state: State::from_u8(f.state)
                    .map(|s| s.name())
                    .unwrap_or("unknown")
                    .into(),
                age_secs: now_ns.saturating_sub(f.created_ns) as f64 / 1e9,
                idle_secs: now_ns.saturating_sub(f.last_seen_ns) as f64 / 1e9,
            });
        }
        out.sort_by(|a, b| (&a.vip, &a.backend, &a.client).cmp(&(&b.vip, &b.backend, &b.client)));
        Ok(out)
    }

    /// Which backend a new flow from `client` to the VIP gets, from the same hash and table the
    /// kernel uses (and the existing flow, if one is recorded for that tuple).
    pub fn lookup(&self, client: SocketAddr, vip: &str) -> Result<LookupReport> {
        let idx = self.vip_index(vip)?;
        let v = &self.vips[idx];
        let SocketAddr::V4(c) = client else {
            bail!("client {client} is not IPv4")
        };
        let key = FlowKey::new(
            Addr::v4(c.ip().octets()),
            Addr::v4(v.address.octets()),
            c.port(),
            v.port,
            v.protocol.number(),
            FAMILY_IPV4,
        );
        let h = flow_hash(&key);
        let slot = h % MAGLEV_TABLE_SIZE;
        let id = v.table.get(slot as usize).copied().unwrap_or(NO_BACKEND);
        let backend = v.backends.iter().find(|b| b.id == id).map(|b| b.key());
        let existing = self.dp.flow(&key)?.map(|f| {
            SocketAddr::from((Ipv4Addr::from(f.backend_addr.v4_octets()), f.backend_port))
                .to_string()
        });
        Ok(LookupReport {
            vip: v.name.clone(),
            client: client.to_string(),
            flow_hash: h,
            slot,
            backend,
            existing_flow_backend: existing,
        })
    }

    /// Every backend address (for neighbour warm-up).
    pub fn backend_addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.address))
            .collect()
    }

    /// VIP names (for the CLI).
    pub fn vip_names(&self) -> Vec<String> {
        self.vips.iter().map(|v| v.name.clone()).collect()
    }
}

/// What making a VIP's backends equal to the file changes. Backends are identified by
/// (address, port); a runtime weight (CLI) that differs from the file's is set back to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BackendDiff {
    pub added: Vec<BackendConfig>,
    pub removed: Vec<(Ipv4Addr, u16)>,
    /// (address, port, current weight, file's weight)
    pub reweighted: Vec<(Ipv4Addr, u16, u32, u32)>,
}

impl BackendDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

/// `current`: (address, port, current weight) of the running backends.
pub fn diff_backends(current: &[(Ipv4Addr, u16, u32)], wanted: &[BackendConfig]) -> BackendDiff {
    let mut d = BackendDiff::default();
    for (a, p, _) in current {
        if !wanted.iter().any(|w| (w.address, w.port) == (*a, *p)) {
            d.removed.push((*a, *p));
        }
    }
    for w in wanted {
        match current
            .iter()
            .find(|(a, p, _)| (*a, *p) == (w.address, w.port))
        {
            Some((a, p, cur)) if *cur != w.weight => d.reweighted.push((*a, *p, *cur, w.weight)),
            Some(_) => {}
            None => d.added.push(*w),
        }
    }
    d
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > crate::config::MAX_WEIGHT {
        bail!(
            "weight must be between 0 and {}, got {weight}",
            crate::config::MAX_WEIGHT
        );
    }
    Ok(())
}

fn eligible_len(v: &VipState) -> usize {
    v.backends.iter().filter(|b| b.weight > 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(last: u8, weight: u32) -> BackendConfig {
        BackendConfig {
            address: Ipv4Addr::new(10, 0, 0, last),
            port: 5100,
            weight,
        }
    }

    #[test]
    fn reload_diff_names_only_what_changed() {
        let current = [
            (Ipv4Addr::new(10, 0, 0, 1), 5100, 100),
            (Ipv4Addr::new(10, 0, 0, 2), 5100, 100),
            (Ipv4Addr::new(10, 0, 0, 3), 5100, 0),
        ];
        // Same as the file: nothing to do.
        assert!(diff_backends(&current, &[b(1, 100), b(2, 100), b(3, 0)]).is_empty());
        // One removed, one added, one re-weighted; the drained one (CLI) goes back to the file's.
        let d = diff_backends(&current, &[b(1, 50), b(3, 100), b(4, 100)]);
        assert_eq!(d.removed, vec![(Ipv4Addr::new(10, 0, 0, 2), 5100)]);
        assert_eq!(d.added, vec![b(4, 100)]);
        assert_eq!(
            d.reweighted,
            vec![
                (Ipv4Addr::new(10, 0, 0, 1), 5100, 100, 50),
                (Ipv4Addr::new(10, 0, 0, 3), 5100, 0, 100)
            ]
        );
        // Same address on another port is another backend.
        let d = diff_backends(
            &current[..1],
            &[BackendConfig {
                port: 5200,
                ..b(1, 100)
            }],
        );
        assert_eq!((d.added.len(), d.removed.len()), (1, 1));
    }
}
