//! PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2) inserted into a TCP stream
//! by the data path: the header's bytes and length, the checksum of a segment it is inserted
//! into, and the map between the client's sequence numbers and the data node's, which differ by
//! the header's length from the client's first payload byte on.
//!
//! The client's first payload byte is ISN + 1 (`isn1`). While the data node has not yet
//! acknowledged anything past the header, the flow's `ack[1]` (the node's RCV.NXT in the
//! client's numbering, which starts at ISN + 1 and moves only with the node's credible
//! acknowledgments) still is `isn1`, so no field is needed for it; the first acknowledgment that
//! moves it sets `FlowEntry::PROXY_ACKED`, after which the offset is a constant.
//!
//! Every client byte b >= isn1 reaches the node at b + H; positions [isn1, isn1 + H) are only
//! ever filled with the header, so a client cannot put bytes of its own in front of it.

use crate::{
    FlowEntry,
    conntrack::{State, tcp_flags},
    csum,
};

/// Room for the longest header (v1 TCP6 is 104 bytes; v1 TCP4 at most 56, v2 28 or 52).
pub const BUF: usize = 128;

/// v2's signature.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// v2 header length for TCP over IPv4: 16 bytes, then 4 + 4 + 2 + 2 of addresses.
pub const V2_LEN_V4: u8 = 28;

/// Decimal digits of `v` (below 100,000: ports and octets). Without a comparison LLVM could
/// turn into a branch (the verifier would walk each outcome through everything after it):
/// adding each constant carries into bits 17-19 differently below and above a power of ten.
#[inline(always)]
pub const fn digits(v: u32) -> u32 {
    const C1: u32 = (0b011 << 17) - 10;
    const C2: u32 = (0b100 << 17) - 100;
    const C3: u32 = (0b111 << 17) - 1000;
    const C4: u32 = (0b100 << 17) - 10000;
    ((((v + C1) & (v + C2)) ^ ((v + C3) & (v + C4))) >> 17) + 1
}

/// Header length toward the data node for an IPv4 client (`src`, `sport`) of the VIP (`dst`,
/// `dport`); addresses as their network-order bytes.
#[inline(always)]
pub const fn header_len_v4(v2: bool, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> u8 {
    if v2 {
        return V2_LEN_V4;
    }
    // "PROXY TCP4 " (11), two addresses with three dots each, three spaces, CRLF: 22.
    let n = 22 + digits(sport as u32) + digits(dport as u32);
    (n + octet_digits(u32::from_ne_bytes(src)) + octet_digits(u32::from_ne_bytes(dst))) as u8
}

/// The decimal digits of an address's four octets (a word's bytes: no array on the BPF stack).
#[inline(always)]
const fn octet_digits(w: u32) -> u32 {
    digits(w & 0xff) + digits((w >> 8) & 0xff) + digits((w >> 16) & 0xff) + digits(w >> 24)
}

/// A flow's `proxy` bits from its VIP's flags and its data node's family (1: IPv6, which gets
/// no header), without a branch.
#[inline(always)]
pub const fn flow_bits(vip_flags: u32, v6_node: u32) -> u8 {
    (((vip_flags >> 7) & 3) * (1 - (v6_node & 1))) as u8
}

/// The longest header a flow with `proxy` bits can get: what the MSS toward its client leaves
/// room for (its exact length is known only once `wklb_proxy` computed it).
#[inline(always)]
pub const fn max_len(proxy: u8) -> u16 {
    if proxy & FlowEntry::PROXY_V2 != 0 {
        V2_LEN_V4 as u16
    } else if proxy & FlowEntry::PROXY_V1 != 0 {
        V1_MAX_V4
    } else {
        0
    }
}

/// v1's longest TCP4 line: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".
pub const V1_MAX_V4: u16 = 56;

/// The header length of flow `e` (its `proxy` bits, its client and VIP).
#[inline(always)]
pub const fn flow_len(e: &FlowEntry) -> u8 {
    if e.proxy & (FlowEntry::PROXY_V1 | FlowEntry::PROXY_V2) == 0 {
        return 0;
    }
    header_len_v4(
        e.proxy & FlowEntry::PROXY_V2 != 0,
        e.client[0].to_ne_bytes(),
        e.client[1].to_ne_bytes(),
        e.client_port,
        e.vip_port,
    )
}

/// Writes `v` in decimal ending at `end`, always `max` digits (the leading zeros land left of
/// the number, where the writes that follow, leftward, put what belongs there); the position
/// left of its first digit. Builds the line right to left without a branch: a position that
/// depended on branches would have the verifier walk every combination of digit counts.
#[inline(always)]
fn put_dec_back(out: &mut [u8; BUF], end: usize, v: u32, max: usize) -> usize {
    let mut rest = v;
    let mut i = 0;
    while i < max {
        out[end.wrapping_sub(i) & (BUF - 1)] = b'0' + (rest % 10) as u8;
        rest /= 10;
        i += 1;
    }
    end.wrapping_sub(digits(v) as usize)
}

/// An address's octets ending at `end`, right to left; the position left of it.
#[inline(always)]
fn put_v4_back(out: &mut [u8; BUF], end: usize, a: [u8; 4]) -> usize {
    let mut at = put_dec_back(out, end, a[3] as u32, 3);
    out[at & (BUF - 1)] = b'.';
    at = put_dec_back(out, at.wrapping_sub(1), a[2] as u32, 3);
    out[at & (BUF - 1)] = b'.';
    at = put_dec_back(out, at.wrapping_sub(1), a[1] as u32, 3);
    out[at & (BUF - 1)] = b'.';
    put_dec_back(out, at.wrapping_sub(1), a[0] as u32, 3)
}

/// Four bytes at `at` (by value: no array on the BPF stack).
#[inline(always)]
fn put4(out: &mut [u8; BUF], at: usize, b: [u8; 4]) -> usize {
    out[at & (BUF - 1)] = b[0];
    out[(at + 1) & (BUF - 1)] = b[1];
    out[(at + 2) & (BUF - 1)] = b[2];
    out[(at + 3) & (BUF - 1)] = b[3];
    at + 4
}

#[inline(always)]
fn put2(out: &mut [u8; BUF], at: usize, b: [u8; 2]) -> usize {
    out[at & (BUF - 1)] = b[0];
    out[(at + 1) & (BUF - 1)] = b[1];
    at + 2
}

/// Writes the header for an IPv4 client into `out` (the rest of `out` is left as it was);
/// its length, `header_len_v4`.
#[inline(always)]
pub fn build_v4(
    v2: bool,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    out: &mut [u8; BUF],
) -> usize {
    if v2 {
        let s = V2_SIGNATURE;
        let mut at = put4(out, 0, [s[0], s[1], s[2], s[3]]);
        at = put4(out, at, [s[4], s[5], s[6], s[7]]);
        at = put4(out, at, [s[8], s[9], s[10], s[11]]);
        // Version 2, command PROXY; TCP over IPv4; 12 address bytes (never LOCAL or length 0,
        // which WuKongIM would not strip).
        at = put4(out, at, [0x21, 0x11, 0x00, 0x0c]);
        at = put4(out, at, src);
        at = put4(out, at, dst);
        at = put2(out, at, sport.to_be_bytes());
        put2(out, at, dport.to_be_bytes())
    } else {
        let len = header_len_v4(false, src, dst, sport, dport) as usize;
        put2(out, len - 2, *b"\r\n");
        let mut at = put_dec_back(out, len - 3, dport as u32, 5);
        out[at & (BUF - 1)] = b' ';
        at = put_dec_back(out, at.wrapping_sub(1), sport as u32, 5);
        out[at & (BUF - 1)] = b' ';
        at = put_v4_back(out, at.wrapping_sub(1), dst);
        out[at & (BUF - 1)] = b' ';
        put_v4_back(out, at.wrapping_sub(1), src);
        // Last: the first address's leading zeros landed here.
        put4(out, 0, *b"PROX");
        put4(out, 4, *b"Y TC");
        put2(out, 8, *b"P4");
        out[10] = b' ';
        len
    }
}

/// The IPv4 pseudo-header's sum for a TCP segment of `tcp_len` bytes (addresses as native
/// words of their network-order bytes).
#[inline(always)]
pub const fn pseudo_v4(src: u32, dst: u32, tcp_len: u16) -> u64 {
    src as u64
        + dst as u64
        + u16::from_ne_bytes([0, crate::PROTO_TCP]) as u64
        + tcp_len.to_be() as u64
}

/// The TCP checksum of a segment after `h` header bytes are inserted between its TCP header
/// and its payload; `hdr_sum` is their one's-complement sum, over the bytes as stored.
///
/// `old`: the segment's checksum as stored; `tcp_len`: its TCP length before; `k`: for an odd
/// `h` only, the pseudo-header (old length) plus the TCP header with its checksum field as zero.
/// An odd `h` moves the payload to odd offsets, where its sum counts byte-swapped (RFC 1071);
/// the payload's sum is what the old checksum leaves once `k` is taken off. A segment with a
/// wrong checksum keeps a wrong one.
#[inline(always)]
pub const fn insert_csum(old: u16, tcp_len: u16, h: u16, hdr_sum: u64, k: u64) -> u16 {
    let length = csum::CsumDelta::new()
        .replace16(tcp_len.to_be(), tcp_len.wrapping_add(h).to_be())
        .raw();
    if h.is_multiple_of(2) {
        return !csum::fold((!old) as u64 + length + hdr_sum);
    }
    let payload = csum::fold((!old) as u64 + (!csum::fold(k)) as u64);
    !csum::fold(k + length + hdr_sum + payload.swap_bytes() as u64)
}

/// What a client segment of a PROXY flow needs toward the data node.
pub mod step {
    /// Unchanged: not a PROXY flow, or a segment below the first payload byte (a keepalive,
    /// a pure ACK or RST before any data).
    pub const KEEP: u8 = 0;
    /// Sequence number + H: after the first payload byte.
    pub const SHIFT: u8 = 1;
    /// Starts at the first payload byte (data or FIN) before the node acknowledged the header:
    /// the header goes in front of its payload. Also every segment of a PROXY flow whose header
    /// length is not known yet (`wklb_proxy` computes it, then decides again).
    pub const INSERT: u8 = 2;
    /// Overlaps the first payload byte from below, or a SYN with data: never sent.
    pub const REFUSE: u8 = 3;
}

/// The step for a client segment (`seq`, `flags`, payload `len`) of flow `e`.
#[inline(always)]
pub const fn forward(e: &FlowEntry, seq: u32, flags: u8, len: u32) -> u8 {
    if e.proxy_len == 0 {
        // A PROXY flow whose header length is not known yet goes where it is computed.
        return if e.proxy & (FlowEntry::PROXY_V1 | FlowEntry::PROXY_V2) != 0 {
            step::INSERT
        } else {
            step::KEEP
        };
    }
    let syn = flags & tcp_flags::SYN != 0;
    let fin = flags & tcp_flags::FIN != 0;
    if syn && len != 0 {
        // A SYN with data (TCP Fast Open): the client sends it again after the handshake.
        return step::REFUSE;
    }
    if e.state == State::SynSent as u8 && (len != 0 || fin) {
        // Bytes before the node answered: nothing a node could take yet.
        return step::REFUSE;
    }
    if e.proxy & FlowEntry::PROXY_ACKED != 0 {
        return step::SHIFT;
    }
    let isn1 = e.ack[1];
    let start = seq.wrapping_add(syn as u32);
    let o = start.wrapping_sub(isn1) as i32;
    if o > 0 {
        return step::SHIFT;
    }
    if o == 0 {
        return if len != 0 || fin {
            step::INSERT
        } else {
            step::KEEP
        };
    }
    let end = start.wrapping_add(len).wrapping_add(fin as u32);
    if end.wrapping_sub(isn1) as i32 <= 0 {
        step::KEEP
    } else {
        step::REFUSE
    }
}

/// What an established client segment's sequence number gets on a flow with `proxy` bits and
/// header length `len`: the length once the node acknowledged the header (every segment is
/// then past it: `forward` says SHIFT), else 0. Without a branch.
#[inline(always)]
pub const fn acked_shift(proxy: u8, len: u8) -> u32 {
    let acked = (proxy & FlowEntry::PROXY_ACKED != 0) as u32;
    len as u32 & 0u32.wrapping_sub(acked)
}

/// A number in the node's view of the client's bytes (its acknowledgments, SACK edges, the
/// sequence numbers ICMP errors quote) in the client's: past the header, H less; inside the
/// header, the first payload byte; below it, unchanged. `isn1` as read before the segment
/// was tracked.
#[inline(always)]
pub const fn to_client(e: &FlowEntry, isn1: u32, n: u32) -> u32 {
    let h = e.proxy_len as u32;
    if e.proxy & FlowEntry::PROXY_ACKED != 0 {
        return n.wrapping_sub(h);
    }
    let o = n.wrapping_sub(isn1) as i32;
    if o >= h as i32 {
        n.wrapping_sub(h)
    } else if o >= 0 {
        isn1
    } else {
        n
    }
}

/// After a node segment was tracked: whether its acknowledgment moved past the header (then
/// `PROXY_ACKED` is set and the offset is constant from here on).
#[inline(always)]
pub const fn now_acked(e: &FlowEntry, isn1: u32) -> bool {
    e.proxy_len != 0 && e.proxy & FlowEntry::PROXY_ACKED == 0 && e.ack[1] != isn1
}

#[cfg(test)]
mod tests;
