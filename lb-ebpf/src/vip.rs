//! VIP lookup: exact (address, port, protocol), then the protocol's any-port VIP when the
//! address has one (its ADDR_CLASS bits say so, sparing a lookup otherwise).

use lb_common::{Addr, AddrClass, FAMILY_IPV4, PROTO_TCP, VipKey, VipMeta};

use crate::maps::VIPS;
use crate::parse::Packet;

#[inline(always)]
pub fn lookup(p: &Packet, class: u32) -> Option<VipMeta> {
    let mut key = VipKey::new(Addr::v4_word(p.dst), p.dst_port, p.proto, FAMILY_IPV4);
    if let Some(v) = VIPS.get_ptr(&key) {
        // SAFETY: valid map value pointer.
        return Some(unsafe { *v });
    }
    let any_port = if p.proto == PROTO_TCP {
        AddrClass::VIP_ANY_PORT_TCP
    } else {
        AddrClass::VIP_ANY_PORT_UDP
    };
    if class & any_port == 0 {
        return None;
    }
    key.port = 0;
    // SAFETY: valid map value pointer.
    VIPS.get_ptr(&key).map(|v| unsafe { *v })
}
