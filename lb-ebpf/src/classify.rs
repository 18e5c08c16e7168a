//! What a destination address is to us: one read of the direct-mapped filter, and a hash lookup
//! only when several of our addresses share its bucket.

use lb_common::{
    AddrClass, FilterBucket,
    hash::{filter_index, filter_index_v6},
};

use crate::maps::{ADDR_FILTER, ADDR_FILTER6, ADDRS4, ADDRS6};

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

/// The same for an IPv6 destination (native words), through `ADDR_FILTER6`.
#[inline(always)]
pub fn lookup6(dst: &[u32; 4]) -> Option<AddrClass> {
    let b = ADDR_FILTER6.get(filter_index_v6(dst))?;
    // Copied first: the check below is then about the very words used.
    let b = *b;
    if b.is_whole() {
        if b.addr == *dst && b.class.flags & !AddrClass::COLLISION != 0 {
            return Some(AddrClass {
                flags: b.class.flags & !AddrClass::COLLISION,
                snat_index: b.class.snat_index,
            });
        }
        if b.class.flags & AddrClass::COLLISION == 0 {
            return None;
        }
    } else if b.check == 0 && b.class.flags == 0 {
        // Empty.
        return None;
    }
    ADDRS6.get_ptr(dst).map(|c| {
        // SAFETY: valid map value pointer.
        unsafe { *c }
    })
}
