//! The wklb daemon and CLI end to end, in network-namespace topologies with real TCP stacks on
//! both sides (root; CI runs them). Each test builds its own uniquely named topology and tears
//! it down on drop, also on failure.

use std::time::{Duration, Instant};

use serde_json::Value;
use wklb_tests::{e2e::*, netns::http_get_in, root::require_root, topology::*};

#[test]
fn daemon_balances_real_connections_and_reports_them() {
    let Some(mut t) = topology("daemon_balances_real_connections", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let c = t
        .client(&[
            "tcp",
            "--target",
            &format!("{VIP}:{TCP_PORT}"),
            "--conns",
            "300",
            "--ping-interval-ms",
            "500",
            "--duration-s",
            "3",
        ])
        .unwrap();
    let r = Topology::client_report(c).unwrap();
    assert_eq!(r["connected"], 300, "{r:#}\n{}", t.daemon_log());
    assert_eq!(r["broken"], 0, "{r:#}");
    assert_eq!(r["lost_pongs"], 0, "{r:#}");
    for b in ["b1", "b2", "b3"] {
        let n = r["per_backend"][b].as_u64().unwrap_or(0);
        assert!((70..=130).contains(&n), "{b} got {n} of 300: {r:#}");
    }
    let s = t.stats().unwrap();
    for i in 0..3 {
        let row = backend_row(&s, "im-tcp", i);
        assert_eq!(row["healthy"], true, "{row:#}");
        assert_eq!(
            row["new_flows"].as_u64().unwrap(),
            r["per_backend"][format!("b{}", i + 1)].as_u64().unwrap(),
            "{row:#}"
        );
        assert!(row["probe_rtt_ms"].as_f64().is_some(), "{row:#}");
    }
    assert_eq!(s["vips"][0]["fail_open"], false);
    // The CLI's human output names every backend.
    let table = t.wklb(&["backend", "list"]).unwrap();
    for i in 0..3 {
        assert!(table.contains(&backend_addr(i).to_string()), "{table}");
    }
    // Metrics are served inside the edge namespace.
    let m = http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics").unwrap();
    assert!(
        m.contains("wklb_backend_new_flows_total{vip=\"im-tcp\""),
        "{m}"
    );
    assert!(m.contains("wklb_probe_rtt_seconds_bucket"), "{m}");
    assert!(m.contains("wklb_vip_fail_open{vip=\"im-tcp\"} 0"), "{m}");
}

#[test]
fn killed_backend_leaves_the_table_within_fall_times_interval_and_others_keep_working() {
    let Some(mut t) = topology("killed_backend_leaves_the_table", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let long = tcp_client(&t, 300, 300, 6);
    wait_connected(&t, 300);
    // The node dies: its server and its health endpoint.
    t.stop_backend(1);
    t.stop_health(1);
    // fall (2) x interval (500 ms) + one interval = 1.5 s.
    let took = wait_stats(
        &t,
        Duration::from_millis(1500),
        "b2 out of the table",
        |s| backend_row(s, "im-tcp", 1)["in_table"] == false,
    );
    println!("dead backend left the table after {took:?} (bound 1.5 s)");
    let s = t.stats().unwrap();
    assert_eq!(backend_row(&s, "im-tcp", 1)["healthy"], false);
    // New connections never reach the dead one.
    let fresh = Topology::client_report(tcp_client(&t, 90, 0, 1)).unwrap();
    assert_eq!(fresh["connected"], 90, "{fresh:#}");
    assert_eq!(count(&fresh, "per_backend", "b2"), 0, "{fresh:#}");
    let r = Topology::client_report(long).unwrap();
    // b2's clients saw their connections end; nobody else's broke.
    assert_only_b2_broke(&r, "IPv4 clients");
}

#[test]
fn drain_add_remove_and_weight_at_runtime() {
    let Some(mut t) = topology("drain_add_remove_and_weight_at_runtime", 4) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let held = tcp_client(&t, 150, 300, 5);
    wait_connected(&t, 150);
    let msg = t
        .wklb(&["backend", "drain", "im-tcp", &backend_addr(0).to_string()])
        .unwrap();
    assert!(msg.contains("draining"), "{msg}");
    let fresh = Topology::client_report(tcp_client(&t, 90, 0, 1)).unwrap();
    assert_eq!(
        count(&fresh, "per_backend", "b1"),
        0,
        "drained backend got new connections: {fresh:#}"
    );
    // Existing connections to the drained backend keep pinging until closed.
    let r = Topology::client_report(held).unwrap();
    assert!(count(&r, "per_backend", "b1") > 20, "{r:#}");
    assert_eq!(r["broken"], 0, "{r:#}");

    // Add a fourth backend at runtime: new connections reach it.
    let out = t
        .wklb(&[
            "backend",
            "add",
            "im-tcp",
            &format!("{}:{TCP_PORT}", backend_addr(3)),
            "--weight",
            "100",
        ])
        .unwrap();
    assert!(out.contains("added") && out.contains("pending"), "{out}");
    // It takes new connections once its health checks pass, not before.
    let took = wait_stats(&t, Duration::from_secs(5), "b4 in the table", |s| {
        backend_row(s, "im-tcp", 3)["in_table"] == true
    });
    println!("added backend in the table after {took:?}");
    let fresh = Topology::client_report(tcp_client(&t, 120, 0, 1)).unwrap();
    assert!(count(&fresh, "per_backend", "b4") > 15, "{fresh:#}");
    // Remove it again: no new connection goes there.
    t.wklb(&["backend", "remove", "im-tcp", &backend_addr(3).to_string()])
        .unwrap();
    let fresh = Topology::client_report(tcp_client(&t, 90, 0, 1)).unwrap();
    assert_eq!(count(&fresh, "per_backend", "b4"), 0, "{fresh:#}");
    // Weight: b3 at 300 vs b2 at 100 (b1 still drained) -> about 3:1.
    t.wklb(&[
        "backend",
        "weight",
        "im-tcp",
        &backend_addr(2).to_string(),
        "300",
    ])
    .unwrap();
    let fresh = Topology::client_report(tcp_client(&t, 1000, 0, 1)).unwrap();
    let (b2, b3) = (
        count(&fresh, "per_backend", "b2") as f64,
        count(&fresh, "per_backend", "b3") as f64,
    );
    assert!(
        b3 / b2 > 2.4 && b3 / b2 < 3.8,
        "expected about 3:1, got {b3}:{b2}: {fresh:#}"
    );
    // Commands naming what does not exist fail with a clear message and change nothing.
    let e = t
        .wklb(&["backend", "drain", "nope", "10.2.0.11"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no VIP named \"nope\""), "{e}");
    let e = t
        .wklb(&["backend", "remove", "im-tcp", "10.9.9.9"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no backend 10.9.9.9"), "{e}");
}

#[test]
fn reload_applies_the_difference_and_refuses_a_bad_file() {
    let Some(mut t) = topology("reload_applies_the_difference", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let held = tcp_client(&t, 100, 300, 4);
    wait_connected(&t, 100);
    // Add b3, drop b1's weight to 0, through the file.
    t.write_config(&t.config(&[(0, 0), (1, 100), (2, 100)], ""))
        .unwrap();
    let out = t.wklb(&["reload"]).unwrap();
    assert!(out.contains("+backend 10.2.0.13:5100"), "{out}");
    assert!(out.contains("10.2.0.11:5100 weight 100 -> 0"), "{out}");
    wait_stats(&t, Duration::from_secs(5), "b3 in the table", |s| {
        backend_row(s, "im-tcp", 2)["in_table"] == true
    });
    let fresh = Topology::client_report(tcp_client(&t, 90, 0, 1)).unwrap();
    assert_eq!(count(&fresh, "per_backend", "b1"), 0, "{fresh:#}");
    assert!(count(&fresh, "per_backend", "b3") > 0, "{fresh:#}");
    // A broken file changes nothing; the error names the key and line.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("weight = 0", "weight = -3")).unwrap();
    let e = t.wklb(&["reload"]).unwrap_err().to_string();
    assert!(
        e.contains("weight must be 0 or more, got -3") && e.contains("line "),
        "{e}"
    );
    let fresh = Topology::client_report(tcp_client(&t, 60, 0, 1)).unwrap();
    assert_eq!(
        count(&fresh, "per_backend", "b1"),
        0,
        "bad reload changed something: {fresh:#}"
    );
    // SIGHUP reloads too.
    std::fs::write(&cfg, t.config(&[(0, 100), (1, 100), (2, 100)], "")).unwrap();
    unsafe { libc::kill(t.daemon.as_ref().unwrap().pid() as i32, libc::SIGHUP) };
    wait_stats(&t, Duration::from_secs(5), "b1 weight back to 100", |s| {
        backend_row(s, "im-tcp", 0)["weight"] == 100
    });
    let r = Topology::client_report(held).unwrap();
    assert_eq!(r["broken"], 0, "reloads broke connections: {r:#}");
}

#[test]
fn restart_keeps_every_connection_and_unload_removes_everything() {
    let Some(mut t) = topology("restart_keeps_every_connection", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let held = tcp_client(&t, 300, 200, 7);
    wait_connected(&t, 300);
    let before = t.stats().unwrap();
    let status = t.stop_daemon().unwrap();
    assert!(status.success(), "daemon exit {status}\n{}", t.daemon_log());
    assert!(
        t.pin_path.join("FLOWS4").exists(),
        "maps must stay pinned after SIGTERM"
    );
    // The daemon stays away a while: connections must not notice.
    std::thread::sleep(Duration::from_millis(1000));
    t.start_daemon(&cfg).unwrap();
    assert!(t.daemon_log().contains("adopted"), "{}", t.daemon_log());
    let r = Topology::client_report(held).unwrap();
    assert_eq!(r["connected"], 300, "{r:#}");
    assert_eq!(r["broken"], 0, "restart broke connections: {r:#}");
    assert_eq!(r["lost_pongs"], 0, "{r:#}");
    // Counters survived the restart.
    let after = t.stats().unwrap();
    let nf = |s: &Value| -> u64 {
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["vip"] == "im-tcp")
            .map(|b| b["new_flows"].as_u64().unwrap())
            .sum()
    };
    assert!(
        nf(&after) >= nf(&before) && nf(&before) >= 300,
        "{before:#} {after:#}"
    );
    // A second daemon on the same pin path is refused.
    let mut second = command_in(&t.edge_ns, workspace_bin("wklb")).unwrap();
    let out = second
        .args(["daemon", "--config", &cfg.to_string_lossy()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another wklb daemon"), "{err}");
    // Unload: everything goes.
    let out = t.wklb(&["unload"]).unwrap();
    assert!(out.contains("unloading"), "{out}");
    let mut d = t.daemon.take().unwrap();
    let start = Instant::now();
    while d.running() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!d.running(), "daemon did not exit after unload");
    assert!(!t.pin_path.exists(), "pinned objects left behind");
    let links = t.exec(&t.edge_ns, &["ip", "-d", "link", "show"]).unwrap();
    assert!(!links.contains("prog/xdp"), "XDP still attached: {links}");
}

#[test]
fn fail_open_when_every_health_check_fails() {
    let Some(mut t) = topology("fail_open_when_every_health_check_fails", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    for i in 0..3 {
        t.stop_health(i);
    }
    wait_stats(&t, Duration::from_secs(5), "fail-open", |s| {
        s["vips"][0]["fail_open"] == true
    });
    let s = t.stats().unwrap();
    for i in 0..3 {
        let row = backend_row(&s, "im-tcp", i);
        assert_eq!(
            (row["healthy"].clone(), row["in_table"].clone()),
            (Value::Bool(false), Value::Bool(true)),
            "{row:#}"
        );
    }
    let r = Topology::client_report(tcp_client(&t, 90, 200, 1)).unwrap();
    assert_eq!(r["connected"], 90, "fail-open must keep forwarding: {r:#}");
    assert_eq!(r["broken"], 0, "{r:#}");
    assert!(t.daemon_log().contains("FAIL-OPEN"), "{}", t.daemon_log());
    let m = http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics").unwrap();
    assert!(m.contains("wklb_vip_fail_open{vip=\"im-tcp\"} 1"), "{m}");
    // One health endpoint recovers: fail-open ends and only that backend takes new flows.
    t.start_health(2).unwrap();
    wait_stats(&t, Duration::from_secs(5), "fail-open over", |s| {
        s["vips"][0]["fail_open"] == false
    });
    let r = Topology::client_report(tcp_client(&t, 60, 0, 1)).unwrap();
    assert_eq!(count(&r, "per_backend", "b3"), 60, "{r:#}");
}

#[test]
fn check_config_and_cli_errors_are_one_clear_sentence() {
    if !require_root("check_config_and_cli_errors") {
        return;
    }
    let _serial = serial();
    let t = Topology::new(1).unwrap();
    let bad = t
        .write_config(
            &t.config(&[(0, 100)], "")
                .replace("timeout = \"300ms\"", "timeout = \"2s\""),
        )
        .unwrap();
    let out = std::process::Command::new(workspace_bin("wklb"))
        .args(["check-config", &bad.to_string_lossy()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vip[0].health_check.timeout") && err.contains("shorter than interval"),
        "{err}"
    );
    // Interfaces are checked in the namespace the command runs in: the host has no e0.
    let good = t.write_config(&t.config(&[(0, 100)], "")).unwrap();
    let out = std::process::Command::new(workspace_bin("wklb"))
        .args(["check-config", &good.to_string_lossy()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist on this host"), "{err}");
    let out = command_in(&t.edge_ns, workspace_bin("wklb"))
        .unwrap()
        .args(["check-config", &good.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No daemon: the CLI says how to fix it.
    let out = std::process::Command::new(workspace_bin("wklb"))
        .args(["--socket", "/nonexistent/wklb.sock", "stats"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `wklb daemon` running"), "{err}");
}

#[test]
fn idle_flows_expire_and_free_their_snat_ports() {
    let Some(mut t) = topology("idle_flows_expire", 3) else {
        return;
    };
    // One SNAT port: the SNAT address can hold a single flow until it expires (ports are
    // unique per SNAT address).
    let cfg = t
        .config(
            &[(0, 100), (1, 100), (2, 100)],
            "port_min = 40000\nport_max = 40000\n",
        )
        .replace(
            "max_flows = 65536",
            "max_flows = 65536\nudp_timeout = \"2s\"",
        );
    let cfg = t.write_config(&cfg).unwrap();
    t.start_daemon(&cfg).unwrap();
    let first = Topology::client_report(udp_client(&t, 12)).unwrap();
    assert_eq!(first["answered"], 1, "{first:#}");
    // While that flow lives, the only port is taken.
    let second = Topology::client_report(udp_client(&t, 12)).unwrap();
    assert_eq!(second["answered"], 0, "the port was not taken: {second:#}");
    let s = t.stats().unwrap();
    assert!(
        s["reasons"]["drop_snat_exhausted"].as_u64().unwrap() > 0,
        "{:#}",
        s["reasons"]
    );
    // The data path told the operator too (aya-log, daemon.log_data_path_events on).
    let logged = std::time::Instant::now();
    while !t.daemon_log().contains("no free SNAT port") {
        assert!(
            logged.elapsed() < Duration::from_secs(5),
            "no event logged:\n{}",
            t.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 2 s idle + a 1 s expiry pass, with slack for the two-core machine.
    let took = wait_stats(&t, Duration::from_secs(6), "every flow expired", |s| {
        s["flows"] == 0 && s["expired_flows_total"].as_u64().unwrap_or(0) >= 1
    });
    println!("idle UDP flows expired after {took:?}");
    let conns = t.json(&["conns"]).unwrap();
    assert_eq!(conns["total"], 0, "{conns:#}");
    assert!(conns["conns"].as_array().unwrap().is_empty(), "{conns:#}");
    // Expiry freed the ports: new flows get them again.
    let third = Topology::client_report(udp_client(&t, 12)).unwrap();
    assert!(
        third["answered"].as_u64().unwrap() >= 1,
        "ports not freed: {third:#}"
    );
}

#[test]
fn restart_is_hitless_under_ip_netns_exec_too() {
    let Some(mut t) = topology("restart_under_ip_netns_exec", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    // `ip netns exec` hides the host's /sys/fs/bpf; the daemon must still pin where a
    // restarted daemon finds the program and maps.
    t.start_daemon_ip_netns_exec(&cfg).unwrap();
    let held = tcp_client(&t, 300, 200, 6);
    wait_connected(&t, 300);
    assert!(t.stop_daemon().unwrap().success(), "{}", t.daemon_log());
    assert!(
        t.pin_path.join("FLOWS4").exists(),
        "pins must land in the host's bpffs:\n{}",
        t.daemon_log()
    );
    // The daemon stays away a while: connections must not notice.
    std::thread::sleep(Duration::from_millis(500));
    t.start_daemon_ip_netns_exec(&cfg).unwrap();
    let r = Topology::client_report(held).unwrap();
    assert_eq!(r["connected"], 300, "{r:#}");
    assert_eq!(
        r["broken"],
        0,
        "restart under ip netns exec broke connections: {r:#}\n{}",
        t.daemon_log()
    );
    assert!(t.daemon_log().contains("adopted"), "{}", t.daemon_log());
    let out = t.wklb(&["unload"]).unwrap();
    assert!(out.contains("unloading"), "{out}");
    let start = Instant::now();
    while t.pin_path.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!t.pin_path.exists(), "pins left behind");
}

/// Fills the daemon's connection table with `n` new flows by running its own object (sharing
/// the pinned maps) on SYNs from ever new clients, arriving on the client-side interface.
fn fill_flows(t: &Topology, cfg_text: &str, n: u32) -> u64 {
    use lb_userspace::{
        config::{Checks, parse},
        dataplane::{
            Flows as _,
            kernel::{LoadOptions, load},
        },
    };
    use wklb_tests::{
        fixture::Fixture,
        packets::{Seg, tcp_seg},
    };
    let cfg = parse(cfg_text, Checks::Offline).expect("config").config;
    let opts = LoadOptions {
        max_flows: cfg.conntrack.max_flows,
        snat_slots: cfg.snat_slots(),
        pin_dir: Some(t.pin_path.clone()),
        conn_log: false,
    };
    let (e0, e1) = (format!("{}e0", t.id), format!("{}e1", t.id));
    wklb_tests::netns::in_named_netns(&t.edge_ns, move || {
        let mut l = load(&opts).expect("the daemon's object, adopting its maps");
        let (e0, e1) = (
            wklb_tests::netns::ifindex(&e0).unwrap(),
            wklb_tests::netns::ifindex(&e1).unwrap(),
        );
        let payload = [0u8; 10];
        let seg = Seg {
            flags: "S",
            payload: &payload,
            ..Seg::default()
        };
        let syn = tcp_seg((CLIENT, 1), (VIP, TCP_PORT), &seg);
        l.program
            .set_bench_frame(&lb_common::BenchFrame::new(&syn, true, e1))
            .unwrap();
        let ctx = Fixture::xdp_ctx(syn.len(), e0);
        let prog = l.program.extra("bench_wklb").unwrap();
        use aya::programs::{TestRun as _, TestRunOptions};
        prog.test_run(TestRunOptions {
            data_in: Some(&syn),
            ctx_in: Some(&ctx),
            repeat: n,
            ..TestRunOptions::new()
        })
        .expect("test run");
        l.flows.refs4().all().map(|r| r.len() as u64).unwrap_or(0)
    })
    .unwrap()
}

/// `wklb_probe_start_lateness_seconds`: (probes, probes that started within 50 ms).
fn probe_lateness(t: &Topology) -> (u64, u64) {
    let text = http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics").unwrap();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from /metrics:\n{text}"))
    };
    (
        value("wklb_probe_start_lateness_seconds_count "),
        value("wklb_probe_start_lateness_seconds_bucket{le=\"0.05\"} "),
    )
}

#[test]
fn probes_start_on_time_with_a_million_flows_and_back_to_back_installs() {
    let Some(mut t) = topology("probes_on_time", 2) else {
        return;
    };
    // 1,000,000 flows need 16 SNAT addresses (64,512 ports each); SYN-only flows live 5 min.
    // A million SYNs at once is a flood: cookie mode would answer them, so it is off here.
    // The UDP VIP keeps its share of the table and of the ports (shares): this one VIP may
    // fill 90% of each, so both are sized for 1,050,000 flows at 90%.
    let extra: Vec<String> = (1..=19).map(|i| format!("10.2.1.{i}")).collect();
    for a in &extra {
        t.exec(
            &t.edge_ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                &format!("{}e1", t.id),
            ],
        )
        .unwrap();
    }
    let list: Vec<String> = extra.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg_text = Topology::with_cookies(&t.config(&[(0, 100), (1, 100)], ""), "off")
        .replace(
            "max_flows = 65536",
            "max_flows = 1200000\ntcp_syn_timeout = \"300s\"",
        )
        .replace(
            &format!("addresses = [\"{SNAT}\"]"),
            &format!("addresses = [{}]", list.join(", ")),
        );
    let cfg = t.write_config(&cfg_text).unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_stats(&t, Duration::from_secs(10), "both backends up", |s| {
        s["vips"][0]["backends_in_table"] == 2
    });
    let flows = fill_flows(&t, &cfg_text, 1_050_000);
    assert!(flows >= 1_000_000, "only {flows} flows created");
    let (before, _) = probe_lateness(&t);
    // Table installs back to back while expiry passes walk a million flows.
    let addr = backend_addr(0).to_string();
    let started = Instant::now();
    for i in 0..40 {
        let w = if i % 2 == 0 { "150" } else { "100" };
        t.wklb(&["backend", "weight", "im-tcp", &addr, w]).unwrap();
    }
    let installs = started.elapsed();
    // Probes go on: 4 targets every 500 ms.
    let waited = Instant::now();
    while probe_lateness(&t).0 < before + 8 {
        assert!(waited.elapsed() < Duration::from_secs(10), "probes stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (count, on_time) = probe_lateness(&t);
    let s = t.stats().unwrap();
    println!(
        "{flows} flows; 40 installs in {installs:?}; {} probes since, {} started more than 50 ms late",
        count - before,
        count - on_time
    );
    assert!(
        s["flows"].as_u64().unwrap() >= 1_000_000,
        "flows expired early: {}",
        s["flows"]
    );
    assert!(
        count - before >= 8,
        "probes stopped: {count} (was {before})"
    );
    assert_eq!(count, on_time, "probes started more than 50 ms late");
    for b in s["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "up", "{b:#}");
    }
    assert!(!t.daemon_log().contains("DOWN"), "{}", t.daemon_log());
}
