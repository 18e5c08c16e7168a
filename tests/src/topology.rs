//! Network-namespace topologies for end-to-end tests, the demo and benchmarks. Two-armed (the
//! default):
//!
//! ```text
//!  [client ns] c0 10.1.0.2 ──── e0 10.1.0.1 [edge ns: wklb daemon, XDP on e0 and e1]
//!                                 e1 10.2.0.1 (+ SNAT 10.2.0.100) ──── [switch ns: bridge]
//!                                                       ├── [b1 ns] 10.2.0.11  wk-backend :5100/udp 5300, nginx :5001
//!                                                       ├── [b2 ns] 10.2.0.12  ...
//!                                                       └── ...
//!  VIP 10.100.0.1 (tcp 5100, udp 5300) routed by the client to the edge
//! ```
//!
//! One-armed (a cloud VM with one NIC): the client, the edge's only interface e0 (10.1.0.1 and
//! 10.2.0.1, SNAT 10.2.0.100) and the backends all hang off the switch; XDP_TX both ways.
//!
//! Routed: two routers between the edge and the backends, joined by a hop with a smaller MTU
//! (a tunnel stand-in); everything else 1500:
//!
//! ```text
//!  edge e1 10.3.0.1 (+ SNAT 10.3.0.100) ── r1 10.3.0.2 │ 10.4.0.1 ══ MTU hop ══ 10.4.0.2 r2 │ 10.2.0.1 ── switch ── backends
//! ```
//!
//! Client-routed: two routers between the client and the edge, the hop between them (or, with
//! `at_edge`, the edge's own link to them) at a smaller MTU: the internet side of path MTU:
//!
//! ```text
//!  client c0 10.1.0.2 ── 10.1.0.1 q1 │ 10.6.0.1 ══ hop ══ 10.6.0.2 q2 │ 10.7.0.2 ── e0 10.7.0.1 edge
//! ```
//!
//! Names are unique per run; everything (processes we started, namespaces, pinned objects) is
//! removed on drop, also when a test panics.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::run;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// The IPv6 side of the client link (`enable_ipv6_clients`) and the IPv6 VIP behind the edge.
pub const CLIENT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
pub const EDGE_CLIENT_SIDE6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
pub const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const EDGE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const EDGE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 100);
pub const TCP_PORT: u16 = 5100;
pub const UDP_PORT: u16 = 5300;
pub const HEALTH_PORT: u16 = 5001;
/// Small HTTP responses for connection-rate benchmarks (nginx on every backend).
pub const HTTP_PORT: u16 = 8080;
/// iperf3 servers on the backends.
pub const IPERF_PORT: u16 = 5201;

pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, 11 + i as u8)
}

/// The IPv6 side of the backend network (`enable_ipv6_backends`): the edge, its IPv6 SNAT
/// address, and backend `i`.
pub const EDGE_BACKEND_SIDE6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
pub const SNAT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x100);

pub fn backend_addr6(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// How the edge is wired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    TwoArmed,
    OneArmed,
    /// Two routers between the edge and the backends, the hop between them at this MTU.
    Routed {
        hop_mtu: u32,
    },
    /// Two routers between the client and the edge: the hop between them at `hop_mtu`, or
    /// (`at_edge`) the link from the second router to the edge's client-side interface.
    ClientRouted {
        hop_mtu: u32,
        at_edge: bool,
    },
}

/// The SNAT address of the routed shape (outside the backends' subnet, routed to the edge).
pub const ROUTED_SNAT: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 100);

/// A binary of the workspace next to the running test executable (target/<profile>/NAME).
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "WKLB_BIN_{}",
        name.to_uppercase().replace('-', "_")
    )) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p lb-userspace -p wklb-tests --bins`; `cargo xtask test` does)",
        p.display()
    );
    p
}

/// A process started in a namespace, stopped (by its PID) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// `program args` started in namespace `ns` with no standard streams, named `name`; the
    /// error names the package that installs the program (from `tests/programs.txt`).
    pub fn spawn_quiet<I, A>(ns: &str, program: &str, args: I, name: String) -> Result<Proc>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = command_in(ns, program)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().with_context(|| {
            let package = crate::programs::package_of(program).unwrap_or_default();
            format!("starting {program} (Debian package {package}; `sudo cargo xtask setup`)")
        })?;
        Ok(Proc { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it has exited.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling a child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// `cmd` with its network namespace switched to `ns` (only the network namespace: the mount
/// namespace and so /sys/fs/bpf stay the host's, unlike `ip netns exec`).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let f =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe. The closure owns the file, so the descriptor stays
    // open as long as the Command (it is close-on-exec, so the child does not keep it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

pub struct Topology {
    pub id: String,
    pub shape: Shape,
    /// The edge's SNAT address in this shape.
    pub snat: Ipv4Addr,
    pub client_ns: String,
    pub edge_ns: String,
    pub switch_ns: String,
    pub backend_ns: Vec<String>,
    pub dir: tempfile::TempDir,
    pub pin_path: PathBuf,
    pub socket: PathBuf,
    pub backends: Vec<Option<Proc>>,
    pub health: Vec<Option<Proc>>,
    pub daemon: Option<Proc>,
    /// Delay lines in front of far-away backends (`add_backend_host_delayed`).
    delays: Vec<Proc>,
    created: Vec<String>,
    /// XDP_PASS on the veth peers of the edge's interfaces (see `peer_pass`).
    peer_pass: crate::lab::PeerPass,
}

impl Topology {
    /// Builds the namespaces and links for `n` backends (more can be added later with
    /// `add_backend_host`). Backends are not started yet.
    pub fn new(n: usize) -> Result<Self> {
        Self::with_shape(n, Shape::TwoArmed)
    }

    pub fn with_shape(n: usize, shape: Shape) -> Result<Self> {
        crate::programs::require_lab()?;
        let id = format!(
            "wk{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()?;
        let mut t = Topology {
            shape,
            snat: match shape {
                Shape::Routed { .. } => ROUTED_SNAT,
                _ => SNAT,
            },
            client_ns: format!("{id}-cli"),
            edge_ns: format!("{id}-edge"),
            switch_ns: format!("{id}-sw"),
            backend_ns: Vec::new(),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            socket: dir.path().join("wklb.sock"),
            dir,
            backends: Vec::new(),
            health: Vec::new(),
            daemon: None,
            delays: Vec::new(),
            created: Vec::new(),
            peer_pass: Default::default(),
            id,
        };
        t.build()?;
        for _ in 0..n {
            t.add_backend_host()?;
        }
        Ok(t)
    }

    fn ns_add(&mut self, ns: &str) -> Result<()> {
        run("ip", &["netns", "add", ns])?;
        self.created.push(ns.to_string());
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Short interface names (15 chars max): id + suffix.
    fn ifname(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.id)
    }

    fn build(&mut self) -> Result<()> {
        for ns in [
            self.client_ns.clone(),
            self.edge_ns.clone(),
            self.switch_ns.clone(),
        ] {
            self.ns_add(&ns)?;
        }
        let (c0, e0, e1, s0) = (
            self.ifname("c0"),
            self.ifname("e0"),
            self.ifname("e1"),
            self.ifname("s0"),
        );
        let (cli, edge, sw) = (
            self.client_ns.clone(),
            self.edge_ns.clone(),
            self.switch_ns.clone(),
        );
        ipn(&sw, &["link", "add", "br0", "type", "bridge"])?;
        ipn(&sw, &["link", "set", "br0", "up"])?;
        if self.shape == Shape::OneArmed {
            // Client and edge are ports of the switch, like the backends.
            let (cs, es) = (self.ifname("sc"), self.ifname("se"));
            ip(&[
                "link", "add", &c0, "netns", &cli, "type", "veth", "peer", "name", &cs, "netns",
                &sw,
            ])?;
            ip(&[
                "link", "add", &e0, "netns", &edge, "type", "veth", "peer", "name", &es, "netns",
                &sw,
            ])?;
            ipn(&sw, &["link", "set", &cs, "master", "br0", "up"])?;
            ipn(&sw, &["link", "set", &es, "master", "br0", "up"])?;
            ipn(&edge, &["addr", "add", "10.2.0.1/24", "dev", &e0])?;
            ipn(
                &edge,
                &["addr", "add", &format!("{}/32", self.snat), "dev", &e0],
            )?;
            ethtool(&sw, &cs, &["gro", "on"])?;
            self.peer_pass(&sw, &es)?;
        } else {
            if let Shape::ClientRouted { hop_mtu, at_edge } = self.shape {
                self.build_client_routers(hop_mtu, at_edge)?;
            } else {
                ip(&[
                    "link", "add", &c0, "netns", &cli, "type", "veth", "peer", "name", &e0,
                    "netns", &edge,
                ])?;
            }
            ip(&[
                "link", "add", &e1, "netns", &edge, "type", "veth", "peer", "name", &s0, "netns",
                &sw,
            ])?;
            ipn(&edge, &["link", "set", &e1, "up"])?;
            ethtool(&edge, &e1, &["tx", "off"])?;
        }
        ipn(&cli, &["addr", "add", "10.1.0.2/24", "dev", &c0])?;
        ipn(&cli, &["link", "set", &c0, "up"])?;
        ipn(&cli, &["route", "add", "default", "via", "10.1.0.1"])?;
        if !matches!(self.shape, Shape::ClientRouted { .. }) {
            ipn(&edge, &["addr", "add", "10.1.0.1/24", "dev", &e0])?;
        }
        ipn(&edge, &["link", "set", &e0, "up"])?;
        match self.shape {
            Shape::TwoArmed | Shape::ClientRouted { .. } => {
                ipn(&edge, &["addr", "add", "10.2.0.1/24", "dev", &e1])?;
                ipn(
                    &edge,
                    &["addr", "add", &format!("{}/32", self.snat), "dev", &e1],
                )?;
                ipn(&sw, &["link", "set", &s0, "master", "br0", "up"])?;
                ethtool(&sw, &s0, &["gro", "on"])?;
            }
            Shape::Routed { hop_mtu } => self.build_routers(&s0, hop_mtu)?,
            Shape::OneArmed => {}
        }
        // /proc/sys/net shows the namespace of the thread that opens it (no procps needed).
        crate::netns::in_named_netns(&edge, crate::netns::enable_forwarding)??;
        // Locally generated packets on veth carry partial checksums that XDP rewrites would
        // break: the senders compute full checksums. Frames redirected into a veth need NAPI
        // (GRO) on the receiving side.
        ethtool(&cli, &c0, &["tx", "off"])?;
        ethtool(&cli, &c0, &["gro", "on"])?;
        ethtool(&edge, &e0, &["tx", "off"])?;
        match self.shape {
            Shape::TwoArmed => {
                self.peer_pass(&cli, &c0)?;
                self.peer_pass(&sw, &s0)?;
            }
            Shape::ClientRouted { .. } => {
                self.peer_pass(&format!("{}-q2", self.id), &self.ifname("q2b"))?;
                self.peer_pass(&sw, &s0)?;
            }
            Shape::Routed { .. } => {
                self.peer_pass(&cli, &c0)?;
                self.peer_pass(&format!("{}-r1", self.id), &self.ifname("r1a"))?;
            }
            Shape::OneArmed => {}
        }
        Ok(())
    }

    /// The edge answers some packets with XDP_TX (cookie SYN-ACKs, handshake ACKs, echo
    /// replies, fragmentation-needed): a veth schedules its peer to receive those only when the
    /// peer runs XDP itself (physical NICs need nothing), so the peer gets XDP_PASS.
    fn peer_pass(&mut self, ns: &str, ifname: &str) -> Result<()> {
        self.peer_pass.add(&self.id, ns, ifname)
    }

    /// edge e1 ── r1 ══ hop (MTU `hop_mtu`) ══ r2 ── switch (`s0` is the edge side's switch
    /// port name, reused for r2's port).
    fn build_routers(&mut self, s0: &str, hop_mtu: u32) -> Result<()> {
        let (r1, r2) = (format!("{}-r1", self.id), format!("{}-r2", self.id));
        self.ns_add(&r1)?;
        self.ns_add(&r2)?;
        let edge = self.edge_ns.clone();
        let sw = self.switch_ns.clone();
        let (e1, r1a, r1b, r2a, r2b) = (
            self.ifname("e1"),
            self.ifname("r1a"),
            self.ifname("r1b"),
            self.ifname("r2a"),
            self.ifname("r2b"),
        );
        // The edge's backend-side link goes to r1, not to the switch.
        ipn(&sw, &["link", "set", s0, "netns", &r1])?;
        ip(&["-n", &r1, "link", "set", s0, "name", &r1a])?;
        ip(&[
            "link", "add", &r1b, "netns", &r1, "type", "veth", "peer", "name", &r2a, "netns", &r2,
        ])?;
        ip(&[
            "link", "add", &r2b, "netns", &r2, "type", "veth", "peer", "name", s0, "netns", &sw,
        ])?;
        ipn(&edge, &["addr", "add", "10.3.0.1/24", "dev", &e1])?;
        ipn(
            &edge,
            &["addr", "add", &format!("{}/32", self.snat), "dev", &e1],
        )?;
        ipn(&r1, &["addr", "add", "10.3.0.2/24", "dev", &r1a])?;
        ipn(&r1, &["addr", "add", "10.4.0.1/30", "dev", &r1b])?;
        ipn(&r1, &["link", "set", &r1b, "mtu", &hop_mtu.to_string()])?;
        ipn(&r2, &["addr", "add", "10.4.0.2/30", "dev", &r2a])?;
        ipn(&r2, &["link", "set", &r2a, "mtu", &hop_mtu.to_string()])?;
        ipn(&r2, &["addr", "add", "10.2.0.1/24", "dev", &r2b])?;
        for (ns, links) in [(&r1, [&r1a, &r1b]), (&r2, [&r2a, &r2b])] {
            for l in links {
                ipn(ns, &["link", "set", l, "up"])?;
            }
            crate::netns::in_named_netns(ns, crate::netns::enable_forwarding)??;
        }
        // Gateways are accepted once their links are up.
        ipn(&edge, &["route", "add", "10.2.0.0/24", "via", "10.3.0.2"])?;
        ipn(&r1, &["route", "add", "10.2.0.0/24", "via", "10.4.0.2"])?;
        ipn(&r2, &["route", "add", "10.3.0.0/24", "via", "10.4.0.1"])?;
        // The edge redirects into r1a: that side needs NAPI.
        ethtool(&r1, &r1a, &["gro", "on"])?;
        ipn(&sw, &["link", "set", s0, "master", "br0", "up"])?;
        Ok(())
    }

    /// client c0 ── q1 ══ hop ══ q2 ── edge e0 (see the module header); the MTU goes on the
    /// hop, or with `at_edge` on the q2 ── e0 link.
    fn build_client_routers(&mut self, hop_mtu: u32, at_edge: bool) -> Result<()> {
        let (q1, q2) = (format!("{}-q1", self.id), format!("{}-q2", self.id));
        self.ns_add(&q1)?;
        self.ns_add(&q2)?;
        let (cli, edge) = (self.client_ns.clone(), self.edge_ns.clone());
        let (c0, e0, q1a, q1b, q2a, q2b) = (
            self.ifname("c0"),
            self.ifname("e0"),
            self.ifname("q1a"),
            self.ifname("q1b"),
            self.ifname("q2a"),
            self.ifname("q2b"),
        );
        for (a, a_ns, b, b_ns) in [
            (&c0, &cli, &q1a, &q1),
            (&q1b, &q1, &q2a, &q2),
            (&q2b, &q2, &e0, &edge),
        ] {
            ip(&[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ])?;
        }
        let mtu = hop_mtu.to_string();
        let small = if at_edge {
            [(&q2, &q2b), (&edge, &e0)]
        } else {
            [(&q1, &q1b), (&q2, &q2a)]
        };
        for (ns, l) in small {
            ipn(ns, &["link", "set", l, "mtu", &mtu])?;
        }
        ipn(&q1, &["addr", "add", "10.1.0.1/24", "dev", &q1a])?;
        ipn(&q1, &["addr", "add", "10.6.0.1/30", "dev", &q1b])?;
        ipn(&q2, &["addr", "add", "10.6.0.2/30", "dev", &q2a])?;
        ipn(&q2, &["addr", "add", "10.7.0.2/24", "dev", &q2b])?;
        ipn(&edge, &["addr", "add", "10.7.0.1/24", "dev", &e0])?;
        for (ns, links) in [(&q1, [&q1a, &q1b]), (&q2, [&q2a, &q2b])] {
            for l in links {
                ipn(ns, &["link", "set", l, "up"])?;
            }
            crate::netns::in_named_netns(ns, crate::netns::enable_forwarding)??;
        }
        ipn(&edge, &["link", "set", &e0, "up"])?;
        ipn(&q1, &["route", "add", "default", "via", "10.6.0.2"])?;
        ipn(&q2, &["route", "add", "10.1.0.0/24", "via", "10.6.0.1"])?;
        ipn(&q2, &["route", "add", "default", "via", "10.7.0.1"])?;
        ipn(&edge, &["route", "add", "10.1.0.0/24", "via", "10.7.0.2"])?;
        // The edge redirects replies into e0 and answers on it with XDP_TX: q2's side needs
        // NAPI (and an XDP program, `peer_pass`).
        ethtool(&q2, &q2b, &["gro", "on"])?;
        // What q2 forwards to the edge may be a GRO-merged packet cut up again, with partial
        // checksums the XDP rewrite would break: checksummed in software on the way out.
        ethtool(&q2, &q2b, &["tx", "off"])?;
        Ok(())
    }

    /// Adds a backend host (namespace, link to the switch, address); returns its index.
    pub fn add_backend_host(&mut self) -> Result<usize> {
        let i = self.backend_ns.len();
        let ns = format!("{}-b{}", self.id, i + 1);
        self.ns_add(&ns)?;
        wire_backend(&ns, &self.switch_ns, &self.id, i)?;
        self.backend_ns.push(ns);
        self.backends.push(None);
        self.health.push(None);
        Ok(i)
    }

    /// Adds a backend host `one_way` away from the switch (round trip 2 × `one_way`): its
    /// address sits on an inner veth, and a delay line (`wk-delay`) bridges the inner pair's
    /// other end to its link to the switch. Returns its index.
    pub fn add_backend_host_delayed(&mut self, one_way: Duration) -> Result<usize> {
        let i = self.backend_ns.len();
        let n = i + 1;
        let ns = format!("{}-b{n}", self.id);
        self.ns_add(&ns)?;
        let (b, s, inner, outer) = (
            self.ifname(&format!("b{n}")),
            self.ifname(&format!("p{n}")),
            self.ifname(&format!("i{n}")),
            self.ifname(&format!("o{n}")),
        );
        let sw = self.switch_ns.clone();
        ip(&[
            "link", "add", &b, "netns", &ns, "type", "veth", "peer", "name", &s, "netns", &sw,
        ])?;
        ipn(
            &ns,
            &[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ],
        )?;
        for l in [&b, &outer] {
            // The delay line's ports carry no address of their own.
            ipn(&ns, &["link", "set", l, "addrgenmode", "none"])?;
            ipn(&ns, &["link", "set", l, "up"])?;
        }
        ipn(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", backend_addr(i)),
                "dev",
                &inner,
            ],
        )?;
        ipn(&ns, &["link", "set", &inner, "up"])?;
        ipn(&ns, &["route", "add", "default", "via", "10.2.0.1"])?;
        ipn(&sw, &["link", "set", &s, "master", "br0", "up"])?;
        ethtool(&ns, &inner, &["tx", "off"])?;
        let mut cmd = command_in(&ns, workspace_bin("wk-delay"))?;
        cmd.args(["--a", &outer, "--b", &b])
            .args(["--delay-us", &one_way.as_micros().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.delays.push(Proc {
            name: format!("wk-delay b{n}"),
            child: cmd.spawn().context("starting wk-delay")?,
        });
        self.backend_ns.push(ns);
        self.backends.push(None);
        self.health.push(None);
        Ok(i)
    }

    /// Starts backend `i`'s test server (TCP 5100, UDP 5300) named "b{i+1}".
    pub fn start_backend(&mut self, i: usize) -> Result<()> {
        self.start_backend_with(i, &[])
    }

    /// Starts backend `i` with extra wk-backend arguments (fault modes, its own /health).
    pub fn start_backend_with(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.backends[i] = Some(spawn_backend(&self.backend_ns[i], i, extra)?);
        Ok(())
    }

    /// Starts nginx answering `GET /health` with 200 on port 5001 of backend `i`.
    pub fn start_health(&mut self, i: usize) -> Result<()> {
        self.health[i] = Some(spawn_health(self.dir.path(), &self.backend_ns[i], i)?);
        Ok(())
    }

    /// Starts an iperf3 server on backend `i` (kept with the backend's processes).
    pub fn start_iperf(&mut self, i: usize) -> Result<Proc> {
        let p = Proc::spawn_quiet(
            &self.backend_ns[i],
            "iperf3",
            ["-s", "-p", &IPERF_PORT.to_string()],
            format!("iperf3-b{}", i + 1),
        )?;
        wait_port(&self.backend_ns[i], backend_addr(i), IPERF_PORT)?;
        Ok(p)
    }

    pub fn stop_backend(&mut self, i: usize) {
        if let Some(mut p) = self.backends[i].take() {
            p.kill();
        }
    }

    pub fn stop_health(&mut self, i: usize) {
        if let Some(mut p) = self.health[i].take() {
            p.stop(Duration::from_secs(3));
        }
    }

    /// The edge interfaces wklb runs on in this shape.
    pub fn edge_interfaces(&self) -> Vec<String> {
        match self.shape {
            Shape::OneArmed => vec![self.ifname("e0")],
            _ => vec![self.ifname("e0"), self.ifname("e1")],
        }
    }

    /// A config for this topology: one TCP VIP (5100) and one UDP VIP (5300) over the given
    /// backends (index, weight), HTTP health checks on 5001.
    pub fn config(&self, backends: &[(usize, u32)], extra: &str) -> String {
        let interfaces: Vec<String> = self
            .edge_interfaces()
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect();
        let mut s = format!(
            "[daemon]\ninterfaces = [{interfaces}]\nxdp_mode = \"auto\"\npin_path = \"{pin}\"\ncontrol_socket = \"{sock}\"\nmetrics_listen = \"127.0.0.1:9330\"\ngc_interval = \"1s\"\n\n\
             [conntrack]\nmax_flows = 65536\n\n[snat]\naddresses = [\"{snat}\"]\n{extra}\n",
            interfaces = interfaces.join(", "),
            snat = self.snat,
            pin = self.pin_path.display(),
            sock = self.socket.display(),
        );
        for (name, port, proto) in [("im-tcp", TCP_PORT, "tcp"), ("im-udp", UDP_PORT, "udp")] {
            s.push_str(&format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n\n\
                 [vip.health_check]\nkind = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n\n"
            ));
            for (i, w) in backends {
                s.push_str(&format!(
                    "[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n\n",
                    backend_addr(*i)
                ));
            }
        }
        s
    }

    /// `config` with the TCP VIP's SYN-cookie mode set (`auto` when not given).
    pub fn with_cookies(config: &str, mode: &str) -> String {
        config.replace(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\nsyn_cookies = \"{mode}\"\n"),
        )
    }

    /// IPv6 on the client link (two-armed shape): the client at `CLIENT6`, the edge at
    /// `EDGE_CLIENT_SIDE6`, and the client's route to `VIP6` through the edge. No DAD: the
    /// addresses are usable at once.
    pub fn enable_ipv6_clients(&self) -> Result<()> {
        let (c0, e0) = (self.ifname("c0"), self.ifname("e0"));
        ipn(
            &self.client_ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{CLIENT6}/64"),
                "dev",
                &c0,
                "nodad",
            ],
        )?;
        ipn(
            &self.edge_ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{EDGE_CLIENT_SIDE6}/64"),
                "dev",
                &e0,
                "nodad",
            ],
        )?;
        ipn(
            &self.client_ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{VIP6}/128"),
                "via",
                &EDGE_CLIENT_SIDE6.to_string(),
            ],
        )?;
        Ok(())
    }

    /// IPv6 on the backend network (two-armed shape): the edge's side and its IPv6 SNAT
    /// address, every backend's address and default route, IPv6 forwarding on the edge, and
    /// the backends' servers restarted on both families.
    pub fn enable_ipv6_backends(&mut self) -> Result<()> {
        let edge = self.edge_ns.clone();
        let e1 = self.ifname("e1");
        for a in [format!("{EDGE_BACKEND_SIDE6}/64"), format!("{SNAT6}/128")] {
            ipn(&edge, &["-6", "addr", "add", &a, "dev", &e1, "nodad"])?;
        }
        crate::netns::in_named_netns(&edge, || {
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .context("enabling IPv6 forwarding")
        })??;
        for i in 0..self.backend_ns.len() {
            let ns = self.backend_ns[i].clone();
            let b = self.ifname(&format!("b{}", i + 1));
            let a = format!("{}/64", backend_addr6(i));
            ipn(&ns, &["-6", "addr", "add", &a, "dev", &b, "nodad"])?;
            ipn(
                &ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &EDGE_BACKEND_SIDE6.to_string(),
                ],
            )?;
            if self.backends[i].is_some() {
                self.stop_backend(i);
                self.backends[i] = Some(spawn_backend_on(&ns, i, &[], "[::]")?);
            }
        }
        Ok(())
    }

    pub fn write_config(&self, text: &str) -> Result<PathBuf> {
        let p = self.dir.path().join("wklb.toml");
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// Starts `wklb daemon` in the edge namespace and waits until its socket answers.
    pub fn start_daemon(&mut self, config: &Path) -> Result<()> {
        let cmd = command_in(&self.edge_ns, workspace_bin("wklb"))?;
        self.spawn_daemon(cmd, config)
    }

    /// Starts the daemon the way an operator would in a namespace: `ip netns exec`, which gives
    /// it a fresh /sys (and no /sys/fs/bpf).
    pub fn start_daemon_ip_netns_exec(&mut self, config: &Path) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.edge_ns])
            .arg(workspace_bin("wklb"));
        self.spawn_daemon(cmd, config)
    }

    fn spawn_daemon(&mut self, cmd: Command, config: &Path) -> Result<()> {
        let socket = self.socket.clone();
        self.spawn_daemon_with(cmd, config, &[("RUST_LOG", "info")], &socket)
    }

    /// Starts `wklb daemon` in the edge namespace with global options `args` (before the
    /// subcommand) and environment `env` (RUST_LOG is not set unless given), and waits until
    /// `socket` answers.
    pub fn start_daemon_with(
        &mut self,
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        socket: &Path,
    ) -> Result<()> {
        let mut cmd = command_in(&self.edge_ns, workspace_bin("wklb"))?;
        cmd.env_remove("RUST_LOG").args(args);
        self.spawn_daemon_with(cmd, config, env, socket)
    }

    fn spawn_daemon_with(
        &mut self,
        mut cmd: Command,
        config: &Path,
        env: &[(&str, &str)],
        socket: &Path,
    ) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        cmd.args(["daemon", "--config", &config.to_string_lossy()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting wklb daemon")?;
        self.daemon = Some(Proc {
            name: "wklb daemon".into(),
            child,
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if let Some(d) = self.daemon.as_mut()
                && !d.running()
            {
                bail!("wklb daemon exited at start:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "wklb daemon did not open its socket within 20 s:\n{}",
            self.daemon_log()
        )
    }

    /// SIGTERM the daemon (the data plane stays attached) and wait for it.
    pub fn stop_daemon(&mut self) -> Result<std::process::ExitStatus> {
        let mut d = self.daemon.take().context("no daemon running")?;
        d.stop(Duration::from_secs(10));
        Ok(d.child.wait()?)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this topology's daemon; returns stdout, or stderr as the error.
    pub fn wklb(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(workspace_bin("wklb"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "wklb {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn stats(&self) -> Result<serde_json::Value> {
        self.json(&["stats"])
    }

    /// Runs a CLI command with `--json` and returns its `data` (the command must succeed).
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&self.wklb(&a)?)?;
        if v["ok"] != true {
            bail!("wklb {}: {v}", args.join(" "));
        }
        Ok(v["data"].clone())
    }

    /// Starts the client driver in the client namespace with `args` (after the mode).
    pub fn client(&self, args: &[&str]) -> Result<Child> {
        client_in(&self.client_ns, args)
    }

    /// Waits for a client started with `client` and parses its JSON report.
    pub fn client_report(child: Child) -> Result<serde_json::Value> {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("wk-client failed ({})", out.status);
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Runs a command inside a namespace (through `ip netns exec`) and returns stdout.
    /// Forgets the path MTUs the client and the backends learnt (`ip route flush cache` also
    /// drops the PMTU exceptions), so the next connections discover them again.
    pub fn forget_path_mtus(&self) -> Result<()> {
        for ns in std::iter::once(&self.client_ns).chain(&self.backend_ns) {
            run("ip", &["-n", ns, "route", "flush", "cache"])?;
        }
        Ok(())
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", ns];
        a.extend_from_slice(args);
        run("ip", &a)
    }
}

/// `wk-client args` in namespace `ns`, its report on a pipe (`Topology::client` without a
/// borrow of the topology, for a thread that runs clients while the test restarts the daemon).
pub fn client_in(ns: &str, args: &[&str]) -> Result<Child> {
    let mut cmd = command_in(ns, workspace_bin("wk-client"))?;
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(cmd.spawn()?)
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        for p in self.backends.iter_mut().chain(self.health.iter_mut()) {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(3));
            }
        }
        for p in &mut self.delays {
            p.kill();
        }
        // Deleting the namespaces removes their interfaces, which detaches any XDP link.
        for ns in self.created.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if self.pin_path.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_path);
        }
    }
}

/// Backend `i`'s link to the switch (`{id}b{n}` in `ns`, `{id}p{n}` on the bridge), its
/// address and default route (via 10.2.0.1).
pub(crate) fn wire_backend(ns: &str, sw: &str, id: &str, i: usize) -> Result<()> {
    let (b, s) = (format!("{id}b{}", i + 1), format!("{id}p{}", i + 1));
    ip(&[
        "link", "add", &b, "netns", ns, "type", "veth", "peer", "name", &s, "netns", sw,
    ])?;
    ipn(
        ns,
        &["addr", "add", &format!("{}/24", backend_addr(i)), "dev", &b],
    )?;
    ipn(ns, &["link", "set", &b, "up"])?;
    ipn(ns, &["route", "add", "default", "via", "10.2.0.1"])?;
    ipn(sw, &["link", "set", &s, "master", "br0", "up"])?;
    ethtool(ns, &b, &["tx", "off"])?;
    Ok(())
}

/// Backend `i`'s test server (TCP 5100, UDP 5300) named "b{i+1}" in namespace `ns`.
pub(crate) fn spawn_backend(ns: &str, i: usize, extra: &[&str]) -> Result<Proc> {
    spawn_backend_on(ns, i, extra, "0.0.0.0")
}

/// The same on `host` (`[::]`: both families).
pub(crate) fn spawn_backend_on(ns: &str, i: usize, extra: &[&str], host: &str) -> Result<Proc> {
    let mut cmd = command_in(ns, workspace_bin("wk-backend"))?;
    cmd.args([
        "--name",
        &format!("b{}", i + 1),
        "--listen",
        &format!("{host}:5100"),
        "--udp",
        &format!("{host}:5300"),
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let child = cmd.spawn().context("starting wk-backend")?;
    let p = Proc {
        name: format!("b{}", i + 1),
        child,
    };
    wait_port(ns, backend_addr(i), TCP_PORT)?;
    Ok(p)
}

/// nginx on backend `i` (namespace `ns`): `GET /health` → 200 on 5001, small answers on 8080.
pub(crate) fn spawn_health(dir: &Path, ns: &str, i: usize) -> Result<Proc> {
    let prefix = dir.join(format!("nginx-b{}", i + 1));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p};\n  proxy_temp_path {p};\n  fastcgi_temp_path {p};\n  uwsgi_temp_path {p};\n  scgi_temp_path {p};\n\
             server {{ listen {addr}:{HEALTH_PORT}; location = /health {{ default_type application/json; return 200 '{{\"status\":\"ok\"}}'; }} location / {{ return 404; }} }}\n\
             server {{ listen {addr}:{HTTP_PORT}; keepalive_timeout 0; location / {{ default_type text/plain; return 200 'ok\\n'; }} }}\n}}\n",
            p = prefix.display(),
            addr = backend_addr(i),
        ),
    )?;
    let p = Proc::spawn_quiet(
        ns,
        "nginx",
        [
            "-c",
            &conf.to_string_lossy(),
            "-p",
            &prefix.to_string_lossy(),
        ],
        format!("nginx-b{}", i + 1),
    )?;
    wait_port(ns, backend_addr(i), HEALTH_PORT)?;
    Ok(p)
}

pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

pub(crate) fn ipn(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

pub(crate) fn ethtool(ns: &str, dev: &str, what: &[&str]) -> Result<()> {
    let mut a = vec!["netns", "exec", ns, "ethtool", "-K", dev];
    a.extend_from_slice(what);
    run("ip", &a).map(|_| ())
}

/// Waits until something listens on addr:port inside `ns` (ss), up to 10 s.
pub fn wait_port(ns: &str, addr: Ipv4Addr, port: u16) -> Result<()> {
    let t = Instant::now();
    let want = format!("{addr}:{port}");
    let any = format!("0.0.0.0:{port}");
    let dual = format!("*:{port}");
    let dual6 = format!("[::]:{port}");
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(out) = run("ip", &["netns", "exec", ns, "ss", "-Hltn"])
            && (out.contains(&want)
                || out.contains(&any)
                || out.contains(&dual)
                || out.contains(&dual6))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {want} in {ns} after 10 s")
}
