//! IPv6 packets to our addresses. IPv6 clients of IPv6 VIPs: classify the destination
//! (`ADDRS6`), parse, find or create the flow (`flows`), then translate to an IPv4 backend
//! through an IPv4 SNAT address (`xlat`; its replies are translated in `to_client`) or rewrite
//! toward an IPv6 backend (`backend`). Established TCP segments take the same `forward` in the
//! entry program (`established`); the rest in the IPv6 program (`handle`). Replies of IPv6
//! backends to IPv6 SNAT addresses go back through `backend::reply`. Echo requests to a VIP are
//! answered (`icmp::echo`); other ICMPv6 (neighbour discovery included) and everything not ours
//! go to the kernel.

pub mod backend;
pub mod flows;
pub mod path_mtu;
pub mod xlat;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, FlowEntry, Reason,
    conntrack::{is_bad_syn, tcp_flags},
    ports_word, slot,
    xlat::GROWTH_V4_TO_V6,
};

use crate::{
    conntrack::{Flow, now_ns},
    egress::{self, NoHop},
    maps::SNAT_ADDRS,
    parse::{
        self, Packet,
        ipv6::{self, Addrs6, Parsed6},
    },
    stats,
    verdict::Verdict,
};
use flows::Found6;

/// Whether the IPv6 source is one of our addresses: read in the packet (no copy on a stack
/// with no room left), one filter read.
#[inline(always)]
fn from_our_address(ctx: &XdpContext, l3: usize) -> bool {
    // SAFETY: bounds checked by ptr_at.
    crate::parse::ptr_at::<[u32; 4]>(ctx, l3 + 8)
        .is_some_and(|src| crate::classify::lookup6(unsafe { &*src }).is_some())
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, l3: usize, vlan: u16) -> Verdict {
    let Some(dst) = ipv6::destination(ctx, l3) else {
        return Verdict::of(Reason::PassUnparsable);
    };
    let Some(class) = crate::classify::lookup6(&dst) else {
        return Verdict::of(Reason::PassNotIpv4);
    };
    let vip_addr = class.flags & AddrClass::VIP != 0;
    let (mut p, a) = match ipv6::parse(ctx, l3, vlan) {
        Parsed6::Ok(p, a) => (p, a),
        // Nothing of ours sends ICMPv6 to a VIP: an echo would be answered to ourselves.
        Parsed6::Icmp if vip_addr && from_our_address(ctx, l3) => {
            return Verdict::of(Reason::DropOwnSource);
        }
        Parsed6::Icmp if vip_addr => {
            // A Packet Too Big about a reply: the sender program turns it toward the backend.
            return match crate::parse::ptr_at::<u8>(ctx, l3 + ipv6::HDR_LEN) {
                // SAFETY: bounds checked by ptr_at.
                Some(t) if unsafe { *t } == lb_common::icmp::v6::PACKET_TOO_BIG => {
                    backend::defer_icmp(path_mtu::FROM_V6)
                }
                _ => crate::icmp::echo::reply6(ctx, l3),
            };
        }
        Parsed6::Icmp => return Verdict::of(Reason::PassIcmp),
        Parsed6::Fragment if vip_addr => return Verdict::of(Reason::DropFragment),
        // Extension headers and other protocols to a VIP: not a client of ours.
        Parsed6::Other | Parsed6::Malformed if vip_addr => {
            return Verdict::of(Reason::DropMalformed);
        }
        // To a SNAT address only: what the edge does not translate is the kernel's.
        _ => return Verdict::of(Reason::PassUnparsable),
    };
    // A packet that may start a flow (a SYN, any UDP datagram) from one of our own addresses:
    // no flow can have such a client, as for IPv4.
    if vip_addr && (!p.is_tcp() || p.seg.flags & tcp_flags::SYN != 0) && from_our_address(ctx, l3) {
        return Verdict::of(Reason::DropOwnSource);
    }
    let opts = if p.seg.flags & tcp_flags::SYN != 0 {
        parse::tcp::syn_options(ctx, &mut p)
    } else {
        None
    };
    if !vip_addr {
        // Replies of IPv6 backends: handled in the sender program too (`backend::finish`).
        return backend::defer_reply(class);
    }
    let flow =
        match flows::find_or_create(ctx, &p, &a, class.flags & AddrClass::any_port_bit(p.proto)) {
            Found6::Flow(f) => f,
            Found6::NotVip => return Verdict::of(Reason::PassNotOurs),
            Found6::Refused(r, vip_id) => {
                if r == Reason::DropNoBackend {
                    stats::vip_no_backend(vip_id);
                }
                return Verdict::of(r);
            }
        };
    if p.is_tcp() && is_bad_syn(p.seg.flags) {
        return Verdict::of(Reason::DropBadTcpFlags);
    }
    // The client's SYN again while the backend has not answered (`track_client` counts the
    // IPv4 clients').
    // SAFETY: a live FLOW_TABLE value pointer (`state` is a byte: read whole).
    if !flow.new
        && lb_common::passive::is_syn_retransmit(unsafe { &*flow.entry }, p.seg.seq, p.seg.flags)
    {
        stats::backend_syn_retransmit(unsafe { (*flow.entry).backend_id } as u32);
    }
    forward(ctx, &p, &a, flow, opts)
}

/// The established path of an IPv6 client's TCP flow, in the entry program (`class`: the VIP
/// address's): not a SYN, a flow found (its hint, or FLOWS6) and sent on; without a flow,
/// refused statelessly. None: the IPv6 program's (`handle`), which parses again.
#[inline(always)]
pub fn established(ctx: &XdpContext, l3: usize, vlan: u16, class: AddrClass) -> Option<Verdict> {
    let Parsed6::Ok(p, a) = ipv6::parse(ctx, l3, vlan) else {
        return None;
    };
    if !p.is_tcp() || p.seg.flags & tcp_flags::SYN != 0 {
        return None;
    }
    let key = lb_common::Flow6Key::from_wire(a.src, a.dst, p.ports, p.proto);
    let Some(flow) = flows::lookup_hinted(&key) else {
        let any_port = class.flags & AddrClass::any_port_bit(p.proto);
        return Some(flows::without_flow(&p, &a, any_port));
    };
    Some(forward(ctx, &p, &a, flow, None))
}

/// An IPv6 client's packet of `flow` (found or just created) toward its backend: tracking,
/// then the translation to an IPv4 backend here or the send to an IPv6 one deferred.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    mut flow: Flow,
    opts: Option<&lb_common::tcp_opts::Options>,
) -> Verdict {
    if p.ttl <= 1 {
        return Verdict::of(Reason::DropTtlExpired);
    }
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    let now = now_ns();
    if !flow.new {
        crate::to_backend::track_client::<true>(ctx, p, &mut flow, e, now);
    }
    if e.flags & FlowEntry::BACKEND_V6 != 0 {
        return backend::defer(&flow, opts);
    }
    let Some(snat) = SNAT_ADDRS.get(slot::snat_index_of(flow.slot)) else {
        return Verdict::of(Reason::DropInternal);
    };
    let snat = snat.addr.v4_word_of();
    let hop = match egress::backend_hop(ctx, e.backend_id, snat, e.backend, p.proto, now) {
        Ok(h) => Some(h),
        Err(NoHop::Neighbor) => None,
        Err(NoHop::Failed) => return Verdict::of(Reason::DropFibFailed),
    };
    // 20 bytes shorter on the IPv4 side: too big only behind a smaller backend-side MTU. The
    // Packet Too Big goes out from the sender program (`backend::finish`).
    let mtu = hop.map_or(0, |h| h.mtu);
    if egress::too_big(p.ip_len - GROWTH_V4_TO_V6 as u16, mtu) {
        return backend::defer(&flow, None);
    }
    if p.is_tcp()
        && p.seg.flags & tcp_flags::SYN != 0
        && let Some(cfg) = crate::maps::config()
        && let Some(limit) = crate::mss::limit(cfg, mtu)
        && let Some(opts) = opts
    {
        crate::mss::clamp_to(ctx, p, opts, limit);
    }
    let ports = ports_word(slot::port_of(flow.slot), e.backend_port);
    if xlat::to_v4(ctx, p, a, snat, e.backend, ports).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    let len = p.ip_len as u64 - 20;
    let sent = if flow.accepted {
        Reason::Forwarded
    } else {
        Reason::ForwardedOutOfWindow
    };
    let v = match hop {
        Some(h) => egress::transmit_to_backend(ctx, &h, p.vlan, sent),
        None => Verdict::of(Reason::PassNoNeighbor),
    };
    stats::vip(e.vip_id as u32, len, flow.new);
    stats::backend_in(e.backend_id as u32, len, flow.new);
    v
}
