//! Claiming and releasing flow slots, i.e. SNAT ports (the maths is in lb_common::slot and
//! lb_common::portmap): a few hashed candidates, then a walk of the address's port bitmaps
//! (`bpf_loop`, its callback verified once) that finds a free port however full it is.

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_cxchg, atomic_or};

use aya_ebpf::{btf_maps::PerCpuArray, cty::c_void, helpers::generated::bpf_loop, macros::btf_map};
use lb_common::{
    DataplaneConfig, FlowEntry, MAX_SNAT_ADDRS, Reason,
    portmap::{
        FAST_PROBES, FULL_WORDS, STEPS_PER_FULL_WORD, WORDS_PER_ADDR, full_mask, next_bit,
        walk_start, walk_step, walk_steps, word_mask,
    },
    slot,
};

use crate::maps::{FLOW_TABLE, PORT_BITS, PORT_FULL, SNAT_PICKS};

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

/// Claims a free slot for a flow with `hash`, on a SNAT address of the backend's `family`:
/// (slot, its entry, the claim token). Branch-free in the family: a branch here would double
/// the verifier's paths through everything after it.
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
    for attempt in 0..FAST_PROBES {
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
            mark(*index, port as u32, cfg);
            return Ok((s, e, token));
        }
    }
    let found = walk_bitmaps(hash, count, base, token);
    if found == NOT_FOUND {
        return Err(Reason::DropSnatExhausted);
    }
    match FLOW_TABLE.get_ptr_mut(found) {
        Some(e) => Ok((found, e, token)),
        None => Err(Reason::DropInternal),
    }
}

/// The walk of the port bitmaps for a claim the hashed probes did not make: the slot claimed
/// with `token`, or NOT_FOUND. Out of line, with a small frame: the program's frame, this one
/// and the callback's must fit 512 bytes together (each rounded up to 32).
#[inline(never)]
fn walk_bitmaps(hash: u32, count: u32, base: u32, token: u32) -> u32 {
    let (Some(w), Some(cfg)) = (WALK.get_ptr_mut(0), crate::maps::config()) else {
        return NOT_FOUND;
    };
    let (a0, f0, b0) = walk_start(hash, count);
    // SAFETY: this CPU's scratch value, ours for the rest of this run; a helper taking our
    // callback.
    unsafe {
        *w = Walk {
            token,
            a0,
            f0,
            b0,
            count,
            base,
            min: cfg.snat_port_min as u32,
            max: cfg.snat_port_max as u32,
            found: NOT_FOUND,
            next: 0,
        };
        bpf_loop(
            walk_steps(count),
            walk as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        (*w).found
    }
}

const NOT_FOUND: u32 = u32::MAX;

/// The walk's state, in a per-CPU map rather than on the stack: the verifier does not track map
/// memory, so every step of the loop starts from the same state and the callback is verified
/// once (through a stack pointer it re-verified the callback for every value it could see).
#[btf_map]
static WALK: PerCpuArray<Walk, 1> = PerCpuArray::new();

#[repr(C)]
pub struct Walk {
    token: u32,
    a0: u32,
    f0: u32,
    b0: u32,
    count: u32,
    base: u32,
    min: u32,
    max: u32,
    /// The slot claimed, or NOT_FOUND.
    found: u32,
    /// Steps before this one are skipped: the rest of a word found full.
    next: u32,
}

/// One step of the walk (`bpf_loop` callback): in one `PORT_FULL` word of one address, the
/// first word that is not full, its first free port, one compare-and-exchange on its slot.
/// 1 stops the loop. A bitmap found stale is corrected, and the next step reads it again.
extern "C" fn walk(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value, written by `claim` before the loop.
    let w = unsafe { &mut *w };
    if i < w.next {
        return 0;
    }
    let (a, f) = walk_step(i, w.a0, w.f0, w.count);
    let Some(index) = SNAT_PICKS.get(w.base + a) else {
        return 1;
    };
    let index = *index;
    let Some(full) = PORT_FULL.get_ptr_mut(index * FULL_WORDS + f) else {
        return 1;
    };
    let (min, max) = (w.min as u16, w.max as u16);
    // SAFETY: valid map value pointer.
    let words = !unsafe { core::ptr::read_volatile(full) } & full_mask(f, min, max);
    let Some(wb) = next_bit(words, w.b0) else {
        // Nothing free in this word of words: its other attempts would read the same.
        w.next = (i / STEPS_PER_FULL_WORD + 1) * STEPS_PER_FULL_WORD;
        return 0;
    };
    let word = f * 64 + wb;
    let Some(bits) = PORT_BITS.get_ptr_mut(index * WORDS_PER_ADDR + word) else {
        return 1;
    };
    let mask = word_mask(word, min, max);
    // SAFETY: valid map value pointer.
    let free = !unsafe { core::ptr::read_volatile(bits) } & mask;
    let Some(b) = next_bit(free, w.b0) else {
        // Full after all.
        // SAFETY: valid map value pointer; atomic on a word other CPUs update too.
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(full, 1u64 << wb) };
        return 0;
    };
    let s = slot::slot(index, (word * 64 + b) as u16);
    let Some(e) = FLOW_TABLE.get_ptr_mut(s) else {
        return 1;
    };
    // SAFETY: valid map value pointer.
    let won = unsafe { (*e).owner } == slot::FREE && swap_owner(e, slot::FREE, w.token);
    // Won, or taken while the map said free: either way the map knows now.
    set_taken(bits, full, b, wb, mask);
    if won {
        w.found = s;
        return 1;
    }
    0
}

/// Records port bit `b` of word `bits` taken, and the word full (bit `wb` of `full`) when no
/// port of `mask` is left in it.
#[inline(always)]
fn set_taken(bits: *mut u64, full: *mut u64, b: u32, wb: u32, mask: u64) {
    // SAFETY: valid map value pointers; atomic on words other CPUs update too.
    unsafe {
        let old = atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(bits, 1u64 << b);
        if (old | 1u64 << b) & mask == mask {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(full, 1u64 << wb);
        }
    }
}

/// The bitmaps' record of a claim on `port` of SNAT index `index`. Inline: every new flow pays
/// it, and a call's return costs more than the two atomics (return-thunk mitigations).
#[inline(always)]
fn mark(index: u32, port: u32, cfg: &DataplaneConfig) {
    let word = port / 64;
    if let (Some(bits), Some(full)) = (
        PORT_BITS.get_ptr_mut(index * WORDS_PER_ADDR + word),
        PORT_FULL.get_ptr_mut(index * FULL_WORDS + word / 64),
    ) {
        let mask = word_mask(word, cfg.snat_port_min, cfg.snat_port_max);
        set_taken(bits, full, port % 64, word % 64, mask);
    }
}

/// The bitmaps' record of a port given back.
#[inline(always)]
fn unmark(s: u32) {
    let (index, port) = (slot::snat_index_of(s), slot::port_of(s) as u32);
    let word = port / 64;
    if let (Some(bits), Some(full)) = (
        PORT_BITS.get_ptr_mut(index * WORDS_PER_ADDR + word),
        PORT_FULL.get_ptr_mut(index * FULL_WORDS + word / 64),
    ) {
        // SAFETY: valid map value pointers; atomic on words other CPUs update too.
        unsafe {
            atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(bits, !(1u64 << (port % 64)));
            atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(full, !(1u64 << (word % 64)));
        }
    }
}

/// A claim token: random (a per-boot seeded generator), odd. Not the flow hash, which anyone
/// can compute: a stale reference must not be able to name a later flow of its slot.
#[inline(always)]
fn new_token() -> u32 {
    // SAFETY: a helper without arguments.
    slot::token(unsafe { aya_ebpf::helpers::generated::bpf_get_prandom_u32() })
}

/// Gives back slot `s`, never published (no FLOWS4/FLOWS6 entry names it yet), unless someone
/// else holds it by now.
#[inline(always)]
pub fn release(s: u32, e: *mut FlowEntry, token: u32) {
    if swap_owner(e, token, slot::FREE) {
        unmark(s);
    }
}

/// Ends a published flow in the data path (a new connection on its tuple): the slot goes
/// DYING, not FREE, so a packet of the old flow still inside the program on another CPU
/// cannot write into a next flow of the slot; the daemon frees it after an RCU grace period.
#[inline(always)]
pub fn retire(e: *mut FlowEntry, token: u32) {
    swap_owner(e, token, slot::DYING);
}
