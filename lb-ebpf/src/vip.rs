//! VIP lookup: exact (address, port, protocol), then the protocol's any-port VIP when the
//! address has one (its class bits say so, sparing a lookup otherwise). Also what to do with
//! fragments, which carry no ports after the first.

use lb_common::{AddrClass, PROTO_TCP, PROTO_UDP, Reason, Vip4Key, VipMeta};

use crate::{maps::VIPS4, verdict::Verdict};

#[inline(always)]
pub fn lookup(dst: u32, dport: u16, proto: u8, class: AddrClass) -> Option<VipMeta> {
    let key = Vip4Key::new(dst, dport, proto);
    if let Some(v) = VIPS4.get_ptr(&key) {
        // SAFETY: valid map value pointer.
        return Some(unsafe { *v });
    }
    if class.flags & AddrClass::any_port_bit(proto) == 0 {
        return None;
    }
    let any = Vip4Key::new(dst, 0, proto);
    // SAFETY: valid map value pointer.
    VIPS4.get_ptr(&any).map(|v| unsafe { *v })
}

/// Fragments can be balanced by nothing (only the first carries ports), so those meant for a
/// VIP are dropped; those the host may own go to the kernel, which reassembles them.
#[inline(always)]
pub fn fragment(dst: u32, class: AddrClass, first: bool, proto: u8, ports: u32) -> Verdict {
    let l4 = proto == PROTO_TCP || proto == PROTO_UDP;
    if class.flags & AddrClass::VIP == 0 || !l4 {
        return Verdict::of(Reason::PassFragment);
    }
    let for_vip = if first && ports != 0 {
        lookup(dst, lb_common::ports_of(ports).1, proto, class).is_some()
    } else {
        // A later fragment: ours for sure only if the address serves every port.
        class.flags & AddrClass::any_port_bit(proto) != 0
    };
    Verdict::of(if for_vip {
        Reason::DropFragment
    } else {
        Reason::PassFragment
    })
}
