//! Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! XDP has no skb checksum helpers, so every rewrite adjusts the IP and L4 checksums from the
//! words it changed. All words are taken *as stored in the packet* (native loads of network-order
//! bytes): the one's-complement sum is byte-order independent, so no swaps are needed as long as
//! the checksum field is read and written the same way.

/// Accumulates `~old + new` for every changed 16-bit word; `apply` folds it into a checksum.
/// One delta over the address change serves both the IP header and the L4 pseudo-header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta(u64);

impl CsumDelta {
    #[inline(always)]
    pub const fn new() -> Self {
        CsumDelta(0)
    }

    #[inline(always)]
    pub const fn replace16(self, old: u16, new: u16) -> Self {
        CsumDelta(self.0 + (!old) as u64 + new as u64)
    }

    /// A 16-bit field `offset` bytes into the checksummed data, as stored in the packet. At an
    /// odd offset the field straddles two checksum words and counts byte-swapped.
    #[inline(always)]
    pub const fn replace16_at(self, offset: usize, old: u16, new: u16) -> Self {
        if offset.is_multiple_of(2) {
            self.replace16(old, new)
        } else {
            self.replace16(old.swap_bytes(), new.swap_bytes())
        }
    }

    /// A 32-bit field (an IPv4 address) loaded natively from packet memory, at an even offset.
    /// Added whole: 2^16 ≡ 1 modulo 0xFFFF, so a 32-bit word and its complement count as the
    /// sum of their two 16-bit halves once folded (half the work of two `replace16`).
    #[inline(always)]
    pub const fn replace32(self, old: u32, new: u32) -> Self {
        CsumDelta(self.0 + (!old) as u64 + new as u64)
    }

    /// Four bytes as they sit in the packet.
    #[inline(always)]
    pub const fn replace_bytes4(self, old: [u8; 4], new: [u8; 4]) -> Self {
        self.replace32(u32::from_ne_bytes(old), u32::from_ne_bytes(new))
    }

    /// The accumulated, unfolded sum (to combine with sums computed elsewhere).
    #[inline(always)]
    pub const fn raw(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub const fn add(self, other: CsumDelta) -> Self {
        CsumDelta(self.0 + other.0)
    }

    /// The checksum after the accumulated changes.
    #[inline(always)]
    pub const fn apply(self, csum: u16) -> u16 {
        !fold((!csum) as u64 + self.0)
    }

    /// UDP over IPv4: 0 means "no checksum" and stays 0; a computed 0 is sent as 0xFFFF.
    #[inline(always)]
    pub const fn apply_udp(self, csum: u16) -> u16 {
        if csum == 0 {
            return 0;
        }
        let c = self.apply(csum);
        if c == 0 { 0xFFFF } else { c }
    }
}

/// Folds a 64-bit one's-complement sum to 16 bits (four rounds always suffice).
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use crate::test_rng::Rng;

    fn rd16(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }
    fn wr16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }

    /// Rewrites addresses, ports and TTL of an IPv4 packet (no Ethernet) the way the data path
    /// does, returning the packet with incrementally updated checksums.
    fn rewrite(pkt: &[u8], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = pkt.to_vec();
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        let old_src: [u8; 4] = p[12..16].try_into().unwrap();
        let old_dst: [u8; 4] = p[16..20].try_into().unwrap();
        let addr_delta = CsumDelta::new()
            .replace_bytes4(old_src, src)
            .replace_bytes4(old_dst, dst);
        let old_ttl_word = rd16(&p, 8);
        p[8] -= 1;
        let ip_delta = addr_delta.replace16(old_ttl_word, rd16(&p, 8));
        let ip_csum = ip_delta.apply(rd16(&p, 10));
        wr16(&mut p, 10, ip_csum);
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let l4 = ihl;
        let old_sport = rd16(&p, l4);
        let old_dport = rd16(&p, l4 + 2);
        let new_sport = sport.to_be();
        let new_dport = dport.to_be();
        wr16(&mut p, l4, new_sport);
        wr16(&mut p, l4 + 2, new_dport);
        let l4_delta = addr_delta
            .replace16(old_sport, new_sport)
            .replace16(old_dport, new_dport);
        if p[9] == 6 {
            let c = l4_delta.apply(rd16(&p, l4 + 16));
            wr16(&mut p, l4 + 16, c);
        } else {
            let c = l4_delta.apply_udp(rd16(&p, l4 + 6));
            wr16(&mut p, l4 + 6, c);
        }
        p
    }

    fn full_checksums_ok(p: &[u8]) -> bool {
        let sliced = SlicedPacket::from_ip(p).expect("parse");
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            return false;
        };
        let hdr = ip.header().to_header();
        if hdr.calc_header_checksum() != hdr.header_checksum {
            return false;
        }
        let payload = ip.payload().payload;
        match sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                let h = t.to_header();
                h.calc_checksum_ipv4(&hdr, t.payload()).unwrap() == h.checksum
            }
            Some(TransportSlice::Udp(u)) => {
                let h = u.to_header();
                if h.checksum == 0 {
                    return true;
                }
                h.calc_checksum_ipv4(&hdr, &payload[8..]).unwrap() == h.checksum
            }
            _ => false,
        }
    }

    /// A whole 32-bit word gives the checksum its two 16-bit halves would, extremes included.
    #[test]
    fn replace32_equals_two_replace16() {
        let mut rng = Rng(0x0DDC_0FFE_E15B_AD00);
        let extremes = [0u32, 0xFFFF_FFFF, 0xFFFF_0000, 0x0000_FFFF, 1, 0x8000_0000];
        for i in 0..20_000usize {
            let pick = |r: &mut Rng, k: usize| {
                if k.is_multiple_of(3) {
                    extremes[(r.next() % extremes.len() as u64) as usize]
                } else {
                    r.next() as u32
                }
            };
            let (old, new, csum) = (pick(&mut rng, i), pick(&mut rng, i / 3), rng.next() as u16);
            let halves = CsumDelta::new()
                .replace16((old >> 16) as u16, (new >> 16) as u16)
                .replace16(old as u16, new as u16);
            let whole = CsumDelta::new().replace32(old, new);
            assert_eq!(
                whole.apply(csum),
                halves.apply(csum),
                "old {old:#x} new {new:#x} csum {csum:#x}"
            );
            assert_eq!(whole.apply_udp(csum), halves.apply_udp(csum));
        }
    }

    #[test]
    fn incremental_matches_full_recomputation_on_random_packets() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for i in 0..5000 {
            let payload: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
            let ttl = 2 + (rng.next() % 250) as u8;
            let b = PacketBuilder::ipv4(rng.bytes4(), rng.bytes4(), ttl);
            let (sp, dp) = (rng.next() as u16, rng.next() as u16);
            let mut pkt = Vec::new();
            if i % 2 == 0 {
                b.tcp(sp, dp, rng.next() as u32, 1024)
                    .syn()
                    .write(&mut pkt, &payload)
                    .unwrap();
            } else {
                b.udp(sp, dp).write(&mut pkt, &payload).unwrap();
            }
            assert!(
                full_checksums_ok(&pkt),
                "fixture {i} built with bad checksums"
            );
            let out = rewrite(
                &pkt,
                rng.bytes4(),
                rng.bytes4(),
                rng.next() as u16,
                rng.next() as u16,
            );
            assert!(
                full_checksums_ok(&out),
                "packet {i}: incremental checksum disagrees"
            );
        }
    }

    #[test]
    fn a_field_at_an_odd_offset_updates_the_checksum_byte_swapped() {
        let mut rng = Rng(0x0dd0_ff5e);
        for _ in 0..2000 {
            let mut data: Vec<u8> = (0..24).map(|_| rng.next() as u8).collect();
            let sum = |d: &[u8]| !fold(d.chunks(2).map(|c| rd16(c, 0) as u64).sum());
            let before = sum(&data);
            let at = 1 + (rng.next() % 21) as usize;
            let old = rd16(&data, at);
            let new = rng.next() as u16;
            wr16(&mut data, at, new);
            let updated = CsumDelta::new().replace16_at(at, old, new).apply(before);
            let expected = sum(&data);
            // One's complement has two zeros; either is a valid checksum.
            let same = updated == expected
                || (updated | expected == 0xffff && updated ^ expected == 0xffff);
            assert!(same, "offset {at}: {updated:#06x} vs {expected:#06x}");
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
        assert_eq!(CsumDelta::new().replace16(1, 2).apply_udp(0), 0);
        // Find a delta whose result is 0 and check it is sent as 0xFFFF.
        let d = CsumDelta::new().replace16(0x0000, 0x0001);
        // apply(c) = !fold(!c + 0xFFFF + 1): with c = 1 that is !fold(0x1FFFE) = !0xFFFF = 0.
        let c = 1u16;
        assert_eq!(d.apply(c), 0);
        assert_eq!(d.apply_udp(c), 0xFFFF);
    }
}
