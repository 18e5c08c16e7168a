//! A client ACK to a cookie-capable VIP with no flow: if its acknowledgment number is a cookie
//! the edge sent (checked against the secret, the 4-tuple, the client's ISN and the clock), the
//! client owns its address and the flow is created.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conntrack::{NO_WSCALE, tcp_flags},
    cookie::{self, Tuple, syn_opts},
};

use crate::{
    conntrack::now_ns,
    maps::COOKIE_KEY,
    parse::{Packet, tcp},
};

/// What a valid cookie ACK says about the connection, for its flow entry.
pub struct CookieStart {
    pub isn: u32,
    pub cookie: u32,
    /// `cookie::syn_opts` bits.
    pub syn_opts: u8,
    pub wscale: u8,
    /// The edge's SYN-ACK timestamp value (echoed by the client), 0 without timestamps.
    pub edge_ts: u32,
}

/// Segments that may carry a cookie: ACK without SYN, RST or FIN (data is allowed: a lost
/// pure ACK is followed by the client's first data segment with the same acknowledgment).
#[inline(always)]
pub const fn is_candidate(flags: u8) -> bool {
    use tcp_flags::*;
    flags & (SYN | RST | FIN | ACK) == ACK
}

#[inline(always)]
pub fn check(ctx: &XdpContext, p: &Packet) -> Option<CookieStart> {
    let key = COOKIE_KEY.get(0)?;
    let isn = p.seg.seq.wrapping_sub(1);
    let c = p.seg.ack.wrapping_sub(1);
    let t = Tuple {
        client: p.src,
        vip: p.dst,
        ports: p.ports,
        isn,
    };
    let mss_idx = cookie::check(key, &t, c, cookie::counter(now_ns()))?;
    let mut start = CookieStart {
        isn,
        cookie: c,
        syn_opts: mss_idx as u8,
        wscale: NO_WSCALE,
        edge_ts: 0,
    };
    if let Some(c) = tcp::copied_options(ctx, p)
        && c.layout().0
    {
        let ecr = c.get32(tcp::TS_ECHO);
        let (ws, sack) = cookie::ts_options(ecr);
        start.wscale = ws;
        start.edge_ts = ecr;
        start.syn_opts |= syn_opts::TS;
        if sack {
            start.syn_opts |= syn_opts::SACK;
        }
    }
    Some(start)
}
