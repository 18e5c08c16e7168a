//! Rules across sections: limits of the data path's arrays, SNAT addresses that are VIPs, SNAT
//! capacity and families.

use super::Collector;
use crate::config::{Config, ConfigError, schema::RawConfig};

/// Rules across sections: limits of the data path's arrays, SNAT addresses that are VIPs,
/// SNAT capacity.
pub(super) fn checks(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let tables: usize = cfg.vips.iter().map(|v| 1 + v.pins.len()).sum();
    if tables > lb_common::MAX_VIPS as usize {
        c.errors.push(ConfigError {
            path: "vip[].pin".into(),
            line: None,
            message: format!(
                "{tables} Maglev tables (one per VIP and one per pin); the data plane holds at most {}",
                lb_common::MAX_VIPS
            ),
        });
    }
    let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
    if backends > lb_common::MAX_BACKENDS as usize {
        c.errors.push(ConfigError {
            path: "vip[].backend".into(),
            line: None,
            message: format!(
                "{backends} backends in all; the data plane holds at most {} (one per VIP and backend)",
                lb_common::MAX_BACKENDS
            ),
        });
    }
    for (i, a) in cfg.snat.addresses.iter().enumerate() {
        if let Some(v) = cfg.vips.iter().find(|v| v.address == *a) {
            c.err(
                format!("snat.addresses[{i}]"),
                &raw.snat.addresses.get_ref()[i],
                format!(
                    "{a} is also the address of VIP {:?}: replies from backends would be taken for client traffic; use another address",
                    v.name
                ),
            );
        }
    }
    snat_families(c, raw, cfg);
    guaranteed_flows(c, raw, cfg);
    let capacity = cfg.snat.capacity();
    if !cfg.snat.addresses.is_empty() && capacity < cfg.conntrack.max_flows as u64 {
        c.warn(
            "snat.addresses",
            &raw.snat.addresses,
            format!(
                "{} SNAT address(es) x ports {}-{} carry at most {capacity} concurrent flows, fewer than conntrack.max_flows {}: SNAT ports are unique per SNAT address, add addresses to use the whole table",
                cfg.snat.addresses.len(),
                cfg.snat.port_min,
                cfg.snat.port_max,
                cfg.conntrack.max_flows
            ),
        );
    }
}

/// A backend's flows take a SNAT address of the backend's family: refuse a backend whose family
/// has no SNAT address (naming the backend's key and line).
fn snat_families(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    for (vi, v) in cfg.vips.iter().enumerate() {
        for (bi, b) in v.backends.iter().enumerate() {
            let v6 = b.address.is_ipv6();
            let Some(at) = raw.vip.get(vi).and_then(|r| r.backend.get(bi)) else {
                continue;
            };
            if cfg.snat.addresses.iter().any(|a| a.is_ipv6() == v6) {
                continue;
            }
            let family = if v6 { "IPv6" } else { "IPv4" };
            c.err(
                format!("vip[{vi}].backend[{bi}].address"),
                &at.address,
                format!(
                    "backend {} of VIP {:?} is {family}, and snat.addresses holds no {family} address: its connections would have no source address; add one to snat.addresses",
                    b.address, v.name
                ),
            );
        }
    }
}

/// The flows guaranteed to VIPs (`vip.max_flows`) must fit the connection table together.
fn guaranteed_flows(c: &mut Collector, raw: &RawConfig, cfg: &Config) {
    let mut sum = 0u64;
    for (i, v) in cfg.vips.iter().enumerate() {
        sum += v.max_flows.unwrap_or(0) as u64;
        if sum > cfg.conntrack.max_flows as u64 {
            c.err(
                format!("vip[{i}].max_flows"),
                &raw.vip[i].max_flows,
                format!(
                    "the VIPs' max_flows add up to {sum} by here, more than conntrack.max_flows {}: each VIP's max_flows is a share of that table",
                    cfg.conntrack.max_flows
                ),
            );
            return;
        }
    }
}
