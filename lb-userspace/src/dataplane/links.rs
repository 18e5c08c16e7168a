//! Attaching the XDP program to interfaces through pinned links (so it stays attached when the
//! daemon exits), adopting the links of a previous daemon, and removing everything on unload.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
use lb_common::names;

use super::kernel::Program;

/// How to attach: `Auto` tries native (driver) XDP and falls back to generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Driver,
    Generic,
}

impl AttachMode {
    pub const NAMES: &str = "auto, driver, generic";

    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "driver" => Ok(AttachMode::Driver),
            "generic" => Ok(AttachMode::Generic),
            other => bail!("xdp mode {other:?} is not one of {}", Self::NAMES),
        }
    }
}

/// How the program ended up on an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// "driver" or "generic" for a new attachment; "adopted" when an earlier daemon's link was
    /// re-pointed at this program.
    pub mode: String,
}

/// Pin file of the XDP link on `iface`.
fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

const fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Driver => "driver",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "hardware",
        XdpMode::Default => "default",
    }
}

impl Program {
    /// Attaches to `iface` (the link lives as long as this object); returns the mode that
    /// worked. `Auto` tries native XDP, then generic.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        self.attach_link(iface, mode).map(|(_, m)| m)
    }

    fn attach_link(&mut self, iface: &str, mode: AttachMode) -> Result<(XdpLinkId, XdpMode)> {
        let prog = self.xdp()?;
        let tries: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Driver => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for m in tries {
            match prog.attach(iface, *m) {
                Ok(id) => return Ok((id, *m)),
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(last.expect("at least one mode tried")))
            .with_context(|| format!("attaching XDP to interface {iface:?} ({mode:?} mode)"))
    }

    /// Attaches to `iface` through a link pinned in `dir`, so the program stays attached when
    /// this process exits. A link pinned by an earlier daemon is re-pointed at this program in
    /// one atomic update: no packet goes unprocessed during a restart or an upgrade.
    pub fn attach_pinned(
        &mut self,
        dir: &Path,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Attachment> {
        let pin = link_pin(dir, iface);
        if pin.exists() {
            let pinned =
                PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .with_context(|| format!("{} is not an XDP link", pin.display()))?;
            let prog = self.xdp()?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {iface}"))?;
            // The pin keeps the link attached; our handle can go.
            drop(prog.take_link(id)?);
            return Ok(Attachment {
                interface: iface.into(),
                mode: "adopted".into(),
            });
        }
        let (id, mode_used) = self.attach_link(iface, mode)?;
        let link = self.xdp()?.take_link(id)?;
        let fd_link = FdLink::try_from(link)
            .with_context(|| format!("XDP on {iface} is not a bpf_link; cannot pin it"))?;
        fd_link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link of {iface} at {}", pin.display()))?;
        Ok(Attachment {
            interface: iface.into(),
            mode: mode_name(mode_used).into(),
        })
    }
}

/// Detaches the pinned link of `iface` (removing its pin).
pub fn detach_pinned(dir: &Path, iface: &str) -> Result<bool> {
    let pin = link_pin(dir, iface);
    if !pin.exists() {
        return Ok(false);
    }
    std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
    Ok(true)
}

/// Interfaces with a pinned link under `dir`.
pub fn pinned_interfaces(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link_"))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// The VIP addresses in the VIP maps pinned under `dir` (empty when nothing is pinned there):
/// what `wklb unload` without a daemon withdraws routes for.
pub fn pinned_vip_addresses(dir: &Path) -> Result<std::collections::BTreeSet<std::net::IpAddr>> {
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::{Vip4Key, Vip6Key, VipMeta};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let open = |name: &str| -> Result<Option<Map>> {
        let p = dir.join(name);
        if !p.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&p).with_context(|| format!("opening {}", p.display()))?;
        Ok(Some(Map::HashMap(data)))
    };
    let mut out = std::collections::BTreeSet::new();
    if let Some(m) = open(names::VIPS4)? {
        let m: HashMap<MapData, Vip4Key, VipMeta> = HashMap::try_from(m)?;
        for k in m.keys() {
            out.insert(IpAddr::V4(Ipv4Addr::from(k?.addr.to_ne_bytes())));
        }
    }
    if let Some(m) = open(names::VIPS6)? {
        let m: HashMap<MapData, Vip6Key, VipMeta> = HashMap::try_from(m)?;
        for k in m.keys() {
            out.insert(IpAddr::V6(Ipv6Addr::from(lb_common::v6_of_words(k?.addr))));
        }
    }
    Ok(out)
}

/// Detaches every pinned link and removes every pinned map under `dir` (already resolved),
/// then `dir` itself. Returns what was removed.
pub fn unload_pinned(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for iface in pinned_interfaces(dir) {
        detach_pinned(dir, &iface)?;
        removed.push(format!("detached XDP from {iface}"));
    }
    for name in names::ALL {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(format!("removed map {name}"));
        }
    }
    if dir.exists() {
        std::fs::remove_dir(dir).with_context(|| {
            format!(
                "removing {} (something else is pinned there?)",
                dir.display()
            )
        })?;
    }
    Ok(removed)
}
