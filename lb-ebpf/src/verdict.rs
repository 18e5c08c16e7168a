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
