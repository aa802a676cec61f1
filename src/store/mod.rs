//! The candle store: a small synchronous trait the core persists through, with a
//! durable SQLite implementation ([`sqlite`]) and an in-memory one for tests
//! ([`memory`]). Rows are keyed by (series_id, candle_time); the last write wins.
//! Both implementations have identical semantics; a shared test suite pins them.

use crate::model::Candle;
use std::fmt;

pub mod memory;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// The closed candles of one series inside a flush.
#[derive(Clone, Debug, PartialEq)]
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

    /// Rows with `start <= candle_time <= end`, ascending, at most `limit`.
    fn read_range(&self, series_id: &str, start: i64, end: i64, limit: usize)
        -> StoreResult<Vec<Candle>>;

    /// Number of rows with `start <= candle_time <= end`.
    fn count_range(&self, series_id: &str, start: i64, end: i64) -> StoreResult<u64>;
}
