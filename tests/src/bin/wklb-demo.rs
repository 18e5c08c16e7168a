//! `cargo xtask demo`: the whole thing on one machine. Builds a topology in network namespaces
//! (client, edge running the real `wklb daemon`, three backends with nginx health endpoints),
//! drives a few hundred long-lived clients, shows the distribution and counters, kills one
//! backend and shows the health change and where new connections go, then tears down.
//! Ctrl-C at any moment stops the demo and removes everything it created.
//!
//! `--edges N` (2 or 3) runs the anycast demo instead: a router running BIRD in front of N
//! edges, each running wklb and BIRD; connections spread over the edges, one edge is drained
//! and undrained, another dies and its clients reconnect to the rest.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use wklb_tests::{root::have_root, topology::*};

struct Demo {
    stop: Arc<AtomicBool>,
    start: Instant,
}

impl Demo {
    fn step(&self, what: &str) -> Result<()> {
        self.check()?;
        println!("\n[{:>5.1}s] == {what}", self.start.elapsed().as_secs_f64());
        Ok(())
    }
    fn say(&self, what: &str) {
        println!("[{:>5.1}s]    {what}", self.start.elapsed().as_secs_f64());
    }
    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }
    /// Sleeps in small steps so Ctrl-C is noticed quickly.
    fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.check()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn main() {
    if !have_root() {
        eprintln!("the demo creates network namespaces and loads XDP: run `sudo cargo xtask demo`");
        std::process::exit(1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).expect("signal handler");
    }
    let demo = Demo {
        stop,
        start: Instant::now(),
    };
    let args: Vec<String> = std::env::args().collect();
    let edges = args
        .iter()
        .position(|a| a == "--edges")
        .map(|i| args.get(i + 1).and_then(|n| n.parse::<usize>().ok()));
    let result = match edges {
        None => run(&demo),
        Some(Some(n)) if (2..=3).contains(&n) => run_fleet(&demo, n),
        Some(_) => {
            eprintln!("--edges takes 2 or 3");
            std::process::exit(2);
        }
    };
    // The topology was dropped inside run(): namespaces, processes and pins are gone.
    match result {
        Ok(()) => println!(
            "\n[{:>5.1}s] == done: namespaces, processes and pinned objects removed",
            demo.start.elapsed().as_secs_f64()
        ),
        Err(e) if demo.stop.load(Ordering::Relaxed) => {
            println!("\ninterrupted ({e}); everything the demo created has been removed");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}\neverything the demo created has been removed");
            std::process::exit(1);
        }
    }
}

fn run(d: &Demo) -> Result<()> {
    d.step("building the topology in network namespaces")?;
    let mut t = Topology::new(3)?;
    d.say(&format!(
        "client ns {} (10.1.0.2) -> edge ns {} (wklb, XDP on both sides) -> switch {} -> backends {}",
        t.client_ns,
        t.edge_ns,
        t.switch_ns,
        t.backend_ns.join(", ")
    ));
    d.say(&format!(
        "VIP {VIP}:{TCP_PORT}/tcp and :{UDP_PORT}/udp, SNAT address {SNAT}"
    ));
    d.step("starting three WuKongIM-like backends and their nginx /health endpoints")?;
    for i in 0..3 {
        t.start_backend(i)?;
        t.start_health(i)?;
        d.say(&format!(
            "b{} at {}:{TCP_PORT}, health http://{}:{HEALTH_PORT}/health",
            i + 1,
            backend_addr(i),
            backend_addr(i)
        ));
    }
    d.step("starting `wklb daemon` with the embedded default config")?;
    let cfg = t.write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))?;
    d.say(&format!(
        "config: {} (HTTP health checks every 500 ms, rise 2, fall 2)",
        cfg.display()
    ));
    t.start_daemon(&cfg)?;
    for line in t
        .daemon_log()
        .lines()
        .filter(|l| l.contains("XDP on") || l.contains("ready"))
    {
        d.say(line.split("] ").last().unwrap_or(line));
    }

    d.step(
        "400 long-lived clients connect and ping every second (WKProto-style 0x70/0x80) for 50 s",
    )?;
    let clients = t.client(&[
        "tcp",
        "--target",
        &format!("{VIP}:{TCP_PORT}"),
        "--conns",
        "400",
        "--ping-interval-ms",
        "1000",
        "--duration-s",
        "50",
    ])?;
    let _clients = ClientGuard(Some(clients));
    d.sleep(Duration::from_secs(6))?;
    d.step("`wklb stats`: distribution and counters")?;
    println!("{}", t.wklb(&["stats"])?);

    d.step("killing backend b2 (its server and its health endpoint)")?;
    t.stop_backend(1);
    t.stop_health(1);
    let killed = Instant::now();
    loop {
        d.check()?;
        let s = t.stats()?;
        let row = s["backends"].as_array().and_then(|b| {
            b.iter()
                .find(|r| {
                    r["vip"] == "im-tcp" && r["address"] == backend_addr(1).to_string().as_str()
                })
                .cloned()
        });
        if row.is_some_and(|r| r["in_table"] == false) {
            d.say(&format!(
                "health check marked b2 DOWN and swapped it out of the Maglev table after {:.2} s",
                killed.elapsed().as_secs_f64()
            ));
            break;
        }
        if killed.elapsed() > Duration::from_secs(10) {
            bail!(
                "b2 still in the table 10 s after it died:\n{}",
                t.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{}", t.wklb(&["backend", "list"])?);

    d.step("150 new connections: none goes to the dead backend")?;
    let fresh = Topology::client_report(t.client(&[
        "tcp",
        "--target",
        &format!("{VIP}:{TCP_PORT}"),
        "--conns",
        "150",
        "--ping-interval-ms",
        "0",
        "--duration-s",
        "1",
    ])?)?;
    d.say(&format!(
        "new connections per backend: {}",
        fresh["per_backend"]
    ));

    d.step(
        "a spoofed SYN flood at the VIP, 30,000 SYN/s from random addresses for 8 s: SYN cookies engage, new users still connect",
    )?;
    let mut spoof = command_in(&t.client_ns, workspace_bin("wk-spoof"))?;
    spoof
        .args(["--dst", &format!("{VIP}:{TCP_PORT}"), "--flags", "S"])
        .args(["--flood-from", "10.1.128.0/17", "--rate", "30000"])
        .args(["--duration-s", "8"])
        .stdout(std::process::Stdio::piped());
    let flood = ClientGuard(Some(spoof.spawn()?));
    let started = Instant::now();
    loop {
        d.check()?;
        let s = t.stats()?;
        if s["vips"][0]["syn_cookies_active"] == true {
            d.say(&format!(
                "SYN cookies engaged {:.1} s into the flood: the edge answers SYNs itself, keeps nothing, and only clients that complete the handshake reach a backend",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if started.elapsed() > Duration::from_secs(6) {
            bail!("cookie mode did not engage:\n{}", t.daemon_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // New users arrive a few seconds into the flood (the first second's SYNs, forwarded before
    // cookie mode engaged, still crowd the backends' own SYN queues for a moment).
    d.sleep(Duration::from_secs(3).saturating_sub(started.elapsed()))?;
    let during = Topology::client_report(t.client(&[
        "tcp",
        "--target",
        &format!("{VIP}:{TCP_PORT}"),
        "--conns",
        "100",
        "--ping-interval-ms",
        "0",
        "--duration-s",
        "1",
    ])?)?;
    let sent = flood.wait(d)?;
    let v = t.stats()?["vips"][0].clone();
    d.say(&format!(
        "during the flood {} of 100 new connections opened; {} spoofed SYNs sent, {} answered with cookies, {} valid cookies came back (the new users)",
        during["connected"], sent["sent"], v["cookies_sent"], v["cookies_valid"]
    ));

    d.step("a few live connections (`wklb conns`): client, backend, SNAT address:port")?;
    println!("{}", t.wklb(&["conns", "--limit", "5"])?);

    d.step("waiting for the long-lived clients to finish their 50 s")?;
    let report = _clients.wait(d)?;
    d.say(&format!(
        "connected {} of 400; per backend {}; ended early {} (all on b2: {}); pongs {}, lost {}; ping rtt p50 {:.2} ms p99 {:.2} ms",
        report["connected"],
        report["per_backend"],
        report["broken"],
        report["broken_per_backend"],
        report["pongs"],
        report["lost_pongs"],
        report["rtt_ms_p50"].as_f64().unwrap_or(0.0),
        report["rtt_ms_p99"].as_f64().unwrap_or(0.0)
    ));
    d.step("final `wklb stats`")?;
    println!("{}", t.wklb(&["stats"])?);

    d.step("tearing down: `wklb unload`, then the namespaces")?;
    println!("{}", t.wklb(&["unload"])?.trim());
    drop(t);
    Ok(())
}

/// The anycast demo: a router with BIRD and ECMP in front of `n` edges running wklb and BIRD.
fn run_fleet(d: &Demo, n: usize) -> Result<()> {
    use wklb_tests::fleet::{Fleet, edge_snat, per_edge};
    d.step(&format!(
        "building a router, {n} edges and 3 backends in network namespaces"
    ))?;
    let mut f = Fleet::new(n, 3)?;
    d.say(&format!(
        "client ns {} -> router ns {} (BIRD, ECMP on the 5-tuple) -> edges {} -> backends",
        f.client_ns,
        f.router_ns,
        f.edges
            .iter()
            .map(|e| e.ns.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let all: Vec<usize> = (0..n).collect();
    d.step(
        "starting wklb and BIRD on every edge: wklb installs the VIP route, BIRD advertises it",
    )?;
    for k in 0..n {
        f.start_edge(k)?;
        d.say(&format!(
            "edge {}: wklb (SNAT {}), BIRD peering with the router over eBGP + BFD",
            k + 1,
            edge_snat(k)
        ));
    }
    let took = f.wait_next_hops(&all, Duration::from_secs(30))?;
    d.say(&format!(
        "the router's route to {VIP} has {n} next hops {:.1} s later:",
        took.as_secs_f64()
    ));
    println!(
        "{}",
        f.router_next_hops()?
            .iter()
            .map(|h| format!("        via {h}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("{}", f.wklb(0, &["edge", "status"])?);

    d.step("300 long-lived clients connect through the router for 25 s")?;
    let target = format!("{VIP}:{TCP_PORT}");
    let tcp = |conns: &str, secs: &str, extra: &[&str]| -> Result<std::process::Child> {
        let mut a = vec![
            "tcp",
            "--target",
            &target,
            "--conns",
            conns,
            "--ping-interval-ms",
            "1000",
            "--duration-s",
            secs,
        ];
        a.extend_from_slice(extra);
        f.client(&a)
    };
    let long = ClientGuard(Some(tcp("300", "25", &["--reconnect"])?));
    d.sleep(Duration::from_secs(3))?;
    for k in 0..n {
        let s = f.json(k, &["edge", "status"])?;
        d.say(&format!(
            "edge {}: {} open connections",
            k + 1,
            s["open_flows"]
        ));
    }

    d.step("`wklb edge drain` on edge 1: withdrawn at once, its connections keep working")?;
    let t = Instant::now();
    println!("{}", f.wklb(0, &["edge", "drain"])?);
    let rest: Vec<usize> = (1..n).collect();
    let gone = f.wait_next_hops(&rest, Duration::from_secs(5))?;
    d.say(&format!(
        "the router dropped edge 1 {:.0} ms after the command ({:.0} ms after the route left)",
        t.elapsed().as_secs_f64() * 1000.0,
        gone.as_secs_f64() * 1000.0
    ));
    let fresh = Topology::client_report(tcp("150", "1", &[])?)?;
    d.say(&format!(
        "150 new connections per edge: {:?} (none on the drained edge 1)",
        per_edge(&fresh, "per_backend", n)
    ));
    d.step("`wklb edge undrain`: announced again")?;
    println!(
        "{}",
        f.wklb(0, &["edge", "undrain"])?
            .lines()
            .next()
            .unwrap_or("")
    );
    let back = f.wait_next_hops(&all, Duration::from_secs(5))?;
    d.say(&format!(
        "the router uses edge 1 again {:.0} ms later",
        back.as_secs_f64() * 1000.0
    ));

    d.step(&format!(
        "edge {n} dies (its wklb and BIRD killed, its links down)"
    ))?;
    f.kill_edge(n - 1)?;
    let gone = f.wait_next_hops(&all[..n - 1], Duration::from_secs(5))?;
    d.say(&format!(
        "the router routes around it after {:.0} ms; its clients reconnect through the other edges",
        gone.as_secs_f64() * 1000.0
    ));
    d.step("waiting for the long-lived clients to finish")?;
    let r = long.wait(d)?;
    d.say(&format!(
        "carried per edge {:?}; broken per edge {:?} (only the dead edge's); reconnected {} of them, through edges {:?}",
        per_edge(&r, "per_backend", n),
        per_edge(&r, "broken_per_backend", n),
        r["reconnected"],
        per_edge(&r, "reconnected_per_backend", n)
    ));
    d.step("tearing down")?;
    drop(f);
    Ok(())
}

/// Stops the client driver (by its PID) if the demo ends early.
struct ClientGuard(Option<std::process::Child>);

impl ClientGuard {
    fn wait(mut self, d: &Demo) -> Result<serde_json::Value> {
        let mut c = self.0.take().expect("client");
        loop {
            if let Some(_status) = c.try_wait()? {
                return Topology::client_report(c);
            }
            if d.stop.load(Ordering::Relaxed) {
                let _ = c.kill();
                let _ = c.wait();
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
