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

fn active(s: &Value, vip: &str) -> u64 {
    s["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == vip))
        .and_then(|x| x["active_flows"].as_u64())
        .unwrap_or(0)
}

#[test]
fn ipv6_clients_hold_connections_to_ipv4_nodes_through_a_restart() {
    let Some(mut t) = topology("ipv6_clients", 3) else {
        return;
    };
    t.enable_ipv6_clients().unwrap();
    let cfg = t
        .write_config(&dual_stack(&t, &[(0, 100), (1, 100), (2, 100)]))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let target = format!("[{VIP6}]:{TCP_PORT}");
    let held6 = t
        .client(&[
            "tcp",
            "--target",
            &target,
            "--conns",
            "1000",
            "--ping-interval-ms",
            "200",
            "--duration-s",
            "8",
        ])
        .unwrap();
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
