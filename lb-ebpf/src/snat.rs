//! Claiming and releasing flow slots, i.e. SNAT ports (the maths is in lb_common::slot).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use lb_common::{DataplaneConfig, FlowEntry, MAX_SNAT_ADDRS, Reason, slot};

use crate::maps::{FLOW_TABLE, SNAT_PICKS};

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

/// Claims a free slot for a flow with `hash`: up to `PORT_RETRIES` (address, port) candidates,
/// on a SNAT address of the backend's `family`. Branch-free in the family: a branch here would
/// double the verifier's paths through everything after it.
#[inline(always)]
pub fn claim(
    hash: u32,
    cfg: &DataplaneConfig,
    family: u8,
) -> Result<(u32, *mut FlowEntry, u32), Reason> {
    let v6 = slot::family_bit(family);
    let count = cfg
        .snat_count
        .wrapping_add(v6.wrapping_mul(cfg.snat6_count.wrapping_sub(cfg.snat_count)));
    let base = v6 * MAX_SNAT_ADDRS;
    if count == 0 {
        return Err(Reason::DropNoSnatAddress);
    }
    let token = new_token();
    for attempt in 0..slot::PORT_RETRIES {
        let pick = slot::pick_index(hash, attempt, count);
        let Some(index) = SNAT_PICKS.get(base + pick) else {
            return Err(Reason::DropInternal);
        };
        let port = slot::port_candidate(hash, attempt, cfg.snat_port_min, cfg.snat_port_max);
        let s = slot::slot(*index, port);
        let Some(e) = FLOW_TABLE.get_ptr_mut(s) else {
            return Err(Reason::DropInternal);
        };
        // SAFETY: valid map value pointer; a plain read first spares the atomic on busy slots.
        if unsafe { (*e).owner } == slot::FREE && swap_owner(e, slot::FREE, token) {
            return Ok((s, e, token));
        }
    }
    Err(Reason::DropSnatExhausted)
}

/// A claim token: random (a per-boot seeded generator), odd. Not the flow hash, which anyone
/// can compute: a stale reference must not be able to name a later flow of its slot.
#[inline(always)]
fn new_token() -> u32 {
    // SAFETY: a helper without arguments.
    slot::token(unsafe { aya_ebpf::helpers::generated::bpf_get_prandom_u32() })
}

/// Gives back a slot that was never published (no FLOWS4/FLOWS6 entry names it yet), unless
/// someone else holds it by now.
#[inline(always)]
pub fn release(e: *mut FlowEntry, token: u32) {
    swap_owner(e, token, slot::FREE);
}

/// Ends a published flow in the data path (a new connection on its tuple): the slot goes
/// DYING, not FREE, so a packet of the old flow still inside the program on another CPU
/// cannot write into a next flow of the slot; the daemon frees it after an RCU grace period.
#[inline(always)]
pub fn retire(e: *mut FlowEntry, token: u32) {
    swap_owner(e, token, slot::DYING);
}
