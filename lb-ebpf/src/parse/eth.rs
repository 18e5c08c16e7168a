//! Ethernet with at most one VLAN tag.

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use super::ptr_at;

// Host byte order (network-types' EtherType values are stored pre-swapped).
pub const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Where the IP header starts, or why there is none.
pub enum L2 {
    Ipv4 { l3: usize, vlan: u16 },
    Ipv6 { l3: usize, vlan: u16 },
    NotIpv4,
    Truncated,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> L2 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return L2::Truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_IPV4 {
        return L2::Ipv4 {
            l3: EthHdr::LEN,
            vlan: 0,
        };
    }
    if ether_type == ETH_P_IPV6 {
        return L2::Ipv6 {
            l3: EthHdr::LEN,
            vlan: 0,
        };
    }
    if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
        return L2::NotIpv4;
    }
    let Some(tag) = ptr_at::<VlanHdr>(ctx, EthHdr::LEN) else {
        return L2::Truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let (tci, inner) = unsafe {
        (
            u16::from_be_bytes((*tag).tci),
            u16::from_be((*tag).ether_type),
        )
    };
    let vlan = match tci & 0x0fff {
        0 => VLAN_PRIORITY_ONLY,
        vid => vid,
    };
    let l3 = EthHdr::LEN + VlanHdr::LEN;
    match inner {
        ETH_P_IPV4 => L2::Ipv4 { l3, vlan },
        ETH_P_IPV6 => L2::Ipv6 { l3, vlan },
        _ => L2::NotIpv4,
    }
}

/// A tag with VLAN id 0 (priority only) still is a tag: remember it as this id so the frame is
/// handled as tagged (the id itself is put back unchanged on replies).
const VLAN_PRIORITY_ONLY: u16 = 0x1000;

/// The VLAN id to write into a tag for a remembered `vlan` value.
#[inline(always)]
pub const fn tag_vid(vlan: u16) -> u16 {
    vlan & 0x0fff
}
