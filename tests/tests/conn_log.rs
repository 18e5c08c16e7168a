//! The connection log, end to end: every connection's open and close, from the data path's
//! ring buffer and the expiry pass, with byte counts that match what the clients sent and
//! received.

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{
    e2e::{topology, wait_stats},
    topology::{TCP_PORT, Topology, VIP},
};

#[test]
fn c01_two_thousand_connections_two_thousand_opens_and_closes_with_their_bytes() {
    let Some(mut t) = topology("c01", 3) else {
        return;
    };
    let log = t.dir.path().join("log/conns.jsonl");
    let cfg = t
        .config(
            &[(0, 100), (1, 100), (2, 100)],
            &format!("[conn_log]\nenabled = true\npath = \"{}\"\n", log.display()),
        )
        .replace(
            "max_flows = 65536\n",
            "max_flows = 65536\ntcp_closing_timeout = \"1s\"\ntcp_closed_timeout = \"1s\"\n",
        );
    let cfg = t.write_config(&cfg).unwrap();
    t.start_daemon(&cfg).unwrap();
    let target = format!("{VIP}:{TCP_PORT}");
    let r = Topology::client_report(
        t.client(&[
            "tcp",
            "--target",
            &target,
            "--conns",
            "2000",
            "--ping-interval-ms",
            "300",
            "--duration-s",
            "2",
            "--parallel",
            "100",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r["connected"], 2000, "{r}");
    let took = wait_stats(&t, Duration::from_secs(40), "2,000 close records", |s| {
        s["conn_log"]["closes"].as_u64() >= Some(2000)
    });
    eprintln!("all closes written {took:?} after the clients finished");
    let s = t.stats().unwrap();
    assert_eq!(s["conn_log"]["lost"], 0, "{s:#}");
    assert_eq!(s["conn_log"]["opens"], 2000, "{s:#}");
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let of = |e: &str| lines.iter().filter(|l| l["event"] == e).collect::<Vec<_>>();
    let (opens, closes) = (of("open"), of("close"));
    assert_eq!((opens.len(), closes.len()), (2000, 2000));
    let sum = |k: &str| closes.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    eprintln!(
        "log: {} opens, {} closes; bytes in {} (clients sent {}), out {} (clients received {})",
        opens.len(),
        closes.len(),
        sum("bytes_in"),
        r["bytes_sent"],
        sum("bytes_out"),
        r["bytes_received"]
    );
    assert_eq!(sum("bytes_in"), r["bytes_sent"].as_u64().unwrap());
    assert_eq!(sum("bytes_out"), r["bytes_received"].as_u64().unwrap());
    let c = closes[0];
    assert_eq!(c["ended_by"], "fin", "{c}");
    assert_eq!(c["group"], "default", "{c}");
    assert!(
        c["snat"].as_str().unwrap().starts_with(&t.snat.to_string()),
        "{c}"
    );
    assert!(
        c["client"].as_str().unwrap().starts_with("10.1.0.2:"),
        "{c}"
    );
    // Every close has its open (same client and SNAT port).
    let key = |l: &Value| {
        (
            l["client"].as_str().unwrap().to_string(),
            l["snat"].as_str().unwrap().to_string(),
        )
    };
    let opened: std::collections::BTreeSet<_> = opens.iter().map(|l| key(l)).collect();
    assert!(closes.iter().all(|c| opened.contains(&key(c))));
}

/// Turning the log off (a restart: its counters are sized at load) keeps every connection.
#[test]
fn c02_turning_the_log_off_is_a_hitless_restart() {
    let Some(mut t) = topology("c02", 2) else {
        return;
    };
    let log = t.dir.path().join("conns.jsonl");
    let base = t.config(&[(0, 100), (1, 100)], "");
    let on = base.replace(
        "[snat]",
        &format!(
            "[conn_log]\nenabled = true\npath = \"{}\"\n\n[snat]",
            log.display()
        ),
    );
    let cfg = t.write_config(&on).unwrap();
    t.start_daemon(&cfg).unwrap();
    let target = format!("{VIP}:{TCP_PORT}");
    let clients = t
        .client(&[
            "tcp",
            "--target",
            &target,
            "--conns",
            "100",
            "--ping-interval-ms",
            "300",
            "--duration-s",
            "6",
        ])
        .unwrap();
    wklb_tests::e2e::wait_connected(&t, 100);
    t.stop_daemon().unwrap();
    std::fs::write(&cfg, &base).unwrap();
    t.start_daemon(&cfg).unwrap();
    let r = Topology::client_report(clients).unwrap();
    assert_eq!(
        (r["connected"].as_u64(), r["broken"].as_u64()),
        (Some(100), Some(0)),
        "{r}"
    );
    assert!(t.stats().unwrap()["conn_log"].is_null());
    let opens = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(opens, 100, "the open records written before the restart");
}
