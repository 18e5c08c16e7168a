use super::*;
use crate::FlowEntry;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

use crate::test_rng::Rng;

fn built(v2: bool, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = [0xaa; BUF];
    let n = build_v4(v2, src, dst, sport, dport, &mut out);
    assert_eq!(n, header_len_v4(v2, src, dst, sport, dport) as usize);
    out[..n].to_vec()
}

#[test]
fn digits_counts_every_port() {
    for v in 0..=65535u32 {
        assert_eq!(digits(v) as usize, v.to_string().len(), "{v}");
    }
}

#[test]
fn v1_is_the_spec_line_for_edge_values() {
    let addrs = [
        [0, 0, 0, 0],
        [255, 255, 255, 255],
        [10, 0, 0, 1],
        [9, 10, 99, 100],
        [192, 168, 1, 254],
    ];
    for src in addrs {
        for dst in addrs {
            for (sport, dport) in [(0, 9), (10, 65535), (40001, 5100), (99, 100)] {
                let want = format!(
                    "PROXY TCP4 {} {} {sport} {dport}\r\n",
                    Ipv4Addr::from(src),
                    Ipv4Addr::from(dst)
                );
                assert_eq!(built(false, src, dst, sport, dport), want.as_bytes());
                assert!(want.len() <= 56);
            }
        }
    }
}

/// The header parsed back the way WuKongIM v2 reads one (`internal/server/proxyproto.go`):
/// the first byte, then v1 split at `\n` (shorter than 107 bytes, `\r` last), or v2's
/// signature, family and length.
fn parse_like_wukongim(b: &[u8]) -> Option<(Ipv4Addr, u16, Ipv4Addr, u16, usize)> {
    match b.first()? {
        b'P' => {
            let end = b.iter().position(|&c| c == b'\n')?;
            if end >= 107 || b[end - 1] != b'\r' {
                return None;
            }
            let line = std::str::from_utf8(&b[..end - 1]).ok()?;
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 6 || f[0] != "PROXY" || f[1] != "TCP4" {
                return None;
            }
            Some((
                f[2].parse().ok()?,
                f[4].parse().ok()?,
                f[3].parse().ok()?,
                f[5].parse().ok()?,
                end + 1,
            ))
        }
        b'\r' => {
            if b.len() < 16 || b[..12] != V2_SIGNATURE || b[12] != 0x21 || b[13] != 0x11 {
                return None;
            }
            let len = u16::from_be_bytes([b[14], b[15]]) as usize;
            if len != 12 || b.len() < 16 + len {
                return None;
            }
            let a = &b[16..28];
            Some((
                Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                u16::from_be_bytes([a[8], a[9]]),
                Ipv4Addr::new(a[4], a[5], a[6], a[7]),
                u16::from_be_bytes([a[10], a[11]]),
                28,
            ))
        }
        _ => None,
    }
}

#[test]
fn both_versions_parse_back_to_the_client_and_the_vip() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        let src = (rng.next() as u32).to_be_bytes();
        let dst = (rng.next() as u32).to_be_bytes();
        let (sport, dport) = (rng.next() as u16, rng.next() as u16);
        let v2 = i % 2 == 0;
        let h = built(v2, src, dst, sport, dport);
        let mut stream = h.clone();
        stream.extend_from_slice(b"PROXY TCP4 6.6.6.6 7.7.7.7 1 2\r\nhello");
        let (s, sp, d, dp, len) = parse_like_wukongim(&stream).expect("parses");
        assert_eq!((s, sp, d, dp), (src.into(), sport, dst.into(), dport));
        assert_eq!(len, h.len());
        if v2 {
            // Version 2, PROXY (never LOCAL), TCP over IPv4, 12 address bytes.
            assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        }
    }
}

#[test]
fn a_flows_bits_and_length_follow_its_vip_and_node() {
    use crate::VipMeta;
    assert_eq!(
        flow_bits(VipMeta::PROXY_V1 | VipMeta::PINNED, 0),
        FlowEntry::PROXY_V1
    );
    assert_eq!(
        flow_bits(VipMeta::PROXY_V2 | VipMeta::COOKIES_ON, 0),
        FlowEntry::PROXY_V2
    );
    assert_eq!(flow_bits(VipMeta::PROXY_V2, 1), 0);
    assert_eq!(flow_bits(VipMeta::COOKIES_ON | VipMeta::PINNED, 0), 0);
    let mut rng = Rng(11);
    for _ in 0..20_000 {
        let mut e = FlowEntry::default();
        e.client[0] = rng.next() as u32;
        e.client[1] = rng.next() as u32;
        e.client_port = rng.next() as u16;
        e.vip_port = rng.next() as u16;
        let (s, d) = (e.client[0].to_ne_bytes(), e.client[1].to_ne_bytes());
        let v1 = built(false, s, d, e.client_port, e.vip_port).len() as u8;
        assert_eq!(flow_len(&e), 0);
        e.proxy = FlowEntry::PROXY_V1;
        assert_eq!(flow_len(&e), v1);
        assert!(v1 as u16 <= max_len(e.proxy));
        e.proxy = FlowEntry::PROXY_V2 | FlowEntry::PROXY_ACKED;
        assert_eq!(flow_len(&e), V2_LEN_V4);
        assert_eq!(max_len(e.proxy), V2_LEN_V4 as u16);
    }
    assert_eq!(
        built(false, [255; 4], [255; 4], 65535, 65535).len(),
        V1_MAX_V4 as usize
    );
}

/// One's-complement sum of the first `2 * WORDS` bytes of `buf` as stored (native 16-bit loads),
/// unfolded: what the data path's `bpf_csum_diff` gives over the zero-padded header buffer.
fn sum_words<const N: usize, const WORDS: usize>(buf: &[u8; N]) -> u64 {
    (0..WORDS)
        .map(|i| u16::from_ne_bytes([buf[2 * i], buf[2 * i + 1]]) as u64)
        .sum()
}

/// Builds an IPv4 TCP segment (IP header onwards) with a valid checksum.
fn segment(rng: &mut Rng, payload: &[u8], ts: bool) -> Vec<u8> {
    let src = (rng.next() as u32).to_be_bytes();
    let dst = (rng.next() as u32).to_be_bytes();
    let mut b = PacketBuilder::ipv4(src, dst, 64).tcp(
        rng.next() as u16,
        rng.next() as u16,
        rng.next() as u32,
        rng.next() as u16,
    );
    b = b.ack(rng.next() as u32).psh();
    if ts {
        b = b
            .options(&[etherparse::TcpOptionElement::Timestamp(
                rng.next() as u32,
                rng.next() as u32,
            )])
            .unwrap();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Inserts `hdr` after the TCP header of `pkt` the way the data path does: lengths and
/// checksums from the old ones, never a full recomputation.
fn insert(pkt: &[u8], hdr: &[u8]) -> Vec<u8> {
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    let thl = ((pkt[ihl + 12] >> 4) as usize) * 4;
    let ip_len = u16::from_be_bytes([pkt[2], pkt[3]]);
    let tcp_len = ip_len - ihl as u16;
    let h = hdr.len() as u16;
    let mut buf = [0u8; BUF];
    buf[..hdr.len()].copy_from_slice(hdr);
    let hdr_sum = sum_words::<BUF, { BUF / 2 }>(&buf);
    let old = u16::from_ne_bytes([pkt[ihl + 16], pkt[ihl + 17]]);
    let word = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut k = pseudo_v4(word(pkt, 12), word(pkt, 16), tcp_len);
    for i in (0..thl).step_by(2) {
        if i != 16 {
            k += u16::from_ne_bytes([pkt[ihl + i], pkt[ihl + i + 1]]) as u64;
        }
    }
    let c = insert_csum(old, tcp_len, h, hdr_sum, k);
    let mut out = pkt[..ihl + thl].to_vec();
    out.extend_from_slice(hdr);
    out.extend_from_slice(&pkt[ihl + thl..]);
    out[2..4].copy_from_slice(&(ip_len + h).to_be_bytes());
    let ipc = csum::CsumDelta::new()
        .replace16(ip_len.to_be(), (ip_len + h).to_be())
        .apply(u16::from_ne_bytes([pkt[10], pkt[11]]));
    out[10..12].copy_from_slice(&ipc.to_ne_bytes());
    out[ihl + 16..ihl + 18].copy_from_slice(&c.to_ne_bytes());
    out
}

fn checksums_ok(p: &[u8]) -> bool {
    let sliced = SlicedPacket::from_ip(p).expect("parse");
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        return false;
    };
    let hdr = ip.header().to_header();
    let Some(TransportSlice::Tcp(t)) = sliced.transport else {
        return false;
    };
    let h = t.to_header();
    hdr.calc_header_checksum() == hdr.header_checksum
        && h.calc_checksum_ipv4(&hdr, t.payload()).unwrap() == h.checksum
}

#[test]
fn inserting_a_header_of_either_parity_gives_the_checksum_of_a_full_recomputation() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..20_000 {
        let plen = rng.below(1461) as usize;
        let payload: Vec<u8> = (0..plen).map(|_| rng.next() as u8).collect();
        let pkt = segment(&mut rng, &payload, i % 3 != 0);
        assert!(checksums_ok(&pkt));
        let v2 = i % 4 == 0;
        let src = (rng.next() as u32).to_be_bytes();
        let dst = (rng.next() as u32).to_be_bytes();
        let hdr = built(v2, src, dst, rng.next() as u16, rng.next() as u16);
        let out = insert(&pkt, &hdr);
        assert!(checksums_ok(&out), "payload {plen}, header {}", hdr.len());
        // The segment's own bytes are intact behind the header.
        let sliced = SlicedPacket::from_ip(&out).unwrap();
        let Some(TransportSlice::Tcp(t)) = sliced.transport else {
            panic!()
        };
        assert_eq!(&t.payload()[..hdr.len()], &hdr[..]);
        assert_eq!(&t.payload()[hdr.len()..], &payload[..]);
    }
}

#[test]
fn a_segment_with_a_bad_checksum_keeps_a_bad_one() {
    let mut rng = Rng(99);
    for i in 0..5000 {
        let plen = 1 + rng.below(600) as usize;
        let payload: Vec<u8> = (0..plen).map(|_| rng.next() as u8).collect();
        let mut pkt = segment(&mut rng, &payload, false);
        let last = pkt.len() - 1;
        pkt[last] ^= 0x5a;
        let hdr = built(i % 2 == 0, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        assert!(!checksums_ok(&insert(&pkt, &hdr)));
    }
}

fn flow(isn1: u32, h: u8) -> FlowEntry {
    FlowEntry {
        proxy_len: h,
        ack: [0, isn1],
        state: crate::conntrack::State::Established as u8,
        ..FlowEntry::default()
    }
}

#[test]
fn the_step_of_each_client_segment() {
    use crate::conntrack::tcp_flags::*;
    for isn1 in [1000u32, 0, u32::MAX, u32::MAX - 5] {
        let e = flow(isn1, 28);
        let isn = isn1.wrapping_sub(1);
        assert_eq!(forward(&flow(isn1, 0), isn1, ACK, 10), step::KEEP);
        let mut unknown = flow(isn1, 0);
        unknown.proxy = FlowEntry::PROXY_V1;
        assert_eq!(
            forward(&unknown, isn1, ACK, 0),
            step::INSERT,
            "length first"
        );
        // The SYN, retransmitted or not; with data (Fast Open) it is refused.
        assert_eq!(forward(&e, isn, SYN, 0), step::KEEP);
        assert_eq!(forward(&e, isn, SYN, 5), step::REFUSE);
        // The first payload byte: data, or a FIN without any.
        assert_eq!(forward(&e, isn1, ACK | PSH, 10), step::INSERT);
        assert_eq!(forward(&e, isn1, ACK | FIN, 0), step::INSERT);
        // A pure ACK or RST there, a keepalive below it: as they are.
        assert_eq!(forward(&e, isn1, ACK, 0), step::KEEP);
        assert_eq!(forward(&e, isn1, RST, 0), step::KEEP);
        assert_eq!(forward(&e, isn, ACK, 0), step::KEEP);
        assert_eq!(forward(&e, isn, ACK, 1), step::KEEP);
        // Past it: shifted.
        assert_eq!(forward(&e, isn1.wrapping_add(1), ACK, 10), step::SHIFT);
        assert_eq!(
            forward(&e, isn1.wrapping_add(5000), ACK | FIN, 0),
            step::SHIFT
        );
        // Reaching over it from below: refused.
        assert_eq!(forward(&e, isn, ACK, 2), step::REFUSE);
        assert_eq!(forward(&e, isn1.wrapping_sub(100), ACK, 500), step::REFUSE);
        // Before the node answered, no bytes.
        let mut pending = e;
        pending.state = crate::conntrack::State::SynSent as u8;
        assert_eq!(forward(&pending, isn1, ACK | PSH, 10), step::REFUSE);
        assert_eq!(forward(&pending, isn1, ACK | FIN, 0), step::REFUSE);
        assert_eq!(forward(&pending, isn1, ACK, 0), step::KEEP);
        // Once the node acknowledged the header, everything is shifted.
        let mut a = e;
        a.proxy |= FlowEntry::PROXY_ACKED;
        assert_eq!(forward(&a, isn1, ACK, 10), step::SHIFT);
    }
}

#[test]
fn node_numbers_map_back_to_the_clients() {
    for isn1 in [1000u32, u32::MAX - 3] {
        let e = flow(isn1, 28);
        let at = |o: u32| isn1.wrapping_add(o);
        assert_eq!(to_client(&e, isn1, at(0)), isn1);
        assert_eq!(to_client(&e, isn1, at(27)), isn1);
        assert_eq!(to_client(&e, isn1, at(28)), isn1);
        assert_eq!(to_client(&e, isn1, at(128)), at(100));
        assert_eq!(
            to_client(&e, isn1, isn1.wrapping_sub(1)),
            isn1.wrapping_sub(1)
        );
        let mut a = e;
        a.proxy |= FlowEntry::PROXY_ACKED;
        assert_eq!(to_client(&a, isn1, at(128)), at(100));
        // The node's acknowledgment of the header alone moves nothing yet.
        let mut m = e;
        m.ack[1] = to_client(&e, isn1, at(28));
        assert!(!now_acked(&m, isn1));
        m.ack[1] = to_client(&e, isn1, at(29));
        assert!(now_acked(&m, isn1));
    }
}

/// A model of a connection through the edge: a client sends a stream in random segments
/// (retransmissions, overlaps, collapsed resends, keepalives, forged overlaps from below), the
/// edge maps each one, the node acknowledges what it has and the edge maps that back (at times
/// a client segment races the `PROXY_ACKED` bit). Every byte the node gets at or past its
/// RCV.NXT is the byte of header ‖ stream at that position, and the node ends up with all of it.
#[test]
fn the_node_always_reads_the_header_then_the_clients_bytes() {
    use crate::conntrack::tcp_flags::*;
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    for round in 0..1000 {
        let v2 = round % 2 == 0;
        let hdr = built(v2, [203, 0, 113, 7], [198, 51, 100, 1], 40001, 5100);
        let h = hdr.len() as u32;
        let n = 1 + rng.below(3000) as usize;
        let mut data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if round % 5 == 0 {
            // A client that sends a PROXY header of its own.
            let fake = b"PROXY TCP4 6.6.6.6 7.7.7.7 1 2\r\n";
            data[..fake.len().min(n)].copy_from_slice(&fake[..fake.len().min(n)]);
        }
        let mut want = hdr.clone();
        want.extend_from_slice(&data);
        let isn1 = if round % 3 == 0 {
            u32::MAX - rng.below(2000) as u32
        } else {
            rng.next() as u32
        };
        let mut e = flow(isn1, h as u8);
        let mut node_nxt: u32 = 0; // node's RCV.NXT, as an offset from isn1
        let mut ofo: Vec<Option<u8>> = vec![None; want.len()];
        let mut got: Vec<u8> = Vec::new();
        let mut pending_acked = false;
        let mut steps = 0;
        while (got.len() < want.len()) && steps < 10_000 {
            steps += 1;
            // The client's SND.UNA in its own numbering (offset from isn1).
            let una = e.ack[1].wrapping_sub(isn1) as usize;
            let kind = rng.below(10);
            let (off, len, flags): (i64, usize, u8) = match kind {
                0 => (-1, 0, ACK),         // keepalive at ISN
                1 => (una as i64, 0, ACK), // pure ACK
                2 => (-(rng.below(50) as i64) - 1, 1 + rng.below(80) as usize, ACK), // forged
                _ => {
                    // Data from anywhere between SND.UNA and the end, maybe from the start.
                    let from = if rng.below(4) == 0 {
                        0
                    } else {
                        una + rng.below((n - una.min(n) + 1) as u64) as usize
                    };
                    let from = from.min(n);
                    let len = (1 + rng.below(1400) as usize).min(n - from);
                    (from as i64, len, ACK | PSH)
                }
            };
            if len == 0 && kind > 2 {
                continue;
            }
            let seq = isn1.wrapping_add(off as u32);
            // The race: the node's acknowledgment moved ack[1], the bit is not set yet.
            let step = forward(&e, seq, flags, len as u32);
            if pending_acked {
                e.proxy |= FlowEntry::PROXY_ACKED;
                pending_acked = false;
            }
            let (node_off, bytes): (i64, Vec<u8>) = match step {
                step::REFUSE => continue,
                step::KEEP => (off, slice(&data, off, len)),
                step::SHIFT => (off + h as i64, slice(&data, off, len)),
                step::INSERT => {
                    assert_eq!(off, 0);
                    let mut b = hdr.clone();
                    b.extend_from_slice(&slice(&data, 0, len));
                    (0, b)
                }
                _ => unreachable!(),
            };
            // Bytes at or past RCV.NXT must be the right ones.
            for (i, &b) in bytes.iter().enumerate() {
                let pos = node_off + i as i64;
                if pos >= node_nxt as i64 && (pos as usize) < want.len() {
                    assert_eq!(
                        b, want[pos as usize],
                        "round {round}: node byte {pos} wrong (step {step}, off {off}, len {len})"
                    );
                    ofo[pos as usize].get_or_insert(b);
                }
            }
            while (node_nxt as usize) < want.len() && ofo[node_nxt as usize].is_some() {
                got.push(ofo[node_nxt as usize].unwrap());
                node_nxt += 1;
            }
            // The node acknowledges; the edge maps it back, as the tracker would take it.
            let isn1_before = e.ack[1];
            let isn1_seen = if e.proxy & FlowEntry::PROXY_ACKED == 0 {
                isn1_before
            } else {
                isn1
            };
            let a = to_client(&e, isn1_seen, isn1.wrapping_add(node_nxt));
            if a.wrapping_sub(e.ack[1]) as i32 > 0 {
                e.ack[1] = a;
            }
            if now_acked(&e, isn1_seen) {
                if rng.below(3) == 0 {
                    pending_acked = true;
                } else {
                    e.proxy |= FlowEntry::PROXY_ACKED;
                }
            }
        }
        assert_eq!(got, want, "round {round}");
    }
}

fn slice(data: &[u8], off: i64, len: usize) -> Vec<u8> {
    // Below the first payload byte: anything (the SYN's number, a forger's bytes); the node
    // must never take them. From it on, the client's own bytes.
    (0..len as i64)
        .map(|i| {
            let at = off + i;
            if at < 0 {
                0xee
            } else {
                *data.get(at as usize).unwrap_or(&0xee)
            }
        })
        .collect()
}

/// The entry program's shift (`acked_shift`, no step decided) is the one `forward` decides
/// for every established non-SYN segment of a flow whose node acknowledged the header, and
/// nothing on other flows (which the entry hands on or sends as they are).
#[test]
fn the_entrys_shift_is_forwards_on_acknowledged_flows_and_none_elsewhere() {
    use crate::conntrack::tcp_flags::*;
    let mut rng = Rng(24);
    for _ in 0..10_000 {
        let isn1 = rng.next() as u32;
        let h = [28u8, 32, 56, 104][rng.below(4) as usize];
        let mut e = flow(isn1, h);
        e.proxy = FlowEntry::PROXY_V2;
        // Every state a flow past its handshake can be in, plain or a cookie flow.
        use crate::conntrack::State::*;
        e.state = [Established, Closing, Closed][rng.below(3) as usize] as u8;
        if rng.below(2) == 0 {
            e.flags |= FlowEntry::TRANSLATE;
        }
        let seq = rng.next() as u32;
        let flags = [ACK, ACK | PSH, ACK | FIN, RST, ACK | RST][rng.below(5) as usize];
        let len = [0u32, 1, 1400][rng.below(3) as usize];
        assert_eq!(acked_shift(e.proxy, e.proxy_len), 0, "not acknowledged yet");
        e.proxy |= FlowEntry::PROXY_ACKED;
        assert_eq!(forward(&e, seq, flags, len), step::SHIFT);
        assert_eq!(acked_shift(e.proxy, e.proxy_len), h as u32);
    }
    assert_eq!(acked_shift(0, 0), 0, "a flow without PROXY protocol");
}
