//! Header translation in place (`lb_common::xlat` builds the headers and checksum deltas):
//! IPv6 → IPv4 toward an IPv4 backend (the frame loses 20 bytes), IPv4 → IPv6 for the
//! backend's replies to an IPv6 client (the frame gains 20), and the same the other way for
//! IPv6 backends; IPv6 to IPv6 keeps the frame and rewrites the addresses. The Ethernet header
//! and its tag move with the head; only the EtherType changes. Every packet pointer is stale
//! afterwards.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    PROTO_TCP, PROTO_UDP,
    csum::CsumDelta,
    xlat::{
        GROWTH_V4_TO_V6, IPV4_HDR, ipv4_header, ipv6_first_words, pseudo_v4_to_v6, pseudo_v6_to_v4,
        pseudo_v6_to_v6, traffic_class,
    },
};

use crate::{
    nat::{TCP_CSUM, UDP_CSUM},
    parse::{Packet, ipv6::Addrs6, ptr_at, store16, store32},
};

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

/// An IPv6 client's packet becomes the IPv4 packet `snat` → `backend` with `ports`.
#[inline(always)]
pub fn to_v4(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    snat: u32,
    backend: u32,
    ports: u32,
) -> Option<()> {
    let csum_at = csum_offset(p.proto)?;
    let old = ptr_at::<u16>(ctx, p.l4() + csum_at)?;
    // SAFETY: bounds checked by ptr_at.
    let c = apply(
        pseudo_v6_to_v4(&a.src, &a.dst, snat, backend).replace32(p.ports, ports),
        unsafe { *old },
        p.proto,
    );
    // Extension headers walked by the parser go with the IPv6 header.
    let ext = (p.l4() - p.l3() - 40) & 255;
    let payload = p.ip_len.checked_sub((40 + ext) as u16)?;
    let l2 = l2_words(ctx)?;
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (GROWTH_V4_TO_V6 + ext) as i32) } != 0 {
        return None;
    }
    write_l2(ctx, &l2, p.vlan != 0, ETH_P_IPV4)?;
    // Built after the move, so nothing of it lives across the helper call.
    let hdr = ipv4_header(
        traffic_class(a.word0),
        payload,
        p.ttl - 1,
        p.proto,
        snat,
        backend,
    );
    let l3 = p.l3();
    let ip = ptr_at::<[u32; 5]>(ctx, l3)? as *mut u8;
    let l4 = ptr_at::<[u8; 8]>(ctx, l3 + IPV4_HDR)? as *mut u8;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        store32(ip, hdr[0]);
        store32(ip.add(4), hdr[1]);
        store32(ip.add(8), hdr[2]);
        store32(ip.add(12), hdr[3]);
        store32(ip.add(16), hdr[4]);
        store32(l4, ports);
    }
    store_csum(ctx, l3 + IPV4_HDR + csum_at, c)
}

/// The backend's IPv4 reply becomes the IPv6 packet `vip` → `client` with `ports`. None when
/// it cannot be translated: IPv4 options, or a UDP datagram without a checksum (mandatory in
/// IPv6 and not derivable incrementally).
#[inline(always)]
pub fn to_v6(
    ctx: &XdpContext,
    p: &Packet,
    vip: &[u32; 4],
    client: &[u32; 4],
    ports: u32,
) -> Option<()> {
    if p.l4() != p.l3() + IPV4_HDR {
        return None;
    }
    let csum_at = csum_offset(p.proto)?;
    let old = ptr_at::<u16>(ctx, p.l4() + csum_at)?;
    // SAFETY: bounds checked by ptr_at.
    let c = unsafe { *old };
    if p.proto == PROTO_UDP && c == 0 {
        return None;
    }
    let c = apply(
        pseudo_v4_to_v6(p.src, p.dst, vip, client).replace32(p.ports, ports),
        c,
        p.proto,
    );
    let tos = ptr_at::<[u8; 2]>(ctx, p.l3())?;
    // SAFETY: bounds checked by ptr_at.
    let tos = unsafe { (*tos)[1] };
    let payload = p.ip_len.checked_sub(IPV4_HDR as u16)?;
    let l2 = l2_words(ctx)?;
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH_V4_TO_V6 as i32)) } != 0 {
        return None;
    }
    write_l2(ctx, &l2, p.vlan != 0, ETH_P_IPV6)?;
    let [w0, w1] = ipv6_first_words(tos, payload, p.proto, p.ttl - 1);
    let l3 = p.l3();
    let ip = ptr_at::<[u32; 10]>(ctx, l3)? as *mut u8;
    let l4 = ptr_at::<[u8; 8]>(ctx, l3 + 40)? as *mut u8;
    // SAFETY: bounds checked by ptr_at; `vip` and `client` are map values.
    unsafe {
        store32(ip, w0);
        store32(ip.add(4), w1);
        store32(ip.add(8), vip[0]);
        store32(ip.add(12), vip[1]);
        store32(ip.add(16), vip[2]);
        store32(ip.add(20), vip[3]);
        store32(ip.add(24), client[0]);
        store32(ip.add(28), client[1]);
        store32(ip.add(32), client[2]);
        store32(ip.add(36), client[3]);
        store32(l4, ports);
    }
    store_csum(ctx, l3 + 40 + csum_at, c)
}

/// An IPv6 packet's addresses become `src` → `dst` with `ports`, hop limit one less, in place
/// (IPv6 client to IPv6 backend, and back).
#[inline(always)]
pub fn rewrite_v6(
    ctx: &XdpContext,
    p: &Packet,
    a: &Addrs6,
    src: &[u32; 4],
    dst: &[u32; 4],
    ports: u32,
) -> Option<()> {
    let csum_at = csum_offset(p.proto)?;
    let old = ptr_at::<u16>(ctx, p.l4() + csum_at)?;
    // SAFETY: bounds checked by ptr_at.
    let c = apply(
        pseudo_v6_to_v6(&a.src, &a.dst, src, dst).replace32(p.ports, ports),
        unsafe { *old },
        p.proto,
    );
    let l3 = p.l3();
    let ip = ptr_at::<[u32; 10]>(ctx, l3)? as *mut u8;
    let l4 = ptr_at::<[u8; 8]>(ctx, p.l4())? as *mut u8;
    // SAFETY: bounds checked by ptr_at; `src` and `dst` are map values or stack copies.
    unsafe {
        *ip.add(7) = p.ttl - 1;
        store32(ip.add(8), src[0]);
        store32(ip.add(12), src[1]);
        store32(ip.add(16), src[2]);
        store32(ip.add(20), src[3]);
        store32(ip.add(24), dst[0]);
        store32(ip.add(28), dst[1]);
        store32(ip.add(32), dst[2]);
        store32(ip.add(36), dst[3]);
        store32(l4, ports);
    }
    store_csum(ctx, p.l4() + csum_at, c)
}

#[inline(always)]
fn csum_offset(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(TCP_CSUM),
        PROTO_UDP => Some(UDP_CSUM),
        _ => None,
    }
}

#[inline(always)]
fn apply(delta: CsumDelta, c: u16, proto: u8) -> u16 {
    if proto == PROTO_UDP {
        delta.apply_udp(c)
    } else {
        delta.apply(c)
    }
}

#[inline(always)]
fn store_csum(ctx: &XdpContext, at: usize, c: u16) -> Option<()> {
    let p = ptr_at::<u16>(ctx, at)? as *mut u8;
    // SAFETY: bounds checked by ptr_at.
    unsafe { store16(p, c) };
    Some(())
}

/// The first 16 bytes of the frame: MACs, then the tag or the EtherType.
#[inline(always)]
fn l2_words(ctx: &XdpContext) -> Option<[u32; 4]> {
    let w = ptr_at::<[u32; 4]>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { *w })
}

/// Writes the MACs (and the tag) back at the new head, then `ether_type`.
#[inline(always)]
fn write_l2(ctx: &XdpContext, l2: &[u32; 4], tagged: bool, ether_type: [u8; 2]) -> Option<()> {
    let h = ptr_at::<[u32; 5]>(ctx, 0)? as *mut u8;
    // SAFETY: bounds checked by ptr_at (20 bytes; the IP header follows at 14 or 18).
    unsafe {
        store32(h, l2[0]);
        store32(h.add(4), l2[1]);
        store32(h.add(8), l2[2]);
        if tagged {
            store32(h.add(12), l2[3]);
            store16(h.add(16), u16::from_ne_bytes(ether_type));
        } else {
            store16(h.add(12), u16::from_ne_bytes(ether_type));
        }
    }
    Some(())
}
