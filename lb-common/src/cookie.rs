//! SYN cookies: the edge answers a client's SYN itself and keeps no state until the client's ACK
//! proves it owns its address (see docs/architecture.md, "SYN cookies").
//!
//! A cookie is the sequence number of the edge's SYN-ACK:
//!
//! ```text
//! bits 31..4  28 bits of SipHash-2-4(secret; addresses, ports, client ISN, counter, MSS index)
//! bits  3..2  the counter's low 2 bits (the counter ticks every 2^36 ns, about 69 s)
//! bits  1..0  MSS index into MSS_TABLE
//! ```
//!
//! A cookie is accepted during the counter period that made it and the next one (69-137 s).
//! Window scale and SACK-permitted cannot fit in 32 bits; like Linux, the edge puts them in the
//! low 6 bits of its SYN-ACK's timestamp value, which the client echoes in every segment. A
//! client without timestamps gets MSS only.

use crate::conntrack::{MAX_WSCALE, NO_WSCALE};

/// The MSS values a cookie can carry (Linux's IPv4 table): the largest one not above the
/// client's MSS is used.
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];

/// Shift from CLOCK_MONOTONIC ns to the cookie counter (2^36 ns ≈ 68.7 s).
pub const COUNTER_SHIFT: u32 = 36;

/// The window scale the edge announces to cookie-mode clients. The backend's own scale can
/// differ: its windows are rescaled toward the client (`rescale_window`).
pub const EDGE_WSCALE: u8 = 7;

/// The window of the edge's SYN-ACK (SYN windows are never scaled).
pub const SYNACK_WINDOW: u16 = 65535;

/// Timestamp value bits that carry options: window scale (0xf = none) and SACK-permitted.
pub const TS_WSCALE_MASK: u32 = 0xf;
pub const TS_NO_WSCALE: u32 = 0xf;
pub const TS_SACK: u32 = 0x10;
pub const TS_OPT_BITS: u32 = 0x3f;

/// The secret of the cookie hash: 128 random bits chosen by the daemon on first start, kept in
/// a pinned map across restarts (cookies in flight stay valid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CookieKey {
    pub k0: u64,
    pub k1: u64,
}

#[inline(always)]
const fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
const fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sipround(v);
    sipround(v);
    v[0] ^= m;
}

/// SipHash-2-4 of 24 bytes given as three little-endian words (the standard algorithm,
/// specialised to one length so the data path runs it without loops over bytes).
#[inline(always)]
pub const fn siphash24_3words(key: &CookieKey, m: [u64; 3]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    compress(&mut v, m[0]);
    compress(&mut v, m[1]);
    compress(&mut v, m[2]);
    compress(&mut v, 24u64 << 56);
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The cookie counter at CLOCK_MONOTONIC `now_ns`.
#[inline(always)]
pub const fn counter(now_ns: u64) -> u32 {
    (now_ns >> COUNTER_SHIFT) as u32
}

/// Index into MSS_TABLE for a client MSS (0 = absent: the smallest).
#[inline(always)]
pub const fn mss_index(mss: u16) -> u32 {
    if mss >= MSS_TABLE[3] {
        3
    } else if mss >= MSS_TABLE[2] {
        2
    } else if mss >= MSS_TABLE[1] {
        1
    } else {
        0
    }
}

/// The connection a cookie is bound to: addresses and the ports word as they sit in the packet
/// (native loads of network-order bytes), and the client's ISN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub client: u32,
    pub vip: u32,
    pub ports: u32,
    pub isn: u32,
}

#[inline(always)]
const fn mac(key: &CookieKey, t: &Tuple, count: u32, mss_idx: u32) -> u32 {
    let h = siphash24_3words(
        key,
        [
            t.client as u64 | (t.vip as u64) << 32,
            t.ports as u64 | (t.isn as u64) << 32,
            count as u64 | (mss_idx as u64) << 32,
        ],
    );
    (h ^ (h >> 32)) as u32
}

/// The cookie for a SYN at counter `count`.
#[inline(always)]
pub const fn generate(key: &CookieKey, t: &Tuple, count: u32, mss_idx: u32) -> u32 {
    (mac(key, t, count, mss_idx) & !0xf) | (count & 3) << 2 | (mss_idx & 3)
}

/// The MSS index of a valid `cookie` (the client's ACK number minus one) at counter `now`.
#[inline(always)]
pub const fn check(key: &CookieKey, t: &Tuple, cookie: u32, now: u32) -> Option<u32> {
    let low = (cookie >> 2) & 3;
    let count = if now & 3 == low {
        now
    } else if now.wrapping_sub(1) & 3 == low {
        now.wrapping_sub(1)
    } else {
        return None;
    };
    let mss_idx = cookie & 3;
    if generate(key, t, count, mss_idx) == cookie {
        Some(mss_idx)
    } else {
        None
    }
}

/// The edge's SYN-ACK timestamp value: a millisecond-ish clock with the client's window scale
/// (`NO_WSCALE`: none) and SACK-permitted in the low bits.
#[inline(always)]
pub const fn ts_value(now_ns: u64, wscale: u8, sack: bool) -> u32 {
    let ws = if wscale == NO_WSCALE {
        TS_NO_WSCALE
    } else if wscale > MAX_WSCALE {
        MAX_WSCALE as u32
    } else {
        wscale as u32
    };
    let sack = if sack { TS_SACK } else { 0 };
    ((now_ns >> 20) as u32 & !TS_OPT_BITS) | ws | sack
}

/// (window scale or `NO_WSCALE`, SACK-permitted) from the echoed timestamp.
#[inline(always)]
pub const fn ts_options(ts_ecr: u32) -> (u8, bool) {
    let ws = ts_ecr & TS_WSCALE_MASK;
    let ws = if ws == TS_NO_WSCALE || ws > MAX_WSCALE as u32 {
        NO_WSCALE
    } else {
        ws as u8
    };
    (ws, ts_ecr & TS_SACK != 0)
}

/// A window advertised with scale `from` (NO_WSCALE: unscaled), re-expressed with scale `to`,
/// rounded up so a small open window never reads as zero.
#[inline(always)]
pub const fn rescale_window(win: u16, from: u8, to: u8) -> u16 {
    let from = if from == NO_WSCALE { 0 } else { from as u32 };
    let to = if to == NO_WSCALE { 0 } else { to as u32 };
    if from == to {
        return win;
    }
    let bytes = (win as u64) << from;
    let scaled = (bytes + (1u64 << to) - 1) >> to;
    if scaled > 0xffff {
        0xffff
    } else {
        scaled as u16
    }
}

/// `FlowEntry::syn_opts` of a cookie flow: what the backend SYN carries.
pub mod syn_opts {
    /// Bits 0..1: MSS index.
    pub const MSS_MASK: u8 = 3;
    /// SACK-permitted was recorded in the cookie.
    pub const SACK: u8 = 4;
    /// The client uses timestamps.
    pub const TS: u8 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;

    const KEY: CookieKey = CookieKey {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    fn tuple(isn: u32) -> Tuple {
        Tuple {
            client: u32::from_ne_bytes([203, 0, 113, 7]),
            vip: u32::from_ne_bytes([198, 51, 100, 1]),
            ports: crate::ports_word(40001, 5100),
            isn,
        }
    }

    #[test]
    fn siphash_matches_the_reference_implementation() {
        for seed in 0..64u64 {
            let m = [
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                seed ^ 0xdead_beef,
                !seed,
            ];
            let key = CookieKey {
                k0: seed.rotate_left(7),
                k1: seed.wrapping_mul(31),
            };
            let mut h = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
            for w in m {
                h.write(&w.to_le_bytes());
            }
            assert_eq!(siphash24_3words(&key, m), h.finish(), "seed {seed}");
        }
    }

    #[test]
    fn a_cookie_checks_out_for_its_connection_and_period_only() {
        let now = 1_000u32;
        for mss in [0u16, 536, 1300, 1400, 1440, 1460, 9000] {
            let idx = mss_index(mss);
            let c = generate(&KEY, &tuple(77), now, idx);
            assert_eq!(check(&KEY, &tuple(77), c, now), Some(idx));
            // The next period still accepts it, the one after does not.
            assert_eq!(check(&KEY, &tuple(77), c, now + 1), Some(idx));
            assert_eq!(check(&KEY, &tuple(77), c, now + 2), None);
            assert_eq!(check(&KEY, &tuple(77), c, now + 5), None);
            // Another ISN, port or key: refused.
            assert_eq!(check(&KEY, &tuple(78), c, now), None);
            let mut t = tuple(77);
            t.ports = crate::ports_word(40002, 5100);
            assert_eq!(check(&KEY, &t, c, now), None);
            let other = CookieKey { k0: 1, k1: 2 };
            assert_eq!(check(&other, &tuple(77), c, now), None);
            // A flipped MSS index is caught by the hash.
            assert_eq!(check(&KEY, &tuple(77), c ^ 1, now), None);
        }
    }

    #[test]
    fn forged_cookies_almost_never_pass() {
        let mut passed = 0;
        for guess in 0..200_000u32 {
            let c = guess.wrapping_mul(2_654_435_761);
            passed += check(&KEY, &tuple(5), c, 500).is_some() as u32;
        }
        // 2^-28 per guess with two periods: expect ~0.0015 passes.
        assert_eq!(passed, 0);
    }

    #[test]
    fn mss_index_picks_the_largest_entry_not_above_the_clients_mss() {
        assert_eq!(mss_index(0), 0);
        assert_eq!(mss_index(1299), 0);
        assert_eq!(mss_index(1300), 1);
        assert_eq!(mss_index(1460), 3);
        assert_eq!(mss_index(65495), 3);
        for mss in [536u16, 1300, 1440, 1460, 1500] {
            assert!(MSS_TABLE[mss_index(mss) as usize] <= mss);
        }
    }

    #[test]
    fn timestamps_carry_window_scale_and_sack() {
        for ws in [0u8, 7, 9, 14, NO_WSCALE] {
            for sack in [false, true] {
                let v = ts_value(123_456_789_000, ws, sack);
                assert_eq!(ts_options(v), (ws, sack));
            }
        }
        // Shifts above 14 are clamped as RFC 7323 demands.
        assert_eq!(ts_options(ts_value(0, 15, false)).0, 14);
        // The clock part moves forward with time.
        assert!(ts_value(10_000_000_000, 7, true) > ts_value(1_000_000_000, 7, true));
    }

    #[test]
    fn windows_are_rescaled_rounding_up() {
        assert_eq!(rescale_window(100, 7, 7), 100);
        assert_eq!(rescale_window(100, 9, 7), 400);
        assert_eq!(rescale_window(400, 7, 9), 100);
        assert_eq!(rescale_window(1, 0, 7), 1);
        assert_eq!(rescale_window(0, 0, 7), 0);
        assert_eq!(rescale_window(65535, NO_WSCALE, 7), 512);
        assert_eq!(rescale_window(65535, 14, 7), 65535);
    }
}
