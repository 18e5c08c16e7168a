//! `cargo xtask bench`: everything measured side by side in one run, written to
//! bench/results/<timestamp>.{json,md,png}:
//! 1. data path: ns per packet with BPF_PROG_TEST_RUN (repeat >= 1,000,000 unless --quick),
//!    median of several rounds, against the XDP floor;
//! 2. control plane: Maglev generation, table swap, memory per flow, death-to-swap time;
//! 3. end to end: wklb, nginx stream, HAProxy, nftables and no balancer in turn in one
//!    namespace topology (connection rate, CPU, ping latency with long-lived connections,
//!    throughput).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use lb_common::{
    BENCH_FRAME_LEN, BenchFrame, DataplaneConfig, MAGLEV_TABLE_SIZE, Reason,
    maglev::{Member, build_table},
};
use serde::Serialize;
use wklb_tests::{
    fixture::*,
    netns::in_private_netns,
    packets::tcp,
    peers::{self, PEERS, PeerResult},
    root::have_root,
    topology::{self, Topology},
};

const FLOOR: &str = "floor: restore + read + XDP_TX";
const REVERSE: &str = "reverse (reply)";
const FORWARD_TS: &str = "established forward, timestamps";
const REVERSE_TS: &str = "reverse, timestamps";
const COOKIE_FORWARD: &str = "established forward, cookie flow (timestamps)";
const COOKIE_REVERSE: &str = "reverse, cookie flow (timestamps)";
const COOKIE_SYN: &str = "cookie SYN-ACK (SYN in cookie mode)";
/// The floor plus a head move there and back (what the translated IPv6 rows pay extra: the
/// bench undoes the data path's move after each run).
const HEAD_MOVES: &str = "floor + head moved and back (bench undo of translated rows: half)";
const V6_FORWARD: &str = "IPv6 established forward (to an IPv4 node)";
const V6_REVERSE: &str = "IPv6 reverse (IPv4 node to an IPv6 client)";
const V6_NODE_FORWARD: &str = "IPv6 established forward (to an IPv6 node)";
const V6_NODE_REVERSE: &str = "IPv6 reverse (IPv6 node to an IPv6 client)";
/// The VIP id and port of the benchmark's IPv6 VIP served by the IPv6 node.
const V6_NODE_VIP: (u32, u16) = (9, 5400);
const COOKIES: u32 = lb_common::VipMeta::COOKIES_ALLOWED | lb_common::VipMeta::COOKIES_ON;
/// The cookie SYN-ACK row's VIP: `syn_cookies = "always"` from the start, so no SYN ever
/// created a flow on it without a cookie (as on a VIP long into a flood; one whose SYNs
/// created flows within `lb_common::PLAIN_SYN_WINDOW_NS` makes one flow lookup more per SYN).
const ALWAYS_COOKIES_VIP: (u32, u16) = (10, 5110);
/// The PROXY rows' VIP: `proxy_protocol = "v2"` (a 28-byte header for IPv4).
const PROXY_VIP: (u32, u16) = (11, 5120);
const PROXY_FORWARD: &str = "established forward, PROXY v2 flow (sequence shifted)";
const PROXY_REVERSE: &str = "reverse, PROXY v2 flow (acknowledgment mapped)";
const PROXY_FIRST: &str = "PROXY v2 first data segment (header inserted)";

struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    vary_source: bool,
    /// Reason the data path must count for every run (checked, so a misconfigured case cannot
    /// report the cost of some other path).
    expect: Option<Reason>,
    /// Every run must create a flow (checked through the VIP's new-flow counter).
    new_flows: bool,
    /// The TCP VIP's flags during the case (`VipMeta::COOKIES_*`).
    vip_flags: u32,
}

#[derive(Serialize, Default)]
struct DataPath {
    repeat: u32,
    rounds: usize,
    /// (path, median ns per packet)
    rows: Vec<Row>,
    verifier_instructions: u32,
    /// The connection table sized for 1,000,000 flows: FLOWS4 plus FLOW_TABLE with the SNAT
    /// addresses 1,000,000 flows need (ports unique per SNAT address), bytes per flow.
    bytes_per_flow_at_1m: f64,
    table_mib_at_1m: f64,
    snat_exhausted: u64,
    /// Filling and swapping in one VIP's 65537-slot table, median of 5, ms.
    table_swap_ms: f64,
    /// The same, swapping one VIP's table again at once (waits out the previous grace period).
    table_swap_back_to_back_ms: f64,
    /// One expiry pass over the table holding `sweep_flows` live flows, ms.
    sweep_ms: f64,
    sweep_flows: u64,
    /// BPF_F_TEST_XDP_LIVE_FRAMES: frames really transmitted on a veth.
    live: Vec<LiveRow>,
    /// Why the live-frames rows are missing, when this kernel refused them.
    live_unavailable: Option<String>,
}

/// One live-frames path: median Mpps over the rounds, and the medians of its per-round ratios
/// to the two floors.
#[derive(Serialize)]
struct LiveRow {
    path: String,
    mpps: f64,
    vs_tx_floor: f64,
    vs_redirect_floor: f64,
}

#[derive(Serialize)]
struct Row {
    path: String,
    ns_per_packet: f64,
    /// Median over rounds of this case's time over the floor's time in the same round.
    vs_floor: f64,
}

#[derive(Serialize)]
struct MaglevRow {
    backends: usize,
    table_size: u32,
    ms: f64,
}

#[derive(Serialize)]
struct Report {
    started: String,
    machine: String,
    quick: bool,
    datapath: DataPath,
    maglev: Vec<MaglevRow>,
    /// Backend death to its removal from the live table, with health checks every 500 ms,
    /// fall 2 (bound: fall x interval + interval = 1.5 s).
    death_to_swap_ms: Option<f64>,
    e2e: Vec<PeerResult>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let skip_e2e = args.iter().any(|a| a == "--no-e2e");
    if !have_root() {
        bail!("the benchmark loads XDP programs: run `sudo cargo xtask bench`");
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let rounds = if quick { 3 } else { 5 };
    println!("== 1/3 data path");
    let datapath = in_private_netns(move || datapath(repeat, rounds))?;
    println!("\n== 2/3 control plane: Maglev table generation");
    let maglev = maglev_times(quick);
    let (death_to_swap_ms, e2e) = if skip_e2e {
        (None, Vec::new())
    } else {
        println!("\n== 3/3 end to end: each balancer in turn over the same backends");
        end_to_end(quick)?
    };
    let report = Report {
        started,
        machine: machine(),
        quick,
        datapath,
        maglev,
        death_to_swap_ms,
        e2e,
    };
    write_results(&report)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores {cpu}, kernel {}", kernel.trim())
}

fn maglev_times(quick: bool) -> Vec<MaglevRow> {
    let mut rows = Vec::new();
    for size in [MAGLEV_TABLE_SIZE, 655_373] {
        for n in [10usize, 100, 1000] {
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    id: i as u32,
                    key: format!("10.{}.{}.{}:5100", i / 65536, (i / 256) % 256, i % 256),
                    weight: 100,
                })
                .collect();
            let mut samples: Vec<f64> = (0..if quick { 3 } else { 7 })
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(build_table(&members, size));
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            let ms = samples[samples.len() / 2];
            println!("  {n:>5} backends, M = {size:>6}: {ms:7.2} ms");
            rows.push(MaglevRow {
                backends: n,
                table_size: size,
                ms,
            });
        }
    }
    rows
}

fn end_to_end(quick: bool) -> Result<(Option<f64>, Vec<PeerResult>)> {
    let mut t = Topology::new(3)?;
    for i in 0..3 {
        t.start_backend(i)?;
        t.start_health(i)?;
    }
    let _iperf = t.start_iperf(0)?;
    let stats_enabled =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled")?;
    let mut results = Vec::new();
    for name in PEERS {
        println!("  {name}: starting");
        let r = match peers::start(&mut t, name) {
            Ok(p) => {
                let r = peers::measure(&t, &p, quick).unwrap_or_else(|e| PeerResult {
                    peer: name.into(),
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                });
                if let Err(e) = peers::stop(&mut t, p) {
                    println!("  {name}: stopping failed: {e:#}");
                }
                r
            }
            Err(e) => PeerResult {
                peer: name.into(),
                error: Some(format!("failed to start: {e:#}")),
                ..Default::default()
            },
        };
        match &r.error {
            None => println!(
                "  {name}: {:.0} conn/s, own CPU {:.1} ms + softirq {:.1} ms per 1k conn, ping p50 {:.2} ms p99 {:.2} ms ({} conns, {} broken), {:.2} Gbit/s",
                r.conn_per_s,
                r.own_cpu_ms_per_1k_conn,
                r.softirq_ms_per_1k_conn,
                r.ping_rtt_ms_p50,
                r.ping_rtt_ms_p99,
                r.ping_conns,
                r.ping_broken,
                r.throughput_gbit_s
            ),
            Some(e) => println!("  {name}: FAILED: {e}"),
        }
        results.push(r);
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_enabled.trim());
    // Death to swap, with wklb again.
    println!("  wklb: backend death to table swap");
    let death = death_to_swap(&mut t)
        .map_err(|e| println!("  death to swap failed: {e:#}"))
        .ok();
    peers::attribute_cpu(&mut results);
    Ok((
        death,
        results
            .into_iter()
            .map(|mut r| {
                r.ok = r.error.is_none();
                r
            })
            .collect(),
    ))
}

fn death_to_swap(t: &mut Topology) -> Result<f64> {
    let p = peers::start(t, "wklb")?;
    std::thread::sleep(Duration::from_secs(2));
    t.stop_backend(2);
    t.stop_health(2);
    let killed = Instant::now();
    let took = loop {
        let s = t.stats()?;
        let row = s["backends"].as_array().and_then(|b| {
            b.iter()
                .find(|r| {
                    r["vip"] == "im-tcp"
                        && r["address"] == topology::backend_addr(2).to_string().as_str()
                })
                .cloned()
        });
        if row.is_some_and(|r| r["in_table"] == false) {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(10) {
            bail!("backend still in the table after 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    peers::stop(t, p)?;
    println!(
        "  backend death to table swap: {:.0} ms (bound 1500 ms)",
        took.as_secs_f64() * 1000.0
    );
    Ok(took.as_secs_f64() * 1000.0)
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    f.resize(f.len().max(BENCH_FRAME_LEN), 0);
    f
}

/// A TCP frame of exactly BENCH_FRAME_LEN bytes (payload fills the rest).
fn tcp64(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: &str) -> Vec<u8> {
    let bare = tcp(src, dst, flags, b"");
    let payload = vec![0x70u8; BENCH_FRAME_LEN - bare.len()];
    tcp(src, dst, flags, &payload)
}

/// Keeps this thread on one CPU: the per-CPU maps and caches stay warm and rounds stop
/// migrating between cores mid-measurement.
fn pin_to_last_cpu() -> Result<usize> {
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "pinning the benchmark to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cpu)
}

fn datapath(repeat: u32, rounds: usize) -> Result<DataPath> {
    let cpu = pin_to_last_cpu()?;
    // Every round of the new-flow case starts from an empty table with room for one round.
    let max_flows = repeat + repeat / 2;
    let snat_slots = 64;
    println!(
        "wklb data-path benchmark on CPU {cpu}: BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} interleaved rounds; connection table {max_flows} entries, {snat_slots} SNAT addresses"
    );
    let mut fx = Fixture::with_slots(max_flows, snat_slots)?;
    // Every SNAT address but the last in use for IPv4, so new flows spread their ports over
    // 63 x 64,512 slots; the last is the IPv6 node's.
    let snat4 = snat_slots - 1;
    for i in 1..snat4 {
        let a = Ipv4Addr::new(10, 20, 1, i as u8);
        fx.image.snat.insert(
            i,
            lb_common::SnatAddr::new(lb_common::Addr::v4(a.octets()), lb_common::FAMILY_IPV4),
        );
        fx.image.snat_pick.insert(i, i);
    }
    fx.image.config.snat_count = snat4;
    fx.classify();
    fx.sync()?;
    fx.add_ipv6_vip();
    fx.add_ipv6_node(snat4);
    let (id, port) = V6_NODE_VIP;
    fx.add_ipv6_vip_on(id, port, lb_common::PROTO_TCP, &[(B6_TCP, 1)]);
    let (id, port) = ALWAYS_COOKIES_VIP;
    fx.add_tcp_vip(id, port, COOKIES)?;
    let (id, port) = PROXY_VIP;
    fx.add_tcp_vip(id, port, lb_common::VipMeta::PROXY_V2)?;
    let verifier_instructions = fx
        .program
        .verified_instructions(lb_userspace::dataplane::kernel::PROGRAM)?;
    println!("verifier: {verifier_instructions} instructions processed");
    let client = (CLIENT, 40000);
    let vip = (VIP, VIP_TCP_PORT);
    let mut cases = vec![
        Case {
            name: "floor: XDP_TX, no work",
            program: "bench_tx",
            frame: pad(tcp(client, vip, "A", b"")),
            vary_source: false,
            expect: None,
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: "floor: restore + XDP_TX (previous floor)",
            program: "bench_floor_blind",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            expect: None,
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: FLOOR,
            program: "bench_floor",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            expect: None,
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: HEAD_MOVES,
            program: "bench_floor_head_moves",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            expect: None,
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: "established forward",
            program: "bench_wklb",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            expect: Some(Reason::Forwarded),
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: REVERSE,
            program: "bench_wklb",
            frame: Vec::new(), // set by `setup_flows`
            vary_source: false,
            expect: Some(Reason::Reversed),
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: "new flow (SYN)",
            program: "bench_wklb",
            frame: tcp64((CLIENT, 1), vip, "S"),
            vary_source: true,
            expect: Some(Reason::Forwarded),
            new_flows: true,
            vip_flags: 0,
        },
        Case {
            name: COOKIE_SYN,
            program: "bench_wklb",
            frame: wklb_tests::packets::tcp_seg(
                (CLIENT, 41000),
                (VIP, ALWAYS_COOKIES_VIP.1),
                &wklb_tests::packets::Seg {
                    flags: "S",
                    seq: 7000,
                    ack: 0,
                    options: &wklb_tests::packets::linux_syn_options(1460, 77, 0, 7),
                    ..Default::default()
                },
            ),
            vary_source: false,
            expect: Some(Reason::SynCookieSent),
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: "non-VIP pass (SYN to the host)",
            program: "bench_wklb",
            frame: tcp64(client, (EDGE_CLIENT_SIDE, 22), "S"),
            vary_source: false,
            expect: Some(Reason::PassNotOurs),
            new_flows: false,
            vip_flags: 0,
        },
        Case {
            name: "non-VIP pass (host traffic, ACK)",
            program: "bench_wklb",
            frame: tcp64(client, (EDGE_CLIENT_SIDE, 22), "A"),
            vary_source: false,
            expect: Some(Reason::PassNotOurs),
            new_flows: false,
            vip_flags: 0,
        },
        // Hostile: every packet an ACK from a new source, so every flow lookup misses (the
        // hint cache and FLOWS4 both) before the segment is refused.
        Case {
            name: "ACK flood (no flow, new source each packet)",
            program: "bench_wklb",
            frame: tcp64((CLIENT, 1), vip, "A"),
            vary_source: true,
            expect: Some(Reason::DropNonSynNoState),
            new_flows: false,
            vip_flags: 0,
        },
    ];
    // IPv6, next to the IPv4 rows (the goal: within 1.3x of them).
    let at = cases
        .iter()
        .position(|c| c.name == REVERSE)
        .expect("the reverse case")
        + 1;
    insert_established(
        &mut cases,
        at,
        &[
            (V6_FORWARD, Reason::Forwarded),
            (V6_REVERSE, Reason::Reversed),
            (V6_NODE_FORWARD, Reason::Forwarded),
            (V6_NODE_REVERSE, Reason::Reversed),
        ],
    );
    // Before the new-flow case, which empties the table (the flows are set up again after
    // every round).
    let at = cases
        .iter()
        .position(|c| c.new_flows)
        .expect("a new-flow case");
    insert_established(
        &mut cases,
        at,
        &[
            (FORWARD_TS, Reason::Forwarded),
            (COOKIE_FORWARD, Reason::Forwarded),
            (REVERSE_TS, Reason::Reversed),
            (COOKIE_REVERSE, Reason::Reversed),
            (PROXY_FORWARD, Reason::Forwarded),
            (PROXY_REVERSE, Reason::Reversed),
            (PROXY_FIRST, Reason::Forwarded),
        ],
    );
    let only = std::env::var("WKLB_BENCH_ONLY").ok();
    let mut cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| {
            only.as_ref().is_none_or(|o| {
                c.name.contains(o.as_str()) || c.name == FLOOR || c.name == HEAD_MOVES
            })
        })
        .collect();
    setup_flows(&mut fx, &mut cases)?;
    let mut vip_flags = 0;
    // Rounds interleave the cases, so each case is compared with the floor measured moments
    // before it: this machine's speed drifts by tens of percent over seconds.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, c) in cases.iter().enumerate() {
            if c.vip_flags != vip_flags {
                fx.set_tcp_vip_flags(c.vip_flags)?;
                vip_flags = c.vip_flags;
            }
            let ns = run_round(&mut fx, c, repeat, round)?;
            print!(
                "\r  round {}/{rounds}: {:<42} {ns:6.1} ns   ",
                round + 1,
                c.name
            );
            samples[i].push(ns);
        }
        if cases.iter().any(|c| c.new_flows) {
            // The new-flow round emptied the table: establish the flows again (their SNAT
            // ports, and so the replies' tuples, may differ).
            fx.flows.clear()?;
            fx.set_tcp_vip_flags(0)?;
            vip_flags = 0;
            setup_flows(&mut fx, &mut cases)?;
        }
    }
    println!();
    let floor_at = cases
        .iter()
        .position(|c| c.name == FLOOR)
        .expect("the floor always runs");
    let results: Vec<(&str, f64, f64)> = cases
        .iter()
        .zip(&samples)
        .map(|(c, s)| {
            let ratios = s
                .iter()
                .zip(&samples[floor_at])
                .map(|(v, f)| v / f)
                .collect();
            (c.name, median(s.clone()), median(ratios))
        })
        .collect();
    println!(
        "\n| path | ns/packet | vs floor (restore + read + XDP_TX), per round |\n|---|---:|---:|"
    );
    for (name, ns, ratio) in &results {
        println!("| {name} | {ns:.1} | {ratio:.2}x |");
    }
    if only.is_some() {
        std::process::exit(0);
    }
    let snat_exhausted = fx.reasons()[Reason::DropSnatExhausted as usize];
    // One more new-flow round fills the table: one expiry pass over its flows.
    if let Some(c) = cases.iter().find(|c| c.new_flows) {
        run_round(&mut fx, c, repeat, rounds)?;
    }
    let (sweep_ms, sweep_flows) = sweep(&mut fx)?;
    fx.flows.clear()?;
    handshake(&mut fx)?;
    // Some kernels refuse live-frame test runs (EPERM seen on a 6.18 VM build): the rows are
    // then reported missing, with why, rather than the whole benchmark lost.
    let (live, live_unavailable) = match live_frames(&mut fx, client, vip, repeat, rounds) {
        Ok(rows) => (rows, None),
        Err(e) => {
            println!(
                "
  live frames unavailable on this kernel: {e:#}"
            );
            (Vec::new(), Some(format!("{e:#}")))
        }
    };
    let (table_swap_ms, table_swap_back_to_back_ms) = table_swap(&mut fx)?;
    drop(fx);
    let (bytes_per_flow_at_1m, table_mib_at_1m) = memory_at_1m()?;
    Ok(DataPath {
        repeat,
        rounds,
        rows: results
            .iter()
            .map(|(n, v, r)| Row {
                path: n.to_string(),
                ns_per_packet: *v,
                vs_floor: *r,
            })
            .collect(),
        verifier_instructions,
        bytes_per_flow_at_1m,
        table_mib_at_1m,
        snat_exhausted,
        table_swap_ms,
        table_swap_back_to_back_ms,
        sweep_ms,
        sweep_flows,
        live,
        live_unavailable,
    })
}

/// Establishes the flows the established-path cases use and gives those cases their frames:
/// a plain flow (client port 40000) and a cookie-mode one (41001), the latter set up through
/// the edge's own handshake. Leaves the VIP's cookie flags off.
fn setup_flows(fx: &mut Fixture, cases: &mut [Case]) -> Result<()> {
    use wklb_tests::packets::{Seg, inspect, linux_syn_options, tcp_seg, tcp_view, ts_option};
    let (_, seen) = handshake(fx)?;
    let vip = (VIP, VIP_TCP_PORT);
    let reply_of = |seen: &wklb_tests::packets::Seen, seq: u32, ack: u32, opts: &[u8]| {
        tcp_seg(
            (seen.dst, seen.dst_port),
            (seen.src, seen.src_port),
            &Seg {
                flags: "A",
                seq,
                ack,
                options: opts,
                ..Seg::default()
            },
        )
    };
    let data = |port: u16, seq: u32, ack: u32, opts: &[u8]| {
        tcp_seg(
            (CLIENT, port),
            vip,
            &Seg {
                flags: "A",
                seq,
                ack,
                options: opts,
                ..Seg::default()
            },
        )
    };
    let ts = ts_option(1_000, 2_000);
    let plain_fwd = data(40000, 1001, 2, &ts);
    let plain_rev = reply_of(&seen, 2, 1001, &ts);
    // The cookie flow: SYN → cookie SYN-ACK, ACK → SYN to the backend, its SYN-ACK → ACK.
    fx.set_tcp_vip_flags(COOKIES)?;
    let port = 41001;
    let syn = tcp_seg(
        (CLIENT, port),
        vip,
        &Seg {
            flags: "S",
            seq: 7000,
            ack: 0,
            options: &linux_syn_options(1460, 500, 0, 7),
            ..Seg::default()
        },
    );
    let (_, out) = fx.run(fx.client_if, &syn)?;
    let sa = tcp_view(&out);
    let edge_ts = sa.ts.context("the cookie SYN-ACK has timestamps")?.0;
    let (act, out) = fx.run(
        fx.client_if,
        &data(port, 7001, sa.seq.wrapping_add(1), &ts_option(501, edge_ts)),
    )?;
    if act != 3 && act != 4 {
        bail!("the cookie ACK was not turned into a SYN (action {act})");
    }
    let to_backend = inspect(&out);
    let synack = tcp_seg(
        (to_backend.dst, to_backend.dst_port),
        (to_backend.src, to_backend.src_port),
        &Seg {
            flags: "SA",
            seq: 90_000,
            ack: 7001,
            options: &linux_syn_options(1460, 40_000, 501, 7),
            ..Seg::default()
        },
    );
    let (act, _) = fx.run(fx.backend_if, &synack)?;
    if act != 3 {
        bail!("the backend's SYN-ACK was not answered (action {act})");
    }
    fx.set_tcp_vip_flags(0)?;
    let cookie_fwd = data(port, 7001, sa.seq.wrapping_add(1), &ts_option(502, edge_ts));
    let cookie_rev = reply_of(&to_backend, 90_001, 7001, &ts_option(40_001, 502));
    let [v6_fwd, v6_rev, v6_node_fwd, v6_node_rev] = ipv6_flows(fx)?;
    let [proxy_fwd, proxy_rev, proxy_first] = proxy_flows(fx)?;
    for c in cases.iter_mut() {
        c.frame = match c.name {
            V6_FORWARD => v6_fwd.clone(),
            V6_REVERSE => v6_rev.clone(),
            V6_NODE_FORWARD => v6_node_fwd.clone(),
            V6_NODE_REVERSE => v6_node_rev.clone(),
            REVERSE => tcp64((seen.dst, seen.dst_port), (seen.src, seen.src_port), "A"),
            FORWARD_TS => plain_fwd.clone(),
            REVERSE_TS => plain_rev.clone(),
            COOKIE_FORWARD => cookie_fwd.clone(),
            COOKIE_REVERSE => cookie_rev.clone(),
            PROXY_FORWARD => proxy_fwd.clone(),
            PROXY_REVERSE => proxy_rev.clone(),
            PROXY_FIRST => proxy_first.clone(),
            _ => continue,
        };
    }
    Ok(())
}

/// Inserts cases of established flows at `at` (their frames come from `setup_flows`).
fn insert_established(cases: &mut Vec<Case>, at: usize, rows: &[(&'static str, Reason)]) {
    for (k, (name, expect)) in rows.iter().enumerate() {
        cases.insert(
            at + k,
            Case {
                name,
                program: "bench_wklb",
                frame: Vec::new(), // set by `setup_flows`
                vary_source: false,
                expect: Some(*expect),
                new_flows: false,
                vip_flags: 0,
            },
        );
    }
}

/// Two flows on the PROXY v2 VIP: one whose header the node has acknowledged, and one that
/// has sent nothing yet. Returns the first one's next data segment (shifted) and the node's
/// acknowledgment of it (mapped back), and the second one's first data segment (every run
/// inserts the header in front of it, as for a retransmission of that segment).
fn proxy_flows(fx: &mut Fixture) -> Result<[Vec<u8>; 3]> {
    use wklb_tests::packets::{Seg, inspect, tcp_seg};
    let vip = (VIP, PROXY_VIP.1);
    let data = |port: u16, rel: u32, flags| {
        tcp_seg(
            (CLIENT, port),
            vip,
            &Seg {
                flags,
                seq: 1001 + rel,
                ack: 2,
                payload: &[0x70; 10],
                ..Seg::default()
            },
        )
    };
    let (_, seen) = handshake_on(fx, (CLIENT, 41010), vip)?;
    let (act, out) = fx.run(fx.client_if, &data(41010, 0, "AP"))?;
    let first = inspect(&out);
    if act != 4 || first.payload.len() != 10 + 28 {
        bail!("the PROXY flow's first segment went out without its header (action {act})");
    }
    let node_ack = pad(tcp_seg(
        (seen.dst, seen.dst_port),
        (seen.src, seen.src_port),
        &Seg {
            flags: "A",
            seq: 2,
            ack: 1001 + 28 + 10,
            ..Seg::default()
        },
    ));
    fx.run(fx.backend_if, &node_ack)?;
    handshake_on(fx, (CLIENT, 41011), vip)?;
    Ok([data(41010, 10, "A"), node_ack, data(41011, 0, "AP")])
}

/// Two established IPv6 clients, one of the IPv4 nodes' VIP and one of the IPv6 node's;
/// returns each one's ACK and its node's reply (forward, reverse, forward, reverse).
fn ipv6_flows(fx: &mut Fixture) -> Result<[Vec<u8>; 4]> {
    use wklb_tests::packets::{Seg, inspect, inspect6, tcp_seg, tcp6_seg};
    let seg = |flags, seq, ack| Seg {
        flags,
        seq,
        ack,
        ..Seg::default()
    };
    let mut out = Vec::new();
    for (port, vip_port) in [(40010, VIP_TCP_PORT), (40011, V6_NODE_VIP.1)] {
        let client = (CLIENT6, port);
        let vip = (VIP6, vip_port);
        let (act, syn) = fx.run(fx.client_if, &tcp6_seg(client, vip, 0, &seg("S", 1000, 0)))?;
        if act != 3 && act != 4 {
            bail!("IPv6 setup SYN to port {vip_port} was not forwarded (action {act})");
        }
        // The node answers from where the SYN went, in its own family.
        let reply = |s: &Seg| -> Vec<u8> {
            if syn[12] == 0x86 {
                let v = inspect6(&syn);
                tcp6_seg((v.dst, v.dst_port), (v.src, v.src_port), 0, s)
            } else {
                let v = inspect(&syn);
                tcp_seg((v.dst, v.dst_port), (v.src, v.src_port), s)
            }
        };
        fx.run(fx.backend_if, &reply(&seg("SA", 1, 1001)))?;
        let ack = tcp6_seg(client, vip, 0, &seg("A", 1001, 2));
        fx.run(fx.client_if, &ack)?;
        out.push(ack);
        out.push(pad(reply(&seg("A", 2, 1001))));
    }
    Ok(out.try_into().expect("four frames"))
}

/// One established flow (SYN, SYN-ACK, ACK) for the forward and reverse cases; returns the
/// SYN as the backend saw it.
fn handshake(fx: &mut Fixture) -> Result<(Vec<u8>, wklb_tests::packets::Seen)> {
    handshake_on(fx, (CLIENT, 40000), (VIP, VIP_TCP_PORT))
}

/// The same for `client` to `vip`.
fn handshake_on(
    fx: &mut Fixture,
    client: (Ipv4Addr, u16),
    vip: (Ipv4Addr, u16),
) -> Result<(Vec<u8>, wklb_tests::packets::Seen)> {
    use wklb_tests::packets::{Seg, inspect, tcp_seg};
    let (act, out) = fx.run(
        fx.client_if,
        &tcp_seg(
            client,
            vip,
            &Seg {
                flags: "S",
                seq: 1000,
                ack: 0,
                ..Seg::default()
            },
        ),
    )?;
    if act != 3 && act != 4 {
        bail!("setup SYN was not forwarded (action {act})");
    }
    let seen = inspect(&out);
    let synack = tcp_seg(
        (seen.dst, seen.dst_port),
        (seen.src, seen.src_port),
        &Seg {
            flags: "SA",
            seq: 1,
            ack: 1001,
            ..Seg::default()
        },
    );
    fx.run(fx.backend_if, &synack)?;
    fx.run(
        fx.client_if,
        &tcp_seg(
            client,
            vip,
            &Seg {
                flags: "A",
                seq: 1001,
                ack: 2,
                ..Seg::default()
            },
        ),
    )?;
    Ok((out, seen))
}

/// One round of a case: `repeat` runs, checked to have taken the path the case names.
fn run_round(fx: &mut Fixture, c: &Case, repeat: u32, round: usize) -> Result<f64> {
    fx.program
        .set_bench_frame(&BenchFrame::new(&c.frame, c.vary_source, fx.backend_if))?;
    if c.new_flows {
        // Each round starts from an empty table, so every run is a new flow.
        fx.flows.clear()?;
    }
    let before = fx.reasons();
    let flows_before = fx.vip_stats(TCP_VIP_ID).new_flows;
    let ns = time(fx, c.program, &c.frame, repeat, false)?;
    if let Some(r) = c.expect {
        let moved = fx.reasons()[r as usize] - before[r as usize];
        if moved != repeat as u64 {
            bail!(
                "{}: round {round}: {moved} of {repeat} runs counted {}",
                c.name,
                r.name()
            );
        }
    }
    if c.new_flows {
        let created = fx.vip_stats(TCP_VIP_ID).new_flows - flows_before;
        if created != repeat as u64 {
            bail!(
                "{}: round {round}: {created} of {repeat} runs created a flow",
                c.name
            );
        }
    }
    Ok(ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Live frames: the kernel really transmits what the program returns. The floors transmit
/// back (XDP_TX) or redirect to the backend veth; wklb's established forward path redirects.
/// Rounds interleave the three paths like the cases above, and each ratio is the median of the
/// per-round ratios: one run after another would compare moments of a drifting machine.
fn live_frames(
    fx: &mut Fixture,
    client: (Ipv4Addr, u16),
    vip: (Ipv4Addr, u16),
    repeat: u32,
    rounds: usize,
) -> Result<Vec<LiveRow>> {
    let frames = repeat * 10;
    let established = tcp64(client, vip, "A");
    let paths = [
        ("floor: restore + read + XDP_TX, live", "bench_floor"),
        (
            "floor: restore + read + redirect, live",
            "bench_floor_redirect",
        ),
        ("wklb established forward (redirect), live", "bench_wklb"),
    ];
    let mut mpps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    fx.program
        .set_bench_frame(&BenchFrame::new(&established, false, fx.backend_if))?;
    for round in 0..rounds {
        for (i, (name, program)) in paths.iter().enumerate() {
            let before = fx.reasons();
            let ns = time(fx, program, &established, frames, true)?;
            if *program == "bench_wklb" {
                let after = fx.reasons();
                let moved = after[Reason::Forwarded as usize] - before[Reason::Forwarded as usize];
                if moved != frames as u64 {
                    let counted: Vec<String> = Reason::ALL
                        .iter()
                        .filter(|r| after[**r as usize] != before[**r as usize])
                        .map(|r| {
                            format!("{} {}", r.name(), after[*r as usize] - before[*r as usize])
                        })
                        .collect();
                    bail!(
                        "live frames: {moved} of {frames} counted as forwarded ({})",
                        counted.join(", ")
                    );
                }
            }
            print!(
                "\r  live round {}/{rounds}: {name:<44} {:5.2} Mpps   ",
                round + 1,
                1e3 / ns
            );
            mpps[i].push(1e3 / ns);
        }
    }
    println!();
    let ratios = |i: usize, floor: usize| {
        median(
            mpps[i]
                .iter()
                .zip(&mpps[floor])
                .map(|(v, f)| v / f)
                .collect(),
        )
    };
    let rows: Vec<LiveRow> = paths
        .iter()
        .enumerate()
        .map(|(i, (name, _))| LiveRow {
            path: name.to_string(),
            mpps: median(mpps[i].clone()),
            vs_tx_floor: ratios(i, 0),
            vs_redirect_floor: ratios(i, 1),
        })
        .collect();
    for r in &rows {
        println!(
            "  {:<44} {:5.2} Mpps ({frames} frames x {rounds} rounds; {:.2}x the redirect floor)",
            r.path, r.mpps, r.vs_redirect_floor
        );
    }
    Ok(rows)
}

/// Build + fill + atomic swap of one VIP's 65537-slot table (ten backends), median of 5.
fn table_swap(fx: &mut Fixture) -> Result<(f64, f64)> {
    use lb_userspace::dataplane::{Maps as _, Write};
    let mut swap = |i: u32| -> Result<f64> {
        let members: Vec<Member> = (0..10u32)
            .map(|id| Member {
                id: id % 3,
                key: format!("10.20.0.{}:5100", 11 + id),
                weight: 1 + (i + id) % 3,
            })
            .collect();
        let t = Instant::now();
        let table = std::sync::Arc::new(build_table(&members, MAGLEV_TABLE_SIZE));
        fx.maps.write(&Write::Table(TCP_VIP_ID, Some(table)))?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Health changes arrive apart: the grace period of the previous swap has long passed.
    let mut apart = Vec::new();
    for i in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        apart.push(swap(i)?);
    }
    // Worst case: each swap of one VIP waits for the previous one's grace period.
    let back_to_back: Vec<f64> = (0..5).map(&mut swap).collect::<Result<_>>()?;
    let (apart, back_to_back) = (median(apart), median(back_to_back));
    println!("table build + fill + atomic flip: {apart:.2} ms ({back_to_back:.2} ms back to back)");
    Ok((apart, back_to_back))
}

/// One expiry pass over the live flows (none idle long enough to expire).
fn sweep(fx: &mut Fixture) -> Result<(f64, u64)> {
    use lb_userspace::controller::expiry;
    let live = fx.flows().len() as u64;
    let t = Instant::now();
    let s = expiry::sweep(
        fx.flows.as_ref(),
        &lb_common::conntrack::Timeouts::default(),
        lb_userspace::sys::clock::monotonic_ns(),
    )?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "expiry pass over {} live flows: {ms:.0} ms ({} expired)",
        s.live, s.expired
    );
    Ok((ms, live))
}

/// Kernel memory of the connection table sized for 1,000,000 flows, per flow.
fn memory_at_1m() -> Result<(f64, f64)> {
    const FLOWS: u32 = 1_000_000;
    let ports = (DataplaneConfig::DEFAULT_SNAT_PORT_MAX - DataplaneConfig::DEFAULT_SNAT_PORT_MIN)
        as u32
        + 1;
    let snat_slots = FLOWS.div_ceil(ports);
    let l = lb_userspace::dataplane::kernel::load(&lb_userspace::dataplane::kernel::LoadOptions {
        max_flows: FLOWS,
        snat_slots,
        pin_dir: None,
        conn_log: false,
    })?;
    let bytes =
        l.flows.memory_bytes()? + l.program.map_memory_bytes(lb_common::names::FLOW_HINTS4)?;
    let per = bytes as f64 / FLOWS as f64;
    println!(
        "connection table for 1,000,000 flows ({snat_slots} SNAT addresses x 65,536 slots + FLOWS4 + FLOW_HINTS4): {:.0} MiB = {per:.0} bytes per flow",
        bytes as f64 / (1 << 20) as f64
    );
    Ok((per, bytes as f64 / (1 << 20) as f64))
}

/// Runs `program` `repeat` times in the kernel (with `live`, over frames really transmitted);
/// returns the kernel-measured ns per run.
fn time(fx: &mut Fixture, program: &str, frame: &[u8], repeat: u32, live: bool) -> Result<f64> {
    let ctx = Fixture::xdp_ctx(frame.len(), fx.client_if);
    let attrs = if live {
        TestRunAttrs::new().xdp_live_frames(64)
    } else {
        TestRunAttrs::new()
    };
    let prog = fx.program.extra(program)?;
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("test run of {program}"))?;
    Ok(res.duration.as_nanos() as f64)
}

fn write_results(r: &Report) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let stamp = r.started.replace(':', "-");
    let base = dir.join(&stamp);
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(r)?,
    )?;
    let md = markdown(r);
    std::fs::write(base.with_extension("md"), &md)?;
    if !r.e2e.is_empty() {
        chart(r, &base.with_extension("png"))?;
    }
    println!("\n{md}");
    println!(
        "written: {}.{{json,md{}}}",
        base.display(),
        if r.e2e.is_empty() { "" } else { ",png" }
    );
    Ok(())
}

fn markdown(r: &Report) -> String {
    let d = &r.datapath;
    let old_floor = d
        .rows
        .iter()
        .find(|x| x.path.contains("previous floor"))
        .map(|x| x.ns_per_packet)
        .unwrap_or(1.0);
    let mut s = format!(
        "# wklb benchmark {}\n\nMachine: {}. {}\n\n",
        r.started,
        r.machine,
        if r.quick { "Quick run." } else { "" }
    );
    s += &format!(
        "## Data path (BPF_PROG_TEST_RUN, repeat {}, median of {} interleaved rounds; vs floor = median of per-round ratios)\n\n| path | ns/packet | vs floor (restore + read + XDP_TX) | vs previous floor (restore + XDP_TX) |\n|---|---:|---:|---:|\n",
        d.repeat, d.rounds
    );
    for r in &d.rows {
        let v = r.ns_per_packet;
        s += &format!(
            "| {} | {v:.1} | {:.2}x | {:.2}x |\n",
            r.path,
            r.vs_floor,
            v / old_floor
        );
    }
    s += &format!(
        "\nNew flows: every round starts from an empty table and every run is checked to create a flow. Verifier: {} instructions. Connection table sized for 1,000,000 flows (FLOWS4 + FLOW_HINTS4 + flow slots for the SNAT addresses they need): {:.0} bytes per flow ({:.0} MiB). Table build + fill + atomic swap: {:.2} ms. Expiry pass over {} live flows: {:.0} ms.\n\n",
        d.verifier_instructions,
        d.bytes_per_flow_at_1m,
        d.table_mib_at_1m,
        d.table_swap_ms,
        d.sweep_flows,
        d.sweep_ms
    );
    if let Some(why) = &d.live_unavailable {
        s += &format!("Live frames: not measured, this kernel refused the test runs ({why}).\n\n");
    }
    if !d.live.is_empty() {
        s += &format!(
            "Live frames (BPF_F_TEST_XDP_LIVE_FRAMES, transmitted on a veth; median of {} interleaved rounds, ratios = median of per-round ratios):\n\n| path | Mpps | vs XDP_TX floor | vs redirect floor |\n|---|---:|---:|---:|\n",
            d.rounds
        );
        for r in &d.live {
            s += &format!(
                "| {} | {:.2} | {:.2}x | {:.2}x |\n",
                r.path, r.mpps, r.vs_tx_floor, r.vs_redirect_floor
            );
        }
        s += "\n";
    }
    s += "## Control plane: Maglev table generation\n\n| backends | M | ms |\n|---:|---:|---:|\n";
    for m in &r.maglev {
        s += &format!("| {} | {} | {:.2} |\n", m.backends, m.table_size, m.ms);
    }
    if let Some(ms) = r.death_to_swap_ms {
        s += &format!(
            "\nBackend death to atomic table swap: {ms:.0} ms (health checks every 500 ms, fall 2; bound 1,500 ms).\n"
        );
    }
    if !r.e2e.is_empty() {
        s += "\n## End to end (network namespaces, same topology, one run; clients, balancer and backends share the machine's cores)\n\n";
        s += "| balancer | new conn/s | own CPU ms / 1k conn | softirq ms / 1k conn | balancer CPU ms / 1k conn | conn / balancer CPU s | machine CPU us / conn | ping p50 ms | ping p99 ms | conns (broken) | Gbit/s (4 streams) | own CPU + softirq s / GB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for e in &r.e2e {
            if let Some(err) = &e.error {
                s += &format!(
                    "| {} | FAILED: {} |||||||||||\n",
                    e.peer,
                    err.replace('\n', " ")
                );
                continue;
            }
            s += &format!(
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {} ({}) | {:.2} | {:.2} |\n",
                e.peer,
                e.conn_per_s,
                e.own_cpu_ms_per_1k_conn,
                e.softirq_ms_per_1k_conn,
                e.balancer_cpu_ms_per_1k_conn,
                e.conn_per_balancer_cpu_s,
                e.machine_cpu_us_per_conn,
                e.ping_rtt_ms_p50,
                e.ping_rtt_ms_p99,
                e.ping_conns,
                e.ping_broken,
                e.throughput_gbit_s,
                e.balancer_cpu_s_per_gb
            );
        }
        s += "\nOwn CPU: the proxy's process CPU, or the XDP program's run time (kernel.bpf_stats_enabled); nftables works only in softirq. Softirq: the whole machine's, in the same window (clients' and backends' stacks included). Balancer CPU = own + the softirq a peer adds over the no-balancer run of the same benchmark.\n";
    }
    s
}

fn chart(r: &Report, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("chart font (apt-get install fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("cannot load the chart font"))?;
    let ok: Vec<&PeerResult> = r.e2e.iter().filter(|e| e.error.is_none()).collect();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    for (area, title, value) in [
        (
            &left,
            "new connections per second (higher is better)",
            Box::new(|e: &PeerResult| e.conn_per_s) as Box<dyn Fn(&PeerResult) -> f64>,
        ),
        (
            &right,
            "ping RTT p99 ms, long-lived conns (lower is better)",
            Box::new(|e: &PeerResult| e.ping_rtt_ms_p99),
        ),
    ] {
        let max = ok.iter().map(|e| value(e)).fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d((0..ok.len().saturating_sub(1)).into_segmented(), 0.0..max)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => ok.get(*i).map(|e| e.peer.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        c.draw_series(ok.iter().enumerate().map(|(i, e)| {
            let color = if e.peer == "wklb" {
                RGBColor(220, 80, 40)
            } else {
                RGBColor(90, 110, 160)
            };
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), value(e)),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))?;
    }
    root.present()?;
    Ok(())
}
