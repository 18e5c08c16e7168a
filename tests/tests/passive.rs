//! The passive health signal through the real XDP object (BPF_PROG_TEST_RUN; root, CI runs
//! them): a data node's RST answering the SYN the edge sent it counts as a refusal by that
//! backend, a client's SYN sent again while the backend has not answered as a SYN
//! retransmission. Plain and SYN-cookie flows, IPv4 and IPv6 clients, an IPv6 data node; a
//! RST on an established flow counts nothing.

use lb_common::{PassiveStats, Reason};
use wklb_tests::{
    exchange::{XDP_REDIRECT, cookie, plain::*},
    fixture::*,
    packets::{self, Seg, inspect, tcp_seg, tcp6_seg},
};

fn passive(fx: &Fixture, backend_id: u32) -> PassiveStats {
    use lb_userspace::dataplane::Counters as _;
    fx.counters.passive(backend_id).expect("passive stats")
}

/// Backend `b`'s RST acknowledging `ack`, to SNAT port `sp`.
fn refusal(b: usize, sp: u16, ack: u32) -> Vec<u8> {
    tcp_seg(
        (BACKENDS[b], VIP_TCP_PORT),
        (SNAT, sp),
        &Seg {
            flags: "RA",
            seq: 0,
            ack,
            ..Seg::default()
        },
    )
}

#[test]
fn a_syn_sent_again_and_then_refused_counts_against_its_backend_only() {
    with_fixture("passive_plain", 1024, |fx| {
        let port = 41000;
        let (b, sp) = open(fx, port);
        // The client's SYN again: the backend has not answered.
        let (act, _) = fx.run(fx.client_if, &syn(port)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_eq!(
            passive(fx, b as u32),
            PassiveStats {
                refused: 0,
                syn_retransmits: 1
            }
        );
        // The node refuses it; the client gets the RST.
        let before = fx.reasons();
        let (act, out) = fx.run(fx.backend_if, &refusal(b, sp, ISN + 1)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert_only(fx, &before, Reason::Reversed, 1);
        let s = inspect(&out);
        assert!(s.checksums_ok);
        assert_eq!((s.dst, s.dst_port), client(port));
        assert_eq!(
            passive(fx, b as u32),
            PassiveStats {
                refused: 1,
                syn_retransmits: 1
            }
        );
        for other in (0..3).filter(|o| *o != b) {
            assert_eq!(passive(fx, other as u32), PassiveStats::default());
        }

        // An established flow's RST, and a SYN on it, are no refusal and no retransmission.
        let port = 41001;
        let (b, sp) = establish(fx, port);
        let before = passive(fx, b as u32);
        let rst = tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "R",
                seq: BACKEND_ISN + 1,
                ack: 0,
                ..Seg::default()
            },
        );
        fx.run(fx.backend_if, &rst).unwrap();
        assert_eq!(passive(fx, b as u32), before);
    });
}

#[test]
fn a_cookie_flows_backend_refusing_the_edges_syn_counts_as_a_refusal() {
    with_fixture("passive_cookie", 1024, |fx| {
        fx.set_tcp_vip_flags(cookie::COOKIES).unwrap();
        let port = 41100;
        let (_, to_backend, b) = cookie::to_backend_syn(fx, port);
        let sp = cookie::snat_port(fx, port);
        let (act, out) = fx
            .run(
                fx.backend_if,
                &refusal(b, sp, to_backend.seq.wrapping_add(1)),
            )
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "the refusal reaches the client");
        assert!(packets::tcp_view(&out).rst);
        assert_eq!(passive(fx, b as u32).refused, 1);
    });
}

#[test]
fn ipv6_clients_syns_sent_again_and_an_ipv6_nodes_refusal_count_too() {
    with_fixture("passive_ipv6", 1024, |fx| {
        fx.add_ipv6_vip();
        // An IPv6 client of the IPv4 nodes sends its SYN twice.
        let syn6 = tcp6_seg(
            (CLIENT6, 42000),
            (VIP6, VIP_TCP_PORT),
            0,
            &Seg {
                flags: "S",
                seq: ISN,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.client_if, &syn6).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let b = BACKENDS
            .iter()
            .position(|x| *x == inspect(&out).dst)
            .unwrap();
        fx.run(fx.client_if, &syn6).unwrap();
        assert_eq!(passive(fx, b as u32).syn_retransmits, 1);

        // The IPv6 data node refuses an IPv4 client's SYN.
        fx.add_ipv6_node(SNAT6_INDEX);
        fx.install(TCP_VIP_ID, &[(B6_TCP, 1)]).unwrap();
        let (act, out) = fx.run(fx.client_if, &syn(42001)).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let sp = packets::inspect6(&out).src_port;
        let rst = tcp6_seg(
            (BACKEND6, VIP_TCP_PORT),
            (SNAT6, sp),
            0,
            &Seg {
                flags: "RA",
                seq: 0,
                ack: ISN + 1,
                ..Seg::default()
            },
        );
        let (act, out) = fx.run(fx.backend_if, &rst).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        assert!(packets::tcp_view(&out).rst);
        assert_eq!(passive(fx, B6_TCP).refused, 1);
    });
}
