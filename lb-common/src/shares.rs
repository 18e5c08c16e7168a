//! Fair shares of what new flows consume, so that no VIP's flood starves another. Four pools
//! (`Resource`): the IPv4 and the IPv6 connection tables (FLOWS4, FLOWS6: `max_flows` each) and
//! the IPv4 and the IPv6 SNAT ports (every SNAT address's port range). Each VIP is guaranteed a
//! share of each pool it can use: `vip.max_flows` where set, an even split of the rest among
//! the others. A VIP may go beyond its share while a pool has room; once a pool is `FULL_PERCENT`
//! full, a VIP at or above its share gets no new flow there (`Reason::DropVipOverShare`), so the
//! VIPs within theirs still do.
//!
//! The data path counts every flow it creates (VIP_LIVE, atomically); the daemon's expiry pass,
//! which frees every slot, takes each flow it frees off the counts.

/// A pool new flows take from.
pub type Resource = usize;
/// The IPv4 connection table (flows of IPv4 clients).
pub const FLOWS4: Resource = 0;
/// The IPv6 connection table (flows of IPv6 clients).
pub const FLOWS6: Resource = 1;
/// The IPv4 SNAT addresses' ports (flows to IPv4 backends).
pub const SNAT4: Resource = 2;
/// The IPv6 SNAT addresses' ports (flows to IPv6 backends).
pub const SNAT6: Resource = 3;
pub const RESOURCES: usize = 4;
pub const RESOURCE_NAMES: [&str; RESOURCES] =
    ["flows_ipv4", "flows_ipv6", "snat_ipv4", "snat_ipv6"];

/// A pool this full (percent of its capacity) refuses VIPs over their share.
pub const FULL_PERCENT: u64 = 90;

/// No share to enforce (a pool the VIP cannot use, or an unconfigured VIP).
pub const UNLIMITED: u32 = u32::MAX;

/// The pools a flow takes from: its client's table, its backend family's SNAT ports.
#[inline(always)]
pub const fn resources_of(client_v6: bool, backend_v6: bool) -> (Resource, Resource) {
    (
        if client_v6 { FLOWS6 } else { FLOWS4 },
        if backend_v6 { SNAT6 } else { SNAT4 },
    )
}

/// The count at which a pool of `capacity` refuses VIPs over their share: `FULL_PERCENT` of it,
/// rounded up (a pool of one port is full with one flow, not with none).
pub const fn full_at(capacity: u64) -> u32 {
    let n = (capacity * FULL_PERCENT).div_ceil(100);
    if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    }
}

/// The reason a new flow finding pool `r` full is refused with.
pub const fn exhausted(r: Resource) -> crate::Reason {
    if r == FLOWS4 || r == FLOWS6 {
        crate::Reason::DropConntrackFull
    } else {
        crate::Reason::DropSnatExhausted
    }
}

/// Whether a VIP using `used` of a pool holding `total` may not start another flow there.
#[inline(always)]
pub const fn over_share(total: u64, full_at: u32, used: u64, share: u32) -> bool {
    total >= full_at as u64 && used >= share as u64
}

/// What one VIP asks of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demand {
    /// It cannot use the pool (another family).
    None,
    /// An even share of what the fixed shares leave.
    Even,
    /// `vip.max_flows`.
    Fixed(u32),
}

/// Each VIP's share of a pool of `capacity` (written to `out`, one per demand): fixed demands
/// get theirs (scaled down together if they alone exceed the pool), the even ones split what is
/// left; a VIP that cannot use the pool gets `UNLIMITED` (it never asks).
pub fn split(capacity: u64, demands: &[Demand], out: &mut [u32]) {
    let fixed: u64 = demands
        .iter()
        .map(|d| match d {
            Demand::Fixed(n) => *n as u64,
            _ => 0,
        })
        .sum();
    let even = demands.iter().filter(|d| **d == Demand::Even).count() as u64;
    let rest = capacity.saturating_sub(fixed);
    for (d, o) in demands.iter().zip(out.iter_mut()) {
        let share = match *d {
            Demand::None => UNLIMITED as u64,
            Demand::Fixed(n) if fixed > capacity => n as u64 * capacity / fixed,
            Demand::Fixed(n) => n as u64,
            Demand::Even => rest / even.max(1),
        };
        *o = share.min(UNLIMITED as u64 - 1) as u32;
        if *d == Demand::None {
            *o = UNLIMITED;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(capacity: u64, d: &[Demand]) -> Vec<u32> {
        let mut out = vec![0; d.len()];
        split(capacity, d, &mut out);
        out
    }

    #[test]
    fn even_shares_split_what_fixed_ones_leave() {
        use Demand::*;
        assert_eq!(shares(1000, &[Even, Even]), [500, 500]);
        assert_eq!(shares(1000, &[Fixed(600), Even, Even]), [600, 200, 200]);
        assert_eq!(shares(1000, &[Even, None, Even]), [500, UNLIMITED, 500]);
        // Fixed shares beyond the pool are scaled down together; the even ones get nothing
        // guaranteed (they still use free room below the threshold).
        assert_eq!(
            shares(1000, &[Fixed(1500), Fixed(500), Even]),
            [750, 250, 0]
        );
    }

    #[test]
    fn only_a_full_pool_refuses_and_only_those_over_their_share() {
        let full = full_at(1000);
        assert_eq!(full, 900);
        assert_eq!(full_at(1), 1, "a pool of one is full with one");
        assert_eq!(full_at(15), 14);
        assert!(
            !over_share(899, full, 899, 500),
            "room left: anyone may take it"
        );
        assert!(
            over_share(900, full, 500, 500),
            "full: at its share, refused"
        );
        assert!(
            !over_share(900, full, 499, 500),
            "full: within its share, admitted"
        );
        assert!(!over_share(u64::MAX, full, 0, UNLIMITED));
    }

    #[test]
    fn a_flow_takes_from_its_client_table_and_its_backend_family_ports() {
        assert_eq!(resources_of(false, false), (FLOWS4, SNAT4));
        assert_eq!(resources_of(true, false), (FLOWS6, SNAT4));
        assert_eq!(resources_of(true, true), (FLOWS6, SNAT6));
    }
}
