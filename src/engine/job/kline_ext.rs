//! The whole kline in the core (#15 §4, `kline_ext`): the extra fields of
//! each closed base candle the exchange sent with them are kept (a few
//! hundred per series, newest first out), summed into the bucket of every
//! derived timeframe as the closes come, and attached to the store write
//! that carries those candles (`StoreWrite::ext`). A derived candle gets
//! fields only when every base candle of its bucket brought them (a restart
//! or a healed minute inside the bucket leaves it without: never a partial
//! sum passed off as the whole).
//!
//! Candles healed over REST bring their fields in the exchange's rows: a
//! heal's are kept from its end until the write that carries them is made
//! (then dropped: a write retried after a store failure carries them no
//! more), at most one heal's worth per series (`--heal-max-candles`).
//!
//! Live frames of `fields=full` subscribers (the hub) take their fields
//! from here too: a published close's from what was kept for its write, a
//! forming candle's from the exchange's latest forming frame (a derived
//! forming candle: its bucket's closed base candles so far plus that frame).
//! Looked up only when some subscriber of the series asked for them.
//!
//! Owns that bookkeeping; never touches a store. Off (`full_klines = false`,
//! e.g. a journal recorded before) it keeps nothing and writes stay as they were.

use crate::engine::series::SeriesIdx;
use super::{Ctx, Jobs};
use crate::kline_ext::KlineExt;
use crate::model::Timeframe;
use crate::store::{ExtRows, StoreWrite};
use std::collections::BTreeMap;

/// Closed base candles whose fields are kept per series, until their flush
/// (normally within `--flush-ms`); a store backlog longer than this many
/// closes writes the oldest without them. Bounded: this many per series the
/// engine has seen (the series table's own bound), plus two running sums per
/// derived timeframe.
const BASE_KEEP: usize = 64;

/// One derived bucket's running sum.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    start: i64,
    sum: KlineExt,
    count: i64,
}

#[derive(Debug, Default)]
pub(in crate::engine) struct ExtTable {
    base: BTreeMap<SeriesIdx, BTreeMap<i64, KlineExt>>,
    /// (base series, derived timeframe in seconds) → the current and the previous bucket.
    sums: BTreeMap<(SeriesIdx, i64), [Option<Bucket>; 2]>,
    /// The fields of the last heal's candles per series, until written.
    healed: BTreeMap<SeriesIdx, BTreeMap<i64, KlineExt>>,
    /// The latest forming frame's fields per base series: (open time, fields).
    forming: BTreeMap<SeriesIdx, (i64, KlineExt)>,
}

impl ExtTable {
    fn note(&mut self, base: SeriesIdx, base_tf: i64, t: i64, ext: KlineExt, derived: &[Timeframe]) {
        let rows = self.base.entry(base).or_default();
        if rows.insert(t, ext).is_some() {
            // The same close twice (a replayed frame): counted once below too.
            return;
        }
        while rows.len() > BASE_KEEP {
            rows.pop_first();
        }
        for tf in derived.iter().map(|tf| tf.seconds()).filter(|tf| *tf > base_tf && *tf % base_tf == 0) {
            let start = t - t.rem_euclid(tf);
            let slot = self.sums.entry((base, tf)).or_default();
            match slot[0] {
                Some(ref mut b) if b.start == start => {
                    b.sum = b.sum.add(ext);
                    b.count += 1;
                }
                Some(b) if b.start > start => {
                    if let Some(prev) = slot[1].as_mut().filter(|p| p.start == start) {
                        prev.sum = prev.sum.add(ext);
                        prev.count += 1;
                    }
                }
                _ => {
                    slot[1] = slot[0];
                    slot[0] = Some(Bucket { start, sum: ext, count: 1 });
                }
            }
        }
    }

    /// A derived forming candle's fields: the bucket's closed base candles
    /// (every one before `forming_t`) plus the forming base candle's.
    fn derived_forming(&self, base: SeriesIdx, base_tf: i64, tf: i64, start: i64) -> Option<KlineExt> {
        let (t, forming) = *self.forming.get(&base)?;
        if base_tf <= 0 || t < start || t >= start + tf {
            return None;
        }
        let before = (t - start) / base_tf;
        if before == 0 {
            return Some(forming);
        }
        let slot = self.sums.get(&(base, tf))?;
        let b = slot.iter().flatten().find(|b| b.start == start)?;
        (b.count == before).then(|| b.sum.add(forming))
    }

    fn derived(&self, base: SeriesIdx, base_tf: i64, tf: i64, start: i64) -> Option<KlineExt> {
        let slot = self.sums.get(&(base, tf))?;
        let b = slot.iter().flatten().find(|b| b.start == start)?;
        (base_tf > 0 && b.count == tf / base_tf).then_some(b.sum)
    }
}

impl Jobs {
    /// A closed base candle's extra fields, as the exchange sent them.
    pub(in crate::engine) fn note_kline_ext(
        &mut self,
        cx: &mut Ctx<'_>,
        job: SeriesIdx,
        t: i64,
        ext: Option<KlineExt>,
    ) {
        let Some(ext) = ext.filter(|e| cx.cfg.full_klines && e.value_error().is_none()) else { return };
        let base_tf = cx.series.get(job).tf_s;
        self.kline_ext.note(job, base_tf, t, ext, &cx.cfg.supervisor.derived);
    }

    /// A forming base candle's extra fields, as the exchange sent them.
    pub(in crate::engine) fn note_forming_ext(
        &mut self,
        cx: &mut Ctx<'_>,
        job: SeriesIdx,
        t: i64,
        ext: Option<KlineExt>,
    ) {
        match ext.filter(|e| cx.cfg.full_klines && e.value_error().is_none()) {
            Some(e) => {
                self.kline_ext.forming.insert(job, (t, e));
            }
            None => {
                self.kline_ext.forming.remove(&job);
            }
        }
    }

    /// The fields of a forming candle of `idx` (a job's base series or one
    /// of its derived series), opening at `t`, when known.
    pub(in crate::engine) fn forming_ext(
        &self,
        cx: &Ctx<'_>,
        job: SeriesIdx,
        idx: SeriesIdx,
        t: i64,
    ) -> Option<KlineExt> {
        if idx == job {
            return self.kline_ext.forming.get(&job).filter(|(at, _)| *at == t).map(|(_, e)| *e);
        }
        let (base_tf, tf) = (cx.series.get(job).tf_s, cx.series.get(idx).tf_s);
        self.kline_ext.derived_forming(job, base_tf, tf, t)
    }

    /// The fields of published closes of `idx` (`ext[i]` is `candles[i]`'s),
    /// from what was kept for their write; unknown ones are `None`.
    pub(in crate::engine) fn published_ext(
        &self,
        cx: &Ctx<'_>,
        idx: SeriesIdx,
        candles: &[crate::model::Candle],
    ) -> Vec<Option<KlineExt>> {
        let id = &cx.series.get(idx).id;
        let base = cx.supervisor.normalize(id);
        if &base == id {
            let known = self.kline_ext.base.get(&idx);
            return candles.iter().map(|c| known.and_then(|k| k.get(&c.candle_time).copied())).collect();
        }
        let Some(b) = cx.series.lookup(base.as_str()) else { return Vec::new() };
        let (base_tf, tf) = (cx.series.get(b).tf_s, cx.series.get(idx).tf_s);
        candles.iter().map(|c| self.kline_ext.derived(b, base_tf, tf, c.candle_time)).collect()
    }

    /// A finished heal's fields (replacing what an earlier heal left).
    pub(in crate::engine) fn note_healed_ext(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, rows: Vec<(i64, KlineExt)>) {
        if !cx.cfg.full_klines {
            return;
        }
        let rows: BTreeMap<i64, KlineExt> = rows.into_iter().filter(|(_, e)| e.value_error().is_none()).collect();
        if rows.is_empty() {
            self.kline_ext.healed.remove(&job);
        } else {
            self.kline_ext.healed.insert(job, rows);
        }
    }

    /// Attaches the known extra fields of the candles `write` carries (a
    /// healed candle's are handed over, not kept).
    pub(in crate::engine) fn attach_kline_ext(&mut self, cx: &mut Ctx<'_>, write: &mut StoreWrite) {
        if !cx.cfg.full_klines {
            return;
        }
        for batch in &write.batches {
            let Some(idx) = cx.series.lookup(&batch.series_id) else { continue };
            let id = &cx.series.get(idx).id;
            let base = cx.supervisor.normalize(id);
            let rows: Vec<(i64, KlineExt)> = if &base == id {
                let known = self.kline_ext.base.get(&idx);
                let mut healed = self.kline_ext.healed.get_mut(&idx);
                let rows = batch
                    .candles
                    .iter()
                    .filter_map(|c| {
                        let t = c.candle_time;
                        let from_heal = healed.as_mut().and_then(|h| h.remove(&t));
                        known.and_then(|k| k.get(&t).copied()).or(from_heal).map(|e| (t, e))
                    })
                    .collect();
                if healed.is_some_and(|h| h.is_empty()) {
                    self.kline_ext.healed.remove(&idx);
                }
                rows
            } else {
                let Some(b) = cx.series.lookup(base.as_str()) else { continue };
                let (base_tf, tf) = (cx.series.get(b).tf_s, cx.series.get(idx).tf_s);
                batch
                    .candles
                    .iter()
                    .filter_map(|c| self.kline_ext.derived(b, base_tf, tf, c.candle_time).map(|e| (c.candle_time, e)))
                    .collect()
            };
            if !rows.is_empty() {
                write.ext.push(ExtRows { series_id: batch.series_id.clone(), rows });
            }
        }
    }
}
