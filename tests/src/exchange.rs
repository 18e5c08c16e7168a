//! The packet exchanges the XDP fixtures share, through the real program: a plain flow's
//! handshake (`plain`) and a SYN-cookie flow's (`cookie`), with their fixed sequence numbers,
//! so every fixture file opens flows the same way.

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A flow the client opens with a SYN that the backend answers.
pub mod plain {
    use super::*;
    use crate::{
        fixture::*,
        packets::{Seg, inspect, tcp_seg},
    };

    pub const ISN: u32 = 1000;
    pub const BACKEND_ISN: u32 = 5000;

    pub fn syn(port: u16) -> Vec<u8> {
        tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                ack: 0,
                ..Seg::default()
            },
        )
    }

    /// Sends a SYN and returns (backend index, SNAT port) the program chose.
    pub fn open(fx: &mut Fixture, port: u16) -> (usize, u16) {
        let (act, out) = fx.run(fx.client_if, &syn(port)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "SYN from port {port} not redirected");
        let s = inspect(&out);
        let idx = BACKENDS
            .iter()
            .position(|b| *b == s.dst)
            .expect("sent to a backend");
        (idx, s.src_port)
    }

    /// A full handshake; returns (backend index, SNAT port).
    pub fn establish(fx: &mut Fixture, port: u16) -> (usize, u16) {
        let (b, sp) = open(fx, port);
        backend_answers(fx, b, sp);
        client_acks(fx, port);
        (b, sp)
    }

    /// Backend `b`'s SYN-ACK to SNAT port `sp`.
    pub fn synack(b: usize, sp: u16) -> Vec<u8> {
        synack_with(b, sp, &[])
    }

    /// `synack` with raw TCP `options`.
    pub fn synack_with(b: usize, sp: u16, options: &[u8]) -> Vec<u8> {
        tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                options,
                ..Seg::default()
            },
        )
    }

    /// Backend `b`'s SYN-ACK to SNAT port `sp`, forwarded to the client.
    pub fn backend_answers(fx: &mut Fixture, b: usize, sp: u16) {
        assert_eq!(
            fx.run(fx.backend_if, &synack(b, sp)).unwrap().0,
            XDP_REDIRECT
        );
    }

    /// The client's ACK from `port` after the backend's SYN-ACK.
    pub fn ack_from(port: u16) -> Vec<u8> {
        tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags: "A",
                seq: ISN + 1,
                ack: BACKEND_ISN + 1,
                ..Seg::default()
            },
        )
    }

    /// The client's ACK from `port` (its first one ends the handshake), forwarded.
    pub fn client_acks(fx: &mut Fixture, port: u16) {
        assert_eq!(
            fx.run(fx.client_if, &ack_from(port)).unwrap().0,
            XDP_REDIRECT
        );
    }

    /// The client's next segment as the edge sends it to backend `b` from SNAT port `sp`.
    pub fn sent_to_backend(b: usize, sp: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
        let seg = Seg {
            flags,
            seq: ISN + 1,
            ack: BACKEND_ISN + 1,
            payload,
            ..Seg::default()
        };
        tcp_seg((SNAT, sp), (BACKENDS[b], VIP_TCP_PORT), &seg)
    }

    /// The flow from client `port`.
    pub fn flow_of(fx: &Fixture, port: u16) -> (u32, lb_common::FlowEntry) {
        fx.flows()
            .into_iter()
            .find(|(_, e)| e.client_port == port)
            .unwrap_or_else(|| panic!("no flow from port {port}"))
    }

    pub fn state_of(fx: &Fixture, port: u16) -> u8 {
        flow_of(fx, port).1.state
    }
}

/// A flow whose handshake the edge answers itself (SYN cookies), then does with the backend.
pub mod cookie {
    use lb_common::{FlowEntry, VipMeta, cookie::Tuple, ports_word};

    use super::*;
    use crate::{
        fixture::*,
        packets::{Seg, TcpView, linux_syn_options, tcp_seg, tcp_view, ts_option},
    };

    pub const ISN: u32 = 7_000;
    pub const BACKEND_ISN: u32 = 0xffff_fff0; // wraps during the tests
    pub const CLIENT_TS: u32 = 0x0102_0304;
    pub const BACKEND_TS: u32 = 900_000;
    pub const COOKIES: u32 = VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON;

    pub fn tuple(port: u16, isn: u32) -> Tuple {
        Tuple {
            client: word(CLIENT),
            vip: word(VIP),
            ports: ports_word(port, VIP_TCP_PORT),
            isn,
        }
    }

    pub fn syn_with(port: u16, options: &[u8]) -> Vec<u8> {
        tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags: "S",
                seq: ISN,
                ack: 0,
                win: 64240,
                options,
                ..Seg::default()
            },
        )
    }

    pub fn flow(fx: &Fixture, port: u16) -> Option<FlowEntry> {
        fx.flows()
            .into_iter()
            .find(|(_, e)| e.client_port == port)
            .map(|(_, e)| e)
    }

    /// SYN with Linux's options; returns the edge's SYN-ACK.
    pub fn cookie_synack(fx: &mut Fixture, port: u16) -> TcpView {
        let opts = linux_syn_options(1460, CLIENT_TS, 0, 7);
        let (act, out) = fx.run(fx.client_if, &syn_with(port, &opts)).unwrap();
        assert_eq!(act, XDP_TX, "the SYN-ACK goes back where the SYN came from");
        tcp_view(&out)
    }

    /// The client's ACK of the cookie SYN-ACK `sa`, with timestamps.
    pub fn cookie_ack(
        port: u16,
        sa: &TcpView,
        flags: &'static str,
        payload: &'static [u8],
    ) -> Vec<u8> {
        let (edge_ts, _) = sa.ts.expect("timestamps");
        let opts: &'static [u8] = ts_option(CLIENT_TS + 1, edge_ts).leak();
        tcp_seg(
            client(port),
            VIP_TCP,
            &Seg {
                flags,
                seq: ISN + 1,
                ack: sa.seq.wrapping_add(1),
                win: 502,
                options: opts,
                payload,
                ..Seg::default()
            },
        )
    }

    /// SYN, SYN-ACK, ACK: returns (the SYN-ACK, the backend's SYN as sent, its backend index).
    pub fn to_backend_syn(fx: &mut Fixture, port: u16) -> (TcpView, TcpView, usize) {
        let sa = cookie_synack(fx, port);
        let (act, out) = fx
            .run(fx.client_if, &cookie_ack(port, &sa, "A", b""))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "the SYN goes out toward the backend");
        let s = crate::packets::inspect(&out);
        let b = BACKENDS
            .iter()
            .position(|b| *b == s.dst)
            .expect("a backend");
        assert_eq!(s.src, SNAT);
        assert!(s.checksums_ok, "{s:?}");
        (sa, tcp_view(&out), b)
    }

    pub fn snat_port(fx: &Fixture, port: u16) -> u16 {
        let (slot, _) = fx
            .flows()
            .into_iter()
            .find(|(_, e)| e.client_port == port)
            .expect("flow");
        lb_common::slot::port_of(slot)
    }

    pub fn backend_synack(b: usize, sp: u16, options: &'static [u8]) -> Vec<u8> {
        tcp_seg(
            (BACKENDS[b], VIP_TCP_PORT),
            (SNAT, sp),
            &Seg {
                flags: "SA",
                seq: BACKEND_ISN,
                ack: ISN + 1,
                win: 65160,
                options,
                ..Seg::default()
            },
        )
    }
}
