//! Priority groups: how new flows are shared between a VIP's backend groups, after Envoy's
//! priority levels. A level's health is its healthy share of backends times the
//! overprovisioning factor, capped at 100; levels take load in priority order up to their
//! health, normalized when the healths sum to less than 100. So the preferred level keeps every
//! new flow until fewer than 1/overprovisioning of its backends are healthy (72% at 1.4), then
//! spills in proportion. Pure integer math, unit-tested against Envoy's documented examples.

/// A level's health in percent: min(100, overprovisioning% × healthy / total), at least 1
/// while any backend of it is healthy (a large level with one survivor still counts).
pub fn health(healthy: u32, total: u32, overprovisioning_pct: u32) -> u32 {
    if total == 0 || healthy == 0 {
        return 0;
    }
    (overprovisioning_pct as u64 * healthy as u64 / total as u64).clamp(1, 100) as u32
}

/// Percent of new flows per level, in priority order (summing to 100), from their healths;
/// None when no level has any health (fail-open's case).
pub fn loads(health: &[u32]) -> Option<Vec<u32>> {
    let total = health.iter().sum::<u32>().min(100);
    if total == 0 {
        return None;
    }
    let mut left = 100u32;
    let mut out = Vec::with_capacity(health.len());
    for h in health {
        let share = (h * 100 + total / 2) / total;
        let l = share.min(left);
        left -= l;
        out.push(l);
    }
    // Rounding leftovers go to the most preferred level that can take load.
    if left > 0
        && let Some(i) = health.iter().position(|h| *h > 0)
    {
        out[i] += left;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads of levels given as healthy percentages (100 backends each), overprovisioning 1.4.
    fn shares(healthy_pct: &[u32]) -> Vec<u32> {
        let h: Vec<u32> = healthy_pct.iter().map(|p| health(*p, 100, 140)).collect();
        loads(&h).expect("some health")
    }

    #[test]
    fn envoy_two_levels_second_fully_healthy() {
        // Envoy's "Priority levels" documentation, P=1 100% healthy.
        for (p0, want) in [
            (100, [100, 0]),
            (72, [100, 0]),
            (71, [99, 1]),
            (50, [70, 30]),
            (25, [35, 65]),
            (0, [0, 100]),
        ] {
            assert_eq!(shares(&[p0, 100]), want, "P=0 {p0}% healthy");
        }
    }

    #[test]
    fn envoy_normalized_total_health() {
        // Healths {20, 30} normalize to {40, 60}; and the documented two-level rows.
        assert_eq!(loads(&[20, 30]), Some(vec![40, 60]));
        for (p, want) in [
            ([100, 100], [100, 0]),
            ([72, 72], [100, 0]),
            ([71, 71], [99, 1]),
            ([50, 50], [70, 30]),
            ([25, 100], [35, 65]),
            ([25, 25], [50, 50]),
        ] {
            assert_eq!(shares(&p), want, "{p:?}");
        }
    }

    #[test]
    fn envoy_three_levels() {
        for (p, want) in [
            ([100, 100, 100], [100, 0, 0]),
            ([72, 72, 100], [100, 0, 0]),
            ([71, 71, 100], [99, 1, 0]),
            ([50, 50, 100], [70, 30, 0]),
            ([25, 100, 100], [35, 65, 0]),
            ([25, 25, 100], [35, 35, 30]),
            ([25, 25, 20], [36, 36, 28]),
        ] {
            assert_eq!(shares(&p), want, "{p:?}");
        }
    }

    #[test]
    fn small_groups_and_no_health() {
        // 3 direct backends, 2 relays: one direct down is 93% health, so 7% spills.
        let relay = health(2, 2, 140);
        assert_eq!(loads(&[health(3, 3, 140), relay]), Some(vec![100, 0]));
        assert_eq!(loads(&[health(2, 3, 140), relay]), Some(vec![93, 7]));
        assert_eq!(loads(&[health(1, 3, 140), relay]), Some(vec![46, 54]));
        assert_eq!(loads(&[health(0, 3, 140), relay]), Some(vec![0, 100]));
        // Overprovisioning 1.0: any loss spills.
        assert_eq!(loads(&[health(9, 10, 100), 100]), Some(vec![90, 10]));
        // One survivor of a large level still counts.
        assert_eq!(health(1, 1000, 140), 1);
        assert_eq!(loads(&[0, 0]), None);
        assert_eq!(loads(&[]), None);
    }
}
