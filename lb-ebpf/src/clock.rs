//! Time for the data path. Every packet needs the coarse clock (flow touch, next-hop refresh),
//! and a helper call costs several nanoseconds here (each return goes through the CPU's
//! return-thunk mitigation). `bpf_jiffies64` is rewritten by the verifier into one load, and
//! the coarse clock only moves with the tick that moves jiffies: so each CPU keeps the coarse
//! time it last read with the jiffies it read it at, and calls the helper once per tick. The
//! value stays within a tick of what the helper would return (a read that lands between the
//! tick's jiffies and clock updates keeps the older time for that tick).

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::btf_map,
};

/// The coarse time this CPU last read, and the jiffies it was read at.
#[repr(C)]
pub struct CachedClock {
    jiffies: u64,
    coarse_ns: u64,
}

#[btf_map]
static CLOCK: PerCpuArray<CachedClock, 1> = PerCpuArray::new();

/// CLOCK_MONOTONIC_COARSE in ns (what expiry compares against): millisecond ticks.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper calls; the slot is this CPU's own.
    unsafe {
        let j = bpf_jiffies64();
        let Some(c) = CLOCK.get_ptr_mut(0) else {
            return bpf_ktime_get_coarse_ns();
        };
        if (*c).jiffies == j && j != 0 {
            return (*c).coarse_ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        (*c).jiffies = j;
        (*c).coarse_ns = ns;
        ns
    }
}

/// CLOCK_MONOTONIC in ns, precise: handshake round trips (rtt) need better than a tick.
#[inline(always)]
pub fn precise_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}
