//! ICMP errors about packets the edge translated, translated back:
//! - to a SNAT address, about a packet we sent to a backend → to the client, as if about its own
//!   packet to the VIP (outer source: the VIP);
//! - to a VIP address, about a packet we sent to a client → to the backend, as if about its own
//!   reply to the SNAT address (outer source: the SNAT address).
//!
//! A cookie flow's quoted sequence number (about a reply) or acknowledgment (about a client
//! segment) is put back in the numbering of the side the error goes to: stacks ignore errors
//! quoting a sequence number they never sent.
//!
//! Outer IP, ICMP, inner IP and (when quoted) inner L4 checksums are all updated incrementally.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrClass, Flow4Key, FlowEntry, PROTO_TCP, PROTO_UDP, Reason, csum::CsumDelta, ports_of,
    ports_word, slot,
};

use crate::{
    conntrack::{forward, now_ns},
    egress::{self, Hop, NoHop},
    maps::FLOW_TABLE,
    nat::{CHECK, TCP_CSUM, UDP_CSUM, rewrite_ip},
    parse::{Packet, load16, load32, ptr_at, store16, store32},
    verdict::Verdict,
};

/// Offset of the quoted packet in an ICMP message.
const QUOTE: usize = 8;
const ICMP_CSUM: usize = 2;

/// The quoted packet's addresses and ports.
struct Inner {
    l3: usize,
    l4: usize,
    proto: u8,
    src: u32,
    dst: u32,
    ports: u32,
}

/// What the translated error becomes.
struct Plan {
    outer_src: u32,
    outer_dst: u32,
    inner: Inner,
    hop: Hop,
    vlan: u16,
    reason: Reason,
    /// Added to the quoted TCP sequence number and (when its ACK flag is set) acknowledgment.
    seq_add: u32,
    ack_add: u32,
}

/// None: not about one of our flows (the kernel's business).
#[inline(always)]
pub fn translate(ctx: &XdpContext, p: &Packet, class: AddrClass) -> Option<Verdict> {
    let inner = quoted(ctx, p)?;
    if p.ttl <= 1 {
        return Some(Verdict::of(Reason::DropTtlExpired));
    }
    let plan = if class.flags & AddrClass::SNAT != 0 {
        to_client(p, class, inner)?
    } else {
        match to_backend(ctx, p, inner)? {
            Ok(plan) => plan,
            Err(v) => return Some(v),
        }
    };
    if rewrite(ctx, p, &plan).is_none() {
        return Some(Verdict::of(Reason::DropInternal));
    }
    Some(egress::transmit(
        ctx,
        &plan.hop,
        p.vlan,
        plan.vlan,
        plan.reason,
    ))
}

#[inline(always)]
fn quoted(ctx: &XdpContext, p: &Packet) -> Option<Inner> {
    let l3 = p.l4() + QUOTE;
    let ip = ptr_at::<[u8; 20]>(ctx, l3)? as *const u8;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, proto, src, dst) =
        unsafe { (*ip, *ip.add(9), load32(ip.add(12)), load32(ip.add(16))) };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let l4 = l3 + ihl * 4;
    // The quote ends with the ICMP message, not with the frame.
    if l4 + 4 > p.l3_end() {
        return None;
    }
    let ports = ptr_at::<u32>(ctx, l4)?;
    Some(Inner {
        l3,
        l4,
        proto,
        src,
        dst,
        // SAFETY: bounds checked by ptr_at.
        ports: unsafe { *ports },
    })
}

/// About SNAT:port → backend; the slot is named by the quoted source port.
#[inline(always)]
fn to_client(p: &Packet, class: AddrClass, q: Inner) -> Option<Plan> {
    let (sport, dport) = ports_of(q.ports);
    let e = FLOW_TABLE.get_ptr(slot::slot(class.snat_index as u32, sport))?;
    // SAFETY: valid map value pointer.
    let e: &FlowEntry = unsafe { &*e };
    let ours = q.src == p.dst && e.backend == q.dst && e.backend_port == dport;
    // An IPv6 client's flow: the error would have to become ICMPv6 (not done; the kernel's).
    if !e.is_live() || !ours || e.proto != q.proto || e.flags & FlowEntry::CLIENT_V6 != 0 {
        return None;
    }
    Some(Plan {
        outer_src: e.vip_v4(),
        outer_dst: e.client[0],
        inner: Inner {
            src: e.client[0],
            dst: e.vip_v4(),
            ports: ports_word(e.client_port, e.vip_port),
            ..q
        },
        hop: egress::client_hop(&e.to_client),
        vlan: e.client_vlan,
        reason: Reason::IcmpErrorToClient,
        seq_add: 0,
        // The client's acknowledgment went out plus the delta (see cookie::translate).
        ack_add: cookie_delta(e).wrapping_neg(),
    })
}

/// About VIP → client; the flow is found by the client's own tuple.
#[inline(always)]
fn to_backend(ctx: &XdpContext, p: &Packet, q: Inner) -> Option<Result<Plan, Verdict>> {
    let (vport, cport) = ports_of(q.ports);
    let key = Flow4Key::from_wire(q.dst, q.src, ports_word(cport, vport), q.proto);
    let f = forward::lookup(&key)?;
    if q.src != p.dst {
        return None;
    }
    // SAFETY: a live FLOW_TABLE value pointer.
    let e = unsafe { &*f.entry };
    // An IPv6 node's flow: its fragmentation-needed becomes a Packet Too Big in the sender
    // program (`v6::path_mtu`); other errors are the kernel's.
    if e.flags & FlowEntry::BACKEND_V6 != 0 {
        let t = ptr_at::<[u8; 2]>(ctx, p.l4())?;
        // SAFETY: bounds checked by ptr_at.
        let (t, c) = unsafe { ((*t)[0], (*t)[1]) };
        if t == lb_common::icmp::DEST_UNREACH && c == lb_common::icmp::FRAG_NEEDED {
            return Some(Err(crate::v6::backend::defer_icmp(
                crate::v6::path_mtu::FROM_V4,
            )));
        }
        return None;
    }
    let snat_addr = e.client[2];
    let hop = match egress::backend_hop(ctx, e.backend_id, snat_addr, e.backend, q.proto, now_ns())
    {
        Ok(h) => h,
        Err(NoHop::Neighbor) => return Some(Err(Verdict::of(Reason::PassNoNeighbor))),
        Err(NoHop::Failed) => return Some(Err(Verdict::of(Reason::DropFibFailed))),
    };
    Some(Ok(Plan {
        outer_src: snat_addr,
        outer_dst: e.backend,
        inner: Inner {
            src: e.backend,
            dst: snat_addr,
            ports: ports_word(e.backend_port, slot::port_of(f.slot)),
            ..q
        },
        hop,
        vlan: 0,
        reason: Reason::IcmpErrorToBackend,
        // The backend's sequence number went out minus the delta.
        seq_add: cookie_delta(e),
        ack_add: 0,
    }))
}

/// A cookie flow's sequence delta; 0 for every other flow.
#[inline(always)]
fn cookie_delta(e: &FlowEntry) -> u32 {
    if e.flags & FlowEntry::TRANSLATE != 0 && e.proto == PROTO_TCP {
        e.seq_delta
    } else {
        0
    }
}

/// Offsets in the quoted TCP header.
const SEQ: usize = 4;
const ACK: usize = 8;
const FLAGS: usize = 13;

/// Adds `v` to the big-endian word at `at` when the quote holds it; the checksum delta of that.
#[inline(always)]
fn add_quoted32(ctx: &XdpContext, p: &Packet, at: usize, v: u32, d: CsumDelta) -> CsumDelta {
    if v == 0 || at + 4 > p.l3_end() {
        return d;
    }
    let Some(f) = ptr_at::<[u8; 4]>(ctx, at) else {
        return d;
    };
    let f = f as *mut u8;
    // SAFETY: 4 bytes bounds-checked by ptr_at.
    unsafe {
        let (hi, lo) = (load16(f), load16(f.add(2)));
        store32(f, u32::from_be(load32(f)).wrapping_add(v).to_be());
        d.replace16(hi, load16(f)).replace16(lo, load16(f.add(2)))
    }
}

/// The quoted TCP header's sequence and acknowledgment, renumbered per the plan; the checksum
/// delta of the change.
#[inline(always)]
fn renumber(ctx: &XdpContext, p: &Packet, l4: usize, plan: &Plan) -> CsumDelta {
    let d = add_quoted32(ctx, p, l4 + SEQ, plan.seq_add, CsumDelta::new());
    if plan.ack_add == 0 || l4 + FLAGS + 1 > p.l3_end() {
        return d;
    }
    let Some(flags) = ptr_at::<u8>(ctx, l4 + FLAGS) else {
        return d;
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *flags } & lb_common::conntrack::tcp_flags::ACK == 0 {
        return d;
    }
    add_quoted32(ctx, p, l4 + ACK, plan.ack_add, d)
}

/// Rewrites the quoted packet and the outer header; the ICMP checksum follows every quoted word
/// that changed (it covers the quote, and has no pseudo-header).
#[inline(always)]
fn rewrite(ctx: &XdpContext, p: &Packet, plan: &Plan) -> Option<()> {
    let old = quoted(ctx, p)?;
    let new = &plan.inner;
    let ip = ptr_at::<[u8; 20]>(ctx, old.l3)? as *mut u8;
    let ports = ptr_at::<u32>(ctx, old.l4)?;
    let addr_delta = CsumDelta::new()
        .replace32(old.src, new.src)
        .replace32(old.dst, new.dst);
    let mut port_delta = CsumDelta::new().replace32(old.ports, new.ports);
    if old.proto == PROTO_TCP {
        // Sequence numbers are in the TCP checksum as the ports are.
        port_delta = port_delta.add(renumber(ctx, p, old.l4, plan));
    }
    // SAFETY: both bounds checked by ptr_at.
    let mut icmp_delta = unsafe {
        let old_check = load16(ip.add(CHECK));
        let new_check = addr_delta.apply(old_check);
        store16(ip.add(CHECK), new_check);
        store32(ip.add(12), new.src);
        store32(ip.add(16), new.dst);
        *ports = new.ports;
        addr_delta.add(port_delta).replace16(old_check, new_check)
    };
    // The quoted L4 checksum, when the quote is long enough to hold it.
    let (off, udp) = if old.proto == PROTO_TCP {
        (TCP_CSUM, false)
    } else {
        (UDP_CSUM, true)
    };
    if let Some(c) = ptr_at::<u16>(ctx, old.l4 + off)
        && old.l4 + off + 2 <= p.l3_end()
    {
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let before = *c;
            let d = addr_delta.add(port_delta);
            let after = if udp {
                d.apply_udp(before)
            } else {
                d.apply(before)
            };
            *c = after;
            icmp_delta = icmp_delta.replace16(before, after);
        }
    }
    let ic = ptr_at::<u16>(ctx, p.l4() + ICMP_CSUM)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *ic = icmp_delta.apply(*ic) };
    rewrite_ip(ctx, p, plan.outer_src, plan.outer_dst)?;
    Some(())
}
