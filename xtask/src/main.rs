//! `cargo xtask <setup|build|test|demo|bench|fuzz>`: the project's build and test entry points.
mod cmd;
mod package;
mod setup;

use anyhow::Result;
use clap::Parser;
use setup::Lab;

#[derive(Parser)]
#[command(about = "wklb build, test and benchmark tasks")]
enum Task {
    /// Install what a fresh machine lacks for every task: nightly rust-src, bpf-linker, the
    /// Debian packages of every program in tests/programs.txt; mount bpffs at /sys/fs/bpf.
    Setup,
    /// Build the XDP object and the `wklb` binary (release). Needs only the toolchain.
    Build,
    /// Run setup if needed, then every test (privileged ones need root; CI runs as root).
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole thing on this machine (root): namespaces, daemon, clients, a failover. ~1 min.
    Demo {
        /// Anycast instead: a router running BIRD with ECMP in front of 2 or 3 edges, each
        /// running wklb and BIRD (drain, undrain, an edge dying). ~40 s.
        #[arg(long, value_name = "N")]
        edges: Option<u8>,
    },
    /// Benchmarks (root): data path against the XDP floor, control plane, and end to end
    /// against nginx stream, HAProxy, nftables and no balancer. Writes bench/results/.
    Bench {
        /// Fewer repetitions (100,000 instead of 1,000,000 per round) and shorter end-to-end runs.
        #[arg(long)]
        quick: bool,
    },
    /// A Debian package (.deb) of wklb: the binary, the systemd unit, the man page, shell
    /// completions, the example configs, the Grafana dashboard and the Prometheus alerts.
    /// Writes target/package/wklb_VERSION_ARCH.deb and lists its files.
    Package {
        /// Package the debug build `cargo xtask test` made instead of building a release.
        #[arg(long)]
        debug: bool,
        /// Directory for the package [default: target/package].
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Random and mutated frames through the real XDP object (root), invariants checked after
    /// every frame and batch. `cargo xtask test` runs 200,000.
    Fuzz {
        #[arg(long, default_value_t = 10_000_000)]
        frames: u64,
        /// Replay a run (every run prints its seed).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Frames the fuzzer runs as part of `cargo xtask test`.
const TEST_FUZZ_FRAMES: &str = "200000";

fn main() {
    if let Err(e) = run(Task::parse()) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// `wklb` and the harness binaries (demo, backends, client driver, benchmark with its chart),
/// release.
fn build_release_bins() -> Result<()> {
    cmd::cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "wklb-tests",
        "--features",
        "wklb-tests/charts",
        "--bins",
    ])
}

/// What a task needs besides the toolchain (packages of its programs, bpffs): building and
/// packaging need nothing else, so an edge host that only builds gets no lab packages.
fn labs(task: &Task) -> &'static [Lab] {
    match task {
        Task::Setup => &[Lab::Test, Lab::Demo, Lab::Bench],
        Task::Build | Task::Package { .. } | Task::Fuzz { .. } => &[],
        Task::Test { .. } => &[Lab::Test],
        Task::Demo { .. } => &[Lab::Demo],
        Task::Bench { .. } => &[Lab::Bench],
    }
}

fn run(task: Task) -> Result<()> {
    let labs = labs(&task);
    match task {
        Task::Setup => setup::lab(labs),
        Task::Build => {
            setup::toolchain()?;
            cmd::step("building the XDP object and wklb (release)");
            cmd::cargo(&["build", "--release", "-p", "lb-userspace"])
        }
        Task::Test { args } => {
            setup::lab(labs)?;
            if !setup::is_root() {
                println!(
                    "xtask: not root: privileged tests (XDP load, network namespaces) will be skipped; run `sudo cargo xtask test` to include them"
                );
            }
            cmd::step("building wklb and the test binaries (backends, client driver)");
            cmd::cargo(&["build", "-p", "lb-userspace", "-p", "wklb-tests", "--bins"])?;
            cmd::step("running every test (host unit tests, XDP fixtures, namespace end-to-end)");
            let mut a: Vec<&str> = vec!["test", "--workspace", "--exclude", "lb-ebpf"];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            cmd::cargo(&a)?;
            if setup::is_root() {
                let debug = cmd::target_dir().join("debug");
                cmd::step("fuzzing the data path (200,000 frames)");
                cmd::run(
                    &debug.join("wklb-fuzz").to_string_lossy(),
                    &["--frames", TEST_FUZZ_FRAMES],
                )?;
                cmd::run(&debug.join("wklb").to_string_lossy(), &["verify"])?;
            }
            Ok(())
        }
        Task::Demo { edges } => {
            if !setup::is_root() {
                anyhow::bail!(
                    "the demo creates network namespaces and loads XDP: run `sudo cargo xtask demo`"
                );
            }
            setup::lab(labs)?;
            cmd::step("building wklb and the demo (release)");
            build_release_bins()?;
            cmd::step("running the demo (Ctrl-C at any time removes everything it created)");
            let demo = cmd::target_dir().join("release/wklb-demo");
            match edges {
                None => cmd::run_foreground(&demo, &[]),
                Some(n) => cmd::run_foreground(&demo, &["--edges", &n.to_string()]),
            }
        }
        Task::Bench { quick } => {
            if !setup::is_root() {
                anyhow::bail!("the benchmark loads XDP programs: run `sudo cargo xtask bench`");
            }
            setup::lab(labs)?;
            cmd::step("building wklb and the benchmark (release)");
            build_release_bins()?;
            cmd::step("running the benchmarks (data path, control plane, end to end)");
            let bin = cmd::target_dir().join("release/wklb-bench");
            let bin = bin
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
            cmd::run(bin, if quick { &["--quick"] } else { &[] })
        }
        Task::Package { debug, out } => {
            let wklb = if debug {
                cmd::target_dir().join("debug/wklb")
            } else {
                setup::toolchain()?;
                cmd::step("building wklb (release)");
                cmd::cargo(&["build", "--release", "-p", "lb-userspace"])?;
                cmd::target_dir().join("release/wklb")
            };
            let out = out.unwrap_or_else(|| cmd::target_dir().join("package"));
            cmd::step("packaging");
            let deb = package::build(&wklb, &out)?;
            cmd::run("dpkg-deb", &["--contents", &deb.to_string_lossy()])?;
            println!("==> {}", deb.display());
            Ok(())
        }
        Task::Fuzz { frames, seed } => {
            if !setup::is_root() {
                anyhow::bail!("the fuzzer loads XDP programs: run `sudo cargo xtask fuzz`");
            }
            setup::lab(labs)?;
            cmd::step("building the fuzzer (release)");
            cmd::cargo(&[
                "build",
                "--release",
                "-p",
                "wklb-tests",
                "--bin",
                "wklb-fuzz",
            ])?;
            cmd::step(&format!("fuzzing the data path ({frames} frames)"));
            let bin = cmd::target_dir().join("release/wklb-fuzz");
            let frames = frames.to_string();
            let mut args = vec!["--frames", frames.as_str()];
            let seed = seed.map(|s| s.to_string());
            if let Some(s) = &seed {
                args.extend(["--seed", s.as_str()]);
            }
            cmd::run(&bin.to_string_lossy(), &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_and_packaging_install_no_lab_package() {
        for task in [
            Task::Build,
            Task::Package {
                debug: false,
                out: None,
            },
        ] {
            assert!(labs(&task).is_empty());
            assert!(setup::packages_for(labs(&task)).is_empty());
        }
        let test = setup::packages_for(labs(&Task::Test { args: vec![] }));
        assert!(test.contains(&"iperf3") && test.contains(&"nginx"));
    }
}
