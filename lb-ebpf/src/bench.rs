//! Benchmark entry points (`cargo xtask bench`), never attached to an interface.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs the program again and again on one buffer, and the data
//! path rewrites that buffer (after one run a forward packet no longer targets the VIP). So each
//! benchmark entry first restores a template frame, then runs. The floors do the same restore,
//! so the ratio between an entry and a floor is the data path's own cost.

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::generated::{bpf_get_smp_processor_id, bpf_xdp_adjust_head},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{BENCH_FRAME_LEN, BenchFrame, xlat::GROWTH_V4_TO_V6};

use crate::{
    maps::TX_PORTS,
    parse::{load32, ptr_at},
};

#[btf_map]
static BENCH_FRAME: Array<BenchFrame, 1> = Array::new();

/// New-flow counter per CPU; the CPU number goes into the client too, so rounds that run on
/// different CPUs never replay each other's clients.
#[btf_map]
static BENCH_SEQ: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Copies the template over the first BENCH_FRAME_LEN bytes; optionally makes the client new.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<&'static BenchFrame> {
    let t = BENCH_FRAME.get(0)?;
    let dst = ptr_at::<[u64; BENCH_FRAME_LEN / 8]>(ctx, 0)? as *mut u64;
    // SAFETY: bounds checked by ptr_at. Volatile word stores, so LLVM cannot fold them into a
    // memmove call (which bpf-linker resolves to a byte loop).
    unsafe {
        let mut i = 0;
        while i < BENCH_FRAME_LEN / 8 {
            core::ptr::write_volatile(dst.add(i), t.data[i]);
            i += 1;
        }
    }
    if t.vary_source != 0 {
        let seq = BENCH_SEQ.get_ptr_mut(0)?;
        // SAFETY: per-CPU slot; plain helper call.
        let n = unsafe {
            *seq = (*seq).wrapping_add(1);
            (bpf_get_smp_processor_id() << 24) | (*seq & 0x00ff_ffff)
        };
        // Source address bytes 2-3 (offset 28-29) and TCP/UDP source port (34-35), for an
        // untagged IPv4 frame with a 20-byte header.
        let ip_src = ptr_at::<[u8; 2]>(ctx, 28)?;
        let sport = ptr_at::<[u8; 2]>(ctx, 34)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            *ip_src = ((n >> 16) as u16).to_be_bytes();
            *sport = (n as u16).to_be_bytes();
        }
    }
    Some(t)
}

/// Restore + the full wklb data path (the entry program, and the program it tail-calls, which
/// then ends the run). A run that moved the frame's head (a translation between IPv4 and IPv6,
/// a PROXY header inserted) left the frame longer or shorter than the template: the next run
/// moves it back first, so the restore writes the template where the frame starts (one more
/// helper call per run for those cases only). A case whose runs changed the frame's tail
/// instead (none does) would drift at the head until the move fails: its runs would then be
/// drops, which the benchmark's reason check refuses loudly.
#[xdp]
#[inline(always)]
pub fn bench_wklb(ctx: XdpContext) -> u32 {
    if undo_head_move(&ctx).is_none() || restore(&ctx).is_none() {
        return xdp_action::XDP_DROP;
    }
    crate::run_entry(&ctx)
}

#[inline(always)]
fn undo_head_move(ctx: &XdpContext) -> Option<()> {
    let t = BENCH_FRAME.get(0)?;
    // In 64 bits: the verifier refuses 32-bit arithmetic on packet pointers.
    let moved = (ctx.data_end() - ctx.data()) as i64 - t.len as i64;
    if moved == 0 {
        return Some(());
    }
    // SAFETY: plain helper call on our context.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, moved as i32) } == 0).then_some(())
}

/// Restore + read the destination address + XDP_TX: the floor the data path is measured
/// against (it reads what any forwarding decision must read).
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_DROP;
    }
    match ptr_at::<u32>(&ctx, 30) {
        // SAFETY: bounds checked by ptr_at.
        Some(d) if unsafe { load32(d.cast()) } != 0 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    }
}

/// The floor plus one head move there and back: what the translated cases pay for the undo
/// in `bench_wklb` (half of it per move) on top of the data path's own move.
#[xdp]
pub fn bench_floor_head_moves(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_DROP;
    }
    let g = GROWTH_V4_TO_V6 as i32;
    // SAFETY: plain helper calls on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -g) != 0 || bpf_xdp_adjust_head(ctx.ctx, g) != 0 } {
        return xdp_action::XDP_DROP;
    }
    match ptr_at::<u32>(&ctx, 30) {
        // SAFETY: bounds checked by ptr_at.
        Some(d) if unsafe { load32(d.cast()) } != 0 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    }
}

/// Restore + XDP_TX without reading the packet: the previous floor, kept so runs compare.
#[xdp]
pub fn bench_floor_blind(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// Restore + read the destination + redirect to the template's interface through TX_PORTS, as
/// the data path does: the floor of a two-armed forwarder.
#[xdp]
pub fn bench_floor_redirect(ctx: XdpContext) -> u32 {
    let Some(t) = restore(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    match ptr_at::<u32>(&ctx, 30) {
        // SAFETY: bounds checked by ptr_at.
        Some(d) if unsafe { load32(d.cast()) } != 0 => TX_PORTS
            .redirect(t.redirect_ifindex, 0)
            .unwrap_or(xdp_action::XDP_DROP),
        _ => xdp_action::XDP_DROP,
    }
}

/// The bare minimum: XDP_TX with no work at all.
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
