//! Writing a diff as one transaction: each write's undo is recorded first, and a failure undoes
//! the writes already made, in reverse, before the error is returned.

use anyhow::{Context as _, Result};
use log::error;

use crate::dataplane::{Image, Maps, Write};

pub fn apply<M: Maps>(maps: &mut M, current: &Image, writes: &[Write]) -> Result<()> {
    let mut img = current.clone();
    let mut undo: Vec<Write> = Vec::with_capacity(writes.len());
    for (n, w) in writes.iter().enumerate() {
        let back = img.undo_of(w);
        if let Err(e) = maps.write(w) {
            rollback(maps, &undo);
            return Err(e).with_context(|| {
                format!(
                    "map write {} of {} failed; the {n} before it were undone and nothing changed",
                    n + 1,
                    writes.len()
                )
            });
        }
        img.apply(w);
        undo.push(back);
    }
    Ok(())
}

fn rollback<M: Maps>(maps: &mut M, undo: &[Write]) {
    for w in undo.iter().rev() {
        if let Err(e) = maps.write(w) {
            // The maps now differ from the controller's view; say so plainly.
            error!(
                "undoing a map write failed ({w:?}): {e:#}; the data plane may be inconsistent until the next reload"
            );
        }
    }
}
