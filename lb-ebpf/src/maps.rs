//! Every map of the data path. Layouts come from lb-common; the daemon is the only writer of the
//! configuration maps, the program the only writer of flows and counters (the daemon expires
//! flows). See docs/architecture.md for who reads and writes what.

use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf,
    },
    macros::{btf_map, map},
    maps::ProgramArray,
};
use lb_common::{
    ADDR_FILTER_SIZE, ADDR_FILTER6_SIZE, AddrClass, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, Backend,
    BackendHop, BackendStats, DEFAULT_MAX_FLOWS, DataplaneConfig, FLOW_HINT_SLOTS, FilterBucket6,
    Flow4Key, Flow6Key, FlowEntry, FlowRef, MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_FULL_SOURCES,
    MAX_INTERFACES, MAX_SNAT_ADDRS, MAX_SOURCE_ENTRIES, MAX_VIP_ENTRIES, MAX_VIPS, PassiveStats,
    PinStats, PinTarget, Reason, SLOTS_PER_SNAT_ADDR, SOURCE_RATE_ENTRIES, SnatAddr, SourceKey4,
    SourceRateKey, TABLES_PER_VIP, Vip4Key, Vip6Key, VipInfo, VipLimits, VipLive, VipMeta,
    VipStats,
    connlog::{CONN_OPENS_BYTES, FlowBytes, OpenEvent},
    cookie::CookieKey,
    portmap::{FULL_WORDS, WORDS_PER_ADDR},
    rtt::{RTT_KINDS, RttRow},
};

/// Direct-mapped filter of our IPv4 addresses (VIP and SNAT), indexed by
/// `hash::filter_index`: host traffic costs one array read. Written through a memory mapping.
#[btf_map]
pub static ADDR_FILTER: Array<u64, { ADDR_FILTER_SIZE as usize }, BPF_F_MMAPABLE> = Array::new();

/// IPv4 address → class, for buckets where our addresses collide.
#[btf_map]
pub static ADDRS4: HashMap<u32, AddrClass, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// `hash::filter_index_v6(address)` → that address and its class (`FilterBucket6`): one array
/// read classifies an IPv6 destination; `ADDRS6` is asked only for buckets several of our
/// addresses share (or a bucket read mid-update).
#[btf_map]
pub static ADDR_FILTER6: Array<FilterBucket6, { ADDR_FILTER6_SIZE as usize }> = Array::new();

/// IPv6 address (native words) → class: VIP addresses, and IPv6 SNAT addresses (with their
/// SNAT index).
#[btf_map]
pub static ADDRS6: HashMap<[u32; 4], AddrClass, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// (IPv6 VIP address, port, protocol) → VIP id.
#[btf_map]
pub static VIPS6: HashMap<Vip6Key, VipMeta, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// (VIP address, port, protocol) → VIP id.
#[btf_map]
pub static VIPS4: HashMap<Vip4Key, VipMeta, { MAX_VIP_ENTRIES as usize }> = HashMap::new();

/// VIP id → its address (the source of replies to IPv6 clients and of ICMP errors).
#[btf_map]
pub static VIP_INFO: Array<VipInfo, { MAX_VIPS as usize }> = Array::new();

/// 2 × VIP id + table selector → Maglev table (slot → backend id). Each VIP has two tables;
/// the daemon fills the one packets do not use (memory-mapped, no syscall per slot), then flips
/// TABLE_SEL: a packet sees either the old table or the new one, never a mix.
#[btf_map]
pub static MAGLEV: ArrayOfMaps<
    Array<u32, { MAGLEV_TABLE_SIZE as usize }, BPF_F_MMAPABLE>,
    { (MAX_VIPS * TABLES_PER_VIP) as usize },
> = ArrayOfMaps::new();

/// VIP id → which of its two tables is live (0 or 1).
#[btf_map]
pub static TABLE_SEL: Array<u32, { MAX_VIPS as usize }> = Array::new();

/// Backend id → address, port, flags.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Backend id → cached next hop toward it.
#[btf_map]
pub static BACKEND_HOPS: Array<BackendHop, { MAX_BACKENDS as usize }> = Array::new();

/// Client IPv4 5-tuple → slot of its flow in FLOW_TABLE. Resized by the loader (max_flows).
#[btf_map]
pub static FLOWS4: HashMap<Flow4Key, FlowRef, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();

/// Client IPv6 5-tuple → slot of its flow in FLOW_TABLE (flows marked `FlowEntry::CLIENT_V6`).
/// Not preallocated: an edge without IPv6 clients pays nothing for it. Resized by the loader.
#[btf_map]
pub static FLOWS6: HashMap<Flow6Key, FlowRef, { DEFAULT_MAX_FLOWS as usize }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// `hash::flow_hint_index` of a client IPv4 5-tuple → `FlowRef::to_hint` of the flow FLOWS4
/// last gave for a tuple there (0: none). A cache in front of FLOWS4 for established packets,
/// checked against the slot's owner and tuple: a wrong or stale hint only costs the FLOWS4
/// lookup, which rewrites it. Per program load, never pinned.
#[btf_map]
pub static FLOW_HINTS4: Array<u64, { FLOW_HINT_SLOTS as usize }> = Array::new();

/// Slot (SNAT index << 16 | SNAT port) → flow. Resized by the loader to the SNAT capacity;
/// memory-mapped read-only by the daemon for expiry and listings.
#[btf_map]
pub static FLOW_TABLE: Array<FlowEntry, { SLOTS_PER_SNAT_ADDR as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// SNAT index × `portmap::WORDS_PER_ADDR` + word → the ports of that word taken (a bit each).
/// Resized by the loader with FLOW_TABLE; memory-mapped by the daemon, whose expiry pass
/// rewrites it from the table (see lb_common::portmap).
#[btf_map]
pub static PORT_BITS: Array<u64, { WORDS_PER_ADDR as usize }, BPF_F_MMAPABLE> = Array::new();

/// SNAT index × `portmap::FULL_WORDS` + word → the PORT_BITS words of that word that are full.
#[btf_map]
pub static PORT_FULL: Array<u64, { FULL_WORDS as usize }, BPF_F_MMAPABLE> = Array::new();

/// SNAT index → address.
#[btf_map]
pub static SNAT_ADDRS: Array<SnatAddr, { MAX_SNAT_ADDRS as usize }> = Array::new();

/// The SNAT indices new flows may take (CONFIG.snat_count of them): draining addresses are
/// left out while their flows end. Read by data paths of earlier builds; this one reads
/// SNAT_PICKS.
#[btf_map]
pub static SNAT_PICK: Array<u32, { MAX_SNAT_ADDRS as usize }> = Array::new();

/// The same per family: IPv4 picks from 0 (CONFIG.snat_count), IPv6 picks from
/// MAX_SNAT_ADDRS (CONFIG.snat6_count), taken by flows to backends of that family.
#[btf_map]
pub static SNAT_PICKS: Array<u32, { 2 * MAX_SNAT_ADDRS as usize }> = Array::new();

#[btf_map]
pub static CONFIG: Array<DataplaneConfig, 1> = Array::new();

/// (VIP id, IPv4 source prefix) → `source_list::DENY` or `ALLOW`: the longest match decides
/// whether a new flow may start.
#[btf_map]
pub static SOURCES4: LpmTrie<SourceKey4, u32, { MAX_SOURCE_ENTRIES as usize }> = LpmTrie::new();

/// (VIP id, IPv4 source prefix) → the table of the pin covering it (source-prefix pinning to
/// backend groups); consulted only for VIPs flagged `VipMeta::PINNED`, only for new flows.
#[btf_map]
pub static PINS4: LpmTrie<SourceKey4, PinTarget, { MAX_SOURCE_ENTRIES as usize }> = LpmTrie::new();

/// Pin table id → new flows, refusals and spills (per CPU).
#[btf_map]
pub static PIN_STATS: PerCpuArray<PinStats, { MAX_VIPS as usize }> = PerCpuArray::new();

/// VIP id → per-source new-connection rate, shares of the pools, half-open SYN budget.
#[btf_map]
pub static VIP_LIMITS: Array<VipLimits, { MAX_VIPS as usize }> = Array::new();

/// VIP id (row MAX_VIPS: all of them) → flows per pool and the SYN schedule (`VipLive`):
/// written by every CPU with atomics, counted down and released by the daemon through a memory
/// mapping.
#[btf_map]
pub static VIP_LIVE: Array<VipLive, { MAX_VIPS as usize + 1 }, BPF_F_MMAPABLE> = Array::new();

/// VIP id → when a SYN last created a flow on it without a cookie (CLOCK_MONOTONIC ns, at most
/// a second old): cookie answers look for a flow only within `PLAIN_SYN_WINDOW_NS` of it.
#[btf_map]
pub static VIP_PLAIN_SYN: Array<u64, { MAX_VIPS as usize }> = Array::new();

/// (VIP id, source) → theoretical arrival time of its next connection (GCRA). LRU: sources
/// not seen for a while make room.
#[btf_map]
pub static SOURCE_RATE: LruHashMap<SourceRateKey, u64, { SOURCE_RATE_ENTRIES as usize }> =
    LruHashMap::new();

/// (VIP id, source) present: the source is at its VIP's concurrent-connection limit (written by
/// the daemon's expiry pass, which counts every source's flows).
#[btf_map]
pub static SOURCE_FULL: HashMap<SourceRateKey, u32, { MAX_FULL_SOURCES as usize }> = HashMap::new();

/// The SYN-cookie secret (written once by the daemon, kept across restarts in the pin).
#[btf_map]
pub static COOKIE_KEY: Array<CookieKey, 1> = Array::new();

/// Interfaces the program redirects to (the ones wklb runs on).
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_INTERFACES as usize }> = DevMapHash::new();

/// Interface → MTU, for packets larger than CONFIG.min_mtu.
#[btf_map]
pub static IFACE_MTU: HashMap<u32, u32, { MAX_INTERFACES as usize }> = HashMap::new();

/// Reason → packets (per CPU): one counter for every verdict.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<VipStats, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Per backend: refusals and SYN retransmissions (`PassiveStats`), the passive health signal.
#[btf_map]
pub static PASSIVE_STATS: PerCpuArray<PassiveStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// (backend id, kind) → handshake round-trip histogram (lb_common::rtt). Shared by CPUs
/// (atomic adds, handshakes only); memory-mapped read-only by the daemon.
#[btf_map]
pub static RTT_HIST: Array<RttRow, { (MAX_BACKENDS * RTT_KINDS) as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// Pin table id → client ↔ edge handshake round trips of the pin's clients.
#[btf_map]
pub static PIN_RTT: Array<RttRow, { MAX_VIPS as usize }, BPF_F_MMAPABLE> = Array::new();

/// Connection log: a record per new flow, read by the daemon (only while the log is on).
#[btf_map]
pub static CONN_OPENS: RingBuf<OpenEvent, { CONN_OPENS_BYTES as usize }> = RingBuf::new();

/// Connection log: slot → packets and payload bytes per direction. Sized by the loader like
/// FLOW_TABLE while the log is on, one entry otherwise.
#[btf_map]
pub static FLOW_BYTES: Array<FlowBytes, 1> = Array::new();

/// Connection-log records lost to a full ring buffer (per CPU).
#[btf_map]
pub static CONN_LOG_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Per-CPU scratch: the flow whose send to an IPv6 backend `wklb_v6_send` completes in the same
/// packet's run. Pinned, so a program of the previous generation hands over to the new one
/// during an upgrade.
#[btf_map]
pub static DEFERRED_SEND: PerCpuArray<crate::v6::backend::Deferred, 1> = PerCpuArray::new();

/// The current configuration (index 0 always exists in an array).
#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    CONFIG.get(0)
}

/// The programs entered by tail call (`tails::*` indices; `lb_common::TAIL_PROGRAMS` names
/// them for the loader), each verified on its own and with its own stack. Pinned: a program
/// array loses its entries when no pin or descriptor holds it, which would happen while the
/// daemon restarts.
#[map]
pub static TAILS: ProgramArray = ProgramArray::with_max_entries(lb_common::TAIL_SLOTS, 0);

/// Entering the tail-called programs.
pub mod tails {
    use aya_ebpf::programs::XdpContext;
    use lb_common::Reason;

    pub use lb_common::tails::*;

    use crate::verdict::Verdict;

    /// Continues in program `index`; returns only when the program is missing (counted as
    /// an internal error: the loader installs every one before attaching).
    #[inline(always)]
    pub fn call(ctx: &XdpContext, index: u32) -> Verdict {
        // SAFETY: a tail call into a program of the same type; on success it does not return.
        unsafe { super::TAILS.tail_call(ctx, index) };
        // What this program handed on was for the program that is missing: not for the next
        // packet of the tuple, which may reach a callee without a handoff.
        crate::handoff::clear();
        Verdict::of(Reason::DropInternal)
    }
}
