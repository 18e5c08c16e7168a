//! The connection table behind the `Flows` trait: FLOWS4 and FLOWS6 (one generic reference
//! table over the key type), FLOW_TABLE memory-mapped, FLOW_BYTES and SOURCE_FULL.

use std::{collections::BTreeSet, os::fd::AsFd as _, sync::atomic::Ordering};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, Map, MapData},
};
use lb_common::{Flow4Key, Flow6Key, FlowEntry, FlowRef, SourceRateKey, names};

use super::{ignore_missing, memlock, take};
use crate::{
    dataplane::{Flows, RefTable},
    sys::{self, bpf::Mmap},
};

/// A reference table (FLOWS4, FLOWS6): client tuple → the slot's claim.
pub struct KernelRefs<K> {
    map: HashMap<MapData, K, FlowRef>,
}

impl<K: bytemuck::Pod + aya::Pod + Send + Sync> RefTable<K> for KernelRefs<K> {
    fn all(&self) -> Result<Vec<(K, FlowRef)>> {
        sys::bpf::dump_hash(self.map.map().fd().as_fd(), 16_384)
    }

    fn get(&self, key: &K) -> Result<Option<FlowRef>> {
        match self.map.get(key, 0) {
            Ok(r) => Ok(Some(r)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn take(&self, key: &K) -> Result<Option<FlowRef>> {
        sys::bpf::lookup_and_delete(self.map.map().fd().as_fd(), key)
    }

    /// Puts a reference back unless the data path created one for the key meanwhile.
    fn restore(&self, key: &K, r: &FlowRef) -> Result<()> {
        const BPF_NOEXIST: u64 = 1;
        match sys::bpf::insert(self.map.map().fd().as_fd(), key, r, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e).context("restoring a flow reference"),
        }
    }
}

impl<K: bytemuck::Pod + aya::Pod> KernelRefs<K> {
    /// Empties the table; returns how many entries it held.
    fn clear(&self) -> Result<usize> {
        sys::bpf::drain_hash::<K, FlowRef>(self.map.map().fd().as_fd(), 16_384)
    }
}

/// The connection table.
pub struct KernelFlows {
    refs4: KernelRefs<Flow4Key>,
    refs6: KernelRefs<Flow6Key>,
    full: std::sync::Mutex<HashMap<MapData, SourceRateKey, u32>>,
    table_map: MapData,
    table: Mmap,
    max_flows: u32,
    slots: u32,
    /// FLOW_BYTES (one entry while the connection log is off).
    bytes: Array<MapData, lb_common::connlog::FlowBytes>,
    /// PORT_BITS and PORT_FULL, memory-mapped.
    port_bits: Mmap,
    port_full: Mmap,
    /// VIP_LIVE, memory-mapped.
    live: Mmap,
    _mapped: [MapData; 3],
}

/// A map of u64 words, memory-mapped for writing.
fn mapped_words(ebpf: &mut Ebpf, name: &str) -> Result<(Mmap, MapData)> {
    mapped(ebpf, name, 8)
}

/// An array of `value_size`-byte values, memory-mapped for writing.
fn mapped(ebpf: &mut Ebpf, name: &str, value_size: usize) -> Result<(Mmap, MapData)> {
    let map = match take(ebpf, name)? {
        Map::Array(d) => d,
        _ => bail!("map {name} has an unexpected type"),
    };
    let m = Mmap::new(
        map.fd().as_fd(),
        map.info()?.max_entries() as usize,
        value_size,
        true,
    )
    .with_context(|| format!("mapping {name}"))?;
    Ok((m, map))
}

/// Byte offset of `FlowEntry::owner`.
const OWNER: usize = 0;

impl KernelFlows {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let refs4: HashMap<MapData, Flow4Key, FlowRef> = typed!(ebpf, names::FLOWS4);
        let table_map = match take(ebpf, names::FLOW_TABLE)? {
            Map::Array(d) => d,
            _ => bail!("map {} has an unexpected type", names::FLOW_TABLE),
        };
        let max_flows = refs4.map().info()?.max_entries();
        let slots = table_map.info()?.max_entries();
        let table = Mmap::new(
            table_map.fd().as_fd(),
            slots as usize,
            size_of::<FlowEntry>(),
            true,
        )
        .context("mapping the flow table")?;
        let (port_bits, bits_map) = mapped_words(ebpf, names::PORT_BITS)?;
        let (port_full, full_map) = mapped_words(ebpf, names::PORT_FULL)?;
        let (live, live_map) = mapped(
            ebpf,
            names::VIP_LIVE,
            std::mem::size_of::<lb_common::VipLive>(),
        )?;
        Ok(KernelFlows {
            port_bits,
            port_full,
            live,
            _mapped: [bits_map, full_map, live_map],
            refs4: KernelRefs { map: refs4 },
            refs6: KernelRefs {
                map: typed!(ebpf, names::FLOWS6),
            },
            full: std::sync::Mutex::new(typed!(ebpf, names::SOURCE_FULL)),
            table_map,
            table,
            max_flows,
            slots,
            bytes: typed!(ebpf, names::FLOW_BYTES),
        })
    }

    /// Empties the connection table; returns how many flows FLOWS4 and FLOWS6 held. For
    /// benchmarks and tests between rounds: not while traffic flows.
    pub fn clear(&self) -> Result<usize> {
        let n = self.refs4.clear()? + self.refs6.clear()?;
        self.table.zero_all();
        Ok(n)
    }

    /// Kernel memory charged to the connection table (FLOWS4 + FLOW_TABLE), from fdinfo.
    pub fn memory_bytes(&self) -> Result<u64> {
        Ok(memlock(self.refs4.map.map())? + memlock(&self.table_map)?)
    }
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

    fn refs4(&self) -> &dyn RefTable<Flow4Key> {
        &self.refs4
    }

    fn refs6(&self) -> &dyn RefTable<Flow6Key> {
        &self.refs6
    }

    fn bytes(&self, slot: u32) -> lb_common::connlog::FlowBytes {
        self.bytes.get(&slot, 0).unwrap_or_default()
    }

    fn live(&self) -> Vec<lb_common::VipLive> {
        self.live.read_all()
    }

    fn sub_used(&self, row: u32, r: usize, n: u64) {
        let _ = self
            .live
            .word64_at(row as usize, lb_common::VipLive::used_offset(r))
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    fn release_cookies(&self, vip_id: u32, now: u64) {
        let i = vip_id as usize;
        // The budget first: a SYN right after the mark is gone finds room.
        self.live
            .word64_at(i, lb_common::VipLive::SYN_TAT_OFFSET)
            .store(now, Ordering::Relaxed);
        self.live
            .word64_at(i, lb_common::VipLive::ENGAGED_OFFSET)
            .store(0, Ordering::Release);
    }

    fn store_port_maps(&self, taken: &[u64], min: u16, max: u16) {
        for (i, w) in taken.iter().take(self.port_bits.entries()).enumerate() {
            self.port_bits.store64(i, *w);
        }
        let full = crate::dataplane::port_full_words(taken, min, max);
        for (i, w) in full.iter().take(self.port_full.entries()).enumerate() {
            self.port_full.store64(i, *w);
        }
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
}
