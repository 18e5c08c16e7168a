//! BPF_PROG_TEST_RUN fixtures through the real compiled XDP object (root; CI runs them).
//! Each test builds its own private network namespace; see wklb_tests::fixture.

use std::net::Ipv4Addr;

use lb_common::{
    Addr, AddrClass, DataplaneConfig, FAMILY_IPV4, PROTO_TCP, PROTO_UDP, Reason, SnatAddr, Vip4Key,
    VipInfo, VipMeta, conntrack::State, mss,
};
use lb_userspace::dataplane::kernel;
use wklb_tests::{
    exchange::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, plain::*},
    fixture::*,
    netns::ip,
    packets::{
        self, CLIENT_MAC, Seg, echo, icmp_error, inspect, inspect_icmp, quoted_tuple, tcp, tcp_seg,
        tcp_ttl, udp,
    },
};

const VIP_UDP: (Ipv4Addr, u16) = (VIP, VIP_UDP_PORT);
/// A router between the edge and the backends, the source of ICMP errors about them.
const BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 254);

#[test]
fn syn_goes_to_the_maglev_backend_from_the_snat_address() {
    with_fixture("syn_goes_to_the_maglev_backend", 1024, |fx| {
        let before = fx.reasons();
        let want = fx.predict(TCP_VIP_ID, client(40001), VIP_TCP, PROTO_TCP) as usize;
        let frame = syn(40001);
        let (act, out) = fx.run(fx.client_if, &frame).unwrap();
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
        let st = fx.backend_stats(want as u32);
        assert_eq!(
            (st.new_flows, st.packets_in, st.bytes_in),
            (1, 1, (frame.len() - 14) as u64)
        );
        let vs = fx.vip_stats(TCP_VIP_ID);
        assert_eq!((vs.packets, vs.new_flows), (1, 1));
        let flows = fx.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].1.state, State::SynSent as u8);
        assert_eq!(
            lb_common::slot::port_of(flows[0].0),
            s.src_port,
            "slot = SNAT port"
        );
        assert_eq!(fx.refs(), 1);
    });
}

#[test]
fn a_new_flow_handed_to_the_flow_program_without_the_entrys_parse_is_parsed_there() {
    with_fixture("flow_program_without_parse", 1024, |fx| {
        // An entry program of another load (the moments of a restart or an upgrade between
        // installing the tail-called programs and attaching the new entry) hands over the
        // packet only: the flow program parses it, and the flow is made as from our entry.
        for (frame, want) in [
            (
                syn(40101),
                fx.predict(TCP_VIP_ID, client(40101), VIP_TCP, PROTO_TCP),
            ),
            (
                udp(client(40102), VIP_UDP, b"hello"),
                fx.predict(UDP_VIP_ID, client(40102), VIP_UDP, PROTO_UDP) - UDP_BACKEND_BASE,
            ),
        ] {
            let before = fx.reasons();
            let (act, out) = fx.run_program("wklb_flow", fx.client_if, &frame).unwrap();
            assert_eq!(act, XDP_REDIRECT);
            assert_only(fx, &before, Reason::Forwarded, 1);
            let s = inspect(&out);
            assert_eq!((s.src, s.dst), (SNAT, BACKENDS[want as usize]));
            assert!(s.checksums_ok, "{s:?}");
        }
        assert_eq!(fx.refs(), 2);
    });
}

#[test]
fn handshake_data_and_replies_follow_the_flow() {
    with_fixture("handshake_data_and_replies_follow_the_flow", 1024, |fx| {
        let (b, snat_port) = open(fx, 40002);
        // A client's pure ACK before the backend answered does not establish the flow.
        fx.run(fx.client_if, &tcp(client(40002), VIP_TCP, "A", b""))
            .unwrap();
        assert_eq!(state_of(fx, 40002), State::SynSent as u8);
        // Backend's SYN-ACK to the SNAT address comes back as VIP -> client.
        let before = fx.reasons();
        let synack = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, snat_port),
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!((s.src, s.src_port), VIP_TCP);
        assert_eq!((s.dst, s.dst_port), client(40002));
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(
            s.eth_dst, CLIENT_MAC,
            "back to the MAC the client's frames came from"
        );
        assert_eq!(s.eth_src, packets::EDGE_MAC);
        assert_only(fx, &before, Reason::Reversed, 1);
        assert_eq!(state_of(fx, 40002), State::Established as u8);
        // Client data follows the same backend and SNAT port; payload intact.
        for _ in 0..2 {
            let data = tcp_seg(
                client(40002),
                VIP_TCP,
                &Seg {
                    flags: "PA",
                    seq: ISN + 1,
                    ack: BACKEND_ISN + 1,
                    payload: b"\x70",
                    ..Seg::default()
                },
            );
            let (act, out) = fx.run(fx.client_if, &data).unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let s = inspect(&out);
            assert_eq!((s.dst, s.src, s.src_port), (BACKENDS[b], SNAT, snat_port));
            assert_eq!(s.payload, b"\x70");
            assert!(s.checksums_ok);
        }
        let st = fx.backend_stats(b as u32);
        assert_eq!((st.new_flows, st.packets_in, st.packets_out), (1, 4, 1));
        // An in-window FIN moves the flow to closing.
        let fin = tcp_seg(
            client(40002),
            VIP_TCP,
            &Seg {
                flags: "FA",
                seq: ISN + 2,
                ack: BACKEND_ISN + 1,
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &fin).unwrap();
        assert_eq!(state_of(fx, 40002), State::Closing as u8);
    });
}

#[test]
fn handshakes_record_both_round_trips_and_established_segments_do_not() {
    use lb_common::rtt::{RTT_BACKEND, RTT_CLIENT, rtt_bucket_floor_ns};
    with_fixture("handshakes_record_both_round_trips", 1024, |fx| {
        let port = 45_001;
        let (b, sp) = open(fx, port);
        std::thread::sleep(std::time::Duration::from_millis(8));
        backend_answers(fx, b, sp);
        std::thread::sleep(std::time::Duration::from_millis(3));
        client_acks(fx, port);
        // More segments of the established flow add nothing.
        for _ in 0..3 {
            client_acks(fx, port);
        }
        // One sample each, in the bucket of what the test waited (plus scheduling noise).
        let one = |kind: u32, at_least_ms: u64| {
            let row = fx.rtt(b as u32, kind);
            assert_eq!(row.counts.iter().sum::<u64>(), 1, "kind {kind}: {row:?}");
            let bucket = row.counts.iter().position(|c| *c == 1).unwrap() as u32;
            let (lo, hi) = (rtt_bucket_floor_ns(bucket), rtt_bucket_floor_ns(bucket + 1));
            assert!(
                hi > at_least_ms * 1_000_000 && lo < (at_least_ms + 50) * 1_000_000,
                "kind {kind}: bucket {bucket} [{lo}, {hi}) ns for {at_least_ms} ms"
            );
        };
        one(RTT_BACKEND, 8);
        one(RTT_CLIENT, 3);
    });
}

#[test]
fn blind_rst_and_fin_are_forwarded_but_do_not_end_the_flow() {
    with_fixture("blind_rst_and_fin", 1024, |fx| {
        let (b, snat_port) = establish(fx, 40010);
        for (i, seq) in [0u32, ISN, ISN + 7, 0xdead_beef].into_iter().enumerate() {
            let before = fx.reasons();
            let rst = tcp_seg(
                client(40010),
                VIP_TCP,
                &Seg {
                    flags: "R",
                    seq,
                    ..Seg::default()
                },
            );
            let (act, _) = fx.run(fx.client_if, &rst).unwrap();
            assert_eq!(act, XDP_REDIRECT, "the backend decides (attempt {i})");
            assert_only(fx, &before, Reason::ForwardedOutOfWindow, 1);
            assert_eq!(state_of(fx, 40010), State::Established as u8);
        }
        // From the backend side too.
        let before = fx.reasons();
        let rst = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, snat_port),
            &Seg {
                flags: "RA",
                seq: 77,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.backend_if, &rst).unwrap().0, XDP_REDIRECT);
        assert_only(fx, &before, Reason::ReversedOutOfWindow, 1);
        // A FIN far outside the backend's window.
        let fin = tcp_seg(
            client(40010),
            VIP_TCP,
            &Seg {
                flags: "FA",
                seq: ISN + 1 + 10_000_000,
                ack: BACKEND_ISN + 1,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        fx.run(fx.client_if, &fin).unwrap();
        assert_only(fx, &before, Reason::ForwardedOutOfWindow, 1);
        assert_eq!(state_of(fx, 40010), State::Established as u8);
        // The exact RST (the backend's RCV.NXT) does.
        let rst = tcp_seg(
            client(40010),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: ISN + 1,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        fx.run(fx.client_if, &rst).unwrap();
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert_eq!(state_of(fx, 40010), State::Closed as u8);
    });
}

#[test]
fn syn_with_rst_or_fin_is_dropped_and_creates_nothing() {
    with_fixture("syn_with_rst_or_fin", 1024, |fx| {
        for flags in ["SR", "SF"] {
            let before = fx.reasons();
            let f = tcp_seg(
                client(40020),
                VIP_TCP,
                &Seg {
                    flags,
                    ..Seg::default()
                },
            );
            assert_eq!(fx.run(fx.client_if, &f).unwrap().0, XDP_DROP, "{flags}");
            assert_only(fx, &before, Reason::DropBadTcpFlags, 1);
        }
        assert!(fx.flows().is_empty());
        // On an existing flow too.
        establish(fx, 40021);
        let before = fx.reasons();
        let f = tcp_seg(
            client(40021),
            VIP_TCP,
            &Seg {
                flags: "SR",
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &f).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropBadTcpFlags, 1);
        assert_eq!(state_of(fx, 40021), State::Established as u8);
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
        for i in 0..3 {
            assert!(existing.iter().any(|e| e.1 == i), "backend {i} got no flow");
        }
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
fn back_to_back_table_flips_are_whole_and_read_back() {
    with_fixture("back_to_back_table_flips", 4096, |fx| {
        use lb_userspace::dataplane::Maps as _;
        // Each install fills the table packets do not use, then flips the selector; the third
        // reuses the first one's buffer and must wait out its grace period, not corrupt it.
        for (round, only) in [0u32, 1, 2, 0, 1].into_iter().enumerate() {
            let members: Vec<(u32, u32)> = (0..3).map(|b| (b, (b == only) as u32)).collect();
            fx.install(TCP_VIP_ID, &members).unwrap();
            let live = fx.maps.read().unwrap().tables[&TCP_VIP_ID].clone();
            assert_eq!(
                live, fx.image.tables[&TCP_VIP_ID],
                "round {round}: read-back differs"
            );
            assert!(
                live.iter().all(|b| *b == only),
                "round {round}: table not whole"
            );
            for p in 0..20u16 {
                let port = 43000 + round as u16 * 100 + p;
                assert_eq!(
                    open(fx, port).0,
                    only as usize,
                    "round {round}: flow from {port}"
                );
            }
        }
        // Removing the VIP's table refuses new flows.
        fx.image.tables.remove(&TCP_VIP_ID);
        fx.sync().unwrap();
        assert!(!fx.maps.read().unwrap().tables.contains_key(&TCP_VIP_ID));
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn(44000)).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropNoBackend, 1);
    });
}

#[test]
fn syn_reusing_a_closed_tuple_or_a_removed_backend_starts_a_new_flow() {
    with_fixture("syn_reusing_a_closed_tuple", 1024, |fx| {
        let (b, sp) = open(fx, 43000);
        // A retransmitted SYN follows the live flow: no new flow, same SNAT port.
        assert_eq!(open(fx, 43000), (b, sp));
        assert_eq!(fx.backend_stats(b as u32).new_flows, 1);
        let rst = tcp_seg(
            client(43000),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: ISN + 1,
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &rst).unwrap();
        assert_eq!(state_of(fx, 43000), State::Closed as u8);
        // Same tuple, new connection: a fresh flow (counted as new) on the table's choice.
        let (b2, _) = open(fx, 43000);
        assert_eq!(b2, b, "same table, same hash");
        assert_eq!(fx.backend_stats(b as u32).new_flows, 2);
        assert_eq!(fx.flows().len(), 1, "the old slot was released");
        assert_eq!(fx.refs(), 1);

        // Established flows keep their backend even when it leaves the table...
        let (e, esp) = establish(fx, 43001);
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

/// The slot and claim of the flow from `port`, as FLOWS4 and FLOW_HINTS4 name it.
fn flow_ref(fx: &Fixture, port: u16) -> (lb_common::Flow4Key, lb_common::FlowRef) {
    let (slot, e) = fx
        .flows()
        .into_iter()
        .find(|(_, e)| e.client_port == port)
        .unwrap_or_else(|| panic!("no flow from port {port}"));
    (
        e.key_v4(),
        lb_common::FlowRef {
            slot,
            token: e.owner,
        },
    )
}

#[test]
fn flow_hints_are_checked_against_the_flow_they_name() {
    with_fixture("flow_hints", 1024, |fx| {
        let (a, a_sp) = establish(fx, 44000);
        let _ = establish(fx, 44001);
        let (a_key, a_ref) = flow_ref(fx, 44000);
        let (_, b_ref) = flow_ref(fx, 44001);
        assert_eq!(
            fx.program.flow_hint(&a_key).unwrap(),
            Some(a_ref),
            "the handshake's ACK left a hint"
        );
        let data = tcp_seg(
            client(44000),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: ISN + 1,
                ack: BACKEND_ISN + 1,
                payload: b"x",
                ..Seg::default()
            },
        );
        let wrong_token = lb_common::FlowRef {
            token: a_ref.token ^ 2,
            ..a_ref
        };
        // Another live flow's slot and claim, and this flow's slot with a claim it does not
        // hold: both are refused, FLOWS4 answers, and the hint is put right.
        for bad in [b_ref, wrong_token] {
            fx.program.set_flow_hint(&a_key, Some(bad)).unwrap();
            let (act, out) = fx.run(fx.client_if, &data).unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let sent = inspect(&out);
            assert_eq!(
                (sent.dst, sent.src_port),
                (BACKENDS[a], a_sp),
                "hint {bad:?} misrouted"
            );
            assert_eq!(fx.program.flow_hint(&a_key).unwrap(), Some(a_ref));
        }
        // A tuple with no flow, whose hint names a live flow: no state, nothing forwarded.
        let stranger = ack_from(44002);
        let s_key = lb_common::Flow4Key::new(
            client(44002).0.octets(),
            VIP_TCP.0.octets(),
            44002,
            VIP_TCP.1,
            PROTO_TCP,
        );
        fx.program.set_flow_hint(&s_key, Some(a_ref)).unwrap();
        let before = fx.reasons();
        let (act, _) = fx.run(fx.client_if, &stranger).unwrap();
        assert_ne!(act, XDP_REDIRECT);
        assert_eq!(
            fx.reasons()[Reason::Forwarded as usize],
            before[Reason::Forwarded as usize]
        );
        assert_eq!(fx.flows().len(), 2, "no flow created or taken over");
    });
}

#[test]
fn a_reply_must_come_from_the_flows_backend() {
    with_fixture("a_reply_must_come_from_the_flows_backend", 1024, |fx| {
        let (b, sp) = open(fx, 43100);
        let other = (b + 1) % 3;
        for (what, src) in [
            ("another backend", (BACKENDS[other], VIP_TCP_PORT)),
            ("another port of the backend", (BACKENDS[b], 9999)),
        ] {
            let before = fx.reasons();
            let f = tcp((src.0, src.1), (SNAT, sp), "SA", b"");
            assert_eq!(fx.run(fx.backend_if, &f).unwrap().0, XDP_PASS, "{what}");
            assert_only(fx, &before, Reason::PassReplyNoFlow, 1);
        }
        // A port with no flow at all: the host's own.
        let before = fx.reasons();
        let f = tcp(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp.wrapping_add(1)),
            "A",
            b"",
        );
        assert_eq!(fx.run(fx.backend_if, &f).unwrap().0, XDP_PASS);
        assert_only(fx, &before, Reason::PassReplyNoFlow, 1);
    });
}

#[test]
fn udp_request_and_reply_both_ways_with_checksums() {
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
        assert_eq!(fx.flows()[0].1.state, State::Udp as u8);
        // UDP without checksum (0) stays without one.
        let mut nocsum = udp(client(50001), VIP_UDP, b"x");
        nocsum[14 + 20 + 6] = 0;
        nocsum[14 + 20 + 7] = 0;
        let (_, out) = fx.run(fx.client_if, &nocsum).unwrap();
        assert!(inspect(&out).udp_checksum_absent);
        // A checksum that computes to 0 after the rewrite is sent as 0xFFFF.
        let (act, out) = fx
            .run(fx.client_if, &udp(client(50002), VIP_UDP, &[0, 0]))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let first = inspect(&out);
        // Find the payload that makes the rewritten datagram's checksum sum to 0.
        let target = (0..=u16::MAX)
            .find(|v| {
                let mut p = out.clone();
                let n = p.len();
                p[n - 2..].copy_from_slice(&v.to_be_bytes());
                raw_udp_sum(&p) == 0
            })
            .expect("a payload with a zero checksum");
        let (_, out) = fx
            .run(
                fx.client_if,
                &udp(client(50002), VIP_UDP, &target.to_be_bytes()),
            )
            .unwrap();
        let s = inspect(&out);
        assert_eq!((s.src_port, s.dst), (first.src_port, first.dst));
        assert_eq!(s.l4_checksum, 0xffff, "a computed 0 goes out as 0xFFFF");
        assert!(s.checksums_ok, "{s:?}");
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

/// The one's complement checksum a UDP datagram's checksum field would need (0 means "sums to
/// zero"), computed over the pseudo-header and the datagram with its checksum field zeroed.
fn raw_udp_sum(frame: &[u8]) -> u16 {
    let ip = &frame[14..];
    let l4 = &ip[20..];
    let mut d = Vec::new();
    d.extend_from_slice(&ip[12..20]);
    d.extend_from_slice(&[0, 17]);
    d.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut u = l4.to_vec();
    u[6] = 0;
    u[7] = 0;
    d.extend_from_slice(&u);
    packets::internet_checksum(&d)
}

#[test]
fn traffic_that_is_not_ours_passes_byte_for_byte() {
    with_fixture("traffic_that_is_not_ours_passes", 1024, |fx| {
        let cases: [(&str, Vec<u8>, Reason); 6] = [
            ("arp", packets::arp_request(), Reason::PassNotIpv4),
            (
                "ssh to the host",
                tcp(client(40100), (EDGE_CLIENT_SIDE, 22), "S", b""),
                Reason::PassNotOurs,
            ),
            (
                "VIP address, other port",
                tcp(client(40101), (VIP, 22), "S", b""),
                Reason::PassNotOurs,
            ),
            (
                "UDP to a TCP-only VIP port",
                udp(client(40102), (VIP, VIP_TCP_PORT), b"x"),
                Reason::PassNotOurs,
            ),
            (
                "routed through the edge",
                tcp(client(40103), (Ipv4Addr::new(10, 30, 0, 5), 443), "S", b""),
                Reason::PassNotOurs,
            ),
            (
                "port 0 to a VIP address",
                tcp(client(40104), (VIP, 0), "S", b""),
                Reason::PassNotOurs,
            ),
        ];
        for (what, frame, reason) in cases {
            let before = fx.reasons();
            let (act, out) = fx.run(fx.client_if, &frame).unwrap();
            assert_eq!(act, XDP_PASS, "{what}");
            assert_eq!(out, frame, "{what}: frame changed");
            assert_only(fx, &before, reason, 1);
        }
        assert!(fx.flows().is_empty());
    });
}

#[test]
fn echo_to_a_vip_is_answered_unless_turned_off() {
    with_fixture("echo_to_a_vip_is_answered", 1024, |fx| {
        let req = echo(CLIENT, VIP, b"hello");
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &req).unwrap();
        assert_eq!(act, XDP_TX);
        assert_only(fx, &before, Reason::IcmpEchoReplied, 1);
        let r = inspect_icmp(&out);
        assert_eq!((r.src, r.dst, r.icmp_type), (VIP, CLIENT, 0));
        assert_eq!((r.eth_dst, r.eth_src), (CLIENT_MAC, packets::EDGE_MAC));
        assert!(r.checksums_ok, "{r:?}");
        assert_eq!(&r.quote[..], b"hello", "echo data comes back");
        // Off: the kernel decides.
        let mut cfg = fx.config();
        cfg.flags &= !DataplaneConfig::ECHO_REPLY;
        fx.set_config(cfg).unwrap();
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &req).unwrap();
        assert_eq!((act, &out), (XDP_PASS, &req));
        assert_only(fx, &before, Reason::PassIcmp, 1);
        // Echo to the SNAT address is the host's.
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.backend_if, &echo(BACKENDS[0], SNAT, b"x"))
                .unwrap()
                .0,
            XDP_PASS
        );
        assert_only(fx, &before, Reason::PassIcmp, 1);
    });
}

#[test]
fn truncated_and_bad_headers_never_abort_and_are_counted() {
    with_fixture("truncated_and_bad_headers", 1024, |fx| {
        let s = syn(44000);
        // Cut at every length from the Ethernet header on (below 14 the kernel refuses the run).
        for len in 14..s.len() {
            let before = fx.reasons();
            let (act, out) = fx.run(fx.client_if, &s[..len]).unwrap();
            let (want_act, reason) = if len < 34 {
                (XDP_PASS, Reason::PassUnparsable)
            } else {
                (XDP_DROP, Reason::DropMalformed)
            };
            assert_eq!(act, want_act, "cut at {len}");
            assert_eq!(out, &s[..len], "cut at {len}: frame changed");
            assert_only(fx, &before, reason, 1);
        }
        let tagged = packets::with_vlan(&s, 7);
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &tagged[..16]).unwrap().0, XDP_PASS);
        assert_only(fx, &before, Reason::PassUnparsable, 1);
        let mut bad_ihl = s.clone();
        bad_ihl[14] = 0x44;
        let mut bad_version = s.clone();
        bad_version[14] = 0x65;
        let mut ihl_past_end = s.clone();
        ihl_past_end[14] = 0x4f;
        let mut long_total = s.clone();
        long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
        packets::fix_ip_checksum(&mut long_total, 14);
        let mut doff_4 = s.clone();
        doff_4[14 + 20 + 12] = 0x40;
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
                "total length beyond the frame",
                long_total,
                XDP_DROP,
                Reason::DropMalformed,
            ),
            ("TCP data offset 4", doff_4, XDP_DROP, Reason::DropMalformed),
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
            let before = fx.reasons();
            assert_eq!(fx.run(fx.client_if, &frame).unwrap().0, act, "{what}");
            assert_only(fx, &before, reason, 1);
        }
        // The non-SYN policy can pass instead (the kernel then answers with a RST).
        let mut cfg = fx.config();
        cfg.flags |= DataplaneConfig::NON_SYN_PASS;
        fx.set_config(cfg).unwrap();
        let before = fx.reasons();
        let ack = tcp(client(44003), VIP_TCP, "A", b"");
        assert_eq!(fx.run(fx.client_if, &ack).unwrap(), (XDP_PASS, ack));
        assert_only(fx, &before, Reason::PassNonSynNoState, 1);
        assert!(fx.flows().is_empty(), "no bad packet may create a flow");
    });
}

#[test]
fn fragments_are_dropped_only_when_meant_for_a_vip() {
    with_fixture("fragments", 1024, |fx| {
        let frag = |frame: &[u8], more: bool, offset: u16| {
            let mut f = frame.to_vec();
            let v = offset | if more { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&v.to_be_bytes());
            packets::fix_ip_checksum(&mut f, 14);
            f
        };
        let vip_port = tcp(client(44100), VIP_TCP, "S", b"");
        let other_port = tcp(client(44101), (VIP, 22), "S", b"");
        let ping = echo(CLIENT, VIP, &[0u8; 64]);
        let to_snat = udp((BACKENDS[0], 5300), (SNAT, 40000), b"x");
        let cases = [
            (
                "first fragment for a VIP port",
                frag(&vip_port, true, 0),
                XDP_DROP,
                Reason::DropFragment,
            ),
            (
                "first fragment for another port",
                frag(&other_port, true, 0),
                XDP_PASS,
                Reason::PassFragment,
            ),
            (
                "a later fragment to a VIP address",
                frag(&vip_port, false, 100),
                XDP_PASS,
                Reason::PassFragment,
            ),
            (
                "an ICMP fragment to a VIP address",
                frag(&ping, true, 0),
                XDP_PASS,
                Reason::PassFragment,
            ),
            (
                "any fragment to a SNAT address",
                frag(&to_snat, true, 0),
                XDP_PASS,
                Reason::PassFragment,
            ),
        ];
        for (what, frame, act, reason) in cases {
            let before = fx.reasons();
            assert_eq!(fx.run(fx.client_if, &frame).unwrap().0, act, "{what}");
            assert_only(fx, &before, reason, 1);
        }
        // An address with an any-port VIP owns every fragment.
        add_any_port_vip(fx);
        let before = fx.reasons();
        let later = frag(
            &tcp(
                client(44102),
                (Ipv4Addr::new(10, 0, 0, 200), 8080),
                "S",
                b"",
            ),
            false,
            100,
        );
        assert_eq!(fx.run(fx.client_if, &later).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropFragment, 1);
    });
}

/// A TCP VIP on every port of 10.0.0.200 over backend id 0's table.
fn add_any_port_vip(fx: &mut Fixture) {
    let any = Ipv4Addr::new(10, 0, 0, 200);
    fx.image.vips.insert(
        Vip4Key::new(word(any), 0, PROTO_TCP),
        VipMeta {
            vip_id: 2,
            flags: 0,
        },
    );
    fx.image.vip_info.insert(
        2,
        VipInfo {
            addr: Addr::v4(any.octets()),
            port: 0,
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            flags: 0,
        },
    );
    fx.put_backend(6, BACKENDS[0], 0, true);
    fx.image.backends.get_mut(&6).unwrap().vip_id = 2;
    fx.classify();
    fx.install(2, &[(6, 1)]).unwrap();
}

#[test]
fn an_any_port_vip_keeps_the_clients_port() {
    with_fixture("an_any_port_vip", 1024, |fx| {
        add_any_port_vip(fx);
        for port in [8080u16, 443, 1] {
            let f = tcp(
                client(44200),
                (Ipv4Addr::new(10, 0, 0, 200), port),
                "S",
                b"",
            );
            let (act, out) = fx.run(fx.client_if, &f).unwrap();
            assert_eq!(act, XDP_REDIRECT, "port {port}");
            let s = inspect(&out);
            assert_eq!((s.dst, s.dst_port), (BACKENDS[0], port));
            assert!(s.checksums_ok);
        }
    });
}

#[test]
fn header_fields_the_data_path_does_not_own_are_kept() {
    with_fixture("header_fields_kept", 1024, |fx| {
        let f = packets::with_ip_fields(&syn(44300), 0xb9, 0x4242, true);
        let (_, out) = fx.run(fx.client_if, &f).unwrap();
        let s = inspect(&out);
        assert_eq!(
            (s.tos, s.id, s.df),
            (0xb9, 0x4242, true),
            "DSCP/ECN, ID, DF"
        );
        assert!(s.checksums_ok);
        // A client source port of 0 is a port like any other.
        let (act, out) = fx.run(fx.client_if, &syn(0)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert!(inspect(&out).checksums_ok);
        // Ethernet padding after the IP packet stays out of the checksums.
        let mut padded = syn(44301);
        padded.extend_from_slice(&[0xee; 6]);
        let (act, out) = fx.run(fx.client_if, &padded).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert!(inspect(&out[..out.len() - 6]).checksums_ok);
        // TTL 2 leaves with TTL 1, both ways.
        let (b, sp) = open(fx, 44302);
        let (_, out) = fx
            .run(fx.client_if, &tcp_ttl(client(44302), VIP_TCP, "A", b"", 2))
            .unwrap();
        assert_eq!(inspect(&out).ttl, 1);
        let reply = tcp_ttl((BACKENDS[b], VIP_TCP_PORT), (SNAT, sp), "A", b"", 2);
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!((act, inspect(&out).ttl), (XDP_REDIRECT, 1));
        let before = fx.reasons();
        let reply = tcp_ttl((BACKENDS[b], VIP_TCP_PORT), (SNAT, sp), "A", b"", 1);
        assert_eq!(fx.run(fx.backend_if, &reply).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropTtlExpired, 1);
    });
}

#[test]
fn vlan_tags_stay_on_their_interface_and_come_back_on_replies() {
    with_fixture("vlan_tags", 1024, |fx| {
        let tagged = packets::with_vlan(&syn(45000), 42);
        let (act, out) = fx.run(fx.client_if, &tagged).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!(
            s.vlan, None,
            "the client's tag does not cross to the backend side"
        );
        assert_eq!(s.src, SNAT);
        assert!(s.checksums_ok);
        let b = BACKENDS.iter().position(|x| *x == s.dst).unwrap();
        let reply = tcp((BACKENDS[b], VIP_TCP_PORT), (SNAT, s.src_port), "SA", b"");
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let r = inspect(&out);
        assert_eq!(r.vlan, Some(42), "the reply gets the client's tag back");
        assert_eq!((r.dst, r.dst_port), client(45000));
        assert!(r.checksums_ok);
        // IP options are walked over.
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
fn a_one_armed_edge_sends_both_ways_with_xdp_tx() {
    with_fixture("one_armed", 1024, |fx| {
        // Backends reached through the client-side interface.
        ip("neigh add 10.10.0.50 lladdr 02:00:00:00:0b:50 dev wkc0 nud permanent").unwrap();
        fx.set_backend(0, Ipv4Addr::new(10, 10, 0, 50), VIP_TCP_PORT, true)
            .unwrap();
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        let (act, out) = fx.run(fx.client_if, &syn(45100)).unwrap();
        assert_eq!(act, XDP_TX, "same interface: XDP_TX");
        let s = inspect(&out);
        assert_eq!(s.dst, Ipv4Addr::new(10, 10, 0, 50));
        assert_eq!(s.eth_dst, [0x02, 0, 0, 0, 0x0b, 0x50]);
        let reply = tcp(
            (Ipv4Addr::new(10, 10, 0, 50), VIP_TCP_PORT),
            (SNAT, s.src_port),
            "SA",
            b"",
        );
        let (act, out) = fx.run(fx.client_if, &reply).unwrap();
        assert_eq!(act, XDP_TX);
        assert_eq!(inspect(&out).dst, CLIENT);
    });
}

#[test]
fn a_backend_can_reach_its_own_vip() {
    with_fixture("hairpin", 1024, |fx| {
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        // The backend 10.20.0.11 connects to the VIP; the edge sends it to itself via SNAT.
        let f = tcp_seg(
            (BACKENDS[0], 46000),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: 9,
                ack: 0,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &f).unwrap();
        assert_eq!(act, XDP_TX, "in and out on the backend side");
        let s = inspect(&out);
        assert_eq!((s.src, s.dst), (SNAT, BACKENDS[0]));
        let reply = tcp((BACKENDS[0], VIP_TCP_PORT), (SNAT, s.src_port), "SA", b"");
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_TX);
        let r = inspect(&out);
        assert_eq!(
            ((r.src, r.src_port), (r.dst, r.dst_port)),
            (VIP_TCP, (BACKENDS[0], 46000))
        );
        assert!(r.checksums_ok);
    });
}

/// The MSS option of a SYN as Linux sends it, or after NOPs (at an odd offset).
fn mss_options(mss: u16, odd: bool) -> Vec<u8> {
    let m = mss.to_be_bytes();
    if odd {
        vec![1, 2, 4, m[0], m[1], 1, 1, 1]
    } else {
        vec![2, 4, m[0], m[1], 1, 3, 3, 7]
    }
}

#[test]
fn mss_is_clamped_on_syn_and_synack() {
    with_fixture("mss_clamping", 1024, |fx| {
        let syn_mss = |port: u16, opts: &[u8]| {
            tcp_seg(
                client(port),
                VIP_TCP,
                &Seg {
                    flags: "S",
                    seq: ISN,
                    ack: 0,
                    options: opts,
                    ..Seg::default()
                },
            )
        };
        // auto with a 1500-byte path: 1460 passes, 8960 is lowered to 1460.
        let (_, out) = fx
            .run(fx.client_if, &syn_mss(47000, &mss_options(1460, false)))
            .unwrap();
        assert_eq!(inspect(&out).mss, Some(1460));
        let (_, out) = fx
            .run(fx.client_if, &syn_mss(47001, &mss_options(8960, false)))
            .unwrap();
        let s = inspect(&out);
        assert_eq!(s.mss, Some(1460));
        assert!(s.checksums_ok, "{s:?}");
        // A fixed value, also at an odd offset, and on the backend's SYN-ACK.
        let mut cfg = fx.config();
        cfg.mss_mode = mss::FIXED;
        cfg.mss_value = 1360;
        fx.set_config(cfg).unwrap();
        for (port, odd) in [(47002u16, false), (47003, true)] {
            let (_, out) = fx
                .run(fx.client_if, &syn_mss(port, &mss_options(1460, odd)))
                .unwrap();
            let s = inspect(&out);
            assert_eq!(s.mss, Some(1360), "odd offset {odd}");
            assert!(s.checksums_ok, "odd offset {odd}: {s:?}");
            let synack = tcp_seg(
                (s.dst, VIP_TCP_PORT),
                (SNAT, s.src_port),
                &Seg {
                    flags: "SA",
                    seq: 1,
                    ack: ISN + 1,
                    options: &mss_options(1460, odd),
                    ..Seg::default()
                },
            );
            let (_, out) = fx.run(fx.backend_if, &synack).unwrap();
            let r = inspect(&out);
            assert_eq!(r.mss, Some(1360));
            assert!(r.checksums_ok, "{r:?}");
        }
        // Off: untouched.
        let mut cfg = fx.config();
        cfg.mss_mode = mss::OFF;
        fx.set_config(cfg).unwrap();
        let (_, out) = fx
            .run(fx.client_if, &syn_mss(47004, &mss_options(8960, false)))
            .unwrap();
        assert_eq!(inspect(&out).mss, Some(8960));
        // auto follows the route's MTU toward the backend.
        let mut cfg = fx.config();
        cfg.mss_mode = mss::AUTO;
        fx.set_config(cfg).unwrap();
        ip("link set wkb0 mtu 1400").unwrap();
        // Next hops (and their MTU) are re-read once the cached one is a second old.
        std::thread::sleep(std::time::Duration::from_nanos(
            lb_common::HOP_REFRESH_NS + 100_000_000,
        ));
        let (_, out) = fx
            .run(fx.client_if, &syn_mss(47005, &mss_options(1460, false)))
            .unwrap();
        assert_eq!(inspect(&out).mss, Some(1360), "1400 - 40");
    });
}

#[test]
fn too_big_with_df_gets_fragmentation_needed_from_the_edge() {
    with_fixture("too_big", 1024, |fx| {
        ip("link set wkb0 mtu 1400").unwrap();
        let (b, sp) = establish(fx, 48000);
        let big = packets::with_ip_fields(
            &tcp_seg(
                client(48000),
                VIP_TCP,
                &Seg {
                    flags: "PA",
                    seq: ISN + 1,
                    ack: BACKEND_ISN + 1,
                    payload: &[7u8; 1440],
                    ..Seg::default()
                },
            ),
            0,
            1,
            true,
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &big).unwrap();
        assert_eq!(act, XDP_TX, "back to the client");
        assert_only(fx, &before, Reason::IcmpFragNeededSent, 1);
        let e = inspect_icmp(&out);
        assert_eq!((e.icmp_type, e.code), (3, 4));
        assert_eq!(
            u16::from_be_bytes([e.rest[2], e.rest[3]]),
            1400,
            "next-hop MTU"
        );
        assert_eq!(
            (e.src, e.dst),
            (VIP, CLIENT),
            "from the VIP the client talks to"
        );
        assert_eq!(e.eth_dst, CLIENT_MAC);
        assert!(e.checksums_ok, "{e:?}");
        let (qs, qsp, qd, qdp, ip_ok) = quoted_tuple(&e.quote);
        assert_eq!(
            (qs, qsp, qd, qdp),
            (CLIENT, 48000, VIP, VIP_TCP_PORT),
            "its own packet"
        );
        assert!(ip_ok);
        assert_eq!(e.quote.len(), lb_common::icmp::QUOTE_LEN);
        // Without DF the kernel fragments the translated packet.
        let nodf = packets::with_ip_fields(&big, 0, 1, false);
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &nodf).unwrap();
        assert_eq!(act, XDP_PASS);
        assert_only(fx, &before, Reason::PassTooBig, 1);
        assert_eq!(
            inspect(&out).dst,
            BACKENDS[b],
            "translated before the kernel gets it"
        );
        // Toward the client: a smaller client-side MTU answers the backend.
        ip("link set wkb0 mtu 1500").unwrap();
        ip("link set wkc0 mtu 1300").unwrap();
        let mut cfg = fx.config();
        cfg.min_mtu = 1300;
        let client_if = fx.client_if;
        fx.image.iface_mtu.insert(client_if, 1300);
        fx.set_config(cfg).unwrap();
        let reply = packets::with_ip_fields(
            &tcp_seg(
                (BACKENDS[b], VIP_TCP_PORT),
                (SNAT, sp),
                &Seg {
                    flags: "PA",
                    seq: BACKEND_ISN + 1,
                    ack: ISN + 1,
                    payload: &[9u8; 1360],
                    ..Seg::default()
                },
            ),
            0,
            1,
            true,
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_TX);
        assert_only(fx, &before, Reason::IcmpFragNeededSent, 1);
        let e = inspect_icmp(&out);
        assert_eq!((e.src, e.dst), (SNAT, BACKENDS[b]));
        assert_eq!(u16::from_be_bytes([e.rest[2], e.rest[3]]), 1300);
        assert!(e.checksums_ok);
    });
}

#[test]
fn too_big_for_a_tiny_mtu_and_too_short_to_quote_is_dropped() {
    with_fixture("too_big_tiny_mtu", 1024, |fx| {
        // IPv4's smallest MTU: a 90-byte packet exceeds it but is shorter than the 96 bytes a
        // fragmentation-needed quotes.
        ip("link set wkb0 mtu 68").unwrap();
        establish(fx, 48100);
        let seg = Seg {
            flags: "PA",
            seq: ISN + 1,
            ack: BACKEND_ISN + 1,
            payload: &[7u8; 50],
            ..Seg::default()
        };
        let small = packets::with_ip_fields(&tcp_seg(client(48100), VIP_TCP, &seg), 0, 1, true);
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &small).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropTooBig, 1);
    });
}

#[test]
fn icmp_errors_about_translated_packets_are_translated_back() {
    with_fixture("icmp_errors_translated", 1024, |fx| {
        let (b, sp) = establish(fx, 49000);
        // What the edge sent the backend, as a router on the way would quote it.
        let sent = sent_to_backend(b, sp, "PA", &[1u8; 64]);
        for quote in [28usize, 48, 108] {
            let err = icmp_error(
                BACKEND_SIDE_ROUTER,
                SNAT,
                3,
                4,
                [0, 0, 0x05, 0x78],
                &sent,
                quote,
            );
            let before = fx.reasons();
            let (act, out) = fx.run(fx.backend_if, &err).unwrap();
            assert_eq!(act, XDP_REDIRECT, "quote {quote}");
            assert_only(fx, &before, Reason::IcmpErrorToClient, 1);
            let e = inspect_icmp(&out);
            assert_eq!(
                (e.src, e.dst),
                (VIP, CLIENT),
                "outer: from the VIP to the client"
            );
            assert_eq!((e.icmp_type, e.code, e.rest), (3, 4, [0, 0, 0x05, 0x78]));
            assert!(
                e.checksums_ok,
                "outer IP and ICMP checksums, quote {quote}: {e:?}"
            );
            let (qs, qsp, qd, qdp, ip_ok) = quoted_tuple(&e.quote);
            assert_eq!((qs, qsp, qd, qdp), (CLIENT, 49000, VIP, VIP_TCP_PORT));
            assert!(ip_ok, "inner IP checksum");
            if quote >= 40 {
                // The quoted TCP checksum is whole: it matches the client's view of its packet.
                let (q, full) = (&e.quote, &e.quote.len());
                let _ = full;
                let inner_tcp_ok = {
                    let ip = &q[..20];
                    let t = &q[20..];
                    let mut d = Vec::new();
                    d.extend_from_slice(&ip[12..20]);
                    d.extend_from_slice(&[0, 6]);
                    d.extend_from_slice(&(u16::from_be_bytes([ip[2], ip[3]]) - 20).to_be_bytes());
                    d.extend_from_slice(t);
                    quote < 108 || packets::internet_checksum(&d) == 0
                };
                assert!(inner_tcp_ok, "inner TCP checksum");
            }
        }
        // And the other way: an error about what the edge sent the client reaches the backend.
        let to_client = tcp_seg(
            VIP_TCP,
            client(49000),
            &Seg {
                flags: "PA",
                seq: BACKEND_ISN + 1,
                ack: ISN + 1,
                payload: b"x",
                ..Seg::default()
            },
        );
        let err = icmp_error(
            Ipv4Addr::new(192, 0, 2, 1),
            VIP,
            11,
            0,
            [0; 4],
            &to_client,
            28,
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &err).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::IcmpErrorToBackend, 1);
        let e = inspect_icmp(&out);
        assert_eq!((e.src, e.dst, e.icmp_type), (SNAT, BACKENDS[b], 11));
        assert!(e.checksums_ok, "{e:?}");
        let (qs, qsp, qd, qdp, ip_ok) = quoted_tuple(&e.quote);
        assert_eq!(
            (qs, qsp, qd, qdp),
            (BACKENDS[b], VIP_TCP_PORT, SNAT, sp),
            "its own reply"
        );
        assert!(ip_ok);
        // Errors about nothing of ours are the host's.
        let stray = tcp_seg((SNAT, 1), (BACKENDS[0], 80), &Seg::default());
        let err = icmp_error(BACKEND_SIDE_ROUTER, SNAT, 3, 1, [0; 4], &stray, 28);
        let before = fx.reasons();
        assert_eq!(fx.run(fx.backend_if, &err).unwrap().0, XDP_PASS);
        assert_only(fx, &before, Reason::PassIcmp, 1);
    });
}

/// Found by `cargo xtask fuzz`: bytes after the IP packet (Ethernet padding, a trailer) are
/// in no header. A short ICMP quote followed by such bytes must not have them rewritten as its
/// TCP checksum, and a TCP header that claims to run into them is malformed.
#[test]
fn bytes_after_the_ip_packet_belong_to_no_header() {
    with_fixture("bytes_after_the_ip_packet", 1024, |fx| {
        let (b, sp) = establish(fx, 49100);
        let sent = sent_to_backend(b, sp, "A", b"");
        let mut err = icmp_error(BACKEND_SIDE_ROUTER, SNAT, 3, 4, [0, 0, 5, 0x78], &sent, 28);
        err.extend_from_slice(&[0xa5; 40]);
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &err).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::IcmpErrorToClient, 1);
        assert_eq!(
            &out[out.len() - 40..],
            &[0xa5; 40],
            "trailing bytes untouched"
        );
        assert_eq!(
            packets::checksums_valid(&out),
            Some(true),
            "ICMP checksum over the message only"
        );
        // A SYN whose data offset (60 bytes) runs past the IP total length (40) into padding.
        let mut syn = syn(49101);
        syn[46] = 0xf0;
        syn.extend_from_slice(&[2, 4, 0x05, 0xb4].repeat(10));
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropMalformed, 1);
    });
}

#[test]
fn full_connection_table_refuses_new_flows_but_keeps_established_ones() {
    with_fixture("full_connection_table", 8, |fx| {
        for p in 0..8 {
            open(fx, 46000 + p);
        }
        let before = fx.reasons();
        let (act, _) = fx.run(fx.client_if, &syn(46100)).unwrap();
        assert_eq!(act, XDP_DROP);
        assert_only(fx, &before, Reason::DropConntrackFull, 1);
        let (act, _) = fx
            .run(fx.client_if, &tcp(client(46000), VIP_TCP, "A", b""))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_eq!(
            fx.flows().len(),
            8,
            "the refused flow's slot was given back"
        );
        assert_eq!(fx.refs(), 8);
    });
}

#[test]
fn exhausted_snat_ports_and_no_snat_address_are_counted() {
    with_fixture("exhausted_snat_ports", 1024, |fx| {
        let mut cfg = fx.config();
        cfg.snat_port_min = 40000;
        cfg.snat_port_max = 40001;
        fx.set_config(cfg).unwrap();
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        let ports: Vec<u16> = (0..2).map(|i| open(fx, 47000 + i).1).collect();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![40000, 40001],
            "two flows, two distinct SNAT ports"
        );
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn(47002)).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropSnatExhausted, 1);
        let mut cfg = fx.config();
        cfg.snat_count = 0;
        fx.set_config(cfg).unwrap();
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn(47003)).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropNoSnatAddress, 1);
    });
}

#[test]
fn next_hop_failures_are_counted() {
    with_fixture("next_hop_failures", 1024, |fx| {
        fx.install(TCP_VIP_ID, &[(0, 0), (1, 0), (2, 0)]).unwrap();
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn(48000)).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropNoBackend, 1);
        assert_eq!(fx.vip_stats(TCP_VIP_ID).no_backend, 1);
        // A backend whose MAC is not known yet: the translated packet goes to the kernel.
        fx.set_backend(0, UNRESOLVED_BACKEND, VIP_TCP_PORT, true)
            .unwrap();
        fx.install(TCP_VIP_ID, &[(0, 1)]).unwrap();
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &syn(48001)).unwrap();
        assert_eq!(act, XDP_PASS);
        let s = inspect(&out);
        assert_eq!((s.src, s.dst), (SNAT, UNRESOLVED_BACKEND));
        assert!(s.checksums_ok);
        assert_only(fx, &before, Reason::PassNoNeighbor, 1);
        // No route at all.
        fx.set_backend(0, UNROUTABLE_BACKEND, VIP_TCP_PORT, true)
            .unwrap();
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn(48002)).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropFibFailed, 1);
        // A route through an interface wklb does not run on: the kernel sends it.
        fx.set_backend(0, BACKENDS[0], VIP_TCP_PORT, true).unwrap();
        let backend_if = fx.backend_if;
        fx.image.tx_ports.remove(&backend_if);
        fx.sync().unwrap();
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &syn(48003)).unwrap();
        assert_eq!(act, XDP_PASS);
        assert_eq!(inspect(&out).dst, BACKENDS[0]);
        assert_only(fx, &before, Reason::PassUnmanagedEgress, 1);
    });
}

#[test]
fn an_impossible_map_state_is_counted_not_aborted() {
    with_fixture("drop_internal", 1024, |fx| {
        // A SNAT index far beyond the flow table: the daemon never writes that.
        let bogus = Ipv4Addr::new(10, 20, 0, 77);
        fx.image
            .snat
            .insert(63, SnatAddr::new(Addr::v4(bogus.octets()), FAMILY_IPV4));
        fx.classify();
        fx.sync().unwrap();
        let class = fx.image.addrs[&word(bogus)];
        assert_eq!(class.flags & AddrClass::SNAT, AddrClass::SNAT);
        let before = fx.reasons();
        let f = tcp((BACKENDS[0], VIP_TCP_PORT), (bogus, 40000), "A", b"");
        assert_eq!(fx.run(fx.backend_if, &f).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropInternal, 1);
    });
}

#[test]
fn verifier_instruction_count() {
    with_fixture("verifier_instruction_count", 1024, |fx| {
        // Each program is verified on its own (the kernel refuses one at 1,000,000): a budget
        // per program catches a change that multiplies the verifier's paths long before it
        // breaks loading (per-byte packet reads at data-dependent offsets did: 920,000).
        // Before the split into tail-called programs the one main program was at 555,264.
        for name in kernel::program_names() {
            let n = fx.program.verified_instructions(name).unwrap();
            println!("{name}: {n} instructions processed by the verifier");
            let budget = if name == kernel::PROGRAM {
                150_000
            } else {
                500_000
            };
            assert!(
                n > 0 && n < budget,
                "{name}: {n} instructions processed by the verifier (budget {budget})"
            );
        }
    });
}

// ---------------------------------------------------------------------------- IPv6 clients

#[test]
fn ipv6_clients_reach_ipv4_backends_and_get_ipv6_replies() {
    with_fixture("ipv6_to_ipv4", 1024, |fx| {
        fx.add_ipv6_vip();
        let syn = packets::tcp6_seg(
            (CLIENT6, 45000),
            (VIP6, VIP_TCP_PORT),
            0xb8,
            &Seg {
                flags: "S",
                seq: ISN,
                options: &mss_options(1440, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(
            (s.src, s.dst_port, s.ttl, s.tos, s.df),
            (SNAT, VIP_TCP_PORT, 63, 0xb8, true)
        );
        let b = BACKENDS
            .iter()
            .position(|x| *x == s.dst)
            .expect("a backend");
        let sp = s.src_port;
        assert_eq!(
            out.len(),
            syn.len() - 20,
            "the frame lost the header difference"
        );
        // The backend answers with MSS 1460: the IPv6 client gets 1440 (its side carries 20
        // more header bytes).
        let synack = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                options: &mss_options(1460, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = packets::inspect6(&out);
        assert!(r.ok, "{r:?}");
        assert_eq!(
            (r.src, r.dst, r.src_port, r.dst_port),
            (VIP6, CLIENT6, VIP_TCP_PORT, 45000)
        );
        assert_eq!((r.hop_limit, r.mss), (63, Some(1440)));
        // Data both ways.
        let data = packets::tcp6_seg(
            (CLIENT6, 45000),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "PA",
                seq: ISN + 1,
                ack: BACKEND_ISN + 1,
                payload: b"CONNECT",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert!(s.checksums_ok);
        assert_eq!(
            (s.dst, s.src_port, s.payload.as_slice()),
            (BACKENDS[b], sp, &b"CONNECT"[..])
        );
        let reply = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "PA",
                seq: BACKEND_ISN + 1,
                ack: ISN + 8,
                payload: b"CONNACK",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let r = packets::inspect6(&out);
        assert!(r.ok && r.payload == b"CONNACK", "{r:?}");
        let flows = fx.flows();
        assert_eq!(flows.len(), 1);
        assert_ne!(flows[0].1.flags & lb_common::FlowEntry::CLIENT_V6, 0);

        // UDP both ways.
        let (act, out) = fx
            .run(
                fx.client_if,
                &packets::udp6((CLIENT6, 45001), (VIP6, VIP_UDP_PORT), b"ping"),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        let ub = s.dst;
        let (act, out) = fx
            .run(
                fx.backend_if,
                &udp((ub, VIP_UDP_PORT), (SNAT, s.src_port), b"pong"),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = packets::inspect6(&out);
        assert!(r.ok && r.payload == b"pong", "{r:?}");
        assert_eq!((r.src, r.dst, r.dst_port), (VIP6, CLIENT6, 45001));
    });
}

#[test]
fn ipv6_traffic_not_for_a_vip_passes_fragments_and_segments_without_a_flow_to_a_vip_do_not() {
    with_fixture("ipv6_pass", 1024, |fx| {
        fx.add_ipv6_vip();
        let other = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let frame = packets::tcp6_seg((CLIENT6, 45002), (other, 22), 0, &Seg::default());
        let (act, out) = fx.run(fx.client_if, &frame).unwrap();
        assert_eq!((act, out), (XDP_PASS, frame), "passed byte for byte");
        // A fragment header right after the fixed header, to the VIP.
        let mut frag =
            packets::tcp6_seg((CLIENT6, 45003), (VIP6, VIP_TCP_PORT), 0, &Seg::default());
        frag[14 + 6] = 44;
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &frag).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropFragment, 1);
        // A segment without SYN and without a flow (refused in the entry program), to the VIP's
        // port and to a port no VIP serves on the VIP's address.
        let ack = |port: u16| {
            let seg = Seg {
                flags: "A",
                ..Default::default()
            };
            packets::tcp6_seg((CLIENT6, 45004), (VIP6, port), 0, &seg)
        };
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &ack(VIP_TCP_PORT)).unwrap().0,
            XDP_DROP
        );
        assert_only(fx, &before, Reason::DropNonSynNoState, 1);
        let before = fx.reasons();
        let other_port = ack(VIP_TCP_PORT + 1);
        assert_eq!(
            fx.run(fx.client_if, &other_port).unwrap(),
            (XDP_PASS, other_port)
        );
        assert_only(fx, &before, Reason::PassNotOurs, 1);
        let mut cfg = fx.config();
        cfg.flags |= DataplaneConfig::NON_SYN_PASS;
        fx.set_config(cfg).unwrap();
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &ack(VIP_TCP_PORT)).unwrap().0,
            XDP_PASS
        );
        assert_only(fx, &before, Reason::PassNonSynNoState, 1);
        assert!(
            fx.flows().is_empty(),
            "no segment without SYN may create a flow"
        );
    });
}

// ---------------------------------------------------------------------------- IPv6 backends

/// The IPv6 data node serving every TCP/UDP VIP, IPv4 and IPv6.
fn add_ipv6_backends(fx: &mut Fixture) {
    fx.add_ipv6_vip();
    fx.add_ipv6_node(SNAT6_INDEX);
    for (vip, b) in [
        (TCP_VIP_ID, B6_TCP),
        (UDP_VIP_ID, B6_UDP),
        (V6_VIP_ID, B6_TCP),
        (V6_UDP_VIP_ID, B6_UDP),
    ] {
        fx.install(vip, &[(b, 1)]).unwrap();
    }
}

/// A segment from the IPv6 data node to the IPv6 SNAT address.
fn from_backend6(dport: u16, sport: u16, s: &Seg) -> Vec<u8> {
    packets::tcp6_seg((BACKEND6, sport), (SNAT6, dport), 0, s)
}

#[test]
fn ipv4_clients_reach_ipv6_backends_through_an_ipv6_snat_address() {
    with_fixture("ipv4_to_ipv6", 1024, |fx| {
        add_ipv6_backends(fx);
        let syn = tcp_seg(
            client(46000),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                options: &mss_options(1460, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_eq!(
            out.len(),
            syn.len() + 20,
            "the frame gained the header difference"
        );
        let s = packets::inspect6(&out);
        assert!(s.ok, "{s:?}");
        assert_eq!(
            (s.src, s.dst, s.dst_port, s.hop_limit),
            (SNAT6, BACKEND6, VIP_TCP_PORT, 63)
        );
        // The backend side carries 20 more header bytes: MSS 1500 - 60.
        assert_eq!(s.mss, Some(1440));
        let sp = s.src_port;
        let flows = fx.flows();
        assert_eq!(flows.len(), 1);
        assert_ne!(flows[0].1.flags & lb_common::FlowEntry::BACKEND_V6, 0);
        assert_eq!(lb_common::slot::snat_index_of(flows[0].0), SNAT6_INDEX);
        // The SYN-ACK comes back as IPv4 from the VIP, 20 bytes shorter.
        let synack = from_backend6(
            sp,
            VIP_TCP_PORT,
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                options: &mss_options(1440, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_eq!(out.len(), synack.len() - 20);
        let r = inspect(&out);
        assert!(r.checksums_ok, "{r:?}");
        assert_eq!(
            (r.src, r.dst, r.src_port, r.dst_port, r.ttl),
            (VIP, CLIENT, VIP_TCP_PORT, 46000, 63)
        );
        // Data both ways.
        let data = tcp_seg(
            client(46000),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: ISN + 1,
                ack: BACKEND_ISN + 1,
                payload: b"CONNECT",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = packets::inspect6(&out);
        assert!(s.ok && s.payload == b"CONNECT", "{s:?}");
        let reply = from_backend6(
            sp,
            VIP_TCP_PORT,
            &Seg {
                flags: "PA",
                seq: BACKEND_ISN + 1,
                ack: ISN + 8,
                payload: b"CONNACK",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = inspect(&out);
        assert!(r.checksums_ok && r.payload == b"CONNACK", "{r:?}");
        // A reply from another address on the same SNAT port is not the flow's.
        let mut other = BACKEND6;
        other[15] = 0x12;
        let stray = packets::tcp6_seg((other, VIP_TCP_PORT), (SNAT6, sp), 0, &Seg::default());
        let before = fx.reasons();
        assert_eq!(fx.run(fx.backend_if, &stray).unwrap().0, XDP_PASS);
        assert_only(fx, &before, Reason::PassReplyNoFlow, 1);

        // UDP both ways.
        let (act, out) = fx
            .run(fx.client_if, &udp(client(46001), VIP_UDP, b"ping"))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = packets::inspect6(&out);
        assert!(s.ok && s.payload == b"ping", "{s:?}");
        assert_eq!((s.src, s.dst, s.dst_port), (SNAT6, BACKEND6, VIP_UDP_PORT));
        let back = packets::udp6((BACKEND6, VIP_UDP_PORT), (SNAT6, s.src_port), b"pong");
        let (act, out) = fx.run(fx.backend_if, &back).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = inspect(&out);
        assert!(r.checksums_ok && r.payload == b"pong", "{r:?}");
        assert_eq!((r.src, r.dst, r.dst_port), (VIP, CLIENT, 46001));
    });
}

#[test]
fn ipv6_clients_reach_ipv6_backends_with_addresses_rewritten() {
    with_fixture("ipv6_to_ipv6", 1024, |fx| {
        add_ipv6_backends(fx);
        let syn = packets::tcp6_seg(
            (CLIENT6, 47000),
            (VIP6, VIP_TCP_PORT),
            0xb8,
            &Seg {
                flags: "S",
                seq: ISN,
                options: &mss_options(1440, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_eq!(out.len(), syn.len());
        let s = packets::inspect6(&out);
        assert!(s.ok, "{s:?}");
        assert_eq!(
            (
                s.src,
                s.dst,
                s.dst_port,
                s.hop_limit,
                s.traffic_class,
                s.mss
            ),
            (SNAT6, BACKEND6, VIP_TCP_PORT, 63, 0xb8, Some(1440))
        );
        let sp = s.src_port;
        let synack = from_backend6(
            sp,
            VIP_TCP_PORT,
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                options: &mss_options(1440, false),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = packets::inspect6(&out);
        assert!(r.ok, "{r:?}");
        assert_eq!(
            (r.src, r.dst, r.src_port, r.dst_port, r.hop_limit),
            (VIP6, CLIENT6, VIP_TCP_PORT, 47000, 63)
        );
        let flows = fx.flows();
        let f = flows[0].1.flags;
        assert_eq!(
            f & (lb_common::FlowEntry::BACKEND_V6 | lb_common::FlowEntry::CLIENT_V6),
            lb_common::FlowEntry::BACKEND_V6 | lb_common::FlowEntry::CLIENT_V6
        );
        let (act, out) = fx
            .run(
                fx.client_if,
                &packets::udp6((CLIENT6, 47001), (VIP6, VIP_UDP_PORT), b"ping"),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = packets::inspect6(&out);
        assert!(s.ok && s.payload == b"ping", "{s:?}");
        let back = packets::udp6((BACKEND6, VIP_UDP_PORT), (SNAT6, s.src_port), b"pong");
        let (act, out) = fx.run(fx.backend_if, &back).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let r = packets::inspect6(&out);
        assert!(r.ok && r.payload == b"pong", "{r:?}");
        assert_eq!((r.src, r.dst, r.dst_port), (VIP6, CLIENT6, 47001));
    });
}

#[test]
fn packets_too_big_for_an_ipv6_path_get_packet_too_big_or_fragmentation_needed() {
    with_fixture("ipv6_too_big", 1024, |fx| {
        add_ipv6_backends(fx);
        ip("link set wkb0 mtu 1400").unwrap();
        let big = vec![0x5a; 1400];
        // An IPv6 client: its flow first, then a segment of 1460 bytes.
        let syn = packets::tcp6_seg(
            (CLIENT6, 48000),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        let data = packets::tcp6_seg(
            (CLIENT6, 48000),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "A",
                seq: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_TX, "{:?}", fx.reasons());
        assert_only(fx, &before, Reason::IcmpFragNeededSent, 1);
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type, e.code), (VIP6, CLIENT6, 2, 0));
        assert_eq!(u32::from_be_bytes(e.rest), 1400);
        assert_eq!(
            &e.quote[..40],
            &data[14..54],
            "the client's own header is quoted"
        );
        assert!(out.len() - 14 <= 1280, "fits the IPv6 minimum MTU");
        // An IPv4 client: 1440 bytes become 1460 on the IPv6 side; the client learns 1380.
        let syn = tcp_seg(
            client(48001),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        let data = tcp_seg(
            client(48001),
            VIP_TCP,
            &Seg {
                flags: "A",
                seq: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_TX, "{:?}", fx.reasons());
        let e = inspect_icmp(&out);
        assert!(e.checksums_ok);
        assert_eq!((e.src, e.dst, e.icmp_type, e.code), (VIP, CLIENT, 3, 4));
        assert_eq!(u16::from_be_bytes([e.rest[2], e.rest[3]]), 1380);

        // An IPv6 client of an IPv4 data node: 1460 bytes become 1440, still over 1400.
        fx.install(V6_VIP_ID, &[(0, 1)]).unwrap();
        let syn = packets::tcp6_seg(
            (CLIENT6, 48002),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        let data = packets::tcp6_seg(
            (CLIENT6, 48002),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "A",
                seq: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_TX, "{:?}", fx.reasons());
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type), (VIP6, CLIENT6, 2));
        assert_eq!(u32::from_be_bytes(e.rest), 1420);

        // The IPv6 data node's reply too big for the client side: it learns the MTU from the
        // SNAT address it talks to.
        let mut cfg = fx.config();
        cfg.min_mtu = 1300;
        fx.image.iface_mtu.insert(fx.client_if, 1300);
        fx.set_config(cfg).unwrap();
        let sp = fx
            .flows()
            .iter()
            .find(|(_, e)| e.client_port == 48000)
            .map(|(s, _)| lb_common::slot::port_of(*s))
            .expect("the IPv6 client's flow");
        let reply = from_backend6(
            sp,
            VIP_TCP_PORT,
            &Seg {
                flags: "A",
                seq: BACKEND_ISN + 1,
                ack: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_TX, "{:?}", fx.reasons());
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type), (SNAT6, BACKEND6, 2));
        assert_eq!(u32::from_be_bytes(e.rest), 1300);
    });
}

#[test]
fn echo_requests_to_an_ipv6_vip_are_answered_and_neighbour_discovery_passes() {
    with_fixture("ipv6_echo", 1024, |fx| {
        fx.add_ipv6_vip();
        let mut ping = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 0xe, 1])
            .ipv6(CLIENT6, VIP6, 61)
            .icmpv6_echo_request(0x77, 3)
            .write(&mut ping, b"are you there")
            .unwrap();
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &ping).unwrap();
        assert_eq!(act, XDP_TX, "{:?}", fx.reasons());
        assert_only(fx, &before, Reason::IcmpEchoReplied, 1);
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!(
            (e.src, e.dst, e.icmp_type, e.code, e.hop_limit),
            (VIP6, CLIENT6, 129, 0, 64)
        );
        assert_eq!(e.rest, [0, 0x77, 0, 3], "identifier and sequence kept");
        assert_eq!(&out[0..6], &CLIENT_MAC, "back to the sender");
        // Neighbour solicitation for the VIP: the kernel's.
        let mut ns = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(CLIENT6, VIP6, 255)
            .icmpv6(etherparse::Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut ns, &VIP6)
            .unwrap();
        assert_eq!(fx.run(fx.client_if, &ns).unwrap(), (XDP_PASS, ns.clone()));
        // Echo replies off: passed.
        let mut cfg = fx.config();
        cfg.flags &= !DataplaneConfig::ECHO_REPLY;
        fx.set_config(cfg).unwrap();
        assert_eq!(fx.run(fx.client_if, &ping).unwrap().0, XDP_PASS);
    });
}

#[test]
fn path_mtu_errors_about_flows_with_an_ipv6_side_reach_the_backend_in_its_family() {
    with_fixture("ipv6_icmp_errors", 1024, |fx| {
        fx.add_ipv6_vip();
        fx.add_ipv6_node(SNAT6_INDEX);
        // The IPv6 VIP's TCP port on the IPv6 node, the IPv4 VIP's too; the UDP ports stay on
        // the IPv4 nodes.
        fx.install(V6_VIP_ID, &[(B6_TCP, 1)]).unwrap();
        fx.install(TCP_VIP_ID, &[(B6_TCP, 1)]).unwrap();
        let router6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
        let ptb = |about: &[u8], mtu| {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 0xe, 1])
                .ipv6(router6, VIP6, 64)
                .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu })
                .write(&mut f, &about[14..])
                .unwrap();
            f
        };
        let big = vec![0x6b; 1200];
        // 1. An IPv6 client of the IPv6 node: the node's reply was too big further on.
        let syn = packets::tcp6_seg(
            (CLIENT6, 49000),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        let (_, out) = fx.run(fx.client_if, &syn).unwrap();
        let sp = packets::inspect6(&out).src_port;
        let data = packets::tcp6_seg(
            (BACKEND6, VIP_TCP_PORT),
            (SNAT6, sp),
            0,
            &Seg {
                flags: "A",
                seq: BACKEND_ISN + 1,
                ack: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let (act, reply) = fx.run(fx.backend_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &ptb(&reply, 1280)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_only(fx, &before, Reason::IcmpErrorToBackend, 1);
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type), (SNAT6, BACKEND6, 2));
        assert_eq!(u32::from_be_bytes(e.rest), 1280);
        // The node's own packet is quoted: BACKEND6:5100 → SNAT6:port, its sequence number.
        let q = &e.quote;
        assert_eq!((&q[8..24], &q[24..40]), (&BACKEND6[..], &SNAT6[..]));
        assert_eq!(u16::from_be_bytes([q[40], q[41]]), VIP_TCP_PORT);
        assert_eq!(u16::from_be_bytes([q[42], q[43]]), sp);
        assert_eq!(
            u32::from_be_bytes([q[44], q[45], q[46], q[47]]),
            BACKEND_ISN + 1
        );

        // 2. An IPv6 client of an IPv4 node (UDP): fragmentation-needed 20 bytes smaller.
        let (_, out) = fx
            .run(
                fx.client_if,
                &packets::udp6((CLIENT6, 49001), (VIP6, VIP_UDP_PORT), b"hello"),
            )
            .unwrap();
        let s = inspect(&out);
        let answer = udp((s.dst, VIP_UDP_PORT), (SNAT, s.src_port), &big);
        let (act, reply) = fx.run(fx.backend_if, &answer).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let (act, out) = fx.run(fx.client_if, &ptb(&reply, 1280)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let e = inspect_icmp(&out);
        assert!(e.checksums_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type, e.code), (SNAT, s.dst, 3, 4));
        assert_eq!(u16::from_be_bytes([e.rest[2], e.rest[3]]), 1260);
        let (qs, qsp, qd, qdp, ok) = quoted_tuple(&e.quote);
        assert_eq!(
            (qs, qsp, qd, qdp, ok),
            (s.dst, VIP_UDP_PORT, SNAT, s.src_port, true)
        );

        // 3. An IPv4 client of the IPv6 node: a router on the client's side, about the node's
        // reply, becomes a Packet Too Big 20 bytes larger.
        let syn = tcp_seg(
            client(49002),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        let (_, out) = fx.run(fx.client_if, &syn).unwrap();
        let sp = packets::inspect6(&out).src_port;
        let data = packets::tcp6_seg(
            (BACKEND6, VIP_TCP_PORT),
            (SNAT6, sp),
            0,
            &Seg {
                flags: "A",
                seq: BACKEND_ISN + 1,
                ack: ISN + 1,
                payload: &big,
                ..Seg::default()
            },
        );
        let (act, reply) = fx.run(fx.backend_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let router = Ipv4Addr::new(10, 10, 0, 254);
        let err = icmp_error(router, VIP, 3, 4, [0, 0, 0x04, 0xd8], &reply, 28);
        let (act, out) = fx.run(fx.client_if, &err).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let e = packets::inspect_icmp6(&out);
        assert!(e.checksum_ok, "{e:?}");
        assert_eq!((e.src, e.dst, e.icmp_type), (SNAT6, BACKEND6, 2));
        assert_eq!(u32::from_be_bytes(e.rest), 1240 + 20);

        // Not about one of our flows, or not a path-MTU error: the kernel's.
        let stray = packets::tcp6_seg((VIP6, VIP_TCP_PORT), (CLIENT6, 1), 0, &Seg::default());
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &ptb(&stray, 1280)).unwrap().0,
            XDP_PASS
        );
        assert_only(fx, &before, Reason::PassIcmp, 1);
        let unreachable = icmp_error(router, VIP, 3, 1, [0; 4], &reply, 28);
        assert_eq!(fx.run(fx.client_if, &unreachable).unwrap().0, XDP_PASS);
        // An IPv6 client's flow on an IPv4 node, an error from the node's side: not
        // translated to ICMPv6 (the kernel's).
        let (_, sent) = fx
            .run(
                fx.client_if,
                &packets::udp6((CLIENT6, 49003), (VIP6, VIP_UDP_PORT), b"x"),
            )
            .unwrap();
        let err = icmp_error(BACKEND_SIDE_ROUTER, SNAT, 3, 4, [0, 0, 5, 0x78], &sent, 28);
        assert_eq!(
            fx.run(fx.backend_if, &err).unwrap(),
            (XDP_PASS, err.clone())
        );
    });
}

#[test]
fn the_ipv6_address_filter_is_consulted_and_falls_back_on_collisions_and_torn_buckets() {
    use lb_common::{FilterBucket6, hash::filter_index_v6, words_of_v6};
    use lb_userspace::dataplane::{Maps, Write};
    with_fixture("ipv6_filter", 1024, |fx| {
        fx.add_ipv6_vip();
        let mut ping = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 0xe, 1])
            .ipv6(CLIENT6, VIP6, 61)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping, b"x")
            .unwrap();
        let i = filter_index_v6(&words_of_v6(VIP6));
        let vip = AddrClass {
            flags: AddrClass::VIP,
            snat_index: 0,
        };
        let other = words_of_v6(CLIENT6);
        let mut colliding = vip;
        colliding.flags |= AddrClass::COLLISION;
        let torn = FilterBucket6 {
            check: 0,
            ..FilterBucket6::new(words_of_v6(VIP6), vip)
        };
        for (bucket, answered, what) in [
            (
                FilterBucket6::new(words_of_v6(VIP6), vip),
                true,
                "its own bucket",
            ),
            (torn, true, "a torn bucket: ADDRS6 decides"),
            (
                FilterBucket6::new(other, colliding),
                true,
                "a shared bucket: ADDRS6 decides",
            ),
            (
                FilterBucket6::new(other, vip),
                false,
                "another address's bucket",
            ),
        ] {
            fx.maps.write(&Write::Filter6(i, bucket)).unwrap();
            let act = fx.run(fx.client_if, &ping).unwrap().0;
            assert_eq!(act == XDP_TX, answered, "{what}: {:?}", fx.reasons());
        }
        fx.sync().unwrap();
        assert_eq!(fx.run(fx.client_if, &ping).unwrap().0, XDP_TX, "restored");
    });
}

#[test]
fn an_ipv6_client_reusing_its_port_after_a_reset_gets_a_new_flow_at_once() {
    with_fixture("ipv6_port_reuse", 1024, |fx| {
        fx.add_ipv6_vip();
        let seg = |flags, seq| {
            packets::tcp6_seg(
                (CLIENT6, 49100),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags,
                    seq,
                    ..Seg::default()
                },
            )
        };
        let (act, first) = fx.run(fx.client_if, &seg("S", ISN)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_eq!(
            fx.run(fx.client_if, &seg("R", ISN + 1)).unwrap().0,
            XDP_REDIRECT
        );
        // The same tuple again, a new connection: forwarded now, on a new flow.
        let before = fx.reasons();
        let (act, again) = fx.run(fx.client_if, &seg("S", ISN + 50_000)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert_eq!(inspect(&again).seq, ISN + 50_000);
        let _ = first;
        let flows = fx.flows();
        assert_eq!(flows.len(), 1, "the reset flow's slot was released");
        assert_eq!(flows[0].1.state, State::SynSent as u8, "a new flow");
    });
}

#[test]
fn ipv6_extension_headers_are_walked_or_refused_by_a_defined_policy() {
    with_fixture("ipv6_ext", 1024, |fx| {
        fx.add_ipv6_vip();
        let seg = |port, flags, payload: &'static [u8]| {
            packets::tcp6_seg(
                (CLIENT6, port),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags,
                    seq: ISN,
                    payload,
                    ..Seg::default()
                },
            )
        };
        // Walked: hop-by-hop, destination options, a spent routing header (up to two).
        for (port, headers) in [
            (49200u16, vec![(0u8, 0u8, 0u8)]),
            (49201, vec![(60, 1, 0)]),
            (49202, vec![(0, 0, 0), (43, 0, 0)]),
        ] {
            let syn = packets::with_ext(&seg(port, "S", b""), &headers);
            let (act, out) = fx.run(fx.client_if, &syn).unwrap();
            assert_eq!(act, XDP_REDIRECT, "{headers:?}: {:?}", fx.reasons());
            let s = inspect(&out);
            assert!(s.checksums_ok, "{headers:?}: {s:?}");
            assert_eq!((s.dst_port, s.ttl), (VIP_TCP_PORT, 63));
            assert_eq!(
                out.len(),
                syn.len() - 20 - (syn.len() - 74),
                "headers dropped"
            );
            // Data of the same flow, with its headers too.
            let data = packets::with_ext(&seg(port, "A", b"hello"), &headers);
            let (act, out) = fx.run(fx.client_if, &data).unwrap();
            assert_eq!(act, XDP_REDIRECT, "{headers:?}: {:?}", fx.reasons());
            let s = inspect(&out);
            assert!(
                s.checksums_ok && s.payload == b"hello",
                "{headers:?}: {s:?}"
            );
        }
        // Refused (counted as drop_malformed): a routing header with segments left, three
        // headers, one too long; a fragment after a walked header is a fragment.
        for (headers, reason) in [
            (vec![(43u8, 0u8, 1u8)], Reason::DropMalformed),
            (
                vec![(0, 0, 0), (60, 0, 0), (60, 0, 0)],
                Reason::DropMalformed,
            ),
            (vec![(60, 8, 0)], Reason::DropMalformed),
            (vec![(0, 0, 0), (44, 0, 0)], Reason::DropFragment),
        ] {
            let f = packets::with_ext(&seg(49210, "S", b""), &headers);
            let before = fx.reasons();
            assert_eq!(fx.run(fx.client_if, &f).unwrap().0, XDP_DROP, "{headers:?}");
            assert_only(fx, &before, reason, 1);
        }
    });
}

#[test]
fn adopting_the_pins_of_a_build_without_plain_syn_stamps_marks_every_vip_recent() {
    use lb_common::{MAX_VIPS, names};
    use lb_userspace::sys::clock::monotonic_ns;
    /// Unpins whatever the test pinned, however it ends.
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            if let Ok(d) = std::fs::read_dir(&self.0) {
                for e in d.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/wklb-test-plain-syn-{}",
        std::process::id()
    ));
    let _unpin = Unpin(dir.clone());
    let opts = kernel::LoadOptions {
        max_flows: 1024,
        snat_slots: 1,
        pin_dir: Some(dir.clone()),
        conn_log: false,
    };
    let mut l = kernel::load(&opts).unwrap();
    assert_eq!(l.program.plain_syn_stamp(0).unwrap(), 0, "a new map");
    l.program.set_plain_syn_stamp(3, 5).unwrap();
    drop(l);
    // Adopted with the map there: what the data path wrote stays.
    let l = kernel::load(&opts).unwrap();
    assert!(l.pins.as_ref().unwrap().adopted);
    assert_eq!(l.program.plain_syn_stamp(3).unwrap(), 5);
    drop(l);
    // The pins as a build before the map left them: flows it made a moment ago may still see
    // their SYNs retransmitted, so every VIP counts as having made one now.
    std::fs::remove_file(dir.join(names::VIP_PLAIN_SYN)).unwrap();
    let before = monotonic_ns();
    let l = kernel::load(&opts).unwrap();
    assert!(l.pins.as_ref().unwrap().adopted);
    for id in [0, 3, MAX_VIPS - 1] {
        assert!(
            l.program.plain_syn_stamp(id).unwrap() >= before,
            "VIP id {id}"
        );
    }
}
