//! The SYN the edge sends a cookie flow's backend, written over the client's segment (the ACK
//! that proved the cookie, or a later segment that arrived before the backend answered: its
//! data is dropped, the client sends it again). It carries the client's ISN and the options
//! the cookie recorded, so the backend's connection is the client's.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    DataplaneConfig, FlowEntry, PROTO_TCP, Reason,
    conntrack::{NO_WSCALE, tcp_flags},
    cookie::{MSS_TABLE, syn_opts},
    ports_word, slot,
};

use super::segment::{self, Segment, word};
use crate::{
    conntrack::Flow,
    egress::{self, NoHop},
    mss,
    parse::{Packet, tcp},
    stats,
    verdict::Verdict,
};

#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    p: &Packet,
    flow: &Flow,
    e: &FlowEntry,
    cfg: &DataplaneConfig,
    now: u64,
) -> Verdict {
    let snat_addr = e.client[2];
    let hop = match egress::backend_hop(ctx, e.backend_id, snat_addr, e.backend, PROTO_TCP, now) {
        Ok(h) => Some(h),
        Err(NoHop::Neighbor) => None,
        Err(NoHop::Failed) => return Verdict::of(Reason::DropFibFailed),
    };
    // The client's timestamp, read before the segment is overwritten.
    let client_ts = if e.syn_opts & syn_opts::TS != 0 {
        match tcp::copied_options(ctx, p) {
            Some(c) if c.layout().0 => c.get32(tcp::TS_VALUE),
            _ => 0,
        }
    } else {
        0
    };
    let mut m = MSS_TABLE[(e.syn_opts & syn_opts::MSS_MASK) as usize];
    if let Some(limit) = mss::limit(cfg, hop.map_or(0, |h| h.mtu))
        && limit < m
    {
        m = limit;
    }
    let win = e.win[0];
    let s = Segment {
        src: snat_addr,
        dst: e.backend,
        ports: ports_word(slot::port_of(flow.slot), e.backend_port),
        seq: e.ack[1].wrapping_sub(1),
        ack: 0,
        flags: tcp_flags::SYN,
        win: if win > 0xffff { 0xffff } else { win as u16 },
    };
    let [m0, m1] = m.to_be_bytes();
    let mss_opt = word([2, 4, m0, m1]);
    let written = if e.syn_opts & syn_opts::TS != 0 {
        let sack_opt = if e.syn_opts & syn_opts::SACK != 0 {
            word([4, 2, 8, 10])
        } else {
            word([1, 1, 8, 10])
        };
        let ws = e.wscale[0];
        let ws_opt = if ws != NO_WSCALE {
            word([1, 3, 3, ws])
        } else {
            word([1, 1, 1, 1])
        };
        let opts = [mss_opt, sack_opt, client_ts.to_be(), 0, ws_opt];
        segment::write::<5>(ctx, p.l3(), &s, &opts)
    } else {
        segment::write::<1>(ctx, p.l3(), &s, &[mss_opt])
    };
    if written.is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    let sent = if flow.new {
        Reason::SynCookieAccepted
    } else {
        Reason::SynCookieSynRepeated
    };
    // As in to_backend::send. Not shared through a helper taking `Option<Hop>`: passed by value,
    // its `None` leaves a partly undefined register that the verifier refuses to read.
    let v = match hop {
        Some(h) => egress::transmit_to_backend(ctx, &h, p.vlan, sent),
        None => Verdict::of(Reason::PassNoNeighbor),
    };
    let len = (20
        + 20
        + if e.syn_opts & syn_opts::TS != 0 {
            20
        } else {
            4
        }) as u64;
    stats::vip(e.vip_id as u32, len, flow.new);
    stats::backend_in(e.backend_id as u32, len, flow.new);
    v
}
