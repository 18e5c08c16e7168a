//! The configuration maps behind the `Maps` trait: one map update per write, the address
//! filter and Maglev tables memory-mapped.

use std::{os::fd::AsFd as _, sync::Arc};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData},
};
use lb_common::{
    ADDR_FILTER_SIZE, AddrClass, Backend, BackendHop, DataplaneConfig, FilterBucket6,
    MAX_SNAT_ADDRS, PinTarget, SnatAddr, SourceKey4, Vip4Key, Vip6Key, VipInfo, VipLimits, VipMeta,
    names,
};

use super::{ignore_missing, take};
use crate::{
    dataplane::{Image, Maps, Write, tables::MaglevTables},
    sys::bpf::Mmap,
};

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
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
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
            // Never written (zeroes) and written back to the default both mean no entry.
            if l != VipLimits::default() && l != bytemuck::Zeroable::zeroed() {
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
