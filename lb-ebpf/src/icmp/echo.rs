//! Echo requests to a VIP address (ICMP and ICMPv6), answered in place: addresses and MACs
//! swapped, type echo reply.

use aya_ebpf::programs::XdpContext;
use lb_common::{DataplaneConfig, Reason, csum::CsumDelta, icmp, xlat};

use crate::{
    nat::{CHECK, DST, SRC, TTL},
    parse::{Packet, load16, load32, ptr_at, store16, store32},
    verdict::Verdict,
};

#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Packet) -> Verdict {
    match swap(ctx, p) {
        Some(()) => Verdict::tx(Reason::IcmpEchoReplied),
        None => Verdict::of(Reason::PassIcmp),
    }
}

#[inline(always)]
fn swap(ctx: &XdpContext, p: &Packet) -> Option<()> {
    let ip = ptr_at::<[u8; 20]>(ctx, p.l3())? as *mut u8;
    let ic = ptr_at::<[u8; 4]>(ctx, p.l4())? as *mut u8;
    let eth = ptr_at::<[u16; 6]>(ctx, 0)? as *mut u16;
    // SAFETY: all three bounds checked by ptr_at.
    unsafe {
        // Swapping the addresses leaves the IP checksum as it is; a fresh TTL does not.
        let old_ttl = load16(ip.add(TTL));
        *ip.add(TTL) = icmp::TTL;
        let new_ttl = load16(ip.add(TTL));
        let c = load16(ip.add(CHECK));
        store16(
            ip.add(CHECK),
            CsumDelta::new().replace16(old_ttl, new_ttl).apply(c),
        );
        store32(ip.add(SRC), p.dst);
        store32(ip.add(DST), p.src);
        set_type(ic, icmp::ECHO_REPLY);
        swap_macs(eth);
    }
    Some(())
}

/// An ICMPv6 message to an IPv6 VIP (header at `l3`): an echo request is answered when echo
/// replies are on; anything else (errors, neighbour discovery) is the kernel's.
#[inline(always)]
pub fn reply6(ctx: &XdpContext, l3: usize) -> Verdict {
    if !crate::maps::config().is_some_and(|c| c.flags & DataplaneConfig::ECHO_REPLY != 0) {
        return Verdict::of(Reason::PassIcmp);
    }
    match swap6(ctx, l3) {
        Some(()) => Verdict::tx(Reason::IcmpEchoReplied),
        None => Verdict::of(Reason::PassIcmp),
    }
}

#[inline(always)]
fn swap6(ctx: &XdpContext, l3: usize) -> Option<()> {
    let ip = ptr_at::<[u32; 10]>(ctx, l3)? as *mut u8;
    let ic = ptr_at::<[u8; 8]>(ctx, l3 + xlat::IPV6_HDR)? as *mut u8;
    let eth = ptr_at::<[u16; 6]>(ctx, 0)? as *mut u16;
    // SAFETY: all three bounds checked by ptr_at.
    unsafe {
        if *ic != icmp::v6::ECHO_REQUEST || *ic.add(1) != 0 {
            return None;
        }
        // The pseudo-header's addresses only trade places: the checksum changes by the type.
        set_type(ic, icmp::v6::ECHO_REPLY);
        *ip.add(7) = icmp::TTL;
        for i in 0..4 {
            let (s, d) = (ip.add(8 + 4 * i), ip.add(24 + 4 * i));
            let w = load32(s);
            store32(s, load32(d));
            store32(d, w);
        }
        swap_macs(eth);
    }
    Some(())
}

/// Sets the ICMP message's type, fixing its checksum.
///
/// # Safety
/// `ic` must point at the message's first 4 bytes.
#[inline(always)]
unsafe fn set_type(ic: *mut u8, new: u8) {
    // SAFETY: per the contract.
    unsafe {
        let old_word = load16(ic);
        *ic = new;
        let new_word = load16(ic);
        let c = load16(ic.add(2));
        store16(
            ic.add(2),
            CsumDelta::new().replace16(old_word, new_word).apply(c),
        );
    }
}

/// Sends the frame back where it came from.
///
/// # Safety
/// `eth` must point at the frame's 12 bytes of MAC addresses.
#[inline(always)]
unsafe fn swap_macs(eth: *mut u16) {
    // SAFETY: per the contract.
    unsafe {
        let (d0, d1, d2) = (*eth, *eth.add(1), *eth.add(2));
        *eth = *eth.add(3);
        *eth.add(1) = *eth.add(4);
        *eth.add(2) = *eth.add(5);
        *eth.add(3) = d0;
        *eth.add(4) = d1;
        *eth.add(5) = d2;
    }
}
