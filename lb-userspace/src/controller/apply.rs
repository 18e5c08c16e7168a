//! Making the running state equal to a (validated) config: SNAT addresses, VIPs, backends.
//! Unchanged backends keep their id, health and flows; the summary names every change.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use anyhow::Result;

use super::{
    Controller,
    state::{PinState, SnatState, State, VipState},
};
use crate::{
    config::{BackendConfig, Config, Vip},
    dataplane::Maps,
    sys::clock::monotonic_ns,
};

impl<M: Maps> Controller<M> {
    /// Applies `new` as one transaction. Returns what changed.
    pub fn apply(&mut self, new: Config) -> Result<Vec<String>> {
        let mut next = self.state.clone();
        let mut summary = Vec::new();
        snat(&mut next, &new, self.snat_capacity, &mut summary)?;
        let wanted: BTreeSet<_> = new
            .vips
            .iter()
            .map(|v| (v.address, v.port, v.protocol))
            .collect();
        let now = monotonic_ns();
        let (keep, gone): (Vec<VipState>, Vec<VipState>) = std::mem::take(&mut next.vips)
            .into_iter()
            .partition(|v| wanted.contains(&v.tuple()));
        next.vips = keep;
        for v in gone {
            for b in &v.backends {
                next.retire(v.id, b, now);
            }
            summary.push(format!("vip {}: removed", v.spec.name));
        }
        for vc in &new.vips {
            match next
                .vips
                .iter()
                .position(|v| v.tuple() == (vc.address, vc.port, vc.protocol))
            {
                Some(i) => update_vip(&mut next, i, vc, now, &mut summary)?,
                None => {
                    add_vip(&mut next, vc)?;
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
        next.cfg = new;
        self.commit(next)?;
        Ok(summary)
    }
}

/// SNAT addresses: new ones get an index (a draining one comes back), removed ones stop taking
/// new flows and keep their index while their flows end.
fn snat(next: &mut State, new: &Config, capacity: u32, summary: &mut Vec<String>) -> Result<()> {
    let now = monotonic_ns();
    for (_, (s, since)) in next.snat.iter_mut() {
        let wanted = new.snat.addresses.contains(&s.address);
        if s.active && !wanted {
            s.active = false;
            *since = now;
        } else if !s.active && wanted {
            s.active = true;
            summary.push(format!("snat {}: back in use", s.address));
        }
    }
    for a in &new.snat.addresses {
        if next.snat.values().any(|(s, _)| s.address == *a) {
            continue;
        }
        let i = next.alloc_snat_index(capacity)?;
        next.snat.insert(
            i,
            (
                SnatState {
                    address: *a,
                    active: true,
                    held: None,
                },
                now,
            ),
        );
    }
    Ok(())
}

fn add_vip(next: &mut State, vc: &Vip) -> Result<()> {
    let id = next.alloc_vip_id()?;
    let mut v = VipState::new(vc.clone(), id);
    for b in &vc.backends {
        let bid = alloc_with(next, &v)?;
        v.backends
            .push(next.new_backend(b.address, b.port, b.weight, bid, &vc.health));
    }
    next.vips.push(v);
    let i = next.vips.len() - 1;
    // The "added" line says enough.
    set_pins(next, i, vc, true, &mut Vec::new())
}

/// A backend id free in `next` and in the VIP being built.
fn alloc_with(next: &State, pending: &VipState) -> Result<u32> {
    let mut used = next.backend_ids();
    used.extend(pending.backends.iter().map(|b| b.id));
    super::state::lowest_free(&used, lb_common::MAX_BACKENDS)
        .ok_or_else(|| anyhow::anyhow!("all {} backend slots are in use", lb_common::MAX_BACKENDS))
}

/// Makes the VIP's pins those of the config: a kept pin (same name) keeps its table id.
fn set_pins(
    next: &mut State,
    i: usize,
    vc: &Vip,
    adopted: bool,
    summary: &mut Vec<String>,
) -> Result<()> {
    let old = std::mem::take(&mut next.vips[i].pins);
    for pc in &vc.pins {
        let kept = old.iter().find(|p| p.cfg.name == pc.name);
        let table_id = match kept {
            Some(p) => p.table_id,
            None => next.alloc_vip_id()?,
        };
        if !adopted && kept.map(|p| &p.cfg) != Some(pc) {
            summary.push(format!(
                "vip {}: pin {}: {} prefix(es) to group(s) {}{}",
                vc.name,
                pc.name,
                pc.sources.len(),
                pc.groups.join(", "),
                if pc.spill { ", spills" } else { "" }
            ));
        }
        next.vips[i].pins.push(PinState {
            cfg: pc.clone(),
            table_id,
            table: kept.map_or_else(VipState::empty_table, |p| Arc::clone(&p.table)),
            members: kept.map(|p| p.members.clone()).unwrap_or_default(),
        });
    }
    for p in old
        .iter()
        .filter(|p| !vc.pins.iter().any(|c| c.name == p.cfg.name))
    {
        summary.push(format!("vip {}: pin {} removed", vc.name, p.cfg.name));
    }
    Ok(())
}

fn update_vip(
    next: &mut State,
    i: usize,
    vc: &Vip,
    now: u64,
    summary: &mut Vec<String>,
) -> Result<()> {
    let adopted = std::mem::take(&mut next.vips[i].adopted);
    let v = &mut next.vips[i];
    if adopted {
        summary.push(format!(
            "vip {}: adopted from the pinned maps with {} backend(s)",
            vc.name,
            v.backends.len()
        ));
    } else if v.spec.name != vc.name {
        summary.push(format!("vip {}: renamed to {}", v.spec.name, vc.name));
    }
    if !adopted {
        summary.extend(crate::config::diff::vip_changes(&v.spec, vc));
    }
    set_pins(next, i, vc, adopted, summary)?;
    let v = &mut next.vips[i];
    if v.spec.health != vc.health {
        for b in &mut v.backends {
            // New thresholds; a down backend stays down until it proves itself again.
            b.health = b.health.rethreshold(vc.health.rise, vc.health.fall);
        }
    }
    // Every setting of the file's VIP, CLI edits reverted (the backends are diffed below).
    v.spec = Vip {
        backends: Vec::new(),
        ..vc.clone()
    };
    let current: Vec<(IpAddr, u16, u32)> = v
        .backends
        .iter()
        .map(|b| (b.address, b.port, b.weight))
        .collect();
    let diff = diff_backends(&current, &vc.backends);
    apply_backend_diff(next, i, vc, &diff, adopted, now, summary)
}

/// Removes, re-weighs and adds the VIP's backends as `diff` says, noting each change.
fn apply_backend_diff(
    next: &mut State,
    i: usize,
    vc: &Vip,
    diff: &BackendDiff,
    adopted: bool,
    now: u64,
    summary: &mut Vec<String>,
) -> Result<()> {
    let position = |next: &State, address: &IpAddr, port: &u16| {
        next.vips[i]
            .backends
            .iter()
            .position(|b| (b.address, b.port) == (*address, *port))
            .expect("diff names a current backend")
    };
    for (address, port) in &diff.removed {
        let at = position(next, address, port);
        let b = next.vips[i].backends.remove(at);
        let vip_id = next.vips[i].id;
        next.retire(vip_id, &b, now);
        summary.push(format!("vip {}: -backend {address}:{port}", vc.name));
    }
    for (address, port, old, new) in &diff.reweighted {
        let at = position(next, address, port);
        let b = &mut next.vips[i].backends[at];
        let reverts = !adopted && b.weight != b.configured_weight;
        b.weight = *new;
        b.configured_weight = *new;
        if !adopted {
            let note = if reverts {
                " (reverts a runtime change)"
            } else {
                ""
            };
            summary.push(format!(
                "vip {}: backend {address}:{port} weight {old} -> {new}{note}",
                vc.name
            ));
        }
    }
    for b in &diff.added {
        let id = next.alloc_backend_id()?;
        let nb = next.new_backend(b.address, b.port, b.weight, id, &vc.health);
        next.vips[i].backends.push(nb);
        summary.push(format!(
            "vip {}: +backend {}:{} weight {} (takes traffic once its health checks pass)",
            vc.name, b.address, b.port, b.weight
        ));
    }
    Ok(())
}

/// What making a VIP's backends equal to the file changes. Backends are identified by
/// (address, port); a runtime weight (CLI) that differs from the file's is set back to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BackendDiff {
    pub added: Vec<BackendConfig>,
    pub removed: Vec<(IpAddr, u16)>,
    /// (address, port, current weight, file's weight)
    pub reweighted: Vec<(IpAddr, u16, u32, u32)>,
}

/// `current`: (address, port, current weight) of the running backends.
pub fn diff_backends(current: &[(IpAddr, u16, u32)], wanted: &[BackendConfig]) -> BackendDiff {
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
