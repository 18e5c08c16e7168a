//! The real XDP object in a two-sided veth topology inside a private namespace, driven by
//! BPF_PROG_TEST_RUN. Neighbours are static so bpf_fib_lookup answers deterministically.
//!
//! ```text
//!  client 10.10.0.2 ── wkc0 10.10.0.1 [edge: XDP] wkb0 10.20.0.1 ── backends 10.20.0.11-.13
//!  VIP 10.0.0.100 (tcp 5100, udp 5300), SNAT 10.20.0.100
//! ```

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    Backend, FAMILY_IPV4, MAGLEV_TABLE_SIZE, PROTO_TCP, PROTO_UDP, VipMeta,
    hash::flow_hash_v4,
    maglev::{Member, build_table},
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

use crate::netns::{enable_forwarding, ifindex, ip, mac_of};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP_TCP_PORT: u16 = 5100;
pub const VIP_UDP_PORT: u16 = 5300;
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 100);
pub const EDGE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 20, 0, 11),
    Ipv4Addr::new(10, 20, 0, 12),
    Ipv4Addr::new(10, 20, 0, 13),
];
/// A backend address with no neighbour entry (fib lookup answers NO_NEIGH).
pub const UNRESOLVED_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 99);
pub const CLIENT_IF: &str = "wkc0";
pub const BACKEND_IF: &str = "wkb0";
pub const TCP_VIP_ID: u32 = 0;
pub const UDP_VIP_ID: u32 = 1;
/// Backend ids: TCP VIP uses 0..3, UDP VIP uses 3..6.
pub const UDP_BACKEND_BASE: u32 = 3;

pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0b, 0x11 + i as u8]
}

pub struct Fixture {
    pub dp: Dataplane,
    pub client_if: u32,
    pub backend_if: u32,
    pub client_side_mac: [u8; 6],
    pub backend_side_mac: [u8; 6],
    /// Live Maglev table of each VIP id, as installed.
    pub tables: Vec<Vec<u32>>,
}

impl Fixture {
    /// Builds the topology in the current (private) namespace and programs the data plane.
    pub fn new(max_flows: u32) -> Result<Self> {
        ip("link add wkc0 type veth peer name wkc1")?;
        ip("link add wkb0 type veth peer name wkb1")?;
        for l in ["wkc0", "wkc1", "wkb0", "wkb1"] {
            ip(&format!("link set {l} up"))?;
        }
        ip("addr add 10.10.0.1/24 dev wkc0")?;
        ip("addr add 10.20.0.1/24 dev wkb0")?;
        ip(&format!(
            "neigh add {CLIENT} lladdr 02:00:00:00:0c:02 dev wkc0 nud permanent"
        ))?;
        for (i, b) in BACKENDS.iter().enumerate() {
            let m = backend_mac(i);
            ip(&format!(
                "neigh add {b} lladdr {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} dev wkb0 nud permanent",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ))?;
        }
        enable_forwarding()?;
        // Live-frame benchmarks transmit into these veths: the receiving peers need NAPI (GRO).
        for peer in ["wkc1", "wkb1"] {
            crate::netns::run("ethtool", &["-K", peer, "gro", "on"])?;
        }

        let mut dp = Dataplane::load(&LoadOptions {
            max_flows,
            pin_dir: None,
        })?;
        dp.set_snat_addrs(&[SNAT])?;
        dp.set_vip(
            VIP,
            VIP_TCP_PORT,
            PROTO_TCP,
            VipMeta {
                vip_id: TCP_VIP_ID,
                flags: 0,
            },
        )?;
        dp.set_vip(
            VIP,
            VIP_UDP_PORT,
            PROTO_UDP,
            VipMeta {
                vip_id: UDP_VIP_ID,
                flags: 0,
            },
        )?;
        let mut fx = Fixture {
            dp,
            client_if: ifindex(CLIENT_IF)?,
            backend_if: ifindex(BACKEND_IF)?,
            client_side_mac: mac_of(CLIENT_IF)?,
            backend_side_mac: mac_of(BACKEND_IF)?,
            tables: vec![Vec::new(), Vec::new()],
        };
        for (i, b) in BACKENDS.iter().enumerate() {
            fx.set_backend(i as u32, *b, VIP_TCP_PORT, true)?;
            fx.set_backend(UDP_BACKEND_BASE + i as u32, *b, VIP_UDP_PORT, true)?;
        }
        fx.install(TCP_VIP_ID, &[(0, 1), (1, 1), (2, 1)])?;
        fx.install(UDP_VIP_ID, &[(3, 1), (4, 1), (5, 1)])?;
        Ok(fx)
    }

    pub fn set_backend(&mut self, id: u32, addr: Ipv4Addr, port: u16, active: bool) -> Result<()> {
        let flags = if active { Backend::ACTIVE } else { 0 };
        let vip_id = if id < UDP_BACKEND_BASE {
            TCP_VIP_ID
        } else {
            UDP_VIP_ID
        };
        let b = Backend::new(
            lb_common::Addr::v4(addr.octets()),
            port,
            FAMILY_IPV4,
            flags,
            vip_id,
        );
        self.dp.set_backend(id, &b)
    }

    /// Builds and swaps in a VIP's Maglev table from (backend id, weight) pairs.
    pub fn install(&mut self, vip_id: u32, members: &[(u32, u32)]) -> Result<()> {
        let members: Vec<Member> = members
            .iter()
            .map(|(id, w)| Member {
                id: *id,
                key: format!("backend-{id}"),
                weight: *w,
            })
            .collect();
        let table = build_table(&members, MAGLEV_TABLE_SIZE);
        self.dp.install_table(vip_id, &table)?;
        self.tables[vip_id as usize] = table;
        Ok(())
    }

    /// The backend id a new flow gets, computed in userspace from the shared hash and table.
    pub fn predict(
        &self,
        vip_id: u32,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        proto: u8,
    ) -> u32 {
        let h = flow_hash_v4(src.0.octets(), dst.0.octets(), src.1, dst.1, proto);
        self.tables[vip_id as usize][(h % MAGLEV_TABLE_SIZE) as usize]
    }

    /// The `struct xdp_md` context of a test run: a frame of `len` bytes arriving on `ingress_if`
    /// (data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex).
    pub fn xdp_ctx(len: usize, ingress_if: u32) -> Vec<u8> {
        [0u32, len as u32, 0, ingress_if, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    /// Runs one frame through the program as if it arrived on `ingress_if`.
    /// Returns the XDP action and the frame as the program left it.
    pub fn run(&mut self, ingress_if: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let ctx = Self::xdp_ctx(frame.len(), ingress_if);
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.program()?;
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }
}
