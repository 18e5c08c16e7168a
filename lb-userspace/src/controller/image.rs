//! Pure: the whole image the configuration maps must hold for a controller state (addresses,
//! VIPs, backends, tables, SNAT, source lists, pins, the data path's settings) and the address
//! filters. No kernel, no I/O: unit-tested here.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{
    ADDR_FILTER_SIZE, Addr, AddrClass, Backend, DataplaneConfig, FAMILY_IPV4, FilterBucket,
    FilterBucket6, PinTarget, SnatAddr, SourceKey4, Vip4Key, VipInfo, VipLimits, VipMeta,
    hash::filter_index, mss, shares::RESOURCES, source_list,
};

use super::{
    plan::TableMode,
    state::{State, VipState},
};
use crate::config::{CookieMode, MssClamp, Protocol, ProxyProtocol, SourceList};

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
    let shares = shares(s);
    for v in &s.vips {
        vip(
            &mut img,
            v,
            shares.get(&v.id).copied(),
            s.cfg.syn_cookies.engage_syn_rate.min(u32::MAX as u64) as u32,
            s.entry_attached,
        );
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

/// What each pool new flows take from holds (lb_common::shares): the connection tables
/// (`conntrack.max_flows` each) and the ports of the SNAT addresses of each family: every
/// port of an active address, and of a draining one the ports its flows still hold (they are
/// in the pool's count until they end, and new flows never get the rest).
fn capacities(s: &State) -> [u64; RESOURCES] {
    let ports = lb_common::slot::capacity(1, s.cfg.snat.port_min, s.cfg.snat.port_max);
    let snat = |v6: bool| {
        s.snat
            .values()
            .filter(|(a, _)| a.address.is_ipv6() == v6)
            .map(|(a, _)| match (a.active, a.held) {
                (false, Some(held)) => held.min(ports),
                _ => ports,
            })
            .sum::<u64>()
    };
    let flows = s.cfg.conntrack.max_flows as u64;
    [flows, flows, snat(false), snat(true)]
}

/// Each VIP's share of each pool, by VIP id: of the connection table of its address's family,
/// and of the SNAT ports of each family its backends have.
pub fn shares(s: &State) -> BTreeMap<u32, [u32; RESOURCES]> {
    use lb_common::shares::{Demand, FLOWS4, FLOWS6, SNAT4, SNAT6, split};
    let caps = capacities(s);
    let mut out: BTreeMap<u32, [u32; RESOURCES]> =
        s.vips.iter().map(|v| (v.id, [0; RESOURCES])).collect();
    for r in [FLOWS4, FLOWS6, SNAT4, SNAT6] {
        let uses = |v: &VipState| match r {
            FLOWS4 => v.spec.address.is_ipv4(),
            FLOWS6 => v.spec.address.is_ipv6(),
            _ => v
                .backends
                .iter()
                .any(|b| b.address.is_ipv6() == (r == SNAT6)),
        };
        let demands: Vec<Demand> = s
            .vips
            .iter()
            .map(|v| match (uses(v), v.spec.max_flows) {
                (false, _) => Demand::None,
                (true, Some(n)) => Demand::Fixed(n),
                (true, None) => Demand::Even,
            })
            .collect();
        let mut split_out = vec![0; demands.len()];
        split(caps[r], &demands, &mut split_out);
        for (v, share) in s.vips.iter().zip(split_out) {
            if let Some(row) = out.get_mut(&v.id) {
                row[r] = share;
            }
        }
    }
    out
}

fn vip(
    img: &mut super::super::dataplane::Image,
    v: &VipState,
    share: Option<[u32; RESOURCES]>,
    engage_syn_rate: u32,
    entry_attached: bool,
) {
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
            addr: addr(v.spec.address),
            port: v.spec.port,
            proto: v.spec.protocol.number(),
            family: family(v.spec.address),
            flags: 0,
        },
    );
    let flags = vip_policy(img, v, entry_attached);
    img.vip_limits
        .insert(v.id, limits(v, flags, share, engage_syn_rate));
    let meta = VipMeta {
        vip_id: v.id,
        flags,
    };
    vip_entry(img, v, meta);
}

/// The VIP's flags (fail-open, cookies, source policy, pins, PROXY protocol), writing its
/// source lists.
fn vip_policy(img: &mut super::super::dataplane::Image, v: &VipState, entry_attached: bool) -> u32 {
    let mut flags = if v.mode == TableMode::FailOpen {
        VipMeta::FAIL_OPEN
    } else {
        0
    };
    if v.spec.protocol == Protocol::Tcp && v.spec.syn_cookies != CookieMode::Off {
        flags |= VipMeta::COOKIES_ALLOWED;
        if v.cookies_on() {
            flags |= VipMeta::COOKIES_ON;
        }
    }
    for (list, action) in [
        (SourceList::Deny, source_list::DENY),
        (SourceList::Allow, source_list::ALLOW),
    ] {
        for net in v.spec.sources.list(list) {
            let key = SourceKey4::new(v.id, u32::from_ne_bytes(net.network().octets()));
            img.sources.insert((key, net.prefix_len()), action);
            flags |= VipMeta::SOURCE_LISTS;
        }
    }
    if v.spec.sources.max_conns > 0 {
        flags |= VipMeta::CONN_LIMIT;
    }
    if !v.pins.is_empty() {
        flags |= VipMeta::PINNED;
    }
    if v.spec.sources.rate > 0 {
        flags |= VipMeta::RATE_LIMIT;
    }
    // Only once this build's entry program is attached: until then an older one may be, which
    // would send a PROXY flow's bytes without the header (and the header later mid-stream).
    // Connections opened before get none.
    flags |= match v.spec.proxy_protocol {
        _ if !entry_attached => 0,
        ProxyProtocol::Off => 0,
        ProxyProtocol::V1 => VipMeta::PROXY_V1,
        ProxyProtocol::V2 => VipMeta::PROXY_V2,
    };
    flags
}

/// The VIP's `VIP_LIMITS`: its per-source rate, its shares, its half-open SYN budget (`auto`
/// cookies only).
fn limits(
    v: &VipState,
    flags: u32,
    share: Option<[u32; RESOURCES]>,
    engage_syn_rate: u32,
) -> VipLimits {
    let mut limits = VipLimits::new(v.spec.sources.rate, v.spec.sources.burst);
    if let Some(share) = share {
        limits.share = share;
    }
    if flags & VipMeta::COOKIES_ALLOWED != 0 && v.spec.syn_cookies == CookieMode::Auto {
        (limits.syn_interval_ns, limits.syn_tolerance_ns) =
            lb_common::syn_budget::params(engage_syn_rate);
    }
    limits
}

/// Writes the VIP's VIPS4/VIPS6 entry (and an IPv6 VIP's address class).
fn vip_entry(img: &mut super::super::dataplane::Image, v: &VipState, meta: VipMeta) {
    match v.spec.address {
        IpAddr::V4(_) => {
            img.vips.insert(
                Vip4Key::new(word(v.spec.address), v.spec.port, v.spec.protocol.number()),
                meta,
            );
        }
        IpAddr::V6(_) => {
            let key = lb_common::Vip6Key::new(
                addr(v.spec.address).words,
                v.spec.port,
                v.spec.protocol.number(),
            );
            img.vips6.insert(key, meta);
            let c = img.addrs6.entry(key.addr).or_default();
            c.flags |= AddrClass::VIP;
            if v.spec.port == 0 {
                c.flags |= AddrClass::any_port_bit(v.spec.protocol.number());
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
        // An empty pool has nothing to share (its flows fail for want of an address).
        share_full: capacities(s).map(|c| {
            if c == 0 {
                u32::MAX
            } else {
                lb_common::shares::full_at(c)
            }
        }),
        // The SNAT pools only: a flow the data path ended holds its port until expiry frees
        // it, but not its FLOWS4/FLOWS6 entry, so the connection tables' counts run ahead of
        // them between passes (their inserts decide).
        pool_size: {
            let mut size = capacities(s).map(|c| {
                if c == 0 {
                    u32::MAX
                } else {
                    c.min(u32::MAX as u64 - 1) as u32
                }
            });
            size[lb_common::shares::FLOWS4] = u32::MAX;
            size[lb_common::shares::FLOWS6] = u32::MAX;
            size
        },
    }
}

/// Every address of ours and what it is: VIP addresses (with any-port bits) and SNAT addresses.
pub fn addresses(s: &State) -> BTreeMap<u32, AddrClass> {
    let mut out: BTreeMap<u32, AddrClass> = BTreeMap::new();
    for v in s.vips.iter().filter(|v| v.spec.address.is_ipv4()) {
        let c = out.entry(word(v.spec.address)).or_default();
        c.flags |= AddrClass::VIP;
        if v.spec.port == 0 {
            c.flags |= AddrClass::any_port_bit(v.spec.protocol.number());
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
