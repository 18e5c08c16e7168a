//! In-memory stand-ins for the kernel maps, for host tests of the controller and expiry: no
//! root, no kernel, and writes can be made to fail on purpose.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Result, bail};
use lb_common::{BackendStats, Flow4Key, FlowEntry, FlowRef, Reason, VipStats, slot};

use super::{Counters, Flows, Image, Maps, RefTable, Write};

/// Configuration maps as an `Image`, with every write recorded.
#[derive(Clone, Default)]
pub struct FakeMaps {
    pub image: Arc<Mutex<Image>>,
    /// Every write made, in order.
    pub log: Arc<Mutex<Vec<Write>>>,
    /// Fail the write with this 0-based number (counting all writes), once.
    pub fail_at: Arc<Mutex<Option<usize>>>,
    writes: Arc<AtomicUsize>,
}

impl FakeMaps {
    /// Maps already holding `image` (a data plane adopted from pins).
    pub fn holding(image: Image) -> Self {
        let f = FakeMaps::default();
        *f.image.lock().unwrap() = image;
        f
    }

    pub fn image(&self) -> Image {
        self.image.lock().unwrap().clone()
    }

    /// Makes the `n`-th write from now fail.
    pub fn fail_in(&self, n: usize) {
        *self.fail_at.lock().unwrap() = Some(self.writes.load(Ordering::SeqCst) + n);
    }

    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl Maps for FakeMaps {
    fn write(&mut self, w: &Write) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        let mut fail = self.fail_at.lock().unwrap();
        if *fail == Some(n) {
            *fail = None;
            bail!("injected failure of write {n} ({w:?})");
        }
        self.image.lock().unwrap().apply(w);
        self.log.lock().unwrap().push(w.clone());
        Ok(())
    }

    fn read(&self) -> Result<Image> {
        Ok(self.image())
    }
}

/// Counters set by the test.
#[derive(Default)]
pub struct FakeCounters {
    pub reasons: Mutex<Vec<u64>>,
    pub vips: Mutex<HashMap<u32, VipStats>>,
    pub proxy: Mutex<HashMap<u32, lb_common::ProxyStats>>,
    pub backends: Mutex<HashMap<u32, BackendStats>>,
    pub passive: Mutex<HashMap<u32, lb_common::PassiveStats>>,
    /// (backend id, kind) → histogram.
    pub rtt: Mutex<HashMap<(u32, u32), lb_common::rtt::RttRow>>,
}

impl Counters for FakeCounters {
    fn reasons(&self) -> Result<Vec<u64>> {
        let mut r = self.reasons.lock().unwrap().clone();
        r.resize(Reason::COUNT as usize, 0);
        Ok(r)
    }
    fn vip(&self, id: u32) -> Result<VipStats> {
        Ok(self
            .vips
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
    fn passive(&self, id: u32) -> Result<lb_common::PassiveStats> {
        Ok(self
            .passive
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
    fn proxy(&self, id: u32) -> Result<lb_common::ProxyStats> {
        Ok(self
            .proxy
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
    fn backend(&self, id: u32) -> Result<BackendStats> {
        Ok(self
            .backends
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
    fn conn_log_lost(&self) -> Result<u64> {
        Ok(0)
    }
    fn pin(&self, _table_id: u32) -> Result<lb_common::PinStats> {
        Ok(Default::default())
    }
    fn pin_rtt(&self, _table_id: u32) -> lb_common::rtt::RttRow {
        Default::default()
    }
    fn rtt(&self, backend_id: u32, kind: u32) -> lb_common::rtt::RttRow {
        self.rtt
            .lock()
            .unwrap()
            .get(&(backend_id, kind))
            .copied()
            .unwrap_or_default()
    }
}

/// A reference table in memory (for either key type).
pub struct FakeRefs<K>(pub Mutex<HashMap<K, FlowRef>>);

impl<K> Default for FakeRefs<K> {
    fn default() -> Self {
        FakeRefs(Mutex::new(HashMap::new()))
    }
}

impl<K: Copy + Eq + std::hash::Hash + Send> RefTable<K> for FakeRefs<K> {
    fn all(&self) -> Result<Vec<(K, FlowRef)>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn get(&self, key: &K) -> Result<Option<FlowRef>> {
        Ok(self.0.lock().unwrap().get(key).copied())
    }
    fn take(&self, key: &K) -> Result<Option<FlowRef>> {
        Ok(self.0.lock().unwrap().remove(key))
    }
    fn restore(&self, key: &K, r: &FlowRef) -> Result<()> {
        self.0.lock().unwrap().entry(*key).or_insert(*r);
        Ok(())
    }
}

/// A connection table in memory.
pub struct FakeFlows {
    pub table: Mutex<Vec<FlowEntry>>,
    pub refs: FakeRefs<Flow4Key>,
    pub refs6: FakeRefs<lb_common::Flow6Key>,
    pub full: Mutex<std::collections::BTreeSet<lb_common::SourceRateKey>>,
    /// What `store_port_maps` wrote: PORT_BITS, PORT_FULL.
    pub port_maps: Mutex<(Vec<u64>, Vec<u64>)>,
    /// VIP_LIVE.
    pub live: Mutex<Vec<lb_common::VipLive>>,
    max_flows: u32,
}

impl FakeFlows {
    pub fn new(slots: u32, max_flows: u32) -> Self {
        FakeFlows {
            table: Mutex::new(vec![FlowEntry::default(); slots as usize]),
            refs: FakeRefs::default(),
            refs6: FakeRefs::default(),
            full: Mutex::new(Default::default()),
            port_maps: Mutex::new(Default::default()),
            live: Mutex::new(vec![Default::default(); lb_common::MAX_VIPS as usize + 1]),
            max_flows,
        }
    }

    /// Puts a flow in `slot` the way the data path would: claim, fill, reference.
    pub fn insert(&self, slot: u32, mut e: FlowEntry) -> FlowRef {
        let token = slot::token(slot.wrapping_mul(2_654_435_761));
        e.owner = token;
        let r = FlowRef { slot, token };
        self.refs.0.lock().unwrap().insert(e.key_v4(), r);
        self.table.lock().unwrap()[slot as usize] = e;
        r
    }
}

impl Flows for FakeFlows {
    fn max_flows(&self) -> u32 {
        self.max_flows
    }
    fn slots(&self) -> u32 {
        self.table.lock().unwrap().len() as u32
    }
    fn entry(&self, slot: u32) -> FlowEntry {
        self.table.lock().unwrap()[slot as usize]
    }
    fn scan(&self, f: &mut dyn FnMut(u32, &FlowEntry)) {
        let t = self.table.lock().unwrap().clone();
        for (i, e) in t.iter().enumerate() {
            if e.owner != slot::FREE {
                f(i as u32, e);
            }
        }
    }
    fn swap_owner(&self, s: u32, from: u32, to: u32) -> bool {
        let mut t = self.table.lock().unwrap();
        if t[s as usize].owner != from {
            return false;
        }
        t[s as usize].owner = to;
        true
    }
    fn refs4(&self) -> &dyn RefTable<Flow4Key> {
        &self.refs
    }
    fn refs6(&self) -> &dyn RefTable<lb_common::Flow6Key> {
        &self.refs6
    }
    fn set_full_sources(
        &self,
        full: &std::collections::BTreeSet<lb_common::SourceRateKey>,
    ) -> Result<()> {
        *self.full.lock().unwrap() = full.clone();
        Ok(())
    }
    fn bytes(&self, _slot: u32) -> lb_common::connlog::FlowBytes {
        Default::default()
    }
    fn live(&self) -> Vec<lb_common::VipLive> {
        self.live.lock().unwrap().clone()
    }
    fn sub_used(&self, row: u32, r: usize, n: u64) {
        let mut l = self.live.lock().unwrap();
        let u = &mut l[row as usize].used[r];
        *u = u.saturating_sub(n);
    }
    fn release_cookies(&self, vip_id: u32, now: u64) {
        let mut l = self.live.lock().unwrap();
        l[vip_id as usize].cookies_engaged_ns = 0;
        l[vip_id as usize].syn_tat_ns = now;
    }
    fn store_port_maps(&self, taken: &[u64], min: u16, max: u16) {
        *self.port_maps.lock().unwrap() = (taken.to_vec(), super::port_full_words(taken, min, max));
    }
}
