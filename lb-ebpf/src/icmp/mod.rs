//! ICMP to our addresses: echo requests to a VIP answered here, errors about translated packets
//! translated back (see lb_common::icmp for the choices), the rest to the kernel. Also the
//! fragmentation-needed errors the edge sends itself (`too_big`).

pub mod echo;
pub mod error;
pub mod too_big;

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrClass, DataplaneConfig, Reason, icmp};

use crate::{
    maps::config,
    parse::{Packet, ptr_at},
    verdict::Verdict,
};

#[inline(always)]
pub fn handle(ctx: &XdpContext, p: &Packet, class: AddrClass) -> Verdict {
    let Some(h) = ptr_at::<[u8; 2]>(ctx, p.l4()) else {
        return Verdict::of(Reason::PassIcmp);
    };
    // SAFETY: bounds checked by ptr_at.
    let icmp_type = unsafe { (*h)[0] };
    if icmp_type == icmp::ECHO_REQUEST
        && class.flags & AddrClass::VIP != 0
        && config().is_some_and(|c| c.flags & DataplaneConfig::ECHO_REPLY != 0)
    {
        return echo::reply(ctx, p);
    }
    if icmp::is_translated_error(icmp_type) {
        return error::translate(ctx, p, class).unwrap_or(Verdict::of(Reason::PassIcmp));
    }
    Verdict::of(Reason::PassIcmp)
}
