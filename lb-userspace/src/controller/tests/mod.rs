//! The controller against the in-memory data plane: adoption, config diffs, fail-open, weights,
//! ids, limits, failed writes, and expiry.

use std::{net::SocketAddr, time::Duration};

use lb_common::{
    Backend, FlowEntry, NO_BACKEND, Vip4Key, VipMeta,
    conntrack::{State as Ct, Timeouts},
    slot,
};

use super::{Controller, expiry, plan::TableMode, state::Interface};
use crate::{
    config::{Checks, Config, parse},
    dataplane::{
        Flows, Write,
        fake::{FakeFlows, FakeMaps},
    },
    health::{
        Status,
        probe::{ProbeResult, ProbeTarget},
    },
};

fn config(backends: &[(&str, u32)]) -> Config {
    let mut s = String::from(
        "[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"10.2.0.100\"]\n\
         [[vip]]\nname = \"im\"\naddress = \"10.100.0.1\"\nport = 5100\n\
         [vip.health_check]\nkind = \"tcp\"\nrise = 2\nfall = 2\n",
    );
    for (a, w) in backends {
        s += &format!("[[vip.backend]]\naddress = \"{a}\"\nweight = {w}\n");
    }
    parse(&s, Checks::Offline).expect("test config").config
}

fn eth0() -> Vec<Interface> {
    vec![Interface {
        name: "eth0".into(),
        ifindex: 2,
        mtu: 1500,
    }]
}

fn start(backends: &[(&str, u32)]) -> (Controller<FakeMaps>, FakeMaps) {
    let maps = FakeMaps::default();
    let (c, _) = Controller::new(maps.clone(), config(backends), eth0(), 4).expect("start");
    (c, maps)
}

fn three() -> [(&'static str, u32); 3] {
    [("10.2.0.11", 100), ("10.2.0.12", 100), ("10.2.0.13", 100)]
}

fn target(addr: &str) -> ProbeTarget {
    let backend: SocketAddr = format!("{addr}:5100").parse().unwrap();
    ProbeTarget {
        vip: "im".into(),
        backend,
        probe_addr: backend,
    }
}

fn probe(c: &mut Controller<FakeMaps>, addr: &str, ok: bool, times: usize) {
    for _ in 0..times {
        let r = ProbeResult {
            ok,
            rtt: Duration::from_millis(1),
            error: (!ok).then(|| "refused".into()),
        };
        c.record_probe(&target(addr), &r).unwrap();
    }
}

/// Backend ids in the VIP's table as the maps hold it.
fn table_ids(maps: &FakeMaps) -> Vec<u32> {
    let img = maps.image();
    let meta = img.vips.values().next().expect("a VIP");
    let mut ids: Vec<u32> = img.tables[&meta.vip_id]
        .iter()
        .copied()
        .filter(|i| *i != NO_BACKEND)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn id_of(c: &Controller<FakeMaps>, addr: &str) -> u32 {
    c.state().vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == addr)
        .expect("backend")
        .id
}

#[test]
fn a_fresh_start_programs_every_map_with_all_backends_until_probes_decide() {
    let (mut c, maps) = start(&three());
    let img = maps.image();
    assert_eq!(img.vips.len(), 1);
    assert_eq!(img.backends.len(), 3);
    assert_eq!(img.config.snat_count, 1);
    assert_eq!(img.snat_pick.get(&0), Some(&0));
    assert!(img.tx_ports.contains(&2));
    assert!(
        !img.filter.is_empty() && img.addrs.len() == 2,
        "VIP and SNAT address classified"
    );
    assert_eq!(table_ids(&maps), vec![0, 1, 2]);
    // The first backend to pass its checks does not take every new flow.
    probe(&mut c, "10.2.0.11", true, 2);
    assert_eq!(table_ids(&maps), vec![0, 1, 2]);
    assert_eq!(c.state().vips[0].mode, TableMode::Normal);
}

#[test]
fn the_vip_goes_live_after_its_table_and_backends() {
    let (_, maps) = start(&three());
    let log = maps.log.lock().unwrap().clone();
    let pos = |f: &dyn Fn(&Write) -> bool| log.iter().position(f).unwrap();
    let backend = pos(&|w| matches!(w, Write::Backend(..)));
    let table = pos(&|w| matches!(w, Write::Table(..)));
    let vip = pos(&|w| matches!(w, Write::Vip(..)));
    let filter = pos(&|w| matches!(w, Write::Filter(..)));
    assert!(backend < table && table < vip && vip < filter, "{log:#?}");
}

#[test]
fn probes_take_a_dead_backend_out_and_bring_it_back() {
    let (mut c, maps) = start(&three());
    assert_eq!(c.state().vips[0].mode, TableMode::Normal);
    probe(&mut c, "10.2.0.12", false, 1);
    assert_eq!(
        table_ids(&maps).len(),
        3,
        "one failure is not enough (fall 2)"
    );
    probe(&mut c, "10.2.0.12", false, 1);
    let dead = id_of(&c, "10.2.0.12");
    assert!(!table_ids(&maps).contains(&dead));
    probe(&mut c, "10.2.0.12", true, 2);
    assert!(table_ids(&maps).contains(&dead));
}

#[test]
fn fail_open_when_all_are_down_and_recovery() {
    let (mut c, maps) = start(&three());
    for a in ["10.2.0.11", "10.2.0.12", "10.2.0.13"] {
        probe(&mut c, a, false, 2);
    }
    assert_eq!(c.state().vips[0].mode, TableMode::FailOpen);
    assert_eq!(
        table_ids(&maps).len(),
        3,
        "every backend stays in the table"
    );
    let meta = *maps.image().vips.values().next().unwrap();
    assert_eq!(meta.flags & VipMeta::FAIL_OPEN, VipMeta::FAIL_OPEN);
    probe(&mut c, "10.2.0.13", true, 2);
    assert_eq!(c.state().vips[0].mode, TableMode::Normal);
    assert_eq!(table_ids(&maps), vec![id_of(&c, "10.2.0.13")]);
    let flags = maps.image().vips.values().next().unwrap().flags;
    assert_eq!(flags & VipMeta::FAIL_OPEN, 0);
}

#[test]
fn cookie_mode_reaches_the_vip_flags_and_survives_a_reload() {
    let (mut c, maps) = start(&three());
    let flags = || maps.image().vips.values().next().unwrap().flags;
    // Default "auto": cookies may be checked, not engaged.
    assert_eq!(flags(), VipMeta::COOKIES_ALLOWED);
    let name = c.state().vips[0].spec.name.clone();
    c.set_cookies_engaged(&name, true, "test").unwrap();
    assert_eq!(flags(), VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON);
    // A reload that changes nothing else keeps the engaged state.
    let cfg = c.config().clone();
    c.apply(cfg.clone()).unwrap();
    assert_eq!(flags(), VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON);
    // "off" wins over the watch.
    let mut off = cfg.clone();
    off.vips[0].syn_cookies = crate::config::CookieMode::Off;
    let lines = c.apply(off).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("syn_cookies auto -> off")),
        "{lines:?}"
    );
    assert_eq!(flags(), 0);
    c.set_cookies_engaged(&name, false, "test").unwrap();
    let mut always = cfg;
    always.vips[0].syn_cookies = crate::config::CookieMode::Always;
    c.apply(always).unwrap();
    assert_eq!(flags(), VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON);
}

#[test]
fn drain_and_weights_change_the_table_not_the_backends() {
    let (mut c, maps) = start(&three());
    let msg = c
        .set_weight("im", "10.2.0.11".parse().unwrap(), None, 0)
        .unwrap();
    assert!(msg.contains("draining"), "{msg}");
    assert!(!table_ids(&maps).contains(&id_of(&c, "10.2.0.11")));
    assert_eq!(
        maps.image().backends.len(),
        3,
        "a drained backend keeps its slot and flows"
    );
    c.set_weight("im", "10.2.0.12".parse().unwrap(), Some(5100), 300)
        .unwrap();
    let img = maps.image();
    let table = &img.tables[&0];
    let count = |id: u32| table.iter().filter(|x| **x == id).count() as f64;
    let ratio = count(id_of(&c, "10.2.0.12")) / count(id_of(&c, "10.2.0.13"));
    assert!((2.9..3.1).contains(&ratio), "3:1 by weight, got {ratio}");
    let e = c
        .set_weight("im", "10.2.0.12".parse().unwrap(), None, 2_000_000)
        .unwrap_err();
    assert!(e.to_string().contains("between 0 and"), "{e}");
    let e = c
        .set_weight("im", "10.9.9.9".parse().unwrap(), None, 1)
        .unwrap_err();
    assert!(e.to_string().contains("has no backend 10.9.9.9"), "{e}");
}

#[test]
fn a_runtime_backend_waits_for_its_probes() {
    let (mut c, maps) = start(&three());
    for a in ["10.2.0.11", "10.2.0.12", "10.2.0.13"] {
        probe(&mut c, a, true, 2);
    }
    let msg = c
        .add_backend("im", "10.2.0.14".parse().unwrap(), None, 100, None)
        .unwrap();
    assert!(msg.contains("pending"), "{msg}");
    let new = id_of(&c, "10.2.0.14");
    assert!(
        !table_ids(&maps).contains(&new),
        "unprobed backend took traffic"
    );
    probe(&mut c, "10.2.0.14", true, 2);
    assert!(table_ids(&maps).contains(&new));
    let e = c
        .add_backend("im", "10.2.0.14".parse().unwrap(), None, 1, None)
        .unwrap_err();
    assert!(e.to_string().contains("already has"), "{e}");
}

#[test]
fn a_removed_backend_id_is_reused_only_after_its_flows_are_gone() {
    let (mut c, maps) = start(&three());
    let gone = id_of(&c, "10.2.0.12");
    c.remove_backend("im", "10.2.0.12".parse().unwrap(), None)
        .unwrap();
    let kept = maps.image().backends[&gone];
    assert_eq!(kept.flags & Backend::ACTIVE, 0, "retired, not cleared");
    c.add_backend("im", "10.2.0.20".parse().unwrap(), None, 100, None)
        .unwrap();
    assert_ne!(
        id_of(&c, "10.2.0.20"),
        gone,
        "id reused while flows may hold it"
    );
    // An expiry pass that started later and saw no flow on it frees it.
    let later = crate::sys::clock::monotonic_ns() + 1;
    c.release_unused(&super::edits::InUse {
        started_ns: later,
        ..Default::default()
    })
    .unwrap();
    assert!(!maps.image().backends.contains_key(&gone));
    c.add_backend("im", "10.2.0.21".parse().unwrap(), None, 100, None)
        .unwrap();
    assert_eq!(id_of(&c, "10.2.0.21"), gone);
}

#[test]
fn a_pass_that_saw_flows_on_a_retired_id_keeps_it() {
    let (mut c, maps) = start(&three());
    let gone = id_of(&c, "10.2.0.13");
    c.remove_backend("im", "10.2.0.13".parse().unwrap(), None)
        .unwrap();
    let mut u = super::edits::InUse {
        started_ns: crate::sys::clock::monotonic_ns() + 1,
        ..Default::default()
    };
    u.backends.insert(gone);
    c.release_unused(&u).unwrap();
    assert!(maps.image().backends.contains_key(&gone));
}

#[test]
fn the_last_backend_cannot_be_removed() {
    let (mut c, _) = start(&[("10.2.0.11", 100)]);
    let e = c
        .remove_backend("im", "10.2.0.11".parse().unwrap(), None)
        .unwrap_err();
    assert!(e.to_string().contains("last backend"), "{e}");
}

#[test]
fn reload_applies_only_the_difference() {
    let (mut c, maps) = start(&three());
    let before = maps.writes();
    let same = c.apply(config(&three())).unwrap();
    assert!(same.is_empty(), "{same:?}");
    assert_eq!(maps.writes(), before, "an unchanged config writes nothing");
    let keep = id_of(&c, "10.2.0.11");
    let s = c
        .apply(config(&[
            ("10.2.0.11", 50),
            ("10.2.0.13", 100),
            ("10.2.0.14", 100),
        ]))
        .unwrap();
    let all = s.join("\n");
    assert!(all.contains("-backend 10.2.0.12:5100"), "{all}");
    assert!(all.contains("+backend 10.2.0.14:5100"), "{all}");
    assert!(all.contains("10.2.0.11:5100 weight 100 -> 50"), "{all}");
    assert_eq!(
        id_of(&c, "10.2.0.11"),
        keep,
        "unchanged backends keep their id"
    );
}

#[test]
fn reload_says_when_it_reverts_a_runtime_change() {
    let (mut c, _) = start(&three());
    c.set_weight("im", "10.2.0.11".parse().unwrap(), None, 0)
        .unwrap();
    let s = c.apply(config(&three())).unwrap().join("\n");
    assert!(
        s.contains("weight 0 -> 100 (reverts a runtime change)"),
        "{s}"
    );
}

#[test]
fn a_failed_write_midway_changes_nothing() {
    let (mut c, maps) = start(&three());
    let image = maps.image();
    let state_before = format!("{:?}", c.state().vips);
    // The third write of the change fails.
    maps.fail_in(2);
    let e = c
        .apply(config(&[
            ("10.2.0.11", 100),
            ("10.2.0.15", 100),
            ("10.2.0.16", 100),
        ]))
        .unwrap_err();
    assert!(format!("{e:#}").contains("injected failure"), "{e:#}");
    assert!(format!("{e:#}").contains("were undone"), "{e:#}");
    assert_eq!(maps.image(), image, "the maps are as before");
    assert_eq!(
        format!("{:?}", c.state().vips),
        state_before,
        "the state is as before"
    );
    // And it still works afterwards.
    c.apply(config(&[("10.2.0.11", 100), ("10.2.0.15", 100)]))
        .unwrap();
    assert_eq!(maps.image().vips.len(), 1);
}

#[test]
fn the_backend_limit_is_enforced() {
    let mut maps_cfg = config(&three());
    let mut backends = Vec::new();
    for i in 0..lb_common::MAX_BACKENDS {
        backends.push(crate::config::BackendConfig {
            address: std::net::IpAddr::from([10, 3, (i / 250) as u8, (i % 250) as u8 + 1]),
            port: 5100,
            weight: 1,
        });
    }
    maps_cfg.vips[0].backends = backends;
    let (mut c, _) = Controller::new(FakeMaps::default(), maps_cfg, eth0(), 4).unwrap();
    let e = c
        .add_backend("im", "10.4.0.1".parse().unwrap(), None, 1, None)
        .unwrap_err();
    assert!(e.to_string().contains("backend slots are in use"), "{e}");
}

#[test]
fn a_restart_adopts_ids_health_and_snat_from_the_maps() {
    let (mut c, maps) = start(&three());
    for a in ["10.2.0.11", "10.2.0.12", "10.2.0.13"] {
        probe(&mut c, a, true, 2);
    }
    probe(&mut c, "10.2.0.12", false, 2);
    let ids: Vec<u32> = ["10.2.0.11", "10.2.0.12", "10.2.0.13"]
        .iter()
        .map(|a| id_of(&c, a))
        .collect();
    let held = maps.image();
    drop(c);
    let again = FakeMaps::holding(held.clone());
    let (c2, summary) = Controller::new(again.clone(), config(&three()), eth0(), 4).unwrap();
    assert!(
        summary
            .iter()
            .any(|l| l.contains("adopted 1 VIP(s), 3 backend(s)")),
        "{summary:?}"
    );
    let ids2: Vec<u32> = ["10.2.0.11", "10.2.0.12", "10.2.0.13"]
        .iter()
        .map(|a| id_of(&c2, a))
        .collect();
    assert_eq!(ids, ids2);
    let b2 = &c2.state().vips[0]
        .backends
        .iter()
        .find(|b| b.id == ids[1])
        .unwrap();
    assert_eq!(
        b2.health.status,
        Status::Down,
        "out of the table means down"
    );
    assert_eq!(
        again.image().tables,
        held.tables,
        "the live table is not disturbed"
    );
    assert_eq!(c2.state().snat.len(), 1);
}

#[test]
fn snat_addresses_drain_and_are_released_when_unused() {
    let (mut c, maps) = start(&three());
    let mut cfg = config(&three());
    cfg.snat.addresses = vec!["10.2.0.101".parse().unwrap()];
    c.apply(cfg).unwrap();
    let img = maps.image();
    assert_eq!(
        img.snat.len(),
        2,
        "the old address keeps its slots while flows use it"
    );
    assert_eq!(img.config.snat_count, 1);
    assert_eq!(img.snat_pick[&0], 1, "new flows take the new address");
    let lines = c
        .release_unused(&super::edits::InUse {
            started_ns: crate::sys::clock::monotonic_ns() + 1,
            ..Default::default()
        })
        .unwrap();
    assert!(lines.iter().any(|l| l.contains("10.2.0.100")), "{lines:?}");
    assert_eq!(maps.image().snat.len(), 1);
}

#[test]
fn more_snat_addresses_than_the_flow_table_holds_are_refused() {
    let (mut c, maps) = start(&three());
    let before = maps.image();
    let mut cfg = config(&three());
    cfg.snat.addresses = (0..6)
        .map(|i| format!("10.2.1.{i}").parse().unwrap())
        .collect();
    let e = c.apply(cfg).unwrap_err();
    assert!(e.to_string().contains("slots for 4 SNAT addresses"), "{e}");
    assert_eq!(maps.image(), before);
}

// ---------------------------------------------------------------------------- expiry

#[test]
fn the_snapshot_lists_probe_targets_and_the_live_table() {
    let (c, _) = start(&three());
    let snap = super::Snapshot::of(c.state(), 0, &[]);
    assert_eq!(snap.probe_targets().len(), 3);
    let v = snap.vip("im").unwrap();
    assert_eq!(v.table.len(), lb_common::MAGLEV_TABLE_SIZE as usize);
    assert!(
        snap.vip("nope")
            .unwrap_err()
            .to_string()
            .contains("known: im")
    );
    let _ = Vip4Key::default();
}

#[test]
fn source_lists_and_limits_reach_the_maps_and_runtime_edits_are_checked() {
    let (mut c, maps) = start(&three());
    let name = c.state().vips[0].spec.name.clone();
    let net: ipnet::Ipv4Net = "203.0.113.0/24".parse().unwrap();
    let msg = c
        .edit_source_list(&name, crate::config::SourceList::Deny, net, true)
        .unwrap();
    assert!(msg.contains("added to the deny list"), "{msg}");
    let img = maps.image();
    let flags = img.vips.values().next().unwrap().flags;
    assert_ne!(flags & VipMeta::SOURCE_LISTS, 0);
    assert_eq!(flags & VipMeta::RATE_LIMIT, 0);
    assert_eq!(img.sources.len(), 1);
    let ((k, len), v) = img.sources.iter().next().unwrap();
    assert_eq!(
        (k.vip_id(), *len, *v),
        (0, 24, lb_common::source_list::DENY)
    );
    // The same prefix on the other list, twice on one, or a removal of nothing: refused.
    use crate::config::SourceList::{Allow, Deny};
    assert!(c.edit_source_list(&name, Allow, net, true).is_err());
    assert!(c.edit_source_list(&name, Deny, net, true).is_err());
    let other: ipnet::Ipv4Net = "192.0.2.0/24".parse().unwrap();
    assert!(c.edit_source_list(&name, Deny, other, false).is_err());
    c.edit_source_list(&name, Deny, net, false).unwrap();
    let img = maps.image();
    assert!(img.sources.is_empty());
    assert_eq!(
        img.vips.values().next().unwrap().flags & VipMeta::SOURCE_LISTS,
        0
    );
    // A rate in the config becomes the VIP's limit.
    let mut cfg = c.config().clone();
    cfg.vips[0].sources.rate = 50;
    cfg.vips[0].sources.burst = 100;
    let lines = c.apply(cfg).unwrap();
    assert!(lines.iter().any(|l| l.contains("rate 50/s")), "{lines:?}");
    let img = maps.image();
    assert_ne!(
        img.vips.values().next().unwrap().flags & VipMeta::RATE_LIMIT,
        0
    );
    let l = img.vip_limits[&0];
    let want = lb_common::VipLimits::new(50, 100);
    assert_eq!(
        (l.interval_ns, l.tolerance_ns),
        (want.interval_ns, want.tolerance_ns)
    );
}

#[test]
fn ipv6_backends_take_ipv6_snat_addresses_and_a_restart_adopts_them() {
    let src = "[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"10.2.0.100\", \"fd00:2::100\"]\n\
               [[vip]]\nname = \"im\"\naddress = \"10.100.0.1\"\nport = 5100\n\
               [vip.health_check]\nkind = \"tcp\"\n\
               [[vip.backend]]\naddress = \"10.2.0.11\"\n\
               [[vip.backend]]\naddress = \"fd00:2::11\"\n";
    let cfg = parse(src, Checks::Offline).expect("test config").config;
    let maps = FakeMaps::default();
    let (c, _) = Controller::new(maps.clone(), cfg.clone(), eth0(), 4).expect("start");
    let img = maps.image();
    assert_eq!((img.config.snat_count, img.config.snat6_count), (1, 1));
    assert_eq!(img.snat_pick.get(&0), Some(&0));
    assert_eq!(img.snat_pick6.get(&0), Some(&1));
    assert_eq!(img.snat[&1].family, lb_common::FAMILY_IPV6);
    let v6 = lb_common::words_of_v6(
        "fd00:2::100"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let class = img.addrs6[&v6];
    assert_eq!(
        (class.flags, class.snat_index),
        (lb_common::AddrClass::SNAT, 1)
    );
    assert_eq!(img.addrs.len(), 2, "the IPv4 VIP and SNAT address only");
    let bucket = img.filter6[&lb_common::hash::filter_index_v6(&v6)];
    assert!(bucket.is_whole() && bucket.addr == v6 && bucket.class == class);
    let b6 = id_of(&c, "fd00:2::11");
    assert_eq!(img.backends[&b6].family, lb_common::FAMILY_IPV6);
    // A restarted daemon reads both families back from the maps.
    let (again, _) = Controller::new(maps.clone(), cfg, eth0(), 4).expect("restart");
    let mut addrs: Vec<String> = again
        .state()
        .snat
        .values()
        .map(|(n, _)| n.address.to_string())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.2.0.100", "fd00:2::100"]);
    assert_eq!(id_of(&again, "fd00:2::11"), b6);
}

#[test]
fn a_refused_ipv6_backend_names_the_cookie_mode_as_the_config_spells_it() {
    let src = "[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"10.2.0.100\", \"fd00:2::100\"]\n\
               [[vip]]\nname = \"im\"\naddress = \"10.100.0.1\"\nport = 5100\n\
               [[vip.backend]]\naddress = \"10.2.0.11\"\n";
    let cfg = parse(src, Checks::Offline).expect("test config").config;
    let (mut c, _) = Controller::new(FakeMaps::default(), cfg, eth0(), 4).expect("start");
    let e = c
        .add_backend("im", "fd00:2::11".parse().unwrap(), None, 100, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("syn_cookies = \"auto\""), "{e}");
    assert!(!e.contains("Auto"), "{e}");
}

mod expiry_pass;
mod proxy;
mod shares;
