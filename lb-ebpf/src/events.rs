//! Rare data-path events (`Reason::is_event`: a full table, an exhausted SNAT range, a missing
//! route, an internal error) logged through aya-log when the daemon turns them on
//! (`daemon.log_data_path_events`), at most once per second per reason and CPU. Every other
//! packet pays one comparison of its reason.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{DataplaneConfig, Reason};

use crate::{conntrack::now_ns, maps::config};

const INTERVAL_NS: u64 = 1_000_000_000;

/// Reason → when this CPU last logged it.
#[btf_map]
static EVENT_LOGGED_NS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn note(ctx: &XdpContext, reason: Reason) {
    if reason.is_event() {
        log(ctx, reason);
    }
}

/// Out of line: the log formatting stays out of the hot path's code.
#[inline(never)]
fn log(ctx: &XdpContext, reason: Reason) {
    if !config().is_some_and(|c| c.flags & DataplaneConfig::LOG_EVENTS != 0) {
        return;
    }
    let Some(last) = EVENT_LOGGED_NS.get_ptr_mut(reason as u32) else {
        return;
    };
    let now = now_ns();
    // SAFETY: per-CPU slot.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < INTERVAL_NS {
            return;
        }
        *last = now;
    }
    match reason {
        Reason::DropConntrackFull => {
            warn!(
                ctx,
                "connection table full: new connections are dropped (drop_conntrack_full); raise conntrack.max_flows"
            )
        }
        Reason::DropSnatExhausted => {
            warn!(
                ctx,
                "no free SNAT port: new connections are dropped (drop_snat_exhausted); add snat.addresses or widen the port range"
            )
        }
        Reason::DropNoSnatAddress => {
            warn!(
                ctx,
                "no SNAT address usable: new connections are dropped (drop_no_snat_address)"
            )
        }
        Reason::DropFibFailed => {
            warn!(ctx, "no route toward a backend or client (drop_fib_failed)")
        }
        _ => warn!(
            ctx,
            "internal error in the data path (drop_internal, reason {}): please report it",
            reason as u32
        ),
    }
}
