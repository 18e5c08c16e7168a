//! Keeps the edge's neighbour entries (ARP for IPv4, neighbour discovery for IPv6) for backends
//! resolved.
//!
//! The data path needs the backend's MAC from bpf_fib_lookup. Without a neighbour entry it hands
//! the translated packet to the kernel, which drops it as a martian when the SNAT address is a
//! local address: the first packets of a flow would be lost (a UDP request entirely, a TCP SYN
//! until its retransmit). So the daemon makes the kernel resolve every backend before attaching
//! and keeps the entries fresh, whatever the health-check kind. Which entries are complete is
//! read over rtnetlink, for both families (/proc/net/arp knows only IPv4).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use log::debug;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};

/// The discard port: a datagram there triggers resolution and is ignored by the backend.
const DISCARD_PORT: u16 = 9;

/// Sends one empty datagram to each address, so the kernel resolves (or refreshes) its
/// neighbour entry.
pub fn poke(addrs: &BTreeSet<IpAddr>) {
    let v4 = UdpSocket::bind("0.0.0.0:0").ok();
    let v6 = UdpSocket::bind("[::]:0").ok();
    for a in addrs {
        let sock = if a.is_ipv4() { &v4 } else { &v6 };
        let Some(sock) = sock else { continue };
        if let Err(e) = sock.send_to(&[], SocketAddr::new(*a, DISCARD_PORT)) {
            debug!("neighbour warm-up of {a}: {e}");
        }
    }
}

/// The address of a neighbour entry that can be used now (None: incomplete, failed, or not an
/// IP neighbour).
fn usable(m: &NeighbourMessage) -> Option<IpAddr> {
    let usable = matches!(
        m.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// Addresses with a usable neighbour entry in this network namespace, both families.
async fn resolved() -> Result<BTreeSet<IpAddr>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut dump = handle.neighbours().get().execute();
    let mut out = BTreeSet::new();
    while let Some(m) = dump.try_next().await.context("listing neighbours")? {
        out.extend(usable(&m));
    }
    task.abort();
    Ok(out)
}

/// Pokes every address, then waits up to `limit` for their entries (backends behind a router
/// never get one of their own; the wait just ends). Returns how many are resolved.
pub async fn warm(addrs: &BTreeSet<IpAddr>, limit: Duration) -> Result<usize> {
    poke(addrs);
    let start = Instant::now();
    loop {
        let have = resolved().await?;
        let missing = addrs.iter().filter(|a| !have.contains(a)).count();
        if missing == 0 || start.elapsed() >= limit {
            return Ok(addrs.len() - missing);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
