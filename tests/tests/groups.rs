//! Backend groups with priority failover, end to end: a preferred group "direct" (3 backends)
//! and a spill-over group "via-relay" (2 backends) behind one VIP. Direct backends die one at
//! a time and come back; new connections follow Envoy's priority load, counted at the backends
//! (their greetings), and long-lived connections on healthy backends never break.

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{
    e2e::{tcp_client, topology, wait_connected, wait_stats},
    topology::Topology,
};

/// The topology's config with b1-b3 in "direct" (priority 0) and b4-b5 in "via-relay"
/// (priority 1), on both VIPs.
fn grouped_config(t: &Topology) -> String {
    let mut cfg = t.config(&[(0, 100), (1, 100), (2, 100), (3, 100), (4, 100)], "");
    cfg = cfg.replace(
        "[[vip.backend]]\naddress = \"10.2.0.11\"",
        "[[vip.group]]\nname = \"direct\"\npriority = 0\n\n[[vip.group]]\nname = \"via-relay\"\npriority = 1\n\n[vip.failover]\noverprovisioning = 1.4\n\n[[vip.backend]]\naddress = \"10.2.0.11\"",
    );
    for (addr, group) in [
        ("10.2.0.11", "direct"),
        ("10.2.0.12", "direct"),
        ("10.2.0.13", "direct"),
        ("10.2.0.14", "via-relay"),
        ("10.2.0.15", "via-relay"),
    ] {
        cfg = cfg.replace(
            &format!("address = \"{addr}\"\n"),
            &format!("address = \"{addr}\"\ngroup = \"{group}\"\n"),
        );
    }
    cfg
}

fn group<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["vips"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name}: {stats:#}"))
}

/// Waits until the direct group has `healthy` healthy backends and gets `share` of new flows.
fn wait_direct(t: &Topology, healthy: u64, share: f64) {
    let took = wait_stats(
        t,
        Duration::from_secs(10),
        &format!("direct with {healthy} healthy taking {share}"),
        |s| {
            let d = group(s, "direct");
            d["healthy"].as_u64() == Some(healthy)
                && (d["new_flow_share"].as_f64().unwrap_or(-1.0) - share).abs() < 0.005
        },
    );
    eprintln!("direct: {healthy} healthy, {share} of new flows ({took:?})");
}

/// Opens `n` short connections; returns how many reached the direct group (b1-b3).
fn batch_to_direct(t: &Topology, n: usize) -> usize {
    batch_to_direct_at(t, n, 200)
}

/// The same, `parallel` connections at a time.
fn batch_to_direct_at(t: &Topology, n: usize, parallel: usize) -> usize {
    let (conns, parallel) = (n.to_string(), parallel.to_string());
    let target = format!(
        "{}:{}",
        wklb_tests::topology::VIP,
        wklb_tests::topology::TCP_PORT
    );
    let child = t
        .client(&[
            "tcp",
            "--target",
            &target,
            "--conns",
            &conns,
            "--ping-interval-ms",
            "0",
            "--duration-s",
            "1",
            "--parallel",
            &parallel,
        ])
        .unwrap();
    let r = Topology::client_report(child).unwrap();
    assert_eq!(r["connected"].as_u64(), Some(n as u64), "{r}");
    let per = &r["per_backend"];
    let on = |b: &str| per[b].as_u64().unwrap_or(0) as usize;
    let direct = on("b1") + on("b2") + on("b3");
    assert_eq!(direct + on("b4") + on("b5"), n, "{r}");
    direct
}

#[test]
fn g01_new_flows_spill_from_the_preferred_group_by_priority_load_and_return() {
    let Some(mut t) = topology("g01", 5) else {
        return;
    };
    let cfg = t.write_config(&grouped_config(&t)).unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_direct(&t, 3, 1.0);
    let s = t.stats().unwrap();
    assert_eq!(group(&s, "via-relay")["new_flow_share"], 0.0, "{s:#}");
    // 1,000 long-lived connections, all on the preferred group.
    let long = tcp_client(&t, 1000, 1000, 30);
    wait_connected(&t, 1000);

    // One direct backend dies: health 2/3 x 1.4 = 93%, so 7% of new flows spill.
    t.stop_backend(0);
    t.stop_health(0);
    wait_direct(&t, 2, 0.93);
    let direct = batch_to_direct(&t, 600);
    eprintln!("one direct down: {direct} of 600 new connections on direct (93% planned)");
    assert!((516..=588).contains(&direct), "{direct} of 600 on direct");
    // Two die: 1/3 x 1.4 = 46%.
    t.stop_backend(1);
    t.stop_health(1);
    wait_direct(&t, 1, 0.46);
    let direct = batch_to_direct(&t, 600);
    eprintln!("two direct down: {direct} of 600 new connections on direct (46% planned)");
    assert!((216..=336).contains(&direct), "{direct} of 600 on direct");
    // Long-lived connections now land on both groups; those on the relays must outlive the
    // last direct backend.
    let spread = tcp_client(&t, 400, 1000, 15);
    std::thread::sleep(Duration::from_secs(3));
    // All three: the relays take every new flow.
    t.stop_backend(2);
    t.stop_health(2);
    wait_direct(&t, 0, 0.0);
    assert_eq!(batch_to_direct(&t, 300), 0);
    // The metrics say the same.
    let m =
        wklb_tests::netns::http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics")
            .unwrap();
    assert!(
        m.contains("wklb_group_new_flow_share{vip=\"im-tcp\",group=\"via-relay\"} 1"),
        "{m}"
    );
    // They come back: every new flow returns to direct.
    for i in 0..3 {
        t.start_backend(i).unwrap();
        t.start_health(i).unwrap();
    }
    wait_direct(&t, 3, 1.0);
    assert_eq!(batch_to_direct(&t, 300), 300);

    let first = Topology::client_report(long).unwrap();
    let later = Topology::client_report(spread).unwrap();
    for (name, r, n) in [("first", &first, 1000), ("later", &later, 400)] {
        eprintln!(
            "{name} long-lived: {} connected, per backend {}, broken {}",
            r["connected"], r["per_backend"], r["broken_per_backend"]
        );
        assert_eq!(r["connected"].as_u64(), Some(n), "{r}");
        // Only connections on the backends that died broke.
        let broken: u64 = ["b1", "b2", "b3"]
            .iter()
            .map(|b| r["broken_per_backend"][b].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(broken, r["broken"].as_u64().unwrap(), "{name}: {r}");
    }
    for b in ["b4", "b5"] {
        assert_eq!(first["per_backend"][b].as_u64().unwrap_or(0), 0, "{first}");
    }
    let on_relays: u64 = ["b4", "b5"]
        .iter()
        .map(|b| later["per_backend"][b].as_u64().unwrap_or(0))
        .sum();
    assert!(
        on_relays > 100,
        "the later connections spilled to the relays: {later}"
    );
}

/// Groups at different distances (a delay line in front of each backend): the round trips the
/// data path measures at handshakes match each group's emulated distance.
#[test]
fn g02_data_path_round_trips_match_each_groups_distance() {
    let Some(mut t) = wklb_tests::e2e::bare_topology("g02", 0) else {
        return;
    };
    // Direct: 5 ms round trip; via-relay: 60 ms.
    for one_way_us in [2_500, 2_500, 2_500, 30_000, 30_000] {
        let i = t
            .add_backend_host_delayed(Duration::from_micros(one_way_us))
            .unwrap();
        t.start_backend(i).unwrap();
        t.start_health(i).unwrap();
    }
    let cfg = t.write_config(&grouped_config(&t)).unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_direct(&t, 3, 1.0);
    // A few handshakes at a time: a burst of hundreds would queue in the delay lines and the
    // backends of this 2-core machine and time that queueing, not the distance.
    assert_eq!(batch_to_direct_at(&t, 300, 10), 300);
    // The relays take every new flow once direct's health checks fail.
    for i in 0..3 {
        t.stop_health(i);
    }
    wait_direct(&t, 0, 0.0);
    assert_eq!(batch_to_direct_at(&t, 300, 10), 0);
    let s = t.stats().unwrap();
    for (name, rtt_ms) in [("direct", 5.0), ("via-relay", 60.0)] {
        let r = &group(&s, name)["backend_rtt"];
        let p50 = r["p50_ms"].as_f64().expect("samples");
        eprintln!(
            "{name}: {} handshakes, edge to backend p50 {p50:.2} ms, p99 {:.2} ms (emulated {rtt_ms} ms)",
            r["samples"], r["p99_ms"]
        );
        assert!(r["samples"].as_u64().unwrap() >= 300, "{r}");
        assert!(
            (p50 - rtt_ms).abs() <= rtt_ms * 0.2,
            "{name}: p50 {p50} ms, emulated {rtt_ms} ms"
        );
    }
    let c = &s["vips"][0]["client_rtt"];
    eprintln!(
        "client to edge: {} handshakes, p50 {} ms, p99 {} ms",
        c["samples"], c["p50_ms"], c["p99_ms"]
    );
    assert!(c["samples"].as_u64().unwrap() >= 600, "{c}");
    assert!(c["p50_ms"].as_f64().unwrap() < 2.0, "{c}");
    // The same histograms in /metrics.
    let m =
        wklb_tests::netns::http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics")
            .unwrap();
    assert!(
        m.contains("wklb_vip_client_rtt_seconds_count{vip=\"im-tcp\"}"),
        "{m}"
    );
    assert!(
        m.contains("wklb_backend_handshake_rtt_seconds_bucket{"),
        "{m}"
    );
}
