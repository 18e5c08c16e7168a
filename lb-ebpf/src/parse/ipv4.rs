//! IPv4 of any header length, then the L4 header: TCP and UDP ports, TCP segment fields, or an
//! ICMP header. Fragments are reported with what can be known of them.

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, conntrack::Segment};
use network_types::ip::Ipv4Hdr;

use super::{Packet, load32, opaque, ptr_at, tcp};

/// The fixed part of the header, enough to classify the destination.
#[inline(always)]
pub fn header(ctx: &XdpContext, l3: usize) -> Option<*mut Ipv4Hdr> {
    ptr_at::<Ipv4Hdr>(ctx, l3)
}

/// What the L3/L4 parse found.
pub enum Parsed {
    Ok(Packet),
    /// IHL < 5, wrong version, or the L4 header is cut short.
    Malformed,
    /// A fragment. A first fragment carries the ports when its L4 header is complete.
    Fragment {
        first: bool,
        proto: u8,
        ports: u32,
    },
}

/// Flags and fragment offset field: more-fragments and a non-zero offset.
const MF_OR_OFFSET: u16 = 0x3fff;
const OFFSET: u16 = 0x1fff;
const DF: u16 = 0x4000;
/// Bytes of the L4 header the data path reads: TCP's fixed header, else 8.
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_LEN: usize = 8;

#[inline(always)]
pub fn parse(ctx: &XdpContext, l3: usize, vlan: u16, ip: *mut Ipv4Hdr) -> Parsed {
    // SAFETY: the caller obtained `ip` from `header`, so the fixed header is in bounds.
    let (vihl, frags, proto, ttl, ip_len, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).ttl,
            u16::from_be_bytes((*ip).tot_len),
            load32((&raw const (*ip).src_addr).cast()),
            load32((&raw const (*ip).dst_addr).cast()),
        )
    };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let l4 = l3 + ihl * 4;
    // The header must fit the total length, and the total length the frame (Ethernet padding
    // may follow it).
    if (ip_len as usize) < ihl * 4 || opaque(ctx.data() + l3 + ip_len as usize) > ctx.data_end() {
        return Parsed::Malformed;
    }
    // Bytes after the IP packet (Ethernet padding, trailers) belong to no header: every L4
    // read below stays within the total length.
    let end = l3 + ip_len as usize;
    if frags & MF_OR_OFFSET != 0 {
        let first = frags & OFFSET == 0;
        let ports = match ptr_at::<u32>(ctx, l4) {
            // SAFETY: bounds checked by ptr_at.
            Some(p) if first && proto != PROTO_ICMP && l4 + 4 <= end => unsafe { *p },
            _ => 0,
        };
        return Parsed::Fragment {
            first,
            proto,
            ports,
        };
    }
    let mut p = Packet {
        l3_off: l3 as u32,
        vlan,
        l4_off: l4 as u32,
        proto,
        ttl,
        df: frags & DF != 0,
        src,
        dst,
        ip_len,
        ports: 0,
        seg: Segment::default(),
        tcp_hdr_len: 0,
    };
    if !l4_header(ctx, &mut p, end) {
        return Parsed::Malformed;
    }
    Parsed::Ok(p)
}

/// The L4 header of `p` (at `p.l4()`), which must end by `end`: TCP's fixed header and its
/// options, UDP's 8 bytes, ICMP's 8. False when it is cut short.
#[inline(always)]
fn l4_header(ctx: &XdpContext, p: &mut Packet, end: usize) -> bool {
    let l4 = p.l4();
    match p.proto {
        PROTO_TCP => tcp::parse(ctx, p) && l4 + p.tcp_len() <= end,
        PROTO_UDP => match ptr_at::<[u8; UDP_LEN]>(ctx, l4) {
            Some(h) if l4 + UDP_LEN <= end => {
                // SAFETY: bounds checked by ptr_at.
                p.ports = unsafe { load32(h.cast()) };
                true
            }
            _ => false,
        },
        PROTO_ICMP => ptr_at::<[u8; ICMP_LEN]>(ctx, l4).is_some() && l4 + ICMP_LEN <= end,
        // Other protocols: the classification decides (never ours).
        _ => true,
    }
}

/// Length of TCP's fixed header, for the TCP parser.
pub const TCP_FIXED: usize = TCP_MIN;
