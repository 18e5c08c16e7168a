//! `cargo xtask demo` (the wklb-demo binary): a full run succeeds and tells its story, and an
//! interrupt at any moment leaves no namespace, pinned object or process behind.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use wklb_tests::{e2e::serial, root::require_root, topology::workspace_bin};

/// The run id the demo printed ("client ns wk123x0-cli ...").
fn run_id(out: &str) -> Option<String> {
    let i = out.find("client ns ")? + "client ns ".len();
    let rest = &out[i..];
    Some(rest[..rest.find("-cli")?].to_string())
}

fn leftovers(id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for l in String::from_utf8_lossy(&ns.stdout).lines() {
        if l.starts_with(id) {
            left.push(format!("namespace {l}"));
        }
    }
    for p in std::fs::read_dir("/sys/fs/bpf").unwrap().flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if name == id || name.starts_with(&format!("{id}-")) {
            left.push(format!("pinned /sys/fs/bpf/{name}"));
        }
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&format!("/{id}-")) && !cmd.contains("wklb-demo") {
            left.push(format!(
                "process {}: {cmd}",
                p.file_name().to_string_lossy()
            ));
        }
    }
    left
}

/// Runs the demo with `args` to its end: it succeeds, tells each of `needles`, and leaves
/// nothing behind.
fn runs_to_the_end(test: &str, args: &[&str], needles: &[&str]) {
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let out = Command::new(workspace_bin("wklb-demo"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let id = run_id(&text).expect("run id");
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

#[test]
fn demo_runs_to_the_end() {
    runs_to_the_end(
        "demo_runs_to_the_end",
        &[],
        &[
            "health check marked b2 DOWN",
            "new connections per backend",
            "SYN cookies engaged",
            "of 100 new connections opened",
            "lost 0",
            "== done",
        ],
    );
}

#[test]
fn anycast_demo_runs_to_the_end() {
    runs_to_the_end(
        "anycast_demo_runs_to_the_end",
        &["--edges", "2"],
        &[
            "has 2 next hops",
            "the router dropped edge 1",
            "(none on the drained edge 1)",
            "broken per edge [0, ",
            "reconnected ",
            "== done",
        ],
    );
}

#[test]
fn interrupted_demo_leaves_nothing_behind() {
    if !require_root("interrupted_demo_leaves_nothing_behind") {
        return;
    }
    let _serial = serial();
    for after in [Duration::from_millis(400), Duration::from_secs(3)] {
        let mut child = Command::new(workspace_bin("wklb-demo"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        let status = child.wait().unwrap();
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(status.code(), Some(130), "after {after:?}:\n{text}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "cleanup took {:?}",
            start.elapsed()
        );
        if let Some(id) = run_id(&text) {
            assert!(
                leftovers(&id).is_empty(),
                "after {after:?}: {:?}",
                leftovers(&id)
            );
        }
    }
}
