//! Persist, then publish. A flush writes every series of one job's batch (base
//! and derived) in ONE store transaction and only then publishes it. When the
//! store fails, the batch is kept — frozen, in order — in the [`StoreBacklog`]
//! and retried with exponential backoff; later flushes queue behind it so the
//! store never sees candles out of order. The backlog is bounded in candles:
//! past the bound, newly closed candles are dropped and counted (the decision:
//! keep what is oldest and already accepted; newer holes are healed from the
//! exchange's REST history once the store is back).

use super::series::SeriesIdx;
use super::{Engine, LogLevel};
use crate::model::Candle;
use crate::store::SeriesBatch;
use crate::time::{Duration, Timestamp};
use std::collections::VecDeque;

const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Per-series candles of one flush, in publish order (sorted by series id).
pub type FlushSet = Vec<(SeriesIdx, Vec<Candle>)>;

pub struct StoreBacklog {
    queue: VecDeque<FlushSet>,
    candles: usize,
    max_candles: usize,
    retry_at: Option<Timestamp>,
    backoff: Duration,
}

impl StoreBacklog {
    pub fn new(max_candles: usize) -> Self {
        StoreBacklog { queue: VecDeque::new(), candles: 0, max_candles, retry_at: None, backoff: RETRY_INITIAL }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn candles(&self) -> usize {
        self.candles
    }

    pub fn retry_at(&self) -> Option<Timestamp> {
        self.retry_at
    }

    /// Keeps a set for retry; `false` when the bound is reached (dropped).
    fn push(&mut self, set: FlushSet) -> bool {
        let n: usize = set.iter().map(|(_, c)| c.len()).sum();
        if self.candles + n > self.max_candles {
            return false;
        }
        self.candles += n;
        self.queue.push_back(set);
        true
    }

    fn pop(&mut self) -> Option<FlushSet> {
        let set = self.queue.pop_front()?;
        self.candles -= set.iter().map(|(_, c)| c.len()).sum::<usize>();
        Some(set)
    }

    fn push_front(&mut self, set: FlushSet) {
        self.candles += set.iter().map(|(_, c)| c.len()).sum::<usize>();
        self.queue.push_front(set);
    }

    fn schedule(&mut self, now: Timestamp) {
        self.retry_at = Some(now.add(self.backoff));
        self.backoff = Duration((self.backoff.0.saturating_mul(2)).min(RETRY_MAX.0));
    }

    fn recovered(&mut self) {
        self.retry_at = None;
        self.backoff = RETRY_INITIAL;
    }
}

impl Engine {
    fn to_batches(&self, set: &FlushSet) -> Vec<SeriesBatch> {
        set.iter()
            .map(|(idx, candles)| SeriesBatch {
                series_id: self.series.get(*idx).id.as_str().to_string(),
                candles: candles.clone(),
            })
            .collect()
    }

    /// Persists a flush set and publishes it, or keeps it for retry.
    /// `strict` (HTTP ingest) reports a store failure instead of queueing it.
    pub(super) fn persist_and_publish(&mut self, mut set: FlushSet, strict: bool) -> Result<(), String> {
        set.sort_by(|a, b| self.series.get(a.0).id.as_str().cmp(self.series.get(b.0).id.as_str()));
        if !strict {
            // A tool's ingest may correct a row; the engine's own derived rows never replace one.
            self.drop_stored_derived(&mut set);
            if set.is_empty() {
                return Ok(());
            }
        }
        if !strict && !self.backlog.is_empty() {
            self.keep_for_retry(set);
            return Ok(());
        }
        let batches = self.to_batches(&set);
        match self.store.write_batches(&batches) {
            Ok(()) => {
                self.publish_set(&set, !strict);
                Ok(())
            }
            Err(e) => {
                self.counters.store_write_errors += 1;
                let msg = e.to_string();
                if strict {
                    return Err(msg);
                }
                self.log(LogLevel::Error, format!("store_write_failed error={msg:?} action=retry"));
                self.keep_for_retry(set);
                Ok(())
            }
        }
    }

    fn keep_for_retry(&mut self, set: FlushSet) {
        let n: usize = set.iter().map(|(_, c)| c.len()).sum();
        if !self.backlog.push(set) {
            self.counters.closed_dropped_backlog_full += n as u64;
            self.log(LogLevel::Error, format!("store_backlog_full dropped_candles={n}"));
        }
        if self.backlog.retry_at().is_none() {
            self.backlog.schedule(self.now);
        }
    }

    /// Retries the backlog in order until it is empty or the store fails again.
    pub(super) fn retry_backlog(&mut self) {
        while let Some(set) = self.backlog.pop() {
            let batches = self.to_batches(&set);
            if let Err(e) = self.store.write_batches(&batches) {
                self.counters.store_write_errors += 1;
                self.backlog.push_front(set);
                self.backlog.schedule(self.now);
                let left = self.backlog.candles();
                self.log(LogLevel::Warn, format!("store_retry_failed error={:?} backlog_candles={left}", e.to_string()));
                return;
            }
            self.publish_set(&set, true);
        }
        self.backlog.recovered();
        self.log(LogLevel::Info, "store_recovered backlog_candles=0".to_string());
    }

    /// Publishes a persisted set. Only exchange-confirmed closes widen the
    /// series' "latest closed" window; a tool's HTTP ingest does not.
    fn publish_set(&mut self, set: &FlushSet, from_exchange: bool) {
        self.counters.flushes += 1;
        for (idx, candles) in set {
            self.counters.candles_persisted += candles.len() as u64;
            if let (true, Some(last)) = (from_exchange, candles.last()) {
                self.series.note_closed(*idx, last.candle_time);
            }
            let queued_before = self.frames_queued();
            self.hub.publish_closed(*idx, candles, &self.series, &mut self.outputs, &mut self.counters);
            if from_exchange {
                // Base series are jobs; a derived series' frames count with its base's.
                self.observe_queue_latency(*idx, queued_before);
            }
        }
    }
}
