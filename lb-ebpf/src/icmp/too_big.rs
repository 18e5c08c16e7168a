//! Fragmentation-needed from the edge itself: the packet is too big for its egress and may not
//! be fragmented. The frame becomes an ICMP error quoting its first `QUOTE_LEN` bytes and goes
//! back out of the interface it came in on (VLAN tag kept), sourced from the address the sender
//! talked to.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    PROTO_ICMP, Reason,
    csum::fold,
    icmp::{DEST_UNREACH, FRAG_NEEDED, HEADER_LEN, QUOTE_LEN, TTL},
};

use crate::{
    parse::{Packet, load16, store16, store32},
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
    match done {
        Some(()) => Verdict::tx(Reason::IcmpFragNeededSent),
        None => Verdict::of(Reason::DropInternal),
    }
}

/// `L3`: offset of the IP header (14, or 18 behind a VLAN tag).
#[inline(always)]
fn build<const L3: usize>(ctx: &XdpContext, mtu: u16, src: u32, dst: u32) -> Option<()> {
    // The frame header as it came in: MACs, and the tag if there is one.
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
    // Keep the frame header and QUOTE_LEN bytes of the IP packet, then make room in front.
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: plain helper calls on our context; pointers are re-derived afterwards.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, (L3 + QUOTE_LEN) as i32 - len) != 0 {
            return None;
        }
        if bpf_xdp_adjust_head(ctx.ctx, -(ADDED as i32)) != 0 {
            return None;
        }
    }
    let start = ctx.data();
    if start + L3 + ADDED + QUOTE_LEN > ctx.data_end() {
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
        store16(b.add(L3 - 2), 0x0800u16.to_be());
        ip_header(b.add(L3), src, dst);
        let ic = b.add(L3 + IP_LEN);
        *ic = DEST_UNREACH;
        *ic.add(1) = FRAG_NEEDED;
        store16(ic.add(2), 0);
        store16(ic.add(4), 0);
        store16(ic.add(6), mtu.to_be());
        store16(ic.add(2), checksum(ic, (HEADER_LEN + QUOTE_LEN) / 2));
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
        store16(ip.add(10), checksum(ip, IP_LEN / 2));
    }
}

/// Internet checksum of `words` 16-bit words.
///
/// # Safety
/// `p` must point at `2 * words` readable bytes.
#[inline(always)]
unsafe fn checksum(p: *const u8, words: usize) -> u16 {
    let mut sum = 0u64;
    for i in 0..words {
        // SAFETY: per the contract.
        sum += unsafe { load16(p.add(2 * i)) } as u64;
    }
    !fold(sum)
}

use crate::parse::load32;
