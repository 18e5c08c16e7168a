//! Sequence translation on cookie flows once both handshakes are done. The client numbers its
//! view of the backend's bytes from the cookie, the backend from its own ISN: their difference
//! (`FlowEntry::seq_delta`) is added to the client's acknowledgments and SACK blocks and taken
//! off the backend's sequence numbers; timestamps likewise (`ts_delta`); the backend's windows
//! are re-expressed in the window scale the client was told. Flows the edge did not answer
//! itself never come here.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowEntry,
    conntrack::{NO_WSCALE, tcp_flags},
    cookie::{EDGE_WSCALE, rescale_window},
    csum::CsumDelta,
    tcp_opts::{ABSENT, SACK_BLOCK},
};

use crate::{
    nat::TCP_CSUM,
    parse::{Packet, ipv4::TCP_FIXED, load16, load32, ptr_at, store16, store32, tcp},
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
    if p.tcp_len() > TCP_FIXED
        && let Some((at, _)) = tcp::any_options(ctx, p)
    {
        if at.ts != ABSENT {
            // The echoed timestamp (TSecr, 4 bytes after the value).
            d = add32(ctx, p, option(at.ts) + 4, e.ts_delta, d)?;
        }
        if at.sack != ABSENT {
            let first = option(at.sack);
            for i in 0..4 {
                if i < at.sack_blocks as usize {
                    let b = first + i * SACK_BLOCK;
                    d = add32(ctx, p, b, e.seq_delta, d)?;
                    d = add32(ctx, p, b + 4, e.seq_delta, d)?;
                }
            }
        }
    }
    fix_checksum(ctx, p, d)
}

/// Backend → client. Updates `p.seg` to what the client sees (the tracker works in its view).
#[inline(always)]
pub fn reverse(ctx: &XdpContext, p: &mut Packet, e: &FlowEntry) -> Option<()> {
    let minus = 0u32.wrapping_sub(e.seq_delta);
    let mut d = add32(ctx, p, SEQ, minus, CsumDelta::new())?;
    p.seg.seq = p.seg.seq.wrapping_add(minus);
    let told = if e.wscale[0] == NO_WSCALE {
        NO_WSCALE
    } else {
        EDGE_WSCALE
    };
    let win = rescale_window(p.seg.win, e.syn_opts, told);
    if win != p.seg.win {
        let w = ptr_at::<u16>(ctx, p.l4() + WIN)?;
        let new = win.to_be();
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            d = d.replace16(*w, new);
            *w = new;
        }
        p.seg.win = win;
    }
    if p.tcp_len() > TCP_FIXED
        && e.ts_delta != 0
        && let Some((at, _)) = tcp::any_options(ctx, p)
        && at.ts != ABSENT
    {
        d = add32(ctx, p, option(at.ts), 0u32.wrapping_sub(e.ts_delta), d)?;
    }
    fix_checksum(ctx, p, d)
}

/// Offset from the TCP header of an option value the walk found (masked for the verifier).
#[inline(always)]
fn option(at: u8) -> usize {
    TCP_FIXED + (at as usize & 63)
}

/// Adds `v` to the big-endian 32-bit field `rel` bytes into the TCP header.
#[inline(always)]
fn add32(ctx: &XdpContext, p: &Packet, rel: usize, v: u32, d: CsumDelta) -> Option<CsumDelta> {
    let rel = rel & 63;
    let f = ptr_at::<[u8; 4]>(ctx, p.l4() + rel)? as *mut u8;
    // SAFETY: 4 bytes bounds-checked by ptr_at.
    unsafe {
        let (old_hi, old_lo) = (load16(f), load16(f.add(2)));
        let new = (u32::from_be(load32(f)).wrapping_add(v)).to_be();
        store32(f, new);
        let (new_hi, new_lo) = (load16(f), load16(f.add(2)));
        // Both halves sit at the field's parity (options may leave it odd).
        Some(
            d.replace16_at(rel, old_hi, new_hi)
                .replace16_at(rel, old_lo, new_lo),
        )
    }
}

#[inline(always)]
fn fix_checksum(ctx: &XdpContext, p: &Packet, d: CsumDelta) -> Option<()> {
    let c = ptr_at::<u16>(ctx, p.l4() + TCP_CSUM)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { store16(c as *mut u8, d.apply(*c)) };
    Some(())
}
