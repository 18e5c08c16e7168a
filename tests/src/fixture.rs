//! The real XDP object in a two-sided veth topology inside a private namespace, driven by
//! BPF_PROG_TEST_RUN. Neighbours are static so bpf_fib_lookup answers deterministically. The
//! maps are programmed through the same `Image` diffs the controller uses.
//!
//! ```text
//!  client 10.10.0.2 ── wkc0 10.10.0.1 [edge: XDP] wkb0 10.20.0.1 ── backends 10.20.0.11-.13
//!  VIP 10.0.0.100 (tcp 5100, udp 5300), SNAT 10.20.0.100
//! ```

use std::{net::Ipv4Addr, sync::Arc};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    Addr, Backend, BackendStats, DataplaneConfig, FAMILY_IPV4, FlowEntry, MAGLEV_TABLE_SIZE,
    PROTO_TCP, PROTO_UDP, Reason, SnatAddr, Vip4Key, VipInfo, VipMeta, VipStats,
    cookie::CookieKey,
    hash::flow_hash_v4,
    maglev::{Member, build_table},
};
use lb_userspace::{
    controller::image,
    dataplane::{
        Counters, Flows, Image, Maps,
        kernel::{self, KernelCounters, KernelFlows, KernelMaps, LoadOptions, Program},
    },
};

use crate::{
    netns::{enable_forwarding, ifindex, in_private_netns, ip, mac_of},
    root::require_root,
};

/// Runs `f` on a fresh fixture in a private network namespace (root only).
pub fn with_fixture(
    test: &'static str,
    max_flows: u32,
    f: impl FnOnce(&mut Fixture) + Send + 'static,
) {
    if !require_root(test) {
        return;
    }
    in_private_netns(move || {
        let mut fx = Fixture::new(max_flows).expect("fixture topology and data plane");
        f(&mut fx);
    });
}

/// Asserts that exactly `reason` moved by `n` since `before`, and nothing else did.
pub fn assert_only(fx: &Fixture, before: &[u64], reason: Reason, n: u64) {
    let after = fx.reasons();
    for r in Reason::ALL {
        let d = after[*r as usize] - before[*r as usize];
        let want = if *r == reason { n } else { 0 };
        assert_eq!(d, want, "reason {} moved by {d}, expected {want}", r.name());
    }
}

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP_TCP_PORT: u16 = 5100;
/// The TCP VIP as (address, port).
pub const VIP_TCP: (Ipv4Addr, u16) = (VIP, VIP_TCP_PORT);
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
/// A backend address with no route at all (fib lookup fails).
pub const UNROUTABLE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const CLIENT_IF: &str = "wkc0";
pub const BACKEND_IF: &str = "wkb0";
pub const TCP_VIP_ID: u32 = 0;
pub const UDP_VIP_ID: u32 = 1;
/// Backend ids: TCP VIP uses 0..3, UDP VIP uses 3..6.
pub const UDP_BACKEND_BASE: u32 = 3;
/// SNAT addresses the flow table has slots for.
pub const SNAT_SLOTS: u32 = 4;

pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0b, 0x11 + i as u8]
}

/// The fixture's client at `port`.
pub fn client(port: u16) -> (Ipv4Addr, u16) {
    (CLIENT, port)
}

pub fn word(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub struct Fixture {
    pub program: Program,
    pub maps: KernelMaps,
    pub counters: Arc<KernelCounters>,
    pub flows: Arc<KernelFlows>,
    /// What the maps hold; change it and call `sync`.
    pub image: Image,
    pub client_if: u32,
    pub backend_if: u32,
    pub client_side_mac: [u8; 6],
    pub backend_side_mac: [u8; 6],
    /// The SYN-cookie secret the program uses.
    pub cookie_key: CookieKey,
}

impl Fixture {
    /// Builds the topology in the current (private) namespace and programs the data plane.
    pub fn new(max_flows: u32) -> Result<Self> {
        Self::with_slots(max_flows, SNAT_SLOTS)
    }

    pub fn with_slots(max_flows: u32, snat_slots: u32) -> Result<Self> {
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
        let loaded = kernel::load(&LoadOptions {
            max_flows,
            snat_slots,
            pin_dir: None,
            conn_log: false,
        })?;
        let mut fx = Fixture {
            program: loaded.program,
            maps: loaded.maps,
            counters: loaded.counters,
            flows: loaded.flows,
            image: Image::default(),
            client_if: ifindex(CLIENT_IF)?,
            backend_if: ifindex(BACKEND_IF)?,
            client_side_mac: mac_of(CLIENT_IF)?,
            backend_side_mac: mac_of(BACKEND_IF)?,
            cookie_key: loaded.cookie_key,
        };
        fx.image = fx.maps.read()?;
        fx.initial_image();
        for (i, b) in BACKENDS.iter().enumerate() {
            fx.put_backend(i as u32, *b, VIP_TCP_PORT, true);
            fx.put_backend(UDP_BACKEND_BASE + i as u32, *b, VIP_UDP_PORT, true);
        }
        fx.put_table(TCP_VIP_ID, &[(0, 1), (1, 1), (2, 1)]);
        fx.put_table(UDP_VIP_ID, &[(3, 1), (4, 1), (5, 1)]);
        fx.sync()?;
        Ok(fx)
    }

    fn initial_image(&mut self) {
        let img = &mut self.image;
        img.config = DataplaneConfig {
            snat_count: 1,
            ..DataplaneConfig::default()
        };
        img.snat
            .insert(0, SnatAddr::new(Addr::v4(SNAT.octets()), FAMILY_IPV4));
        img.snat_pick.insert(0, 0);
        for (id, port, proto) in [
            (TCP_VIP_ID, VIP_TCP_PORT, PROTO_TCP),
            (UDP_VIP_ID, VIP_UDP_PORT, PROTO_UDP),
        ] {
            img.vips.insert(
                Vip4Key::new(word(VIP), port, proto),
                VipMeta {
                    vip_id: id,
                    flags: 0,
                },
            );
            img.vip_info.insert(
                id,
                VipInfo {
                    addr: Addr::v4(VIP.octets()),
                    port,
                    proto,
                    family: FAMILY_IPV4,
                    flags: 0,
                },
            );
        }
        for i in [self.client_if, self.backend_if] {
            img.tx_ports.insert(i);
            img.iface_mtu.insert(i, 1500);
        }
        self.classify();
    }

    /// Recomputes address classes and the filter from the image's VIPs and SNAT addresses.
    pub fn classify(&mut self) {
        let img = &mut self.image;
        let mut addrs = std::collections::BTreeMap::new();
        for k in img.vips.keys() {
            let c: &mut lb_common::AddrClass = addrs.entry(k.addr).or_default();
            c.flags |= lb_common::AddrClass::VIP;
            if k.port == 0 {
                c.flags |= lb_common::AddrClass::any_port_bit(k.proto);
            }
        }
        for (i, s) in img.snat.iter().filter(|(_, s)| s.family == FAMILY_IPV4) {
            let c: &mut lb_common::AddrClass = addrs.entry(s.addr.v4_word_of()).or_default();
            c.flags |= lb_common::AddrClass::SNAT;
            c.snat_index = *i as u16;
        }
        img.filter = image::filter(&addrs);
        img.addrs = addrs;
    }

    /// Writes whatever changed in `image` to the maps.
    pub fn sync(&mut self) -> Result<()> {
        let current = self.maps.read()?;
        for w in current.diff(&self.image) {
            self.maps.write(&w).with_context(|| format!("{w:?}"))?;
        }
        Ok(())
    }

    pub fn put_backend(&mut self, id: u32, addr: Ipv4Addr, port: u16, active: bool) {
        let flags = if active { Backend::ACTIVE } else { 0 };
        let vip_id = if id < UDP_BACKEND_BASE {
            TCP_VIP_ID
        } else {
            UDP_VIP_ID
        };
        self.image.backends.insert(
            id,
            Backend::new(Addr::v4(addr.octets()), port, FAMILY_IPV4, flags, vip_id),
        );
    }

    pub fn set_backend(&mut self, id: u32, addr: Ipv4Addr, port: u16, active: bool) -> Result<()> {
        self.put_backend(id, addr, port, active);
        self.sync()
    }

    fn put_table(&mut self, vip_id: u32, members: &[(u32, u32)]) {
        let members: Vec<Member> = members
            .iter()
            .map(|(id, w)| Member {
                id: *id,
                key: format!("backend-{id}"),
                weight: *w,
            })
            .collect();
        self.image
            .tables
            .insert(vip_id, Arc::new(build_table(&members, MAGLEV_TABLE_SIZE)));
    }

    /// Builds and swaps in a VIP's Maglev table from (backend id, weight) pairs.
    pub fn install(&mut self, vip_id: u32, members: &[(u32, u32)]) -> Result<()> {
        self.put_table(vip_id, members);
        self.sync()
    }

    pub fn config(&self) -> DataplaneConfig {
        self.image.config
    }

    pub fn set_config(&mut self, c: DataplaneConfig) -> Result<()> {
        self.image.config = c;
        self.sync()
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
        self.image.tables[&vip_id][(h % MAGLEV_TABLE_SIZE) as usize]
    }

    /// Another TCP VIP on the VIP address, at `port`, with `flags` (`VipMeta::*`), on the TCP
    /// VIP's backends.
    pub fn add_tcp_vip(&mut self, id: u32, port: u16, flags: u32) -> Result<()> {
        self.image.vips.insert(
            Vip4Key::new(word(VIP), port, PROTO_TCP),
            VipMeta { vip_id: id, flags },
        );
        self.image.vip_info.insert(
            id,
            VipInfo {
                addr: Addr::v4(VIP.octets()),
                port,
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                flags: 0,
            },
        );
        self.put_table(id, &[(0, 1), (1, 1), (2, 1)]);
        self.classify();
        self.sync()
    }

    /// Sets the flags of the TCP VIP (`VipMeta::COOKIES_*`).
    pub fn set_tcp_vip_flags(&mut self, flags: u32) -> Result<()> {
        let key = Vip4Key::new(word(VIP), VIP_TCP_PORT, PROTO_TCP);
        self.image.vips.get_mut(&key).expect("tcp vip").flags = flags;
        self.sync()
    }

    pub fn reasons(&self) -> Vec<u64> {
        self.counters.reasons().expect("reasons")
    }

    pub fn backend_stats(&self, id: u32) -> BackendStats {
        self.counters.backend(id).expect("backend stats")
    }

    pub fn vip_stats(&self, id: u32) -> VipStats {
        self.counters.vip(id).expect("vip stats")
    }

    /// A backend's handshake round-trip histogram (`lb_common::rtt`).
    pub fn rtt(&self, backend_id: u32, kind: u32) -> lb_common::rtt::RttRow {
        self.counters.rtt(backend_id, kind)
    }

    /// Every live flow: (slot, entry).
    pub fn flows(&self) -> Vec<(u32, FlowEntry)> {
        let mut v = Vec::new();
        self.flows.scan(&mut |s, e| {
            if e.is_live() {
                v.push((s, *e));
            }
        });
        v
    }

    /// FLOWS4 entries.
    pub fn refs(&self) -> usize {
        self.flows.refs4().all().expect("refs").len()
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
        self.run_program(lb_userspace::dataplane::kernel::PROGRAM, ingress_if, frame)
    }

    /// The same through one program of the object by name (a tail-called one entered
    /// directly: what the entry program of another load hands it).
    pub fn run_program(
        &mut self,
        name: &str,
        ingress_if: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let ctx = Self::xdp_ctx(frame.len(), ingress_if);
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.program.extra(name)?;
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

// ---------------------------------------------------------------------------- IPv6

pub const V6_VIP_ID: u32 = 7;
pub const V6_UDP_VIP_ID: u32 = 8;
pub const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef,
];
pub const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
/// fd00:20::64, the IPv6 SNAT address, and fd00:20::11, the IPv6 data node.
pub const SNAT6: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
pub const BACKEND6: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
pub const SNAT6_INDEX: u32 = 1;
/// Backend ids of the IPv6 data node (TCP, UDP).
pub const B6_TCP: u32 = 20;
pub const B6_UDP: u32 = 21;

impl Fixture {
    /// An IPv6 VIP (TCP and UDP) served by the fixture's IPv4 backends.
    pub fn add_ipv6_vip(&mut self) {
        self.add_ipv6_vip_on(
            V6_VIP_ID,
            VIP_TCP_PORT,
            PROTO_TCP,
            &[(0, 1), (1, 1), (2, 1)],
        );
        let udp = UDP_BACKEND_BASE;
        self.add_ipv6_vip_on(
            V6_UDP_VIP_ID,
            VIP_UDP_PORT,
            PROTO_UDP,
            &[(udp, 1), (udp + 1, 1), (udp + 2, 1)],
        );
    }

    /// VIP `id` at VIP6, `port`/`proto`, its table made of `members` (backend id, weight).
    pub fn add_ipv6_vip_on(&mut self, id: u32, port: u16, proto: u8, members: &[(u32, u32)]) {
        use lb_common::{AddrClass, FAMILY_IPV6, Vip6Key, words_of_v6};
        self.image.vip_info.insert(
            id,
            VipInfo {
                addr: Addr {
                    words: words_of_v6(VIP6),
                },
                port,
                proto,
                family: FAMILY_IPV6,
                flags: 0,
            },
        );
        self.put_table(id, members);
        self.image.vips6.insert(
            Vip6Key::new(words_of_v6(VIP6), port, proto),
            VipMeta {
                vip_id: id,
                flags: 0,
            },
        );
        self.image
            .addrs6
            .entry(words_of_v6(VIP6))
            .or_default()
            .flags |= AddrClass::VIP;
        self.image.filter6 = image::filter6(&self.image.addrs6);
        self.sync().expect("IPv6 VIP");
    }

    /// An IPv6 data node on the backend side (`B6_TCP`, `B6_UDP`, in no table yet) and the
    /// IPv6 SNAT address at `snat_index`, with IPv6 forwarding on.
    pub fn add_ipv6_node(&mut self, snat_index: u32) {
        use lb_common::{AddrClass, FAMILY_IPV6, words_of_v6};
        for dev in ["all", "wkc0", "wkb0"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/forwarding"), "1")
                .expect("IPv6 forwarding");
        }
        ip("-6 addr add fd00:20::1/64 dev wkb0 nodad").expect("IPv6 address");
        ip("-6 neigh add fd00:20::11 lladdr 02:00:00:00:0b:61 dev wkb0 nud permanent")
            .expect("IPv6 neighbour");
        let addr = |o| Addr {
            words: words_of_v6(o),
        };
        self.image
            .snat
            .insert(snat_index, SnatAddr::new(addr(SNAT6), FAMILY_IPV6));
        self.image.snat_pick6.insert(0, snat_index);
        self.image.config.snat6_count = 1;
        self.image.addrs6.insert(
            words_of_v6(SNAT6),
            AddrClass {
                flags: AddrClass::SNAT,
                snat_index: snat_index as u16,
            },
        );
        self.image.filter6 = image::filter6(&self.image.addrs6);
        for (id, port, vip) in [
            (B6_TCP, VIP_TCP_PORT, TCP_VIP_ID),
            (B6_UDP, VIP_UDP_PORT, UDP_VIP_ID),
        ] {
            self.image.backends.insert(
                id,
                Backend::new(addr(BACKEND6), port, FAMILY_IPV6, Backend::ACTIVE, vip),
            );
        }
        self.sync().expect("IPv6 node");
    }
}
