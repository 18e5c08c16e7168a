//! Health checking: the per-backend state machine (pure, unit-tested) here, the probes that
//! feed it in `probe`.
//!
//! A backend is `Pending` until its first results decide (one added at runtime takes no traffic
//! before it has proven itself), then `Up` or `Down` with rise/fall hysteresis.

pub mod probe;

use serde::{Deserialize, Serialize};

/// What the probes say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not probed enough yet.
    Pending,
    Up,
    Down,
}

/// Rise/fall hysteresis: `fall` consecutive failures take a backend down, `rise` consecutive
/// successes bring it up; a pending backend goes whichever way completes first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: Status,
    /// Consecutive successes (or failures, as the sign says) since the last change.
    streak: i32,
    rise: u32,
    fall: u32,
}

/// A change of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

impl Health {
    pub fn new(rise: u32, fall: u32, status: Status) -> Self {
        Health {
            status,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.status == Status::Up
    }

    /// The same state with new thresholds (a reload changed the health check).
    pub fn rethreshold(&self, rise: u32, fall: u32) -> Self {
        Health::new(rise, fall, self.status)
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.streak = if self.streak > 0 { self.streak + 1 } else { 1 };
        } else {
            self.streak = if self.streak < 0 { self.streak - 1 } else { -1 };
        }
        let next = if self.streak >= self.rise as i32 {
            Status::Up
        } else if -self.streak >= self.fall as i32 {
            Status::Down
        } else {
            return None;
        };
        if next == self.status {
            return None;
        }
        self.status = next;
        self.streak = 0;
        Some(if next == Status::Up {
            Transition::Up
        } else {
            Transition::Down
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Health::new(2, 3, Status::Up);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Transition::Up));
        assert!(h.is_up());
    }

    #[test]
    fn flapping_never_completes_a_streak() {
        let mut h = Health::new(2, 2, Status::Up);
        for _ in 0..50 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None);
        }
        assert!(h.is_up());
        h.record(false);
        h.record(false);
        assert!(!h.is_up());
        for _ in 0..50 {
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(false), None);
        }
        assert!(!h.is_up());
    }

    #[test]
    fn pending_goes_whichever_way_completes_first() {
        let mut h = Health::new(2, 3, Status::Pending);
        assert_eq!(h.record(true), None);
        assert_eq!(h.status, Status::Pending);
        assert_eq!(h.record(true), Some(Transition::Up));
        let mut h = Health::new(2, 2, Status::Pending);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Transition::Down));
        // Successes that do not change the state are no transition.
        let mut h = Health::new(1, 1, Status::Up);
        assert_eq!(h.record(true), None);
    }
}
