//! In-memory candle store for tests and replays: the same semantics as the
//! SQLite store (upsert by `(series_id, candle_time)`, last write wins, all
//! batches of a write applied or none), held in ordered maps so that every
//! read is deterministic.
//!
//! It owns its maps and a fault-injection switch. It must never do I/O and
//! never diverge from [`super::SqliteStore`]: `tests/store_conformance.rs`
//! runs one suite against both.

use super::{GapRecord, SeriesBatch, Store, StoreError, StoreResult};
use crate::model::Candle;
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    /// series_id → candle_time → candle.
    series: BTreeMap<String, BTreeMap<i64, Candle>>,
    /// When set, `write_batches` fails without changing anything.
    fail_writes: bool,
    /// The gap ledger, by series id.
    gaps: BTreeMap<String, GapRecord>,
    /// The whole kline's extra fields, beside `series` (#15 §4).
    ext: BTreeMap<String, BTreeMap<i64, crate::kline_ext::KlineExt>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Fault injection: while `on`, every `write_batches` returns a
    /// [`StoreError`] and writes nothing, so tests can prove that a failed
    /// flush keeps its batch for retry.
    pub fn fail_writes(&mut self, on: bool) {
        self.fail_writes = on;
    }

    fn rows(&self, series_id: &str) -> Option<&BTreeMap<i64, Candle>> {
        self.series.get(series_id)
    }

    /// Rows with `start <= candle_time <= end`; empty when `start > end`
    /// (a `BTreeMap` range would panic on an inverted range).
    fn inclusive_range<'a>(
        &'a self,
        series_id: &str,
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = &'a Candle> + 'a {
        let rows = self.rows(series_id).filter(|_| start <= end);
        rows.into_iter().flat_map(move |r| r.range(start..=end).map(|(_, c)| c))
    }
}

/// The first candle that neither store can hold faithfully, as an error.
///
/// SQLite binds NaN as NULL, which the `NOT NULL` columns refuse, so a NaN
/// would fail the SQLite store mid-transaction but succeed here. Both stores
/// therefore refuse every non-finite value up front, before writing anything.
pub(crate) fn reject_non_finite(batches: &[SeriesBatch]) -> StoreResult<()> {
    for batch in batches {
        for c in &batch.candles {
            let values = [c.open, c.high, c.low, c.close, c.volume];
            if values.iter().any(|v| !v.is_finite()) {
                return Err(StoreError {
                    op: "write_batches",
                    message: format!(
                        "series {} candle_time {}: non-finite OHLCV value (NaN or infinity); \
                         nothing was written — drop such candles before persisting \
                         (see Candle::sanity_error)",
                        batch.series_id, c.candle_time
                    ),
                });
            }
        }
    }
    Ok(())
}

impl Store for MemoryStore {
    fn write_ext(&mut self, rows: &[super::ExtRows]) -> StoreResult<()> {
        if self.fail_writes {
            return Err(StoreError { op: "write_ext", message: "injected failure (MemoryStore::fail_writes is on)".into() });
        }
        for r in rows {
            let Some(stored) = self.series.get(&r.series_id) else { continue };
            let ext = self.ext.entry(r.series_id.clone()).or_default();
            for (t, e) in &r.rows {
                if stored.contains_key(t) {
                    ext.insert(*t, *e);
                }
            }
        }
        Ok(())
    }

    fn read_ext(&self, series_id: &str, start: i64, end: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        let Some(ext) = self.ext.get(series_id).filter(|_| start <= end) else { return Ok(Vec::new()) };
        Ok(ext.range(start..=end).map(|(t, e)| (*t, *e)).collect())
    }

    fn prune_before(&mut self, timeframe: &str, before: i64, limit: usize) -> StoreResult<u64> {
        if self.fail_writes {
            return Err(StoreError { op: "prune", message: "injected failure (MemoryStore::fail_writes is on)".into() });
        }
        let mut left = limit;
        for (id, rows) in self.series.iter_mut() {
            if left == 0 {
                break;
            }
            if !super::of_timeframe(id, timeframe) {
                continue;
            }
            let old: Vec<i64> = rows.range(..before).map(|(t, _)| *t).take(left).collect();
            left -= old.len();
            let mut ext = self.ext.get_mut(id);
            for t in old {
                rows.remove(&t);
                if let Some(e) = ext.as_mut() {
                    e.remove(&t);
                }
            }
        }
        self.series.retain(|_, rows| !rows.is_empty());
        Ok((limit - left) as u64)
    }

    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        if self.fail_writes {
            return Err(StoreError {
                op: "write_batches",
                message: "injected failure (MemoryStore::fail_writes is on); nothing was written"
                    .to_string(),
            });
        }
        reject_non_finite(batches)?;
        // Nothing below can fail, so applying in place keeps "all or nothing".
        for batch in batches {
            if batch.candles.is_empty() {
                continue;
            }
            let rows = self.series.entry(batch.series_id.clone()).or_default();
            for c in &batch.candles {
                rows.insert(c.candle_time, *c);
            }
        }
        Ok(())
    }

    fn head_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        Ok(self.rows(series_id).and_then(|r| r.keys().next_back().copied()))
    }

    fn first_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        Ok(self.rows(series_id).and_then(|r| r.keys().next().copied()))
    }

    fn read_tail(&self, series_id: &str, limit: usize) -> StoreResult<Vec<Candle>> {
        let Some(rows) = self.rows(series_id) else {
            return Ok(Vec::new());
        };
        let mut tail: Vec<Candle> = rows.values().rev().take(limit).copied().collect();
        tail.reverse();
        Ok(tail)
    }

    fn tail_start(&self, series_id: &str, count: usize) -> StoreResult<Option<i64>> {
        let Some(rows) = self.rows(series_id) else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(None);
        }
        // Fewer rows than asked: the tail is all of them.
        Ok(rows.keys().nth_back(count - 1).or_else(|| rows.keys().next()).copied())
    }

    fn read_after(&self, series_id: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        let Some(rows) = self.rows(series_id) else {
            return Ok(Vec::new());
        };
        let after = rows.range((Bound::Excluded(since), Bound::Unbounded));
        Ok(after.take(limit).map(|(_, c)| *c).collect())
    }

    fn read_range(
        &self,
        series_id: &str,
        start: i64,
        end: i64,
        limit: usize,
    ) -> StoreResult<Vec<Candle>> {
        Ok(self.inclusive_range(series_id, start, end).take(limit).copied().collect())
    }

    fn count_range(&self, series_id: &str, start: i64, end: i64) -> StoreResult<u64> {
        Ok(self.inclusive_range(series_id, start, end).count() as u64)
    }

    fn put_gap(&mut self, gap: &GapRecord) -> StoreResult<()> {
        self.gaps.insert(gap.series_id.clone(), gap.clone());
        Ok(())
    }

    fn delete_gap(&mut self, series_id: &str) -> StoreResult<()> {
        self.gaps.remove(series_id);
        Ok(())
    }

    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        Ok(self.gaps.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candle(t: i64, close: f64) -> Candle {
        Candle { candle_time: t, open: close, high: close, low: close, close, volume: 1.0 }
    }

    fn batch(sid: &str, candles: Vec<Candle>) -> SeriesBatch {
        SeriesBatch { series_id: sid.to_string(), candles }
    }

    #[test]
    fn fail_writes_changes_nothing_and_can_be_switched_off() {
        let mut s = MemoryStore::new();
        s.write_batches(&[batch("a", vec![candle(60, 1.0)])]).unwrap();
        s.fail_writes(true);
        let err = s.write_batches(&[batch("a", vec![candle(60, 2.0), candle(120, 2.0)])]);
        assert_eq!(err.unwrap_err().op, "write_batches");
        assert_eq!(s.read_tail("a", 10).unwrap(), vec![candle(60, 1.0)]);
        s.fail_writes(false);
        s.write_batches(&[batch("a", vec![candle(60, 2.0), candle(120, 2.0)])]).unwrap();
        assert_eq!(s.read_tail("a", 10).unwrap(), vec![candle(60, 2.0), candle(120, 2.0)]);
    }

    #[test]
    fn inverted_range_is_empty_not_a_panic() {
        let mut s = MemoryStore::new();
        s.write_batches(&[batch("a", vec![candle(60, 1.0)])]).unwrap();
        assert!(s.read_range("a", 120, 60, 10).unwrap().is_empty());
        assert_eq!(s.count_range("a", 120, 60).unwrap(), 0);
    }

    #[test]
    fn non_finite_value_is_refused_before_any_write() {
        let mut s = MemoryStore::new();
        let bad = Candle { volume: f64::NAN, ..candle(120, 1.0) };
        let err = s.write_batches(&[batch("a", vec![candle(60, 1.0)]), batch("b", vec![bad])]);
        assert!(err.unwrap_err().message.contains("candle_time 120"));
        assert_eq!(s.head_time("a").unwrap(), None);
    }
}
