//! Address/port rewrite with incremental checksum updates (arithmetic in lb_common::csum).

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, csum::CsumDelta};

use crate::parse::{Packet, load16, load32, ptr_at, store16, store32};

/// Offsets of the checksum field inside the L4 header.
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;
/// Offsets inside the IPv4 header.
pub const TTL: usize = 8;
pub const CHECK: usize = 10;
pub const SRC: usize = 12;
pub const DST: usize = 16;

/// The new addresses and ports of a packet, as native words of network-order bytes; for TCP,
/// what to add to the sequence and acknowledgment numbers (PROXY protocol flows; 0 for the
/// rest: added without a branch, which would split the verifier's paths).
pub struct Rewrite {
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub seq_add: u32,
    pub ack_add: u32,
}

/// TCP header offsets.
const SEQ: usize = 4;
const ACK: usize = 8;

/// Rewrites addresses and ports, decrements the TTL and fixes the IP and L4 checksums.
/// The caller has checked TTL > 1; parsing checked the L4 header is in bounds.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, p: &Packet, to: &Rewrite) -> Option<()> {
    let addr_delta = rewrite_ip(ctx, p, to.src, to.dst)?;
    let l4_delta = addr_delta.replace32(p.ports, to.ports);
    let ports = ptr_at::<u32>(ctx, p.l4())?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *ports = to.ports };
    if p.proto == PROTO_TCP {
        let h = ptr_at::<[u8; 20]>(ctx, p.l4())? as *mut u8;
        // SAFETY: the fixed TCP header, bounds checked by ptr_at.
        unsafe {
            let (seq, ack) = (load32(h.add(SEQ)), load32(h.add(ACK)));
            let new_seq = u32::from_be(seq).wrapping_add(to.seq_add).to_be();
            let new_ack = u32::from_be(ack).wrapping_add(to.ack_add).to_be();
            store32(h.add(SEQ), new_seq);
            store32(h.add(ACK), new_ack);
            let d = l4_delta.replace32(seq, new_seq).replace32(ack, new_ack);
            let c = h.add(TCP_CSUM);
            store16(c, d.apply(load16(c)));
        }
    } else {
        let c = ptr_at::<u16>(ctx, p.l4() + UDP_CSUM)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *c = l4_delta.apply_udp(*c) };
    }
    Some(())
}

/// Rewrites the IPv4 addresses and decrements the TTL, fixing the header checksum. Returns the
/// address change, which L4 pseudo-header checksums need too.
#[inline(always)]
pub fn rewrite_ip(ctx: &XdpContext, p: &Packet, src: u32, dst: u32) -> Option<CsumDelta> {
    let ip = ptr_at::<[u8; 20]>(ctx, p.l3())? as *mut u8;
    let addr_delta = CsumDelta::new().replace32(p.src, src).replace32(p.dst, dst);
    // SAFETY: the fixed IPv4 header is in bounds.
    unsafe {
        // TTL shares a 16-bit checksum word with the protocol byte. Both words come from the
        // parsed fields and the new one is stored whole: reading the word back after a byte
        // store would stall on store forwarding.
        let old_word = u16::from_ne_bytes([p.ttl, p.proto]);
        let new_word = u16::from_ne_bytes([p.ttl.wrapping_sub(1), p.proto]);
        store16(ip.add(TTL), new_word);
        let check = load16(ip.add(CHECK));
        store16(
            ip.add(CHECK),
            addr_delta.replace16(old_word, new_word).apply(check),
        );
        store32(ip.add(SRC), src);
        store32(ip.add(DST), dst);
    }
    Some(addr_delta)
}
