//! Map keys and values shared by the kernel program and the daemon. All are `#[repr(C)]`, padded
//! explicitly (no implicit holes, so `bytemuck::Pod` holds and keys hash identically on both sides)
//! and word-aligned: byte-granular structs make LLVM emit out-of-line byte-loop memset/memmove
//! calls in the BPF program.
//!
//! The connection table is split in two (see docs/architecture.md):
//! - `FLOWS4`, a hash map from the client's 16-byte IPv4 5-tuple to a slot number;
//! - `FLOW_TABLE`, an array of [`FlowEntry`] indexed by slot = (SNAT address index, SNAT port);
//! - `FLOW_HINTS4`, a direct-mapped cache of `FLOWS4` answers checked against `FLOW_TABLE`.
//!
//! A reply to a SNAT address finds its flow with one array index (no hash), a new flow claims its
//! SNAT port by claiming the slot (an atomic compare-and-exchange), and the daemon sweeps the
//! array through a read-only memory mapping instead of one syscall per flow.

use bytemuck::{Pod, Zeroable};

/// Address family tags used in layouts (not the libc AF_* numbers: these are our own).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Maglev lookup table size used by the data plane (a prime, the paper's default).
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Marker in a Maglev slot or backend lookup: no backend.
pub const NO_BACKEND: u32 = u32::MAX;
/// Capacity of the VIP-indexed arrays (Maglev tables, VIP info and stats).
pub const MAX_VIPS: u32 = 256;
/// Capacity of the backend-indexed arrays (backends, next hops, stats).
pub const MAX_BACKENDS: u32 = 4096;
/// Capacity of the SNAT address array.
pub const MAX_SNAT_ADDRS: u32 = 64;
/// Default capacity of `FLOWS4`; the loader sizes the map to the configured value.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Capacity of the VIP and address hash maps.
pub const MAX_VIP_ENTRIES: u32 = 1024;
/// Buckets of the direct-mapped address filter (a power of two).
pub const ADDR_FILTER_SIZE: u32 = 4096;
/// Buckets of the direct-mapped IPv6 address filter (a power of two).
pub const ADDR_FILTER6_SIZE: u32 = 4096;
/// Interfaces the program may redirect to or check the MTU of.
pub const MAX_INTERFACES: u32 = 64;
/// Each VIP has two Maglev tables in MAGLEV (at `2 * vip_id` and `2 * vip_id + 1`);
/// `TABLE_SEL[vip_id]` says which one is live. The daemon fills the other one and flips the
/// selector in one array write: packets see one table or the other, whole. It rewrites a table
/// only after an RCU grace period has passed since packets stopped selecting it.
pub const TABLES_PER_VIP: u32 = 2;

/// Slots per SNAT address in `FLOW_TABLE`: one per port.
pub const SLOTS_PER_SNAT_ADDR: u32 = 1 << 16;

/// Map names, as the XDP program declares them and the loader pins them.
pub mod names {
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    pub const ADDR_FILTER6: &str = "ADDR_FILTER6";
    pub const ADDRS4: &str = "ADDRS4";
    pub const VIPS4: &str = "VIPS4";
    pub const VIP_INFO: &str = "VIP_INFO";
    pub const MAGLEV: &str = "MAGLEV";
    pub const TABLE_SEL: &str = "TABLE_SEL";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_HOPS: &str = "BACKEND_HOPS";
    pub const FLOWS4: &str = "FLOWS4";
    pub const FLOW_TABLE: &str = "FLOW_TABLE";
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    pub const SNAT_PICK: &str = "SNAT_PICK";
    pub const CONFIG: &str = "CONFIG";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const IFACE_MTU: &str = "IFACE_MTU";
    pub const REASONS: &str = "REASONS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const COOKIE_KEY: &str = "COOKIE_KEY";
    pub const SOURCES4: &str = "SOURCES4";
    pub const VIP_LIMITS: &str = "VIP_LIMITS";
    pub const SOURCE_RATE: &str = "SOURCE_RATE";
    pub const SOURCE_FULL: &str = "SOURCE_FULL";
    pub const RTT_HIST: &str = "RTT_HIST";
    pub const PINS4: &str = "PINS4";
    pub const PIN_STATS: &str = "PIN_STATS";
    pub const CONN_OPENS: &str = "CONN_OPENS";
    pub const FLOW_BYTES: &str = "FLOW_BYTES";
    pub const CONN_LOG_LOST: &str = "CONN_LOG_LOST";
    pub const PIN_RTT: &str = "PIN_RTT";
    pub const ADDRS6: &str = "ADDRS6";
    pub const VIPS6: &str = "VIPS6";
    pub const FLOWS6: &str = "FLOWS6";
    /// SNAT picks per family (IPv4 from 0, IPv6 from `MAX_SNAT_ADDRS`); SNAT_PICK keeps the
    /// IPv4 ones for data paths of earlier builds.
    pub const SNAT_PICKS: &str = "SNAT_PICKS";
    /// Hint cache in front of FLOWS4 (not pinned: each program load starts an empty one).
    pub const FLOW_HINTS4: &str = "FLOW_HINTS4";
    /// The program array holding the IPv6-backend sender, and the per-CPU record handed to it.
    pub const TAILS: &str = "TAILS";
    pub const DEFERRED_SEND: &str = "DEFERRED_SEND";
    /// Taken SNAT ports (a bit each) and full words of those (`portmap`).
    pub const PORT_BITS: &str = "PORT_BITS";
    pub const PORT_FULL: &str = "PORT_FULL";
    /// Per VIP: flows per pool and the half-open SYN schedule (`VipLive`).
    pub const VIP_LIVE: &str = "VIP_LIVE";
    /// Per VIP: when a SYN last created a flow without a cookie (`PLAIN_SYN_WINDOW_NS`).
    pub const VIP_PLAIN_SYN: &str = "VIP_PLAIN_SYN";
    /// Per VIP: PROXY protocol headers inserted, segments refused (`ProxyStats`).
    pub const PROXY_STATS: &str = "PROXY_STATS";
    /// Per backend: what the data path sees of its health (`PassiveStats`).
    pub const PASSIVE_STATS: &str = "PASSIVE_STATS";
    /// Benchmark template (not pinned: only the benchmark uses it).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Every map the program owns, in pin order.
    pub const ALL: [&str; 43] = [
        ADDR_FILTER,
        ADDRS4,
        VIPS4,
        VIP_INFO,
        MAGLEV,
        TABLE_SEL,
        BACKENDS,
        BACKEND_HOPS,
        FLOWS4,
        FLOW_TABLE,
        SNAT_ADDRS,
        SNAT_PICK,
        CONFIG,
        TX_PORTS,
        IFACE_MTU,
        REASONS,
        VIP_STATS,
        BACKEND_STATS,
        COOKIE_KEY,
        SOURCES4,
        VIP_LIMITS,
        SOURCE_RATE,
        SOURCE_FULL,
        RTT_HIST,
        PINS4,
        PIN_STATS,
        CONN_OPENS,
        FLOW_BYTES,
        CONN_LOG_LOST,
        PIN_RTT,
        ADDRS6,
        VIPS6,
        FLOWS6,
        SNAT_PICKS,
        TAILS,
        DEFERRED_SEND,
        ADDR_FILTER6,
        PORT_BITS,
        PORT_FULL,
        VIP_LIVE,
        VIP_PLAIN_SYN,
        PROXY_STATS,
        PASSIVE_STATS,
    ];
}

/// `map_flags` bit: the array can be memory-mapped by userspace.
pub const BPF_F_MMAPABLE: usize = 1 << 10;
/// `map_flags` bit: hash map elements allocated on insert, not up front.
pub const BPF_F_NO_PREALLOC: usize = 1;

/// An IP address of either family, as four 32-bit words in network byte order in memory
/// (IPv4 in `words[0]`, the rest zero).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Addr {
    pub words: [u32; 4],
}

impl Addr {
    pub const fn v4(octets: [u8; 4]) -> Self {
        Addr {
            words: [u32::from_ne_bytes(octets), 0, 0, 0],
        }
    }
    /// An IPv4 address from its 4 bytes loaded natively from packet memory.
    pub const fn v4_word(word: u32) -> Self {
        Addr {
            words: [word, 0, 0, 0],
        }
    }
    pub const fn v4_word_of(&self) -> u32 {
        self.words[0]
    }
    pub const fn v4_octets(&self) -> [u8; 4] {
        self.words[0].to_ne_bytes()
    }
    /// All 16 bytes in network order.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, w) in self.words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        b
    }
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Addr {
            words: [w(0), w(4), w(8), w(12)],
        }
    }
}

/// A 16-bit port as it sits in packet memory (network order), from a host-order number.
#[inline(always)]
pub const fn wire_port(port: u16) -> [u8; 2] {
    port.to_be_bytes()
}

// ---------------------------------------------------------------------------- addresses

/// What a destination address is to us: the value of `ADDRS4` and the payload of an
/// `ADDR_FILTER` bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AddrClass {
    /// `AddrClass::*` bits.
    pub flags: u16,
    /// For a SNAT address: its index in `SNAT_ADDRS` (the high half of its flow slots).
    pub snat_index: u16,
}

impl AddrClass {
    /// At least one VIP uses this address.
    pub const VIP: u16 = 1;
    /// One of our SNAT addresses: replies from backends arrive here.
    pub const SNAT: u16 = 2;
    /// A TCP VIP on this address serves every port (port 0).
    pub const VIP_ANY_PORT_TCP: u16 = 4;
    /// A UDP VIP on this address serves every port (port 0).
    pub const VIP_ANY_PORT_UDP: u16 = 8;
    /// Filter bucket only: other addresses of ours hash to this bucket too; ask `ADDRS4`.
    pub const COLLISION: u16 = 0x8000;

    pub const fn any_port_bit(proto: u8) -> u16 {
        if proto == PROTO_TCP {
            Self::VIP_ANY_PORT_TCP
        } else {
            Self::VIP_ANY_PORT_UDP
        }
    }
}

/// One `ADDR_FILTER` bucket: an IPv4 address (native word) and its class; all zero = empty.
/// The daemon writes buckets as one aligned 8-byte store through a memory mapping, so the
/// program never reads half a bucket.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterBucket {
    pub addr: u32,
    pub class: AddrClass,
}

impl FilterBucket {
    pub const fn to_u64(self) -> u64 {
        let a = self.addr.to_ne_bytes();
        let f = self.class.flags.to_ne_bytes();
        let s = self.class.snat_index.to_ne_bytes();
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], f[0], f[1], s[0], s[1]])
    }

    #[inline(always)]
    pub const fn from_u64(v: u64) -> Self {
        let b = v.to_ne_bytes();
        FilterBucket {
            addr: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            class: AddrClass {
                flags: u16::from_ne_bytes([b[4], b[5]]),
                snat_index: u16::from_ne_bytes([b[6], b[7]]),
            },
        }
    }
}

/// One `ADDR_FILTER6` bucket: an IPv6 address (native words), its class (`COLLISION`: ask
/// `ADDRS6`) and a check word over both; all zero = empty. Written through the map-update call,
/// which copies it in pieces: a reader racing a change can see half of the old bucket and half
/// of the new, which the check word (almost always) refuses, and the reader then asks `ADDRS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterBucket6 {
    pub addr: [u32; 4],
    pub class: AddrClass,
    pub check: u32,
}

impl FilterBucket6 {
    pub const fn new(addr: [u32; 4], class: AddrClass) -> Self {
        FilterBucket6 {
            addr,
            class,
            check: Self::check_of(&addr, class),
        }
    }

    #[inline(always)]
    pub const fn check_of(a: &[u32; 4], c: AddrClass) -> u32 {
        a[0] ^ a[1].rotate_left(7)
            ^ a[2].rotate_left(13)
            ^ a[3].rotate_left(19)
            ^ (c.flags as u32 | (c.snat_index as u32) << 16)
            ^ 0x5741_4b36
    }

    /// Whole: written by one writer and read in one piece (or empty).
    #[inline(always)]
    pub const fn is_whole(&self) -> bool {
        self.check == Self::check_of(&self.addr, self.class)
    }
}

// ---------------------------------------------------------------------------- programs

/// Slots of the `TAILS` program array (room for programs later builds add).
pub const TAIL_SLOTS: u32 = 16;

/// `TAILS` indices of the programs entered by tail call, shared by the program and the loader.
pub mod tails {
    /// IPv6 backends' sends (`wklb_v6_send`).
    pub const V6_SEND: u32 = 0;
    /// Client → VIP beyond the established path (`wklb_flow`).
    pub const FLOW: u32 = 1;
    /// Backend → SNAT address beyond the established path (`wklb_reply`).
    pub const REPLY: u32 = 2;
    /// ICMP (`wklb_icmp`).
    pub const ICMP: u32 = 3;
    /// IPv6 (`wklb_v6`).
    pub const V6: u32 = 4;
    /// SYN cookies, client → VIP (`wklb_cookie`).
    pub const COOKIE: u32 = 5;
    /// PROXY protocol: a flow's first payload segment with the header inserted
    /// (`wklb_proxy`).
    pub const PROXY: u32 = 6;
    /// PROXY protocol: the header inserted into the segment `wklb_proxy` sent
    /// (`wklb_proxy_insert`).
    pub const PROXY_INSERT: u32 = 7;
}

/// Every program entered by tail call: (name in the object, `TAILS` index).
pub const TAIL_PROGRAMS: &[(&str, u32)] = &[
    ("wklb_v6_send", tails::V6_SEND),
    ("wklb_flow", tails::FLOW),
    ("wklb_reply", tails::REPLY),
    ("wklb_icmp", tails::ICMP),
    ("wklb_v6", tails::V6),
    ("wklb_cookie", tails::COOKIE),
    ("wklb_proxy", tails::PROXY),
    ("wklb_proxy_insert", tails::PROXY_INSERT),
];

// ---------------------------------------------------------------------------- VIPs

/// `VIPS4` key: (address, port, protocol). Port 0 = every port; port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Vip4Key {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl Vip4Key {
    pub const fn new(addr: u32, port: u16, proto: u8) -> Self {
        Vip4Key {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// `VIPS4` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipMeta {
    /// Index into MAGLEV, VIP_INFO and VIP_STATS.
    pub vip_id: u32,
    /// `VipMeta::*` flags.
    pub flags: u32,
}

impl VipMeta {
    /// Every backend failed its health check; the table holds all of them anyway (fail-open).
    /// Informational for the data path, read by the CLI and metrics.
    pub const FAIL_OPEN: u32 = 1;
    /// SYN cookies may be used for this TCP VIP (mode `auto` or `always`): a client ACK without
    /// a flow is checked as a cookie.
    pub const COOKIES_ALLOWED: u32 = 2;
    /// Cookie mode is engaged now (`always`, or `auto` under pressure): SYNs are answered by the
    /// edge with a cookie SYN-ACK instead of being forwarded.
    pub const COOKIES_ON: u32 = 4;
    /// The VIP has deny or allow entries in SOURCES4: new flows look their source up.
    pub const SOURCE_LISTS: u32 = 8;
    /// The VIP limits new connections per source (VIP_LIMITS, SOURCE_RATE).
    pub const RATE_LIMIT: u32 = 16;
    /// The VIP limits concurrent connections per source: sources at the limit are in
    /// SOURCE_FULL.
    pub const CONN_LIMIT: u32 = 32;
    /// Some sources are pinned to backend groups: PINS4 is consulted for new flows.
    pub const PINNED: u32 = 64;
    /// PROXY protocol version 1 in front of each connection's first bytes toward the data
    /// node (`proxy`).
    pub const PROXY_V1: u32 = 128;
    /// PROXY protocol version 2.
    pub const PROXY_V2: u32 = 256;
}

// ---------------------------------------------------------------------------- sources

/// `SOURCES4` key data, after the LPM trie's prefix length: the VIP id in network order (so the
/// trie matches it first, whole: prefix length = 32 + the CIDR's length) and the source address
/// (native word of the network-order bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SourceKey4 {
    pub vip: u32,
    pub addr: u32,
}

impl SourceKey4 {
    pub const fn new(vip_id: u32, addr: u32) -> Self {
        SourceKey4 {
            vip: vip_id.to_be(),
            addr,
        }
    }
    /// The trie prefix length of a `len`-bit CIDR of this VIP.
    pub const fn prefix_len(len: u8) -> u32 {
        32 + len as u32
    }
    pub const fn vip_id(&self) -> u32 {
        u32::from_be(self.vip)
    }
}

/// `PINS4` value: the Maglev table (an id from the VIP id space) that decides new flows from a
/// pinned source prefix of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct PinTarget {
    pub table_id: u32,
    /// `PinTarget::SPILL`.
    pub flags: u32,
}

impl PinTarget {
    /// When the pin's table is empty (its groups have no healthy backend), use the VIP's own
    /// table instead of refusing.
    pub const SPILL: u32 = 1;
}

/// `PIN_STATS` value (per CPU), indexed by a pin's table id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PinStats {
    /// New flows its table decided.
    pub new_flows: u64,
    /// New connections refused: the pin's groups had no backend and it does not spill.
    pub refused: u64,
    /// New flows sent to the VIP's own table because the pin's groups had no backend (spill).
    pub spilled: u64,
}

/// `SOURCES4` values: what a source's longest matching prefix says.
pub mod source_list {
    pub const DENY: u32 = 1;
    pub const ALLOW: u32 = 2;
}

/// `VIP_LIMITS` value, indexed by VIP id: what bounds the VIP's new flows. The per-source
/// new-connection rate as a generic cell rate algorithm (one timestamp per source, no division
/// in the data path), the VIP's shares of the pools new flows take from (`shares`), and its
/// half-open SYN budget (automatic SYN cookies: `cookie::budget`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipLimits {
    /// ns between connections at the sustained rate (10^9 / rate); 0 = no limit.
    pub interval_ns: u64,
    /// How far ahead of now a source's schedule may run: (burst - 1) × interval.
    pub tolerance_ns: u64,
    /// The VIP's share of each pool (`shares::RESOURCES`); `shares::UNLIMITED`: none enforced.
    pub share: [u32; 4],
    /// ns of budget a forwarded SYN spends (10^9 / `syn_cookies.engage_syn_rate`); 0: no
    /// budget (cookies `off` or `always`).
    pub syn_interval_ns: u64,
    /// How far ahead of now the SYN schedule may run before cookie mode engages.
    pub syn_tolerance_ns: u64,
}

impl Default for VipLimits {
    fn default() -> Self {
        VipLimits::new(0, 0)
    }
}

impl VipLimits {
    /// A per-source rate limit (`rate_per_s` 0: none), no share or SYN budget.
    pub const fn new(rate_per_s: u32, burst: u32) -> Self {
        let mut l = VipLimits {
            interval_ns: 0,
            tolerance_ns: 0,
            share: [crate::shares::UNLIMITED; 4],
            syn_interval_ns: 0,
            syn_tolerance_ns: 0,
        };
        if rate_per_s == 0 {
            return l;
        }
        let interval_ns = 1_000_000_000 / rate_per_s as u64;
        let burst = if burst == 0 { 1 } else { burst };
        l.interval_ns = interval_ns;
        l.tolerance_ns = (burst as u64 - 1) * interval_ns;
        l
    }

    /// GCRA: whether a connection at `now` conforms given the source's theoretical arrival time
    /// `tat` (0: unseen), and the new `tat` if it does.
    #[inline(always)]
    pub const fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let base = if tat > now { tat } else { now };
        if base - now > self.tolerance_ns {
            None
        } else {
            Some(base + self.interval_ns)
        }
    }
}

/// `SOURCE_RATE` key: (VIP id, source). IPv4 sources are limited per address (`addr[0]`, the
/// other word 0); IPv6 sources per /64 (both words), so one subscriber's addresses share one
/// budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SourceRateKey {
    pub vip_id: u32,
    pub family: u32,
    pub addr: [u32; 2],
}

impl SourceRateKey {
    pub const fn v4(vip_id: u32, addr: u32) -> Self {
        SourceRateKey {
            vip_id,
            family: FAMILY_IPV4 as u32,
            addr: [addr, 0],
        }
    }
}

/// Capacity of `SOURCE_FULL` (sources at their VIP's concurrent-connection limit).
pub const MAX_FULL_SOURCES: u32 = 65536;
/// Capacity of `SOURCES4` (deny and allow entries of every VIP together).
pub const MAX_SOURCE_ENTRIES: u32 = 65536;
/// Sources whose rate the data path remembers (least recently used ones are forgotten first).
pub const SOURCE_RATE_ENTRIES: u32 = 262_144;

/// `VIP_INFO` value, indexed by vip id: the VIP's address, for replies and ICMP the program
/// sources from it, and for the daemon to re-adopt ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipInfo {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub flags: u32,
}

// ---------------------------------------------------------------------------- backends

/// `BACKENDS` value, indexed by backend id (allocated by the daemon, unique per VIP and backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: Addr,
    /// Host byte order; 0 = keep the client's destination port (any-port VIPs).
    pub port: u16,
    pub family: u8,
    /// `Backend::*` flags.
    pub flags: u8,
    /// The VIP this backend serves: lets a restarted daemon re-adopt ids from the pinned map.
    pub vip_id: u32,
}

impl Backend {
    pub const fn new(addr: Addr, port: u16, family: u8, flags: u8, vip_id: u32) -> Self {
        Backend {
            addr,
            port,
            family,
            flags,
            vip_id,
        }
    }

    /// The backend is configured. A SYN whose flow points at a backend without this flag starts
    /// a new flow instead of following the stale one. The daemon reuses an id only after no flow
    /// references it, so an id names one address for as long as any flow holds it.
    pub const ACTIVE: u8 = 1;
}

/// `BACKEND_HOPS` value, indexed by backend id: the bpf_fib_lookup answer toward the backend,
/// shared by all its flows and re-resolved when older than `HOP_REFRESH_NS`. New flows and
/// established ones alike skip the FIB (which costs more than the rest of the data path).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendHop {
    /// Egress interface; 0 = not resolved.
    pub ifindex: u32,
    /// MTU of the route toward the backend (for the too-big check and MSS clamping).
    pub mtu: u16,
    pub _pad: u16,
    /// MAC addresses as 16-bit words, copied without byte loops.
    pub dmac: [u16; 3],
    pub smac: [u16; 3],
    pub _pad2: u32,
    /// CLOCK_MONOTONIC ns of the lookup.
    pub resolved_ns: u64,
}

/// How often a backend's next hop is looked up again (routes and neighbours change).
pub const HOP_REFRESH_NS: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------- flows

/// `FLOWS4` key: the client's IPv4 5-tuple as it sits in the packet, built from four whole
/// words (byte-wise stores into a key stall the kernel's wide loads of it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Flow4Key {
    /// Source address, native word of the network-order bytes.
    pub src: u32,
    pub dst: u32,
    /// Source then destination port, as the 4 bytes sit in the packet.
    pub ports: u32,
    pub proto: u32,
}

impl Flow4Key {
    /// From words loaded straight from the packet.
    #[inline(always)]
    pub const fn from_wire(src: u32, dst: u32, ports: u32, proto: u8) -> Self {
        Flow4Key {
            src,
            dst,
            ports,
            proto: proto as u32,
        }
    }

    /// From octets and host-order ports (userspace, tests).
    pub const fn new(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self::from_wire(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            ports_word(sport, dport),
            proto,
        )
    }

    pub const fn src_port(&self) -> u16 {
        ports_of(self.ports).0
    }
    pub const fn dst_port(&self) -> u16 {
        ports_of(self.ports).1
    }
    /// (source, destination) port in host order.
    #[inline(always)]
    pub const fn ports_host(&self) -> (u16, u16) {
        ports_of(self.ports)
    }
}

/// `FLOWS6` key: the client's IPv6 5-tuple as it sits in the packet (addresses as four native
/// words each), 40 bytes built from whole words like `Flow4Key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Flow6Key {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source then destination port, as the 4 bytes sit in the packet.
    pub ports: u32,
    pub proto: u32,
}

impl Flow6Key {
    #[inline(always)]
    pub const fn from_wire(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8) -> Self {
        Flow6Key {
            src,
            dst,
            ports,
            proto: proto as u32,
        }
    }

    /// From octets and host-order ports (userspace, tests).
    pub const fn new(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8) -> Self {
        Self::from_wire(
            words_of_v6(src),
            words_of_v6(dst),
            ports_word(sport, dport),
            proto,
        )
    }

    /// (source, destination) port in host order.
    #[inline(always)]
    pub const fn ports_host(&self) -> (u16, u16) {
        ports_of(self.ports)
    }
}

/// `VIPS6` key: (address, port, protocol), like `Vip4Key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Vip6Key {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl Vip6Key {
    pub const fn new(addr: [u32; 4], port: u16, proto: u8) -> Self {
        Vip6Key {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// An IPv6 address's 16 bytes as four native words (what loads from packet memory give).
#[inline(always)]
pub const fn words_of_v6(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The inverse of `words_of_v6`: the 16 bytes of an IPv6 address from its four native words.
#[inline(always)]
pub const fn v6_of_words(w: [u32; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        o[i * 4] = b[0];
        o[i * 4 + 1] = b[1];
        o[i * 4 + 2] = b[2];
        o[i * 4 + 3] = b[3];
        i += 1;
    }
    o
}

/// The 4 port bytes of a TCP/UDP header (source, destination) as a native word.
#[inline(always)]
pub const fn ports_word(sport: u16, dport: u16) -> u32 {
    let s = sport.to_be_bytes();
    let d = dport.to_be_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// (source, destination) in host order from a native ports word.
#[inline(always)]
pub const fn ports_of(word: u32) -> (u16, u16) {
    let b = word.to_ne_bytes();
    (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    )
}

/// `FLOWS4` value: where the flow lives in `FLOW_TABLE`, and the claim token the slot must
/// still hold (a slot freed and claimed again by another flow is never mistaken for this one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowRef {
    pub slot: u32,
    pub token: u32,
}

impl FlowRef {
    /// As one `FLOW_HINTS4` word (written and read whole, so no reader sees half of it).
    #[inline(always)]
    pub const fn to_hint(self) -> u64 {
        ((self.token as u64) << 32) | self.slot as u64
    }

    /// From a `FLOW_HINTS4` word; None for an empty one (tokens are odd, never 0).
    #[inline(always)]
    pub const fn from_hint(hint: u64) -> Option<Self> {
        let token = (hint >> 32) as u32;
        if token == 0 {
            return None;
        }
        Some(FlowRef {
            slot: hint as u32,
            token,
        })
    }
}

/// Entries of `FLOW_HINTS4`, the direct-mapped cache in front of `FLOWS4` (8 MiB).
pub const FLOW_HINT_SLOTS: u32 = 1 << 20;

/// The next hop toward the client, learned from the client's own packets (interface and both
/// MAC addresses): replies go back the way the client's traffic came, with no FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientHop {
    pub ifindex: u32,
    /// The MAC the client's frames came from (its router, or the client on-link).
    pub peer: [u16; 3],
    /// Our MAC the client's frames were sent to.
    pub own: [u16; 3],
}

/// `FLOW_TABLE` value: one flow, at slot = (SNAT address index << 16) | SNAT port.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    /// `slot::FREE`, `slot::DYING`, or the claim token of the flow that owns the slot.
    pub owner: u32,
    /// Backend address (IPv4 native word; the SNAT address family is the backend's).
    pub backend: u32,
    /// IPv4 client: `[client, vip, 0, 0]`; IPv6 client: the client address (VIP in VIP_INFO).
    pub client: [u32; 4],
    pub client_port: u16,
    /// The port the client connected to (differs per flow on an any-port VIP).
    pub vip_port: u16,
    pub backend_port: u16,
    pub backend_id: u16,
    pub vip_id: u16,
    /// `conntrack::State` as u8.
    pub state: u8,
    /// `FlowEntry::*` bits.
    pub flags: u8,
    /// The client's 802.1Q VLAN id (0: untagged), put back on replies.
    pub client_vlan: u16,
    /// Window scale shift per direction (`conntrack::NO_WSCALE` when not offered).
    pub wscale: [u8; 2],
    /// CLOCK_MONOTONIC ns of the last packet either way, refreshed at most every
    /// `conntrack::TOUCH_INTERVAL_NS` so busy flows do not write a shared line per packet.
    pub last_seen_ns: u64,
    /// CLOCK_MONOTONIC seconds when the flow was created.
    pub created_s: u32,
    pub proto: u8,
    /// Cookie flows, until the backend's SYN-ACK: `cookie::syn_opts` bits for the SYN the edge
    /// sends the backend (resent while the client's segments arrive before its answer).
    pub syn_opts: u8,
    /// PROXY protocol: the header's length toward the data node (`lb_common::proxy`); 0 for
    /// flows without one, and until `wklb_proxy` computed it (before the first segment that
    /// needs it: flow creation has no verifier budget left for it).
    pub proxy_len: u8,
    /// PROXY protocol: `FlowEntry::PROXY_V2`, `PROXY_ACKED` bits.
    pub proxy: u8,
    /// Per direction (`Direction as usize`): the last acknowledgment number that side sent,
    /// i.e. its RCV.NXT. The reverse slot starts at the client's ISN + 1.
    pub ack: [u32; 2],
    /// Per direction: the last window that side advertised, in bytes (scaled).
    pub win: [u32; 2],
    /// Per direction: the end of what that side has sent (its SND.NXT as far as seen: sequence
    /// number + payload + SYN/FIN of its furthest plausible segment); 0 until known. A RST
    /// there is accepted like one at the receiver's acknowledgment.
    pub end: [u32; 2],
    /// Sequence translation for flows whose handshake the edge answered itself (SYN cookies,
    /// `TRANSLATE`): backend sequence number − client-side sequence number; added to the
    /// client's acknowledgments (and SACK blocks) toward the backend, subtracted from the
    /// backend's sequence numbers toward the client. Until the backend's SYN-ACK (state
    /// SynSent) it holds the cookie. 0 for other flows.
    pub seq_delta: u32,
    /// The same for TCP timestamp values (backend's clock − the edge's); until the backend's
    /// SYN-ACK, the timestamp value of the edge's SYN-ACK.
    pub ts_delta: u32,
    pub to_client: ClientHop,
}

impl FlowEntry {
    /// The client is IPv6 (its VIP address is in VIP_INFO).
    pub const CLIENT_V6: u8 = 1;
    /// The client side has sent a segment with ACK (its `ack` is real).
    pub const ACK_SEEN_FWD: u8 = 2;
    /// The backend side has sent a segment with ACK.
    pub const ACK_SEEN_REV: u8 = 4;
    /// Sequence/timestamp translation is active (`seq_delta`, `ts_delta`).
    pub const TRANSLATE: u8 = 8;
    /// Created while the connection log was on: its packets are counted in FLOW_BYTES.
    pub const COUNTED: u8 = 16;
    /// The backend is IPv6: its address is `BACKENDS[backend_id]` (held until no flow names
    /// the id), `backend` holds its first word, and the SNAT address is IPv6
    /// (`SNAT_ADDRS[slot]`).
    pub const BACKEND_V6: u8 = 32;
    /// Created by a SYN that spent its VIP's half-open budget (`syn_budget`), not given back
    /// yet.
    pub const SYN_BUDGET: u8 = 64;

    /// `proxy` bits: the VIP sends a version 1 or 2 header (`VipMeta::PROXY_V1/V2` >> 7).
    pub const PROXY_V1: u8 = 1;
    pub const PROXY_V2: u8 = 2;
    /// `proxy` bit: the data node acknowledged past the header; from here on every client
    /// sequence number goes H further, every acknowledgment of the node comes H back.
    pub const PROXY_ACKED: u8 = 4;

    pub const fn ack_seen_bit(dir: usize) -> u8 {
        if dir == 0 {
            Self::ACK_SEEN_FWD
        } else {
            Self::ACK_SEEN_REV
        }
    }

    /// The IPv4 VIP address of an IPv4 client's flow.
    pub const fn vip_v4(&self) -> u32 {
        self.client[1]
    }

    /// The client's forward key (IPv4 clients).
    pub const fn key_v4(&self) -> Flow4Key {
        Flow4Key::from_wire(
            self.client[0],
            self.client[1],
            ports_word(self.client_port, self.vip_port),
            self.proto,
        )
    }

    /// Whether the slot holds a live flow (claimed, not being expired).
    pub const fn is_live(&self) -> bool {
        crate::slot::is_token(self.owner)
    }
}

// ---------------------------------------------------------------------------- SNAT, config

/// `SNAT_ADDRS` value, indexed by SNAT index: an address and its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SnatAddr {
    pub addr: Addr,
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    pub _pad2: u32,
}

impl SnatAddr {
    pub const fn new(addr: Addr, family: u8) -> Self {
        SnatAddr {
            addr,
            family,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// MSS clamping modes (`DataplaneConfig::mss_mode`).
pub mod mss {
    /// Leave the MSS option alone.
    pub const OFF: u16 = 0;
    /// Clamp to the egress MTU minus IP and TCP headers.
    pub const AUTO: u16 = 1;
    /// Clamp to `DataplaneConfig::mss_value`.
    pub const FIXED: u16 = 2;
}

/// CONFIG[0]: global data-plane settings written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// Number of valid entries in SNAT_PICK (the SNAT addresses new flows may use).
    pub snat_count: u32,
    /// Inclusive SNAT port range, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `DataplaneConfig::*` flags.
    pub flags: u32,
    /// `mss::*`.
    pub mss_mode: u16,
    pub mss_value: u16,
    /// The smallest MTU of the interfaces we send on: larger packets are checked against their
    /// egress interface's MTU in IFACE_MTU.
    pub min_mtu: u32,
    /// Number of valid IPv6 entries in SNAT_PICKS (IPv6 SNAT addresses, for IPv6 backends). Was
    /// padding: a data path older than this field never reads it.
    pub snat6_count: u32,
    /// Per pool (`shares::RESOURCES`): the count at which VIPs over their share are refused
    /// (`shares::full_at` of its capacity); `u32::MAX`: never.
    pub share_full: [u32; 4],
    /// Per pool: its capacity; a new flow finding it full is refused before any claim (no walk
    /// of a full pool's port bitmaps). `u32::MAX`: not checked.
    pub pool_size: [u32; 4],
}

impl DataplaneConfig {
    /// A TCP non-SYN packet for a VIP without connection state is passed to the kernel (which
    /// answers with a RST, telling the client to reconnect) instead of dropped.
    pub const NON_SYN_PASS: u32 = 1;
    /// ICMP echo requests to a VIP address are answered by the data path.
    pub const ECHO_REPLY: u32 = 2;
    /// Rare data-path events (`Reason::is_event`) are logged through aya-log, at most once per
    /// second per reason and CPU.
    pub const LOG_EVENTS: u32 = 4;
    /// The connection log is on: new flows are reported on CONN_OPENS and every packet is
    /// counted in FLOW_BYTES.
    pub const CONN_LOG: u32 = 8;
    pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
    pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            snat_count: 0,
            snat_port_min: Self::DEFAULT_SNAT_PORT_MIN,
            snat_port_max: Self::DEFAULT_SNAT_PORT_MAX,
            flags: Self::ECHO_REPLY,
            mss_mode: mss::AUTO,
            mss_value: 0,
            min_mtu: 1500,
            snat6_count: 0,
            share_full: [u32::MAX; 4],
            pool_size: [u32::MAX; 4],
        }
    }
}

/// How long after a SYN last created a flow without a cookie on a VIP its SYNs in cookie mode
/// still look for their flow (a retransmitted SYN of such a flow keeps it): the span of a
/// client's SYN retransmissions (Linux by default retransmits at 1, 3, 7, 15, 31 and 63 s and
/// gives up at 127 s; Windows and macOS give up sooner), plus the second by which
/// `VIP_PLAIN_SYN` may lag. Past it, a SYN flood's cookie answers make no flow-table lookup.
pub const PLAIN_SYN_WINDOW_NS: u64 = 129_000_000_000;
/// How often at most a VIP's `VIP_PLAIN_SYN` stamp is rewritten (a shared cache line).
pub const PLAIN_SYN_STAMP_NS: u64 = 1_000_000_000;

/// `VIP_LIVE` value, indexed by VIP id (row `MAX_VIPS`: every VIP's together): what the data
/// path writes about a VIP's new flows, shared by every CPU (atomics), memory-mapped by the
/// daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipLive {
    /// Flows per pool (`shares`): counted up by the data path as it creates them, down by the
    /// daemon's expiry pass as it frees them.
    pub used: [u64; 4],
    /// The half-open SYN schedule (GCRA theoretical arrival time, CLOCK_MONOTONIC ns): a
    /// forwarded SYN moves it on by `VipLimits::syn_interval_ns`, a handshake the client
    /// completes (or a data node refuses) moves it back.
    pub syn_tat_ns: u64,
    /// When the data path engaged cookie mode (CLOCK_MONOTONIC ns; 0: not engaged). Only the
    /// daemon clears it (release).
    pub cookies_engaged_ns: u64,
}

impl VipLive {
    /// Byte offset of `used[r]`.
    pub const fn used_offset(r: usize) -> usize {
        8 * r
    }
    pub const SYN_TAT_OFFSET: usize = 32;
    pub const ENGAGED_OFFSET: usize = 40;
}

// ---------------------------------------------------------------------------- counters

/// PROXY_STATS value (per CPU), indexed by vip id: the PROXY protocol's work.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ProxyStats {
    /// Headers inserted in front of a client's first bytes (retransmissions of that segment
    /// included).
    pub headers: u64,
    /// Client segments not sent: reaching over the first payload byte from below, or a SYN
    /// with data.
    pub refused: u64,
    /// Segments of the node whose SACK edges were mapped back to the client's numbering.
    pub sack_mapped: u64,
}

impl ProxyStats {
    pub fn add(&mut self, o: &ProxyStats) {
        self.headers += o.headers;
        self.refused += o.refused;
        self.sack_mapped += o.sack_mapped;
    }
}

/// PASSIVE_STATS value (per CPU), indexed by backend id: the backend's health as its traffic
/// shows it, between health probes (a node that died refuses or ignores new connections at
/// once; its probes fail only on their own schedule).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PassiveStats {
    /// New connections it refused: a RST answering the SYN the edge sent it.
    pub refused: u64,
    /// SYNs a client sent again on a flow still waiting for its SYN-ACK (a silent backend, or
    /// a lost SYN or SYN-ACK).
    pub syn_retransmits: u64,
}

impl PassiveStats {
    pub fn add(&mut self, o: &PassiveStats) {
        self.refused += o.refused;
        self.syn_retransmits += o.syn_retransmits;
    }
}

/// VIP_STATS value (per CPU), indexed by vip id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets for this VIP dropped because no backend was available.
    pub no_backend: u64,
    /// Initial SYNs this VIP admitted (forwarded or answered with a cookie; not those its source
    /// policy refused): with `handshakes` and `cookies_valid`, the pressure signal of automatic
    /// cookie mode.
    pub syns: u64,
    /// Handshakes the client completed (its first ACK after the backend's SYN-ACK) on flows
    /// created by a SYN: with `cookies_valid`, the SYNs that were not floods.
    pub handshakes: u64,
    /// SYNs answered with a cookie SYN-ACK.
    pub cookies_sent: u64,
    /// Client ACKs whose cookie checked out (each created a flow).
    pub cookies_valid: u64,
    /// Client ACKs without a flow whose cookie did not check out.
    pub cookies_invalid: u64,
    /// New connections refused by the deny list.
    pub denied: u64,
    /// New connections whose source matched the allow list.
    pub allowed: u64,
    /// New connections refused by the per-source rate limit.
    pub rate_limited: u64,
    /// New connections refused because their source was at its concurrent-connection limit.
    pub conn_limited: u64,
    /// New connections refused because a pool was nearly full and this VIP above its share.
    pub over_share: u64,
}

impl VipStats {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &VipStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.no_backend += o.no_backend;
        self.syns += o.syns;
        self.handshakes += o.handshakes;
        self.cookies_sent += o.cookies_sent;
        self.cookies_valid += o.cookies_valid;
        self.cookies_invalid += o.cookies_invalid;
        self.denied += o.denied;
        self.allowed += o.allowed;
        self.rate_limited += o.rate_limited;
        self.conn_limited += o.conn_limited;
        self.over_share += o.over_share;
    }
}

/// BACKEND_STATS value (per CPU), indexed by backend id. "in" is client → backend (into the data
/// node), "out" is backend → client. Bytes are L3 bytes (IP header included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
}

/// Bytes of the benchmark template restored before every benchmark run.
pub const BENCH_FRAME_LEN: usize = 64;

/// BENCH_FRAME[0]: the frame the benchmark entry points copy over the packet before running,
/// because BPF_PROG_TEST_RUN repeats the program on one buffer and the data path rewrites it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchFrame {
    /// The frame's first BENCH_FRAME_LEN bytes, as u64 words so the copy is 8 moves.
    pub data: [u64; BENCH_FRAME_LEN / 8],
    /// Non-zero: give every run a new client (source port and address bytes from a counter),
    /// so each run is a new flow.
    pub vary_source: u32,
    /// Redirect target of the `bench_floor_redirect` entry.
    pub redirect_ifindex: u32,
    /// The whole frame's length: a run that moved the frame's head (a family change, a
    /// PROXY header inserted) left it longer or shorter, and the next run moves it back.
    pub len: u32,
    pub _pad: u32,
}

impl BenchFrame {
    /// A template from the first BENCH_FRAME_LEN bytes of `frame` (zero-padded).
    pub fn new(frame: &[u8], vary_source: bool, redirect_ifindex: u32) -> Self {
        let mut data = [0u64; BENCH_FRAME_LEN / 8];
        for (w, chunk) in data.iter_mut().zip(frame.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        BenchFrame {
            data,
            vary_source: vary_source as u32,
            redirect_ifindex,
            len: frame.len() as u32,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all are repr(C) with explicit padding and derive bytemuck::Pod, which proves it.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for AddrClass {}
    unsafe impl aya::Pod for FilterBucket {}
    unsafe impl aya::Pod for FilterBucket6 {}
    unsafe impl aya::Pod for Vip4Key {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for BackendHop {}
    unsafe impl aya::Pod for Flow4Key {}
    unsafe impl aya::Pod for Flow6Key {}
    unsafe impl aya::Pod for Vip6Key {}
    unsafe impl aya::Pod for FlowRef {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for SnatAddr {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for ProxyStats {}
    unsafe impl aya::Pod for PassiveStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for BenchFrame {}
    unsafe impl aya::Pod for crate::cookie::CookieKey {}
    unsafe impl aya::Pod for SourceKey4 {}
    unsafe impl aya::Pod for VipLimits {}
    unsafe impl aya::Pod for VipLive {}
    unsafe impl aya::Pod for SourceRateKey {}
    unsafe impl aya::Pod for PinTarget {}
    unsafe impl aya::Pod for PinStats {}
    unsafe impl aya::Pod for crate::connlog::FlowBytes {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_stable() {
        // These sizes are part of the pinned-map ABI: a change breaks adoption of pinned maps.
        assert_eq!(size_of::<AddrClass>(), 4);
        assert_eq!(size_of::<FilterBucket>(), 8);
        assert_eq!(size_of::<Vip4Key>(), 8);
        assert_eq!(size_of::<VipInfo>(), 24);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<BackendHop>(), 32);
        assert_eq!(size_of::<Flow4Key>(), 16);
        assert_eq!(size_of::<FlowRef>(), 8);
        assert_eq!(size_of::<FlowEntry>(), 104);
        // PROXY protocol took the two bytes of padding every older build wrote as zero.
        assert_eq!(core::mem::offset_of!(FlowEntry, proxy_len), 54);
        assert_eq!(core::mem::offset_of!(FlowEntry, proxy), 55);
        assert_eq!(size_of::<DataplaneConfig>(), 56);
        assert_eq!(size_of::<VipLimits>(), 48);
        assert_eq!(size_of::<VipLive>(), 48);
        assert_eq!(
            core::mem::offset_of!(VipLive, cookies_engaged_ns),
            VipLive::ENGAGED_OFFSET
        );
        assert_eq!(
            core::mem::offset_of!(VipLive, syn_tat_ns),
            VipLive::SYN_TAT_OFFSET
        );
    }

    #[test]
    fn flow_key_from_wire_matches_the_packet_bytes() {
        // Source 203.0.113.7:40001 -> 198.51.100.1:5100, as a TCP header lays the ports out.
        let header = [0x9c, 0x41, 0x13, 0xec];
        let k = Flow4Key::new([203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100, PROTO_TCP);
        assert_eq!(k.ports, u32::from_ne_bytes(header));
        assert_eq!((k.src_port(), k.dst_port()), (40001, 5100));
        assert_eq!(k.src.to_ne_bytes(), [203, 0, 113, 7]);
        assert_eq!(k.proto, 6);
        // Every byte of the key is defined: equal tuples are equal keys.
        assert_eq!(
            bytemuck::bytes_of(&k),
            bytemuck::bytes_of(&Flow4Key::new(
                [203, 0, 113, 7],
                [198, 51, 100, 1],
                40001,
                5100,
                6
            ))
        );
    }

    #[test]
    fn entry_gives_back_the_client_key() {
        let e = FlowEntry {
            client: [
                u32::from_ne_bytes([203, 0, 113, 7]),
                u32::from_ne_bytes([198, 51, 100, 1]),
                0,
                0,
            ],
            client_port: 40001,
            vip_port: 5100,
            proto: PROTO_TCP,
            ..Default::default()
        };
        assert_eq!(
            e.key_v4(),
            Flow4Key::new([203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100, PROTO_TCP)
        );
        assert_eq!(e.vip_v4().to_ne_bytes(), [198, 51, 100, 1]);
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_the_rate() {
        let l = VipLimits::new(10, 3); // 10/s, bursts of 3
        let (mut tat, now) = (0u64, 1_000_000_000u64);
        for _ in 0..3 {
            tat = l.admit(tat, now).expect("within the burst");
        }
        assert_eq!(l.admit(tat, now), None, "the fourth at once is refused");
        // 100 ms later one more conforms, and only one.
        let later = now + 100_000_000;
        tat = l.admit(tat, later).expect("one interval later");
        assert_eq!(l.admit(tat, later), None);
        // A long pause refills to the burst, not beyond.
        let much_later = later + 60_000_000_000;
        for _ in 0..3 {
            tat = l.admit(tat, much_later).unwrap();
        }
        assert_eq!(l.admit(tat, much_later), None);
        assert_eq!(VipLimits::new(0, 5).interval_ns, 0);
    }

    #[test]
    fn ipv6_filter_buckets_refuse_halves_of_two_buckets() {
        let class = |flags| AddrClass {
            flags,
            snat_index: 0,
        };
        let a = FilterBucket6::new(
            words_of_v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            class(AddrClass::VIP),
        );
        let b = FilterBucket6::new(
            words_of_v6([0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64]),
            class(AddrClass::SNAT),
        );
        assert!(a.is_whole() && b.is_whole());
        // Every mix of the two buckets' 8-byte pieces but the whole ones is refused.
        let (pa, pb) = (bytemuck::bytes_of(&a), bytemuck::bytes_of(&b));
        for mask in 1..7u32 {
            let mut mixed = [0u8; 24];
            for i in 0..3 {
                let from = if mask & (1 << i) != 0 { pb } else { pa };
                mixed[i * 8..i * 8 + 8].copy_from_slice(&from[i * 8..i * 8 + 8]);
            }
            let m: FilterBucket6 = bytemuck::pod_read_unaligned(&mixed);
            assert!(!m.is_whole(), "mask {mask}: {m:?}");
        }
    }

    #[test]
    fn source_keys_put_the_vip_first_for_the_trie() {
        let k = SourceKey4::new(3, u32::from_ne_bytes([192, 0, 2, 0]));
        assert_eq!(bytemuck::bytes_of(&k), &[0, 0, 0, 3, 192, 0, 2, 0]);
        assert_eq!(k.vip_id(), 3);
        assert_eq!(SourceKey4::prefix_len(24), 56);
        assert_eq!(size_of::<SourceRateKey>(), 16);
    }

    #[test]
    fn filter_bucket_packs_into_one_word() {
        let b = FilterBucket {
            addr: u32::from_ne_bytes([10, 0, 0, 1]),
            class: AddrClass {
                flags: AddrClass::SNAT,
                snat_index: 3,
            },
        };
        assert_eq!(b.to_u64().to_ne_bytes(), *bytemuck::bytes_of(&b));
        assert_eq!(FilterBucket::from_u64(b.to_u64()), b);
    }
}
