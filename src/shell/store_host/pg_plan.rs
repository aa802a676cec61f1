//! The core's store effects as PostgreSQL requests: [`start`] turns one
//! effect into its first request (or its answer, when none is needed) and
//! [`next`] turns each answer into the next request or the effect's answer
//! (an `Input` for the core). Every effect is ONE request except a job's
//! start with derived series, whose restore range depends on the head it
//! reads first (two requests).
//!
//! A write is one request whose statements share one Sync, so the candles
//! (upserts, and insert-if-absent batches that report what they inserted)
//! and the ledger changes commit together or not at all.
//!
//! Owns the mapping effect ↔ requests and answers ↔ `Input`. Never sends,
//! never reads a clock, never decides what an answer means to the core.

use crate::engine::{Input, Output, StoreOp};
use crate::model::SeriesId;
use crate::store::postgres::{ops, Answer, Request, Schema};
use crate::store::{
    JobHistory, KeptRows, LedgerChange, PersistOutcome, SeriesBatch, StoreError, StoreQuery, StoreReadResult,
    StoreWrite,
};

/// What one effect waits for, between its request and its answer.
#[derive(Debug)]
pub enum Step {
    After { op: StoreOp },
    /// A full page's candles were asked for; their extra fields are next.
    AfterFull { op: StoreOp, series_id: String },
    /// A full page's candles, waiting for their extra fields.
    AfterFullExt { op: StoreOp, candles: Vec<crate::model::Candle> },
    TailStart { op: StoreOp },
    Bounds { op: StoreOp },
    /// Heads of the base and each derived series, and the gap ledger.
    JobHeads { op: StoreOp, series_id: String, derived: Vec<String> },
    /// The candles a restart refolds.
    JobRestore { op: StoreOp, history: JobHistory },
    /// `upsert` says whether statement 0 is the upsert; `keep` lists, per
    /// insert-if-absent statement (in order, after it), its batch index and
    /// the times it carried; `ledger` statements follow, then the retention
    /// `prune` when there is one (it returns one row per candle deleted).
    /// `ext`: the whole kline's fields follow the insert-if-absent statements.
    Write { op: StoreOp, upsert: bool, keep: Vec<(usize, Vec<i64>)>, ext: bool, ledger: usize, prune: bool },
}

impl Step {
    /// True when this step may need another request after its answer: the
    /// effects behind it wait (so the server runs everything in the order
    /// the core emitted it).
    pub fn is_barrier(&self) -> bool {
        matches!(self, Step::JobHeads { .. } | Step::AfterFull { .. })
    }

    /// For a write: how many statements (result sets) its request carries.
    pub fn write_statements(&self) -> Option<usize> {
        match self {
            Step::Write { upsert, keep, ext, ledger, prune, .. } => {
                Some(usize::from(*upsert) + keep.len() + usize::from(*ext) + ledger + usize::from(*prune))
            }
            _ => None,
        }
    }
}

pub enum Next {
    Send(Request, Step),
    Answer(Input),
}

fn read_failed(op: StoreOp, e: &StoreError) -> Next {
    Next::Answer(Input::StoreRead { op, result: StoreReadResult::Failed(e.to_string()) })
}

fn write_failed(op: StoreOp, e: &StoreError) -> Next {
    Next::Answer(Input::Persisted { op, result: PersistOutcome::Failed(e.to_string()) })
}

/// The first request of `effect`; `None` when it is not a store effect.
pub fn start(s: &Schema, effect: &Output) -> Option<Next> {
    Some(match effect {
        Output::ReadStore { op, query } => read(s, *op, query),
        Output::Persist { op, write } => persist(s, *op, write),
        _ => return None,
    })
}

fn read(s: &Schema, op: StoreOp, query: &StoreQuery) -> Next {
    match query {
        StoreQuery::After { series_id, after, limit } => {
            Next::Send(ops::read_after(s, series_id, *after, *limit), Step::After { op })
        }
        StoreQuery::AfterFull { series_id, after, limit } => Next::Send(
            ops::read_after(s, series_id, *after, *limit),
            Step::AfterFull { op, series_id: series_id.clone() },
        ),
        StoreQuery::TailStart { series_id, count } => {
            Next::Send(ops::tail_start(s, series_id, *count), Step::TailStart { op })
        }
        StoreQuery::Bounds { series_id } => Next::Send(
            ops::together(vec![ops::first_time(s, series_id), ops::head_time(s, series_id)]),
            Step::Bounds { op },
        ),
        StoreQuery::JobStart { series_id, derived } => {
            let mut reqs = vec![ops::head_time(s, series_id)];
            reqs.extend(derived.iter().map(|d| ops::head_time(s, d)));
            reqs.push(ops::gaps(s));
            let step = Step::JobHeads { op, series_id: series_id.clone(), derived: derived.clone() };
            Next::Send(ops::together(reqs), step)
        }
    }
}

fn persist(s: &Schema, op: StoreOp, write: &StoreWrite) -> Next {
    let keep_set: std::collections::BTreeSet<usize> = write.keep_existing.iter().copied().collect();
    let upserts: Vec<SeriesBatch> =
        write.batches.iter().enumerate().filter(|(i, _)| !keep_set.contains(i)).map(|(_, b)| b.clone()).collect();
    let mut reqs = Vec::new();
    let upsert = match ops::write_batches(s, &upserts) {
        Ok(Some(r)) => {
            reqs.push(r);
            true
        }
        Ok(None) => false,
        Err(e) => return write_failed(op, &e),
    };
    let mut keep = Vec::new();
    for &i in &keep_set {
        let Some(batch) = write.batches.get(i) else { continue };
        match ops::insert_absent(s, batch) {
            Ok(Some(stmt)) => {
                reqs.push(Request::Extended(vec![stmt]));
                keep.push((i, batch.candles.iter().map(|c| c.candle_time).collect()));
            }
            Ok(None) => {}
            Err(e) => return write_failed(op, &e),
        }
    }
    let ext = match ops::write_ext(s, &write.ext) {
        Some(stmt) => {
            reqs.push(Request::Extended(vec![stmt]));
            true
        }
        None => false,
    };
    for change in &write.ledger {
        reqs.push(match change {
            LedgerChange::Put(gap) => ops::put_gap(s, gap),
            LedgerChange::Delete(series_id) => ops::delete_gap(s, series_id),
        });
    }
    if let Some(p) = &write.prune {
        reqs.push(ops::prune(s, p));
    }
    if reqs.is_empty() {
        return Next::Answer(Input::Persisted { op, result: PersistOutcome::Stored { kept: vec![], pruned: 0 } });
    }
    let step = Step::Write { op, upsert, keep, ext, ledger: write.ledger.len(), prune: write.prune.is_some() };
    Next::Send(ops::together(reqs), step)
}

/// The answer to the request `step` waited for: the next request or the
/// effect's answer.
pub fn next(s: &Schema, step: Step, answer: Answer) -> Next {
    match step {
        Step::After { op } => match ops::decode_candles("read_after", answer, false) {
            Ok(c) => Next::Answer(Input::StoreRead { op, result: StoreReadResult::Candles(c) }),
            Err(e) => read_failed(op, &e),
        },
        Step::AfterFull { op, series_id } => match ops::decode_candles("read_after", answer, false) {
            Ok(candles) => match (candles.first(), candles.last()) {
                (Some(f), Some(l)) => {
                    let req = ops::read_ext(s, &series_id, f.candle_time, l.candle_time);
                    Next::Send(req, Step::AfterFullExt { op, candles })
                }
                _ => Next::Answer(Input::StoreRead { op, result: StoreReadResult::FullCandles(Vec::new()) }),
            },
            Err(e) => read_failed(op, &e),
        },
        Step::AfterFullExt { op, candles } => match ops::decode_ext(answer) {
            Ok(ext) => {
                let result = StoreReadResult::FullCandles(crate::store::query::join_ext(candles, ext));
                Next::Answer(Input::StoreRead { op, result })
            }
            Err(e) => read_failed(op, &e),
        },
        Step::TailStart { op } => match ops::decode_opt_time("tail_start", answer) {
            Ok(t) => Next::Answer(Input::StoreRead { op, result: StoreReadResult::TailStart(t) }),
            Err(e) => read_failed(op, &e),
        },
        Step::Bounds { op } => {
            let mut parts = ops::split(answer, 2).into_iter();
            let first = ops::decode_opt_time("first_time", parts.next().unwrap_or(Ok(vec![])));
            let head = ops::decode_opt_time("head_time", parts.next().unwrap_or(Ok(vec![])));
            match (first, head) {
                (Ok(first), Ok(head)) => Next::Answer(Input::StoreRead { op, result: StoreReadResult::Bounds { first, head } }),
                (Err(e), _) | (_, Err(e)) => read_failed(op, &e),
            }
        }
        Step::JobHeads { op, series_id, derived } => job_heads(s, op, &series_id, &derived, answer),
        Step::JobRestore { op, mut history } => match ops::decode_candles("read_range", answer, false) {
            Ok(c) => {
                history.restore = c;
                Next::Answer(Input::StoreRead { op, result: StoreReadResult::JobStart(history) })
            }
            Err(e) => read_failed(op, &e),
        },
        Step::Write { op, upsert, keep, ext, ledger, prune } => {
            written(op, upsert, keep, usize::from(ext) + ledger, prune, answer)
        }
    }
}

fn job_heads(s: &Schema, op: StoreOp, series_id: &str, derived: &[String], answer: Answer) -> Next {
    let mut parts = ops::split(answer, derived.len() + 2).into_iter();
    let mut part = || parts.next().unwrap_or(Ok(vec![]));
    let head = match ops::decode_opt_time("head_time", part()) {
        Ok(h) => h,
        Err(e) => return read_failed(op, &e),
    };
    let mut history = JobHistory { head, ..JobHistory::default() };
    for _ in derived {
        match ops::decode_opt_time("head_time", part()) {
            Ok(h) => history.derived_heads.push(h),
            Err(e) => return read_failed(op, &e),
        }
    }
    match ops::decode_gaps(part()) {
        Ok(gaps) => history.gap = gaps.into_iter().find(|g| g.series_id == series_id),
        Err(e) => return read_failed(op, &e),
    }
    if let (Some(h), Ok(base)) = (head, SeriesId::parse(series_id)) {
        let targets: Vec<_> = derived.iter().filter_map(|d| SeriesId::parse(d).ok()).map(|d| d.timeframe()).collect();
        if !targets.is_empty() {
            let start = crate::model::restore_start(base.timeframe(), &targets, h);
            let req = ops::read_range(s, series_id, start, h, usize::MAX);
            return Next::Send(req, Step::JobRestore { op, history });
        }
    }
    Next::Answer(Input::StoreRead { op, result: StoreReadResult::JobStart(history) })
}

fn written(op: StoreOp, upsert: bool, keep: Vec<(usize, Vec<i64>)>, ledger: usize, prune: bool, answer: Answer) -> Next {
    let parts = usize::from(upsert) + keep.len() + ledger + usize::from(prune);
    let sets = match answer {
        Ok(sets) => sets,
        Err(e) => return write_failed(op, &StoreError { op: "write_batches", message: format!("postgres: {e}") }),
    };
    if sets.len() < parts {
        let e = StoreError { op: "write_batches", message: format!("postgres sent {} results for {parts} statements", sets.len()) };
        return write_failed(op, &e);
    }
    let mut kept = Vec::new();
    for (set, (batch, times)) in sets.iter().skip(usize::from(upsert)).zip(keep) {
        let inserted: std::collections::BTreeSet<i64> = set
            .rows
            .iter()
            .filter_map(|r| r.first().and_then(|v| crate::store::postgres::conn::col::i64(v).ok().flatten()))
            .collect();
        let times: Vec<i64> = times.into_iter().filter(|t| !inserted.contains(t)).collect();
        if !times.is_empty() {
            kept.push(KeptRows { batch, times });
        }
    }
    let pruned = if prune { sets.get(parts - 1).map_or(0, |set| set.rows.len() as u64) } else { 0 };
    Next::Answer(Input::Persisted { op, result: PersistOutcome::Stored { kept, pruned } })
}
