//! Client → VIP: the connection table decides first, so established flows never move. A new flow
//! takes its backend from the VIP's Maglev table and claims a slot (its SNAT port). A pure SYN
//! skips the lookup: it tries to create its flow and looks only when the tuple is taken (a
//! retransmitted SYN, or a client reusing a source port).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use lb_common::{
    AddrClass, Backend, DataplaneConfig, FAMILY_IPV6, Flow4Key, FlowEntry, FlowRef,
    MAGLEV_TABLE_SIZE, NO_BACKEND, Reason, TABLES_PER_VIP, VipMeta,
    conntrack::{
        NO_WSCALE, Segment, State, is_bad_syn, is_initial_syn, syn_restarts_flow, tcp_flags,
    },
    hash::{flow_hash_v4_words, flow_hint_index},
    ports_of, ports_word, slot,
};

use super::{Flow, now_ns};
use crate::{
    cookie::ack::{self as cookie_ack, CookieStart},
    egress::learn_client_hop,
    handoff::{self, Told},
    maps::{BACKENDS, FLOW_HINTS4, FLOW_TABLE, FLOWS4, MAGLEV, SNAT_ADDRS, TABLE_SEL, config},
    parse::Packet,
    pins, snat, sources,
    stats::{self, VipSyn},
    vip,
};

const EEXIST: i32 = 17;

/// What the connection table says about a packet to a VIP address.
pub enum Found {
    Flow(Flow),
    /// No flow, and no VIP serves this (port, protocol): not ours.
    NotVip,
    /// Ours, but refused (counted under the reason) for this VIP id.
    Refused(Reason, u32),
    /// The cookie program's (`cookie::client`): a client ACK without a flow that may carry a
    /// cookie.
    Cookie,
    /// A SYN to this VIP in cookie mode (admitted and counted here): answered with a cookie.
    CookieSyn(VipMeta, u64),
}

#[inline(always)]
pub fn find_or_create(ctx: &XdpContext, p: &Packet, class: AddrClass, told: Told) -> Found {
    let key = Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
    let syn = p.is_tcp() && is_initial_syn(p.seg.flags);
    // A segment that may start a flow: a SYN, or any UDP datagram (a UDP flow whose backend
    // left starts again on a live one: UDP has no SYN to say so).
    let starts = syn || !p.is_tcp();
    // The entry program looked already when it says so.
    let no_flow = told.has(handoff::NO_FLOW);
    if !syn
        && !no_flow
        && let Some(f) = lookup_hinted(&key)
        && (p.is_tcp() || !stale_for_syn(f.entry))
    {
        return Found::Flow(f);
    }
    let (sport, dport) = ports_of(p.ports);
    let Some(vip) = vip::lookup(p.dst, dport, p.proto, class) else {
        return Found::NotVip;
    };
    let Some(cfg) = config() else {
        return Found::Refused(Reason::DropInternal, vip.vip_id);
    };
    if p.is_tcp() && !syn {
        if vip.flags & VipMeta::COOKIES_ALLOWED != 0 && cookie_ack::is_candidate(p.seg.flags) {
            let what = handoff::VIP | if no_flow { handoff::NO_FLOW } else { 0 };
            handoff::give(&key, what, vip);
            return Found::Cookie;
        }
        return Found::Refused(no_state(p.seg.flags, cfg), vip.vip_id);
    }
    if p.ttl <= 1 {
        return Found::Refused(Reason::DropTtlExpired, vip.vip_id);
    }
    // One of our own addresses as the source: no flow can have it as its client (its replies
    // would carry the tuple the client's packets do).
    if crate::classify::lookup(p.src).is_some() {
        return Found::Refused(Reason::DropOwnSource, vip.vip_id);
    }
    // Cookie mode: `always`, engaged by the daemon, or (`auto`) by the VIP's half-open budget.
    let now = now_ns();
    let auto = syn && vip.flags & VipMeta::COOKIES_ALLOWED != 0;
    let cookies = syn
        && (vip.flags & VipMeta::COOKIES_ON != 0
            || auto && crate::cookie::budget::cookies_now(vip.vip_id, now));
    // A new flow (UDP, or TCP's SYN): the VIP's source lists and limits.
    if let Err(r) = sources::admit(&vip, p.src, !cookies) {
        return Found::Refused(r, vip.vip_id);
    }
    // Counted once admitted: SYNs the source policy refuses do not push cookie mode on.
    if syn {
        stats::vip_syn(vip.vip_id, VipSyn::Syn);
    }
    if cookies {
        // A retransmitted SYN of a flow created before cookie mode keeps its flow; long into
        // a flood no such flow can be waiting, and the answer makes no lookup.
        if crate::cookie::syn::plain_flows_waiting(vip.vip_id, now)
            && let Some(f) = lookup(&key)
            && !stale_for_syn(f.entry)
        {
            return Found::Flow(f);
        }
        return Found::CookieSyn(vip, now);
    }
    let hash = flow_hash_v4_words(p.src, p.dst, sport, dport, p.proto);
    for _ in 0..2 {
        match create(ctx, p, &key, &vip, hash, cfg, None) {
            Created::Flow(f) => {
                if syn {
                    crate::cookie::syn::note_plain_flow(vip.vip_id, now);
                    if auto {
                        crate::cookie::budget::spend(vip.vip_id, f.entry, now);
                    }
                }
                return Found::Flow(f);
            }
            Created::Refused(r) => {
                // A full pool refuses new flows, not a retransmitted SYN of one it holds.
                return match lookup(&key) {
                    Some(f) if !(starts && stale_for_syn(f.entry)) => Found::Flow(f),
                    _ => Found::Refused(r, vip.vip_id),
                };
            }
            Created::Clash => {}
        }
        match lookup(&key) {
            // A retransmitted SYN, or a packet that lost a race to create the same flow.
            Some(f) if !(starts && stale_for_syn(f.entry)) => return Found::Flow(f),
            // A new connection on a reused source port (or a UDP flow whose backend left): the
            // old flow ends here.
            Some(f) => snat::retire(f.entry, f.token),
            // The entry points at a slot being expired: replace it.
            None => {}
        }
        let _ = FLOWS4.remove(&key);
    }
    match lookup(&key) {
        Some(f) => Found::Flow(f),
        None => Found::Refused(Reason::DropInternal, vip.vip_id),
    }
}

/// A TCP segment without SYN and without a flow, in the entry program (an ACK flood's path):
/// refused without state, or, for a VIP that may have cookies out, handed to the cookie
/// program as a cookie candidate. None: not a VIP's port (the flow program decides).
#[inline(always)]
pub fn without_flow(
    ctx: &XdpContext,
    p: &Packet,
    key: &Flow4Key,
    class: AddrClass,
) -> Option<crate::verdict::Verdict> {
    let (_, dport) = ports_of(p.ports);
    let vip = vip::lookup(p.dst, dport, p.proto, class)?;
    let cfg = config()?;
    if vip.flags & VipMeta::COOKIES_ALLOWED != 0 && cookie_ack::is_candidate(p.seg.flags) {
        handoff::give(key, handoff::NO_FLOW | handoff::VIP, vip);
        return Some(crate::maps::tails::call(ctx, crate::maps::tails::COOKIE));
    }
    Some(crate::verdict::Verdict::of(no_state(p.seg.flags, cfg)))
}

/// A client ACK without a flow to a cookie-capable VIP: a valid cookie creates the flow (the
/// cookie program's).
#[inline(always)]
pub fn from_cookie(
    ctx: &XdpContext,
    p: &Packet,
    key: &Flow4Key,
    vip: &VipMeta,
    cfg: &DataplaneConfig,
) -> Found {
    let Some(start) = cookie_ack::check(ctx, p) else {
        stats::vip_syn(vip.vip_id, VipSyn::CookieInvalid);
        // Under attack a forged ACK goes nowhere; otherwise it is an ordinary stateless segment.
        let r = if vip.flags & VipMeta::COOKIES_ON != 0 {
            Reason::DropSynCookieInvalid
        } else {
            no_state(p.seg.flags, cfg)
        };
        return Found::Refused(r, vip.vip_id);
    };
    if p.ttl <= 1 {
        return Found::Refused(Reason::DropTtlExpired, vip.vip_id);
    }
    // The source is proven now: its lists and rate limit apply.
    if let Err(r) = sources::admit(vip, p.src, true) {
        return Found::Refused(r, vip.vip_id);
    }
    let (sport, dport) = ports_of(p.ports);
    let hash = flow_hash_v4_words(p.src, p.dst, sport, dport, p.proto);
    match create(ctx, p, key, vip, hash, cfg, Some(&start)) {
        Created::Flow(f) => {
            stats::vip_syn(vip.vip_id, VipSyn::CookieValid);
            Found::Flow(f)
        }
        Created::Refused(r) => Found::Refused(r, vip.vip_id),
        // Another CPU created it from the same ACK.
        Created::Clash => match lookup(key) {
            Some(f) => Found::Flow(f),
            None => Found::Refused(Reason::DropInternal, vip.vip_id),
        },
    }
}

/// The flow of an established-path packet: its hint when the slot it names still holds this
/// tuple's flow (no call at all), else FLOWS4, whose answer becomes the hint.
#[inline(always)]
pub(crate) fn lookup_hinted(key: &Flow4Key) -> Option<Flow> {
    let hint = FLOW_HINTS4.get_ptr_mut(flow_hint_index(key));
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

/// The flow `r` names, if its slot still holds that claim and this IPv4 tuple.
#[inline(always)]
fn hinted(key: &Flow4Key, r: FlowRef) -> Option<Flow> {
    let e = FLOW_TABLE.get_ptr_mut(r.slot)?;
    // SAFETY: valid map value pointer; its fields are stable while the owner word holds the
    // claim (a flow is filled before FLOWS4, and so any hint, can name it).
    let x = unsafe { &*e };
    if x.owner != r.token
        || x.flags & FlowEntry::CLIENT_V6 != 0
        || x.client[0] != key.src
        || x.client[1] != key.dst
        || ports_word(x.client_port, x.vip_port) != key.ports
        || x.proto as u32 != key.proto
    {
        return None;
    }
    Some(Flow {
        entry: e,
        slot: r.slot,
        token: r.token,
        new: false,
        accepted: true,
    })
}

/// The flow of `key`, if its slot still holds that claim and this tuple.
#[inline(always)]
pub fn lookup(key: &Flow4Key) -> Option<Flow> {
    // SAFETY: valid map value pointer.
    hinted(key, unsafe { *FLOWS4.get_ptr(key)? })
}

/// The flow a FLOWS4 or FLOWS6 entry names, if its slot still belongs to it.
#[inline(always)]
pub fn follow(r: FlowRef) -> Option<Flow> {
    let FlowRef { slot, token } = r;
    let e = FLOW_TABLE.get_ptr_mut(slot)?;
    // SAFETY: valid map value pointer.
    if unsafe { (*e).owner } != token {
        return None;
    }
    Some(Flow {
        entry: e,
        slot,
        token,
        new: false,
        accepted: true,
    })
}

/// A TCP segment other than a SYN with no flow: dropped, or passed so the kernel resets it.
#[inline(always)]
pub(crate) fn no_state(flags: u8, cfg: &DataplaneConfig) -> Reason {
    if is_bad_syn(flags) {
        Reason::DropBadTcpFlags
    } else if cfg.flags & DataplaneConfig::NON_SYN_PASS != 0 {
        Reason::PassNonSynNoState
    } else {
        Reason::DropNonSynNoState
    }
}

/// A SYN on this flow belongs to a new connection: the old one is closing or reset, or its
/// backend was removed.
#[inline(always)]
pub fn stale_for_syn(e: *mut FlowEntry) -> bool {
    // SAFETY: a live FLOW_TABLE value pointer.
    let e = unsafe { &*e };
    if syn_restarts_flow(e.state) {
        return true;
    }
    match BACKENDS.get(e.backend_id as u32) {
        Some(b) => {
            b.flags & Backend::ACTIVE == 0
                || b.addr.v4_word_of() != e.backend
                || (b.port != 0 && b.port != e.backend_port)
        }
        None => true,
    }
}

enum Created {
    Flow(Flow),
    /// The tuple already has a flow.
    Clash,
    Refused(Reason),
}

#[inline(always)]
fn create(
    ctx: &XdpContext,
    p: &Packet,
    key: &Flow4Key,
    vip: &VipMeta,
    hash: u32,
    cfg: &DataplaneConfig,
    cookie: Option<&CookieStart>,
) -> Created {
    let table_slot = hash % MAGLEV_TABLE_SIZE;
    let pin = pins::lookup(vip, p.src);
    let mut id = pick(
        if pin == pins::NONE {
            vip.vip_id
        } else {
            pin >> 1
        },
        table_slot,
    );
    if pin != pins::NONE {
        if id != NO_BACKEND {
            pins::count(pin >> 1, pins::Outcome::Decided);
        } else if pin & 1 != 0 {
            pins::count(pin >> 1, pins::Outcome::Spilled);
            id = pick(vip.vip_id, table_slot);
        } else {
            pins::count(pin >> 1, pins::Outcome::Refused);
            return Created::Refused(Reason::DropNoBackend);
        }
    }
    if id == NO_BACKEND {
        return Created::Refused(Reason::DropNoBackend);
    }
    let backend = match BACKENDS.get(id) {
        Some(b) if b.flags & Backend::ACTIVE != 0 => b,
        _ => return Created::Refused(Reason::DropNoBackend),
    };
    // The edge's own SYN toward the backend (SYN cookies) is built as IPv4 only; validation
    // keeps cookies off VIPs with IPv6 backends.
    if cookie.is_some() && backend.family == FAMILY_IPV6 {
        return Created::Refused(Reason::DropNoBackend);
    }
    let backend_v6 = backend.family == FAMILY_IPV6;
    if let Err(r) = crate::shares::admit(vip.vip_id, false, backend_v6) {
        return Created::Refused(r);
    }
    let (s, e, token) = match snat::claim(hash, cfg, backend.family) {
        Ok(c) => c,
        Err(r) => return Created::Refused(r),
    };
    let Some(snat_addr) = SNAT_ADDRS.get(slot::snat_index_of(s)) else {
        snat::release(s, e, token);
        return Created::Refused(Reason::DropInternal);
    };
    // SAFETY: we own the slot (claimed above).
    let entry = unsafe { &mut *e };
    fill(ctx, entry, p, backend, id, vip, snat_addr.addr.v4_word_of());
    // PROXY protocol toward IPv4 data nodes (the IPv6 sender has no insertion: validation
    // keeps VIPs with IPv6 nodes from asking for it).
    entry.proxy = crate::proxy::flow_bits(vip, backend.family);
    if let Some(c) = cookie {
        start_cookie(entry, p, c);
    }
    let r = FlowRef { slot: s, token };
    match FLOWS4.insert(key, &r, BPF_NOEXIST as u64) {
        Ok(()) => {
            crate::shares::count(vip.vip_id, false, backend_v6);
            if crate::connlog::on(cfg) {
                crate::connlog::opened(entry, s, token, entry.last_seen_ns);
            }
            Created::Flow(Flow {
                entry: e,
                slot: s,
                token,
                new: true,
                accepted: true,
            })
        }
        Err(err) => {
            snat::release(s, e, token);
            if err == -EEXIST {
                Created::Clash
            } else {
                // -E2BIG: the table is full. Established flows are never evicted to make room.
                Created::Refused(Reason::DropConntrackFull)
            }
        }
    }
}

/// The backend id at `slot` of the live table of `table_id` (a VIP's, or a pin's).
#[inline(always)]
pub(crate) fn pick(table_id: u32, slot: u32) -> u32 {
    let sel = TABLE_SEL.get(table_id).map_or(0, |s| *s & 1);
    match MAGLEV.get_value(table_id * TABLES_PER_VIP + sel, &slot) {
        Some(id) => *id,
        None => NO_BACKEND,
    }
}

/// Writes every field of a freshly claimed entry, field by field (a struct literal would be a
/// memset call in BPF).
#[inline(always)]
pub(crate) fn fill(
    ctx: &XdpContext,
    e: &mut FlowEntry,
    p: &Packet,
    b: &Backend,
    id: u32,
    vip: &VipMeta,
    snat_addr: u32,
) {
    let (cport, vport) = ports_of(p.ports);
    let now = now_ns();
    e.backend = b.addr.v4_word_of();
    e.client = [p.src, p.dst, snat_addr, 0];
    e.client_port = cport;
    e.vip_port = vport;
    // Port 0: an any-port VIP's backend takes the client's destination port.
    e.backend_port = if b.port == 0 { vport } else { b.port };
    e.backend_id = id as u16;
    e.vip_id = vip.vip_id as u16;
    // Branch-free (see snat::claim).
    e.flags = (slot::family_bit(b.family) as u8) * FlowEntry::BACKEND_V6;
    e.client_vlan = p.vlan;
    // A SYN is stamped precisely: its handshake's round trips are measured from it (rtt).
    e.last_seen_ns = if p.is_tcp() {
        crate::clock::precise_ns()
    } else {
        now
    };
    e.created_s = (now / 1_000_000_000) as u32;
    e.proto = p.proto;
    e.syn_opts = 0;
    // PROXY protocol: set by the IPv4 client's creation (`create`).
    e.proxy_len = 0;
    e.proxy = 0;
    e.seq_delta = 0;
    e.ts_delta = 0;
    if p.is_tcp() {
        e.start_tcp(&p.seg);
    } else {
        e.state = State::Udp as u8;
        e.ack = [0, 0];
        e.win = [0, 0];
        e.end = [0, 0];
        e.wscale = [NO_WSCALE, NO_WSCALE];
    }
    let _ = learn_client_hop(ctx, &mut e.to_client);
}

/// A cookie flow starts as if the client's SYN had just been seen, with translation pending
/// until the backend's SYN-ACK (see cookie::handshake).
#[inline(always)]
fn start_cookie(e: &mut FlowEntry, p: &Packet, c: &CookieStart) {
    e.start_tcp(&Segment {
        flags: tcp_flags::SYN,
        seq: c.isn,
        ack: 0,
        win: 0,
        wscale: c.wscale,
        len: 0,
    });
    // The ACK that proved the cookie acknowledged the edge's SYN-ACK: the client's RCV.NXT is
    // the cookie + 1 (in its view, where the backend's bytes start), and what it has sent
    // ends after this segment.
    e.flags = FlowEntry::TRANSLATE | FlowEntry::ACK_SEEN_FWD;
    e.ack[0] = c.cookie.wrapping_add(1);
    e.end = [
        c.isn.wrapping_add(1).wrapping_add(p.seg.len),
        c.cookie.wrapping_add(1),
    ];
    e.seq_delta = c.cookie;
    e.ts_delta = c.edge_ts;
    e.syn_opts = c.syn_opts;
    // The client's window in bytes (its ACK's window is scaled).
    e.win[0] = if e.wscale[0] == NO_WSCALE {
        p.seg.win as u32
    } else {
        (p.seg.win as u32) << e.wscale[0]
    };
}
