//! PROXY protocol end to end: real clients through the daemon and the XDP data path to data
//! nodes that read the header the way WuKongIM v2 does (the first read holds the header and the
//! client's first bytes); each node greets with the address the header named, and every client
//! checks it is its own. Root; CI runs them; serialised (two cores).

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{e2e::*, topology::*};

/// `config` with the TCP VIP's `proxy_protocol` set.
fn with_proxy(config: &str, version: &str) -> String {
    config.replace(
        "protocol = \"tcp\"\n",
        &format!("protocol = \"tcp\"\nproxy_protocol = \"{version}\"\n"),
    )
}

/// Three data nodes that expect a PROXY header, their health endpoints (no header) up.
fn proxied_topology(test: &str) -> Option<Serial<Topology>> {
    let mut t = bare_topology(test, 3)?;
    for i in 0..3 {
        t.start_backend_with(i, &["--proxy-protocol"]).unwrap();
        t.start_health(i).unwrap();
    }
    Some(t)
}

fn in_table(t: &Topology, n: u64) {
    wait_stats(t, Duration::from_secs(10), "backends in the table", |s| {
        s["vips"][0]["backends_in_table"].as_u64() == Some(n)
    });
}

/// `conns` client-first connections that ping for `secs`; the report, checked: all connected,
/// none broken, every node saw the client's own address.
fn run_checked(t: &Topology, conns: usize, secs: u64, extra: &[&str]) -> Value {
    let mut args = vec!["--proxied", "--parallel", "50"];
    args.extend_from_slice(extra);
    let r = Topology::client_report(tcp_client_with(t, conns, 200, secs, &args)).unwrap();
    assert_eq!(r["connected"].as_u64(), Some(conns as u64), "{r:#}");
    assert_eq!(r["broken"].as_u64(), Some(0), "{r:#}");
    assert_eq!(r["peer_checked"].as_u64(), Some(conns as u64), "{r:#}");
    assert_eq!(r["peer_mismatches"].as_u64(), Some(0), "{r:#}");
    assert!(r["pongs"].as_u64().unwrap() > 0, "{r:#}");
    r
}

fn headers(t: &Topology) -> u64 {
    t.stats().unwrap()["vips"][0]["proxy_headers"]
        .as_u64()
        .unwrap()
}

#[test]
fn p01_every_data_node_reads_the_clients_own_address_with_v2_then_v1_after_a_reload() {
    let Some(mut t) = proxied_topology("p01_proxy_v2_v1") else {
        return;
    };
    let base = t.config(&[(0, 100), (1, 100), (2, 100)], "");
    let cfg = t.write_config(&with_proxy(&base, "v2")).unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(&t, 3);
    let s = t.stats().unwrap();
    assert_eq!(s["vips"][0]["proxy_protocol"], "v2", "{s:#}");
    let r = run_checked(&t, 300, 3, &[]);
    assert_spread(&r, &[("b1", 1), ("b2", 1), ("b3", 1)], 300, 0.5);
    assert!(headers(&t) >= 300, "{}", headers(&t));

    // v1 for new connections, by reload.
    std::fs::write(&cfg, with_proxy(&base, "v1")).unwrap();
    let out = t.wklb(&["reload"]).unwrap();
    assert!(out.contains("proxy_protocol v2 -> v1"), "{out}");
    let before = headers(&t);
    run_checked(&t, 300, 3, &[]);
    assert!(headers(&t) >= before + 300);
    let m =
        wklb_tests::netns::http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics")
            .unwrap();
    assert!(m.contains("proxy_protocol=\"v1\""), "{m}");
    assert!(
        m.contains("wklb_vip_proxy_headers_total{vip=\"im-tcp\"}"),
        "{m}"
    );
}

#[test]
fn p02_syn_cookie_flows_carry_the_header_and_large_echoes_stay_whole() {
    let Some(mut t) = proxied_topology("p02_proxy_cookies") else {
        return;
    };
    let base = t.config(&[(0, 100), (1, 100), (2, 100)], "");
    let cfg = t
        .write_config(&with_proxy(&Topology::with_cookies(&base, "always"), "v2"))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(&t, 3);
    // Pings of 8 KB: every segment after the first shifted, every acknowledgment mapped back.
    run_checked(&t, 100, 3, &["--message-bytes", "8192"]);
    let v = &t.stats().unwrap()["vips"][0];
    assert!(v["cookies_valid"].as_u64().unwrap() >= 100, "{v:#}");
    assert!(v["proxy_headers"].as_u64().unwrap() >= 100, "{v:#}");
    assert_eq!(v["proxy_refused"].as_u64(), Some(0), "{v:#}");
}

#[test]
fn p03_a_vip_with_proxy_protocol_off_sends_no_header() {
    let Some(mut t) = proxied_topology("p03_proxy_off") else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(&t, 3);
    let r = Topology::client_report(tcp_client_with(&t, 30, 0, 1, &["--proxied"])).unwrap();
    // The nodes find no header: every greeting names no address.
    assert_eq!(r["peer_mismatches"].as_u64(), Some(30), "{r:#}");
    assert_eq!(headers(&t), 0);
}
