//! Sequence translation on cookie flows once both handshakes are done. The client numbers its
//! view of the backend's bytes from the cookie, the backend from its own ISN: their difference
//! (`FlowEntry::seq_delta`) is added to the client's acknowledgments and SACK blocks and taken
//! off the backend's sequence numbers; timestamps likewise (`ts_delta`); the backend's windows
//! are re-expressed in the window scale the client was told. Flows the edge did not answer
//! itself never come here.
//!
//! Options are translated in the layout stacks send after the handshake (NOP, NOP, timestamps,
//! then NOP, NOP, SACK): see `parse::tcp::copied_options`. A segment with options in another
//! order keeps its sequence numbers translated, not its timestamps or SACK blocks.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowEntry,
    conntrack::{NO_WSCALE, tcp_flags},
    cookie::{EDGE_WSCALE, rescale_window},
    csum::CsumDelta,
    tcp_opts::SACK_BLOCK,
};

use crate::{
    nat::TCP_CSUM,
    parse::{
        Packet, load16, load32, ptr_at, store16, store32,
        tcp::{self, Copied, SACK_FIRST, TS_ECHO, TS_VALUE},
    },
};

/// Offsets inside the TCP header.
const SEQ: usize = 4;
const ACK: usize = 8;
const WIN: usize = 14;

/// Client → backend.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Packet, e: &FlowEntry) -> Option<()> {
    let mut d = CsumDelta::new();
    if p.seg.flags & tcp_flags::ACK != 0 {
        d = add32(ctx, p, ACK, e.seq_delta, d)?;
    }
    // The client scales its windows (it offered a shift, the edge's SYN-ACK too), the backend
    // did not accept scaling (`syn_opts` holds its shift once settled): the backend reads
    // windows unscaled, so they go in bytes (at most 65,535).
    if e.wscale[0] != NO_WSCALE && e.syn_opts == NO_WSCALE {
        let win = rescale_window(p.seg.win, e.wscale[0], NO_WSCALE);
        if win != p.seg.win {
            let w = ptr_at::<u16>(ctx, p.l4() + WIN)?;
            let new = win.to_be();
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                d = d.replace16(*w, new);
                *w = new;
            }
        }
    }
    if p.tcp_len() == TS_ONLY {
        // The common case, a segment with timestamps alone: changed in place.
        if let Some(d2) = ts_in_place(ctx, p, TS_ECHO, e.ts_delta, d) {
            d = d2;
        }
        return fix_checksum(ctx, p, d);
    }
    if let Some(mut o) = tcp::copied_options(ctx, p) {
        let (ts, blocks) = o.layout();
        if ts {
            d = option_add32(&mut o, TS_ECHO, e.ts_delta, d);
            for i in 0..3 {
                if i < blocks {
                    let b = SACK_FIRST + i * SACK_BLOCK;
                    d = option_add32(&mut o, b, e.seq_delta, d);
                    d = option_add32(&mut o, b + 4, e.seq_delta, d);
                }
            }
            if !o.store(ctx, p) {
                return None;
            }
        }
    }
    fix_checksum(ctx, p, d)
}

/// Backend → client, `p.seg` only: the segment as the client will see it (the tracker works in
/// its view). The packet itself is `reverse`'s, once nothing can send it back to the backend
/// (a fragmentation-needed quotes it in the backend's numbering).
#[inline(always)]
pub fn client_view(p: &mut Packet, e: &FlowEntry) {
    p.seg.seq = p.seg.seq.wrapping_sub(e.seq_delta);
    p.seg.win = rescale_window(p.seg.win, e.syn_opts, told_wscale(e));
}

/// The window scale the edge's SYN-ACK told the client.
#[inline(always)]
fn told_wscale(e: &FlowEntry) -> u8 {
    if e.wscale[0] == NO_WSCALE {
        NO_WSCALE
    } else {
        EDGE_WSCALE
    }
}

/// Backend → client, the packet: sequence number, window (to `p.seg.win`, see `client_view`)
/// and timestamp value in the client's numbering.
#[inline(always)]
pub fn reverse(ctx: &XdpContext, p: &Packet, e: &FlowEntry) -> Option<()> {
    let minus = 0u32.wrapping_sub(e.seq_delta);
    let mut d = add32(ctx, p, SEQ, minus, CsumDelta::new())?;
    let w = ptr_at::<u16>(ctx, p.l4() + WIN)?;
    let new = p.seg.win.to_be();
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        if *w != new {
            d = d.replace16(*w, new);
            *w = new;
        }
    }
    if e.ts_delta != 0 && p.tcp_len() == TS_ONLY {
        if let Some(d2) = ts_in_place(ctx, p, TS_VALUE, 0u32.wrapping_sub(e.ts_delta), d) {
            d = d2;
        }
    } else if e.ts_delta != 0
        && let Some(mut o) = tcp::copied_options(ctx, p)
        && o.layout().0
    {
        d = option_add32(&mut o, TS_VALUE, 0u32.wrapping_sub(e.ts_delta), d);
        if !o.store(ctx, p) {
            return None;
        }
    }
    fix_checksum(ctx, p, d)
}

/// Header length of a segment whose only options are NOP, NOP, timestamps.
const TS_ONLY: usize = 32;

/// In a segment with exactly NOP, NOP, timestamps: adds `v` to the timestamp word `at` bytes
/// into the options, in the packet (one fixed-size bounds check, no copy). None, changing
/// nothing, when the options are something else.
#[inline(always)]
fn ts_in_place(ctx: &XdpContext, p: &Packet, at: usize, v: u32, d: CsumDelta) -> Option<CsumDelta> {
    let o = ptr_at::<[u8; 12]>(ctx, p.l4() + 20)? as *mut u8;
    // SAFETY: 12 bytes bounds-checked by ptr_at; `at` (TS_VALUE or TS_ECHO) is a constant
    // with its word inside them.
    unsafe {
        if load32(o) != u32::from_ne_bytes([1, 1, 8, 10]) {
            return None;
        }
        let f = o.add(at);
        let (old_hi, old_lo) = (load16(f), load16(f.add(2)));
        store32(f, (u32::from_be(load32(f)).wrapping_add(v)).to_be());
        Some(
            d.replace16(old_hi, load16(f))
                .replace16(old_lo, load16(f.add(2))),
        )
    }
}

/// Adds `v` to the big-endian word `at` bytes into the copied options.
#[inline(always)]
fn option_add32(o: &mut Copied, at: usize, v: u32, d: CsumDelta) -> CsumDelta {
    let new = o.get32(at).wrapping_add(v);
    option_set32(o, at, new, d)
}

/// Sets the big-endian word `at` bytes into the copied options, with the checksum's change.
#[inline(always)]
pub(crate) fn option_set32(o: &mut Copied, at: usize, new: u32, d: CsumDelta) -> CsumDelta {
    let old = o.get32(at);
    o.set32(at, new);
    let (ob, nb) = (old.to_be_bytes(), new.to_be_bytes());
    let half = |b: [u8; 4], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    // Options start at an even offset of the header, so `at` gives the field's parity.
    d.replace16_at(at, half(ob, 0), half(nb, 0))
        .replace16_at(at, half(ob, 2), half(nb, 2))
}

/// Adds `v` to the big-endian 32-bit field `rel` bytes into the TCP header.
#[inline(always)]
pub(crate) fn add32(
    ctx: &XdpContext,
    p: &Packet,
    rel: usize,
    v: u32,
    d: CsumDelta,
) -> Option<CsumDelta> {
    let f = ptr_at::<[u8; 4]>(ctx, p.l4() + rel)? as *mut u8;
    // SAFETY: 4 bytes bounds-checked by ptr_at.
    unsafe {
        let (old_hi, old_lo) = (load16(f), load16(f.add(2)));
        let new = (u32::from_be(load32(f)).wrapping_add(v)).to_be();
        store32(f, new);
        let (new_hi, new_lo) = (load16(f), load16(f.add(2)));
        Some(d.replace16(old_hi, new_hi).replace16(old_lo, new_lo))
    }
}

#[inline(always)]
pub(crate) fn fix_checksum(ctx: &XdpContext, p: &Packet, d: CsumDelta) -> Option<()> {
    let c = ptr_at::<u16>(ctx, p.l4() + TCP_CSUM)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { store16(c as *mut u8, d.apply(*c)) };
    Some(())
}
