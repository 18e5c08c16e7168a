//! Idempotent machine setup: every check is cheap, and only what is missing gets installed or
//! mounted.
//!
//! - `toolchain()`: what building needs (nightly rust-src, bpf-linker). `cargo xtask build`
//!   runs only this.
//! - `lab(task)`: what a task's tests, demo or benchmark run: the Debian packages of the
//!   programs listed for that task in `tests/programs.txt`, and a bpffs at /sys/fs/bpf.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output, run, step};

/// The one list of external programs (and the packages that install them): see the file.
const PROGRAMS: &str = include_str!("../../tests/programs.txt");

/// The bpf-linker release that matches our aya versions (see docs/toolchain notes in README).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What a task needs beyond the toolchain: its name in the tasks column of `tests/programs.txt`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lab {
    Test,
    Demo,
    Bench,
}

impl Lab {
    fn column(self) -> &'static str {
        match self {
            Lab::Test => "test",
            Lab::Demo => "demo",
            Lab::Bench => "bench",
        }
    }
}

/// (program or "-", package, tasks) rows of `tests/programs.txt`.
fn rows() -> impl Iterator<Item = (&'static str, &'static str, Vec<&'static str>)> {
    PROGRAMS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let program = f.next().unwrap_or("-");
            let package = f.next().unwrap_or("");
            (program, package, f.collect())
        })
}

/// The Debian packages `tasks` need, in file order, each once.
pub fn packages_for(tasks: &[Lab]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, package, used_by) in rows() {
        if tasks.iter().any(|t| used_by.contains(&t.column())) && !out.contains(&package) {
            out.push(package);
        }
    }
    out
}

pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

/// Building: the nightly toolchain with rust-src, and bpf-linker. Nothing else.
pub fn toolchain() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()
}

/// Everything `tasks` need: the toolchain, their packages, and (as root) a bpffs.
pub fn lab(tasks: &[Lab]) -> Result<()> {
    toolchain()?;
    packages(&packages_for(tasks))?;
    if is_root() {
        bpffs()?;
    }
    check_programs(tasks)
}

/// Mounts a bpf filesystem at /sys/fs/bpf when none is there, as systemd does at boot: pinned
/// maps and programs (hitless restarts, the tests' temporary pins) live there.
fn bpffs() -> Result<()> {
    let dir = Path::new("/sys/fs/bpf");
    if fs_magic(dir) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    step("mounting a bpf filesystem at /sys/fs/bpf (none was mounted)");
    std::fs::create_dir_all(dir).context("creating /sys/fs/bpf")?;
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    if fs_magic(dir) != Some(BPF_FS_MAGIC) {
        bail!("/sys/fs/bpf is still not a bpf filesystem after mounting one");
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed statfs the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Every program the tasks start is on PATH; fails naming the first missing one and its package.
fn check_programs(tasks: &[Lab]) -> Result<()> {
    for (program, package, used_by) in rows() {
        if program == "-" || !tasks.iter().any(|t| used_by.contains(&t.column())) {
            continue;
        }
        if !on_path(program) {
            bail!(
                "{program} is missing (Debian package {package}): run `sudo cargo xtask setup` or `sudo apt-get install {package}`"
            );
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian keeps some of these (nft, bird) in sbin, which a user's PATH may lack.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(program).is_file())
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
    // Packages with a service (nginx, haproxy, prometheus) must not start one: the tests start
    // their own instances in namespaces, and a host-wide one would hold their ports.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let status = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    status
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_names_a_package_and_known_tasks() {
        for (program, package, used_by) in rows() {
            assert!(!package.is_empty(), "{program}: no package");
            assert!(!used_by.is_empty(), "{program}: no task");
            for t in used_by {
                assert!(
                    ["test", "demo", "bench"].contains(&t),
                    "{program}: unknown task {t}"
                );
            }
        }
    }

    #[test]
    fn tasks_get_their_own_packages() {
        let test = packages_for(&[Lab::Test]);
        assert!(test.contains(&"iperf3") && test.contains(&"iproute2"));
        assert!(!test.contains(&"wrk"), "wrk is the benchmark's only");
        let bench = packages_for(&[Lab::Bench]);
        assert!(bench.contains(&"wrk") && bench.contains(&"fonts-dejavu-core"));
        assert!(packages_for(&[]).is_empty());
    }
}
