//! A job's life: started once the store said what it holds of the series
//! (head, derived heads, the base candles a restart refolds, its gap-ledger
//! entry), stopped with its buffer flushed and its timers and stream let go;
//! its stream's liveness as the upstream pool reports it. `Jobs` methods;
//! the supervisor decides which jobs exist, the engine hands its effects here.
//! Never reads a clock.

use super::ingest::Job;
use super::{Ctx, Jobs};
use crate::engine::derived::DerivedFold;
use crate::engine::series::SeriesIdx;
use crate::engine::LogLevel;
use crate::model::{Candle, Market, SeriesId};
use crate::wire::binance;

impl Jobs {
    /// Creates the job (or re-attaches its stream if it exists). What the
    /// store holds of it (head, derived heads, the base candles a restart
    /// refolds, its gap-ledger entry) is asked for first; the job starts when
    /// the answer comes (`finish_job_start`).
    pub(in crate::engine) fn start_job(&mut self, cx: &mut Ctx<'_>, base: &SeriesId) {
        let now = cx.now;
        let idx = cx.series.intern(base);
        if let Some(job) = self.jobs.get(&idx) {
            let (stream, market) = (job.stream.clone(), job.market);
            cx.pool.attach(&stream, market, now, cx.outputs);
            return;
        }
        if cx.store_ops.job_starting(idx) {
            return;
        }
        let derived: Vec<String> = self
            .make_fold(cx, base)
            .map(|f| f.targets().iter().map(|t| t.series().as_str().to_string()).collect())
            .unwrap_or_default();
        let query = crate::store::StoreQuery::JobStart { series_id: base.as_str().to_string(), derived };
        cx.read_store(query, crate::engine::store_ops::ReadFor::JobStart(idx));
    }

    /// The second half of a job start, with what the store holds of it.
    pub(in crate::engine) fn finish_job_start(
        &mut self,
        cx: &mut Ctx<'_>,
        idx: SeriesIdx,
        history: crate::store::JobHistory,
    ) {
        let now = cx.now;
        let base = cx.series.get(idx).id.clone();
        if self.jobs.contains_key(&idx) {
            return;
        }
        let (Some(market), Ok(stream)) =
            (Market::parse(base.market()), binance::stream_name(base.symbol(), base.timeframe()))
        else {
            // The supervisor validates first; this is a programming error path.
            cx.log(LogLevel::Error, format!("job_start_invalid series_id={base}"));
            return;
        };
        let head = history.head;
        let mut fold = self.make_fold(cx, &base);
        let mut derived = Vec::new();
        let mut restored: Vec<(usize, Candle)> = Vec::new();
        if let Some(f) = fold.as_mut() {
            derived = f.targets().iter().map(|t| cx.series.intern(t.series())).collect();
            if head.is_some() {
                let heads: Vec<(usize, Option<i64>)> =
                    (0..f.targets().len()).map(|i| (i, history.derived_heads.get(i).copied().flatten())).collect();
                f.restore(&history.restore, &heads, &mut restored);
            }
        }
        if let Some(h) = head {
            cx.series.note_closed(idx, h);
        }
        let job = Job::new(idx, base.clone(), market, stream.clone(), fold, derived.clone(), head, now);
        self.jobs.insert(idx, job);
        self.stream_jobs[market.index()].insert(crate::engine::fasthash::NameKey::new(&stream), idx);
        cx.counters.jobs_started += 1;
        let head_time = head.map_or("none".to_string(), |h| h.to_string());
        cx.log(LogLevel::Info, format!("job_started series_id={base} stream={stream} head_time={head_time}"));
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
            self.persist_and_publish(cx, set);
        }
        cx.pool.attach(&stream, market, now, cx.outputs);
        if let Some(gap) = history.gap {
            self.load_gap(cx, idx, gap);
        }
        self.heal_on_start(cx, idx, head);
        self.arm_close_due(cx, idx);
    }

    fn make_fold(&self, cx: &Ctx<'_>, base: &SeriesId) -> Option<DerivedFold> {
        let cfg = &cx.cfg.supervisor;
        if cfg.derived.is_empty() || base.timeframe() != cfg.derived_base {
            return None;
        }
        let fold = DerivedFold::new(base, &cfg.derived);
        (!fold.targets().is_empty()).then_some(fold)
    }

    /// Flushes the job's buffer first (nothing accepted is lost), then detaches.
    pub(in crate::engine) fn stop_job(&mut self, cx: &mut Ctx<'_>, idx: SeriesIdx, reason: &str) {
        // A job still waiting for its store read never starts.
        cx.store_ops.forget_job_start(idx);
        if !self.jobs.contains_key(&idx) {
            return;
        }
        self.cancel_heal(cx, idx, reason);
        self.cancel_native(cx, idx, reason);
        self.flush_job(cx, idx);
        let Some(job) = self.jobs.remove(&idx) else { return };
        for th in &job.throttles {
            if let Some(t) = th.timer {
                cx.timers.cancel(t);
            }
        }
        for t in [job.watchdog, job.close_timer].into_iter().flatten() {
            cx.timers.cancel(t);
        }
        self.stream_jobs[job.market.index()].remove(job.stream.as_bytes());
        cx.pool.detach(&job.stream, job.market, cx.now, cx.outputs);
        cx.counters.jobs_stopped += 1;
        cx.log(LogLevel::Info, format!("job_stopped series_id={} reason={reason}", job.base_id));
    }

    /// The pool says the job's stream is acknowledged: the supervisor counts
    /// it running, its silence is measured from now, and a stream that was
    /// lost heals what it missed.
    pub(in crate::engine) fn stream_came_live(&mut self, cx: &mut Ctx<'_>, market: Market, stream: &str) {
        let Some(idx) = self.stream_jobs[market.index()].get(stream.as_bytes()).copied() else { return };
        let id = cx.series.get(idx).id.clone();
        cx.supervisor.job_running(&id, cx.now);
        self.stream_live(cx, idx);
        if self.jobs.get_mut(&idx).is_some_and(|j| std::mem::take(&mut j.lost)) {
            self.heal_on_reconnect(cx, idx);
        }
    }

    /// The pool lost the job's stream: the supervisor counts a failure; the
    /// job heals once it is live again.
    pub(in crate::engine) fn stream_was_lost(&mut self, cx: &mut Ctx<'_>, market: Market, stream: &str, reason: &str) {
        let Some(idx) = self.stream_jobs[market.index()].get(stream.as_bytes()).copied() else { return };
        let id = cx.series.get(idx).id.clone();
        cx.supervisor.job_failed(&id, cx.now, reason);
        if let Some(j) = self.jobs.get_mut(&idx) {
            j.lost = true;
            j.last_frame_at = None;
        }
    }
}
