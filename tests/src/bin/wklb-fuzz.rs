//! Packet fuzzer for the XDP data path (`cargo xtask fuzz`): valid frames of every kind the edge
//! handles (client and backend TCP/UDP, ICMP echo and errors quoting real translated packets,
//! fragments, VLAN tags, IP options, host traffic; IPv6 clients of the IPv4 nodes and of an
//! IPv6 node, its replies, ICMPv6, extension headers) and mutations of them (bit flips, random
//! bytes, truncation, extension, extreme header fields, with and without fixed checksums) go
//! through the real object with BPF_PROG_TEST_RUN, in a private network namespace. Also the
//! hostile cases of the hardening read: extension headers at and past the walked limit, RSTs
//! and challenge ACKs from data nodes during the cookie handshake, our own addresses as the
//! source, UDP flows whose backend went away, and the per-VIP shares, SYN budget and PROXY
//! protocol (headers inserted into client segments) switched on and off.
//!
//! Checked after every frame: the action is XDP_DROP, XDP_PASS, XDP_TX or XDP_REDIRECT (never
//! XDP_ABORTED); a frame whose checksums verified leaves with checksums that verify (unless
//! dropped). Checked after every batch: the reason counters grew by exactly the batch's frame
//! count; FLOWS4, FLOWS6 and the flow slots agree (every reference points at a slot it owns, with its
//! tuple; every claimed slot is referenced exactly once). Every few batches an expiry pass far
//! in the future empties the table, which must then be empty on both sides, with every VIP's
//! flow counts back at 0.
//!
//! wklb-fuzz [--frames N] [--seed S] [--batch B]

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::Instant,
};

use anyhow::{Result, bail};
use clap::Parser;
use lb_common::{Reason, VipMeta, conntrack::Timeouts, slot};
use lb_userspace::{controller::expiry, dataplane::Flows as _, sys::clock::monotonic_ns};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom as _};
use wklb_tests::{
    fixture::*,
    netns::in_private_netns,
    packets::{
        CLIENT_MAC, EDGE_MAC, Seen, Seg, TcpView, checksums_valid, echo, fix_ip_checksum,
        icmp_error, inspect, linux_syn_options, tcp_seg, tcp6_seg, try_tcp_view, ts_option, udp,
        udp6, with_ip_options, with_vlan,
    },
    root::have_root,
};

#[derive(Parser, Clone)]
#[command(about = "Fuzz the XDP data path with random and mutated frames")]
struct Cli {
    /// Frames to run.
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
    /// Random seed (default: from the clock; printed, so a failure can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Frames between table and counter checks.
    #[arg(long, default_value_t = 2_000)]
    batch: u64,
}

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;
/// Batches between expiry passes that empty the table.
const EXPIRE_EVERY: u64 = 25;
/// Connection-table capacity: small, so "table full" paths are reached too.
const MAX_FLOWS: u32 = 4096;

/// What the generator remembers of the data path's answers, to build replies and ICMP errors
/// about real translated packets.
#[derive(Default)]
struct Memory {
    /// Frames the edge sent toward a backend (source: the SNAT address).
    to_backend: Vec<Vec<u8>>,
    /// Frames the edge sent toward the IPv6 node (source: the IPv6 SNAT address).
    to_backend6: Vec<Vec<u8>>,
    /// Frames the edge sent toward IPv6 clients (source: the IPv6 VIP).
    to_client6: Vec<Vec<u8>>,
    /// Frames the edge sent toward a client (source: the VIP).
    to_client: Vec<Vec<u8>>,
}

impl Memory {
    fn remember(&mut self, out: &[u8]) {
        if let Some((src, _)) = source6(out) {
            let list = match src {
                SNAT6 => &mut self.to_backend6,
                VIP6 => &mut self.to_client6,
                _ => return,
            };
            if list.len() >= 256 {
                list.swap_remove(0);
            }
            list.push(out.to_vec());
            return;
        }
        let Some((src, _)) = source(out) else { return };
        let list = if src == SNAT {
            &mut self.to_backend
        } else if src == VIP {
            &mut self.to_client
        } else {
            return;
        };
        if list.len() >= 256 {
            list.swap_remove(0);
        }
        list.push(out.to_vec());
    }
}

/// Source address and port of an untagged IPv4 TCP/UDP frame.
fn source(f: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let s = etherparse::SlicedPacket::from_ethernet(f).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        return None;
    };
    let port = match &s.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
        _ => return None,
    };
    Some((ip.header().source_addr(), port))
}

/// Source address and port of an untagged IPv6 TCP/UDP frame.
fn source6(f: &[u8]) -> Option<([u8; 16], u16)> {
    let s = etherparse::SlicedPacket::from_ethernet(f).ok()?;
    let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net else {
        return None;
    };
    let port = match &s.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
        _ => return None,
    };
    Some((ip.header().source_addr().octets(), port))
}

/// The IPv6 VIP's TCP port served by the IPv6 node, and the IPv4 VIP's (both ids too).
const V6_NODE_PORT: u16 = 5400;
const V6_NODE_VIP6_ID: u32 = 9;
const V6_NODE_VIP4_ID: u32 = 10;

struct Gen {
    rng: SmallRng,
    mem: Memory,
}

const FLAGS: [&str; 12] = [
    "S", "SA", "A", "PA", "FA", "F", "R", "RA", "SR", "SF", "", "SAFRP",
];

impl Gen {
    fn client_port(&mut self) -> u16 {
        40_000 + self.rng.random_range(0..96)
    }

    fn seg(&mut self) -> (String, u32, u32, Vec<u8>, u8) {
        let flags = FLAGS.choose(&mut self.rng).unwrap().to_string();
        let seq = if self.rng.random_bool(0.5) {
            1000 + self.rng.random_range(0..4)
        } else {
            self.rng.random()
        };
        let ack = if self.rng.random_bool(0.5) {
            5000 + self.rng.random_range(0..4)
        } else {
            self.rng.random()
        };
        let len = *[0usize, 0, 1, 100, 1400, 1460]
            .choose(&mut self.rng)
            .unwrap();
        let ttl = *[64u8, 64, 64, 2, 1, 0].choose(&mut self.rng).unwrap();
        (flags, seq, ack, vec![0x5a; len], ttl)
    }

    fn tcp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
        let (flags, seq, ack, payload, ttl) = self.seg();
        let syn_options = if self.rng.random_bool(0.5) {
            linux_syn_options(1460, self.rng.random(), 0, self.rng.random_range(0..16))
        } else {
            vec![2u8, 4, 0x05, 0xb4]
        };
        // Later segments of a cookie flow carry timestamps and SACK blocks the edge translates.
        let mut later = ts_option(self.rng.random(), self.rng.random());
        if self.rng.random_bool(0.3) {
            later.extend_from_slice(&[1, 1, 5, 10]);
            later.extend((0..8).map(|_| self.rng.random::<u8>()));
        }
        let options: &[u8] = match (flags.contains('S'), self.rng.random_bool(0.5)) {
            (true, true) => &syn_options,
            (false, true) => &later,
            _ => &[],
        };
        tcp_seg(
            src,
            dst,
            &Seg {
                flags: &flags,
                seq,
                ack,
                win: self.rng.random(),
                options,
                payload: &payload,
                ttl,
            },
        )
    }

    /// A TCP segment over IPv6 (random flags, sequence numbers, length, hop limit).
    fn tcp6(&mut self, src: ([u8; 16], u16), dst: ([u8; 16], u16)) -> Vec<u8> {
        let (flags, seq, ack, payload, ttl) = self.seg();
        let syn = [2u8, 4, 0x05, 0xa0];
        let options: &[u8] = if flags.contains('S') && self.rng.random_bool(0.5) {
            &syn
        } else {
            &[]
        };
        tcp6_seg(
            src,
            dst,
            *[0u8, 0xb8].choose(&mut self.rng).unwrap(),
            &Seg {
                flags: &flags,
                seq,
                ack,
                win: self.rng.random(),
                options,
                payload: &payload,
                ttl,
            },
        )
    }

    /// IPv6: clients of the IPv4 nodes and of the IPv6 node, the IPv6 node's replies, ICMPv6,
    /// and extension headers.
    fn valid6(&mut self) -> (u32, Vec<u8>) {
        let client = (CLIENT6, self.client_port());
        match self.rng.random_range(0..10) {
            9 => {
                // A router on the client side: Packet Too Big about a reply the edge sent.
                let Some(about) = self.mem.to_client6.choose(&mut self.rng).cloned() else {
                    return (0, self.tcp6(client, (VIP6, VIP_TCP_PORT)));
                };
                let mtu = *[1280u32, 1400, 0, 68, 65535].choose(&mut self.rng).unwrap();
                let quote = about
                    .len()
                    .min(14 + *[48usize, 96, 1232].choose(&mut self.rng).unwrap());
                let mut f = Vec::new();
                etherparse::PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC)
                    .ipv6(
                        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe],
                        VIP6,
                        64,
                    )
                    .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu })
                    .write(&mut f, &about[14..quote])
                    .expect("packet too big");
                (0, f)
            }
            0 | 1 => (0, self.tcp6(client, (VIP6, VIP_TCP_PORT))),
            2 | 3 => (0, self.tcp6(client, (VIP6, V6_NODE_PORT))),
            4 => {
                let port = self.client_port();
                (0, self.tcp((CLIENT, port), (VIP, V6_NODE_PORT)))
            }
            5 => (0, udp6(client, (VIP6, VIP_UDP_PORT), b"request")),
            6 => {
                let port = match self.mem.to_backend6.choose(&mut self.rng) {
                    Some(f) if self.rng.random_bool(0.9) => source6(f).map_or(0, |s| s.1),
                    _ => self.rng.random(),
                };
                (1, self.tcp6((BACKEND6, V6_NODE_PORT), (SNAT6, port)))
            }
            7 => {
                let mut f = Vec::new();
                let dst = *[VIP6, SNAT6].choose(&mut self.rng).unwrap();
                etherparse::PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC)
                    .ipv6(CLIENT6, dst, 64)
                    .icmpv6(etherparse::Icmpv6Type::Unknown {
                        type_u8: *[128u8, 129, 2, 1, 135, 136, 3]
                            .choose(&mut self.rng)
                            .unwrap(),
                        code_u8: 0,
                        bytes5to8: self.rng.random(),
                    })
                    .write(&mut f, b"ping")
                    .expect("icmpv6");
                (0, f)
            }
            8 if self.rng.random_bool(0.5) => {
                // Extension headers at the walked limit (two of 64 bytes) and past it (72
                // bytes, a third header).
                let headers = *[
                    &[(0u8, 7u8, 0u8), (60, 7, 0)][..],
                    &[(0, 7, 0), (60, 1, 0)],
                    &[(0, 8, 0)],
                    &[(0, 7, 0), (60, 7, 0), (60, 0, 0)],
                    &[(43, 0, 0)],
                ]
                .choose(&mut self.rng)
                .unwrap();
                let f = if self.rng.random_bool(0.5) {
                    self.tcp6(client, (VIP6, VIP_TCP_PORT))
                } else {
                    udp6(client, (VIP6, VIP_UDP_PORT), b"request")
                };
                (0, wklb_tests::packets::with_ext(&f, headers))
            }
            _ => {
                // An extension header (or a fragment) after the fixed header.
                let mut f = self.tcp6(client, (VIP6, VIP_TCP_PORT));
                f[20] = *[0u8, 43, 60, 44, 59].choose(&mut self.rng).unwrap();
                (0, f)
            }
        }
    }

    /// A data node's answer to a SYN the edge sent it (a cookie flow's handshake, or a plain
    /// one): a RST acknowledging the SYN or not, or a challenge ACK of an old connection.
    fn refuse_syn(&mut self) -> (u32, Vec<u8>) {
        let Some((s, v)) = self.pick_sent(false, "S") else {
            return self.backend_reply(true);
        };
        let (flags, ack) = match self.rng.random_range(0..3) {
            0 => ("RA", v.seq.wrapping_add(1)),
            1 => ("RA", self.rng.random()),
            _ => ("A", self.rng.random()),
        };
        let seg = Seg {
            flags,
            seq: self.rng.random(),
            ack,
            ..Seg::default()
        };
        (1, tcp_seg((s.dst, s.dst_port), (s.src, s.src_port), &seg))
    }

    /// One of our own addresses as the source of a packet to a VIP.
    fn own_source(&mut self) -> (u32, Vec<u8>) {
        let port = self.client_port();
        match self.rng.random_range(0..4) {
            0 => (0, self.tcp((VIP, VIP_TCP_PORT), (VIP, VIP_TCP_PORT))),
            1 => (0, self.tcp((SNAT, port), (VIP, VIP_TCP_PORT))),
            2 => (0, udp((VIP, VIP_UDP_PORT), (VIP, VIP_UDP_PORT), b"loop")),
            _ => (0, self.tcp6((VIP6, VIP_TCP_PORT), (VIP6, VIP_TCP_PORT))),
        }
    }

    /// A reply from a backend to a SNAT port the edge used (or a random one).
    fn backend_reply(&mut self, proto_tcp: bool) -> (u32, Vec<u8>) {
        let b = *BACKENDS.choose(&mut self.rng).unwrap();
        let port = match self.mem.to_backend.choose(&mut self.rng) {
            Some(f) if self.rng.random_bool(0.9) => source(f).map_or(0, |s| s.1),
            _ => self.rng.random(),
        };
        let f = if proto_tcp {
            self.tcp((b, VIP_TCP_PORT), (SNAT, port))
        } else {
            udp((b, VIP_UDP_PORT), (SNAT, port), b"answer")
        };
        (1, f)
    }

    /// A valid frame of some kind, and which side it arrives on (0 client, 1 backend).
    fn valid(&mut self) -> (u32, Vec<u8>) {
        let client = (CLIENT, self.client_port());
        match self.rng.random_range(0..17) {
            0..=2 => (0, self.tcp(client, (VIP, VIP_TCP_PORT))),
            14 => self.refuse_syn(),
            15 => self.own_source(),
            3 | 4 => self.backend_reply(true),
            5 => (0, udp(client, (VIP, VIP_UDP_PORT), b"request")),
            6 => self.backend_reply(false),
            7 => {
                let dst = *[VIP, SNAT, EDGE_CLIENT_SIDE].choose(&mut self.rng).unwrap();
                (0, echo(CLIENT, dst, b"ping"))
            }
            8 => {
                // A router between edge and backend reports on a packet the edge sent.
                let Some(about) = self.mem.to_backend.choose(&mut self.rng).cloned() else {
                    return (0, self.tcp(client, (VIP, VIP_TCP_PORT)));
                };
                let (t, c, rest) = self.icmp_kind();
                let quote = *[28usize, 48, 68, 576].choose(&mut self.rng).unwrap();
                (
                    1,
                    icmp_error(
                        Ipv4Addr::new(10, 20, 0, 254),
                        SNAT,
                        t,
                        c,
                        rest,
                        &about,
                        quote,
                    ),
                )
            }
            9 => {
                // A router on the client side reports on a reply the edge sent.
                let Some(about) = self.mem.to_client.choose(&mut self.rng).cloned() else {
                    return self.backend_reply(true);
                };
                let (t, c, rest) = self.icmp_kind();
                let quote = *[28usize, 48, 68, 576].choose(&mut self.rng).unwrap();
                (
                    0,
                    icmp_error(
                        Ipv4Addr::new(10, 10, 0, 254),
                        VIP,
                        t,
                        c,
                        rest,
                        &about,
                        quote,
                    ),
                )
            }
            10 => (0, self.tcp(client, (EDGE_CLIENT_SIDE, 22))),
            12 => self.answer_synack(),
            13 => self.answer_syn(),
            _ => {
                let len = self.rng.random_range(14..200);
                (
                    self.rng.random_range(0..2),
                    (0..len).map(|_| self.rng.random()).collect(),
                )
            }
        }
    }

    /// The client's ACK of a SYN-ACK the edge sent (a cookie, when the VIP was in cookie mode),
    /// with the timestamp it echoes, sometimes with data.
    fn answer_synack(&mut self) -> (u32, Vec<u8>) {
        let Some(sa) = self.pick_sent(true, "SA") else {
            let port = self.client_port();
            return (0, self.tcp((CLIENT, port), (VIP, VIP_TCP_PORT)));
        };
        let (s, v) = sa;
        let opts = ts_option(self.rng.random(), v.ts.map_or(0, |t| t.0));
        let payload = if self.rng.random_bool(0.3) {
            &b"hello"[..]
        } else {
            &[]
        };
        let seg = Seg {
            flags: "A",
            seq: v.ack,
            ack: v.seq.wrapping_add(1),
            options: &opts,
            payload,
            ..Seg::default()
        };
        (0, tcp_seg((s.dst, s.dst_port), (s.src, s.src_port), &seg))
    }

    /// A backend's SYN-ACK for a SYN the edge sent it (a cookie flow's, or a plain one).
    fn answer_syn(&mut self) -> (u32, Vec<u8>) {
        let Some((s, v)) = self.pick_sent(false, "S") else {
            return self.backend_reply(true);
        };
        let opts = linux_syn_options(1460, self.rng.random(), v.ts.map_or(0, |t| t.0), 9);
        let seg = Seg {
            flags: "SA",
            seq: self.rng.random(),
            ack: v.seq.wrapping_add(1),
            options: &opts,
            ..Seg::default()
        };
        (1, tcp_seg((s.dst, s.dst_port), (s.src, s.src_port), &seg))
    }

    /// A remembered TCP frame the edge sent toward a client (or a backend) with exactly these
    /// flags (`S` = SYN alone, `SA` = SYN-ACK).
    fn pick_sent(&mut self, to_client: bool, flags: &str) -> Option<(Seen, TcpView)> {
        let list = if to_client {
            &self.mem.to_client
        } else {
            &self.mem.to_backend
        };
        let f = list.choose(&mut self.rng)?;
        let v = try_tcp_view(f)?;
        let want_ack = flags == "SA";
        (v.syn && v.ack_flag == want_ack && !v.rst).then(|| (inspect(f), v))
    }

    fn icmp_kind(&mut self) -> (u8, u8, [u8; 4]) {
        match self.rng.random_range(0..4) {
            0 => {
                let mtu: u16 = *[1400u16, 576, 68, 0, 1500, 9000]
                    .choose(&mut self.rng)
                    .unwrap();
                let m = mtu.to_be_bytes();
                (3, 4, [0, 0, m[0], m[1]])
            }
            1 => (3, self.rng.random_range(0..16), [0; 4]),
            2 => (11, 0, [0; 4]),
            _ => (
                self.rng.random_range(0..20),
                self.rng.random(),
                self.rng.random(),
            ),
        }
    }

    /// Wrappers that keep the frame valid: a VLAN tag, IP options, fragmentation bits.
    fn wrap(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        let ipv4 = f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[14] >> 4 == 4;
        if ipv4 && self.rng.random_bool(0.05) && f[14] & 0x0f == 5 {
            f = with_ip_options(&f, self.rng.random_range(1..=10));
        }
        if ipv4 && self.rng.random_bool(0.05) {
            let frag: u16 = *[0x2000u16, 0x2001, 0x0001, 0x1fff]
                .choose(&mut self.rng)
                .unwrap();
            let v = u16::from_be_bytes([f[20], f[21]]) | frag;
            f[20..22].copy_from_slice(&v.to_be_bytes());
            fix_ip_checksum(&mut f, 14);
        }
        if self.rng.random_bool(0.08) {
            let vid = *[1u16, 100, 4094, 0].choose(&mut self.rng).unwrap();
            f = with_vlan(&f, vid);
        }
        f
    }

    /// Damage: flips, random bytes, truncation, extension, extreme header fields.
    fn mutate(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.rng.random_range(1..=3) {
            let n = f.len();
            match self.rng.random_range(0..6) {
                0 => {
                    let i = self.rng.random_range(0..n);
                    f[i] ^= 1 << self.rng.random_range(0..8);
                }
                1 => {
                    let i = self.rng.random_range(0..n);
                    f[i] = self.rng.random();
                }
                2 => f.truncate(self.rng.random_range(14..=n.max(14))),
                3 => f.extend((0..self.rng.random_range(1..64)).map(|_| self.rng.random::<u8>())),
                _ if n >= 54 => {
                    // A header field of IPv4 (+ TCP/UDP) set to something extreme.
                    let (at, v): (usize, u8) = match self.rng.random_range(0..7) {
                        0 => (14, 0x40 | self.rng.random_range(0..16)), // IHL
                        1 => (16, self.rng.random()),                   // total length (high)
                        2 => (17, self.rng.random()),                   // total length (low)
                        3 => (20, self.rng.random()),                   // flags + offset
                        4 => (23, *[1u8, 6, 17, 47, 255].choose(&mut self.rng).unwrap()),
                        5 => (46, self.rng.random_range(0..16) << 4), // TCP data offset
                        _ => (47, self.rng.random()),                 // TCP flags
                    };
                    f[at] = v;
                }
                _ => {}
            }
        }
        if f.len() >= 34 && self.rng.random_bool(0.5) && f[14] >> 4 == 4 {
            // A damaged header with a checksum that verifies gets further into the program.
            let ihl = ((f[14] & 0x0f) * 4) as usize;
            if ihl >= 20 && 14 + ihl <= f.len() {
                fix_ip_checksum(&mut f, 14);
            }
        }
        f
    }

    fn frame(&mut self) -> (u32, Vec<u8>) {
        let (side, f) = if self.rng.random_bool(0.25) {
            self.valid6()
        } else {
            self.valid()
        };
        let f = self.wrap(f);
        let f = if self.rng.random_bool(0.4) {
            self.mutate(f)
        } else {
            f
        };
        let side = if self.rng.random_bool(0.05) {
            1 - side
        } else {
            side
        };
        (side, f)
    }
}

/// Another data-plane setting between expiry passes, so every policy branch sees traffic: the
/// non-SYN and echo policies, SYN-cookie mode, source lists and rate, PROXY protocol, MSS
/// clamping, the SNAT port range, and the third TCP backend healthy, without a neighbour
/// entry, without a route, or inactive.
fn shuffle(fx: &mut Fixture, rng: &mut SmallRng) -> Result<()> {
    let mut c = fx.config();
    c.flags = rng.random_range(0..4);
    c.mss_mode = rng.random_range(0..3);
    c.mss_value = rng.random_range(500..1500);
    // SYN cookies off, allowed (ACKs checked), or on (SYNs answered by the edge).
    let cookies = *[
        0,
        VipMeta::COOKIES_ALLOWED,
        VipMeta::COOKIES_ALLOWED | VipMeta::COOKIES_ON,
    ]
    .choose(rng)
    .unwrap();
    // Source lists (the client's /30 denied, its own address allowed) and a per-source rate,
    // each on or off.
    let deny = lb_common::SourceKey4::new(TCP_VIP_ID, u32::from_ne_bytes([10, 10, 0, 0]));
    let allow = lb_common::SourceKey4::new(TCP_VIP_ID, u32::from_ne_bytes([10, 10, 0, 2]));
    fx.image
        .sources
        .insert((deny, 30), lb_common::source_list::DENY);
    fx.image
        .sources
        .insert((allow, 32), lb_common::source_list::ALLOW);
    let mut limits = lb_common::VipLimits::new(500, 20);
    // The half-open budget (auto cookies) on or off, small enough to engage and release.
    if rng.random_bool(0.5) {
        (limits.syn_interval_ns, limits.syn_tolerance_ns) = lb_common::syn_budget::params(400);
    }
    fx.flows.release_cookies(TCP_VIP_ID, monotonic_ns());
    // Shares: each VIP's share of the pools small or none, the pools "full" early or never.
    let share = *[lb_common::shares::UNLIMITED, 0, 20, 200]
        .choose(rng)
        .unwrap();
    limits.share = [share; 4];
    fx.image.vip_limits.insert(TCP_VIP_ID, limits);
    let udp_limits = lb_common::VipLimits {
        share: [*[lb_common::shares::UNLIMITED, 0, 20].choose(rng).unwrap(); 4],
        ..Default::default()
    };
    fx.image.vip_limits.insert(UDP_VIP_ID, udp_limits);
    c.share_full = [*[u32::MAX, 0, 50, 500].choose(rng).unwrap(); 4];
    let policy = *[
        0,
        VipMeta::SOURCE_LISTS,
        VipMeta::RATE_LIMIT,
        VipMeta::SOURCE_LISTS | VipMeta::RATE_LIMIT,
    ]
    .choose(rng)
    .unwrap();
    // PROXY protocol off, v1 or v2: segments of new flows get a header inserted or shifted.
    let proxy = *[0, VipMeta::PROXY_V1, VipMeta::PROXY_V2]
        .choose(rng)
        .unwrap();
    fx.set_tcp_vip_flags(cookies | policy | proxy)?;
    c.snat_port_max = *[65535u16, 1100, 1030].choose(rng).unwrap();
    fx.set_config(c)?;
    let (addr, active) = match rng.random_range(0..4) {
        0 => (BACKENDS[2], true),
        1 => (UNRESOLVED_BACKEND, true),
        2 => (UNROUTABLE_BACKEND, true),
        _ => (BACKENDS[2], false),
    };
    fx.set_backend(2, addr, VIP_TCP_PORT, active)?;
    // The third UDP backend live or inactive: a UDP flow on it moves on by itself.
    fx.set_backend(
        UDP_BACKEND_BASE + 2,
        BACKENDS[2],
        VIP_UDP_PORT,
        rng.random_bool(0.5),
    )
}

/// FLOWS4, FLOWS6 and the flow slots agree.
fn check_tables(fx: &Fixture) -> Result<(usize, usize)> {
    let refs = fx.flows.refs4().all()?;
    let mut owners: HashMap<u32, usize> = HashMap::new();
    for (key, r) in &refs {
        let e = fx.flows.entry(r.slot);
        if e.owner != r.token {
            bail!(
                "FLOWS4 {key:?} → slot {} token {}, slot owned by {}",
                r.slot,
                r.token,
                e.owner
            );
        }
        if e.key_v4() != *key {
            bail!(
                "FLOWS4 {key:?} → slot {} holding tuple {:?}",
                r.slot,
                e.key_v4()
            );
        }
        *owners.entry(r.slot).or_default() += 1;
    }
    let refs6 = fx.flows.refs6().all()?;
    for (key, r) in &refs6 {
        let e = fx.flows.entry(r.slot);
        let (cport, vport) = key.ports_host();
        if e.owner != r.token
            || e.flags & lb_common::FlowEntry::CLIENT_V6 == 0
            || e.client != key.src
            || (e.client_port, e.vip_port) != (cport, vport)
        {
            bail!(
                "FLOWS6 {key:?} → slot {} token {}, slot holds {e:?}",
                r.slot,
                r.token
            );
        }
        *owners.entry(r.slot).or_default() += 1;
    }
    let mut claimed = 0;
    let mut bad = None;
    fx.flows.scan(&mut |s, e| {
        if e.owner == slot::FREE {
            return;
        }
        claimed += 1;
        // A slot the data path gave up (a SYN restarting its tuple) waits for the expiry
        // pass's grace period, referenced by nothing.
        let want = if e.owner == slot::DYING {
            None
        } else {
            Some(&1)
        };
        if owners.get(&s) != want && bad.is_none() {
            bad = Some((s, e.owner, owners.get(&s).copied().unwrap_or(0)));
        }
    });
    if let Some((s, owner, n)) = bad {
        bail!(
            "slot {s} (owner {owner}) is referenced {n} times by FLOWS4 and FLOWS6 (a claimed slot once, a dying one never)"
        );
    }
    Ok((refs.len() + refs6.len(), claimed))
}

/// The IPv6 VIP (TCP, UDP) on the IPv4 nodes; the IPv6 node behind both VIP addresses' port
/// `V6_NODE_PORT`.
fn ipv6(fx: &mut Fixture) {
    fx.add_ipv6_vip();
    fx.add_ipv6_node(SNAT6_INDEX);
    fx.add_ipv6_vip_on(
        V6_NODE_VIP6_ID,
        V6_NODE_PORT,
        lb_common::PROTO_TCP,
        &[(B6_TCP, 1)],
    );
    let key = lb_common::Vip4Key::new(word(VIP), V6_NODE_PORT, lb_common::PROTO_TCP);
    fx.image.vips.insert(
        key,
        VipMeta {
            vip_id: V6_NODE_VIP4_ID,
            flags: 0,
        },
    );
    fx.image.vip_info.insert(
        V6_NODE_VIP4_ID,
        lb_common::VipInfo {
            addr: lb_common::Addr::v4(VIP.octets()),
            port: V6_NODE_PORT,
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_IPV4,
            flags: 0,
        },
    );
    fx.install(V6_NODE_VIP4_ID, &[(B6_TCP, 1)])
        .expect("IPv4 VIP of the IPv6 node");
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

fn fuzz(cli: Cli, seed: u64) -> Result<()> {
    let mut fx = Fixture::new(MAX_FLOWS)?;
    ipv6(&mut fx);
    let mut g = Gen {
        rng: SmallRng::seed_from_u64(seed),
        mem: Memory::default(),
    };
    let ifs = [fx.client_if, fx.backend_if];
    let started = Instant::now();
    let mut actions: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut checked_csum, mut done, mut batches, mut expired) = (0u64, 0u64, 0u64, 0u64);
    let mut last_report = Instant::now();
    while done < cli.frames {
        let n = cli.batch.min(cli.frames - done);
        let before = fx.reasons();
        for _ in 0..n {
            let (side, frame) = g.frame();
            let (action, out) = fx.run(ifs[side as usize], &frame)?;
            *actions.entry(action).or_default() += 1;
            if action == XDP_ABORTED || action > XDP_REDIRECT {
                bail!(
                    "action {action} for frame {} (side {side}, seed {seed})",
                    hex(&frame)
                );
            }
            if action != XDP_DROP && checksums_valid(&frame) == Some(true) {
                checked_csum += 1;
                if checksums_valid(&out) != Some(true) {
                    bail!(
                        "checksums broken (action {action}, side {side}, seed {seed})\n in:  {}\n out: {}",
                        hex(&frame),
                        hex(&out)
                    );
                }
            }
            if action != XDP_DROP {
                g.mem.remember(&out);
            }
        }
        let after = fx.reasons();
        let counted: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        if counted != n {
            bail!("batch {batches}: {n} frames, reason counters grew by {counted} (seed {seed})");
        }
        check_tables(&fx)?;
        done += n;
        batches += 1;
        if batches % EXPIRE_EVERY == 0 {
            let day = 86_400_000_000_000;
            let s = expiry::sweep(
                fx.flows.as_ref(),
                &Timeouts::default(),
                monotonic_ns() + day,
            )?;
            expired += s.expired + s.orphans;
            let (refs, claimed) = check_tables(&fx)?;
            if refs + claimed != 0 || s.live != 0 {
                bail!("after expiring everything: {refs} references, {claimed} claimed slots");
            }
            if let Some((vip, l)) = fx
                .flows
                .live()
                .iter()
                .enumerate()
                .find(|(_, l)| l.used != [0; 4])
            {
                bail!(
                    "after expiring everything: VIP row {vip} still counts {:?} flows",
                    l.used
                );
            }
            shuffle(&mut fx, &mut g.rng)?;
        }
        if last_report.elapsed().as_secs() >= 5 || done == cli.frames {
            last_report = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64();
            println!("  {done}/{} frames ({:.0}/s)", cli.frames, rate);
        }
    }
    let reasons = fx.reasons();
    let hit: Vec<String> = Reason::ALL
        .iter()
        .filter(|r| reasons[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), reasons[*r as usize]))
        .collect();
    println!(
        "wklb-fuzz: {done} frames in {:.1} s, seed {seed}: no violation. Actions {actions:?} (1 drop, 2 pass, 3 tx, 4 redirect); {checked_csum} outputs checksum-checked; {batches} table checks; {expired} flows expired by {} full expiry passes.",
        started.elapsed().as_secs_f64(),
        batches / EXPIRE_EVERY
    );
    println!(
        "reasons reached ({} of {}): {}",
        hit.len(),
        Reason::ALL.len(),
        hit.join(", ")
    );
    let proxy = {
        use lb_userspace::dataplane::Counters as _;
        fx.counters.proxy(TCP_VIP_ID)?
    };
    println!(
        "PROXY protocol: {} headers inserted, {} segments refused, {} segments' SACK edges mapped",
        proxy.headers, proxy.refused, proxy.sack_mapped
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !have_root() {
        bail!("the fuzzer loads XDP programs: run `sudo cargo xtask fuzz`");
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("wklb-fuzz: {} frames, seed {seed}", cli.frames);
    in_private_netns(move || fuzz(cli, seed))
}
