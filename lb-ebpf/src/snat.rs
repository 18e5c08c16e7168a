//! Claiming and releasing flow slots, i.e. SNAT ports (the maths is in lb_common::slot).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use lb_common::{DataplaneConfig, FlowEntry, Reason, slot};

use crate::maps::{FLOW_TABLE, SNAT_PICK};

/// Compare-and-exchange on a slot's owner word; true when it held `old`.
#[inline(always)]
pub fn swap_owner(e: *mut FlowEntry, old: u32, new: u32) -> bool {
    // SAFETY: `e` is a live FLOW_TABLE value pointer; the owner word is 4-byte aligned.
    unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*e).owner,
            old,
            new,
        )
        .1
    }
}

/// Claims a free slot for a flow with `hash`: up to `PORT_RETRIES` (address, port) candidates.
#[inline(always)]
pub fn claim(hash: u32, cfg: &DataplaneConfig) -> Result<(u32, *mut FlowEntry), Reason> {
    let token = slot::token(hash);
    for attempt in 0..slot::PORT_RETRIES {
        let pick = slot::pick_index(hash, attempt, cfg.snat_count);
        let Some(index) = SNAT_PICK.get(pick) else {
            return Err(Reason::DropInternal);
        };
        let port = slot::port_candidate(hash, attempt, cfg.snat_port_min, cfg.snat_port_max);
        let s = slot::slot(*index, port);
        let Some(e) = FLOW_TABLE.get_ptr_mut(s) else {
            return Err(Reason::DropInternal);
        };
        // SAFETY: valid map value pointer; a plain read first spares the atomic on busy slots.
        if unsafe { (*e).owner } == slot::FREE && swap_owner(e, slot::FREE, token) {
            return Ok((s, e));
        }
    }
    Err(Reason::DropSnatExhausted)
}

/// Gives a slot back, unless someone else holds it by now.
#[inline(always)]
pub fn release(e: *mut FlowEntry, token: u32) {
    swap_owner(e, token, slot::FREE);
}
