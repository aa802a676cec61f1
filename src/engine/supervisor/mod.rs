//! Supervisor of ingest jobs: which base series have an ingest
//! job, who holds them (pinned whitelist entries or refcounted on-demand
//! subscribers), when they are started, restarted, evicted and reaped.
//!
//! It owns the job table, the capacity policy, the idle reaper, crash
//! accounting and one [`Guardrail`] per job. It is a pure state machine: time is
//! an argument, and everything it wants done is pushed as an [`Effect`] into a
//! caller-provided `Vec`. It never touches a socket, the store, a clock or the
//! job's buffers — the engine carries out `Start` (attach the exchange stream,
//! create the ingest job) and `Stop` (flush the job's closed buffer to the
//! store, then detach).
//!
//! Job life cycle (one record per base series, kept across restarts so the
//! refcount, crash counters and guardrail survive a crash):
//!
//! ```text
//!   subscribe / start_whitelist ──Start──► Starting ──job_running──► Running
//!        ▲                                    │                        │
//!        │                                    └──────job_failed────────┤
//!        │                                                             ▼
//!        └── (removed) ◄──Stop{Reaped|Evicted|Shutdown}──── … ◄──── Dead ──retry due──► Start
//! ```
//!
//! Deliberate differences from the reference system this replaces:
//! - re-subscribing to a dead job keeps its refcount and crash counters (the
//!   reference replaced it with a fresh refcount-1 job);
//! - an unsupported exchange / market / symbol / timeframe is rejected up front
//!   with [`SubscribeOutcome::Unsupported`] and a message, never a crash loop
//!   and never reported as `capacity`;
//! - every removal (evict, reap — including a dead job — and shutdown) is an
//!   explicit `Stop` with a reason, so the engine flushes before detaching;
//! - one clock: the engine's [`Timestamp`] (Unix ns) for TTLs, crashes, retries
//!   and the debug snapshot;
//! - whitelist entries are normalized: a whitelisted derived series pins its
//!   base job instead of getting a native job of its own;
//! - a dead job is retried at the exact time its guardrail allows
//!   ([`Supervisor::next_deadline`]) instead of on a 1 s polling tick.
//!
//! Files: [`config`] (role and settings), [`effect`] (what it asks of the engine),
//! [`job`] (one job's record and the reaper's decision), [`supported`] (what can
//! be ingested at all); the job table and its policies are here.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::model::{SeriesId, Timeframe};
use crate::time::{Duration, Timestamp};

mod config;
mod effect;
mod job;
mod supported;
#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;

pub use config::{Role, SupervisorConfig};
pub use effect::{Effect, StopReason, SubscribeOutcome};
pub use job::{JobState, JobView};
pub use supported::{is_binance_interval, SUPPORTED_EXCHANGE, SUPPORTED_MARKETS};

use job::{reaper_action, Job, ReaperAction};
use supported::{
    effective_derived, validate_exchange, validate_market, validate_symbol, BINANCE_INTERVALS,
};

const MIN_IDLE_TTL: Duration = Duration::from_secs(1);

/// The `source` the debug snapshot reports for every job (reference binding name).
const SOURCE_NAME: &str = "binance_ws";

/// The on-demand capacity decision for a new job.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CapacityPlan {
    Accept,
    AcceptEvicting(SeriesId),
    Reject,
}

pub struct Supervisor {
    cfg: SupervisorConfig,
    /// Effective derived targets (filtered); empty when derivation is off.
    derived: BTreeSet<Timeframe>,
    /// Normalized, valid whitelist entries.
    pinned: BTreeSet<SeriesId>,
    /// Configured whitelist ids as given (sorted, deduped), for the snapshot.
    whitelist_ids: Vec<String>,
    whitelist_rejections: Vec<(SeriesId, String)>,
    jobs: BTreeMap<SeriesId, Job>,
    /// After `shutdown` nothing starts again.
    shut_down: bool,
    /// An `ingest` node that does not hold the leader lease: no job starts
    /// (as in `read`) until [`Supervisor::set_standby`]`(false)`.
    standby: bool,
    /// `next_deadline`, computed once per change (it is asked after every
    /// engine step; scanning every job each time dominated large replays).
    /// `None`: stale. Every `&mut self` entry point clears it.
    deadline_cache: Cell<Option<Option<Timestamp>>>,
}

impl Supervisor {
    pub fn new(cfg: SupervisorConfig) -> Self {
        let mut cfg = cfg;
        cfg.idle_ttl = cfg.idle_ttl.max(MIN_IDLE_TTL);
        let derived = effective_derived(cfg.derived_base, &cfg.derived);
        let whitelist = cfg.whitelist.clone();
        let mut sup = Supervisor {
            cfg,
            derived,
            pinned: BTreeSet::new(),
            whitelist_ids: Vec::new(),
            whitelist_rejections: Vec::new(),
            jobs: BTreeMap::new(),
            shut_down: false,
            standby: false,
            deadline_cache: Cell::new(None),
        };
        sup.set_whitelist(whitelist);
        sup
    }

    /// Takes `whitelist` as the pinned set: each entry validated (a refused
    /// one is kept with its reason), pinned by its base series.
    fn set_whitelist(&mut self, whitelist: Vec<SeriesId>) {
        self.pinned.clear();
        self.whitelist_rejections.clear();
        for entry in &whitelist {
            match self.validate(entry) {
                Ok(()) => {
                    let base = self.normalize(entry);
                    self.pinned.insert(base);
                }
                Err(msg) => self.whitelist_rejections.push((entry.clone(), msg)),
            }
        }
        let ids: BTreeSet<String> = whitelist.iter().map(|s| s.as_str().to_string()).collect();
        self.whitelist_ids = ids.into_iter().collect();
        self.cfg.whitelist = whitelist;
    }

    pub fn config(&self) -> &SupervisorConfig {
        &self.cfg
    }

    /// Whitelist entries that cannot be ingested, with the reason; the engine
    /// should log them at startup. They are never pinned.
    pub fn whitelist_rejections(&self) -> &[(SeriesId, String)] {
        &self.whitelist_rejections
    }

    /// The base series that feeds `s`: a derived timeframe maps to the derived
    /// base (same exchange/market/symbol), anything else to itself.
    pub fn normalize(&self, s: &SeriesId) -> SeriesId {
        if self.derived.contains(&s.timeframe()) {
            s.with_timeframe(self.cfg.derived_base)
        } else {
            s.clone()
        }
    }

    /// Whether the series, as requested by a client, can ever be ingested.
    pub fn validate(&self, s: &SeriesId) -> Result<(), String> {
        validate_exchange(s.exchange())?;
        validate_market(s.market())?;
        validate_symbol(s.market(), s.symbol())?;
        self.validate_timeframe(s.timeframe())
    }

    /// Pinned = whitelist ingest is on and the base series is whitelisted.
    pub fn is_pinned(&self, base: &SeriesId) -> bool {
        self.cfg.whitelist_ingest_enabled && self.pinned.contains(base)
    }

    /// False in the `read` role (no job is ever started) and on a standby.
    pub fn ingest_jobs_enabled(&self) -> bool {
        self.cfg.role.runs_ingest_jobs() && !self.standby
    }

    /// A standby `ingest` node starts no job until it holds the leader lease.
    pub fn set_standby(&mut self, standby: bool) {
        self.deadline_cache.set(None);
        self.standby = standby;
    }

    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// How many jobs are starting, running and dead (for metrics).
    pub fn count_by_state(&self) -> [(JobState, usize); 3] {
        let mut counts = [(JobState::Starting, 0), (JobState::Running, 0), (JobState::Dead, 0)];
        for job in self.jobs.values() {
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == job.state) {
                slot.1 += 1;
            }
        }
        counts
    }

    pub fn jobs_len(&self) -> usize {
        self.jobs.len()
    }

    pub fn job(&self, series: &SeriesId) -> Option<JobView> {
        let base = self.normalize(series);
        let job = self.jobs.get(&base)?;
        let pinned = self.is_pinned(&base);
        let next_retry_at =
            (job.is_dead() && job.is_wanted(pinned)).then(|| job.restart_not_before());
        Some(JobView {
            refcount: job.refcount,
            state: job.state,
            running: !job.is_dead(),
            crashes: job.crashes,
            pinned,
            started_at: job.started_at,
            last_zero_at: job.last_zero_at,
            last_crash_at: job.last_crash_at,
            next_retry_at,
            breaker: job.guardrail.state(),
        })
    }

    /// A client wants `requested`. In order: unsupported → `Unsupported`;
    /// on-demand off → `Accepted` without a job (the engine may call this
    /// unconditionally); pinned or `read` role → `Accepted` without a refcount;
    /// an existing job (running or dead) gains a reference — a dead one keeps
    /// its counters and is restarted now if its retry time and breaker allow,
    /// else by `on_tick`; no job → capacity plan, possibly evicting the oldest
    /// idle job first.
    pub fn subscribe(
        &mut self,
        requested: &SeriesId,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> SubscribeOutcome {
        self.deadline_cache.set(None);
        if let Err(msg) = self.validate(requested) {
            return SubscribeOutcome::Unsupported(msg);
        }
        if !self.cfg.ondemand_enabled || self.shut_down {
            return SubscribeOutcome::Accepted;
        }
        let base = self.normalize(requested);
        if self.is_pinned(&base) || !self.ingest_jobs_enabled() {
            return SubscribeOutcome::Accepted;
        }
        if let Some(job) = self.jobs.get_mut(&base) {
            // A pinned-style refcount cannot reach here (pinned returned above).
            job.refcount = job.refcount.max(0) + 1;
            job.last_zero_at = None;
            if job.is_dead() {
                self.try_restart(&base, now, out);
            }
            return SubscribeOutcome::Accepted;
        }
        match self.plan_capacity() {
            CapacityPlan::Reject => SubscribeOutcome::Capacity,
            CapacityPlan::Accept => {
                self.start_new_job(base, 1, now, out);
                SubscribeOutcome::Accepted
            }
            CapacityPlan::AcceptEvicting(victim) => {
                self.remove_job(&victim, StopReason::Evicted, out);
                self.start_new_job(base, 1, now, out);
                SubscribeOutcome::Accepted
            }
        }
    }

    /// A client no longer wants `requested`. The refcount floors at 0;
    /// reaching (or staying at) 0 starts the idle clock. Pinned, unknown,
    /// unsupported series and the `read` role are no-ops.
    pub fn unsubscribe(&mut self, requested: &SeriesId, now: Timestamp) {
        self.deadline_cache.set(None);
        if !self.cfg.ondemand_enabled || !self.ingest_jobs_enabled() {
            return;
        }
        let base = self.normalize(requested);
        if self.is_pinned(&base) {
            return;
        }
        let Some(job) = self.jobs.get_mut(&base) else {
            return;
        };
        job.refcount = (job.refcount - 1).max(0);
        if job.refcount == 0 {
            job.last_zero_at = Some(now);
        }
    }

    /// Starts a pinned job (refcount −1) for every normalized whitelist entry
    /// that has none. Idempotent.
    pub fn start_whitelist(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        self.deadline_cache.set(None);
        if self.shut_down || !self.ingest_jobs_enabled() || !self.cfg.whitelist_ingest_enabled {
            return;
        }
        let missing: Vec<SeriesId> =
            self.pinned.iter().filter(|s| !self.jobs.contains_key(*s)).cloned().collect();
        for base in missing {
            self.start_new_job(base, -1, now, out);
        }
    }

    /// `SIGHUP` (`Input::Reload`): a new whitelist, on-demand cap and idle
    /// TTL. Pins added start now (an on-demand job of that series becomes
    /// pinned and keeps running); pins removed become on-demand jobs held by
    /// `holders(base)` subscribers — with none, their idle clock starts now
    /// and the reaper removes them after the TTL like any other (with
    /// on-demand off they stop at once). Returns the base series pinned and
    /// unpinned by the change, in order.
    pub fn reload(
        &mut self,
        whitelist: Vec<SeriesId>,
        max_ondemand_jobs: usize,
        idle_ttl: Duration,
        now: Timestamp,
        holders: &dyn Fn(&SeriesId) -> i64,
        out: &mut Vec<Effect>,
    ) -> (Vec<SeriesId>, Vec<SeriesId>) {
        self.deadline_cache.set(None);
        let old = std::mem::take(&mut self.pinned);
        self.set_whitelist(whitelist);
        self.cfg.max_ondemand_jobs = max_ondemand_jobs;
        self.cfg.idle_ttl = idle_ttl.max(MIN_IDLE_TTL);
        let added: Vec<SeriesId> = self.pinned.difference(&old).cloned().collect();
        let removed: Vec<SeriesId> = old.difference(&self.pinned).cloned().collect();
        if self.shut_down || !self.ingest_jobs_enabled() || !self.cfg.whitelist_ingest_enabled {
            return (added, removed);
        }
        for base in &removed {
            if !self.cfg.ondemand_enabled {
                self.remove_job(base, StopReason::Reaped, out);
                continue;
            }
            if let Some(job) = self.jobs.get_mut(base) {
                let n = holders(base).max(0);
                job.refcount = n;
                job.last_zero_at = (n == 0).then_some(now);
            }
        }
        for base in &added {
            if let Some(job) = self.jobs.get_mut(base) {
                job.refcount = -1;
                job.last_zero_at = None;
                if job.is_dead() {
                    self.try_restart(base, now, out);
                }
            }
        }
        self.start_whitelist(now, out);
        (added, removed)
    }

    /// The engine saw the job's stream live (first frame or subscribe ack).
    /// Resets its breaker. Ignored for an unknown or dead job: nothing of its
    /// was outstanding.
    pub fn job_running(&mut self, series: &SeriesId, _now: Timestamp) {
        self.deadline_cache.set(None);
        let base = self.normalize(series);
        let Some(job) = self.jobs.get_mut(&base) else {
            return;
        };
        if job.is_dead() {
            return;
        }
        job.state = JobState::Running;
        job.guardrail.on_success();
    }

    /// The job's source failed (connection lost, subscribe refused, …): the job
    /// is dead, its crash is counted, and its retry time is set from the
    /// guardrail. A second report for an already dead job is ignored so one
    /// outage counts once.
    pub fn job_failed(&mut self, series: &SeriesId, now: Timestamp, error: &str) {
        self.deadline_cache.set(None);
        let base = self.normalize(series);
        let Some(job) = self.jobs.get_mut(&base) else {
            return;
        };
        if job.is_dead() {
            return;
        }
        job.state = JobState::Dead;
        job.crashes = job.crashes.saturating_add(1);
        job.last_crash_at = Some(now);
        let wait = job.guardrail.on_failure(now, error);
        job.retry_at = now.add(wait);
    }

    /// The reaper at `now`: reaps idle-past-TTL jobs and dead unwanted
    /// ones (each with `Stop{Reaped}` so the engine flushes what the job still
    /// buffers), then restarts dead wanted jobs whose retry time has come and
    /// whose breaker allows an attempt. Calling it early is harmless.
    pub fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        self.deadline_cache.set(None);
        if self.shut_down {
            return;
        }
        let ttl = self.cfg.idle_ttl;
        let mut reap = Vec::new();
        let mut restart = Vec::new();
        for (series, job) in &self.jobs {
            match reaper_action(job, self.is_pinned(series), now, ttl) {
                ReaperAction::Keep => {}
                ReaperAction::Reap => reap.push(series.clone()),
                ReaperAction::Restart => restart.push(series.clone()),
            }
        }
        for series in &reap {
            self.remove_job(series, StopReason::Reaped, out);
        }
        for series in &restart {
            self.try_restart(series, now, out);
        }
    }

    /// The earliest time at which `on_tick` would act: an idle job's TTL
    /// expiry or a dead job's retry. A dead unwanted job is due at once (the
    /// returned time is in the past). `None` when nothing is pending. Pure.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.shut_down {
            return None;
        }
        if let Some(cached) = self.deadline_cache.get() {
            return cached;
        }
        let next = self.jobs.iter().filter_map(|(series, job)| self.job_deadline(series, job)).min();
        self.deadline_cache.set(Some(next));
        next
    }

    /// The series can never be ingested (its symbol is not listed): its job,
    /// pinned or not, is removed with `Stop{Unlisted}` and not restarted.
    pub fn end_unlisted(&mut self, series: &SeriesId, out: &mut Vec<Effect>) {
        self.deadline_cache.set(None);
        let base = self.normalize(series);
        self.remove_job(&base, StopReason::Unlisted, out);
    }

    /// Stops every job (`Stop{Shutdown}`, dead ones included, for their
    /// buffers) and refuses to start any afterwards.
    pub fn shutdown(&mut self, out: &mut Vec<Effect>) {
        self.deadline_cache.set(None);
        self.shut_down = true;
        for series in std::mem::take(&mut self.jobs).into_keys() {
            out.push(Effect::Stop { series, reason: StopReason::Shutdown });
        }
    }

    /// The debug snapshot (the reference system's shape; times are Unix seconds from the engine
    /// clock). Extra per-job fields: `state`, `pinned`, `next_retry_at`.
    pub fn snapshot(&self, now: Timestamp) -> Value {
        let jobs: Vec<Value> =
            self.jobs.iter().map(|(series, job)| self.job_snapshot(series, job, now)).collect();
        let whitelist_errors: Vec<Value> = self
            .whitelist_rejections
            .iter()
            .map(|(s, e)| json!({"series_id": s.as_str(), "error": e}))
            .collect();
        json!({
            "jobs": jobs,
            "whitelist_series_ids": self.whitelist_ids,
            "whitelist_errors": whitelist_errors,
            "ondemand_enabled": self.cfg.ondemand_enabled,
            "ondemand_max_jobs": self.cfg.max_ondemand_jobs,
            "ondemand_idle_ttl_s": self.cfg.idle_ttl.as_secs_f64(),
            "whitelist_ingest_enabled": self.cfg.whitelist_ingest_enabled,
            "ingest_role_guard_enabled": true,
            "ingest_role": self.cfg.role.as_str(),
            "ingest_jobs_enabled": self.ingest_jobs_enabled(),
            "loop_guardrail_enabled": self.cfg.guardrail.enabled,
        })
    }

    fn job_snapshot(&self, series: &SeriesId, job: &Job, now: Timestamp) -> Value {
        let pinned = self.is_pinned(series);
        let next_retry_at = (job.is_dead() && job.is_wanted(pinned))
            .then(|| job.restart_not_before().as_secs_f64());
        let guardrail =
            if self.cfg.guardrail.enabled { job.guardrail.snapshot(now) } else { Value::Null };
        json!({
            "series_id": series.as_str(),
            "source": SOURCE_NAME,
            "refcount": job.refcount,
            "last_zero_at": job.last_zero_at.map(Timestamp::as_secs_f64),
            "started_at": job.started_at.as_secs_f64(),
            "crashes": job.crashes,
            "last_crash_at": job.last_crash_at.map(Timestamp::as_secs_f64),
            "running": !job.is_dead(),
            "state": job.state.as_str(),
            "pinned": pinned,
            "next_retry_at": next_retry_at,
            "guardrail": guardrail,
        })
    }

    fn job_deadline(&self, series: &SeriesId, job: &Job) -> Option<Timestamp> {
        let pinned = self.is_pinned(series);
        if job.is_dead() {
            return Some(if job.is_wanted(pinned) {
                job.restart_not_before()
            } else {
                job.droppable_since()
            });
        }
        if pinned || job.refcount != 0 {
            return None;
        }
        job.last_zero_at.map(|idle_since| idle_since.add(self.cfg.idle_ttl))
    }

    /// The cap counts non-pinned jobs, dead ones included; the victim is
    /// the job idle the longest (ties: lowest series id). Dead jobs that still
    /// have subscribers are never idle, so never victims.
    fn plan_capacity(&self) -> CapacityPlan {
        let cap = self.cfg.max_ondemand_jobs;
        if cap == 0 {
            return CapacityPlan::Accept;
        }
        let ondemand = || self.jobs.iter().filter(|(s, _)| !self.is_pinned(s));
        if ondemand().count() < cap {
            return CapacityPlan::Accept;
        }
        let victim = ondemand()
            .filter(|(_, job)| job.refcount == 0)
            .filter_map(|(s, job)| job.last_zero_at.map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, series)) => CapacityPlan::AcceptEvicting(series.clone()),
            None => CapacityPlan::Reject,
        }
    }

    fn start_new_job(
        &mut self,
        base: SeriesId,
        refcount: i64,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let job = Job::started(refcount, now, self.cfg.guardrail.clone());
        self.jobs.insert(base.clone(), job);
        out.push(Effect::Start { series: base });
    }

    /// Restarts a dead job if its backoff has elapsed and its breaker allows
    /// an attempt (which moves an expired open breaker to half-open).
    fn try_restart(&mut self, base: &SeriesId, now: Timestamp, out: &mut Vec<Effect>) -> bool {
        let Some(job) = self.jobs.get_mut(base) else {
            return false;
        };
        if !job.is_dead() || now < job.retry_at {
            return false;
        }
        if job.guardrail.before_attempt(now) > Duration::ZERO {
            return false;
        }
        job.state = JobState::Starting;
        job.started_at = now;
        out.push(Effect::Start { series: base.clone() });
        true
    }

    fn remove_job(&mut self, series: &SeriesId, reason: StopReason, out: &mut Vec<Effect>) {
        if self.jobs.remove(series).is_some() {
            out.push(Effect::Stop { series: series.clone(), reason });
        }
    }

    fn validate_timeframe(&self, tf: Timeframe) -> Result<(), String> {
        if is_binance_interval(tf) || self.derived.contains(&tf) {
            return Ok(());
        }
        let mut supported: BTreeSet<Timeframe> = BINANCE_INTERVALS
            .iter()
            .filter_map(|(secs, _)| Timeframe::from_seconds(*secs))
            .collect();
        supported.extend(self.derived.iter().copied());
        let list: Vec<String> = supported.iter().map(|t| t.to_string()).collect();
        Err(format!("unsupported timeframe: '{tf}' (supported: {})", list.join(", ")))
    }
}
