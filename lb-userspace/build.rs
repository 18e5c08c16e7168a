//! Builds the XDP object (lb-ebpf) into OUT_DIR/wklb-xdp: nightly cargo for the BPF target with
//! `-Z build-std=core`, bpf-linker, BTF (map-in-map needs it) and BPF ISA v3.
//!
//! aya-build does the same but fixes the rustflags; v3 is what the data path needs: atomic
//! compare-and-exchange (SNAT slot claims) and 32-bit sub-registers (fewer instructions).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const PACKAGE: &str = "lb-ebpf";
const BINARY: &str = "wklb-xdp";

fn main() {
    commit();
    if let Err(e) = build() {
        eprintln!("{e}");
        eprintln!(
            "building the XDP program failed; run `cargo xtask setup` to install nightly rust-src and bpf-linker"
        );
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let ebpf_dir = manifest.join("../lb-ebpf");
    for dir in [
        "../lb-ebpf/src",
        "../lb-ebpf/Cargo.toml",
        "../lb-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(dir).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let target_dir = out.join("ebpf-target");
    // The separator cargo uses between encoded flags.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", PACKAGE])
        .args([
            "--bins",
            "--release",
            "--target",
            target,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let output = cmd
        .output()
        .map_err(|e| format!("could not start `rustup run nightly cargo`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{}\n`cargo +nightly build -p {PACKAGE}` for {target} failed ({})",
            String::from_utf8_lossy(&output.stderr),
            output.status
        ));
    }
    let built = target_dir.join(target).join("release").join(BINARY);
    copy(&built, &out.join(BINARY))
}

/// `WKLB_COMMIT` for the binary's version line: the environment's (a build from a tarball),
/// else git's short hash of HEAD, else "unknown". Rebuilt when HEAD moves.
fn commit() {
    println!("cargo:rerun-if-env-changed=WKLB_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(env::var("CARGO_MANIFEST_DIR").ok()?)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = env::var("WKLB_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WKLB_COMMIT={commit}");
    // HEAD, the branch it names, and packed refs: what moves when a commit is made.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for w in watch {
        // A path that does not exist would make cargo rerun this script on every build.
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &w])
            && Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}
