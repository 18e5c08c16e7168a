//! A stats report as metric families: per backend, VIP, group, pin, the edge, the connection
//! log and the data path's verdict reasons.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::BackendLabels;
use crate::report::{BackendReport, StatsReport, VipReport};

/// Encodes the report of the scrape in progress.
#[derive(Debug, Default)]
pub(super) struct ReportCollector {
    pub(super) report: Arc<Mutex<Option<StatsReport>>>,
}

fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type Field<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// Per-backend counters and gauges (labels `vip`, `backend`).
const BACKEND_COUNTERS: [Field<BackendReport, u64>; 7] = [
    (
        "wklb_backend_packets_in",
        "Packets client -> backend",
        |b| b.packets_in,
    ),
    ("wklb_backend_bytes_in", "L3 bytes client -> backend", |b| {
        b.bytes_in
    }),
    (
        "wklb_backend_packets_out",
        "Packets backend -> client",
        |b| b.packets_out,
    ),
    (
        "wklb_backend_bytes_out",
        "L3 bytes backend -> client",
        |b| b.bytes_out,
    ),
    (
        "wklb_backend_new_flows",
        "Flows created toward the backend",
        |b| b.new_flows,
    ),
    (
        "wklb_backend_refused",
        "New connections the backend refused (a RST answering the SYN), seen by the data path",
        |b| b.refused,
    ),
    (
        "wklb_backend_syn_retransmits",
        "SYNs clients sent again while the backend had not answered",
        |b| b.syn_retransmits,
    ),
];
const BACKEND_GAUGES: [Field<BackendReport, i64>; 5] = [
    (
        "wklb_backend_active_flows",
        "Flows toward the backend that carry data (handshake, established, UDP)",
        |b| b.active_flows as i64,
    ),
    (
        "wklb_backend_closing_flows",
        "Flows toward the backend that are closing or reset",
        |b| b.closing_flows as i64,
    ),
    (
        "wklb_backend_healthy",
        "1 when the backend passes its health check",
        |b| b.healthy as i64,
    ),
    ("wklb_backend_weight", "Current weight (0 = drained)", |b| {
        b.weight as i64
    }),
    (
        "wklb_backend_in_table",
        "1 when the backend is in the VIP's live Maglev table",
        |b| b.in_table as i64,
    ),
];
/// Per-VIP counters (label `vip`).
const VIP_COUNTERS: [Field<VipReport, u64>; 14] = [
    ("wklb_vip_packets", "Packets client -> VIP", |v| v.packets),
    ("wklb_vip_new_flows", "Flows created for the VIP", |v| {
        v.new_flows
    }),
    (
        "wklb_vip_no_backend_drops",
        "Packets dropped for want of a backend",
        |v| v.no_backend_drops,
    ),
    ("wklb_vip_syns", "Initial SYNs that reached the VIP", |v| {
        v.syns
    }),
    (
        "wklb_vip_syn_cookies_sent",
        "SYNs answered by the edge with a cookie SYN-ACK",
        |v| v.cookies_sent,
    ),
    (
        "wklb_vip_syn_cookies_valid",
        "Client ACKs whose cookie checked out (each created a flow)",
        |v| v.cookies_valid,
    ),
    (
        "wklb_vip_syn_cookies_invalid",
        "Client ACKs without a flow whose cookie did not check out",
        |v| v.cookies_invalid,
    ),
    (
        "wklb_vip_source_denied",
        "New connections refused by the VIP's deny list",
        |v| v.denied,
    ),
    (
        "wklb_vip_source_allowed",
        "New connections from sources on the VIP's allow list",
        |v| v.allowed,
    ),
    (
        "wklb_vip_source_rate_limited",
        "New connections refused by the VIP's per-source rate limit",
        |v| v.rate_limited,
    ),
    (
        "wklb_vip_source_conn_limited",
        "New connections refused because their source was at its concurrent-connection limit",
        |v| v.conn_limited,
    ),
    (
        "wklb_vip_over_share",
        "New flows refused because a connection table or SNAT pool was 90% full and the VIP held its share of it",
        |v| v.over_share,
    ),
    (
        "wklb_vip_proxy_headers",
        "PROXY protocol headers inserted toward the data nodes",
        |v| v.proxy_headers,
    ),
    (
        "wklb_vip_proxy_refused",
        "Client segments of PROXY flows not sent (overlapping the first payload byte, or a SYN with data)",
        |v| v.proxy_refused,
    ),
];

type NoLabels = Vec<(String, String)>;

fn one<V>(v: V) -> std::iter::Once<(NoLabels, V)> {
    std::iter::once((Vec::new(), v))
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.report.lock().map_err(|_| std::fmt::Error)?;
        let Some(s) = guard.as_ref() else {
            return Ok(());
        };
        encode_backends(&mut enc, s)?;
        encode_vips(&mut enc, s)?;
        encode_groups(&mut enc, s)?;
        encode_rtt(&mut enc, s)?;
        encode_edge(&mut enc, s)?;
        encode_conn_log(&mut enc, s)?;
        encode_data_plane(&mut enc, s)
    }
}

/// Handshake round trips measured by the data path, as Prometheus histograms: one bucket per
/// octave from 128 µs to about 1 s (merged from the data path's four per octave); the sum is
/// estimated from bucket midpoints.
fn encode_rtt(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let backend = |b: &BackendReport| BackendLabels {
        vip: b.vip.clone(),
        backend: format!("{}:{}", b.address, b.port),
    };
    let vip = |v: &VipReport| VipLabels {
        vip: v.name.clone(),
    };
    histogram_family(
        enc,
        "wklb_backend_handshake_rtt_seconds",
        "Edge to backend round trip of new TCP flows: forwarded SYN to the backend's SYN-ACK",
        s.backends.iter().map(|b| (backend(b), &b.backend_rtt)),
    )?;
    histogram_family(
        enc,
        "wklb_vip_backend_rtt_seconds",
        "Edge to backend round trip of the VIP's new TCP flows, all backends",
        s.vips.iter().map(|v| (vip(v), &v.backend_rtt)),
    )?;
    histogram_family(
        enc,
        "wklb_vip_client_rtt_seconds",
        "Client to edge round trip of the VIP's new TCP flows: SYN-ACK to the client's first ACK",
        s.vips.iter().map(|v| (vip(v), &v.client_rtt)),
    )?;
    histogram_family(
        enc,
        "wklb_group_backend_rtt_seconds",
        "Edge to backend round trip of new TCP flows through a backend group's backends",
        s.vips.iter().flat_map(|v| {
            v.groups.iter().map(move |g| {
                (
                    GroupLabels {
                        vip: v.name.clone(),
                        group: g.name.clone(),
                    },
                    &g.backend_rtt,
                )
            })
        }),
    )?;
    histogram_family(
        enc,
        "wklb_pin_client_rtt_seconds",
        "Client to edge round trip of a pin's clients' new TCP flows",
        s.vips.iter().flat_map(|v| {
            v.pins.iter().map(move |p| {
                (
                    PinLabels {
                        vip: v.name.clone(),
                        pin: p.name.clone(),
                    },
                    &p.client_rtt,
                )
            })
        }),
    )
}

fn histogram_family<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, &'a crate::report::RttReport)>,
) -> Result<(), std::fmt::Error> {
    use lb_common::rtt::{RTT_BUCKETS, rtt_bucket_floor_ns};
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, r) in rows {
        let Some(h) = &r.hist else { continue };
        let mut buckets = Vec::new();
        let mut from = 0usize;
        for edge in (24..RTT_BUCKETS).step_by(4) {
            let n = h.counts[from..edge].iter().sum();
            buckets.push((rtt_bucket_floor_ns(edge as u32) as f64 / 1e9, n));
            from = edge;
        }
        buckets.push((f64::MAX, h.counts[from..].iter().sum()));
        let sum: f64 = (0..RTT_BUCKETS)
            .map(|b| {
                let lo = rtt_bucket_floor_ns(b as u32) as f64;
                let hi = if b + 1 < RTT_BUCKETS {
                    rtt_bucket_floor_ns(b as u32 + 1) as f64
                } else {
                    lo
                };
                h.counts[b] as f64 * (lo + hi) / 2.0 / 1e9
            })
            .sum();
        m.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, r.samples, &buckets, None,
            )?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    vip: String,
    group: String,
}

/// Backend groups: health and the share of new flows each gets.
fn encode_groups(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let rows = || {
        s.vips.iter().flat_map(|v| {
            v.groups.iter().map(move |g| {
                (
                    GroupLabels {
                        vip: v.name.clone(),
                        group: g.name.clone(),
                    },
                    g,
                )
            })
        })
    };
    for (name, help, get) in [
        (
            "wklb_group_healthy_share",
            "Healthy share of the group's backends (0..1)",
            (|g: &crate::report::GroupReport| g.healthy_share) as fn(&_) -> f64,
        ),
        (
            "wklb_group_new_flow_share",
            "Share of new flows the VIP's table gives the group now (0..1)",
            |g| g.new_flow_share,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, g) in rows() {
            ConstGauge::new(get(g)).encode(m.encode_family(&labels)?)?;
        }
    }
    counter_family(
        enc,
        "wklb_group_new_flows",
        "New flows the group's backends took",
        rows().map(|(l, g)| (l, g.new_flows)),
    )?;
    let pins = || {
        s.vips.iter().flat_map(|v| {
            v.pins.iter().map(move |p| {
                (
                    PinLabels {
                        vip: v.name.clone(),
                        pin: p.name.clone(),
                    },
                    p,
                )
            })
        })
    };
    for (name, help, get) in [
        (
            "wklb_pin_new_flows",
            "New flows a pin's table decided",
            (|p: &crate::report::PinReport| p.new_flows) as fn(&_) -> u64,
        ),
        (
            "wklb_pin_refused",
            "New connections refused: the pin's groups had no backend",
            |p| p.refused,
        ),
        (
            "wklb_pin_spilled",
            "New flows sent to the VIP's table: the pin's groups had no backend",
            |p| p.spilled,
        ),
    ] {
        counter_family(enc, name, help, pins().map(|(l, p)| (l, get(p))))?;
    }
    gauge_family(
        enc,
        "wklb_pin_backends_in_table",
        "Backends in a pin's table (0: its clients are refused or spill)",
        pins().map(|(l, p)| (l, p.backends_in_table as i64)),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PinLabels {
    vip: String,
    pin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// The connection log (only while it is on).
fn encode_conn_log(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let Some(l) = &s.conn_log else {
        return Ok(());
    };
    counter_family(
        enc,
        "wklb_conn_log_records",
        "Connection-log records written, by event (open, close)",
        [("open", l.opens), ("close", l.closes)]
            .into_iter()
            .map(|(e, n)| (EventLabels { event: e.into() }, n)),
    )?;
    counter_family(
        enc,
        "wklb_conn_log_lost",
        "Open records the data path lost to a full ring buffer",
        one(l.lost),
    )?;
    counter_family(
        enc,
        "wklb_conn_log_write_errors",
        "Connection-log records that could not be written",
        one(l.write_errors),
    )
}

/// The anycast announcement (only with an [announce] section).
fn encode_edge(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let Some(e) = &s.edge else {
        return Ok(());
    };
    gauge_family(
        enc,
        "wklb_edge_drained",
        "1 while the edge is drained (`wklb edge drain`): no VIP route announced",
        one(e.drained as i64),
    )?;
    gauge_family(
        enc,
        "wklb_vip_address_announced",
        "1 while the VIP address's route is in the announce table (the BGP daemon advertises it)",
        e.addresses.iter().map(|a| {
            (
                AddressLabels {
                    address: a.address.clone(),
                },
                a.announced as i64,
            )
        }),
    )
}

fn encode_backends(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let labels = |b: &BackendReport| BackendLabels {
        vip: b.vip.clone(),
        backend: format!("{}:{}", b.address, b.port),
    };
    for (name, help, get) in BACKEND_COUNTERS {
        counter_family(
            enc,
            name,
            help,
            s.backends.iter().map(|b| (labels(b), get(b))),
        )?;
    }
    for (name, help, get) in BACKEND_GAUGES {
        gauge_family(
            enc,
            name,
            help,
            s.backends.iter().map(|b| (labels(b), get(b))),
        )?;
    }
    Ok(())
}

fn encode_vips(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let labels = |v: &VipReport| VipLabels {
        vip: v.name.clone(),
    };
    gauge_family(
        enc,
        "wklb_vip_info",
        "1 per VIP, labelled with its address, port, protocol, configured SYN-cookie mode and PROXY protocol",
        s.vips.iter().map(|v| {
            (
                vec![
                    ("vip".to_string(), v.name.clone()),
                    ("address".to_string(), v.address.clone()),
                    ("port".to_string(), v.port.to_string()),
                    ("protocol".to_string(), v.protocol.clone()),
                    ("syn_cookies".to_string(), v.syn_cookies.clone()),
                    ("proxy_protocol".to_string(), v.proxy_protocol.clone()),
                ],
                1,
            )
        }),
    )?;
    gauge_family(
        enc,
        "wklb_vip_fail_open",
        "1 when every backend of the VIP fails its health check and all are kept (fail-open)",
        s.vips.iter().map(|v| (labels(v), v.fail_open as i64)),
    )?;
    gauge_family(
        enc,
        "wklb_vip_syn_cookies_active",
        "1 while the VIP answers SYNs with cookies (mode always, or auto under SYN pressure)",
        s.vips
            .iter()
            .map(|v| (labels(v), v.syn_cookies_active as i64)),
    )?;
    gauge_family(
        enc,
        "wklb_vip_half_open_flows",
        "Flows of the VIP whose backend has not answered the SYN yet",
        s.vips.iter().map(|v| (labels(v), v.half_open_flows as i64)),
    )?;
    for (name, help, get) in VIP_COUNTERS {
        counter_family(enc, name, help, s.vips.iter().map(|v| (labels(v), get(v))))?;
    }
    Ok(())
}

fn encode_data_plane(enc: &mut DescriptorEncoder, s: &StatsReport) -> Result<(), std::fmt::Error> {
    let reasons = s
        .reasons
        .iter()
        .map(|(r, v)| (ReasonLabels { reason: r.clone() }, *v));
    counter_family(
        enc,
        "wklb_packets",
        "Every packet the XDP program saw, by verdict reason",
        reasons,
    )?;
    gauge_family(
        enc,
        "wklb_flows",
        "Entries in the connection table",
        one(s.flows as i64),
    )?;
    let snat = s.snat.iter().map(|x| {
        (
            vec![("address".to_string(), x.address.clone())],
            x.flows as i64,
        )
    });
    gauge_family(
        enc,
        "wklb_snat_flows",
        "Flows using each SNAT address (at most one per port)",
        snat,
    )?;
    let ports = s.snat.iter().map(|x| {
        (
            vec![("address".to_string(), x.address.clone())],
            x.ports as i64,
        )
    });
    gauge_family(
        enc,
        "wklb_snat_ports",
        "Ports each SNAT address offers (snat.port_min..port_max): its flows at most",
        ports,
    )?;
    let attached = s.interfaces.iter().map(|a| {
        let labels = vec![
            ("interface".to_string(), a.interface.clone()),
            ("mode".to_string(), a.mode.clone()),
        ];
        (labels, 1)
    });
    gauge_family(
        enc,
        "wklb_xdp_attached",
        "1 for every interface the XDP program runs on, labelled with how it was attached",
        attached,
    )?;
    gauge_family(
        enc,
        "wklb_flows_max",
        "Capacity of the connection table",
        one(s.max_flows as i64),
    )?;
    counter_family(
        enc,
        "wklb_flows_expired",
        "Flows removed by idle expiry",
        one(s.expired_flows_total),
    )
}
