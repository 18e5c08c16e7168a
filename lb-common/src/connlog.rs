//! The connection log's records from the data path: a ring-buffer event when a flow is created,
//! and per-flow packet and payload-byte counters (only while the log is on) that the daemon
//! reads when it expires the flow and writes its close record.

use bytemuck::{Pod, Zeroable};

/// `CONN_OPENS` ring-buffer record: a flow the data path just created. Addresses are native
/// words of network-order bytes, ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct OpenEvent {
    /// CLOCK_MONOTONIC ns of the creation.
    pub at_ns: u64,
    pub slot: u32,
    pub token: u32,
    pub client: u32,
    pub vip: u32,
    pub backend: u32,
    pub client_port: u16,
    pub vip_port: u16,
    pub backend_port: u16,
    pub backend_id: u16,
    pub vip_id: u16,
    pub proto: u8,
    /// The flow's `FlowEntry` flags when it was created (`BACKEND_V6`: `backend` is only the
    /// first word of the backend's address; the id names it).
    pub flags: u8,
}

/// `FLOW_BYTES` value, indexed by flow slot: per direction (0: client → backend, 1: back),
/// packets and L4 payload bytes. Zeroed by the data path when it creates the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowBytes {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// Size of the `CONN_OPENS` ring buffer: about 87,000 open records between two reads.
pub const CONN_OPENS_BYTES: u32 = 4 << 20;
