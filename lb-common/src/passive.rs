//! The passive health signal (`PassiveStats`): which segments count against a backend. Pure
//! predicates, so the data path's programs agree and the host tests pin them.

use crate::{
    FlowEntry,
    conntrack::{State, tcp_flags::*},
};

/// A backend's reply refused a new connection: the flow was waiting for its SYN-ACK
/// (`was_syn_sent`, read before tracking), the reply is a RST the tracker accepted, and it
/// closed the flow.
#[inline(always)]
pub const fn is_refusal(was_syn_sent: bool, flags: u8, accepted: bool, state_now: u8) -> bool {
    was_syn_sent && flags & RST != 0 && accepted && state_now == State::Closed as u8
}

/// A client's SYN sent again on flow `e` while its backend has not answered: a bare SYN with
/// the ISN the flow started with (a SYN with another ISN is a new attempt, not a sign of the
/// backend's silence), before tracking.
#[inline(always)]
pub const fn is_syn_retransmit(e: &FlowEntry, seq: u32, flags: u8) -> bool {
    e.state == State::SynSent as u8
        && flags & (SYN | ACK | RST | FIN) == SYN
        && seq.wrapping_add(1) == e.ack[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accepted_rst_that_closes_a_waiting_flow_is_a_refusal() {
        let closed = State::Closed as u8;
        assert!(is_refusal(true, RST | ACK, true, closed));
        assert!(is_refusal(true, RST, true, closed));
        assert!(!is_refusal(false, RST | ACK, true, closed), "established");
        assert!(!is_refusal(true, RST | ACK, false, closed), "not accepted");
        assert!(
            !is_refusal(true, ACK, true, closed),
            "closed by the client's RST meanwhile"
        );
        assert!(!is_refusal(true, RST | ACK, true, State::SynSent as u8));
    }

    #[test]
    fn only_the_same_bare_syn_on_a_waiting_flow_is_a_retransmission() {
        for isn in [1000u32, u32::MAX, 0] {
            let e = FlowEntry {
                state: State::SynSent as u8,
                ack: [0, isn.wrapping_add(1)],
                ..FlowEntry::default()
            };
            assert!(is_syn_retransmit(&e, isn, SYN));
            assert!(
                !is_syn_retransmit(&e, isn.wrapping_add(1), SYN),
                "another ISN"
            );
            assert!(!is_syn_retransmit(&e, isn, SYN | ACK));
            assert!(!is_syn_retransmit(&e, isn, SYN | RST));
            assert!(!is_syn_retransmit(&e, isn, ACK), "not a SYN");
            let mut up = e;
            up.state = State::Established as u8;
            assert!(!is_syn_retransmit(&up, isn, SYN), "answered");
        }
    }
}
