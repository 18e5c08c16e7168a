//! TCP: ports, the segment fields the tracker reads, and SYN options.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    cty::c_void,
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    conntrack::{NO_WSCALE, tcp_flags},
    tcp_opts::{self, Offsets, Options},
};

use super::{Packet, ipv4::TCP_FIXED, load16, load32, ptr_at};

/// Reads the fixed header into `p`; false when it is cut short or its data offset is below 5.
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Packet) -> bool {
    let Some(h) = ptr_at::<[u8; TCP_FIXED]>(ctx, p.l4()) else {
        return false;
    };
    let h = h as *const u8;
    // SAFETY: the 20-byte fixed header is in bounds (ptr_at).
    unsafe {
        p.ports = load32(h);
        p.seg.seq = u32::from_be(load32(h.add(4)));
        p.seg.ack = u32::from_be(load32(h.add(8)));
        p.tcp_hdr_len = ((*h.add(12) >> 4) as u32) * 4;
        p.seg.flags = *h.add(13);
        p.seg.win = u16::from_be(load16(h.add(14)));
    }
    p.seg.wscale = NO_WSCALE;
    // Payload bytes: what is left of the IP packet after the headers (the callers check that
    // the TCP header ends within it).
    p.seg.len = (p.l3_end() as u32).wrapping_sub((p.l4() + p.tcp_len()) as u32);
    p.tcp_len() >= TCP_FIXED
}

/// Offset of the options of the segment at `l4` (a SYN's, the only ones the data path reads).
#[inline(always)]
pub fn options_at(p: &Packet) -> usize {
    p.l4() + TCP_FIXED
}

/// Walks the options of a SYN or SYN-ACK and records its window scale in `p.seg`.
///
/// Offsets and values live in a per-CPU scratch slot, and callers read the options there: map
/// memory is opaque to the verifier, so the many outcomes of the walk (this option found, that
/// one not) do not each re-verify the rest of the program. None for segments without SYN.
pub fn syn_options(ctx: &XdpContext, p: &mut Packet) -> Option<&'static Options> {
    if p.seg.flags & tcp_flags::SYN == 0 {
        return None;
    }
    let s = walk(ctx, p)?;
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    unsafe {
        p.seg.wscale = core::ptr::read_volatile(&raw const (*s).options.wscale);
        Some(&(*s).options)
    }
}

/// The options `syn_options` found for this packet earlier in its run (the IPv6-backend sender,
/// entered by tail call after the main program walked them), window scale into `p.seg`.
#[inline(always)]
pub fn recorded_syn_options(p: &mut Packet) -> Option<&'static Options> {
    let s = SCRATCH.get_ptr(0)?;
    // SAFETY: per-CPU scratch value, written by `syn_options` in this run.
    unsafe {
        p.seg.wscale = core::ptr::read_volatile(&raw const (*s).options.wscale);
        Some(&(*s).options)
    }
}

/// The options of a non-SYN segment (cookie flows translate timestamps and SACK blocks), copied
/// into a per-CPU buffer with one helper call. They are read in the layout every stack we know
/// sends after the handshake, NOP, NOP, timestamps, then NOP, NOP, SACK when there are blocks
/// (`Copied::layout`), at fixed offsets: no walk, and no packet access at data-dependent
/// offsets, which would leave every path with its own packet-range knowledge and keep the
/// verifier from merging the paths that follow. None without options.
#[inline(always)]
pub fn copied_options(ctx: &XdpContext, p: &Packet) -> Option<Copied> {
    let len = p.tcp_len().checked_sub(TCP_FIXED)?;
    if len == 0 {
        return None;
    }
    let buf = OPTION_BYTES.get_ptr_mut(0)?;
    // SAFETY: helper call with our context and a per-CPU buffer of 64 bytes (len <= 40).
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            options_at(p) as u32,
            buf as *mut c_void,
            helper_len(len),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: per-CPU value, ours for the rest of this run.
    Some(Copied {
        bytes: unsafe { &mut (*buf).0 },
        len,
    })
}

/// Offsets in the usual layout: the timestamp value and echo, and the first SACK block.
pub const TS_VALUE: usize = 4;
pub const TS_ECHO: usize = 8;
pub const SACK_FIRST: usize = 16;

/// Options copied out of a segment by `copied_options`.
pub struct Copied {
    pub bytes: &'static mut [u8; 64],
    /// Option bytes (1-40).
    pub len: usize,
}

impl Copied {
    /// (timestamps present, SACK blocks) in the usual layout; (false, 0) for any other.
    #[inline(always)]
    pub fn layout(&self) -> (bool, usize) {
        let b = &self.bytes;
        if self.len < 12 || b[0] != 1 || b[1] != 1 || b[2] != 8 || b[3] != 10 {
            return (false, 0);
        }
        if self.len < SACK_FIRST + 8 || b[12] != 1 || b[13] != 1 || b[14] != 5 {
            return (true, 0);
        }
        let blocks = (b[15] as usize).wrapping_sub(2) / 8;
        // Only blocks the segment holds (its length byte may claim more), and with
        // timestamps, 40 option bytes hold at most 3.
        let present = (self.len - SACK_FIRST) / 8;
        let blocks = if blocks < present { blocks } else { present };
        (true, if blocks > 3 { 3 } else { blocks })
    }

    /// The big-endian word at `at` (masked into the buffer).
    #[inline(always)]
    pub fn get32(&self, at: usize) -> u32 {
        let b = &self.bytes;
        u32::from_be_bytes([
            b[at & 63],
            b[(at + 1) & 63],
            b[(at + 2) & 63],
            b[(at + 3) & 63],
        ])
    }

    #[inline(always)]
    pub fn set32(&mut self, at: usize, v: u32) {
        let [a, b, c, d] = v.to_be_bytes();
        self.bytes[at & 63] = a;
        self.bytes[(at + 1) & 63] = b;
        self.bytes[(at + 2) & 63] = c;
        self.bytes[(at + 3) & 63] = d;
    }

    /// Writes the (changed) options back into the segment.
    #[inline(always)]
    pub fn store(&mut self, ctx: &XdpContext, p: &Packet) -> bool {
        // SAFETY: helper call with our context and the buffer `copied_options` filled.
        unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                options_at(p) as u32,
                self.bytes.as_mut_ptr() as *mut c_void,
                helper_len(self.len),
            ) == 0
        }
    }
}

/// A length of 1-40 the verifier can see is 1-64 (the buffer's size): never zero, never past it.
#[inline(always)]
fn helper_len(len: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & 63) + 1
}

/// `copied_options`' buffer (64 bytes: masked indices always land inside).
#[repr(C)]
pub struct OptionBytes([u8; 64]);

#[btf_map]
static OPTION_BYTES: PerCpuArray<OptionBytes, 1> = PerCpuArray::new();

#[inline(always)]
fn walk(ctx: &XdpContext, p: &Packet) -> Option<*mut Scratch> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let start = options_at(p);
    let len = p.tcp_len() - TCP_FIXED;
    let read = |i: usize| match ptr_at::<u8>(ctx, start + (i & 63)) {
        // SAFETY: bounds checked by ptr_at.
        Some(b) => unsafe { *b as u16 },
        None => tcp_opts::OUT_OF_BOUNDS,
    };
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).at, Offsets::default());
        core::ptr::write_volatile(&raw mut (*s).options, Options::default());
        tcp_opts::walk(len, read, &mut (*s).at);
        tcp_opts::read_values(read, &(*s).at, &mut (*s).options);
    }
    Some(s)
}

/// `syn_options`' scratch.
#[repr(C)]
pub struct Scratch {
    at: Offsets,
    options: Options,
}

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
