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

/// TCP tracking for one packet (UDP flows have nothing to track).
#[inline(always)]
pub fn track(e: &mut FlowEntry, p: &Packet, dir: Direction) -> bool {
    !p.is_tcp() || e.track_tcp(dir, &p.seg) == Track::Accepted
}

/// Refreshes `last_seen_ns` at most once per TOUCH_INTERVAL_NS. A client packet that refreshes
/// it also re-learns the way back to the client (a router's MAC may change).
#[inline(always)]
pub fn touch(ctx: &XdpContext, e: &mut FlowEntry, now: u64, dir: Direction) {
    if now.wrapping_sub(e.last_seen_ns) <= TOUCH_INTERVAL_NS {
        return;
    }
    e.last_seen_ns = now;
    if dir == Direction::Forward {
        let _ = learn_client_hop(ctx, &mut e.to_client);
    }
}
