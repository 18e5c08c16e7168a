//! SNAT address and port choice. The data path tries up to `PORT_RETRIES` candidate ports,
//! inserting the reverse entry with BPF_NOEXIST; the first insert that succeeds owns the
//! (backend, SNAT address, port) tuple, so two flows never share one toward the same backend.

use crate::hash::rehash;

/// Bounded retries for a free SNAT port (Cilium uses a similar hash-started, bounded search).
pub const PORT_RETRIES: u32 = 16;

/// Index of the SNAT address for a flow.
#[inline(always)]
pub const fn addr_index(flow_hash: u32, count: u32) -> u32 {
    if count == 0 {
        return 0;
    }
    rehash(flow_hash, 0xA11C) % count
}

/// The `attempt`-th candidate port in the inclusive range `[min, max]`. Every attempt rehashes,
/// so flows that collide once do not keep colliding (no clustering as with linear probing).
#[inline(always)]
pub const fn port_candidate(flow_hash: u32, attempt: u32, min: u16, max: u16) -> u16 {
    let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
    let range = (hi - lo) as u32 + 1;
    (lo as u32 + rehash(flow_hash, attempt) % range) as u16
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
            n[addr_index(
                crate::hash::flow_hash_v4([1, 2, 3, 4], [5, 6, 7, 8], h as u16, 80, 6),
                3,
            ) as usize] += 1;
        }
        for c in n {
            assert!((9_500..10_500).contains(&c), "{n:?}");
        }
        assert_eq!(addr_index(5, 0), 0);
    }
}
