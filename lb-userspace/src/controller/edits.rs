//! Runtime changes: backends added, removed and re-weighted and source lists edited from the
//! CLI, health transitions
//! from probes, and the resources expiry found free.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};
use log::{info, warn};

use super::{Controller, plan::TableMode, state::State};
use crate::{
    config::{MAX_WEIGHT, SourceList},
    dataplane::Maps,
    health::{
        Status, Transition,
        probe::{ProbeResult, ProbeTarget},
    },
    sys::clock::monotonic_ns,
};

/// What an expiry pass found still in use.
#[derive(Clone, Debug, Default)]
pub struct InUse {
    /// CLOCK_MONOTONIC ns when the pass started.
    pub started_ns: u64,
    pub backends: BTreeSet<u32>,
    pub snat: BTreeSet<u32>,
    /// SNAT index → its slots not free once the pass ended (the ports its flows hold).
    pub held: BTreeMap<u32, u64>,
    pub expired: u64,
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > MAX_WEIGHT {
        bail!("weight must be between 0 and {MAX_WEIGHT}, got {weight}");
    }
    Ok(())
}

fn backend_index(s: &State, vi: usize, address: IpAddr, port: Option<u16>) -> Result<usize> {
    let v = &s.vips[vi];
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
                v.spec.name,
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                known.join(", ")
            )
        }
        _ => bail!(
            "vip {} has several backends at {address}: give the port too",
            v.spec.name
        ),
    }
}

impl<M: Maps> Controller<M> {
    pub fn add_backend(
        &mut self,
        vip: &str,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
        group: Option<&str>,
    ) -> Result<String> {
        check_weight(weight)?;
        let mut next = self.state.clone();
        if !next
            .snat
            .values()
            .any(|(n, _)| n.address.is_ipv6() == address.is_ipv6())
        {
            let family = if address.is_ipv6() { "IPv6" } else { "IPv4" };
            bail!(
                "{address} is {family}, and snat.addresses holds no {family} address: its connections would have no source address"
            );
        }
        let vi = next.vip_index(vip)?;
        if address.is_ipv6() && next.vips[vi].spec.syn_cookies != crate::config::CookieMode::Off {
            bail!(
                "vip {vip} has syn_cookies = {:?}; IPv6 backends need syn_cookies = \"off\" in its config",
                next.vips[vi].spec.syn_cookies.name()
            );
        }
        let port = port.unwrap_or(next.vips[vi].spec.port);
        if next.vips[vi]
            .backends
            .iter()
            .any(|b| (b.address, b.port) == (address, port))
        {
            bail!("vip {vip} already has backend {address}:{port}");
        }
        let groups = &mut next.vips[vi].spec.groups;
        let group = group.unwrap_or(crate::config::DEFAULT_GROUP);
        if groups.get(group).is_none() {
            let known: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
            bail!(
                "vip {vip} has no backend group {group:?} (its groups: {}); name one with --group",
                known.join(", ")
            );
        }
        if group != crate::config::DEFAULT_GROUP {
            groups.of_backend.insert((address, port), group.to_string());
        }
        let id = next.alloc_backend_id()?;
        let hc = next.vips[vi].spec.health.clone();
        let b = next.new_backend(address, port, weight, id, &hc);
        let pending = b.health.status == Status::Pending;
        next.vips[vi].backends.push(b);
        self.commit(next)?;
        Ok(format!(
            "vip {vip}: added backend {address}:{port} weight {weight} in group {group}{}",
            if pending {
                " (pending: it takes new connections once its health checks pass)"
            } else {
                ""
            }
        ))
    }

    pub fn remove_backend(
        &mut self,
        vip: &str,
        address: IpAddr,
        port: Option<u16>,
    ) -> Result<String> {
        let mut next = self.state.clone();
        let vi = next.vip_index(vip)?;
        let bi = backend_index(&next, vi, address, port)?;
        if next.vips[vi].backends.len() == 1 {
            bail!(
                "vip {vip}: {address} is its last backend; drain it (weight 0) instead, or remove the VIP from the config"
            );
        }
        let b = next.vips[vi].backends.remove(bi);
        next.vips[vi]
            .spec
            .groups
            .of_backend
            .remove(&(b.address, b.port));
        let vip_id = next.vips[vi].id;
        next.retire(vip_id, &b, monotonic_ns());
        self.commit(next)?;
        Ok(format!("vip {vip}: removed backend {}", b.key()))
    }

    /// Weight 0 = drain: no new flows, existing ones stay until they end.
    pub fn set_weight(
        &mut self,
        vip: &str,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    ) -> Result<String> {
        check_weight(weight)?;
        let mut next = self.state.clone();
        let vi = next.vip_index(vip)?;
        let bi = backend_index(&next, vi, address, port)?;
        let b = &mut next.vips[vi].backends[bi];
        let old = b.weight;
        b.weight = weight;
        let key = b.key();
        let any_positive = next.vips[vi].backends.iter().any(|b| b.weight > 0);
        self.commit(next)?;
        let mut msg = format!("vip {vip}: backend {key} weight {old} -> {weight}");
        if weight == 0 {
            msg.push_str(" (draining: no new connections, existing ones stay)");
        }
        if !any_positive {
            msg.push_str("; WARNING: no backend of this VIP takes new connections now");
        }
        Ok(msg)
    }

    /// Applies one probe result; a health transition rebuilds and swaps the VIP's table.
    pub fn record_probe(&mut self, t: &ProbeTarget, r: &ProbeResult) -> Result<Option<Transition>> {
        let Ok(vi) = self.state.vip_index(&t.vip) else {
            return Ok(None);
        };
        let Some(bi) = self.state.vips[vi]
            .backends
            .iter()
            .position(|b| b.socket() == t.backend)
        else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        let b = &mut next.vips[vi].backends[bi];
        b.last_rtt = Some(r.rtt);
        b.last_error = r.error.clone();
        let tr = b.health.record(r.ok);
        let Some(tr) = tr else {
            // Only the probe's figures changed: no map to touch.
            self.state = next;
            return Ok(None);
        };
        match tr {
            Transition::Down => warn!(
                "vip {}: backend {} DOWN ({})",
                t.vip,
                t.backend,
                r.error.as_deref().unwrap_or("probe failed")
            ),
            Transition::Up => info!("vip {}: backend {} UP", t.vip, t.backend),
        }
        let before = self.state.vips[vi].mode;
        self.commit(next)?;
        let after = self.state.vips[vi].mode;
        if before != after {
            match after {
                TableMode::FailOpen => warn!(
                    "vip {}: FAIL-OPEN: every backend is down; forwarding to all of them anyway",
                    t.vip
                ),
                _ if before == TableMode::FailOpen => info!("vip {}: left fail-open", t.vip),
                _ => {}
            }
        }
        Ok(Some(tr))
    }

    /// Frees what expiry found unused: retired backend ids and drained SNAT addresses, when the
    /// pass started after they were retired (so it saw every flow that could hold them).
    pub fn release_unused(&mut self, u: &InUse) -> Result<Vec<String>> {
        self.expired_total += u.expired;
        let mut next = self.state.clone();
        let mut out = Vec::new();
        next.retired_backends
            .retain(|id, (_, since)| *since > u.started_ns || u.backends.contains(id));
        let gone: Vec<u32> = next
            .snat
            .iter()
            .filter(|(i, (s, since))| !s.active && *since <= u.started_ns && !u.snat.contains(i))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some((s, _)) = next.snat.remove(&i) {
                out.push(format!("snat {}: no flows left, released", s.address));
            }
        }
        // A draining address's ports count toward its pool only while its flows hold them.
        let mut held_changed = false;
        for (i, (s, since)) in next.snat.iter_mut() {
            if !s.active && *since <= u.started_ns {
                let held = Some(u.held.get(i).copied().unwrap_or(0));
                held_changed |= s.held != held;
                s.held = held;
            }
        }
        if held_changed
            || next.retired_backends.len() != self.state.retired_backends.len()
            || !out.is_empty()
        {
            self.commit(next)?;
        }
        Ok(out)
    }

    /// Adds (`add`) or removes a prefix on a VIP's deny or allow list.
    pub fn edit_source_list(
        &mut self,
        vip: &str,
        list: SourceList,
        net: ipnet::Ipv4Net,
        add: bool,
    ) -> Result<String> {
        let vi = self.state.vip_index(vip)?;
        let mut next = self.state.clone();
        let p = &mut next.vips[vi].spec.sources;
        let other = match list {
            SourceList::Deny => SourceList::Allow,
            SourceList::Allow => SourceList::Deny,
        };
        if add {
            if p.list(other).contains(&net) {
                bail!(
                    "vip {vip}: {net} is on the {} list; remove it there first",
                    other.name()
                );
            }
            let total: usize = next
                .vips
                .iter()
                .map(|v| v.spec.sources.deny.len() + v.spec.sources.allow.len())
                .sum();
            if total >= lb_common::MAX_SOURCE_ENTRIES as usize {
                bail!(
                    "all {} deny and allow entries are in use",
                    lb_common::MAX_SOURCE_ENTRIES
                );
            }
            if !next.vips[vi].spec.sources.list_mut(list).insert(net) {
                bail!("vip {vip}: {net} is already on the {} list", list.name());
            }
        } else if !p.list_mut(list).remove(&net) {
            bail!("vip {vip}: {net} is not on the {} list", list.name());
        }
        self.commit(next)?;
        let verb = if add { "added to" } else { "removed from" };
        Ok(format!(
            "vip {vip}: {net} {verb} the {} list (existing connections are not affected)",
            list.name()
        ))
    }

    /// Engages or releases `auto` cookie mode on a VIP (the SYN-pressure watch decides).
    pub fn set_cookies_engaged(&mut self, vip: &str, engaged: bool, why: &str) -> Result<()> {
        let vi = self.state.vip_index(vip)?;
        if self.state.vips[vi].cookies_engaged == engaged {
            return Ok(());
        }
        let mut next = self.state.clone();
        let v = &mut next.vips[vi];
        v.cookies_engaged = engaged;
        v.cookies_changed = Some(std::time::SystemTime::now());
        let on = v.cookies_on();
        self.commit(next)?;
        if engaged {
            warn!("vip {vip}: SYN cookies ENGAGED: {why}");
        } else {
            info!("vip {vip}: SYN cookies released: {why}");
        }
        if on != engaged {
            info!("vip {vip}: its syn_cookies mode overrides the watch");
        }
        Ok(())
    }

    /// The daemon attached this build's entry program: PROXY protocol VIPs can be programmed.
    pub fn entry_attached(&mut self) -> Result<()> {
        if self.state.entry_attached {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.entry_attached = true;
        self.commit(next)
    }

    pub fn expired_total(&self) -> u64 {
        self.expired_total
    }
}
