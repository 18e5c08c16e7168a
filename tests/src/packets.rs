//! Packet construction and checking with etherparse.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x02];

/// A TCP segment in an Ethernet frame.
pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp_ttl(src, dst, flags, payload, 64)
}

pub fn tcp_ttl(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: &str,
    payload: &[u8],
    ttl: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, [0x02, 0, 0, 0, 0, 1])
        .ipv4(src.0.octets(), dst.0.octets(), ttl)
        .tcp(src.1, dst.1, 1000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("unknown TCP flag {f}"),
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build tcp");
    out
}

pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0x02, 0, 0, 0, 0, 1])
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("build udp");
    out
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

/// Rebuilds an IPv4 TCP/UDP frame with `extra` bytes of IP options (NOPs), checksums fixed.
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
    pub proto: IpNumber,
    pub payload: Vec<u8>,
    /// IP header checksum and L4 checksum both verify against a full recomputation.
    pub checksums_ok: bool,
}

pub fn inspect(frame: &[u8]) -> Seen {
    let s = SlicedPacket::from_ethernet(frame).expect("output frame parses");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = s.link else {
        panic!("no ethernet")
    };
    let vlan = s.vlan.as_ref().map(|v| match v {
        etherparse::VlanSlice::SingleVlan(v) => v.vlan_identifier().value(),
        etherparse::VlanSlice::DoubleVlan(v) => v.outer().vlan_identifier().value(),
    });
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not ipv4")
    };
    let hdr = ip.header().to_header();
    let mut ok = hdr.calc_header_checksum() == hdr.header_checksum;
    let (sp, dp, payload) = match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            ok &= h.calc_checksum_ipv4(&hdr, t.payload()).unwrap() == h.checksum;
            (h.source_port, h.destination_port, t.payload().to_vec())
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            ok &= h.checksum == 0 || h.calc_checksum_ipv4(&hdr, u.payload()).unwrap() == h.checksum;
            (h.source_port, h.destination_port, u.payload().to_vec())
        }
        _ => panic!("no tcp/udp"),
    };
    Seen {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        vlan,
        src: Ipv4Addr::from(hdr.source),
        dst: Ipv4Addr::from(hdr.destination),
        src_port: sp,
        dst_port: dp,
        ttl: hdr.time_to_live,
        proto: hdr.protocol,
        payload,
        checksums_ok: ok,
    }
}
