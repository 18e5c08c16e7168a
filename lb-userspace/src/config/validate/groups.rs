//! `[[vip.group]]` with priorities, each backend's group, `[vip.failover]` and `[[vip.pin]]`.

use super::Collector;
use crate::config::{
    BackendConfig, DEFAULT_GROUP, Group, Groups, Pin, parse_prefix, schema::RawVip,
};

/// `[[vip.pin]]`: named, with valid prefixes and declared groups.
pub(super) fn pins(c: &mut Collector, p: &str, v: &RawVip, groups: &Groups) -> Vec<Pin> {
    let mut out: Vec<Pin> = Vec::new();
    for (pi, raw) in v.pin.iter().enumerate() {
        let pp = format!("{p}.pin[{pi}]");
        let name = match &raw.name {
            Some(n) => {
                if n.get_ref().is_empty() || n.get_ref().chars().any(char::is_whitespace) {
                    c.err(
                        format!("{pp}.name"),
                        n,
                        "a pin name must be non-empty without spaces",
                    );
                }
                if out.iter().any(|o| &o.name == n.get_ref()) {
                    c.err(
                        format!("{pp}.name"),
                        n,
                        format!("pin {:?} is declared twice", n.get_ref()),
                    );
                }
                n.get_ref().clone()
            }
            None => format!("pin{pi}"),
        };
        if raw.sources.get_ref().is_empty() {
            c.err(
                format!("{pp}.sources"),
                &raw.sources,
                "a pin needs at least one source prefix",
            );
        }
        let mut sources = std::collections::BTreeSet::new();
        for (si, s) in raw.sources.get_ref().iter().enumerate() {
            match parse_prefix(s.get_ref()) {
                Ok(net) => {
                    if let Some(o) = out.iter().find(|o| o.sources.contains(&net)) {
                        c.err(
                            format!("{pp}.sources[{si}]"),
                            s,
                            format!("{net} is already pinned by pin {:?}", o.name),
                        );
                    } else if !sources.insert(net) {
                        c.err(
                            format!("{pp}.sources[{si}]"),
                            s,
                            format!("{net} is listed twice"),
                        );
                    }
                }
                Err(e) => c.err(format!("{pp}.sources[{si}]"), s, e),
            }
        }
        if raw.groups.get_ref().is_empty() {
            c.err(
                format!("{pp}.groups"),
                &raw.groups,
                "a pin needs at least one group",
            );
        }
        let mut names = Vec::new();
        for (gi, g) in raw.groups.get_ref().iter().enumerate() {
            if groups.get(g.get_ref()).is_none() {
                let known: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
                c.err(
                    format!("{pp}.groups[{gi}]"),
                    g,
                    format!(
                        "no group {:?} in this VIP (its groups: {})",
                        g.get_ref(),
                        known.join(", ")
                    ),
                );
            } else if !names.contains(g.get_ref()) {
                names.push(g.get_ref().clone());
            }
        }
        out.push(Pin {
            name,
            sources,
            groups: names,
            spill: raw.spill,
        });
    }
    out
}

/// `[[vip.group]]`, each backend's `group` and `[vip.failover]`.
pub(super) fn groups(c: &mut Collector, p: &str, v: &RawVip, backends: &[BackendConfig]) -> Groups {
    let mut out = Groups {
        groups: Vec::new(),
        ..Groups::default()
    };
    for (gi, g) in v.group.iter().enumerate() {
        let gp = format!("{p}.group[{gi}]");
        let name = g.name.get_ref();
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace()) {
            c.err(
                format!("{gp}.name"),
                &g.name,
                "a group name must be non-empty without spaces",
            );
        }
        if out.get(name).is_some() {
            c.err(
                format!("{gp}.name"),
                &g.name,
                format!("group {name:?} is declared twice"),
            );
            continue;
        }
        let priority = c.ranged(
            &format!("{gp}.priority"),
            &g.priority,
            0,
            1000,
            "priority (0 = most preferred)",
        ) as u32;
        out.groups.push(Group {
            name: name.clone(),
            priority,
        });
    }
    for (bi, b) in v.backend.iter().enumerate() {
        let Some(g) = &b.group else { continue };
        let name = g.get_ref();
        if out.get(name).is_none() && name != DEFAULT_GROUP {
            let known: Vec<&str> = out.groups.iter().map(|g| g.name.as_str()).collect();
            c.err(
                format!("{p}.backend[{bi}].group"),
                g,
                format!(
                    "no [[vip.group]] is named {name:?} (declared: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        }
        if let Some(bc) = backends.get(bi) {
            out.of_backend.insert((bc.address, bc.port), name.clone());
        }
    }
    let in_default = backends.len() > out.of_backend.len();
    if out.get(DEFAULT_GROUP).is_none() && (in_default || out.groups.is_empty()) {
        out.groups.push(Group {
            name: DEFAULT_GROUP.into(),
            priority: 0,
        });
    }
    for (gi, g) in v.group.iter().enumerate() {
        let name = g.name.get_ref();
        let used = backends
            .iter()
            .any(|b| out.group_of(b.address, b.port) == name.as_str());
        if !used {
            c.warn(
                format!("{p}.group[{gi}]"),
                &g.name,
                format!("group {name:?} has no backend: it never takes a connection"),
            );
        }
    }
    if let Some(f) = &v.failover {
        let op = *f.overprovisioning.get_ref();
        if !(1.0..=10.0).contains(&op) {
            c.err(
                format!("{p}.failover.overprovisioning"),
                &f.overprovisioning,
                format!("overprovisioning must be between 1.0 and 10.0, got {op}"),
            );
        } else {
            out.overprovisioning_pct = (op * 100.0).round() as u32;
        }
    }
    out
}
