//! A SYN to a VIP in cookie mode: answered in place with a SYN-ACK whose sequence number is the
//! cookie. Nothing is stored and nothing reaches a backend.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    DataplaneConfig, Reason, VipMeta,
    conntrack::{NO_WSCALE, tcp_flags},
    cookie::{self, EDGE_WSCALE, SYNACK_WINDOW, Tuple},
    mss,
    tcp_opts::{ABSENT, IPV4_TCP_HEADERS, Options},
};

use super::segment::{self, Segment, word};
use crate::{
    maps::{COOKIE_KEY, VIP_PLAIN_SYN},
    parse::Packet,
    stats,
    verdict::Verdict,
};

/// Whether a SYN may still find a flow that a SYN created on this VIP without a cookie (its
/// retransmission keeps that flow): one was created within `PLAIN_SYN_WINDOW_NS`.
#[inline(always)]
pub fn plain_flows_waiting(vip_id: u32, now: u64) -> bool {
    match VIP_PLAIN_SYN.get(vip_id) {
        // A stamp ahead of this CPU's clock (another CPU's, a tick newer) is recent.
        Some(at) => now.saturating_sub(*at) < lb_common::PLAIN_SYN_WINDOW_NS,
        None => true,
    }
}

/// A SYN created a flow on this VIP without a cookie: stamped, at most once a second (every
/// CPU writes the same line).
#[inline(always)]
pub fn note_plain_flow(vip_id: u32, now: u64) {
    if let Some(at) = VIP_PLAIN_SYN.get_ptr_mut(vip_id) {
        // SAFETY: a valid map value pointer; an 8-byte store is whole.
        unsafe {
            if now.saturating_sub(*at) >= lb_common::PLAIN_SYN_STAMP_NS {
                *at = now;
            }
        }
    }
}

#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    p: &Packet,
    vip: VipMeta,
    opts: Option<&Options>,
    cfg: &DataplaneConfig,
    now: u64,
) -> Verdict {
    let Some(key) = COOKIE_KEY.get(0) else {
        return Verdict::of(Reason::DropInternal);
    };
    let (client_mss, wscale, sack, ts) = match opts {
        Some(o) => (
            o.mss,
            o.wscale,
            o.sack_ok,
            (o.ts_at != ABSENT).then_some(o.ts_val),
        ),
        None => (0, NO_WSCALE, false, None),
    };
    let mss_idx = cookie::mss_index(client_mss);
    let t = Tuple {
        client: p.src,
        vip: p.dst,
        ports: p.ports,
        isn: p.seg.seq,
    };
    let c = cookie::generate(key, &t, cookie::counter(now), mss_idx);
    let s = Segment {
        src: p.dst,
        dst: p.src,
        ports: segment::swap_ports(p.ports),
        seq: c,
        ack: p.seg.seq.wrapping_add(1),
        flags: tcp_flags::SYN | tcp_flags::ACK,
        win: SYNACK_WINDOW,
    };
    // A PROXY VIP's first segment carries the header too (the longest its version can have).
    let room = lb_common::proxy::max_len(lb_common::proxy::flow_bits(vip.flags, 0));
    let [m0, m1] = advertised_mss(cfg).saturating_sub(room).to_be_bytes();
    let mss_opt = word([2, 4, m0, m1]);
    let written = match ts {
        // Window scale and SACK are offered back only when the client offered them, and only
        // with timestamps, where the edge can remember them.
        Some(client_ts) => {
            let sack_opt = if sack {
                word([4, 2, 8, 10])
            } else {
                word([1, 1, 8, 10])
            };
            let ws_opt = if wscale != NO_WSCALE {
                word([1, 3, 3, EDGE_WSCALE])
            } else {
                word([1, 1, 1, 1])
            };
            let ts_val = cookie::ts_value(now, wscale, sack);
            let opts = [mss_opt, sack_opt, ts_val.to_be(), client_ts.to_be(), ws_opt];
            segment::write::<5>(ctx, p.l3(), &s, &opts)
        }
        None => segment::write::<1>(ctx, p.l3(), &s, &[mss_opt]),
    };
    if written.is_none() || segment::swap_macs(ctx).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    stats::vip_syn(vip.vip_id, stats::VipSyn::CookieSent);
    Verdict::tx(Reason::SynCookieSent)
}

/// The MSS the edge offers a cookie client: what its smallest interface carries, or the
/// configured clamp.
#[inline(always)]
fn advertised_mss(cfg: &DataplaneConfig) -> u16 {
    match cfg.mss_mode {
        mss::FIXED if cfg.mss_value != 0 => cfg.mss_value,
        _ if cfg.min_mtu > IPV4_TCP_HEADERS as u32 && cfg.min_mtu <= 9000 => {
            cfg.min_mtu as u16 - IPV4_TCP_HEADERS
        }
        _ => 1460,
    }
}
