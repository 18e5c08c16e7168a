//! SYN cookies through the real XDP object (BPF_PROG_TEST_RUN; root, CI runs them): the cookie
//! SYN-ACK, valid / forged / expired cookie ACKs, the SYN the edge sends the backend, the
//! handshake's last ACK, and translation both ways with timestamps and SACK blocks.

use lb_common::{
    FlowEntry, PROTO_TCP, Reason, VipMeta,
    conntrack::{NO_WSCALE, State},
    cookie,
};
use lb_userspace::sys::clock::monotonic_ns;
use wklb_tests::{
    exchange::{XDP_DROP, XDP_REDIRECT, XDP_TX, cookie::*},
    fixture::*,
    packets::{CLIENT_MAC, Seg, linux_syn_options, tcp_seg, tcp_view, ts_option},
};

#[test]
fn the_cookie_synack_carries_the_cookie_and_the_clients_options() {
    with_fixture("the_cookie_synack_carries_the_cookie", 1024, |fx| {
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let before = fx.reasons();
        let sa = cookie_synack(fx, 40001);
        assert_only(fx, &before, Reason::SynCookieSent, 1);
        assert!(sa.syn && sa.ack_flag && !sa.rst);
        assert_eq!(sa.ack, ISN + 1);
        assert_eq!(sa.mss, Some(1460), "the smallest interface MTU 1500 - 40");
        assert_eq!(sa.wscale, Some(cookie::EDGE_WSCALE));
        assert!(sa.sack_ok);
        let (tsval, tsecr) = sa.ts.expect("timestamps echoed");
        assert_eq!(tsecr, CLIENT_TS);
        assert_eq!(
            cookie::ts_options(tsval),
            (7, true),
            "wscale and SACK in TSval"
        );
        let now = cookie::counter(monotonic_ns());
        let ok = cookie::check(&fx.cookie_key, &tuple(40001, ISN), sa.seq, now);
        assert_eq!(ok, Some(3), "the cookie is ours and records MSS 1460");
        // Headers, checksums and MACs: back to the client from the VIP.
        let (_, out) = fx
            .run(
                fx.client_if,
                &syn_with(40001, &linux_syn_options(1460, CLIENT_TS, 0, 7)),
            )
            .unwrap();
        let s = wklb_tests::packets::inspect(&out);
        assert_eq!(
            (s.src, s.src_port, s.dst, s.dst_port),
            (VIP, 5100, CLIENT, 40001)
        );
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(s.eth_dst, CLIENT_MAC);
        assert_eq!(out.len(), 14 + 20 + 40);
        // Nothing is kept, nothing reaches a backend.
        assert!(fx.flows().is_empty());
        assert_eq!(fx.refs(), 0);
        let vs = fx.vip_stats(TCP_VIP_ID);
        assert_eq!((vs.syns, vs.cookies_sent, vs.new_flows), (2, 2, 0));

        // A SYN without timestamps gets MSS only (no window scale or SACK can be remembered).
        let (_, out) = fx
            .run(fx.client_if, &syn_with(40002, &[2, 4, 0x05, 0x78]))
            .unwrap();
        let sa = tcp_view(&out);
        assert_eq!(
            (sa.mss, sa.wscale, sa.sack_ok, sa.ts),
            (Some(1460), None, false, None)
        );
        assert_eq!(sa.header_len, 24);
        let idx = cookie::check(&fx.cookie_key, &tuple(40002, ISN), sa.seq, now);
        assert_eq!(idx, Some(1), "MSS 1400 is recorded as 1300");
    });
}

#[test]
fn a_valid_cookie_creates_the_flow_and_the_edge_does_the_backend_handshake() {
    with_fixture("a_valid_cookie_creates_the_flow", 1024, |fx| {
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let before = fx.reasons();
        let (sa, syn, b) = to_backend_syn(fx, 40003);
        assert_eq!(
            b as u32,
            fx.predict(TCP_VIP_ID, client(40003), VIP_TCP, PROTO_TCP),
            "the same Maglev choice as without cookies"
        );
        assert!(syn.syn && !syn.ack_flag);
        assert_eq!(syn.seq, ISN, "the client's ISN");
        assert_eq!(syn.mss, Some(1460));
        assert_eq!(syn.wscale, Some(7), "the client's window scale");
        assert!(syn.sack_ok);
        assert_eq!(syn.ts, Some((CLIENT_TS + 1, 0)), "the client's clock");
        let e = flow(fx, 40003).expect("flow created by the ACK");
        assert_eq!(e.state, State::SynSent as u8);
        assert_ne!(e.flags & FlowEntry::TRANSLATE, 0);
        let vs = fx.vip_stats(TCP_VIP_ID);
        assert_eq!((vs.cookies_valid, vs.new_flows), (1, 1));

        // The backend's SYN-ACK is answered by the edge; the client never sees it.
        let sp = snat_port(fx, 40003);
        let o = linux_syn_options(1460, BACKEND_TS, CLIENT_TS + 1, 9);
        let synack = backend_synack(b, sp, o.leak());
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_TX);
        let s = wklb_tests::packets::inspect(&out);
        assert_eq!(
            (s.src, s.src_port, s.dst, s.dst_port),
            (SNAT, sp, BACKENDS[b], 5100)
        );
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(
            s.eth_dst[..],
            synack[6..12],
            "back to where the SYN-ACK came from"
        );
        let ack = tcp_view(&out);
        assert!(ack.ack_flag && !ack.syn);
        assert_eq!((ack.seq, ack.ack), (ISN + 1, BACKEND_ISN.wrapping_add(1)));
        assert_eq!(ack.ts, Some((CLIENT_TS + 1, BACKEND_TS)));
        assert_eq!(ack.win, 502, "the client's window, in its own scale");
        let e = flow(fx, 40003).unwrap();
        assert_eq!(e.state, State::Established as u8);
        let after = fx.reasons();
        for (r, n) in [
            (Reason::SynCookieSent, 1),
            (Reason::SynCookieAccepted, 1),
            (Reason::SynCookieBackendAcked, 1),
        ] {
            assert_eq!(after[r as usize] - before[r as usize], n, "{}", r.name());
        }

        // Client data: acknowledgment, echoed timestamp and SACK blocks move to the backend's
        // numbering.
        let (edge_ts, _) = sa.ts.unwrap();
        let mut opts = ts_option(CLIENT_TS + 2, edge_ts + 5);
        opts.extend_from_slice(&[1, 1, 5, 10]);
        opts.extend_from_slice(&sa.seq.wrapping_add(100).to_be_bytes());
        opts.extend_from_slice(&sa.seq.wrapping_add(200).to_be_bytes());
        let data = tcp_seg(
            client(40003),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: ISN + 1,
                ack: sa.seq.wrapping_add(1),
                options: opts.leak(),
                payload: b"hello",
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert!(wklb_tests::packets::inspect(&out).checksums_ok);
        let v = tcp_view(&out);
        assert_eq!(v.seq, ISN + 1, "the client's numbering is the backend's");
        assert_eq!(v.ack, BACKEND_ISN.wrapping_add(1));
        assert_eq!(v.ts, Some((CLIENT_TS + 2, BACKEND_TS + 5)));
        assert_eq!(
            v.sack,
            vec![(BACKEND_ISN.wrapping_add(100), BACKEND_ISN.wrapping_add(200))]
        );
        assert_eq!(v.payload, b"hello");
        // Timestamps alone (the usual data segment): translated in place.
        let plain = tcp_seg(
            client(40003),
            VIP_TCP,
            &Seg {
                flags: "PA",
                seq: ISN + 6,
                ack: sa.seq.wrapping_add(1),
                options: ts_option(CLIENT_TS + 3, edge_ts + 7).leak(),
                payload: b"!",
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &plain).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert!(wklb_tests::packets::inspect(&out).checksums_ok);
        let v = tcp_view(&out);
        assert_eq!(v.ts, Some((CLIENT_TS + 3, BACKEND_TS + 7)));
        assert_eq!(v.ack, BACKEND_ISN.wrapping_add(1));

        // Backend data: sequence number and timestamp move to the client's view, the window
        // from scale 9 to the edge's 7.
        let reply = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "PA",
                seq: BACKEND_ISN.wrapping_add(1),
                ack: ISN + 6,
                win: 100,
                options: ts_option(BACKEND_TS + 40, CLIENT_TS + 2).leak(),
                payload: b"world",
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &reply).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Reversed, 1);
        let s = wklb_tests::packets::inspect(&out);
        assert_eq!((s.src, s.dst, s.dst_port), (VIP, CLIENT, 40003));
        assert!(s.checksums_ok, "{s:?}");
        let v = tcp_view(&out);
        assert_eq!(v.seq, sa.seq.wrapping_add(1));
        assert_eq!(v.ack, ISN + 6);
        assert_eq!(v.ts, Some((edge_ts + 40, CLIENT_TS + 2)));
        assert_eq!(v.win, 400);
        assert_eq!(v.payload, b"world");

        // A retransmitted SYN-ACK (the edge's ACK was lost) is answered again.
        let before = fx.reasons();
        let (act, _) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_TX);
        assert_only(fx, &before, Reason::SynCookieBackendAcked, 1);
    });
}

#[test]
fn forged_and_expired_cookies_create_nothing() {
    with_fixture("forged_and_expired_cookies_create_nothing", 1024, |fx| {
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let ack_with = |port: u16, ack: u32| {
            tcp_seg(
                client(port),
                VIP_TCP,
                &Seg {
                    flags: "A",
                    seq: ISN + 1,
                    ack,
                    ..Seg::default()
                },
            )
        };
        let before = fx.reasons();
        for guess in 0..50u32 {
            let (act, _) = fx
                .run(
                    fx.client_if,
                    &ack_with(41000, guess.wrapping_mul(0x9e37_79b9)),
                )
                .unwrap();
            assert_eq!(act, XDP_DROP);
        }
        assert_only(fx, &before, Reason::DropSynCookieInvalid, 50);
        // A real cookie of two periods ago has expired; the previous period's still holds.
        let now = cookie::counter(monotonic_ns());
        let t = tuple(41001, ISN);
        let old = cookie::generate(&fx.cookie_key, &t, now - 2, 3);
        let (act, _) = fx
            .run(fx.client_if, &ack_with(41001, old.wrapping_add(1)))
            .unwrap();
        assert_eq!(act, XDP_DROP);
        assert!(fx.flows().is_empty());
        let recent = cookie::generate(&fx.cookie_key, &t, now - 1, 3);
        let (act, out) = fx
            .run(fx.client_if, &ack_with(41001, recent.wrapping_add(1)))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let v = tcp_view(&out);
        assert!(v.syn);
        assert_eq!(
            (v.mss, v.ts, v.wscale),
            (Some(1460), None, None),
            "no timestamps: MSS only"
        );
        assert_eq!(fx.flows().len(), 1);
        assert_eq!(fx.vip_stats(TCP_VIP_ID).cookies_invalid, 51);

        // Cookie mode allowed but not engaged: a bad ACK is an ordinary stateless segment.
        fx.set_tcp_vip_flags(VipMeta::COOKIES_ALLOWED).unwrap();
        let before = fx.reasons();
        fx.run(fx.client_if, &ack_with(41002, 12345)).unwrap();
        assert_only(fx, &before, Reason::DropNonSynNoState, 1);
    });
}

#[test]
fn segments_before_the_backend_answers_repeat_the_syn_and_a_refusal_reaches_the_client() {
    with_fixture("segments_before_the_backend_answers", 1024, |fx| {
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let (sa, _, b) = to_backend_syn(fx, 40004);
        // Client data before the backend's SYN-ACK: dropped, the SYN goes again.
        let before = fx.reasons();
        let (act, out) = fx
            .run(fx.client_if, &cookie_ack(40004, &sa, "PA", b"early"))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::SynCookieSynRepeated, 1);
        let v = tcp_view(&out);
        assert!(v.syn && v.payload.is_empty());
        assert_eq!(v.seq, ISN);
        // A backend segment other than its SYN-ACK or a RST: nothing to forward.
        let sp = snat_port(fx, 40004);
        let stray = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "A",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                ..Seg::default()
            },
        );
        let before = fx.reasons();
        assert_eq!(fx.run(fx.backend_if, &stray).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropSynCookiePending, 1);
        // The backend refuses (port closed): the client gets a RST it accepts.
        let rst = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "RA",
                seq: 0,
                ack: ISN + 1,
                win: 0,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &rst).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = wklb_tests::packets::inspect(&out);
        assert!(s.checksums_ok);
        assert_eq!((s.src, s.dst), (VIP, CLIENT));
        let v = tcp_view(&out);
        assert!(v.rst);
        assert_eq!(v.seq, sa.seq.wrapping_add(1), "at the client's RCV.NXT");
        assert_eq!(flow(fx, 40004).unwrap().state, State::Closed as u8);
    });
}

#[test]
fn without_timestamps_only_sequence_numbers_are_translated() {
    with_fixture("without_timestamps", 1024, |fx| {
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let (_, out) = fx
            .run(fx.client_if, &syn_with(40005, &[2, 4, 0x05, 0xb4]))
            .unwrap();
        let sa = tcp_view(&out);
        let ack = tcp_seg(
            client(40005),
            VIP_TCP,
            &Seg {
                flags: "A",
                seq: ISN + 1,
                ack: sa.seq.wrapping_add(1),
                win: 29200,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &ack).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let syn = tcp_view(&out);
        assert_eq!(
            (syn.mss, syn.ts, syn.wscale, syn.sack_ok),
            (Some(1460), None, None, false)
        );
        assert_eq!(syn.win, 29200);
        let e = flow(fx, 40005).unwrap();
        assert_eq!(e.wscale[0], NO_WSCALE);
        let b = BACKENDS
            .iter()
            .position(|x| *x == wklb_tests::packets::inspect(&out).dst)
            .unwrap();
        let sp = snat_port(fx, 40005);
        let (act, out) = fx
            .run(fx.backend_if, &backend_synack(b, sp, &[2, 4, 0x05, 0xb4]))
            .unwrap();
        assert_eq!(act, XDP_TX);
        let a = tcp_view(&out);
        assert_eq!((a.header_len, a.ts), (20, None));
        assert_eq!(a.win, 29200);
        let reply = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "PA",
                seq: BACKEND_ISN.wrapping_add(1),
                ack: ISN + 1,
                win: 1000,
                payload: b"x",
                ..Seg::default()
            },
        );
        let (_, out) = fx.run(fx.backend_if, &reply).unwrap();
        let v = tcp_view(&out);
        assert_eq!(v.seq, sa.seq.wrapping_add(1));
        assert_eq!(v.win, 1000, "no window scaling either side: unchanged");
        assert!(wklb_tests::packets::inspect(&out).checksums_ok);
    });
}

#[test]
fn flows_from_before_cookie_mode_keep_their_path() {
    with_fixture("flows_from_before_cookie_mode", 1024, |fx| {
        let syn = syn_with(40006, &linux_syn_options(1460, CLIENT_TS, 0, 7));
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        // Its retransmitted SYN still goes to the backend, untranslated.
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Forwarded, 1);
        assert_eq!(tcp_view(&out).seq, ISN);
        assert_eq!(flow(fx, 40006).unwrap().flags & FlowEntry::TRANSLATE, 0);
    });
}

#[test]
fn long_into_cookie_mode_a_syn_is_answered_without_a_flow_lookup() {
    with_fixture("long_into_cookie_mode", 1024, |fx| {
        let syn = syn_with(40008, &linux_syn_options(1460, CLIENT_TS, 0, 7));
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        // The VIP's last flow without a cookie as if created before any client still
        // retransmits its SYN: a SYN with that flow's tuple gets a cookie SYN-ACK.
        let long_ago = monotonic_ns()
            .checked_sub(lb_common::PLAIN_SYN_WINDOW_NS + 2_000_000_000)
            .expect("the machine has been up longer than the window");
        fx.program
            .set_plain_syn_stamp(TCP_VIP_ID, long_ago)
            .unwrap();
        let before = fx.reasons();
        let (act, _) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_TX);
        assert_only(fx, &before, Reason::SynCookieSent, 1);
        assert!(flow(fx, 40008).is_some(), "the flow waits for its expiry");
        // A SYN creating a flow without a cookie stamps the VIP again: from then on, its
        // retransmission finds its flow, as in `flows_from_before_cookie_mode_keep_their_path`.
        fx.set_tcp_vip_flags(0).unwrap();
        let syn = syn_with(40009, &linux_syn_options(1460, CLIENT_TS, 0, 7));
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        fx.set_tcp_vip_flags(COOKIES).unwrap();
        let before = fx.reasons();
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Forwarded, 1);
    });
}

#[test]
fn completed_handshakes_are_counted_for_the_pressure_watch() {
    with_fixture("completed_handshakes_are_counted", 1024, |fx| {
        let syn = syn_with(40007, &[]);
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = wklb_tests::packets::inspect(&out);
        let b = BACKENDS.iter().position(|x| *x == s.dst).unwrap();
        let ack = |port: u16| {
            tcp_seg(
                client(port),
                VIP_TCP,
                &Seg {
                    flags: "A",
                    seq: ISN + 1,
                    ack: BACKEND_ISN.wrapping_add(1),
                    ..Seg::default()
                },
            )
        };
        // The client's ACK before the backend answered is no handshake.
        fx.run(fx.client_if, &ack(40007)).unwrap();
        assert_eq!(fx.vip_stats(TCP_VIP_ID).handshakes, 0);
        let synack = backend_synack(b, s.src_port, &[]);
        fx.run(fx.backend_if, &synack).unwrap();
        let fresh = syn_with(40008, &[]);
        let (_, out) = fx.run(fx.client_if, &fresh).unwrap();
        let s2 = wklb_tests::packets::inspect(&out);
        let b2 = BACKENDS.iter().position(|x| *x == s2.dst).unwrap();
        fx.run(fx.backend_if, &backend_synack(b2, s2.src_port, &[]))
            .unwrap();
        fx.run(fx.client_if, &ack(40008)).unwrap();
        fx.run(fx.client_if, &ack(40008)).unwrap();
        let vs = fx.vip_stats(TCP_VIP_ID);
        assert_eq!((vs.syns, vs.handshakes), (2, 1), "once, after the SYN-ACK");
    });
}
