//! The connection log's data-path side (only while `DataplaneConfig::CONN_LOG` is set): a
//! CONN_OPENS ring-buffer record per new flow, and each packet's payload counted per flow and
//! direction in FLOW_BYTES (read by the daemon when it expires the flow). A full ring buffer
//! loses the record and counts it in CONN_LOG_LOST: never silently.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{DataplaneConfig, FlowEntry, connlog::OpenEvent};

use crate::{
    maps::{CONN_LOG_LOST, CONN_OPENS, FLOW_BYTES},
    parse::Packet,
};

#[inline(always)]
pub fn on(cfg: &DataplaneConfig) -> bool {
    cfg.flags & DataplaneConfig::CONN_LOG != 0
}

/// A flow was just created in `slot`: zero its counters, mark it counted, report it.
#[inline(always)]
pub fn opened(e: &mut FlowEntry, slot: u32, token: u32, now: u64) {
    e.flags |= FlowEntry::COUNTED;
    if let Some(b) = FLOW_BYTES.get_ptr_mut(slot) {
        // SAFETY: a valid map value; the slot is ours (just claimed). Field by field: a struct
        // literal would be a memset call.
        unsafe {
            (*b).packets = [0, 0];
            (*b).bytes = [0, 0];
        }
    }
    let Some(mut r) = CONN_OPENS.reserve_untyped::<OpenEvent>(0) else {
        if let Some(l) = CONN_LOG_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *l += 1 };
        }
        return;
    };
    let o = r.as_mut_ptr();
    // SAFETY: a reserved record of the right size, written whole before it is submitted.
    unsafe {
        (*o).at_ns = now;
        (*o).slot = slot;
        (*o).token = token;
        (*o).client = e.client[0];
        (*o).vip = e.client[1];
        (*o).backend = e.backend;
        (*o).client_port = e.client_port;
        (*o).vip_port = e.vip_port;
        (*o).backend_port = e.backend_port;
        (*o).backend_id = e.backend_id;
        (*o).vip_id = e.vip_id;
        (*o).proto = e.proto;
        (*o).flags = e.flags;
    }
    r.submit(0);
}

/// Counts a packet of the flow in `slot` going `dir` (0: to the backend, 1: to the client).
/// Flows created while the log was off carry no COUNTED flag and cost one bit test.
#[inline(always)]
pub fn count(e: &FlowEntry, slot: u32, dir: usize, p: &Packet) {
    if e.flags & FlowEntry::COUNTED == 0 {
        return;
    }
    let headers = (p.l4() - p.l3()) + if p.is_tcp() { p.tcp_len() } else { 8 };
    let payload = (p.ip_len as usize).saturating_sub(headers) as u64;
    if let Some(b) = FLOW_BYTES.get_ptr_mut(slot) {
        let d = dir & 1;
        // SAFETY: a valid map value; both directions of a flow may run on two CPUs at once.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*b).packets[d], 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*b).bytes[d], payload);
        }
    }
}
