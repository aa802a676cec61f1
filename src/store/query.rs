//! Store reads as values: the queries the core asks the shell to run
//! ([`StoreQuery`], carried by `Output::ReadStore`) and their answers
//! ([`StoreReadResult`], fed back by `Input::StoreRead` and journaled like any
//! input). [`StoreQuery::run`] is the one place a query meets a [`Store`]:
//! the shell, the replayer and test drivers all answer through it.
//!
//! Owns no state; never decides anything about what an answer means.

use super::Store;
use crate::model::Candle;
use serde::{Deserialize, Serialize};

/// One read the core needs answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreQuery {
    /// The first `limit` candles with `candle_time > after`, ascending.
    After { series_id: String, after: i64, limit: usize },
    /// The open time of the oldest of the newest `count` candles (where a
    /// tail of `count` candles starts); none when the series has no rows.
    TailStart { series_id: String, count: usize },
}

/// The answer to a [`StoreQuery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreReadResult {
    Candles(Vec<Candle>),
    TailStart(Option<i64>),
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
            StoreQuery::TailStart { series_id, count } => {
                store.tail_start(series_id, *count).map(StoreReadResult::TailStart)
            }
        };
        result.unwrap_or_else(|e| StoreReadResult::Failed(e.to_string()))
    }
}
