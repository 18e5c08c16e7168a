//! IPv6: the fixed header, up to two extension headers (hop-by-hop, destination options, a
//! routing header with no segments left), then TCP or UDP. What follows decides (`Parsed6`):
//! fragments, other headers and routing headers with segments left are not served; the caller
//! drops and counts them for a VIP.

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, PROTO_UDP, conntrack::Segment};

use super::{Packet, load32, opaque, ptr_at, tcp};

pub const HDR_LEN: usize = 40;
const NH_FRAGMENT: u8 = 44;
const NH_ICMPV6: u8 = 58;
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_DEST_OPTS: u8 = 60;
/// Extension headers walked before TCP/UDP, and the longest one (bytes): a hop-by-hop or
/// destination-options header with a few options, a routing header with nothing left to do.
const MAX_EXT: usize = 2;
const MAX_EXT_LEN: usize = 64;
const UDP_LEN: usize = 8;

/// An IPv6 packet's addresses and first header word (version, traffic class, flow label), as
/// native loads of the packet's bytes.
#[derive(Clone, Copy)]
pub struct Addrs6 {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub word0: u32,
}

pub enum Parsed6 {
    /// TCP or UDP right after the fixed header; `Packet` as for IPv4 (`src`, `dst` 0,
    /// `ip_len` the whole IPv6 packet, `ttl` the hop limit, `df` set).
    Ok(Packet, Addrs6),
    /// ICMPv6 (neighbour discovery, echo, errors): the kernel's.
    Icmp,
    Fragment,
    /// Any other next header: an extension header or a protocol we do not balance.
    Other,
    Malformed,
}

/// The destination address alone (classification comes before the full parse).
#[inline(always)]
pub fn destination(ctx: &XdpContext, l3: usize) -> Option<[u32; 4]> {
    let d = ptr_at::<[u32; 4]>(ctx, l3 + 24)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { *d })
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, l3: usize, vlan: u16) -> Parsed6 {
    let Some(h) = ptr_at::<[u32; 10]>(ctx, l3) else {
        return Parsed6::Malformed;
    };
    let h = h as *const u8;
    // SAFETY: the 40-byte fixed header is in bounds (ptr_at).
    let (word0, plen, nh, hop, src, dst) = unsafe {
        let w = |i: usize| load32(h.add(i * 4));
        (
            w(0),
            u16::from_be_bytes([*h.add(4), *h.add(5)]),
            *h.add(6),
            *h.add(7),
            [w(2), w(3), w(4), w(5)],
            [w(6), w(7), w(8), w(9)],
        )
    };
    if word0.to_ne_bytes()[0] >> 4 != 6 {
        return Parsed6::Malformed;
    }
    let end = l3 + HDR_LEN + plen as usize;
    if opaque(ctx.data() + end) > ctx.data_end() {
        return Parsed6::Malformed;
    }
    let (nh, ext) = match walk(ctx, l3 + HDR_LEN, nh) {
        // The length hidden from the verifier's value tracking (one bounded range): each
        // exact length would otherwise take the rest of the program through a path of its own.
        Some((nh, ext)) => (nh, opaque(ext) & 0xff),
        None => return Parsed6::Other,
    };
    match nh {
        PROTO_TCP | PROTO_UDP => {}
        // ICMPv6 the data path answers (echo, Packet Too Big) comes without extension headers.
        NH_ICMPV6 if ext == 0 => return Parsed6::Icmp,
        NH_FRAGMENT => return Parsed6::Fragment,
        _ => return Parsed6::Other,
    }
    let mut p = Packet {
        l3_off: l3 as u32,
        vlan,
        l4_off: (l3 + HDR_LEN + ext) as u32,
        proto: nh,
        ttl: hop,
        df: true,
        src: 0,
        dst: 0,
        ip_len: (HDR_LEN as u16).saturating_add(plen),
        ports: 0,
        seg: Segment::default(),
        tcp_hdr_len: 0,
    };
    let l4 = p.l4();
    let ok = if nh == PROTO_TCP {
        tcp::parse(ctx, &mut p) && l4 + p.tcp_len() <= end
    } else {
        match ptr_at::<[u8; UDP_LEN]>(ctx, l4) {
            Some(u) if l4 + UDP_LEN <= end => {
                // SAFETY: bounds checked by ptr_at.
                p.ports = unsafe { load32(u.cast()) };
                true
            }
            _ => false,
        }
    };
    if !ok {
        return Parsed6::Malformed;
    }
    Parsed6::Ok(p, Addrs6 { src, dst, word0 })
}

/// Walks hop-by-hop, destination-options and spent routing headers (segments left 0, so the
/// destination is final) from `at`: the next header after them and their length. None for
/// anything this edge does not serve: a routing header with segments left (the packet is not
/// at its destination), more than `MAX_EXT` headers, or one longer than `MAX_EXT_LEN`.
/// Fragment and other headers end the walk (the caller decides).
#[inline(always)]
fn walk(ctx: &XdpContext, at: usize, first: u8) -> Option<(u8, usize)> {
    let (mut nh, mut len) = (first, 0usize);
    for _ in 0..MAX_EXT {
        if nh != NH_HOP_BY_HOP && nh != NH_DEST_OPTS && nh != NH_ROUTING {
            return Some((nh, len));
        }
        let h = ptr_at::<[u8; 4]>(ctx, at + len)?;
        // SAFETY: bounds checked by ptr_at.
        let [next, units, _, segments_left] = unsafe { *h };
        if nh == NH_ROUTING && segments_left != 0 {
            return None;
        }
        let n = (units as usize + 1) * 8;
        if n > MAX_EXT_LEN {
            return None;
        }
        nh = next;
        len += n;
    }
    if nh == NH_HOP_BY_HOP || nh == NH_DEST_OPTS || nh == NH_ROUTING {
        return None;
    }
    Some((nh, len))
}
