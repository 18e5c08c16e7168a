//! One daemon per pin path and per control socket: exclusive `flock`s on lock files, held while
//! the daemon runs. The CLI checks the pin lock before unloading behind a daemon's back.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// An exclusive lock on a file, held while the daemon runs and removed when it ends.
pub struct LockFile {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

fn try_lock(f: &std::fs::File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

pub fn lock(path: &Path, what: &str) -> Result<LockFile> {
    let f = open(path)?;
    if !try_lock(&f) {
        bail!(
            "another wklb daemon already uses {what} (lock {} is held)",
            path.display()
        );
    }
    Ok(LockFile {
        _file: f,
        path: path.to_path_buf(),
    })
}

/// Whether a running daemon holds the lock at `path`.
pub fn is_held(path: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    let free = try_lock(&f);
    if free {
        // SAFETY: unlocking what we just locked.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    !free
}

/// Lock file of a pin directory: one daemon per pin path.
pub fn pin_lock_path(pin: &Path) -> PathBuf {
    let name: String = pin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/wklb/locks").join(format!("pin{name}.lock"))
}
