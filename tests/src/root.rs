//! Privileged tests run as root. Under CI (CI set) a missing privilege is a failure, never a
//! silent skip; locally the test prints a visible SKIPPED line.

pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns false (after printing why) when the test should be skipped.
pub fn require_root(test: &str) -> bool {
    if have_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: privileged test needs root, and CI must run it (run as root)");
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo cargo xtask test`)");
    false
}
