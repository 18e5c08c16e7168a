//! End to end with IPv6 clients (root; CI runs them): an IPv6 VIP served by the IPv4 data
//! nodes through the IPv4 SNAT address, next to an IPv4 client on the same nodes.

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{e2e::*, topology::*};

/// The config's VIPs plus `im-tcp6`: the IPv6 VIP on the same backends.
fn dual_stack(t: &Topology, backends: &[(usize, u32)]) -> String {
    let mut c = t.config(backends, "");
    c.push_str(&format!(
        "[[vip]]\nname = \"im-tcp6\"\naddress = \"{VIP6}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n\n\
         [vip.health_check]\nkind = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n\n"
    ));
    for (i, w) in backends {
        c.push_str(&format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n\n",
            backend_addr(*i)
        ));
    }
    c
}

/// Three backends, IPv6 on the client link, the daemon running the dual-stack config (its path
/// returned for restarts). None when not root.
fn dual_stack_edge(test: &str) -> Option<(Serial<Topology>, std::path::PathBuf)> {
    let mut t = topology(test, 3)?;
    t.enable_ipv6_clients().unwrap();
    let cfg = t
        .write_config(&dual_stack(&t, &[(0, 100), (1, 100), (2, 100)]))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    Some((t, cfg))
}

fn active(s: &Value, vip: &str) -> u64 {
    s["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == vip))
        .and_then(|x| x["active_flows"].as_u64())
        .unwrap_or(0)
}

#[test]
fn ipv6_clients_hold_connections_to_ipv4_nodes_through_a_restart() {
    let Some((mut t, cfg)) = dual_stack_edge("ipv6_clients") else {
        return;
    };
    let target = format!("[{VIP6}]:{TCP_PORT}");
    let held6 = tcp_client_to(&t, &target, 1000, 200, 8, &[]);
    // An IPv4 client on the same data nodes at the same time.
    let held4 = tcp_client(&t, 200, 200, 8);
    wait_stats(&t, Duration::from_secs(30), "1000 IPv6 connections", |s| {
        active(s, "im-tcp6") >= 1000 && active(s, "im-tcp") >= 200
    });
    let conns = t
        .wklb(&["conns", "--vip", "im-tcp6", "--limit", "1", "--json"])
        .unwrap();
    assert!(conns.contains(&CLIENT6.to_string()), "{conns}");
    // A hitless restart over the pinned maps, IPv6 flows included.
    let status = t.stop_daemon().unwrap();
    assert!(status.success(), "{}", t.daemon_log());
    std::thread::sleep(Duration::from_millis(500));
    t.start_daemon(&cfg).unwrap();
    for (name, held, n) in [("IPv6", held6, 1000), ("IPv4", held4, 200)] {
        let r = Topology::client_report(held).unwrap();
        assert_eq!(r["connected"], n, "{name}: {r:#}");
        assert_eq!(r["broken"], 0, "{name}: {r:#}");
        assert_eq!(r["lost_pongs"], 0, "{name}: {r:#}");
    }
}

#[test]
fn an_ipv6_vip_fails_over_like_an_ipv4_one() {
    let Some((mut t, _)) = dual_stack_edge("ipv6_failover") else {
        return;
    };
    let target = format!("[{VIP6}]:{TCP_PORT}");
    let long = tcp_client_to(&t, &target, 300, 300, 6, &[]);
    wait_stats(&t, Duration::from_secs(30), "300 IPv6 connections", |s| {
        active(s, "im-tcp6") >= 300
    });
    // The node dies: its server and its health endpoint.
    t.stop_backend(1);
    t.stop_health(1);
    wait_stats(
        &t,
        Duration::from_millis(1500),
        "b2 out of the IPv6 VIP's table",
        |s| backend_row(s, "im-tcp6", 1)["in_table"] == false,
    );
    let fresh = Topology::client_report(tcp_client_to(&t, &target, 90, 300, 1, &[])).unwrap();
    assert_eq!(fresh["connected"], 90, "{fresh:#}");
    assert_eq!(count(&fresh, "per_backend", "b2"), 0, "{fresh:#}");
    let r = Topology::client_report(long).unwrap();
    assert_only_b2_broke(&r, "IPv6 clients");
}

/// IPv4 and IPv6 VIPs served by IPv6 data nodes through an IPv6 SNAT address (TCP health
/// checks over IPv6).
fn ipv6_nodes(t: &Topology, backends: &[usize]) -> String {
    let interfaces: Vec<String> = t
        .edge_interfaces()
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let mut c = format!(
        "[daemon]\ninterfaces = [{}]\nxdp_mode = \"auto\"\npin_path = \"{}\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:9330\"\ngc_interval = \"1s\"\n\n\
         [conntrack]\nmax_flows = 65536\n\n[snat]\naddresses = [\"{}\", \"{SNAT6}\"]\n\n\
         [announce]\ntable = 200\n\n",
        interfaces.join(", "),
        t.pin_path.display(),
        t.socket.display(),
        t.snat,
    );
    for (name, address) in [("im-tcp", VIP.to_string()), ("im-tcp6", VIP6.to_string())] {
        c.push_str(&format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n\n\
             [vip.health_check]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n\n"
        ));
        for i in backends {
            c.push_str(&format!(
                "[[vip.backend]]\naddress = \"{}\"\n\n",
                backend_addr6(*i)
            ));
        }
    }
    c
}

#[test]
fn ipv4_and_ipv6_clients_reach_ipv6_data_nodes_through_failover_and_a_restart() {
    let Some(mut t) = topology("ipv6_nodes", 3) else {
        return;
    };
    t.enable_ipv6_clients().unwrap();
    t.enable_ipv6_backends().unwrap();
    let cfg = t.write_config(&ipv6_nodes(&t, &[0, 1, 2])).unwrap();
    // check-config warns while IPv6 forwarding is off on an interface, naming the sysctl.
    let check = |t: &Topology| {
        let out = command_in(&t.edge_ns, workspace_bin("wklb"))
            .unwrap()
            .args(["check-config", &cfg.to_string_lossy()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let e1 = t.edge_interfaces()[1].clone();
    let sysctl = |v: &'static str| {
        let key = format!("/proc/sys/net/ipv6/conf/{e1}/forwarding");
        wklb_tests::netns::in_named_netns(&t.edge_ns, move || std::fs::write(key, v))
            .unwrap()
            .unwrap();
    };
    sysctl("0");
    let warned = check(&t);
    assert!(
        warned.contains(&format!("net.ipv6.conf.{e1}.forwarding = 0")),
        "{warned}"
    );
    sysctl("1");
    assert!(!check(&t).contains("forwarding is off"));
    t.start_daemon(&cfg).unwrap();
    wait_stats(&t, Duration::from_secs(10), "IPv6 nodes healthy", |s| {
        (0..3).all(|i| backend_row6(s, "im-tcp", i)["in_table"] == true)
    });
    // Both VIP addresses announced: a /32 and a /128 blackhole route in wklb's table.
    let start = std::time::Instant::now();
    loop {
        let s: Value =
            serde_json::from_str(&t.wklb(&["edge", "status", "--json"]).unwrap()).unwrap();
        let addrs = s["data"]["addresses"]
            .as_array()
            .unwrap_or_else(|| panic!("{s:#}"));
        if addrs.len() == 2 && addrs.iter().all(|a| a["announced"] == true) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not announced: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let routes6 = wklb_tests::netns::run(
        "ip",
        &[
            "-n", &t.edge_ns, "-6", "route", "show", "table", "200", "proto", "248",
        ],
    )
    .unwrap();
    assert!(routes6.contains(&format!("blackhole {VIP6}")), "{routes6}");
    let target6 = format!("[{VIP6}]:{TCP_PORT}");
    let held6 = tcp_client_to(&t, &target6, 300, 300, 10, &[]);
    let held4 = tcp_client(&t, 300, 300, 10);
    wait_stats(&t, Duration::from_secs(30), "600 connections", |s| {
        active(s, "im-tcp6") >= 300 && active(s, "im-tcp") >= 300
    });
    let conns = t
        .wklb(&["conns", "--vip", "im-tcp", "--limit", "1", "--json"])
        .unwrap();
    assert!(
        conns.contains("fd00:2::"),
        "backends listed by their IPv6 address: {conns}"
    );
    assert!(conns.contains(&SNAT6.to_string()), "{conns}");
    // A hitless restart over the pinned maps: the sender program is replaced in its pinned
    // program array.
    let status = t.stop_daemon().unwrap();
    assert!(status.success(), "{}", t.daemon_log());
    std::thread::sleep(Duration::from_millis(500));
    t.start_daemon(&cfg).unwrap();
    // Then a node dies: it leaves both tables, and only its own connections end.
    t.stop_backend(1);
    wait_stats(
        &t,
        Duration::from_millis(2500),
        "b2 out of both tables",
        |s| {
            backend_row6(s, "im-tcp", 1)["in_table"] == false
                && backend_row6(s, "im-tcp6", 1)["in_table"] == false
        },
    );
    for (name, held) in [("IPv6 clients", held6), ("IPv4 clients", held4)] {
        let r = Topology::client_report(held).unwrap();
        assert_eq!(r["connected"], 300, "{name}: {r:#}");
        assert_only_b2_broke(&r, name);
    }
    let fresh = Topology::client_report(tcp_client(&t, 60, 300, 1)).unwrap();
    assert_eq!(fresh["connected"], 60, "{fresh:#}");
    assert_eq!(count(&fresh, "per_backend", "b2"), 0, "{fresh:#}");
}
