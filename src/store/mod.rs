//! The candle store: a small synchronous trait the SHELL implements and owns,
//! with a durable SQLite implementation ([`sqlite`]) and an in-memory one for
//! tests ([`memory`]). The core never holds a store: it asks for reads and
//! writes as values ([`query`], [`write`]) and gets their answers as inputs. Rows are keyed by (series_id, candle_time); the last write wins.
//! Both implementations have identical semantics; a shared test suite pins them.

use crate::model::Candle;
use std::fmt;

pub mod memory;
pub mod postgres;
pub mod query;
pub mod sqlite;
mod sqlite_ext;
mod sqlite_prune;
pub mod write;

pub use memory::MemoryStore;
pub use query::{JobHistory, StoreQuery, StoreReadResult};
pub use write::{ExtRows, KeptRows, LedgerChange, PersistOutcome, Prune, StoreWrite};
pub use sqlite::SqliteStore;

/// The closed candles of one series inside a flush.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeriesBatch {
    pub series_id: String,
    /// Ascending by `candle_time`, no duplicate times.
    pub candles: Vec<Candle>,
}

/// A store operation failed. The caller keeps its data and retries later.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreError {
    pub op: &'static str,
    pub message: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {} failed: {}", self.op, self.message)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// The gap ledger: candles (opening in `[from, to]`) that healing could not
/// fill for a series, kept across restarts and retried until healed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GapRecord {
    pub series_id: String,
    pub from: i64,
    pub to: i64,
    pub reason: String,
    pub attempts: u32,
    /// Unix seconds of the last attempt.
    pub updated_at: i64,
}

pub trait Store {
    /// Upsert every batch in ONE transaction: either all rows are written or none.
    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()>;

    /// `MAX(candle_time)` of the series, `None` when it has no rows.
    fn head_time(&self, series_id: &str) -> StoreResult<Option<i64>>;

    /// `MIN(candle_time)` of the series, `None` when it has no rows.
    fn first_time(&self, series_id: &str) -> StoreResult<Option<i64>>;

    /// The last `limit` rows, ascending.
    fn read_tail(&self, series_id: &str, limit: usize) -> StoreResult<Vec<Candle>>;

    /// The first `limit` rows with `candle_time > since` (exclusive), ascending.
    fn read_after(&self, series_id: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>>;

    /// The `candle_time` of the first of the last `count` rows (where
    /// `read_tail(count)` starts), `None` when the series has no rows.
    fn tail_start(&self, series_id: &str, count: usize) -> StoreResult<Option<i64>> {
        Ok(self.read_tail(series_id, count)?.first().map(|c| c.candle_time))
    }

    /// Rows with `start <= candle_time <= end`, ascending, at most `limit`.
    fn read_range(&self, series_id: &str, start: i64, end: i64, limit: usize)
        -> StoreResult<Vec<Candle>>;

    /// Number of rows with `start <= candle_time <= end`.
    fn count_range(&self, series_id: &str, start: i64, end: i64) -> StoreResult<u64>;

    /// Records (or replaces) the series' unhealed range in the gap ledger.
    fn put_gap(&mut self, gap: &GapRecord) -> StoreResult<()>;

    /// Removes the series' entry from the gap ledger (healed).
    fn delete_gap(&mut self, series_id: &str) -> StoreResult<()>;

    /// Every ledger entry, by series id.
    fn gaps(&self) -> StoreResult<Vec<GapRecord>>;

    /// Retention: deletes at most `limit` candles with `candle_time < before`
    /// of the series whose id ends in `:<timeframe>`, oldest first within
    /// each series (series in id order); returns how many went. A store
    /// without retention refuses.
    fn prune_before(&mut self, timeframe: &str, before: i64, limit: usize) -> StoreResult<u64> {
        let _ = (timeframe, before, limit);
        Err(StoreError { op: "prune", message: "this store does not prune".into() })
    }

    /// The whole kline's extra fields of stored candles (#15 §4); rows the
    /// store does not hold are skipped. A store without them ignores this.
    fn write_ext(&mut self, rows: &[ExtRows]) -> StoreResult<()> {
        let _ = rows;
        Ok(())
    }

    /// The extra fields known for candles with `start <= candle_time <= end`,
    /// ascending (none from a store without them).
    fn read_ext(&self, series_id: &str, start: i64, end: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        let _ = (series_id, start, end);
        Ok(Vec::new())
    }
}

/// Whether `series_id` is a series of `timeframe` (`…:<timeframe>`).
pub fn of_timeframe(series_id: &str, timeframe: &str) -> bool {
    series_id.rsplit_once(':').is_some_and(|(_, tf)| tf == timeframe)
}
