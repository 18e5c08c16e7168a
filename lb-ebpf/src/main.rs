//! wklb XDP data path: a short pipeline of named stages.
//!
//! parse L2/L3 → classify the destination → parse L4 → ICMP, or client → backend (`to_backend`),
//! or backend → client (`to_client`) → count the verdict's reason. Pure logic lives in lb-common.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![allow(internal_features)]
#![cfg(target_arch = "bpf")]
// Map keys are passed by reference on purpose: by value they would be copied to the stack again.
#![allow(clippy::needless_borrows_for_generic_args)]

mod bench;
mod classify;
mod clock;
mod connlog;
mod conntrack;
mod cookie;
mod egress;
mod events;
mod icmp;
mod maps;
mod mss;
mod nat;
mod parse;
mod pins;
mod rtt;
mod snat;
mod sources;
mod stats;
mod to_backend;
mod to_client;
mod v6;
mod verdict;
mod vip;
mod vlan;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{AddrClass, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Reason};

use parse::{
    eth::{self, L2},
    ipv4::{self, Parsed},
    load32,
};
use verdict::Verdict;

// Inlined into the entry point the macro generates: one call and return fewer per packet.
#[xdp]
#[inline(always)]
pub fn wklb(ctx: XdpContext) -> u32 {
    pipeline(&ctx)
}

/// The whole data path for one packet; counts the verdict's reason.
#[inline(always)]
fn pipeline(ctx: &XdpContext) -> u32 {
    let mut v = process(ctx);
    if v.action == v6::backend::DEFERRED {
        v = v6::backend::hand_over(ctx);
    }
    count(ctx, v)
}

/// Sends to IPv6 backends, entered by tail call from `wklb` (see `v6::backend`).
#[xdp]
#[inline(always)]
pub fn wklb_v6_send(ctx: XdpContext) -> u32 {
    count(&ctx, v6::backend::finish(&ctx))
}

/// Counts the verdict's reason (and logs it when it is an event); the action for the kernel.
#[inline(always)]
fn count(ctx: &XdpContext, v: Verdict) -> u32 {
    stats::count(v.reason);
    events::note(ctx, v.reason);
    v.action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    let (l3, vlan) = match eth::parse(ctx) {
        L2::Ipv4 { l3, vlan } => (l3, vlan),
        L2::Ipv6 { l3, vlan } => return v6::handle(ctx, l3, vlan),
        L2::NotIpv4 => return Verdict::of(Reason::PassNotIpv4),
        L2::Truncated => return Verdict::of(Reason::PassUnparsable),
    };
    let Some(ip) = ipv4::header(ctx, l3) else {
        return Verdict::of(Reason::PassUnparsable);
    };
    // SAFETY: the fixed header is in bounds (ipv4::header).
    let dst = unsafe { load32((&raw const (*ip).dst_addr).cast()) };
    // One array read settles host traffic: only VIP and SNAT addresses go further.
    let Some(class) = classify::lookup(dst) else {
        return Verdict::of(Reason::PassNotOurs);
    };
    let vip_addr = class.flags & AddrClass::VIP != 0;
    let mut p = match ipv4::parse(ctx, l3, vlan, ip) {
        Parsed::Ok(p) => p,
        Parsed::Malformed if vip_addr => return Verdict::of(Reason::DropMalformed),
        Parsed::Malformed => return Verdict::of(Reason::PassUnparsable),
        Parsed::Fragment {
            first,
            proto,
            ports,
        } => return vip::fragment(dst, class, first, proto, ports),
    };
    match p.proto {
        PROTO_ICMP => icmp::handle(ctx, &p, class),
        PROTO_TCP | PROTO_UDP => {
            // One walk of a SYN's options serves both directions (window scale, MSS).
            // Tested here, not in the out-of-line walk: other segments skip a call and return.
            let opts = if p.seg.flags & lb_common::conntrack::tcp_flags::SYN != 0 {
                parse::tcp::syn_options(ctx, &mut p)
            } else {
                None
            };
            if vip_addr && let Some(v) = to_backend::handle(ctx, &mut p, class, opts) {
                return v;
            }
            if class.flags & AddrClass::SNAT != 0 {
                return to_client::handle(ctx, &mut p, class, opts);
            }
            Verdict::of(Reason::PassNotOurs)
        }
        _ => Verdict::of(Reason::PassNotOurs),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
