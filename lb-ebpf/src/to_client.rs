//! Backend → SNAT address: find the flow by its slot, translate back to VIP → client and send it
//! the way the client's traffic came (fragmentation-needed back to the backend when the client
//! side's MTU is smaller; MSS clamping on the SYN-ACK).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, FlowEntry, Reason,
    conntrack::{Direction, State, tcp_flags},
    ports_word,
    tcp_opts::Options,
    xlat::GROWTH_V4_TO_V6,
};

use crate::{
    conntrack::{self, Flow, now_ns, reverse},
    cookie, egress, icmp, maps, mss,
    nat::{self, Rewrite},
    parse::Packet,
    rtt, stats,
    verdict::Verdict,
};

/// The established path of a plain flow's reply (in the entry program): not a SYN, not a
/// cookie flow. None: the reply program's (`handle`).
#[inline(always)]
pub fn established(ctx: &XdpContext, p: &mut Packet, class: AddrClass) -> Option<Verdict> {
    if p.is_tcp() && p.seg.flags & tcp_flags::SYN != 0 {
        return None;
    }
    let flow = match reverse::find(p, class) {
        Ok(f) => f,
        Err(r) => return Some(Verdict::of(r)),
    };
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    if p.ttl <= 1 {
        return Some(Verdict::of(Reason::DropTtlExpired));
    }
    // A reply before the handshake completed (a refusal, a challenge): the reply program's,
    // which counts refusals (`send`).
    if e.state == State::SynSent as u8 {
        return None;
    }
    let translated = e.flags & FlowEntry::TRANSLATE != 0;
    // A PROXY flow's replies are the reply program's (acknowledgments and SACK edges mapped)
    // until the node acknowledged the header, and later those that may carry SACK blocks: the
    // entry program keeps no verifier budget for them. The rest only have their
    // acknowledgment moved back by the header's length (`send`).
    // SAFETY: a live FLOW_TABLE value (a byte: read whole).
    let bits = unsafe { core::ptr::read_volatile(&e.proxy) };
    if bits != 0
        && (bits & FlowEntry::PROXY_ACKED == 0 || e.proxy_len == 0 || !without_sack(ctx, p))
    {
        return None;
    }
    // A cookie flow's established replies are translated here; its handshake (the backend's
    // SYN-ACK, a refusal or challenge before it) is the reply program's.
    if translated {
        cookie::translate::client_view(p, e);
    }
    Some(send::<true>(ctx, p, &flow, e, None, translated))
}

/// A TCP header whose options cannot hold a SACK block: none, or timestamps alone (NOP, NOP,
/// timestamps: what Linux sends while it has nothing to report).
#[inline(always)]
fn without_sack(ctx: &XdpContext, p: &Packet) -> bool {
    match p.tcp_len() {
        20 => true,
        // SAFETY: bounds checked by ptr_at.
        32 => crate::parse::ptr_at::<[u8; 4]>(ctx, p.l4() + 20)
            .is_some_and(|o| unsafe { *o } == [1, 1, 8, 10]),
        _ => false,
    }
}

/// Every reply (the reply program): SYN-ACKs, cookie flows.
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    p: &mut Packet,
    class: AddrClass,
    opts: Option<&Options>,
) -> Verdict {
    let flow = match reverse::find(p, class) {
        Ok(f) => f,
        Err(r) => return Verdict::of(r),
    };
    if p.ttl <= 1 {
        return Verdict::of(Reason::DropTtlExpired);
    }
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    let translated = e.flags & FlowEntry::TRANSLATE != 0;
    if translated {
        if let Some(v) = cookie::handshake::reverse(ctx, p, e, opts) {
            return v;
        }
        cookie::translate::client_view(p, e);
    }
    send::<false>(ctx, p, &flow, e, opts, translated)
}

/// Tracks the reply and sends it to the client, translated back (`cookie`: a cookie flow's
/// numbering too, after the too-big check, whose error the backend must recognise).
#[inline(always)]
fn send<const INLINE: bool>(
    ctx: &XdpContext,
    p: &mut Packet,
    flow: &Flow,
    e: &mut FlowEntry,
    opts: Option<&Options>,
    cookie: bool,
) -> Verdict {
    let (handshake, syn_at) = (e.state == State::SynSent as u8, e.last_seen_ns);
    // Tracked with the acknowledgment in the client's numbering (the same number but on a
    // PROXY flow). Without a branch on the flow's kind:
    // it would double the verifier's paths through the tracker and everything after it.
    let wire_ack = p.seg.ack;
    let isn1 = if INLINE {
        // 0 but on a PROXY flow whose node acknowledged the header (`established`).
        p.seg.ack = p
            .seg
            .ack
            .wrapping_sub(lb_common::proxy::acked_shift(e.proxy, e.proxy_len));
        0
    } else {
        crate::proxy::client_view(p, e)
    };
    let accepted = conntrack::track_and_touch::<INLINE>(ctx, e, p, now_ns(), Direction::Reverse);
    if !INLINE {
        crate::proxy::after_tracking(e, isn1);
    }
    if handshake && e.state == State::Established as u8 {
        rtt::backend_answered(e, syn_at);
    }
    // The data node refused the connection (the passive health signal); its SYN is answered,
    // the budget comes back.
    if !INLINE && handshake && e.state == State::Closed as u8 {
        if lb_common::passive::is_refusal(handshake, p.seg.flags, accepted, e.state) {
            stats::backend_refused(e.backend_id as u32);
        }
        if e.flags & FlowEntry::SYN_BUDGET != 0 {
            crate::cookie::budget::refund(e);
        }
    }
    let Some(cfg) = maps::config() else {
        return Verdict::of(Reason::DropInternal);
    };
    crate::connlog::count(e, flow.slot, 1, p);
    let hop = egress::client_hop(&e.to_client);
    // An IPv6 client's packets grow by the header difference on the way out.
    let v6 = e.flags & FlowEntry::CLIENT_V6 != 0;
    let growth = if v6 { GROWTH_V4_TO_V6 as u16 } else { 0 };
    let out_len = p.ip_len.saturating_add(growth);
    let mtu = egress::iface_mtu(hop.ifindex, out_len as u32, cfg.min_mtu);
    if egress::too_big(out_len, mtu) && p.df {
        // The backend learns the path MTU toward the SNAT address it talks to.
        return icmp::too_big::send(ctx, p, mtu.saturating_sub(growth as u32), p.dst, p.src);
    }
    if cookie && cookie::translate::reverse(ctx, p, e).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    // SACK edges (the entry's segments have none: `established`); the acknowledgment goes
    // back in the rewrite.
    if !INLINE && crate::proxy::sack_to_client(ctx, p, e, isn1).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    if let Some(opts) = opts {
        clamp_synack(
            ctx,
            p,
            opts,
            cfg,
            hop.ifindex,
            growth as u32,
            lb_common::proxy::max_len(e.proxy),
        );
    }
    let ports = ports_word(e.vip_port, e.client_port);
    if v6 {
        let Some(vip) = maps::VIP_INFO.get(e.vip_id as u32) else {
            return Verdict::of(Reason::DropInternal);
        };
        if crate::v6::xlat::to_v6(ctx, p, &vip.addr.words, &e.client, ports).is_none() {
            return Verdict::of(Reason::DropMalformed);
        }
    } else {
        let to = Rewrite {
            src: e.vip_v4(),
            dst: e.client[0],
            ports,
            seq_add: 0,
            ack_add: p.seg.ack.wrapping_sub(wire_ack),
        };
        if nat::rewrite(ctx, p, &to).is_none() {
            return Verdict::of(Reason::DropInternal);
        }
    }
    let sent = if accepted {
        Reason::Reversed
    } else {
        Reason::ReversedOutOfWindow
    };
    let v = if egress::too_big(out_len, mtu) {
        Verdict::of(Reason::PassTooBig)
    } else {
        egress::transmit(ctx, &hop, p.vlan, e.client_vlan, sent)
    };
    stats::backend_out(e.backend_id as u32, p.ip_len as u64);
    v
}

/// The SYN-ACK's MSS toward the client: what the client-side interface carries.
#[inline(always)]
pub(crate) fn clamp_synack(
    ctx: &XdpContext,
    p: &Packet,
    opts: &Options,
    cfg: &lb_common::DataplaneConfig,
    ifindex: u32,
    growth: u32,
    header: u16,
) {
    // Every size is "large" here: always read the interface's MTU. An IPv6 client's segments
    // carry `growth` more header bytes than the backend's. A PROXY flow's first segment
    // carries its `header` too: the MSS is lowered by it even when clamping is off (a full
    // first segment would not fit otherwise).
    let mtu = egress::iface_mtu(ifindex, u32::MAX, 0).saturating_sub(growth);
    let limit = match mss::limit(cfg, mtu) {
        // The node's own MSS may be the smaller: the header comes off whichever holds.
        Some(l) if header != 0 => Some(l.min(opts.mss).saturating_sub(header)),
        Some(l) => Some(l),
        None if header != 0 => Some(opts.mss.saturating_sub(header)),
        None => None,
    };
    if let Some(limit) = limit {
        mss::clamp_to(ctx, p, opts, limit);
    }
}
