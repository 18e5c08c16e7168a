//! Who may open a connection to a VIP: its deny and allow lists (the longest matching prefix
//! decides; an allowed source also skips the limits), the concurrent-connection limit (sources
//! at it are listed in SOURCE_FULL by the daemon's expiry pass) and the per-source
//! new-connection rate (GCRA, `lb_common::VipLimits`). Asked only for new flows, and only by VIPs whose flags say
//! they have lists or a limit.

use aya_ebpf::bindings::BPF_ANY;
use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{Reason, SourceKey4, SourceRateKey, VipMeta, source_list};

use crate::{
    conntrack::now_ns,
    maps::{SOURCE_FULL, SOURCE_RATE, SOURCES4, VIP_LIMITS},
    stats::{self, VipSyn},
};

/// Ok when a new flow from `src` may start at `vip`. `limit`: apply the rate limit (not to
/// SYNs answered with cookies, whose source is unproven: a forger could spend a victim's
/// budget).
#[inline(always)]
pub fn admit(vip: &VipMeta, src: u32, limit: bool) -> Result<(), Reason> {
    if vip.flags & (VipMeta::SOURCE_LISTS | VipMeta::RATE_LIMIT | VipMeta::CONN_LIMIT) == 0 {
        return Ok(());
    }
    match decide(vip.flags, vip.vip_id, src, limit as u32) {
        DENIED => Err(Reason::DropSourceDenied),
        LIMITED => Err(Reason::DropSourceRateLimited),
        FULL => Err(Reason::DropSourceConnLimit),
        _ => Ok(()),
    }
}

const ADMITTED: u32 = 0;
const DENIED: u32 = 1;
const LIMITED: u32 = 2;
const FULL: u32 = 3;

/// The decision, as a BPF function of its own (never inlined): the verifier then sees one
/// outcome per answer at the call, not every path through the lists and the limit, each
/// multiplying the rest of the data path.
#[inline(never)]
fn decide(flags: u32, vip_id: u32, src: u32, limit: u32) -> u32 {
    let mut allowed = false;
    if flags & VipMeta::SOURCE_LISTS != 0 {
        let key = Key::new(SourceKey4::prefix_len(32), SourceKey4::new(vip_id, src));
        match SOURCES4.get(&key) {
            Some(v) if *v == source_list::DENY => {
                stats::vip_syn(vip_id, VipSyn::Denied);
                return DENIED;
            }
            Some(v) if *v == source_list::ALLOW => {
                stats::vip_syn(vip_id, VipSyn::Allowed);
                allowed = true;
            }
            _ => {}
        }
    }
    // A source at its concurrent limit (spoofed SYNs in its name change nothing for it).
    if !allowed
        && flags & VipMeta::CONN_LIMIT != 0
        && SOURCE_FULL
            .get_ptr(&SourceRateKey::v4(vip_id, src))
            .is_some()
    {
        stats::vip_syn(vip_id, VipSyn::ConnLimited);
        return FULL;
    }
    if limit != 0 && !allowed && flags & VipMeta::RATE_LIMIT != 0 && !conforms(vip_id, src) {
        stats::vip_syn(vip_id, VipSyn::RateLimited);
        return LIMITED;
    }
    ADMITTED
}

/// Charges one connection to the source's budget; false when it has none left.
#[inline(always)]
fn conforms(vip_id: u32, src: u32) -> bool {
    let Some(l) = VIP_LIMITS.get(vip_id) else {
        return true;
    };
    if l.interval_ns == 0 {
        return true;
    }
    let now = now_ns();
    let key = SourceRateKey::v4(vip_id, src);
    match SOURCE_RATE.get_ptr_mut(&key) {
        Some(tat) => {
            // SAFETY: a live map value; a racing CPU at worst lets one extra connection through.
            let t = unsafe { &mut *tat };
            match l.admit(*t, now) {
                Some(next) => {
                    *t = next;
                    true
                }
                None => false,
            }
        }
        None => {
            let _ = SOURCE_RATE.insert(&key, &(now + l.interval_ns), BPF_ANY as u64);
            true
        }
    }
}
