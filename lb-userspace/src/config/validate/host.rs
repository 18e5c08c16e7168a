//! Checks against this host, for `Checks::Host` only (the daemon, `check-config` without
//! `--offline`): interfaces exist, SNAT addresses are assigned here, the SNAT ports and the
//! host's ephemeral ports, forwarding sysctls.

use std::net::IpAddr;

use super::Collector;
use crate::{
    config::{Config, schema::RawConfig},
    sys::netdev,
};

pub(super) fn checks(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    interfaces(c, raw);
    snat_addresses(c, raw, cfg);
    ephemeral_overlap(
        c,
        raw,
        &cfg.snat.addresses,
        cfg.snat.port_min,
        cfg.snat.port_max,
    );
    forwarding(c, raw, cfg);
}

fn interfaces(c: &mut Collector, raw: &RawConfig) {
    let d = &raw.daemon;
    for (i, name) in d.interfaces.get_ref().iter().enumerate() {
        if netdev::ifindex(name).is_none() {
            c.err(
                format!("daemon.interfaces[{i}]"),
                &d.interfaces,
                format!("interface {name:?} does not exist on this host"),
            );
        }
    }
}

/// Replies from the backends come back to the SNAT addresses: they must be this host's.
fn snat_addresses(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let local = netdev::ip_addresses();
    for (i, (ip, a)) in cfg
        .snat
        .addresses
        .iter()
        .zip(raw.snat.addresses.get_ref())
        .enumerate()
    {
        if !local.iter().any(|(l, _)| l == ip) {
            c.err(
                format!("snat.addresses[{i}]"),
                a,
                format!(
                    "{ip} is not assigned to any interface of this host: replies from the backends would never reach it (e.g. `ip addr add {ip}/{} dev IFACE`)",
                    if ip.is_ipv4() { 32 } else { 128 }
                ),
            );
        }
    }
}

/// Warns when the SNAT ports overlap the host's ephemeral ports on an address the host picks
/// as a source itself: its own connections could then collide with translated flows.
fn ephemeral_overlap(c: &mut Collector, raw: &RawConfig, addrs: &[IpAddr], min: u16, max: u16) {
    let Some((lo, hi)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
    else {
        return;
    };
    if max < lo || min > hi {
        return;
    }
    let sources = netdev::route_sources();
    for (i, a) in addrs.iter().enumerate() {
        if sources.contains(a) {
            c.warn(
                format!("snat.addresses[{i}]"),
                &raw.snat.port_min,
                format!(
                    "{a} is a source address of this host's routes and ports {min}-{max} overlap its ephemeral ports {lo}-{hi}: the host's own connections from {a} may collide with translated flows; use a dedicated SNAT address or a port range outside {lo}-{hi}"
                ),
            );
        }
    }
}

/// The data path asks the kernel's FIB for the next hop toward backends, and the kernel answers
/// only when forwarding is on for that family on the interface the packet came in on: warn for
/// each interface where a family the backends use has it off.
fn forwarding(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let families = cfg
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .fold((false, false), |(v4, v6), b| {
            (v4 || b.address.is_ipv4(), v6 || b.address.is_ipv6())
        });
    for (i, name) in cfg.daemon.interfaces.iter().enumerate() {
        for (used, family, path) in [
            (
                families.0,
                "IPv4",
                format!("/proc/sys/net/ipv4/conf/{name}/forwarding"),
            ),
            (
                families.1,
                "IPv6",
                format!("/proc/sys/net/ipv6/conf/{name}/forwarding"),
            ),
        ] {
            let off = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0");
            if used && off {
                let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
                c.warn(
                    format!("daemon.interfaces[{i}]"),
                    &raw.daemon.interfaces,
                    format!(
                        "{family} forwarding is off on {name} ({key} = 0): the kernel gives the data path no route to {family} backends for packets arriving there (dropped as drop_fib_failed); `sysctl -w {key}=1`"
                    ),
                );
            }
        }
    }
}
