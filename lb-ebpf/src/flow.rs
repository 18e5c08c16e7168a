//! The connection table: the established path follows the recorded backend, a new flow picks one
//! from the VIP's Maglev table and claims a SNAT port. Lookups and state rules come from lb-common.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Addr, Backend, DataplaneConfig, FAMILY_IPV4, Flow, FlowKey, MAGLEV_TABLE_SIZE, NO_BACKEND,
    NextHop, PROTO_TCP, Reason, VipMeta,
    conntrack::{
        Direction, State, TOUCH_INTERVAL_NS, next_tcp_state, syn_restarts_flow, tcp_flags,
    },
    hash::flow_hash_v4_words,
    snat,
};

use crate::maps::{BACKENDS, CONFIG, FLOWS, MAGLEV, REV_FLOWS, SNAT_ADDRS};
use crate::parse::Packet;

const EEXIST: i32 = 17;

/// What the forward rewrite needs, copied out of the flow entry, plus the entry itself for the
/// next-hop cache.
pub struct Target {
    pub flow: *mut Flow,
    pub vip_id: u32,
    pub backend_id: u32,
    pub backend_addr: u32,
    pub backend_port: u16,
    pub snat_addr: u32,
    pub snat_port: u16,
    pub new_flow: bool,
}

impl Target {
    #[inline(always)]
    fn of(ptr: *mut Flow, new_flow: bool) -> Self {
        // SAFETY: callers pass a live FLOWS value pointer.
        let f = unsafe { &*ptr };
        Target {
            flow: ptr,
            vip_id: f.vip_id,
            backend_id: f.backend_id,
            backend_addr: f.backend_addr.v4_word_of(),
            backend_port: f.backend_port,
            snat_addr: f.snat_addr.v4_word_of(),
            snat_port: f.snat_port,
            new_flow,
        }
    }
}

#[inline(always)]
pub fn key_of(p: &Packet) -> FlowKey {
    FlowKey::new(
        Addr::v4_word(p.src),
        Addr::v4_word(p.dst),
        p.src_port,
        p.dst_port,
        p.proto,
        FAMILY_IPV4,
    )
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call. Coarse clock: cheaper, and expiry needs only ~ms precision.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() }
}

/// Advances state and refreshes `last_seen_ns` (at most once per TOUCH_INTERVAL_NS); each
/// refresh also forgets the cached next hops, so routes and neighbours are re-read about once a
/// second per flow.
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
        f.to_backend.ifindex = 0;
        f.to_client.ifindex = 0;
    }
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
                || b.addr.v4_word_of() != f.backend_addr.v4_word_of()
                || (b.port != 0 && b.port != f.backend_port)
        }
        None => true,
    }
}

/// Outcome of the forward stage for a packet to a VIP address.
pub enum Forward {
    /// Send to this flow's backend.
    Send(Target),
    /// No flow, and no VIP serves this (port, protocol): not ours.
    NotVip,
    /// Ours, but refused (counted under the reason); `vip_id` is set when the VIP is known.
    Refused(Reason, Option<u32>),
}

/// The backend for a packet to a VIP address: the flow table decides first (so established
/// packets need no VIP lookup and never move), then a new flow is created from the VIP's table.
#[inline(always)]
pub fn forward_target(key: &FlowKey, p: &Packet, class: u32, ttl_ok: bool) -> Forward {
    let is_tcp = p.proto == PROTO_TCP;
    let syn = is_tcp && p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if let Some(ptr) = FLOWS.get_ptr_mut(key) {
        // SAFETY: hash map values stay valid for this program run; racing writers only store
        // whole scalars (state, timestamp, next hop).
        let f = unsafe { &mut *ptr };
        if !ttl_ok {
            return Forward::Refused(Reason::DropTtlExpired, None);
        }
        if !(syn && stale_for_syn(f)) {
            touch(f, p, Direction::Forward);
            return Forward::Send(Target::of(ptr, false));
        }
        // Source port reused for a new connection: forget the old flow entirely.
        let _ = REV_FLOWS.remove(f.reverse_key(p.proto));
        let _ = FLOWS.remove(key);
    }
    let Some(vip) = crate::vip::lookup(p, class) else {
        return Forward::NotVip;
    };
    if !ttl_ok {
        return Forward::Refused(Reason::DropTtlExpired, Some(vip.vip_id));
    }
    if is_tcp && !syn {
        let pass = CONFIG
            .get(0)
            .is_some_and(|c| c.flags & DataplaneConfig::NON_SYN_PASS != 0);
        let reason = if pass {
            Reason::PassNonSynNoState
        } else {
            Reason::DropNonSynNoState
        };
        return Forward::Refused(reason, Some(vip.vip_id));
    }
    match create(key, p, &vip) {
        Ok(t) => Forward::Send(t),
        Err(r) => Forward::Refused(r, Some(vip.vip_id)),
    }
}

#[inline(always)]
fn create(key: &FlowKey, p: &Packet, vip: &VipMeta) -> Result<Target, Reason> {
    let hash = flow_hash_v4_words(p.src, p.dst, p.src_port, p.dst_port, p.proto);
    let slot = hash % MAGLEV_TABLE_SIZE;
    let backend_id = match MAGLEV.get_value(vip.vip_id, &slot) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return Err(Reason::DropNoBackend),
    };
    let (backend_word, backend_port) = match BACKENDS.get(backend_id) {
        // Port 0: an any-port VIP's backend takes the client's destination port.
        Some(b) if b.flags & Backend::ACTIVE != 0 => (
            b.addr.v4_word_of(),
            if b.port == 0 { p.dst_port } else { b.port },
        ),
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
    // IPv4: only word 0 of each address is live; copying just it avoids 16-byte memmoves.
    let backend_addr = Addr::v4_word(backend_word);
    let snat = Addr::v4_word(snat_addr.addr.v4_word_of());
    let mut rev = FlowKey::new(backend_addr, snat, backend_port, 0, p.proto, FAMILY_IPV4);
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
        backend_addr,
        snat_addr: snat,
        backend_port,
        snat_port: rev.dst_port,
        backend_id,
        vip_id: vip.vip_id,
        state: if p.proto == PROTO_TCP {
            State::SynSent as u8
        } else {
            State::Udp as u8
        },
        family: FAMILY_IPV4,
        _pad: 0,
        created_ns: now,
        last_seen_ns: now,
        to_backend: NextHop {
            ifindex: 0,
            dmac: [0; 3],
            smac: [0; 3],
        },
        to_client: NextHop {
            ifindex: 0,
            dmac: [0; 3],
            smac: [0; 3],
        },
    };
    let new_flow = match FLOWS.insert(key, &flow, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(e) => {
            let _ = REV_FLOWS.remove(&rev);
            if e != -EEXIST {
                return Err(Reason::DropConntrackFull);
            }
            // Another CPU created this flow between our lookup and insert: follow its choice.
            false
        }
    };
    match FLOWS.get_ptr_mut(key) {
        Some(ptr) => Ok(Target::of(ptr, new_flow)),
        None => Err(Reason::DropInternal),
    }
}
