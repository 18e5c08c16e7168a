//! When `auto` SYN-cookie mode is reported engaged and when it is released, for one VIP,
//! sampled a few times a second by the daemon's cookie watch. The data path engages it the
//! moment the VIP's half-open budget runs out (lb_common::syn_budget: more than
//! `engage_syn_rate` SYNs a second that neither complete a handshake nor are refused by a
//! data node); the daemon reports that, and releases it once the VIP has been calm for
//! `release_after`: the rate of SYNs that do not complete a handshake (the VIP's SYNs minus the
//! handshakes its clients completed and the cookies they returned) below half the engage rate.
//! A new flow refused for lack of SNAT ports or table space, or over the VIP's share, engages
//! it too (the daemon's only own reason). Pure logic: the clock and the counters come in as arguments.

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

/// What one sample of a VIP says.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// CLOCK_MONOTONIC ns.
    pub now: u64,
    /// Cumulative SYNs the VIP admitted, and handshakes completed (with valid cookies).
    pub syns: u64,
    pub completed: u64,
    /// A new flow was refused for lack of SNAT ports or table space since the last sample.
    pub refused: bool,
    /// The data path's mark: it engaged cookie mode for the VIP.
    pub data_path_engaged: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// (CLOCK_MONOTONIC ns, cumulative SYNs, cumulative completed handshakes) within the last
    /// WINDOW_NS, oldest first.
    samples: VecDeque<(u64, u64, u64)>,
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

    /// SYNs per second over the window that did not complete a handshake, once the window
    /// spans enough time.
    pub fn rate(&self) -> Option<u64> {
        let (&(t0, s0, c0), &(t1, s1, c1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0);
        let unanswered = (s1 - s0).saturating_sub(c1.saturating_sub(c0));
        (span >= MIN_SPAN_NS).then(|| unanswered * 1_000_000_000 / span)
    }

    /// Feeds one sample; the change it brings, if any.
    pub fn observe(&mut self, x: Sample, th: &SynCookies) -> Option<Change> {
        let now = x.now;
        if self
            .samples
            .back()
            .is_some_and(|&(_, s, c)| x.syns < s || x.completed < c)
        {
            // A counter went back (the VIP's id was reused): start over.
            self.samples.clear();
        }
        self.samples.push_back((now, x.syns, x.completed));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _, _)| now.saturating_sub(t) > WINDOW_NS)
        {
            self.samples.pop_front();
        }
        let rate = self.rate();
        let syns_now = self.samples.len() >= 2
            && self.samples.back().map(|s| s.1) != self.samples.front().map(|s| s.1);
        if !self.engaged {
            let why = if x.data_path_engaged {
                let seen = rate.map_or(String::new(), |r| {
                    format!(" ({r} SYNs/s without a completed handshake)")
                });
                format!(
                    "the data path's half-open budget ran out: over {} SYNs/s neither completed nor refused{seen}",
                    th.engage_syn_rate
                )
            } else if x.refused && syns_now {
                "new connections refused for lack of SNAT ports or table space".into()
            } else {
                return None;
            };
            self.engaged = true;
            self.calm_since = None;
            return Some(Change::Engage(why));
        }
        let calm = !x.refused && rate.is_some_and(|r| r < th.engage_syn_rate / 2);
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

    fn sample(now: u64, syns: u64, completed: u64, engaged: bool) -> Sample {
        Sample {
            now,
            syns,
            completed,
            refused: false,
            data_path_engaged: engaged,
        }
    }

    /// Feeds `rate` SYNs/s that never complete for `ms`, sampling every 200 ms, with the data
    /// path's mark `engaged`; returns the changes seen.
    fn run(
        w: &mut Watch,
        t: &mut u64,
        total: &mut u64,
        rate: u64,
        ms: u64,
        engaged: bool,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        for _ in 0..ms / 200 {
            *t += 200 * MS;
            *total += rate / 5;
            out.extend(w.observe(sample(*t, *total, 0, engaged), &th()));
        }
        out
    }

    #[test]
    fn the_data_path_engages_and_the_watch_only_reports_it() {
        let (mut w, mut t, mut n) = (Watch::new(false), 0, 0);
        // However high the rate, the watch does not engage on its own.
        assert!(run(&mut w, &mut t, &mut n, 28_000, 2000, false).is_empty());
        let c = run(&mut w, &mut t, &mut n, 28_000, 200, true);
        assert!(
            matches!(c.as_slice(), [Change::Engage(why)] if why.contains("half-open budget")),
            "{c:?}"
        );
        assert!(w.engaged);
    }

    #[test]
    fn release_waits_for_calm() {
        let (mut w, mut t, mut n) = (Watch::new(false), 0, 0);
        run(&mut w, &mut t, &mut n, 28_000, 1000, true);
        assert!(w.engaged);
        // Still flooding: stays engaged however long.
        assert!(run(&mut w, &mut t, &mut n, 28_000, 60_000, true).is_empty());
        // Between half the rate and the rate: not calm, stays.
        assert!(run(&mut w, &mut t, &mut n, 700, 30_000, true).is_empty());
        // Calm: releases only after release_after (10 s), not before. (Releasing clears the
        // data path's mark; while engaged the watch does not look at it.)
        assert!(run(&mut w, &mut t, &mut n, 100, 9_000, true).is_empty());
        let c = run(&mut w, &mut t, &mut n, 100, 3_000, false);
        assert!(matches!(c.as_slice(), [Change::Release(_)]), "{c:?}");
        assert!(!w.engaged);
    }

    #[test]
    fn refusals_engage_only_while_syns_arrive() {
        let mut w = Watch::new(false);
        let refused = |now, syns| Sample {
            refused: true,
            ..sample(now, syns, 0, false)
        };
        assert_eq!(
            w.observe(refused(0, 10), &th()),
            None,
            "one sample: nothing arrives yet"
        );
        assert_eq!(
            w.observe(refused(200 * MS, 10), &th()),
            None,
            "no SYNs: not a flood"
        );
        assert!(matches!(
            w.observe(refused(400 * MS, 12), &th()),
            Some(Change::Engage(_))
        ));
    }

    #[test]
    fn a_counter_that_goes_back_starts_over() {
        let mut w = Watch::new(false);
        w.observe(sample(0, 1_000_000, 0, false), &th());
        assert_eq!(w.observe(sample(500 * MS, 5, 0, false), &th()), None);
        assert_eq!(w.rate(), None);
    }
}
