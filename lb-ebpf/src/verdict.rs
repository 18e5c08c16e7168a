//! A packet's fate and the reason counted for it. What each reason does to the packet is
//! decided in one place, `lb_common::reason::Reason::kind`.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Reason, reason::Kind};

pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    /// A pass or drop reason, with its action.
    #[inline(always)]
    pub const fn of(reason: Reason) -> Self {
        let action = match reason.kind() {
            Kind::Pass => xdp_action::XDP_PASS,
            // A `Sent` reason without a transmit is a bug: drop rather than leak a packet.
            Kind::Drop | Kind::Sent => xdp_action::XDP_DROP,
        };
        Verdict { action, reason }
    }

    /// Transmitted by us: XDP_TX or XDP_REDIRECT.
    #[inline(always)]
    pub const fn sent(action: u32, reason: Reason) -> Self {
        Verdict { action, reason }
    }

    /// Transmitted back out of the interface it came in on.
    #[inline(always)]
    pub const fn tx(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}

impl Verdict {
    /// As one word, for functions kept out of line: a struct return would go through the
    /// caller's stack, which the verifier refuses for subprograms.
    #[inline(always)]
    pub const fn to_word(&self) -> u64 {
        ((self.reason as u32 as u64) << 32) | self.action as u64
    }

    /// From `to_word`.
    #[inline(always)]
    pub const fn from_word(w: u64) -> Self {
        Verdict {
            action: w as u32,
            // SAFETY: the high word was a `Reason` (repr(u32)) in `to_word`.
            reason: unsafe { core::mem::transmute::<u32, Reason>((w >> 32) as u32) },
        }
    }
}
