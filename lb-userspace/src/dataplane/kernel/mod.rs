//! The real data plane: loads (or adopts) the XDP object and implements the dataplane traits on
//! its maps. Arrays the daemon fills in bulk (Maglev tables, the address filter) and the flow
//! table it sweeps are memory-mapped; everything else is a map update per element.

use std::{os::fd::AsFd as _, os::fd::AsRawFd as _, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
    programs::Xdp,
};
use lb_common::{DataplaneConfig, MAX_SNAT_ADDRS, SLOTS_PER_SNAT_ADDR, cookie::CookieKey, names};

use super::{Flows as _, Maps as _, Write};
use crate::sys::{self, bpffs::PinDir};

pub(super) fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
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

mod counters;
mod flows;
mod maps;
mod program;

pub use counters::KernelCounters;
pub use flows::KernelFlows;
pub use maps::KernelMaps;
pub use program::Program;

/// The compiled XDP object, built by build.rs (lb-ebpf).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wklb-xdp"));

/// The program's name inside the object.
pub const PROGRAM: &str = "wklb";
/// Every program of the data path: the entry and those it enters by tail call.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(PROGRAM).chain(lb_common::TAIL_PROGRAMS.iter().map(|(n, _)| *n))
}

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
    let had_plain_syn = pin
        .as_ref()
        .is_some_and(|p| p.path.join(names::VIP_PLAIN_SYN).exists());
    let (mut ebpf, adopted) = load_object(opts, pin.as_ref())?;
    if adopted && !had_plain_syn {
        stamp_plain_syns(&mut ebpf)?;
    }
    let logger = aya_log::EbpfLogger::init(&mut ebpf)
        .map_err(|e| log::debug!("data-path log events unavailable: {e}"))
        .ok();
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    load_program(prog).context("the kernel verifier rejected the XDP program")?;
    install_tails(&mut ebpf)?;
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

/// Loads every program entered by tail call and puts it in `TAILS` (replacing the previous
/// generation's in an adopted array: one entry write each, atomic for packets).
fn install_tails(ebpf: &mut Ebpf) -> Result<()> {
    for (name, index) in lb_common::TAIL_PROGRAMS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        load_program(prog).with_context(|| format!("the kernel verifier rejected {name}"))?;
        let fd = prog.fd()?.try_clone()?;
        let map = ebpf
            .map_mut(names::TAILS)
            .ok_or_else(|| anyhow!("map {} missing from the object", names::TAILS))?;
        let mut tails = aya::maps::ProgramArray::try_from(map)?;
        tails
            .set(*index, &fd, 0)
            .with_context(|| format!("installing {name} in {}", names::TAILS))?;
    }
    Ok(())
}

/// Adopting the maps of a build without `VIP_PLAIN_SYN`: its flows may have been created by
/// SYNs a moment ago, so every VIP is stamped now (their retransmitted SYNs in cookie mode then
/// look for them, for `PLAIN_SYN_WINDOW_NS`) instead of never.
fn stamp_plain_syns(ebpf: &mut Ebpf) -> Result<()> {
    let mut a = program::plain_syn_stamps(ebpf)?;
    let now = crate::sys::clock::monotonic_ns();
    for vip_id in 0..lb_common::MAX_VIPS {
        a.set(vip_id, now, 0)
            .with_context(|| format!("stamping {} for VIP id {vip_id}", names::VIP_PLAIN_SYN))?;
    }
    Ok(())
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
        .map_max_entries(
            names::PORT_BITS,
            opts.snat_slots * lb_common::portmap::WORDS_PER_ADDR,
        )
        .map_max_entries(
            names::PORT_FULL,
            opts.snat_slots * lb_common::portmap::FULL_WORDS,
        )
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

/// Map removals that find nothing to remove are fine.
pub(super) fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
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

/// Kernel memory charged to a map, from fdinfo.
pub(super) fn memlock(m: &MapData) -> Result<u64> {
    let fd = m.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no memlock in fdinfo"))
}
