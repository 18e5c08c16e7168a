//! VIP routes in the kernel routing table a BGP daemon imports: listed, installed and removed
//! over rtnetlink. Each is a blackhole host route (/32, or /128 for an IPv6 VIP) marked with
//! wklb's route protocol number, so it is told apart from every other route and forwards
//! nothing itself (the table is not consulted for forwarding; XDP takes the VIP's packets
//! before routing).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    },
};

/// The route protocol number wklb's routes carry (`ip route show table T proto 248`; BIRD:
/// `krt_source = 248`). Unassigned in iproute2's rt_protos.
pub const RTPROT_WKLB: u8 = 248;

/// One installed VIP route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VipRoute {
    pub table: u32,
    pub address: IpAddr,
}

impl std::fmt::Display for VipRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = if self.address.is_ipv4() { 32 } else { 128 };
        write!(f, "{}/{len} in table {}", self.address, self.table)
    }
}

/// A netlink connection in the calling thread's network namespace (needs a tokio runtime).
pub struct Routes {
    handle: Handle,
}

impl Routes {
    pub fn connect() -> Result<Self> {
        // Strict checking lets the kernel filter a dump by table, protocol and type: an edge
        // that also holds full BGP tables is not listed whole every resync.
        let (conn, handle, _) =
            rtnetlink::new_connection_with_strict_check().context("opening rtnetlink")?;
        tokio::spawn(conn);
        Ok(Routes { handle })
    }

    /// The routes carrying wklb's protocol number in `table` (None: in every table), both
    /// families.
    pub async fn list(&self, table: Option<u32>) -> Result<BTreeSet<VipRoute>> {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .protocol(RouteProtocol::from(RTPROT_WKLB))
            .kind(RouteType::BlackHole)
            .table_id(table.unwrap_or(0))
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .protocol(RouteProtocol::from(RTPROT_WKLB))
            .kind(RouteType::BlackHole)
            .table_id(table.unwrap_or(0))
            .build();
        let mut out = BTreeSet::new();
        for query in [v4, v6] {
            let mut dump = self.handle.route().get(query).execute();
            loop {
                match dump.try_next().await {
                    Ok(Some(m)) => {
                        if let Some(r) = ours(&m).filter(|r| table.is_none_or(|t| r.table == t)) {
                            out.insert(r);
                        }
                    }
                    Ok(None) => break,
                    // A table that holds no route does not exist yet.
                    Err(e) if errno(&e) == Some(libc::ENOENT) => break,
                    Err(e) => return Err(e).context("listing routes"),
                }
            }
        }
        Ok(out)
    }

    /// Installs (or keeps) the route.
    pub async fn add(&self, r: VipRoute) -> Result<()> {
        self.handle
            .route()
            .add(message(r))
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing the route {r}"))
    }

    /// Removes the route (gone already is fine).
    pub async fn remove(&self, r: VipRoute) -> Result<()> {
        match self.handle.route().del(message(r)).execute().await {
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            other => other.with_context(|| format!("removing the route {r}")),
        }
    }
}

/// The errno of a kernel refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn message(r: VipRoute) -> RouteMessage {
    match r.address {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .table_id(r.table)
            .protocol(RouteProtocol::from(RTPROT_WKLB))
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .table_id(r.table)
            .protocol(RouteProtocol::from(RTPROT_WKLB))
            .kind(RouteType::BlackHole)
            .build(),
    }
}

fn ours(m: &RouteMessage) -> Option<VipRoute> {
    let h = &m.header;
    let host = match h.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if u8::from(h.protocol) != RTPROT_WKLB || h.destination_prefix_length != host {
        return None;
    }
    let mut table = h.table as u32;
    let mut address = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => address = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => address = Some(IpAddr::V6(*d)),
            _ => {}
        }
    }
    Some(VipRoute {
        table,
        address: address?,
    })
}

/// Removes the wklb routes (any table) of `addresses` in this network namespace: `wklb unload`
/// without a daemon, with the VIP addresses of the pin path it unloads. Routes of another wklb
/// instance (another pin path, other VIPs) stay.
pub fn withdraw_blocking(addresses: &BTreeSet<IpAddr>) -> Result<Vec<VipRoute>> {
    if addresses.is_empty() {
        return Ok(Vec::new());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let routes = Routes::connect()?;
        let ours: Vec<VipRoute> = routes
            .list(None)
            .await?
            .into_iter()
            .filter(|r| addresses.contains(&r.address))
            .collect();
        for r in &ours {
            routes.remove(*r).await?;
        }
        Ok(ours)
    })
}
