//! Rebuilding the controller's state from maps pinned by an earlier daemon: VIPs by (address,
//! port, protocol), backends by (VIP id, address, port), SNAT addresses by index. A backend in
//! its VIP's live table counts as up (it was, a moment ago); the config then names them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use lb_common::{Backend, NO_BACKEND, VipMeta};

use super::{
    plan::TableMode,
    state::{BackendState, SnatState, State, VipState},
};
use crate::{
    config::{Config, Protocol, Vip},
    dataplane::Image,
    health::{Health, Status},
    sys::clock::monotonic_ns,
};

fn ip(word: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
}

/// An IPv6 address from its four native words.
pub fn ip6(words: &[u32; 4]) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from(lb_common::v6_of_words(*words)))
}

/// A map address of `family` (IPv4 in the first word).
fn ip_of(a: &lb_common::Addr, family: u8) -> IpAddr {
    if family == lb_common::FAMILY_IPV6 {
        ip6(&a.words)
    } else {
        ip(a.v4_word_of())
    }
}

pub fn state(img: &Image, cfg: &Config) -> State {
    let mut s = State::new(cfg.clone());
    let now = monotonic_ns();
    let v4 = img
        .vips
        .iter()
        .map(|(k, m)| (ip(k.addr), k.port, k.proto, m));
    let v6 = img
        .vips6
        .iter()
        .map(|(k, m)| (ip6(&k.addr), k.port, k.proto, m));
    for (address, port, proto, meta) in v4.chain(v6) {
        if let Some(v) = vip(img, address, port, proto, meta) {
            s.vips.push(v);
        }
    }
    // PROXY bits are written only once an entry program that sends the header is attached,
    // and a build without them clears them: pinned ones say the entry attached now sends it,
    // so new flows keep their header while this daemon starts and attaches its own.
    s.entry_attached = img
        .vips
        .values()
        .chain(img.vips6.values())
        .any(|m| m.flags & (VipMeta::PROXY_V1 | VipMeta::PROXY_V2) != 0);
    // Inactive slots that flows may still reference stay reserved until expiry frees them.
    for (id, b) in &img.backends {
        if b.flags & Backend::ACTIVE == 0 {
            s.retired_backends.insert(*id, (*b, now));
        }
    }
    let picked: BTreeSet<u32> = img
        .snat_pick
        .values()
        .chain(img.snat_pick6.values())
        .copied()
        .collect();
    for (i, a) in &img.snat {
        let address = ip_of(&a.addr, a.family);
        let active = picked.contains(i);
        s.snat.insert(
            *i,
            (
                SnatState {
                    address,
                    active,
                    held: None,
                },
                now,
            ),
        );
    }
    s
}

/// A pinned VIP with its active backends: those in its live table are up (unless fail-open
/// put everyone there), the others down.
fn vip(img: &Image, address: IpAddr, port: u16, proto: u8, meta: &VipMeta) -> Option<VipState> {
    let protocol = Protocol::from_number(proto)?;
    let table = img.tables.get(&meta.vip_id).cloned();
    let in_table: BTreeSet<u32> = table
        .iter()
        .flat_map(|t| t.iter().copied())
        .filter(|id| *id != NO_BACKEND)
        .collect();
    let fail_open = meta.flags & VipMeta::FAIL_OPEN != 0;
    let mut v = VipState {
        // Until the config names it and says which health check, groups, pins, lists and
        // rates it has (applied right after adoption).
        spec: Vip {
            // Until the config says which mode; an engaged cookie mode stays engaged across a
            // restart (the pressure watch releases it when the flood is over).
            syn_cookies: if meta.flags & VipMeta::COOKIES_ALLOWED != 0 {
                crate::config::CookieMode::Auto
            } else {
                crate::config::CookieMode::Off
            },
            proxy_protocol: if meta.flags & VipMeta::PROXY_V2 != 0 {
                crate::config::ProxyProtocol::V2
            } else if meta.flags & VipMeta::PROXY_V1 != 0 {
                crate::config::ProxyProtocol::V1
            } else {
                crate::config::ProxyProtocol::Off
            },
            ..Vip::new(
                format!("(adopted {})", meta.vip_id),
                address,
                port,
                protocol,
            )
        },
        id: meta.vip_id,
        backends: Vec::new(),
        adopted: true,
        pins: Vec::new(),
        table: table.unwrap_or_else(VipState::empty_table),
        members: Vec::new(),
        mode: if fail_open {
            TableMode::FailOpen
        } else {
            TableMode::Normal
        },
        cookies_engaged: meta.flags & VipMeta::COOKIES_ON != 0,
        cookies_changed: None,
    };
    for (id, b) in img.backends.iter().filter(|(_, b)| b.vip_id == meta.vip_id) {
        if b.flags & Backend::ACTIVE == 0 {
            continue;
        }
        let up = in_table.contains(id) && !fail_open;
        v.backends.push(BackendState {
            address: ip_of(&b.addr, b.family),
            port: b.port,
            weight: 0,
            configured_weight: 0,
            id: *id,
            health: Health::new(2, 2, if up { Status::Up } else { Status::Down }),
            last_rtt: None,
            last_error: None,
        });
    }
    Some(v)
}

pub fn summary(s: &State) -> Vec<String> {
    if s.vips.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "adopted {} VIP(s), {} backend(s) and {} SNAT address(es) from the pinned maps",
        s.vips.len(),
        s.vips.iter().map(|v| v.backends.len()).sum::<usize>(),
        s.snat.len()
    )]
}
