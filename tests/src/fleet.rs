//! A fleet of edges behind a router, for anycast over BGP:
//!
//! ```text
//!  [client ns] c0 10.1.0.2 ── 10.1.0.1 [router ns: BIRD, ECMP over the edges' BGP routes]
//!                                  ├── r1 10.6.1.1 ── u1 10.6.1.2 [edge 1: wklb + BIRD] d1 10.2.0.1 (SNAT 10.2.0.101) ─┐
//!                                  ├── r2 10.6.2.1 ── u2 10.6.2.2 [edge 2: wklb + BIRD] d2 10.2.0.2 (SNAT 10.2.0.102) ─┤ switch ── backends
//!                                  └── ...                                                                            ┘ 10.2.0.11..
//! ```
//!
//! Every edge runs the same wklb config (but its own SNAT address) with an `[announce]` section;
//! its BIRD learns the VIP route from wklb's table and advertises it over eBGP with BFD. The
//! router's BIRD installs one ECMP route to the VIP over every edge that announces it, hashed on
//! the 5-tuple. Like a router in front of a full-NAT fleet must, the lab router keeps each
//! connection on the edge that took its first packet (conntrack marks): a full-NAT flow cannot
//! move, since the data node knows it by the first edge's SNAT address. Backends greet with
//! `NAME@SNAT`, so a client report tells which edge carried each connection.
//!
//! Names are unique per run; processes, namespaces and pins are removed on drop.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::run,
    topology::{
        HEALTH_PORT, Proc, TCP_PORT, UDP_PORT, VIP, backend_addr, command_in, ethtool, ip, ipn,
        spawn_backend, spawn_health, wire_backend, workspace_bin,
    },
};

/// The kernel table wklb announces into on every edge.
pub const ANNOUNCE_TABLE: u32 = 200;

pub fn edge_snat(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, 101 + k as u8)
}

/// Edge `k`'s address on its link to the router (the BGP next hop).
pub fn edge_uplink(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 6, k as u8 + 1, 2)
}

pub struct FleetEdge {
    pub ns: String,
    pub up: String,
    pub down: String,
    pub pin_path: PathBuf,
    pub socket: PathBuf,
    pub drain_file: PathBuf,
    pub config: PathBuf,
    pub daemon: Option<Proc>,
    pub bird: Option<Proc>,
}

/// How the lab router treats a connection when the edges announcing the VIP change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Router {
    /// Keeps it on the edge that took its first packet (what a full-NAT fleet needs).
    FlowAffinity,
    /// Plain ECMP as the kernel installs BIRD's multipath route (hash-threshold): connections
    /// are re-hashed over whatever edges remain.
    Stateless,
}

pub struct Fleet {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub client_ns: String,
    pub router_ns: String,
    pub switch_ns: String,
    pub edges: Vec<FleetEdge>,
    pub backend_ns: Vec<String>,
    /// Backends (the same on every edge).
    backends: usize,
    procs: Vec<Proc>,
    router_bird: Option<Proc>,
    created: Vec<String>,
    peer_pass: crate::lab::PeerPass,
}

impl Fleet {
    /// Builds the namespaces and links, starts the backends (with health endpoints) and the
    /// router's BIRD. Edges are started with `start_edge`.
    pub fn new(edges: usize, backends: usize) -> Result<Self> {
        Self::with_router(edges, backends, Router::FlowAffinity)
    }

    pub fn with_router(edges: usize, backends: usize, router: Router) -> Result<Self> {
        crate::programs::require_lab()?;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "wf{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()?;
        let mut f = Fleet {
            client_ns: format!("{id}-cli"),
            router_ns: format!("{id}-rt"),
            switch_ns: format!("{id}-sw"),
            edges: Vec::new(),
            backend_ns: Vec::new(),
            backends,
            procs: Vec::new(),
            router_bird: None,
            created: Vec::new(),
            peer_pass: Default::default(),
            dir,
            id,
        };
        f.build(edges, backends, router)?;
        Ok(f)
    }

    fn ns_add(&mut self, ns: &str) -> Result<()> {
        run("ip", &["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ipn(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn ifname(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.id)
    }

    fn peer_pass(&mut self, ns: &str, ifname: &str) -> Result<()> {
        self.peer_pass.add(&self.id, ns, ifname)
    }

    fn build(&mut self, edges: usize, backends: usize, router: Router) -> Result<()> {
        let (cli, rt, sw) = (
            self.client_ns.clone(),
            self.router_ns.clone(),
            self.switch_ns.clone(),
        );
        for ns in [&cli, &rt, &sw] {
            self.ns_add(ns)?;
        }
        ipn(&sw, &["link", "add", "br0", "type", "bridge"])?;
        ipn(&sw, &["link", "set", "br0", "up"])?;
        let (c0, rc) = (self.ifname("c0"), self.ifname("rc"));
        ip(&[
            "link", "add", &c0, "netns", &cli, "type", "veth", "peer", "name", &rc, "netns", &rt,
        ])?;
        ipn(&cli, &["addr", "add", "10.1.0.2/24", "dev", &c0])?;
        ipn(&cli, &["link", "set", &c0, "up"])?;
        ipn(&cli, &["route", "add", "default", "via", "10.1.0.1"])?;
        ethtool(&cli, &c0, &["tx", "off"])?;
        ethtool(&cli, &c0, &["gro", "on"])?;
        ipn(&rt, &["addr", "add", "10.1.0.1/24", "dev", &rc])?;
        ipn(&rt, &["link", "set", &rc, "up"])?;
        crate::netns::in_named_netns(&rt, || -> Result<()> {
            crate::netns::enable_forwarding()?;
            // ECMP on the 5-tuple, as routers in front of load balancers hash.
            std::fs::write("/proc/sys/net/ipv4/fib_multipath_hash_policy", "1")
                .context("fib_multipath_hash_policy")
        })??;
        for k in 0..edges {
            self.add_edge(k)?;
        }
        if router == Router::FlowAffinity {
            self.router_affinity(edges)?;
        }
        for i in 0..backends {
            let ns = format!("{}-b{}", self.id, i + 1);
            self.ns_add(&ns)?;
            wire_backend(&ns, &sw, &self.id, i)?;
            self.procs.push(spawn_backend(&ns, i, &["--greet-peer"])?);
            self.procs.push(spawn_health(self.dir.path(), &ns, i)?);
            self.backend_ns.push(ns);
        }
        self.start_router_bird(edges)
    }

    fn add_edge(&mut self, k: usize) -> Result<()> {
        let n = k + 1;
        let ns = format!("{}-e{n}", self.id);
        self.ns_add(&ns)?;
        let (rt, sw) = (self.router_ns.clone(), self.switch_ns.clone());
        let (r, u, d, s) = (
            self.ifname(&format!("r{n}")),
            self.ifname(&format!("u{n}")),
            self.ifname(&format!("d{n}")),
            self.ifname(&format!("s{n}")),
        );
        ip(&[
            "link", "add", &r, "netns", &rt, "type", "veth", "peer", "name", &u, "netns", &ns,
        ])?;
        ip(&[
            "link", "add", &d, "netns", &ns, "type", "veth", "peer", "name", &s, "netns", &sw,
        ])?;
        ipn(&rt, &["addr", "add", &format!("10.6.{n}.1/24"), "dev", &r])?;
        ipn(&rt, &["link", "set", &r, "up"])?;
        ipn(
            &ns,
            &["addr", "add", &format!("{}/24", edge_uplink(k)), "dev", &u],
        )?;
        ipn(&ns, &["addr", "add", &format!("10.2.0.{n}/24"), "dev", &d])?;
        ipn(
            &ns,
            &["addr", "add", &format!("{}/32", edge_snat(k)), "dev", &d],
        )?;
        ipn(&ns, &["link", "set", &u, "up"])?;
        ipn(&ns, &["link", "set", &d, "up"])?;
        ipn(
            &ns,
            &["route", "add", "default", "via", &format!("10.6.{n}.1")],
        )?;
        ipn(&sw, &["link", "set", &s, "master", "br0", "up"])?;
        crate::netns::in_named_netns(&ns, crate::netns::enable_forwarding)??;
        ethtool(&ns, &u, &["tx", "off"])?;
        ethtool(&ns, &d, &["tx", "off"])?;
        // The edge redirects into r{n} and s{n} and answers some packets with XDP_TX.
        self.peer_pass(&rt, &r)?;
        self.peer_pass(&sw, &s)?;
        let dir = self.dir.path().to_path_buf();
        let e = FleetEdge {
            pin_path: PathBuf::from(format!("/sys/fs/bpf/{}-e{n}", self.id)),
            socket: dir.join(format!("wklb-e{n}.sock")),
            drain_file: dir.join(format!("drained-e{n}")),
            config: dir.join(format!("wklb-e{n}.toml")),
            ns,
            up: u,
            down: d,
            daemon: None,
            bird: None,
        };
        std::fs::write(&e.config, self.config(k, &e))?;
        self.edges.push(e);
        Ok(())
    }

    /// The router keeps each connection on the edge that got its first packet: conntrack marks
    /// the connection with that edge, and marked packets are routed by a table for that edge.
    fn router_affinity(&self, edges: usize) -> Result<()> {
        let rt = &self.router_ns;
        let mut map = Vec::new();
        for k in 0..edges {
            let n = k + 1;
            map.push(format!("\"{}\" : {n}", self.ifname(&format!("r{n}"))));
            ipn(
                rt,
                &[
                    "route",
                    "replace",
                    &format!("{VIP}/32"),
                    "via",
                    &edge_uplink(k).to_string(),
                    "table",
                    &(100 + n).to_string(),
                ],
            )?;
            ipn(
                rt,
                &[
                    "rule",
                    "add",
                    "fwmark",
                    &n.to_string(),
                    "lookup",
                    &(100 + n).to_string(),
                    "pref",
                    "100",
                ],
            )?;
        }
        let rules = format!(
            "table ip wklb_lab_affinity {{\n\
             chain pre {{ type filter hook prerouting priority mangle; ct state established,related meta mark set ct mark; }}\n\
             chain post {{ type filter hook postrouting priority mangle; ct state new ip daddr {VIP} ct mark set oifname map {{ {} }}; }}\n}}\n",
            map.join(", ")
        );
        let file = self.dir.path().join("router.nft");
        std::fs::write(&file, rules)?;
        run(
            "ip",
            &["netns", "exec", rt, "nft", "-f", &file.to_string_lossy()],
        )?;
        Ok(())
    }

    fn start_router_bird(&mut self, edges: usize) -> Result<()> {
        let mut conf = format!(
            "log \"{dir}/bird-router.log\" all;\nrouter id 10.1.0.1;\n\
             protocol device {{ scan time 10; }}\n\
             protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}\n\
             protocol bfd {{ interface \"{id}r*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp edge {{ local as 65000; bfd on; hold time 3; keepalive time 1; connect delay time 1; connect retry time 1; error wait time 1, 3; ipv4 {{ import all; export none; }}; }}\n",
            dir = self.dir.path().display(),
            id = self.id,
        );
        for k in 0..edges {
            conf += &format!(
                "protocol bgp edge{n} from edge {{ neighbor {} as 65001; local 10.6.{n}.1; }}\n",
                edge_uplink(k),
                n = k + 1
            );
        }
        let ns = self.router_ns.clone();
        self.router_bird = Some(self.spawn_bird(&ns, "router", &conf)?);
        Ok(())
    }

    fn spawn_bird(&self, ns: &str, name: &str, conf: &str) -> Result<Proc> {
        let file = self.dir.path().join(format!("bird-{name}.conf"));
        std::fs::write(&file, conf)?;
        let ctl = self.bird_ctl(name);
        let args = [
            "-f".as_ref(),
            "-c".as_ref(),
            file.as_os_str(),
            "-s".as_ref(),
            ctl.as_os_str(),
        ];
        let p = Proc::spawn_quiet(ns, "bird", args, format!("bird-{name}"))?;
        let t = Instant::now();
        while !ctl.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "bird ({name}) did not open its control socket: {}",
                    self.bird_log(name)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    fn bird_ctl(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("bird-{name}.ctl"))
    }

    pub fn bird_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("bird-{name}.log")))
            .unwrap_or_default()
    }

    /// The wklb config of edge `k`: the same VIPs and backends on every edge.
    fn config(&self, k: usize, e: &FleetEdge) -> String {
        let mut s = format!(
            "[daemon]\ninterfaces = [\"{up}\", \"{down}\"]\npin_path = \"{pin}\"\ncontrol_socket = \"{sock}\"\ngc_interval = \"1s\"\n\n\
             [conntrack]\nmax_flows = 65536\n\n[snat]\naddresses = [\"{snat}\"]\n\n\
             [announce]\ntable = {ANNOUNCE_TABLE}\ndrain_file = \"{drain}\"\n\n",
            up = e.up,
            down = e.down,
            pin = e.pin_path.display(),
            sock = e.socket.display(),
            snat = edge_snat(k),
            drain = e.drain_file.display(),
        );
        for (name, port, proto) in [("im-tcp", TCP_PORT, "tcp"), ("im-udp", UDP_PORT, "udp")] {
            s += &format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n\n\
                 [vip.health_check]\nkind = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\n\n"
            );
            for i in 0..self.backends {
                s += &format!("[[vip.backend]]\naddress = \"{}\"\n\n", backend_addr(i));
            }
        }
        s
    }

    /// Starts edge `k`: its wklb daemon, then its BIRD.
    pub fn start_edge(&mut self, k: usize) -> Result<()> {
        self.start_daemon(k)?;
        let n = k + 1;
        let conf = format!(
            "log \"{dir}/bird-e{n}.log\" all;\nrouter id {me};\n\
             protocol device {{ scan time 10; }}\n\
             protocol kernel wklb_vips {{ kernel table {ANNOUNCE_TABLE}; learn; ipv4 {{ import all; export none; }}; }}\n\
             protocol bfd {{ interface \"{up}\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             protocol bgp upstream {{ local {me} as 65001; neighbor 10.6.{n}.1 as 65000; bfd on; hold time 3; keepalive time 1; connect delay time 1; connect retry time 1; error wait time 1, 3;\n\
               ipv4 {{ import none; export where proto = \"wklb_vips\"; next hop self; }}; }}\n",
            dir = self.dir.path().display(),
            me = edge_uplink(k),
            up = self.edges[k].up,
        );
        let ns = self.edges[k].ns.clone();
        self.edges[k].bird = Some(self.spawn_bird(&ns, &format!("e{n}"), &conf)?);
        Ok(())
    }

    /// Starts (or restarts) edge `k`'s wklb daemon and waits for its socket.
    pub fn start_daemon(&mut self, k: usize) -> Result<()> {
        let e = &self.edges[k];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log_path(k))?;
        let mut cmd = command_in(&e.ns, workspace_bin("wklb"))?;
        cmd.args(["daemon", "--config", &e.config.to_string_lossy()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut p = Proc {
            name: format!("wklb e{}", k + 1),
            child: cmd.spawn().context("starting wklb daemon")?,
        };
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&e.socket).is_err() {
            if !p.running() || t.elapsed() > Duration::from_secs(20) {
                bail!(
                    "wklb on edge {} did not start:\n{}",
                    k + 1,
                    self.daemon_log(k)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.edges[k].daemon = Some(p);
        Ok(())
    }

    /// SIGTERM edge `k`'s daemon (a hitless restart's first half: XDP and routes stay).
    pub fn stop_daemon(&mut self, k: usize) {
        if let Some(mut d) = self.edges[k].daemon.take() {
            d.stop(Duration::from_secs(10));
        }
    }

    /// Edge `k` dies: its processes are killed and its links go down.
    pub fn kill_edge(&mut self, k: usize) -> Result<()> {
        let e = &mut self.edges[k];
        for p in [e.daemon.take(), e.bird.take()].into_iter().flatten() {
            let mut p = p;
            p.kill();
        }
        ipn(&e.ns, &["link", "set", &e.up, "down"])?;
        ipn(&e.ns, &["link", "set", &e.down, "down"])?;
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) edge `k`'s BIRD: a hung control plane that only
    /// BFD (or the hold timer) can notice; the data path keeps running.
    pub fn freeze_bird(&mut self, k: usize, frozen: bool) -> Result<()> {
        let p = self.edges[k]
            .bird
            .as_ref()
            .context("edge BIRD not running")?;
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a child we started, by its PID.
        if unsafe { libc::kill(p.pid() as i32, sig) } != 0 {
            bail!("signalling bird: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn daemon_log_path(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("wklb-e{}.log", k + 1))
    }

    pub fn daemon_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.daemon_log_path(k)).unwrap_or_default()
    }

    /// The CLI against edge `k`'s daemon; stdout, or stderr as the error.
    pub fn wklb(&self, k: usize, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(workspace_bin("wklb"))
            .arg("--socket")
            .arg(&self.edges[k].socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "wklb {} on edge {}: {}",
                args.join(" "),
                k + 1,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `wklb --json ARGS` on edge `k`: its `data`.
    pub fn json(&self, k: usize, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&self.wklb(k, &a)?)?;
        if v["ok"] != true {
            bail!("wklb {} on edge {}: {v}", args.join(" "), k + 1);
        }
        Ok(v["data"].clone())
    }

    /// The next hops of the router's route to the VIP (empty: no route).
    pub fn router_next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = ipn(
            &self.router_ns,
            &["-o", "route", "show", &format!("{VIP}/32")],
        )?;
        let words: Vec<&str> = out.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// Waits until the router's VIP route goes exactly through the uplinks of `edges`; returns
    /// how long that took.
    pub fn wait_next_hops(&self, edges: &[usize], within: Duration) -> Result<Duration> {
        let mut want: Vec<Ipv4Addr> = edges.iter().map(|k| edge_uplink(*k)).collect();
        want.sort();
        let t = Instant::now();
        loop {
            let mut have = self.router_next_hops()?;
            have.sort();
            if have == want {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                bail!(
                    "after {within:?} the router's VIP route goes via {have:?}, not {want:?}\nrouter BIRD log:\n{}",
                    self.bird_log("router")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The client driver in the client namespace.
    pub fn client(&self, args: &[&str]) -> Result<Child> {
        let mut cmd = command_in(&self.client_ns, workspace_bin("wk-client"))?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Ok(cmd.spawn()?)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for e in &mut self.edges {
            if let Some(b) = &e.bird {
                // A frozen BIRD would not see SIGTERM.
                // SAFETY: a child we started, by its PID.
                unsafe { libc::kill(b.pid() as i32, libc::SIGCONT) };
            }
            for p in [e.daemon.take(), e.bird.take()].into_iter().flatten() {
                let mut p = p;
                p.stop(Duration::from_secs(5));
            }
        }
        if let Some(mut p) = self.router_bird.take() {
            p.stop(Duration::from_secs(3));
        }
        self.procs.clear();
        for ns in self.created.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        for e in &self.edges {
            let _ = std::fs::remove_dir_all(&e.pin_path);
        }
    }
}

/// Connections per edge in a wk-client report (backends greet with `NAME@SNAT`): edge index →
/// count, from `per_backend` or another map of the report.
pub fn per_edge(report: &serde_json::Value, key: &str, edges: usize) -> Vec<u64> {
    let mut out = vec![0; edges];
    if let Some(m) = report[key].as_object() {
        for (name, n) in m {
            let snat = name.split('@').nth(1).and_then(|a| a.parse().ok());
            if let Some(k) = (0..edges).find(|k| Some(edge_snat(*k)) == snat) {
                out[k] += n.as_u64().unwrap_or(0);
            }
        }
    }
    out
}
