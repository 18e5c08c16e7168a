//! Connection-state rules shared by the XDP program (transitions) and the daemon's expiry pass.
//!
//! The data path tracks TCP just enough to pick an idle timeout, and no further than it can
//! trust: a RST or FIN changes a flow's state only when its sequence number is one the receiving
//! endpoint would accept (RFC 5961 for RST: exactly the receiver's RCV.NXT; FIN: inside the
//! receiver's window). Anything else is still forwarded (the endpoint decides) but leaves the
//! state and timeout alone, so a blind RST cannot make the edge forget a live connection.
//! A flow becomes established only on the backend's SYN-ACK for the client's SYN: a spoofed
//! SYN and ACK pair no longer buys a 15-minute entry.

use crate::maps::FlowEntry;

/// Flow states stored in `FlowEntry::state`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Client SYN seen, no matching SYN-ACK from the backend yet.
    SynSent = 1,
    Established = 2,
    /// An acceptable FIN seen in either direction.
    Closing = 3,
    /// An acceptable RST seen.
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

    /// Still carrying data (what `wklb conns` and the active-flow counts show by default).
    pub const fn is_open(self) -> bool {
        matches!(self, State::SynSent | State::Established | State::Udp)
    }
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// `FlowEntry::wscale` of a side that did not offer window scaling.
pub const NO_WSCALE: u8 = 0xff;
/// RFC 7323: larger shifts are treated as 14.
pub const MAX_WSCALE: u8 = 14;

/// A flow's `last_seen_ns` is rewritten only when older than this, so a busy flow does not write
/// a shared cache line on every packet. Expiry is therefore exact to within this interval.
pub const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Direction of a packet relative to the flow; the index into per-direction fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → backend.
    Forward = 0,
    /// Backend → client.
    Reverse = 1,
}

/// The TCP header fields the tracker reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// The window scale option's shift on a SYN, else `NO_WSCALE`.
    pub wscale: u8,
    /// Payload bytes (what the segment adds to the sequence space besides SYN and FIN).
    pub len: u32,
}

/// Whether a segment's sequence number let it change the flow's state.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tracked normally: it may change the state and refresh the flow.
    Accepted,
    /// A RST or FIN the receiver would not accept: forward it, keep the state.
    Unaccepted,
    /// Another segment whose sequence number is nowhere near the receiver's window: forwarded
    /// (the endpoint decides), but it changes nothing here, not even the flow's idle time or
    /// the way back to the client, so a blind spoofer can neither keep a dead flow alive nor
    /// move acknowledgments a later RST would be judged by.
    Stray,
}

/// Whether a TCP segment may start a flow: a SYN without ACK, RST or FIN.
#[inline(always)]
pub const fn is_initial_syn(flags: u8) -> bool {
    use tcp_flags::*;
    flags & (SYN | ACK | RST | FIN) == SYN
}

/// SYN together with RST or FIN: never valid, never forwarded.
#[inline(always)]
pub const fn is_bad_syn(flags: u8) -> bool {
    use tcp_flags::*;
    flags & SYN != 0 && flags & (RST | FIN) != 0
}

/// `seq` lies in `[start, start + len)` modulo 2^32.
#[inline(always)]
const fn in_window(seq: u32, start: u32, len: u32) -> bool {
    seq.wrapping_sub(start) < len
}

/// The least window a segment's plausibility is judged by (a receiver that advertised less,
/// or zero, still gets keepalives and probes just below and above its RCV.NXT).
const MIN_PLAUSIBLE_WINDOW: u32 = 65_536;

impl FlowEntry {
    /// Initial tracking state of a TCP flow created by the client's SYN `seg`.
    #[inline(always)]
    pub fn start_tcp(&mut self, seg: &Segment) {
        self.state = State::SynSent as u8;
        // The backend's RCV.NXT once it has the SYN: a client RST before any answer must carry
        // exactly this sequence number, a backend RST must acknowledge it.
        self.ack = [0, seg.seq.wrapping_add(1)];
        self.win = [0, 0];
        self.wscale = [clamp_wscale(seg.wscale), NO_WSCALE];
        self.end = [seg.seq.wrapping_add(1).wrapping_add(seg.len), 0];
    }

    /// Whether `seg`, travelling in `dir`, could belong to the connection: its sequence number
    /// within a window of the receiver's last acknowledgment (either side of it: segments
    /// behind it are retransmissions and keepalives). Before the receiver has acknowledged
    /// anything (the backend's SYN-ACK), there is nothing to judge by.
    #[inline(always)]
    const fn plausible(&self, dir: Direction, seg: &Segment) -> bool {
        let r = 1 - dir as usize;
        // The backend's RCV.NXT is known from the client's SYN; the client's from its ACKs.
        if r == 0 && self.flags & FlowEntry::ACK_SEEN_FWD == 0 {
            return true;
        }
        let w = if self.win[r] > MIN_PLAUSIBLE_WINDOW {
            self.win[r]
        } else {
            MIN_PLAUSIBLE_WINDOW
        };
        in_window(seg.seq, self.ack[r].wrapping_sub(w), w.saturating_mul(2))
    }

    /// The window `dir`'s side advertised in `seg`, in bytes.
    #[inline(always)]
    const fn window_bytes(&self, dir: usize, seg: &Segment) -> u32 {
        let (mine, theirs) = (self.wscale[dir], self.wscale[1 - dir]);
        // RFC 7323: SYN windows are never scaled; scaling applies only when both sides offered it.
        if seg.flags & tcp_flags::SYN != 0 || mine == NO_WSCALE || theirs == NO_WSCALE {
            seg.win as u32
        } else {
            (seg.win as u32) << mine
        }
    }

    /// Tracks one segment travelling in `dir` and advances the state when it may.
    #[inline(always)]
    pub fn track_tcp(&mut self, dir: Direction, seg: &Segment) -> Verdict {
        use tcp_flags::*;
        let d = dir as usize;
        let r = 1 - d;
        if seg.flags & RST != 0 {
            if !self.rst_acceptable(dir, seg) {
                return Verdict::Unaccepted;
            }
            self.state = State::Closed as u8;
            return Verdict::Accepted;
        }
        if dir == Direction::Forward
            && seg.flags & (SYN | ACK) == SYN
            && self.state == State::SynSent as u8
            && self.flags & FlowEntry::ACK_SEEN_REV == 0
        {
            // A retransmitted (or re-numbered: a client reusing its port) SYN before any
            // answer: judged before plausibility, which a new ISN never passes. The backend
            // answers the last SYN; it neither refreshes the flow nor moves its hop (anyone
            // knowing the tuple could send it).
            self.ack[1] = seg.seq.wrapping_add(1);
            self.end[0] = self.ack[1];
            self.wscale[0] = clamp_wscale(seg.wscale);
            return Verdict::Stray;
        }
        // RFC 5961 §5.2: a segment whose acknowledgment is not for data the other side sent
        // (or is older than a window) moves nothing: with the sequence check, a blind
        // attacker must guess both numbers.
        if !self.plausible(dir, seg) || !self.ack_credible(dir, seg) {
            return if seg.flags & FIN != 0 {
                Verdict::Unaccepted
            } else {
                Verdict::Stray
            };
        }
        if dir == Direction::Reverse && self.state == State::SynSent as u8 {
            if seg.flags & ACK != 0 && seg.ack != self.ack[1] {
                // Acknowledges something the client never sent: the client will reset it.
                return Verdict::Accepted;
            }
            if seg.flags & (SYN | ACK) == (SYN | ACK) {
                // The backend answers the client's SYN: the handshake is real.
                self.state = State::Established as u8;
                self.wscale[1] = clamp_wscale(seg.wscale);
            }
        }
        if seg.flags & FIN != 0 {
            // In the receiver's window; before it has announced one (a FIN during the
            // handshake), only exactly at its RCV.NXT.
            if !in_window(seg.seq, self.ack[r], max1(self.win[r])) {
                return Verdict::Unaccepted;
            }
            if self.state == State::SynSent as u8 || self.state == State::Established as u8 {
                self.state = State::Closing as u8;
            }
        }
        if seg.flags & ACK != 0 {
            let seen = self.flags & FlowEntry::ack_seen_bit(d) != 0;
            // Only forward-moving acknowledgments: a reordered segment does not roll it back.
            if !seen || seg.ack.wrapping_sub(self.ack[d]) as i32 >= 0 {
                self.ack[d] = seg.ack;
            }
            self.win[d] = self.window_bytes(d, seg);
            self.flags |= FlowEntry::ack_seen_bit(d);
        }
        // SND.NXT of the sender as far as seen: a RST there is the sender's own. Only a
        // segment that continues what was seen moves it (no gap: a blind segment landing
        // somewhere in the window cannot set where a RST is accepted).
        let end = seg
            .seq
            .wrapping_add(seg.len)
            .wrapping_add((seg.flags & (SYN | FIN) != 0) as u32);
        let contiguous = self.end[d] == 0 || seg.seq.wrapping_sub(self.end[d]) as i32 <= 0;
        if contiguous && (self.end[d] == 0 || end.wrapping_sub(self.end[d]) as i32 > 0) {
            self.end[d] = end;
        }
        Verdict::Accepted
    }

    /// RFC 5961 §5.2 from the edge: a segment's acknowledgment lies between one window before
    /// what its sender acknowledged last (before its first: before the other side's SND.NXT)
    /// and what the other side has sent. True without an ACK, or before the other side sent.
    #[inline(always)]
    const fn ack_credible(&self, dir: Direction, seg: &Segment) -> bool {
        let (d, r) = (dir as usize, 1 - dir as usize);
        if seg.flags & tcp_flags::ACK == 0 || self.end[r] == 0 {
            return true;
        }
        let w = if self.win[d] > MIN_PLAUSIBLE_WINDOW {
            self.win[d]
        } else {
            MIN_PLAUSIBLE_WINDOW
        };
        let floor = if self.flags & FlowEntry::ack_seen_bit(d) != 0 {
            self.ack[d].wrapping_sub(w)
        } else {
            self.end[r].wrapping_sub(w)
        };
        seg.ack.wrapping_sub(floor) <= self.end[r].wrapping_sub(floor)
    }

    /// Whether `seg`, the client's first ACK, completes the handshake: it acknowledges exactly
    /// the backend's SYN-ACK (a spoofed source never saw it).
    #[inline(always)]
    pub const fn completes_handshake(&self, seg: &Segment) -> bool {
        seg.flags & tcp_flags::ACK != 0 && self.end[1] != 0 && seg.ack == self.end[1]
    }

    /// RFC 5961 §3.2: a RST counts only at the receiver's exact RCV.NXT. The edge sees two
    /// candidates for it: the receiver's last acknowledgment, and the sender's SND.NXT (the end
    /// of what it sent, which the receiver has when nothing is lost): a RST sent after data
    /// the receiver has not acknowledged yet carries the latter. A backend refusing the
    /// client's SYN (no acknowledgment from the client yet) must acknowledge that SYN.
    #[inline(always)]
    const fn rst_acceptable(&self, dir: Direction, seg: &Segment) -> bool {
        let (d, r) = (dir as usize, 1 - dir as usize);
        let receiver_acked = self.flags & FlowEntry::ack_seen_bit(r) != 0;
        let at_snd_nxt = self.end[d] != 0 && seg.seq == self.end[d];
        match dir {
            Direction::Forward => seg.seq == self.ack[1] || at_snd_nxt,
            Direction::Reverse if receiver_acked => seg.seq == self.ack[0] || at_snd_nxt,
            Direction::Reverse => seg.flags & tcp_flags::ACK != 0 && seg.ack == self.ack[1],
        }
    }
}

#[inline(always)]
const fn max1(v: u32) -> u32 {
    if v == 0 { 1 } else { v }
}

#[inline(always)]
const fn clamp_wscale(s: u8) -> u8 {
    if s == NO_WSCALE {
        NO_WSCALE
    } else if s > MAX_WSCALE {
        MAX_WSCALE
    } else {
        s
    }
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
pub const fn is_expired(flow: &FlowEntry, now_ns: u64, timeouts: &Timeouts) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) > timeouts.for_state(flow.state)
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;
    use Direction::{Forward, Reverse};

    const CLIENT_ISN: u32 = 1_000;
    const BACKEND_ISN: u32 = 0xffff_ff00; // wraps during the test

    fn seg(flags: u8, seq: u32, ack: u32, win: u16) -> Segment {
        Segment {
            flags,
            seq,
            ack,
            win,
            wscale: NO_WSCALE,
            len: 0,
        }
    }

    fn data(flags: u8, seq: u32, ack: u32, win: u16, len: u32) -> Segment {
        Segment {
            len,
            ..seg(flags, seq, ack, win)
        }
    }

    /// A flow after the three-way handshake, client window scale 7, backend 9.
    fn established() -> FlowEntry {
        let mut f = FlowEntry::default();
        f.start_tcp(&Segment {
            wscale: 7,
            ..seg(SYN, CLIENT_ISN, 0, 64240)
        });
        let synack = Segment {
            wscale: 9,
            ..seg(SYN | ACK, BACKEND_ISN, CLIENT_ISN + 1, 65160)
        };
        assert_eq!(f.track_tcp(Reverse, &synack), Verdict::Accepted);
        assert_eq!(f.state, State::Established as u8);
        let ack = seg(ACK, CLIENT_ISN + 1, BACKEND_ISN.wrapping_add(1), 502);
        assert_eq!(f.track_tcp(Forward, &ack), Verdict::Accepted);
        f
    }

    #[test]
    fn handshake_needs_the_backends_synack_for_the_clients_syn() {
        let mut f = FlowEntry::default();
        f.start_tcp(&seg(SYN, CLIENT_ISN, 0, 64240));
        // A client's pure ACK (spoofed or not) does not establish the flow.
        f.track_tcp(Forward, &seg(ACK, CLIENT_ISN + 1, 12345, 100));
        assert_eq!(f.state, State::SynSent as u8);
        // A SYN-ACK acknowledging something else does not either.
        f.track_tcp(Reverse, &seg(SYN | ACK, 7, CLIENT_ISN + 99, 100));
        assert_eq!(f.state, State::SynSent as u8);
        f.track_tcp(Reverse, &seg(SYN | ACK, 7, CLIENT_ISN + 1, 100));
        assert_eq!(f.state, State::Established as u8);
    }

    #[test]
    fn blind_rst_is_not_accepted_but_the_exact_one_is() {
        let mut f = established();
        // The backend's RCV.NXT is the client's ISN + 1 (no data yet).
        for bad in [
            0u32,
            CLIENT_ISN,
            CLIENT_ISN + 2,
            CLIENT_ISN + 1000,
            0xdead_beef,
        ] {
            let v = f.track_tcp(Forward, &seg(RST, bad, 0, 0));
            assert_eq!(v, Verdict::Unaccepted, "seq {bad}");
            assert_eq!(f.state, State::Established as u8);
            let v = f.track_tcp(Reverse, &seg(RST | ACK, bad, 0, 0));
            assert_eq!(v, Verdict::Unaccepted, "reverse seq {bad}");
        }
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 1, 0, 0)),
            Verdict::Accepted
        );
        assert_eq!(f.state, State::Closed as u8);
        let mut f = established();
        let rst = seg(RST, BACKEND_ISN.wrapping_add(1), 0, 0);
        assert_eq!(f.track_tcp(Reverse, &rst), Verdict::Accepted);
        assert_eq!(f.state, State::Closed as u8);
    }

    #[test]
    fn rst_follows_the_receivers_acknowledgments() {
        let mut f = established();
        // The client sends 100 bytes, the backend acknowledges them.
        f.track_tcp(
            Forward,
            &data(
                ACK | PSH,
                CLIENT_ISN + 1,
                BACKEND_ISN.wrapping_add(1),
                502,
                100,
            ),
        );
        f.track_tcp(
            Reverse,
            &seg(ACK, BACKEND_ISN.wrapping_add(1), CLIENT_ISN + 101, 500),
        );
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 1, 0, 0)),
            Verdict::Unaccepted,
            "old RCV.NXT"
        );
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 101, 0, 0)),
            Verdict::Accepted
        );
    }

    #[test]
    fn a_rst_at_the_senders_next_sequence_number_is_accepted_before_its_data_is_acked() {
        let mut f = established();
        // 100 bytes the backend has not acknowledged.
        let sent = data(
            ACK | PSH,
            CLIENT_ISN + 1,
            BACKEND_ISN.wrapping_add(1),
            502,
            100,
        );
        assert_eq!(f.track_tcp(Forward, &sent), Verdict::Accepted);
        assert_eq!(f.end[0], CLIENT_ISN + 101);
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 102, 0, 0)),
            Verdict::Unaccepted
        );
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 101, 0, 0)),
            Verdict::Accepted
        );
        // The backend's side the same: 50 bytes the client has not acknowledged.
        let mut f = established();
        let b1 = BACKEND_ISN.wrapping_add(1);
        f.track_tcp(Reverse, &data(ACK, b1, CLIENT_ISN + 1, 500, 50));
        let rst = seg(RST, b1.wrapping_add(50), 0, 0);
        assert_eq!(f.track_tcp(Reverse, &rst), Verdict::Accepted);
    }

    #[test]
    fn segments_far_from_the_receivers_window_change_nothing() {
        let mut f = established();
        let before = f;
        // A blind ACK trying to move the client's acknowledgment, and a blind data segment.
        for s in [
            seg(ACK, CLIENT_ISN + 3_000_000, 0x1234_5678, 100),
            data(
                ACK | PSH,
                0x8000_0000,
                BACKEND_ISN.wrapping_add(1),
                100,
                1000,
            ),
        ] {
            assert_eq!(f.track_tcp(Forward, &s), Verdict::Stray);
        }
        assert_eq!(f, before, "a stray segment changed the flow");
        // A blind FIN there is an unaccepted FIN, as before.
        let fin = seg(FIN | ACK, CLIENT_ISN + 3_000_000, 0, 0);
        assert_eq!(f.track_tcp(Forward, &fin), Verdict::Unaccepted);
        // Retransmissions and keepalives just behind the receiver's acknowledgment are fine.
        let keepalive = seg(ACK, CLIENT_ISN, BACKEND_ISN.wrapping_add(1), 502);
        assert_eq!(f.track_tcp(Forward, &keepalive), Verdict::Accepted);
        // Before the client has acknowledged anything, the backend's SYN-ACK is not judged.
        let mut g = FlowEntry::default();
        g.start_tcp(&seg(SYN, CLIENT_ISN, 0, 64240));
        let synack = seg(SYN | ACK, 0x9999_0000, CLIENT_ISN + 1, 100);
        assert_eq!(g.track_tcp(Reverse, &synack), Verdict::Accepted);
    }

    #[test]
    fn half_open_rsts() {
        // The client gives up before any answer: its RST carries ISN + 1.
        let mut f = FlowEntry::default();
        f.start_tcp(&seg(SYN, CLIENT_ISN, 0, 64240));
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 5, 0, 0)),
            Verdict::Unaccepted
        );
        assert_eq!(
            f.track_tcp(Forward, &seg(RST, CLIENT_ISN + 1, 0, 0)),
            Verdict::Accepted
        );
        // The backend refuses (closed port): RST|ACK acknowledging the SYN.
        let mut f = FlowEntry::default();
        f.start_tcp(&seg(SYN, CLIENT_ISN, 0, 64240));
        assert_eq!(
            f.track_tcp(Reverse, &seg(RST, 0, 0, 0)),
            Verdict::Unaccepted,
            "no ACK"
        );
        assert_eq!(
            f.track_tcp(Reverse, &seg(RST | ACK, 0, CLIENT_ISN + 7, 0)),
            Verdict::Unaccepted
        );
        assert_eq!(
            f.track_tcp(Reverse, &seg(RST | ACK, 0, CLIENT_ISN + 1, 0)),
            Verdict::Accepted
        );
        assert_eq!(f.state, State::Closed as u8);
    }

    #[test]
    fn fin_must_be_inside_the_receivers_scaled_window() {
        let mut f = established();
        f.track_tcp(
            Reverse,
            &seg(ACK, BACKEND_ISN.wrapping_add(1), CLIENT_ISN + 1, 500),
        );
        // The backend advertised 500 << 9 = 256,000 bytes.
        assert_eq!(f.win[1], 500 << 9);
        let far = seg(FIN | ACK, CLIENT_ISN + 1 + 300_000, 0, 0);
        assert_eq!(f.track_tcp(Forward, &far), Verdict::Unaccepted);
        assert_eq!(f.state, State::Established as u8);
        let behind = seg(FIN | ACK, CLIENT_ISN, 0, 0);
        assert_eq!(f.track_tcp(Forward, &behind), Verdict::Unaccepted);
        // With 200 KB in flight it is still inside the window.
        let inflight = seg(
            FIN | ACK,
            CLIENT_ISN + 1 + 200_000,
            BACKEND_ISN.wrapping_add(1),
            502,
        );
        assert_eq!(f.track_tcp(Forward, &inflight), Verdict::Accepted);
        assert_eq!(f.state, State::Closing as u8);
        // A later RST still closes it.
        let rst = seg(RST, BACKEND_ISN.wrapping_add(1), 0, 0);
        assert_eq!(f.track_tcp(Reverse, &rst), Verdict::Accepted);
        assert_eq!(f.state, State::Closed as u8);
    }

    #[test]
    fn windows_scale_only_when_both_sides_offered_it() {
        let mut f = FlowEntry::default();
        f.start_tcp(&Segment {
            wscale: 7,
            ..seg(SYN, 1, 0, 100)
        });
        // The backend does not offer scaling: neither side's window is scaled.
        f.track_tcp(Reverse, &seg(SYN | ACK, 50, 2, 100));
        f.track_tcp(Forward, &seg(ACK, 2, 51, 100));
        assert_eq!(f.win, [100, 100]);
        // Absurd shifts are capped at 14.
        let mut g = FlowEntry::default();
        g.start_tcp(&Segment {
            wscale: 40,
            ..seg(SYN, 1, 0, 100)
        });
        assert_eq!(g.wscale[0], MAX_WSCALE);
    }

    #[test]
    fn acknowledgments_only_move_forward() {
        let mut f = established();
        let a = BACKEND_ISN.wrapping_add(1);
        f.track_tcp(Reverse, &data(ACK, a, CLIENT_ISN + 1, 500, 500));
        f.track_tcp(Forward, &seg(ACK, CLIENT_ISN + 1, a.wrapping_add(500), 502));
        f.track_tcp(Forward, &seg(ACK, CLIENT_ISN + 1, a.wrapping_add(100), 502));
        assert_eq!(
            f.ack[0],
            a.wrapping_add(500),
            "a reordered ACK rolled it back"
        );
    }

    #[test]
    fn a_blind_segment_moves_no_acknowledgment_and_no_end() {
        let mut f = established();
        let a = BACKEND_ISN.wrapping_add(1);
        let (ack0, end0) = (f.ack[0], f.end[0]);
        // In the sequence window, but acknowledging data the backend never sent.
        let blind = seg(ACK, CLIENT_ISN + 30_000, a.wrapping_add(70_000), 502);
        assert_eq!(f.track_tcp(Forward, &blind), Verdict::Stray);
        assert_eq!((f.ack[0], f.end[0]), (ack0, end0));
        // A plausible acknowledgment, but past a gap: the end does not jump there.
        let gap = data(ACK, CLIENT_ISN + 30_000, a, 502, 10);
        assert_eq!(f.track_tcp(Forward, &gap), Verdict::Accepted);
        assert_eq!(
            f.end[0], end0,
            "a RST at the gap's end must not become acceptable"
        );
        let rst = seg(RST, CLIENT_ISN + 30_010, 0, 0);
        assert_eq!(f.track_tcp(Forward, &rst), Verdict::Unaccepted);
        assert_eq!(f.state, State::Established as u8);
    }

    #[test]
    fn a_renumbered_syn_before_any_answer_is_the_one_the_backend_answers() {
        let mut f = FlowEntry::default();
        f.start_tcp(&seg(SYN, CLIENT_ISN, 0, 64240));
        let again = seg(SYN, 777_777, 0, 64240);
        assert_eq!(f.track_tcp(Forward, &again), Verdict::Stray);
        let synack = seg(SYN | ACK, BACKEND_ISN, 777_778, 65160);
        assert_eq!(f.track_tcp(Reverse, &synack), Verdict::Accepted);
        assert_eq!(f.state, State::Established as u8);
        assert!(f.completes_handshake(&seg(ACK, 777_778, BACKEND_ISN.wrapping_add(1), 502)));
        assert!(!f.completes_handshake(&seg(ACK, 777_778, 12345, 502)));
    }

    #[test]
    fn syn_flag_rules() {
        assert!(is_initial_syn(SYN));
        assert!(!is_initial_syn(SYN | ACK));
        assert!(!is_initial_syn(SYN | RST));
        assert!(is_bad_syn(SYN | RST));
        assert!(is_bad_syn(SYN | FIN));
        assert!(!is_bad_syn(SYN));
        assert!(!is_bad_syn(FIN | ACK));
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
        let mut f = FlowEntry {
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
