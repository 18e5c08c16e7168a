//! Pure planning: which backends a VIP's table holds (health, weights, fail-open), and the whole
//! image the configuration maps must hold for a state. No kernel, no I/O: unit-tested here.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{
    ADDR_FILTER_SIZE, Addr, AddrClass, Backend, DataplaneConfig, FAMILY_IPV4, FilterBucket,
    FilterBucket6, PinTarget, SnatAddr, SourceKey4, Vip4Key, VipInfo, VipLimits, VipMeta,
    hash::filter_index, maglev::Member, mss, source_list,
};
use serde::Serialize;

use super::{
    priority,
    state::{State, VipState},
};
use crate::{
    config::{CookieMode, MssClamp, Protocol, SourceList},
    health::Status,
};

/// How a VIP's table was chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// The healthy backends.
    #[default]
    Normal,
    /// No backend has been probed enough yet: all of them, until the probes decide.
    Starting,
    /// Every backend that may take traffic is down: all of them anyway (WuKongIM's health is
    /// cluster-wide, so a leader election fails every node at once).
    FailOpen,
    /// No backend may take new flows (all drained).
    Empty,
}

/// The members of a VIP's table and why. Healthy backends of the preferred priority level take
/// every new flow until that level's health falls below 100 (`priority`); then each level's
/// share of the table is its load, split among its healthy backends by weight.
pub fn members(v: &VipState) -> (Vec<Member>, TableMode) {
    members_of(v, |_| true)
}

/// The members of a pin's table: its groups' backends by the same rules, restricted to them.
/// When none of them is healthy the table is empty (its clients are refused, or spill), unless
/// the whole VIP is failing open or starting: a cluster-wide health failure fails open inside
/// the boundary too.
pub fn pin_members(v: &VipState, pin: &crate::config::Pin) -> Vec<Member> {
    let (m, mode) = members_of(v, |b| {
        pin.groups
            .iter()
            .any(|g| g == v.groups.group_of(b.address, b.port))
    });
    match mode {
        TableMode::Normal => m,
        TableMode::FailOpen | TableMode::Starting
            if matches!(v.mode, TableMode::FailOpen | TableMode::Starting) =>
        {
            m
        }
        _ => Vec::new(),
    }
}

fn members_of(
    v: &VipState,
    keep: impl Fn(&super::state::BackendState) -> bool,
) -> (Vec<Member>, TableMode) {
    let eligible: Vec<_> = v
        .backends
        .iter()
        .filter(|b| b.weight > 0 && keep(b))
        .collect();
    let member = |b: &super::state::BackendState, weight: u32| Member {
        id: b.id,
        key: b.key(),
        weight,
    };
    if eligible.is_empty() {
        return (Vec::new(), TableMode::Empty);
    }
    if !eligible.iter().any(|b| b.health.status == Status::Up) {
        let all = eligible.iter().map(|b| member(b, b.weight)).collect();
        return if eligible.iter().any(|b| b.health.status == Status::Down) {
            (all, TableMode::FailOpen)
        } else {
            (all, TableMode::Starting)
        };
    }
    let levels = level_loads_of(v, &eligible);
    let loaded: Vec<&Level> = levels.iter().filter(|l| l.load_pct > 0).collect();
    let up = |b: &&super::state::BackendState, l: &Level| {
        b.health.status == Status::Up && v.groups.priority_of(b.address, b.port) == l.priority
    };
    let mut out = Vec::new();
    for l in &loaded {
        let level_up: Vec<_> = eligible.iter().filter(|b| up(b, l)).collect();
        let weight_up: u64 = level_up.iter().map(|b| b.weight as u64).sum();
        for b in level_up {
            // One loaded level keeps the configured weights (the table of a VIP without
            // groups is what it always was); several share the table by their loads.
            let w = if loaded.len() == 1 {
                b.weight
            } else {
                (b.weight as u64 * l.load_pct as u64 * 10_000 / weight_up.max(1)).max(1) as u32
            };
            out.push(member(b, w));
        }
    }
    (out, TableMode::Normal)
}

/// A priority level of a VIP: its eligible and healthy backends, health and load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub priority: u32,
    /// Backends with weight > 0.
    pub backends: u32,
    pub healthy: u32,
    pub health_pct: u32,
    /// Percent of new flows it gets (0 for every level in fail-open: all backends share then).
    pub load_pct: u32,
}

/// The VIP's priority levels in order, with their loads.
pub fn level_loads(v: &VipState) -> Vec<Level> {
    let eligible: Vec<_> = v.backends.iter().filter(|b| b.weight > 0).collect();
    level_loads_of(v, &eligible)
}

fn level_loads_of(v: &VipState, eligible: &[&super::state::BackendState]) -> Vec<Level> {
    let mut levels: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for b in eligible {
        let e = levels
            .entry(v.groups.priority_of(b.address, b.port))
            .or_default();
        e.0 += 1;
        e.1 += (b.health.status == Status::Up) as u32;
    }
    let op = v.groups.overprovisioning_pct;
    let health: Vec<u32> = levels
        .values()
        .map(|(n, up)| priority::health(*up, *n, op))
        .collect();
    let loads = priority::loads(&health).unwrap_or_else(|| vec![0; health.len()]);
    levels
        .into_iter()
        .zip(health.iter().zip(loads))
        .map(|((priority, (backends, healthy)), (h, load))| Level {
            priority,
            backends,
            healthy,
            health_pct: *h,
            load_pct: load,
        })
        .collect()
}

/// An IPv4 address as the data path's native word (0 for IPv6: callers keep to IPv4).
pub fn word(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(_) => 0,
    }
}

/// Any address as the data path's 16-byte form (IPv4 in the first word).
fn addr(a: IpAddr) -> Addr {
    match a {
        IpAddr::V4(_) => Addr::v4_word(word(a)),
        IpAddr::V6(v6) => Addr {
            words: lb_common::words_of_v6(v6.octets()),
        },
    }
}

fn family(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => FAMILY_IPV4,
        IpAddr::V6(_) => lb_common::FAMILY_IPV6,
    }
}

/// Everything the configuration maps must hold for `s`. Tables come from `VipState::table`.
pub fn image(s: &State) -> super::super::dataplane::Image {
    let mut img = super::super::dataplane::Image {
        config: config(s),
        ..Default::default()
    };
    for (i, (snat, _)) in &s.snat {
        img.snat
            .insert(*i, SnatAddr::new(addr(snat.address), family(snat.address)));
    }
    // New flows take an active SNAT address of their backend's family.
    for (v6, picks) in [(false, &mut img.snat_pick), (true, &mut img.snat_pick6)] {
        for (k, i) in s
            .snat
            .iter()
            .filter(|(_, (n, _))| n.active && n.address.is_ipv6() == v6)
            .map(|(i, _)| *i)
            .enumerate()
        {
            picks.insert(k as u32, i);
        }
    }
    for (id, (b, _)) in &s.retired_backends {
        img.backends.insert(*id, *b);
    }
    for v in &s.vips {
        vip(&mut img, v);
    }
    img.addrs = addresses(s);
    for (i, (n, _)) in &s.snat {
        if n.address.is_ipv6() {
            let c = img.addrs6.entry(addr(n.address).words).or_default();
            c.flags |= AddrClass::SNAT;
            c.snat_index = *i as u16;
        }
    }
    img.filter6 = filter6(&img.addrs6);
    img.filter = filter(&img.addrs);
    for i in &s.interfaces {
        img.tx_ports.insert(i.ifindex);
        img.iface_mtu.insert(i.ifindex, i.mtu);
    }
    img
}

fn vip(img: &mut super::super::dataplane::Image, v: &VipState) {
    for b in &v.backends {
        img.backends.insert(
            b.id,
            Backend::new(
                addr(b.address),
                b.port,
                family(b.address),
                Backend::ACTIVE,
                v.id,
            ),
        );
    }
    img.tables.insert(v.id, Arc::clone(&v.table));
    for p in &v.pins {
        img.tables.insert(p.table_id, Arc::clone(&p.table));
        let target = PinTarget {
            table_id: p.table_id,
            flags: if p.cfg.spill { PinTarget::SPILL } else { 0 },
        };
        for net in &p.cfg.sources {
            let key = SourceKey4::new(v.id, u32::from_ne_bytes(net.network().octets()));
            img.pins.insert((key, net.prefix_len()), target);
        }
    }
    img.vip_info.insert(
        v.id,
        VipInfo {
            addr: addr(v.address),
            port: v.port,
            proto: v.protocol.number(),
            family: family(v.address),
            flags: 0,
        },
    );
    let mut flags = if v.mode == TableMode::FailOpen {
        VipMeta::FAIL_OPEN
    } else {
        0
    };
    if v.protocol == Protocol::Tcp && v.syn_cookies != CookieMode::Off {
        flags |= VipMeta::COOKIES_ALLOWED;
        if v.cookies_on() {
            flags |= VipMeta::COOKIES_ON;
        }
    }
    for (list, action) in [
        (SourceList::Deny, source_list::DENY),
        (SourceList::Allow, source_list::ALLOW),
    ] {
        for net in v.sources.list(list) {
            let key = SourceKey4::new(v.id, u32::from_ne_bytes(net.network().octets()));
            img.sources.insert((key, net.prefix_len()), action);
            flags |= VipMeta::SOURCE_LISTS;
        }
    }
    if v.sources.max_conns > 0 {
        flags |= VipMeta::CONN_LIMIT;
    }
    if !v.pins.is_empty() {
        flags |= VipMeta::PINNED;
    }
    if v.sources.rate > 0 {
        img.vip_limits
            .insert(v.id, VipLimits::new(v.sources.rate, v.sources.burst));
        flags |= VipMeta::RATE_LIMIT;
    }
    let meta = VipMeta {
        vip_id: v.id,
        flags,
    };
    match v.address {
        IpAddr::V4(_) => {
            img.vips.insert(
                Vip4Key::new(word(v.address), v.port, v.protocol.number()),
                meta,
            );
        }
        IpAddr::V6(_) => {
            let key = lb_common::Vip6Key::new(addr(v.address).words, v.port, v.protocol.number());
            img.vips6.insert(key, meta);
            let c = img.addrs6.entry(key.addr).or_default();
            c.flags |= AddrClass::VIP;
            if v.port == 0 {
                c.flags |= AddrClass::any_port_bit(v.protocol.number());
            }
        }
    }
}

fn config(s: &State) -> DataplaneConfig {
    let c = &s.cfg;
    let mut flags = 0;
    if c.conntrack.non_syn_pass {
        flags |= DataplaneConfig::NON_SYN_PASS;
    }
    if c.data_path.echo_reply {
        flags |= DataplaneConfig::ECHO_REPLY;
    }
    if c.daemon.log_data_path_events {
        flags |= DataplaneConfig::LOG_EVENTS;
    }
    if c.conn_log.is_some() {
        flags |= DataplaneConfig::CONN_LOG;
    }
    let (mss_mode, mss_value) = match c.data_path.mss_clamp {
        MssClamp::Off => (mss::OFF, 0),
        MssClamp::Auto => (mss::AUTO, 0),
        MssClamp::Fixed(v) => (mss::FIXED, v),
    };
    DataplaneConfig {
        snat_count: s
            .snat
            .values()
            .filter(|(n, _)| n.active && n.address.is_ipv4())
            .count() as u32,
        snat6_count: s
            .snat
            .values()
            .filter(|(n, _)| n.active && n.address.is_ipv6())
            .count() as u32,
        snat_port_min: c.snat.port_min,
        snat_port_max: c.snat.port_max,
        flags,
        mss_mode,
        mss_value,
        min_mtu: s.interfaces.iter().map(|i| i.mtu).min().unwrap_or(1500),
    }
}

/// Every address of ours and what it is: VIP addresses (with any-port bits) and SNAT addresses.
pub fn addresses(s: &State) -> BTreeMap<u32, AddrClass> {
    let mut out: BTreeMap<u32, AddrClass> = BTreeMap::new();
    for v in s.vips.iter().filter(|v| v.address.is_ipv4()) {
        let c = out.entry(word(v.address)).or_default();
        c.flags |= AddrClass::VIP;
        if v.port == 0 {
            c.flags |= AddrClass::any_port_bit(v.protocol.number());
        }
    }
    for (i, (n, _)) in s.snat.iter().filter(|(_, (n, _))| n.address.is_ipv4()) {
        let c = out.entry(word(n.address)).or_default();
        c.flags |= AddrClass::SNAT;
        c.snat_index = *i as u16;
    }
    out
}

/// The direct-mapped filter for a set of addresses: each bucket holds one address exactly; a
/// bucket several addresses hash to says so, and the program then asks ADDRS4.
pub fn filter(addrs: &BTreeMap<u32, AddrClass>) -> BTreeMap<u32, u64> {
    let mut buckets: BTreeMap<u32, FilterBucket> = BTreeMap::new();
    for (a, c) in addrs {
        let i = filter_index(*a);
        debug_assert!(i < ADDR_FILTER_SIZE);
        match buckets.get_mut(&i) {
            None => {
                buckets.insert(
                    i,
                    FilterBucket {
                        addr: *a,
                        class: *c,
                    },
                );
            }
            Some(b) => b.class.flags |= AddrClass::COLLISION,
        }
    }
    buckets.into_iter().map(|(i, b)| (i, b.to_u64())).collect()
}

/// The same for IPv6 addresses (`ADDR_FILTER6`).
pub fn filter6(addrs: &BTreeMap<[u32; 4], AddrClass>) -> BTreeMap<u32, FilterBucket6> {
    let mut buckets: BTreeMap<u32, FilterBucket6> = BTreeMap::new();
    for (a, c) in addrs {
        let i = lb_common::hash::filter_index_v6(a);
        match buckets.get_mut(&i) {
            None => {
                buckets.insert(i, FilterBucket6::new(*a, *c));
            }
            Some(b) => {
                let mut class = b.class;
                class.flags |= AddrClass::COLLISION;
                *b = FilterBucket6::new(b.addr, class);
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::HealthCheck, controller::state::BackendState, health::Health};

    fn vip(backends: &[(u32, Status)]) -> VipState {
        VipState {
            name: "v".into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 5100,
            protocol: Protocol::Tcp,
            health: HealthCheck::default(),
            id: 0,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (w, s))| BackendState {
                    address: format!("10.0.1.{}", i + 1).parse().unwrap(),
                    port: 5100,
                    weight: *w,
                    configured_weight: *w,
                    id: i as u32,
                    health: Health::new(2, 2, *s),
                    last_rtt: None,
                    last_error: None,
                })
                .collect(),
            adopted: false,
            table: VipState::empty_table(),
            members: Vec::new(),
            mode: TableMode::Normal,
            syn_cookies: CookieMode::Auto,
            cookies_engaged: false,
            cookies_changed: None,
            sources: Default::default(),
            groups: Default::default(),
            pins: Vec::new(),
        }
    }

    fn ids(v: &VipState) -> (Vec<u32>, TableMode) {
        let (m, mode) = members(v);
        (m.iter().map(|m| m.id).collect(), mode)
    }

    #[test]
    fn healthy_backends_with_weight_make_the_table() {
        use Status::*;
        assert_eq!(
            ids(&vip(&[(100, Up), (100, Down), (0, Up)])),
            (vec![0], TableMode::Normal)
        );
        // A pending backend waits while others are up.
        assert_eq!(
            ids(&vip(&[(100, Up), (100, Pending)])),
            (vec![0], TableMode::Normal)
        );
    }

    #[test]
    fn fail_open_when_every_eligible_backend_is_down() {
        use Status::*;
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Down), (0, Up)])),
            (vec![0, 1], TableMode::FailOpen)
        );
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Pending)])),
            (vec![0, 1], TableMode::FailOpen)
        );
        // Nothing probed yet: all, without the alarm.
        assert_eq!(
            ids(&vip(&[(100, Pending), (100, Pending)])),
            (vec![0, 1], TableMode::Starting)
        );
        // All drained is not fail-open: nothing may take new flows.
        assert_eq!(ids(&vip(&[(0, Down), (0, Up)])), (vec![], TableMode::Empty));
        // Recovery: one comes back.
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Up)])),
            (vec![1], TableMode::Normal)
        );
    }

    #[test]
    fn filter_flags_collisions_and_keeps_exact_buckets() {
        // Find two addresses sharing a bucket.
        let a = u32::from_ne_bytes([10, 0, 0, 1]);
        let b = (2..=255u8)
            .flat_map(|x| (0..=255u8).map(move |y| u32::from_ne_bytes([10, 9, x, y])))
            .find(|b| filter_index(*b) == filter_index(a))
            .expect("a colliding address");
        let vip = AddrClass {
            flags: AddrClass::VIP,
            snat_index: 0,
        };
        let mut addrs = BTreeMap::new();
        addrs.insert(a, vip);
        let f = filter(&addrs);
        assert_eq!(f.len(), 1);
        assert_eq!(
            FilterBucket::from_u64(f[&filter_index(a)]),
            FilterBucket {
                addr: a,
                class: vip
            }
        );
        addrs.insert(b, vip);
        let f = filter(&addrs);
        let bucket = FilterBucket::from_u64(f[&filter_index(a)]);
        assert!(bucket.class.flags & AddrClass::COLLISION != 0);
    }

    /// Backends 0..direct in group "direct" (priority 0), the rest in "relay" (priority 1).
    fn grouped(backends: &[(u32, Status)], direct: usize) -> VipState {
        let mut v = vip(backends);
        v.groups.groups = vec![
            crate::config::Group {
                name: "direct".into(),
                priority: 0,
            },
            crate::config::Group {
                name: "relay".into(),
                priority: 1,
            },
        ];
        for (i, b) in v.backends.iter().enumerate() {
            let g = if i < direct { "direct" } else { "relay" };
            v.groups.of_backend.insert((b.address, b.port), g.into());
        }
        v
    }

    /// Share of the Maglev table per backend id, in percent.
    fn table_shares(v: &VipState) -> BTreeMap<u32, f64> {
        let (m, _) = members(v);
        let t = lb_common::maglev::build_table(&m, lb_common::MAGLEV_TABLE_SIZE);
        let mut out = BTreeMap::new();
        for id in t {
            *out.entry(id).or_insert(0.0) += 100.0 / lb_common::MAGLEV_TABLE_SIZE as f64;
        }
        out
    }

    #[test]
    fn preferred_group_keeps_new_flows_until_its_health_drops_then_spills_in_proportion() {
        use Status::*;
        let all_up = grouped(&[(100, Up); 5], 3);
        assert_eq!(ids(&all_up), (vec![0, 1, 2], TableMode::Normal));
        // One of three direct backends down: health 93, so 7% of new flows go to the relays.
        let v = grouped(
            &[(100, Down), (100, Up), (100, Up), (100, Up), (100, Up)],
            3,
        );
        let s = table_shares(&v);
        let direct: f64 = s[&1] + s[&2];
        let relay: f64 = s[&3] + s[&4];
        assert!((direct - 93.0).abs() < 0.5, "{s:?}");
        assert!((relay - 7.0).abs() < 0.5, "{s:?}");
        assert!((s[&1] - s[&2]).abs() < 0.5, "direct split evenly: {s:?}");
        let l = level_loads(&v);
        assert_eq!((l[0].health_pct, l[0].load_pct, l[1].load_pct), (93, 93, 7));
        // Every direct backend down: the relays take everything, with their own weights.
        let v = grouped(
            &[(100, Down), (100, Down), (100, Down), (100, Up), (50, Up)],
            3,
        );
        let (m, mode) = members(&v);
        assert_eq!(mode, TableMode::Normal);
        assert_eq!(
            m.iter().map(|m| (m.id, m.weight)).collect::<Vec<_>>(),
            [(3, 100), (4, 50)]
        );
        // Everything down: fail-open over every group.
        let v = grouped(&[(100, Down); 5], 3);
        assert_eq!(ids(&v), (vec![0, 1, 2, 3, 4], TableMode::FailOpen));
    }

    #[test]
    fn the_table_depends_on_health_only() {
        use Status::*;
        let a = grouped(
            &[(100, Down), (100, Up), (100, Up), (100, Up), (100, Up)],
            3,
        );
        let mut b = a.clone();
        b.backends.reverse();
        let build = |v: &VipState| {
            lb_common::maglev::build_table(&members(v).0, lb_common::MAGLEV_TABLE_SIZE)
        };
        assert_eq!(build(&a), build(&b), "configuration order does not matter");
    }

    #[test]
    fn a_pin_keeps_to_its_groups_and_empties_when_they_fail_unless_everything_fails() {
        use Status::*;
        let pin = crate::config::Pin {
            name: "eu".into(),
            sources: Default::default(),
            groups: vec!["relay".into()],
            spill: false,
        };
        let ids_of = |v: &VipState| {
            let mut v = v.clone();
            v.refresh_table();
            pin_members(&v, &pin)
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        };
        let v = grouped(
            &[(100, Up), (100, Up), (100, Up), (100, Up), (100, Down)],
            3,
        );
        assert_eq!(ids_of(&v), [3]);
        // The relays are down, direct is fine: the pin's table is empty (refuse or spill).
        let v = grouped(
            &[(100, Up), (100, Up), (100, Up), (100, Down), (100, Down)],
            3,
        );
        assert!(ids_of(&v).is_empty());
        // Everything is down (a cluster-wide health failure): fail open, inside the boundary.
        let v = grouped(&[(100, Down); 5], 3);
        assert_eq!(ids_of(&v), [3, 4]);
    }

    #[test]
    fn ipv6_addresses_sharing_a_filter_bucket_are_marked_for_the_hash_lookup() {
        let class = AddrClass {
            flags: AddrClass::VIP,
            snat_index: 0,
        };
        // Two addresses in one bucket, found by trying.
        let a = [1u32, 2, 3, 4];
        let b = (5u32..)
            .map(|x| [1, 2, 3, x])
            .find(|b| lb_common::hash::filter_index_v6(b) == lb_common::hash::filter_index_v6(&a))
            .unwrap();
        let f = filter6(&BTreeMap::from([(a, class), (b, class)]));
        assert_eq!(f.len(), 1);
        let bucket = f.values().next().unwrap();
        assert!(bucket.is_whole());
        assert_ne!(bucket.class.flags & AddrClass::COLLISION, 0);
    }
}
