//! A whole TCP segment written over the current frame: the handshake segments the edge sends
//! itself (the cookie SYN-ACK, the SYN and the ACK toward a backend). A fresh IPv4 header
//! without options, full checksums; the Ethernet header and VLAN tag stay for the caller.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{PROTO_TCP, csum::fold, icmp::TTL};

use crate::parse::{load16, opaque, ptr_at, store16, store32};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
/// IPv4 flags word with don't-fragment set.
const DF: u16 = 0x4000;

/// Header fields; addresses and the ports word as they sit in the packet.
pub struct Segment {
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub win: u16,
}

/// Option bytes as stored: `word(b)` is the 4 bytes `b` in packet order.
#[inline(always)]
pub const fn word(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// Writes `s` with the `N` option words `opts` at `l3` (14 or 18), resizing the frame to fit.
#[inline(always)]
pub fn write<const N: usize>(
    ctx: &XdpContext,
    l3: usize,
    s: &Segment,
    opts: &[u32; N],
) -> Option<()> {
    let l3 = l3 & 0x1f;
    let tcp_len = TCP_LEN + 4 * N;
    let want = l3 + IP_LEN + tcp_len;
    // Opaque: otherwise LLVM subtracts the pointers in 32 bits, which the verifier refuses.
    let have = opaque(ctx.data_end() - ctx.data());
    // SAFETY: plain helper call on our context; pointers are derived again below.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - have as i32) } != 0 {
        return None;
    }
    let h = ptr_at::<[u8; IP_LEN + TCP_LEN]>(ctx, l3)? as *mut u8;
    let o = ptr_at::<[u32; N]>(ctx, l3 + IP_LEN + TCP_LEN)? as *mut u32;
    // SAFETY: both regions bounds-checked by ptr_at; offsets are constants.
    unsafe {
        *h = 0x45;
        *h.add(1) = 0;
        store16(h.add(2), ((IP_LEN + tcp_len) as u16).to_be());
        store16(h.add(4), 0);
        store16(h.add(6), DF.to_be());
        *h.add(8) = TTL;
        *h.add(9) = PROTO_TCP;
        store16(h.add(10), 0);
        store32(h.add(12), s.src);
        store32(h.add(16), s.dst);
        let ip_sum = sum_words(h, IP_LEN / 2);
        store16(h.add(10), !fold(ip_sum));

        let t = h.add(IP_LEN);
        store32(t, s.ports);
        store32(t.add(4), s.seq.to_be());
        store32(t.add(8), s.ack.to_be());
        *t.add(12) = ((tcp_len / 4) as u8) << 4;
        *t.add(13) = s.flags;
        store16(t.add(14), s.win.to_be());
        store16(t.add(16), 0);
        store16(t.add(18), 0);
        let mut i = 0;
        while i < N {
            *o.add(i) = opts[i];
            i += 1;
        }
        // Pseudo-header: addresses (already summed as the IP header's last 4 words), protocol,
        // TCP length; then the header itself.
        let mut sum = sum_words(h.add(12), 4);
        sum += u16::from_ne_bytes([0, PROTO_TCP]) as u64;
        sum += u16::from_ne_bytes((tcp_len as u16).to_be_bytes()) as u64;
        sum += sum_words(t, TCP_LEN / 2);
        sum += sum_words(o as *const u8, 2 * N);
        store16(t.add(16), !fold(sum));
    }
    Some(())
}

/// One's-complement sum (unfolded) of `n` 16-bit words as stored.
///
/// # Safety
/// `p` must point at `2 * n` readable bytes.
#[inline(always)]
unsafe fn sum_words(p: *const u8, n: usize) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        // SAFETY: per the contract.
        sum += unsafe { load16(p.add(2 * i)) } as u64;
    }
    sum
}

/// Swaps the frame's MAC addresses: the segment goes back where the frame came from.
#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let e = ptr_at::<[u16; 6]>(ctx, 0)? as *mut u16;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let (d0, d1, d2) = (*e, *e.add(1), *e.add(2));
        *e = *e.add(3);
        *e.add(1) = *e.add(4);
        *e.add(2) = *e.add(5);
        *e.add(3) = d0;
        *e.add(4) = d1;
        *e.add(5) = d2;
    }
    Some(())
}

/// The ports word with source and destination exchanged.
#[inline(always)]
pub const fn swap_ports(ports: u32) -> u32 {
    ports.rotate_left(16)
}
