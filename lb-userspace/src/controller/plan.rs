//! Pure planning: which backends a VIP's table holds (health, weights, fail-open), and the whole
//! image the configuration maps must hold for a state. No kernel, no I/O: unit-tested here.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{
    ADDR_FILTER_SIZE, Addr, AddrClass, Backend, DataplaneConfig, FAMILY_IPV4, FilterBucket,
    SnatAddr, SourceKey4, Vip4Key, VipInfo, VipLimits, VipMeta, hash::filter_index, maglev::Member,
    mss, source_list,
};
use serde::Serialize;

use super::state::{State, VipState};
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

/// The members of a VIP's table and why.
pub fn members(v: &VipState) -> (Vec<Member>, TableMode) {
    let eligible: Vec<_> = v.backends.iter().filter(|b| b.weight > 0).collect();
    let member = |b: &&super::state::BackendState| Member {
        id: b.id,
        key: b.key(),
        weight: b.weight,
    };
    let up: Vec<Member> = eligible
        .iter()
        .filter(|b| b.health.status == Status::Up)
        .map(member)
        .collect();
    if !up.is_empty() {
        return (up, TableMode::Normal);
    }
    if eligible.is_empty() {
        return (Vec::new(), TableMode::Empty);
    }
    let all = eligible.iter().map(member).collect();
    if eligible.iter().any(|b| b.health.status == Status::Down) {
        (all, TableMode::FailOpen)
    } else {
        (all, TableMode::Starting)
    }
}

/// An IPv4 address as the data path's native word (other families are refused by validation).
pub fn word(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(_) => 0,
    }
}

fn addr(a: IpAddr) -> Addr {
    Addr::v4_word(word(a))
}

/// Everything the configuration maps must hold for `s`. Tables come from `VipState::table`.
pub fn image(s: &State) -> super::super::dataplane::Image {
    let mut img = super::super::dataplane::Image {
        config: config(s),
        ..Default::default()
    };
    for (i, (snat, _)) in &s.snat {
        img.snat
            .insert(*i, SnatAddr::new(addr(snat.address), FAMILY_IPV4));
    }
    for (k, i) in s
        .snat
        .iter()
        .filter(|(_, (n, _))| n.active)
        .map(|(i, _)| *i)
        .enumerate()
    {
        img.snat_pick.insert(k as u32, i);
    }
    for (id, (b, _)) in &s.retired_backends {
        img.backends.insert(*id, *b);
    }
    for v in &s.vips {
        vip(&mut img, v);
    }
    img.addrs = addresses(s);
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
            Backend::new(addr(b.address), b.port, FAMILY_IPV4, Backend::ACTIVE, v.id),
        );
    }
    img.tables.insert(v.id, Arc::clone(&v.table));
    img.vip_info.insert(
        v.id,
        VipInfo {
            addr: addr(v.address),
            port: v.port,
            proto: v.protocol.number(),
            family: FAMILY_IPV4,
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
    if v.sources.rate > 0 {
        img.vip_limits
            .insert(v.id, VipLimits::new(v.sources.rate, v.sources.burst));
        flags |= VipMeta::RATE_LIMIT;
    }
    img.vips.insert(
        Vip4Key::new(word(v.address), v.port, v.protocol.number()),
        VipMeta {
            vip_id: v.id,
            flags,
        },
    );
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
    let (mss_mode, mss_value) = match c.data_path.mss_clamp {
        MssClamp::Off => (mss::OFF, 0),
        MssClamp::Auto => (mss::AUTO, 0),
        MssClamp::Fixed(v) => (mss::FIXED, v),
    };
    DataplaneConfig {
        snat_count: s.snat.values().filter(|(n, _)| n.active).count() as u32,
        snat_port_min: c.snat.port_min,
        snat_port_max: c.snat.port_max,
        flags,
        mss_mode,
        mss_value,
        min_mtu: s.interfaces.iter().map(|i| i.mtu).min().unwrap_or(1500),
        _pad: 0,
    }
}

/// Every address of ours and what it is: VIP addresses (with any-port bits) and SNAT addresses.
pub fn addresses(s: &State) -> BTreeMap<u32, AddrClass> {
    let mut out: BTreeMap<u32, AddrClass> = BTreeMap::new();
    for v in &s.vips {
        let c = out.entry(word(v.address)).or_default();
        c.flags |= AddrClass::VIP;
        if v.port == 0 {
            c.flags |= AddrClass::any_port_bit(v.protocol.number());
        }
    }
    for (i, (n, _)) in &s.snat {
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
}
