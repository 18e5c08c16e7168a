//! Next hop: the flow's cached hop, or bpf_fib_lookup for the rewritten destination (cached for
//! the next packets), then XDP_TX (same interface) or a redirect (another interface). A missing
//! neighbour entry hands the already-translated packet to the kernel, which resolves it and
//! forwards; later packets then take the fast path.

use crate::parse::ptr_at;
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{NextHop, Reason};

const AF_INET: u8 = 2;

/// The verdict of an egress attempt and the reason to count for it.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

/// All-zero lookup parameters, zeroed with word stores (`mem::zeroed` becomes a call to a
/// byte-loop memset in BPF).
#[inline(always)]
fn zeroed_params() -> FibParams {
    let mut fib = core::mem::MaybeUninit::<FibParams>::uninit();
    let words = fib.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<FibParams>() / 8 {
        // SAFETY: within the struct, which is a multiple of 8 bytes and 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written; all-zero is a valid bpf_fib_lookup.
    unsafe { fib.assume_init() }
}

/// Sends a packet already rewritten to `src` → `dst` through `hop` (a flow's cached next hop,
/// filled here on a miss). `sent` is the reason counted on success.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    hop: &mut NextHop,
    proto: u8,
    src: u32,
    dst: u32,
    ip_len: u16,
    sent: Reason,
) -> Verdict {
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if hop.ifindex == 0
        && let Err(v) = lookup(ctx, hop, ingress, proto, src, dst, ip_len)
    {
        return v;
    }
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Verdict {
            action: xdp_action::XDP_DROP,
            reason: Reason::DropInternal,
        };
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let e = eth as *mut u16;
        *e = hop.dmac[0];
        *e.add(1) = hop.dmac[1];
        *e.add(2) = hop.dmac[2];
        *e.add(3) = hop.smac[0];
        *e.add(4) = hop.smac[1];
        *e.add(5) = hop.smac[2];
    }
    if hop.ifindex == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            reason: sent,
        };
    }
    // SAFETY: plain helper call; with flags 0 it only records the target.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Verdict {
            action,
            reason: sent,
        }
    } else {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason: Reason::DropRedirectFailed,
        }
    }
}

/// Fills `hop` from the FIB; on failure returns the verdict for the packet.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    hop: &mut NextHop,
    ingress: u32,
    proto: u8,
    src: u32,
    dst: u32,
    ip_len: u16,
) -> Result<(), Verdict> {
    let mut fib = zeroed_params();
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = ip_len;
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;

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
        return Err(Verdict {
            action: xdp_action::XDP_PASS,
            reason: Reason::PassNoNeighbor,
        });
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Verdict {
            action: xdp_action::XDP_DROP,
            reason: Reason::DropFibFailed,
        });
    }
    // MACs move as 16-bit words: the fib struct's dmac sits at a 2-byte-aligned stack offset,
    // and the verifier demands aligned stack access. The ifindex goes last (volatile), so
    // another CPU never sees a valid ifindex with half-written MACs.
    // SAFETY: both are fields of the initialised stack struct.
    unsafe {
        let dmac = &raw const fib.dmac as *const u16;
        let smac = &raw const fib.smac as *const u16;
        hop.dmac = [*dmac, *dmac.add(1), *dmac.add(2)];
        hop.smac = [*smac, *smac.add(1), *smac.add(2)];
        core::ptr::write_volatile(&raw mut hop.ifindex, fib.ifindex);
    }
    Ok(())
}
