//! Waiting out an RCU grace period from userspace.
//!
//! XDP programs run inside RCU read-side sections (softirq / bh-disabled). Once a grace period
//! has elapsed after a map write, no program run that could have seen the old value is still
//! going. `membarrier(MEMBARRIER_CMD_GLOBAL)` is the documented way to wait for one: the kernel
//! implements it with `synchronize_rcu()`.

use std::{
    thread::JoinHandle,
    time::{Duration, Instant},
};

const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Fallback when membarrier is unavailable (nohz_full kernels refuse MEMBARRIER_CMD_GLOBAL):
/// far longer than any program run, which completes in microseconds with preemption off.
const FALLBACK: Duration = Duration::from_millis(50);

/// Blocks until an RCU grace period has elapsed (a few to ~20 ms).
pub fn synchronize() {
    let started = Instant::now();
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(FALLBACK.saturating_sub(started.elapsed()));
    }
}

/// A grace period being waited out in the background, so the write that starts it returns at
/// once and only a later write that depends on it waits (usually not at all).
pub struct Grace(Option<JoinHandle<()>>);

impl Grace {
    /// Starts waiting for a grace period that begins now.
    pub fn start() -> Self {
        match std::thread::Builder::new()
            .name("wklb-rcu-grace".into())
            .spawn(synchronize)
        {
            Ok(h) => Grace(Some(h)),
            // No thread: wait here instead, the guarantee is the same.
            Err(_) => {
                synchronize();
                Grace(None)
            }
        }
    }

    /// Returns once the grace period has elapsed.
    pub fn wait(mut self) {
        if let Some(h) = self.0.take() {
            // The thread only makes a syscall and sleeps; if it somehow panicked, wait here.
            if h.join().is_err() {
                synchronize();
            }
        }
    }
}
