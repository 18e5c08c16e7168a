//! What the controller knows: VIPs, their backends and health, SNAT addresses, interfaces, and
//! the ids each holds in the data plane. Cloned before every change, so a change that fails
//! leaves the previous state in place.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Result, anyhow};
use lb_common::{MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SNAT_ADDRS, MAX_VIPS, NO_BACKEND, maglev};

use super::plan::{self, TableMode};
use crate::{
    config::{Config, CookieMode, HealthCheck, Pin, Protocol, Vip},
    health::{Health, Status},
};

#[derive(Clone, Debug)]
pub struct BackendState {
    pub address: IpAddr,
    pub port: u16,
    /// Current weight: the configured one, or what the CLI set (drain = 0).
    pub weight: u32,
    pub configured_weight: u32,
    pub id: u32,
    pub health: Health,
    pub last_rtt: Option<Duration>,
    pub last_error: Option<String>,
}

impl BackendState {
    pub fn status(&self) -> crate::health::Status {
        self.health.status
    }

    /// The last probe's round trip in milliseconds (None: never probed).
    pub fn probe_rtt_ms(&self) -> Option<f64> {
        self.last_rtt.map(|d| d.as_secs_f64() * 1000.0)
    }

    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// Stable identity for Maglev (its permutation survives id changes and restarts).
    pub fn key(&self) -> String {
        self.socket().to_string()
    }
}

/// A VIP as the controller runs it: its configuration (`spec`) and what the controller and the
/// probes add (ids, live backends with their health, tables, cookie state, pins' tables). The
/// snapshot that reports, /metrics and `lookup` read holds these too.
#[derive(Clone, Debug)]
pub struct VipState {
    /// The VIP's configuration: the file's, with CLI edits to its source lists and groups until
    /// the next reload. `spec.backends` is left empty: the live backends are `backends`.
    pub spec: Vip,
    pub id: u32,
    pub backends: Vec<BackendState>,
    /// Rebuilt from pinned maps and not yet matched with the config.
    pub adopted: bool,
    /// The table as last built, and the members and mode it was built from.
    pub table: Arc<Vec<u32>>,
    pub members: Vec<maglev::Member>,
    pub mode: TableMode,
    /// `auto` mode is engaged now (set by the SYN-pressure watch).
    pub cookies_engaged: bool,
    /// When `cookies_engaged` last changed.
    pub cookies_changed: Option<std::time::SystemTime>,
    /// Source prefixes pinned to groups, each with a table of its own.
    pub pins: Vec<PinState>,
}

/// A pin and its Maglev table.
#[derive(Clone, Debug)]
pub struct PinState {
    pub cfg: Pin,
    /// Its table's id, from the VIP id space (MAGLEV, TABLE_SEL, PIN_STATS).
    pub table_id: u32,
    pub table: Arc<Vec<u32>>,
    pub members: Vec<maglev::Member>,
}

impl VipState {
    /// A VIP with id `id`, no live backend and an empty table yet. `spec.backends` is dropped
    /// (the live backends are added as `BackendState`s).
    pub fn new(spec: Vip, id: u32) -> Self {
        VipState {
            spec: Vip {
                backends: Vec::new(),
                ..spec
            },
            id,
            backends: Vec::new(),
            adopted: false,
            table: VipState::empty_table(),
            members: Vec::new(),
            mode: Default::default(),
            cookies_engaged: false,
            cookies_changed: None,
            pins: Vec::new(),
        }
    }

    /// The data path answers this VIP's SYNs with cookies now.
    pub const fn cookies_on(&self) -> bool {
        match self.spec.syn_cookies {
            CookieMode::Off => false,
            CookieMode::Always => true,
            CookieMode::Auto => self.cookies_engaged,
        }
    }

    pub fn tuple(&self) -> (IpAddr, u16, Protocol) {
        (self.spec.address, self.spec.port, self.spec.protocol)
    }

    /// Rebuilds the Maglev table if its members changed (health, weight, set).
    pub fn refresh_table(&mut self) {
        let (members, mode) = plan::members(self);
        self.mode = mode;
        if members == self.members && self.table.len() == MAGLEV_TABLE_SIZE as usize {
            return;
        }
        self.table = Arc::new(maglev::build_table(&members, MAGLEV_TABLE_SIZE));
        self.members = members;
    }

    /// Rebuilds the pins' tables whose members changed.
    pub fn refresh_pins(&mut self) {
        for i in 0..self.pins.len() {
            let members = plan::pin_members(self, &self.pins[i].cfg);
            let p = &mut self.pins[i];
            if members == p.members && p.table.len() == MAGLEV_TABLE_SIZE as usize {
                continue;
            }
            p.table = Arc::new(maglev::build_table(&members, MAGLEV_TABLE_SIZE));
            p.members = members;
        }
    }

    /// Backend ids in the live table.
    pub fn in_table(&self) -> BTreeSet<u32> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Whether backend `id` is in the live table.
    pub fn has_in_table(&self, id: u32) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Priority levels with their health and load, as the table was built.
    pub fn levels(&self) -> Vec<plan::Level> {
        plan::level_loads(self)
    }

    /// The pin whose prefix is the longest match for `client` (the data path's LPM answer).
    pub fn pin_of(&self, client: std::net::Ipv4Addr) -> Option<&PinState> {
        self.pins
            .iter()
            .flat_map(|p| p.cfg.sources.iter().map(move |n| (n, p)))
            .filter(|(n, _)| n.contains(&client))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, p)| p)
    }

    pub fn empty_table() -> Arc<Vec<u32>> {
        Arc::new(vec![NO_BACKEND; MAGLEV_TABLE_SIZE as usize])
    }
}

/// A SNAT address and its index (the high half of its flow slots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatState {
    pub address: IpAddr,
    /// New flows may take it; false while a removed address's flows drain.
    pub active: bool,
    /// While draining: the ports its flows still hold, as the last expiry pass counted them
    /// (None until a pass has: its whole range is assumed held).
    pub held: Option<u64>,
}

/// An interface the program runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
}

#[derive(Clone, Debug)]
pub struct State {
    pub cfg: Config,
    pub vips: Vec<VipState>,
    /// Backend ids that left the configuration but may still be referenced by flows, with the
    /// entry to keep (inactive) and when they were retired. Freed by an expiry pass that started
    /// later and found no flow on them, so counters are never misattributed.
    pub retired_backends: BTreeMap<u32, (lb_common::Backend, u64)>,
    /// SNAT index → address; inactive ones wait for their flows to end.
    pub snat: BTreeMap<u32, (SnatState, u64)>,
    pub interfaces: Vec<Interface>,
    /// The first config has been applied: backends added from now on start pending.
    pub started: bool,
    /// This build's entry program is attached to every interface (PROXY protocol VIPs are
    /// programmed only from then on).
    pub entry_attached: bool,
}

/// Lowest id in `0..max` not in `used`.
pub fn lowest_free(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    (0..max).find(|i| !used.contains(i))
}

impl State {
    pub fn new(cfg: Config) -> Self {
        State {
            cfg,
            vips: Vec::new(),
            retired_backends: BTreeMap::new(),
            snat: BTreeMap::new(),
            interfaces: Vec::new(),
            started: false,
            entry_attached: false,
        }
    }

    pub fn vip_index(&self, name: &str) -> Result<usize> {
        self.vips
            .iter()
            .position(|v| v.spec.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.vips.iter().map(|v| v.spec.name.as_str()).collect();
                anyhow!("no VIP named {name:?} (known: {})", known.join(", "))
            })
    }

    pub fn backend_ids(&self) -> BTreeSet<u32> {
        let mut used: BTreeSet<u32> = self.retired_backends.keys().copied().collect();
        for v in &self.vips {
            used.extend(v.backends.iter().map(|b| b.id));
        }
        used
    }

    pub fn alloc_backend_id(&self) -> Result<u32> {
        lowest_free(&self.backend_ids(), MAX_BACKENDS).ok_or_else(|| {
            anyhow!(
                "all {MAX_BACKENDS} backend slots are in use (removed backends hold theirs until their flows end)"
            )
        })
    }

    /// A free id in the VIP id space (VIPs and pins' tables share it).
    pub fn alloc_vip_id(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self
            .vips
            .iter()
            .flat_map(|v| std::iter::once(v.id).chain(v.pins.iter().map(|p| p.table_id)))
            .collect();
        lowest_free(&used, MAX_VIPS).ok_or_else(|| anyhow!("all {MAX_VIPS} VIP slots are in use"))
    }

    pub fn alloc_snat_index(&self, capacity: u32) -> Result<u32> {
        let used: BTreeSet<u32> = self.snat.keys().copied().collect();
        lowest_free(&used, capacity.min(MAX_SNAT_ADDRS)).ok_or_else(|| {
            anyhow!(
                "the flow table has slots for {capacity} SNAT addresses and all are taken (removed ones hold theirs until their flows end); more need a restart after `wklb unload`, which breaks live connections"
            )
        })
    }

    /// Takes a backend out of service: its BACKENDS slot stays, inactive (a SYN on one of its
    /// flows then picks a live backend), until no flow references it.
    pub fn retire(&mut self, vip_id: u32, b: &BackendState, now: u64) {
        let entry = lb_common::Backend::new(
            lb_common::Addr::v4_word(super::image::word(b.address)),
            b.port,
            lb_common::FAMILY_IPV4,
            0,
            vip_id,
        );
        self.retired_backends.insert(b.id, (entry, now));
    }

    /// A new backend. At start-up it counts as up until probes say otherwise (the table must not
    /// shrink to the first backend that happens to pass its checks); added later (CLI, reload)
    /// it is pending until its probes pass. A VIP without health checks trusts it at once.
    pub fn new_backend(
        &self,
        address: IpAddr,
        port: u16,
        weight: u32,
        id: u32,
        hc: &HealthCheck,
    ) -> BackendState {
        let status = if hc.kind == crate::config::ProbeKind::None || !self.started {
            Status::Up
        } else {
            Status::Pending
        };
        BackendState {
            address,
            port,
            weight,
            configured_weight: weight,
            id,
            health: Health::new(hc.rise, hc.fall, status),
            last_rtt: None,
            last_error: None,
        }
    }
}
