//! The expiry pass against the fake connection table.

use super::*;

fn flow(client_port: u16, state: Ct, last_seen_ns: u64, backend_id: u16) -> FlowEntry {
    FlowEntry {
        client: [
            u32::from_ne_bytes([203, 0, 113, 7]),
            u32::from_ne_bytes([10, 100, 0, 1]),
            0,
            0,
        ],
        client_port,
        vip_port: 5100,
        backend_id,
        proto: lb_common::PROTO_TCP,
        state: state as u8,
        last_seen_ns,
        ..Default::default()
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn expiry_removes_idle_flows_by_state_and_frees_their_slots() {
    let f = FakeFlows::new(8, 64);
    let now = 10_000 * S;
    f.insert(1, flow(40001, Ct::Established, now - 60 * S, 3));
    f.insert(2, flow(40002, Ct::Established, now - 16 * 60 * S, 4));
    f.insert(3, flow(40003, Ct::Closed, now - 11 * S, 5));
    f.insert(4, flow(40004, Ct::SynSent, now - 5 * S, 6));
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!((s.expired, s.live), (2, 2));
    assert_eq!(f.entry(2).owner, slot::FREE);
    assert_eq!(f.entry(3).owner, slot::FREE);
    assert!(f.entry(1).is_live());
    assert_eq!(f.refs.0.lock().unwrap().len(), 2);
    assert_eq!(s.in_use.backends, [3u32, 6].into_iter().collect());
}

#[test]
fn expiry_lists_the_sources_at_their_connection_limit() {
    let f = FakeFlows::new(16, 64);
    let now = 10_000 * S;
    // Source 203.0.113.7 (the helper's client) holds 3 open flows and 1 closed one; another
    // source holds 1.
    for (slot, port, st) in [
        (1, 40001, Ct::Established),
        (2, 40002, Ct::SynSent),
        (3, 40003, Ct::Established),
        (4, 40004, Ct::Closed),
    ] {
        f.insert(slot, flow(port, st, now, 1));
    }
    let mut other = flow(40005, Ct::Established, now, 1);
    other.client[0] = u32::from_ne_bytes([198, 51, 100, 9]);
    f.insert(5, other);
    let at = |max: u32| {
        let limits = [(0u32, max)].into_iter().collect();
        let pass = expiry::Pass {
            timeouts: &Timeouts::default(),
            limits: &limits,
            log: false,
            now,
            grace: &|| {},
            ports: (0, u16::MAX),
        };
        expiry::sweep_with(&f, &pass).unwrap().full
    };
    let full = at(3);
    assert_eq!(full.len(), 1, "{full:?}");
    let k = full.iter().next().unwrap();
    assert_eq!(
        (k.vip_id, k.addr[0]),
        (0, flow(1, Ct::Established, 0, 0).client[0])
    );
    assert!(at(4).is_empty(), "closed flows do not count");
    assert_eq!(at(1).len(), 2);
    assert!(
        expiry::sweep(&f, &Timeouts::default(), now)
            .unwrap()
            .full
            .is_empty()
    );
}

#[test]
fn expiry_frees_orphan_slots_and_stale_references() {
    let f = FakeFlows::new(8, 64);
    let now = 10_000 * S;
    // A slot claimed with no reference (two CPUs restarting one tuple), long enough ago.
    let r = f.insert(5, flow(40005, Ct::Established, now - 10 * S, 1));
    f.refs.0.lock().unwrap().clear();
    // A reference to a slot someone else owns now.
    let stale = flow(40006, Ct::Established, now, 1);
    f.refs
        .0
        .lock()
        .unwrap()
        .insert(stale.key_v4(), lb_common::FlowRef { slot: 6, token: 77 });
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!((s.orphans, s.stale_refs), (1, 1));
    assert_eq!(f.entry(r.slot).owner, slot::FREE);
    assert!(f.refs.0.lock().unwrap().is_empty());
}

#[test]
fn expiry_frees_a_busy_orphan_by_age() {
    let f = FakeFlows::new(8, 64);
    let now = 10_000 * S;
    // Unreferenced but busy (a stale FLOW_HINTS4 hint keeps it touched): freed once it is older
    // than the grace period, left alone while it may still be being created.
    let mut old = flow(40008, Ct::Established, now, 1);
    old.created_s = (now / S - 10) as u32;
    let mut young = flow(40009, Ct::SynSent, now, 1);
    young.created_s = (now / S) as u32;
    let (a, b) = (f.insert(1, old), f.insert(2, young));
    f.refs.0.lock().unwrap().clear();
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!(s.orphans, 1);
    assert_eq!(f.entry(a.slot).owner, slot::FREE);
    assert_eq!(f.entry(b.slot).owner, b.token);
}

#[test]
fn expiry_keeps_referenced_ipv6_flows_and_removes_their_references_when_they_expire() {
    let f = FakeFlows::new(8, 64);
    let now = 10_000 * S;
    let client = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef,
    ];
    let vip = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let v6 = |port: u16, last_seen: u64| {
        let mut e = flow(port, Ct::Established, last_seen, 1);
        e.flags = FlowEntry::CLIENT_V6;
        e.client = lb_common::words_of_v6(client);
        e
    };
    // Busy and old: only its FLOWS6 reference keeps it from being an orphan.
    let (live, idle) = (v6(40010, now), v6(40011, now - 16 * 60 * S));
    let (a, b) = (f.insert(1, live), f.insert(2, idle));
    f.refs.0.lock().unwrap().clear();
    for (e, r) in [(live, a), (idle, b)] {
        let key = lb_common::Flow6Key::new(client, vip, e.client_port, 5100, 6);
        f.refs6.0.lock().unwrap().insert(key, r);
    }
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!((s.orphans, s.expired, s.live), (0, 1, 1), "{s:?}");
    assert_eq!(f.entry(a.slot).owner, a.token);
    assert_eq!(f.entry(b.slot).owner, slot::FREE);
    let left: Vec<_> = f.refs6.0.lock().unwrap().values().copied().collect();
    assert_eq!(
        left,
        vec![a],
        "the expired flow's FLOWS6 entry went with it"
    );
}

#[test]
fn expiry_leaves_a_tuple_that_a_newer_flow_took() {
    let f = FakeFlows::new(8, 64);
    let now = 10_000 * S;
    let old = flow(40007, Ct::Closed, now - 20 * S, 1);
    f.insert(1, old);
    // The client reused its port: FLOWS4 now points at a new flow in slot 2.
    let newer = f.insert(2, flow(40007, Ct::SynSent, now, 2));
    let s = expiry::sweep(&f, &Timeouts::default(), now).unwrap();
    assert_eq!(s.orphans, 1, "the old slot had lost its reference");
    assert_eq!(f.refs4().get(&old.key_v4()).unwrap(), Some(newer));
    assert!(f.entry(2).is_live());
}

#[test]
fn expired_and_dying_slots_are_freed_only_after_one_grace_period_for_all() {
    let f = std::sync::Arc::new(FakeFlows::new(8, 64));
    let now = 10_000 * S;
    f.insert(1, flow(40021, Ct::Closed, now - 20 * S, 1));
    f.insert(2, flow(40022, Ct::Established, now - 16 * 60 * S, 1));
    // Ended by the data path (a new connection on its tuple): DYING, no reference.
    let r = f.insert(3, flow(40023, Ct::Closed, now, 1));
    f.refs
        .0
        .lock()
        .unwrap()
        .remove(&flow(40023, Ct::Closed, now, 1).key_v4());
    f.table.lock().unwrap()[3].owner = slot::DYING;
    let seen = std::sync::Mutex::new(Vec::new());
    let grace = || {
        // When the grace period starts, every slot to free is DYING: none is FREE yet.
        seen.lock()
            .unwrap()
            .extend([1u32, 2, 3].map(|s| f.entry(s).owner));
    };
    let pass = expiry::Pass {
        timeouts: &Timeouts::default(),
        limits: &Default::default(),
        log: false,
        now,
        grace: &grace,
        ports: (0, u16::MAX),
    };
    let s = expiry::sweep_with(f.as_ref(), &pass).unwrap();
    assert_eq!(s.expired, 2);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![slot::DYING; 3],
        "one grace period, all DYING"
    );
    for slot in [1, 2, 3] {
        assert_eq!(f.entry(slot).owner, slot::FREE);
    }
    let _ = r;
}

#[test]
fn expiry_rewrites_the_port_bitmaps_from_the_table() {
    let f = FakeFlows::new(lb_common::SLOTS_PER_SNAT_ADDR, 1024);
    let now = 10_000 * S;
    // Ports 1024..=1087 (bitmap word 16) all live; port 2000 idle long enough to expire.
    for port in 1024..1088u16 {
        f.insert(port as u32, flow(port, Ct::Established, now, 1));
    }
    f.insert(2000, flow(2000, Ct::Established, now - 16 * 60 * S, 1));
    let pass = expiry::Pass {
        timeouts: &Timeouts::default(),
        limits: &Default::default(),
        log: false,
        now,
        grace: &|| {},
        ports: (1024, 65535),
    };
    let s = expiry::sweep_with(&f, &pass).unwrap();
    assert_eq!((s.expired, s.live), (1, 64));
    let (bits, full) = f.port_maps.lock().unwrap().clone();
    assert_eq!(bits.len(), 1024);
    assert_eq!(bits[16], u64::MAX, "the live ports are taken");
    assert_eq!(bits[2000 / 64], 0, "the freed port is free again");
    assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 64);
    assert_eq!(
        full,
        vec![1 << 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}
