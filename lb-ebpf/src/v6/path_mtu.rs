//! Path-MTU errors about replies of flows with an IPv6 side, turned toward the backend (in the
//! sender program, `wklb_v6_send`): a Packet Too Big to an IPv6 VIP about a reply to an IPv6
//! client, and a fragmentation-needed to an IPv4 VIP about a reply from an IPv6 node. The
//! backend gets the error in its own family, from the SNAT address it talks to, about its own
//! packet (a header rebuilt from the flow, with the quoted sequence number), with the MTU moved
//! by the header difference when the families differ. Other ICMP errors go to the kernel.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{
    Flow4Key, Flow6Key, FlowEntry, PROTO_TCP, PROTO_UDP, Reason, icmp, ports_word, slot,
    xlat::{GROWTH_V4_TO_V6, IPV6_HDR, ipv4_header, ipv6_header},
};

use crate::{
    conntrack::{Flow, forward, now_ns},
    egress::{self, NoHop, Route},
    icmp::too_big,
    maps::{BACKENDS, FLOWS4, FLOWS6, SNAT_ADDRS},
    parse::{
        eth::{self, L2},
        load16, load32, opaque, ptr_at, store32,
    },
    verdict::Verdict,
};

/// `Deferred::icmp`: which error the main program handed over.
pub const FROM_V4: u32 = 4;
pub const FROM_V6: u32 = 6;

/// The smallest MTU an IPv4 path may report.
const MIN_MTU4: u32 = 68;

/// The quoted reply, and the flow it belongs to.
struct About {
    flow: Flow,
    /// The quoted packet's L4 length and protocol, and its first L4 bytes after the ports
    /// (the TCP sequence number), as they sit in the packet.
    l4_len: u16,
    proto: u8,
    seq: u32,
    mtu: u32,
}

/// Returns `Verdict::to_word` (out of line: see `backend::finish`).
#[inline(never)]
pub fn translate(ctx: &XdpContext, kind: u32) -> u64 {
    turn(ctx, kind)
        .unwrap_or(Verdict::of(Reason::PassIcmp))
        .to_word()
}

#[inline(always)]
fn turn(ctx: &XdpContext, kind: u32) -> Option<Verdict> {
    let (l3, vlan) = match eth::parse(ctx) {
        L2::Ipv4 { l3, vlan } | L2::Ipv6 { l3, vlan } => (l3, vlan),
        _ => return None,
    };
    let a = if kind == FROM_V6 {
        about6(ctx, l3)?
    } else {
        about4(ctx, l3)?
    };
    // SAFETY: a live FLOW_TABLE value pointer (follow checked its claim).
    let e: &FlowEntry = unsafe { &*a.flow.entry };
    let ports = ports_word(e.backend_port, slot::port_of(a.flow.slot));
    let snat = SNAT_ADDRS.get(slot::snat_index_of(a.flow.slot))?;
    let now = now_ns();
    if e.flags & FlowEntry::BACKEND_V6 != 0 {
        let b = &BACKENDS.get(e.backend_id as u32)?.addr.words;
        let s = &snat.addr.words;
        let mtu = if kind == FROM_V6 {
            a.mtu
        } else {
            a.mtu + GROWTH_V4_TO_V6 as u32
        };
        let route = Route::V6 { src: s, dst: b };
        let hop = hop(egress::backend_hop_via(
            ctx,
            e.backend_id,
            route,
            a.proto,
            now,
        ))?;
        // The backend's packet, rebuilt where the frame's IP header starts.
        fit(ctx, l3 + icmp::v6::QUOTE_LEN)?;
        let q = ptr_at::<[u8; icmp::v6::QUOTE_LEN]>(ctx, l3)? as *mut u8;
        let hdr = ipv6_header(0, a.l4_len, a.proto, icmp::TTL, b, s);
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            for (i, w) in hdr.into_iter().enumerate() {
                store32(q.add(4 * i), w);
            }
            store32(q.add(IPV6_HDR), ports);
            store32(q.add(IPV6_HDR + 4), a.seq);
        }
        too_big::frame6(ctx, l3, mtu, s, b)?;
        return Some(egress::transmit_to_backend(
            ctx,
            &hop,
            vlan,
            Reason::IcmpErrorToBackend,
        ));
    }
    if kind != FROM_V6 {
        return None;
    }
    let (s, b) = (snat.addr.v4_word_of(), e.backend);
    let mtu = a.mtu.saturating_sub(GROWTH_V4_TO_V6 as u32).max(MIN_MTU4);
    let hop = hop(egress::backend_hop(ctx, e.backend_id, s, b, a.proto, now))?;
    fit(ctx, l3 + icmp::QUOTE_LEN)?;
    let q = ptr_at::<[u8; icmp::QUOTE_LEN]>(ctx, l3)? as *mut u8;
    let hdr = ipv4_header(0, a.l4_len, icmp::TTL, a.proto, b, s);
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        for (i, w) in hdr.into_iter().enumerate() {
            store32(q.add(4 * i), w);
        }
        store32(q.add(20), ports);
        store32(q.add(24), a.seq);
    }
    too_big::frame4(ctx, l3, mtu as u16, s, b)?;
    Some(egress::transmit_to_backend(
        ctx,
        &hop,
        vlan,
        Reason::IcmpErrorToBackend,
    ))
}

#[inline(always)]
fn hop(h: Result<egress::Hop, NoHop>) -> Option<egress::Hop> {
    h.ok()
}

/// The frame made exactly `len` bytes long (a router may have quoted less than the rebuilt
/// packet's header and the error's quote take; the kernel zeroes what grows).
#[inline(always)]
fn fit(ctx: &XdpContext, len: usize) -> Option<()> {
    // Hidden from the optimiser: folded into `len - data_end + data`, the sum would be 32-bit
    // pointer arithmetic, which the verifier refuses.
    let now = opaque(ctx.data_end() - ctx.data()) as i32;
    // SAFETY: a plain helper call on our context; pointers are derived afterwards.
    (unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - now) } == 0).then_some(())
}

/// A Packet Too Big to an IPv6 VIP quoting a reply of an IPv6 client's flow.
#[inline(always)]
fn about6(ctx: &XdpContext, l3: usize) -> Option<About> {
    // Outer header, ICMPv6 header, quoted header, the quoted L4's first 8 bytes.
    let h = ptr_at::<[u8; 96]>(ctx, l3)? as *const u8;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        if *h.add(40) != icmp::v6::PACKET_TOO_BIG {
            return None;
        }
        let mtu = u32::from_be(load32(h.add(44)));
        let q = h.add(48);
        let proto = *q.add(6);
        if *q >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
            return None;
        }
        let w = |p: *const u8| {
            [
                load32(p),
                load32(p.add(4)),
                load32(p.add(8)),
                load32(p.add(12)),
            ]
        };
        let (vip, client) = (w(q.add(8)), w(q.add(24)));
        // About a packet from the address the error came to (the VIP).
        if vip != w(h.add(24)) {
            return None;
        }
        // The quoted ports are (VIP, client): the client's tuple has them the other way.
        let ports = load32(q.add(40)).rotate_left(16);
        let key = Flow6Key::from_wire(client, vip, ports, proto);
        // SAFETY: valid map value pointer.
        let flow = forward::follow(*FLOWS6.get_ptr(&key)?)?;
        Some(About {
            flow,
            l4_len: u16::from_be(load16(q.add(4))),
            proto,
            seq: load32(q.add(44)),
            mtu,
        })
    }
}

/// A fragmentation-needed to an IPv4 VIP quoting a reply of an IPv6 node's flow.
#[inline(always)]
fn about4(ctx: &XdpContext, l3: usize) -> Option<About> {
    // Outer header (no options), ICMP header, quoted header (no options), 8 bytes of L4.
    let h = ptr_at::<[u8; 56]>(ctx, l3)? as *const u8;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        if *h != 0x45 || *h.add(20) != icmp::DEST_UNREACH || *h.add(21) != icmp::FRAG_NEEDED {
            return None;
        }
        let mtu = u16::from_be(load16(h.add(26))) as u32;
        let q = h.add(28);
        let proto = *q.add(9);
        if *q != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
            return None;
        }
        let (vip, client) = (load32(q.add(12)), load32(q.add(16)));
        if vip != load32(h.add(16)) {
            return None;
        }
        let ports = load32(q.add(20)).rotate_left(16);
        let key = Flow4Key::from_wire(client, vip, ports, proto);
        // SAFETY: valid map value pointer.
        let flow = forward::follow(*FLOWS4.get_ptr(&key)?)?;
        // SAFETY: a live FLOW_TABLE value pointer.
        if (*flow.entry).flags & FlowEntry::BACKEND_V6 == 0 {
            return None;
        }
        Some(About {
            flow,
            l4_len: u16::from_be(load16(q.add(2))).checked_sub(20)?,
            proto,
            seq: load32(q.add(24)),
            mtu,
        })
    }
}
