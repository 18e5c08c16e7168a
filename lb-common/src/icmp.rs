//! ICMPv4 constants and the choices the data path makes about ICMP.
//!
//! - Errors (destination unreachable incl. fragmentation needed, time exceeded, parameter
//!   problem) about a packet the edge translated are translated too, both ways, so path-MTU
//!   discovery works through the NAT. Toward the client the outer source is the VIP (the address
//!   the client talks to, which the edge's upstream already lets out); toward the backend it is
//!   the SNAT address. Addresses of routers inside the backend network never leak to clients,
//!   and anti-spoofing filters see the edge's own addresses.
//! - A packet too big for its egress with DF set is answered by the edge itself with a
//!   fragmentation-needed error quoting `QUOTE_LEN` bytes of it.
//! - Echo requests to a VIP address are answered by the data path (configurable).

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACH: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAM_PROBLEM: u8 = 12;

/// DEST_UNREACH code: fragmentation needed and DF set (the MTU is in bytes 6-7).
pub const FRAG_NEEDED: u8 = 4;

/// ICMP header length (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;

/// Bytes of the offending packet (from its IP header) quoted in errors the edge generates: more
/// than the 28 RFC 792 requires, so the L4 ports and TCP sequence survive IP options.
pub const QUOTE_LEN: usize = 96;

/// TTL of packets the edge originates.
pub const TTL: u8 = 64;

/// ICMPv6 (next header 58) types the data path answers or sends.
pub mod v6 {
    pub const NEXT_HEADER: u8 = 58;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Bytes of the offending packet quoted in a Packet Too Big the edge sends: its IPv6 header
    /// and 72 bytes of L4 (ports, sequence, options).
    pub const QUOTE_LEN: usize = 112;

    /// The IPv6 pseudo-header's length and next-header words of an ICMPv6 message of `len`
    /// bytes, as native 16-bit loads would see them (added to the checksum sum).
    pub const fn pseudo_tail_sum(len: u32) -> u64 {
        let l = len.to_be_bytes();
        u16::from_ne_bytes([l[0], l[1]]) as u64
            + u16::from_ne_bytes([l[2], l[3]]) as u64
            + u16::from_ne_bytes([0, NEXT_HEADER]) as u64
    }
}

/// Error types whose quoted packet the data path translates.
#[inline(always)]
pub const fn is_translated_error(icmp_type: u8) -> bool {
    icmp_type == DEST_UNREACH || icmp_type == TIME_EXCEEDED || icmp_type == PARAM_PROBLEM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_are_translated() {
        for t in [DEST_UNREACH, TIME_EXCEEDED, PARAM_PROBLEM] {
            assert!(is_translated_error(t));
        }
        for t in [ECHO_REPLY, ECHO_REQUEST, 5, 13, 255] {
            assert!(!is_translated_error(t));
        }
    }
}
