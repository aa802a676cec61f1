//! Store reads as values: the queries the core asks the shell to run
//! ([`StoreQuery`], carried by `Output::ReadStore`) and their answers
//! ([`StoreReadResult`], fed back by `Input::StoreRead` and journaled like any
//! input). [`StoreQuery::run`] is the one place a query meets a [`Store`]:
//! the shell, the replayer and test drivers all answer through it.
//!
//! Owns no state; never decides anything about what an answer means.

use super::{GapRecord, Store};
use crate::kline_ext::{FullCandle, KlineExt};
use crate::model::{Candle, SeriesId};
use serde::{Deserialize, Serialize};

/// One read the core needs answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreQuery {
    /// The first `limit` candles with `candle_time > after`, ascending.
    After { series_id: String, after: i64, limit: usize },
    /// [`StoreQuery::After`] with each candle's whole-kline fields (#15 §4:
    /// the catch-up of a `fields=full` subscription), answered by
    /// [`StoreReadResult::FullCandles`].
    AfterFull { series_id: String, after: i64, limit: usize },
    /// The open time of the oldest of the newest `count` candles (where a
    /// tail of `count` candles starts); none when the series has no rows.
    TailStart { series_id: String, count: usize },
    /// The oldest and newest stored open times of a series.
    Bounds { series_id: String },
    /// What a job needs to start: its head, each derived series' head, the
    /// base candles a restart must refold (from where the bucket of the
    /// coarsest derived series that the head falls in opens — see
    /// `model::restore_start`), and its gap-ledger entry.
    JobStart { series_id: String, derived: Vec<String> },
}

/// The answer to [`StoreQuery::JobStart`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    pub head: Option<i64>,
    /// One per `derived` name, in order.
    pub derived_heads: Vec<Option<i64>>,
    /// Ascending; empty when there is no head or no derived series.
    pub restore: Vec<Candle>,
    pub gap: Option<GapRecord>,
}

/// The answer to a [`StoreQuery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreReadResult {
    Candles(Vec<Candle>),
    /// Ascending; a candle the store has no extra fields for has them `null`.
    FullCandles(Vec<FullCandle>),
    TailStart(Option<i64>),
    Bounds { first: Option<i64>, head: Option<i64> },
    JobStart(JobHistory),
    /// The read failed: the store's error, as a user reads it.
    Failed(String),
}

impl StoreQuery {
    /// Runs the query against `store`.
    pub fn run(&self, store: &dyn Store) -> StoreReadResult {
        let result = match self {
            StoreQuery::After { series_id, after, limit } => {
                store.read_after(series_id, *after, *limit).map(StoreReadResult::Candles)
            }
            StoreQuery::AfterFull { series_id, after, limit } => store
                .read_after(series_id, *after, *limit)
                .and_then(|candles| Ok(StoreReadResult::FullCandles(with_ext(store, series_id, candles)?))),
            StoreQuery::TailStart { series_id, count } => {
                store.tail_start(series_id, *count).map(StoreReadResult::TailStart)
            }
            StoreQuery::Bounds { series_id } => store.first_time(series_id).and_then(|first| {
                Ok(StoreReadResult::Bounds { first, head: store.head_time(series_id)? })
            }),
            StoreQuery::JobStart { series_id, derived } => job_history(store, series_id, derived).map(StoreReadResult::JobStart),
        };
        result.unwrap_or_else(|e| StoreReadResult::Failed(e.to_string()))
    }
}

/// `candles` (ascending) with the extra fields the store holds for them.
pub fn with_ext(store: &dyn Store, series_id: &str, candles: Vec<Candle>) -> super::StoreResult<Vec<FullCandle>> {
    let (Some(first), Some(last)) = (candles.first(), candles.last()) else { return Ok(Vec::new()) };
    let ext = store.read_ext(series_id, first.candle_time, last.candle_time)?;
    Ok(join_ext(candles, ext))
}

/// Each candle with its row of `ext` (both ascending by time), if any.
pub fn join_ext(candles: Vec<Candle>, ext: Vec<(i64, KlineExt)>) -> Vec<FullCandle> {
    let ext: std::collections::BTreeMap<i64, KlineExt> = ext.into_iter().collect();
    candles.into_iter().map(|c| FullCandle::new(c, ext.get(&c.candle_time).copied())).collect()
}

fn job_history(store: &dyn Store, series_id: &str, derived: &[String]) -> super::StoreResult<JobHistory> {
    let head = store.head_time(series_id)?;
    let mut history = JobHistory { head, ..JobHistory::default() };
    for name in derived {
        history.derived_heads.push(store.head_time(name)?);
    }
    if let (Some(h), Ok(base)) = (head, SeriesId::parse(series_id)) {
        let targets: Vec<_> = derived.iter().filter_map(|d| SeriesId::parse(d).ok()).map(|d| d.timeframe()).collect();
        if !targets.is_empty() {
            let start = crate::model::restore_start(base.timeframe(), &targets, h);
            history.restore = store.read_range(series_id, start, h, usize::MAX)?;
        }
    }
    history.gap = store.gaps()?.into_iter().find(|g| g.series_id == series_id);
    Ok(history)
}
