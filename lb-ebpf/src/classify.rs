//! What a destination address is to us: one read of the direct-mapped filter, and a hash lookup
//! only when several of our addresses share its bucket.

use lb_common::{AddrClass, FilterBucket, hash::filter_index};

use crate::maps::{ADDR_FILTER, ADDRS4};

/// The class of `dst` (native word), None when it is not one of our addresses.
#[inline(always)]
pub fn lookup(dst: u32) -> Option<AddrClass> {
    let raw = *ADDR_FILTER.get(filter_index(dst))?;
    let b = FilterBucket::from_u64(raw);
    if b.addr == dst && b.class.flags & !AddrClass::COLLISION != 0 {
        return Some(AddrClass {
            flags: b.class.flags & !AddrClass::COLLISION,
            snat_index: b.class.snat_index,
        });
    }
    if b.class.flags & AddrClass::COLLISION == 0 {
        return None;
    }
    ADDRS4.get_ptr(dst).map(|c| {
        // SAFETY: valid map value pointer.
        unsafe { *c }
    })
}
