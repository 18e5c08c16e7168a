//! Header parsing: Ethernet (+ one 802.1Q tag), IPv4 of any header length, TCP/UDP ports.
//! Every access is bounds-checked against `data_end`, as the verifier demands.

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr, vlan::VlanHdr};

// Host byte order (network-types' EtherType values are stored pre-swapped).
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_IPV4: u16 = 0x0800;

/// Pointer to a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// One 32-bit load of an address field (byte loads would be four). Packet memory need not be
/// aligned for BPF on the architectures we target.
///
/// # Safety
/// `p` must point at 4 readable bytes of packet data.
#[inline(always)]
pub unsafe fn load_addr(p: *const [u8; 4]) -> u32 {
    // SAFETY: per the contract; see above on alignment.
    unsafe { *(p as *const u32) }
}

/// One 32-bit store of an address field.
///
/// # Safety
/// `p` must point at 4 writable bytes of packet data.
#[inline(always)]
pub unsafe fn store_addr(p: *mut [u8; 4], v: u32) {
    // SAFETY: per the contract.
    unsafe { *(p as *mut u32) = v }
}

/// Where the IPv4 header starts, or why there is none.
pub enum L3 {
    Ipv4 { offset: usize },
    NotIpv4,
    Truncated,
}

#[inline(always)]
pub fn l3(ctx: &XdpContext) -> L3 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return L3::Truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let (ether_type, offset) = if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, EthHdr::LEN) else {
            return L3::Truncated;
        };
        // SAFETY: bounds checked by ptr_at.
        (
            u16::from_be(unsafe { (*vlan).ether_type }),
            EthHdr::LEN + VlanHdr::LEN,
        )
    } else {
        (ether_type, EthHdr::LEN)
    };
    if ether_type != ETH_P_IPV4 {
        return L3::NotIpv4;
    }
    L3::Ipv4 { offset }
}

/// The parts of an IPv4 TCP/UDP packet the data path uses. Ports are host byte order.
pub struct Packet {
    pub ip: *mut Ipv4Hdr,
    /// Offset of the L4 header from the start of the frame.
    pub l4_offset: usize,
    pub proto: u8,
    /// Addresses as loaded natively from the packet (network byte order in memory).
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// IP total length: the L3 byte count for the counters.
    pub ip_len: u16,
}

/// What the L4 parse found.
pub enum L4 {
    Ok(Packet),
    /// Not TCP or UDP (`proto` says which).
    Other {
        proto: u8,
    },
    /// IHL < 5, wrong version, or the L4 header is cut short.
    Malformed,
    /// A fragment: only the first one carries ports, so none can be balanced.
    Fragment,
}

#[inline(always)]
pub fn l4(ctx: &XdpContext, ip: *mut Ipv4Hdr, l3_offset: usize) -> L4 {
    // SAFETY: the caller obtained `ip` from ptr_at, so the fixed header is in bounds.
    let (vihl, frags, proto, src, dst, ip_len) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            load_addr(&raw const (*ip).src_addr),
            load_addr(&raw const (*ip).dst_addr),
            u16::from_be_bytes((*ip).tot_len),
        )
    };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return L4::Malformed;
    }
    // More-fragments flag or a non-zero offset.
    if frags & 0x3fff != 0 {
        return L4::Fragment;
    }
    let l4_offset = l3_offset + ihl * 4;
    let (src_port, dst_port, tcp_flags) = match proto {
        6 => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_offset) else {
                return L4::Malformed;
            };
            // SAFETY: bounds checked by ptr_at. Byte 13 of the TCP header holds the flags.
            unsafe {
                (
                    u16::from_be_bytes((*tcp).source),
                    u16::from_be_bytes((*tcp).dest),
                    *(tcp as *const u8).add(13),
                )
            }
        }
        17 => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_offset) else {
                return L4::Malformed;
            };
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                (
                    u16::from_be_bytes((*udp).src),
                    u16::from_be_bytes((*udp).dst),
                    0,
                )
            }
        }
        _ => return L4::Other { proto },
    };
    L4::Ok(Packet {
        ip,
        l4_offset,
        proto,
        src,
        dst,
        src_port,
        dst_port,
        tcp_flags,
        ip_len,
    })
}
