//! Host test (no root): every external program the harness, the tests, the demo and the
//! benchmark start is on the one list in `tests/programs.txt`, which `cargo xtask setup`
//! installs from. A program started but not listed is what made a fresh machine fail half-way
//! through the suites (iperf3) while CI, on a machine that had it from earlier work, stayed green.

use std::path::{Path, PathBuf};

use regex::Regex;
use wklb_tests::programs;

/// Program names started in `source`: the literal first word of every way the harness starts a
/// process (`Command::new`, `run`, `command_in`, `spawn_quiet`, `spawn_proxy`, `exec(ns, &[..])`,
/// `ip netns exec NS PROG`).
fn started_programs(source: &str) -> Vec<String> {
    let patterns = [
        r#"Command::new\(\s*"([^"]+)""#,
        r#"\brun\(\s*"([^"]+)""#,
        r#"\bcommand_in\([^,()]+,\s*"([^"]+)""#,
        r#"\bspawn_quiet\(\s*[^,()]+,\s*"([^"]+)""#,
        r#"\bspawn_proxy\(\s*[^,()]+,\s*[^,()]+,\s*"([^"]+)""#,
        r#"\bexec\(\s*[^,()]+,\s*&\[\s*"([^"]+)""#,
        r#""exec",\s*[^,()\]]+,\s*"([^"]+)""#,
    ];
    let mut out = Vec::new();
    for p in patterns {
        let re = Regex::new(p).unwrap();
        for c in re.captures_iter(source) {
            out.push(c[1].to_string());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_scanner_finds_every_way_of_starting_a_program() {
    let src = r#"
        let a = Command::new("alpha").arg("x");
        netns::run("beta", &["-x"]);
        let c = command_in(&t.edge_ns, "gamma")?;
        Proc::spawn_quiet(
            &self.backend_ns[i],
            "delta",
            ["-s"],
        );
        spawn_proxy(t, name, "epsilon", &[], "");
        t.exec(&t.client_ns, &["zeta", "-tin"]);
        run("ip", &["netns", "exec", ns, "eta", "-Hltn"]);
        let _ = format!("run(\"{x}\")");
    "#;
    let mut got = started_programs(src);
    got.sort();
    assert_eq!(
        got,
        [
            "alpha", "beta", "delta", "epsilon", "eta", "gamma", "ip", "zeta"
        ]
    );
}

#[test]
fn every_program_the_harness_starts_is_listed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    // The workspace's own binaries are built, not installed.
    let mut own: Vec<String> = std::fs::read_dir(root.join("src/bin"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    own.push("wklb".into());
    let listed: Vec<String> = programs::all().into_iter().map(|p| p.name).collect();
    let mut unlisted = Vec::new();
    let mut seen = 0;
    for f in &files {
        if f.ends_with("tests/programs.rs") {
            continue; // this file's own examples
        }
        let src = std::fs::read_to_string(f).unwrap();
        for p in started_programs(&src) {
            seen += 1;
            if !listed.contains(&p) && !own.contains(&p) {
                unlisted.push(format!("{p} (started in {})", f.display()));
            }
        }
    }
    assert!(seen > 20, "the scan found only {seen} program starts");
    assert!(
        unlisted.is_empty(),
        "programs started but missing from tests/programs.txt (add them with their Debian package): {unlisted:?}"
    );
}

#[test]
fn every_listed_program_names_a_package_and_a_task() {
    let all = programs::all();
    assert!(
        all.iter()
            .any(|p| p.name == "iperf3" && p.package == "iperf3")
    );
    for p in all {
        assert!(!p.package.is_empty(), "{p:?}");
        assert!(
            !p.tasks.is_empty()
                && p.tasks
                    .iter()
                    .all(|t| ["test", "demo", "bench"].contains(&t.as_str())),
            "{p:?}"
        );
    }
}
