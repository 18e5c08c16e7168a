//! The frame's 802.1Q tag on the way out: removed when a frame leaves through another interface
//! than it came in on, put back (the client's) on replies to the client.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};

use crate::parse::{
    eth::{ETH_P_8021Q, tag_vid},
    ptr_at,
};

const TAG_LEN: i32 = 4;

/// Makes the frame carry tag `want` (0: untagged) when it carries `have`. After a push or pop
/// every packet pointer is stale; callers re-derive them.
#[inline(always)]
pub fn set(ctx: &XdpContext, have: u16, want: u16) -> Option<()> {
    if have == want {
        return Some(());
    }
    if have != 0 && want != 0 {
        let tci = ptr_at::<[u8; 2]>(ctx, 14)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *tci = tag_vid(want).to_be_bytes() };
        return Some(());
    }
    if have != 0 { pop(ctx) } else { push(ctx, want) }
}

/// Moves the MAC addresses 4 bytes forward over the tag, then drops the first 4 bytes.
#[inline(always)]
fn pop(ctx: &XdpContext) -> Option<()> {
    let macs = ptr_at::<[u32; 4]>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at; 16 bytes are 12 MAC bytes + the tag's TPID.
    unsafe {
        let m = macs as *mut u32;
        let (a, b, c) = (*m, *m.add(1), *m.add(2));
        *m.add(3) = c;
        *m.add(2) = b;
        *m.add(1) = a;
    }
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, TAG_LEN) } != 0 {
        return None;
    }
    Some(())
}

/// Makes room for a tag in front of the EtherType and writes it.
#[inline(always)]
fn push(ctx: &XdpContext, vlan: u16) -> Option<()> {
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -TAG_LEN) } != 0 {
        return None;
    }
    let hdr = ptr_at::<[u32; 4]>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let m = hdr as *mut u32;
        let (a, b, c) = (*m.add(1), *m.add(2), *m.add(3));
        *m = a;
        *m.add(1) = b;
        *m.add(2) = c;
        let t = ETH_P_8021Q.to_be_bytes();
        let v = tag_vid(vlan).to_be_bytes();
        *m.add(3) = u32::from_ne_bytes([t[0], t[1], v[0], v[1]]);
    }
    Some(())
}
