//! The real data plane: loads (or adopts) the XDP object and implements the dataplane traits on
//! its maps. Arrays the daemon fills in bulk (Maglev tables, the address filter) and the flow
//! table it sweeps are memory-mapped; everything else is a map update per element.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, IterableMap as _, LpmTrie, Map, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{
    ADDR_FILTER_SIZE, AddrClass, Backend, BackendHop, BackendStats, DataplaneConfig, FilterBucket6,
    Flow4Key, Flow6Key, FlowEntry, FlowRef, MAX_SNAT_ADDRS, PinStats, PinTarget, Reason,
    SLOTS_PER_SNAT_ADDR, SnatAddr, SourceKey4, SourceRateKey, Vip4Key, Vip6Key, VipInfo, VipLimits,
    VipMeta, VipStats, cookie::CookieKey, names,
};

use super::{Counters, Flows, Image, Maps, Write, tables::MaglevTables};
use crate::sys::{self, bpf::Mmap, bpffs::PinDir};

/// The compiled XDP object, built by build.rs (lb-ebpf).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wklb-xdp"));

/// The program's name inside the object.
pub const PROGRAM: &str = "wklb";
/// The IPv6-backend sender, entered by tail call from `wklb` through `TAILS`.
pub const V6_SEND_PROGRAM: &str = "wklb_v6_send";
/// Its index in `TAILS` (lb-ebpf's `maps::V6_SEND`).
const V6_SEND_INDEX: u32 = 0;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of FLOWS4.
    pub max_flows: u32,
    /// SNAT addresses FLOW_TABLE has slots for (65,536 slots each).
    pub snat_slots: u32,
    /// Pin every map under this directory, adopting maps already pinned there (a restarted or
    /// upgraded daemon keeps every flow and counter). None: private maps (tests, benchmarks).
    pub pin_dir: Option<PathBuf>,
    /// Size FLOW_BYTES for every flow slot (the connection log counts bytes per flow).
    pub conn_log: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            snat_slots: 4,
            pin_dir: None,
            conn_log: false,
        }
    }
}

/// Where the maps are pinned and whether this load found them there already.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PinDir,
    pub adopted: bool,
}

/// A loaded data plane, split by who uses what: the program (attach, tests, benchmarks) stays
/// with the daemon's start-up code, the maps go to the controller, counters and flows are
/// shared with reports, metrics and expiry.
pub struct Loaded {
    pub program: Program,
    pub maps: KernelMaps,
    pub counters: Arc<KernelCounters>,
    pub flows: Arc<KernelFlows>,
    pub pins: Option<Pins>,
    /// The SYN-cookie secret in use (tests compute cookies with it).
    pub cookie_key: CookieKey,
}

/// Loads and verifies the program, creating its maps or adopting pinned ones.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    sys::bpffs::require_root("loading the data plane")?;
    if opts.max_flows == 0 || opts.snat_slots == 0 || opts.snat_slots > MAX_SNAT_ADDRS {
        bail!(
            "max_flows must be at least 1 and SNAT slots between 1 and {MAX_SNAT_ADDRS} (got {} and {})",
            opts.max_flows,
            opts.snat_slots
        );
    }
    let pin = match &opts.pin_dir {
        Some(d) => Some(sys::bpffs::resolve_pin_dir(d)?),
        None => None,
    };
    let (mut ebpf, adopted) = load_object(opts, pin.as_ref())?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf)
        .map_err(|e| log::debug!("data-path log events unavailable: {e}"))
        .ok();
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    load_program(prog).context("the kernel verifier rejected the XDP program")?;
    install_v6_sender(&mut ebpf)?;
    let cookie_key = ensure_cookie_key(&mut ebpf)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let counters = Arc::new(KernelCounters::take(&mut ebpf)?);
    let flows = Arc::new(KernelFlows::take(&mut ebpf)?);
    if adopted && flows.max_flows() != opts.max_flows {
        log::warn!(
            "the pinned connection table holds {} flows, not the configured {}: resizing needs `wklb unload` (which breaks live connections)",
            flows.max_flows(),
            opts.max_flows
        );
    }
    let mut loaded = Loaded {
        program: Program { ebpf, logger },
        maps,
        counters,
        flows,
        pins: pin.map(|dir| Pins { dir, adopted }),
        cookie_key,
    };
    if !adopted {
        loaded
            .maps
            .write(&Write::Config(DataplaneConfig::default()))?;
    }
    Ok(loaded)
}

/// Loads the IPv6-backend sender and puts it in `TAILS` (replacing the previous generation's
/// in an adopted array: one entry write, atomic for packets).
fn install_v6_sender(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(V6_SEND_PROGRAM)
        .ok_or_else(|| anyhow!("program {V6_SEND_PROGRAM} missing from the object"))?
        .try_into()?;
    load_program(prog).context("the kernel verifier rejected the IPv6-backend sender")?;
    let fd = prog.fd()?.try_clone()?;
    let map = ebpf
        .map_mut(names::TAILS)
        .ok_or_else(|| anyhow!("map {} missing from the object", names::TAILS))?;
    let mut tails = aya::maps::ProgramArray::try_from(map)?;
    tails
        .set(V6_SEND_INDEX, &fd, 0)
        .context("installing the IPv6-backend sender")?;
    Ok(())
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type", $name))?
    };
}

/// The SYN-cookie secret: 128 random bits written when the map is new, kept when adopted from
/// the pin (cookies handed out before a restart stay valid).
fn ensure_cookie_key(ebpf: &mut Ebpf) -> Result<CookieKey> {
    let mut keys: Array<MapData, CookieKey> = typed!(ebpf, names::COOKIE_KEY);
    let current = keys.get(&0, 0).context("reading the SYN-cookie secret")?;
    if current != CookieKey::default() {
        return Ok(current);
    }
    let mut raw = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)
        .context("reading /dev/urandom for the SYN-cookie secret")?;
    let key = CookieKey {
        k0: u64::from_ne_bytes(raw[..8].try_into().expect("8 bytes")),
        k1: u64::from_ne_bytes(raw[8..].try_into().expect("8 bytes")),
    };
    keys.set(0, key, 0)
        .context("writing the SYN-cookie secret")?;
    Ok(key)
}

/// The XDP programs of the object (the main one and the benchmark entries).
pub struct Program {
    ebpf: Ebpf,
    /// The data path's log events (aya-log), until the daemon takes them to a reader thread.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Program {
    /// The connection log's ring buffer of open records (for the daemon's reader). It stays in
    /// the object until taken: programs loaded later (benchmark entries) refer to it.
    pub fn take_conn_opens(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        take(&mut self.ebpf, names::CONN_OPENS)?
            .try_into()
            .context("map CONN_OPENS has an unexpected type")
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?)
    }

    /// Another program of the object (the benchmark entries), loaded on first use. It shares
    /// every map with the main program.
    pub fn extra(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            load_program(prog).with_context(|| format!("loading program {name}"))?;
        }
        Ok(prog)
    }

    /// Prints the data path's log events through env_logger from a thread of its own, as long
    /// as the process runs (events are rare: internal errors, a full table).
    pub fn forward_log_events(&mut self) {
        let Some(mut logger) = self.logger.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("wklb-xdp-log".into())
            .spawn(move || {
                use std::os::fd::AsRawFd as _;
                let mut pfd = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    // SAFETY: polling one descriptor we own.
                    let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
                    if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                    logger.flush();
                }
            });
        if let Err(e) = spawned {
            log::warn!("data-path log events: no reader thread: {e}");
        }
    }

    /// The verifier's instruction count for the loaded program `name` (`PROGRAM`,
    /// `V6_SEND_PROGRAM`).
    pub fn verified_instructions(&mut self, name: &str) -> Result<u32> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        prog.info()?
            .verified_instruction_count()
            .ok_or_else(|| anyhow!("this kernel does not report verified instruction counts"))
    }

    /// Sets the template frame of the benchmark entries.
    /// The `FLOW_HINTS4` entry for `key` (tests: the hint cache in front of FLOWS4).
    pub fn flow_hint(&self, key: &Flow4Key) -> Result<Option<FlowRef>> {
        let a: Array<&MapData, u64> = self
            .ebpf
            .map(names::FLOW_HINTS4)
            .ok_or_else(|| anyhow!("map {} missing", names::FLOW_HINTS4))?
            .try_into()?;
        Ok(FlowRef::from_hint(
            a.get(&lb_common::hash::flow_hint_index(key), 0)?,
        ))
    }

    /// Overwrites the `FLOW_HINTS4` entry for `key` (tests: wrong and stale hints).
    pub fn set_flow_hint(&mut self, key: &Flow4Key, r: Option<FlowRef>) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = self
            .ebpf
            .map_mut(names::FLOW_HINTS4)
            .ok_or_else(|| anyhow!("map {} missing", names::FLOW_HINTS4))?
            .try_into()?;
        a.set(
            lb_common::hash::flow_hint_index(key),
            r.map_or(0, FlowRef::to_hint),
            0,
        )?;
        Ok(())
    }

    /// Kernel memory charged to one of the object's maps, from fdinfo.
    pub fn map_memory_bytes(&self, name: &str) -> Result<u64> {
        let m = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        let data = match m {
            Map::Array(d) => d,
            _ => bail!("map {name} is not an array"),
        };
        memlock(data)
    }

    pub fn set_bench_frame(&mut self, frame: &lb_common::BenchFrame) -> Result<()> {
        let m = self
            .ebpf
            .map_mut(names::BENCH_FRAME)
            .ok_or_else(|| anyhow!("map {} missing", names::BENCH_FRAME))?;
        let mut a: Array<&mut MapData, lb_common::BenchFrame> = m.try_into()?;
        a.set(0, frame, 0)?;
        Ok(())
    }
}

/// The object with its maps sized, pinned under `pin` (adopting maps already pinned there:
/// the second value says whether it did), programs not loaded yet.
fn load_object(opts: &LoadOptions, pin: Option<&PinDir>) -> Result<(Ebpf, bool)> {
    let mut loader = EbpfLoader::new();
    let table_slots = opts.snat_slots * SLOTS_PER_SNAT_ADDR;
    let byte_slots = if opts.conn_log { table_slots } else { 1 };
    loader
        .map_max_entries(names::FLOWS4, opts.max_flows)
        .map_max_entries(names::FLOWS6, opts.max_flows)
        .map_max_entries(names::FLOW_TABLE, table_slots)
        .map_max_entries(names::FLOW_BYTES, byte_slots);
    let mut adopted = false;
    let pin_paths: Vec<(&str, PathBuf)> = match pin {
        Some(p) => {
            std::fs::create_dir_all(&p.path)
                .with_context(|| format!("creating {}", p.path.display()))?;
            adopted = p.path.join(names::FLOWS4).exists();
            // Turning the connection log on or off resizes its counters: the old ones go
            // (only the byte counts of flows already open are lost).
            let bytes_pin = p.path.join(names::FLOW_BYTES);
            if let Ok(m) = aya::maps::MapData::from_pin(&bytes_pin)
                && m.info().map(|i| i.max_entries()).ok() != Some(byte_slots)
            {
                drop(m);
                std::fs::remove_file(&bytes_pin)
                    .with_context(|| format!("removing {}", bytes_pin.display()))?;
            }
            names::ALL.iter().map(|n| (*n, p.path.join(n))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader.load(XDP_OBJECT).with_context(|| match pin {
        Some(p) if adopted => format!(
            "loading the XDP object with the maps pinned in {} (if they come from an incompatible wklb version, `wklb unload` removes them, which breaks live connections)",
            p.path.display()
        ),
        _ => "loading the XDP object into the kernel".to_string(),
    })?;
    Ok((ebpf, adopted))
}

/// Loads a program, again when the verifier was interrupted: it gives up with EAGAIN when a
/// signal arrives for the loading thread mid-verification (libbpf retries the same way).
fn load_program(prog: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut attempts = 0;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 =>
            {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// The configuration maps.
pub struct KernelMaps {
    filter: Mmap,
    _filter_map: MapData,
    addrs: HashMap<MapData, u32, AddrClass>,
    vips: HashMap<MapData, Vip4Key, VipMeta>,
    addrs6: HashMap<MapData, [u32; 4], AddrClass>,
    filter6: Array<MapData, FilterBucket6>,
    vips6: HashMap<MapData, Vip6Key, VipMeta>,
    vip_info: Array<MapData, VipInfo>,
    tables: MaglevTables,
    backends: Array<MapData, Backend>,
    hops: Array<MapData, BackendHop>,
    snat: Array<MapData, SnatAddr>,
    snat_pick: Array<MapData, u32>,
    snat_picks: Array<MapData, u32>,
    config: Array<MapData, DataplaneConfig>,
    tx_ports: DevMapHash<MapData>,
    iface_mtu: HashMap<MapData, u32, u32>,
    sources: LpmTrie<MapData, SourceKey4, u32>,
    vip_limits: Array<MapData, VipLimits>,
    pins: LpmTrie<MapData, SourceKey4, PinTarget>,
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let filter_map = match take(ebpf, names::ADDR_FILTER)? {
            Map::Array(d) => d,
            _ => bail!("map {} has an unexpected type", names::ADDR_FILTER),
        };
        let filter = Mmap::new(filter_map.fd().as_fd(), ADDR_FILTER_SIZE as usize, 8, true)
            .context("mapping the address filter")?;
        Ok(KernelMaps {
            tables: MaglevTables::new(take(ebpf, names::MAGLEV)?, typed!(ebpf, names::TABLE_SEL))?,
            filter,
            _filter_map: filter_map,
            addrs: typed!(ebpf, names::ADDRS4),
            vips: typed!(ebpf, names::VIPS4),
            addrs6: typed!(ebpf, names::ADDRS6),
            filter6: typed!(ebpf, names::ADDR_FILTER6),
            vips6: typed!(ebpf, names::VIPS6),
            vip_info: typed!(ebpf, names::VIP_INFO),
            backends: typed!(ebpf, names::BACKENDS),
            hops: typed!(ebpf, names::BACKEND_HOPS),
            snat: typed!(ebpf, names::SNAT_ADDRS),
            snat_pick: typed!(ebpf, names::SNAT_PICK),
            snat_picks: typed!(ebpf, names::SNAT_PICKS),
            config: typed!(ebpf, names::CONFIG),
            tx_ports: typed!(ebpf, names::TX_PORTS),
            iface_mtu: typed!(ebpf, names::IFACE_MTU),
            sources: typed!(ebpf, names::SOURCES4),
            vip_limits: typed!(ebpf, names::VIP_LIMITS),
            pins: typed!(ebpf, names::PINS4),
        })
    }
}

impl Maps for KernelMaps {
    fn write(&mut self, w: &Write) -> Result<()> {
        match w {
            Write::Backend(id, b) => {
                self.backends
                    .set(*id, b, 0)
                    .with_context(|| format!("writing backend id {id}"))?;
                // A (re)written id may name another address: forget its cached next hop.
                self.hops.set(*id, BackendHop::default(), 0)?;
            }
            Write::SnatAddr(i, a) => self.snat.set(*i, a, 0)?,
            Write::Table(id, Some(t)) => self.tables.install(*id, t)?,
            Write::Table(id, None) => self.tables.remove(*id)?,
            Write::VipInfo(id, i) => self.vip_info.set(*id, i, 0)?,
            Write::Vip(k, Some(m)) => self.vips.insert(k, m, 0)?,
            Write::Vip(k, None) => ignore_missing(self.vips.remove(k))?,
            Write::Addr(a, Some(c)) => self.addrs.insert(a, c, 0)?,
            Write::Addr(a, None) => ignore_missing(self.addrs.remove(a))?,
            Write::Vip6(k, Some(m)) => self.vips6.insert(k, m, 0)?,
            Write::Vip6(k, None) => ignore_missing(self.vips6.remove(k))?,
            Write::Addr6(a, Some(c)) => self.addrs6.insert(a, c, 0)?,
            Write::Addr6(a, None) => ignore_missing(self.addrs6.remove(a))?,
            Write::Filter(b, v) => self.filter.store64(*b as usize, *v),
            Write::Filter6(i, b) => self.filter6.set(*i, b, 0)?,
            // SNAT_PICK too: the program of an earlier build reads it until it is replaced.
            Write::SnatPick(i, v) => {
                self.snat_picks.set(*i, v.unwrap_or(0), 0)?;
                self.snat_pick.set(*i, v.unwrap_or(0), 0)?
            }
            Write::SnatPick6(i, v) => {
                self.snat_picks
                    .set(MAX_SNAT_ADDRS + *i, v.unwrap_or(0), 0)?
            }
            Write::TxPort(ifindex, true) => self.tx_ports.insert(*ifindex, *ifindex, None, 0)?,
            Write::TxPort(ifindex, false) => ignore_missing(self.tx_ports.remove(*ifindex))?,
            Write::IfaceMtu(ifindex, Some(m)) => self.iface_mtu.insert(ifindex, m, 0)?,
            Write::IfaceMtu(ifindex, None) => ignore_missing(self.iface_mtu.remove(ifindex))?,
            Write::Config(c) => self.config.set(0, c, 0)?,
            Write::Source((k, len), Some(v)) => self
                .sources
                .insert(&source_key(k, *len), v, 0)
                .with_context(|| format!("adding a source entry of VIP id {}", k.vip_id()))?,
            Write::Source((k, len), None) => {
                ignore_missing(self.sources.remove(&source_key(k, *len)))?
            }
            Write::VipLimits(id, l) => self.vip_limits.set(*id, l.unwrap_or_default(), 0)?,
            Write::Pin((k, len), Some(t)) => self
                .pins
                .insert(&source_key(k, *len), t, 0)
                .with_context(|| format!("adding a pinned prefix of VIP id {}", k.vip_id()))?,
            Write::Pin((k, len), None) => ignore_missing(self.pins.remove(&source_key(k, *len)))?,
        }
        Ok(())
    }

    fn read(&self) -> Result<Image> {
        let config = self.config.get(&0, 0)?;
        let mut img = Image {
            config,
            ..Default::default()
        };
        for i in 0..MAX_SNAT_ADDRS {
            let a = self.snat.get(&i, 0)?;
            if a != SnatAddr::default() {
                img.snat.insert(i, a);
            }
        }
        // From SNAT_PICKS: after an upgrade from a build without it, it reads empty and the
        // next write fills it.
        for i in 0..config.snat_count.min(MAX_SNAT_ADDRS) {
            img.snat_pick.insert(i, self.snat_picks.get(&i, 0)?);
        }
        for i in 0..config.snat6_count.min(MAX_SNAT_ADDRS) {
            img.snat_pick6
                .insert(i, self.snat_picks.get(&(MAX_SNAT_ADDRS + i), 0)?);
        }
        img.addrs = self.addrs.iter().collect::<Result<_, _>>()?;
        for (b, v) in self.filter.slice::<u64>().iter().enumerate() {
            if *v != 0 {
                img.filter.insert(b as u32, *v);
            }
        }
        img.vips = self.vips.iter().collect::<Result<_, _>>()?;
        img.addrs6 = self.addrs6.iter().collect::<Result<_, _>>()?;
        for (i, b) in self.filter6.iter().enumerate() {
            let b = b?;
            if b != FilterBucket6::default() {
                img.filter6.insert(i as u32, b);
            }
        }
        img.vips6 = self.vips6.iter().collect::<Result<_, _>>()?;
        for (id, b) in self.backends.iter().enumerate() {
            let b = b?;
            if b != Backend::default() {
                img.backends.insert(id as u32, b);
            }
        }
        for (id, i) in self.vip_info.iter().enumerate() {
            let i = i?;
            if i != VipInfo::default() {
                img.vip_info.insert(id as u32, i);
            }
        }
        for m in img.vips.values().chain(img.vips6.values()) {
            if let Some(t) = self.tables.read(m.vip_id)? {
                img.tables.insert(m.vip_id, Arc::new(t));
            }
        }
        img.tx_ports = self.tx_ports.keys().collect::<Result<_, _>>()?;
        img.iface_mtu = self.iface_mtu.iter().collect::<Result<_, _>>()?;
        for e in self.sources.iter() {
            let (k, v) = e?;
            let len = k.prefix_len().saturating_sub(SourceKey4::prefix_len(0)) as u8;
            img.sources.insert((k.data(), len), v);
        }
        for e in self.pins.iter() {
            let (k, t) = e?;
            let len = k.prefix_len().saturating_sub(SourceKey4::prefix_len(0)) as u8;
            img.pins.insert((k.data(), len), t);
            if let Some(table) = self.tables.read(t.table_id)? {
                img.tables.insert(t.table_id, Arc::new(table));
            }
        }
        for (id, l) in self.vip_limits.iter().enumerate() {
            let l = l?;
            if l != VipLimits::default() {
                img.vip_limits.insert(id as u32, l);
            }
        }
        Ok(img)
    }
}

/// The trie key of a VIP's `len`-bit prefix.
fn source_key(k: &SourceKey4, len: u8) -> aya::maps::lpm_trie::Key<SourceKey4> {
    aya::maps::lpm_trie::Key::new(SourceKey4::prefix_len(len), *k)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The per-CPU counters.
pub struct KernelCounters {
    reasons: PerCpuArray<MapData, u64>,
    vips: PerCpuArray<MapData, VipStats>,
    backends: PerCpuArray<MapData, BackendStats>,
    pins: PerCpuArray<MapData, PinStats>,
    conn_log_lost: PerCpuArray<MapData, u64>,
    /// RTT_HIST, memory-mapped read-only (one histogram row is 80 counters).
    rtt: Mmap,
    _rtt_map: MapData,
    pin_rtt: Mmap,
    _pin_rtt_map: MapData,
}

impl KernelCounters {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let rtt_map = match take(ebpf, names::RTT_HIST)? {
            Map::Array(d) => d,
            _ => bail!("map {} has an unexpected type", names::RTT_HIST),
        };
        let rows = rtt_map.info()?.max_entries();
        let rtt = Mmap::new(
            rtt_map.fd().as_fd(),
            rows as usize,
            size_of::<lb_common::rtt::RttRow>(),
            false,
        )
        .context("mapping the round-trip histograms")?;
        let pin_rtt_map = match take(ebpf, names::PIN_RTT)? {
            Map::Array(d) => d,
            _ => bail!("map {} has an unexpected type", names::PIN_RTT),
        };
        let pin_rtt = Mmap::new(
            pin_rtt_map.fd().as_fd(),
            pin_rtt_map.info()?.max_entries() as usize,
            size_of::<lb_common::rtt::RttRow>(),
            false,
        )
        .context("mapping the pins' round-trip histograms")?;
        Ok(KernelCounters {
            reasons: typed!(ebpf, names::REASONS),
            vips: typed!(ebpf, names::VIP_STATS),
            backends: typed!(ebpf, names::BACKEND_STATS),
            pins: typed!(ebpf, names::PIN_STATS),
            conn_log_lost: typed!(ebpf, names::CONN_LOG_LOST),
            rtt,
            _rtt_map: rtt_map,
            pin_rtt,
            _pin_rtt_map: pin_rtt_map,
        })
    }
}

impl Counters for KernelCounters {
    fn reasons(&self) -> Result<Vec<u64>> {
        Reason::ALL
            .iter()
            .map(|r| Ok(self.reasons.get(&(*r as u32), 0)?.iter().sum()))
            .collect()
    }

    fn vip(&self, id: u32) -> Result<VipStats> {
        Ok(self
            .vips
            .get(&id, 0)?
            .iter()
            .fold(VipStats::default(), |mut t, s| {
                t.add(s);
                t
            }))
    }

    fn backend(&self, id: u32) -> Result<BackendStats> {
        Ok(self
            .backends
            .get(&id, 0)?
            .iter()
            .fold(BackendStats::default(), |mut t, s| {
                t.packets_in += s.packets_in;
                t.bytes_in += s.bytes_in;
                t.packets_out += s.packets_out;
                t.bytes_out += s.bytes_out;
                t.new_flows += s.new_flows;
                t
            }))
    }

    fn conn_log_lost(&self) -> Result<u64> {
        Ok(self.conn_log_lost.get(&0, 0)?.iter().sum())
    }

    fn pin(&self, table_id: u32) -> Result<PinStats> {
        Ok(self
            .pins
            .get(&table_id, 0)?
            .iter()
            .fold(PinStats::default(), |mut t, s| {
                t.new_flows += s.new_flows;
                t.refused += s.refused;
                t.spilled += s.spilled;
                t
            }))
    }

    fn pin_rtt(&self, table_id: u32) -> lb_common::rtt::RttRow {
        if table_id as usize >= self.pin_rtt.entries() {
            return Default::default();
        }
        self.pin_rtt.read(table_id as usize)
    }

    fn rtt(&self, backend_id: u32, kind: u32) -> lb_common::rtt::RttRow {
        let row = lb_common::rtt::rtt_row(backend_id, kind) as usize;
        if row >= self.rtt.entries() {
            return Default::default();
        }
        self.rtt.read(row)
    }
}

/// The connection table: FLOWS4 by fd, FLOW_TABLE memory-mapped.
pub struct KernelFlows {
    refs: HashMap<MapData, Flow4Key, FlowRef>,
    refs6: HashMap<MapData, Flow6Key, FlowRef>,
    full: std::sync::Mutex<HashMap<MapData, SourceRateKey, u32>>,
    table_map: MapData,
    table: Mmap,
    max_flows: u32,
    slots: u32,
    /// FLOW_BYTES (one entry while the connection log is off).
    bytes: Array<MapData, lb_common::connlog::FlowBytes>,
}

/// Byte offset of `FlowEntry::owner`.
const OWNER: usize = 0;

impl KernelFlows {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let refs: HashMap<MapData, Flow4Key, FlowRef> = typed!(ebpf, names::FLOWS4);
        let table_map = match take(ebpf, names::FLOW_TABLE)? {
            Map::Array(d) => d,
            _ => bail!("map {} has an unexpected type", names::FLOW_TABLE),
        };
        let max_flows = refs.map().info()?.max_entries();
        let slots = table_map.info()?.max_entries();
        let table = Mmap::new(
            table_map.fd().as_fd(),
            slots as usize,
            size_of::<FlowEntry>(),
            true,
        )
        .context("mapping the flow table")?;
        Ok(KernelFlows {
            refs,
            refs6: typed!(ebpf, names::FLOWS6),
            full: std::sync::Mutex::new(typed!(ebpf, names::SOURCE_FULL)),
            table_map,
            table,
            max_flows,
            slots,
            bytes: typed!(ebpf, names::FLOW_BYTES),
        })
    }

    /// Empties the connection table; returns how many flows FLOWS4 held. For benchmarks and
    /// tests between rounds: not while traffic flows.
    pub fn clear(&self) -> Result<usize> {
        let n = sys::bpf::drain_hash::<Flow4Key, FlowRef>(self.refs.map().fd().as_fd(), 16_384)?
            + sys::bpf::drain_hash::<Flow6Key, FlowRef>(self.refs6.map().fd().as_fd(), 16_384)?;
        self.table.zero_all();
        Ok(n)
    }

    /// Kernel memory charged to the connection table (FLOWS4 + FLOW_TABLE), from fdinfo.
    pub fn memory_bytes(&self) -> Result<u64> {
        Ok(memlock(self.refs.map())? + memlock(&self.table_map)?)
    }
}

fn memlock(m: &MapData) -> Result<u64> {
    let fd = m.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no memlock in fdinfo"))
}

impl Flows for KernelFlows {
    fn max_flows(&self) -> u32 {
        self.max_flows
    }

    fn slots(&self) -> u32 {
        self.slots
    }

    fn entry(&self, slot: u32) -> FlowEntry {
        self.table.read(slot as usize)
    }

    fn scan(&self, f: &mut dyn FnMut(u32, &FlowEntry)) {
        for (i, e) in self.table.slice::<FlowEntry>().iter().enumerate() {
            // A relaxed peek at the owner first: most slots are free.
            if self.table.word32(i, OWNER).load(Ordering::Relaxed) == lb_common::slot::FREE {
                continue;
            }
            // SAFETY: a copy of shared memory; concurrent writers store whole scalars.
            let copy = unsafe { std::ptr::read_volatile(e) };
            f(i as u32, &copy);
        }
    }

    fn swap_owner(&self, slot: u32, from: u32, to: u32) -> bool {
        self.table
            .word32(slot as usize, OWNER)
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn refs(&self) -> Result<Vec<(Flow4Key, FlowRef)>> {
        sys::bpf::dump_hash(self.refs.map().fd().as_fd(), 16_384)
    }

    fn get_ref(&self, key: &Flow4Key) -> Result<Option<FlowRef>> {
        match self.refs.get(key, 0) {
            Ok(r) => Ok(Some(r)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn take_ref(&self, key: &Flow4Key) -> Result<Option<FlowRef>> {
        sys::bpf::lookup_and_delete(self.refs.map().fd().as_fd(), key)
    }

    fn bytes(&self, slot: u32) -> lb_common::connlog::FlowBytes {
        self.bytes.get(&slot, 0).unwrap_or_default()
    }

    fn set_full_sources(&self, full: &BTreeSet<SourceRateKey>) -> Result<()> {
        let mut m = self
            .full
            .lock()
            .map_err(|_| anyhow!("SOURCE_FULL lock poisoned"))?;
        let now: BTreeSet<SourceRateKey> = m.keys().collect::<Result<_, _>>()?;
        for k in now.difference(full) {
            ignore_missing(m.remove(k))?;
        }
        for k in full.difference(&now) {
            m.insert(k, 1, 0)
                .context("listing a source at its connection limit")?;
        }
        Ok(())
    }

    fn restore_ref(&self, key: &Flow4Key, r: &FlowRef) -> Result<()> {
        restore(self.refs.map(), key, r)
    }

    fn refs6(&self) -> Result<Vec<(Flow6Key, FlowRef)>> {
        sys::bpf::dump_hash(self.refs6.map().fd().as_fd(), 16_384)
    }

    fn get_ref6(&self, key: &Flow6Key) -> Result<Option<FlowRef>> {
        match self.refs6.get(key, 0) {
            Ok(r) => Ok(Some(r)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn take_ref6(&self, key: &Flow6Key) -> Result<Option<FlowRef>> {
        sys::bpf::lookup_and_delete(self.refs6.map().fd().as_fd(), key)
    }

    fn restore_ref6(&self, key: &Flow6Key, r: &FlowRef) -> Result<()> {
        restore(self.refs6.map(), key, r)
    }
}

/// Puts a flow reference back unless the data path created one for the key meanwhile.
fn restore<K: bytemuck::Pod>(m: &MapData, key: &K, r: &FlowRef) -> Result<()> {
    const BPF_NOEXIST: u64 = 1;
    match sys::bpf::insert(m.fd().as_fd(), key, r, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e).context("restoring a flow reference"),
    }
}
