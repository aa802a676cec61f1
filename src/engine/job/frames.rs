//! Exchange kline frames into jobs: a closed candle into the job's buffer (a
//! flush asked for, or timed), a forming one through the job's throttles and
//! published to the hub (and the bus) for the base and its derived series.
//! `Jobs` methods; what they touch outside the jobs comes in the `Ctx`.
//! Never reads a clock.

use super::ingest::{ClosedDecision, ThrottleDecision};
use super::{Ctx, Jobs};
use crate::engine::series::SeriesIdx;
use crate::engine::TimerKey;
use crate::model::{Candle, Market};
use crate::wire::binance::KlineEvent;

impl Jobs {
    pub(in crate::engine) fn on_kline(&mut self, cx: &mut Ctx<'_>, market: Market, event: &KlineEvent<'_>) {
        let jobs = &self.stream_jobs[market.index()];
        let job_idx = match event.stream {
            Some(stream) => jobs.get(stream.as_bytes()).copied(),
            None => {
                let name = format!("{}@kline_{}", event.symbol.to_ascii_lowercase(), event.interval);
                jobs.get(name.as_bytes()).copied()
            }
        };
        let Some(job_idx) = job_idx else {
            cx.counters.count_reject("unknown_stream");
            return;
        };
        cx.counters.kline_frames += 1;
        if let Some(j) = self.jobs.get_mut(&job_idx) {
            j.pending_event_ms = Some(event.event_time_ms);
            if j.last_frame_at.is_some() {
                j.last_frame_at = Some(cx.now);
            }
        }
        let candle = event.candle;
        if event.is_final {
            self.note_kline_ext(cx, job_idx, candle.candle_time, event.ext);
            self.on_closed(cx, job_idx, candle);
        } else {
            self.note_forming_ext(cx, job_idx, candle.candle_time, event.ext);
            self.on_forming(cx, job_idx, candle);
        }
    }

    pub(super) fn on_closed(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, candle: Candle) {
        let (batch_max, every, now) = (cx.cfg.batch_max, cx.cfg.flush_interval, cx.now);
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        // A close after a hole proves the candles in between are over: fetch
        // them now, and hold this one until they are here (no gap for clients).
        let (newest, tf) = (job.newest_closed(), job.base_id.timeframe().seconds());
        if newest > i64::MIN && job.heal.is_none() && candle.candle_time > newest + tf {
            self.start_heal(cx, job_idx, newest + tf, candle.candle_time - tf, "hole", true);
        }
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        job.frames_seen += 1;
        match job.accept_closed(candle, now, batch_max, every) {
            ClosedDecision::Stale => {
                cx.counters.stale_closed += 1;
                self.upsert_late_close(cx, job_idx, candle);
            }
            ClosedDecision::FlushNow => {
                cx.counters.closed_accepted += 1;
                self.request_flush(cx, job_idx);
            }
            ClosedDecision::FlushAt(at) => {
                cx.counters.closed_accepted += 1;
                let at = job.gated(now).map_or(at, |g| g.max(at));
                if job.flush_timer.is_none() {
                    job.flush_timer = Some(cx.timers.insert(at, TimerKey::Flush(job_idx)));
                }
            }
        }
        self.check_late_close(cx, job_idx, candle.candle_time);
    }

    /// A closing frame for a candle already persisted (e.g. fetched by the
    /// watchdog): the exchange's final values replace the stored row; nothing
    /// is published again.
    pub(super) fn upsert_late_close(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, candle: Candle) {
        let Some(job) = self.jobs.get(&job_idx) else { return };
        let batch = crate::store::SeriesBatch { series_id: job.base_id.as_str().to_string(), candles: vec![candle] };
        let write = crate::store::StoreWrite { batches: vec![batch], ..Default::default() };
        cx.write_store(write, crate::engine::store_ops::WriteFor::Quiet(crate::engine::store_ops::Quiet::LateClose));
    }

    pub(super) fn on_forming(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, candle: Candle) {
        let (min, now) = (cx.cfg.forming_interval, cx.now);
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        job.frames_seen += 1;
        if candle.candle_time <= job.last_emitted {
            cx.counters.stale_forming += 1;
            return;
        }
        job.latest_forming = Some(candle);
        self.check_late_close(cx, job_idx, candle.candle_time);
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        // Reused across frames: no allocation per forming update.
        let mut emit = std::mem::take(&mut self.emit_scratch);
        emit.clear();
        for i in 0..job.throttles.len() {
            let bucket = match i {
                0 => candle.candle_time,
                _ => match job.fold.as_ref().and_then(|f| f.targets().get(i - 1)) {
                    Some(t) => t.bucket_of(candle.candle_time),
                    None => continue,
                },
            };
            match job.throttles[i].offer(bucket, now, min) {
                ThrottleDecision::Emit => emit.push(i),
                ThrottleDecision::Defer(at) => {
                    if job.throttles[i].timer.is_none() {
                        let id = cx.timers.insert(at, TimerKey::Forming(job_idx, i as u16));
                        job.throttles[i].timer = Some(id);
                    }
                }
                ThrottleDecision::Coalesced => {}
            }
        }
        if !emit.is_empty() {
            self.publish_forming(cx, job_idx, &emit);
        }
        self.emit_scratch = emit;
    }

    pub(in crate::engine) fn fire_forming(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, i: usize) {
        let now = cx.now;
        let Some(th) = self.jobs.get_mut(&job_idx).and_then(|j| j.throttles.get_mut(i)) else { return };
        if th.fire(now) {
            self.publish_forming(cx, job_idx, &[i]);
        }
    }

    /// Publishes the job's latest forming value for the throttles in `which`
    /// (ascending; 0 = base). Derived values are computed once for all of them.
    pub(super) fn publish_forming(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, which: &[usize]) {
        let queued_before = cx.frames_queued();
        self.publish_forming_to(cx, job_idx, which);
        self.observe_queue_latency(cx, job_idx, queued_before);
    }

    /// When a publish for `job_idx` queued frames (more than `queued_before`),
    /// records how long ago the exchange stamped the kline frame behind them
    /// (once per frame; `now` and the event time are both inputs).
    pub(in crate::engine) fn observe_queue_latency(
        &mut self,
        cx: &mut Ctx<'_>,
        job_idx: SeriesIdx,
        queued_before: u64,
    ) {
        if cx.frames_queued() == queued_before {
            return;
        }
        let Some(event_ms) = self.jobs.get_mut(&job_idx).and_then(|j| j.pending_event_ms.take()) else { return };
        let event = crate::time::Timestamp::from_millis(u64::try_from(event_ms).unwrap_or(0));
        cx.counters.exchange_to_queue.observe(cx.now.since(event));
    }

    pub(super) fn publish_forming_to(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx, which: &[usize]) {
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        let Some(latest) = job.latest_forming else { return };
        if which.first() == Some(&0) {
            let base = job.base;
            let ext = if cx.hub.wants_full(base) { self.forming_ext(cx, job_idx, base, latest.candle_time) } else { None };
            cx.hub.publish_forming_ext(base, &latest, ext, cx.series, cx.outputs, cx.counters);
            cx.bus_publish_forming(base, &latest);
        }
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        if which.last().is_none_or(|i| *i == 0) {
            return;
        }
        // A target nobody receives (no client, no bus) is neither built nor sent.
        let received = cx.forming_receivers(&job.derived, which);
        let Some(fold) = job.fold.as_mut() else { return };
        self.scratch.clear();
        fold.on_base_forming_where(&latest, |t| received & (1u64 << t.min(63)) != 0, &mut self.scratch);
        let scratch = std::mem::take(&mut self.scratch);
        for (target, candle) in &scratch {
            if which.contains(&(target + 1)) {
                if received & (1u64 << (*target).min(63)) == 0 {
                    cx.hub.settle(cx.series, cx.outputs, cx.counters); // what its publish would have done
                    continue;
                }
                let Some(series) = self.jobs.get(&job_idx).map(|j| j.derived[*target]) else { continue };
                let ext = if cx.hub.wants_full(series) { self.forming_ext(cx, job_idx, series, candle.candle_time) } else { None };
                cx.hub.publish_forming_ext(series, candle, ext, cx.series, cx.outputs, cx.counters);
                cx.bus_publish_forming(series, candle);
            }
        }
        self.scratch = scratch;
    }
}
