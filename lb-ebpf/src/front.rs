//! What every IPv4 program starts with: Ethernet (+ one tag), the IPv4 header, the
//! classification of the destination (one array read settles host traffic), then the whole
//! parse. The entry program runs it on every packet, the tail-called ones on the packet they
//! are given, except the flow program, which takes the entry's parse (`handoff`).

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrClass, Reason};

use crate::{
    classify,
    parse::{
        Packet,
        eth::{self, L2},
        ipv4::{self, Parsed},
        load32,
    },
    verdict::Verdict,
    vip,
};

/// Why the front did not yield an IPv4 packet to one of our addresses.
pub enum Stop {
    /// IPv6: the IPv6 program's.
    Ipv6,
    /// Settled here (not ours, unparsable, a fragment).
    Done(Verdict),
}

/// An IPv4 packet to one of our addresses, parsed, with the address's class.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<(Packet, AddrClass), Stop> {
    let (l3, vlan) = match eth::parse(ctx) {
        L2::Ipv4 { l3, vlan } => (l3, vlan),
        L2::Ipv6 { .. } => return Err(Stop::Ipv6),
        L2::NotIpv4 => return Err(Stop::Done(Verdict::of(Reason::PassNotIpv4))),
        L2::Truncated => return Err(Stop::Done(Verdict::of(Reason::PassUnparsable))),
    };
    let Some(ip) = ipv4::header(ctx, l3) else {
        return Err(Stop::Done(Verdict::of(Reason::PassUnparsable)));
    };
    // SAFETY: the fixed header is in bounds (ipv4::header).
    let dst = unsafe { load32((&raw const (*ip).dst_addr).cast()) };
    let Some(class) = classify::lookup(dst) else {
        return Err(Stop::Done(Verdict::of(Reason::PassNotOurs)));
    };
    let vip_addr = class.flags & AddrClass::VIP != 0;
    match ipv4::parse(ctx, l3, vlan, ip) {
        Parsed::Ok(p) => Ok((p, class)),
        Parsed::Malformed if vip_addr => Err(Stop::Done(Verdict::of(Reason::DropMalformed))),
        Parsed::Malformed => Err(Stop::Done(Verdict::of(Reason::PassUnparsable))),
        Parsed::Fragment {
            first,
            proto,
            ports,
        } => Err(Stop::Done(vip::fragment(dst, class, first, proto, ports))),
    }
}
