//! Every map of the data path. Layouts come from lb-common; the daemon is the only writer of the
//! configuration maps, the program the only writer of flows and counters (the daemon deletes
//! expired flows).

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    AddrClass, AddrKey, Backend, BackendStats, DEFAULT_MAX_FLOWS, DataplaneConfig, Flow, FlowKey,
    MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SNAT_ADDRS, MAX_VIP_ENTRIES, MAX_VIPS, Reason, SnatAddr,
    VipKey, VipMeta, VipStats,
};

/// Destination address → what it is to us (VIP and/or SNAT address).
#[btf_map]
pub static ADDR_CLASS: HashMap<AddrKey, AddrClass, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// (VIP address, port, protocol) → VIP id.
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// VIP id → Maglev table (slot → backend id). The daemon swaps a whole inner map in one update,
/// so a packet sees either the old table or the new one, never a mix.
#[btf_map]
pub static MAGLEV: ArrayOfMaps<Array<u32, { MAGLEV_TABLE_SIZE as usize }>, { MAX_VIPS as usize }> =
    ArrayOfMaps::new();

/// Backend id → address, port, flags.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Client 5-tuple → flow (backend, SNAT address and port, state). Resized by the loader.
#[btf_map]
pub static FLOWS: HashMap<FlowKey, Flow, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();

/// Reply 5-tuple (backend → SNAT address:port) → the client 5-tuple of FLOWS.
#[btf_map]
pub static REV_FLOWS: HashMap<FlowKey, FlowKey, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();

#[btf_map]
pub static SNAT_ADDRS: Array<SnatAddr, { MAX_SNAT_ADDRS as usize }> = Array::new();

#[btf_map]
pub static CONFIG: Array<DataplaneConfig, 1> = Array::new();

/// Reason → packets (per CPU): one counter for every verdict.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<VipStats, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();
