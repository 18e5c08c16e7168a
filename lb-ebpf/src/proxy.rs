//! PROXY protocol toward the data node (`lb_common::proxy`): the header inserted in front of a
//! flow's first payload byte, client sequence numbers shifted past it, the node's
//! acknowledgments and SACK edges mapped back. The insertion runs in `wklb_proxy` only (a
//! flow's first segment and its retransmissions); the programs that send client segments only
//! decide, shift, and hand such a segment over.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::generated::{
        bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::btf_map,
    programs::XdpContext,
};
use core::ffi::c_void;
use lb_common::{
    FlowEntry, MAX_VIPS, ProxyStats, Reason, VipMeta,
    csum::CsumDelta,
    proxy::{self, BUF},
    tcp_opts::SACK_BLOCK,
};

use crate::{
    cookie::translate::{fix_checksum, option_set32},
    maps::tails,
    nat::TCP_CSUM,
    parse::{
        Packet,
        tcp::{self, Copied, SACK_FIRST},
    },
    verdict::Verdict,
};

#[btf_map]
pub static PROXY_STATS: PerCpuArray<ProxyStats, { MAX_VIPS as usize }> = PerCpuArray::new();

/// What `wklb_proxy` hands to `wklb_proxy_insert` for one packet, and the buffers the
/// insertion works in (not pinned: one packet's work).
#[repr(C)]
pub struct Scratch {
    header: [u8; BUF],
    frame: [u8; FRAME],
    tcp: [u8; 64],
    /// The sent packet's verdict, for `wklb_proxy_insert` to return.
    verdict: Verdict,
    /// The header's fields: client and VIP (IPv4 words), `sport << 16 | dport`, and the
    /// flow's `proxy` bits, VIP and header length (0: no packet handed over).
    src: u32,
    dst: u32,
    ports: u32,
    bits: u32,
    vip_id: u32,
    len: u32,
    header_sum: u64,
}

/// Room for Ethernet, a tag, IPv4 with options and TCP with options (at most 138 bytes).
const FRAME: usize = 256;

#[btf_map]
static PROXY_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// The `proxy` bits a new flow of `vip` gets toward a node of `family`.
#[inline(always)]
pub fn flow_bits(vip: &VipMeta, family: u8) -> u8 {
    proxy::flow_bits(vip.flags, lb_common::slot::family_bit(family))
}

/// The step for the client segment `p` of flow `e` (`proxy::step`).
#[inline(always)]
pub fn step(e: &FlowEntry, p: &Packet) -> u8 {
    if !p.is_tcp() {
        return proxy::step::KEEP;
    }
    proxy::forward(e, p.seg.seq, p.seg.flags, p.seg.len)
}

#[inline(always)]
fn count(vip_id: u16, f: impl FnOnce(&mut ProxyStats)) {
    if let Some(s) = PROXY_STATS.get_ptr_mut(vip_id as u32) {
        // SAFETY: per-CPU slot.
        unsafe { f(&mut *s) };
    }
}

/// A segment `proxy::forward` refused.
#[inline(always)]
pub fn refuse(e: &FlowEntry) -> Verdict {
    count(e.vip_id, |s| s.refused += 1);
    Verdict::of(Reason::DropMalformed)
}

/// Hands the segment to `wklb_proxy`, which inserts the header (`accepted`: its RST or FIN
/// passed tracking, which is done).
#[inline(always)]
pub fn defer(ctx: &XdpContext, p: &Packet, accepted: bool) -> Verdict {
    let what = if accepted {
        crate::handoff::ACCEPTED
    } else {
        0
    };
    let key = lb_common::Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
    crate::handoff::give(&key, what | crate::handoff::TRACKED, VipMeta::default());
    tails::call(ctx, tails::PROXY)
}

/// The segment is sent as it is (NAT done, next hop set) with the header still to insert:
/// `wklb_proxy_insert` inserts it and returns `v`, in a program of its own (the header's
/// building and the frame's growth do not fit the stack and the verifier budget left here).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, e: &FlowEntry, v: Verdict) -> Verdict {
    let Some(s) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: this CPU's scratch value, ours for the rest of this run.
    unsafe {
        (*s).verdict = v;
        (*s).src = e.client[0];
        (*s).dst = e.client[1];
        (*s).ports = (e.client_port as u32) << 16 | e.vip_port as u32;
        (*s).bits = e.proxy as u32;
        (*s).vip_id = e.vip_id as u32;
        (*s).len = e.proxy_len as u32;
    }
    tails::call(ctx, tails::PROXY_INSERT)
}

/// `wklb_proxy_insert`: the header `hand_over` described inserted between the TCP header and
/// the payload of the frame as it is about to leave; the headers move to the new head,
/// lengths and checksums follow from the old ones.
#[inline(always)]
pub fn insert_handed_over(ctx: &XdpContext) -> Verdict {
    let Some(s) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: this CPU's scratch value, ours for the rest of this run; `len` says whether the
    // rest was written for this packet, and is cleared as it is taken.
    let (len, v) = unsafe {
        let len = (*s).len;
        (*s).len = 0;
        (len, Verdict::sent((*s).verdict.action, (*s).verdict.reason))
    };
    if len == 0 {
        return Verdict::of(Reason::DropInternal);
    }
    let crate::parse::eth::L2::Ipv4 { l3, .. } = crate::parse::eth::parse(ctx) else {
        return Verdict::of(Reason::DropInternal);
    };
    let (Some(ip), Some(_)) = (
        crate::parse::ptr_at::<[u8; 20]>(ctx, l3),
        crate::parse::ptr_at::<[u8; 1]>(ctx, 0),
    ) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let (ihl, ip_len) = unsafe {
        (
            ((*ip)[0] & 0x0f) as usize * 4,
            u16::from_be_bytes([(*ip)[2], (*ip)[3]]),
        )
    };
    let l4 = l3 + (ihl & 0x3c);
    let Some(tcp) = crate::parse::ptr_at::<[u8; 20]>(ctx, l4) else {
        return Verdict::of(Reason::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let thl = unsafe { ((*tcp)[12] >> 4) as usize * 4 };
    build(s);
    let offsets = l3 as u32 | (l4 as u32) << 8 | (thl as u32) << 16;
    let h = copy_and_patch(ctx, offsets, ip_len as u32);
    // SAFETY: as above; nothing is left for a packet that was not handed over.
    unsafe { (*s).len = 0 };
    if h == 0 || h != len || !grow(ctx, (l4 + thl) as u32, h) {
        return Verdict::of(Reason::DropInternal);
    }
    // SAFETY: as above.
    count(unsafe { (*s).vip_id } as u16, |c| c.headers += 1);
    v
}

/// Builds the header `hand_over` described, and its sum, into the scratch buffer.
#[inline(always)]
fn build(s: *mut Scratch) {
    // SAFETY: this CPU's scratch value.
    let (header, src, dst, ports, bits) =
        unsafe { (&mut (*s).header, (*s).src, (*s).dst, (*s).ports, (*s).bits) };
    // The sum runs over the whole buffer without a branch: what is not the header is zero.
    zero(header);
    let h = proxy::build_v4(
        bits as u8 & FlowEntry::PROXY_V2 != 0,
        src.to_ne_bytes(),
        dst.to_ne_bytes(),
        (ports >> 16) as u16,
        ports as u16,
        header,
    );
    let sum = sum(header);
    // SAFETY: as above.
    unsafe {
        (*s).len = h as u32;
        (*s).header_sum = sum;
    }
}

/// Copies the frame's headers (up to the end of TCP's: `offsets` holds L3, L4 and the TCP
/// header length, a byte each) into the scratch buffer and patches the IP length and both
/// checksums there for the header `build` made; its length (0: failed).
#[inline(never)]
fn copy_and_patch(ctx: &XdpContext, offsets: u32, ip_len: u32) -> u32 {
    let Some(s) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch value, ours for the rest of this run.
    let (frame, tcp, h, header_sum) =
        unsafe { (&mut (*s).frame, &mut (*s).tcp, (*s).len, (*s).header_sum) };
    let (l3, l4, thl) = (
        (offsets & 0x1f) as usize,
        ((offsets >> 8) & 0xff) as usize,
        ((offsets >> 16) & 0x3f) as usize,
    );
    // SAFETY: helper calls with our context and this CPU's buffers; lengths masked into them.
    if unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            0,
            frame.as_mut_ptr() as *mut c_void,
            len_in(l4 + thl, FRAME),
        )
    } != 0
    {
        return 0;
    }
    let at = |i: usize| i & (FRAME - 1);
    let get16 = |f: &[u8; FRAME], i: usize| u16::from_ne_bytes([f[at(i)], f[at(i + 1)]]);
    let get32 = |f: &[u8; FRAME], i: usize| {
        u32::from_ne_bytes([f[at(i)], f[at(i + 1)], f[at(i + 2)], f[at(i + 3)]])
    };
    let (src, dst) = (get32(frame, l3 + 12), get32(frame, l3 + 16));
    let ip_len = ip_len as u16;
    let tcp_len = ip_len.wrapping_sub((l4 - l3) as u16);
    let old = get16(frame, l4 + TCP_CSUM);
    // Only an odd header needs the payload's sum, taken out of the old checksum with the
    // pseudo-header and the TCP header (its checksum field as zero).
    let k = if h % 2 == 1 {
        zero(tcp);
        // SAFETY: as above.
        if unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                l4 as u32,
                tcp.as_mut_ptr() as *mut c_void,
                len_in(thl, 64),
            )
        } != 0
        {
            return 0;
        }
        tcp[TCP_CSUM] = 0;
        tcp[TCP_CSUM + 1] = 0;
        proxy::pseudo_v4(src, dst, tcp_len) + sum(tcp)
    } else {
        0
    };
    let c = proxy::insert_csum(old, tcp_len, h as u16, header_sum, k);
    let new_len = ip_len.wrapping_add(h as u16);
    let ip_csum = CsumDelta::new()
        .replace16(ip_len.to_be(), new_len.to_be())
        .apply(get16(frame, l3 + 10));
    let put16 = |f: &mut [u8; FRAME], i: usize, v: u16| {
        let [a, b] = v.to_ne_bytes();
        f[at(i)] = a;
        f[at(i + 1)] = b;
    };
    put16(frame, l3 + 2, new_len.to_be());
    put16(frame, l3 + 10, ip_csum);
    put16(frame, l4 + TCP_CSUM, c);
    h
}

/// Moves the head `h` bytes out, writes the patched headers (`hl` bytes) back at the new head
/// and the header behind them. After it, every packet pointer is stale (none is kept).
#[inline(never)]
fn grow(ctx: &XdpContext, hl: u32, h: u32) -> bool {
    let Some(s) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper calls with our context and this CPU's buffers; lengths masked into them.
    unsafe {
        bpf_xdp_adjust_head(ctx.ctx, -(h as i32)) == 0
            && bpf_xdp_store_bytes(
                ctx.ctx,
                0,
                (*s).frame.as_mut_ptr() as *mut c_void,
                len_in(hl as usize, FRAME),
            ) == 0
            && bpf_xdp_store_bytes(
                ctx.ctx,
                hl,
                (*s).header.as_mut_ptr() as *mut c_void,
                len_in(h as usize, BUF),
            ) == 0
    }
}

/// The one's-complement sum of a whole buffer (the kernel's, in one helper call: summed here
/// the words would take a large stack frame).
#[inline(always)]
fn sum<const N: usize>(b: &mut [u8; N]) -> u64 {
    // SAFETY: a buffer of N bytes (a multiple of 4) in a map value.
    let s = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            b.as_mut_ptr() as *mut u32,
            N as u32,
            0,
        )
    };
    // The helper's sum is 32 bits wide, unfolded.
    (s as u64) & 0xffff_ffff
}

/// Zeroes a buffer a word at a time.
#[inline(always)]
fn zero<const N: usize>(b: &mut [u8; N]) {
    let w = b.as_mut_ptr() as *mut u64;
    for i in 0..N / 8 {
        // SAFETY: N / 8 words inside the buffer; map values are 8-byte aligned, and the
        // buffers sit at multiples of 8 in `Scratch`.
        unsafe { w.add(i).write(0) };
    }
}

/// A length of 1..=`size` the verifier can see stays inside a buffer of `size` (a power of two).
#[inline(always)]
fn len_in(len: usize, size: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & (size as u32 - 1)) + 1
}

/// Node → client, before tracking: the segment's acknowledgment in the client's numbering
/// (`p.seg` only; the packet is `reverse`'s). Returns the client's first payload byte as the
/// flow knew it before this segment (for `after_tracking` and `reverse`).
#[inline(always)]
pub fn client_view(p: &mut Packet, e: &FlowEntry) -> u32 {
    let isn1 = e.ack[1];
    // Unchanged on other flows (H = 0); hidden from the verifier's value tracking, which would
    // follow each of the map's cases through the tracker.
    p.seg.ack = crate::parse::opaque(proxy::to_client(e, isn1, p.seg.ack) as usize) as u32;
    isn1
}

/// Node → client, after tracking: the first acknowledgment past the header fixes the offset.
#[inline(always)]
pub fn after_tracking(e: &mut FlowEntry, isn1: u32) {
    if proxy::now_acked(e, isn1) {
        e.proxy |= FlowEntry::PROXY_ACKED;
    }
}

/// Node → client, the packet's SACK edges in the client's numbering (the acknowledgment goes
/// back in the NAT rewrite). Not in the entry program, which sends PROXY flows' segments only
/// when they have no room for SACK blocks (`to_client::without_sack`).
#[inline(always)]
pub fn sack_to_client(ctx: &XdpContext, p: &Packet, e: &FlowEntry, isn1: u32) -> Option<()> {
    // SAFETY: a live FLOW_TABLE value; read again rather than kept in a register since the
    // packet's start (a branch on a value live that long splits every path in between).
    if unsafe { core::ptr::read_volatile(&e.proxy_len) } == 0 || p.tcp_len() <= 20 {
        return Some(());
    }
    let Some(mut o) = tcp::copied_options(ctx, p) else {
        return Some(());
    };
    let (first, blocks) = sack_blocks(&o);
    if blocks == 0 {
        return Some(());
    }
    let mut d = CsumDelta::new();
    for i in 0..4 {
        if i < blocks {
            let b = first + i * SACK_BLOCK;
            d = map_edge(&mut o, b, e, isn1, d);
            d = map_edge(&mut o, b + 4, e, isn1, d);
        }
    }
    count(e.vip_id, |s| s.sack_mapped += 1);
    if !o.store(ctx, p) {
        return None;
    }
    fix_checksum(ctx, p, d)
}

/// Where the SACK blocks start and how many there are, in the two layouts stacks send:
/// NOP, NOP, timestamps, NOP, NOP, SACK; or NOP, NOP, SACK. (0, 0) for any other.
#[inline(always)]
fn sack_blocks(o: &Copied) -> (usize, usize) {
    if let (true, blocks) = o.layout() {
        return (SACK_FIRST, blocks);
    }
    let b = &o.bytes;
    if o.len < 12 || b[0] != 1 || b[1] != 1 || b[2] != 5 {
        return (0, 0);
    }
    let blocks = (b[3] as usize).wrapping_sub(2) / 8;
    let present = (o.len - 4) / 8;
    let blocks = if blocks < present { blocks } else { present };
    (4, if blocks > 4 { 4 } else { blocks })
}

#[inline(always)]
fn map_edge(o: &mut Copied, at: usize, e: &FlowEntry, isn1: u32, d: CsumDelta) -> CsumDelta {
    let new = proxy::to_client(e, isn1, o.get32(at));
    option_set32(o, at, new, d)
}
