//! History of a derived timeframe from the exchange's own interval klines. A
//! first visit to a derived series (`BTC/USDT:1h`), or a `since` older than
//! what the store holds of it, fetches up to `first_visit_candles` candles of
//! that timeframe (`interval=1h`) and stores them as that series' history;
//! the live fold from the base timeframe carries on at the head. Folding
//! 2,000 base minutes gives only 33 hours; the exchange's 1h klines give 2,000.
//!
//! One fill per derived series at a time (bounded by the derived series of
//! running jobs); it logs `heal_started` and ends in `heal_done`,
//! `heal_failed` or `heal_cancelled` like every heal. Its rows go through the
//! same persist-then-publish path as every derived candle, where a bucket
//! already stored is never written over (written insert-if-absent, `flush.rs`). Subscriptions
//! waiting for it get their catch-up when it ends (or at the gate timeout).
//! These are `Jobs` methods. Never reads a clock.

use crate::engine::series::SeriesIdx;
use super::{Ctx, Jobs};
use crate::engine::supervisor::Supervisor;
use crate::engine::{EngineConfig, LogLevel, RestId, RestPurpose, TimerKey};
use crate::model::{Candle, SeriesId, Timeframe};
use crate::wire::binance::rest;

/// A running fill of one derived series.
#[derive(Debug)]
pub struct NativeFill {
    /// The base job whose stream feeds the series live.
    pub job: SeriesIdx,
    pub tf: Timeframe,
    pub to: i64,
    pub next_from: i64,
    pub request: Option<RestId>,
    pub stored: usize,
}

impl Jobs {
    /// A subscriber or reader asked for derived series `id`: fill its history
    /// from the exchange's `id.timeframe()` klines when the store lacks the
    /// last `first_visit_candles` of them (or what is older than `since`).
    /// Returns whether a fill is running for it (its catch-up should wait).
    /// `first`: the oldest stored open time of `id` (what the store holds).
    pub(in crate::engine) fn native_fill(
        &mut self,
        cx: &mut Ctx<'_>,
        id: &SeriesId,
        since: Option<i64>,
        first: Option<i64>,
    ) -> bool {
        if !applies(cx.cfg, cx.supervisor, id) {
            return false;
        }
        let base = cx.supervisor.normalize(id);
        let Some(job) = cx.series.lookup(base.as_str()).filter(|i| self.jobs.contains_key(i)) else { return false };
        let idx = cx.series.intern(id);
        if self.native.contains_key(&idx) {
            return true;
        }
        let tf = id.timeframe();
        let latest = tf.expected_latest_closed(cx.now.as_secs());
        let mut from = latest - (cx.cfg.heal.first_visit_candles.max(1) as i64 - 1) * tf.seconds();
        if let Some(s) = since {
            from = from.max(tf.bucket_open(s) + tf.seconds());
        }
        let to = match first {
            None => latest,
            Some(first) => first - tf.seconds(),
        };
        if from > to || to <= 0 {
            return false;
        }
        let from = from.max(tf.seconds());
        self.native.insert(idx, NativeFill { job, tf, to, next_from: from, request: None, stored: 0 });
        cx.counters.heals_started += 1;
        cx.log(LogLevel::Info, format!("heal_started series_id={id} from={from} to={to} reason=native_interval"));
        let at = cx.now.add(cx.cfg.heal.gate_timeout);
        cx.timers.insert(at, TimerKey::ReleaseHeld(job));
        self.request_native_page(cx, idx);
        self.native.contains_key(&idx)
    }

    fn request_native_page(&mut self, cx: &mut Ctx<'_>, idx: SeriesIdx) {
        let Some(fill) = self.native.get(&idx) else { return };
        let Some(j) = self.jobs.get(&fill.job) else { return };
        let limit = rest::max_limit(j.market);
        let symbol = rest::symbol_from_stream(&j.stream);
        let path = rest::klines_path(j.market, &symbol, fill.tf, fill.next_from, fill.to, limit);
        let weight = rest::klines_weight(j.market, limit);
        let page_end = fill.to;
        match cx.rest.submit(j.market, path, weight, RestPurpose::Native { series: idx, page_end }) {
            Some(id) => {
                if let Some(f) = self.native.get_mut(&idx) {
                    f.request = Some(id);
                }
            }
            None => self.end_native(cx, idx, Some("REST queue full".to_string())),
        }
    }

    /// A page of a fill came back: store its closed rows, go on, or end.
    /// Returns the job when the exchange refused its symbol (`-1121`).
    pub(in crate::engine) fn on_native_response(
        &mut self,
        cx: &mut Ctx<'_>,
        id: RestId,
        idx: SeriesIdx,
        page_end: i64,
        result: Result<String, (Option<u16>, String)>,
    ) -> Option<SeriesIdx> {
        let now_ms = (cx.now.as_nanos() / 1_000_000) as i64;
        let Some(fill) = self.native.get_mut(&idx).filter(|f| f.request == Some(id)) else { return None };
        fill.request = None;
        let (job, tf, lo) = (fill.job, fill.tf.seconds(), fill.next_from);
        let Some(market) = self.jobs.get(&job).map(|j| j.market) else { return None };
        let body = match result {
            Ok(body) => body,
            Err((Some(status), body)) => {
                if rest::error_code(&body) == Some(rest::INVALID_SYMBOL) {
                    self.end_native(cx, idx, Some(rest::error_text(status, &body)));
                    return Some(job);
                }
                self.end_native(cx, idx, Some(rest::error_text(status, &body)));
                return None;
            }
            Err((None, reason)) => {
                self.end_native(cx, idx, Some(reason));
                return None;
            }
        };
        let (rows, skipped) = match rest::parse_klines(&body) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.end_native(cx, idx, Some(e));
                return None;
            }
        };
        cx.counters.rest_rows_skipped += skipped as u64;
        // Closed rows of this page only (the newest row is often still forming).
        let mut candles: Vec<Candle> = rows
            .iter()
            .filter(|r| r.candle.candle_time >= lo && r.candle.candle_time <= page_end && r.close_time_ms < now_ms)
            .map(|r| r.candle)
            .collect();
        candles.sort_by_key(|c| c.candle_time);
        candles.dedup_by_key(|c| c.candle_time);
        let newest = rows.iter().map(|r| r.candle.candle_time).max();
        let next_from = match newest {
            Some(t) if rows.len() + skipped >= rest::max_limit(market) => t.max(lo) + tf,
            _ => page_end + tf,
        };
        if !candles.is_empty() {
            let n = candles.len();
            self.persist_and_publish(cx, vec![(idx, candles)]);
            if let Some(f) = self.native.get_mut(&idx) {
                f.stored += n;
            }
        }
        let Some(fill) = self.native.get_mut(&idx) else { return None };
        fill.next_from = next_from;
        if fill.next_from > fill.to {
            self.end_native(cx, idx, None);
            return None;
        }
        self.request_native_page(cx, idx);
        None
    }

    /// Ends a fill (done or failed) and releases the catch-up waiting for it.
    fn end_native(&mut self, cx: &mut Ctx<'_>, idx: SeriesIdx, error: Option<String>) {
        let Some(fill) = self.native.remove(&idx) else { return };
        let name = cx.series.get(idx).id.to_string();
        cx.counters.candles_healed += fill.stored as u64;
        let line = match &error {
            None => format!("heal_done series_id={name} candles={} reason=native_interval", fill.stored),
            Some(e) => format!("heal_failed series_id={name} candles={} reason=native_interval error={e:?}", fill.stored),
        };
        cx.log(if error.is_none() { LogLevel::Info } else { LogLevel::Warn }, line);
        let now_s = cx.now.as_secs();
        cx.hub.release_held(idx, now_s, cx.series, cx.outputs);
    }

    /// The job is going away: its fills end with `heal_cancelled`.
    pub(in crate::engine) fn cancel_native(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, why: &str) {
        let ended: Vec<SeriesIdx> = self.native.iter().filter(|(_, f)| f.job == job).map(|(i, _)| *i).collect();
        if ended.is_empty() {
            return;
        }
        cx.rest.cancel_queued(|p| matches!(p, RestPurpose::Native { series, .. } if ended.contains(series)));
        for idx in ended {
            let Some(fill) = self.native.remove(&idx) else { continue };
            let name = cx.series.get(idx).id.to_string();
            cx.log(
                LogLevel::Info,
                format!("heal_cancelled series_id={name} candles={} reason=native_interval cause={why}", fill.stored),
            );
        }
    }
}

/// A derived series of an interval the exchange serves, with healing on:
/// its history comes from the exchange's own klines of that interval.
pub(in crate::engine) fn applies(cfg: &EngineConfig, supervisor: &Supervisor, id: &SeriesId) -> bool {
    cfg.heal.enabled
        && crate::engine::supervisor::is_binance_interval(id.timeframe())
        && supervisor.normalize(id) != *id
}
