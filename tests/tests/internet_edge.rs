//! An edge that faces the internet: blind RSTs from an off-path attacker, path MTU with a
//! smaller hop between the edge and the data nodes, between the clients and the edge, and on the
//! edge's own client-side link (plain flows and SYN-cookie flows, whose sequence numbers the edge
//! translates in every ICMP error too), and the one-armed edge of a cloud VM. Root; CI runs them;
//! serialised with the other end-to-end tests.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use wklb_tests::{e2e::*, topology::*};

fn start(t: &mut Topology, weights: &[(usize, u32)], extra: &str) {
    let cfg = t.write_config(&t.config(weights, extra)).unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_stats(
        t,
        Duration::from_secs(10),
        "every backend in the table",
        |s| s["vips"][0]["backends_in_table"] == weights.len(),
    );
}

fn reason(s: &Value, name: &str) -> u64 {
    s["reasons"][name].as_u64().unwrap_or(0)
}

/// Client ports of the VIP's live connections, from `wklb conns`.
fn client_ports(t: &Topology) -> Vec<u16> {
    let c = t
        .json(&["conns", "--vip", "im-tcp", "--limit", "100000"])
        .unwrap();
    c["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let client = r["client"].as_str().unwrap();
            client.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn e01_blind_rsts_do_not_end_long_lived_connections() {
    let Some(mut t) = shaped_topology("e01_blind_rsts", 2, Shape::TwoArmed) else {
        return;
    };
    start(&mut t, &[(0, 100), (1, 100)], "");
    const CONNS: usize = 200;
    // Heartbeats every 12 s for 30 s: longer than the 10 s a Closed flow lives, so a flow the
    // forged RST had closed would expire before the next heartbeat (the code before this
    // check broke 200 of 200 connections here).
    let client = tcp_client_with(&t, CONNS, 12_000, 30, &[]);
    wait_stats(&t, Duration::from_secs(20), "200 established flows", |s| {
        s["vips"][0]["active_flows"] == CONNS
    });
    let ports = client_ports(&t);
    assert_eq!(ports.len(), CONNS, "conns listing");
    let before = t.stats().unwrap();
    // One forged RST per connection, from the client's own address, with a guessed sequence.
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let out = command_in(&t.client_ns, workspace_bin("wk-spoof"))
        .unwrap()
        .args([
            "--src",
            &CLIENT.to_string(),
            "--dst",
            &format!("{VIP}:{TCP_PORT}"),
        ])
        .args(["--flags", "R", "--ports", &list.join(",")])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "wk-spoof failed");
    let r = Topology::client_report(client).unwrap();
    let after = t.stats().unwrap();
    let rejected = reason(&after, "forwarded_rst_fin_out_of_window")
        - reason(&before, "forwarded_rst_fin_out_of_window");
    println!(
        "blind RSTs: {rejected} judged out of window; client: {} broken, {} pongs",
        r["broken"], r["pongs"]
    );
    assert_eq!(
        rejected, CONNS as u64,
        "every forged RST judged out of window: {after:#}"
    );
    assert_eq!(r["connected"], CONNS, "{r:#}");
    assert_eq!(r["broken"], 0, "a forged RST cut connections: {r:#}");
    assert_eq!(r["lost_pongs"], 0, "{r:#}");
    // Every connection pinged again more than 10 s after the RSTs: 2 or 3 pongs each.
    assert!(r["pongs"].as_u64().unwrap() >= CONNS as u64 * 2, "{r:#}");
}

/// 200 connections echo 8 KB messages through the routed topology; returns the client report.
fn echo_8k_through_small_hop(t: &Topology) -> Value {
    let client = tcp_client_with(
        t,
        200,
        1000,
        8,
        &["--message-bytes", "8192", "--pong-timeout-ms", "6000"],
    );
    Topology::client_report(client).unwrap()
}

#[test]
fn e02_path_mtu_with_a_fixed_mss_clamp() {
    let Some(mut t) = shaped_topology("e02_path_mtu_clamp", 2, Shape::Routed { hop_mtu: 1400 })
    else {
        return;
    };
    start(
        &mut t,
        &[(0, 100), (1, 100)],
        "[data_path]\nmss_clamp = 1360\n",
    );
    let r = echo_8k_through_small_hop(&t);
    println!("8 KB echo, MSS clamped to 1360: {r}");
    assert_eq!(r["connected"], 200, "{r:#}");
    assert_eq!(r["broken"], 0, "{r:#}");
    assert!(r["pongs"].as_u64().unwrap() >= 200 * 7, "{r:#}");
}

/// Path MTU through ICMP alone (no MSS clamping): 200 connections echo 8 KB messages, first as
/// plain flows, then with the TCP VIP in `syn_cookies = "always"` (after a reload), where the
/// edge translates every sequence number. Both 200 of 200; returns the reasons' growth per run
/// for the given counters.
fn path_mtu_plain_then_cookies(t: &mut Topology, counters: &[&str]) -> [Vec<u64>; 2] {
    let plain = t.config(&[(0, 100), (1, 100)], "[data_path]\nmss_clamp = \"off\"\n");
    let cfg = t.write_config(&plain).unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_stats(
        t,
        Duration::from_secs(10),
        "every backend in the table",
        |s| s["vips"][0]["backends_in_table"] == 2,
    );
    let mut out = [Vec::new(), Vec::new()];
    for (i, mode) in ["plain", "cookies"].into_iter().enumerate() {
        if mode == "cookies" {
            t.write_config(&Topology::with_cookies(&plain, "always"))
                .unwrap();
            t.wklb(&["reload"]).unwrap();
            // The plain run's path MTUs are cached: discovered again, through cookie flows.
            t.forget_path_mtus().unwrap();
        }
        let before = t.stats().unwrap();
        let r = echo_8k_through_small_hop(t);
        let after = t.stats().unwrap();
        out[i] = counters
            .iter()
            .map(|c| reason(&after, c) - reason(&before, c))
            .collect();
        println!(
            "8 KB echo, {mode}: {counters:?} = {:?}; connected {}, broken {}, rtt p50 {} ms, p99 {} ms",
            out[i], r["connected"], r["broken"], r["rtt_ms_p50"], r["rtt_ms_p99"]
        );
        assert_eq!(r["connected"], 200, "{mode}: {r:#}");
        assert_eq!(r["broken"], 0, "{mode}: {r:#}");
        assert!(r["pongs"].as_u64().unwrap() >= 200 * 7, "{mode}: {r:#}");
        if mode == "cookies" {
            let sent = reason(&after, "syn_cookie_sent") - reason(&before, "syn_cookie_sent");
            assert!(sent >= 200, "the handshakes were the edge's: {after:#}");
        }
    }
    out
}

#[test]
fn e03_path_mtu_through_icmp_translation_alone() {
    let Some(mut t) = shaped_topology("e03_path_mtu_icmp", 2, Shape::Routed { hop_mtu: 1400 })
    else {
        return;
    };
    // The small hop between the edge and the data nodes: its routers' errors about what the
    // edge sent reach the clients.
    let runs = path_mtu_plain_then_cookies(&mut t, &["icmp_error_to_client"]);
    for (mode, r) in ["plain", "cookies"].iter().zip(&runs) {
        assert!(r[0] >= 1, "{mode}: no router error reached the client");
    }
}

#[test]
fn e05_path_mtu_with_a_small_hop_on_the_client_side() {
    let shape = Shape::ClientRouted {
        hop_mtu: 1400,
        at_edge: false,
    };
    let Some(mut t) = shaped_topology("e05_client_hop", 2, shape) else {
        return;
    };
    // Routers on the clients' side answer the edge's replies: translated to the data node,
    // which must recognise its own sequence numbers (a cookie flow's differ from the client's).
    let runs = path_mtu_plain_then_cookies(&mut t, &["icmp_error_to_backend"]);
    for (mode, r) in ["plain", "cookies"].iter().zip(&runs) {
        assert!(r[0] >= 1, "{mode}: no router error reached a data node");
    }
}

#[test]
fn e06_path_mtu_with_the_edges_client_side_interface_at_1400() {
    let shape = Shape::ClientRouted {
        hop_mtu: 1400,
        at_edge: true,
    };
    let Some(mut t) = shaped_topology("e06_edge_1400", 2, shape) else {
        return;
    };
    // The edge itself answers the data nodes' large replies (fragmentation-needed).
    let runs = path_mtu_plain_then_cookies(&mut t, &["icmp_frag_needed_sent"]);
    for (mode, r) in ["plain", "cookies"].iter().zip(&runs) {
        assert!(r[0] >= 1, "{mode}: the edge sent no fragmentation-needed");
    }
}

#[test]
fn e04_one_armed_edge_long_lived_failover_and_restart() {
    let Some(mut t) = shaped_topology("e04_one_armed", 3, Shape::OneArmed) else {
        return;
    };
    start(&mut t, &[(0, 100), (1, 100), (2, 100)], "");
    let before = t.stats().unwrap();
    let long = tcp_client_with(&t, 300, 1000, 20, &[]);
    wait_stats(&t, Duration::from_secs(20), "300 established flows", |s| {
        s["vips"][0]["active_flows"] == 300
    });
    // Failover: backend 2 dies; its connections break, nobody else's.
    t.stop_backend(1);
    t.stop_health(1);
    let died = Instant::now();
    wait_stats(&t, Duration::from_secs(3), "b2 out of the table", |s| {
        backend_row(s, "im-tcp", 1)["in_table"] == false
    });
    println!(
        "one-armed failover: b2 out of the table after {:?}",
        died.elapsed()
    );
    // Restart: the daemon goes away and comes back; no connection notices.
    t.stop_daemon().unwrap();
    let cfg = t.dir.path().join("wklb.toml");
    t.start_daemon(&cfg).unwrap();
    let fresh = Topology::client_report(tcp_client_with(&t, 200, 0, 1, &[])).unwrap();
    let r = Topology::client_report(long).unwrap();
    let after = t.stats().unwrap();
    println!("one-armed: long-lived {r}\nfresh {fresh}");
    assert_eq!(r["connected"], 300, "{r:#}");
    let to_b2 = count(&r, "per_backend", "b2");
    assert_eq!(
        r["broken"].as_u64().unwrap(),
        to_b2,
        "only b2's connections break: {r:#}"
    );
    assert_eq!(count(&r, "broken_per_backend", "b2"), to_b2, "{r:#}");
    assert_eq!(fresh["connected"], 200, "{fresh:#}");
    assert_eq!(count(&fresh, "per_backend", "b2"), 0, "{fresh:#}");
    // Both directions went through the data path on the one interface.
    for r in ["forwarded", "reversed"] {
        assert!(reason(&after, r) > reason(&before, r), "{r}: {after:#}");
    }
    let attached = after["interfaces"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "one interface: {after:#}");
}
