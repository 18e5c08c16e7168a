//! MSS clamping on SYN and SYN-ACK, so neither side sends segments its egress path cannot carry
//! (a tunnel hop, a smaller MTU on the client side).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    DataplaneConfig,
    csum::CsumDelta,
    mss,
    tcp_opts::{ABSENT, IPV4_TCP_HEADERS, Options, clamp},
};

use crate::{
    nat::TCP_CSUM,
    parse::{Packet, ptr_at, tcp::options_at},
};

/// The MSS limit for a path whose MTU is `mtu` (0: unknown), or None when not clamping.
#[inline(always)]
pub fn limit(cfg: &DataplaneConfig, mtu: u32) -> Option<u16> {
    match cfg.mss_mode {
        mss::FIXED => Some(cfg.mss_value),
        mss::AUTO if mtu > IPV4_TCP_HEADERS as u32 && mtu <= 0xffff => {
            Some(mtu as u16 - IPV4_TCP_HEADERS)
        }
        _ => None,
    }
}

/// Lowers the segment's MSS option to `limit` if it is larger, fixing the TCP checksum.
#[inline(always)]
pub fn clamp_to(ctx: &XdpContext, p: &Packet, opts: &Options, limit: u16) {
    if opts.mss_at == ABSENT {
        return;
    }
    let Some(new) = clamp(opts.mss, limit) else {
        return;
    };
    // Offset of the value from the TCP header start, masked for the verifier (options ≤ 40).
    let rel = (options_at(p) - p.l4() + opts.mss_at as usize) & 63;
    let (Some(v), Some(c)) = (
        ptr_at::<[u8; 2]>(ctx, p.l4() + rel),
        ptr_at::<u16>(ctx, p.l4() + TCP_CSUM),
    ) else {
        return;
    };
    // SAFETY: both bounds checked by ptr_at.
    unsafe {
        let old = u16::from_ne_bytes(*v);
        let new = u16::from_ne_bytes(new.to_be_bytes());
        *v = new.to_ne_bytes();
        *c = CsumDelta::new().replace16_at(rel, old, new).apply(*c);
    }
}
