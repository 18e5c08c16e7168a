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
    assert!(count(&r, "broken_per_backend", "b2") > 0, "{r:#}");
    assert_eq!(
        count(&r, "broken_per_backend", "b1") + count(&r, "broken_per_backend", "b3"),
        0,
        "healthy backends' IPv6 connections broke: {r:#}"
    );
}
