//! The verdict reason counted for every packet: one counter per outcome, so every drop and pass
//! decision can be told apart in `wklb stats`. `Reason::kind` maps each reason to what happens to
//! the packet, in this one place.

/// What the program does with a packet counted under a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Transmitted by the program (XDP_TX or a redirect).
    Sent,
    /// Handed to the kernel (XDP_PASS).
    Pass,
    /// Dropped (XDP_DROP).
    Drop,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $kind:ident;)+) => {
        /// Index into the REASONS per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name used in stats output and metrics labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)+
                }
            }

            pub const fn kind(self) -> Kind {
                match self {
                    $(Reason::$variant => Kind::$kind,)+
                }
            }
        }
    };
}

reasons! {
    /// Client → backend packet rewritten and sent.
    Forwarded = "forwarded", Sent;
    /// Backend → client reply translated back and sent.
    Reversed = "reversed", Sent;
    /// Client → backend RST or FIN whose sequence number the backend would not accept: sent
    /// (the backend decides), but the flow keeps its state and timeout.
    ForwardedOutOfWindow = "forwarded_rst_fin_out_of_window", Sent;
    /// The same for a backend → client RST or FIN.
    ReversedOutOfWindow = "reversed_rst_fin_out_of_window", Sent;
    /// ICMP echo request to a VIP address, answered by the data path.
    IcmpEchoReplied = "icmp_echo_replied", Sent;
    /// ICMP error about a packet the edge sent to a backend, translated and sent to the client.
    IcmpErrorToClient = "icmp_error_to_client", Sent;
    /// ICMP error about a packet the edge sent to a client, translated and sent to the backend.
    IcmpErrorToBackend = "icmp_error_to_backend", Sent;
    /// Too big for the egress MTU with DF set: the edge sent fragmentation-needed to the sender.
    IcmpFragNeededSent = "icmp_frag_needed_sent", Sent;
    /// SYN to a VIP in cookie mode: answered by the edge with a cookie SYN-ACK, nothing kept.
    SynCookieSent = "syn_cookie_sent", Sent;
    /// Client ACK with a valid cookie: the flow was created and became the SYN to its backend.
    SynCookieAccepted = "syn_cookie_accepted", Sent;
    /// Client segment of a cookie flow before its backend answered: its data is dropped (the
    /// client sends it again) and the SYN to the backend is repeated in its place.
    SynCookieSynRepeated = "syn_cookie_syn_repeated", Sent;
    /// The backend's SYN-ACK on a cookie flow: answered by the edge with the handshake's ACK.
    SynCookieBackendAcked = "syn_cookie_backend_acked", Sent;
    /// Not IPv4 (ARP, IPv6, LLDP, ...).
    PassNotIpv4 = "pass_not_ipv4", Pass;
    /// Destination is neither a VIP (address, port, protocol) nor a SNAT address.
    PassNotOurs = "pass_not_ours", Pass;
    /// Header too short to tell whether it is ours.
    PassUnparsable = "pass_unparsable", Pass;
    /// ICMP to a VIP or SNAT address that is not about one of our flows (or echo answering is
    /// off): the host's business.
    PassIcmp = "pass_icmp", Pass;
    /// Fragment the kernel may own: a first fragment to a non-VIP port, a later fragment to an
    /// address without an any-port VIP, or any fragment to a SNAT address.
    PassFragment = "pass_fragment", Pass;
    /// To a SNAT address and port whose slot holds no flow from that sender: the host's own.
    PassReplyNoFlow = "pass_reply_no_flow", Pass;
    /// Translated, but the next hop has no neighbour entry yet: the kernel resolves and sends it.
    PassNoNeighbor = "pass_no_neighbor", Pass;
    /// Translated, bigger than the egress MTU, DF clear: the kernel fragments and sends it.
    PassTooBig = "pass_too_big", Pass;
    /// Translated, but the route leaves through an interface wklb does not run on: the kernel
    /// sends it (add the interface to daemon.interfaces for the fast path).
    PassUnmanagedEgress = "pass_unmanaged_egress", Pass;
    /// TCP non-SYN without state, passed by policy (`non_syn_policy = "pass"`).
    PassNonSynNoState = "pass_non_syn_no_state", Pass;
    /// Truncated or invalid header (bad IHL, short L4 header) aimed at a VIP.
    DropMalformed = "drop_malformed", Drop;
    /// Fragment for a VIP port (or to an any-port VIP address): no ports to balance on.
    DropFragment = "drop_fragment", Drop;
    /// TTL would reach 0 when forwarded.
    DropTtlExpired = "drop_ttl_expired", Drop;
    /// SYN together with RST or FIN.
    DropBadTcpFlags = "drop_bad_tcp_flags", Drop;
    /// VIP has no backend in its table.
    DropNoBackend = "drop_no_backend", Drop;
    /// TCP non-SYN without state, dropped by policy (default).
    DropNonSynNoState = "drop_non_syn_no_state", Drop;
    /// Connection table full: new flow refused (established flows are never evicted).
    DropConntrackFull = "drop_conntrack_full", Drop;
    /// No free SNAT port within the retry bound.
    DropSnatExhausted = "drop_snat_exhausted", Drop;
    /// No SNAT address configured.
    DropNoSnatAddress = "drop_no_snat_address", Drop;
    /// bpf_fib_lookup found no route (or forwarding is disabled on the interface).
    DropFibFailed = "drop_fib_failed", Drop;
    /// Too big for the egress MTU with DF set and too short to quote in an ICMP error.
    DropTooBig = "drop_too_big", Drop;
    /// A map holds something the daemon never writes (a SNAT index beyond the flow table):
    /// a bug; counted instead of aborting.
    DropInternal = "drop_internal", Drop;
    /// Client ACK without a flow to a VIP in cookie mode whose cookie did not check out
    /// (forged, or older than its two counter periods).
    DropSynCookieInvalid = "drop_syn_cookie_invalid", Drop;
    /// Backend segment of a cookie flow before its SYN-ACK (nothing the client could use).
    DropSynCookiePending = "drop_syn_cookie_pending", Drop;
    /// New connection from a source on the VIP's deny list.
    DropSourceDenied = "drop_source_denied", Drop;
    /// New connection over the VIP's per-source rate.
    DropSourceRateLimited = "drop_source_rate_limited", Drop;
    /// New connection from a source at the VIP's concurrent-connection limit.
    DropSourceConnLimit = "drop_source_conn_limit", Drop;
    /// A backend answered a cookie flow's SYN with an ACK of an older connection (a challenge
    /// ACK): the edge, as the client would, answered it with a RST at that acknowledgment.
    SynCookieBackendReset = "syn_cookie_backend_reset", Sent;
    /// A packet to a VIP from one of our own addresses (a VIP or SNAT address): no flow can
    /// have it as its client.
    DropOwnSource = "drop_own_source", Drop;
    /// A new flow of a VIP holding more than its share of the flow table or of its SNAT
    /// family's ports, while that table or pool is over 90% full.
    DropVipOverShare = "drop_vip_over_share", Drop;
}

impl Reason {
    /// Rare outcomes an operator should hear about when they happen (a full table, an exhausted
    /// SNAT range, a missing route, a bug), not only see in a counter later.
    pub const fn is_event(self) -> bool {
        matches!(
            self,
            Reason::DropConntrackFull
                | Reason::DropSnatExhausted
                | Reason::DropNoSnatAddress
                | Reason::DropFibFailed
                | Reason::DropInternal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_rare_drops() {
        for r in Reason::ALL.iter().filter(|r| r.is_event()) {
            assert_eq!(r.kind(), Kind::Drop, "{}", r.name());
        }
        assert!(!Reason::Forwarded.is_event() && !Reason::PassNotOurs.is_event());
    }

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
        let mut names: std::vec::Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn names_say_what_happens() {
        for r in Reason::ALL {
            let n = r.name();
            match r.kind() {
                Kind::Pass => assert!(n.starts_with("pass_"), "{n}"),
                Kind::Drop => assert!(n.starts_with("drop_"), "{n}"),
                Kind::Sent => assert!(!n.starts_with("pass_") && !n.starts_with("drop_"), "{n}"),
            }
        }
    }
}
