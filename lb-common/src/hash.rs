//! The flow hash: one definition used by the XDP program to pick a Maglev slot and by
//! `wklb lookup` to predict it without sending a packet.

use crate::maps::{FAMILY_IPV4, FlowKey};

const SEED: u32 = 0x5741_4b4c; // "WAKL"

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    // murmur3 x86_32 body round.
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of an IPv4 5-tuple given addresses as words loaded natively from packet memory.
#[inline(always)]
pub const fn flow_hash_v4_words(
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let mut h = SEED;
    h = mix(h, u32::from_be(src));
    h = mix(h, u32::from_be(dst));
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    finish(h)
}

/// Hash of an IPv4 5-tuple (addresses as network-order octets, ports in host order).
#[inline(always)]
pub const fn flow_hash_v4(
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    flow_hash_v4_words(
        u32::from_ne_bytes(src),
        u32::from_ne_bytes(dst),
        src_port,
        dst_port,
        proto,
    )
}

/// Hash of any flow key. IPv4 hashes only the 4 address bytes so the fast path and this agree.
pub fn flow_hash(key: &FlowKey) -> u32 {
    if key.family == FAMILY_IPV4 {
        return flow_hash_v4_words(
            key.src.words[0],
            key.dst.words[0],
            key.src_port,
            key.dst_port,
            key.proto,
        );
    }
    let mut h = SEED;
    for w in key.src.words {
        h = mix(h, u32::from_be(w));
    }
    for w in key.dst.words {
        h = mix(h, u32::from_be(w));
    }
    h = mix(h, ((key.src_port as u32) << 16) | key.dst_port as u32);
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Second, independent mix of a flow hash (for the SNAT address and port choice), so that the
/// SNAT choice is not correlated with the Maglev slot.
#[inline(always)]
pub const fn rehash(hash: u32, salt: u32) -> u32 {
    finish(mix(hash ^ 0x9e37_79b9, salt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{Addr, PROTO_TCP};

    #[test]
    fn generic_and_v4_agree() {
        let key = FlowKey::new(
            Addr::v4([203, 0, 113, 7]),
            Addr::v4([198, 51, 100, 1]),
            40001,
            5100,
            PROTO_TCP,
            FAMILY_IPV4,
        );
        assert_eq!(
            flow_hash(&key),
            flow_hash_v4([203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100, PROTO_TCP)
        );
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned value: the kernel and every userspace build must agree forever (a change would
        // make `wklb lookup` lie and, across an upgrade, move nothing but predictions).
        assert_eq!(
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 6),
            0x3d8f_f125
        );
    }

    #[test]
    fn source_ports_spread_evenly() {
        let mut buckets = [0u32; 8];
        for p in 0..80_000u32 {
            let h = flow_hash_v4([10, 1, 2, 3], [10, 9, 9, 9], p as u16, 5100, 6);
            buckets[(h % 8) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..10_500).contains(&b), "{buckets:?}");
        }
    }
}
