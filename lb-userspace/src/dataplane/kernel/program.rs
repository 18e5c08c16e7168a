//! The loaded object's programs: attach (in `links`), verified instruction counts, the
//! benchmark entries and their template frame, the flow-hint cache for tests, the data path's
//! log events.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
    programs::Xdp,
};
use lb_common::{Flow4Key, FlowRef, names};

use super::{PROGRAM, load_program, memlock, take};

/// The XDP programs of the object (the main one and the benchmark entries).
pub struct Program {
    pub(super) ebpf: Ebpf,
    /// The data path's log events (aya-log), until the daemon takes them to a reader thread.
    pub(super) logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Program {
    /// The connection log's ring buffer of open records (for the daemon's reader). It stays in
    /// the object until taken: programs loaded later (benchmark entries) refer to it.
    pub fn take_conn_opens(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        take(&mut self.ebpf, names::CONN_OPENS)?
            .try_into()
            .context("map CONN_OPENS has an unexpected type")
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?)
    }

    /// Another program of the object (the benchmark entries), loaded on first use. It shares
    /// every map with the main program.
    pub fn extra(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            load_program(prog).with_context(|| format!("loading program {name}"))?;
        }
        Ok(prog)
    }

    /// Prints the data path's log events through env_logger from a thread of its own, as long
    /// as the process runs (events are rare: internal errors, a full table).
    pub fn forward_log_events(&mut self) {
        let Some(mut logger) = self.logger.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("wklb-xdp-log".into())
            .spawn(move || {
                use std::os::fd::AsRawFd as _;
                let mut pfd = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    // SAFETY: polling one descriptor we own.
                    let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
                    if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                    logger.flush();
                }
            });
        if let Err(e) = spawned {
            log::warn!("data-path log events: no reader thread: {e}");
        }
    }

    /// The verifier's instruction count for the loaded program `name` (`PROGRAM`,
    /// one of `program_names()`).
    pub fn verified_instructions(&mut self, name: &str) -> Result<u32> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        prog.info()?
            .verified_instruction_count()
            .ok_or_else(|| anyhow!("this kernel does not report verified instruction counts"))
    }

    /// The `FLOW_HINTS4` entry for `key` (tests: the hint cache in front of FLOWS4).
    pub fn flow_hint(&self, key: &Flow4Key) -> Result<Option<FlowRef>> {
        let a: Array<&MapData, u64> = self
            .ebpf
            .map(names::FLOW_HINTS4)
            .ok_or_else(|| anyhow!("map {} missing", names::FLOW_HINTS4))?
            .try_into()?;
        Ok(FlowRef::from_hint(
            a.get(&lb_common::hash::flow_hint_index(key), 0)?,
        ))
    }

    /// Overwrites the `FLOW_HINTS4` entry for `key` (tests: wrong and stale hints).
    pub fn set_flow_hint(&mut self, key: &Flow4Key, r: Option<FlowRef>) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = self
            .ebpf
            .map_mut(names::FLOW_HINTS4)
            .ok_or_else(|| anyhow!("map {} missing", names::FLOW_HINTS4))?
            .try_into()?;
        a.set(
            lb_common::hash::flow_hint_index(key),
            r.map_or(0, FlowRef::to_hint),
            0,
        )?;
        Ok(())
    }

    /// Kernel memory charged to one of the object's maps, from fdinfo.
    pub fn map_memory_bytes(&self, name: &str) -> Result<u64> {
        let m = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        let data = match m {
            Map::Array(d) => d,
            _ => bail!("map {name} is not an array"),
        };
        memlock(data)
    }

    /// When a SYN last created a flow without a cookie on VIP `vip_id` (`VIP_PLAIN_SYN`).
    pub fn plain_syn_stamp(&self, vip_id: u32) -> Result<u64> {
        let a: Array<&MapData, u64> = self
            .ebpf
            .map(names::VIP_PLAIN_SYN)
            .ok_or_else(|| anyhow!("map {} missing", names::VIP_PLAIN_SYN))?
            .try_into()?;
        Ok(a.get(&vip_id, 0)?)
    }

    /// Sets when a SYN last created a flow without a cookie on VIP `vip_id` (`VIP_PLAIN_SYN`;
    /// tests: a VIP long into cookie mode).
    pub fn set_plain_syn_stamp(&mut self, vip_id: u32, ns: u64) -> Result<()> {
        plain_syn_stamps(&mut self.ebpf)?.set(vip_id, ns, 0)?;
        Ok(())
    }

    /// Sets the template frame of the benchmark entries.
    pub fn set_bench_frame(&mut self, frame: &lb_common::BenchFrame) -> Result<()> {
        let m = self
            .ebpf
            .map_mut(names::BENCH_FRAME)
            .ok_or_else(|| anyhow!("map {} missing", names::BENCH_FRAME))?;
        let mut a: Array<&mut MapData, lb_common::BenchFrame> = m.try_into()?;
        a.set(0, frame, 0)?;
        Ok(())
    }
}

/// `VIP_PLAIN_SYN`, writable (the loader stamps it on adoption, tests set it).
pub(super) fn plain_syn_stamps(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, u64>> {
    Ok(ebpf
        .map_mut(names::VIP_PLAIN_SYN)
        .ok_or_else(|| anyhow!("map {} missing", names::VIP_PLAIN_SYN))?
        .try_into()?)
}
