//! IPv6 client → VIP: the connection table (`FLOWS6`) decides first, as for IPv4. A new flow
//! takes its backend from the VIP's Maglev table by the IPv6 flow hash and claims a SNAT slot of
//! the backend's family: an IPv4 backend's flow is translated (`v6::xlat`), an IPv6 backend's
//! is rewritten in place (`v6::backend`).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use lb_common::{
    Backend, Flow6Key, FlowEntry, FlowRef, MAGLEV_TABLE_SIZE, NO_BACKEND, Reason, Vip6Key, VipMeta,
    conntrack::is_initial_syn,
    hash::{flow_hash_v6_words, flow_hint_index_v6},
    ports_of, ports_word, slot,
};

use crate::{
    conntrack::{
        Flow,
        forward::{fill, no_state, pick, stale_for_syn},
    },
    maps::{BACKENDS, FLOW_HINTS4, FLOW_TABLE, FLOWS6, SNAT_ADDRS, VIP_INFO, VIPS6, config},
    parse::{Packet, ipv6::Addrs6},
    snat,
    stats::{self, VipSyn},
    verdict::Verdict,
};

const EEXIST: i32 = 17;

pub enum Found6 {
    Flow(Flow),
    NotVip,
    Refused(Reason, u32),
}

#[inline(always)]
pub fn find_or_create(ctx: &XdpContext, p: &Packet, a: &Addrs6, any_port: u16) -> Found6 {
    let key = Flow6Key::from_wire(a.src, a.dst, p.ports, p.proto);
    let syn = p.is_tcp() && is_initial_syn(p.seg.flags);
    // As for IPv4: any UDP datagram may start a flow again when its backend left.
    let starts = syn || !p.is_tcp();
    if !syn
        && let Some(f) = lookup_hinted(&key)
        && (p.is_tcp() || !stale_for_syn(f.entry))
    {
        return Found6::Flow(f);
    }
    let (sport, dport) = ports_of(p.ports);
    let Some(vip) = vip(&a.dst, dport, p.proto, any_port) else {
        return Found6::NotVip;
    };
    let Some(cfg) = config() else {
        return Found6::Refused(Reason::DropInternal, vip.vip_id);
    };
    if p.is_tcp() && !syn {
        return Found6::Refused(no_state(p.seg.flags, cfg), vip.vip_id);
    }
    if p.ttl <= 1 {
        return Found6::Refused(Reason::DropTtlExpired, vip.vip_id);
    }
    // One of our own addresses as the source: refused before (`v6::handle`).
    if syn {
        stats::vip_syn(vip.vip_id, VipSyn::Syn);
    }
    let hash = flow_hash_v6_words(&a.src, &a.dst, sport, dport, p.proto);
    // As for IPv4: a tuple that has a flow keeps it for a retransmitted SYN; a SYN on a closing
    // or reset flow (or one whose backend is gone) ends it and gets a new one at once.
    for _ in 0..2 {
        match create(ctx, p, a, &key, &vip, hash, cfg) {
            Ok(Some(f)) => return Found6::Flow(f),
            Ok(None) => {}
            Err(r) => return Found6::Refused(r, vip.vip_id),
        }
        match lookup(&key) {
            Some(f) if !(starts && stale_for_syn(f.entry)) => return Found6::Flow(f),
            Some(f) => snat::retire(f.entry, f.token),
            // The entry points at a slot being expired: replace it.
            None => {}
        }
        let _ = FLOWS6.remove(&key);
    }
    match lookup(&key) {
        Some(f) => Found6::Flow(f),
        None => Found6::Refused(Reason::DropInternal, vip.vip_id),
    }
}

/// A TCP segment without SYN and without a flow, in the entry program: refused without state
/// there (an ACK flood on an IPv6 VIP never reaches the IPv6 program), as `find_or_create`
/// would; a port no VIP serves is the kernel's.
#[inline(always)]
pub fn without_flow(p: &Packet, a: &Addrs6, any_port: u16) -> Verdict {
    let (_, dport) = ports_of(p.ports);
    if vip(&a.dst, dport, p.proto, any_port).is_none() {
        return Verdict::of(Reason::PassNotOurs);
    }
    match config() {
        Some(cfg) => Verdict::of(no_state(p.seg.flags, cfg)),
        None => Verdict::of(Reason::DropInternal),
    }
}

/// The VIP of (address, port, protocol), then the protocol's any-port VIP when the address has
/// one (`any_port`: the address class's any-port bit for this protocol).
#[inline(always)]
fn vip(dst: &[u32; 4], dport: u16, proto: u8, any_port: u16) -> Option<VipMeta> {
    if let Some(v) = VIPS6.get_ptr(&Vip6Key::new(*dst, dport, proto)) {
        // SAFETY: valid map value pointer.
        return Some(unsafe { *v });
    }
    if any_port == 0 {
        return None;
    }
    // SAFETY: valid map value pointer.
    VIPS6
        .get_ptr(&Vip6Key::new(*dst, 0, proto))
        .map(|v| unsafe { *v })
}

/// As `conntrack::forward::lookup_hinted`, in the same cache: the hint counts only when its
/// slot holds this IPv6 client's flow to this VIP address. A copy on purpose: one shared helper
/// taking the two families' checks as closures cost the verifier 50,000 more instructions
/// (measured).
#[inline(always)]
pub fn lookup_hinted(key: &Flow6Key) -> Option<Flow> {
    let hint = FLOW_HINTS4.get_ptr_mut(flow_hint_index_v6(key));
    if let Some(h) = hint
        // SAFETY: valid map value pointer; hints are written whole (one 8-byte store).
        && let Some(r) = FlowRef::from_hint(unsafe { core::ptr::read_volatile(h) })
        && let Some(f) = hinted(key, r)
    {
        return Some(f);
    }
    let f = lookup(key)?;
    if let Some(h) = hint {
        let r = FlowRef {
            slot: f.slot,
            token: f.token,
        };
        // SAFETY: valid map value pointer; racing writers store whole words.
        unsafe { core::ptr::write_volatile(h, r.to_hint()) };
    }
    Some(f)
}

#[inline(always)]
fn hinted(key: &Flow6Key, r: FlowRef) -> Option<Flow> {
    let e = FLOW_TABLE.get_ptr_mut(r.slot)?;
    // SAFETY: valid map value pointer; stable while the owner word holds the claim.
    let x = unsafe { &*e };
    if x.owner != r.token
        || x.flags & FlowEntry::CLIENT_V6 == 0
        || x.client != key.src
        || ports_word(x.client_port, x.vip_port) != key.ports
        || x.proto as u32 != key.proto
    {
        return None;
    }
    match VIP_INFO.get(x.vip_id as u32) {
        Some(v) if v.addr.words == key.dst => Some(Flow {
            entry: e,
            slot: r.slot,
            token: r.token,
            new: false,
            accepted: true,
        }),
        _ => None,
    }
}

#[inline(always)]
pub fn lookup(key: &Flow6Key) -> Option<Flow> {
    // SAFETY: valid map value pointer.
    hinted(key, unsafe { *FLOWS6.get_ptr(key)? })
}

/// A new flow; Ok(None) when the tuple already has one.
#[inline(always)]
fn create(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    key: &Flow6Key,
    vip: &VipMeta,
    hash: u32,
    cfg: &lb_common::DataplaneConfig,
) -> Result<Option<Flow>, Reason> {
    let id = pick(vip.vip_id, hash % MAGLEV_TABLE_SIZE);
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    let backend = match BACKENDS.get(id) {
        Some(b) if b.flags & Backend::ACTIVE != 0 => b,
        _ => return Err(Reason::DropNoBackend),
    };
    let backend_v6 = backend.family == lb_common::FAMILY_IPV6;
    if let Err(r) = crate::shares::admit(vip.vip_id, true, backend_v6) {
        // A full pool refuses new flows, not a retransmitted SYN of one it holds: the tuple
        // taken, the caller looks it up as after a clash.
        return if FLOWS6.get_ptr(key).is_some() {
            Ok(None)
        } else {
            Err(r)
        };
    }
    let (s, e, token) = snat::claim(hash, cfg, backend.family)?;
    let Some(snat_addr) = SNAT_ADDRS.get(slot::snat_index_of(s)) else {
        snat::release(s, e, token);
        return Err(Reason::DropInternal);
    };
    // SAFETY: we own the slot (claimed above).
    let entry = unsafe { &mut *e };
    fill(ctx, entry, p, backend, id, vip, snat_addr.addr.v4_word_of());
    entry.client = a.src;
    // `fill` set BACKEND_V6 by the backend's family.
    entry.flags |= FlowEntry::CLIENT_V6;
    match FLOWS6.insert(key, &FlowRef { slot: s, token }, BPF_NOEXIST as u64) {
        Ok(()) => {
            crate::shares::count(vip.vip_id, true, backend_v6);
            Ok(Some(Flow {
                entry: e,
                slot: s,
                token,
                new: true,
                accepted: true,
            }))
        }
        Err(err) => {
            snat::release(s, e, token);
            if err == -EEXIST {
                Ok(None)
            } else {
                Err(Reason::DropConntrackFull)
            }
        }
    }
}
