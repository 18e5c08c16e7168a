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
    BENCH_FRAME_LEN, BenchFrame, MAGLEV_TABLE_SIZE, Reason,
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

struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    vary_source: bool,
    rounds: usize,
    /// Reason the data path must count for every run (checked, so a misconfigured case cannot
    /// report the cost of some other path).
    expect: Option<Reason>,
}

#[derive(Serialize, Default)]
struct DataPath {
    repeat: u32,
    rounds: usize,
    /// (path, median ns per packet)
    rows: Vec<(String, f64)>,
    verifier_instructions: u32,
    max_flows: u32,
    table_bytes_per_flow: f64,
    table_mib: f64,
    snat_exhausted: u64,
    /// Filling and swapping in one VIP's 65537-slot table, median of 5, ms.
    table_swap_ms: f64,
    /// BPF_F_TEST_XDP_LIVE_FRAMES: (path, million packets per second transmitted on a veth).
    live_mpps: Vec<(String, f64)>,
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

fn datapath(repeat: u32, rounds: usize) -> Result<DataPath> {
    // Capacity for every new flow the SYN case creates, plus headroom; 64 SNAT addresses keep
    // SNAT tuples (3 backends x 64 x 64512 ports) far from full.
    let syn_rounds = 3usize;
    let max_flows = (repeat as usize * syn_rounds + repeat as usize / 2) as u32;
    println!(
        "wklb data-path benchmark: BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} rounds \
         ({syn_rounds} for new flows); connection table {max_flows} entries"
    );
    let mut fx = Fixture::with_slots(max_flows, 64)?;
    let verifier_instructions = fx.program.verified_instructions()?;
    println!("verifier: {verifier_instructions} instructions processed");
    let table_bytes = fx.flows.memory_bytes()?;
    println!(
        "connection table memory (FLOWS + REV_FLOWS, preallocated): {:.1} MiB for {max_flows} flows = {:.0} bytes per flow",
        table_bytes as f64 / (1 << 20) as f64,
        table_bytes as f64 / max_flows as f64
    );

    // One established flow for the forward and reverse cases.
    let client = (CLIENT, 40000);
    let vip = (VIP, VIP_TCP_PORT);
    let (act, out) = fx.run(fx.client_if, &tcp(client, vip, "S", b""))?;
    if act != 3 && act != 4 {
        bail!("setup SYN was not forwarded (action {act})");
    }
    let seen = wklb_tests::packets::inspect(&out);
    fx.run(fx.client_if, &tcp(client, vip, "A", b""))?;

    let cases = [
        Case {
            name: "floor: XDP_TX, no work",
            program: "bench_tx",
            frame: pad(tcp(client, vip, "A", b"")),
            vary_source: false,
            rounds,
            expect: None,
        },
        Case {
            name: "floor: restore + XDP_TX",
            program: "bench_floor",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            rounds,
            expect: None,
        },
        Case {
            name: "established forward",
            program: "bench_wklb",
            frame: tcp64(client, vip, "A"),
            vary_source: false,
            rounds,
            expect: Some(Reason::Forwarded),
        },
        Case {
            name: "reverse (reply)",
            program: "bench_wklb",
            frame: tcp64((seen.dst, seen.dst_port), (seen.src, seen.src_port), "A"),
            vary_source: false,
            rounds,
            expect: Some(Reason::Reversed),
        },
        Case {
            name: "new flow (SYN)",
            program: "bench_wklb",
            frame: tcp64((CLIENT, 1), vip, "S"),
            vary_source: true,
            rounds: syn_rounds,
            expect: Some(Reason::Forwarded),
        },
        Case {
            name: "non-VIP pass",
            program: "bench_wklb",
            frame: tcp64(client, (EDGE_CLIENT_SIDE, 22), "S"),
            vary_source: false,
            rounds,
            expect: Some(Reason::PassNotOurs),
        },
    ];

    let mut results: Vec<(&str, f64)> = Vec::new();
    for c in &cases {
        let mut data = [0u64; BENCH_FRAME_LEN / 8];
        for (w, chunk) in data.iter_mut().zip(c.frame.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        fx.program.set_bench_frame(&BenchFrame {
            data,
            vary_source: c.vary_source as u32,
            redirect_ifindex: fx.backend_if,
        })?;
        let mut samples = Vec::new();
        for round in 0..c.rounds {
            let before = fx.reasons();
            let ns = time(&mut fx, c.program, &c.frame, repeat, false)?;
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
            print!(
                "\r  {:<28} round {}/{}: {ns:6.1} ns   ",
                c.name,
                round + 1,
                c.rounds
            );
            samples.push(ns);
        }
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        println!("\r  {:<28} median {median:6.1} ns/packet          ", c.name);
        results.push((c.name, median));
    }

    let floor = results[1].1;
    let bare = results[0].1;
    println!();
    println!("| path | ns/packet | vs restore+XDP_TX floor | vs bare XDP_TX |");
    println!("|---|---:|---:|---:|");
    for (name, ns) in &results {
        println!(
            "| {name} | {ns:.1} | {:.2}x | {:.2}x |",
            ns / floor,
            ns / bare
        );
    }
    let snat_exhausted = fx.reasons()[Reason::DropSnatExhausted as usize];
    println!("\nSNAT exhausted during the run: {snat_exhausted}");
    // Live frames: the kernel really transmits what the program returns (XDP_TX on the client
    // veth for the floor, a redirect to the backend veth for wklb's established forward path).
    let frames = repeat * 10;
    let established = tcp64(client, vip, "A");
    let mut live = Vec::new();
    for (name, program) in [
        ("floor: restore + XDP_TX, live", "bench_floor"),
        ("wklb established forward, live", "bench_wklb"),
    ] {
        let mut data = [0u64; BENCH_FRAME_LEN / 8];
        for (w, chunk) in data.iter_mut().zip(established.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        fx.program.set_bench_frame(&BenchFrame {
            data,
            vary_source: 0,
            redirect_ifindex: fx.backend_if,
        })?;
        let before = fx.reasons()[Reason::Forwarded as usize];
        let ns = time(&mut fx, program, &established, frames, true)?;
        if program == "bench_wklb" {
            let moved = fx.reasons()[Reason::Forwarded as usize] - before;
            if moved != frames as u64 {
                bail!("live frames: {moved} of {frames} counted as forwarded");
            }
        }
        let mpps = 1e3 / ns;
        println!("  {name:<34} {mpps:5.2} Mpps ({ns:.0} ns/frame, {frames} frames)");
        live.push((name.to_string(), mpps));
    }
    // Table swap: fill a fresh 65537-slot inner map and swap it in.
    let mut swaps: Vec<f64> = (0..5)
        .map(|i| {
            let t = Instant::now();
            fx.install(TCP_VIP_ID, &[(0, 1 + i), (1, 1), (2, 1)])
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        })
        .collect::<Result<_>>()?;
    swaps.sort_by(f64::total_cmp);
    let table_swap_ms = swaps[2];
    println!("table build + fill + atomic swap: {table_swap_ms:.1} ms");
    Ok(DataPath {
        repeat,
        rounds,
        rows: results.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        verifier_instructions,
        max_flows,
        table_bytes_per_flow: table_bytes as f64 / max_flows as f64,
        table_mib: table_bytes as f64 / (1 << 20) as f64,
        snat_exhausted,
        table_swap_ms,
        live_mpps: live,
    })
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
    let floor = d
        .rows
        .iter()
        .find(|x| x.0.starts_with("floor: restore"))
        .map(|x| x.1)
        .unwrap_or(1.0);
    let mut s = format!(
        "# wklb benchmark {}\n\nMachine: {}. {}\n\n",
        r.started,
        r.machine,
        if r.quick { "Quick run." } else { "" }
    );
    s += &format!(
        "## Data path (BPF_PROG_TEST_RUN, repeat {}, median of {} rounds)\n\n| path | ns/packet | vs floor (restore + XDP_TX) |\n|---|---:|---:|\n",
        d.repeat, d.rounds
    );
    for (n, v) in &d.rows {
        s += &format!("| {n} | {v:.1} | {:.2}x |\n", v / floor);
    }
    s += &format!(
        "\nVerifier: {} instructions. Connection table: {:.0} bytes per flow preallocated ({:.0} MiB for {} flows; {:.0} MiB at 1,000,000). Table build + fill + atomic swap: {:.1} ms.\n\n",
        d.verifier_instructions,
        d.table_bytes_per_flow,
        d.table_mib,
        d.max_flows,
        d.table_bytes_per_flow * 1e6 / (1 << 20) as f64,
        d.table_swap_ms
    );
    if !d.live_mpps.is_empty() {
        s += "Live frames (BPF_F_TEST_XDP_LIVE_FRAMES, transmitted on a veth):\n\n| path | Mpps | vs floor |\n|---|---:|---:|\n";
        let f = d.live_mpps[0].1;
        for (n, v) in &d.live_mpps {
            s += &format!("| {n} | {v:.2} | {:.2}x |\n", v / f);
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
