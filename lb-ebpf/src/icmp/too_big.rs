//! Fragmentation-needed (or, for IPv6, Packet Too Big) from the edge itself: the packet is too
//! big for its egress and may not be fragmented. The frame becomes an ICMP error quoting its
//! first bytes and goes back out of the interface it came in on (VLAN tag kept), sourced from
//! the address the sender talked to.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    PROTO_ICMP, Reason,
    csum::fold,
    icmp::{DEST_UNREACH, FRAG_NEEDED, HEADER_LEN, QUOTE_LEN, TTL, v6 as icmp6},
    xlat,
};

use crate::{
    parse::{Packet, load16, load32, store16, store32},
    verdict::Verdict,
};

const IP_LEN: usize = 20;
/// Bytes put in front of the quoted packet: a new IP header and the ICMP header.
const ADDED: usize = IP_LEN + HEADER_LEN;

/// Sends fragmentation-needed (next-hop `mtu`) from `src` to `dst` in place of the packet.
#[inline(always)]
pub fn send(ctx: &XdpContext, p: &Packet, mtu: u32, src: u32, dst: u32) -> Verdict {
    if (p.ip_len as usize) < QUOTE_LEN {
        return Verdict::of(Reason::DropTooBig);
    }
    let done = if p.l3() == 14 {
        build::<14>(ctx, mtu as u16, src, dst)
    } else {
        build::<18>(ctx, mtu as u16, src, dst)
    };
    verdict(done)
}

/// Sends an ICMPv6 Packet Too Big (`mtu`) from `src` to `dst` in place of the IPv6 packet (or
/// of the IPv4 packet an IPv6 one was translated from: `p` is what the frame holds now).
#[inline(always)]
pub fn send6(ctx: &XdpContext, p: &Packet, mtu: u32, src: &[u32; 4], dst: &[u32; 4]) -> Verdict {
    if (p.ip_len as usize) < icmp6::QUOTE_LEN {
        return Verdict::of(Reason::DropTooBig);
    }
    let done = if p.l3() == 14 {
        build6::<14>(ctx, mtu, src, dst)
    } else {
        build6::<18>(ctx, mtu, src, dst)
    };
    verdict(done)
}

/// The frame becomes fragmentation-needed (`mtu`) from `src` to `dst`, quoting what it holds
/// at `l3` (which must be at least `QUOTE_LEN` bytes); sending it is the caller's.
#[inline(always)]
pub fn frame4(ctx: &XdpContext, l3: usize, mtu: u16, src: u32, dst: u32) -> Option<()> {
    if l3 == 14 {
        build::<14>(ctx, mtu, src, dst)
    } else {
        build::<18>(ctx, mtu, src, dst)
    }
}

/// The same as a Packet Too Big (quoting `icmp6::QUOTE_LEN` bytes).
#[inline(always)]
pub fn frame6(ctx: &XdpContext, l3: usize, mtu: u32, src: &[u32; 4], dst: &[u32; 4]) -> Option<()> {
    if l3 == 14 {
        build6::<14>(ctx, mtu, src, dst)
    } else {
        build6::<18>(ctx, mtu, src, dst)
    }
}

#[inline(always)]
fn verdict(done: Option<()>) -> Verdict {
    match done {
        Some(()) => Verdict::tx(Reason::IcmpFragNeededSent),
        None => Verdict::of(Reason::DropInternal),
    }
}

/// Cuts the frame to its header and `quote` bytes of the packet, makes `added` bytes of room
/// for the new headers, and writes the frame header back toward the sender (MACs swapped, the
/// VLAN tag kept, `ether_type`). `L3`: offset of the IP header (14, or 18 behind a tag).
#[inline(always)]
fn reframe<const L3: usize>(
    ctx: &XdpContext,
    quote: usize,
    added: usize,
    ether_type: u16,
) -> Option<*mut u8> {
    let start = ctx.data();
    if start + 18 > ctx.data_end() {
        return None;
    }
    let h = start as *const u16;
    // SAFETY: 18 bytes are in bounds (checked above).
    let (macs, tag) = unsafe {
        (
            [*h, *h.add(1), *h.add(2), *h.add(3), *h.add(4), *h.add(5)],
            load32(h.add(6).cast()),
        )
    };
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: plain helper calls on our context; pointers are re-derived afterwards.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, (L3 + quote) as i32 - len) != 0 {
            return None;
        }
        if bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) != 0 {
            return None;
        }
    }
    let start = ctx.data();
    if start + L3 + added + quote > ctx.data_end() {
        return None;
    }
    let b = start as *mut u8;
    // SAFETY: the whole new frame is in bounds (checked above); offsets are constants.
    unsafe {
        let e = b as *mut u16;
        for (i, m) in [macs[3], macs[4], macs[5], macs[0], macs[1], macs[2]]
            .into_iter()
            .enumerate()
        {
            *e.add(i) = m;
        }
        if L3 == 18 {
            store32(b.add(12), tag);
        }
        store16(b.add(L3 - 2), ether_type.to_be());
    }
    Some(b)
}

#[inline(always)]
fn build<const L3: usize>(ctx: &XdpContext, mtu: u16, src: u32, dst: u32) -> Option<()> {
    let b = reframe::<L3>(ctx, QUOTE_LEN, ADDED, 0x0800)?;
    // SAFETY: reframe checked the whole new frame; offsets are constants.
    unsafe {
        ip_header(b.add(L3), src, dst);
        let ic = b.add(L3 + IP_LEN);
        *ic = DEST_UNREACH;
        *ic.add(1) = FRAG_NEEDED;
        store16(ic.add(2), 0);
        store16(ic.add(4), 0);
        store16(ic.add(6), mtu.to_be());
        store16(ic.add(2), !fold(sum16(ic, (HEADER_LEN + QUOTE_LEN) / 2)));
    }
    Some(())
}

const ADDED6: usize = xlat::IPV6_HDR + HEADER_LEN;

#[inline(always)]
fn build6<const L3: usize>(
    ctx: &XdpContext,
    mtu: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> Option<()> {
    // Copied before the frame changes: the addresses may point into it.
    let (src, dst) = (*src, *dst);
    let b = reframe::<L3>(ctx, icmp6::QUOTE_LEN, ADDED6, 0x86dd)?;
    let len = (HEADER_LEN + icmp6::QUOTE_LEN) as u32;
    let hdr = xlat::ipv6_header(0, len as u16, icmp6::NEXT_HEADER, TTL, &src, &dst);
    let mut pseudo = icmp6::pseudo_tail_sum(len);
    for w in src.into_iter().chain(dst) {
        pseudo += (w & 0xffff) as u64 + (w >> 16) as u64;
    }
    // SAFETY: reframe checked the whole new frame; offsets are constants.
    unsafe {
        let ip = b.add(L3);
        for (i, w) in hdr.into_iter().enumerate() {
            store32(ip.add(4 * i), w);
        }
        let ic = ip.add(xlat::IPV6_HDR);
        *ic = icmp6::PACKET_TOO_BIG;
        *ic.add(1) = 0;
        store16(ic.add(2), 0);
        store32(ic.add(4), mtu.to_be());
        let sum = pseudo + sum16(ic, len as usize / 2);
        store16(ic.add(2), !fold(sum));
    }
    Some(())
}

/// A fresh IPv4 header for the error.
///
/// # Safety
/// `ip` must point at 20 writable bytes.
#[inline(always)]
unsafe fn ip_header(ip: *mut u8, src: u32, dst: u32) {
    // SAFETY: per the contract.
    unsafe {
        *ip = 0x45;
        *ip.add(1) = 0;
        store16(ip.add(2), ((ADDED + QUOTE_LEN) as u16).to_be());
        store32(ip.add(4), 0);
        *ip.add(8) = TTL;
        *ip.add(9) = PROTO_ICMP;
        store16(ip.add(10), 0);
        store32(ip.add(12), src);
        store32(ip.add(16), dst);
        store16(ip.add(10), !fold(sum16(ip, IP_LEN / 2)));
    }
}

/// The 16-bit ones'-complement sum (unfolded) of `words` native 16-bit words.
///
/// # Safety
/// `p` must point at `2 * words` readable bytes.
#[inline(always)]
unsafe fn sum16(p: *const u8, words: usize) -> u64 {
    let mut sum = 0u64;
    for i in 0..words {
        // SAFETY: per the contract.
        sum += unsafe { load16(p.add(2 * i)) } as u64;
    }
    sum
}
