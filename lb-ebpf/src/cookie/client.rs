//! The cookie program (`wklb_cookie`): client → VIP packets of SYN cookies. A SYN the flow
//! program admitted, counted and found in cookie mode is answered with a cookie SYN-ACK; a
//! client ACK without a flow creates the flow when its cookie checks out; a cookie flow's
//! segments become the SYN to its backend until the backend answers, then are translated.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, Flow4Key, FlowEntry, Reason,
    conntrack::{Direction, State, is_initial_syn, tcp_flags},
    ports_of,
    tcp_opts::Options,
};

use crate::{
    conntrack::{
        self, Flow,
        forward::{self, Found},
        now_ns,
    },
    handoff::{self, Told},
    maps,
    parse::Packet,
    stats, to_backend,
    verdict::Verdict,
    vip,
};

#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    p: &mut Packet,
    class: AddrClass,
    opts: Option<&Options>,
    key: &Flow4Key,
    told: Told,
) -> Verdict {
    if !p.is_tcp() {
        return Verdict::of(Reason::DropInternal);
    }
    let syn = is_initial_syn(p.seg.flags);
    // A cookie flow's segment (the common case) needs no VIP lookup.
    let found = if syn || told.has(handoff::NO_FLOW) {
        None
    } else {
        forward::lookup_hinted(key)
    };
    let mut flow = match found {
        Some(f) => f,
        None => match from_vip(ctx, p, key, class, opts, syn, told) {
            Ok(f) => f,
            Err(v) => return v,
        },
    };
    if p.ttl <= 1 {
        return Verdict::of(Reason::DropTtlExpired);
    }
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    let now = now_ns();
    if e.flags & FlowEntry::TRANSLATE == 0 {
        // A plain flow created meanwhile on another CPU: sent as the flow program would.
        if !flow.new {
            to_backend::track_client::<false>(ctx, p, &mut flow, e, now);
        }
        return to_backend::send::<{ to_backend::mode::ESTABLISHED }>(
            ctx, p, &flow, e, None, now, false,
        );
    }
    cookie_flow(ctx, p, &mut flow, e, opts, now)
}

/// No flow yet: a SYN to answer with a cookie, or an ACK whose cookie may create the flow.
/// Err: the verdict for the packet.
#[inline(always)]
fn from_vip(
    ctx: &XdpContext,
    p: &mut Packet,
    key: &Flow4Key,
    class: AddrClass,
    opts: Option<&Options>,
    syn: bool,
    told: Told,
) -> Result<Flow, Verdict> {
    let Some(cfg) = maps::config() else {
        return Err(Verdict::of(Reason::DropInternal));
    };
    let (_, dport) = ports_of(p.ports);
    let vip = if told.has(handoff::VIP) {
        told.vip
    } else {
        match vip::lookup(p.dst, dport, p.proto, class) {
            Some(v) => v,
            None => return Err(Verdict::of(Reason::PassNotOurs)),
        }
    };
    if syn {
        // The flow program decided: cookie mode, no flow to follow.
        return Err(super::syn::answer(ctx, p, vip, opts, cfg, now_ns()));
    }
    Ok(match forward::from_cookie(ctx, p, key, &vip, cfg) {
        Found::Flow(f) => f,
        Found::Refused(reason, vip_id) => {
            if reason == Reason::DropNoBackend {
                stats::vip_no_backend(vip_id);
            }
            return Err(Verdict::of(reason));
        }
        Found::NotVip | Found::Cookie | Found::CookieSyn(..) => {
            return Err(Verdict::of(Reason::DropInternal));
        }
    })
}

/// A flow the edge answered itself: the SYN to the backend until it answers, then translated.
#[inline(always)]
fn cookie_flow(
    ctx: &XdpContext,
    p: &mut Packet,
    flow: &mut Flow,
    e: &mut FlowEntry,
    opts: Option<&Options>,
    now: u64,
) -> Verdict {
    let pending = e.state == State::SynSent as u8;
    if pending && p.seg.flags & tcp_flags::RST == 0 {
        return match maps::config() {
            Some(cfg) => super::backend_syn::send(ctx, p, flow, e, cfg, now),
            None => Verdict::of(Reason::DropInternal),
        };
    }
    if !flow.new {
        flow.accepted = conntrack::track_and_touch::<false>(ctx, e, p, now, Direction::Forward);
    }
    // A RST before the backend answered needs no translation (it acknowledges nothing).
    to_backend::send::<{ to_backend::mode::ESTABLISHED }>(ctx, p, flow, e, opts, now, !pending)
}
