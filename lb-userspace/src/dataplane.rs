//! Loads the XDP object, attaches it, pins its maps and gives typed access to every map.
//! The daemon is the one writer of configuration maps; this module is its only way in.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Addr, AddrClass, AddrKey, Backend, BackendStats, DataplaneConfig, FAMILY_IPV4, Flow, FlowKey,
    MAGLEV_TABLE_SIZE, MAX_SNAT_ADDRS, Reason, SnatAddr, VipKey, VipMeta, VipStats, names,
};

/// The compiled XDP object, built by build.rs (lb-ebpf via aya-build).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wklb-xdp"));

/// The program's name inside the object.
pub const PROGRAM: &str = "wklb";

/// How to attach: `Auto` tries native (driver) XDP and falls back to generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Driver,
    Generic,
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "driver" => Ok(AttachMode::Driver),
            "generic" => Ok(AttachMode::Generic),
            other => bail!("xdp mode {other:?} is not one of auto, driver, generic"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the connection table (FLOWS and REV_FLOWS each).
    pub max_flows: u32,
    /// Pin every map under this directory, adopting maps already pinned there (a restarted or
    /// upgraded daemon keeps every flow and counter). None: private maps (tests).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            pin_dir: None,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// The maps were already pinned: this load adopted a running data plane.
    adopted: bool,
}

/// Pin file of the XDP link on `iface`.
fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

impl Dataplane {
    /// Loads and verifies the program, creating its maps or adopting pinned ones.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        crate::privileges::require_root("loading the data plane")?;
        if opts.max_flows == 0 {
            bail!("max_flows must be at least 1");
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::FLOWS, opts.max_flows)
            .map_max_entries(names::REV_FLOWS, opts.max_flows);
        let mut adopted = false;
        let pin_dir = match &opts.pin_dir {
            Some(d) => Some(crate::privileges::resolve_pin_dir(d)?),
            None => None,
        };
        let pins: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                adopted = dir.join(names::FLOWS).exists();
                names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(XDP_OBJECT).with_context(|| match &pin_dir {
            Some(d) if adopted => format!(
                "loading the XDP object with the maps pinned in {} (if they come from an incompatible wklb version, `wklb unload` removes them, which breaks live connections)",
                d.display()
            ),
            _ => "loading the XDP object into the kernel".to_string(),
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the kernel verifier rejected the XDP program")?;
        let mut dp = Dataplane {
            ebpf,
            pin_dir,
            adopted,
        };
        if adopted {
            let have = dp.max_flows()?;
            if have != opts.max_flows {
                log::warn!(
                    "the pinned connection table holds {have} flows, not the configured {}: resizing needs `wklb unload` (which breaks live connections)",
                    opts.max_flows
                );
            }
        } else {
            dp.set_config(&DataplaneConfig::default())?;
        }
        Ok(dp)
    }

    /// Where maps and links are pinned (the configured directory, or its host path).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Whether this load adopted already-pinned maps.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Kernel memory charged to a map (its `memlock` in /proc/self/fdinfo), in bytes.
    pub fn map_memory(&self, name: &str) -> Result<u64> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let m = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        let data: &MapData = match m {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::ArrayOfMaps(d) => d,
            _ => bail!("map {name}: unexpected type"),
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        info.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no memlock for map {name}"))
    }

    /// Capacity of the connection table.
    pub fn max_flows(&self) -> Result<u32> {
        let m = self
            .ebpf
            .map(names::FLOWS)
            .ok_or_else(|| anyhow!("map FLOWS missing"))?;
        let aya::maps::Map::HashMap(data) = m else {
            bail!("FLOWS is not a hash map")
        };
        Ok(data.info()?.max_entries())
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?)
    }

    /// Another program of the object (the benchmark entries), loaded on first use. It shares
    /// every map with the main program.
    pub fn extra_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {name}"))?;
        }
        Ok(prog)
    }

    /// Sets the template frame of the benchmark entries.
    pub fn set_bench_frame(&mut self, frame: &lb_common::BenchFrame) -> Result<()> {
        let mut a: Array<&mut MapData, lb_common::BenchFrame> = self.map_mut(names::BENCH_FRAME)?;
        a.set(0, frame, 0)?;
        Ok(())
    }

    /// The verifier's instruction count for the loaded program.
    pub fn verified_instructions(&mut self) -> Result<u32> {
        self.program()?
            .info()?
            .verified_instruction_count()
            .ok_or_else(|| anyhow!("this kernel does not report verified instruction counts"))
    }

    /// Attaches to `iface` (the link lives as long as this object); returns the mode that
    /// worked. `Auto` tries native XDP, then generic.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        self.attach_link(iface, mode).map(|(_, m)| m)
    }

    fn attach_link(&mut self, iface: &str, mode: AttachMode) -> Result<(XdpLinkId, XdpMode)> {
        let prog = self.program()?;
        let tries: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Driver => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for m in tries {
            match prog.attach(iface, *m) {
                Ok(id) => return Ok((id, *m)),
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(last.expect("at least one mode tried")))
            .with_context(|| format!("attaching XDP to interface {iface:?} ({mode:?} mode)"))
    }

    /// Attaches to `iface` through a pinned link, so the program stays attached when this
    /// process exits. A link pinned by an earlier daemon is re-pointed at this program in one
    /// atomic update: no packet goes unprocessed during a restart or an upgrade.
    pub fn attach_pinned(&mut self, iface: &str, mode: AttachMode) -> Result<String> {
        let dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| anyhow!("attaching with a pinned link needs a pin directory"))?;
        let pin = link_pin(&dir, iface);
        if pin.exists() {
            let pinned =
                PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .with_context(|| format!("{} is not an XDP link", pin.display()))?;
            let prog = self.program()?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {iface}"))?;
            // The pin keeps the link attached; our handle can go.
            drop(prog.take_link(id)?);
            return Ok("existing link adopted, program replaced in place".into());
        }
        let (id, mode_used) = self.attach_link(iface, mode)?;
        let link = self.program()?.take_link(id)?;
        let fd_link = FdLink::try_from(link)
            .with_context(|| format!("XDP on {iface} is not a bpf_link; cannot pin it"))?;
        fd_link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link of {iface} at {}", pin.display()))?;
        Ok(format!("attached in {} mode", mode_name(mode_used)))
    }

    /// Detaches the pinned link of `iface` (removing its pin).
    pub fn detach_pinned(dir: &Path, iface: &str) -> Result<bool> {
        let pin = link_pin(dir, iface);
        if !pin.exists() {
            return Ok(false);
        }
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        Ok(true)
    }

    /// Interfaces with a pinned link under `dir`.
    pub fn pinned_interfaces(dir: &Path) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("link_"))
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    /// Detaches every pinned link and removes every pinned map under `dir`, then `dir` itself.
    /// Returns what was removed.
    pub fn unload_pinned(dir: &Path) -> Result<Vec<String>> {
        crate::privileges::require_root("unloading the data plane")?;
        let dir = &crate::privileges::resolve_pin_dir(dir)?;
        let mut removed = Vec::new();
        for iface in Self::pinned_interfaces(dir) {
            Self::detach_pinned(dir, &iface)?;
            removed.push(format!("detached XDP from {iface}"));
        }
        for name in names::ALL {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                removed.push(format!("removed map {name}"));
            }
        }
        if dir.exists() {
            std::fs::remove_dir(dir).with_context(|| {
                format!(
                    "removing {} (something else is pinned there?)",
                    dir.display()
                )
            })?;
        }
        Ok(removed)
    }

    fn map<'a, T>(&'a self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
    }

    pub fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<()> {
        let mut a: Array<&mut MapData, DataplaneConfig> = self.map_mut(names::CONFIG)?;
        a.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn config(&self) -> Result<DataplaneConfig> {
        let a: Array<&MapData, DataplaneConfig> = self.map(names::CONFIG)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes the SNAT address list, then the count in CONFIG (so a packet never indexes an
    /// address not yet written), and marks each address in ADDR_CLASS.
    pub fn set_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        if addrs.len() > MAX_SNAT_ADDRS as usize {
            bail!(
                "{} SNAT addresses given, at most {MAX_SNAT_ADDRS} supported",
                addrs.len()
            );
        }
        {
            let mut a: Array<&mut MapData, SnatAddr> = self.map_mut(names::SNAT_ADDRS)?;
            for (i, ip) in addrs.iter().enumerate() {
                let v = SnatAddr::new(Addr::v4(ip.octets()), FAMILY_IPV4);
                a.set(i as u32, v, 0)?;
            }
        }
        for ip in addrs {
            self.update_addr_class(*ip, AddrClass::SNAT, 0)?;
        }
        let mut cfg = self.config()?;
        cfg.snat_count = addrs.len() as u32;
        self.set_config(&cfg)
    }

    /// Sets `set` and clears `clear` flag bits of an address's class; removes the entry when no
    /// bit is left.
    pub fn update_addr_class(&mut self, ip: Ipv4Addr, set: u32, clear: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, AddrClass> = self.map_mut(names::ADDR_CLASS)?;
        let key = AddrKey::new(Addr::v4(ip.octets()), FAMILY_IPV4);
        let old = m.get(&key, 0).map(|c| c.flags).unwrap_or(0);
        let flags = (old | set) & !clear;
        if flags == 0 {
            let _ = m.remove(&key);
        } else {
            m.insert(key, AddrClass { flags }, 0)?;
        }
        Ok(())
    }

    /// Adds or updates a VIP (and its address class bits).
    pub fn set_vip(&mut self, ip: Ipv4Addr, port: u16, proto: u8, meta: VipMeta) -> Result<()> {
        {
            let mut m: HashMap<&mut MapData, VipKey, VipMeta> = self.map_mut(names::VIPS)?;
            m.insert(vip_key(ip, port, proto), meta, 0)?;
        }
        let mut class = AddrClass::VIP;
        if port == 0 {
            class |= any_port_flag(proto);
        }
        self.update_addr_class(ip, class, 0)
    }

    /// Removes a VIP entry (its address class bits are the controller's to update).
    pub fn remove_vip(&mut self, ip: Ipv4Addr, port: u16, proto: u8) -> Result<()> {
        let mut m: HashMap<&mut MapData, VipKey, VipMeta> = self.map_mut(names::VIPS)?;
        let _ = m.remove(&vip_key(ip, port, proto));
        Ok(())
    }

    /// Every VIP entry.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        let m: HashMap<&MapData, VipKey, VipMeta> = self.map(names::VIPS)?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    /// Every backend slot that was ever written (non-zero).
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        let a: Array<&MapData, Backend> = self.map(names::BACKENDS)?;
        Ok(a.iter()
            .enumerate()
            .filter_map(|(i, r)| r.ok().map(|b| (i as u32, b)))
            .filter(|(_, b)| *b != Backend::default())
            .collect())
    }

    /// One forward flow entry.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        let m: HashMap<&MapData, FlowKey, Flow> = self.map(names::FLOWS)?;
        Ok(m.get(key, 0).ok())
    }

    pub fn vip_meta(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Result<Option<VipMeta>> {
        let m: HashMap<&MapData, VipKey, VipMeta> = self.map(names::VIPS)?;
        Ok(m.get(&vip_key(ip, port, proto), 0).ok())
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let mut a: Array<&mut MapData, Backend> = self.map_mut(names::BACKENDS)?;
        a.set(id, backend, 0)
            .with_context(|| format!("writing backend id {id}"))?;
        Ok(())
    }

    /// Replaces a VIP's Maglev table atomically: a fresh inner map is filled completely, then
    /// swapped in with one update of the outer map. Packets see the old or the new table whole.
    pub fn install_table(&mut self, vip_id: u32, table: &[u32]) -> Result<()> {
        if table.len() != MAGLEV_TABLE_SIZE as usize {
            bail!(
                "Maglev table has {} slots, the data plane needs {MAGLEV_TABLE_SIZE}",
                table.len()
            );
        }
        let mut inner: Array<MapData, u32> =
            Array::create(MAGLEV_TABLE_SIZE, 0).context("creating a Maglev table map")?;
        for (i, b) in table.iter().enumerate() {
            inner.set(i as u32, b, 0)?;
        }
        let mut outer: ArrayOfMaps<&mut MapData, Array<MapData, u32>> =
            self.map_mut(names::MAGLEV)?;
        outer
            .set(vip_id, &inner, 0)
            .with_context(|| format!("swapping in the Maglev table of VIP id {vip_id}"))?;
        Ok(())
    }

    /// The backend id in a VIP's live table at `slot`.
    pub fn table_slot(&self, vip_id: u32, slot: u32) -> Result<u32> {
        let outer: ArrayOfMaps<&MapData, Array<MapData, u32>> = self.map(names::MAGLEV)?;
        let inner = outer
            .get(&vip_id, 0)
            .with_context(|| format!("VIP id {vip_id} has no table"))?;
        Ok(inner.get(&slot, 0)?)
    }

    /// Every reason counter, summed over CPUs, indexed by `Reason as usize`.
    pub fn reasons(&self) -> Result<Vec<u64>> {
        let a: PerCpuArray<&MapData, u64> = self.map(names::REASONS)?;
        Reason::ALL
            .iter()
            .map(|r| Ok(a.get(&(*r as u32), 0)?.iter().sum()))
            .collect()
    }

    pub fn reason(&self, r: Reason) -> Result<u64> {
        Ok(self.reasons()?[r as usize])
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let a: PerCpuArray<&MapData, BackendStats> = self.map(names::BACKEND_STATS)?;
        Ok(a.get(&id, 0)?
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

    pub fn vip_stats(&self, id: u32) -> Result<VipStats> {
        let a: PerCpuArray<&MapData, VipStats> = self.map(names::VIP_STATS)?;
        Ok(a.get(&id, 0)?.iter().fold(VipStats::default(), |mut t, s| {
            t.packets += s.packets;
            t.bytes += s.bytes;
            t.new_flows += s.new_flows;
            t.no_backend += s.no_backend;
            t
        }))
    }

    /// Every forward flow entry (client tuple → flow).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        let m: HashMap<&MapData, FlowKey, Flow> = self.map(names::FLOWS)?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    /// Number of reverse entries (each live flow has exactly one).
    pub fn reverse_flow_count(&self) -> Result<usize> {
        let m: HashMap<&MapData, FlowKey, FlowKey> = self.map(names::REV_FLOWS)?;
        Ok(m.keys().filter(|k| k.is_ok()).count())
    }

    /// Removes a flow and its reverse entry (expiry); the SNAT port becomes free again.
    pub fn remove_flow(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        {
            let mut r: HashMap<&mut MapData, FlowKey, FlowKey> = self.map_mut(names::REV_FLOWS)?;
            let _ = r.remove(&flow.reverse_key(key.proto));
        }
        let mut f: HashMap<&mut MapData, FlowKey, Flow> = self.map_mut(names::FLOWS)?;
        let _ = f.remove(key);
        Ok(())
    }

    /// Removes a flow seen as `flow` only if the entry still holds exactly that: a packet that
    /// refreshed it, or a SYN that replaced it (port reuse), since it was read keeps it alive.
    /// BPF hash maps have no compare-and-delete; re-reading just before narrows the window to
    /// microseconds. Returns whether it was removed.
    pub fn remove_flow_if_unchanged(&mut self, key: &FlowKey, flow: &Flow) -> Result<bool> {
        if self.flow(key)?.as_ref() != Some(flow) {
            return Ok(false);
        }
        self.remove_flow(key, flow)?;
        Ok(true)
    }

    /// Pin directory default, for callers that do not configure one.
    pub fn default_pin_dir() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/wklb")
    }
}

const fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Driver => "driver",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "hardware",
        XdpMode::Default => "default",
    }
}

pub fn vip_key(ip: Ipv4Addr, port: u16, proto: u8) -> VipKey {
    VipKey::new(Addr::v4(ip.octets()), port, proto, FAMILY_IPV4)
}

const fn any_port_flag(proto: u8) -> u32 {
    if proto == lb_common::PROTO_TCP {
        AddrClass::VIP_ANY_PORT_TCP
    } else {
        AddrClass::VIP_ANY_PORT_UDP
    }
}
