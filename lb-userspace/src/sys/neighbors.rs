//! Keeps the edge's neighbour (ARP) entries for backends resolved.
//!
//! The data path needs the backend's MAC from bpf_fib_lookup. Without a neighbour entry it hands
//! the translated packet to the kernel, which drops it as a martian when the SNAT address is a
//! local address: the first packets of a flow would be lost (a UDP request entirely, a TCP SYN
//! until its retransmit). So the daemon makes the kernel resolve every backend before attaching
//! and keeps the entries fresh, whatever the health-check kind.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use log::debug;

/// The discard port: a datagram there triggers ARP resolution and is ignored by the backend.
const DISCARD_PORT: u16 = 9;

/// Sends one empty datagram to each address, so the kernel resolves (or refreshes) its
/// neighbour entry.
pub fn poke(addrs: &BTreeSet<Ipv4Addr>) {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for a in addrs {
        if let Err(e) = sock.send_to(&[], SocketAddr::from((*a, DISCARD_PORT))) {
            debug!("neighbour warm-up of {a}: {e}");
        }
    }
}

/// Addresses with a complete ARP entry in this network namespace (/proc/net/arp).
fn resolved() -> BTreeSet<Ipv4Addr> {
    let Ok(text) = std::fs::read_to_string("/proc/net/arp") else {
        return BTreeSet::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let complete = f
                .get(2)
                .and_then(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())?
                & 0x2
                != 0;
            complete.then(|| f[0].parse().ok()).flatten()
        })
        .collect()
}

/// Pokes every address, then waits up to `limit` for their entries (backends behind a router
/// never get one of their own; the wait just ends).
pub fn warm(addrs: &BTreeSet<Ipv4Addr>, limit: Duration) -> usize {
    poke(addrs);
    let start = Instant::now();
    loop {
        let have = resolved();
        let missing = addrs.iter().filter(|a| !have.contains(a)).count();
        if missing == 0 || start.elapsed() >= limit {
            return addrs.len() - missing;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
