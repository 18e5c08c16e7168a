//! Data-path hardening: each finding of a full read of the data path against the packets an
//! internet edge gets, pinned by a fixture through the real XDP object (BPF_PROG_TEST_RUN;
//! root, CI runs them). Numbered as the findings: h03 the IPv6 L4 offset, h04 refreshes by
//! unchecked segments, h05/h06 the cookie handshake's backend side, h07 UDP flows on a dead
//! backend, h08 RSTs at SND.NXT, h09 port allocation near full, h10 cookie option edge cases,
//! h11 slot reuse, h12 a VIP as its own source; h01, h02 and h13 at the end.

use std::time::Duration;

use lb_common::{FlowEntry, Reason, conntrack::State, hash::flow_hash_v4, slot};
use lb_userspace::dataplane::Flows as _;
use wklb_tests::{
    exchange::{XDP_DROP, XDP_REDIRECT, XDP_TX, cookie, plain},
    fixture::*,
    packets::{
        self, Seg, TcpView, icmp_error, inspect, inspect_icmp, tcp_seg, tcp_view, ts_option, udp,
    },
};

fn flow_of(fx: &Fixture, port: u16) -> (u32, FlowEntry) {
    plain::flow_of(fx, port)
}

// ------------------------------------------------------------------ h03: IPv6 L4 offset

#[test]
fn h03_ipv6_l4_offsets_past_127_bytes_are_read_where_they_are() {
    with_fixture("h03_ipv6_offsets", 1024, |fx| {
        fx.add_ipv6_vip();
        let seg = |port, flags, payload: &'static [u8]| {
            packets::tcp6_seg(
                (CLIENT6, port),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags,
                    seq: plain::ISN,
                    payload,
                    ..Seg::default()
                },
            )
        };
        // The policy's largest walked headers: 64 + 16 and 64 + 64 bytes (L4 at 134 and 182).
        for (port, headers) in [
            (49300u16, vec![(0u8, 7u8, 0u8), (60, 1, 0)]),
            (49301, vec![(0, 7, 0), (60, 7, 0)]),
        ] {
            let syn = packets::with_ext(&seg(port, "S", b""), &headers);
            let before = fx.reasons();
            let (act, out) = fx.run(fx.client_if, &syn).unwrap();
            assert_eq!(act, XDP_REDIRECT, "{headers:?}: {:?}", fx.reasons());
            assert_only(fx, &before, Reason::Forwarded, 1);
            let s = inspect(&out);
            assert!(s.checksums_ok, "{headers:?}: {s:?}");
            assert_eq!((s.dst_port, s.seq), (VIP_TCP_PORT, plain::ISN));
            let data = packets::with_ext(&seg(port, "A", b"hello"), &headers);
            let (act, out) = fx.run(fx.client_if, &data).unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let s = inspect(&out);
            assert!(s.checksums_ok && s.payload == b"hello", "{s:?}");
        }
        // UDP behind the same headers.
        let udp6 = packets::with_ext(
            &packets::udp6((CLIENT6, 49302), (VIP6, VIP_UDP_PORT), b"ping"),
            &[(0, 7, 0), (60, 7, 0)],
        );
        let (act, out) = fx.run(fx.client_if, &udp6).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        let s = inspect(&out);
        assert!(s.checksums_ok && s.payload == b"ping", "{s:?}");
        // Past the policy: a 72-byte header, a third header.
        for headers in [
            vec![(0u8, 8u8, 0u8)],
            vec![(0, 7, 0), (60, 7, 0), (60, 0, 0)],
        ] {
            let f = packets::with_ext(&seg(49303, "S", b""), &headers);
            let before = fx.reasons();
            assert_eq!(fx.run(fx.client_if, &f).unwrap().0, XDP_DROP, "{headers:?}");
            assert_only(fx, &before, Reason::DropMalformed, 1);
        }
    });
}

// ------------------------------------------------------------------ h04: unchecked refreshes

#[test]
fn h04_a_segment_failing_the_sequence_check_neither_refreshes_the_flow_nor_moves_its_hop() {
    with_fixture("h04_no_refresh", 1024, |fx| {
        plain::establish(fx, 41000);
        let (_, before) = flow_of(fx, 41000);
        // Past the refresh interval, so an accepted segment would write the timestamp.
        std::thread::sleep(Duration::from_millis(1100));
        // A blind RST (wrong sequence) from another MAC, arriving on the backend-side interface.
        let mut rst = tcp_seg(
            client(41000),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: plain::ISN + 70_000,
                ..Seg::default()
            },
        );
        rst[6..12].copy_from_slice(&[0x02, 0xee, 0xee, 0xee, 0xee, 0xee]);
        let (act, _) = fx.run(fx.backend_if, &rst).unwrap();
        assert!(
            act == XDP_TX || act == XDP_REDIRECT,
            "sent on: the backend decides"
        );
        // A blind data segment and FIN likewise.
        for flags in ["A", "FA"] {
            let mut f = tcp_seg(
                client(41000),
                VIP_TCP,
                &Seg {
                    flags,
                    seq: plain::ISN + 3_000_000,
                    ack: plain::BACKEND_ISN + 1,
                    payload: b"x",
                    ..Seg::default()
                },
            );
            f[6..12].copy_from_slice(&[0x02, 0xee, 0xee, 0xee, 0xee, 0xee]);
            fx.run(fx.backend_if, &f).unwrap();
        }
        let (_, after) = flow_of(fx, 41000);
        assert_eq!(after.state, State::Established as u8);
        assert_eq!(after.last_seen_ns, before.last_seen_ns, "refreshed");
        assert_eq!(after.to_client, before.to_client, "reply hop moved");
        // The client's own next segment refreshes it, from where it really is.
        let (act, _) = fx.run(fx.client_if, &plain::ack_from(41000)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let (_, now) = flow_of(fx, 41000);
        assert!(now.last_seen_ns > before.last_seen_ns);
        assert_eq!(now.to_client, before.to_client);
    });
}

#[test]
fn h04_the_same_for_an_ipv6_client() {
    with_fixture("h04_no_refresh6", 1024, |fx| {
        fx.add_ipv6_vip();
        let seg = |flags: &'static str, seq: u32, ack: u32| {
            packets::tcp6_seg(
                (CLIENT6, 41001),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags,
                    seq,
                    ack,
                    ..Seg::default()
                },
            )
        };
        assert_eq!(
            fx.run(fx.client_if, &seg("S", plain::ISN, 0)).unwrap().0,
            XDP_REDIRECT
        );
        let (slot, e) = fx.flows()[0];
        let sp = lb_common::slot::port_of(slot);
        let b = BACKENDS.iter().position(|a| word(*a) == e.backend).unwrap();
        plain::backend_answers(fx, b, sp);
        let ack = seg("A", plain::ISN + 1, plain::BACKEND_ISN + 1);
        assert_eq!(fx.run(fx.client_if, &ack).unwrap().0, XDP_REDIRECT);
        let (_, before) = fx.flows()[0];
        std::thread::sleep(Duration::from_millis(1100));
        let mut rst = seg("R", plain::ISN + 70_000, 0);
        rst[6..12].copy_from_slice(&[0x02, 0xee, 0xee, 0xee, 0xee, 0xee]);
        fx.run(fx.backend_if, &rst).unwrap();
        let (_, after) = fx.flows()[0];
        assert_eq!(after.state, State::Established as u8);
        assert_eq!(after.last_seen_ns, before.last_seen_ns, "refreshed");
        assert_eq!(after.to_client, before.to_client, "reply hop moved");
    });
}

// ------------------------------------------------------------------ h05, h06: cookie handshake

#[test]
fn h05_a_backend_rst_during_the_cookie_handshake_must_acknowledge_the_syn() {
    with_fixture("h05_cookie_rst", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let (sa, _, b) = cookie::to_backend_syn(fx, 40100);
        let sp = cookie::snat_port(fx, 40100);
        let held = cookie::flow(fx, 40100).unwrap();
        // A RST from the backend's address and port that does not acknowledge the SYN.
        let forged = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "RA",
                seq: 12_345,
                ack: cookie::ISN + 999,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        assert_eq!(fx.run(fx.backend_if, &forged).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropSynCookiePending, 1);
        let e = cookie::flow(fx, 40100).unwrap();
        assert_eq!(
            (e.state, e.seq_delta, e.ts_delta, e.syn_opts),
            (held.state, held.seq_delta, held.ts_delta, held.syn_opts),
            "the handshake's state is untouched"
        );
        // The real SYN-ACK then settles with the right offsets: the client sees the cookie's
        // numbering.
        let synack = cookie::backend_synack(
            b,
            sp,
            ts_option(cookie::BACKEND_TS, cookie::CLIENT_TS + 1).leak(),
        );
        assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_TX);
        let data = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "PA",
                seq: cookie::BACKEND_ISN.wrapping_add(1),
                ack: cookie::ISN + 1,
                payload: b"hi",
                options: ts_option(cookie::BACKEND_TS + 1, cookie::CLIENT_TS + 1).leak(),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_eq!(tcp_view(&out).seq, sa.seq.wrapping_add(1));
    });
}

#[test]
fn h06_a_challenge_ack_from_a_stale_backend_connection_is_answered_with_a_rst() {
    with_fixture("h06_cookie_challenge_ack", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let (_, _, b) = cookie::to_backend_syn(fx, 40101);
        let sp = cookie::snat_port(fx, 40101);
        // The backend still holds an old connection on this port: it answers the SYN with an
        // ACK of its own numbering (RFC 793's challenge), not a SYN-ACK.
        let challenge = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "A",
                seq: 777_000,
                ack: 888_000,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &challenge).unwrap();
        assert_eq!(act, XDP_TX, "the edge answers as the client would");
        assert_only(fx, &before, Reason::SynCookieBackendReset, 1);
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!((s.src, s.dst, s.src_port), (SNAT, BACKENDS[b], sp));
        let v = tcp_view(&out);
        assert!(v.rst && !v.ack_flag && !v.syn);
        assert_eq!(v.seq, 888_000, "at the sequence number the ACK asked for");
        // The flow still waits for the backend's SYN-ACK; the client's next segment repeats
        // the SYN.
        assert_eq!(cookie::flow(fx, 40101).unwrap().state, State::SynSent as u8);
    });
}

// ------------------------------------------------------------------ h07: UDP on a dead backend

#[test]
fn h07_a_udp_flow_leaves_a_removed_or_inactive_backend() {
    with_fixture("h07_udp_dead_backend", 1024, |fx| {
        let dgram = || udp(client(42000), (VIP, VIP_UDP_PORT), b"ping");
        let (act, out) = fx.run(fx.client_if, &dgram()).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let first = inspect(&out).dst;
        let i = BACKENDS.iter().position(|b| *b == first).unwrap();
        let id = UDP_BACKEND_BASE + i as u32;
        // The backend leaves: inactive, out of the table.
        fx.set_backend(id, first, VIP_UDP_PORT, false).unwrap();
        let others: Vec<(u32, u32)> = (0..3u32)
            .filter(|j| *j != i as u32)
            .map(|j| (UDP_BACKEND_BASE + j, 1))
            .collect();
        fx.install(UDP_VIP_ID, &others).unwrap();
        let (act, out) = fx.run(fx.client_if, &dgram()).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let now = inspect(&out).dst;
        assert_ne!(now, first, "still sent to the removed backend");
        assert!(inspect(&out).checksums_ok);
    });
}

// ------------------------------------------------------------------ h08: RST at SND.NXT

#[test]
fn h08_a_rst_at_the_senders_next_sequence_number_after_unacknowledged_data_ends_the_flow() {
    with_fixture("h08_rst_snd_nxt", 1024, |fx| {
        plain::establish(fx, 43000);
        // 100 bytes the backend has not acknowledged yet.
        let data = tcp_seg(
            client(43000),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: plain::ISN + 1,
                ack: plain::BACKEND_ISN + 1,
                payload: &[7u8; 100],
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &data).unwrap().0, XDP_REDIRECT);
        let rst = tcp_seg(
            client(43000),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: plain::ISN + 101,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &rst).unwrap().0, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert_eq!(plain::state_of(fx, 43000), State::Closed as u8);
    });
}

#[test]
fn h08_a_cookie_flow_knows_the_clients_acknowledgment_from_its_cookie_ack() {
    with_fixture("h08_cookie_fin", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let (sa, _, b) = cookie::to_backend_syn(fx, 40102);
        let sp = cookie::snat_port(fx, 40102);
        let synack = cookie::backend_synack(
            b,
            sp,
            ts_option(cookie::BACKEND_TS, cookie::CLIENT_TS + 1).leak(),
        );
        assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_TX);
        let e = cookie::flow(fx, 40102).unwrap();
        assert_eq!(
            e.ack[0],
            sa.seq.wrapping_add(1),
            "the cookie ACK's acknowledgment"
        );
        assert_ne!(e.flags & FlowEntry::ACK_SEEN_FWD, 0);
        // The backend closes before the client sends anything else: its FIN is acceptable.
        let fin = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "FA",
                seq: cookie::BACKEND_ISN.wrapping_add(1),
                ack: cookie::ISN + 1,
                options: ts_option(cookie::BACKEND_TS + 1, cookie::CLIENT_TS + 1).leak(),
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        assert_eq!(fx.run(fx.backend_if, &fin).unwrap().0, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Reversed, 1);
        assert_eq!(cookie::flow(fx, 40102).unwrap().state, State::Closing as u8);
    });
}

// ------------------------------------------------------------------ h09: allocation near full

#[test]
fn h09_a_new_flow_gets_the_last_free_port_of_a_nearly_full_address() {
    with_fixture("h09_last_port", 4096, |fx| {
        // 100 ports; 99 taken by flows, one left.
        let mut c = fx.config();
        c.snat_port_min = 20_000;
        c.snat_port_max = 20_099;
        fx.set_config(c).unwrap();
        let mut opened = 0;
        let mut port = 30_000u16;
        while opened < 99 {
            let (act, _) = fx.run(fx.client_if, &plain::syn(port)).unwrap();
            port += 1;
            if act == XDP_REDIRECT {
                opened += 1;
            }
            assert!(
                port < 40_000,
                "only {opened} flows opened: {:?}",
                fx.reasons()
            );
        }
        assert_eq!(fx.flows().len(), 99);
        let before = fx.reasons();
        let (b, sp) = plain::open(fx, 45_000);
        assert_only(fx, &before, Reason::Forwarded, 1);
        plain::backend_answers(fx, b, sp);
        plain::client_acks(fx, 45_000);
        // Now full: refused, counted.
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(45_001)).unwrap().0,
            XDP_DROP
        );
        assert_only(fx, &before, Reason::DropSnatExhausted, 1);
        // The last flow's client resets it; the expiry pass ends it (closed flows' timeout),
        // frees its slot and rewrites the port bitmaps: then that port is found again.
        let (last_slot, _) = flow_of(fx, 45_000);
        let rst = tcp_seg(
            client(45_000),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: plain::ISN + 1,
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &rst).unwrap();
        assert_eq!(flow_of(fx, 45_000).1.state, State::Closed as u8);
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(45_002)).unwrap().0,
            XDP_DROP
        );
        let timeouts = lb_common::conntrack::Timeouts {
            closed_ns: 0,
            ..Default::default()
        };
        let pass = lb_userspace::controller::expiry::Pass {
            timeouts: &timeouts,
            limits: &Default::default(),
            log: false,
            now: lb_userspace::sys::clock::monotonic_ns() + 1_000_000,
            grace: &|| {},
            ports: (20_000, 20_099),
        };
        let swept = lb_userspace::controller::expiry::sweep_with(fx.flows.as_ref(), &pass).unwrap();
        assert_eq!((swept.expired, swept.live), (1, 99));
        assert_eq!(fx.flows.entry(last_slot).owner, slot::FREE);
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(45_003)).unwrap().0,
            XDP_REDIRECT,
            "the freed port was not found again: {:?}",
            fx.reasons()
        );
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert_eq!(flow_of(fx, 45_003).0, last_slot);
    });
}

// ------------------------------------------------------------------ h10: cookie options

/// Timestamps, then a SACK option claiming `claimed` blocks with only `present` in the header.
fn ts_sack(val: u32, ecr: u32, claimed: u8, present: &[(u32, u32)]) -> Vec<u8> {
    let mut o = ts_option(val, ecr);
    o.extend_from_slice(&[1, 1, 5, 2 + 8 * claimed]);
    for (l, r) in present {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

#[test]
fn h10_cookie_flows_scale_windows_for_a_backend_without_scaling_and_bound_sack_blocks() {
    with_fixture("h10_cookie_options", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let (sa, _, b) = cookie::to_backend_syn(fx, 40103);
        let sp = cookie::snat_port(fx, 40103);
        // The backend offers no window scaling (the client offered 7): the client's windows
        // must reach it unscaled.
        let synack = cookie::backend_synack(
            b,
            sp,
            ts_option(cookie::BACKEND_TS, cookie::CLIENT_TS + 1).leak(),
        );
        assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_TX);
        let (edge_ts, _) = sa.ts.unwrap();
        let data = tcp_seg(
            client(40103),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: cookie::ISN + 1,
                ack: sa.seq.wrapping_add(1),
                win: 200,
                options: ts_option(cookie::CLIENT_TS + 2, edge_ts).leak(),
                payload: b"hello",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert!(inspect(&out).checksums_ok);
        assert_eq!(
            tcp_view(&out).win,
            25_600,
            "200 << 7 in the backend's unscaled view"
        );
        // A SACK option claiming three blocks with one present: only that one is translated,
        // and the checksum stays right.
        let l = sa.seq.wrapping_add(100);
        let sack = tcp_seg(
            client(40103),
            VIP_TCP,
            &Seg {
                flags: "A",
                seq: cookie::ISN + 6,
                ack: sa.seq.wrapping_add(1),
                win: 200,
                options: ts_sack(cookie::CLIENT_TS + 3, edge_ts, 3, &[(l, l + 10)]).leak(),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &sack).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert!(
            s.checksums_ok,
            "a SACK block beyond the header changed the checksum: {s:?}"
        );
    });
}

#[test]
fn h10_a_backend_window_scale_above_14_is_treated_as_14() {
    with_fixture("h10_wscale_clamp", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let (_, _, b) = cookie::to_backend_syn(fx, 40104);
        let sp = cookie::snat_port(fx, 40104);
        let mut opts = ts_option(cookie::BACKEND_TS, cookie::CLIENT_TS + 1);
        opts.extend_from_slice(&[1, 3, 3, 15]);
        let synack = cookie::backend_synack(b, sp, opts.leak());
        assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_TX);
        let data = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "A",
                seq: cookie::BACKEND_ISN.wrapping_add(1),
                ack: cookie::ISN + 1,
                win: 1,
                options: ts_option(cookie::BACKEND_TS + 1, cookie::CLIENT_TS + 1).leak(),
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        // 1 << 14 bytes, told to the client in its scale of 7.
        assert_eq!(tcp_view(&out).win, 1 << (14 - 7));
    });
}

// ------------------------------------------------------------------ h11: slot reuse

#[test]
fn h11_a_slot_given_up_by_the_data_path_is_not_reusable_at_once_and_tokens_are_not_the_hash() {
    with_fixture("h11_slot_reuse", 1024, |fx| {
        plain::establish(fx, 44000);
        let (old_slot, e) = flow_of(fx, 44000);
        let h = flow_hash_v4(
            CLIENT.octets(),
            VIP.octets(),
            44000,
            VIP_TCP_PORT,
            lb_common::PROTO_TCP,
        );
        assert_ne!(e.owner, h | 1, "the claim token is the public flow hash");
        // The client resets and reuses its port: a new flow; the old slot waits for the
        // daemon (DYING), so a packet still on its way cannot write into another flow.
        let rst = tcp_seg(
            client(44000),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: plain::ISN + 1,
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &rst).unwrap();
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(44000)).unwrap().0,
            XDP_REDIRECT
        );
        let owner = fx.flows.entry(old_slot).owner;
        assert_eq!(owner, slot::DYING, "the old slot was freed at once");
    });
}

// ------------------------------------------------------------------ h12: the VIP as its source

#[test]
fn h12_a_packet_from_one_of_our_own_addresses_creates_nothing() {
    with_fixture("h12_own_source", 1024, |fx| {
        for (src, proto) in [(VIP, "tcp"), (SNAT, "tcp"), (VIP, "udp")] {
            let f = if proto == "tcp" {
                tcp_seg(
                    (src, VIP_TCP_PORT),
                    VIP_TCP,
                    &Seg {
                        flags: "S",
                        seq: 1,
                        ..Seg::default()
                    },
                )
            } else {
                udp((src, VIP_UDP_PORT), (VIP, VIP_UDP_PORT), b"x")
            };
            let before = fx.reasons();
            assert_eq!(
                fx.run(fx.client_if, &f).unwrap().0,
                XDP_DROP,
                "{src} {proto}"
            );
            assert_only(fx, &before, Reason::DropOwnSource, 1);
        }
        assert!(fx.flows().is_empty());
        // The same for an IPv6 VIP: its own address as the source, TCP, UDP and ICMPv6.
        fx.add_ipv6_vip();
        for f in [
            packets::tcp6_seg(
                (VIP6, VIP_TCP_PORT),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags: "S",
                    seq: 1,
                    ..Seg::default()
                },
            ),
            packets::udp6((VIP6, VIP_UDP_PORT), (VIP6, VIP_UDP_PORT), b"x"),
            // An echo request would be answered to ourselves.
            {
                let mut ping = Vec::new();
                etherparse::PacketBuilder::ethernet2(packets::CLIENT_MAC, packets::EDGE_MAC)
                    .ipv6(VIP6, VIP6, 61)
                    .icmpv6_echo_request(0x77, 3)
                    .write(&mut ping, b"me?")
                    .unwrap();
                ping
            },
        ] {
            let before = fx.reasons();
            assert_eq!(fx.run(fx.client_if, &f).unwrap().0, XDP_DROP);
            assert_only(fx, &before, Reason::DropOwnSource, 1);
        }
        assert!(fx.flows().is_empty());
    });
}

// ------------------------------------------------------------------ h02: cookie path MTU

/// A settled cookie flow from `port`: (the edge's SYN-ACK, backend index, SNAT port).
fn cookie_settled(fx: &mut Fixture, port: u16) -> (TcpView, usize, u16) {
    fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
    let (sa, _, b) = cookie::to_backend_syn(fx, port);
    let sp = cookie::snat_port(fx, port);
    let synack = cookie::backend_synack(
        b,
        sp,
        ts_option(cookie::BACKEND_TS, cookie::CLIENT_TS + 1).leak(),
    );
    assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_TX);
    (sa, b, sp)
}

#[test]
fn h02_errors_about_a_cookie_flow_quote_the_numbering_of_the_side_they_go_to() {
    with_fixture("h02_cookie_pmtu", 1024, |fx| {
        let (sa, b, sp) = cookie_settled(fx, 40200);
        // The edge's own fragmentation-needed: the client side carries 1300 bytes, the
        // backend's reply is bigger. The backend must find its own sequence number quoted.
        wklb_tests::netns::ip("link set wkc0 mtu 1300").unwrap();
        let mut cfg = fx.config();
        cfg.min_mtu = 1300;
        let (client_if, backend_if) = (fx.client_if, fx.backend_if);
        fx.image.iface_mtu.insert(client_if, 1300);
        fx.set_config(cfg).unwrap();
        let backend_seq = cookie::BACKEND_ISN.wrapping_add(1);
        let big = packets::with_ip_fields(
            &tcp_seg(
                (BACKENDS[b], VIP_TCP_PORT),
                (SNAT, sp),
                &Seg {
                    flags: "PA",
                    seq: backend_seq,
                    ack: cookie::ISN + 1,
                    payload: &[9u8; 1360],
                    ..Seg::default()
                },
            ),
            0,
            1,
            true,
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &big).unwrap();
        assert_eq!(act, XDP_TX);
        assert_only(fx, &before, Reason::IcmpFragNeededSent, 1);
        let e = inspect_icmp(&out);
        assert_eq!((e.src, e.dst), (SNAT, BACKENDS[b]));
        assert!(e.checksums_ok);
        assert_eq!(
            packets::quoted_tcp(&e.quote).0,
            Some(backend_seq),
            "the edge's own error quotes the backend's numbering"
        );
        // A router on the client side about what the edge sent the client (the client's
        // numbering: the cookie's): translated to the backend in its numbering.
        let client_seq = sa.seq.wrapping_add(1);
        let to_client = tcp_seg(
            VIP_TCP,
            client(40200),
            &Seg {
                flags: "PA",
                seq: client_seq,
                ack: cookie::ISN + 1,
                payload: &[3u8; 40],
                ..Seg::default()
            },
        );
        quotes_translated(
            fx,
            Routed {
                router: std::net::Ipv4Addr::new(192, 0, 2, 1),
                to: VIP,
                arrives_on: client_if,
                about: &to_client,
            },
            (Reason::IcmpErrorToBackend, SNAT, BACKENDS[b]),
            (backend_seq, cookie::ISN + 1),
        );
        // A router on the backend side about the client's segment as the edge sent it (its
        // acknowledgment in the backend's numbering): translated to the client in its own.
        let to_backend = tcp_seg(
            (SNAT, sp),
            (BACKENDS[b], VIP_TCP_PORT),
            &Seg {
                flags: "PA",
                seq: cookie::ISN + 1,
                ack: backend_seq,
                payload: &[4u8; 40],
                ..Seg::default()
            },
        );
        quotes_translated(
            fx,
            Routed {
                router: std::net::Ipv4Addr::new(10, 2, 0, 254),
                to: SNAT,
                arrives_on: backend_if,
                about: &to_backend,
            },
            (Reason::IcmpErrorToClient, VIP, CLIENT),
            (cookie::ISN + 1, client_seq),
        );
    });
}

/// A router's fragmentation-needed about `about`, sent to `to`, arriving on `arrives_on`.
struct Routed<'a> {
    router: std::net::Ipv4Addr,
    to: std::net::Ipv4Addr,
    arrives_on: u32,
    about: &'a [u8],
}

/// The error, quoting 28, 48 and 100 bytes, is translated under `reason` from `src` to `dst`
/// and quotes `(seq, ack)` in the numbering of the side it reaches (the acknowledgment from 48
/// bytes on; the quoted TCP checksum kept right at 100).
fn quotes_translated(
    fx: &mut Fixture,
    e: Routed,
    (reason, src, dst): (Reason, std::net::Ipv4Addr, std::net::Ipv4Addr),
    (seq, ack): (u32, u32),
) {
    for quote in [28usize, 48, 100] {
        let err = icmp_error(e.router, e.to, 3, 4, [0, 0, 0x05, 0x14], e.about, quote);
        let before = fx.reasons();
        let (act, out) = fx.run(e.arrives_on, &err).unwrap();
        assert_eq!(act, XDP_REDIRECT, "quote {quote}");
        assert_only(fx, &before, reason, 1);
        let got = inspect_icmp(&out);
        assert_eq!((got.src, got.dst), (src, dst));
        assert!(got.checksums_ok, "quote {quote}: {got:?}");
        let (q_seq, q_ack, sum) = packets::quoted_tcp(&got.quote);
        assert_eq!(
            q_seq,
            Some(seq),
            "quote {quote}: the sequence number in its side's numbering"
        );
        if quote >= 48 {
            assert_eq!(
                q_ack,
                Some(ack),
                "quote {quote}: the acknowledgment in its side's numbering"
            );
        }
        if quote == 100 {
            assert_eq!(sum, Some(true), "the quoted TCP checksum follows");
        }
    }
}

// ------------------------------------------------------------------ h01: shares

/// 100 SNAT ports; refusals over the share start at 90; each VIP's share of them is `share`.
fn small_pool_with_shares(fx: &mut Fixture, share: &[(u32, u32)]) {
    use lb_common::shares::{SNAT4, full_at};
    let mut c = fx.config();
    c.snat_port_min = 20_000;
    c.snat_port_max = 20_099;
    c.share_full[SNAT4] = full_at(100);
    // The pool's size: a new flow finding it full is refused without walking it.
    c.pool_size[SNAT4] = 100;
    fx.image.config = c;
    for (vip, n) in share {
        let mut l = lb_common::VipLimits::default();
        l.share[SNAT4] = *n;
        fx.image.vip_limits.insert(*vip, l);
    }
    fx.sync().unwrap();
}

#[test]
fn h01_a_flood_on_one_vip_leaves_the_others_their_share_of_snat_ports() {
    with_fixture("h01_shares", 4096, |fx| {
        fx.add_ipv6_vip();
        small_pool_with_shares(fx, &[(TCP_VIP_ID, 50), (V6_VIP_ID, 50)]);
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        // A spoofed SYN flood at the IPv6 VIP (no cookies there): each SYN holds a port.
        let mut flood = 0;
        let mut refused = 0;
        for port in 30_000..30_200u16 {
            let syn = packets::tcp6_seg(
                (CLIENT6, port),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags: "S",
                    seq: 1,
                    ..Seg::default()
                },
            );
            match fx.run(fx.client_if, &syn).unwrap().0 {
                XDP_REDIRECT => flood += 1,
                _ => refused += 1,
            }
        }
        assert_eq!(
            (flood, refused),
            (90, 110),
            "the flood stops at 90% of the pool: {:?}",
            fx.reasons()
        );
        assert_eq!(
            fx.reasons()[Reason::DropVipOverShare as usize],
            110,
            "{:?}",
            fx.reasons()
        );
        assert_eq!(fx.vip_stats(V6_VIP_ID).over_share, 110);
        // The IPv4 cookie VIP, within its share, still gets the rest of the pool: valid
        // cookie ACKs create flows.
        for port in 40_000..40_010u16 {
            cookie::to_backend_syn(fx, port);
        }
        assert_eq!(fx.vip_stats(TCP_VIP_ID).over_share, 0);
        // Now the pool is empty: the next one fails for want of a port, not of a share.
        let sa = cookie::cookie_synack(fx, 40_010);
        let before = fx.reasons();
        let ack = cookie::cookie_ack(40_010, &sa, "A", b"");
        assert_eq!(fx.run(fx.client_if, &ack).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropSnatExhausted, 1);
    });
}

#[test]
fn h01_a_vip_over_its_share_may_use_free_room_below_the_threshold() {
    with_fixture("h01_free_room", 4096, |fx| {
        // One VIP with a share of 10: it still fills the pool to 90%, then stops.
        small_pool_with_shares(fx, &[(UDP_VIP_ID, 10), (TCP_VIP_ID, 90)]);
        let mut created = 0;
        for port in 30_000..30_100u16 {
            let d = udp(client(port), (VIP, VIP_UDP_PORT), b"x");
            if fx.run(fx.client_if, &d).unwrap().0 == XDP_REDIRECT {
                created += 1;
            }
        }
        assert_eq!(created, 90, "{:?}", fx.reasons());
        assert_eq!(fx.vip_stats(UDP_VIP_ID).over_share, 10);
        // The TCP VIP (share 90, using none) takes the last ten ports.
        for port in 40_000..40_010u16 {
            plain::open(fx, port);
        }
    });
}

#[test]
fn h01_a_full_pool_still_forwards_a_retransmitted_syn_of_a_flow_it_holds() {
    with_fixture("h01_full_retx", 4096, |fx| {
        small_pool_with_shares(fx, &[(UDP_VIP_ID, 10), (TCP_VIP_ID, 90)]);
        // The TCP VIP takes its share, 90 ports: the pool is 90% full and the VIP at its share.
        let first = plain::open(fx, 41_000);
        for port in 41_001..41_090u16 {
            plain::open(fx, port);
        }
        let before = fx.reasons();
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(41_090)).unwrap().0,
            XDP_DROP,
            "a new flow over the share in a 90% full pool"
        );
        assert_eq!(
            fx.reasons()[Reason::DropVipOverShare as usize],
            before[Reason::DropVipOverShare as usize] + 1
        );
        // The first client's SYN-ACK was lost: its retransmitted SYN reaches the same backend
        // through the same port (refused before: the pool check came before the lookup).
        assert_eq!(plain::open(fx, 41_000), first);
    });
}

#[test]
fn h01_the_same_for_an_ipv6_vip() {
    with_fixture("h01_full_retx6", 4096, |fx| {
        fx.add_ipv6_vip();
        small_pool_with_shares(fx, &[(TCP_VIP_ID, 10), (V6_VIP_ID, 90)]);
        let syn = |port: u16| {
            packets::tcp6_seg(
                (CLIENT6, port),
                (VIP6, VIP_TCP_PORT),
                0,
                &Seg {
                    flags: "S",
                    seq: 7,
                    ..Seg::default()
                },
            )
        };
        let mut sent = Vec::new();
        for port in 41_000..41_091u16 {
            let (act, out) = fx.run(fx.client_if, &syn(port)).unwrap();
            sent.push((act, out));
        }
        assert!(sent[..90].iter().all(|(a, _)| *a == XDP_REDIRECT));
        assert_eq!(sent[90].0, XDP_DROP, "over the share in a 90% full pool");
        let (act, out) = fx.run(fx.client_if, &syn(41_000)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", fx.reasons());
        assert_eq!(out, sent[0].1, "the same backend through the same port");
    });
}

// ------------------------------------------------------------------ h13: data-path engagement

/// The TCP VIP in `auto` mode with a half-open budget for `engage_syn_rate` SYNs a second.
fn auto_cookies(fx: &mut Fixture, engage_syn_rate: u32) {
    let mut l = lb_common::VipLimits::default();
    (l.syn_interval_ns, l.syn_tolerance_ns) = lb_common::syn_budget::params(engage_syn_rate);
    fx.image.vip_limits.insert(TCP_VIP_ID, l);
    fx.set_tcp_vip_flags(lb_common::VipMeta::COOKIES_ALLOWED)
        .unwrap();
}

fn engaged(fx: &Fixture) -> bool {
    fx.flows.live()[TCP_VIP_ID as usize].cookies_engaged_ns != 0
}

#[test]
fn h13_the_data_path_engages_cookie_mode_when_the_half_open_budget_runs_out() {
    with_fixture("h13_budget", 4096, |fx| {
        // 80 SYNs/s: a burst of 10 (an eighth of a second); the fixture's SYNs arrive within
        // microseconds of each other, a flood.
        auto_cookies(fx, 80);
        let (mut forwarded, mut cookies) = (0, 0);
        for port in 30_000..30_100u16 {
            match fx.run(fx.client_if, &plain::syn(port)).unwrap().0 {
                XDP_REDIRECT => forwarded += 1,
                XDP_TX => cookies += 1,
                a => panic!("action {a}"),
            }
        }
        assert!(
            (10..=20).contains(&forwarded),
            "{forwarded} flood SYNs reached the data nodes"
        );
        assert_eq!(forwarded + cookies, 100);
        assert!(engaged(fx), "the data path's mark");
        assert_eq!(fx.vip_stats(TCP_VIP_ID).cookies_sent, cookies);
        // A SYN-ACK from the data node without the client's ACK gives nothing back (a spoofed
        // source never completes): only the daemon's release ends it.
        fx.flows
            .release_cookies(TCP_VIP_ID, lb_userspace::sys::clock::monotonic_ns());
        assert!(!engaged(fx));
        assert_eq!(
            fx.run(fx.client_if, &plain::syn(30_100)).unwrap().0,
            XDP_REDIRECT,
            "released: SYNs are forwarded again"
        );
    });
}

#[test]
fn h13_storms_that_complete_or_are_refused_give_their_budget_back() {
    with_fixture("h13_storms", 4096, |fx| {
        auto_cookies(fx, 80);
        // 100 reconnects completing their handshakes, ten times the burst: never engages.
        for port in 31_000..31_100u16 {
            plain::establish(fx, port);
        }
        assert!(!engaged(fx));
        // 100 more that the data node refuses (a RST acknowledging the SYN).
        for port in 32_000..32_100u16 {
            let (b, sp) = plain::open(fx, port);
            let rst = tcp_seg(
                (BACKENDS[b], VIP_TCP_PORT),
                (SNAT, sp),
                &Seg {
                    flags: "RA",
                    seq: 0,
                    ack: plain::ISN + 1,
                    ..Seg::default()
                },
            );
            assert_eq!(fx.run(fx.backend_if, &rst).unwrap().0, XDP_REDIRECT);
        }
        assert!(!engaged(fx), "refusals gave their budget back");
        // Data-node SYN-ACKs the client never acknowledges: the budget stays spent.
        let mut forwarded = 0;
        for port in 33_000..33_100u16 {
            let (act, out) = fx.run(fx.client_if, &plain::syn(port)).unwrap();
            if act != XDP_REDIRECT {
                break;
            }
            forwarded += 1;
            let s = inspect(&out);
            let b = BACKENDS.iter().position(|a| *a == s.dst).unwrap();
            plain::backend_answers(fx, b, s.src_port);
        }
        // A burst of 10, plus what the clock refills meanwhile on a slow machine.
        assert!((10..=20).contains(&forwarded), "{forwarded}");
        assert!(engaged(fx));
    });
}

// ------------------------------------------------------------------ review findings

#[test]
fn h13_a_forged_first_ack_gives_no_budget_back() {
    with_fixture("h13_forged_ack", 4096, |fx| {
        auto_cookies(fx, 80);
        // A spoofed SYN, the data node's SYN-ACK (to the spoofed source), and a blind ACK
        // that does not acknowledge it: no completed handshake, the budget stays spent.
        let mut forwarded = 0;
        for port in 34_000..34_100u16 {
            let (act, out) = fx.run(fx.client_if, &plain::syn(port)).unwrap();
            if act != XDP_REDIRECT {
                break;
            }
            forwarded += 1;
            let s = inspect(&out);
            let b = BACKENDS.iter().position(|a| *a == s.dst).unwrap();
            plain::backend_answers(fx, b, s.src_port);
            let forged = tcp_seg(
                client(port),
                VIP_TCP,
                &Seg {
                    flags: "A",
                    seq: plain::ISN + 1,
                    ack: 0x1234_5678,
                    ..Seg::default()
                },
            );
            fx.run(fx.client_if, &forged).unwrap();
        }
        assert!((10..=20).contains(&forwarded), "{forwarded}");
        assert!(engaged(fx));
        assert_eq!(fx.vip_stats(TCP_VIP_ID).handshakes, 0);
    });
}

#[test]
fn h08_a_blind_segment_in_the_window_does_not_make_a_rst_acceptable() {
    with_fixture("h08_blind_end", 1024, |fx| {
        plain::establish(fx, 44_500);
        // In the sequence window, with a believable acknowledgment, but past a gap: a blind
        // guess that landed. Its end must not become where a RST is accepted.
        let guess = plain::ISN + 1 + 30_000;
        let blind = tcp_seg(
            client(44_500),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: guess,
                ack: plain::BACKEND_ISN + 1,
                payload: &[0u8; 10],
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &blind).unwrap();
        let rst = tcp_seg(
            client(44_500),
            VIP_TCP,
            &Seg {
                flags: "R",
                seq: guess + 10,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        fx.run(fx.client_if, &rst).unwrap();
        assert_only(fx, &before, Reason::ForwardedOutOfWindow, 1);
        assert_eq!(plain::state_of(fx, 44_500), State::Established as u8);
        // An acknowledgment of data the data node never sent moves nothing either.
        let ack_before = flow_of(fx, 44_500).1.ack[0];
        let lie = tcp_seg(
            client(44_500),
            VIP_TCP,
            &Seg {
                flags: "A",
                seq: plain::ISN + 1,
                ack: plain::BACKEND_ISN + 1 + 500_000,
                ..Seg::default()
            },
        );
        fx.run(fx.client_if, &lie).unwrap();
        assert_eq!(flow_of(fx, 44_500).1.ack[0], ack_before);
    });
}

#[test]
fn h04_a_renumbered_syn_before_the_answer_is_the_one_that_counts() {
    with_fixture("h04_renumbered_syn", 1024, |fx| {
        let (b, sp) = plain::open(fx, 44_600);
        // The client gives up and reuses its port with a new ISN before the data node answers.
        let isn2 = plain::ISN + 3_000_000;
        let syn2 = tcp_seg(
            client(44_600),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: isn2,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &syn2).unwrap().0, XDP_REDIRECT);
        let synack = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "SA",
                seq: plain::BACKEND_ISN,
                ack: isn2 + 1,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.backend_if, &synack).unwrap().0, XDP_REDIRECT);
        assert_eq!(plain::state_of(fx, 44_600), State::Established as u8);
    });
}
