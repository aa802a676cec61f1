//! Store writes as values: what the core asks the shell to persist
//! ([`StoreWrite`], carried by `Output::Persist`) and the answer
//! ([`PersistOutcome`], fed back by `Input::Persisted` and journaled like any
//! input). [`StoreWrite::run`] is the one place a write meets a [`Store`]: the
//! shell, the replayer and test drivers all carry writes out through it.
//!
//! Owns no state; never decides what to publish (the core does, from the outcome).

use super::{GapRecord, SeriesBatch, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A change to the gap ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerChange {
    Put(GapRecord),
    Delete(String),
}

/// One write the core needs carried out: candle batches in ONE transaction
/// (all rows or none), then any ledger changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreWrite {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<SeriesBatch>,
    /// Indexes into `batches` written insert-if-absent: a row the store already
    /// holds stays as it is (a derived bucket, once closed, is never replaced).
    /// Every other batch upserts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_existing: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger: Vec<LedgerChange>,
    /// Retention: delete at most `limit` old candles (after the rest of the
    /// write, in the same transaction where the store has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<Prune>,
    /// The whole kline's extra fields of candles in `batches` (#15 §4),
    /// written with them; a store without the columns ignores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext: Vec<ExtRows>,
}

/// The extra fields of some candles of one series, by open time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtRows {
    pub series_id: String,
    pub rows: Vec<(i64, crate::kline_ext::KlineExt)>,
}

/// One retention batch: at most `limit` candles of the series of
/// `timeframe` (ids ending in `:<timeframe>`) that open before `before`
/// (Unix seconds), oldest first within each series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    pub timeframe: String,
    pub before: i64,
    pub limit: usize,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Rows of one insert-if-absent batch that were not written because the
/// store already held them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRows {
    pub batch: usize,
    pub times: Vec<i64>,
}

/// The answer to a [`StoreWrite`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistOutcome {
    /// Everything is durable; `kept` lists the rows an insert-if-absent batch
    /// left alone (those must not be published again).
    Stored {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kept: Vec<KeptRows>,
        /// Candles deleted by the write's `prune`.
        #[serde(default, skip_serializing_if = "is_zero")]
        pruned: u64,
    },
    /// Nothing was written: the store's error, as a user reads it.
    Failed(String),
}

impl StoreWrite {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.ledger.is_empty() && self.prune.is_none()
    }

    /// Candles carried (for slicing and figures).
    pub fn candles(&self) -> usize {
        self.batches.iter().map(|b| b.candles.len()).sum()
    }

    /// Carries the write out against `store`. Insert-if-absent batches are
    /// filtered by a read of their range first (the store has one writer:
    /// the shell's loop, so nothing lands between the read and the write).
    pub fn run(&self, store: &mut dyn Store) -> PersistOutcome {
        let mut kept = Vec::new();
        let filtered: Vec<SeriesBatch>;
        let batches: &[SeriesBatch] = if self.keep_existing.is_empty() {
            &self.batches
        } else {
            let mut out = self.batches.clone();
            for &i in &self.keep_existing {
                let Some(batch) = out.get_mut(i) else { continue };
                let (Some(lo), Some(hi)) = (batch.candles.first(), batch.candles.last()) else { continue };
                let (lo, hi) = (lo.candle_time.min(hi.candle_time), lo.candle_time.max(hi.candle_time));
                let stored = match store.read_range(&batch.series_id, lo, hi, usize::MAX) {
                    Ok(rows) => rows,
                    Err(e) => return PersistOutcome::Failed(e.to_string()),
                };
                let have: BTreeSet<i64> = stored.iter().map(|c| c.candle_time).collect();
                let times: Vec<i64> =
                    batch.candles.iter().map(|c| c.candle_time).filter(|t| have.contains(t)).collect();
                if !times.is_empty() {
                    batch.candles.retain(|c| !have.contains(&c.candle_time));
                    kept.push(KeptRows { batch: i, times });
                }
            }
            out.retain(|b| !b.candles.is_empty());
            filtered = out;
            &filtered
        };
        if !batches.is_empty() {
            if let Err(e) = store.write_batches(batches) {
                return PersistOutcome::Failed(e.to_string());
            }
        }
        if !self.ext.is_empty() {
            if let Err(e) = store.write_ext(&self.ext) {
                return PersistOutcome::Failed(e.to_string());
            }
        }
        for change in &self.ledger {
            let result = match change {
                LedgerChange::Put(gap) => store.put_gap(gap),
                LedgerChange::Delete(series_id) => store.delete_gap(series_id),
            };
            if let Err(e) = result {
                return PersistOutcome::Failed(e.to_string());
            }
        }
        let pruned = match &self.prune {
            Some(p) => match store.prune_before(&p.timeframe, p.before, p.limit) {
                Ok(n) => n,
                Err(e) => return PersistOutcome::Failed(e.to_string()),
            },
            None => 0,
        };
        PersistOutcome::Stored { kept, pruned }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Candle;
    use crate::store::MemoryStore;

    fn c(t: i64, close: f64) -> Candle {
        Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close, volume: 3.0 }
    }

    #[test]
    fn insert_if_absent_keeps_stored_rows_and_reports_them() {
        let mut store = MemoryStore::default();
        let first = StoreWrite {
            batches: vec![SeriesBatch { series_id: "d".into(), candles: vec![c(300, 1.0)] }],
            ..StoreWrite::default()
        };
        assert_eq!(first.run(&mut store), PersistOutcome::Stored { kept: vec![], pruned: 0 });
        let second = StoreWrite {
            batches: vec![
                SeriesBatch { series_id: "b".into(), candles: vec![c(60, 9.0)] },
                SeriesBatch { series_id: "d".into(), candles: vec![c(0, 2.0), c(300, 7.0)] },
            ],
            keep_existing: vec![1],
            ledger: vec![],
            prune: None,
            ext: vec![],
        };
        let out = second.run(&mut store);
        assert_eq!(out, PersistOutcome::Stored { kept: vec![KeptRows { batch: 1, times: vec![300] }], pruned: 0 });
        let d = store.read_range("d", 0, 1000, 10).unwrap_or_default();
        assert_eq!(d.iter().map(|c| (c.candle_time, c.close)).collect::<Vec<_>>(), vec![(0, 2.0), (300, 1.0)]);
        assert_eq!(store.head_time("b").ok().flatten(), Some(60));
    }

    #[test]
    fn ledger_changes_apply_after_the_batches() {
        let mut store = MemoryStore::default();
        let gap = GapRecord { series_id: "s".into(), from: 1, to: 2, reason: "x".into(), attempts: 1, updated_at: 5 };
        let put = StoreWrite { ledger: vec![LedgerChange::Put(gap.clone())], ..StoreWrite::default() };
        assert!(matches!(put.run(&mut store), PersistOutcome::Stored { .. }));
        assert_eq!(store.gaps().unwrap_or_default(), vec![gap]);
        let del = StoreWrite { ledger: vec![LedgerChange::Delete("s".into())], ..StoreWrite::default() };
        assert!(matches!(del.run(&mut store), PersistOutcome::Stored { .. }));
        assert!(store.gaps().unwrap_or_default().is_empty());
    }
}
