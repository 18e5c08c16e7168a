//! wklb XDP data path: a short pipeline of named stages.
//!
//! classify destination → parse L4 → forward (VIP) or reverse (SNAT reply) → rewrite → egress,
//! with one reason counter for every verdict. Pure logic lives in lb-common.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg(target_arch = "bpf")]
// Map keys are passed by reference on purpose: by value they would be copied to the stack again.
#![allow(clippy::needless_borrows_for_generic_args)]

mod bench;
mod egress;
mod flow;
mod maps;
mod nat;
mod parse;
mod stats;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    Addr, AddrClass, AddrKey, FAMILY_IPV4, FlowKey, PROTO_ICMP, Reason, conntrack::Direction,
};
use network_types::ip::Ipv4Hdr;

use egress::Verdict;
use flow::{Forward, Target};
use maps::{ADDR_CLASS, FLOWS, REV_FLOWS};
use nat::Rewrite;
use parse::{L3, L4, Packet, ptr_at};

#[xdp]
pub fn wklb(ctx: XdpContext) -> u32 {
    pipeline(&ctx)
}

/// The whole data path for one packet; counts the verdict's reason.
#[inline(always)]
fn pipeline(ctx: &XdpContext) -> u32 {
    let v = process(ctx);
    stats::count(v.reason);
    v.action
}

#[inline(always)]
const fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

#[inline(always)]
const fn drop(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_DROP,
        reason,
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    let l3_offset = match parse::l3(ctx) {
        L3::Ipv4 { offset } => offset,
        L3::NotIpv4 => return pass(Reason::PassNotIpv4),
        L3::Truncated => return pass(Reason::PassUnparsable),
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_offset) else {
        return pass(Reason::PassUnparsable);
    };
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { parse::load_addr(&raw const (*ip).dst_addr) };
    // One lookup settles host traffic: only VIP and SNAT addresses go further.
    let class = match ADDR_CLASS.get_ptr(AddrKey::new(Addr::v4_word(dst), FAMILY_IPV4)) {
        // SAFETY: valid map value pointer.
        Some(c) => unsafe { (*c).flags },
        None => return pass(Reason::PassNotOurs),
    };
    let vip_addr = class & AddrClass::VIP != 0;
    let p = match parse::l4(ctx, ip, l3_offset) {
        L4::Ok(p) => p,
        L4::Other { proto } if proto == PROTO_ICMP && vip_addr => return pass(Reason::PassIcmp),
        L4::Other { .. } => return pass(Reason::PassNotOurs),
        L4::Malformed if vip_addr => return drop(Reason::DropMalformed),
        L4::Malformed => return pass(Reason::PassUnparsable),
        L4::Fragment if vip_addr => return drop(Reason::DropFragment),
        L4::Fragment => return pass(Reason::PassNotOurs),
    };
    if vip_addr {
        let key = flow::key_of(&p);
        match flow::forward_target(&key, &p, class, ttl_ok(&p)) {
            Forward::Send(t) => return forward(ctx, &p, &t),
            Forward::Refused(reason, vip_id) => {
                if let (Reason::DropNoBackend, Some(id)) = (reason, vip_id) {
                    stats::vip_no_backend(id);
                }
                return if reason == Reason::PassNonSynNoState {
                    pass(reason)
                } else {
                    drop(reason)
                };
            }
            Forward::NotVip => {}
        }
    }
    if class & AddrClass::SNAT != 0 {
        let reply = flow::key_of(&p);
        if let Some(client) = REV_FLOWS.get_ptr(&reply) {
            // SAFETY: valid map value pointer; copied out before any map update.
            let client = unsafe { *client };
            return reverse(ctx, &p, &client);
        }
    }
    pass(Reason::PassNotOurs)
}

#[inline(always)]
fn ttl_ok(p: &Packet) -> bool {
    // SAFETY: p.ip was bounds checked during parsing.
    unsafe { (*p.ip).ttl > 1 }
}

/// Client → VIP: full-NAT the packet toward the flow's backend and send it on.
#[inline(always)]
fn forward(ctx: &XdpContext, p: &Packet, t: &Target) -> Verdict {
    let to = Rewrite {
        src: t.snat_addr,
        dst: t.backend_addr,
        src_port: t.snat_port,
        dst_port: t.backend_port,
    };
    if nat::rewrite(ctx, p, &to).is_none() {
        return drop(Reason::DropInternal);
    }
    // SAFETY: t.flow is the live FLOWS value this packet matched or created.
    let hop = unsafe { &mut (*t.flow).to_backend };
    let v = egress::send(
        ctx,
        hop,
        p.proto,
        to.src,
        to.dst,
        p.ip_len,
        Reason::Forwarded,
    );
    if v.action != xdp_action::XDP_DROP {
        stats::vip(t.vip_id, p.ip_len as u64, t.new_flow);
        stats::backend_in(t.backend_id, p.ip_len as u64, t.new_flow);
    }
    v
}

/// Backend → SNAT address: translate back to VIP → client and send it on.
#[inline(always)]
fn reverse(ctx: &XdpContext, p: &Packet, client: &FlowKey) -> Verdict {
    if !ttl_ok(p) {
        return drop(Reason::DropTtlExpired);
    }
    let Some(fptr) = FLOWS.get_ptr_mut(client) else {
        return drop(Reason::DropReverseOrphan);
    };
    // SAFETY: valid map value pointer; concurrent writers store whole scalars only.
    let f = unsafe { &mut *fptr };
    flow::touch(f, p, Direction::Reverse);
    let backend_id = f.backend_id;
    let to = Rewrite {
        src: client.dst.v4_word_of(),
        dst: client.src.v4_word_of(),
        src_port: client.dst_port,
        dst_port: client.src_port,
    };
    if nat::rewrite(ctx, p, &to).is_none() {
        return drop(Reason::DropInternal);
    }
    let v = egress::send(
        ctx,
        &mut f.to_client,
        p.proto,
        to.src,
        to.dst,
        p.ip_len,
        Reason::Reversed,
    );
    if v.action != xdp_action::XDP_DROP {
        stats::backend_out(backend_id, p.ip_len as u64);
    }
    v
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
