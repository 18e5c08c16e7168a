//! The per-CPU counters behind the `Counters` trait, summed over CPUs; the round-trip
//! histograms memory-mapped.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use lb_common::{BackendStats, PassiveStats, PinStats, ProxyStats, Reason, VipStats, names};

use super::take;
use crate::{dataplane::Counters, sys::bpf::Mmap};

/// The per-CPU counters.
pub struct KernelCounters {
    reasons: PerCpuArray<MapData, u64>,
    vips: PerCpuArray<MapData, VipStats>,
    proxy: PerCpuArray<MapData, ProxyStats>,
    passive: PerCpuArray<MapData, PassiveStats>,
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
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
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
            proxy: typed!(ebpf, names::PROXY_STATS),
            passive: typed!(ebpf, names::PASSIVE_STATS),
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

    fn proxy(&self, id: u32) -> Result<ProxyStats> {
        Ok(self
            .proxy
            .get(&id, 0)?
            .iter()
            .fold(ProxyStats::default(), |mut t, s| {
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

    fn passive(&self, id: u32) -> Result<PassiveStats> {
        Ok(self
            .passive
            .get(&id, 0)?
            .iter()
            .fold(PassiveStats::default(), |mut t, s| {
                t.add(s);
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
