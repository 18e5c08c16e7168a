//! wklb XDP data path: a short pipeline of named stages.
//!
//! classify destination → parse L4 → forward (VIP) or reverse (SNAT reply) → rewrite → egress,
//! with one reason counter for every verdict. Pure logic lives in lb-common.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg(target_arch = "bpf")]

mod egress;
mod flow;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    Addr, AddrClass, AddrKey, DataplaneConfig, FAMILY_IPV4, FlowKey, PROTO_ICMP, PROTO_TCP,
    Reason, VipKey, VipMeta, conntrack::Direction,
};
use network_types::ip::Ipv4Hdr;

use egress::Verdict;
use maps::{ADDR_CLASS, CONFIG, FLOWS, REV_FLOWS, VIPS};
use nat::Rewrite;
use parse::{L3, L4, Packet, ptr_at};

#[xdp]
pub fn wklb(ctx: XdpContext) -> u32 {
    let v = process(&ctx);
    stats::count(v.reason);
    v.action
}

#[inline(always)]
const fn pass(reason: Reason) -> Verdict {
    Verdict { action: xdp_action::XDP_PASS, reason }
}

#[inline(always)]
const fn drop(reason: Reason) -> Verdict {
    Verdict { action: xdp_action::XDP_DROP, reason }
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
    let dst = unsafe { (*ip).dst_addr };
    // One lookup settles host traffic: only VIP and SNAT addresses go further.
    let class = match ADDR_CLASS.get_ptr(AddrKey::new(Addr::v4(dst), FAMILY_IPV4)) {
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
        if let Some(vip) = vip_lookup(&p, class) {
            return forward(ctx, &p, &vip);
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

/// VIP by exact port, then the any-port VIP of the protocol when the address has one.
#[inline(always)]
fn vip_lookup(p: &Packet, class: u32) -> Option<VipMeta> {
    let mut key = VipKey {
        addr: Addr::v4(p.dst),
        port: p.dst_port,
        proto: p.proto,
        family: FAMILY_IPV4,
    };
    if let Some(v) = VIPS.get_ptr(&key) {
        // SAFETY: valid map value pointer.
        return Some(unsafe { *v });
    }
    let any_port = if p.proto == PROTO_TCP { AddrClass::VIP_ANY_PORT_TCP } else { AddrClass::VIP_ANY_PORT_UDP };
    if class & any_port == 0 {
        return None;
    }
    key.port = 0;
    // SAFETY: valid map value pointer.
    VIPS.get_ptr(&key).map(|v| unsafe { *v })
}

#[inline(always)]
fn ttl_ok(p: &Packet) -> bool {
    // SAFETY: p.ip was bounds checked during parsing.
    unsafe { (*p.ip).ttl > 1 }
}

/// Client → VIP: pick or follow the backend, full-NAT the packet, send it on.
#[inline(always)]
fn forward(ctx: &XdpContext, p: &Packet, vip: &VipMeta) -> Verdict {
    if !ttl_ok(p) {
        return drop(Reason::DropTtlExpired);
    }
    let non_syn_pass = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & DataplaneConfig::NON_SYN_PASS != 0);
    let key = flow::key_of(p);
    let t = match flow::forward_target(&key, p, vip, non_syn_pass) {
        Ok(t) => t,
        Err(reason) => {
            if reason == Reason::DropNoBackend {
                stats::vip_no_backend(vip.vip_id);
            }
            return if reason == Reason::PassNonSynNoState { pass(reason) } else { drop(reason) };
        }
    };
    let to = Rewrite {
        src: t.snat_addr,
        dst: t.backend_addr,
        src_port: t.snat_port,
        dst_port: t.backend_port,
    };
    if nat::rewrite(ctx, p, &to).is_none() {
        return drop(Reason::DropInternal);
    }
    let v = egress::send(ctx, p.proto, to.src, to.dst, p.ip_len, Reason::Forwarded);
    if v.action != xdp_action::XDP_DROP {
        stats::vip(vip.vip_id, p.ip_len as u64, t.new_flow);
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
        src: client.dst.v4_octets(),
        dst: client.src.v4_octets(),
        src_port: client.dst_port,
        dst_port: client.src_port,
    };
    if nat::rewrite(ctx, p, &to).is_none() {
        return drop(Reason::DropInternal);
    }
    let v = egress::send(ctx, p.proto, to.src, to.dst, p.ip_len, Reason::Reversed);
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
