//! The engine's ingest side: exchange frames into jobs, the forming throttle's
//! timers, flushes, and carrying out what the supervisor and the upstream pool
//! decide (start/stop jobs, stream liveness). Split from `mod.rs` so each file
//! keeps one concern; these are `Engine` methods.

use super::derived::DerivedFold;
use super::ingest::{ClosedDecision, Job, ThrottleDecision};
use super::series::SeriesIdx;
use super::supervisor::Effect;
use super::upstream::PoolEvent;
use super::{Engine, LogLevel, TimerKey};
use crate::model::{Candle, Market, SeriesId};
use crate::wire::binance::{self, Frame, FrameError, KlineEvent};

impl Engine {
    pub(super) fn on_upstream_text(&mut self, conn: super::ConnId, text: &str) {
        if !self.pool.knows_conn(conn) {
            return;
        }
        self.counters.upstream_frames += 1;
        match binance::parse_frame(text) {
            Ok(Frame::Kline(event)) => {
                self.pool.on_activity(conn, self.now, true);
                if let Some(market) = self.pool.conn_market(conn) {
                    self.on_kline(market, &event);
                }
            }
            Ok(Frame::ControlAck { id }) => {
                self.pool.on_control_ack(conn, id, self.now, &mut self.outputs, &mut self.pool_events);
                self.apply_pool_events();
            }
            Ok(Frame::ControlList { .. }) => self.pool.on_activity(conn, self.now, false),
            Ok(Frame::ControlError { id, code, msg }) => {
                self.log(LogLevel::Error, format!("upstream_control_error conn={conn} id={id:?} code={code} msg={msg:?}"));
                self.pool.on_control_error(conn, &msg, self.now, &mut self.outputs, &mut self.pool_events);
                self.apply_pool_events();
            }
            Ok(Frame::ServerShutdown) => {
                self.log(LogLevel::Info, format!("upstream_server_shutdown conn={conn} action=rotate"));
                self.pool.on_server_shutdown(conn, self.now, &mut self.outputs);
            }
            Err(e) => {
                self.pool.on_activity(conn, self.now, false);
                self.count_reject(&e);
            }
        }
    }

    fn count_reject(&mut self, e: &FrameError) {
        let n = self.counters.count_reject(e.kind());
        // Logged on powers of two only: a flood of bad frames costs no log flood.
        if n.is_power_of_two() {
            self.log(LogLevel::Warn, format!("upstream_frame_rejected kind={} count={n} error={:?}", e.kind(), e.to_string()));
        }
    }

    fn on_kline(&mut self, market: Market, event: &KlineEvent<'_>) {
        let jobs = &self.stream_jobs[market.index()];
        let job_idx = match event.stream {
            Some(stream) => jobs.get(stream.as_bytes()).copied(),
            None => {
                let name = format!("{}@kline_{}", event.symbol.to_ascii_lowercase(), event.interval);
                jobs.get(name.as_bytes()).copied()
            }
        };
        let Some(job_idx) = job_idx else {
            self.counters.count_reject("unknown_stream");
            return;
        };
        self.counters.kline_frames += 1;
        if let Some(j) = self.jobs.get_mut(&job_idx) {
            j.pending_event_ms = Some(event.event_time_ms);
            if j.last_frame_at.is_some() {
                j.last_frame_at = Some(self.now);
            }
        }
        let candle = event.candle;
        if event.is_final {
            self.note_kline_ext(job_idx, candle.candle_time, event.ext);
            self.on_closed(job_idx, candle);
        } else {
            self.note_forming_ext(job_idx, candle.candle_time, event.ext);
            self.on_forming(job_idx, candle);
        }
    }

    fn on_closed(&mut self, job_idx: SeriesIdx, candle: Candle) {
        let (batch_max, every, now) = (self.cfg.batch_max, self.cfg.flush_interval, self.now);
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        // A close after a hole proves the candles in between are over: fetch
        // them now, and hold this one until they are here (no gap for clients).
        let (newest, tf) = (job.newest_closed(), job.base_id.timeframe().seconds());
        if newest > i64::MIN && job.heal.is_none() && candle.candle_time > newest + tf {
            self.start_heal(job_idx, newest + tf, candle.candle_time - tf, "hole", true);
        }
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        job.frames_seen += 1;
        match job.accept_closed(candle, now, batch_max, every) {
            ClosedDecision::Stale => {
                self.counters.stale_closed += 1;
                self.upsert_late_close(job_idx, candle);
            }
            ClosedDecision::FlushNow => {
                self.counters.closed_accepted += 1;
                self.request_flush(job_idx);
            }
            ClosedDecision::FlushAt(at) => {
                self.counters.closed_accepted += 1;
                let at = job.gated(now).map_or(at, |g| g.max(at));
                if job.flush_timer.is_none() {
                    job.flush_timer = Some(self.timers.insert(at, TimerKey::Flush(job_idx)));
                }
            }
        }
        self.check_late_close(job_idx, candle.candle_time);
    }

    /// A closing frame for a candle already persisted (e.g. fetched by the
    /// watchdog): the exchange's final values replace the stored row; nothing
    /// is published again.
    fn upsert_late_close(&mut self, job_idx: SeriesIdx, candle: Candle) {
        let Some(job) = self.jobs.get(&job_idx) else { return };
        let batch = crate::store::SeriesBatch { series_id: job.base_id.as_str().to_string(), candles: vec![candle] };
        let write = crate::store::StoreWrite { batches: vec![batch], ..Default::default() };
        self.write_store(write, super::store_ops::WriteFor::Quiet(super::store_ops::Quiet::LateClose));
    }

    fn on_forming(&mut self, job_idx: SeriesIdx, candle: Candle) {
        let (min, now) = (self.cfg.forming_interval, self.now);
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        job.frames_seen += 1;
        if candle.candle_time <= job.last_emitted {
            self.counters.stale_forming += 1;
            return;
        }
        job.latest_forming = Some(candle);
        self.check_late_close(job_idx, candle.candle_time);
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
                        let id = self.timers.insert(at, TimerKey::Forming(job_idx, i as u16));
                        job.throttles[i].timer = Some(id);
                    }
                }
                ThrottleDecision::Coalesced => {}
            }
        }
        if !emit.is_empty() {
            self.publish_forming(job_idx, &emit);
        }
        self.emit_scratch = emit;
    }

    pub(super) fn fire_forming(&mut self, job_idx: SeriesIdx, i: usize) {
        let now = self.now;
        let Some(th) = self.jobs.get_mut(&job_idx).and_then(|j| j.throttles.get_mut(i)) else { return };
        if th.fire(now) {
            self.publish_forming(job_idx, &[i]);
        }
    }

    /// Publishes the job's latest forming value for the throttles in `which`
    /// (ascending; 0 = base). Derived values are computed once for all of them.
    fn publish_forming(&mut self, job_idx: SeriesIdx, which: &[usize]) {
        let queued_before = self.frames_queued();
        self.publish_forming_to(job_idx, which);
        self.observe_queue_latency(job_idx, queued_before);
    }

    /// Candle frames queued for clients so far (forming and closed).
    pub(super) fn frames_queued(&self) -> u64 {
        self.counters.frames_forming + self.counters.frames_closed
    }

    /// When a publish for `job_idx` queued frames (more than `queued_before`),
    /// records how long ago the exchange stamped the kline frame behind them
    /// (once per frame; `now` and the event time are both inputs).
    pub(super) fn observe_queue_latency(&mut self, job_idx: SeriesIdx, queued_before: u64) {
        if self.frames_queued() == queued_before {
            return;
        }
        let Some(event_ms) = self.jobs.get_mut(&job_idx).and_then(|j| j.pending_event_ms.take()) else { return };
        let event = crate::time::Timestamp::from_millis(u64::try_from(event_ms).unwrap_or(0));
        self.counters.exchange_to_queue.observe(self.now.since(event));
    }

    fn publish_forming_to(&mut self, job_idx: SeriesIdx, which: &[usize]) {
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        let Some(latest) = job.latest_forming else { return };
        if which.first() == Some(&0) {
            let base = job.base;
            let ext = if self.hub.wants_full(base) { self.forming_ext(job_idx, base, latest.candle_time) } else { None };
            self.hub.publish_forming_ext(base, &latest, ext, &self.series, &mut self.outputs, &mut self.counters);
            self.bus_publish_forming(base, &latest);
        }
        let Some(job) = self.jobs.get_mut(&job_idx) else { return };
        if which.last().is_none_or(|i| *i == 0) {
            return;
        }
        let Some(fold) = job.fold.as_mut() else { return };
        self.scratch.clear();
        fold.on_base_forming(&latest, &mut self.scratch);
        let scratch = std::mem::take(&mut self.scratch);
        for (target, candle) in &scratch {
            if which.contains(&(target + 1)) {
                let Some(series) = self.jobs.get(&job_idx).map(|j| j.derived[*target]) else { continue };
                let ext = if self.hub.wants_full(series) { self.forming_ext(job_idx, series, candle.candle_time) } else { None };
                self.hub.publish_forming_ext(series, candle, ext, &self.series, &mut self.outputs, &mut self.counters);
                self.bus_publish_forming(series, candle);
            }
        }
        self.scratch = scratch;
    }

    /// Flushes a job's closed buffer: dedupe, fold into derived timeframes,
    /// persist in one transaction, then publish (or keep for retry).
    pub(super) fn flush_job(&mut self, job_idx: SeriesIdx) {
        let set = self.collect_flush(job_idx);
        if !set.is_empty() {
            self.persist_and_publish(set);
        }
    }

    /// Flushes every job that asked for it during this step, in ONE store
    /// transaction: the closes of many series arriving in one loop turn (they
    /// bunch up right after each minute boundary) cost one commit, not one each.
    pub(super) fn flush_pending_jobs(&mut self) {
        let jobs = std::mem::take(&mut self.flush_pending);
        let mut set = Vec::new();
        for job in jobs {
            set.extend(self.collect_flush(job));
        }
        if !set.is_empty() {
            self.persist_and_publish(set);
        }
    }

    /// Asks for the job's buffer to be flushed at the end of this step.
    fn request_flush(&mut self, job_idx: SeriesIdx) {
        // The first request of a step arms the one FlushAll timer.
        if self.flush_pending.is_empty() {
            self.timers.insert(self.now, TimerKey::FlushAll);
        }
        self.flush_pending.insert(job_idx);
    }

    /// Takes a job's buffer for a flush: dedupe, fold into derived timeframes;
    /// empty while a heal gates it (then a flush timer is armed for the gate).
    fn collect_flush(&mut self, job_idx: SeriesIdx) -> super::series::FlushSet {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&job_idx) else { return Vec::new() };
        if let Some(t) = job.flush_timer.take() {
            self.timers.cancel(t);
        }
        if let Some(until) = job.gated(now) {
            // A heal is running: live candles wait for it (bounded by the gate).
            if job.buffered() > 0 && !self.shut_down {
                job.flush_timer = Some(self.timers.insert(until, TimerKey::Flush(job_idx)));
                return Vec::new();
            }
        } else if let Some(h) = job.heal.as_mut() {
            h.gate_until = None; // the gate timed out: live data flows again
        }
        let base = job.take_flush(now);
        if base.is_empty() {
            return Vec::new();
        }
        let mut set = vec![(job.base, Vec::new())];
        if let Some(fold) = job.fold.as_mut() {
            self.scratch.clear();
            fold.on_base_closed(&base, &mut self.scratch);
            for (target, candle) in self.scratch.drain(..) {
                let idx = job.derived[target];
                if let Some(th) = job.throttles.get_mut(target + 1) {
                    th.closed(candle.candle_time);
                }
                match set.iter_mut().find(|(s, _)| *s == idx) {
                    Some((_, v)) => v.push(candle),
                    None => set.push((idx, vec![candle])),
                }
            }
        }
        set[0].1 = base;
        // Derived candles from a restore may arrive out of order: keep each sorted.
        for (_, v) in set.iter_mut() {
            v.sort_by_key(|c| c.candle_time);
        }
        set
    }

    // ------------------------------------------------------------ job lifecycle

    pub(super) fn apply_effects(&mut self) {
        let effects = std::mem::take(&mut self.effects);
        for effect in &effects {
            match effect {
                Effect::Start { series } => self.start_job(series),
                Effect::Stop { series, reason } => {
                    if let Some(idx) = self.series.lookup(series.as_str()) {
                        self.stop_job(idx, reason.as_str());
                    }
                }
            }
        }
        let mut effects = effects;
        effects.clear();
        self.effects = effects;
    }

    /// Creates the job (or re-attaches its stream if it exists). What the
    /// store holds of it (head, derived heads, the base candles a restart
    /// refolds, its gap-ledger entry) is asked for first; the job starts when
    /// the answer comes (`finish_job_start`).
    fn start_job(&mut self, base: &SeriesId) {
        let now = self.now;
        let idx = self.series.intern(base);
        if let Some(job) = self.jobs.get(&idx) {
            let (stream, market) = (job.stream.clone(), job.market);
            self.pool.attach(&stream, market, now, &mut self.outputs);
            return;
        }
        if self.store_ops.job_starting(idx) {
            return;
        }
        let derived: Vec<String> = self
            .make_fold(base)
            .map(|f| f.targets().iter().map(|t| t.series().as_str().to_string()).collect())
            .unwrap_or_default();
        let query = crate::store::StoreQuery::JobStart { series_id: base.as_str().to_string(), derived };
        self.read_store(query, super::store_ops::ReadFor::JobStart(idx));
    }

    /// The second half of a job start, with what the store holds of it.
    pub(super) fn finish_job_start(&mut self, idx: SeriesIdx, history: crate::store::JobHistory) {
        let now = self.now;
        let base = self.series.get(idx).id.clone();
        if self.jobs.contains_key(&idx) {
            return;
        }
        let (Some(market), Ok(stream)) =
            (Market::parse(base.market()), binance::stream_name(base.symbol(), base.timeframe()))
        else {
            // The supervisor validates first; this is a programming error path.
            self.log(LogLevel::Error, format!("job_start_invalid series_id={base}"));
            return;
        };
        let head = history.head;
        let mut fold = self.make_fold(&base);
        let mut derived = Vec::new();
        let mut restored: Vec<(usize, Candle)> = Vec::new();
        if let Some(f) = fold.as_mut() {
            derived = f.targets().iter().map(|t| self.series.intern(t.series())).collect();
            if head.is_some() {
                let heads: Vec<(usize, Option<i64>)> =
                    (0..f.targets().len()).map(|i| (i, history.derived_heads.get(i).copied().flatten())).collect();
                f.restore(&history.restore, &heads, &mut restored);
            }
        }
        if let Some(h) = head {
            self.series.note_closed(idx, h);
        }
        let job = Job::new(idx, base.clone(), market, stream.clone(), fold, derived.clone(), head, now);
        self.jobs.insert(idx, job);
        self.stream_jobs[market.index()].insert(super::fasthash::NameKey::new(&stream), idx);
        self.counters.jobs_started += 1;
        let head_time = head.map_or("none".to_string(), |h| h.to_string());
        self.log(LogLevel::Info, format!("job_started series_id={base} stream={stream} head_time={head_time}"));
        if !restored.is_empty() {
            // Buckets the store shows complete whose derived rows were never written.
            let mut set: Vec<(SeriesIdx, Vec<Candle>)> = Vec::new();
            for (target, c) in restored {
                let didx = derived[target];
                match set.iter_mut().find(|(s, _)| *s == didx) {
                    Some((_, v)) => v.push(c),
                    None => set.push((didx, vec![c])),
                }
            }
            self.persist_and_publish(set);
        }
        self.pool.attach(&stream, market, now, &mut self.outputs);
        if let Some(gap) = history.gap {
            self.load_gap(idx, gap);
        }
        self.heal_on_start(idx, head);
        self.arm_close_due(idx);
    }

    fn make_fold(&self, base: &SeriesId) -> Option<DerivedFold> {
        let cfg = &self.cfg.supervisor;
        if cfg.derived.is_empty() || base.timeframe() != cfg.derived_base {
            return None;
        }
        let fold = DerivedFold::new(base, &cfg.derived);
        (!fold.targets().is_empty()).then_some(fold)
    }

    /// Flushes the job's buffer first (nothing accepted is lost), then detaches.
    pub(super) fn stop_job(&mut self, idx: SeriesIdx, reason: &str) {
        // A job still waiting for its store read never starts.
        self.store_ops.forget_job_start(idx);
        if !self.jobs.contains_key(&idx) {
            return;
        }
        self.cancel_heal(idx, reason);
        self.cancel_native(idx, reason);
        self.flush_job(idx);
        let Some(job) = self.jobs.remove(&idx) else { return };
        for th in &job.throttles {
            if let Some(t) = th.timer {
                self.timers.cancel(t);
            }
        }
        for t in [job.watchdog, job.close_timer].into_iter().flatten() {
            self.timers.cancel(t);
        }
        self.stream_jobs[job.market.index()].remove(job.stream.as_bytes());
        self.pool.detach(&job.stream, job.market, self.now, &mut self.outputs);
        self.counters.jobs_stopped += 1;
        self.log(LogLevel::Info, format!("job_stopped series_id={} reason={reason}", job.base_id));
    }

    pub(super) fn apply_pool_events(&mut self) {
        let events = std::mem::take(&mut self.pool_events);
        for event in &events {
            match event {
                PoolEvent::StreamLive { market, stream } => {
                    if let Some(idx) = self.stream_jobs[market.index()].get(stream.as_bytes()).copied() {
                        let id = self.series.get(idx).id.clone();
                        self.supervisor.job_running(&id, self.now);
                        self.stream_live(idx);
                        if self.jobs.get_mut(&idx).is_some_and(|j| std::mem::take(&mut j.lost)) {
                            self.heal_on_reconnect(idx);
                        }
                    }
                }
                PoolEvent::StreamLost { market, stream, reason } => {
                    if let Some(idx) = self.stream_jobs[market.index()].get(stream.as_bytes()).copied() {
                        let id = self.series.get(idx).id.clone();
                        self.supervisor.job_failed(&id, self.now, reason);
                        if let Some(j) = self.jobs.get_mut(&idx) {
                            j.lost = true;
                            j.last_frame_at = None;
                        }
                    }
                }
                PoolEvent::Reconnected { conn, market } => {
                    self.log(LogLevel::Info, format!("upstream_reconnected conn={conn} market={}", market.as_str()));
                }
            }
        }
        let mut events = events;
        events.clear();
        self.pool_events = events;
    }
}

