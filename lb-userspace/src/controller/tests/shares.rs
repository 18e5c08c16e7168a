//! Each VIP's share of the pools new flows take from (lb_common::shares), as the image carries
//! it to the data path, and the expiry pass taking the flows it frees off the counts.

use lb_common::{
    FlowEntry,
    shares::{FLOWS4, FLOWS6, SNAT4, SNAT6, UNLIMITED, full_at},
};

use super::*;

const SRC: &str = "[daemon]\ninterfaces = [\"eth0\"]\n\
    [conntrack]\nmax_flows = 100000\n\
    [snat]\naddresses = [\"10.2.0.100\", \"10.2.0.101\", \"fd00:2::100\"]\nport_min = 10000\nport_max = 59999\n\
    [[vip]]\nname = \"big\"\naddress = \"10.100.0.1\"\nport = 5100\nmax_flows = 40000\n\
    [[vip.backend]]\naddress = \"10.2.0.11\"\n\
    [[vip]]\nname = \"small\"\naddress = \"10.100.0.2\"\nport = 5100\n\
    [[vip.backend]]\naddress = \"10.2.0.12\"\n\
    [[vip]]\nname = \"six\"\naddress = \"2001:db8:100::1\"\nport = 5100\n\
    [[vip.backend]]\naddress = \"10.2.0.13\"\n\
    [[vip.backend]]\naddress = \"fd00:2::13\"\n";

#[test]
fn shares_follow_max_flows_and_split_the_rest_per_pool_and_family() {
    let cfg = parse(SRC, Checks::Offline).expect("config").config;
    let maps = FakeMaps::default();
    let (c, _) = Controller::new(maps.clone(), cfg, eth0(), 4).expect("start");
    let img = maps.image();
    let id = |name: &str| {
        c.state()
            .vips
            .iter()
            .find(|v| v.spec.name == name)
            .unwrap()
            .id
    };
    let share = |name: &str| img.vip_limits[&id(name)].share;
    let snat4 = 2 * 50_000u64;
    let snat6 = 50_000u64;
    // IPv4 table: "big" has its 40,000, "small" the other 60,000; "six" has IPv6 clients.
    assert_eq!(share("big")[FLOWS4], 40_000);
    assert_eq!(share("small")[FLOWS4], 60_000);
    assert_eq!(share("six")[FLOWS4], UNLIMITED);
    assert_eq!(share("six")[FLOWS6], 100_000);
    // IPv4 SNAT ports: every VIP has an IPv4 backend; the even ones split what "big" leaves.
    assert_eq!(share("big")[SNAT4], 40_000);
    assert_eq!(share("small")[SNAT4], 30_000);
    assert_eq!(share("six")[SNAT4], 30_000);
    // IPv6 SNAT ports: only "six" has an IPv6 backend.
    assert_eq!(share("six")[SNAT6], snat6 as u32);
    assert_eq!(share("big")[SNAT6], UNLIMITED);
    assert_eq!(
        img.config.share_full,
        [
            full_at(100_000),
            full_at(100_000),
            full_at(snat4),
            full_at(snat6)
        ]
    );
    // The connection tables' inserts decide (their counts run ahead of them between passes).
    assert_eq!(
        img.config.pool_size,
        [u32::MAX, u32::MAX, snat4 as u32, snat6 as u32]
    );
}

#[test]
fn a_draining_snat_address_counts_only_the_ports_its_flows_hold() {
    let cfg = parse(SRC, Checks::Offline).expect("config").config;
    let maps = FakeMaps::default();
    let (mut c, _) = Controller::new(maps.clone(), cfg.clone(), eth0(), 4).expect("start");
    let ports = 50_000u64;
    let mut drained = cfg;
    drained
        .snat
        .addresses
        .retain(|a| a.to_string() != "10.2.0.100");
    c.apply(drained).unwrap();
    let index = |addr: &str| {
        *c.state()
            .snat
            .iter()
            .find(|(_, (s, _))| s.address.to_string() == addr)
            .unwrap()
            .0
    };
    let draining = index("10.2.0.100");
    // Until a pass has counted it, the whole range is held.
    assert_eq!(maps.image().config.pool_size[SNAT4], 2 * ports as u32);
    let mut u = crate::controller::edits::InUse {
        started_ns: crate::sys::clock::monotonic_ns() + 1,
        ..Default::default()
    };
    u.snat.insert(draining);
    u.held.insert(draining, 1_200);
    c.release_unused(&u).unwrap();
    let img = maps.image();
    assert_eq!(img.config.pool_size[SNAT4], (ports + 1_200) as u32);
    assert_eq!(img.config.share_full[SNAT4], full_at(ports + 1_200));
    // The active address's ports are what the VIPs split; the held ones are spoken for.
    assert_eq!(img.config.pool_size[SNAT6], ports as u32);
    // Its last flow gone: released, and the pool is the active address alone.
    u.snat.clear();
    u.held.clear();
    u.started_ns = crate::sys::clock::monotonic_ns() + 1;
    c.release_unused(&u).unwrap();
    assert_eq!(maps.image().config.pool_size[SNAT4], ports as u32);
}

#[test]
fn guaranteed_flows_beyond_the_table_are_refused_by_key() {
    let src = SRC.replace("max_flows = 40000", "max_flows = 100001");
    let errors = parse(&src, Checks::Offline).unwrap_err();
    let text = format!("{errors:?}");
    assert!(text.contains("vip[0].max_flows"), "{text}");
    assert!(text.contains("conntrack.max_flows 100000"), "{text}");
}

#[test]
fn expiry_takes_the_flows_it_frees_off_their_vips_counts() {
    let f = FakeFlows::new(64, 64);
    let now = 10_000 * 1_000_000_000u64;
    let flow = |port: u16, vip: u16, flags: u8, last_seen_ns: u64| FlowEntry {
        client_port: port,
        vip_id: vip,
        flags,
        proto: lb_common::PROTO_TCP,
        state: Ct::Established as u8,
        last_seen_ns,
        ..Default::default()
    };
    let v6 = FlowEntry::CLIENT_V6 | FlowEntry::BACKEND_V6;
    f.insert(1, flow(40001, 3, 0, now));
    f.insert(2, flow(40002, 3, v6, now));
    // Idle past the established timeout: expire in this pass.
    let idle = now - 16 * 60 * 1_000_000_000;
    f.insert(3, flow(40003, 3, 0, idle));
    f.insert(4, flow(40004, 3, v6, idle));
    // What the data path counted as it created them.
    for row in [3, lb_common::MAX_VIPS as usize] {
        f.live.lock().unwrap()[row].used = [2, 2, 2, 2];
    }
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!((s.expired, s.live), (2, 2));
    // The ports still held per SNAT address, for a draining address's part of its pool.
    assert_eq!(s.in_use.held, [(0u32, 2u64)].into_iter().collect());
    let live = f.live();
    assert_eq!(live[3].used, [1, 1, 1, 1]);
    assert_eq!(live[lb_common::MAX_VIPS as usize].used, [1, 1, 1, 1]);
    // Counts never go below 0 (flows from before the counts existed).
    f.insert(5, flow(40005, 3, 0, idle));
    f.insert(6, flow(40006, 3, 0, idle));
    expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!(f.live()[3].used, [0, 1, 0, 1]);
}
