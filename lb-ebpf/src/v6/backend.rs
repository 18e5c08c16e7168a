//! IPv6 backends (`FlowEntry::BACKEND_V6`), reached through an IPv6 SNAT address: an IPv4
//! client's packets grow into IPv6 ones, an IPv6 client's keep their size and get new
//! addresses; the backend's replies to the IPv6 SNAT address go back the same ways. The
//! backend's address is `BACKENDS[backend_id]` (the id is not reused while a flow names it),
//! the SNAT address `SNAT_ADDRS[slot]`.
//!
//! Sending is deferred: the pipeline that found the flow records it (`defer`) and returns; the
//! program then tail-calls `wklb_v6_send`, which parses the packet again and sends it
//! (`finish`). Inline, the sending code cost over 200,000 verifier instructions per address
//! family (once per path through flow lookup and creation) and overflowed the 512-byte stack;
//! a program of its own is verified once, with a stack of its own.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, FlowEntry, Reason,
    conntrack::{Direction, State, tcp_flags},
    ports_of, ports_word, slot,
    tcp_opts::Options,
    xlat::GROWTH_V4_TO_V6,
};

use super::xlat;
use crate::{
    conntrack::{self, Flow, now_ns},
    egress::{self, NoHop, Route},
    icmp::too_big,
    maps::{self, BACKENDS, DEFERRED_SEND, FLOW_TABLE, SNAT_ADDRS, VIP_INFO},
    mss,
    parse::{
        Packet,
        eth::{self, L2},
        ipv4,
        ipv6::{self, Addrs6},
    },
    stats,
    verdict::Verdict,
};

/// `Verdict::action` of a deferred send (never returned to the kernel).
pub const DEFERRED: u32 = 0xd6;

/// What `finish` needs of the flow (the rest is in the packet and the flow entry).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Deferred {
    pub slot: u32,
    pub token: u32,
    pub new: u32,
    pub accepted: u32,
    /// 1: the main program walked this SYN's options (`recorded_syn_options`).
    pub syn_options: u32,
    /// Non-zero: not a send but an IPv6 node's reply to the SNAT address of this class
    /// (`flags | snat_index << 16`); the other fields are not set then.
    pub reply_to: u32,
    /// Non-zero: a path-MTU error to turn toward a backend (`path_mtu::FROM_*`).
    pub icmp: u32,
}

/// Records `flow` (and whether the SYN's options were walked) for `finish`.
#[inline(always)]
pub fn defer(flow: &Flow, opts: Option<&Options>) -> Verdict {
    let Some(d) = DEFERRED_SEND.get_ptr_mut(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: this CPU's slot; read back by `finish` in the same program run.
    unsafe {
        (*d).slot = flow.slot;
        (*d).token = flow.token;
        (*d).new = flow.new as u32;
        (*d).accepted = flow.accepted as u32;
        (*d).syn_options = opts.is_some() as u32;
        (*d).reply_to = 0;
        (*d).icmp = 0;
    }
    Verdict {
        action: DEFERRED,
        reason: Reason::Forwarded,
    }
}

/// An IPv6 backend's reply to the SNAT address of `class`: `finish` handles it whole.
#[inline(always)]
pub fn defer_reply(class: AddrClass) -> Verdict {
    let Some(d) = DEFERRED_SEND.get_ptr_mut(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: this CPU's slot; read back by `finish` in the same program run. The SNAT bit
    // keeps the word non-zero.
    unsafe {
        (*d).reply_to = class.flags as u32 | (class.snat_index as u32) << 16;
        (*d).icmp = 0;
    }
    Verdict {
        action: DEFERRED,
        reason: Reason::Reversed,
    }
}

/// A path-MTU error for `path_mtu` (`kind`: `path_mtu::FROM_V4` or `FROM_V6`).
#[inline(always)]
pub fn defer_icmp(kind: u32) -> Verdict {
    let Some(d) = DEFERRED_SEND.get_ptr_mut(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: this CPU's slot; read back by `finish` in the same program run.
    unsafe { (*d).icmp = kind };
    Verdict {
        action: DEFERRED,
        reason: Reason::IcmpErrorToBackend,
    }
}

/// Hands the deferred send to `wklb_v6_send`; returns only when the tail call failed.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) -> Verdict {
    maps::tails::call(ctx, maps::tails::V6_SEND)
}

/// Sends the packet of the flow `defer` recorded (IPv4 or IPv6 client), or translates an IPv6
/// backend's reply to a SNAT address.
#[inline(always)]
pub fn finish(ctx: &XdpContext) -> Verdict {
    // What the main program recorded says which: no second address lookup here.
    let (icmp, reply_to) = DEFERRED_SEND
        .get(0)
        .map_or((0, 0), |d| (d.icmp, d.reply_to));
    if icmp != 0 {
        return Verdict::from_word(super::path_mtu::translate(ctx, icmp));
    }
    if reply_to != 0 {
        let class = AddrClass {
            flags: reply_to as u16,
            snat_index: (reply_to >> 16) as u16,
        };
        return match eth::parse(ctx) {
            L2::Ipv6 { l3, vlan } => Verdict::from_word(reply_to_node(ctx, l3, vlan, class)),
            _ => Verdict::of(Reason::DropInternal),
        };
    }
    Verdict::from_word(send_deferred(ctx))
}

// The two halves out of line: each keeps its own stack frame (inline together, their register
// spills overflowed the 512 bytes).
// They return `Verdict::to_word`.
#[inline(never)]
fn reply_to_node(ctx: &XdpContext, l3: usize, vlan: u16, class: AddrClass) -> u64 {
    // To a SNAT address only: what the edge does not translate (ICMPv6, neighbour discovery
    // included; fragments; other protocols) is the kernel's.
    let (mut p, a) = match ipv6::parse(ctx, l3, vlan) {
        ipv6::Parsed6::Ok(p, a) => (p, a),
        ipv6::Parsed6::Icmp => return Verdict::of(Reason::PassIcmp).to_word(),
        _ => return Verdict::of(Reason::PassUnparsable).to_word(),
    };
    let opts = syn_options(ctx, &mut p);
    reply(ctx, &p, &a, class, opts).to_word()
}

#[inline(never)]
fn send_deferred(ctx: &XdpContext) -> u64 {
    send_deferred_verdict(ctx).to_word()
}

#[inline(always)]
fn send_deferred_verdict(ctx: &XdpContext) -> Verdict {
    let Some(d) = DEFERRED_SEND.get(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    let d = *d;
    let Some(ep) = FLOW_TABLE.get_ptr_mut(d.slot) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: valid map value pointer.
    let e = unsafe { &*ep };
    if e.owner != d.token {
        return Verdict::of(Reason::DropInternal);
    }
    let flow = Flow {
        entry: ep,
        slot: d.slot,
        token: d.token,
        new: d.new != 0,
        accepted: d.accepted != 0,
    };
    let now = now_ns();
    match eth::parse(ctx) {
        L2::Ipv4 { l3, vlan } => {
            let Some(ip) = ipv4::header(ctx, l3) else {
                return Verdict::of(Reason::DropInternal);
            };
            let ipv4::Parsed::Ok(mut p) = ipv4::parse(ctx, l3, vlan, ip) else {
                return Verdict::of(Reason::DropInternal);
            };
            let opts = recorded(&mut p, &d);
            send(ctx, &p, None, &flow, e, opts, now)
        }
        L2::Ipv6 { l3, vlan } => {
            let ipv6::Parsed6::Ok(mut p, a) = ipv6::parse(ctx, l3, vlan) else {
                return Verdict::of(Reason::DropInternal);
            };
            if e.flags & FlowEntry::BACKEND_V6 == 0 {
                return too_big_for_v4_backend(ctx, &p, &a, &flow, e, now);
            }
            let opts = recorded(&mut p, &d);
            send(ctx, &p, Some(&a), &flow, e, opts, now)
        }
        _ => Verdict::of(Reason::DropInternal),
    }
}

/// An IPv6 client's packet that is too big for its IPv4 backend's path even 20 bytes shorter
/// (the one case the main program defers for an IPv4 backend): Packet Too Big from the VIP.
#[inline(always)]
fn too_big_for_v4_backend(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    flow: &Flow,
    e: &FlowEntry,
    now: u64,
) -> Verdict {
    let Some(snat) = SNAT_ADDRS.get(slot::snat_index_of(flow.slot)) else {
        return Verdict::of(Reason::DropInternal);
    };
    let snat = snat.addr.v4_word_of();
    match egress::backend_hop(ctx, e.backend_id, snat, e.backend, p.proto, now) {
        Ok(h) if h.mtu != 0 => {
            too_big::send6(ctx, p, h.mtu + GROWTH_V4_TO_V6 as u32, &a.dst, &a.src)
        }
        _ => Verdict::of(Reason::DropTooBig),
    }
}

/// The SYN options the main program walked (no second walk: its out-of-line frame would not
/// fit on this program's stack next to `send_deferred`'s).
#[inline(always)]
fn recorded(p: &mut Packet, d: &Deferred) -> Option<&'static Options> {
    if d.syn_options != 0 && p.seg.flags & tcp_flags::SYN != 0 {
        crate::parse::tcp::recorded_syn_options(p)
    } else {
        None
    }
}

#[inline(always)]
fn syn_options(ctx: &XdpContext, p: &mut Packet) -> Option<&'static Options> {
    if p.seg.flags & tcp_flags::SYN != 0 {
        crate::parse::tcp::syn_options(ctx, p)
    } else {
        None
    }
}

/// (SNAT address, backend address) of an IPv6 backend's flow, as map values (no stack copies:
/// the program's stack is nearly full).
#[inline(always)]
fn addresses(slot: u32, e: &FlowEntry) -> Option<(&'static [u32; 4], &'static [u32; 4])> {
    let snat = SNAT_ADDRS.get(slot::snat_index_of(slot))?;
    let b = BACKENDS.get(e.backend_id as u32)?;
    Some((&snat.addr.words, &b.addr.words))
}

/// Client → IPv6 backend, after the flow was found and tracked. `client`: the IPv6 client's
/// addresses, None for an IPv4 client.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    p: &Packet,
    client: Option<&Addrs6>,
    flow: &Flow,
    e: &FlowEntry,
    opts: Option<&Options>,
    now: u64,
) -> Verdict {
    let Some((snat, backend)) = addresses(flow.slot, e) else {
        return Verdict::of(Reason::DropInternal);
    };
    let route = Route::V6 {
        src: snat,
        dst: backend,
    };
    let hop = match egress::backend_hop_via(ctx, e.backend_id, route, p.proto, now) {
        Ok(h) => Some(h),
        Err(NoHop::Neighbor) => None,
        Err(NoHop::Failed) => return Verdict::of(Reason::DropFibFailed),
    };
    let mtu = hop.map_or(0, |h| h.mtu);
    let growth = if client.is_some() {
        0
    } else {
        GROWTH_V4_TO_V6 as u16
    };
    let out_len = p.ip_len.saturating_add(growth);
    // IPv6 is not fragmented on the way: whatever DF says, the client learns the path MTU
    // from its VIP, about its own packet.
    if egress::too_big(out_len, mtu) {
        let mtu = mtu - growth as u32;
        return match client {
            Some(a) => too_big::send6(ctx, p, mtu, &a.dst, &a.src),
            None => too_big::send(ctx, p, mtu, p.dst, p.src),
        };
    }
    if p.is_tcp()
        && p.seg.flags & tcp_flags::SYN != 0
        && let Some(cfg) = maps::config()
        && let Some(limit) = mss::limit(cfg, mtu.saturating_sub(GROWTH_V4_TO_V6 as u32))
        && let Some(opts) = opts
    {
        mss::clamp_to(ctx, p, opts, limit);
    }
    let ports = ports_word(slot::port_of(flow.slot), e.backend_port);
    let done = match client {
        Some(a) => xlat::rewrite_v6(ctx, p, a, snat, backend, ports),
        None => xlat::to_v6(ctx, p, snat, backend, ports),
    };
    if done.is_none() {
        return Verdict::of(Reason::DropMalformed);
    }
    let sent = if flow.accepted {
        Reason::Forwarded
    } else {
        Reason::ForwardedOutOfWindow
    };
    let v = match hop {
        Some(h) => egress::transmit_to_backend(ctx, &h, p.vlan, sent),
        None => Verdict::of(Reason::PassNoNeighbor),
    };
    stats::vip(e.vip_id as u32, p.ip_len as u64, flow.new);
    stats::backend_in(e.backend_id as u32, p.ip_len as u64, flow.new);
    v
}

/// IPv6 backend → IPv6 SNAT address: the slot names the flow; the reply must come from that
/// flow's backend. Translated back to VIP → client (IPv4 or IPv6) and sent the way the
/// client's traffic came.
#[inline(always)]
fn reply(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    class: AddrClass,
    opts: Option<&Options>,
) -> Verdict {
    let (sport, dport) = ports_of(p.ports);
    let s = slot::slot(class.snat_index as u32, dport);
    let Some(ep) = FLOW_TABLE.get_ptr_mut(s) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *ep };
    if !e.is_live()
        || e.flags & FlowEntry::BACKEND_V6 == 0
        || e.backend != a.src[0]
        || e.backend_port != sport
        || e.proto != p.proto
    {
        return Verdict::of(Reason::PassReplyNoFlow);
    }
    match BACKENDS.get(e.backend_id as u32) {
        Some(b) if b.addr.words == a.src => {}
        _ => return Verdict::of(Reason::PassReplyNoFlow),
    }
    if p.ttl <= 1 {
        return Verdict::of(Reason::DropTtlExpired);
    }
    let (handshake, syn_at) = (e.state == State::SynSent as u8, e.last_seen_ns);
    let accepted = conntrack::track_and_touch::<true>(ctx, e, p, now_ns(), Direction::Reverse);
    if handshake && e.state == State::Established as u8 {
        crate::rtt::backend_answered(e, syn_at);
    }
    // The data node refused the connection: the passive health signal.
    if lb_common::passive::is_refusal(handshake, p.seg.flags, accepted, e.state) {
        crate::stats::backend_refused(e.backend_id as u32);
    }
    let Some(cfg) = maps::config() else {
        return Verdict::of(Reason::DropInternal);
    };
    crate::connlog::count(e, s, 1, p);
    let hop = egress::client_hop(&e.to_client);
    let v6 = e.flags & FlowEntry::CLIENT_V6 != 0;
    // An IPv4 client's packets are 20 bytes shorter than the backend's.
    let out_len = if v6 {
        p.ip_len
    } else {
        p.ip_len.saturating_sub(GROWTH_V4_TO_V6 as u16)
    };
    let mtu = egress::iface_mtu(hop.ifindex, out_len as u32, cfg.min_mtu);
    if egress::too_big(out_len, mtu) {
        let mtu = if v6 {
            mtu
        } else {
            mtu + GROWTH_V4_TO_V6 as u32
        };
        return too_big::send6(ctx, p, mtu, &a.dst, &a.src);
    }
    if let Some(opts) = opts {
        let growth = if v6 { GROWTH_V4_TO_V6 as u32 } else { 0 };
        crate::to_client::clamp_synack(ctx, p, opts, cfg, hop.ifindex, growth, 0);
    }
    let ports = ports_word(e.vip_port, e.client_port);
    let done = if v6 {
        match VIP_INFO.get(e.vip_id as u32) {
            Some(vip) => xlat::rewrite_v6(ctx, p, a, &vip.addr.words, &e.client, ports),
            None => return Verdict::of(Reason::DropInternal),
        }
    } else {
        xlat::to_v4(ctx, p, a, e.vip_v4(), e.client[0], ports)
    };
    if done.is_none() {
        return Verdict::of(Reason::DropMalformed);
    }
    let sent = if accepted {
        Reason::Reversed
    } else {
        Reason::ReversedOutOfWindow
    };
    let v = egress::transmit(ctx, &hop, p.vlan, e.client_vlan, sent);
    stats::backend_out(e.backend_id as u32, p.ip_len as u64);
    v
}
