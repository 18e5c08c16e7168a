//! Per-VIP source policy through the real XDP object (BPF_PROG_TEST_RUN; root, CI runs them):
//! deny and allow lists (the longest prefix decides), the per-source new-connection rate for TCP
//! and UDP, and how both meet SYN cookies.

use std::net::Ipv4Addr;

use lb_common::{
    Reason, SourceKey4, VipLimits, VipMeta,
    cookie::{self, Tuple},
    ports_word, source_list,
};
use lb_userspace::sys::clock::monotonic_ns;
use wklb_tests::{
    fixture::*,
    packets::{Seg, linux_syn_options, tcp, tcp_seg, tcp_view, udp},
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 3);

fn net(a: [u8; 4], len: u8) -> ((SourceKey4, u8), Ipv4Addr) {
    let addr = Ipv4Addr::from(a);
    ((SourceKey4::new(0, u32::from_ne_bytes(a)), len), addr)
}

/// Puts a deny or allow entry for `vip_id` into the image (synced with the flags).
fn list(fx: &mut Fixture, vip_id: u32, a: [u8; 4], len: u8, action: u32) {
    let ((mut k, len), _) = net(a, len);
    k = SourceKey4::new(vip_id, k.addr);
    fx.image.sources.insert((k, len), action);
}

fn syn(src: Ipv4Addr, port: u16) -> Vec<u8> {
    tcp((src, port), VIP_TCP, "S", b"")
}

fn run(fx: &mut Fixture, frame: &[u8]) -> u32 {
    fx.run(fx.client_if, frame).unwrap().0
}

#[test]
fn deny_and_allow_lists_decide_by_the_longest_prefix() {
    with_fixture("deny_and_allow_lists", 1024, |fx| {
        // An established flow from before the deny keeps working.
        assert_eq!(run(fx, &syn(CLIENT, 40100)), XDP_REDIRECT);
        list(fx, TCP_VIP_ID, [10, 10, 0, 0], 16, source_list::DENY);
        fx.set_tcp_vip_flags(VipMeta::SOURCE_LISTS).unwrap();
        let before = fx.reasons();
        assert_eq!(run(fx, &syn(CLIENT, 40101)), XDP_DROP);
        assert_only(fx, &before, Reason::DropSourceDenied, 1);
        assert_eq!(
            run(fx, &tcp((CLIENT, 40100), VIP_TCP, "A", b"x")),
            XDP_REDIRECT,
            "existing connections are not cut"
        );
        // A longer allow entry wins over the deny.
        list(fx, TCP_VIP_ID, [10, 10, 0, 2], 32, source_list::ALLOW);
        fx.sync().unwrap();
        assert_eq!(run(fx, &syn(CLIENT, 40102)), XDP_REDIRECT);
        assert_eq!(run(fx, &syn(OTHER_CLIENT, 40103)), XDP_DROP);
        let vs = fx.vip_stats(TCP_VIP_ID);
        assert_eq!((vs.denied, vs.allowed), (2, 1));
        // Another VIP's list does not apply; nor does this one without its flag.
        fx.image.sources.clear();
        list(fx, UDP_VIP_ID, [10, 10, 0, 0], 16, source_list::DENY);
        fx.set_tcp_vip_flags(0).unwrap();
        assert_eq!(run(fx, &syn(OTHER_CLIENT, 40104)), XDP_REDIRECT);
        let udp_vip = lb_common::Vip4Key::new(word(VIP), VIP_UDP_PORT, lb_common::PROTO_UDP);
        fx.image.vips.get_mut(&udp_vip).unwrap().flags = VipMeta::SOURCE_LISTS;
        fx.sync().unwrap();
        let before = fx.reasons();
        let req = udp((CLIENT, 40105), (VIP, VIP_UDP_PORT), b"q");
        assert_eq!(run(fx, &req), XDP_DROP);
        assert_only(fx, &before, Reason::DropSourceDenied, 1);
    });
}

#[test]
fn the_per_source_rate_admits_the_burst_then_refuses() {
    with_fixture("the_per_source_rate", 1024, |fx| {
        fx.image.vip_limits.insert(TCP_VIP_ID, VipLimits::new(1, 3));
        fx.image.vip_limits.insert(UDP_VIP_ID, VipLimits::new(1, 2));
        let udp_vip = lb_common::Vip4Key::new(word(VIP), VIP_UDP_PORT, lb_common::PROTO_UDP);
        fx.image.vips.get_mut(&udp_vip).unwrap().flags = VipMeta::RATE_LIMIT;
        fx.set_tcp_vip_flags(VipMeta::RATE_LIMIT).unwrap();
        for port in 40200..40203 {
            assert_eq!(run(fx, &syn(CLIENT, port)), XDP_REDIRECT, "burst of 3");
        }
        let before = fx.reasons();
        assert_eq!(run(fx, &syn(CLIENT, 40203)), XDP_DROP);
        assert_only(fx, &before, Reason::DropSourceRateLimited, 1);
        // Another source has its own budget; packets of admitted flows are never limited.
        assert_eq!(run(fx, &syn(OTHER_CLIENT, 40204)), XDP_REDIRECT);
        for _ in 0..5 {
            assert_eq!(
                run(fx, &tcp((CLIENT, 40200), VIP_TCP, "A", b"x")),
                XDP_REDIRECT
            );
        }
        assert_eq!(fx.vip_stats(TCP_VIP_ID).rate_limited, 1);
        // UDP: new flows count, packets of a flow do not.
        let q = |port| udp((CLIENT, port), (VIP, VIP_UDP_PORT), b"q");
        assert_eq!(run(fx, &q(40300)), XDP_REDIRECT);
        assert_eq!(run(fx, &q(40301)), XDP_REDIRECT);
        assert_eq!(run(fx, &q(40302)), XDP_DROP);
        assert_eq!(run(fx, &q(40300)), XDP_REDIRECT);
        // An allow-listed source is not limited.
        list(fx, TCP_VIP_ID, [10, 10, 0, 2], 32, source_list::ALLOW);
        fx.set_tcp_vip_flags(VipMeta::RATE_LIMIT | VipMeta::SOURCE_LISTS)
            .unwrap();
        assert_eq!(run(fx, &syn(CLIENT, 40205)), XDP_REDIRECT);
    });
}

#[test]
fn with_cookies_the_limit_applies_to_proven_sources_only() {
    with_fixture("with_cookies_the_limit", 1024, |fx| {
        fx.image.vip_limits.insert(TCP_VIP_ID, VipLimits::new(1, 1));
        fx.set_tcp_vip_flags(VipMeta::RATE_LIMIT | VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON)
            .unwrap();
        // Spoofable SYNs spend nobody's budget: every one gets its cookie.
        let mut cookies = Vec::new();
        for port in [40400, 40401] {
            let s = tcp_seg(
                (CLIENT, port),
                VIP_TCP,
                &Seg {
                    flags: "S",
                    seq: 9000,
                    ack: 0,
                    options: &linux_syn_options(1460, 1, 0, 7),
                    ..Seg::default()
                },
            );
            let (act, out) = fx.run(fx.client_if, &s).unwrap();
            assert_eq!(act, XDP_TX);
            cookies.push(tcp_view(&out).seq);
        }
        // The first proven source connects, the second connection from it is over the rate.
        let ack = |port: u16, c: u32| {
            tcp_seg(
                (CLIENT, port),
                VIP_TCP,
                &Seg {
                    flags: "A",
                    seq: 9001,
                    ack: c.wrapping_add(1),
                    ..Seg::default()
                },
            )
        };
        assert_eq!(run(fx, &ack(40400, cookies[0])), XDP_REDIRECT);
        let before = fx.reasons();
        assert_eq!(run(fx, &ack(40401, cookies[1])), XDP_DROP);
        assert_only(fx, &before, Reason::DropSourceRateLimited, 1);
        // The cookie itself was fine.
        let now = cookie::counter(monotonic_ns());
        let t = Tuple {
            client: word(CLIENT),
            vip: word(VIP),
            ports: ports_word(40401, VIP_TCP_PORT),
            isn: 9000,
        };
        assert!(cookie::check(&fx.cookie_key, &t, cookies[1], now).is_some());
    });
}

#[test]
fn a_source_at_its_connection_limit_opens_no_more() {
    with_fixture("a_source_at_its_connection_limit", 1024, |fx| {
        use lb_userspace::dataplane::Flows as _;
        fx.set_tcp_vip_flags(VipMeta::CONN_LIMIT).unwrap();
        assert_eq!(run(fx, &syn(CLIENT, 40500)), XDP_REDIRECT);
        // The expiry pass found CLIENT at its limit.
        let full = [lb_common::SourceRateKey::v4(TCP_VIP_ID, word(CLIENT))]
            .into_iter()
            .collect();
        fx.flows.set_full_sources(&full).unwrap();
        let before = fx.reasons();
        assert_eq!(run(fx, &syn(CLIENT, 40501)), XDP_DROP);
        assert_only(fx, &before, Reason::DropSourceConnLimit, 1);
        assert_eq!(fx.vip_stats(TCP_VIP_ID).conn_limited, 1);
        // Its open connections go on; other sources are not affected.
        assert_eq!(
            run(fx, &tcp((CLIENT, 40500), VIP_TCP, "A", b"x")),
            XDP_REDIRECT
        );
        assert_eq!(run(fx, &syn(OTHER_CLIENT, 40502)), XDP_REDIRECT);
        // Below the limit again (the next pass took it off the list): admitted.
        fx.flows.set_full_sources(&Default::default()).unwrap();
        assert_eq!(run(fx, &syn(CLIENT, 40503)), XDP_REDIRECT);
    });
}
