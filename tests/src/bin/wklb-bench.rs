//! `cargo xtask bench`: per-packet cost of the data path against the XDP floor, measured with
//! BPF_PROG_TEST_RUN (repeat >= 1,000,000 unless --quick) in one run, median of several rounds.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{BENCH_FRAME_LEN, BenchFrame, PROTO_TCP, Reason};
use wklb_tests::{fixture::*, netns::in_private_netns, packets::tcp, root::have_root};

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

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if !have_root() {
        bail!("the benchmark loads XDP programs: run `sudo cargo xtask bench`");
    }
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let rounds = if quick { 3 } else { 5 };
    in_private_netns(move || run(repeat, rounds))
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

fn run(repeat: u32, rounds: usize) -> Result<()> {
    // Capacity for every new flow the SYN case creates, plus headroom; 64 SNAT addresses keep
    // SNAT tuples (3 backends x 64 x 64512 ports) far from full.
    let syn_rounds = 3usize;
    let max_flows = (repeat as usize * syn_rounds + repeat as usize / 2) as u32;
    println!(
        "wklb data-path benchmark: BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} rounds \
         ({syn_rounds} for new flows); connection table {max_flows} entries"
    );
    let mut fx = Fixture::new(max_flows)?;
    let snat: Vec<Ipv4Addr> = (0..64).map(|i| Ipv4Addr::new(10, 20, 1, i)).collect();
    fx.dp.set_snat_addrs(&snat)?;
    println!(
        "verifier: {} instructions processed",
        fx.dp.verified_instructions()?
    );
    let table_bytes = fx.dp.map_memory(lb_common::names::FLOWS)?
        + fx.dp.map_memory(lb_common::names::REV_FLOWS)?;
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
        fx.dp.set_bench_frame(&BenchFrame {
            data,
            vary_source: c.vary_source as u32,
            _pad: 0,
        })?;
        let mut samples = Vec::new();
        for round in 0..c.rounds {
            let before = fx.dp.reasons()?;
            let ns = time(&mut fx, c.program, &c.frame, repeat)?;
            if let Some(r) = c.expect {
                let moved = fx.dp.reasons()?[r as usize] - before[r as usize];
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
    let flows = fx.dp.reason(Reason::DropSnatExhausted)?;
    println!(
        "\nSNAT exhausted during the run: {flows}; flows in table: {}",
        fx.dp.flows()?.len()
    );
    let _ = PROTO_TCP;
    Ok(())
}

/// Runs `program` `repeat` times in the kernel; returns the kernel-measured ns per run.
fn time(fx: &mut Fixture, program: &str, frame: &[u8], repeat: u32) -> Result<f64> {
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, fx.client_if, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let prog = fx.dp.extra_program(program)?;
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("test run of {program}"))?;
    Ok(res.duration.as_nanos() as f64)
}
