//! The controller's view of the kernel maps, behind small traits so the controller can be
//! tested against an in-memory fake:
//! - [`Maps`]: the configuration maps, as an [`Image`] (what they hold) changed by [`Write`]s.
//!   `Image::diff` orders writes so a packet never sees a half-made change (a table before the
//!   VIP that uses it, a VIP before its address is classified, and the reverse when removing),
//!   and every write returns its undo, so a failure midway rolls back (see `controller::txn`).
//! - [`Counters`]: per-CPU counters, read by reports and metrics without the controller.
//! - [`Flows`]: the connection table, read by listings and changed only by expiry.

pub mod fake;
pub mod kernel;
pub mod links;
mod tables;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use anyhow::Result;
use lb_common::{
    AddrClass, Backend, BackendStats, DataplaneConfig, FilterBucket6, Flow4Key, Flow6Key,
    FlowEntry, FlowRef, PinStats, PinTarget, SnatAddr, SourceKey4, SourceRateKey, Vip4Key, Vip6Key,
    VipInfo, VipLimits, VipMeta, VipStats,
};

/// One change to a configuration map. `None` / zero values remove or clear.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Backend(u32, Backend),
    SnatAddr(u32, SnatAddr),
    Table(u32, Option<Arc<Vec<u32>>>),
    VipInfo(u32, VipInfo),
    Vip(Vip4Key, Option<VipMeta>),
    Addr(u32, Option<AddrClass>),
    /// An IPv6 VIP (`VIPS6`) and an IPv6 address of ours (`ADDRS6`).
    Vip6(Vip6Key, Option<VipMeta>),
    Addr6([u32; 4], Option<AddrClass>),
    Filter(u32, u64),
    /// An `ADDR_FILTER6` bucket (all zero: empty).
    Filter6(u32, FilterBucket6),
    /// `None` clears an entry beyond the pick count.
    SnatPick(u32, Option<u32>),
    /// The same for IPv6 SNAT addresses (`SNAT_PICKS` from `MAX_SNAT_ADDRS`).
    SnatPick6(u32, Option<u32>),
    TxPort(u32, bool),
    IfaceMtu(u32, Option<u32>),
    Config(DataplaneConfig),
    /// A deny/allow entry: (VIP id + network, CIDR length) → `source_list::*`.
    Source((SourceKey4, u8), Option<u32>),
    VipLimits(u32, Option<VipLimits>),
    /// A pinned prefix: (VIP id + network, CIDR length) → its table.
    Pin((SourceKey4, u8), Option<PinTarget>),
}

impl Write {
    /// Whether the write takes something away (it then goes after everything that stops using
    /// it, in the second phase of a diff).
    fn shrinks(&self) -> bool {
        match self {
            Write::Backend(_, b) => b.flags & Backend::ACTIVE == 0,
            Write::SnatAddr(_, a) => *a == SnatAddr::default(),
            Write::Table(_, t) => t.is_none(),
            Write::VipInfo(_, i) => *i == VipInfo::default(),
            Write::Vip(_, m) | Write::Vip6(_, m) => m.is_none(),
            Write::Addr(_, c) | Write::Addr6(_, c) => c.is_none(),
            Write::Filter(_, v) => *v == 0,
            Write::Filter6(_, b) => *b == FilterBucket6::default(),
            Write::TxPort(_, on) => !on,
            Write::IfaceMtu(_, m) => m.is_none(),
            Write::Source(_, v) => v.is_none(),
            Write::Pin(_, v) => v.is_none(),
            Write::VipLimits(_, v) => v.is_none(),
            Write::SnatPick(..) | Write::SnatPick6(..) | Write::Config(_) => false,
        }
    }

    /// Position in the dependency order of the first phase (things used come first).
    fn grow_rank(&self) -> u8 {
        match self {
            Write::Backend(..) => 0,
            Write::SnatAddr(..) => 1,
            Write::Table(..) => 2,
            Write::VipInfo(..) | Write::Source(..) | Write::VipLimits(..) | Write::Pin(..) => 3,
            Write::Vip(..) | Write::Vip6(..) => 4,
            Write::Addr(..) | Write::Addr6(..) => 5,
            Write::Filter(..) | Write::Filter6(..) => 6,
            Write::SnatPick(..) | Write::SnatPick6(..) => 7,
            Write::TxPort(..) => 8,
            Write::IfaceMtu(..) => 9,
            Write::Config(_) => 10,
        }
    }

    /// Position in the second phase: users are taken away before what they use.
    fn shrink_rank(&self) -> u8 {
        match self {
            Write::Filter(..) | Write::Filter6(..) => 0,
            Write::Addr(..) | Write::Addr6(..) => 1,
            Write::Vip(..) | Write::Vip6(..) => 2,
            Write::VipInfo(..) | Write::Source(..) | Write::VipLimits(..) | Write::Pin(..) => 3,
            Write::Table(..) => 4,
            Write::Backend(..) => 5,
            Write::SnatAddr(..) => 6,
            _ => 7,
        }
    }
}

/// What the configuration maps hold. Empty entries are absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Image {
    pub config: DataplaneConfig,
    pub snat: BTreeMap<u32, SnatAddr>,
    pub snat_pick: BTreeMap<u32, u32>,
    pub snat_pick6: BTreeMap<u32, u32>,
    pub addrs: BTreeMap<u32, AddrClass>,
    pub filter: BTreeMap<u32, u64>,
    pub filter6: BTreeMap<u32, FilterBucket6>,
    pub vips: BTreeMap<Vip4Key, VipMeta>,
    pub addrs6: BTreeMap<[u32; 4], AddrClass>,
    pub vips6: BTreeMap<Vip6Key, VipMeta>,
    pub vip_info: BTreeMap<u32, VipInfo>,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, Arc<Vec<u32>>>,
    pub tx_ports: BTreeSet<u32>,
    pub iface_mtu: BTreeMap<u32, u32>,
    pub sources: BTreeMap<(SourceKey4, u8), u32>,
    pub vip_limits: BTreeMap<u32, VipLimits>,
    pub pins: BTreeMap<(SourceKey4, u8), PinTarget>,
}

fn diff_map<K: Ord + Copy, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    out: &mut Vec<Write>,
    set: impl Fn(K, Option<V>) -> Write,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(set(*k, Some(v.clone())));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(set(*k, None));
        }
    }
}

impl Image {
    /// The writes that turn `self` into `new`, in a safe order: first everything that adds or
    /// replaces (dependencies first), then everything that removes (users first).
    pub fn diff(&self, new: &Image) -> Vec<Write> {
        let mut w = Vec::new();
        diff_map(&self.backends, &new.backends, &mut w, |k, v| {
            Write::Backend(k, v.unwrap_or_default())
        });
        diff_map(&self.snat, &new.snat, &mut w, |k, v| {
            Write::SnatAddr(k, v.unwrap_or_default())
        });
        diff_map(&self.tables, &new.tables, &mut w, Write::Table);
        diff_map(&self.vip_info, &new.vip_info, &mut w, |k, v| {
            Write::VipInfo(k, v.unwrap_or_default())
        });
        diff_map(&self.vips, &new.vips, &mut w, Write::Vip);
        diff_map(&self.addrs, &new.addrs, &mut w, Write::Addr);
        diff_map(&self.vips6, &new.vips6, &mut w, Write::Vip6);
        diff_map(&self.addrs6, &new.addrs6, &mut w, Write::Addr6);
        diff_map(&self.filter, &new.filter, &mut w, |k, v| {
            Write::Filter(k, v.unwrap_or(0))
        });
        diff_map(&self.filter6, &new.filter6, &mut w, |k, v| {
            Write::Filter6(k, v.unwrap_or_default())
        });
        diff_map(&self.snat_pick, &new.snat_pick, &mut w, Write::SnatPick);
        diff_map(&self.snat_pick6, &new.snat_pick6, &mut w, Write::SnatPick6);
        for p in new.tx_ports.difference(&self.tx_ports) {
            w.push(Write::TxPort(*p, true));
        }
        for p in self.tx_ports.difference(&new.tx_ports) {
            w.push(Write::TxPort(*p, false));
        }
        diff_map(&self.iface_mtu, &new.iface_mtu, &mut w, Write::IfaceMtu);
        diff_map(&self.sources, &new.sources, &mut w, Write::Source);
        diff_map(&self.vip_limits, &new.vip_limits, &mut w, Write::VipLimits);
        diff_map(&self.pins, &new.pins, &mut w, Write::Pin);
        if self.config != new.config {
            w.push(Write::Config(new.config));
        }
        let (mut shrink, mut grow): (Vec<Write>, Vec<Write>) =
            w.into_iter().partition(Write::shrinks);
        grow.sort_by_key(Write::grow_rank);
        shrink.sort_by_key(Write::shrink_rank);
        grow.extend(shrink);
        grow
    }

    /// The image after `w`.
    pub fn apply(&mut self, w: &Write) {
        fn put<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k);
                }
            }
        }
        match w.clone() {
            Write::Backend(k, b) => put(
                &mut self.backends,
                k,
                (b != Backend::default()).then_some(b),
            ),
            Write::SnatAddr(k, a) => {
                put(&mut self.snat, k, (a != SnatAddr::default()).then_some(a))
            }
            Write::Table(k, t) => put(&mut self.tables, k, t),
            Write::VipInfo(k, i) => put(
                &mut self.vip_info,
                k,
                (i != VipInfo::default()).then_some(i),
            ),
            Write::Vip(k, m) => put(&mut self.vips, k, m),
            Write::Addr(k, c) => put(&mut self.addrs, k, c),
            Write::Vip6(k, m) => put(&mut self.vips6, k, m),
            Write::Addr6(k, c) => put(&mut self.addrs6, k, c),
            Write::Filter(k, v) => put(&mut self.filter, k, (v != 0).then_some(v)),
            Write::Filter6(k, b) => put(
                &mut self.filter6,
                k,
                (b != FilterBucket6::default()).then_some(b),
            ),
            Write::SnatPick(k, v) => put(&mut self.snat_pick, k, v),
            Write::SnatPick6(k, v) => put(&mut self.snat_pick6, k, v),
            Write::TxPort(k, on) => {
                if on {
                    self.tx_ports.insert(k);
                } else {
                    self.tx_ports.remove(&k);
                }
            }
            Write::IfaceMtu(k, m) => put(&mut self.iface_mtu, k, m),
            Write::Config(c) => self.config = c,
            Write::Source(k, v) => put(&mut self.sources, k, v),
            Write::VipLimits(k, v) => put(&mut self.vip_limits, k, v),
            Write::Pin(k, v) => put(&mut self.pins, k, v),
        }
    }

    /// The write that puts back what `self` holds where `w` writes.
    pub fn undo_of(&self, w: &Write) -> Write {
        match w {
            Write::Backend(k, _) => {
                Write::Backend(*k, self.backends.get(k).copied().unwrap_or_default())
            }
            Write::SnatAddr(k, _) => {
                Write::SnatAddr(*k, self.snat.get(k).copied().unwrap_or_default())
            }
            Write::Table(k, _) => Write::Table(*k, self.tables.get(k).cloned()),
            Write::VipInfo(k, _) => {
                Write::VipInfo(*k, self.vip_info.get(k).copied().unwrap_or_default())
            }
            Write::Vip(k, _) => Write::Vip(*k, self.vips.get(k).copied()),
            Write::Addr(k, _) => Write::Addr(*k, self.addrs.get(k).copied()),
            Write::Vip6(k, _) => Write::Vip6(*k, self.vips6.get(k).copied()),
            Write::Addr6(k, _) => Write::Addr6(*k, self.addrs6.get(k).copied()),
            Write::Filter(k, _) => Write::Filter(*k, self.filter.get(k).copied().unwrap_or(0)),
            Write::Filter6(k, _) => {
                Write::Filter6(*k, self.filter6.get(k).copied().unwrap_or_default())
            }
            Write::SnatPick(k, _) => Write::SnatPick(*k, self.snat_pick.get(k).copied()),
            Write::SnatPick6(k, _) => Write::SnatPick6(*k, self.snat_pick6.get(k).copied()),
            Write::TxPort(k, _) => Write::TxPort(*k, self.tx_ports.contains(k)),
            Write::IfaceMtu(k, _) => Write::IfaceMtu(*k, self.iface_mtu.get(k).copied()),
            Write::Config(_) => Write::Config(self.config),
            Write::Source(k, _) => Write::Source(*k, self.sources.get(k).copied()),
            Write::VipLimits(k, _) => Write::VipLimits(*k, self.vip_limits.get(k).copied()),
            Write::Pin(k, _) => Write::Pin(*k, self.pins.get(k).copied()),
        }
    }
}

/// The configuration maps.
pub trait Maps: Send {
    /// Makes one change.
    fn write(&mut self, w: &Write) -> Result<()>;
    /// What the maps hold now (adoption after a restart reads it once).
    fn read(&self) -> Result<Image>;
}

/// The per-CPU counters, summed over CPUs.
pub trait Counters: Send + Sync {
    /// Indexed by `Reason as usize`.
    fn reasons(&self) -> Result<Vec<u64>>;
    fn vip(&self, id: u32) -> Result<VipStats>;
    /// A VIP's PROXY protocol counters.
    fn proxy(&self, id: u32) -> Result<lb_common::ProxyStats>;
    fn backend(&self, id: u32) -> Result<BackendStats>;
    /// A backend's passive health signal (refusals, SYN retransmissions).
    fn passive(&self, id: u32) -> Result<lb_common::PassiveStats>;
    /// Connection-log records the data path lost to a full ring buffer.
    fn conn_log_lost(&self) -> Result<u64>;
    /// A pin's counters, by its table id.
    fn pin(&self, table_id: u32) -> Result<PinStats>;
    /// Client ↔ edge round trips of a pin's clients (`lb_common::rtt`), by its table id.
    fn pin_rtt(&self, table_id: u32) -> lb_common::rtt::RttRow;
    /// A backend's handshake round-trip histogram of one kind (`lb_common::rtt`).
    fn rtt(&self, backend_id: u32, kind: u32) -> lb_common::rtt::RttRow;
}

/// A reference table of the connection table (`FLOWS4`, `FLOWS6`): client tuple → the claim of
/// the slot that holds the flow. One definition for both key types.
pub trait RefTable<K>: Send + Sync {
    /// Every entry.
    fn all(&self) -> Result<Vec<(K, FlowRef)>>;
    fn get(&self, key: &K) -> Result<Option<FlowRef>>;
    /// Removes an entry, returning what it held.
    fn take(&self, key: &K) -> Result<Option<FlowRef>>;
    /// Puts an entry back unless the key has one (undoing a `take` that took a newer flow).
    fn restore(&self, key: &K, r: &FlowRef) -> Result<()>;
}

/// The connection table: `FLOWS4`/`FLOWS6` (client tuple → slot) and `FLOW_TABLE` (slot → flow).
pub trait Flows: Send + Sync {
    /// Capacity of FLOWS4.
    fn max_flows(&self) -> u32;
    /// Number of slots of FLOW_TABLE.
    fn slots(&self) -> u32;
    /// A snapshot copy of one slot.
    fn entry(&self, slot: u32) -> FlowEntry;
    /// Calls `f` for every slot whose owner word is not free (live, or being expired).
    fn scan(&self, f: &mut dyn FnMut(u32, &FlowEntry));
    /// Atomically replaces a slot's owner word `from` → `to`; false when it held something else.
    fn swap_owner(&self, slot: u32, from: u32, to: u32) -> bool;
    /// FLOWS4: IPv4 clients' tuples → slot claims.
    fn refs4(&self) -> &dyn RefTable<Flow4Key>;
    /// FLOWS6: IPv6 clients' tuples → slot claims.
    fn refs6(&self) -> &dyn RefTable<Flow6Key>;
    /// A flow's packets and payload bytes each way (zero while the connection log is off).
    fn bytes(&self, slot: u32) -> lb_common::connlog::FlowBytes;
    /// Makes SOURCE_FULL hold exactly `full`: the sources at their VIP's concurrent limit.
    fn set_full_sources(&self, full: &BTreeSet<SourceRateKey>) -> Result<()>;
    /// Rewrites the port bitmaps (`PORT_BITS`, and `PORT_FULL` for the ports `min..=max`) from
    /// `taken`: a bit per slot, set for every slot that is not free (see lb_common::portmap).
    fn store_port_maps(&self, taken: &[u64], min: u16, max: u16);
    /// VIP_LIVE: every VIP's row, then the row of all of them (index `MAX_VIPS`).
    fn live(&self) -> Vec<lb_common::VipLive>;
    /// Takes `n` off row `row`'s count of pool `r`, not below 0 (atomically: the data path
    /// adds to it meanwhile).
    fn sub_used(&self, row: u32, r: usize, n: u64);
    /// Releases the data path's cookie mode for VIP `vip_id`: clears its mark and starts its
    /// half-open budget afresh at `now` (CLOCK_MONOTONIC ns).
    fn release_cookies(&self, vip_id: u32, now: u64);
}

/// `PORT_FULL` for the `PORT_BITS` words `taken` (every SNAT address's, one after the other).
pub fn port_full_words(taken: &[u64], min: u16, max: u16) -> Vec<u64> {
    use lb_common::portmap::{FULL_WORDS, WORDS_PER_ADDR, full_word};
    taken
        .chunks(WORDS_PER_ADDR as usize)
        .flat_map(|addr| (0..FULL_WORDS).map(move |f| full_word(addr, f, min, max)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(active: bool) -> Backend {
        Backend::new(
            lb_common::Addr::v4([10, 0, 0, 1]),
            5100,
            lb_common::FAMILY_IPV4,
            if active { Backend::ACTIVE } else { 0 },
            0,
        )
    }

    #[test]
    fn a_new_vip_goes_live_only_after_its_backends_and_table() {
        let old = Image::default();
        let mut new = Image::default();
        let key = Vip4Key::new(1, 5100, 6);
        new.backends.insert(3, backend(true));
        new.tables.insert(0, Arc::new(vec![3; 7]));
        new.vips.insert(
            key,
            VipMeta {
                vip_id: 0,
                flags: 0,
            },
        );
        new.addrs.insert(
            1,
            AddrClass {
                flags: AddrClass::VIP,
                snat_index: 0,
            },
        );
        new.filter.insert(9, 77);
        let w = old.diff(&new);
        let pos = |f: &dyn Fn(&Write) -> bool| w.iter().position(f).unwrap();
        let b = pos(&|x| matches!(x, Write::Backend(..)));
        let t = pos(&|x| matches!(x, Write::Table(..)));
        let v = pos(&|x| matches!(x, Write::Vip(..)));
        let a = pos(&|x| matches!(x, Write::Addr(..)));
        let f = pos(&|x| matches!(x, Write::Filter(..)));
        assert!(b < t && t < v && v < a && a < f, "{w:#?}");
        // Removing it all again: the address stops being ours first, the backend goes last.
        let back = new.diff(&old);
        let pos = |f: &dyn Fn(&Write) -> bool| back.iter().position(f).unwrap();
        let f = pos(&|x| matches!(x, Write::Filter(..)));
        let v = pos(&|x| matches!(x, Write::Vip(..)));
        let t = pos(&|x| matches!(x, Write::Table(..)));
        let b = pos(&|x| matches!(x, Write::Backend(..)));
        assert!(f < v && v < t && t < b, "{back:#?}");
    }

    #[test]
    fn retiring_a_backend_waits_for_the_table_that_drops_it() {
        let mut old = Image::default();
        old.backends.insert(1, backend(true));
        old.tables.insert(0, Arc::new(vec![1; 7]));
        let mut new = old.clone();
        new.backends.insert(1, backend(false));
        new.tables.insert(0, Arc::new(vec![2; 7]));
        let w = old.diff(&new);
        assert!(matches!(w[0], Write::Table(..)), "{w:#?}");
        assert!(matches!(w[1], Write::Backend(..)), "{w:#?}");
    }

    #[test]
    fn applying_a_diff_or_its_undos_gives_the_images_back() {
        let mut a = Image::default();
        a.backends.insert(1, backend(true));
        a.snat_pick.insert(0, 4);
        a.tx_ports.insert(7);
        let mut b = Image::default();
        b.backends.insert(2, backend(true));
        b.config.snat_count = 1;
        b.iface_mtu.insert(7, 1400);
        let mut cur = a.clone();
        let mut undo = Vec::new();
        for w in a.diff(&b) {
            undo.push(cur.undo_of(&w));
            cur.apply(&w);
        }
        assert_eq!(cur, b);
        for u in undo.iter().rev() {
            cur.apply(u);
        }
        assert_eq!(cur, a);
        assert!(a.diff(&a).is_empty());
    }
}
