//! Header parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4 of any header length, TCP/UDP/ICMP.
//! Every access is bounds-checked against `data_end`, as the verifier demands.

pub mod eth;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;

use aya_ebpf::programs::XdpContext;
use lb_common::conntrack::Segment;

/// Pointer to a `T` at `offset`, if the packet holds all of it.
///
/// The pointer goes through an optimisation barrier before the bounds check: otherwise LLVM
/// may check `data + (offset + size)` and dereference a separately computed `data + offset`,
/// which the verifier cannot relate to the check (it then rejects the access), or drop a check
/// it deems implied by an earlier one.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let ptr = opaque(ctx.data() + offset);
    if ptr + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(ptr as *mut T)
}

/// `v`, hidden from the optimiser (libbpf's `barrier_var`).
#[inline(always)]
pub fn opaque(mut v: usize) -> usize {
    // SAFETY: a register move onto itself (an empty template would leave BTF line info
    // pointing twice at one instruction, which the kernel rejects).
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// One 32-bit load of a field at any offset (byte loads would be four; BPF on the architectures
/// we target allows unaligned packet access).
///
/// # Safety
/// `p` must point at 4 readable bytes of packet data.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    // SAFETY: per the contract.
    unsafe { *(p as *const u32) }
}

/// One 32-bit store, see `load32`.
///
/// # Safety
/// `p` must point at 4 writable bytes of packet data.
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: per the contract.
    unsafe { *(p as *mut u32) = v }
}

/// # Safety
/// `p` must point at 2 readable bytes of packet data.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    // SAFETY: per the contract.
    unsafe { *(p as *const u16) }
}

/// # Safety
/// `p` must point at 2 writable bytes of packet data.
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: per the contract.
    unsafe { *(p as *mut u16) = v }
}

/// The parts of an IPv4 packet the data path uses. Addresses and the ports word are native
/// loads of network-order bytes; everything else is host order.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the IP header (14, or 18 behind a VLAN tag); read through `l3()`.
    pub l3_off: u32,
    /// VLAN id of the frame, 0 when untagged.
    pub vlan: u16,
    /// Offset of the L4 header.
    pub l4_off: u32,
    pub proto: u8,
    pub ttl: u8,
    /// Don't-fragment flag.
    pub df: bool,
    pub src: u32,
    pub dst: u32,
    /// IP total length: the L3 byte count for counters and MTU checks.
    pub ip_len: u16,
    /// TCP/UDP: source and destination port as they sit in the packet. ICMP: 0.
    pub ports: u32,
    /// TCP header fields (all zero for UDP and ICMP).
    pub seg: Segment,
    /// TCP header length in bytes (data offset × 4).
    pub tcp_hdr_len: u32,
}

/// The offsets, masked to their largest possible values: the masks change nothing, but give the
/// verifier a bound however LLVM spilled the field (a spill it cannot read back whole makes the
/// value unknown, and a packet pointer with an unbounded offset cannot be range-checked).
impl Packet {
    /// At most 18.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        (self.l3_off & 0x1f) as usize
    }
    /// At most 18 + 60 for IPv4; 18 + 40 + 2 × 64 = 186 for IPv6 behind the extension
    /// headers the parser walks (a mask below that would wrap such an offset into the frame's
    /// start).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.l4_off & 0xff) as usize
    }
    /// Where the IP packet ends (what follows is padding).
    #[inline(always)]
    pub fn l3_end(&self) -> usize {
        self.l3() + self.ip_len as usize
    }
    /// At most 60.
    #[inline(always)]
    pub fn tcp_len(&self) -> usize {
        (self.tcp_hdr_len & 0x3f) as usize
    }
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == lb_common::PROTO_TCP
    }
}
