//! What a program tells the one it tail-calls about the packet: the lookups it made, so the
//! next one does not make them again (a second FLOWS4 miss, a second VIP lookup, a second walk
//! of a SYN's options are tens of nanoseconds each). Per CPU, and naming the packet's tuple:
//! the callee trusts it only for that tuple, and takes it once; a tail call that fails clears
//! it (`maps::tails::call`), so no record outlives the packet it was given for.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use lb_common::{Flow4Key, VipMeta};

#[repr(C)]
pub struct Handoff {
    key: Flow4Key,
    /// `NO_FLOW`, `VIP`, `OPTIONS`.
    what: u32,
    vip: VipMeta,
}

/// What the caller recorded: `NO_FLOW`, `VIP`, `OPTIONS` bits (0: nothing), and the VIP.
#[derive(Clone, Copy)]
pub struct Told {
    pub what: u32,
    pub vip: VipMeta,
}

impl Told {
    pub const NOTHING: Told = Told {
        what: 0,
        vip: VipMeta {
            vip_id: 0,
            flags: 0,
        },
    };

    #[inline(always)]
    pub fn has(&self, bit: u32) -> bool {
        self.what & bit != 0
    }
}

/// The entry program looked the tuple up (hint and FLOWS4) and found no flow.
pub const NO_FLOW: u32 = 1;
/// `vip` is the VIP the packet is for.
pub const VIP: u32 = 2;
/// The SYN's options were walked into the per-CPU scratch slot (`parse::tcp`).
pub const OPTIONS: u32 = 4;

#[btf_map]
static HANDOFF: PerCpuArray<Handoff, 1> = PerCpuArray::new();

/// Records what this program found about the packet with tuple `key`.
#[inline(always)]
pub fn give(key: &Flow4Key, what: u32, vip: VipMeta) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's value; only this run of this CPU touches it.
        unsafe {
            (*h).key = *key;
            (*h).what = what;
            (*h).vip = vip;
        }
    }
}

/// Forgets any record (after a tail call that did not happen).
#[inline(always)]
pub fn clear() {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's value.
        unsafe { (*h).what = 0 };
    }
}

/// What the caller recorded about the packet with tuple `key`, once (the record is cleared).
#[inline(always)]
pub fn take(key: &Flow4Key) -> Told {
    let Some(h) = HANDOFF.get_ptr_mut(0) else {
        return Told::NOTHING;
    };
    // SAFETY: this CPU's value, written earlier in this run (or stale: then the key differs,
    // or the record was cleared after its last use).
    unsafe {
        if (*h).what == 0 || (*h).key != *key {
            return Told::NOTHING;
        }
        let told = Told {
            what: (*h).what,
            vip: (*h).vip,
        };
        (*h).what = 0;
        told
    }
}
