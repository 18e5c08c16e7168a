//! BPF_PROG_TEST_RUN fixtures through the real compiled XDP object (root; CI runs them).
//! Each test builds its own private network namespace; see wklb_tests::fixture.

use std::net::Ipv4Addr;

use lb_common::{DataplaneConfig, FlowKey, PROTO_TCP, PROTO_UDP, Reason, conntrack::State};
use wklb_tests::{
    fixture::*,
    netns::in_private_netns,
    packets::{self, CLIENT_MAC, inspect, tcp, tcp_ttl, udp},
    root::require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn with_fixture(test: &'static str, max_flows: u32, f: impl FnOnce(&mut Fixture) + Send + 'static) {
    if !require_root(test) {
        return;
    }
    in_private_netns(move || {
        let mut fx = Fixture::new(max_flows).expect("fixture topology and data plane");
        f(&mut fx);
    });
}

fn reasons(fx: &Fixture) -> Vec<u64> {
    fx.dp.reasons().unwrap()
}

/// Asserts that exactly `reason` moved by `n` since `before`, and nothing else did.
fn assert_only(fx: &Fixture, before: &[u64], reason: Reason, n: u64) {
    let after = reasons(fx);
    for r in Reason::ALL {
        let d = after[r as usize] - before[r as usize];
        let want = if r == reason { n } else { 0 };
        assert_eq!(d, want, "reason {} moved by {d}, expected {want}", r.name());
    }
}

fn client(port: u16) -> (Ipv4Addr, u16) {
    (CLIENT, port)
}
const VIP_TCP: (Ipv4Addr, u16) = (VIP, VIP_TCP_PORT);
const VIP_UDP: (Ipv4Addr, u16) = (VIP, VIP_UDP_PORT);

fn flow_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> FlowKey {
    FlowKey::new(
        lb_common::Addr::v4(src.0.octets()),
        lb_common::Addr::v4(dst.0.octets()),
        src.1,
        dst.1,
        proto,
        lb_common::FAMILY_IPV4,
    )
}

/// Sends a SYN and returns (backend index, SNAT port) the program chose.
fn open(fx: &mut Fixture, port: u16) -> (usize, u16) {
    let (act, out) = fx
        .run(fx.client_if, &tcp(client(port), VIP_TCP, "S", b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "SYN from port {port} not redirected");
    let s = inspect(&out);
    let idx = BACKENDS
        .iter()
        .position(|b| *b == s.dst)
        .expect("sent to a backend");
    (idx, s.src_port)
}

#[test]
fn syn_goes_to_the_maglev_backend_from_the_snat_address() {
    with_fixture("syn_goes_to_the_maglev_backend", 1024, |fx| {
        let before = reasons(fx);
        let want = fx.predict(TCP_VIP_ID, client(40001), VIP_TCP, PROTO_TCP) as usize;
        let syn = tcp(client(40001), VIP_TCP, "S", b"");
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT, "forwarded to the backend-side interface");
        let s = inspect(&out);
        assert_eq!(s.dst, BACKENDS[want]);
        assert_eq!(s.dst_port, VIP_TCP_PORT);
        assert_eq!(s.src, SNAT);
        assert!(s.src_port >= DataplaneConfig::DEFAULT_SNAT_PORT_MIN);
        assert_eq!(s.ttl, 63);
        assert!(s.checksums_ok, "IP and TCP checksums must verify: {s:?}");
        assert_eq!(s.eth_dst, backend_mac(want));
        assert_eq!(s.eth_src, fx.backend_side_mac);
        assert_only(fx, &before, Reason::Forwarded, 1);
        let st = fx.dp.backend_stats(want as u32).unwrap();
        assert_eq!(
            (st.new_flows, st.packets_in, st.bytes_in),
            (1, 1, (syn.len() - 14) as u64)
        );
        let vs = fx.dp.vip_stats(TCP_VIP_ID).unwrap();
        assert_eq!((vs.packets, vs.new_flows), (1, 1));
        let flows = fx.dp.flows().unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].1.state, State::SynSent as u8);
        assert_eq!(fx.dp.reverse_flow_count().unwrap(), 1);
    });
}

#[test]
fn later_packets_follow_the_flow_and_the_reply_is_translated_back() {
    with_fixture("later_packets_follow_the_flow", 1024, |fx| {
        let (b, snat_port) = open(fx, 40002);
        // Backend's SYN-ACK to the SNAT address comes back as VIP -> client.
        let before = reasons(fx);
        let synack = tcp((BACKENDS[b], VIP_TCP_PORT), (SNAT, snat_port), "SA", b"");
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!((s.src, s.src_port), VIP_TCP);
        assert_eq!((s.dst, s.dst_port), client(40002));
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(s.eth_dst, CLIENT_MAC);
        assert_eq!(s.eth_src, fx.client_side_mac);
        assert_only(fx, &before, Reason::Reversed, 1);
        let key = flow_key(client(40002), VIP_TCP, PROTO_TCP);
        let state = |fx: &Fixture| {
            fx.dp
                .flows()
                .unwrap()
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap()
                .1
                .state
        };
        assert_eq!(state(fx), State::Established as u8);

        // Client data follows the same backend and SNAT port; payload intact.
        for flags in ["A", "PA", "PA"] {
            let (act, out) = fx
                .run(fx.client_if, &tcp(client(40002), VIP_TCP, flags, b"\x70"))
                .unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let s = inspect(&out);
            assert_eq!((s.dst, s.src, s.src_port), (BACKENDS[b], SNAT, snat_port));
            assert_eq!(s.payload, b"\x70");
            assert!(s.checksums_ok);
        }
        let st = fx.dp.backend_stats(b as u32).unwrap();
        assert_eq!((st.new_flows, st.packets_in, st.packets_out), (1, 4, 1));

        // FIN moves the flow to closing.
        fx.run(fx.client_if, &tcp(client(40002), VIP_TCP, "FA", b""))
            .unwrap();
        assert_eq!(state(fx), State::Closing as u8);
    });
}

#[test]
fn ring_change_keeps_existing_flows_and_moves_new_ones() {
    with_fixture("ring_change_keeps_existing_flows", 4096, |fx| {
        let existing: Vec<(u16, usize, u16)> = (41000..41100)
            .map(|p| {
                let (b, sp) = open(fx, p);
                (p, b, sp)
            })
            .collect();
        // Every backend got some of them, so the checks below can fail.
        for i in 0..3 {
            assert!(existing.iter().any(|e| e.1 == i), "backend {i} got no flow");
        }
        // New table: backend 2 only.
        fx.install(TCP_VIP_ID, &[(0, 0), (1, 0), (2, 1)]).unwrap();
        for (p, b, sp) in &existing {
            let (act, out) = fx
                .run(fx.client_if, &tcp(client(*p), VIP_TCP, "A", b""))
                .unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let s = inspect(&out);
            assert_eq!(
                (s.dst, s.src_port),
                (BACKENDS[*b], *sp),
                "flow from port {p} moved"
            );
        }
        for p in 42000..42050 {
            assert_eq!(open(fx, p).0, 2, "new flow from {p} ignored the new table");
        }
    });
}

#[test]
fn syn_reusing_a_closed_tuple_or_a_removed_backend_starts_a_new_flow() {
    with_fixture("syn_reusing_a_closed_tuple", 1024, |fx| {
        let (b, sp) = open(fx, 43000);
        // A retransmitted SYN follows the live flow: no new flow, same SNAT port.
        assert_eq!(open(fx, 43000), (b, sp));
        assert_eq!(fx.dp.backend_stats(b as u32).unwrap().new_flows, 1);
        fx.run(fx.client_if, &tcp(client(43000), VIP_TCP, "A", b""))
            .unwrap();
        fx.run(fx.client_if, &tcp(client(43000), VIP_TCP, "R", b""))
            .unwrap();
        // Same tuple, new connection: a fresh flow (counted as new) on the table's choice.
        let (b2, _) = open(fx, 43000);
        assert_eq!(b2, b, "same table, same hash");
        assert_eq!(fx.dp.backend_stats(b as u32).unwrap().new_flows, 2);
        assert_eq!(fx.dp.flows().unwrap().len(), 1);
        assert_eq!(
            fx.dp.reverse_flow_count().unwrap(),
            1,
            "old reverse entry removed"
        );

        // Established flows keep their backend even when it leaves the table...
        let (e, esp) = open(fx, 43001);
        fx.run(fx.client_if, &tcp(client(43001), VIP_TCP, "A", b""))
            .unwrap();
        let others: Vec<(u32, u32)> = (0..3u32).map(|i| (i, (i as usize != e) as u32)).collect();
        fx.set_backend(e as u32, BACKENDS[e], VIP_TCP_PORT, false)
            .unwrap();
        fx.install(TCP_VIP_ID, &others).unwrap();
        let (_, out) = fx
            .run(fx.client_if, &tcp(client(43001), VIP_TCP, "PA", b"x"))
            .unwrap();
        let s = inspect(&out);
        assert_eq!(
            (s.dst, s.src_port),
            (BACKENDS[e], esp),
            "established flow moved"
        );
        // ...but a SYN on that tuple after the backend was removed picks a live one.
        let (e2, _) = open(fx, 43001);
        assert_ne!(e2, e, "SYN followed a removed backend");
    });
}

#[test]
fn udp_request_and_reply_both_ways() {
    with_fixture("udp_request_and_reply", 1024, |fx| {
        let want = fx.predict(UDP_VIP_ID, client(50000), VIP_UDP, PROTO_UDP);
        let idx = (want - UDP_BACKEND_BASE) as usize;
        let (act, out) = fx
            .run(fx.client_if, &udp(client(50000), VIP_UDP, b"ping"))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!(
            (s.dst, s.dst_port, s.src),
            (BACKENDS[idx], VIP_UDP_PORT, SNAT)
        );
        assert!(s.checksums_ok, "{s:?}");
        let reply = udp(
            (BACKENDS[idx], VIP_UDP_PORT),
            (SNAT, s.src_port),
            b"backend-1",
        );
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let r = inspect(&out);
        assert_eq!(
            ((r.src, r.src_port), (r.dst, r.dst_port)),
            (VIP_UDP, client(50000))
        );
        assert_eq!(r.payload, b"backend-1");
        assert!(r.checksums_ok, "{r:?}");
        let flows = fx.dp.flows().unwrap();
        assert_eq!(flows[0].1.state, State::Udp as u8);
        // UDP without checksum (0) stays without one.
        let mut nocsum = udp(client(50001), VIP_UDP, b"x");
        let l4 = 14 + 20;
        nocsum[l4 + 6] = 0;
        nocsum[l4 + 7] = 0;
        let (_, out) = fx.run(fx.client_if, &nocsum).unwrap();
        assert_eq!(&out[l4 + 6..l4 + 8], &[0, 0]);
        // Many source ports spread over all three backends.
        let mut seen = [0u32; 3];
        for p in 51000..51300 {
            let (_, out) = fx
                .run(fx.client_if, &udp(client(p), VIP_UDP, b"q"))
                .unwrap();
            seen[BACKENDS
                .iter()
                .position(|b| *b == inspect(&out).dst)
                .unwrap()] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
    });
}

#[test]
fn traffic_that_is_not_ours_passes_byte_for_byte() {
    with_fixture("traffic_that_is_not_ours_passes", 1024, |fx| {
        let ssh_to_host = tcp(client(40100), (EDGE_CLIENT_SIDE, 22), "S", b"");
        let vip_other_port = tcp(client(40101), (VIP, 22), "S", b"");
        let udp_on_tcp_port = udp(client(40102), (VIP, VIP_TCP_PORT), b"x");
        let routed_through = tcp(client(40103), (Ipv4Addr::new(10, 30, 0, 5), 443), "S", b"");
        let from_snat_addr_no_flow = tcp((BACKENDS[0], 5100), (SNAT, 33333), "SA", b"");
        let cases: [(&str, Vec<u8>, Reason); 6] = [
            ("arp", packets::arp_request(), Reason::PassNotIpv4),
            ("ssh to the host", ssh_to_host, Reason::PassNotOurs),
            (
                "VIP address, other port",
                vip_other_port,
                Reason::PassNotOurs,
            ),
            (
                "UDP to a TCP-only VIP port",
                udp_on_tcp_port,
                Reason::PassNotOurs,
            ),
            (
                "routed through the edge",
                routed_through,
                Reason::PassNotOurs,
            ),
            (
                "to the SNAT address without a flow",
                from_snat_addr_no_flow,
                Reason::PassNotOurs,
            ),
        ];
        for (what, frame, reason) in cases {
            let before = reasons(fx);
            let (act, out) = fx.run(fx.client_if, &frame).unwrap();
            assert_eq!(act, XDP_PASS, "{what}");
            assert_eq!(out, frame, "{what}: frame changed");
            assert_only(fx, &before, reason, 1);
        }
        // ICMP echo to the VIP address goes to the kernel untouched.
        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 0, 1])
            .ipv4(CLIENT.octets(), VIP.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"hi")
            .unwrap();
        let before = reasons(fx);
        let (act, out) = fx.run(fx.client_if, &icmp).unwrap();
        assert_eq!((act, &out), (XDP_PASS, &icmp));
        assert_only(fx, &before, Reason::PassIcmp, 1);
        assert!(fx.dp.flows().unwrap().is_empty());
    });
}

#[test]
fn truncated_and_bad_headers_never_abort_and_are_counted() {
    with_fixture("truncated_and_bad_headers", 1024, |fx| {
        let syn = tcp(client(44000), VIP_TCP, "S", b"");
        // Cut at every length: Ethernet (14), IPv4 (20), TCP (20). Below 14 the kernel refuses
        // the test run itself, so start at the Ethernet header.
        for len in 14..syn.len() {
            let before = reasons(fx);
            let (act, out) = fx.run(fx.client_if, &syn[..len]).unwrap();
            let expect = if len < 34 {
                Reason::PassUnparsable
            } else {
                Reason::DropMalformed
            };
            let want_act = if len < 34 { XDP_PASS } else { XDP_DROP };
            assert_eq!(act, want_act, "cut at {len}");
            assert_eq!(out, &syn[..len], "cut at {len}: frame changed");
            assert_only(fx, &before, expect, 1);
        }
        // Truncated inside the VLAN tag.
        let tagged = packets::with_vlan(&syn, 7);
        let before = reasons(fx);
        assert_eq!(fx.run(fx.client_if, &tagged[..16]).unwrap().0, XDP_PASS);
        assert_only(fx, &before, Reason::PassUnparsable, 1);

        let mut bad_ihl = syn.clone();
        bad_ihl[14] = 0x44;
        let mut bad_version = syn.clone();
        bad_version[14] = 0x65;
        let mut more_fragments = syn.clone();
        more_fragments[20] = 0x20;
        let mut later_fragment = syn.clone();
        later_fragment[21] = 0x10;
        let ihl_past_end = {
            let mut p = syn.clone();
            p[14] = 0x4f; // 60-byte header: the TCP header would start past the frame
            p
        };
        let cases: [(&str, Vec<u8>, u32, Reason); 7] = [
            ("IHL 4", bad_ihl, XDP_DROP, Reason::DropMalformed),
            (
                "version 6 in an IPv4 frame",
                bad_version,
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "IHL beyond the frame",
                ihl_past_end,
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "more-fragments",
                more_fragments,
                XDP_DROP,
                Reason::DropFragment,
            ),
            (
                "fragment offset",
                later_fragment,
                XDP_DROP,
                Reason::DropFragment,
            ),
            (
                "TTL 1",
                tcp_ttl(client(44001), VIP_TCP, "S", b"", 1),
                XDP_DROP,
                Reason::DropTtlExpired,
            ),
            (
                "ACK without state",
                tcp(client(44002), VIP_TCP, "A", b""),
                XDP_DROP,
                Reason::DropNonSynNoState,
            ),
        ];
        for (what, frame, act, reason) in cases {
            let before = reasons(fx);
            assert_eq!(fx.run(fx.client_if, &frame).unwrap().0, act, "{what}");
            assert_only(fx, &before, reason, 1);
        }
        // The non-SYN policy can pass instead (the kernel then answers with a RST).
        let mut cfg = fx.dp.config().unwrap();
        cfg.flags |= DataplaneConfig::NON_SYN_PASS;
        fx.dp.set_config(&cfg).unwrap();
        let before = reasons(fx);
        let ack = tcp(client(44003), VIP_TCP, "A", b"");
        assert_eq!(fx.run(fx.client_if, &ack).unwrap(), (XDP_PASS, ack));
        assert_only(fx, &before, Reason::PassNonSynNoState, 1);
        assert!(
            fx.dp.flows().unwrap().is_empty(),
            "no bad packet may create a flow"
        );
    });
}

#[test]
fn vlan_tag_and_ip_options_are_handled() {
    with_fixture("vlan_tag_and_ip_options", 1024, |fx| {
        let syn = packets::with_vlan(&tcp(client(45000), VIP_TCP, "S", b""), 42);
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!(s.vlan, Some(42), "tag kept");
        assert_eq!(s.src, SNAT);
        assert!(s.checksums_ok);

        let with_opts = packets::with_ip_options(&tcp(client(45001), VIP_TCP, "S", b"abc"), 3);
        let (act, out) = fx.run(fx.client_if, &with_opts).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!((s.src, s.dst_port), (SNAT, VIP_TCP_PORT));
        assert_eq!(s.payload, b"abc");
        assert!(s.checksums_ok, "{s:?}");
    });
}

#[test]
fn full_connection_table_refuses_new_flows_but_keeps_established_ones() {
    with_fixture("full_connection_table", 8, |fx| {
        for p in 0..8 {
            open(fx, 46000 + p);
        }
        let before = reasons(fx);
        let (act, _) = fx
            .run(fx.client_if, &tcp(client(46100), VIP_TCP, "S", b""))
            .unwrap();
        assert_eq!(act, XDP_DROP);
        assert_only(fx, &before, Reason::DropConntrackFull, 1);
        // Established flows still pass, and no half-created state was left behind.
        let (act, _) = fx
            .run(fx.client_if, &tcp(client(46000), VIP_TCP, "A", b""))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_eq!(fx.dp.flows().unwrap().len(), 8);
        assert_eq!(fx.dp.reverse_flow_count().unwrap(), 8);
    });
}

#[test]
fn exhausted_snat_ports_are_counted() {
    with_fixture("exhausted_snat_ports", 1024, |fx| {
        let mut cfg = fx.dp.config().unwrap();
        cfg.snat_port_min = 40000;
        cfg.snat_port_max = 40001;
        fx.dp.set_config(&cfg).unwrap();
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        let ports: Vec<u16> = (0..2).map(|i| open(fx, 47000 + i).1).collect();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![40000, 40001],
            "two flows, two distinct SNAT ports"
        );
        let before = reasons(fx);
        let (act, _) = fx
            .run(fx.client_if, &tcp(client(47002), VIP_TCP, "S", b""))
            .unwrap();
        assert_eq!(act, XDP_DROP);
        assert_only(fx, &before, Reason::DropSnatExhausted, 1);
    });
}

#[test]
fn empty_table_and_unresolved_neighbour_are_counted() {
    with_fixture("empty_table_and_unresolved_neighbour", 1024, |fx| {
        fx.install(TCP_VIP_ID, &[(0, 0), (1, 0), (2, 0)]).unwrap();
        let before = reasons(fx);
        let (act, _) = fx
            .run(fx.client_if, &tcp(client(48000), VIP_TCP, "S", b""))
            .unwrap();
        assert_eq!(act, XDP_DROP);
        assert_only(fx, &before, Reason::DropNoBackend, 1);
        assert_eq!(fx.dp.vip_stats(TCP_VIP_ID).unwrap().no_backend, 1);

        // A backend whose MAC is not known yet: the translated packet goes to the kernel.
        fx.set_backend(0, UNRESOLVED_BACKEND, VIP_TCP_PORT, true)
            .unwrap();
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        let before = reasons(fx);
        let (act, out) = fx
            .run(fx.client_if, &tcp(client(48001), VIP_TCP, "S", b""))
            .unwrap();
        assert_eq!(act, XDP_PASS);
        let s = inspect(&out);
        assert_eq!((s.src, s.dst), (SNAT, UNRESOLVED_BACKEND));
        assert!(s.checksums_ok);
        assert_only(fx, &before, Reason::PassNoNeighbor, 1);
    });
}

#[test]
fn verifier_instruction_count() {
    with_fixture("verifier_instruction_count", 1024, |fx| {
        let n = fx.dp.verified_instructions().unwrap();
        println!("wklb XDP program: {n} instructions processed by the verifier");
        assert!(n > 0 && n < 1_000_000, "{n}");
    });
}
