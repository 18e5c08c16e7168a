//! Expiry: removes idle flows (per-state timeouts), frees their slots (SNAT ports), cleans up
//! what races left behind, and tells the controller which backend ids and SNAT addresses flows
//! still hold. Runs on its own thread over the memory-mapped flow table: no syscall per live
//! flow, no lock anyone else needs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_common::{
    Flow6Key, FlowEntry, FlowRef, MAX_BACKENDS, MAX_FULL_SOURCES, MAX_SNAT_ADDRS, MAX_VIPS,
    SourceRateKey,
    conntrack::{State, Timeouts, is_expired},
    shares::{RESOURCES, resources_of},
    slot::{self, DYING, FREE},
};
use log::{debug, warn};

use super::{
    edits::InUse,
    thread::{Command, Handle},
};
use crate::{
    dataplane::{Flows, RefTable},
    sys::clock::monotonic_ns,
};

/// A slot claimed without a FLOWS4 entry for longer than this is an orphan (a creation takes
/// microseconds).
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// What one pass did and found.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    pub expired: u64,
    /// Claimed slots no FLOWS4 entry points at (two CPUs restarting one tuple), freed.
    pub orphans: u64,
    /// FLOWS4 entries pointing at slots that belong to nobody or someone else, removed.
    pub stale_refs: u64,
    pub live: u64,
    pub in_use: InUse,
    /// Sources at their VIP's concurrent-connection limit (VIPs given in `limits`).
    pub full: BTreeSet<SourceRateKey>,
    /// Flows removed, with their counters, when the connection log asked for them.
    pub closed: Vec<(u32, FlowEntry, lb_common::connlog::FlowBytes)>,
    pub took: Duration,
}

pub fn sweep(flows: &dyn Flows, timeouts: &Timeouts, now: u64) -> Result<Sweep> {
    sweep_with(
        flows,
        &Pass {
            timeouts,
            limits: &BTreeMap::new(),
            log: false,
            now,
            grace: &crate::sys::rcu::synchronize,
            ports: (0, u16::MAX),
        },
    )
}

/// What one pass is asked to do.
pub struct Pass<'a> {
    pub timeouts: &'a Timeouts,
    /// VIP id → concurrent connections per source: count those VIPs' sources and report the
    /// ones at their limit.
    pub limits: &'a BTreeMap<u32, u32>,
    /// Collect the removed flows' counters for the connection log.
    pub log: bool,
    pub now: u64,
    /// Waits out an RCU grace period: between the slots going DYING and FREE, so no packet
    /// that found a flow before it died is still in the program when its slot is taken again.
    pub grace: &'a dyn Fn(),
    /// The SNAT port range (`snat.port_min`, `snat.port_max`): which port-bitmap words can be
    /// full.
    pub ports: (u16, u16),
}

/// What the scan of the flow table found.
#[derive(Default)]
struct Found {
    expire: Vec<(u32, FlowEntry)>,
    /// Slots with a claim no reference points at: (slot, claim).
    orphans: Vec<(u32, FlowEntry)>,
    /// Slots already DYING (ended by the data path, or a pass that stopped midway).
    dying: Vec<(u32, FlowEntry)>,
    /// A bit per slot, set for every slot that is not free (the port bitmaps' truth).
    taken: Vec<u64>,
    per_source: HashMap<SourceRateKey, u32>,
}

/// One expiry pass: expired flows and orphan slots are marked DYING and their references
/// removed, then, after one RCU grace period for all of them, freed.
pub fn sweep_with(flows: &dyn Flows, pass: &Pass) -> Result<Sweep> {
    let t0 = Instant::now();
    let mut out = Sweep {
        in_use: InUse {
            started_ns: pass.now,
            ..Default::default()
        },
        ..Default::default()
    };
    let refs = flows.refs4().all()?;
    let refs6 = flows.refs6().all()?;
    // The token each slot's FLOWS4 or FLOWS6 entry expects (0: none; tokens are odd). Plain
    // vectors, not maps: a pass visits a million flows.
    let mut by_slot = vec![0u32; flows.slots() as usize];
    for r in refs
        .iter()
        .map(|(_, r)| r)
        .chain(refs6.iter().map(|(_, r)| r))
    {
        if let Some(t) = by_slot.get_mut(r.slot as usize) {
            *t = r.token;
        }
    }
    // An IPv6 flow's key holds the VIP address, which its entry does not: taken from FLOWS6.
    let key6: HashMap<u32, Flow6Key> = refs6.iter().map(|(k, r)| (r.slot, *k)).collect();
    let mut backends = vec![false; MAX_BACKENDS as usize];
    let mut snat = vec![false; MAX_SNAT_ADDRS as usize];
    let found = scan(flows, &by_slot, pass, &mut out, &mut backends, &mut snat);
    let mut found_taken = found.taken;
    out.full = found
        .per_source
        .into_iter()
        .filter(|(k, n)| pass.limits.get(&k.vip_id).is_some_and(|max| n >= max))
        .map(|(k, _)| k)
        .take(MAX_FULL_SOURCES as usize)
        .collect();
    let mut to_free = found.dying;
    for (s, e) in found.orphans {
        if flows.swap_owner(s, e.owner, DYING) {
            out.orphans += 1;
            to_free.push((s, e));
        }
    }
    for (s, e) in found.expire {
        if let Some(bytes) = remove(flows, s, &e, key6.get(&s), pass.log)? {
            out.expired += 1;
            to_free.push((s, e));
            // The connection log covers IPv4 clients (IPv6 flows write no open record).
            if pass.log && e.flags & FlowEntry::CLIENT_V6 == 0 {
                out.closed.push((s, e, bytes));
            }
        } else {
            out.live += 1;
            mark(&mut backends, e.backend_id as u32);
            mark(&mut snat, slot::snat_index_of(s));
        }
    }
    out.in_use.backends = members(&backends);
    out.in_use.snat = members(&snat);
    out.stale_refs += drop_stale(flows, flows.refs4(), refs)?;
    out.stale_refs += drop_stale(flows, flows.refs6(), refs6)?;
    // The flows freed, per VIP and pool: the data path counted each once when it created it.
    let mut freed = vec![[0u64; RESOURCES]; MAX_VIPS as usize + 1];
    if !to_free.is_empty() {
        (pass.grace)();
        for (s, e) in to_free {
            if flows.swap_owner(s, DYING, FREE) {
                clear_bit(&mut found_taken, s);
                count_used(&mut freed, &e);
            }
        }
    }
    out.in_use.held = held_per_snat(&found_taken);
    flows.store_port_maps(&found_taken, pass.ports.0, pass.ports.1);
    uncount(flows, &freed);
    out.in_use.expired = out.expired;
    out.took = t0.elapsed();
    Ok(out)
}

/// Sorts every claimed slot: live (counted, and its backend, SNAT address and source marked),
/// expired, orphaned, or already dying.
fn scan(
    flows: &dyn Flows,
    by_slot: &[u32],
    pass: &Pass,
    out: &mut Sweep,
    backends: &mut [bool],
    snat: &mut [bool],
) -> Found {
    let mut f = Found {
        taken: vec![0; flows.slots().div_ceil(64) as usize],
        ..Default::default()
    };
    let now = pass.now;
    flows.scan(&mut |s, e| {
        if let Some(w) = f.taken.get_mut(s as usize / 64) {
            *w |= 1 << (s % 64);
        }
        if e.owner == DYING {
            f.dying.push((s, *e));
            return;
        }
        let referenced = by_slot.get(s as usize) == Some(&e.owner);
        let idle = now.saturating_sub(e.last_seen_ns);
        // By age too, not only idleness: a FLOW_HINTS4 hint written just before its flow lost
        // the tuple to a racing restart could keep an orphan busy.
        let age = (now / 1_000_000_000).saturating_sub(e.created_s as u64) * 1_000_000_000;
        if !referenced && (idle > ORPHAN_GRACE_NS || age > ORPHAN_GRACE_NS) {
            f.orphans.push((s, *e));
        } else if is_expired(e, now, pass.timeouts) {
            f.expire.push((s, *e));
        } else {
            out.live += 1;
            mark(backends, e.backend_id as u32);
            mark(snat, slot::snat_index_of(s));
            let vip = e.vip_id as u32;
            if pass.limits.contains_key(&vip)
                && e.flags & FlowEntry::CLIENT_V6 == 0
                && State::from_u8(e.state).is_some_and(State::is_open)
            {
                *f.per_source
                    .entry(SourceRateKey::v4(vip, e.client[0]))
                    .or_default() += 1;
            }
        }
    });
    f
}

/// Counts a flow in its VIP's row and the all-VIPs row, in the pools it takes from.
fn count_used(used: &mut [[u64; RESOURCES]], e: &FlowEntry) {
    let (c, s) = resources_of(
        e.flags & FlowEntry::CLIENT_V6 != 0,
        e.flags & FlowEntry::BACKEND_V6 != 0,
    );
    for row in [e.vip_id as usize, MAX_VIPS as usize] {
        if let Some(u) = used.get_mut(row) {
            u[c] += 1;
            u[s] += 1;
        }
    }
}

/// Takes the freed flows off VIP_LIVE's counts (where the data path counted each once when it
/// created it; never below 0: flows from before the counts existed were never counted).
fn uncount(flows: &dyn Flows, freed: &[[u64; RESOURCES]]) {
    for (row, f) in freed.iter().enumerate() {
        for (r, n) in f.iter().enumerate() {
            if *n != 0 {
                flows.sub_used(row as u32, r, *n);
            }
        }
    }
}

/// SNAT index → slots not free, from a bit per slot (addresses with none left out).
fn held_per_snat(taken: &[u64]) -> BTreeMap<u32, u64> {
    let words = (lb_common::maps::SLOTS_PER_SNAT_ADDR / 64) as usize;
    taken
        .chunks(words)
        .enumerate()
        .map(|(i, w)| {
            (
                i as u32,
                w.iter().map(|x| x.count_ones() as u64).sum::<u64>(),
            )
        })
        .filter(|(_, n)| *n != 0)
        .collect()
}

fn clear_bit(bits: &mut [u64], i: u32) {
    if let Some(w) = bits.get_mut(i as usize / 64) {
        *w &= !(1 << (i % 64));
    }
}

fn mark(set: &mut [bool], i: u32) {
    if let Some(b) = set.get_mut(i as usize) {
        *b = true;
    }
}

fn members(set: &[bool]) -> std::collections::BTreeSet<u32> {
    set.iter()
        .enumerate()
        .filter(|(_, b)| **b)
        .map(|(i, _)| i as u32)
        .collect()
}

/// Expires one flow: mark its slot DYING (the data path stops following it), check it did not
/// come back to life meanwhile, remove its FLOWS4 entry; the slot stays DYING (the caller
/// frees it after a grace period). Some(its counters, when `log`) when it was removed.
fn remove(
    flows: &dyn Flows,
    s: u32,
    seen: &FlowEntry,
    key6: Option<&Flow6Key>,
    log: bool,
) -> Result<Option<lb_common::connlog::FlowBytes>> {
    if !flows.swap_owner(s, seen.owner, DYING) {
        return Ok(None);
    }
    if flows.entry(s).last_seen_ns != seen.last_seen_ns {
        // A packet refreshed it between the scan and the mark: it lives on.
        flows.swap_owner(s, DYING, seen.owner);
        return Ok(None);
    }
    // Read while the slot is still ours: a new flow in it zeroes the counters.
    let bytes = if log {
        flows.bytes(s)
    } else {
        Default::default()
    };
    let ours = |r: &FlowRef| r.slot == s && r.token == seen.owner;
    // The tuple may belong to a newer flow now (a SYN on a reused port): that one stays.
    fn take_ours<K>(
        refs: &dyn RefTable<K>,
        key: &K,
        ours: impl Fn(&FlowRef) -> bool,
    ) -> Result<()> {
        if let Some(r) = refs.take(key)?
            && !ours(&r)
        {
            refs.restore(key, &r)?;
        }
        Ok(())
    }
    if seen.flags & FlowEntry::CLIENT_V6 == 0 {
        take_ours(flows.refs4(), &seen.key_v4(), ours)?;
    } else if let Some(key) = key6 {
        take_ours(flows.refs6(), key, ours)?;
    }
    Ok(Some(bytes))
}

/// Removes the references whose slot no longer holds their claim; returns how many.
fn drop_stale<K>(
    flows: &dyn Flows,
    refs: &dyn RefTable<K>,
    seen: Vec<(K, FlowRef)>,
) -> Result<u64> {
    let mut n = 0;
    for (k, r) in seen {
        let owner = flows.entry(r.slot).owner;
        if owner != r.token && owner != DYING && drop_ref(refs, &k, r)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes a FLOWS4 or FLOWS6 entry still equal to `r`; true when it was.
fn drop_ref<K>(refs: &dyn RefTable<K>, k: &K, r: FlowRef) -> Result<bool> {
    match refs.take(k)? {
        Some(now) if now == r => Ok(true),
        Some(now) => {
            refs.restore(k, &now)?;
            Ok(false)
        }
        None => Ok(false),
    }
}

/// Runs passes every `daemon.gc_interval` (read from the snapshot, so a reload takes effect)
/// until `stop` is set or the controller goes away.
pub fn spawn(
    flows: Arc<dyn Flows>,
    h: Handle,
    stop: Arc<AtomicBool>,
    log: Option<std::sync::mpsc::Sender<crate::connlog::Record>>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("wklb-expiry".into())
        .spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                let snap = h.snapshot();
                let cfg = snap.config.clone();
                next = Instant::now() + cfg.daemon.gc_interval;
                let limits: BTreeMap<u32, u32> = snap
                    .vips
                    .iter()
                    .filter(|v| v.spec.sources.max_conns > 0)
                    .map(|v| (v.id, v.spec.sources.max_conns))
                    .collect();
                let now = monotonic_ns();
                let pass = Pass {
                    timeouts: &cfg.conntrack.timeouts,
                    limits: &limits,
                    log: log.is_some(),
                    now,
                    grace: &crate::sys::rcu::synchronize,
                    ports: (cfg.snat.port_min, cfg.snat.port_max),
                };
                match sweep_with(flows.as_ref(), &pass) {
                    Ok(s) => {
                        if let Some(tx) = &log {
                            for (slot, e, b) in &s.closed {
                                let _ = tx.send(crate::connlog::close_record(&snap, *slot, e, b, now));
                            }
                        }
                        if let Err(e) = flows.set_full_sources(&s.full) {
                            warn!("updating the sources at their connection limit failed: {e:#}");
                        }
                        if s.expired + s.orphans + s.stale_refs > 0 {
                            debug!(
                                "expiry: {} expired, {} orphan slots and {} stale references cleaned, {} live ({:?})",
                                s.expired, s.orphans, s.stale_refs, s.live, s.took
                            );
                        }
                        if h.send(Command::InUse(s.in_use)).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!("flow expiry pass failed: {e:#}"),
                }
            }
        })
        .expect("starting the expiry thread")
}
