//! The flow hash: one definition used by the XDP program to pick a Maglev slot and by
//! `wklb lookup` to predict it without sending a packet.

use crate::maps::{ADDR_FILTER_SIZE, ADDR_FILTER6_SIZE, FLOW_HINT_SLOTS, Flow4Key, Flow6Key};

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

/// Hash of an IPv6 5-tuple given addresses as native words loaded from packet memory. The same
/// mixing as IPv4 over eight address words, so both families share one Maglev table.
#[inline(always)]
pub const fn flow_hash_v6_words(
    src: &[u32; 4],
    dst: &[u32; 4],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let mut h = SEED;
    let mut i = 0;
    while i < 4 {
        h = mix(h, u32::from_be(src[i]));
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        h = mix(h, u32::from_be(dst[i]));
        i += 1;
    }
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    finish(h)
}

/// Hash of an IPv6 forward key, as the data path computes it from the packet.
#[inline(always)]
pub const fn flow_hash_v6_key(key: &Flow6Key) -> u32 {
    let (sport, dport) = key.ports_host();
    flow_hash_v6_words(&key.src, &key.dst, sport, dport, key.proto as u8)
}

/// Hash of an IPv4 forward key, as the data path computes it from the packet.
#[inline(always)]
pub const fn flow_hash_v4_key(key: &Flow4Key) -> u32 {
    let (sport, dport) = key.ports_host();
    flow_hash_v4_words(key.src, key.dst, sport, dport, key.proto as u8)
}

/// Entry of an IPv4 forward key in `FLOW_HINTS4`: the key folded into one 64-bit word and
/// murmur3's 64-bit finalizer, far cheaper than the flow hash. Collisions only cost a `FLOWS4`
/// lookup (a hint is checked against the flow it names), so it needs spread, not strength.
#[inline(always)]
pub const fn flow_hint_index(key: &Flow4Key) -> u32 {
    let mut h = (((key.src ^ key.proto) as u64) << 32) | (key.dst ^ key.ports) as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> (64 - FLOW_HINT_SLOTS.trailing_zeros())) as u32
}

/// The same for an IPv6 tuple (`FLOW_HINTS4` holds both families' hints): the address words
/// folded by xor first. Client addresses differ mostly in their low 64 bits, which the fold
/// keeps.
#[inline(always)]
pub const fn flow_hint_index_v6(key: &Flow6Key) -> u32 {
    let src = key.src[0] ^ key.src[1] ^ key.src[2] ^ key.src[3];
    let dst = key.dst[0] ^ key.dst[1] ^ key.dst[2] ^ key.dst[3];
    // Folded into the IPv4 shape (the protocol word marks the family: an IPv4 key's is < 256).
    flow_hint_index(&Flow4Key {
        src,
        dst,
        ports: key.ports,
        proto: key.proto | 0x600,
    })
}

/// Bucket of an IPv4 address (native word) in the direct-mapped `ADDR_FILTER`.
#[inline(always)]
pub const fn filter_index(addr: u32) -> u32 {
    // Fibonacci hashing of the host-order address: the top bits of the product.
    u32::from_be(addr).wrapping_mul(0x9e37_79b1) >> (32 - ADDR_FILTER_SIZE.trailing_zeros())
}

/// Bucket of an IPv6 address (native words) in the direct-mapped `ADDR_FILTER6`: the words
/// folded, then Fibonacci hashing.
#[inline(always)]
pub const fn filter_index_v6(addr: &[u32; 4]) -> u32 {
    let w = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    w.wrapping_mul(0x9e37_79b1) >> (32 - ADDR_FILTER6_SIZE.trailing_zeros())
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
    use crate::maps::PROTO_TCP;

    /// Clients of one carrier range with sequential ports (what a NAT64 or CGNAT pool sends)
    /// spread over the hint cache like random keys would: ~95% distinct at a tenth of its size.
    #[test]
    fn hint_index_spreads_clustered_clients() {
        let mut seen = std::collections::HashSet::new();
        let mut n = 0u32;
        for host in 0..400u32 {
            for port in 0..250u16 {
                let c = (0x6440_0000u32 | host).to_be_bytes();
                let key = Flow4Key::new(c, [198, 51, 100, 1], 32768 + port, 5100, PROTO_TCP);
                let i = flow_hint_index(&key);
                assert!(i < FLOW_HINT_SLOTS);
                seen.insert(i);
                n += 1;
            }
        }
        assert_spread_like_random(&seen, n);
    }

    /// `seen` distinct hint slots of `n` keys: at least 98% of what random keys would give.
    fn assert_spread_like_random(seen: &std::collections::HashSet<u32>, n: u32) {
        let ideal = FLOW_HINT_SLOTS as f64 * (1.0 - (-(n as f64) / FLOW_HINT_SLOTS as f64).exp());
        assert!(
            seen.len() as f64 > 0.98 * ideal,
            "{} distinct of {n} (random keys: {ideal:.0})",
            seen.len()
        );
    }

    /// IPv6 clients of one /64 (mobile carriers hand out one per subscriber) spread the same.
    #[test]
    fn ipv6_hint_index_spreads_clustered_clients() {
        let mut seen = std::collections::HashSet::new();
        let mut n = 0u32;
        let vip = crate::words_of_v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        for host in 0..400u16 {
            for port in 0..250u16 {
                let mut c = [0u8; 16];
                c[..8].copy_from_slice(&[0x24, 0x08, 0x84, 0x00, 0x12, 0x34, 0, 0]);
                c[8..10].copy_from_slice(&host.to_be_bytes());
                c[15] = host as u8 ^ 0x5a;
                let key = Flow6Key::from_wire(
                    crate::words_of_v6(c),
                    vip,
                    crate::ports_word(32768 + port, 5100),
                    PROTO_TCP,
                );
                let i = flow_hint_index_v6(&key);
                assert!(i < FLOW_HINT_SLOTS);
                seen.insert(i);
                n += 1;
            }
        }
        assert_spread_like_random(&seen, n);
    }

    #[test]
    fn hints_round_trip_and_empty_is_none() {
        let r = crate::FlowRef {
            slot: 0x0012_3456,
            token: 0x8000_0001,
        };
        assert_eq!(crate::FlowRef::from_hint(r.to_hint()), Some(r));
        assert_eq!(crate::FlowRef::from_hint(0), None);
    }

    #[test]
    fn ipv6_hash_is_the_key_hash_and_differs_from_ipv4_mapped() {
        let c = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef,
        ];
        let v = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let key = crate::Flow6Key::new(c, v, 40001, 5100, PROTO_TCP);
        let h = flow_hash_v6_key(&key);
        assert_eq!(
            h,
            flow_hash_v6_words(
                &crate::words_of_v6(c),
                &crate::words_of_v6(v),
                40001,
                5100,
                PROTO_TCP
            )
        );
        // Every address byte counts.
        for i in 0..16 {
            let mut c2 = c;
            c2[i] ^= 1;
            assert_ne!(
                flow_hash_v6_key(&crate::Flow6Key::new(c2, v, 40001, 5100, 6)),
                h
            );
        }
        assert_eq!(core::mem::size_of::<crate::Flow6Key>(), 40);
        assert_eq!(core::mem::size_of::<crate::Vip6Key>(), 20);
    }

    #[test]
    fn key_and_tuple_hash_agree() {
        let key = Flow4Key::new([203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100, PROTO_TCP);
        assert_eq!(
            flow_hash_v4_key(&key),
            flow_hash_v4([203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100, PROTO_TCP)
        );
    }

    #[test]
    fn filter_buckets_are_in_range_and_spread_neighbours() {
        let mut used = std::collections::BTreeSet::new();
        for last in 0..=255u8 {
            let i = filter_index(u32::from_ne_bytes([10, 2, 0, last]));
            assert!(i < ADDR_FILTER_SIZE);
            used.insert(i);
        }
        assert_eq!(used.len(), 256, "a /24 of neighbours never collides");
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
