//! The external programs the harness starts, from the one list in `tests/programs.txt` (which
//! `cargo xtask setup` installs from too), and the check a lab runs before it builds anything:
//! every program of the tests on PATH and a bpffs at /sys/fs/bpf, or an error naming what is
//! missing and how to get it.

use std::{path::PathBuf, sync::OnceLock};

use anyhow::{Result, bail};

/// The list itself (program, Debian package, tasks per line).
pub const LIST: &str = include_str!("../programs.txt");

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The command, or `-` for a package without one.
    pub name: String,
    pub package: String,
    pub tasks: Vec<String>,
}

pub fn parse(list: &str) -> Vec<Program> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace().map(str::to_string);
            Program {
                name: f.next().unwrap_or_default(),
                package: f.next().unwrap_or_default(),
                tasks: f.collect(),
            }
        })
        .collect()
}

pub fn all() -> Vec<Program> {
    parse(LIST)
}

/// The listed program `name`, for the error when it is missing.
pub fn package_of(name: &str) -> Option<String> {
    all()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.package)
}

pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(program).is_file())
}

pub fn bpffs_mounted() -> bool {
    let c = c"/sys/fs/bpf";
    // SAFETY: a NUL-terminated path and a zeroed statfs the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// What the tests need that this machine lacks, one sentence each (empty when nothing).
pub fn missing_for_tests() -> Vec<String> {
    let mut out: Vec<String> = all()
        .into_iter()
        .filter(|p| p.name != "-" && p.tasks.iter().any(|t| t == "test") && !on_path(&p.name))
        .map(|p| {
            format!(
                "{} is missing (Debian package {}; `sudo cargo xtask setup` installs it)",
                p.name, p.package
            )
        })
        .collect();
    if !bpffs_mounted() {
        out.push(
            "/sys/fs/bpf is not a bpf filesystem (`sudo cargo xtask setup` mounts one, or `mount -t bpf bpf /sys/fs/bpf`)"
                .into(),
        );
    }
    out
}

/// Checked once per test process, before the first lab is built: fails naming every missing
/// prerequisite instead of failing later in the middle of a scenario.
pub fn require_lab() -> Result<()> {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    let missing = MISSING.get_or_init(missing_for_tests);
    if !missing.is_empty() {
        bail!(
            "this machine is not set up for the tests: {}",
            missing.join("; ")
        );
    }
    Ok(())
}
