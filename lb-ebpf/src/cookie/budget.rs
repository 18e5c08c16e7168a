//! Automatic cookie mode's half-open SYN budget (lb_common::syn_budget has the rule): checked
//! before a SYN creates a flow, spent by the flow it creates, given back by the client's
//! completing ACK or the data node's RST. Running out engages cookie mode for the VIP at once;
//! the daemon reports it and releases it.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use lb_common::{
    FlowEntry,
    syn_budget::{has_room, spent},
};

use crate::maps::{VIP_LIMITS, VIP_LIVE};

/// Whether the VIP's SYNs go to cookies now: cookie mode is engaged by the data path, or this
/// SYN finds the budget spent (and engages it).
#[inline(never)]
pub fn cookies_now(vip_id: u32, now: u64) -> bool {
    let (Some(l), Some(v)) = (VIP_LIMITS.get(vip_id), VIP_LIVE.get_ptr_mut(vip_id)) else {
        return false;
    };
    if l.syn_interval_ns == 0 {
        return false;
    }
    // SAFETY: a valid map value pointer; its words are changed whole (atomics, 8-byte stores).
    unsafe {
        if (*v).cookies_engaged_ns != 0 {
            return true;
        }
        if has_room((*v).syn_tat_ns, now, l.syn_tolerance_ns) {
            return false;
        }
        // The first SYN over the budget engages it; the daemon clears the mark on release.
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*v).cookies_engaged_ns,
            0,
            now | 1,
        );
    }
    true
}

/// A SYN created flow `e`: its budget is spent until the handshake completes or is refused.
#[inline(never)]
pub fn spend(vip_id: u32, e: *mut FlowEntry, now: u64) {
    let (Some(l), Some(v)) = (VIP_LIMITS.get(vip_id), VIP_LIVE.get_ptr_mut(vip_id)) else {
        return;
    };
    if l.syn_interval_ns == 0 {
        return;
    }
    // SAFETY: valid map value pointers; `e` is the flow this CPU just created.
    unsafe {
        let tat = (*v).syn_tat_ns;
        if tat > now {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).syn_tat_ns,
                l.syn_interval_ns,
            );
        } else {
            // Behind the clock: restart from now (another CPU may have moved it meanwhile;
            // then this SYN's spending is lost, a small error in the flood's favour... once).
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).syn_tat_ns,
                tat,
                spent(tat, now, l.syn_interval_ns),
            );
        }
        (*e).flags |= FlowEntry::SYN_BUDGET;
    }
}

/// The handshake of flow `e` completed, or its data node refused it: the budget it spent
/// comes back (once).
#[inline(never)]
pub fn refund(e: *mut FlowEntry) {
    // SAFETY: a live FLOW_TABLE value pointer.
    let e = unsafe { &mut *e };
    if e.flags & FlowEntry::SYN_BUDGET == 0 {
        return;
    }
    e.flags &= !FlowEntry::SYN_BUDGET;
    let vip_id = e.vip_id as u32;
    let (Some(l), Some(v)) = (VIP_LIMITS.get(vip_id), VIP_LIVE.get_ptr_mut(vip_id)) else {
        return;
    };
    // SAFETY: a valid map value pointer; the schedule only changes by atomics.
    unsafe {
        // Never below zero: a schedule the daemon reset (a release, a reused VIP id) owes
        // nothing to flows from before.
        if (*v).syn_tat_ns >= l.syn_interval_ns {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).syn_tat_ns,
                l.syn_interval_ns.wrapping_neg(),
            );
        }
    }
}
