//! IPv6 ⇄ IPv4 header translation for flows whose client and backend families differ (the
//! header part of RFC 7915's stateless translation, applied by a full-NAT flow).
//!
//! Headers are built as native words of network-order bytes, so the data path writes them with
//! whole-word stores. The L4 checksum follows the pseudo-header: the upper-layer length and the
//! protocol sum to the same value in both families' pseudo-headers, so only the addresses (and
//! the ports the NAT rewrites) change it.

use crate::csum::{CsumDelta, fold};

/// Fixed header lengths.
pub const IPV4_HDR: usize = 20;
pub const IPV6_HDR: usize = 40;
/// How much a packet shrinks from IPv6 to IPv4 (and grows back).
pub const GROWTH_V4_TO_V6: usize = IPV6_HDR - IPV4_HDR;

/// An IPv4 header without options for a translated IPv6 packet: `payload_len` is the IPv6
/// payload length, TOS the traffic class, TTL the hop limit (already decremented), DF set and
/// identification 0 (an atomic datagram, RFC 6864: IPv6 is never fragmented on the way).
#[inline(always)]
pub const fn ipv4_header(
    tos: u8,
    payload_len: u16,
    ttl: u8,
    proto: u8,
    src: u32,
    dst: u32,
) -> [u32; 5] {
    let len = (payload_len as u32 + IPV4_HDR as u32) as u16;
    let l = len.to_be_bytes();
    let mut w = [
        u32::from_ne_bytes([0x45, tos, l[0], l[1]]),
        u32::from_ne_bytes([0, 0, 0x40, 0]),
        u32::from_ne_bytes([ttl, proto, 0, 0]),
        src,
        dst,
    ];
    let sum = w[0] as u64 + w[1] as u64 + w[2] as u64 + w[3] as u64 + w[4] as u64;
    let c = (!fold(sum)).to_ne_bytes();
    w[2] = u32::from_ne_bytes([ttl, proto, c[0], c[1]]);
    w
}

/// The first two words of an IPv6 header for a translated IPv4 packet: traffic class from TOS,
/// flow label 0, `payload_len` the IPv4 payload length, hop limit the TTL (already
/// decremented). The addresses follow as they are.
#[inline(always)]
pub const fn ipv6_first_words(
    traffic_class: u8,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
) -> [u32; 2] {
    let l = payload_len.to_be_bytes();
    [
        u32::from_ne_bytes([0x60 | (traffic_class >> 4), traffic_class << 4, 0, 0]),
        u32::from_ne_bytes([l[0], l[1], next_header, hop_limit]),
    ]
}

/// The whole IPv6 header (`ipv6_first_words`, then the addresses).
#[inline(always)]
pub const fn ipv6_header(
    traffic_class: u8,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> [u32; 10] {
    let [w0, w1] = ipv6_first_words(traffic_class, payload_len, next_header, hop_limit);
    [
        w0, w1, src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ]
}

/// The IPv6 header's traffic class, from its first word (native load of the first 4 bytes).
#[inline(always)]
pub const fn traffic_class(word0: u32) -> u8 {
    let b = word0.to_ne_bytes();
    (b[0] << 4) | (b[1] >> 4)
}

/// The L4 checksum change when an IPv6 pseudo-header (`src6`, `dst6`) becomes an IPv4 one
/// (`src4`, `dst4`). Negate it (`to_v6`) for the other way.
#[inline(always)]
pub const fn pseudo_v6_to_v4(src6: &[u32; 4], dst6: &[u32; 4], src4: u32, dst4: u32) -> CsumDelta {
    CsumDelta::new()
        .replace32(src6[0], src4)
        .replace32(src6[1], 0)
        .replace32(src6[2], 0)
        .replace32(src6[3], 0)
        .replace32(dst6[0], dst4)
        .replace32(dst6[1], 0)
        .replace32(dst6[2], 0)
        .replace32(dst6[3], 0)
}

/// The L4 checksum change when an IPv4 pseudo-header becomes an IPv6 one.
#[inline(always)]
pub const fn pseudo_v4_to_v6(src4: u32, dst4: u32, src6: &[u32; 4], dst6: &[u32; 4]) -> CsumDelta {
    CsumDelta::new()
        .replace32(src4, src6[0])
        .replace32(0, src6[1])
        .replace32(0, src6[2])
        .replace32(0, src6[3])
        .replace32(dst4, dst6[0])
        .replace32(0, dst6[1])
        .replace32(0, dst6[2])
        .replace32(0, dst6[3])
}

/// The L4 checksum change when an IPv6 pseudo-header's addresses are replaced (IPv6 client to
/// IPv6 backend, and back).
#[inline(always)]
pub const fn pseudo_v6_to_v6(
    old_src: &[u32; 4],
    old_dst: &[u32; 4],
    src: &[u32; 4],
    dst: &[u32; 4],
) -> CsumDelta {
    CsumDelta::new()
        .replace32(old_src[0], src[0])
        .replace32(old_src[1], src[1])
        .replace32(old_src[2], src[2])
        .replace32(old_src[3], src[3])
        .replace32(old_dst[0], dst[0])
        .replace32(old_dst[1], dst[1])
        .replace32(old_dst[2], dst[2])
        .replace32(old_dst[3], dst[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, SlicedPacket};

    fn words<const N: usize>(b: &[u8]) -> [u32; N] {
        core::array::from_fn(|i| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()))
    }

    fn bytes(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    const C6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef,
    ];
    const V6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    ];
    const SNAT4: [u8; 4] = [10, 2, 0, 100];
    const B4: [u8; 4] = [10, 2, 0, 11];

    /// The L4 checksum offset inside the L4 header.
    fn csum_at(proto: u8) -> usize {
        if proto == 6 { 16 } else { 6 }
    }

    /// Translates an IPv6 TCP/UDP packet (no extension headers) to IPv4 as the data path does:
    /// new header, ports rewritten, L4 checksum adjusted incrementally.
    fn to_v4(pkt: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let (h, _) = Ipv6Header::from_slice(pkt).unwrap();
        let l4 = &pkt[IPV6_HDR..];
        let proto = h.next_header.0;
        let (src6, dst6) = (words::<4>(&h.source), words::<4>(&h.destination));
        let (s4, d4) = (u32::from_ne_bytes(SNAT4), u32::from_ne_bytes(B4));
        let old_ports = u32::from_ne_bytes(l4[..4].try_into().unwrap());
        let new_ports = crate::ports_word(sport, dport);
        let delta = pseudo_v6_to_v4(&src6, &dst6, s4, d4).replace32(old_ports, new_ports);
        let hdr = ipv4_header(
            traffic_class(words::<1>(pkt)[0]),
            h.payload_length,
            h.hop_limit - 1,
            proto,
            s4,
            d4,
        );
        let mut out = bytes(&hdr);
        let mut seg = l4.to_vec();
        seg[..4].copy_from_slice(&new_ports.to_ne_bytes());
        let at = csum_at(proto);
        let c = u16::from_ne_bytes([seg[at], seg[at + 1]]);
        let c = if proto == 17 {
            delta.apply_udp(c)
        } else {
            delta.apply(c)
        };
        seg[at..at + 2].copy_from_slice(&c.to_ne_bytes());
        out.extend(seg);
        out
    }

    /// The reverse: an IPv4 reply from the backend to the SNAT address, to the IPv6 client.
    fn to_v6(pkt: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let (h, _) = Ipv4Header::from_slice(pkt).unwrap();
        let l4 = &pkt[IPV4_HDR..];
        let proto = h.protocol.0;
        let (src4, dst4) = (
            u32::from_ne_bytes(h.source),
            u32::from_ne_bytes(h.destination),
        );
        let (v6, c6) = (words::<4>(&V6), words::<4>(&C6));
        let old_ports = u32::from_ne_bytes(l4[..4].try_into().unwrap());
        let new_ports = crate::ports_word(sport, dport);
        let delta = pseudo_v4_to_v6(src4, dst4, &v6, &c6).replace32(old_ports, new_ports);
        let hdr = ipv6_header(
            h.dscp.value() << 2 | h.ecn.value(),
            l4.len() as u16,
            proto,
            h.time_to_live - 1,
            &v6,
            &c6,
        );
        let mut out = bytes(&hdr);
        let mut seg = l4.to_vec();
        seg[..4].copy_from_slice(&new_ports.to_ne_bytes());
        let at = csum_at(proto);
        let c = u16::from_ne_bytes([seg[at], seg[at + 1]]);
        seg[at..at + 2].copy_from_slice(&delta.apply(c).to_ne_bytes());
        out.extend(seg);
        out
    }

    fn checksums_ok(p: &[u8]) -> bool {
        let s = SlicedPacket::from_ip(p).expect("parse");
        let payload = match &s.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                if h.calc_header_checksum() != h.header_checksum {
                    return false;
                }
                ip.payload().payload
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => ip.payload().payload,
            _ => return false,
        };
        match (&s.net, &s.transport) {
            (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
                let h = t.to_header();
                h.calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == h.checksum
            }
            (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
                let h = t.to_header();
                h.calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == h.checksum
            }
            (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(u))) => {
                let h = u.to_header();
                h.checksum == 0
                    || h.calc_checksum_ipv4(&ip.header().to_header(), &payload[8..])
                        .unwrap()
                        == h.checksum
            }
            (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Udp(u))) => {
                let h = u.to_header();
                h.calc_checksum_ipv6(&ip.header().to_header(), &payload[8..])
                    .unwrap()
                    == h.checksum
            }
            _ => false,
        }
    }

    #[test]
    fn ipv6_client_packets_become_valid_ipv4_and_replies_valid_ipv6() {
        for (i, payload) in [&b""[..], b"x", b"CONNECT wukongim", &[0xffu8; 333][..]]
            .into_iter()
            .enumerate()
        {
            for udp in [false, true] {
                let b = PacketBuilder::ip(IpHeaders::Ipv6(
                    Ipv6Header {
                        traffic_class: 0xb8,
                        hop_limit: 64,
                        source: C6,
                        destination: V6,
                        ..Default::default()
                    },
                    Default::default(),
                ));
                let mut pkt = Vec::new();
                if udp {
                    b.udp(40000 + i as u16, 5300)
                        .write(&mut pkt, payload)
                        .unwrap();
                } else {
                    b.tcp(40000 + i as u16, 5100, 7000, 512)
                        .ack(9000)
                        .psh()
                        .write(&mut pkt, payload)
                        .unwrap();
                }
                assert!(checksums_ok(&pkt), "fixture {i}");
                let v4 = to_v4(&pkt, 61000, 5100);
                assert_eq!(v4.len(), pkt.len() - GROWTH_V4_TO_V6);
                assert!(checksums_ok(&v4), "v6 → v4 {i} udp={udp}");
                let (h, _) = Ipv4Header::from_slice(&v4).unwrap();
                assert_eq!(
                    (
                        h.dscp.value() << 2 | h.ecn.value(),
                        h.time_to_live,
                        h.dont_fragment
                    ),
                    (0xb8, 63, true),
                    "traffic class, hop limit and DF"
                );
                // The backend answers: swap addresses and ports, then translate back.
                let mut reply = Vec::new();
                let rb = PacketBuilder::ipv4(B4, SNAT4, 64);
                if udp {
                    rb.udp(5300, 61000).write(&mut reply, payload).unwrap();
                } else {
                    rb.tcp(5100, 61000, 9000, 512)
                        .ack(7001)
                        .write(&mut reply, payload)
                        .unwrap();
                }
                let v6 = to_v6(&reply, 5100, 40000 + i as u16);
                assert_eq!(v6.len(), reply.len() + GROWTH_V4_TO_V6);
                assert!(checksums_ok(&v6), "v4 → v6 {i} udp={udp}");
                let (h6, _) = Ipv6Header::from_slice(&v6).unwrap();
                assert_eq!((h6.source, h6.destination, h6.hop_limit), (V6, C6, 63));
                assert_eq!(h6.next_header, IpNumber(if udp { 17 } else { 6 }));
            }
        }
    }

    #[test]
    fn traffic_class_round_trips_through_the_first_word() {
        for tc in [0u8, 0x01, 0x10, 0xb8, 0xff] {
            let h = ipv6_header(tc, 0, 6, 64, &[0; 4], &[0; 4]);
            assert_eq!(traffic_class(h[0]), tc);
        }
    }

    #[test]
    fn ipv6_to_ipv6_address_rewrites_keep_checksums_valid() {
        let (snat6, b6) = (
            words::<4>(&[0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64]),
            words::<4>(&[0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b]),
        );
        for udp in [false, true] {
            let b = PacketBuilder::ipv6(C6, V6, 64);
            let mut pkt = Vec::new();
            if udp {
                b.udp(40000, 5300).write(&mut pkt, b"ping").unwrap();
            } else {
                b.tcp(40000, 5100, 7000, 512)
                    .ack(9000)
                    .write(&mut pkt, b"ping")
                    .unwrap();
            }
            let (h, _) = Ipv6Header::from_slice(&pkt).unwrap();
            let old_ports = u32::from_ne_bytes(pkt[IPV6_HDR..IPV6_HDR + 4].try_into().unwrap());
            let new_ports = crate::ports_word(61000, 5100);
            let delta = pseudo_v6_to_v6(&words(&h.source), &words(&h.destination), &snat6, &b6)
                .replace32(old_ports, new_ports);
            let mut out = pkt.clone();
            out[8..24].copy_from_slice(&bytes(&snat6));
            out[24..40].copy_from_slice(&bytes(&b6));
            out[IPV6_HDR..IPV6_HDR + 4].copy_from_slice(&new_ports.to_ne_bytes());
            let at = IPV6_HDR + csum_at(h.next_header.0);
            let c = u16::from_ne_bytes([out[at], out[at + 1]]);
            let c = if udp {
                delta.apply_udp(c)
            } else {
                delta.apply(c)
            };
            out[at..at + 2].copy_from_slice(&c.to_ne_bytes());
            assert!(checksums_ok(&out), "udp={udp}");
        }
    }
}
