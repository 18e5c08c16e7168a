//! Pure planning: which VIP addresses this edge announces now, and why the others are not.
//! An address is announced while the edge is not drained and every announced VIP on it can
//! serve new flows. No I/O: unit-tested here.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{
    config::{Announce, WhenAllDown},
    controller::{plan::TableMode, state::VipState},
};

/// The decision for one VIP address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressPlan {
    pub address: IpAddr,
    pub announce: bool,
    /// "serving", or why the address is withdrawn.
    pub why: String,
    /// The announced VIPs on this address.
    pub vips: Vec<String>,
}

/// Why a VIP cannot take new flows here (None: it can).
pub fn not_serving(v: &VipState, when_all_down: WhenAllDown) -> Option<String> {
    match v.mode {
        TableMode::Normal | TableMode::Starting => None,
        TableMode::FailOpen if when_all_down == WhenAllDown::Keep => None,
        TableMode::FailOpen => Some(format!(
            "VIP {}: every backend is down (announce.when_all_backends_down = \"withdraw\")",
            v.spec.name
        )),
        TableMode::Empty => Some(format!(
            "VIP {}: no backend may take new flows (all drained or weight 0)",
            v.spec.name
        )),
    }
}

/// One decision per announced address, in address order.
pub fn plan(cfg: &Announce, vips: &[VipState], drained: bool) -> Vec<AddressPlan> {
    let mut by_address: BTreeMap<IpAddr, Vec<&VipState>> = BTreeMap::new();
    for v in vips.iter().filter(|v| cfg.vips.contains(&v.spec.name)) {
        by_address.entry(v.spec.address).or_default().push(v);
    }
    by_address
        .into_iter()
        .map(|(address, vs)| {
            let blocker = if drained {
                Some("edge drained (`wklb edge undrain` announces again)".to_string())
            } else {
                vs.iter().find_map(|v| not_serving(v, cfg.when_all_down))
            };
            AddressPlan {
                address,
                announce: blocker.is_none(),
                why: blocker.unwrap_or_else(|| "serving".into()),
                vips: vs.iter().map(|v| v.spec.name.clone()).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Protocol;

    fn vip(name: &str, addr: [u8; 4], mode: TableMode) -> VipState {
        VipState {
            mode,
            ..VipState::new(
                crate::config::Vip::new(name, IpAddr::from(addr), 5100, Protocol::Tcp),
                0,
            )
        }
    }

    fn cfg(vips: &[&str], when_all_down: WhenAllDown) -> Announce {
        Announce {
            table: 200,
            vips: vips.iter().map(|s| s.to_string()).collect(),
            when_all_down,
            drain_file: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn serving_vips_are_announced_once_per_address() {
        let vips = [
            vip("tcp", [10, 100, 0, 1], TableMode::Normal),
            vip("udp", [10, 100, 0, 1], TableMode::Starting),
            vip("other", [10, 100, 0, 2], TableMode::Normal),
        ];
        let p = plan(
            &cfg(&["tcp", "udp", "other"], WhenAllDown::Keep),
            &vips,
            false,
        );
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|a| a.announce && a.why == "serving"));
        assert_eq!(p[0].vips, ["tcp", "udp"]);
    }

    #[test]
    fn only_listed_vips_count() {
        let vips = [
            vip("tcp", [10, 100, 0, 1], TableMode::Normal),
            vip("udp", [10, 100, 0, 1], TableMode::Empty),
            vip("other", [10, 100, 0, 2], TableMode::Normal),
        ];
        let p = plan(&cfg(&["tcp"], WhenAllDown::Keep), &vips, false);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].announce,
            "udp is not announced, so its empty table does not matter"
        );
    }

    #[test]
    fn one_vip_that_cannot_serve_withdraws_its_address() {
        let vips = [
            vip("tcp", [10, 100, 0, 1], TableMode::Normal),
            vip("udp", [10, 100, 0, 1], TableMode::Empty),
            vip("other", [10, 100, 0, 2], TableMode::Normal),
        ];
        let p = plan(
            &cfg(&["tcp", "udp", "other"], WhenAllDown::Keep),
            &vips,
            false,
        );
        assert!(!p[0].announce);
        assert!(p[0].why.contains("VIP udp"), "{}", p[0].why);
        assert!(p[1].announce);
    }

    #[test]
    fn fail_open_keeps_or_withdraws_as_configured() {
        let vips = [vip("tcp", [10, 100, 0, 1], TableMode::FailOpen)];
        assert!(plan(&cfg(&["tcp"], WhenAllDown::Keep), &vips, false)[0].announce);
        let p = plan(&cfg(&["tcp"], WhenAllDown::Withdraw), &vips, false);
        assert!(!p[0].announce);
        assert!(p[0].why.contains("when_all_backends_down"), "{}", p[0].why);
    }

    #[test]
    fn drained_withdraws_everything() {
        let vips = [
            vip("tcp", [10, 100, 0, 1], TableMode::Normal),
            vip("other", [10, 100, 0, 2], TableMode::Normal),
        ];
        let p = plan(&cfg(&["tcp", "other"], WhenAllDown::Keep), &vips, true);
        assert!(
            p.iter()
                .all(|a| !a.announce && a.why.starts_with("edge drained"))
        );
    }
}
