//! PROXY protocol end to end: real clients through the daemon and the XDP data path to data
//! nodes that read the header the way WuKongIM v2 does (the first read holds the header and the
//! client's first bytes); each node greets with the address the header named, and every client
//! checks it is its own. Root; CI runs them; serialised (two cores).

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{
    consumers::{self, Consumer},
    e2e::*,
    topology::*,
};

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

/// Writes the config of three equal data nodes with the TCP VIP's `proxy_protocol` at
/// `version`, starts the daemon and waits for the nodes in the table; the config's path.
fn start_proxied(t: &mut Topology, version: &str) -> std::path::PathBuf {
    let cfg = t
        .write_config(&with_proxy(
            &t.config(&[(0, 100), (1, 100), (2, 100)], ""),
            version,
        ))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(t, 3);
    cfg
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

/// SYN-cookie flows with the header: 64 KB echoes intact, and one full-sized client segment per
/// connection dropped on its way into the node, so the node acknowledges what follows it with
/// SACK blocks, which the edge maps back into the client's numbering.
#[test]
fn p02_syn_cookie_flows_carry_the_header_and_large_echoes_stay_whole() {
    let Some(mut t) = proxied_topology("p02_proxy_cookies") else {
        return;
    };
    drop_once_per_connection(&t, "wksack", "ip length > 1200");
    let base = t.config(&[(0, 100), (1, 100), (2, 100)], "");
    let cfg = t
        .write_config(&with_proxy(&Topology::with_cookies(&base, "always"), "v2"))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(&t, 3);
    // Pings of 64 KB: every segment after the first shifted, every acknowledgment mapped back.
    run_checked(&t, 100, 3, &["--message-bytes", "65536"]);
    let v = &t.stats().unwrap()["vips"][0];
    assert!(v["cookies_valid"].as_u64().unwrap() >= 100, "{v:#}");
    assert!(v["proxy_headers"].as_u64().unwrap() >= 100, "{v:#}");
    assert_eq!(v["proxy_refused"].as_u64(), Some(0), "{v:#}");
    assert_eq!(
        dropped(&t, "wksack"),
        100,
        "one segment dropped per connection"
    );
    assert!(v["proxy_sack_mapped"].as_u64().unwrap() > 0, "{v:#}");
    eprintln!(
        "SACK blocks mapped back: {} over 100 connections",
        v["proxy_sack_mapped"]
    );
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

/// nginx stream on b1, HAProxy on b2, the WuKongIM-like server on b3, health endpoints up.
fn behind_consumers(
    test: &str,
) -> Option<(Serial<Topology>, consumers::Consumed, consumers::Consumed)> {
    let mut t = bare_topology(test, 3)?;
    for i in 0..3 {
        t.start_health(i).unwrap();
    }
    let nginx = consumers::start(&t, 0, Consumer::NginxStream).unwrap();
    let haproxy = consumers::start(&t, 1, Consumer::Haproxy).unwrap();
    t.start_backend_with(2, &["--proxy-protocol"]).unwrap();
    Some((t, nginx, haproxy))
}

/// Every node's consumer: nginx stream on b1, HAProxy on b2, the WuKongIM-like server on b3.
/// Each run of 1,000 connections (v2, then v1 by reload): every address nginx and HAProxy
/// logged is the real client's of a connection the client made to that node, one line each,
/// and every greeting (through nginx's and HAProxy's own headers for b1 and b2) names it too.
#[test]
fn p04_nginx_haproxy_and_the_wukongim_server_log_every_clients_own_address() {
    let Some((mut t, nginx, haproxy)) = behind_consumers("p04_proxy_consumers") else {
        return;
    };
    let base = t.config(&[(0, 100), (1, 100), (2, 100)], "");
    let cfg = t.write_config(&with_proxy(&base, "v2")).unwrap();
    t.start_daemon(&cfg).unwrap();
    in_table(&t, 3);
    let mut want_nginx = Vec::new();
    let mut want_haproxy = Vec::new();
    for (round, version) in ["v2", "v1"].into_iter().enumerate() {
        if round > 0 {
            std::fs::write(&cfg, with_proxy(&base, version)).unwrap();
            let out = t.wklb(&["reload"]).unwrap();
            assert!(out.contains("proxy_protocol v2 -> v1"), "{out}");
        }
        let record = t.dir.path().join(format!("record-{version}"));
        let before = headers(&t);
        let r = run_checked(&t, 1000, 2, &["--record", record.to_str().unwrap()]);
        assert_spread(&r, &[("b1", 1), ("b2", 1), ("b3", 1)], 1000, 0.5);
        assert!(headers(&t) >= before + 1000, "{version}: {}", headers(&t));
        want_nginx.extend(consumers::recorded(&record, "b1").unwrap());
        want_haproxy.extend(consumers::recorded(&record, "b2").unwrap());
        want_nginx.sort();
        want_haproxy.sort();
        for (c, want) in [(&nginx, &want_nginx), (&haproxy, &want_haproxy)] {
            let got = c.logged(want.len()).unwrap();
            assert_eq!(
                got.len(),
                want.len(),
                "{version}: {:?} logged {} connections, the client made {}",
                c.kind,
                got.len(),
                want.len()
            );
            assert_eq!(&got, want, "{version}: {:?} logged other addresses", c.kind);
        }
        eprintln!(
            "{version}: nginx logged {} client addresses, HAProxy {}, all the clients' own",
            want_nginx.len(),
            want_haproxy.len()
        );
    }
}

/// On every data node (its own nftables, table `table`): the first segment toward port 5100
/// that `matching` selects is dropped once per connection (keyed by the edge's SNAT address
/// and port), and lets its retransmission through.
fn drop_once_per_connection(t: &Topology, table: &str, matching: &str) {
    let rules = format!(
        "table ip {table} {{\n set seen {{ type ipv4_addr . inet_service; flags dynamic; size 65536; }}\n\
         \x20chain in {{ type filter hook prerouting priority -300; policy accept;\n\
         \x20 tcp dport {TCP_PORT} {matching} ip saddr . tcp sport != @seen \
         add @seen {{ ip saddr . tcp sport }} counter drop\n }}\n}}\n"
    );
    let path = t.dir.path().join(format!("{table}.nft"));
    std::fs::write(&path, rules).unwrap();
    for ns in &t.backend_ns {
        t.exec(ns, &["nft", "-f", path.to_str().unwrap()]).unwrap();
    }
}

/// The packets `drop_once_per_connection`'s table dropped, over every node.
fn dropped(t: &Topology, table: &str) -> u64 {
    t.backend_ns
        .iter()
        .map(|ns| {
            let out = t.exec(ns, &["nft", "list", "table", "ip", table]).unwrap();
            out.split("counter packets ")
                .skip(1)
                .map(|s| s.split(' ').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>()
        })
        .sum()
}

/// The first data segment of every connection is dropped once on its way into the node (the
/// node's own nftables, keyed by the edge's SNAT address and port); the client retransmits it,
/// the edge inserts the same header again, and the node reads exactly one header and the
/// stream after it intact.
#[test]
fn p05_a_lost_first_segment_is_sent_again_behind_the_same_single_header() {
    let Some(mut t) = proxied_topology("p05_proxy_first_lost") else {
        return;
    };
    drop_once_per_connection(&t, "wkdrop", "tcp flags & (syn | fin | rst | psh) == psh");
    start_proxied(&mut t, "v2");
    // Greetings checked, then 4 KB echoes: the stream after the header is whole.
    run_checked(&t, 200, 2, &["--message-bytes", "4096"]);
    assert_eq!(
        dropped(&t, "wkdrop"),
        200,
        "one first segment dropped per connection"
    );
    // The header went out with the first segment and again with its retransmission.
    assert!(headers(&t) >= 400, "{}", headers(&t));
}

/// A restart with PROXY flows open: the established flows keep their shift through it (their
/// 2 KB pings go on, none breaks), and every connection opened while the daemon is away, while
/// it starts again and just after carries its header.
#[test]
fn p06_a_daemon_restart_keeps_proxy_flows_shifted_and_new_ones_get_their_header() {
    let Some(mut t) = proxied_topology("p06_proxy_restart") else {
        return;
    };
    let cfg = start_proxied(&mut t, "v2");
    let args = ["--proxied", "--parallel", "50", "--message-bytes", "2048"];
    let long = tcp_client_with(&t, 300, 200, 8, &args);
    wait_connected(&t, 300);
    t.stop_daemon().unwrap();
    // Batches of new connections, one after another, from the stop until a second after the
    // daemon is back: some connect while it is away, some while it starts, some after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batches = {
        let (ns, stop) = (t.client_ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let target = format!("{VIP}:{TCP_PORT}");
                let c = client_in(
                    &ns,
                    &[
                        "tcp",
                        "--target",
                        &target,
                        "--conns",
                        "20",
                        "--parallel",
                        "4",
                        "--proxied",
                        "--ping-interval-ms",
                        "100",
                        "--duration-s",
                        "0",
                    ],
                )
                .unwrap();
                out.push((
                    std::time::Instant::now(),
                    Topology::client_report(c).unwrap(),
                ));
            }
            out
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let starting = std::time::Instant::now();
    t.start_daemon(&cfg).unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = batches.join().unwrap();
    let during = batches
        .iter()
        .filter(|(at, _)| *at > starting && *at < started)
        .count();
    eprintln!(
        "{} batches of 20 connections, {during} ended while the daemon started ({} ms)",
        batches.len(),
        (started - starting).as_millis()
    );
    assert!(during > 0, "no batch ran while the daemon started");
    let mut reports: Vec<(&str, Value, u64)> = batches
        .into_iter()
        .map(|(_, r)| ("a batch across the restart", r, 20))
        .collect();
    reports.push((
        "open through it",
        Topology::client_report(long).unwrap(),
        300,
    ));
    for (what, r, n) in reports {
        assert_eq!(r["connected"].as_u64(), Some(n), "{what}: {r:#}");
        assert_eq!(r["broken"].as_u64(), Some(0), "{what}: {r:#}");
        assert_eq!(r["peer_checked"].as_u64(), Some(n), "{what}: {r:#}");
        assert_eq!(r["peer_mismatches"].as_u64(), Some(0), "{what}: {r:#}");
        assert_eq!(r["lost_pongs"].as_u64(), Some(0), "{what}: {r:#}");
    }
}

/// Clients that send a PROXY line of their own first, claiming another address: wklb's header
/// comes before it, so nginx, HAProxy and the WuKongIM-like server each take the real client's
/// address, and the forged line reaches them as the client's first data.
#[test]
fn p07_a_client_sending_its_own_proxy_line_cannot_claim_another_address() {
    let Some((mut t, nginx, haproxy)) = behind_consumers("p07_proxy_forged") else {
        return;
    };
    start_proxied(&mut t, "v1");
    let record = t.dir.path().join("record-forged");
    let forged = format!("PROXY TCP4 1.2.3.4 {VIP} 1111 {TCP_PORT}\r");
    run_checked(
        &t,
        300,
        1,
        &[
            "--first-line",
            &forged,
            "--record",
            record.to_str().unwrap(),
        ],
    );
    for (c, name) in [(&nginx, "b1"), (&haproxy, "b2")] {
        let want = consumers::recorded(&record, name).unwrap();
        assert!(!want.is_empty(), "no connection reached {name}");
        let got = c.logged(want.len()).unwrap();
        assert_eq!(got, want, "{:?} logged another address", c.kind);
    }
}
