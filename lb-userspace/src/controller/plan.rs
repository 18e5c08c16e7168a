//! Pure planning of a VIP's tables: which backends its table (and each pin's) holds, from
//! health, weights, groups and fail-open, and the load of each priority level. No kernel, no
//! I/O: unit-tested here. What the maps hold for a whole state is `image`.

use std::collections::BTreeMap;

use lb_common::maglev::Member;
use serde::Serialize;

use super::{priority, state::VipState};
use crate::health::Status;

/// How a VIP's table was chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// The healthy backends.
    #[default]
    Normal,
    /// No backend has been probed enough yet: all of them, until the probes decide.
    Starting,
    /// Every backend that may take traffic is down: all of them anyway (WuKongIM's health is
    /// cluster-wide, so a leader election fails every node at once).
    FailOpen,
    /// No backend may take new flows (all drained).
    Empty,
}

/// The members of a VIP's table and why. Healthy backends of the preferred priority level take
/// every new flow until that level's health falls below 100 (`priority`); then each level's
/// share of the table is its load, split among its healthy backends by weight.
pub fn members(v: &VipState) -> (Vec<Member>, TableMode) {
    members_of(v, |_| true)
}

/// The members of a pin's table: its groups' backends by the same rules, restricted to them.
/// When none of them is healthy the table is empty (its clients are refused, or spill), unless
/// the whole VIP is failing open or starting: a cluster-wide health failure fails open inside
/// the boundary too.
pub fn pin_members(v: &VipState, pin: &crate::config::Pin) -> Vec<Member> {
    let (m, mode) = members_of(v, |b| {
        pin.groups
            .iter()
            .any(|g| g == v.spec.groups.group_of(b.address, b.port))
    });
    match mode {
        TableMode::Normal => m,
        TableMode::FailOpen | TableMode::Starting
            if matches!(v.mode, TableMode::FailOpen | TableMode::Starting) =>
        {
            m
        }
        _ => Vec::new(),
    }
}

fn members_of(
    v: &VipState,
    keep: impl Fn(&super::state::BackendState) -> bool,
) -> (Vec<Member>, TableMode) {
    let eligible: Vec<_> = v
        .backends
        .iter()
        .filter(|b| b.weight > 0 && keep(b))
        .collect();
    let member = |b: &super::state::BackendState, weight: u32| Member {
        id: b.id,
        key: b.key(),
        weight,
    };
    if eligible.is_empty() {
        return (Vec::new(), TableMode::Empty);
    }
    if !eligible.iter().any(|b| b.health.status == Status::Up) {
        let all = eligible.iter().map(|b| member(b, b.weight)).collect();
        return if eligible.iter().any(|b| b.health.status == Status::Down) {
            (all, TableMode::FailOpen)
        } else {
            (all, TableMode::Starting)
        };
    }
    let levels = level_loads_of(v, &eligible);
    let loaded: Vec<&Level> = levels.iter().filter(|l| l.load_pct > 0).collect();
    let up = |b: &&super::state::BackendState, l: &Level| {
        b.health.status == Status::Up && v.spec.groups.priority_of(b.address, b.port) == l.priority
    };
    let mut out = Vec::new();
    for l in &loaded {
        let level_up: Vec<_> = eligible.iter().filter(|b| up(b, l)).collect();
        let weight_up: u64 = level_up.iter().map(|b| b.weight as u64).sum();
        for b in level_up {
            // One loaded level keeps the configured weights (the table of a VIP without
            // groups is what it always was); several share the table by their loads.
            let w = if loaded.len() == 1 {
                b.weight
            } else {
                (b.weight as u64 * l.load_pct as u64 * 10_000 / weight_up.max(1)).max(1) as u32
            };
            out.push(member(b, w));
        }
    }
    (out, TableMode::Normal)
}

/// A priority level of a VIP: its eligible and healthy backends, health and load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub priority: u32,
    /// Backends with weight > 0.
    pub backends: u32,
    pub healthy: u32,
    pub health_pct: u32,
    /// Percent of new flows it gets (0 for every level in fail-open: all backends share then).
    pub load_pct: u32,
}

/// The VIP's priority levels in order, with their loads.
pub fn level_loads(v: &VipState) -> Vec<Level> {
    let eligible: Vec<_> = v.backends.iter().filter(|b| b.weight > 0).collect();
    level_loads_of(v, &eligible)
}

fn level_loads_of(v: &VipState, eligible: &[&super::state::BackendState]) -> Vec<Level> {
    let mut levels: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for b in eligible {
        let e = levels
            .entry(v.spec.groups.priority_of(b.address, b.port))
            .or_default();
        e.0 += 1;
        e.1 += (b.health.status == Status::Up) as u32;
    }
    let op = v.spec.groups.overprovisioning_pct;
    let health: Vec<u32> = levels
        .values()
        .map(|(n, up)| priority::health(*up, *n, op))
        .collect();
    let loads = priority::loads(&health).unwrap_or_else(|| vec![0; health.len()]);
    levels
        .into_iter()
        .zip(health.iter().zip(loads))
        .map(|((priority, (backends, healthy)), (h, load))| Level {
            priority,
            backends,
            healthy,
            health_pct: *h,
            load_pct: load,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Protocol, controller::state::BackendState, health::Health};

    fn vip(backends: &[(u32, Status)]) -> VipState {
        VipState {
            spec: crate::config::Vip::new("v", "10.0.0.1".parse().unwrap(), 5100, Protocol::Tcp),
            id: 0,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (w, s))| BackendState {
                    address: format!("10.0.1.{}", i + 1).parse().unwrap(),
                    port: 5100,
                    weight: *w,
                    configured_weight: *w,
                    id: i as u32,
                    health: Health::new(2, 2, *s),
                    last_rtt: None,
                    last_error: None,
                })
                .collect(),
            adopted: false,
            table: VipState::empty_table(),
            members: Vec::new(),
            mode: TableMode::Normal,
            cookies_engaged: false,
            cookies_changed: None,
            pins: Vec::new(),
        }
    }

    fn ids(v: &VipState) -> (Vec<u32>, TableMode) {
        let (m, mode) = members(v);
        (m.iter().map(|m| m.id).collect(), mode)
    }

    #[test]
    fn healthy_backends_with_weight_make_the_table() {
        use Status::*;
        assert_eq!(
            ids(&vip(&[(100, Up), (100, Down), (0, Up)])),
            (vec![0], TableMode::Normal)
        );
        // A pending backend waits while others are up.
        assert_eq!(
            ids(&vip(&[(100, Up), (100, Pending)])),
            (vec![0], TableMode::Normal)
        );
    }

    #[test]
    fn fail_open_when_every_eligible_backend_is_down() {
        use Status::*;
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Down), (0, Up)])),
            (vec![0, 1], TableMode::FailOpen)
        );
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Pending)])),
            (vec![0, 1], TableMode::FailOpen)
        );
        // Nothing probed yet: all, without the alarm.
        assert_eq!(
            ids(&vip(&[(100, Pending), (100, Pending)])),
            (vec![0, 1], TableMode::Starting)
        );
        // All drained is not fail-open: nothing may take new flows.
        assert_eq!(ids(&vip(&[(0, Down), (0, Up)])), (vec![], TableMode::Empty));
        // Recovery: one comes back.
        assert_eq!(
            ids(&vip(&[(100, Down), (100, Up)])),
            (vec![1], TableMode::Normal)
        );
    }

    fn grouped(backends: &[(u32, Status)], direct: usize) -> VipState {
        let mut v = vip(backends);
        v.spec.groups.groups = vec![
            crate::config::Group {
                name: "direct".into(),
                priority: 0,
            },
            crate::config::Group {
                name: "relay".into(),
                priority: 1,
            },
        ];
        for (i, b) in v.backends.iter().enumerate() {
            let g = if i < direct { "direct" } else { "relay" };
            v.spec
                .groups
                .of_backend
                .insert((b.address, b.port), g.into());
        }
        v
    }

    /// Share of the Maglev table per backend id, in percent.
    fn table_shares(v: &VipState) -> BTreeMap<u32, f64> {
        let (m, _) = members(v);
        let t = lb_common::maglev::build_table(&m, lb_common::MAGLEV_TABLE_SIZE);
        let mut out = BTreeMap::new();
        for id in t {
            *out.entry(id).or_insert(0.0) += 100.0 / lb_common::MAGLEV_TABLE_SIZE as f64;
        }
        out
    }

    #[test]
    fn preferred_group_keeps_new_flows_until_its_health_drops_then_spills_in_proportion() {
        use Status::*;
        let all_up = grouped(&[(100, Up); 5], 3);
        assert_eq!(ids(&all_up), (vec![0, 1, 2], TableMode::Normal));
        // One of three direct backends down: health 93, so 7% of new flows go to the relays.
        let v = grouped(
            &[(100, Down), (100, Up), (100, Up), (100, Up), (100, Up)],
            3,
        );
        let s = table_shares(&v);
        let direct: f64 = s[&1] + s[&2];
        let relay: f64 = s[&3] + s[&4];
        assert!((direct - 93.0).abs() < 0.5, "{s:?}");
        assert!((relay - 7.0).abs() < 0.5, "{s:?}");
        assert!((s[&1] - s[&2]).abs() < 0.5, "direct split evenly: {s:?}");
        let l = level_loads(&v);
        assert_eq!((l[0].health_pct, l[0].load_pct, l[1].load_pct), (93, 93, 7));
        // Every direct backend down: the relays take everything, with their own weights.
        let v = grouped(
            &[(100, Down), (100, Down), (100, Down), (100, Up), (50, Up)],
            3,
        );
        let (m, mode) = members(&v);
        assert_eq!(mode, TableMode::Normal);
        assert_eq!(
            m.iter().map(|m| (m.id, m.weight)).collect::<Vec<_>>(),
            [(3, 100), (4, 50)]
        );
        // Everything down: fail-open over every group.
        let v = grouped(&[(100, Down); 5], 3);
        assert_eq!(ids(&v), (vec![0, 1, 2, 3, 4], TableMode::FailOpen));
    }

    #[test]
    fn the_table_depends_on_health_only() {
        use Status::*;
        let a = grouped(
            &[(100, Down), (100, Up), (100, Up), (100, Up), (100, Up)],
            3,
        );
        let mut b = a.clone();
        b.backends.reverse();
        let build = |v: &VipState| {
            lb_common::maglev::build_table(&members(v).0, lb_common::MAGLEV_TABLE_SIZE)
        };
        assert_eq!(build(&a), build(&b), "configuration order does not matter");
    }

    #[test]
    fn a_pin_keeps_to_its_groups_and_empties_when_they_fail_unless_everything_fails() {
        use Status::*;
        let pin = crate::config::Pin {
            name: "eu".into(),
            sources: Default::default(),
            groups: vec!["relay".into()],
            spill: false,
        };
        let ids_of = |v: &VipState| {
            let mut v = v.clone();
            v.refresh_table();
            pin_members(&v, &pin)
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        };
        let v = grouped(
            &[(100, Up), (100, Up), (100, Up), (100, Up), (100, Down)],
            3,
        );
        assert_eq!(ids_of(&v), [3]);
        // The relays are down, direct is fine: the pin's table is empty (refuse or spill).
        let v = grouped(
            &[(100, Up), (100, Up), (100, Up), (100, Down), (100, Down)],
            3,
        );
        assert!(ids_of(&v).is_empty());
        // Everything is down (a cluster-wide health failure): fail open, inside the boundary.
        let v = grouped(&[(100, Down); 5], 3);
        assert_eq!(ids_of(&v), [3, 4]);
    }
}
