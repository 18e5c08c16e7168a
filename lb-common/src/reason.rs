//! The verdict reason counted for every packet: one counter per outcome, so every drop and pass
//! decision can be told apart in `wklb stats`.

/// Index into the REASONS per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Client → backend packet rewritten and sent.
    Forwarded = 0,
    /// Backend → client reply translated back and sent.
    Reversed,
    /// Not IPv4 (ARP, IPv6, LLDP, ...): passed.
    PassNotIpv4,
    /// Destination is no VIP (address, port, protocol) and no SNAT flow: passed.
    PassNotOurs,
    /// Header too short to tell whether it is ours: passed.
    PassUnparsable,
    /// ICMP to a VIP address: passed to the kernel.
    PassIcmp,
    /// Translated, but the next hop has no neighbour entry yet: passed so the kernel resolves it.
    PassNoNeighbor,
    /// TCP non-SYN without state, passed by policy (`NON_SYN_PASS`).
    PassNonSynNoState,
    /// Truncated or invalid header (bad IHL, short L4 header) aimed at a VIP.
    DropMalformed,
    /// IPv4 fragment aimed at a VIP (L4 ports only in the first fragment).
    DropFragment,
    /// TTL would reach 0 when forwarded.
    DropTtlExpired,
    /// VIP has no backend in its table.
    DropNoBackend,
    /// TCP non-SYN without state, dropped by policy (default).
    DropNonSynNoState,
    /// Connection table full: new flow refused (established flows are never evicted).
    DropConntrackFull,
    /// No free SNAT port toward the chosen backend within the retry bound.
    DropSnatExhausted,
    /// No SNAT address configured.
    DropNoSnatAddress,
    /// bpf_fib_lookup found no route (or forwarding is disabled on the interface).
    DropFibFailed,
    /// Reply matched a reverse entry whose forward entry is gone (expiry race).
    DropReverseOrphan,
    /// A map that must hold an entry did not (should never happen; counted, not aborted).
    DropInternal,
    /// XDP redirect to the egress interface failed.
    DropRedirectFailed,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropRedirectFailed as u32 + 1;

    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::Forwarded,
        Reason::Reversed,
        Reason::PassNotIpv4,
        Reason::PassNotOurs,
        Reason::PassUnparsable,
        Reason::PassIcmp,
        Reason::PassNoNeighbor,
        Reason::PassNonSynNoState,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropTtlExpired,
        Reason::DropNoBackend,
        Reason::DropNonSynNoState,
        Reason::DropConntrackFull,
        Reason::DropSnatExhausted,
        Reason::DropNoSnatAddress,
        Reason::DropFibFailed,
        Reason::DropReverseOrphan,
        Reason::DropInternal,
        Reason::DropRedirectFailed,
    ];

    /// Stable snake_case name used in stats output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::Reversed => "reversed",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotOurs => "pass_not_ours",
            Reason::PassUnparsable => "pass_unparsable",
            Reason::PassIcmp => "pass_icmp",
            Reason::PassNoNeighbor => "pass_no_neighbor",
            Reason::PassNonSynNoState => "pass_non_syn_no_state",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropTtlExpired => "drop_ttl_expired",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNonSynNoState => "drop_non_syn_no_state",
            Reason::DropConntrackFull => "drop_conntrack_full",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropNoSnatAddress => "drop_no_snat_address",
            Reason::DropFibFailed => "drop_fib_failed",
            Reason::DropReverseOrphan => "drop_reverse_orphan",
            Reason::DropInternal => "drop_internal",
            Reason::DropRedirectFailed => "drop_redirect_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
    }
}
