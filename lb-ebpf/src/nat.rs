//! Address/port rewrite with incremental checksum updates (arithmetic in lb_common::csum).

use lb_common::{PROTO_TCP, csum::CsumDelta};

use crate::parse::{Packet, ptr_at, store_addr};
use aya_ebpf::programs::XdpContext;

/// Offsets of the checksum field inside the L4 header.
const TCP_CSUM_OFFSET: usize = 16;
const UDP_CSUM_OFFSET: usize = 6;

/// The new 4-tuple of a packet. Addresses as native words of network-order bytes, ports in
/// host byte order.
pub struct Rewrite {
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Rewrites addresses and ports, decrements the TTL and fixes the IP and L4 checksums.
/// The caller has checked that TTL > 1 and that the L4 header is in bounds (parse did).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, p: &Packet, to: &Rewrite) -> Option<()> {
    let ip = p.ip;
    let addr_delta = CsumDelta::new()
        .replace32(p.src, to.src)
        .replace32(p.dst, to.dst);
    // SAFETY: `ip` points at a bounds-checked IPv4 header.
    unsafe {
        // TTL shares a 16-bit checksum word with the protocol byte.
        let old_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = addr_delta
            .replace16(old_word, new_word)
            .apply(check)
            .to_ne_bytes();
        store_addr(&raw mut (*ip).src_addr, to.src);
        store_addr(&raw mut (*ip).dst_addr, to.dst);
    }

    let old_ports = [p.src_port.to_be(), p.dst_port.to_be()];
    let new_ports = [to.src_port.to_be(), to.dst_port.to_be()];
    let l4_delta = addr_delta
        .replace16(old_ports[0], new_ports[0])
        .replace16(old_ports[1], new_ports[1]);
    let ports = ptr_at::<[u16; 2]>(ctx, p.l4_offset)?;
    // SAFETY: bounds checked by ptr_at; u16 stores are done unaligned-safe via write_unaligned.
    unsafe { ports.write_unaligned(new_ports) };
    if p.proto == PROTO_TCP {
        let c = ptr_at::<[u8; 2]>(ctx, p.l4_offset + TCP_CSUM_OFFSET)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *c = l4_delta.apply(u16::from_ne_bytes(*c)).to_ne_bytes() };
    } else {
        let c = ptr_at::<[u8; 2]>(ctx, p.l4_offset + UDP_CSUM_OFFSET)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *c = l4_delta.apply_udp(u16::from_ne_bytes(*c)).to_ne_bytes() };
    }
    Some(())
}
