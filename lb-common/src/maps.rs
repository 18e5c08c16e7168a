//! Map keys and values shared by the kernel program and the daemon. All are `#[repr(C)]`, padded
//! explicitly (no implicit holes, so `bytemuck::Pod` holds and keys hash identically on both sides)
//! and hold addresses as 16 bytes plus a family so IPv6 needs no layout change.

use bytemuck::{Pod, Zeroable};

/// Address family tags used in every key (not the libc AF_* numbers: these are our own).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// Maglev lookup table size used by the data plane (a prime, the paper's default).
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Marker in a Maglev slot or backend lookup: no backend.
pub const NO_BACKEND: u32 = u32::MAX;
/// Capacity of the VIP-indexed arrays (Maglev tables, VIP stats).
pub const MAX_VIPS: u32 = 256;
/// Capacity of the backend-indexed arrays (backends, backend stats).
pub const MAX_BACKENDS: u32 = 4096;
/// Capacity of the SNAT address array.
pub const MAX_SNAT_ADDRS: u32 = 64;
/// Default connection-table capacity; the loader resizes both flow maps to the configured value.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Capacity of the VIP and address-class hash maps.
pub const MAX_VIP_ENTRIES: u32 = 1024;

/// Map names, as the XDP program declares them and the loader pins them.
pub mod names {
    pub const ADDR_CLASS: &str = "ADDR_CLASS";
    pub const VIPS: &str = "VIPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const BACKENDS: &str = "BACKENDS";
    pub const FLOWS: &str = "FLOWS";
    pub const REV_FLOWS: &str = "REV_FLOWS";
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    pub const CONFIG: &str = "CONFIG";
    pub const REASONS: &str = "REASONS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Benchmark template (not pinned: only the benchmark uses it).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Every map the program owns, in pin order.
    pub const ALL: [&str; 11] = [
        ADDR_CLASS,
        VIPS,
        MAGLEV,
        BACKENDS,
        FLOWS,
        REV_FLOWS,
        SNAT_ADDRS,
        CONFIG,
        REASONS,
        VIP_STATS,
        BACKEND_STATS,
    ];
}

/// An IP address of either family, as four 32-bit words in network byte order in memory
/// (IPv4 in `words[0]`, the rest zero). Words, not bytes, and 8-byte aligned: byte-granular
/// structs make LLVM emit out-of-line byte-loop memset/memmove calls in the BPF program.
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
}

/// ADDR_CLASS key: a destination address we must look at (a VIP or SNAT address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    pub _pad2: u32,
}

impl AddrKey {
    pub const fn new(addr: Addr, family: u8) -> Self {
        AddrKey {
            addr,
            family,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// ADDR_CLASS value: what the address is to us. One lookup tells the program whether a packet can
/// be ours at all, so traffic for the host itself costs a single hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AddrClass {
    pub flags: u32,
}

impl AddrClass {
    /// At least one VIP uses this address.
    pub const VIP: u32 = 1;
    /// This is one of our SNAT addresses: replies from backends arrive here.
    pub const SNAT: u32 = 2;
    /// A TCP VIP on this address serves every port (port 0).
    pub const VIP_ANY_PORT_TCP: u32 = 4;
    /// A UDP VIP on this address serves every port (port 0).
    pub const VIP_ANY_PORT_UDP: u32 = 8;
}

/// VIPS key: (address, port, protocol). Port 0 = every port. Port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u32,
}

impl VipKey {
    pub const fn new(addr: Addr, port: u16, proto: u8, family: u8) -> Self {
        VipKey {
            addr,
            port,
            proto,
            family,
            _pad: 0,
        }
    }
}

/// VIPS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipMeta {
    /// Index into MAGLEV and VIP_STATS.
    pub vip_id: u32,
    /// `VipMeta::*` flags.
    pub flags: u32,
}

impl VipMeta {
    /// Every backend failed its health check; the table holds all of them anyway (fail-open).
    /// Informational for the data path, read by the CLI and metrics.
    pub const FAIL_OPEN: u32 = 1;
}

/// BACKENDS value, indexed by backend id (allocated by the daemon, unique per VIP and backend).
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

    /// The backend is configured. A SYN whose flow entry points at a backend without this flag (or
    /// at a slot now holding another address) starts a new flow instead of following the stale one.
    pub const ACTIVE: u8 = 1;
}

/// FLOWS key and REV_FLOWS key and value: a 5-tuple as seen on the wire, ports in host byte
/// order. Forward key: (client, VIP). Reverse key: (backend, SNAT) of the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

impl FlowKey {
    pub const fn new(
        src: Addr,
        dst: Addr,
        src_port: u16,
        dst_port: u16,
        proto: u8,
        family: u8,
    ) -> Self {
        FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            family,
            _pad: 0,
        }
    }
}

/// A cached next hop for one direction of a flow: the bpf_fib_lookup answer, so established
/// packets skip the FIB (which costs several times the rest of the data path). `ifindex` 0 means
/// "look it up"; the program clears both hops whenever it refreshes `last_seen_ns` (at most once
/// per `TOUCH_INTERVAL_NS`), so a changed route or neighbour is picked up within about a second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    pub ifindex: u32,
    /// MAC addresses as three 16-bit words each, copied without byte loops.
    pub dmac: [u16; 3],
    pub smac: [u16; 3],
}

/// FLOWS value: everything the forward rewrite needs, plus state for expiry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow {
    pub backend_addr: Addr,
    pub snat_addr: Addr,
    pub backend_port: u16,
    pub snat_port: u16,
    pub backend_id: u32,
    pub vip_id: u32,
    /// `conntrack::State` as u8.
    pub state: u8,
    pub family: u8,
    pub _pad: u16,
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_coarse_ns) when the flow was created.
    pub created_ns: u64,
    /// CLOCK_MONOTONIC ns of the last packet either way, refreshed at most every
    /// `conntrack::TOUCH_INTERVAL_NS` so busy flows do not bounce a cache line per packet.
    pub last_seen_ns: u64,
    /// Next hop toward the backend (forward direction).
    pub to_backend: NextHop,
    /// Next hop toward the client (reverse direction).
    pub to_client: NextHop,
}

impl Flow {
    /// The reverse-map key of this flow's replies: backend → SNAT address.
    pub const fn reverse_key(&self, proto: u8) -> FlowKey {
        FlowKey::new(
            self.backend_addr,
            self.snat_addr,
            self.backend_port,
            self.snat_port,
            proto,
            self.family,
        )
    }
}

/// SNAT_ADDRS value: an address and its family, the same layout as an ADDR_CLASS key.
pub type SnatAddr = AddrKey;

/// CONFIG[0]: global data-plane settings written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// Number of valid entries in SNAT_ADDRS.
    pub snat_count: u32,
    /// Inclusive SNAT port range, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `DataplaneConfig::*` flags.
    pub flags: u32,
    pub _pad: u32,
}

impl DataplaneConfig {
    /// A TCP non-SYN packet for a VIP without connection state is passed to the kernel (which
    /// answers with a RST, telling the client to reconnect) instead of dropped.
    pub const NON_SYN_PASS: u32 = 1;
    pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
    pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            snat_count: 0,
            snat_port_min: Self::DEFAULT_SNAT_PORT_MIN,
            snat_port_max: Self::DEFAULT_SNAT_PORT_MAX,
            flags: 0,
            _pad: 0,
        }
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
    /// Non-zero: give every run a new client (source port and address bytes from a per-CPU
    /// sequence), so each run is a new flow.
    pub vary_source: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all are repr(C) with explicit padding and derive bytemuck::Pod, which proves it.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for AddrClass {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for BenchFrame {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_stable() {
        // These sizes are part of the pinned-map ABI: a change breaks adoption of pinned maps.
        assert_eq!(size_of::<AddrKey>(), 24);
        assert_eq!(size_of::<VipKey>(), 24);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Flow>(), 96);
        assert_eq!(size_of::<DataplaneConfig>(), 16);
    }

    #[test]
    fn reverse_key_is_reply_tuple() {
        let f = Flow {
            backend_addr: Addr::v4([10, 0, 0, 2]),
            snat_addr: Addr::v4([10, 0, 0, 1]),
            backend_port: 5100,
            snat_port: 40000,
            family: FAMILY_IPV4,
            ..Default::default()
        };
        let r = f.reverse_key(PROTO_TCP);
        assert_eq!(r.src, Addr::v4([10, 0, 0, 2]));
        assert_eq!(r.dst_port, 40000);
        assert_eq!(r.proto, PROTO_TCP);
    }
}
