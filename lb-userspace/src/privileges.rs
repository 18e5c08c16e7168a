//! Preconditions for touching the kernel, each failing with one sentence that says what to do.

use std::path::Path;

use anyhow::{Result, bail};

/// BPF programs can only be loaded and attached by root (CAP_BPF + CAP_NET_ADMIN).
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root to load XDP programs: run it with sudo");
    }
    Ok(())
}

/// Pinning needs a bpf filesystem at (or above) `dir`; mounts it at /sys/fs/bpf when missing,
/// as `ip netns exec` hides the host's.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
        if !matches!(status, Ok(s) if s.success()) || !is_bpffs(bpffs) {
            bail!(
                "no bpf filesystem at /sys/fs/bpf and mounting one failed: run `mount -t bpf bpf /sys/fs/bpf`"
            );
        }
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}
