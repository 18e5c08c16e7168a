//! The connection table: the established path follows the recorded backend, a new flow picks one
//! from the VIP's Maglev table and claims a SNAT port. Lookups and state rules come from lb-common.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Backend, FAMILY_IPV4, Flow, FlowKey, MAGLEV_TABLE_SIZE, NO_BACKEND, PROTO_TCP, Reason,
    VipMeta,
    conntrack::{Direction, State, TOUCH_INTERVAL_NS, next_tcp_state, syn_restarts_flow, tcp_flags},
    hash::flow_hash_v4,
    snat,
};

use crate::maps::{BACKENDS, CONFIG, FLOWS, MAGLEV, REV_FLOWS, SNAT_ADDRS};
use crate::parse::Packet;

const EEXIST: i32 = 17;

/// What the forward rewrite needs, copied out of the flow entry.
pub struct Target {
    pub backend_id: u32,
    pub backend_addr: [u8; 4],
    pub backend_port: u16,
    pub snat_addr: [u8; 4],
    pub snat_port: u16,
    pub new_flow: bool,
}

impl Target {
    #[inline(always)]
    fn of(f: &Flow, new_flow: bool) -> Self {
        Target {
            backend_id: f.backend_id,
            backend_addr: f.backend_addr.v4_octets(),
            backend_port: f.backend_port,
            snat_addr: f.snat_addr.v4_octets(),
            snat_port: f.snat_port,
            new_flow,
        }
    }
}

#[inline(always)]
pub fn key_of(p: &Packet) -> FlowKey {
    FlowKey {
        src: lb_common::Addr::v4(p.src),
        dst: lb_common::Addr::v4(p.dst),
        src_port: p.src_port,
        dst_port: p.dst_port,
        proto: p.proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call. Coarse clock: cheaper, and expiry needs only ~ms precision.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() }
}

/// Advances state and refreshes `last_seen_ns` (at most once per TOUCH_INTERVAL_NS).
#[inline(always)]
pub fn touch(f: &mut Flow, p: &Packet, dir: Direction) {
    if p.proto == PROTO_TCP {
        let next = next_tcp_state(f.state, dir, p.tcp_flags);
        if next != f.state {
            f.state = next;
        }
    }
    let now = now_ns();
    if now.wrapping_sub(f.last_seen_ns) > TOUCH_INTERVAL_NS {
        f.last_seen_ns = now;
    }
}

#[inline(always)]
fn same_v4(a: &lb_common::Addr, b: &lb_common::Addr) -> bool {
    u32::from_ne_bytes(a.v4_octets()) == u32::from_ne_bytes(b.v4_octets())
}

/// A SYN on this entry belongs to a new connection: the old one is closing/reset, or its backend
/// was removed (or its id now names another address).
#[inline(always)]
fn stale_for_syn(f: &Flow) -> bool {
    if syn_restarts_flow(f.state) {
        return true;
    }
    match BACKENDS.get(f.backend_id) {
        Some(b) => {
            b.flags & Backend::ACTIVE == 0
                || !same_v4(&b.addr, &f.backend_addr)
                || b.port != f.backend_port
        }
        None => true,
    }
}

/// The backend for a client → VIP packet: the recorded one, or a new flow's.
#[inline(always)]
pub fn forward_target(key: &FlowKey, p: &Packet, vip: &VipMeta, non_syn_pass: bool) -> Result<Target, Reason> {
    let is_tcp = p.proto == PROTO_TCP;
    let syn = is_tcp && p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if let Some(ptr) = FLOWS.get_ptr_mut(key) {
        // SAFETY: hash map values stay valid for this program run; racing writers only store
        // whole scalars (state, timestamp).
        let f = unsafe { &mut *ptr };
        if !(syn && stale_for_syn(f)) {
            touch(f, p, Direction::Forward);
            return Ok(Target::of(f, false));
        }
        // Source port reused for a new connection: forget the old flow entirely.
        let _ = REV_FLOWS.remove(f.reverse_key(p.proto));
        let _ = FLOWS.remove(key);
    } else if is_tcp && !syn {
        return Err(if non_syn_pass { Reason::PassNonSynNoState } else { Reason::DropNonSynNoState });
    }
    create(key, p, vip)
}

#[inline(always)]
fn create(key: &FlowKey, p: &Packet, vip: &VipMeta) -> Result<Target, Reason> {
    let hash = flow_hash_v4(p.src, p.dst, p.src_port, p.dst_port, p.proto);
    let slot = hash % MAGLEV_TABLE_SIZE;
    let backend_id = match MAGLEV.get_value(vip.vip_id, &slot) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return Err(Reason::DropNoBackend),
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & Backend::ACTIVE != 0 => *b,
        _ => return Err(Reason::DropNoBackend),
    };
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Reason::DropInternal);
    };
    if cfg.snat_count == 0 {
        return Err(Reason::DropNoSnatAddress);
    }
    let Some(snat_addr) = SNAT_ADDRS.get(snat::addr_index(hash, cfg.snat_count)) else {
        return Err(Reason::DropInternal);
    };
    let mut rev = FlowKey {
        src: backend.addr,
        dst: snat_addr.addr,
        src_port: backend.port,
        dst_port: 0,
        proto: p.proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    let mut claimed = false;
    for attempt in 0..snat::PORT_RETRIES {
        rev.dst_port = snat::port_candidate(hash, attempt, cfg.snat_port_min, cfg.snat_port_max);
        match REV_FLOWS.insert(&rev, key, BPF_NOEXIST as u64) {
            Ok(()) => {
                claimed = true;
                break;
            }
            Err(e) if e == -EEXIST => continue,
            // -E2BIG: the table is full. Established flows are never evicted to make room.
            Err(_) => return Err(Reason::DropConntrackFull),
        }
    }
    if !claimed {
        return Err(Reason::DropSnatExhausted);
    }
    let now = now_ns();
    let flow = Flow {
        backend_addr: backend.addr,
        snat_addr: snat_addr.addr,
        backend_port: backend.port,
        snat_port: rev.dst_port,
        backend_id,
        vip_id: vip.vip_id,
        state: if p.proto == PROTO_TCP { State::SynSent as u8 } else { State::Udp as u8 },
        family: FAMILY_IPV4,
        _pad: [0; 2],
        created_ns: now,
        last_seen_ns: now,
    };
    match FLOWS.insert(key, &flow, BPF_NOEXIST as u64) {
        Ok(()) => Ok(Target::of(&flow, true)),
        Err(e) => {
            let _ = REV_FLOWS.remove(&rev);
            if e != -EEXIST {
                return Err(Reason::DropConntrackFull);
            }
            // Another CPU created this flow between our lookup and insert: follow its choice.
            match FLOWS.get_ptr(key) {
                // SAFETY: valid map value pointer for this run.
                Some(f) => Ok(Target::of(unsafe { &*f }, false)),
                None => Err(Reason::DropInternal),
            }
        }
    }
}
