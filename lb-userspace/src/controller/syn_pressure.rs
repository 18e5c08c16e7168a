//! When `auto` SYN-cookie mode engages and releases for one VIP, from its SYN counter and the
//! data path's refusals, sampled a few times a second by the daemon's cookie watch. Pure logic:
//! the clock and the counters come in as arguments.

use std::collections::VecDeque;

use crate::config::SynCookies;

/// The SYN rate is measured over this much recent history.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// A rate is trusted once the samples span this much.
const MIN_SPAN_NS: u64 = 300_000_000;

/// A change of mode and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Engage(String),
    Release(String),
}

#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// (CLOCK_MONOTONIC ns, cumulative SYNs) within the last WINDOW_NS, oldest first.
    samples: VecDeque<(u64, u64)>,
    pub engaged: bool,
    calm_since: Option<u64>,
}

impl Watch {
    pub fn new(engaged: bool) -> Self {
        Watch {
            engaged,
            ..Default::default()
        }
    }

    /// SYNs per second over the window, once it spans enough time.
    pub fn rate(&self) -> Option<u64> {
        let (&(t0, s0), &(t1, s1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0);
        (span >= MIN_SPAN_NS).then(|| (s1 - s0) * 1_000_000_000 / span)
    }

    /// Feeds the VIP's cumulative SYN count at `now`; `refused` says a new flow was refused for
    /// lack of SNAT ports or table space since the previous sample.
    pub fn observe(
        &mut self,
        now: u64,
        syns: u64,
        refused: bool,
        th: &SynCookies,
    ) -> Option<Change> {
        if self.samples.back().is_some_and(|&(_, s)| syns < s) {
            // The counter went back (the VIP's id was reused): start over.
            self.samples.clear();
        }
        self.samples.push_back((now, syns));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > WINDOW_NS)
        {
            self.samples.pop_front();
        }
        let rate = self.rate();
        let syns_now = self.samples.len() >= 2
            && self.samples.back().map(|s| s.1) != self.samples.front().map(|s| s.1);
        if !self.engaged {
            let why = match rate {
                Some(r) if r >= th.engage_syn_rate => Some(format!(
                    "{r} SYNs/s (engage_syn_rate {})",
                    th.engage_syn_rate
                )),
                _ if refused && syns_now => {
                    Some("new connections refused for lack of SNAT ports or table space".into())
                }
                _ => None,
            }?;
            self.engaged = true;
            self.calm_since = None;
            return Some(Change::Engage(why));
        }
        let calm = !refused && rate.is_some_and(|r| r < th.engage_syn_rate / 2);
        if !calm {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_sub(since) >= th.release_after.as_nanos() as u64 {
            self.engaged = false;
            self.calm_since = None;
            return Some(Change::Release(format!(
                "below {} SYNs/s for {}",
                th.engage_syn_rate / 2,
                humantime::format_duration(th.release_after)
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn th() -> SynCookies {
        SynCookies {
            engage_syn_rate: 1000,
            release_after: Duration::from_secs(10),
        }
    }

    /// Feeds `rate` SYNs/s for `ms`, sampling every 200 ms; returns the changes seen.
    fn run(w: &mut Watch, t: &mut u64, total: &mut u64, rate: u64, ms: u64) -> Vec<Change> {
        let mut out = Vec::new();
        for _ in 0..ms / 200 {
            *t += 200 * MS;
            *total += rate / 5;
            out.extend(w.observe(*t, *total, false, &th()));
        }
        out
    }

    #[test]
    fn a_flood_engages_within_a_second_and_release_waits_for_calm() {
        let (mut w, mut t, mut n) = (Watch::new(false), 0, 0);
        assert!(
            run(&mut w, &mut t, &mut n, 500, 5000).is_empty(),
            "below the rate"
        );
        let c = run(&mut w, &mut t, &mut n, 28_000, 1000);
        assert!(matches!(c.as_slice(), [Change::Engage(_)]), "{c:?}");
        assert!(w.engaged);
        // Still flooding: stays engaged however long.
        assert!(run(&mut w, &mut t, &mut n, 28_000, 60_000).is_empty());
        // Between half the rate and the rate: not calm, stays.
        assert!(run(&mut w, &mut t, &mut n, 700, 30_000).is_empty());
        // Calm: releases only after release_after (10 s), not before.
        assert!(run(&mut w, &mut t, &mut n, 100, 9_000).is_empty());
        let c = run(&mut w, &mut t, &mut n, 100, 3_000);
        assert!(matches!(c.as_slice(), [Change::Release(_)]), "{c:?}");
        assert!(!w.engaged);
    }

    #[test]
    fn refusals_engage_only_while_syns_arrive() {
        let mut w = Watch::new(false);
        assert_eq!(
            w.observe(0, 10, true, &th()),
            None,
            "one sample: nothing arrives yet"
        );
        assert_eq!(
            w.observe(200 * MS, 10, true, &th()),
            None,
            "no SYNs: not a flood"
        );
        assert!(matches!(
            w.observe(400 * MS, 12, true, &th()),
            Some(Change::Engage(_))
        ));
    }

    #[test]
    fn a_counter_that_goes_back_starts_over() {
        let mut w = Watch::new(false);
        w.observe(0, 1_000_000, false, &th());
        assert_eq!(w.observe(500 * MS, 5, false, &th()), None);
        assert_eq!(w.rate(), None);
    }
}
