//! Next hops and transmission. Toward a backend: the backend's cached hop (one bpf_fib_lookup
//! per backend per second, shared by all its flows). Toward a client: the hop learned from the
//! client's own frames. Then the VLAN tag, the MACs, and XDP_TX (same interface) or a redirect
//! through TX_PORTS (an interface wklb does not run on falls back to the kernel).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{ClientHop, HOP_REFRESH_NS, Reason};

use crate::{
    maps::{BACKEND_HOPS, IFACE_MTU, TX_PORTS},
    parse::ptr_at,
    verdict::Verdict,
    vlan,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where to send a frame: interface and the two MAC addresses (as 16-bit words).
#[derive(Clone, Copy)]
pub struct Hop {
    pub ifindex: u32,
    pub dmac: [u16; 3],
    pub smac: [u16; 3],
    /// MTU of the path (0: unknown).
    pub mtu: u32,
}

/// Why there is no hop to use.
pub enum NoHop {
    /// No neighbour entry yet: hand the translated packet to the kernel.
    Neighbor,
    /// No route.
    Failed,
}

#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// The addresses a route is looked up for.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    V4 {
        src: u32,
        dst: u32,
    },
    V6 {
        src: &'a [u32; 4],
        dst: &'a [u32; 4],
    },
}

/// The hop toward IPv4 backend `id` (for a packet from `src` to `dst`).
#[inline(always)]
pub fn backend_hop(
    ctx: &XdpContext,
    id: u16,
    src: u32,
    dst: u32,
    proto: u8,
    now: u64,
) -> Result<Hop, NoHop> {
    backend_hop_via(ctx, id, Route::V4 { src, dst }, proto, now)
}

/// The hop toward backend `id` along `route`, resolving it when the cached one is missing or
/// older than HOP_REFRESH_NS.
#[inline(always)]
pub fn backend_hop_via(
    ctx: &XdpContext,
    id: u16,
    route: Route,
    proto: u8,
    now: u64,
) -> Result<Hop, NoHop> {
    let Some(h) = BACKEND_HOPS.get_ptr_mut(id as u32) else {
        return Err(NoHop::Failed);
    };
    // SAFETY: valid map value pointer; concurrent refreshes store the same answer.
    let h = unsafe { &mut *h };
    // Read the interface once: another CPU may be refreshing the entry.
    let ifindex = h.ifindex;
    if ifindex != 0 && now.wrapping_sub(h.resolved_ns) < HOP_REFRESH_NS {
        return Ok(Hop {
            ifindex,
            dmac: h.dmac,
            smac: h.smac,
            mtu: h.mtu as u32,
        });
    }
    let hop = fib(ctx, route, proto)?;
    h.dmac = hop.dmac;
    h.smac = hop.smac;
    h.mtu = hop.mtu as u16;
    h.resolved_ns = now;
    // SAFETY: field of a live map value; the interface goes last so a reader that sees it also
    // sees the MACs (a torn read at worst mixes two identical answers).
    unsafe { core::ptr::write_volatile(&raw mut h.ifindex, hop.ifindex) };
    Ok(hop)
}

/// The hop toward a flow's client.
#[inline(always)]
pub fn client_hop(h: &ClientHop) -> Hop {
    Hop {
        ifindex: h.ifindex,
        dmac: h.peer,
        smac: h.own,
        mtu: 0,
    }
}

/// The hop back to where the current frame came from (ICMP the edge answers itself).
#[inline(always)]
pub fn learn_client_hop(ctx: &XdpContext, h: &mut ClientHop) -> Option<()> {
    let eth = ptr_at::<[u16; 6]>(ctx, 0)? as *const u16;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        h.own = [*eth, *eth.add(1), *eth.add(2)];
        h.peer = [*eth.add(3), *eth.add(4), *eth.add(5)];
    }
    h.ifindex = ingress_ifindex(ctx);
    Some(())
}

/// MTU of interface `ifindex` when a packet of `len` bytes might exceed it; 0 = fits/unknown.
#[inline(always)]
pub fn iface_mtu(ifindex: u32, len: u32, min_mtu: u32) -> u32 {
    if len <= min_mtu {
        return 0;
    }
    // SAFETY: valid map value pointer.
    IFACE_MTU.get_ptr(ifindex).map_or(0, |m| unsafe { *m })
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

/// bpf_fib_lookup from the ingress interface. `tot_len` stays 0: the answer is cached for
/// packets of every size, and the MTU comes back in `mtu_result` for the caller to check.
#[inline(always)]
fn fib(ctx: &XdpContext, route: Route, proto: u8) -> Result<Hop, NoHop> {
    let mut fib = zeroed_params();
    fib.l4_protocol = proto;
    fib.ifindex = ingress_ifindex(ctx);
    match route {
        Route::V4 { src, dst } => {
            fib.family = AF_INET;
            fib.__bindgen_anon_3.ipv4_src = src;
            fib.__bindgen_anon_4.ipv4_dst = dst;
        }
        Route::V6 { src, dst } => {
            fib.family = AF_INET6;
            fib.__bindgen_anon_3.ipv6_src = *src;
            fib.__bindgen_anon_4.ipv6_dst = *dst;
        }
    }
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
        return Err(NoHop::Neighbor);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(NoHop::Failed);
    }
    // MACs move as 16-bit words: the fib struct's dmac sits at a 2-byte-aligned stack offset,
    // and the verifier demands aligned stack access.
    // SAFETY: fields of the initialised stack struct.
    unsafe {
        let dmac = &raw const fib.dmac as *const u16;
        let smac = &raw const fib.smac as *const u16;
        Ok(Hop {
            ifindex: fib.ifindex,
            dmac: [*dmac, *dmac.add(1), *dmac.add(2)],
            smac: [*smac, *smac.add(1), *smac.add(2)],
            mtu: fib.__bindgen_anon_1.mtu_result as u32,
        })
    }
}

/// Sends a finished packet through `hop`: the VLAN tag becomes `vlan` (0: none), the MACs the
/// hop's, then XDP_TX or a redirect. `sent` is counted on success.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, hop: &Hop, have_vlan: u16, vlan: u16, sent: Reason) -> Verdict {
    if vlan::set(ctx, have_vlan, vlan).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Verdict::of(Reason::DropInternal);
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
    if hop.ifindex == ingress_ifindex(ctx) {
        return Verdict::tx(sent);
    }
    match TX_PORTS.redirect(hop.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) => Verdict::sent(action, sent),
        // Not one of ours: the kernel routes the (already translated) packet.
        Err(_) => Verdict::of(Reason::PassUnmanagedEgress),
    }
}

/// Sends a packet toward a backend through `hop`: a VLAN tag does not cross interfaces; on the
/// interface the frame came in on it stays.
#[inline(always)]
pub fn transmit_to_backend(ctx: &XdpContext, hop: &Hop, have_vlan: u16, sent: Reason) -> Verdict {
    let vlan = if hop.ifindex == ingress_ifindex(ctx) {
        have_vlan
    } else {
        0
    };
    transmit(ctx, hop, have_vlan, vlan, sent)
}

/// Whether a `len`-byte packet exceeds `mtu` (0: unknown, never).
#[inline(always)]
pub const fn too_big(len: u16, mtu: u32) -> bool {
    mtu != 0 && len as u32 > mtu
}
