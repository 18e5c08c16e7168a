//! Packet construction and checking with etherparse.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x02];
pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// A TCP segment with every field the tests care about.
#[derive(Clone, Debug)]
pub struct Seg<'a> {
    pub flags: &'a str,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// Raw option bytes (a multiple of 4).
    pub options: &'a [u8],
    pub payload: &'a [u8],
    pub ttl: u8,
}

impl Default for Seg<'_> {
    fn default() -> Self {
        Seg {
            flags: "A",
            seq: 1000,
            ack: 1,
            win: 64240,
            options: &[],
            payload: &[],
            ttl: 64,
        }
    }
}

/// A TCP segment in an Ethernet frame.
pub fn tcp_seg(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), s: &Seg) -> Vec<u8> {
    let ip =
        PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC).ipv4(src.0.octets(), dst.0.octets(), s.ttl);
    tcp_over(ip, src.1, dst.1, s)
}

/// The TCP segment `s` from `sport` to `dport` over an IP header of either family.
fn tcp_over(
    ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    s: &Seg,
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, s.seq, s.win);
    for f in s.flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(s.ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("unknown TCP flag {f}"),
        };
    }
    if !s.options.is_empty() {
        b = b.options_raw(s.options).expect("options");
    }
    let mut out = Vec::new();
    b.write(&mut out, s.payload).expect("build tcp");
    out
}

/// An IPv6 TCP segment from `src` to `dst` (traffic class `tc`, hop limit `s.ttl`).
pub fn tcp6_seg(src: ([u8; 16], u16), dst: ([u8; 16], u16), tc: u8, s: &Seg) -> Vec<u8> {
    let ip = etherparse::IpHeaders::Ipv6(
        etherparse::Ipv6Header {
            traffic_class: tc,
            hop_limit: s.ttl,
            source: src.0,
            destination: dst.0,
            ..Default::default()
        },
        Default::default(),
    );
    tcp_over(
        PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC).ip(ip),
        src.1,
        dst.1,
        s,
    )
}

/// An IPv6 UDP datagram.
pub fn udp6(src: ([u8; 16], u16), dst: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC)
        .ipv6(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("build udp6");
    out
}

/// What an IPv6 output frame carries; `ok` when its L4 checksum is right.
#[derive(Debug)]
pub struct Seen6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub traffic_class: u8,
    pub hop_limit: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
    pub mss: Option<u16>,
    pub ok: bool,
}

pub fn inspect6(frame: &[u8]) -> Seen6 {
    let s = SlicedPacket::from_ethernet(frame).expect("output frame parses");
    let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net else {
        panic!("not ipv6")
    };
    let h = ip.header().to_header();
    let (src_port, dst_port, payload, ok, mss) = match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let th = t.to_header();
            let mss = th.options_iterator().flatten().find_map(|o| match o {
                etherparse::TcpOptionElement::MaximumSegmentSize(m) => Some(m),
                _ => None,
            });
            let ok = th.calc_checksum_ipv6(&h, t.payload()).unwrap() == th.checksum;
            (
                th.source_port,
                th.destination_port,
                t.payload().to_vec(),
                ok,
                mss,
            )
        }
        Some(TransportSlice::Udp(u)) => {
            let uh = u.to_header();
            let ok = uh.calc_checksum_ipv6(&h, u.payload()).unwrap() == uh.checksum;
            (
                uh.source_port,
                uh.destination_port,
                u.payload().to_vec(),
                ok,
                None,
            )
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen6 {
        src: h.source,
        dst: h.destination,
        traffic_class: h.traffic_class,
        hop_limit: h.hop_limit,
        src_port,
        dst_port,
        payload,
        mss,
        ok,
    }
}

/// A TCP segment with default sequence numbers (seq 1000, ack 1).
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp_seg(
        src,
        dst,
        &Seg {
            flags,
            payload,
            ..Seg::default()
        },
    )
}

pub fn tcp_ttl(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: &str,
    payload: &[u8],
    ttl: u8,
) -> Vec<u8> {
    tcp_seg(
        src,
        dst,
        &Seg {
            flags,
            payload,
            ttl,
            ..Seg::default()
        },
    )
}

pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("build udp");
    out
}

/// An ICMP echo request.
pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, EDGE_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// An ICMP error (`icmp_type`, `code`, 4 bytes of rest-of-header) from `src` to `dst` quoting
/// the first `quote` bytes of `about` (an Ethernet frame; its IP packet is quoted).
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    about: &[u8],
    quote: usize,
) -> Vec<u8> {
    let ip = &about[14..];
    let quoted = &ip[..quote.min(ip.len())];
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut hdr = Ipv4Header::new(
        icmp.len() as u16,
        64,
        IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    hdr.header_checksum = hdr.calc_header_checksum();
    let mut out = Vec::new();
    Ethernet2Header {
        source: CLIENT_MAC,
        destination: EDGE_MAC,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    hdr.write(&mut out).unwrap();
    out.extend_from_slice(&icmp);
    out
}

/// The Internet checksum of `data` (odd length padded with a zero byte), as it is written in
/// a header (big-endian value).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let native = etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement();
    u16::from_be_bytes(native.to_ne_bytes())
}

/// An ARP request frame (not IP at all).
pub fn arp_request() -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: CLIENT_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .write(&mut out)
    .unwrap();
    // htype 1, ptype IPv4, hlen 6, plen 4, op request, sender/target.
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[10, 10, 0, 2, 0, 0, 0, 0, 0, 0, 10, 10, 0, 1]);
    out
}

/// Inserts an 802.1Q tag (VLAN id `vid`) after the MAC addresses.
pub fn with_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Rebuilds an IPv4 TCP/UDP frame with `extra_words` 4-byte words of IP options (NOPs),
/// checksums fixed.
pub fn with_ip_options(frame: &[u8], extra_words: u8) -> Vec<u8> {
    let (eth, rest) = frame.split_at(14);
    let ihl = ((rest[0] & 0x0f) * 4) as usize;
    let mut hdr = Ipv4Header::from_slice(&rest[..ihl]).unwrap().0;
    let opts = vec![1u8; extra_words as usize * 4];
    hdr.options = opts.as_slice().try_into().unwrap();
    let payload = &rest[ihl..];
    hdr.total_len = (hdr.header_len() + payload.len()) as u16;
    hdr.header_checksum = hdr.calc_header_checksum();
    let mut out = eth.to_vec();
    hdr.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// Sets IP header fields (ToS, identification, DF) and fixes the header checksum.
pub fn with_ip_fields(frame: &[u8], tos: u8, id: u16, df: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[15] = tos;
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20] = if df { f[20] | 0x40 } else { f[20] & !0x40 };
    fix_ip_checksum(&mut f, 14);
    f
}

/// Recomputes the IPv4 header checksum of the header at `l3`.
pub fn fix_ip_checksum(f: &mut [u8], l3: usize) {
    let ihl = ((f[l3] & 0x0f) * 4) as usize;
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let c = internet_checksum(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// What a frame says, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub proto: IpNumber,
    pub payload: Vec<u8>,
    /// TCP: the MSS option, when present.
    pub mss: Option<u16>,
    pub seq: u32,
    pub ack: u32,
    /// IP header checksum and L4 checksum both verify against a full recomputation. A UDP
    /// checksum of 0 ("none") does not count as verified.
    pub checksums_ok: bool,
    /// UDP sent without a checksum (0).
    pub udp_checksum_absent: bool,
    /// The raw L4 checksum field.
    pub l4_checksum: u16,
}

/// Source MAC, destination MAC and VLAN id of a parsed Ethernet frame.
fn l2(s: &SlicedPacket) -> ([u8; 6], [u8; 6], Option<u16>) {
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &s.link else {
        panic!("no ethernet")
    };
    let vlan = s.vlan.as_ref().map(|v| match v {
        etherparse::VlanSlice::SingleVlan(v) => v.vlan_identifier().value(),
        etherparse::VlanSlice::DoubleVlan(v) => v.outer().vlan_identifier().value(),
    });
    (eth.source(), eth.destination(), vlan)
}

pub fn inspect(frame: &[u8]) -> Seen {
    let s = SlicedPacket::from_ethernet(frame).expect("output frame parses");
    let (eth_src, eth_dst, vlan) = l2(&s);
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not ipv4")
    };
    let hdr = ip.header().to_header();
    let mut ok = hdr.calc_header_checksum() == hdr.header_checksum;
    let mut mss = None;
    let (mut seq, mut ack, mut absent) = (0, 0, false);
    let (sp, dp, payload, csum) = match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            ok &= h.calc_checksum_ipv4(&hdr, t.payload()).unwrap() == h.checksum;
            for o in h.options_iterator().flatten() {
                if let etherparse::TcpOptionElement::MaximumSegmentSize(m) = o {
                    mss = Some(m);
                }
            }
            seq = h.sequence_number;
            ack = h.acknowledgment_number;
            (
                h.source_port,
                h.destination_port,
                t.payload().to_vec(),
                h.checksum,
            )
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            absent = h.checksum == 0;
            ok &= !absent && h.calc_checksum_ipv4(&hdr, u.payload()).unwrap() == h.checksum;
            (
                h.source_port,
                h.destination_port,
                u.payload().to_vec(),
                h.checksum,
            )
        }
        _ => (0, 0, Vec::new(), 0),
    };
    Seen {
        eth_src,
        eth_dst,
        vlan,
        src: Ipv4Addr::from(hdr.source),
        dst: Ipv4Addr::from(hdr.destination),
        src_port: sp,
        dst_port: dp,
        ttl: hdr.time_to_live,
        tos: (hdr.dscp.value() << 2) | hdr.ecn.value(),
        id: hdr.identification,
        df: hdr.dont_fragment,
        proto: hdr.protocol,
        payload,
        mss,
        seq,
        ack,
        checksums_ok: ok,
        udp_checksum_absent: absent,
        l4_checksum: csum,
    }
}

/// An ICMP message as seen: outer addresses, type/code/rest, and the quoted packet.
#[derive(Debug, Clone)]
pub struct SeenIcmp {
    pub vlan: Option<u16>,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub icmp_type: u8,
    pub code: u8,
    pub rest: [u8; 4],
    /// The quoted IP packet.
    pub quote: Vec<u8>,
    /// Outer IP checksum and ICMP checksum verify.
    pub checksums_ok: bool,
}

pub fn inspect_icmp(frame: &[u8]) -> SeenIcmp {
    let s = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let (eth_src, eth_dst, vlan) = l2(&s);
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not ipv4")
    };
    let hdr = ip.header().to_header();
    assert_eq!(hdr.protocol, IpNumber::ICMP, "not ICMP");
    let icmp = ip.payload().payload;
    let ok = hdr.calc_header_checksum() == hdr.header_checksum && internet_checksum(icmp) == 0;
    SeenIcmp {
        vlan,
        eth_src,
        eth_dst,
        src: Ipv4Addr::from(hdr.source),
        dst: Ipv4Addr::from(hdr.destination),
        ttl: hdr.time_to_live,
        icmp_type: icmp[0],
        code: icmp[1],
        rest: icmp[4..8].try_into().unwrap(),
        quote: icmp[8..].to_vec(),
        checksums_ok: ok,
    }
}

/// The addresses and ports of a quoted IPv4 TCP/UDP packet, and whether its IP header checksum
/// verifies (and its L4 checksum, when quoted whole).
pub fn quoted_tuple(q: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16, bool) {
    let ihl = ((q[0] & 0x0f) * 4) as usize;
    let ip_ok = internet_checksum(&q[..ihl]) == 0;
    let src = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
    let dst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
    let sp = u16::from_be_bytes([q[ihl], q[ihl + 1]]);
    let dp = u16::from_be_bytes([q[ihl + 2], q[ihl + 3]]);
    (src, sp, dst, dp, ip_ok)
}

/// A quoted IPv4 TCP packet's sequence and acknowledgment numbers (None: not quoted), and
/// whether its TCP checksum verifies (None: not quoted whole).
pub fn quoted_tcp(q: &[u8]) -> (Option<u32>, Option<u32>, Option<bool>) {
    let ihl = ((q[0] & 0x0f) * 4) as usize;
    let word = |at: usize| {
        q.get(ihl + at..ihl + at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let total = u16::from_be_bytes([q[2], q[3]]) as usize;
    let sum_ok = (q.len() >= total).then(|| {
        let mut d = Vec::new();
        d.extend_from_slice(&q[12..20]);
        d.extend_from_slice(&[0, 6]);
        d.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        d.extend_from_slice(&q[ihl..total]);
        internet_checksum(&d) == 0
    });
    (word(4), word(8), sum_ok)
}

/// Whether every checksum a frame carries verifies: the IPv4 header, the TCP/UDP checksum over
/// the pseudo-header (a UDP checksum of 0 means "none" and passes), the ICMP checksum and, for
/// ICMP errors, the quoted IP header. None when the frame is not a whole, unfragmented IPv4
/// packet whose checksums can be checked.
pub fn checksums_valid(frame: &[u8]) -> Option<bool> {
    let s = SlicedPacket::from_ethernet(frame).ok()?;
    if let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net {
        return checksums_valid6(&ip.header().to_header(), ip.payload().payload, &s.transport);
    }
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        return None;
    };
    let hdr = ip.header().to_header();
    if hdr.is_fragmenting_payload() {
        return None;
    }
    // Over the header's own bytes: etherparse's header has no reserved flag bit, so a checksum
    // recomputed from it passes a header whose reserved bit was flipped after it was summed.
    let ip_ok = internet_checksum(ip.header().slice()) == 0;
    let l4_ok = match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            h.calc_checksum_ipv4(&hdr, t.payload()).ok()? == h.checksum
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            h.checksum == 0 || h.calc_checksum_ipv4(&hdr, u.payload()).ok()? == h.checksum
        }
        Some(TransportSlice::Icmpv4(_)) | None if hdr.protocol == IpNumber::ICMP => {
            let icmp = ip.payload().payload;
            if icmp.len() < 8 {
                return None;
            }
            let quote_ok = match icmp[0] {
                // Errors quote an IP header: it must verify too when it is there whole.
                3 | 4 | 5 | 11 | 12 => {
                    let q = &icmp[8..];
                    let ihl = q.first().map_or(0, |b| ((b & 0x0f) * 4) as usize);
                    ihl < 20 || q.len() < ihl || internet_checksum(&q[..ihl]) == 0
                }
                _ => true,
            };
            internet_checksum(icmp) == 0 && quote_ok
        }
        // Other protocols (and L4 headers cut short): only the IP header.
        _ if matches!(hdr.protocol, IpNumber::TCP | IpNumber::UDP) => return None,
        _ => true,
    };
    Some(ip_ok && l4_ok)
}

/// A TCP segment's header as seen, options decoded (cookie fixtures check every field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpView {
    pub syn: bool,
    pub ack_flag: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// Header length in bytes.
    pub header_len: usize,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_ok: bool,
    pub ts: Option<(u32, u32)>,
    pub sack: Vec<(u32, u32)>,
    pub payload: Vec<u8>,
}

pub fn tcp_view(frame: &[u8]) -> TcpView {
    try_tcp_view(frame).expect("a TCP frame with well-formed options")
}

/// `tcp_view`, or None for anything else (not TCP, malformed options).
pub fn try_tcp_view(frame: &[u8]) -> Option<TcpView> {
    let s = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Tcp(t)) = &s.transport else {
        return None;
    };
    let h = t.to_header();
    let mut v = TcpView {
        syn: h.syn,
        ack_flag: h.ack,
        rst: h.rst,
        fin: h.fin,
        seq: h.sequence_number,
        ack: h.acknowledgment_number,
        win: h.window_size,
        header_len: h.header_len(),
        payload: t.payload().to_vec(),
        ..TcpView::default()
    };
    use etherparse::TcpOptionElement as O;
    for o in h.options_iterator() {
        match o.ok()? {
            O::MaximumSegmentSize(m) => v.mss = Some(m),
            O::WindowScale(w) => v.wscale = Some(w),
            O::SelectiveAcknowledgementPermitted => v.sack_ok = true,
            O::Timestamp(a, b) => v.ts = Some((a, b)),
            O::SelectiveAcknowledgement(first, rest) => {
                v.sack.push(first);
                v.sack.extend(rest.iter().flatten());
            }
            O::Noop => {}
        }
    }
    Some(v)
}

/// Option bytes: NOP, NOP, timestamps (12 bytes), what Linux puts on every segment.
pub fn ts_option(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&val.to_be_bytes());
    o.extend_from_slice(&ecr.to_be_bytes());
    o
}

/// What Linux puts on a SYN: MSS, SACK-permitted, timestamps, NOP, window scale (20 bytes).
pub fn linux_syn_options(mss: u16, ts_val: u32, ts_ecr: u32, wscale: u8) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2, 8, 10]);
    o.extend_from_slice(&ts_val.to_be_bytes());
    o.extend_from_slice(&ts_ecr.to_be_bytes());
    o.extend_from_slice(&[1, 3, 3, wscale]);
    o
}

/// IPv6: the TCP/UDP checksum (mandatory) or the ICMPv6 one (pseudo-header included); None for
/// anything else (extension headers, cut short).
fn checksums_valid6(
    h: &etherparse::Ipv6Header,
    payload: &[u8],
    transport: &Option<TransportSlice>,
) -> Option<bool> {
    match transport {
        Some(TransportSlice::Tcp(t)) => {
            let th = t.to_header();
            Some(th.calc_checksum_ipv6(h, t.payload()).ok()? == th.checksum)
        }
        Some(TransportSlice::Udp(u)) => {
            let uh = u.to_header();
            Some(uh.calc_checksum_ipv6(h, u.payload()).ok()? == uh.checksum)
        }
        _ if h.next_header == IpNumber::IPV6_ICMP && payload.len() >= 8 => {
            Some(icmp6_checksum_ok(h, payload))
        }
        _ => None,
    }
}

/// An ICMPv6 message's checksum over its pseudo-header and itself.
fn icmp6_checksum_ok(h: &etherparse::Ipv6Header, icmp: &[u8]) -> bool {
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&h.source);
    pseudo.extend_from_slice(&h.destination);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    internet_checksum(&pseudo) == 0
}

/// An ICMPv6 message the edge sent: addresses, type, code, the 4 bytes after the checksum (the
/// MTU of a Packet Too Big), the quoted packet, and whether its checksum (pseudo-header
/// included) verifies.
#[derive(Debug)]
pub struct SeenIcmp6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    pub icmp_type: u8,
    pub code: u8,
    pub rest: [u8; 4],
    pub quote: Vec<u8>,
    pub checksum_ok: bool,
}

pub fn inspect_icmp6(frame: &[u8]) -> SeenIcmp6 {
    let s = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net else {
        panic!("not ipv6")
    };
    let h = ip.header().to_header();
    assert_eq!(h.next_header, IpNumber::IPV6_ICMP, "not ICMPv6");
    let icmp = ip.payload().payload;
    SeenIcmp6 {
        src: h.source,
        dst: h.destination,
        hop_limit: h.hop_limit,
        icmp_type: icmp[0],
        code: icmp[1],
        rest: icmp[4..8].try_into().unwrap(),
        quote: icmp[8..].to_vec(),
        checksum_ok: icmp6_checksum_ok(&h, icmp),
    }
}

/// `frame` (untagged IPv6) with extension headers inserted after the fixed header: each
/// (type, length in 8-byte units beyond the first, fourth byte), chained to what followed.
pub fn with_ext(frame: &[u8], headers: &[(u8, u8, u8)]) -> Vec<u8> {
    let mut out = frame[..54].to_vec();
    let mut next = frame[20];
    let mut ext = Vec::new();
    for (i, (kind, units, fourth)) in headers.iter().enumerate() {
        let follows = headers.get(i + 1).map_or(next, |h| h.0);
        let mut h = vec![0u8; (*units as usize + 1) * 8];
        h[0] = follows;
        h[1] = *units;
        if *kind == 43 {
            h[3] = *fourth;
        } else {
            // PadN over the rest of the header.
            h[2] = 1;
            h[3] = (h.len() - 4) as u8;
        }
        ext.extend(h);
    }
    next = headers[0].0;
    out[20] = next;
    let plen = u16::from_be_bytes([out[18], out[19]]) + ext.len() as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend(ext);
    out.extend_from_slice(&frame[54..]);
    out
}
