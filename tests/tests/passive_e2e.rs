//! The passive health signal end to end: a data node whose IM process died (its health
//! endpoint still answering, so the probes see nothing) and one that went silent, seen by the
//! data path in `wklb stats` and `/metrics`. Root; CI runs them; serialised (two cores).

use std::time::Duration;

use serde_json::Value;
use wklb_tests::{e2e::*, topology::*};

/// Backend `i`'s row in `wklb stats`.
fn row(t: &Topology, i: usize) -> Value {
    let s = t.stats().unwrap();
    s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == backend_addr(i).to_string().as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no row for backend {i}: {s:#}"))
}

fn counted(t: &Topology, i: usize, key: &str) -> u64 {
    row(t, i)[key].as_u64().unwrap()
}

#[test]
fn n01_a_dead_nodes_refusals_and_a_silent_nodes_unanswered_syns_show_per_backend() {
    let Some(mut t) = topology("n01_passive", 3) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100), (2, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    wait_stats(&t, Duration::from_secs(10), "backends in the table", |s| {
        s["vips"][0]["backends_in_table"].as_u64() == Some(3)
    });

    // b2's IM process dies; its health endpoint still answers.
    t.stop_backend(1);
    let r = Topology::client_report(tcp_client_with(&t, 150, 0, 0, &["--parallel", "20"])).unwrap();
    let failed = r["connect_failures"].as_u64().unwrap();
    assert!(failed > 0, "{r:#}");
    assert_eq!(count(&r, "per_backend", "b2"), 0, "{r:#}");
    // Every refused connect is one refusal of b2's, none of the others'.
    assert_eq!(counted(&t, 1, "refused"), failed, "{:#}", row(&t, 1));
    assert_eq!(counted(&t, 0, "refused") + counted(&t, 2, "refused"), 0);
    assert_eq!(row(&t, 1)["health"], "up", "the probes saw nothing");

    // b3 goes silent: its namespace drops every packet to the IM port. Its clients' SYNs go
    // unanswered and are sent again (at 1 s, then 3 s) until they give up (5 s).
    let rules = t.dir.path().join("silent.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip wksilent {{\n chain in {{ type filter hook prerouting priority -300; policy accept;\n  tcp dport {TCP_PORT} drop\n }}\n}}\n"
        ),
    )
    .unwrap();
    t.exec(&t.backend_ns[2], &["nft", "-f", rules.to_str().unwrap()])
        .unwrap();
    let refused_before = counted(&t, 1, "refused");
    let r = Topology::client_report(tcp_client_with(&t, 60, 0, 0, &["--parallel", "60"])).unwrap();
    // The failures b2 did not refuse are b3's.
    let silent =
        r["connect_failures"].as_u64().unwrap() - (counted(&t, 1, "refused") - refused_before);
    assert!(silent > 0, "{r:#}");
    let again = counted(&t, 2, "syn_retransmits");
    assert!(
        again >= silent,
        "{again} SYNs sent again for {silent} silent connects: {r:#}"
    );
    assert!(again > 0, "{r:#}");
    assert_eq!(counted(&t, 2, "refused"), 0);
    assert_eq!(counted(&t, 0, "syn_retransmits"), 0);

    let m =
        wklb_tests::netns::http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics")
            .unwrap();
    for name in [
        "wklb_backend_refused_total",
        "wklb_backend_syn_retransmits_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    eprintln!(
        "b2 (dead): {failed} connects refused, {} counted; b3 (silent): {silent} connects timed out, {again} SYNs sent again counted",
        counted(&t, 1, "refused")
    );
}
