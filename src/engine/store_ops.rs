//! The core's side of the store. Every read that decides what the core does
//! and every write leaves as an effect (`Output::ReadStore`, `Output::Persist`)
//! and comes back as an input (`StoreRead`, `Persisted`); this module owns the
//! op ids and what each pending op is for, and routes each answer to the
//! code that waits for it. Catch-up pages are the hub's own reads (answers
//! for an op not listed here go to the hub).
//!
//! Never touches a store: the shell carries the effects out, in order.

use super::series::SeriesIdx;
use super::{ClientId, Engine, LogLevel, Output, StoreOp};
use crate::model::SeriesId;
use crate::store::{PersistOutcome, StoreQuery, StoreReadResult, StoreWrite};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// One sequence of op ids for every store effect of one engine (the hub holds
/// a clone). Single-threaded and deterministic: ids count up from 0.
#[derive(Clone, Debug, Default)]
pub struct OpIds(Rc<Cell<u64>>);

impl OpIds {
    pub fn next(&self) -> StoreOp {
        let n = self.0.get();
        self.0.set(n + 1);
        StoreOp(n)
    }
}

/// A subscription waiting for its series' bounds before it can decide whether
/// to hold for a heal (or, for a series no job can ingest, whether the store
/// has history for it at all).
#[derive(Clone, Debug)]
pub(super) struct PendingSub {
    pub client: ClientId,
    pub idx: SeriesIdx,
    pub id: SeriesId,
    pub since: Option<i64>,
    pub supports_batch: bool,
    /// `"fields":"full"` (#15 §4).
    pub full: bool,
    /// `Some(why)` when no job can ingest the series: it is served only if
    /// the store has rows of it, else refused with `why`.
    pub unsupported: Option<String>,
    /// This subscribe added a supervisor reference (a new subscription, not
    /// a re-subscribe): released if it never becomes a subscription.
    pub counted: bool,
}

/// What a pending read is for.
#[derive(Debug)]
pub(super) enum ReadFor {
    /// A job starting: its head, derived heads, restore candles and gap entry.
    JobStart(SeriesIdx),
    Subscribe(PendingSub),
    /// A reader of a derived series: fill its history from its own interval.
    Touch(SeriesId),
}

/// What a pending write is for.
#[derive(Debug)]
pub(super) enum WriteFor {
    /// Entries of the write queue (`job/flush.rs`), by sequence number.
    Flush(Vec<u64>),
    /// A tool's HTTP ingest: publish once stored, then answer `request`.
    Ingest { request: u64, set: super::series::FlushSet },
    /// A write nothing waits for: its failure is counted, never retried.
    Quiet(Quiet),
    /// A retention batch of the rule at this index (`retention.rs`).
    Prune(usize),
}

/// The writes nothing waits for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Quiet {
    /// A late close's final values over what was stored (a failure heals later).
    LateClose,
    /// The gap ledger (written again on its next change).
    GapLedger,
}

impl Quiet {
    fn name(self) -> &'static str {
        match self {
            Quiet::LateClose => "late_close",
            Quiet::GapLedger => "gap_ledger",
        }
    }
}

#[derive(Default)]
pub(super) struct StoreOps {
    pub ids: OpIds,
    reads: BTreeMap<StoreOp, ReadFor>,
    writes: BTreeMap<StoreOp, WriteFor>,
}

impl StoreOps {
    /// Emits a read and remembers what it is for.
    pub fn read(&mut self, query: StoreQuery, why: ReadFor, outputs: &mut VecDeque<Output>) -> StoreOp {
        let op = self.ids.next();
        self.reads.insert(op, why);
        outputs.push_back(Output::ReadStore { op, query });
        op
    }

    /// Emits a write and remembers what it is for.
    pub fn write(&mut self, write: StoreWrite, why: WriteFor, outputs: &mut VecDeque<Output>) -> StoreOp {
        let op = self.ids.next();
        self.writes.insert(op, why);
        outputs.push_back(Output::Persist { op, write });
        op
    }

    /// Reads and writes in flight (a figure; each is bounded by what waits on it).
    pub fn in_flight(&self) -> usize {
        self.reads.len() + self.writes.len()
    }

    /// Pending subscriptions, for the limit check and releases.
    pub fn pending_subs(&self) -> impl Iterator<Item = (&StoreOp, &PendingSub)> {
        self.reads.iter().filter_map(|(op, r)| match r {
            ReadFor::Subscribe(p) => Some((op, p)),
            _ => None,
        })
    }

    pub fn take_read(&mut self, op: StoreOp) -> Option<ReadFor> {
        self.reads.remove(&op)
    }

    pub fn forget_job_start(&mut self, idx: SeriesIdx) {
        self.reads.retain(|_, r| !matches!(r, ReadFor::JobStart(i) if *i == idx));
    }

    pub fn job_starting(&self, idx: SeriesIdx) -> bool {
        self.reads.values().any(|r| matches!(r, ReadFor::JobStart(i) if *i == idx))
    }
}

impl Engine {
    pub(super) fn read_store(&mut self, query: StoreQuery, why: ReadFor) -> StoreOp {
        self.store_ops.read(query, why, &mut self.outputs)
    }

    pub(super) fn write_store(&mut self, write: StoreWrite, why: WriteFor) -> StoreOp {
        self.store_ops.write(write, why, &mut self.outputs)
    }

    pub(super) fn on_store_read(&mut self, op: StoreOp, result: StoreReadResult) {
        let Some(why) = self.store_ops.take_read(op) else {
            let now_s = self.now.as_secs();
            self.hub.on_store_read(op, result, now_s, &self.series, &mut self.outputs, &mut self.counters);
            return;
        };
        if let StoreReadResult::Failed(e) = &result {
            self.counters.store_read_errors += 1;
            self.log(LogLevel::Warn, format!("store_read_failed op={} error={e:?}", op.0));
        }
        match why {
            ReadFor::JobStart(idx) => {
                let history = match result {
                    StoreReadResult::JobStart(h) => h,
                    _ => crate::store::JobHistory::default(),
                };
                self.with_jobs(|jobs, cx| jobs.finish_job_start(cx, idx, history));
            }
            ReadFor::Subscribe(p) => {
                let bounds = match result {
                    StoreReadResult::Bounds { first, head } => Some((first, head)),
                    _ => None,
                };
                self.finish_subscribe(p, bounds);
            }
            ReadFor::Touch(id) => {
                if let StoreReadResult::Bounds { first, .. } = result {
                    self.with_jobs(|jobs, cx| jobs.native_fill(cx, &id, None, first));
                }
            }
        }
    }

    pub(super) fn on_persisted(&mut self, op: StoreOp, result: PersistOutcome) {
        let Some(why) = self.store_ops.writes.remove(&op) else { return };
        match why {
            WriteFor::Flush(seqs) => {
                self.with_jobs(|jobs, cx| jobs.on_flush_persisted(cx, seqs, result));
                self.settle_shutdown();
            }
            WriteFor::Ingest { request, set } => {
                let error = match result {
                    PersistOutcome::Stored { .. } => {
                        self.with_jobs(|jobs, cx| jobs.publish_set(cx, &set, false));
                        None
                    }
                    PersistOutcome::Failed(e) => {
                        self.counters.store_write_errors += 1;
                        let id = set.first().map_or("", |(idx, _)| self.series.get(*idx).id.as_str());
                        Some(format!("ingest_pipeline_failed:store.upsert_many_closed:{id}: {e}"))
                    }
                };
                self.outputs.push_back(Output::IngestDone { request, error });
            }
            WriteFor::Prune(rule) => self.on_pruned(rule, result),
            WriteFor::Quiet(what) => match result {
                PersistOutcome::Stored { .. } => {
                    if what == Quiet::LateClose {
                        self.counters.late_closes_upserted += 1;
                    }
                }
                PersistOutcome::Failed(e) => {
                    self.counters.store_write_errors += 1;
                    let what = what.name();
                    self.log(LogLevel::Warn, format!("store_write_failed what={what} error={e:?} action=none"));
                }
            },
        }
    }
}
