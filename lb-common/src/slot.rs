//! Flow slots. A flow lives in `FLOW_TABLE` at slot = (SNAT address index << 16) | SNAT port, so
//! claiming the slot *is* claiming the SNAT port, and a reply to (SNAT address, port) finds its
//! flow by indexing. Consequence, stated in the config docs: SNAT ports are unique per SNAT
//! address (not per SNAT address and backend), so each SNAT address carries at most
//! `port_max - port_min + 1` concurrent flows.
//!
//! A slot's `owner` word says who holds it: `FREE`, `DYING` (the daemon is expiring it), or the
//! claim token of its flow (always odd). The program claims with an atomic compare-and-exchange
//! FREE → token; `FLOWS4` stores the token next to the slot number, so a lookup that races with
//! expiry and a new claim of the same slot can tell the slot now belongs to someone else.

use crate::hash::rehash;
use crate::maps::SLOTS_PER_SNAT_ADDR;

pub const FREE: u32 = 0;
/// Set by the daemon's expiry before it removes the flow's `FLOWS4` entry; the program treats
/// the slot as taken by nobody it may follow.
pub const DYING: u32 = 2;

/// Bounded attempts at a free slot (Cilium uses a similar hash-started, bounded search).
pub const PORT_RETRIES: u32 = 16;

/// The claim token of a flow: odd, so never FREE or DYING.
#[inline(always)]
pub const fn token(flow_hash: u32) -> u32 {
    flow_hash | 1
}

#[inline(always)]
pub const fn is_token(owner: u32) -> bool {
    owner & 1 == 1
}

/// 1 for `FAMILY_IPV6`, 0 for `FAMILY_IPV4`, computed without a branch (6 = 0b110, 4 = 0b100).
#[inline(always)]
pub const fn family_bit(family: u8) -> u32 {
    ((family >> 1) & 1) as u32
}

#[inline(always)]
pub const fn slot(snat_index: u32, port: u16) -> u32 {
    snat_index * SLOTS_PER_SNAT_ADDR + port as u32
}

#[inline(always)]
pub const fn snat_index_of(slot: u32) -> u32 {
    slot / SLOTS_PER_SNAT_ADDR
}

#[inline(always)]
pub const fn port_of(slot: u32) -> u16 {
    (slot % SLOTS_PER_SNAT_ADDR) as u16
}

/// Index into `SNAT_PICK` for the `attempt`-th try: every attempt rehashes, so a busy address
/// does not keep getting picked.
#[inline(always)]
pub const fn pick_index(flow_hash: u32, attempt: u32, count: u32) -> u32 {
    if count == 0 {
        return 0;
    }
    rehash(flow_hash, 0xA11C + attempt) % count
}

/// The `attempt`-th candidate port in the inclusive range `[min, max]`. Every attempt rehashes,
/// so flows that collide once do not keep colliding (no clustering as with linear probing).
#[inline(always)]
pub const fn port_candidate(flow_hash: u32, attempt: u32, min: u16, max: u16) -> u16 {
    let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
    let range = (hi - lo) as u32 + 1;
    (lo as u32 + rehash(flow_hash, attempt) % range) as u16
}

/// Concurrent flows the SNAT addresses can carry.
pub const fn capacity(addresses: u32, port_min: u16, port_max: u16) -> u64 {
    addresses as u64 * (port_max as u64 - port_min as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range_and_differ() {
        for h in [0u32, 1, 0xdead_beef, u32::MAX] {
            let mut seen = [0u16; PORT_RETRIES as usize];
            for a in 0..PORT_RETRIES {
                let p = port_candidate(h, a, 20000, 20099);
                assert!((20000..=20099).contains(&p));
                seen[a as usize] = p;
            }
            seen.sort_unstable();
            let distinct = seen.windows(2).filter(|w| w[0] != w[1]).count() + 1;
            assert!(distinct >= 10, "attempts should mostly differ: {seen:?}");
        }
        assert_eq!(port_candidate(7, 0, 5000, 5000), 5000);
        assert!(port_candidate(7, 3, 1, 65535) >= 1);
    }

    #[test]
    fn addresses_spread() {
        let mut n = [0u32; 3];
        for h in 0..30_000u32 {
            let hash = crate::hash::flow_hash_v4([1, 2, 3, 4], [5, 6, 7, 8], h as u16, 80, 6);
            n[pick_index(hash, 0, 3) as usize] += 1;
        }
        for c in n {
            assert!((9_500..10_500).contains(&c), "{n:?}");
        }
        assert_eq!(pick_index(5, 0, 0), 0);
    }

    #[test]
    fn slot_numbers_round_trip_and_tokens_are_never_free_or_dying() {
        let s = slot(5, 40001);
        assert_eq!((snat_index_of(s), port_of(s)), (5, 40001));
        assert_eq!(slot(0, 0), 0);
        assert_eq!(slot(63, 65535), 64 * 65536 - 1);
        for h in [0u32, 1, 2, 0xffff_fffe, u32::MAX] {
            let t = token(h);
            assert!(is_token(t) && t != FREE && t != DYING);
        }
        assert!(!is_token(FREE) && !is_token(DYING));
        assert_eq!(capacity(2, 1024, 65535), 2 * 64512);
    }
}
