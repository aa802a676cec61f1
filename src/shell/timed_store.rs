//! A `Store` wrapper that measures how long writes take and whether the store
//! is healthy, for `/metrics` and `/health`. Shell-side: it reads the clock,
//! which the core never does; the figures never flow back into the engine.

use crate::model::Candle;
use crate::store::{GapRecord, SeriesBatch, Store, StoreResult};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

#[derive(Debug, Default, Clone)]
pub struct StoreStats {
    pub writes: u64,
    pub write_seconds_sum: f64,
    pub write_seconds_max: f64,
    pub last_write_ok: bool,
    pub failures: u64,
    /// The last failed write's error while writes fail; `None` after a success.
    pub last_error: Option<String>,
}

impl StoreStats {
    /// The store cannot write before any write was tried (e.g. read-only at
    /// start): unhealthy until a write succeeds.
    pub fn mark_failing(&mut self, why: String) {
        self.last_write_ok = false;
        self.last_error = Some(why);
    }
}

pub struct TimedStore<S: Store> {
    inner: S,
    stats: Rc<RefCell<StoreStats>>,
}

impl<S: Store> TimedStore<S> {
    pub fn new(inner: S) -> (TimedStore<S>, Rc<RefCell<StoreStats>>) {
        let stats = Rc::new(RefCell::new(StoreStats { last_write_ok: true, ..StoreStats::default() }));
        (TimedStore { inner, stats: stats.clone() }, stats)
    }
}

impl<S: Store> Store for TimedStore<S> {
    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.write_batches(batches);
        let secs = started.elapsed().as_secs_f64();
        let mut st = self.stats.borrow_mut();
        st.writes += 1;
        st.write_seconds_sum += secs;
        st.write_seconds_max = st.write_seconds_max.max(secs);
        st.last_write_ok = result.is_ok();
        st.last_error = result.as_ref().err().map(ToString::to_string);
        if result.is_err() {
            st.failures += 1;
        }
        result
    }

    fn head_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        self.inner.head_time(series_id)
    }

    fn first_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        self.inner.first_time(series_id)
    }

    fn read_tail(&self, series_id: &str, limit: usize) -> StoreResult<Vec<Candle>> {
        self.inner.read_tail(series_id, limit)
    }

    fn tail_start(&self, series_id: &str, count: usize) -> StoreResult<Option<i64>> {
        self.inner.tail_start(series_id, count)
    }

    fn read_after(&self, series_id: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        self.inner.read_after(series_id, since, limit)
    }

    fn read_range(&self, series_id: &str, start: i64, end: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        self.inner.read_range(series_id, start, end, limit)
    }

    fn count_range(&self, series_id: &str, start: i64, end: i64) -> StoreResult<u64> {
        self.inner.count_range(series_id, start, end)
    }

    fn put_gap(&mut self, gap: &GapRecord) -> StoreResult<()> {
        self.inner.put_gap(gap)
    }

    fn delete_gap(&mut self, series_id: &str) -> StoreResult<()> {
        self.inner.delete_gap(series_id)
    }

    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        self.inner.gaps()
    }

    fn prune_before(&mut self, timeframe: &str, before: i64, limit: usize) -> StoreResult<u64> {
        self.inner.prune_before(timeframe, before, limit)
    }

    fn write_ext(&mut self, rows: &[crate::store::ExtRows]) -> StoreResult<()> {
        self.inner.write_ext(rows)
    }

    fn read_ext(&self, series_id: &str, start: i64, end: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        self.inner.read_ext(series_id, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn last_error_is_kept_while_writes_fail_and_cleared_by_a_success() {
        let mut failing = MemoryStore::new();
        failing.fail_writes(true);
        let (mut store, stats) = TimedStore::new(failing);
        stats.borrow_mut().mark_failing("store is read-only".into());
        assert!(!stats.borrow().last_write_ok);
        let batch = [SeriesBatch {
            series_id: "a:b:C/D:1m".into(),
            candles: vec![Candle { candle_time: 60, open: 1.0, high: 1.0, low: 1.0, close: 1.0, volume: 1.0 }],
        }];
        let e = store.write_batches(&batch).unwrap_err();
        assert_eq!(stats.borrow().last_error.as_deref(), Some(e.to_string().as_str()));
        assert_eq!((stats.borrow().failures, stats.borrow().last_write_ok), (1, false));
        store.inner.fail_writes(false);
        store.write_batches(&batch).unwrap();
        assert_eq!((stats.borrow().last_write_ok, stats.borrow().last_error.clone()), (true, None));
    }
}
