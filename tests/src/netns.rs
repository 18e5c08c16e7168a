//! Private network namespaces for tests. The namespace belongs to one thread (unshare), so it
//! and every veth inside it vanish when the thread ends, whether the test passed or panicked:
//! nothing can leak into the host's namespace.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Runs `f` on a new thread inside a fresh, anonymous network namespace.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a command (inherits the calling thread's namespace) and fails with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with the arguments split on whitespace.
pub fn ip(args: &str) -> Result<String> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name}");
    }
    Ok(idx)
}

pub fn mac_of(name: &str) -> Result<[u8; 6]> {
    // Not /sys/class/net: sysfs shows the namespace it was mounted in, not this thread's.
    let out = ip(&format!("-o link show dev {name}"))?;
    let s = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address for {name}"))?;
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// Enables IPv4 forwarding in the current namespace (per-namespace sysctl).
pub fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")
}

/// Runs `f` on a thread that has joined the named namespace (/run/netns/NAME); sockets it
/// creates live there.
pub fn in_named_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening netns {ns}"))?;
    let h = std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns only affects this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))
}

/// HTTP GET of `path` from `addr` inside namespace `ns`; returns the body.
pub fn http_get_in(ns: &str, addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let path = path.to_string();
    in_named_netns(ns, move || -> Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}
