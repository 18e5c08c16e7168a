//! Root and the bpf filesystem: preconditions for touching the kernel, each failing with one
//! sentence that says what to do.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// BPF programs can only be loaded and attached by root (CAP_BPF + CAP_NET_ADMIN).
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root to load XDP programs: run it with sudo");
    }
    Ok(())
}

/// Where pins go, and whether they outlive this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    pub path: PathBuf,
    /// False when the pins sit in a bpffs this process mounted in its own mount namespace: they
    /// (and with them the attached XDP program) vanish when the process exits.
    pub persistent: bool,
}

/// Where pins for `dir` really go, making sure that is on a bpf filesystem.
///
/// `ip netns exec` gives a process a fresh /sys, hiding the host's /sys/fs/bpf. A bpffs mounted
/// there would belong to this process's private mount namespace and vanish with it, taking the
/// pinned program and maps along: no restart could keep a connection. So when the process that
/// started us (or PID 1) sees a bpffs at /sys/fs/bpf, that directory is opened once and pins go
/// through `/proc/self/fd/N`, valid for as long as we run; only without one is a bpffs mounted
/// here, with a warning, and the result says the pins are not persistent.
pub fn resolve_pin_dir(dir: &Path) -> Result<PinDir> {
    let bpffs = Path::new("/sys/fs/bpf");
    if !dir.starts_with(bpffs) || is_bpffs(bpffs) {
        return Ok(PinDir {
            path: dir.to_path_buf(),
            persistent: true,
        });
    }
    if let Some(host) = host_bpffs() {
        let rel = dir.strip_prefix(bpffs).unwrap_or(dir);
        log::info!(
            "/sys/fs/bpf is hidden here (e.g. `ip netns exec`); pinning {} in the bpffs of the process that started this one, so the data plane survives restarts",
            dir.display()
        );
        return Ok(PinDir {
            path: host.join(rel),
            persistent: true,
        });
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status();
    if !matches!(status, Ok(s) if s.success()) || !is_bpffs(bpffs) {
        bail!(
            "no bpf filesystem at /sys/fs/bpf and mounting one failed: run `mount -t bpf bpf /sys/fs/bpf`"
        );
    }
    log::warn!(
        "mounted a bpffs at /sys/fs/bpf in this process's own mount namespace: the pins, and with them XDP on the interfaces, end when this daemon exits, so a restart breaks every connection; mount bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`) and start the daemon from there"
    );
    Ok(PinDir {
        path: dir.to_path_buf(),
        persistent: false,
    })
}

/// The launching process's (else PID 1's) /sys/fs/bpf, opened and kept for our lifetime, as a
/// `/proc/self/fd/N` path.
fn host_bpffs() -> Option<PathBuf> {
    use std::os::fd::AsRawFd as _;
    static HOST: std::sync::OnceLock<Option<(std::fs::File, PathBuf)>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        for cand in [
            format!("/proc/{ppid}/root/sys/fs/bpf"),
            "/proc/1/root/sys/fs/bpf".to_string(),
        ] {
            if !is_bpffs(Path::new(&cand)) {
                continue;
            }
            if let Ok(f) = std::fs::File::open(&cand) {
                let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                return Some((f, p));
            }
        }
        None
    })
    .as_ref()
    .map(|(_, p)| p.clone())
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
