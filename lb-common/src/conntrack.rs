//! Connection-state rules shared by the XDP program (transitions) and the daemon's expiry pass.
//!
//! The data path tracks just enough TCP state to pick a timeout: a flow in `Established` lives
//! until it has been idle for the established timeout (15 minutes by default, far above IM
//! heartbeats of 25-60 s), half-open and closing flows go much sooner.

use crate::maps::Flow;

/// Flow states stored in `Flow::state`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Client SYN seen, handshake not finished.
    SynSent = 1,
    Established = 2,
    /// FIN seen in either direction.
    Closing = 3,
    /// RST seen.
    Closed = 4,
    /// UDP flow (no handshake).
    Udp = 5,
}

impl State {
    pub const fn from_u8(v: u8) -> Option<State> {
        match v {
            1 => Some(State::SynSent),
            2 => Some(State::Established),
            3 => Some(State::Closing),
            4 => Some(State::Closed),
            5 => Some(State::Udp),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::Established => "established",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Udp => "udp",
        }
    }
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A flow's `last_seen_ns` is rewritten only when older than this, so a busy flow does not write
/// a shared cache line on every packet. Expiry is therefore exact to within this interval.
pub const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Direction of a packet relative to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → backend.
    Forward,
    /// Backend → client.
    Reverse,
}

/// The TCP state after a packet with `flags` travelling in `dir`.
#[inline(always)]
pub const fn next_tcp_state(current: u8, dir: Direction, flags: u8) -> u8 {
    use tcp_flags::*;
    if flags & RST != 0 {
        return State::Closed as u8;
    }
    if current == State::Closed as u8 {
        return current;
    }
    if flags & FIN != 0 {
        return State::Closing as u8;
    }
    if current == State::SynSent as u8 {
        let handshake_done = match dir {
            // The backend's SYN-ACK, or the client's first pure ACK.
            Direction::Reverse => flags & (SYN | ACK) == (SYN | ACK),
            Direction::Forward => flags & (SYN | ACK) == ACK,
        };
        if handshake_done {
            return State::Established as u8;
        }
    }
    current
}

/// Whether a client SYN on an existing entry must start a fresh flow (new backend choice, new
/// SNAT port) rather than follow it: clients reuse source ports, and a closing or reset entry
/// belongs to the previous connection.
#[inline(always)]
pub const fn syn_restarts_flow(state: u8) -> bool {
    state == State::Closing as u8 || state == State::Closed as u8
}

/// Idle timeouts per state, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn_sent_ns: u64,
    pub established_ns: u64,
    pub closing_ns: u64,
    pub closed_ns: u64,
    pub udp_ns: u64,
}

const SEC: u64 = 1_000_000_000;

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn_sent_ns: 30 * SEC,
            established_ns: 15 * 60 * SEC,
            closing_ns: 60 * SEC,
            closed_ns: 10 * SEC,
            udp_ns: 60 * SEC,
        }
    }
}

impl Timeouts {
    pub const fn for_state(&self, state: u8) -> u64 {
        match State::from_u8(state) {
            Some(State::SynSent) => self.syn_sent_ns,
            Some(State::Established) => self.established_ns,
            Some(State::Closing) => self.closing_ns,
            Some(State::Closed) => self.closed_ns,
            Some(State::Udp) => self.udp_ns,
            // Unknown state: expire on the shortest timeout rather than leak the entry.
            None => self.closed_ns,
        }
    }
}

/// Whether the flow has been idle longer than its state's timeout at `now_ns` (CLOCK_MONOTONIC).
pub const fn is_expired(flow: &Flow, now_ns: u64, timeouts: &Timeouts) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) > timeouts.for_state(flow.state)
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;

    #[test]
    fn handshake_and_close() {
        let s = State::SynSent as u8;
        assert_eq!(
            next_tcp_state(s, Direction::Forward, SYN),
            s,
            "retransmitted SYN"
        );
        assert_eq!(
            next_tcp_state(s, Direction::Reverse, SYN | ACK),
            State::Established as u8
        );
        assert_eq!(
            next_tcp_state(s, Direction::Forward, ACK),
            State::Established as u8
        );
        let e = State::Established as u8;
        assert_eq!(next_tcp_state(e, Direction::Forward, ACK), e);
        assert_eq!(
            next_tcp_state(e, Direction::Reverse, FIN | ACK),
            State::Closing as u8
        );
        assert_eq!(
            next_tcp_state(e, Direction::Forward, RST),
            State::Closed as u8
        );
        let c = State::Closed as u8;
        assert_eq!(next_tcp_state(c, Direction::Forward, FIN), c);
    }

    #[test]
    fn syn_on_stale_entries() {
        assert!(syn_restarts_flow(State::Closing as u8));
        assert!(syn_restarts_flow(State::Closed as u8));
        assert!(!syn_restarts_flow(State::Established as u8));
        assert!(!syn_restarts_flow(State::SynSent as u8));
    }

    #[test]
    fn expiry_per_state() {
        let t = Timeouts::default();
        let mut f = Flow {
            state: State::Established as u8,
            last_seen_ns: 1_000 * SEC,
            ..Default::default()
        };
        assert!(!is_expired(&f, 1_000 * SEC + 14 * 60 * SEC, &t));
        assert!(is_expired(&f, 1_000 * SEC + 16 * 60 * SEC, &t));
        f.state = State::Udp as u8;
        assert!(is_expired(&f, 1_000 * SEC + 61 * SEC, &t));
        f.state = State::SynSent as u8;
        assert!(!is_expired(&f, 1_000 * SEC + 29 * SEC, &t));
        // A clock read before the touch never underflows.
        assert!(!is_expired(&f, 0, &t));
    }
}
