//! TCP: ports, the segment fields the tracker reads, and SYN options.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::XdpContext};
use lb_common::{
    conntrack::{NO_WSCALE, tcp_flags},
    tcp_opts::{self, Offsets, Options},
};

use super::{Packet, ipv4::TCP_FIXED, load16, load32, ptr_at};

/// Reads the fixed header into `p`; false when it is cut short or its data offset is below 5.
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Packet) -> bool {
    let Some(h) = ptr_at::<[u8; TCP_FIXED]>(ctx, p.l4()) else {
        return false;
    };
    let h = h as *const u8;
    // SAFETY: the 20-byte fixed header is in bounds (ptr_at).
    unsafe {
        p.ports = load32(h);
        p.seg.seq = u32::from_be(load32(h.add(4)));
        p.seg.ack = u32::from_be(load32(h.add(8)));
        p.tcp_hdr_len = ((*h.add(12) >> 4) as u32) * 4;
        p.seg.flags = *h.add(13);
        p.seg.win = u16::from_be(load16(h.add(14)));
    }
    p.seg.wscale = NO_WSCALE;
    p.tcp_len() >= TCP_FIXED
}

/// Offset of the options of the segment at `l4` (a SYN's, the only ones the data path reads).
#[inline(always)]
pub fn options_at(p: &Packet) -> usize {
    p.l4() + TCP_FIXED
}

/// Walks the options of a SYN or SYN-ACK and records its window scale in `p.seg`.
///
/// Offsets and values live in a per-CPU scratch slot, and callers read the options there: map
/// memory is opaque to the verifier, so the many outcomes of the walk (this option found, that
/// one not) do not each re-verify the rest of the program. None for segments without SYN.
pub fn syn_options(ctx: &XdpContext, p: &mut Packet) -> Option<&'static Options> {
    if p.seg.flags & tcp_flags::SYN == 0 {
        return None;
    }
    let s = walk(ctx, p)?;
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    unsafe {
        p.seg.wscale = core::ptr::read_volatile(&raw const (*s).options.wscale);
        Some(&(*s).options)
    }
}

/// Walks the options of any segment (cookie flows translate timestamps and SACK blocks), in
/// the same scratch slot as `syn_options`.
pub fn any_options(ctx: &XdpContext, p: &Packet) -> Option<(&'static Offsets, &'static Options)> {
    let s = walk(ctx, p)?;
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    unsafe { Some((&(*s).at, &(*s).options)) }
}

#[inline(always)]
fn walk(ctx: &XdpContext, p: &Packet) -> Option<*mut Scratch> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let start = options_at(p);
    let len = p.tcp_len() - TCP_FIXED;
    let read = |i: usize| match ptr_at::<u8>(ctx, start + (i & 63)) {
        // SAFETY: bounds checked by ptr_at.
        Some(b) => unsafe { *b as u16 },
        None => tcp_opts::OUT_OF_BOUNDS,
    };
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).at, Offsets::default());
        core::ptr::write_volatile(&raw mut (*s).options, Options::default());
        tcp_opts::walk(len, read, &mut (*s).at);
        tcp_opts::read_values(read, &(*s).at, &mut (*s).options);
    }
    Some(s)
}

/// `syn_options`' scratch.
#[repr(C)]
pub struct Scratch {
    at: Offsets,
    options: Options,
}

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
