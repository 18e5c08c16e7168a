//! Echo requests to a VIP address, answered in place: addresses and MACs swapped, type 0.

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, csum::CsumDelta, icmp};

use crate::{
    nat::{CHECK, DST, SRC, TTL},
    parse::{Packet, load16, ptr_at, store16, store32},
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
        let old_type = load16(ic);
        *ic = icmp::ECHO_REPLY;
        let new_type = load16(ic);
        let c = load16(ic.add(2));
        store16(
            ic.add(2),
            CsumDelta::new().replace16(old_type, new_type).apply(c),
        );
        let (d0, d1, d2) = (*eth, *eth.add(1), *eth.add(2));
        *eth = *eth.add(3);
        *eth.add(1) = *eth.add(4);
        *eth.add(2) = *eth.add(5);
        *eth.add(3) = d0;
        *eth.add(4) = d1;
        *eth.add(5) = d2;
    }
    Some(())
}
