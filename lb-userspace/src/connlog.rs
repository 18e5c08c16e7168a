//! The connection log: one JSON line when a flow opens (from the data path's CONN_OPENS ring
//! buffer) and one when it ends (written by the expiry pass that removes it, with its packets
//! and payload bytes each way from FLOW_BYTES and why it ended), to a file rotated by size or
//! to standard output. Records lost to a full ring buffer are counted by the data path and
//! reported (`wklb stats`, metrics), never silent.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use lb_common::{
    FlowEntry,
    connlog::{FlowBytes, OpenEvent},
    conntrack::State,
    slot,
};
use log::warn;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{config::ConnLog, controller::Snapshot, sys::clock::monotonic_ns};

/// One line of the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Record {
    /// "open" or "close".
    pub event: &'static str,
    /// RFC 3339, UTC.
    pub start: String,
    /// When it ended (close records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    pub protocol: &'static str,
    pub client: String,
    pub vip: String,
    pub group: String,
    pub backend: String,
    /// What the data node saw: the edge's SNAT address and port.
    pub snat: String,
    /// Close records: packets and payload bytes client → backend and back, and why it ended
    /// ("fin", "rst", "idle").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<&'static str>,
}

/// Counts of what the log wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub opens: AtomicU64,
    pub closes: AtomicU64,
    pub errors: AtomicU64,
}

/// The wall-clock time of a CLOCK_MONOTONIC instant.
fn wall(mono_ns: u64) -> String {
    let now_mono = monotonic_ns();
    let t = SystemTime::now() - Duration::from_nanos(now_mono.saturating_sub(mono_ns));
    humantime::format_rfc3339_millis(t).to_string()
}

fn v4(word: u32) -> Ipv4Addr {
    Ipv4Addr::from(word.to_ne_bytes())
}

/// VIP name, group and the SNAT address of a flow, from the controller's snapshot.
fn names(
    snap: &Snapshot,
    vip_id: u32,
    backend: SocketAddr,
    snat_index: u32,
) -> (String, String, String) {
    let v = snap.vips.iter().find(|v| v.id == vip_id);
    let vip = v.map_or_else(|| format!("(vip id {vip_id})"), |v| v.spec.name.clone());
    let group = v.map_or_else(String::new, |v| {
        v.spec
            .groups
            .group_of(backend.ip(), backend.port())
            .to_string()
    });
    let snat = snap
        .snat
        .iter()
        .find(|s| s.index == snat_index)
        .map_or_else(|| format!("(snat {snat_index})"), |s| s.address.to_string());
    (vip, group, snat)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        lb_common::PROTO_TCP => "tcp",
        lb_common::PROTO_UDP => "udp",
        _ => "other",
    }
}

/// The open record of a ring-buffer event.
pub fn open_record(snap: &Snapshot, o: &OpenEvent) -> Record {
    let backend = SocketAddr::new(
        snap.backend_ip_of(o.flags, o.backend, o.backend_id as u32),
        o.backend_port,
    );
    let (vip, group, snat) = names(snap, o.vip_id as u32, backend, slot::snat_index_of(o.slot));
    Record {
        event: "open",
        start: wall(o.at_ns),
        end: None,
        protocol: proto_name(o.proto),
        client: SocketAddr::new(IpAddr::V4(v4(o.client)), o.client_port).to_string(),
        vip: format!("{vip} {}:{}", v4(o.vip), o.vip_port),
        group,
        backend: backend.to_string(),
        snat: format!("{snat}:{}", slot::port_of(o.slot)),
        packets_in: None,
        bytes_in: None,
        packets_out: None,
        bytes_out: None,
        ended_by: None,
    }
}

/// The close record of a flow the expiry pass removed.
pub fn close_record(snap: &Snapshot, s: u32, e: &FlowEntry, b: &FlowBytes, now: u64) -> Record {
    let backend = SocketAddr::new(snap.backend_ip(e), e.backend_port);
    let (vip, group, snat) = names(snap, e.vip_id as u32, backend, slot::snat_index_of(s));
    let ended_by = match State::from_u8(e.state) {
        Some(State::Closing) => "fin",
        Some(State::Closed) => "rst",
        _ => "idle",
    };
    Record {
        event: "close",
        start: wall(e.created_s as u64 * 1_000_000_000),
        end: Some(wall(e.last_seen_ns.min(now))),
        protocol: proto_name(e.proto),
        client: SocketAddr::new(IpAddr::V4(v4(e.client[0])), e.client_port).to_string(),
        vip: format!("{vip} {}:{}", v4(e.vip_v4()), e.vip_port),
        group,
        backend: backend.to_string(),
        snat: format!("{snat}:{}", slot::port_of(s)),
        packets_in: Some(b.packets[0]),
        bytes_in: Some(b.bytes[0]),
        packets_out: Some(b.packets[1]),
        bytes_out: Some(b.bytes[1]),
        ended_by: Some(ended_by),
    }
}

/// Where lines go.
enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: std::fs::File,
        size: u64,
        max: u64,
        keep: u32,
    },
}

impl Sink {
    fn open(cfg: &ConnLog) -> Result<Sink> {
        let Some(path) = &cfg.path else {
            return Ok(Sink::Stdout);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {} for conn_log.path", dir.display()))?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Sink::File {
            path: path.clone(),
            file,
            size,
            max: cfg.max_bytes,
            keep: cfg.keep,
        })
    }

    fn write(&mut self, line: &[u8]) -> Result<()> {
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(line)?;
                o.flush()?;
            }
            Sink::File {
                path,
                file,
                size,
                max,
                keep,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max {
                    rotate(path, *keep)?;
                    *file = open_append(path)?;
                    *size = 0;
                }
                file.write_all(line)?;
                *size += line.len() as u64;
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening conn_log.path {}", path.display()))
}

/// path → path.1 → ... → path.keep (the oldest goes).
fn rotate(path: &Path, keep: u32) -> Result<()> {
    let nth = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path).context("rotating the connection log");
    }
    let _ = std::fs::remove_file(nth(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(nth(n), nth(n + 1));
    }
    std::fs::rename(path, nth(1)).context("rotating the connection log")
}

/// The writer: a thread owning the sink, fed by a channel (the expiry thread and the ring
/// reader both send). Lines are flushed as written.
pub fn spawn_writer(cfg: &ConnLog, written: Arc<Written>) -> Result<mpsc::Sender<Record>> {
    let mut sink = Sink::open(cfg)?;
    let (tx, rx) = mpsc::channel::<Record>();
    std::thread::Builder::new()
        .name("wklb-connlog".into())
        .spawn(move || {
            for r in rx {
                let mut line = match serde_json::to_vec(&r) {
                    Ok(l) => l,
                    Err(_) => continue,
                };
                line.push(b'\n');
                match sink.write(&line) {
                    Ok(()) => {
                        let c = if r.event == "open" {
                            &written.opens
                        } else {
                            &written.closes
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if written.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            warn!("connection log: {e:#}");
                        }
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Reads the open records from the ring buffer as they come and sends them to the writer.
pub async fn read_opens(
    ring: RingBuf<MapData>,
    h: crate::controller::thread::Handle,
    tx: mpsc::Sender<Record>,
) -> Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays open while registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("polling the CONN_OPENS ring buffer")?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let snap = h.snapshot();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<OpenEvent>() {
                continue;
            }
            let o: OpenEvent = bytemuck::pod_read_unaligned(&item[..size_of::<OpenEvent>()]);
            if tx.send(open_record(&snap, &o)).is_err() {
                return Ok(());
            }
        }
        guard.clear_ready();
    }
}
