//! PROXY protocol through the real XDP object (BPF_PROG_TEST_RUN; root, CI runs them): the
//! header inserted in front of a flow's first payload byte (versions 1 and 2, odd and even
//! lengths, plain and SYN-cookie flows), retransmissions of that segment, the client's later
//! sequence numbers shifted, the node's acknowledgments and SACK edges mapped back, the MSS
//! toward the client lowered, and the segments that are refused.

use lb_common::{FlowEntry, Reason, VipMeta};
use wklb_tests::{
    exchange::{XDP_DROP, XDP_REDIRECT, plain::*},
    fixture::*,
    packets::{Seg, inspect, tcp_seg},
};

/// The v2 header wklb must send for client `port` of the TCP VIP.
fn v2_header(port: u16) -> Vec<u8> {
    let mut h = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0, 12,
    ];
    h.extend_from_slice(&CLIENT.octets());
    h.extend_from_slice(&VIP.octets());
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&VIP_TCP_PORT.to_be_bytes());
    h
}

fn v1_header(port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {CLIENT} {VIP} {port} {VIP_TCP_PORT}\r\n").into_bytes()
}

/// The client's segment from `port`: `seq` relative to its first payload byte.
fn client_seg(port: u16, rel: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp_seg(
        client(port),
        VIP_TCP,
        &Seg {
            flags,
            seq: (ISN + 1).wrapping_add(rel),
            ack: BACKEND_ISN + 1,
            payload,
            ..Seg::default()
        },
    )
}

/// The node's segment to SNAT port `sp`, acknowledging `ack` (its own numbering), with raw
/// `options`.
fn node_seg(b: usize, sp: u16, ack: u32, options: &[u8]) -> Vec<u8> {
    tcp_seg(
        (BACKENDS[b], VIP_TCP_PORT),
        (SNAT, sp),
        &Seg {
            flags: "A",
            seq: BACKEND_ISN + 1,
            ack,
            options,
            ..Seg::default()
        },
    )
}

fn proxy_stats(fx: &Fixture) -> lb_common::ProxyStats {
    use lb_userspace::dataplane::Counters as _;
    fx.counters.proxy(TCP_VIP_ID).expect("proxy stats")
}

#[test]
fn the_first_bytes_reach_the_node_behind_a_v2_header_and_later_ones_shifted() {
    with_fixture("proxy_v2_insert_and_shift", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let port = 40001;
        let (b, sp) = establish(fx, port);
        let h = v2_header(port);
        assert_eq!(
            flow_of(fx, port).1.proxy_len,
            28,
            "known after the handshake"
        );

        let before = fx.reasons();
        let (act, out) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", b"hello"))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Forwarded, 1);
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!((s.src, s.src_port, s.dst), (SNAT, sp, BACKENDS[b]));
        assert_eq!(s.seq, ISN + 1, "the header takes the first byte's place");
        let mut want = h.clone();
        want.extend_from_slice(b"hello");
        assert_eq!(s.payload, want);
        assert_eq!(proxy_stats(fx).headers, 1);

        // The same segment again (lost on the way): the same bytes again.
        let (_, again) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", b"hello"))
            .unwrap();
        assert_eq!(again, out);
        assert_eq!(proxy_stats(fx).headers, 2);

        // The next one is 28 bytes further on at the node.
        let (_, next) = fx
            .run(fx.client_if, &client_seg(port, 5, "AP", b"world"))
            .unwrap();
        let s = inspect(&next);
        assert!(s.checksums_ok);
        assert_eq!(
            (s.seq, s.payload.as_slice()),
            (ISN + 1 + 5 + 28, &b"world"[..])
        );

        // The node acknowledges header and both segments: the client sees its 10 bytes acked.
        let before = fx.reasons();
        let (act, back) = fx
            .run(fx.backend_if, &node_seg(b, sp, ISN + 1 + 28 + 10, &[]))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Reversed, 1);
        let s = inspect(&back);
        assert!(s.checksums_ok);
        assert_eq!((s.dst, s.ack), (CLIENT, ISN + 1 + 10));
        let e = flow_of(fx, port).1;
        assert!(e.proxy & FlowEntry::PROXY_ACKED != 0);
        assert_eq!(e.ack[1], ISN + 1 + 10, "tracked in the client's numbering");

        // A retransmission of the first bytes now: shifted, no second header.
        let (_, late) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", b"hello"))
            .unwrap();
        let s = inspect(&late);
        assert!(s.checksums_ok);
        assert_eq!((s.seq, s.payload.as_slice()), (ISN + 1 + 28, &b"hello"[..]));
        assert_eq!(proxy_stats(fx).headers, 2);

        // From here the entry program maps the node's acknowledgments back itself when they
        // carry no options or timestamps alone; one with SACK blocks still has its edges
        // mapped.
        let ts = wklb_tests::packets::ts_option(500, 600);
        let mut sack = vec![1, 1, 5, 10];
        sack.extend_from_slice(&(ISN + 1 + 28 + 20).to_be_bytes());
        sack.extend_from_slice(&(ISN + 1 + 28 + 30).to_be_bytes());
        for (options, sack_mapped) in [(&[][..], 0), (&ts[..], 0), (&sack[..], 1)] {
            let before = (fx.reasons(), proxy_stats(fx).sack_mapped);
            let (act, back) = fx
                .run(fx.backend_if, &node_seg(b, sp, ISN + 1 + 28 + 10, options))
                .unwrap();
            assert_eq!(act, XDP_REDIRECT);
            assert_only(fx, &before.0, Reason::Reversed, 1);
            let s = inspect(&back);
            assert!(s.checksums_ok, "{options:?}: {s:?}");
            assert_eq!((s.dst, s.ack), (CLIENT, ISN + 1 + 10), "{options:?}");
            let view = wklb_tests::packets::tcp_view(&back);
            if sack_mapped == 1 {
                assert_eq!(view.sack, vec![(ISN + 1 + 20, ISN + 1 + 30)]);
            } else {
                assert_eq!(view.ts, (!options.is_empty()).then_some((500, 600)));
            }
            assert_eq!(proxy_stats(fx).sack_mapped, before.1 + sack_mapped);
        }
    });
}

#[test]
fn a_v1_header_of_either_length_parity_keeps_the_checksum_right() {
    with_fixture("proxy_v1_both_parities", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V1).unwrap();
        // A four- and a five-digit port: header lengths one apart.
        for (port, payload) in [(4001u16, &b"odd-or-even"[..]), (40001, &b"x"[..])] {
            let (_, _) = establish(fx, port);
            let h = v1_header(port);
            assert_eq!(flow_of(fx, port).1.proxy_len as usize, h.len());
            let (act, out) = fx
                .run(fx.client_if, &client_seg(port, 0, "AP", payload))
                .unwrap();
            assert_eq!(act, XDP_REDIRECT);
            let s = inspect(&out);
            assert!(s.checksums_ok, "port {port}, header {} bytes", h.len());
            let mut want = h.clone();
            want.extend_from_slice(payload);
            assert_eq!(s.payload, want, "{:?}", String::from_utf8_lossy(&s.payload));
        }
    });
}

#[test]
fn a_client_that_sends_a_proxy_line_itself_gets_wklbs_in_front_of_it() {
    with_fixture("proxy_client_line_after_ours", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V1).unwrap();
        let port = 40002;
        establish(fx, port);
        let forged = b"PROXY TCP4 6.6.6.6 7.7.7.7 1 2\r\nhi";
        let (_, out) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", forged))
            .unwrap();
        let s = inspect(&out);
        let mut want = v1_header(port);
        want.extend_from_slice(forged);
        assert_eq!(s.payload, want);
        // A segment reaching over the first byte from below (where only the SYN is) is refused.
        let before = fx.reasons();
        let below = tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags: "AP",
                seq: ISN,
                ack: BACKEND_ISN + 1,
                payload: b"XPROXY",
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &below).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropMalformed, 1);
        assert_eq!(proxy_stats(fx).refused, 1);
        // A keepalive at ISN and a pure ACK pass unchanged.
        for (rel, flags) in [(u32::MAX, "A"), (0, "A")] {
            let (act, out) = fx
                .run(fx.client_if, &client_seg(port, rel, flags, b""))
                .unwrap();
            assert_eq!(act, XDP_REDIRECT);
            assert_eq!(inspect(&out).seq, (ISN + 1).wrapping_add(rel));
        }
    });
}

#[test]
fn the_mss_toward_the_client_leaves_room_for_the_header_and_sack_edges_come_back() {
    with_fixture("proxy_mss_and_sack", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let port = 40003;
        let (b, sp) = open(fx, port);
        // The node offers 1460; the client is told 28 less (the edge's MTU allows 1460).
        let synack = synack_with(b, sp, &[2, 4, 0x05, 0xb4]);
        let (act, out) = fx.run(fx.backend_if, &synack).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert!(s.checksums_ok);
        assert_eq!(s.mss, Some(1460 - 28));
        client_acks(fx, port);
        fx.run(fx.client_if, &client_seg(port, 0, "AP", &[7; 100]))
            .unwrap();
        // The node has the header and the first 100 bytes, and a block 200 bytes further on:
        // NOP, NOP, SACK (one block), as Linux sends it without timestamps.
        let base = ISN + 1 + 28;
        let (l, r) = (base + 300, base + 400);
        let mut sack = vec![1, 1, 5, 10];
        sack.extend_from_slice(&l.to_be_bytes());
        sack.extend_from_slice(&r.to_be_bytes());
        let (act, out) = fx
            .run(fx.backend_if, &node_seg(b, sp, base + 100, &sack))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert!(s.checksums_ok);
        assert_eq!(s.ack, ISN + 1 + 100);
        let view = wklb_tests::packets::tcp_view(&out);
        assert_eq!(view.sack, vec![(ISN + 1 + 300, ISN + 1 + 400)]);
    });
}

#[test]
fn a_syn_with_data_is_refused_on_a_proxy_vip() {
    with_fixture("proxy_refuses_syn_data", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let before = fx.reasons();
        let syn = tcp_seg(
            client(40004),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                ack: 0,
                payload: b"early data",
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &syn).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropMalformed, 1);
        assert_eq!(proxy_stats(fx).refused, 1);
        // Without data it opens the flow.
        open(fx, 40004);
    });
}

#[test]
fn a_re_numbered_syn_cannot_move_the_first_payload_byte() {
    with_fixture("proxy_renumbered_syn", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let port = 40006;
        let (b, sp) = open(fx, port);
        // Another SYN from the port with another ISN before the node answered: refused, and the
        // flow keeps the first ISN (its data at ISN + 1 gets the header).
        let before = fx.reasons();
        let again = tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN + 100_000,
                ack: 0,
                ..Seg::default()
            },
        );
        assert_eq!(fx.run(fx.client_if, &again).unwrap().0, XDP_DROP);
        assert_only(fx, &before, Reason::DropMalformed, 1);
        assert_eq!(flow_of(fx, port).1.ack[1], ISN + 1);
        // The same SYN again (a retransmission) still goes through.
        assert_eq!(fx.run(fx.client_if, &syn(port)).unwrap().0, XDP_REDIRECT);
        backend_answers(fx, b, sp);
        client_acks(fx, port);
        let (_, out) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", b"hi"))
            .unwrap();
        let s = inspect(&out);
        assert_eq!(s.seq, ISN + 1);
        assert_eq!(&s.payload[..28], &v2_header(port)[..]);
    });
}

#[test]
fn a_vip_without_the_option_sends_its_bytes_unchanged() {
    with_fixture("proxy_off_unchanged", 1024, |fx| {
        let port = 40005;
        establish(fx, port);
        let (_, out) = fx
            .run(fx.client_if, &client_seg(port, 0, "AP", b"hello"))
            .unwrap();
        let s = inspect(&out);
        assert_eq!((s.seq, s.payload.as_slice()), (ISN + 1, &b"hello"[..]));
        assert_eq!(flow_of(fx, port).1.proxy, 0);
        assert_eq!(proxy_stats(fx).headers, 0);
    });
}

/// The largest IPv4 case: a tagged client with timestamps sends a first segment as large as the
/// MSS wklb told it (the node's 1460, less 28 for the header, less 12 for timestamps). The
/// header goes in, the packet to the node is untagged and exactly 1500 bytes of IP (the
/// node-side MTU), its options intact, its checksums right; the node's acknowledgment comes
/// back tagged and mapped.
#[test]
fn a_full_sized_first_segment_with_timestamps_from_a_vlan_fills_the_node_side_mtu_exactly() {
    use wklb_tests::packets::{linux_syn_options, tcp_view, ts_option, with_vlan};
    with_fixture("proxy_full_vlan", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let port = 40007;
        let seg = |flags, seq, ack, options: &[u8], payload: &[u8]| {
            with_vlan(
                &tcp_seg(
                    client(port),
                    VIP_TCP,
                    &Seg {
                        flags,
                        seq,
                        ack,
                        options,
                        payload,
                        ..Seg::default()
                    },
                ),
                42,
            )
        };
        let syn = seg("S", ISN, 0, &linux_syn_options(1460, 100, 0, 7), b"");
        let (act, out) = fx.run(fx.client_if, &syn).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        let (b, sp) = (
            BACKENDS.iter().position(|x| *x == s.dst).unwrap(),
            s.src_port,
        );
        let (act, out) = fx
            .run(
                fx.backend_if,
                &synack_with(b, sp, &linux_syn_options(1460, 9000, 100, 7)),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert_eq!((s.vlan, s.mss), (Some(42), Some(1460 - 28)));
        let ts = ts_option(101, 9000);
        fx.run(fx.client_if, &seg("A", ISN + 1, BACKEND_ISN + 1, &ts, b""))
            .unwrap();
        let data: Vec<u8> = (0..1460 - 28 - 12).map(|i| i as u8).collect();
        let first = seg("AP", ISN + 1, BACKEND_ISN + 1, &ts, &data);
        assert_eq!(first.len() - 18, 1500 - 28, "the client's largest segment");
        let (act, out) = fx.run(fx.client_if, &first).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!(s.vlan, None);
        assert_eq!(out.len() - 14, 1500, "exactly the node-side MTU");
        let mut want = v2_header(port);
        want.extend_from_slice(&data);
        assert_eq!(s.payload, want);
        assert_eq!(tcp_view(&out).ts, Some((101, 9000)), "timestamps kept");
        // The node acknowledges all of it.
        let node_ts = ts_option(9001, 101);
        let (act, back) = fx
            .run(
                fx.backend_if,
                &node_seg(b, sp, ISN + 1 + 28 + data.len() as u32, &node_ts),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let s = inspect(&back);
        assert!(s.checksums_ok);
        assert_eq!((s.vlan, s.ack), (Some(42), ISN + 1 + data.len() as u32));
        assert_eq!(proxy_stats(fx).headers, 1);
    });
}

/// A client that ignores the MSS it was told: its first segment fits the node-side MTU only
/// without the header. With DF it gets fragmentation-needed naming the MTU less the header
/// (its own packet quoted, nothing sent on); without DF the kernel gets the packet translated,
/// with the header in, to fragment it.
#[test]
fn a_first_segment_too_big_for_the_header_gets_fragmentation_needed_for_the_mtu_less_the_header() {
    use wklb_tests::exchange::{XDP_PASS, XDP_TX};
    use wklb_tests::packets::{inspect_icmp, quoted_tuple, with_ip_fields};
    with_fixture("proxy_too_big", 1024, |fx| {
        fx.set_tcp_vip_flags(VipMeta::PROXY_V2).unwrap();
        let port = 40008;
        let (b, sp) = establish(fx, port);
        let big = |df| with_ip_fields(&client_seg(port, 0, "AP", &[9; 1460]), 0, 1, df);
        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &big(true)).unwrap();
        assert_eq!(act, XDP_TX, "back to the client");
        assert_only(fx, &before, Reason::IcmpFragNeededSent, 1);
        let e = inspect_icmp(&out);
        assert_eq!((e.icmp_type, e.code), (3, 4));
        assert_eq!(u16::from_be_bytes([e.rest[2], e.rest[3]]), 1500 - 28);
        assert!(e.checksums_ok, "{e:?}");
        let (qs, qsp, qd, qdp, _) = quoted_tuple(&e.quote);
        assert_eq!((qs, qsp, qd, qdp), (CLIENT, port, VIP, VIP_TCP_PORT));
        assert_eq!(proxy_stats(fx).headers, 0);

        let before = fx.reasons();
        let (act, out) = fx.run(fx.client_if, &big(false)).unwrap();
        assert_eq!(act, XDP_PASS);
        assert_only(fx, &before, Reason::PassTooBig, 1);
        let s = inspect(&out);
        assert!(s.checksums_ok, "{s:?}");
        assert_eq!((s.src, s.src_port, s.dst), (SNAT, sp, BACKENDS[b]));
        let mut want = v2_header(port);
        want.extend_from_slice(&[9; 1460]);
        assert_eq!(s.payload, want, "the header in, for the kernel to fragment");
        assert_eq!(proxy_stats(fx).headers, 1);
    });
}
