//! Round-trip times the data path measures at each TCP handshake, kept as histograms per
//! backend: edge ↔ backend (the forwarded SYN to the backend's SYN-ACK) and client ↔ edge (the
//! SYN-ACK sent to the client to the client's first ACK). Only handshake packets touch them,
//! so established flows pay nothing. Buckets are log-linear: four per octave of microseconds
//! (each about 19% wide), from 0 to about 2 s; the last bucket takes everything longer.

/// Histogram buckets per (backend, kind).
pub const RTT_BUCKETS: usize = 80;
/// Edge ↔ backend: forwarded SYN → backend's SYN-ACK.
pub const RTT_BACKEND: u32 = 0;
/// Client ↔ edge: SYN-ACK to the client → the client's first ACK.
pub const RTT_CLIENT: u32 = 1;
/// Kinds of round trip per backend.
pub const RTT_KINDS: u32 = 2;

/// `RTT_HIST` value, indexed by `rtt_row(backend id, kind)`: counts per bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RttRow {
    pub counts: [u64; RTT_BUCKETS],
}

impl Default for RttRow {
    fn default() -> Self {
        RttRow {
            counts: [0; RTT_BUCKETS],
        }
    }
}

/// The row of a backend's histogram of one kind.
#[inline(always)]
pub const fn rtt_row(backend_id: u32, kind: u32) -> u32 {
    backend_id * RTT_KINDS + kind
}

/// Index of the highest set bit of a non-zero value (no count-leading-zeros instruction in BPF:
/// a fixed binary search).
#[inline(always)]
const fn msb(mut v: u64) -> u32 {
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// The bucket of a duration in nanoseconds (units of 1,024 ns, "microseconds" below).
#[inline(always)]
pub const fn rtt_bucket(ns: u64) -> u32 {
    let us = ns >> 10;
    if us < 4 {
        return us as u32;
    }
    let m = msb(us);
    let b = (m - 1) * 4 + ((us >> (m - 2)) & 3) as u32;
    if b >= RTT_BUCKETS as u32 {
        RTT_BUCKETS as u32 - 1
    } else {
        b
    }
}

/// The lowest duration (ns) that falls in bucket `b`.
pub const fn rtt_bucket_floor_ns(b: u32) -> u64 {
    if b < 4 {
        return (b as u64) << 10;
    }
    let m = b / 4 + 1;
    ((4 + (b % 4) as u64) << (m - 2)) << 10
}

/// The duration below which a fraction `q` of the samples fall (linear inside the bucket;
/// the open last bucket answers its floor). None without samples.
#[cfg(feature = "user")]
pub fn rtt_quantile_ns(counts: &[u64; RTT_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0.0;
    for (b, c) in counts.iter().enumerate() {
        let c = *c as f64;
        if c > 0.0 && seen + c >= want {
            let lo = rtt_bucket_floor_ns(b as u32) as f64;
            if b + 1 == RTT_BUCKETS {
                return Some(lo);
            }
            let hi = rtt_bucket_floor_ns(b as u32 + 1) as f64;
            return Some(lo + (hi - lo) * ((want - seen) / c).clamp(0.0, 1.0));
        }
        seen += c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        assert_eq!(rtt_bucket(0), 0);
        assert_eq!(rtt_bucket(1023), 0);
        assert_eq!(rtt_bucket(1024), 1);
        for b in 0..RTT_BUCKETS as u32 {
            let lo = rtt_bucket_floor_ns(b);
            assert_eq!(rtt_bucket(lo), b, "floor of {b}");
            if b > 0 {
                assert_eq!(rtt_bucket(lo - 1), b - 1, "just below {b}");
                assert!(lo > rtt_bucket_floor_ns(b - 1));
            }
        }
        // Four per octave: each at most ~19% wider than its floor, from 4 units on.
        for b in 4..RTT_BUCKETS as u32 - 1 {
            let (lo, hi) = (rtt_bucket_floor_ns(b), rtt_bucket_floor_ns(b + 1));
            assert!((hi - lo) as f64 / lo as f64 <= 0.251, "bucket {b}");
        }
        // The last bucket is open: about 2 s and beyond.
        let top = rtt_bucket_floor_ns(RTT_BUCKETS as u32 - 1);
        assert!((1_500_000_000..3_000_000_000).contains(&top), "{top}");
        assert_eq!(rtt_bucket(u64::MAX), RTT_BUCKETS as u32 - 1);
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for v in [1u64, 2, 3, 4, 255, 256, 1 << 31, (1 << 32) + 5, u64::MAX] {
            assert_eq!(msb(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[cfg(feature = "user")]
    #[test]
    fn quantiles_land_within_a_bucket_of_the_truth() {
        let mut counts = [0u64; RTT_BUCKETS];
        // 1,000 samples spread evenly over 5.0-5.4 ms.
        for i in 0..1000u64 {
            counts[rtt_bucket(5_000_000 + i * 400) as usize] += 1;
        }
        let p50 = rtt_quantile_ns(&counts, 0.5).unwrap();
        assert!((p50 - 5_200_000.0).abs() / 5_200_000.0 < 0.1, "{p50}");
        let p99 = rtt_quantile_ns(&counts, 0.99).unwrap();
        assert!(p99 >= p50 && p99 < 6_500_000.0, "{p99}");
        assert_eq!(rtt_quantile_ns(&[0; RTT_BUCKETS], 0.5), None);
    }
}
