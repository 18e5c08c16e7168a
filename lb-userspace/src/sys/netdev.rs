//! Network interfaces in the current network namespace: index, MTU, driver, local addresses,
//! and whatever XDP program is attached.

use std::{ffi::CString, net::IpAddr};

/// The interface's index, or None when it does not exist.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn ifreq(name: &str) -> Option<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Some(req)
}

fn with_socket<T>(f: impl FnOnce(i32) -> Option<T>) -> Option<T> {
    // SAFETY: plain socket call; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let r = f(fd);
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    r
}

/// The interface's MTU.
pub fn mtu(name: &str) -> Option<u32> {
    let mut req = ifreq(name)?;
    with_socket(|fd| {
        // SAFETY: SIOCGIFMTU fills ifr_mtu of the request we own.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) };
        if rc != 0 {
            return None;
        }
        // SAFETY: the union member SIOCGIFMTU filled.
        Some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
    })
}

/// The interface's driver name (e.g. "veth"), from ETHTOOL_GDRVINFO.
pub fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_data = &mut info as *mut DrvInfo as *mut libc::c_char;
    with_socket(|fd| {
        // SAFETY: SIOCETHTOOL with a drvinfo buffer large enough for the kernel's struct.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) };
        (rc == 0).then(|| {
            let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
            String::from_utf8_lossy(&info.driver[..end]).into_owned()
        })
    })
}

/// Every IPv4 and IPv6 address assigned to an interface here, with the interface's name.
pub fn ip_addresses() -> Vec<(IpAddr, String)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        // SAFETY: a non-null sockaddr from getifaddrs, read by its family.
        let addr = (!ifa.ifa_addr.is_null()).then(|| unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        });
        if let Some(Some(a)) = addr {
            // SAFETY: ifa_name is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            out.push((a, name.to_string_lossy().into_owned()));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: freeing what getifaddrs returned.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The XDP program attached to an interface, as (program id, name), read with `ip -j -d link`.
pub fn attached_xdp(name: &str) -> Option<(u64, String)> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", name])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    let prog = xdp.get("prog").or_else(|| xdp.get("attached")?.get(0))?;
    let id = prog.get("id")?.as_u64()?;
    let pname = prog
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    Some((id, pname))
}

/// Addresses the host's unicast routes name as preferred source (`ip route ... src X`): the
/// ones the kernel picks for its own connections. (Every local address is the source of its own
/// `local` route; those do not count.)
pub fn route_sources() -> Vec<std::net::IpAddr> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "route", "show", "table", "all", "type", "unicast"])
        .output()
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut out: Vec<std::net::IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("prefsrc")?.as_str()?.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_known() {
        assert!(ifindex("lo").is_some());
        assert!(mtu("lo").is_some_and(|m| m >= 1500));
        assert!(ifindex("wklb-no-such-if0").is_none());
        assert!(mtu("a-name-longer-than-ifnamsiz").is_none());
        assert!(ip_addresses().iter().any(|(a, _)| a.is_loopback()));
    }
}
