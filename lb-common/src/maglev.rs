//! Maglev consistent-hash table generation (Eisenbud et al., NSDI 2016, section 3.4), weighted.
//!
//! Each backend walks its own permutation of the table (offset and skip from two hashes of its
//! stable key) and claims the next free slot on its turn. Weights are honoured with credits: on
//! every round a backend earns `weight / max_weight` turns, so shares converge to the weight
//! ratio and the only imbalance comes from the final partial round. Backends are visited in
//! order of their key, so the table does not depend on the order of the configuration.

use std::vec;
use std::vec::Vec;

use crate::maps::NO_BACKEND;

/// One table member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Value written into the slots (the data plane's backend id).
    pub id: u32,
    /// Stable identity: the permutation derives from it, so a backend keeps its preferences
    /// across restarts and id reallocation. Use "address:port".
    pub key: String,
    /// Relative weight; 0 means the backend takes no new flows (drain).
    pub weight: u32,
}

use std::string::String;

/// Whether `n` is prime (table sizes must be, so every skip is coprime with the size).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// 64-bit FNV-1a followed by a splitmix finaliser: stable across platforms and Rust versions
/// (std's hashers are not), seeded so the two permutation hashes are independent.
fn key_hash(key: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a table of `size` slots (`size` must be prime). Members with weight 0 get no slot;
/// with no member of positive weight every slot is `NO_BACKEND`.
pub fn build_table(members: &[Member], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let mut table = vec![NO_BACKEND; size as usize];
    let mut live: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    if live.is_empty() {
        return table;
    }
    live.sort_by(|a, b| a.key.cmp(&b.key));
    let m = size as u64;
    let max_weight = live.iter().map(|b| b.weight).max().unwrap_or(1) as u64;
    // Per member: current position in its permutation, its skip, and accumulated credit.
    let mut pos: Vec<u64> = Vec::with_capacity(live.len());
    let mut skip: Vec<u64> = Vec::with_capacity(live.len());
    for b in &live {
        pos.push(key_hash(b.key.as_bytes(), 0x6f66_6673) % m);
        skip.push(key_hash(b.key.as_bytes(), 0x736b_6970) % (m - 1) + 1);
    }
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    while filled < m {
        for i in 0..live.len() {
            credit[i] += live[i].weight as u64;
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                // Walk the permutation to the next slot nobody owns yet.
                while table[pos[i] as usize] != NO_BACKEND {
                    pos[i] = (pos[i] + skip[i]) % m;
                }
                table[pos[i] as usize] = live[i].id;
                pos[i] = (pos[i] + skip[i]) % m;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
    table
}

/// Number of slots that differ between two tables of equal size.
pub fn slots_changed(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::println;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                id: i as u32,
                key: format!("10.0.{}.{}:5100", i / 250, i % 250 + 1),
                weight: *w,
            })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for s in table {
            c[*s as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(655373));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
        assert!(is_prime(2));
    }

    #[test]
    fn deterministic_and_order_independent() {
        let a = members(&[1, 1, 1, 1]);
        let mut b = a.clone();
        b.reverse();
        let ta = build_table(&a, 65537);
        assert_eq!(ta, build_table(&a, 65537));
        assert_eq!(ta, build_table(&b, 65537));
        assert!(ta.iter().all(|s| *s != NO_BACKEND));
    }

    #[test]
    fn equal_weights_within_one_percent() {
        for n in [3usize, 10, 100, 600] {
            let m = if n * 100 < 65537 { 65537 } else { 655373 };
            let t = build_table(&members(&vec![100; n]), m);
            let expect = m as f64 / n as f64;
            for (i, c) in shares(&t, n).iter().enumerate() {
                let dev = (*c as f64 - expect).abs() / expect;
                assert!(
                    dev < 0.01,
                    "n={n} backend {i}: {c} slots vs {expect:.1} ({dev:.4})"
                );
            }
        }
    }

    #[test]
    fn weighted_shares_within_one_percent() {
        let weights = [1u32, 2, 3, 4, 10];
        let total: u32 = weights.iter().sum();
        let t = build_table(&members(&weights), 65537);
        for (i, c) in shares(&t, weights.len()).iter().enumerate() {
            let expect = 65537.0 * weights[i] as f64 / total as f64;
            let dev = (*c as f64 - expect).abs() / expect;
            assert!(
                dev < 0.01,
                "backend {i} weight {}: {c} vs {expect:.1}",
                weights[i]
            );
        }
    }

    #[test]
    fn zero_weight_gets_nothing_and_all_zero_is_empty() {
        let t = build_table(&members(&[1, 0, 1]), 65537);
        assert!(!t.contains(&1));
        let t = build_table(&members(&[0, 0]), 65537);
        assert!(t.iter().all(|s| *s == NO_BACKEND));
        assert!(build_table(&[], 7).iter().all(|s| *s == NO_BACKEND));
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [5usize, 10, 50] {
            let all = members(&vec![1; n]);
            let before = build_table(&all, 65537);
            let removed = n / 2;
            let rest: Vec<Member> = all
                .iter()
                .filter(|m| m.id as usize != removed)
                .cloned()
                .collect();
            let after = build_table(&rest, 65537);
            let changed = slots_changed(&before, &after);
            let owned = before.iter().filter(|s| **s as usize == removed).count();
            let churn = changed - owned; // slots that moved between surviving backends
            let frac = changed as f64 / 65537.0;
            println!(
                "maglev n={n}: removing one moved {changed} slots ({:.2}%), ideal {:.2}%, churn {churn} ({:.2}%)",
                frac * 100.0,
                100.0 / n as f64,
                churn as f64 / 655.37
            );
            assert!(frac <= 1.0 / n as f64 + 0.02, "n={n}: {frac}");
        }
    }
}
