//! Idempotent machine setup: every check is cheap, and only what is missing gets installed.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run, step};

/// Debian packages the tests, demo and benchmarks use (nginx serves backends' /health).
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "nginx",
    "nftables",
    "bird2",
];

/// Extra Debian packages for `cargo xtask bench`: the balancers wklb is compared with, the load
/// generators, and a font for the chart.
pub const BENCH_PACKAGES: &[&str] = &[
    "libnginx-mod-stream",
    "haproxy",
    "wrk",
    "iperf3",
    "fonts-dejavu-core",
];

/// The bpf-linker release that matches our aya versions (see docs/toolchain notes in README).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

pub fn ensure() -> Result<()> {
    packages(PACKAGES)?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

pub fn packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing: run `sudo cargo xtask setup` (or `sudo apt-get install {}`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("could not start apt-get")?
        .success()
        .then_some(())
        .context("apt-get install failed")
}

fn nightly_rust_src() -> Result<()> {
    let Some(sysroot) = output("rustc", &["+nightly", "--print", "sysroot"]) else {
        step("installing the nightly toolchain (the XDP program needs it)");
        return run(
            "rustup",
            &[
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        );
    };
    let src = PathBuf::from(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain");
    run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

/// bpf-linker must link against the very LLVM of the nightly rustc, so it is built against the
/// nightly's own shared libLLVM through a small prefix of symlinks kept under ~/.cache.
fn bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("nightly rustc not found after installing it")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // "libLLVM.so.22.1-rust-..." -> 22
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("cannot read the LLVM version")?
        .to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(format!(".cache/wklb/llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    ));
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("could not start cargo install")?;
    if !status.success() {
        bail!("installing bpf-linker failed; see the cargo output above");
    }
    Ok(())
}
