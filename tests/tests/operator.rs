//! What an operator runs around the daemon, end to end (root; CI runs them): the command line's
//! socket over reloads, `unload` without a daemon, `conns` and `lookup`, systemd's notify
//! protocol through a real NOTIFY_SOCKET, log levels, and the Grafana dashboard and Prometheus
//! alerts checked against a live daemon's /metrics.

use std::{
    collections::BTreeSet,
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

use wklb_tests::{e2e::*, netns::http_get_in, topology::*};

/// A config for `t` with the control socket at `socket`.
fn config_with_socket(t: &Topology, socket: &Path) -> String {
    t.config(&[(0, 100), (1, 100)], "").replace(
        &format!("control_socket = \"{}\"", t.socket.display()),
        &format!("control_socket = \"{}\"", socket.display()),
    )
}

fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_bin("wklb"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn o01_a_socket_given_on_the_command_line_survives_reloads_and_sighup() {
    let Some(mut t) = topology("o01_socket_override", 2) else {
        return;
    };
    // The file names another socket than the one the daemon is started with.
    let in_file = t.dir.path().join("from-file.sock");
    let cfg = t.write_config(&config_with_socket(&t, &in_file)).unwrap();
    let given = t.socket.clone();
    let socket = given.to_string_lossy().into_owned();
    t.start_daemon_with(&cfg, &["--socket", &socket], &[], &given)
        .unwrap();
    assert!(!in_file.exists(), "the daemon bound the file's socket too");
    let out = cli(&given, &["reload"]);
    assert!(
        out.status.success(),
        "reload refused: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        t.daemon_log()
    );
    // A real change still applies.
    std::fs::write(
        &cfg,
        config_with_socket(&t, &in_file).replace("gc_interval = \"1s\"", "gc_interval = \"2s\""),
    )
    .unwrap();
    let out = cli(&given, &["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("gc_interval"),
        "{said}"
    );
    let pid = t.daemon.as_ref().unwrap().pid() as i32;
    // SAFETY: signalling the daemon this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let start = Instant::now();
    while !t.daemon_log().contains("SIGHUP: config reloaded") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            t.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!t.daemon_log().contains("SIGHUP reload refused"));
}

#[test]
fn o02_unload_without_a_daemon_removes_only_its_own_routes() {
    let Some(mut t) = topology("o02_unload_routes", 2) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100)], "[announce]\ntable = 200\n"))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let routes = |t: &Topology| {
        t.exec(
            &t.edge_ns,
            &["ip", "route", "show", "table", "all", "proto", "248"],
        )
        .unwrap()
    };
    let start = Instant::now();
    while !routes(&t).contains(&VIP.to_string()) {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", routes(&t));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another wklb instance's route (another pin path, another VIP), in the same table and in
    // one of its own.
    for table in ["200", "201"] {
        t.exec(
            &t.edge_ns,
            &[
                "ip",
                "route",
                "add",
                "blackhole",
                "198.51.100.77/32",
                "table",
                table,
                "proto",
                "248",
            ],
        )
        .unwrap();
    }
    t.stop_daemon().unwrap();
    let nowhere = t.dir.path().join("no-daemon.sock");
    let mut cmd = command_in(&t.edge_ns, workspace_bin("wklb")).unwrap();
    let out = cmd
        .arg("--socket")
        .arg(&nowhere)
        .args(["unload", "--pin-path", &t.pin_path.to_string_lossy()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("withdrew the route {VIP}/32")),
        "{said}"
    );
    let left = routes(&t);
    assert!(!left.contains(&VIP.to_string()), "{left}");
    assert_eq!(left.matches("198.51.100.77").count(), 2, "{left}");
    assert!(!t.pin_path.exists());
}

#[test]
fn o03_conns_shows_100_rows_by_default_and_lookup_takes_the_vip_first() {
    let Some(mut t) = topology("o03_conns_limit", 2) else {
        return;
    };
    let cfg = t
        .write_config(&t.config(&[(0, 100), (1, 100)], ""))
        .unwrap();
    t.start_daemon(&cfg).unwrap();
    let c = t
        .client(&[
            "tcp",
            "--target",
            &format!("{VIP}:{TCP_PORT}"),
            "--conns",
            "150",
            "--ping-interval-ms",
            "500",
            "--duration-s",
            "8",
        ])
        .unwrap();
    wait_connected(&t, 150);
    let text = t.wklb(&["conns", "--vip", "im-tcp"]).unwrap();
    assert!(
        text.contains("100 of 150 connection(s) shown, 50 left out"),
        "{text}"
    );
    let j = t.json(&["conns", "--vip", "im-tcp"]).unwrap();
    assert_eq!(j["total"], 150);
    assert_eq!(j["conns"].as_array().unwrap().len(), 100);
    let all = t
        .json(&["conns", "--vip", "im-tcp", "--limit", "0"])
        .unwrap();
    assert_eq!(all["conns"].as_array().unwrap().len(), 150);
    let some = t.json(&["conns", "--limit", "7"]).unwrap();
    assert_eq!(some["conns"].as_array().unwrap().len(), 7);
    // lookup VIP CLIENT, like every other command; the old order still answers.
    let client = format!("{CLIENT}:40000");
    let new = t.json(&["lookup", "im-tcp", &client]).unwrap();
    let old = t.json(&["lookup", &client, "im-tcp"]).unwrap();
    assert_eq!(new["backend"], old["backend"]);
    assert!(new["backend"].is_string(), "{new:#}");
    let r = Topology::client_report(c).unwrap();
    assert_eq!(r["broken"], 0, "{r:#}");
}

/// The datagrams a service manager would get, read from our own NOTIFY_SOCKET.
struct Notify {
    sock: UnixDatagram,
    got: Vec<String>,
}

impl Notify {
    fn new(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            sock,
            got: Vec::new(),
        }
    }

    /// Reads until a message containing `what` arrives (within `limit`); returns its index.
    fn wait_for(&mut self, what: &str, limit: Duration) -> usize {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.got.iter().position(|m| m.contains(what)) {
                return i;
            }
            assert!(
                start.elapsed() < limit,
                "no {what:?} within {limit:?}; got {:?}",
                self.got
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Reads whatever arrives for `d`.
    fn listen(&mut self, d: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < d {
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    fn count(&self, what: &str) -> usize {
        self.got.iter().filter(|m| m.contains(what)).count()
    }
}

#[test]
fn o04_systemd_hears_ready_after_the_first_verdicts_watchdog_status_reload_and_stop() {
    let Some(mut t) = topology("o04_notify", 2) else {
        return;
    };
    let path = t.dir.path().join("notify.sock");
    let mut n = Notify::new(&path);
    let cfg_text = t.config(&[(0, 100), (1, 100)], "");
    let cfg = t.write_config(&cfg_text).unwrap();
    let notify = path.to_string_lossy().into_owned();
    let socket = t.socket.clone();
    t.start_daemon_with(
        &cfg,
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "2000000")],
        &socket,
    )
    .unwrap();
    let ready = n.wait_for("READY=1", Duration::from_secs(20));
    assert!(n.got[ready].contains("STATUS="), "{:?}", n.got);
    assert!(n.got[ready].contains("4/4 backends up"), "{:?}", n.got);
    // READY=1 only once every backend had its first health verdict.
    let s = t.stats().unwrap();
    for i in 0..2 {
        let row = backend_row(&s, "im-tcp", i);
        assert!(row["probe_rtt_ms"].as_f64().is_some(), "{row:#}");
    }
    assert!(
        t.daemon_log()
            .contains("ready: XDP attached and first health verdicts in")
    );
    // The watchdog is pinged from the controller loop, every quarter period or so.
    n.got.clear();
    n.listen(Duration::from_secs(3));
    assert!(n.count("WATCHDOG=1") >= 3, "{:?}", n.got);
    // A reload: RELOADING=1, then READY=1 again.
    n.got.clear();
    let out = t.wklb(&["reload"]).unwrap();
    assert!(out.contains("nothing") || !out.is_empty());
    let reloading = n.wait_for("RELOADING=1", Duration::from_secs(5));
    assert!(n.got[reloading].contains("MONOTONIC_USEC="), "{:?}", n.got);
    let again = n.wait_for("READY=1", Duration::from_secs(5));
    assert!(again > reloading);
    // A refused reload exits non-zero and says why (what ExecReload reports to systemctl).
    std::fs::write(&cfg, cfg_text.replace("127.0.0.1:9330", "127.0.0.1:9331")).unwrap();
    let out = std::process::Command::new(workspace_bin("wklb"))
        .arg("--socket")
        .arg(&t.socket)
        .arg("reload")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused reload exited 0: {err}");
    assert!(err.contains("daemon.metrics_listen"), "{err}");
    std::fs::write(&cfg, &cfg_text).unwrap();
    // Stopping: STOPPING=1.
    n.got.clear();
    t.stop_daemon().unwrap();
    n.wait_for("STOPPING=1", Duration::from_secs(5));
    // The first log line names the version and commit.
    let log = t.daemon_log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains("wklb 0.1.0 (commit ") && first.contains("starting"),
        "{first}"
    );
}

#[test]
fn o05_log_level_from_the_config_the_command_line_and_a_reload() {
    let Some(mut t) = topology("o05_log_level", 2) else {
        return;
    };
    let quiet = t.config(&[(0, 100), (1, 100)], "").replace(
        "gc_interval = \"1s\"\n",
        "gc_interval = \"1s\"\nlog_level = \"warn\"\n",
    );
    let cfg = t.write_config(&quiet).unwrap();
    let socket = t.socket.clone();
    t.start_daemon_with(&cfg, &[], &[], &socket).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = t.daemon_log();
    assert!(log.contains("starting"), "{log}");
    assert!(!log.contains("wklb daemon ready"), "{log}");
    // The file goes back to info: the reload's own lines show.
    std::fs::write(&cfg, quiet.replace("log_level = \"warn\"\n", "")).unwrap();
    t.wklb(&["reload"]).unwrap();
    let start = Instant::now();
    while !t.daemon_log().contains("reload: daemon.log_level") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            t.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.stop_daemon().unwrap();
    // --log-level beats the file.
    std::fs::write(t.dir.path().join("daemon.log"), "").unwrap();
    std::fs::write(&cfg, &quiet).unwrap();
    t.start_daemon_with(&cfg, &["--log-level", "info"], &[], &socket)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.daemon_log().contains("wklb daemon ready"),
        "{}",
        t.daemon_log()
    );
}

/// Metric names a scrape defines: gauges and counters as written, histograms with their
/// `_bucket`, `_sum` and `_count` samples.
fn scraped_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (Some(name), Some(kind)) = (f.next(), f.next()) else {
            continue;
        };
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{s}"));
            }
        } else {
            out.insert(name.to_string());
        }
    }
    out
}

fn named_metrics(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bwklb_[a-z0-9_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn o06_the_dashboard_and_the_alerts_name_only_metrics_a_live_daemon_serves() {
    let Some(mut t) = topology("o06_dashboard_alerts", 2) else {
        return;
    };
    // Every optional section on, so every metric family is served.
    let log = t.dir.path().join("conns.jsonl");
    let cfg_text = t
        .config(
            &[(0, 100), (1, 100)],
            &format!(
                "[announce]\ntable = 200\n\n[conn_log]\nenabled = true\npath = \"{}\"\n",
                log.display()
            ),
        )
        .replacen(
            "[[vip.backend]]",
            "[[vip.group]]\nname = \"direct\"\npriority = 0\n\n[[vip.pin]]\nname = \"residency\"\nsources = [\"10.1.0.0/24\"]\ngroups = [\"direct\"]\n\n[[vip.backend]]\ngroup = \"direct\"",
            1,
        );
    let cfg = t.write_config(&cfg_text).unwrap();
    t.start_daemon(&cfg).unwrap();
    let c = t
        .client(&[
            "tcp",
            "--target",
            &format!("{VIP}:{TCP_PORT}"),
            "--conns",
            "20",
            "--ping-interval-ms",
            "200",
            "--duration-s",
            "1",
        ])
        .unwrap();
    Topology::client_report(c).unwrap();
    let body = http_get_in(&t.edge_ns, "127.0.0.1:9330".parse().unwrap(), "/metrics").unwrap();
    let text = body
        .split_once("\r\n\r\n")
        .map_or(body.as_str(), |(_, b)| b);
    let served = scraped_names(text);
    assert!(served.len() > 40, "{served:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "examples/grafana/wklb-dashboard.json",
        "examples/prometheus/wklb-alerts.yml",
    ] {
        let src = std::fs::read_to_string(root.join(file)).unwrap();
        let named = named_metrics(&src);
        assert!(named.len() > 5, "{file}: {named:?}");
        let missing: Vec<&String> = named.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the daemon does not serve: {missing:?}\nserved: {served:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana/wklb-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["panels"].as_array().unwrap().len() > 10);
    // The rules parse and evaluate as Prometheus would load them.
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("examples/prometheus/wklb-alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup`)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("SUCCESS"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool check rules: {}", said.trim());
    // The scrape itself passes promtool's lint.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn o07_the_package_holds_the_binary_unit_man_page_completions_dashboard_and_alerts() {
    if !wklb_tests::root::require_root("o07_package") {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "run", "-q", "-p", "xtask", "--", "package", "--debug", "--out",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let list = std::process::Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    println!("{}:\n{list}", deb.display());
    for f in [
        "./usr/bin/wklb",
        "./lib/systemd/system/wklb.service",
        "./usr/share/man/man1/wklb.1.gz",
        "./usr/share/bash-completion/completions/wklb",
        "./usr/share/zsh/vendor-completions/_wklb",
        "./usr/share/fish/vendor_completions.d/wklb.fish",
        "./usr/share/doc/wklb/README.md",
        "./usr/share/doc/wklb/examples/wklb.toml",
        "./usr/share/wklb/grafana/wklb-dashboard.json",
        "./usr/share/wklb/prometheus/wklb-alerts.yml",
    ] {
        assert!(list.contains(f), "{f} missing from the package:\n{list}");
    }
    // What it installs works: the binary runs, the man page and completions name commands.
    let x = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(x.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let v = std::process::Command::new(x.path().join("usr/bin/wklb"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("wklb 0.1.0 (commit "));
    let bash = std::fs::read_to_string(x.path().join("usr/share/bash-completion/completions/wklb"))
        .unwrap();
    for sub in ["daemon", "check-config", "conns", "lookup", "edge"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let unit = std::fs::read_to_string(x.path().join("lib/systemd/system/wklb.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/usr/bin/wklb reload"));
    let info = std::process::Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("Package: wklb"));
}
