//! When `auto` SYN-cookie mode engages and releases for one VIP, sampled a few times a second by
//! the daemon's cookie watch. The pressure is the rate of SYNs that do not complete a handshake
//! (the VIP's SYNs minus the handshakes its clients completed and the cookies they returned): a
//! spoofed flood never completes one, while a reconnect storm of real clients completes nearly
//! all of them and so does not engage cookie mode (which would cost client-first protocols one
//! retransmission per connection). A new flow refused for lack of SNAT ports or table space
//! engages it too. Pure logic: the clock and the counters come in as arguments.

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

    /// Feeds the VIP's cumulative SYNs and completed handshakes at `now`; `refused` says a new
    /// flow was refused for lack of SNAT ports or table space since the previous sample.
    pub fn observe(
        &mut self,
        now: u64,
        syns: u64,
        completed: u64,
        refused: bool,
        th: &SynCookies,
    ) -> Option<Change> {
        if self
            .samples
            .back()
            .is_some_and(|&(_, s, c)| syns < s || completed < c)
        {
            // A counter went back (the VIP's id was reused): start over.
            self.samples.clear();
        }
        self.samples.push_back((now, syns, completed));
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
            let why = match rate {
                Some(r) if r >= th.engage_syn_rate => Some(format!(
                    "{r} SYNs/s without a completed handshake (engage_syn_rate {})",
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

    /// Feeds `rate` SYNs/s that never complete for `ms`, sampling every 200 ms; returns the
    /// changes seen.
    fn run(w: &mut Watch, t: &mut u64, total: &mut u64, rate: u64, ms: u64) -> Vec<Change> {
        let mut out = Vec::new();
        for _ in 0..ms / 200 {
            *t += 200 * MS;
            *total += rate / 5;
            out.extend(w.observe(*t, *total, 0, false, &th()));
        }
        out
    }

    #[test]
    fn a_storm_of_real_clients_does_not_engage() {
        let mut w = Watch::new(false);
        let (mut t, mut syns, mut done) = (0u64, 0u64, 0u64);
        for _ in 0..50 {
            t += 200 * MS;
            syns += 4000; // 20,000 SYNs/s ...
            done += 3950; // ... nearly all of which complete
            assert_eq!(w.observe(t, syns, done, false, &th()), None);
        }
        assert!(!w.engaged);
        // The same rate with nothing completing is a flood.
        let mut c = Vec::new();
        for _ in 0..5 {
            t += 200 * MS;
            syns += 4000;
            c.extend(w.observe(t, syns, done, false, &th()));
        }
        assert!(matches!(c.as_slice(), [Change::Engage(_)]), "{c:?}");
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
            w.observe(0, 10, 0, true, &th()),
            None,
            "one sample: nothing arrives yet"
        );
        assert_eq!(
            w.observe(200 * MS, 10, 0, true, &th()),
            None,
            "no SYNs: not a flood"
        );
        assert!(matches!(
            w.observe(400 * MS, 12, 0, true, &th()),
            Some(Change::Engage(_))
        ));
    }

    #[test]
    fn a_counter_that_goes_back_starts_over() {
        let mut w = Watch::new(false);
        w.observe(0, 1_000_000, 0, false, &th());
        assert_eq!(w.observe(500 * MS, 5, 0, false, &th()), None);
        assert_eq!(w.rate(), None);
    }
}
