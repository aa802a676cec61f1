//! The shell's store host: it carries the core's store effects
//! (`Output::ReadStore`, `Output::Persist`) out, in the order emitted, and
//! hands each answer back as an input. Two backends:
//! - [`sync::SyncHost`]: a synchronous `Store` (SQLite, memory) run in
//!   bounded slices per loop turn; HTTP reads go straight to the store.
//! - [`pg::PgHost`]: PostgreSQL, pipelined on one non-blocking connection in
//!   the loop's own `Poll`; HTTP reads park until their answers arrive
//!   ([`http_reads`]).
//!
//! Owns the choice of backend and nothing else; never decides what an
//! answer means.

pub mod http_reads;
pub mod pg;
mod pg_plan;
pub mod runner;
pub mod sync;

use crate::engine::{Input, Output};
use crate::store::Store;
use std::time::Instant;

pub use pg::PgHost;
pub use sync::{SyncHost, SLICE};

pub enum StoreHost {
    Sync(SyncHost),
    Pg(Box<PgHost>),
}

impl StoreHost {
    pub fn new(store: Box<dyn Store>) -> StoreHost {
        StoreHost::Sync(SyncHost::new(store))
    }

    /// The store for synchronous reads; `None` for PostgreSQL (reads park).
    pub fn store(&self) -> Option<&dyn Store> {
        match self {
            StoreHost::Sync(h) => Some(h.store()),
            StoreHost::Pg(_) => None,
        }
    }

    pub fn pg(&mut self) -> Option<&mut PgHost> {
        match self {
            StoreHost::Pg(h) => Some(h),
            StoreHost::Sync(_) => None,
        }
    }

    /// The PostgreSQL URL (no password); `None` for a synchronous store.
    pub fn pg_url(&self) -> Option<&str> {
        match self {
            StoreHost::Pg(h) => Some(h.url()),
            StoreHost::Sync(_) => None,
        }
    }

    /// `sqlite` (any synchronous store) or `postgres`, for `/health`.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreHost::Sync(_) => "sqlite",
            StoreHost::Pg(_) => "postgres",
        }
    }

    /// Queues `output` when it is a store effect; hands it back otherwise.
    pub fn offer(&mut self, output: Output) -> Option<Output> {
        match self {
            StoreHost::Sync(h) => h.offer(output),
            StoreHost::Pg(h) => h.offer(output),
        }
    }

    /// The loop must not wait: an effect can run (sync) or an answer is ready (pg).
    pub fn has_work(&self) -> bool {
        match self {
            StoreHost::Sync(h) => h.has_work(),
            StoreHost::Pg(h) => h.has_work(),
        }
    }

    pub fn queued(&self) -> usize {
        match self {
            StoreHost::Sync(h) => h.queued(),
            StoreHost::Pg(h) => h.queued(),
        }
    }

    /// The next answer for the core: runs the oldest effect (sync), or hands
    /// over the oldest effect's answer once it arrived (pg).
    pub fn run_one(&mut self) -> Option<Input> {
        match self {
            StoreHost::Sync(h) => h.run_one(),
            StoreHost::Pg(h) => h.run_one(),
        }
    }

    pub fn slice_took(&mut self, started: Instant) {
        if let StoreHost::Sync(h) = self {
            h.slice_took(started);
        }
    }

    pub fn worst_slice_s(&self) -> f64 {
        match self {
            StoreHost::Sync(h) => h.worst_slice_s,
            StoreHost::Pg(_) => 0.0,
        }
    }
}
