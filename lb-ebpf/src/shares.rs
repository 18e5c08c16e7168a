//! A VIP's shares of the connection tables and SNAT ports (lb_common::shares): checked before a
//! new flow claims anything, counted once it exists. The counts are shared by every CPU
//! (atomic adds on VIP_LIVE); the daemon takes off the flows it frees. Both inline: as calls
//! they cost a new flow about 5% in `cargo xtask bench` (each return goes through the CPU's
//! return-thunk mitigation). Inline, `wklb_flow` verifies in fewer instructions (421,173 against
//! 442,502) and `wklb_v6` in more (466,588 against 454,586; `wklb verify`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{
    MAX_VIPS, Reason,
    shares::{exhausted, over_share, resources_of},
};

use crate::{
    maps::{VIP_LIMITS, VIP_LIVE, VIP_STATS, config},
    parse::opaque,
};

/// Whether VIP `vip_id` may start a flow from a client of that family to a backend of that
/// family: refused when a pool it takes from is full (as the claim would be, without walking
/// a full pool's bitmaps), or nearly full with the VIP holding its share of it already
/// (counted for the VIP).
#[inline(always)]
pub fn admit(vip_id: u32, client_v6: bool, backend_v6: bool) -> Result<(), Reason> {
    let (Some(cfg), Some(l), Some(v), Some(all)) = (
        config(),
        VIP_LIMITS.get(vip_id),
        VIP_LIVE.get(vip_id),
        VIP_LIVE.get(MAX_VIPS),
    ) else {
        return Ok(());
    };
    let (c, s) = resources_of(client_v6, backend_v6);
    for r in [c, s] {
        // Bounded where the verifier sees it (LLVM knows the range and would drop the mask).
        let r = opaque(r) & 3;
        if all.used[r] >= cfg.pool_size[r] as u64 {
            return Err(exhausted(r));
        }
        if over_share(all.used[r], cfg.share_full[r], v.used[r], l.share[r]) {
            if let Some(st) = VIP_STATS.get_ptr_mut(vip_id) {
                // SAFETY: per-CPU slot.
                unsafe { (*st).over_share += 1 };
            }
            return Err(Reason::DropVipOverShare);
        }
    }
    Ok(())
}

/// Counts a flow VIP `vip_id` just created in the pools it takes from.
#[inline(always)]
pub fn count(vip_id: u32, client_v6: bool, backend_v6: bool) {
    let (Some(v), Some(all)) = (VIP_LIVE.get_ptr_mut(vip_id), VIP_LIVE.get_ptr_mut(MAX_VIPS))
    else {
        return;
    };
    let (c, s) = resources_of(client_v6, backend_v6);
    // SAFETY: valid map value pointers; the counters are 8-byte aligned and only ever changed
    // by atomic adds (here and in the daemon).
    unsafe {
        for r in [c, s] {
            let r = opaque(r) & 3;
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).used[r], 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*all).used[r], 1);
        }
    }
}
