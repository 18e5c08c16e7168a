//! What the daemon reports over the control socket: serialisable, shared by daemon and CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataplane::links::Attachment;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackendReport {
    pub vip: String,
    pub address: String,
    pub port: u16,
    /// Its backend group (`default` unless the config names one).
    #[serde(default)]
    pub group: String,
    /// Current weight (0 = drained); `configured_weight` is what the config file says.
    pub weight: u32,
    pub configured_weight: u32,
    /// "up", "down" or "pending" (not probed enough yet).
    pub health: String,
    pub healthy: bool,
    /// In the VIP's live Maglev table.
    pub in_table: bool,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
    /// New connections it refused (a RST answering the SYN): seen by the data path at once,
    /// before any health probe fails.
    #[serde(default)]
    pub refused: u64,
    /// SYNs clients sent again while it had not answered (a silent backend shows this way).
    #[serde(default)]
    pub syn_retransmits: u64,
    /// Flows toward it that still carry data (handshake, established, UDP).
    pub active_flows: u64,
    /// Flows toward it that are closing or reset, waiting for their short timeout.
    pub closing_flows: u64,
    /// Round-trip time of the last health probe.
    pub probe_rtt_ms: Option<f64>,
    /// Edge ↔ backend round trips measured by the data path (SYN → SYN-ACK).
    #[serde(default)]
    pub backend_rtt: RttReport,
    /// Client ↔ edge round trips of this backend's new flows (SYN-ACK → first ACK).
    #[serde(default)]
    pub client_rtt: RttReport,
    pub last_probe_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VipReport {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    /// "normal", "starting" (no probe results yet: all backends), "fail_open" (every backend
    /// down: all of them anyway) or "empty" (all drained).
    pub table_mode: String,
    /// Every eligible backend is down, so all of them are kept in the table.
    pub fail_open: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend_drops: u64,
    pub active_flows: u64,
    /// Flows whose backend has not answered the SYN yet.
    pub half_open_flows: u64,
    pub backends_total: usize,
    pub backends_in_table: usize,
    /// SYN-cookie mode: "off", "auto" or "always".
    pub syn_cookies: String,
    /// SYNs are answered with cookies now (`always`, or `auto` under pressure).
    pub syn_cookies_active: bool,
    /// Backend groups in priority order: healthy share and share of new flows.
    #[serde(default)]
    pub groups: Vec<GroupReport>,
    /// Source prefixes pinned to groups.
    #[serde(default)]
    pub pins: Vec<PinReport>,
    /// Edge ↔ backend round trips of the VIP's handshakes, all backends together.
    #[serde(default)]
    pub backend_rtt: RttReport,
    /// Client ↔ edge round trips of the VIP's handshakes.
    #[serde(default)]
    pub client_rtt: RttReport,
    /// Unix seconds when `auto` mode last engaged or released (None: not since start).
    pub syn_cookies_since: Option<u64>,
    /// Initial SYNs the VIP admitted (not those its source policy refused).
    pub syns: u64,
    /// Handshakes clients completed on flows their SYN created (not counted for cookie flows:
    /// `cookies_valid` are those).
    pub handshakes: u64,
    pub cookies_sent: u64,
    pub cookies_valid: u64,
    pub cookies_invalid: u64,
    /// Entries on the deny and allow lists.
    pub deny_entries: usize,
    pub allow_entries: usize,
    /// New connections per second per source (0: no limit), and the burst.
    pub source_rate: u32,
    pub source_burst: u32,
    /// New connections refused by the deny list.
    pub denied: u64,
    /// New connections from allow-listed sources.
    pub allowed: u64,
    /// New connections refused by the per-source rate.
    pub rate_limited: u64,
    /// Concurrent connections per source (0: no limit).
    pub source_max_conns: u32,
    /// New connections refused because their source was at that limit.
    pub conn_limited: u64,
    /// The VIP's guaranteed flows (`vip.max_flows`; None: an even share).
    #[serde(default)]
    pub max_flows: Option<u32>,
    /// New flows refused because a pool was 90% full and the VIP held its share of it.
    #[serde(default)]
    pub over_share: u64,
    /// PROXY protocol toward the data nodes: "off", "v1" or "v2".
    #[serde(default)]
    pub proxy_protocol: String,
    /// PROXY protocol headers inserted (a retransmitted first segment counts again).
    #[serde(default)]
    pub proxy_headers: u64,
    /// Client segments not sent on PROXY flows: overlapping the first payload byte from
    /// below, or a SYN with data (TCP Fast Open).
    #[serde(default)]
    pub proxy_refused: u64,
    /// Segments of the data nodes whose SACK edges were mapped back past the header.
    #[serde(default)]
    pub proxy_sack_mapped: u64,
}

/// One deny or allow entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    pub vip: String,
    pub list: String,
    pub prefix: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnatReport {
    pub address: String,
    /// Takes new flows (false: removed from the config, draining).
    pub active: bool,
    pub flows: u64,
    /// Ports it offers (`port_max - port_min + 1`).
    pub ports: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    pub vips: Vec<VipReport>,
    pub backends: Vec<BackendReport>,
    /// Every verdict reason of the data path → packets.
    pub reasons: BTreeMap<String, u64>,
    /// Entries in the connection table, live and closing.
    pub flows: u64,
    pub active_flows: u64,
    pub max_flows: u32,
    pub expired_flows_total: u64,
    pub snat: Vec<SnatReport>,
    /// Where XDP runs and how it was attached.
    pub interfaces: Vec<Attachment>,
    /// What this edge announces (None: no `[announce]` section).
    #[serde(default)]
    pub edge: Option<EdgeReport>,
    /// The connection log (None: off).
    #[serde(default)]
    pub conn_log: Option<ConnLogReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnLogReport {
    /// The file, or "-" for standard output.
    pub path: String,
    /// Records written since the daemon started.
    pub opens: u64,
    pub closes: u64,
    /// Records that could not be written (disk full, permissions).
    pub write_errors: u64,
    /// Open records the data path lost to a full ring buffer (since the maps were created).
    pub lost: u64,
}

/// One backend group of a VIP.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupReport {
    pub name: String,
    pub priority: u32,
    /// Backends with weight > 0, and how many of them are healthy.
    pub backends: u32,
    pub healthy: u32,
    /// healthy / backends (0 when it has none).
    pub healthy_share: f64,
    /// Its priority level's health: healthy share × overprovisioning, capped at 1.
    pub level_health: f64,
    /// Share of new flows the table gives it now (0..1; all groups 0 in fail-open, where
    /// every backend shares).
    pub new_flow_share: f64,
    /// New flows its backends took so far (counted by the data path).
    pub new_flows: u64,
    /// Edge ↔ backend round trips through this group's backends.
    #[serde(default)]
    pub backend_rtt: RttReport,
}

/// A pinned set of source prefixes of a VIP.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PinReport {
    pub name: String,
    pub sources: Vec<String>,
    pub groups: Vec<String>,
    pub spill: bool,
    /// Backends in its table now (0: its clients are refused, or spill to the VIP's table).
    pub backends_in_table: usize,
    pub new_flows: u64,
    /// New connections refused because its groups had no backend.
    pub refused: u64,
    /// New flows sent to the VIP's table because its groups had no backend.
    pub spilled: u64,
    /// Client ↔ edge round trips of its clients' handshakes.
    #[serde(default)]
    pub client_rtt: RttReport,
}

/// Round-trip times the data path measured at TCP handshakes (since the backend was added).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RttReport {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The histogram (for /metrics; not in JSON).
    #[serde(skip)]
    pub hist: Option<Box<lb_common::rtt::RttRow>>,
}

impl RttReport {
    pub fn of(row: lb_common::rtt::RttRow) -> Self {
        let q = |q| lb_common::rtt::rtt_quantile_ns(&row.counts, q).map(|ns| ns / 1e6);
        RttReport {
            samples: row.counts.iter().sum(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            hist: Some(Box::new(row)),
        }
    }

    /// The sum of several histograms.
    pub fn sum<'a>(rows: impl Iterator<Item = &'a RttReport>) -> Self {
        let mut total = lb_common::rtt::RttRow::default();
        for r in rows {
            if let Some(h) = &r.hist {
                for (t, c) in total.counts.iter_mut().zip(h.counts.iter()) {
                    *t += c;
                }
            }
        }
        Self::of(total)
    }
}

/// `wklb edge status`: what this edge announces to its BGP daemon, and why.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EdgeReport {
    /// The kernel routing table holding the VIP routes.
    pub table: u32,
    pub drained: bool,
    /// Unix seconds when the edge was drained.
    pub drained_since: Option<u64>,
    /// "keep" or "withdraw".
    pub when_all_backends_down: String,
    pub addresses: Vec<AddressReport>,
    /// Open connections to the announced VIPs on this edge (what a drain waits for).
    pub open_flows: u64,
    /// The last failure to change the routing table (retried every tick), if it persists.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AddressReport {
    pub address: String,
    /// Its route is in the table (the BGP daemon advertises it).
    pub announced: bool,
    /// "serving", or why it is withdrawn (or not announced yet).
    pub why: String,
    pub vips: Vec<String>,
    /// Unix seconds of the last change between announced and withdrawn.
    pub since: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnReport {
    pub vip: String,
    pub protocol: String,
    pub client: String,
    pub backend: String,
    pub snat: String,
    pub state: String,
    pub age_secs: f64,
    pub idle_secs: f64,
}

/// A listing of connections, possibly cut to `--limit` rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnsReport {
    /// Connections matching the filters.
    pub total: u64,
    /// The first rows (by VIP, backend, client), at most the limit.
    pub conns: Vec<ConnReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookupReport {
    pub vip: String,
    pub client: String,
    pub flow_hash: u32,
    pub slot: u32,
    /// "address:port" of the backend a new flow gets, None when the table is empty.
    pub backend: Option<String>,
    /// An existing flow for this tuple, which wins over the table.
    pub existing_flow_backend: Option<String>,
    /// The pin covering the client, whose table decides (None: the VIP's table).
    #[serde(default)]
    pub pin: Option<String>,
    /// The group of the backend a new flow gets.
    #[serde(default)]
    pub group: Option<String>,
    /// What happens when the pin's groups have no backend: "refused" or "spilled".
    #[serde(default)]
    pub pin_outcome: Option<String>,
}
