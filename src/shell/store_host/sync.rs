//! The synchronous backend of the shell's store host (SQLite, memory): it owns the [`Store`] and carries the core's store
//! effects (`Output::ReadStore`, `Output::Persist`) out in the order they were
//! emitted, a bounded slice per loop turn, handing each answer back as an
//! input. A slice runs at least one effect and stops once it has run for
//! [`SLICE`]: a heal's pages or a burst of catch-ups never hold the loop
//! (clients, the exchange) longer than that plus one effect, and each effect
//! is small (a write carries at most `MAX_WRITE_CANDLES` candles, a catch-up
//! page 500).
//!
//! The queue holds only effects the core keeps state for and bounds itself:
//! its write queue (bounded in candles), one catch-up read per client, one
//! read per starting job or pending subscription (bounded by the
//! subscription limit). So it needs no bound of its own; its length is a
//! gauge (`klinegate_store_queue`).
//!
//! Reads that change no core state (HTTP candle reads, health views) go
//! straight to [`SyncHost::store`]. Never decides what an answer means.

use crate::engine::{Input, Output};
use crate::replay::hosted;
use crate::store::Store;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long one loop turn may spend on store effects (after the first).
pub const SLICE: Duration = Duration::from_millis(2);

pub struct SyncHost {
    store: Box<dyn Store>,
    queue: VecDeque<Output>,
    /// The longest slice so far, in seconds, and the most effects queued.
    pub worst_slice_s: f64,
    pub max_queued: usize,
}

impl SyncHost {
    pub fn new(store: Box<dyn Store>) -> SyncHost {
        SyncHost { store, queue: VecDeque::new(), worst_slice_s: 0.0, max_queued: 0 }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Queues `output` when it is a store effect; hands it back otherwise.
    pub fn offer(&mut self, output: Output) -> Option<Output> {
        match output {
            Output::ReadStore { .. } | Output::Persist { .. } => {
                self.queue.push_back(output);
                self.max_queued = self.max_queued.max(self.queue.len());
                None
            }
            other => Some(other),
        }
    }

    pub fn has_work(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Runs the oldest effect; its answer.
    pub fn run_one(&mut self) -> Option<Input> {
        let effect = self.queue.pop_front()?;
        hosted::answer(self.store.as_mut(), &effect)
    }

    /// Notes how long a slice took.
    pub fn slice_took(&mut self, started: Instant) {
        self.worst_slice_s = self.worst_slice_s.max(started.elapsed().as_secs_f64());
    }
}
