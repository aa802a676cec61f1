//! The ingest jobs as one sub-machine: [`Jobs`] owns every job (one per base
//! series), the stream → job index, the write queue from flush to publish,
//! the flushes asked for in this step, the stall check, the native-interval
//! fills, the heal retry deadline and the whole-kline table. Its methods get
//! what they need of the rest of the engine lent through a [`Ctx`] (the
//! hub, the upstream pool, the REST scheduler, the timer wheel, the store
//! ops, the outputs, the counters), as explicit borrows; nothing here reaches
//! into `Engine`. The engine routes frames, timers, REST and store answers
//! and the supervisor's effects here (`engine/drive.rs`).
//!
//! - `ingest.rs`     one job: forming throttle, closed buffer, dedupe
//! - `frames.rs`     exchange frames into jobs; forming updates published
//! - `flush.rs`      flushes and the write queue: persist (an effect), then publish
//! - `heal.rs`       healing history over REST; the late-close watchdogs
//! - `native.rs`     derived series' history from the exchange's own interval
//! - `lifecycle.rs`  a job's start (after its store read) and stop
//! - `stall.rs`      frozen-stream detection
//! - `kline_ext.rs`  the whole kline's extra fields, attached to writes
//!
//! Never reads a clock, a socket or a store.

pub mod flush;
mod frames;
pub mod heal;
pub mod ingest;
pub(super) mod kline_ext;
mod lifecycle;
pub(super) mod native;
mod stall;
#[cfg(test)]
mod tests;

use super::counters::Counters;
use super::fasthash::{FastMap, NameKey};
use super::hub::Hub;
use super::rest::RestScheduler;
use super::series::{IdxMap, SeriesIdx, SeriesTable};
use super::store_ops::{ReadFor, StoreOps, WriteFor};
use super::supervisor::Supervisor;
use super::upstream::UpstreamPool;
use super::{EngineConfig, LogLevel, Output, RestId, RestPurpose, StoreOp, TimerKey};
use crate::model::Candle;
use crate::store::{StoreQuery, StoreWrite};
use crate::time::Timestamp;
use crate::timer::{TimerId, TimerWheel};
use flush::WriteQueue;
use ingest::Job;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What the job machine owns.
pub(in crate::engine) struct Jobs {
    /// Ingest jobs by base series.
    jobs: IdxMap<Job>,
    /// Job of each exchange stream, per market (spot and USD-M share stream
    /// names). Lookup only, never iterated.
    stream_jobs: [FastMap<NameKey, SeriesIdx>; 2],
    /// Flushes from made to published (`flush.rs`).
    writes: WriteQueue,
    /// Jobs whose buffers flush at the end of this step (`TimerKey::FlushAll`).
    /// Non-empty exactly while the FlushAll timer is armed.
    flush_pending: BTreeSet<SeriesIdx>,
    /// The stall-check timer and its deadline (see `stall.rs`).
    stall_timer: Option<(Timestamp, TimerId)>,
    /// Running fills of derived series from the exchange's own intervals.
    native: BTreeMap<SeriesIdx, native::NativeFill>,
    /// The earliest heal or hole retry (`heal.rs`).
    heal_retry_at: Option<Timestamp>,
    /// Derived candles of one fold step (reused).
    scratch: Vec<(usize, Candle)>,
    /// Throttles that emit for the current forming update (reused).
    emit_scratch: Vec<usize>,
    /// The whole kline of recent closes and derived buckets (`kline_ext.rs`).
    kline_ext: kline_ext::ExtTable,
}

/// The parts of the engine a `Jobs` method may use, lent for one call.
pub(in crate::engine) struct Ctx<'a> {
    pub now: Timestamp,
    pub cfg: &'a EngineConfig,
    pub series: &'a mut SeriesTable,
    pub hub: &'a mut Hub,
    pub supervisor: &'a mut Supervisor,
    pub pool: &'a mut UpstreamPool,
    pub timers: &'a mut TimerWheel<TimerKey>,
    pub rest: &'a mut RestScheduler<RestPurpose>,
    pub store_ops: &'a mut StoreOps,
    pub outputs: &'a mut VecDeque<Output>,
    pub counters: &'a mut Counters,
    /// The engine is shutting down (a gated buffer flushes anyway).
    pub shut_down: bool,
}

impl Ctx<'_> {
    pub fn log(&mut self, level: LogLevel, line: String) {
        self.outputs.push_back(Output::Log { level, line });
    }

    pub fn read_store(&mut self, query: StoreQuery, why: ReadFor) -> StoreOp {
        self.store_ops.read(query, why, self.outputs)
    }

    pub fn write_store(&mut self, write: StoreWrite, why: WriteFor) -> StoreOp {
        self.store_ops.write(write, why, self.outputs)
    }

    /// Candle frames queued for clients so far (forming and closed).
    pub fn frames_queued(&self) -> u64 {
        self.counters.frames_forming + self.counters.frames_closed
    }
}

impl Jobs {
    pub fn new(cfg: &EngineConfig) -> Jobs {
        Jobs {
            jobs: IdxMap::new(),
            stream_jobs: Default::default(),
            writes: WriteQueue::new(cfg.store_backlog_max_candles),
            flush_pending: BTreeSet::new(),
            stall_timer: None,
            native: BTreeMap::new(),
            heal_retry_at: None,
            scratch: Vec::new(),
            emit_scratch: Vec::new(),
            kline_ext: kline_ext::ExtTable::default(),
        }
    }

    pub fn get(&self, idx: SeriesIdx) -> Option<&Job> {
        self.jobs.get(&idx)
    }

    pub fn get_mut(&mut self, idx: SeriesIdx) -> Option<&mut Job> {
        self.jobs.get_mut(&idx)
    }

    pub fn contains(&self, idx: SeriesIdx) -> bool {
        self.jobs.contains_key(&idx)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SeriesIdx, &Job)> {
        self.jobs.iter()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Closed candles accepted but not yet persisted and published (buffers
    /// plus the write queue).
    pub fn unpersisted_candles(&self) -> usize {
        self.writes.candles() + self.jobs.values().map(Job::buffered).sum::<usize>()
    }

    /// Candles the store refused so far that wait for a retry.
    pub fn backlog_candles(&self) -> usize {
        self.writes.backlog_candles()
    }

    /// A write was sent and its answer has not come.
    pub fn awaiting_write(&self) -> bool {
        self.writes.awaiting_answer()
    }

    /// When the write queue retries a failing store.
    pub fn store_retry_at(&self) -> Option<Timestamp> {
        self.writes.retry_at()
    }

    /// When a heal or a hole is retried.
    pub fn heal_retry_at(&self) -> Option<Timestamp> {
        self.heal_retry_at
    }

    /// One of the job timers fired.
    pub fn on_timer(&mut self, cx: &mut Ctx<'_>, key: TimerKey) {
        match key {
            TimerKey::Flush(job) => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.flush_timer = None;
                    self.flush_job(cx, job);
                }
            }
            TimerKey::Forming(job, i) => self.fire_forming(cx, job, i as usize),
            TimerKey::Watchdog(job) => self.fire_watchdog(cx, job),
            TimerKey::CloseDue(job) => self.fire_close_due(cx, job),
            TimerKey::ReleaseHeld(job) => self.release_held(cx, job),
            TimerKey::FlushAll => self.flush_pending_jobs(cx),
            TimerKey::StallCheck => self.fire_stall_check(cx),
        }
    }

    /// Retries that came due: the failing store's write, heals and holes.
    pub fn on_timeout(&mut self, cx: &mut Ctx<'_>) {
        if self.writes.retry_at().is_some_and(|t| t <= cx.now) {
            self.pump_writes(cx);
        }
        if self.heal_retry_at.is_some_and(|t| t <= cx.now) {
            self.retry_heals(cx);
        }
    }

    /// A REST answer for a heal page or a native fill. Returns the job whose
    /// symbol the exchange refused (`-1121`), for the engine to end.
    pub fn on_rest_done(
        &mut self,
        cx: &mut Ctx<'_>,
        id: RestId,
        purpose: RestPurpose,
        result: Result<String, (Option<u16>, String)>,
    ) -> Option<SeriesIdx> {
        match purpose {
            RestPurpose::Heal { job, page_end } => self.on_heal_response(cx, id, job, page_end, result),
            RestPurpose::Native { series, page_end } => self.on_native_response(cx, id, series, page_end, result),
        }
    }
}
