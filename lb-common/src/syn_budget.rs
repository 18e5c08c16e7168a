//! Automatic SYN-cookie mode's half-open budget, kept by the data path per VIP so that cookie
//! mode engages the moment a flood starts, not a sampling period later.
//!
//! A generic cell rate algorithm over the VIP's half-open SYNs: a SYN the edge forwards (a new
//! flow) spends `interval` of schedule (1 s / `syn_cookies.engage_syn_rate`); the client's
//! completing ACK, or the data node's refusal (a RST), gives it back. Only SYNs that neither
//! complete nor are refused stay spent, so the schedule runs ahead of the clock only while more
//! than `engage_syn_rate` SYNs a second go unanswered. When it would run more than `tolerance`
//! (a burst of about an eighth of a second at that rate) ahead, the data path engages cookie
//! mode for the VIP: that SYN and every one after it is answered with a cookie. The daemon only
//! reports that and releases it once the VIP is calm again.
//!
//! A reconnect storm of real clients completes its handshakes within a round trip, so its
//! SYNs give their budget back and it does not engage; neither does a storm of reconnects a
//! dead data node refuses.

/// SYNs of burst per SYN a second of `engage_syn_rate`.
pub const BURST_DIVISOR: u32 = 8;

/// (interval, tolerance) in ns for `engage_syn_rate` SYNs a second (0: no budget).
pub const fn params(engage_syn_rate: u32) -> (u64, u64) {
    if engage_syn_rate == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / engage_syn_rate as u64;
    let burst = engage_syn_rate / BURST_DIVISOR;
    let burst = if burst == 0 { 1 } else { burst };
    (interval, (burst as u64 - 1) * interval)
}

/// Whether a SYN at `now` fits the budget whose schedule stands at `tat`.
#[inline(always)]
pub const fn has_room(tat: u64, now: u64, tolerance: u64) -> bool {
    tat <= now || tat - now <= tolerance
}

/// The schedule after a SYN at `now` spent `interval` (credit from the past is not kept: the
/// schedule never starts behind the clock).
#[inline(always)]
pub const fn spent(tat: u64, now: u64, interval: u64) -> u64 {
    (if tat > now { tat } else { now }) + interval
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data path's use of the budget over a stream of SYNs: `syns` at `rate` a second,
    /// each answered (refund) `answer_ns` later when `answered`. Returns how many were
    /// forwarded before cookie mode engaged (None: it never did).
    fn run(rate: u64, syns: u64, answered: bool, answer_ns: u64, engage_rate: u32) -> Option<u64> {
        let (interval, tolerance) = params(engage_rate);
        let mut tat = 0u64;
        let mut pending: std::collections::VecDeque<u64> = Default::default();
        let gap = 1_000_000_000 / rate;
        let start = 1_000_000_000_000u64;
        for i in 0..syns {
            let now = start + i * gap;
            while pending.front().is_some_and(|t| *t <= now) {
                pending.pop_front();
                tat = tat.saturating_sub(interval);
            }
            if !has_room(tat, now, tolerance) {
                return Some(i);
            }
            tat = spent(tat, now, interval);
            if answered {
                pending.push_back(now + answer_ns);
            }
        }
        None
    }

    #[test]
    fn a_spoofed_flood_engages_within_its_first_few_hundred_syns() {
        // 18,000 SYN/s against engage_syn_rate 2,000: a burst of 250, then the rate's share.
        let forwarded = run(18_000, 18_000, false, 0, 2_000).expect("engages");
        assert!(forwarded <= 300, "{forwarded} SYNs reached the data nodes");
        assert!(forwarded >= 250, "{forwarded}");
    }

    #[test]
    fn storms_that_complete_or_are_refused_do_not_engage() {
        // 20,000 reconnects a second completing within 2 ms; the same refused by a RST.
        assert_eq!(run(20_000, 200_000, true, 2_000_000, 2_000), None);
        // Answered after 10 ms: 200 outstanding at a time, within the burst of 250.
        assert_eq!(run(20_000, 200_000, true, 10_000_000, 2_000), None);
    }

    #[test]
    fn unanswered_syns_below_the_rate_never_engage() {
        assert_eq!(run(1_900, 20_000, false, 0, 2_000), None);
        assert!(run(2_200, 20_000, false, 0, 2_000).is_some());
    }

    #[test]
    fn no_rate_no_budget() {
        assert_eq!(params(0), (0, 0));
        assert_eq!(params(2_000), (500_000, 249 * 500_000));
        assert_eq!(params(4), (250_000_000, 0), "a burst of one at least");
    }
}
