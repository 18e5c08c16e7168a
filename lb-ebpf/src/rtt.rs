//! Handshake round-trip times into RTT_HIST (layout and buckets in lb_common::rtt): the SYN is
//! stamped with the precise clock when its flow is created, the backend's SYN-ACK records
//! edge ↔ backend and stamps the flow again, and the client's first ACK records client ↔ edge.
//! Established flows never come here.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{
    FlowEntry,
    rtt::{RTT_BACKEND, RTT_BUCKETS, RTT_CLIENT, RttRow, rtt_bucket, rtt_row},
};

use crate::{
    clock::precise_ns,
    maps::{PIN_RTT, RTT_HIST},
};

#[inline(always)]
fn record(backend_id: u32, kind: u32, ns: u64) {
    bump(RTT_HIST.get_ptr_mut(rtt_row(backend_id, kind)), ns);
}

#[inline(always)]
fn bump(row: Option<*mut RttRow>, ns: u64) {
    // Hidden from the optimiser, which knows the bound and would drop the check the verifier
    // needs.
    let b = crate::parse::opaque(rtt_bucket(ns) as usize);
    if b >= RTT_BUCKETS {
        return;
    }
    if let Some(row) = row {
        // SAFETY: a valid map value; shared by CPUs, so the add is atomic.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*row).counts[b], 1)
        };
    }
}

/// The backend's SYN-ACK established the flow: `syn_at` is when its SYN went out.
#[inline(always)]
pub fn backend_answered(e: &mut FlowEntry, syn_at: u64) {
    let now = precise_ns();
    record(e.backend_id as u32, RTT_BACKEND, now.wrapping_sub(syn_at));
    // The SYN-ACK goes to the client now: the client's ACK measures from here.
    e.last_seen_ns = now;
}

/// The client's first ACK: `synack_at` is when the SYN-ACK went to it. Counted for its
/// backend, and for its pin when one covers the client: one trie lookup per handshake (a
/// flow flag to skip it for unpinned VIPs cost the verifier 90,000 more instructions).
#[inline(always)]
pub fn client_acked(e: &FlowEntry, synack_at: u64) {
    let ns = precise_ns().wrapping_sub(synack_at);
    record(e.backend_id as u32, RTT_CLIENT, ns);
    let pin = crate::pins::find(e.vip_id as u32, e.client[0]);
    if pin != crate::pins::NONE {
        bump(PIN_RTT.get_ptr_mut(pin >> 1), ns);
    }
}
