//! The connection table, forward (client → VIP: find or create) and reverse (backend → SNAT
//! address: find by slot) side by side. State rules live in lb_common::conntrack.

pub mod forward;
pub mod reverse;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowEntry,
    conntrack::{Direction, TOUCH_INTERVAL_NS, Verdict as Track},
};

pub use crate::clock::now_ns;
use crate::{egress::learn_client_hop, parse::Packet};

/// A flow found or created for a packet.
pub struct Flow {
    pub entry: *mut FlowEntry,
    pub slot: u32,
    /// The claim token the slot holds for this flow.
    pub token: u32,
    pub new: bool,
    /// The packet's RST/FIN was acceptable (or it carried neither).
    pub accepted: bool,
}

/// TCP tracking for one packet (UDP flows have nothing to track): `Accepted`, `Unaccepted`
/// (a RST or FIN the receiver would refuse) or `Stray` (far from the receiver's window).
#[inline(always)]
pub fn track(e: &mut FlowEntry, p: &Packet, dir: Direction) -> Track {
    if p.is_tcp() {
        match dir {
            Direction::Forward => track_forward(e, p),
            Direction::Reverse => track_reverse(e, p),
        }
    } else {
        Track::Accepted
    }
}

/// The tracker out of line, once per direction: its many branches are verified once per call
/// site instead of multiplying the paths through everything after it.
#[inline(never)]
fn track_forward(e: &mut FlowEntry, p: &Packet) -> Track {
    e.track_tcp(Direction::Forward, &p.seg)
}

#[inline(never)]
fn track_reverse(e: &mut FlowEntry, p: &Packet) -> Track {
    e.track_tcp(Direction::Reverse, &p.seg)
}

/// Tracks one packet of an existing flow and, only when it passed the checks, refreshes the
/// flow (and, from the client's side, the way back to it). Returns whether a RST or FIN in it
/// was acceptable (what the verdict reports). `INLINE`: the tracker inline, for the entry
/// program's established paths, where the call costs more than its verification; elsewhere
/// out of line.
#[inline(always)]
pub fn track_and_touch<const INLINE: bool>(
    ctx: &XdpContext,
    e: &mut FlowEntry,
    p: &Packet,
    now: u64,
    dir: Direction,
) -> bool {
    let t = if INLINE {
        if p.is_tcp() {
            e.track_tcp(dir, &p.seg) as usize
        } else {
            Track::Accepted as usize
        }
    } else {
        // The outcome hidden from the verifier's value tracking: each of the tracker's many
        // exits would otherwise take the rest of the program through a path of its own.
        crate::parse::opaque(track(e, p, dir) as usize)
    };
    if t == Track::Accepted as usize {
        touch(ctx, e, now, dir);
    }
    t != Track::Unaccepted as usize
}

/// Refreshes `last_seen_ns` at most once per TOUCH_INTERVAL_NS. A client packet that refreshes
/// it also re-learns the way back to the client (a router's MAC may change). Only for packets
/// that passed the tracker's checks (`track_and_touch`).
#[inline(always)]
fn touch(ctx: &XdpContext, e: &mut FlowEntry, now: u64, dir: Direction) {
    if now.wrapping_sub(e.last_seen_ns) <= TOUCH_INTERVAL_NS {
        return;
    }
    e.last_seen_ns = now;
    if dir == Direction::Forward {
        let _ = learn_client_hop(ctx, &mut e.to_client);
    }
}
