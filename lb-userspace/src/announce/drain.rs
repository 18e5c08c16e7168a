//! The drain mark: a file whose existence means "this edge is drained". It outlives the daemon
//! (a hitless restart or a reboot does not announce a drained edge again); `wklb edge undrain`
//! removes it.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

/// When the edge was drained (None: it is not).
pub fn since(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).ok()?.modified().ok()
}

/// Marks the edge drained (keeps the first drain time if it already is).
pub fn set(file: &Path) -> Result<()> {
    if since(file).is_some() {
        return Ok(());
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for announce.drain_file", dir.display()))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::write(
        file,
        format!(
            "drained by `wklb edge drain` at unix time {now}; `wklb edge undrain` announces again\n"
        ),
    )
    .with_context(|| format!("writing announce.drain_file {}", file.display()))
}

/// Clears the mark; true when the edge was drained.
pub fn clear(file: &Path) -> Result<bool> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => {
            Err(e).with_context(|| format!("removing announce.drain_file {}", file.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_since_clear() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state/drained");
        assert!(since(&f).is_none());
        set(&f).unwrap();
        let t = since(&f).expect("drained");
        set(&f).unwrap();
        assert_eq!(since(&f), Some(t), "a second drain keeps the first time");
        assert!(clear(&f).unwrap());
        assert!(since(&f).is_none());
        assert!(!clear(&f).unwrap());
    }
}
