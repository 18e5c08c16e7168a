//! The Maglev tables in the kernel: two memory-mapped tables per VIP and a selector.
//!
//! Replacing an inner map of MAGLEV costs a `synchronize_rcu()` inside the update syscall
//! (6-18 ms here), and a health change can rebuild every VIP's table. Instead each VIP keeps
//! two long-lived tables: the daemon fills the one packets do not select, flips TABLE_SEL with one
//! array write (packets see the old table or the new one, whole), and waits out a grace period
//! in the background before it may overwrite the table packets just left.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, ArrayOfMaps, IterableMap as _, Map, MapData, MapError};
use lb_common::{BPF_F_MMAPABLE, MAGLEV_TABLE_SIZE, TABLES_PER_VIP};

use crate::sys::{self, bpf::Mmap, rcu::Grace};

/// One VIP's pair of tables.
struct Pair {
    /// Kept open so the mappings stay valid even while a slot is being replaced.
    _maps: [Array<MapData, u32>; 2],
    mmaps: [Mmap; 2],
    /// The table packets select.
    live: u32,
    /// Started at the last flip; the other table is reusable once it has elapsed.
    grace: Option<Grace>,
}

pub struct MaglevTables {
    outer: ArrayOfMaps<MapData, Array<MapData, u32>>,
    /// A second descriptor of MAGLEV, for clearing a slot (aya cannot).
    outer_fd: OwnedFd,
    selector: Array<MapData, u32>,
    pairs: HashMap<u32, Pair>,
    /// A previous daemon may have flipped a selector just before it stopped: wait out one grace
    /// period before this process overwrites any table it adopted.
    adopted_grace: Option<Grace>,
}

fn slot(vip_id: u32, which: u32) -> u32 {
    vip_id * TABLES_PER_VIP + which
}

impl MaglevTables {
    pub fn new(outer: Map, selector: Array<MapData, u32>) -> Result<Self> {
        let outer_fd = match &outer {
            Map::ArrayOfMaps(d) => d.fd().as_fd().try_clone_to_owned()?,
            _ => bail!("map {} has an unexpected type", lb_common::names::MAGLEV),
        };
        Ok(MaglevTables {
            outer: ArrayOfMaps::try_from(outer)?,
            outer_fd,
            selector,
            pairs: HashMap::new(),
            adopted_grace: Some(Grace::start()),
        })
    }

    fn inner(&self, vip_id: u32, which: u32) -> Result<Option<Array<MapData, u32>>> {
        match self.outer.get(&slot(vip_id, which), 0) {
            Ok(i) => Ok(Some(i)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading VIP id {vip_id}'s table {which}")),
        }
    }

    fn live(&self, vip_id: u32) -> Result<u32> {
        Ok(self.selector.get(&vip_id, 0)? & 1)
    }

    /// The VIP's pair: already known, adopted from the maps, or created (two outer updates, once
    /// in the VIP's life).
    fn pair(&mut self, vip_id: u32) -> Result<&mut Pair> {
        if !self.pairs.contains_key(&vip_id) {
            let live = self.live(vip_id)?;
            let adopted = [self.inner(vip_id, 0)?, self.inner(vip_id, 1)?];
            let mut maps = Vec::with_capacity(2);
            for (which, existing) in adopted.into_iter().enumerate() {
                let map = match existing {
                    Some(m) => m,
                    None => {
                        let m: Array<MapData, u32> =
                            Array::create(MAGLEV_TABLE_SIZE, BPF_F_MMAPABLE as u32)
                                .context("creating a Maglev table map")?;
                        self.outer
                            .set(slot(vip_id, which as u32), &m, 0)
                            .with_context(|| {
                                format!("installing VIP id {vip_id}'s table {which}")
                            })?;
                        m
                    }
                };
                maps.push(map);
            }
            let [a, b]: [Array<MapData, u32>; 2] = maps.try_into().ok().expect("two tables");
            let mmaps = [
                Mmap::new(a.map().fd().as_fd(), MAGLEV_TABLE_SIZE as usize, 4, true)?,
                Mmap::new(b.map().fd().as_fd(), MAGLEV_TABLE_SIZE as usize, 4, true)?,
            ];
            self.pairs.insert(
                vip_id,
                Pair {
                    _maps: [a, b],
                    mmaps,
                    live,
                    grace: None,
                },
            );
        }
        Ok(self.pairs.get_mut(&vip_id).expect("inserted above"))
    }

    /// Makes `table` the VIP's live table.
    pub fn install(&mut self, vip_id: u32, table: &[u32]) -> Result<()> {
        if table.len() != MAGLEV_TABLE_SIZE as usize {
            bail!(
                "Maglev table has {} slots, the data plane needs {MAGLEV_TABLE_SIZE}",
                table.len()
            );
        }
        if let Some(g) = self.adopted_grace.take() {
            g.wait();
        }
        let pair = self.pair(vip_id)?;
        if let Some(g) = pair.grace.take() {
            g.wait();
        }
        let next = pair.live ^ 1;
        pair.mmaps[next as usize].write_all(table);
        self.selector
            .set(vip_id, next, 0)
            .with_context(|| format!("selecting VIP id {vip_id}'s new table"))?;
        let pair = self.pairs.get_mut(&vip_id).expect("present");
        pair.live = next;
        pair.grace = Some(Grace::start());
        Ok(())
    }

    /// Removes the VIP's tables: new connections to it find no backend.
    pub fn remove(&mut self, vip_id: u32) -> Result<()> {
        for which in 0..TABLES_PER_VIP {
            // Each delete waits for a grace period inside the kernel; VIP removal is rare.
            sys::bpf::delete(self.outer_fd.as_fd(), &slot(vip_id, which))?;
        }
        self.selector.set(vip_id, 0, 0)?;
        self.pairs.remove(&vip_id);
        Ok(())
    }

    /// The live table of the VIP, if it has one.
    pub fn read(&self, vip_id: u32) -> Result<Option<Vec<u32>>> {
        let live = self.live(vip_id)?;
        if let Some(p) = self.pairs.get(&vip_id) {
            return Ok(Some(p.mmaps[live as usize].read_all::<u32>()));
        }
        let Some(inner) = self.inner(vip_id, live)? else {
            return Ok(None);
        };
        let m = Mmap::new(
            inner.map().fd().as_fd(),
            MAGLEV_TABLE_SIZE as usize,
            4,
            false,
        )?;
        Ok(Some(m.read_all::<u32>()))
    }
}
