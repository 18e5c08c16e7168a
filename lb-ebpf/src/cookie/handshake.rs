//! Backend → edge on a cookie flow before the handshake is done. The backend's SYN-ACK fixes
//! the translation (sequence and timestamp offsets, the backend's window scale) and is answered
//! by the edge with the handshake's last ACK; the client never sees it. A RST refusing the SYN
//! goes on to the client, renumbered into the cookie's sequence space.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowEntry, Reason,
    conntrack::{MAX_WSCALE, NO_WSCALE, State, tcp_flags},
    cookie::syn_opts,
    tcp_opts::{ABSENT, Options},
};

use super::segment::{self, Segment, word};
use crate::{parse::Packet, verdict::Verdict};

/// None: the packet goes on through the translated path.
#[inline(always)]
pub fn reverse(
    ctx: &XdpContext,
    p: &Packet,
    e: &mut FlowEntry,
    opts: Option<&Options>,
) -> Option<Verdict> {
    use tcp_flags::*;
    let flags = p.seg.flags;
    let pending = e.state == State::SynSent as u8;
    if flags & (SYN | ACK | RST) == SYN | ACK {
        // It must acknowledge the client's SYN: exactly, before the handshake; afterwards (a
        // retransmission, the edge's ACK was lost) nothing beyond what the backend has acked.
        let fits = if pending {
            p.seg.ack == e.ack[1]
        } else {
            e.ack[1].wrapping_sub(p.seg.ack) as i32 >= 0
        };
        if !fits {
            return Some(Verdict::of(Reason::DropSynCookiePending));
        }
        let backend_ts = opts.and_then(|o| (o.ts_at != ABSENT).then_some(o));
        if pending {
            settle(e, p, opts, backend_ts);
        }
        return Some(ack(ctx, p, e, backend_ts));
    }
    if !pending {
        return None;
    }
    if flags & RST != 0 {
        // A refusal must acknowledge the SYN (RFC 793): anything else is not the backend's
        // answer to it, and must not touch the handshake's state.
        if flags & ACK == 0 || p.seg.ack != e.ack[1] {
            return Some(Verdict::of(Reason::DropSynCookiePending));
        }
        // The backend refuses the connection: the client gets the RST at its own RCV.NXT.
        e.seq_delta = p.seg.seq.wrapping_sub(e.seq_delta.wrapping_add(1));
        e.ts_delta = 0;
        e.syn_opts = NO_WSCALE;
        return None;
    }
    if flags & (SYN | ACK) == ACK && p.seg.ack != e.ack[1] {
        // An ACK that does not acknowledge our SYN: the backend still holds an older
        // connection on this port (or its TIME_WAIT) and challenges the SYN. A client answers
        // with a RST at the acknowledgment it was given, which clears that connection, and
        // sends its SYN again: the edge, the client here, does the same (the SYN goes again
        // with the client's next segment).
        return Some(reset_stale(ctx, p));
    }
    Some(Verdict::of(Reason::DropSynCookiePending))
}

/// A RST back to the backend at the acknowledgment number of its challenge ACK.
#[inline(always)]
fn reset_stale(ctx: &XdpContext, p: &Packet) -> Verdict {
    let s = Segment {
        src: p.dst,
        dst: p.src,
        ports: segment::swap_ports(p.ports),
        seq: p.seg.ack,
        ack: 0,
        flags: tcp_flags::RST,
        win: 0,
    };
    if segment::write::<0>(ctx, p.l3(), &s, &[]).is_none() || segment::swap_macs(ctx).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    Verdict::tx(Reason::SynCookieBackendReset)
}

/// The backend's SYN-ACK fixes the offsets between its numbering and the client's view.
#[inline(always)]
fn settle(e: &mut FlowEntry, p: &Packet, opts: Option<&Options>, ts: Option<&Options>) {
    // Until now seq_delta held the cookie and ts_delta the edge's timestamp.
    e.seq_delta = p.seg.seq.wrapping_sub(e.seq_delta);
    e.ts_delta = match ts {
        Some(o) if e.syn_opts & syn_opts::TS != 0 => o.ts_val.wrapping_sub(e.ts_delta),
        _ => 0,
    };
    // From here on syn_opts holds the backend's window scale, which its windows are rescaled
    // from toward the client (who was told `cookie::EDGE_WSCALE`).
    // RFC 7323: a shift above 14 is taken as 14.
    let backend_ws = match opts.map_or(NO_WSCALE, |o| o.wscale) {
        NO_WSCALE => NO_WSCALE,
        ws if ws > MAX_WSCALE => MAX_WSCALE,
        ws => ws,
    };
    e.syn_opts = if e.wscale[0] == NO_WSCALE {
        NO_WSCALE
    } else {
        backend_ws
    };
    if e.wscale[0] != NO_WSCALE {
        e.wscale[1] = lb_common::cookie::EDGE_WSCALE;
    }
    e.state = State::Established as u8;
    e.win[1] = p.seg.win as u32;
    e.flags |= FlowEntry::ACK_SEEN_REV;
}

/// The handshake's last ACK, in place of the SYN-ACK, back to the backend.
#[inline(always)]
fn ack(ctx: &XdpContext, p: &Packet, e: &FlowEntry, ts: Option<&Options>) -> Verdict {
    let ws = e.wscale[0];
    let win = if ws == NO_WSCALE {
        e.win[0]
    } else {
        e.win[0] >> ws
    };
    let s = Segment {
        src: p.dst,
        dst: p.src,
        ports: segment::swap_ports(p.ports),
        seq: p.seg.ack,
        ack: p.seg.seq.wrapping_add(1),
        flags: tcp_flags::ACK,
        win: if win > 0xffff { 0xffff } else { win as u16 },
    };
    let written = match ts {
        // The client's timestamp the backend echoes, and the backend's own.
        Some(o) => {
            let opts = [word([1, 1, 8, 10]), o.ts_ecr.to_be(), o.ts_val.to_be()];
            segment::write::<3>(ctx, p.l3(), &s, &opts)
        }
        _ => segment::write::<0>(ctx, p.l3(), &s, &[]),
    };
    if written.is_none() || segment::swap_macs(ctx).is_none() {
        return Verdict::of(Reason::DropInternal);
    }
    Verdict::tx(Reason::SynCookieBackendAcked)
}
