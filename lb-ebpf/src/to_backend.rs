//! Client → VIP: find or create the flow, then full-NAT the packet toward its backend:
//! next hop, MTU (fragmentation-needed back to the client when it does not fit), MSS clamping
//! on SYNs, rewrite, transmit, count.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, Flow4Key, FlowEntry, Reason,
    conntrack::{Direction, State, is_bad_syn, tcp_flags},
    ports_word,
    proxy::step as proxy_step,
    slot,
    tcp_opts::Options,
};

use crate::{
    conntrack::{
        self, Flow,
        forward::{self, Found},
        now_ns,
    },
    egress::{self, NoHop},
    icmp,
    maps::{self, tails},
    mss,
    nat::{self, Rewrite},
    parse::Packet,
    proxy, stats,
    verdict::Verdict,
};

/// The established path of a plain flow (in the entry program): not a SYN, a flow found (its
/// hint, or FLOWS4), not a cookie flow. Err: the flow program's (`handle`), with what this
/// path found for the handoff (`handoff::NO_FLOW`, or nothing).
#[inline(always)]
pub fn established(ctx: &XdpContext, p: &mut Packet, class: AddrClass) -> Result<Verdict, u32> {
    if p.is_tcp() && p.seg.flags & tcp_flags::SYN != 0 {
        return Err(0);
    }
    let key = Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
    let Some(mut flow) = forward::lookup_hinted(&key) else {
        if p.is_tcp() {
            // No flow and no SYN: refused here, or a cookie ACK for the cookie program.
            return forward::without_flow(ctx, p, &key, class).ok_or(0);
        }
        // UDP: a new flow (the flow program's, which need not look again).
        return Err(crate::handoff::NO_FLOW);
    };
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    // A cookie flow's established segments are translated here; its handshake is the cookie
    // program's. UDP flows whose backend left (they start again) are the flow program's.
    if e.flags & FlowEntry::TRANSLATE != 0 {
        if e.state == State::SynSent as u8 || p.ttl <= 1 {
            return Ok(tails::call(ctx, tails::COOKIE));
        }
        let now = now_ns();
        flow.accepted = conntrack::track_and_touch::<true>(ctx, e, p, now, Direction::Forward);
        return Ok(send::<{ mode::ESTABLISHED }>(
            ctx, p, &flow, e, None, now, true,
        ));
    }
    if !p.is_tcp() && forward::stale_for_syn(flow.entry) {
        return Err(0);
    }
    if p.ttl <= 1 {
        return Ok(Verdict::of(Reason::DropTtlExpired));
    }
    let now = now_ns();
    track_client::<true>(ctx, p, &mut flow, e, now);
    if e.flags & FlowEntry::BACKEND_V6 != 0 {
        crate::connlog::count(e, flow.slot, 0, p);
        return Ok(crate::v6::backend::defer(&flow, None));
    }
    Ok(send::<{ mode::ESTABLISHED }>(
        ctx, p, &flow, e, None, now, false,
    ))
}

/// Tracks a client segment of an existing flow; its first ACK after the backend's SYN-ACK
/// counts the handshake and its round trip.
#[inline(always)]
pub(crate) fn track_client<const INLINE: bool>(
    ctx: &XdpContext,
    p: &Packet,
    flow: &mut Flow,
    e: &mut FlowEntry,
    now: u64,
) {
    let (acked_before, synack_at) = (e.flags & FlowEntry::ACK_SEEN_FWD, e.last_seen_ns);
    let completes = e.completes_handshake(&p.seg);
    flow.accepted = conntrack::track_and_touch::<INLINE>(ctx, e, p, now, Direction::Forward);
    // The client's first ACK, acknowledging the backend's SYN-ACK exactly: a real client, not
    // a flood (a spoofed source never saw the SYN-ACK; a forged ACK would give its SYN's
    // budget back).
    if acked_before == 0
        && completes
        && e.flags & FlowEntry::ACK_SEEN_FWD != 0
        && e.state == State::Established as u8
    {
        stats::vip_syn(e.vip_id as u32, stats::VipSyn::Handshake);
        crate::rtt::client_acked(e, synack_at);
        if e.flags & FlowEntry::SYN_BUDGET != 0 {
            crate::cookie::budget::refund(e);
        }
    }
}

/// None when the packet is for no VIP after all (the caller goes on).
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    p: &mut Packet,
    class: AddrClass,
    opts: Option<&Options>,
    told: crate::handoff::Told,
) -> Option<Verdict> {
    let mut flow = match forward::find_or_create(ctx, p, class, told) {
        Found::Flow(f) => f,
        Found::NotVip => return None,
        Found::Cookie => return Some(tails::call(ctx, tails::COOKIE)),
        // Answered here: a tail call and a second parse per SYN of a flood cost more than the
        // verifier's work on the answer.
        Found::CookieSyn(vip, now) => {
            return Some(match maps::config() {
                Some(cfg) => crate::cookie::syn::answer(ctx, p, vip, opts, cfg, now),
                None => Verdict::of(Reason::DropInternal),
            });
        }
        Found::Refused(reason, vip_id) => {
            if reason == Reason::DropNoBackend {
                stats::vip_no_backend(vip_id);
            }
            return Some(Verdict::of(reason));
        }
    };
    if p.is_tcp() && is_bad_syn(p.seg.flags) {
        return Some(Verdict::of(Reason::DropBadTcpFlags));
    }
    if p.ttl <= 1 {
        return Some(Verdict::of(Reason::DropTtlExpired));
    }
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    let now = now_ns();
    if e.flags & FlowEntry::TRANSLATE != 0 {
        return Some(tails::call(ctx, tails::COOKIE));
    }
    // A PROXY flow's first payload byte is read from `ack[1]`, which its SYN set: a SYN that
    // would move it (a re-numbered one) is refused, as is one with data (TCP Fast Open: the
    // data would reach the node before the header; the client sends it again after the
    // handshake). Before tracking, which would move it.
    if e.proxy != 0
        && p.is_tcp()
        && (p.seg.len != 0 || (!flow.new && p.seg.seq.wrapping_add(1) != e.ack[1]))
    {
        return Some(crate::proxy::refuse(e));
    }
    if !flow.new {
        // The client's SYN again while the backend has not answered: the passive health
        // signal (a silent backend shows only this way; IPv6 clients' in `v6::handle`).
        if lb_common::passive::is_syn_retransmit(e, p.seg.seq, p.seg.flags) {
            stats::backend_syn_retransmit(e.backend_id as u32);
        }
        track_client::<false>(ctx, p, &mut flow, e, now);
    }
    if e.flags & FlowEntry::BACKEND_V6 != 0 {
        crate::connlog::count(e, flow.slot, 0, p);
        return Some(crate::v6::backend::defer(&flow, opts));
    }
    Some(send::<{ mode::NEW }>(ctx, p, &flow, e, opts, now, false))
}

/// How `send` treats PROXY flows.
pub mod mode {
    /// SYNs and UDP (the flow program): nothing to insert or shift (`handle` refuses a SYN with
    /// data on a PROXY flow).
    pub const NEW: u8 = 0;
    /// Established segments: a PROXY flow's handed to `wklb_proxy`.
    pub const ESTABLISHED: u8 = 1;
    /// `wklb_proxy`: a PROXY flow's segments, shifted past the header or with the header
    /// inserted.
    pub const INSERT: u8 = 2;
}

/// Sends the client's segment to its backend (`cookie`: translated to the backend's numbering
/// after the too-big check, whose error the client must recognise). PROXY flows as `MODE` says.
#[inline(always)]
pub(crate) fn send<const MODE: u8>(
    ctx: &XdpContext,
    p: &mut Packet,
    flow: &Flow,
    e: &FlowEntry,
    opts: Option<&Options>,
    now: u64,
    cookie: bool,
) -> Verdict {
    // A PROXY flow's client segments are `wklb_proxy`'s, tracked, until the node acknowledged
    // the header: the entry program keeps no verifier budget for their steps. From then on
    // every one is shifted by the header's length (`proxy::forward`'s SHIFT), here.
    // SAFETY: a live FLOW_TABLE value (`proxy` is a byte: read whole).
    let bits = if MODE == mode::ESTABLISHED {
        unsafe { core::ptr::read_volatile(&e.proxy) }
    } else {
        0
    };
    // (ACKED implies a known length; checked all the same, a byte load on PROXY flows only.)
    if MODE == mode::ESTABLISHED
        && bits != 0
        && (bits & FlowEntry::PROXY_ACKED == 0 || e.proxy_len == 0)
    {
        return proxy::defer(ctx, p, flow.accepted);
    }
    // Hidden from the verifier's value tracking: each step would otherwise take the rest of the
    // send through a path of its own.
    let step = if MODE == mode::INSERT {
        crate::parse::opaque(proxy::step(e, p) as usize) as u8
    } else {
        proxy_step::KEEP
    };
    if MODE == mode::INSERT && step == proxy_step::REFUSE {
        return proxy::refuse(e);
    }
    let inserting = MODE == mode::INSERT && step == proxy_step::INSERT;
    // Past the header: shifted by its length in the rewrite (in the entry, without a branch:
    // the header's length on a flow whose node acknowledged it, else 0).
    let seq_add = if MODE == mode::INSERT && step == proxy_step::SHIFT {
        e.proxy_len as u32
    } else if MODE == mode::ESTABLISHED {
        lb_common::proxy::acked_shift(bits, e.proxy_len)
    } else {
        0
    };
    let seq_add = crate::parse::opaque(seq_add as usize) as u32;
    // The client's payload, before any header.
    crate::connlog::count(e, flow.slot, 0, p);

    let snat_addr = e.client[2];
    let hop = match egress::backend_hop(ctx, e.backend_id, snat_addr, e.backend, p.proto, now) {
        Ok(h) => Some(h),
        Err(NoHop::Neighbor) => None,
        Err(NoHop::Failed) => return Verdict::of(Reason::DropFibFailed),
    };
    let mtu = hop.map_or(0, |h| h.mtu);
    let growth = if inserting { e.proxy_len as u16 } else { 0 };
    if egress::too_big(p.ip_len.saturating_add(growth), mtu) && p.df {
        // The client learns the path MTU from its VIP, about its own packet (less the header
        // its first segment carries).
        return icmp::too_big::send(ctx, p, mtu.saturating_sub(growth as u32), p.dst, p.src);
    }
    if cookie && crate::cookie::translate::forward(ctx, p, e).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    if p.is_tcp()
        && p.seg.flags & tcp_flags::SYN != 0
        && let Some(cfg) = maps::config()
        && let Some(limit) = mss::limit(cfg, mtu)
        && let Some(opts) = opts
    {
        mss::clamp_to(ctx, p, opts, limit);
    }
    let to = Rewrite {
        src: snat_addr,
        dst: e.backend,
        ports: ports_word(slot::port_of(flow.slot), e.backend_port),
        seq_add,
        ack_add: 0,
    };
    if nat::rewrite(ctx, p, &to).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    let sent = if flow.accepted {
        Reason::Forwarded
    } else {
        Reason::ForwardedOutOfWindow
    };
    let v = match hop {
        _ if egress::too_big(p.ip_len.saturating_add(growth), mtu) => {
            Verdict::of(Reason::PassTooBig)
        }
        Some(h) => egress::transmit_to_backend(ctx, &h, p.vlan, sent),
        None => Verdict::of(Reason::PassNoNeighbor),
    };
    let ip_len = p.ip_len.saturating_add(growth) as u64;
    stats::vip(e.vip_id as u32, ip_len, flow.new);
    stats::backend_in(e.backend_id as u32, ip_len, flow.new);
    if inserting {
        // The header goes in last, on the frame as it leaves (NAT done, next hop set).
        return proxy::hand_over(ctx, e, v);
    }
    v
}
