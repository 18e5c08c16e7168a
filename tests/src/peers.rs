//! End-to-end benchmark peers: each load balancer in turn in the edge namespace of one topology,
//! over the same backends, measured the same way in the same run.
//!
//! - `wklb`: the real daemon, XDP full NAT.
//! - `nginx-stream`: nginx `stream` proxy (the access layer WuKongIM's docs recommend).
//! - `haproxy`: HAProxy `mode tcp`.
//! - `nftables`: kernel DNAT (jhash over the backends) + masquerade, conntrack.
//! - `direct`: no balancer; the client goes to one backend, routed by the edge kernel (ceiling).

use std::{net::Ipv4Addr, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{netns::run, topology::*};

/// `wklb-cookies`: wklb with every TCP VIP in `syn_cookies = "always"` (what a client gets while
/// cookie mode is engaged), measured in the same run as plain wklb.
pub const PEERS: [&str; 6] = [
    "wklb",
    "wklb-cookies",
    "nginx-stream",
    "haproxy",
    "nftables",
    "direct",
];

/// Whole-machine CPU from /proc/stat: (busy, softirq) in seconds.
fn cpu_now() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 7 {
        return (0.0, 0.0);
    }
    // user nice system idle iowait irq softirq steal ...
    let hz = 100.0;
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    (busy / hz, f[6] / hz)
}

/// utime + stime (seconds) of a process and its children threads/processes by parent PID.
fn proc_cpu(pids: &[u32]) -> f64 {
    let mut all: Vec<u32> = pids.to_vec();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or("");
            let ppid: u32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if pids.contains(&ppid) {
                all.push(pid);
            }
        }
    }
    all.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or("").to_string();
            let f: Vec<f64> = after
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // after ')': state(0, not numeric so skipped) ... utime is field 14 overall = index 11 here
            (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
        })
        .sum()
}

/// Sum of run_time_ns over the XDP programs a process holds (needs kernel.bpf_stats_enabled).
fn bpf_run_time(pid: u32) -> f64 {
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in rd.flatten() {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            if (t.contains("prog_type:\t6") || t.contains("prog_type: 6"))
                && let Some(v) = t.lines().find_map(|l| l.strip_prefix("run_time_ns:"))
            {
                ns += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e9
}

/// What runs the balancer, so its own CPU can be read.
pub enum Running {
    Proc(Proc),
    Daemon,
    Kernel,
}

pub struct Peer {
    pub name: &'static str,
    pub running: Running,
    /// Where clients connect: the VIP, or b1 for `direct`.
    pub target: Ipv4Addr,
}

impl Peer {
    /// Balancer-attributed CPU seconds so far (process CPU, or XDP program run time).
    fn cpu(&self, t: &Topology) -> f64 {
        match &self.running {
            Running::Proc(p) => proc_cpu(&[p.pid()]),
            Running::Daemon => t
                .daemon
                .as_ref()
                .map(|d| bpf_run_time(d.pid()))
                .unwrap_or(0.0),
            Running::Kernel => 0.0,
        }
    }
}

fn backends_list(
    port: u16,
    n: usize,
    sep: &str,
    fmt: impl Fn(usize, Ipv4Addr, u16) -> String,
) -> String {
    (0..n)
        .map(|i| fmt(i, backend_addr(i), port))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Starts peer `name` in the edge namespace.
pub fn start(t: &mut Topology, name: &'static str) -> Result<Peer> {
    let edge = t.edge_ns.clone();
    let lo_vip = |add: bool| {
        run(
            "ip",
            &[
                "-n",
                &edge,
                "addr",
                if add { "add" } else { "del" },
                "10.100.0.1/32",
                "dev",
                "lo",
            ],
        )
    };
    match name {
        "wklb" | "wklb-cookies" => {
            let _ = lo_vip(false);
            let mode = if name == "wklb" { "auto" } else { "always" };
            let mut cfg =
                Topology::with_cookies(&t.config(&[(0, 100), (1, 100), (2, 100)], ""), mode);
            for (vname, port, set) in [("http", HTTP_PORT, 3usize), ("iperf", IPERF_PORT, 1)] {
                cfg.push_str(&format!(
                    "[[vip]]\nname = \"{vname}\"\naddress = \"{VIP}\"\nport = {port}\nsyn_cookies = \"{mode}\"\n\n[vip.health_check]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\n"
                ));
                for i in 0..set {
                    cfg.push_str(&format!(
                        "[[vip.backend]]\naddress = \"{}\"\n\n",
                        backend_addr(i)
                    ));
                }
            }
            let path = t.write_config(&cfg)?;
            t.start_daemon(&path)?;
            Ok(Peer {
                name,
                running: Running::Daemon,
                target: VIP,
            })
        }
        "nginx-stream" => {
            lo_vip(true)?;
            let dir = t.dir.path().join("edge-nginx");
            std::fs::create_dir_all(dir.join("logs"))?;
            let up = |port: u16, n: usize| {
                backends_list(port, n, " ", |_, a, p| format!("server {a}:{p};"))
            };
            let conf = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes auto;\nworker_rlimit_nofile 65536;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
                 events {{ worker_connections 16384; }}\n\
                 stream {{\n  upstream im {{ hash $remote_addr$remote_port consistent; {im} }}\n  upstream web {{ hash $remote_addr$remote_port consistent; {web} }}\n  upstream perf {{ {perf} }}\n\
                 server {{ listen {VIP}:{TCP_PORT}; proxy_pass im; }}\n  server {{ listen {VIP}:{HTTP_PORT}; proxy_pass web; }}\n  server {{ listen {VIP}:{IPERF_PORT}; proxy_pass perf; }}\n}}\n",
                d = dir.display(),
                im = up(TCP_PORT, 3),
                web = up(HTTP_PORT, 3),
                perf = up(IPERF_PORT, 1),
            );
            std::fs::write(dir.join("nginx.conf"), conf)?;
            let conf = dir.join("nginx.conf").to_string_lossy().into_owned();
            let prefix = dir.to_string_lossy().into_owned();
            spawn_proxy(
                t,
                name,
                "nginx",
                &["-c", &conf, "-p", &prefix],
                "apt-get install nginx libnginx-mod-stream",
            )
        }
        "haproxy" => {
            lo_vip(true)?;
            let dir = t.dir.path().join("edge-haproxy");
            std::fs::create_dir_all(&dir)?;
            let be = |port: u16, n: usize| {
                backends_list(port, n, "\n", |i, a, p| format!("  server s{i} {a}:{p}"))
            };
            let conf = format!(
                "global\n  maxconn 9000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
                 frontend im\n  bind {VIP}:{TCP_PORT}\n  default_backend im\nbackend im\n  balance source\n{im}\n\
                 frontend web\n  bind {VIP}:{HTTP_PORT}\n  default_backend web\nbackend web\n  balance roundrobin\n{web}\n\
                 frontend perf\n  bind {VIP}:{IPERF_PORT}\n  default_backend perf\nbackend perf\n{perf}\n",
                im = be(TCP_PORT, 3),
                web = be(HTTP_PORT, 3),
                perf = be(IPERF_PORT, 1),
            );
            std::fs::write(dir.join("haproxy.cfg"), conf)?;
            let conf = dir.join("haproxy.cfg").to_string_lossy().into_owned();
            spawn_proxy(
                t,
                name,
                "haproxy",
                &["-f", &conf, "-db"],
                "apt-get install haproxy",
            )
        }
        "nftables" => {
            let _ = lo_vip(false);
            let map = backends_list(0, 3, ", ", |i, a, _| format!("{i} : {a}"));
            let rules = format!(
                "table ip wkbench {{\n chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {VIP} tcp dport {{ {TCP_PORT}, {HTTP_PORT} }} dnat to jhash ip saddr . tcp sport mod 3 map {{ {map} }}\n  ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {b1}\n }}\n chain post {{ type nat hook postrouting priority srcnat; policy accept;\n  ip daddr 10.2.0.0/24 ct status dnat snat to {SNAT}\n }}\n}}\n",
                b1 = backend_addr(0),
            );
            let f = t.dir.path().join("nft.rules");
            std::fs::write(&f, rules)?;
            t.exec(&edge, &["nft", "-f", &f.to_string_lossy()])?;
            Ok(Peer {
                name,
                running: Running::Kernel,
                target: VIP,
            })
        }
        "direct" => {
            let _ = lo_vip(false);
            Ok(Peer {
                name,
                running: Running::Kernel,
                target: backend_addr(0),
            })
        }
        other => bail!("unknown peer {other}"),
    }
}

/// Stops a peer and leaves the edge namespace as it found it.
pub fn stop(t: &mut Topology, p: Peer) -> Result<()> {
    match p.name {
        "wklb" | "wklb-cookies" => {
            let _ = t.wklb(&["unload"]);
            if let Some(mut d) = t.daemon.take() {
                d.stop(Duration::from_secs(10));
            }
        }
        "nftables" => {
            t.exec(&t.edge_ns, &["nft", "delete", "table", "ip", "wkbench"])?;
        }
        _ => {}
    }
    drop(p);
    let _ = run(
        "ip",
        &[
            "-n",
            &t.edge_ns,
            "addr",
            "del",
            "10.100.0.1/32",
            "dev",
            "lo",
        ],
    );
    Ok(())
}

/// Starts a proxy peer in the edge namespace and waits for its VIP listener; on failure the
/// error carries the end of the proxy's own stderr.
fn spawn_proxy(
    t: &Topology,
    name: &'static str,
    program: &str,
    args: &[&str],
    install: &str,
) -> Result<Peer> {
    let log_path = t.dir.path().join(format!("{name}.stderr"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = command_in(&t.edge_ns, program)?;
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut proc = Proc {
        name: name.into(),
        child: cmd
            .spawn()
            .with_context(|| format!("starting {program} ({install})"))?,
    };
    if let Err(e) = wait_port(&t.edge_ns, VIP, TCP_PORT) {
        proc.stop(Duration::from_secs(3));
        let err = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{e}; {program} said: {}", tail.join(" | "));
    }
    Ok(Peer {
        name,
        running: Running::Proc(proc),
        target: VIP,
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerResult {
    pub peer: String,
    pub ok: bool,
    pub error: Option<String>,
    /// wrk, `Connection: close`: new connections (requests) per second.
    pub conn_per_s: f64,
    /// CPU the balancer itself spent per 1,000 connections: its process CPU, or the XDP
    /// program's run time (kernel.bpf_stats_enabled); nftables has none outside softirq. ms.
    pub own_cpu_ms_per_1k_conn: f64,
    /// Machine-wide softirq time per 1,000 connections in the same window, ms (includes the
    /// clients' and backends' network stacks).
    pub softirq_ms_per_1k_conn: f64,
    /// own + the softirq this peer adds over the no-balancer run (`direct`) of the same
    /// benchmark, ms per 1,000 connections.
    pub balancer_cpu_ms_per_1k_conn: f64,
    /// Whole-machine busy CPU per connection (clients and backends included), in us.
    pub machine_cpu_us_per_conn: f64,
    /// Connections per second of balancer CPU (the efficiency ratio).
    pub conn_per_balancer_cpu_s: f64,
    pub ping_rtt_ms_p50: f64,
    pub ping_rtt_ms_p99: f64,
    pub ping_conns: u64,
    pub ping_broken: u64,
    /// iperf3, 4 streams.
    pub throughput_gbit_s: f64,
    pub balancer_cpu_s_per_gb: f64,
}

/// Runs every measurement against a started peer.
pub fn measure(t: &Topology, p: &Peer, quick: bool) -> Result<PeerResult> {
    let mut r = PeerResult {
        peer: p.name.to_string(),
        ok: true,
        ..Default::default()
    };
    let secs = if quick { 4 } else { 10 };
    // Connection rate.
    let (busy0, soft0) = cpu_now();
    let bal0 = p.cpu(t);
    let url = format!("http://{}:{HTTP_PORT}/", p.target);
    let out = t.exec(
        &t.client_ns,
        &[
            "wrk",
            "-t",
            "2",
            "-c",
            "50",
            "-d",
            &format!("{secs}s"),
            "-H",
            "Connection: close",
            &url,
        ],
    )?;
    let (busy1, soft1) = cpu_now();
    let bal1 = p.cpu(t);
    let rps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output without Requests/sec:\n{out}"))?;
    let total = rps * secs as f64;
    r.conn_per_s = rps;
    r.own_cpu_ms_per_1k_conn = (bal1 - bal0) * 1000.0 / (total / 1000.0);
    r.softirq_ms_per_1k_conn = (soft1 - soft0) * 1000.0 / (total / 1000.0);
    r.machine_cpu_us_per_conn = (busy1 - busy0) * 1e6 / total;
    // Long-lived ping latency.
    let conns = if quick { 1000 } else { 3000 };
    let c = t.client(&[
        "tcp",
        "--target",
        &format!("{}:{TCP_PORT}", p.target),
        "--conns",
        &conns.to_string(),
        "--ping-interval-ms",
        "1000",
        "--duration-s",
        &secs.to_string(),
    ])?;
    let rep = Topology::client_report(c)?;
    r.ping_rtt_ms_p50 = rep["rtt_ms_p50"].as_f64().unwrap_or(0.0);
    r.ping_rtt_ms_p99 = rep["rtt_ms_p99"].as_f64().unwrap_or(0.0);
    r.ping_conns = rep["connected"].as_u64().unwrap_or(0);
    r.ping_broken = rep["broken"].as_u64().unwrap_or(0);
    // Throughput.
    let bal0 = p.cpu(t) + cpu_now().1;
    let out = t.exec(
        &t.client_ns,
        &[
            "iperf3",
            "-c",
            &p.target.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-P",
            "4",
            "-t",
            &secs.min(5).to_string(),
            "-J",
        ],
    )?;
    let bal1 = p.cpu(t) + cpu_now().1;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    r.throughput_gbit_s = bps / 1e9;
    r.balancer_cpu_s_per_gb = if bytes > 0.0 {
        (bal1 - bal0) / (bytes / 1e9)
    } else {
        0.0
    };
    Ok(r)
}

/// Fills the balancer-CPU figures relative to the `direct` (no balancer) run.
pub fn attribute_cpu(results: &mut [PeerResult]) {
    let base = results
        .iter()
        .find(|r| r.peer == "direct" && r.error.is_none())
        .map(|r| r.softirq_ms_per_1k_conn)
        .unwrap_or(0.0);
    for r in results.iter_mut().filter(|r| r.error.is_none()) {
        r.balancer_cpu_ms_per_1k_conn =
            r.own_cpu_ms_per_1k_conn + (r.softirq_ms_per_1k_conn - base).max(0.0);
        r.conn_per_balancer_cpu_s = if r.balancer_cpu_ms_per_1k_conn > 0.0 {
            1_000_000.0 / r.balancer_cpu_ms_per_1k_conn
        } else {
            0.0
        };
    }
}
