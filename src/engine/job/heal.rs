//! Healing history over REST, so clients never see a `gap` that could have been
//! filled. A job heals when it starts (from its stored head, or its first-visit
//! depth when it has none), when its stream comes back after a loss, and when
//! a candle's closing frame is late (the watchdog). While the first heal of a
//! job runs, its live closed candles wait in the buffer (the "gate"), so the
//! healed and the live candles are persisted and published together, in order,
//! with no `gap`. The gate opens when the heal ends, fails, or takes longer
//! than `gate_timeout`; rows fetched after that are written behind the head
//! (persisted, folded into derived timeframes, offered to subscribers whose
//! cursor is still behind them). Never reads a clock.

use super::ingest::{HealState, HealTask, Hole};
use crate::engine::series::SeriesIdx;
use super::{Ctx, Jobs};
use crate::engine::{LogLevel, RestId, RestPurpose, TimerKey};
use crate::model::Candle;
use crate::wire::binance::rest;
use crate::store::LedgerChange;
use crate::time::{Duration, Timestamp};

#[derive(Clone, Debug)]
pub struct HealConfig {
    pub enabled: bool,
    /// Base candles fetched for a series with no stored history.
    pub first_visit_candles: usize,
    /// At most this many candles per heal (older ones stay a recorded gap).
    pub max_candles: usize,
    /// A candle whose closing frame has not arrived this long after its close is fetched.
    pub late_close: Duration,
    /// The longest live data waits behind a running heal.
    pub gate_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig {
            enabled: true,
            first_visit_candles: 2000,
            max_candles: 20_000,
            late_close: Duration::from_secs(5),
            gate_timeout: Duration::from_secs(3),
            max_attempts: 5,
        }
    }
}

impl Jobs {
    /// The newest candle that must be closed by now for this job's timeframe.
    fn latest_closed_for(&self, cx: &Ctx<'_>, job: SeriesIdx) -> Option<i64> {
        let tf = self.jobs.get(&job)?.base_id.timeframe();
        Some(tf.expected_latest_closed(cx.now.as_secs()))
    }

    /// Heal at job start: from the stored head, or the first-visit depth.
    pub(in crate::engine) fn heal_on_start(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, head: Option<i64>) {
        let Some(latest) = self.latest_closed_for(cx, job) else { return };
        let Some(tf) = self.jobs.get(&job).map(|j| j.base_id.timeframe().seconds()) else { return };
        let from = match head {
            Some(h) => h + tf,
            None => latest - (cx.cfg.heal.first_visit_candles.max(1) as i64 - 1) * tf,
        };
        let reason = if head.is_some() { "restart" } else { "first_visit" };
        self.start_heal(cx, job, from, latest, reason, true);
    }

    /// Heal after the stream came back: from the newest closed candle known.
    pub(in crate::engine) fn heal_on_reconnect(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let Some(latest) = self.latest_closed_for(cx, job) else { return };
        let Some(j) = self.jobs.get(&job) else { return };
        let from = j.newest_closed().saturating_add(j.base_id.timeframe().seconds());
        self.start_heal(cx, job, from, latest, "reconnect", true);
    }

    /// Starts (or widens) a heal of `[from, to]` (open times, seconds).
    pub(in crate::engine) fn start_heal(
        &mut self,
        cx: &mut Ctx<'_>,
        job: SeriesIdx,
        from: i64,
        to: i64,
        reason: &'static str,
        gate: bool,
    ) {
        if !cx.cfg.heal.enabled {
            return;
        }
        let now = cx.now;
        let max = cx.cfg.heal.max_candles as i64;
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let tf = j.base_id.timeframe().seconds();
        let from = from.max(to - (max - 1) * tf).max(tf);
        if from > to {
            return;
        }
        let mut started = None;
        let mut ledger = false;
        match j.heal.as_mut() {
            Some(task) => {
                // Pages go forward from `next_from`; an older range waits as a
                // hole due now, healed when this task ends.
                if from < task.from {
                    let lower_to = task.from - tf;
                    j.hole = Some(Hole { from, to: lower_to, attempts: 0, retry_at: now, error: String::new() });
                    self.heal_retry_at = Some(now);
                    ledger = true;
                }
                task.to = task.to.max(to);
            }
            None => {
                j.heal = Some(HealTask {
                    from,
                    to,
                    next_from: from,
                    request: None,
                    attempts: 0,
                    retry_at: None,
                    gate_until: gate.then(|| now.add(cx.cfg.heal.gate_timeout)),
                    reason,
                    rows: Vec::new(),
                    ext: Vec::new(),
                });
                j.heal_state.begin(now, reason, (to - from) / tf + 1);
                started = Some(format!("heal_started series_id={} from={from} to={to} reason={reason}", j.base_id));
            }
        }
        if gate {
            // The flush waits for the heal, but never past the gate timeout.
            if let Some(t) = j.heal.as_ref().and_then(|h| h.gate_until) {
                if let Some(old) = j.flush_timer.take() {
                    cx.timers.cancel(old);
                }
                if j.buffered() > 0 {
                    j.flush_timer = Some(cx.timers.insert(t, TimerKey::Flush(job)));
                }
            }
        }
        if let Some(line) = started {
            cx.counters.heals_started += 1;
            cx.log(LogLevel::Info, line);
        }
        if ledger {
            self.sync_gap_ledger(cx, job);
        }
        self.request_next_page(cx, job);
    }

    /// Sends the next page of a job's heal, if none is in flight.
    fn request_next_page(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(task) = j.heal.as_mut() else { return };
        if task.request.is_some() || task.retry_at.is_some_and(|t| cx.now < t) {
            return;
        }
        let tf = j.base_id.timeframe();
        let limit = rest::max_limit(j.market);
        // The page asks for the whole rest of the range: the exchange answers
        // with the first `limit` candles that exist from `next_from` on, so
        // the time before a symbol's listing costs no page, and a short or
        // empty page means the range is exhausted.
        let page_end = task.to;
        let symbol = rest::symbol_from_stream(&j.stream);
        let path = rest::klines_path(j.market, &symbol, tf, task.next_from, page_end, limit);
        let weight = rest::klines_weight(j.market, limit);
        match cx.rest.submit(j.market, path, weight, RestPurpose::Heal { job, page_end }) {
            Some(id) => task.request = Some(id),
            None => task.retry_at = Some(cx.now.add(Duration::from_secs(5))),
        }
    }

    /// A heal page came back (or failed): keep its closed rows, go on, or
    /// finish. Returns the job when the exchange refused its symbol (`-1121`).
    pub(in crate::engine) fn on_heal_response(
        &mut self,
        cx: &mut Ctx<'_>,
        id: RestId,
        job: SeriesIdx,
        page_end: i64,
        result: Result<String, (Option<u16>, String)>,
    ) -> Option<SeriesIdx> {
        let now = cx.now;
        let max_attempts = cx.cfg.heal.max_attempts;
        let Some(j) = self.jobs.get_mut(&job) else { return None };
        // A page of a heal that was cancelled (its job stopped, maybe started
        // again since) belongs to no running task.
        let Some(task) = j.heal.as_mut().filter(|t| t.request == Some(id)) else { return None };
        task.request = None;
        let tf = j.base_id.timeframe().seconds();
        match result {
            Ok(body) => match rest::parse_klines(&body) {
                Ok((rows, skipped)) => {
                    cx.counters.rest_rows_skipped += skipped as u64;
                    let forming = j.latest_forming.map(|c| c.candle_time);
                    let now_ms = (now.as_nanos() / 1_000_000) as i64;
                    let grace_ms = cx.cfg.heal.late_close.as_millis() as i64;
                    let lo = task.next_from;
                    // Only candles whose close is past, inside the page, and older than
                    // the live forming candle are closed: the last row is often still open.
                    // A candle closed longer than the late-close grace ago is closed even
                    // if it is the last one the stream showed forming (its close never came).
                    let closed: Vec<&rest::RestKline> = rows
                        .iter()
                        .filter(|r| r.candle.candle_time >= lo && r.candle.candle_time <= page_end)
                        .filter(|r| {
                            r.close_time_ms < now_ms
                                && (forming.is_none_or(|f| r.candle.candle_time < f)
                                    || r.close_time_ms + grace_ms < now_ms)
                        })
                        .collect();
                    task.rows.extend(closed.iter().map(|r| r.candle));
                    task.ext.extend(closed.iter().filter_map(|r| r.ext.map(|e| (r.candle.candle_time, e))));
                    // A full page may have more behind it; anything shorter
                    // (an empty page included) ends the range.
                    let newest = rows.iter().map(|r| r.candle.candle_time).max();
                    task.next_from = match newest {
                        Some(t) if rows.len() + skipped >= rest::max_limit(j.market) => t.max(lo) + tf,
                        _ => page_end + tf,
                    };
                    task.attempts = 0;
                    j.heal_state.progress(now, task.rows.len() as i64);
                    if task.next_from > task.to {
                        self.finish_heal(cx, job, None);
                        return None;
                    }
                }
                Err(e) => {
                    self.heal_failed_attempt(cx, job, None, e, max_attempts);
                    return None;
                }
            },
            Err((Some(status), body)) if status == 429 || status == 418 => {
                // The scheduler paused the market; ask again (not an attempt).
                let _ = body;
            }
            Err((Some(status), body)) if (400..500).contains(&status) => {
                // The exchange refuses this request: retrying won't help. An
                // unknown symbol also ends the job and its subscriptions.
                self.finish_heal(cx, job, Some(rest::error_text(status, &body)));
                return (rest::error_code(&body) == Some(rest::INVALID_SYMBOL)).then_some(job);
            }
            Err((status, reason)) => {
                self.heal_failed_attempt(cx, job, status, reason, max_attempts);
                return None;
            }
        }
        self.request_next_page(cx, job);
        None
    }

    fn heal_failed_attempt(
        &mut self,
        cx: &mut Ctx<'_>,
        job: SeriesIdx,
        status: Option<u16>,
        reason: String,
        max_attempts: u32,
    ) {
        let now = cx.now;
        let Some(task) = self.jobs.get_mut(&job).and_then(|j| j.heal.as_mut()) else { return };
        task.attempts += 1;
        let why = match status {
            Some(s) => format!("HTTP {s}: {reason}"),
            None => reason,
        };
        if task.attempts >= max_attempts {
            return self.finish_heal(cx, job, Some(why));
        }
        let backoff = Duration::from_secs(1u64 << task.attempts.min(6));
        task.retry_at = Some(now.add(backoff));
        self.heal_retry_at = Some(self.heal_retry_at.map_or(now.add(backoff), |t| t.min(now.add(backoff))));
    }

    /// Ends a heal: its rows join the job's buffer (or, behind the head, are
    /// written directly), the gate opens, and the buffer is flushed.
    fn finish_heal(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, error: Option<String>) {
        let now = cx.now;
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(task) = j.heal.take() else { return };
        let healed = task.rows.len();
        match &error {
            // What was not fetched stays a hole, retried later with a growing delay
            // (an unknown symbol backs off to 15 minutes: no retry storm).
            Some(e) if task.next_from <= task.to => {
                let attempts = j.hole.as_ref().map_or(0, |h| h.attempts) + 1;
                let delay = Duration::from_secs((30u64 << attempts.min(5)).min(900));
                j.hole = Some(Hole { from: task.next_from, to: task.to, attempts, retry_at: now.add(delay), error: e.clone() });
                self.heal_retry_at = Some(self.heal_retry_at.map_or(now.add(delay), |t| t.min(now.add(delay))));
            }
            Some(_) => {}
            None => {
                if j.hole.as_ref().is_some_and(|h| h.from >= task.from && h.to <= task.to) {
                    j.hole = None;
                }
            }
        }
        // A hole left for after this task (an older range asked for while it
        // ran) is due now or at its backoff: arm the retry, whatever made it.
        if let Some(at) = j.hole.as_ref().map(|h| h.retry_at) {
            self.heal_retry_at = Some(self.heal_retry_at.map_or(at, |t| t.min(at)));
        }
        let healed_ext = task.ext;
        let (ahead, behind) = j.absorb_healed(task.rows);
        match &error {
            None => j.heal_state.succeed(now, healed as i64),
            Some(e) => j.heal_state.fail(now, e.clone()),
        }
        let name = j.base_id.to_string();
        cx.counters.candles_healed += healed as u64;
        match &error {
            None => cx.counters.heals_succeeded += 1,
            Some(_) => cx.counters.heals_failed += 1,
        }
        let line = match &error {
            None => format!("heal_done series_id={name} candles={healed} reason={}", task.reason),
            Some(e) => format!("heal_failed series_id={name} candles={healed} reason={} error={e:?}", task.reason),
        };
        cx.log(if error.is_none() { LogLevel::Info } else { LogLevel::Warn }, line);
        self.note_healed_ext(cx, job, healed_ext);
        if !behind.is_empty() {
            self.write_behind_head(cx, job, behind);
        }
        let _ = ahead;
        self.sync_gap_ledger(cx, job);
        self.flush_job(cx, job);
        self.release_held(cx, job);
    }

    /// The job is going away mid-heal (reaped, evicted, shut down, unlisted):
    /// the heal ends with a `heal_cancelled` line (every `heal_started` has an
    /// end), what it fetched so far joins the job's buffer, and the gate opens
    /// so the job's final flush writes the live candles that waited behind it.
    /// Its in-flight page, if any, is ignored when it comes back (no task).
    pub(in crate::engine) fn cancel_heal(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, why: &str) {
        let now = cx.now;
        cx.rest.cancel_queued(|p| matches!(p, RestPurpose::Heal { job: j, .. } if *j == job));
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(task) = j.heal.take() else { return };
        let fetched = task.rows.len();
        let (_, behind) = j.absorb_healed(task.rows);
        j.heal_state.fail(now, format!("cancelled: {why}"));
        let line = format!("heal_cancelled series_id={} candles={fetched} reason={} cause={why}", j.base_id, task.reason);
        cx.log(LogLevel::Info, line);
        if !behind.is_empty() {
            self.write_behind_head(cx, job, behind);
        }
    }

    /// Mirrors the job's hole into the store's gap ledger (kept across restarts).
    pub(in crate::engine) fn sync_gap_ledger(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let Some(j) = self.jobs.get(&job) else { return };
        let change = match &j.hole {
            Some(h) => LedgerChange::Put(crate::store::GapRecord {
                series_id: j.base_id.as_str().to_string(),
                from: h.from,
                to: h.to,
                reason: if h.error.is_empty() { "pending".to_string() } else { h.error.clone() },
                attempts: h.attempts,
                updated_at: cx.now.as_secs(),
            }),
            None => LedgerChange::Delete(j.base_id.as_str().to_string()),
        };
        let write = crate::store::StoreWrite { ledger: vec![change], ..Default::default() };
        cx.write_store(write, crate::engine::store_ops::WriteFor::Quiet(crate::engine::store_ops::Quiet::GapLedger));
    }

    /// At job start: a ledger entry left by an earlier run becomes the job's
    /// hole, retried now.
    pub(in crate::engine) fn load_gap(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, g: crate::store::GapRecord) {
        let now = cx.now;
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.hole = Some(Hole { from: g.from, to: g.to, attempts: g.attempts, retry_at: now, error: g.reason });
        self.heal_retry_at = Some(now);
    }

    /// A subscriber asked for history older than the store holds: heal it
    /// first (bounded by `max_candles`; what stays missing shows as a gap) and
    /// hold that subscription's catch-up until the heal ends. Returns whether
    /// the subscription must be held.
    /// `have_from`: the oldest stored open time of `id`.
    pub(in crate::engine) fn catchup_heal(
        &mut self,
        cx: &mut Ctx<'_>,
        id: &crate::model::SeriesId,
        since: Option<i64>,
        have_from: Option<i64>,
    ) -> bool {
        let Some(since) = since else { return false };
        if !cx.cfg.heal.enabled || since <= 0 {
            return false;
        }
        let base = cx.supervisor.normalize(id);
        let Some(job) = cx.series.lookup(base.as_str()).filter(|i| self.jobs.contains_key(i)) else { return false };
        let base_tf = base.timeframe().seconds();
        let want_from = id.timeframe().bucket_open(since) + id.timeframe().seconds();
        let Some(latest) = self.latest_closed_for(cx, job) else { return false };
        let to = have_from.map_or(latest, |f| f - base_tf).min(latest);
        if want_from > to {
            return false;
        }
        let Some(j) = self.jobs.get(&job) else { return false };
        // A range that healing already failed to fill is not waited for again.
        if j.hole.as_ref().is_some_and(|h| h.from <= want_from && h.to >= to) {
            return false;
        }
        self.start_heal(cx, job, want_from, to, "catchup", false);
        let running = self.jobs.get(&job).is_some_and(|j| j.heal.is_some());
        if running {
            let at = cx.now.add(cx.cfg.heal.gate_timeout);
            cx.timers.insert(at, TimerKey::ReleaseHeld(job));
        }
        running
    }

    /// Held subscriptions of a job's series (base and derived) get their catch-up.
    pub(in crate::engine) fn release_held(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let Some(j) = self.jobs.get(&job) else { return };
        let mut series = vec![j.base];
        series.extend(j.derived.iter().copied());
        let now_s = cx.now.as_secs();
        for idx in series {
            cx.hub.release_held(idx, now_s, cx.series, cx.outputs);
        }
    }

    /// Healed candles older than what was already published: persisted and
    /// folded into derived timeframes, published to cursors still behind them.
    fn write_behind_head(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, candles: Vec<Candle>) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let base_tf = j.base_id.timeframe();
        let mut set = vec![(j.base, candles.clone())];
        // Old history is rolled up directly (the live fold only keeps recent buckets).
        if let Some(fold) = j.fold.as_ref() {
            for (i, target) in fold.targets().iter().enumerate() {
                let rolled = crate::engine::derived::rollup(&candles, base_tf, target.tf());
                if !rolled.is_empty() {
                    set.push((j.derived[i], rolled));
                }
            }
        }
        self.persist_and_publish(cx, set);
    }

    /// Watchdog: a newer candle is live while an older one never closed.
    pub(in crate::engine) fn check_late_close(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx, newest_open: i64) {
        let now = cx.now;
        let delay = cx.cfg.heal.late_close;
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if !cx.cfg.heal.enabled || j.heal.is_some() || j.watchdog.is_some() {
            return;
        }
        let tf = j.base_id.timeframe().seconds();
        if j.newest_closed() > i64::MIN && newest_open > j.newest_closed() + tf {
            j.watchdog = Some(cx.timers.insert(now.add(delay), TimerKey::Watchdog(job)));
        }
    }

    /// Arms the clock watchdog at the close of the job's current candle plus
    /// the grace, whatever frames arrive or not (at job start, every candle
    /// before the current one is covered by the start heal).
    pub(in crate::engine) fn arm_close_due(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        if !cx.cfg.heal.enabled {
            return;
        }
        let grace = cx.cfg.heal.late_close;
        let checked_at = Timestamp(cx.now.0.saturating_sub(grace.0));
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let tf = j.base_id.timeframe();
        let current = tf.bucket_open(checked_at.as_secs());
        if j.close_checked == i64::MIN {
            j.close_checked = current - tf.seconds();
        }
        let at = Timestamp::from_secs((current + tf.seconds()).max(0) as u64).add(grace);
        j.close_timer = Some(cx.timers.insert(at, TimerKey::CloseDue(job)));
    }

    /// The clock watchdog: candles that closed `late_close` ago or more and
    /// never arrived (no closing frame, maybe no frame at all) are fetched
    /// over REST, once; then the next candle's close is watched.
    pub(in crate::engine) fn fire_close_due(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let grace = cx.cfg.heal.late_close;
        let checked_at = Timestamp(cx.now.0.saturating_sub(grace.0));
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.close_timer = None;
        let tf = j.base_id.timeframe();
        let due = tf.expected_latest_closed(checked_at.as_secs());
        let newest = j.newest_closed();
        if due > j.close_checked {
            let from = newest.max(j.close_checked).saturating_add(tf.seconds());
            j.close_checked = due;
            // A series with no history at all is the start heal's business.
            if newest > i64::MIN && from <= due {
                cx.counters.late_close_fetches += 1;
                self.start_heal(cx, job, from, due, "late_close", false);
            }
        }
        self.arm_close_due(cx, job);
    }

    pub(in crate::engine) fn fire_watchdog(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.watchdog = None;
        let tf = j.base_id.timeframe().seconds();
        let newest_open = j.latest_forming.map_or(j.newest_closed(), |c| c.candle_time);
        let from = j.newest_closed().saturating_add(tf);
        let to = newest_open - tf;
        if from <= to {
            cx.counters.late_close_fetches += 1;
            self.start_heal(cx, job, from, to, "late_close", false);
        }
    }

    /// Retries heals whose backoff passed, and holes whose retry time came.
    pub(in crate::engine) fn retry_heals(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now;
        self.heal_retry_at = None;
        let holes: Vec<(SeriesIdx, Hole)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.heal.is_none())
            .filter_map(|(i, j)| j.hole.clone().map(|h| (*i, h)))
            .collect();
        for (job, hole) in holes {
            if hole.retry_at <= now {
                self.start_heal(cx, job, hole.from, hole.to, "hole_retry", false);
            } else {
                self.heal_retry_at = Some(self.heal_retry_at.map_or(hole.retry_at, |t| t.min(hole.retry_at)));
            }
        }
        let due: Vec<SeriesIdx> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.heal.as_ref().is_some_and(|h| h.request.is_none() && h.retry_at.is_some()))
            .map(|(i, _)| *i)
            .collect();
        for job in due {
            let retry_at = self.jobs.get(&job).and_then(|j| j.heal.as_ref()).and_then(|h| h.retry_at);
            match retry_at {
                Some(t) if t <= now => {
                    if let Some(h) = self.jobs.get_mut(&job).and_then(|j| j.heal.as_mut()) {
                        h.retry_at = None;
                    }
                    self.request_next_page(cx, job);
                }
                Some(t) => self.heal_retry_at = Some(self.heal_retry_at.map_or(t, |x| x.min(t))),
                None => {}
            }
        }
    }
}

/// For the debug snapshot and health: a job's healing state.
pub fn heal_state_json(state: &HealState) -> serde_json::Value {
    serde_json::json!({
        "state": state.state,
        "reason": state.reason,
        "started_at": state.started_at.map(|t| t.as_secs_f64()),
        "updated_at": state.updated_at.map(|t| t.as_secs_f64()),
        "candles_wanted": state.wanted,
        "candles_healed": state.healed,
        "error": state.error,
    })
}

/// A hole waiting for its retry, for the debug snapshot and metrics.
pub fn hole_json(hole: &Hole) -> serde_json::Value {
    serde_json::json!({
        "from": hole.from,
        "to": hole.to,
        "attempts": hole.attempts,
        "retry_at": hole.retry_at.as_secs_f64(),
        "error": hole.error,
    })
}
