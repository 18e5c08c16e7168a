//! wklb XDP data path: a short pipeline of named stages, in a few programs.
//!
//! parse L2/L3 → classify the destination → parse L4 (`front`) → client → backend
//! (`to_backend`, `v6::established`) or backend → client (`to_client`) for established plain
//! flows of both client families in the entry program; new flows, cookie flows, ICMP and the
//! rest of IPv6 in programs entered by tail call → count the verdict's reason. Pure logic lives
//! in lb-common.
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
mod front;
mod handoff;
mod icmp;
mod maps;
mod mss;
mod nat;
mod parse;
mod pins;
mod proxy;
mod rtt;
mod shares;
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

use front::Stop;
use maps::tails;
use verdict::Verdict;

// The programs. `wklb`, attached to the interfaces, keeps the established paths of plain flows
// (IPv4 and IPv6 clients);
// everything else is a program of its own entered by tail call through `TAILS`, each verified
// on its own budget with a stack of its own (see docs/architecture.md).

/// Entry: plain flows' established segments both ways; the rest to the program that owns it.
// Inlined into the entry point the macro generates: one call and return fewer per packet.
#[xdp]
#[inline(always)]
pub fn wklb(ctx: XdpContext) -> u32 {
    run_entry(&ctx)
}

/// The entry program's run (also what the benchmark entry runs).
#[inline(always)]
fn run_entry(ctx: &XdpContext) -> u32 {
    finish(ctx, entry(ctx))
}

/// Client → VIP beyond the established path: SYNs (new flows, retransmissions, reused ports),
/// UDP's first datagram, SYN-cookie answers and ACKs, cookie flows' client segments.
#[xdp]
pub fn wklb_flow(ctx: XdpContext) -> u32 {
    finish(&ctx, flow(&ctx))
}

/// SYN cookies, client → VIP: the ACKs that prove a cookie, and cookie flows' segments until
/// the backend answered (the SYN to it; the entry translates them afterwards). Cookie SYN-ACKs
/// are the flow program's.
#[xdp]
pub fn wklb_cookie(ctx: XdpContext) -> u32 {
    finish(&ctx, cookie_program(&ctx))
}

/// Backend → SNAT address beyond the established path: SYN-ACKs (MSS clamping, the
/// handshake's round trip) and every reply of a cookie flow (its handshake, translation).
#[xdp]
pub fn wklb_reply(ctx: XdpContext) -> u32 {
    finish(&ctx, reply(&ctx))
}

/// ICMP to our addresses: echo, errors about translated packets.
#[xdp]
pub fn wklb_icmp(ctx: XdpContext) -> u32 {
    finish(&ctx, icmp_program(&ctx))
}

/// IPv6 to a VIP beyond the established path: new flows, UDP, ICMPv6.
#[xdp]
pub fn wklb_v6(ctx: XdpContext) -> u32 {
    finish(&ctx, ipv6_program(&ctx))
}

/// PROXY protocol: a flow's first payload segment (or a retransmission of it) with the header
/// inserted, and a flow's first segment after its handshake (the header's length computed),
/// handed over by the program that tracked it.
#[xdp]
pub fn wklb_proxy(ctx: XdpContext) -> u32 {
    finish(&ctx, proxy_program(&ctx))
}

/// PROXY protocol: the header inserted into a segment `wklb_proxy` sent.
#[xdp]
pub fn wklb_proxy_insert(ctx: XdpContext) -> u32 {
    finish(&ctx, proxy::insert_handed_over(&ctx))
}

/// Sends to IPv6 backends, entered by tail call from the programs that find such flows.
#[xdp]
#[inline(always)]
pub fn wklb_v6_send(ctx: XdpContext) -> u32 {
    count(&ctx, v6::backend::finish(&ctx))
}

/// Counts the verdict's reason (and logs it when it is an event); the action for the kernel.
/// A send to an IPv6 backend is handed to `wklb_v6_send` first.
#[inline(always)]
fn finish(ctx: &XdpContext, v: Verdict) -> u32 {
    let v = if v.action == v6::backend::DEFERRED {
        v6::backend::hand_over(ctx)
    } else {
        v
    };
    count(ctx, v)
}

#[inline(always)]
fn count(ctx: &XdpContext, v: Verdict) -> u32 {
    stats::count(v.reason);
    events::note(ctx, v.reason);
    v.action
}

#[inline(always)]
fn entry(ctx: &XdpContext) -> Verdict {
    let (mut p, class) = match front::ipv4(ctx) {
        Ok(x) => x,
        Err(Stop::Ipv6) => return ipv6_entry(ctx),
        Err(Stop::Done(v)) => return v,
    };
    match p.proto {
        PROTO_ICMP => tails::call(ctx, tails::ICMP),
        PROTO_TCP | PROTO_UDP => {
            if class.flags & AddrClass::VIP != 0 {
                match to_backend::established(ctx, &mut p, class) {
                    Ok(v) => v,
                    Err(what) => {
                        handoff::give_parsed(&p, class, what);
                        tails::call(ctx, tails::FLOW)
                    }
                }
            } else if class.flags & AddrClass::SNAT != 0 {
                match to_client::established(ctx, &mut p, class) {
                    Some(v) => v,
                    None => tails::call(ctx, tails::REPLY),
                }
            } else {
                Verdict::of(Reason::PassNotOurs)
            }
        }
        _ => Verdict::of(Reason::PassNotOurs),
    }
}

/// IPv6 to one of our addresses. A VIP's TCP segments without SYN are settled here (sent on
/// with their flow, or refused without one); the rest of a VIP's goes to the IPv6 program,
/// which checks new flows' sources as the flow program does for IPv4. An IPv6 data node's
/// reply to a SNAT address goes straight to the sender program that translates it.
#[inline(always)]
fn ipv6_entry(ctx: &XdpContext) -> Verdict {
    let parse::eth::L2::Ipv6 { l3, vlan } = parse::eth::parse(ctx) else {
        return Verdict::of(Reason::DropInternal);
    };
    let Some(dst) = parse::ipv6::destination(ctx, l3) else {
        return Verdict::of(Reason::PassUnparsable);
    };
    let Some(class) = classify::lookup6(&dst) else {
        return Verdict::of(Reason::PassNotIpv4);
    };
    if class.flags & AddrClass::VIP == 0 {
        return v6::backend::defer_reply(class);
    }
    match v6::established(ctx, l3, vlan, class) {
        Some(v) => v,
        None => tails::call(ctx, tails::V6),
    }
}

#[inline(always)]
fn flow(ctx: &XdpContext) -> Verdict {
    // The entry's parse (a second parse of each SYN was most of what the split into programs
    // cost new flows).
    let Some((mut p, class, told)) = handoff::take_parsed(ctx) else {
        return parse_and_come_back(ctx);
    };
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Verdict::of(Reason::DropInternal);
    }
    // One walk of a SYN's options serves both directions (window scale, MSS).
    let opts = if p.seg.flags & lb_common::conntrack::tcp_flags::SYN != 0 {
        parse::tcp::syn_options(ctx, &mut p)
    } else {
        None
    };
    if class.flags & AddrClass::VIP != 0
        && let Some(v) = to_backend::handle(ctx, &mut p, class, opts, told)
    {
        return v;
    }
    // An address that is a VIP and a SNAT address (validation refuses that; a VIP's port
    // that no VIP serves on a SNAT address): the reply program's, not inlined here.
    if class.flags & AddrClass::SNAT != 0 {
        return tails::call(ctx, tails::REPLY);
    }
    Verdict::of(Reason::PassNotOurs)
}

/// A packet handed over without the entry's parse: from the entry program of another load
/// (a restart or an upgrade installs the tail-called programs before it attaches its own entry).
/// Parsed here and handed to this program again, which then takes the parse: going on from
/// here instead would double the verifier's work on everything after the parse.
#[inline(always)]
fn parse_and_come_back(ctx: &XdpContext) -> Verdict {
    match front::ipv4(ctx) {
        Ok((p, class)) => {
            handoff::give_parsed(&p, class, 0);
            tails::call(ctx, tails::FLOW)
        }
        Err(Stop::Done(v)) => v,
        Err(Stop::Ipv6) => Verdict::of(Reason::DropInternal),
    }
}

/// The IPv4 parse of a packet a program handed on with a keyed record; Err: its verdict, the
/// record forgotten (it is for this packet only, even when it goes no further).
#[inline(always)]
fn parse_handed_over(ctx: &XdpContext) -> Result<(parse::Packet, AddrClass), Verdict> {
    match front::ipv4(ctx) {
        Ok(x) => Ok(x),
        Err(Stop::Done(v)) => {
            handoff::clear();
            Err(v)
        }
        Err(Stop::Ipv6) => {
            handoff::clear();
            Err(Verdict::of(Reason::DropInternal))
        }
    }
}

#[inline(always)]
fn cookie_program(ctx: &XdpContext) -> Verdict {
    let (mut p, class) = match parse_handed_over(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    if class.flags & AddrClass::VIP == 0 {
        handoff::clear();
        return Verdict::of(Reason::DropInternal);
    }
    let key = lb_common::Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
    let told = handoff::take(&key);
    // SYNs are answered in the flow program; one reaching here (a handoff from an older flow
    // program during an upgrade) walks its options again.
    let opts = if p.seg.flags & lb_common::conntrack::tcp_flags::SYN == 0 {
        None
    } else if told.has(handoff::OPTIONS) {
        parse::tcp::recorded_syn_options(&mut p)
    } else {
        parse::tcp::syn_options(ctx, &mut p)
    };
    cookie::client::handle(ctx, &mut p, class, opts, &key, told)
}

/// A segment another program tracked; its flow looked up again (the step is decided again
/// too: the node may have acknowledged the header meanwhile).
#[inline(always)]
fn proxy_program(ctx: &XdpContext) -> Verdict {
    // Parsed again: a parse handed over leaves the verifier too little known about the packet
    // for the sends after it.
    let (mut p, _) = match parse_handed_over(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    let key = lb_common::Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
    let told = handoff::take(&key);
    let found = conntrack::forward::lookup_hinted(&key);
    let (Some(mut flow), true) = (found, told.has(handoff::TRACKED)) else {
        return Verdict::of(Reason::DropInternal);
    };
    flow.accepted = told.has(handoff::ACCEPTED);
    // SAFETY: a live FLOW_TABLE value pointer; racing writers store whole scalars only.
    let e = unsafe { &mut *flow.entry };
    if e.proxy_len == 0 {
        e.proxy_len = lb_common::proxy::flow_len(e);
    }
    let cookie = e.flags & lb_common::FlowEntry::TRANSLATE != 0;
    let now = conntrack::now_ns();
    to_backend::send::<{ to_backend::mode::INSERT }>(ctx, &mut p, &flow, e, None, now, cookie)
}

#[inline(always)]
fn reply(ctx: &XdpContext) -> Verdict {
    let (mut p, class) = match front::ipv4(ctx) {
        Ok(x) => x,
        Err(Stop::Done(v)) => return v,
        Err(Stop::Ipv6) => return Verdict::of(Reason::DropInternal),
    };
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP || class.flags & AddrClass::SNAT == 0 {
        return Verdict::of(Reason::DropInternal);
    }
    let opts = if p.seg.flags & lb_common::conntrack::tcp_flags::SYN != 0 {
        parse::tcp::syn_options(ctx, &mut p)
    } else {
        None
    };
    to_client::handle(ctx, &mut p, class, opts)
}

#[inline(always)]
fn icmp_program(ctx: &XdpContext) -> Verdict {
    match front::ipv4(ctx) {
        Ok((p, class)) if p.proto == PROTO_ICMP => icmp::handle(ctx, &p, class),
        Ok(_) | Err(Stop::Ipv6) => Verdict::of(Reason::DropInternal),
        Err(Stop::Done(v)) => v,
    }
}

#[inline(always)]
fn ipv6_program(ctx: &XdpContext) -> Verdict {
    match parse::eth::parse(ctx) {
        parse::eth::L2::Ipv6 { l3, vlan } => v6::handle(ctx, l3, vlan),
        _ => Verdict::of(Reason::DropInternal),
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
