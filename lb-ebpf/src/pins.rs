//! Source-prefix pinning: a VIP's clients in a pinned prefix get their new flows from the pin's
//! own Maglev table (built by the daemon from the pinned backend groups only). When that table
//! is empty they are refused, or sent to the VIP's table if the pin spills. Asked only for new
//! flows, and only by VIPs flagged PINNED.

use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{PinTarget, SourceKey4, VipMeta};

use crate::maps::{PIN_STATS, PINS4};

/// Not pinned: the VIP's own table decides.
pub const NONE: u32 = u32::MAX;

/// The pin covering `src`, as `table id << 1 | spill`, or NONE. A function of its own: the
/// verifier sees two outcomes at the call instead of every path through the trie lookup.
#[inline(never)]
pub fn find(vip_id: u32, src: u32) -> u32 {
    let key = Key::new(SourceKey4::prefix_len(32), SourceKey4::new(vip_id, src));
    match PINS4.get(&key) {
        Some(t) => (t.table_id << 1) | (t.flags & PinTarget::SPILL != 0) as u32,
        None => NONE,
    }
}

#[inline(always)]
pub fn lookup(vip: &VipMeta, src: u32) -> u32 {
    if vip.flags & VipMeta::PINNED == 0 {
        return NONE;
    }
    find(vip.vip_id, src)
}

/// What a pin's table did with a new flow.
#[derive(Clone, Copy)]
pub enum Outcome {
    Decided,
    Refused,
    Spilled,
}

#[inline(always)]
pub fn count(table_id: u32, o: Outcome) {
    if let Some(s) = PIN_STATS.get_ptr_mut(table_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            match o {
                Outcome::Decided => (*s).new_flows += 1,
                Outcome::Refused => (*s).refused += 1,
                Outcome::Spilled => (*s).spilled += 1,
            }
        }
    }
}
