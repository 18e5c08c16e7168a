//! Next hop: bpf_fib_lookup for the rewritten destination, then XDP_TX (same interface) or a
//! redirect (another interface). A missing neighbour entry hands the already-translated packet to
//! the kernel, which resolves it and forwards; later packets then take the fast path.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::Reason;
use network_types::eth::EthHdr;

use crate::parse::ptr_at;

const AF_INET: u8 = 2;

/// The verdict of an egress attempt and the reason to count for it.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

/// Sends a packet already rewritten to `src` → `dst`. `sent` is the reason counted on success.
#[inline(always)]
pub fn send(ctx: &XdpContext, proto: u8, src: [u8; 4], dst: [u8; 4], ip_len: u16, sent: Reason) -> Verdict {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = ip_len;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);

    // SAFETY: helper call with a valid context and a stack buffer of the declared size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Verdict { action: xdp_action::XDP_PASS, reason: Reason::PassNoNeighbor };
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Verdict { action: xdp_action::XDP_DROP, reason: Reason::DropFibFailed };
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict { action: xdp_action::XDP_DROP, reason: Reason::DropInternal };
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if fib.ifindex == ingress {
        return Verdict { action: xdp_action::XDP_TX, reason: sent };
    }
    // SAFETY: plain helper call; with flags 0 it only records the target.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Verdict { action, reason: sent }
    } else {
        Verdict { action: xdp_action::XDP_DROP, reason: Reason::DropRedirectFailed }
    }
}
