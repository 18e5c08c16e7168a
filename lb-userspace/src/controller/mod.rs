//! The controller: turns the configuration, health results and CLI commands into map writes. It
//! is the only writer of the configuration maps and runs on its own thread (`thread`), so table
//! builds and map writes never stall the async runtime that runs probes, the control socket and
//! /metrics.
//!
//! Every change follows one path (`commit`): a copy of the state is changed, its tables rebuilt
//! where their members changed, the image the maps must hold is planned (`image`, from the tables `plan` chose), and the
//! difference is written in a safe order (`txn`). If a write fails, the writes before it are
//! undone and the state stays what it was: nothing is half-applied.

mod adopt;
mod apply;
pub mod edits;
pub mod expiry;
pub mod image;
pub mod plan;
pub mod priority;
pub mod reports;
pub mod snapshot;
pub mod state;
pub mod syn_pressure;
pub mod thread;
mod txn;

use anyhow::Result;

use crate::{
    config::Config,
    dataplane::{Image, Maps},
};
pub use snapshot::Snapshot;
use state::State;

pub struct Controller<M: Maps> {
    maps: M,
    state: State,
    /// What the maps hold (as last written).
    image: Image,
    /// SNAT addresses the flow table has slots for.
    snat_capacity: u32,
    /// Flows expired so far (reported by expiry passes).
    expired_total: u64,
}

impl<M: Maps> Controller<M> {
    /// Takes over loaded maps (fresh or adopted from pins) and applies `cfg`. Ids of VIPs and
    /// backends already in the maps are kept, so established flows keep their counters and
    /// their backend across a daemon restart.
    pub fn new(
        maps: M,
        cfg: Config,
        interfaces: Vec<state::Interface>,
        snat_capacity: u32,
    ) -> Result<(Self, Vec<String>)> {
        let image = maps.read()?;
        let mut state = adopt::state(&image, &cfg);
        state.interfaces = interfaces;
        let mut c = Controller {
            maps,
            state,
            image,
            snat_capacity,
            expired_total: 0,
        };
        let mut summary = adopt::summary(&c.state);
        summary.extend(c.apply(cfg)?);
        c.state.started = true;
        Ok((c, summary))
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.state.cfg
    }

    /// Makes `next` the running state: rebuilds the tables whose members changed, writes the
    /// difference to the maps, and keeps `next` only if every write succeeded.
    fn commit(&mut self, mut next: State) -> Result<()> {
        for v in &mut next.vips {
            v.refresh_table();
            v.refresh_pins();
        }
        let want = image::image(&next);
        let writes = self.image.diff(&want);
        txn::apply(&mut self.maps, &self.image, &writes)?;
        self.state = next;
        self.image = want;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
