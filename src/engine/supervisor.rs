//! Supervisor of ingest jobs (reference §4): which base series have an ingest
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
//! Deliberate differences from the reference (spec §11 items 3, 4, 5, 8, 9, 10):
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

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Value};

use crate::engine::guardrail::{BreakerState, Guardrail, GuardrailConfig};
use crate::model::{SeriesId, Timeframe};
use crate::time::{Duration, Timestamp};

/// The only exchange with a realtime source (compared exactly, lower case).
pub const SUPPORTED_EXCHANGE: &str = "binance";

/// The markets the Binance source can stream.
pub const SUPPORTED_MARKETS: [&str; 2] = ["spot", "futures"];

/// Binance kline intervals that our [`Timeframe`] can express (no `1s`, `1M`).
const BINANCE_INTERVALS: [(u32, &str); 14] = [
    (60, "1m"),
    (180, "3m"),
    (300, "5m"),
    (900, "15m"),
    (1_800, "30m"),
    (3_600, "1h"),
    (7_200, "2h"),
    (14_400, "4h"),
    (21_600, "6h"),
    (28_800, "8h"),
    (43_200, "12h"),
    (86_400, "1d"),
    (259_200, "3d"),
    (604_800, "1w"),
];

/// Longest asset code accepted in a symbol; real ones are ≤ 10 characters.
const MAX_ASSET_LEN: usize = 20;

const MIN_IDLE_TTL: Duration = Duration::from_secs(1);

/// The `source` the debug snapshot reports for every job (reference binding name).
const SOURCE_NAME: &str = "binance_ws";

/// Whether this instance runs ingest jobs (§4.9). klinegate always honours the
/// role (the reference's role guard is permanently on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Hybrid,
    Ingest,
    /// Serve clients only: no ingest jobs are ever started.
    Read,
}

impl Role {
    /// Strict parse (trimmed, case-insensitive) for configuration that should
    /// reject typos.
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hybrid" => Some(Role::Hybrid),
            "ingest" => Some(Role::Ingest),
            "read" => Some(Role::Read),
            _ => None,
        }
    }

    /// The reference's lenient rule: anything unknown is `hybrid`.
    pub fn parse_or_hybrid(s: &str) -> Role {
        Role::parse(s).unwrap_or(Role::Hybrid)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hybrid => "hybrid",
            Role::Ingest => "ingest",
            Role::Read => "read",
        }
    }

    pub fn runs_ingest_jobs(self) -> bool {
        !matches!(self, Role::Read)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Client subscriptions drive refcounted jobs. When off, `subscribe` and
    /// `unsubscribe` never create or touch jobs (only validation applies).
    pub ondemand_enabled: bool,
    /// Cap on non-pinned jobs (dead ones included); 0 = unlimited.
    pub max_ondemand_jobs: usize,
    /// How long an unreferenced running job lives before it is reaped (min 1 s).
    pub idle_ttl: Duration,
    /// Series to keep ingesting regardless of subscribers. Normalized to their
    /// base series; unsupported entries are skipped (see
    /// [`Supervisor::whitelist_rejections`]).
    pub whitelist: Vec<SeriesId>,
    /// Pin the whitelist. When off, whitelisted series are ordinary on-demand ones.
    pub whitelist_ingest_enabled: bool,
    pub role: Role,
    /// Timeframe of the job that feeds derived timeframes.
    pub derived_base: Timeframe,
    /// Timeframes folded locally from `derived_base`. Entries equal to the base
    /// or not a whole multiple of it are ignored; empty disables derivation.
    pub derived: Vec<Timeframe>,
    pub guardrail: GuardrailConfig,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        let tf = |secs| Timeframe::from_seconds(secs).unwrap_or(Timeframe::M1);
        SupervisorConfig {
            ondemand_enabled: true,
            max_ondemand_jobs: 0,
            idle_ttl: Duration::from_secs(60),
            whitelist: Vec::new(),
            whitelist_ingest_enabled: true,
            role: Role::Hybrid,
            derived_base: Timeframe::M1,
            derived: vec![tf(300), tf(900), tf(3_600), tf(14_400), tf(86_400)],
            guardrail: GuardrailConfig::default(),
        }
    }
}

/// Why a job is being stopped; the engine flushes the job's buffer in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Made room for another series under the on-demand cap.
    Evicted,
    /// Idle past the TTL, or dead with nobody holding it.
    Reaped,
    Shutdown,
    /// The exchange does not list the symbol (`-1121`, or its symbol list).
    Unlisted,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Evicted => "evicted",
            StopReason::Reaped => "reaped",
            StopReason::Shutdown => "shutdown",
            StopReason::Unlisted => "unlisted",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine must do for the supervisor. `series` is always a base series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Attach the exchange stream and run the ingest job (first start or a
    /// restart of a dead job). Answer with `job_running` or `job_failed`.
    Start { series: SeriesId },
    /// Flush the job's closed buffer to the store, then detach its stream and
    /// drop the job. Also emitted for a dead job, whose buffer may still hold
    /// closed candles.
    Stop { series: SeriesId, reason: StopReason },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// Served (a job exists, was started, is pinned, or this role/config does
    /// not run jobs for subscribers).
    Accepted,
    /// The on-demand cap is reached and no idle job can be evicted.
    Capacity,
    /// The series can never be ingested; the message says why and what is supported.
    Unsupported(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// `Start` emitted; the stream is not confirmed live yet.
    Starting,
    /// The engine reported the stream live.
    Running,
    /// The source failed; waiting for its retry time (or to be dropped).
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Dead => "dead",
        }
    }
}

/// A read-only view of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// Subscribers holding the job; `-1` for a pinned whitelist job.
    pub refcount: i64,
    pub state: JobState,
    /// The reference's `running`: not dead (starting counts, like a task that
    /// has not finished).
    pub running: bool,
    pub crashes: u32,
    pub pinned: bool,
    pub started_at: Timestamp,
    pub last_zero_at: Option<Timestamp>,
    pub last_crash_at: Option<Timestamp>,
    /// For a dead job that will be restarted: the earliest restart time.
    pub next_retry_at: Option<Timestamp>,
    pub breaker: BreakerState,
}

#[derive(Clone, Debug)]
struct Job {
    refcount: i64,
    state: JobState,
    started_at: Timestamp,
    last_zero_at: Option<Timestamp>,
    crashes: u32,
    last_crash_at: Option<Timestamp>,
    /// While dead: now-of-failure + the guardrail's wait.
    retry_at: Timestamp,
    guardrail: Guardrail,
}

impl Job {
    fn started(refcount: i64, now: Timestamp, guardrail: GuardrailConfig) -> Job {
        Job {
            refcount,
            state: JobState::Starting,
            started_at: now,
            last_zero_at: None,
            crashes: 0,
            last_crash_at: None,
            retry_at: now,
            guardrail: Guardrail::new(guardrail),
        }
    }

    fn is_dead(&self) -> bool {
        self.state == JobState::Dead
    }

    /// Someone (a pin or a subscriber) wants this job alive.
    fn is_wanted(&self, pinned: bool) -> bool {
        pinned || self.refcount > 0
    }

    /// Earliest restart of a dead job: its backoff, and an open breaker's cooldown.
    fn restart_not_before(&self) -> Timestamp {
        let breaker = self.guardrail.open_until().unwrap_or(Timestamp::ZERO);
        self.retry_at.max(breaker)
    }

    /// The moment a dead, unwanted job became droppable (≤ any later `now`).
    fn droppable_since(&self) -> Timestamp {
        let crashed = self.last_crash_at.unwrap_or(Timestamp::ZERO);
        let released = self.last_zero_at.unwrap_or(Timestamp::ZERO);
        crashed.max(released)
    }
}

/// What the reaper does with one job at one instant (§4.5, decided purely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaperAction {
    Keep,
    /// Dead but wanted: restart if its retry time and guardrail allow.
    Restart,
    /// Unwanted: dead, or idle for at least the TTL.
    Reap,
}

fn reaper_action(job: &Job, pinned: bool, now: Timestamp, ttl: Duration) -> ReaperAction {
    if job.is_dead() {
        return if job.is_wanted(pinned) { ReaperAction::Restart } else { ReaperAction::Reap };
    }
    if pinned || job.refcount != 0 {
        return ReaperAction::Keep;
    }
    match job.last_zero_at {
        Some(idle_since) if now.since(idle_since) >= ttl => ReaperAction::Reap,
        _ => ReaperAction::Keep,
    }
}

/// The on-demand capacity decision for a new job (§4.4).
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
        let whitelist_ids: BTreeSet<String> =
            cfg.whitelist.iter().map(|s| s.as_str().to_string()).collect();
        let mut sup = Supervisor {
            cfg,
            derived,
            pinned: BTreeSet::new(),
            whitelist_ids: whitelist_ids.into_iter().collect(),
            whitelist_rejections: Vec::new(),
            jobs: BTreeMap::new(),
            shut_down: false,
            deadline_cache: Cell::new(None),
        };
        for entry in sup.cfg.whitelist.clone() {
            match sup.validate(&entry) {
                Ok(()) => {
                    let base = sup.normalize(&entry);
                    sup.pinned.insert(base);
                }
                Err(msg) => sup.whitelist_rejections.push((entry, msg)),
            }
        }
        sup
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
    /// base (same exchange/market/symbol), anything else to itself (§4.2).
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

    /// False in the `read` role: no job is ever started.
    pub fn ingest_jobs_enabled(&self) -> bool {
        self.cfg.role.runs_ingest_jobs()
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

    /// A client no longer wants `requested` (§4.3). The refcount floors at 0;
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

    /// The reaper at `now` (§4.5): reaps idle-past-TTL jobs and dead unwanted
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

    /// The debug snapshot (§4.11 shape; times are Unix seconds from the engine
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

    /// §4.4: the cap counts non-pinned jobs, dead ones included; the victim is
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

/// Whether the exchange serves klines of this interval (REST and streams).
pub fn is_binance_interval(tf: Timeframe) -> bool {
    BINANCE_INTERVALS.iter().any(|(secs, _)| i64::from(*secs) == tf.seconds())
}

/// Derived targets that make sense: multiples of the base other than the base
/// itself. A base the exchange cannot stream turns derivation off, because
/// every derived subscription would otherwise map to an unstartable job.
fn effective_derived(base: Timeframe, targets: &[Timeframe]) -> BTreeSet<Timeframe> {
    if !is_binance_interval(base) {
        return BTreeSet::new();
    }
    targets.iter().copied().filter(|t| *t != base && t.seconds() % base.seconds() == 0).collect()
}

fn validate_exchange(exchange: &str) -> Result<(), String> {
    if exchange == SUPPORTED_EXCHANGE {
        Ok(())
    } else {
        Err(format!("unsupported exchange: '{exchange}' (supported: {SUPPORTED_EXCHANGE})"))
    }
}

fn validate_market(market: &str) -> Result<(), String> {
    if SUPPORTED_MARKETS.contains(&market) {
        Ok(())
    } else {
        Err(format!("unsupported market: '{market}' (supported: {})", SUPPORTED_MARKETS.join(", ")))
    }
}

/// `BASE/QUOTE`, or for futures also the CCXT form `BASE/QUOTE:SETTLE`; asset
/// codes are upper-case letters and digits, so one market symbol has exactly
/// one spelling (one job, one stream).
fn validate_symbol(market: &str, symbol: &str) -> Result<(), String> {
    let (pair, settle) = match symbol.split_once(':') {
        Some((pair, settle)) => (pair, Some(settle)),
        None => (symbol, None),
    };
    let Some((base, quote)) = pair.split_once('/') else {
        return Err(format!("unsupported symbol: '{symbol}' (expected BASE/QUOTE, e.g. BTC/USDT)"));
    };
    let assets = [Some(base), Some(quote), settle];
    if assets.iter().flatten().any(|a| a.is_empty() || a.contains(['/', ':'])) {
        return Err(format!("unsupported symbol: '{symbol}' (expected BASE/QUOTE, e.g. BTC/USDT)"));
    }
    if !assets.iter().flatten().all(|a| is_asset_code(a)) {
        return Err(format!(
            "unsupported symbol: '{symbol}' (asset codes are upper-case letters and digits, e.g. BTC/USDT)"
        ));
    }
    if settle.is_some() && market != "futures" {
        return Err(format!(
            "unsupported symbol: '{symbol}' (a ':SETTLE' suffix is only valid on futures; use BASE/QUOTE)"
        ));
    }
    Ok(())
}

fn is_asset_code(s: &str) -> bool {
    s.len() <= MAX_ASSET_LEN && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SeriesId {
        SeriesId::parse(s).unwrap()
    }

    fn t(secs: f64) -> Timestamp {
        Timestamp(Duration::from_secs_f64(secs).as_nanos())
    }

    const BTC: &str = "binance:futures:BTC/USDT:1m";
    const ETH: &str = "binance:futures:ETH/USDT:1m";
    const XRP: &str = "binance:futures:XRP/USDT:1m";

    fn start(s: &str) -> Effect {
        Effect::Start { series: sid(s) }
    }

    fn stop(s: &str, reason: StopReason) -> Effect {
        Effect::Stop { series: sid(s), reason }
    }

    fn ondemand(max_jobs: usize) -> SupervisorConfig {
        SupervisorConfig { max_ondemand_jobs: max_jobs, ..SupervisorConfig::default() }
    }

    fn no_guardrail(cfg: SupervisorConfig) -> SupervisorConfig {
        SupervisorConfig {
            guardrail: GuardrailConfig { enabled: false, ..GuardrailConfig::default() },
            ..cfg
        }
    }

    fn whitelisted(list: &[&str], pin: bool) -> SupervisorConfig {
        SupervisorConfig {
            whitelist: list.iter().map(|s| sid(s)).collect(),
            whitelist_ingest_enabled: pin,
            ..SupervisorConfig::default()
        }
    }

    /// subscribe and return (outcome, effects).
    fn sub(sup: &mut Supervisor, s: &str, now: f64) -> (SubscribeOutcome, Vec<Effect>) {
        let mut out = Vec::new();
        let r = sup.subscribe(&sid(s), t(now), &mut out);
        (r, out)
    }

    fn tick(sup: &mut Supervisor, now: f64) -> Vec<Effect> {
        let mut out = Vec::new();
        sup.on_tick(t(now), &mut out);
        out
    }

    fn rc(sup: &Supervisor, s: &str) -> i64 {
        sup.job(&sid(s)).unwrap().refcount
    }

    // ---- §4.7 transition table, row by row ----

    #[test]
    fn row1_start_whitelist_pins_with_refcount_minus_one() {
        let mut sup = Supervisor::new(whitelisted(&[BTC, BTC], true));
        let mut out = Vec::new();
        sup.start_whitelist(t(1.0), &mut out);
        assert_eq!(out, vec![start(BTC)]);
        assert_eq!(rc(&sup, BTC), -1);
        assert!(sup.job(&sid(BTC)).unwrap().pinned);
        out.clear();
        sup.start_whitelist(t(2.0), &mut out);
        assert!(out.is_empty(), "idempotent");
    }

    #[test]
    fn row2_subscribe_to_pinned_keeps_refcount() {
        let mut sup = Supervisor::new(whitelisted(&[BTC], true));
        sup.start_whitelist(t(1.0), &mut Vec::new());
        let (r, out) = sub(&mut sup, BTC, 2.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert!(out.is_empty());
        assert_eq!(rc(&sup, BTC), -1);
        assert_eq!(sup.jobs_len(), 1);
    }

    #[test]
    fn row3_read_role_accepts_without_job() {
        let mut sup =
            Supervisor::new(SupervisorConfig { role: Role::Read, ..whitelisted(&[BTC], true) });
        let mut out = Vec::new();
        sup.start_whitelist(t(0.0), &mut out);
        let (r, eff) = sub(&mut sup, ETH, 1.0);
        sup.on_tick(t(100.0), &mut out);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert!(out.is_empty() && eff.is_empty());
        assert_eq!(sup.jobs_len(), 0);
        let snap = sup.snapshot(t(1.0));
        assert_eq!(snap["ingest_role"], "read");
        assert_eq!(snap["ingest_jobs_enabled"], false);
        assert_eq!(snap["ingest_role_guard_enabled"], true);
    }

    #[test]
    fn row4_absent_with_room_starts_refcount_one() {
        let mut sup = Supervisor::new(ondemand(2));
        let (r, out) = sub(&mut sup, BTC, 1.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert_eq!(out, vec![start(BTC)]);
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.state, job.running), (1, JobState::Starting, true));
        assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["source"], "binance_ws");
    }

    #[test]
    fn row4_absent_when_full_evicts_oldest_idle() {
        let mut sup = Supervisor::new(ondemand(2));
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, ETH, 0.0);
        sup.unsubscribe(&sid(ETH), t(10.0)); // idle since 10
        sup.unsubscribe(&sid(BTC), t(30.0)); // idle since 30
        let (r, out) = sub(&mut sup, XRP, 40.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert_eq!(out, vec![stop(ETH, StopReason::Evicted), start(XRP)]);
        assert!(sup.job(&sid(ETH)).is_none());
        assert_eq!(sup.jobs_len(), 2);
    }

    #[test]
    fn row5_absent_when_full_without_idle_is_capacity() {
        let mut sup = Supervisor::new(ondemand(1));
        assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
        let (r, out) = sub(&mut sup, ETH, 1.0);
        assert_eq!(r, SubscribeOutcome::Capacity);
        assert!(out.is_empty());
        assert!(sup.job(&sid(ETH)).is_none());
    }

    #[test]
    fn row6_unstartable_series_is_rejected_up_front() {
        // The reference crashed in start_job and answered `capacity`.
        let mut sup = Supervisor::new(ondemand(0));
        let (r, out) = sub(&mut sup, "kraken:spot:BTC/USD:1m", 0.0);
        assert_eq!(
            r,
            SubscribeOutcome::Unsupported(
                "unsupported exchange: 'kraken' (supported: binance)".to_string()
            )
        );
        assert!(out.is_empty());
        assert_eq!(sup.jobs_len(), 0);
    }

    #[test]
    fn row7_subscribe_existing_increments_and_clears_idle() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(1.0)));
        let (_, out) = sub(&mut sup, BTC, 2.0);
        assert!(out.is_empty());
        let (_, out) = sub(&mut sup, BTC, 3.0);
        assert!(out.is_empty());
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.last_zero_at), (2, None));
    }

    #[test]
    fn row8_dead_job_with_open_breaker_is_accepted_but_not_restarted() {
        // Reference answered `capacity`; we keep the reference and retry later.
        let cfg = SupervisorConfig {
            guardrail: GuardrailConfig {
                crash_budget: 1,
                open_cooldown: Duration::from_secs(30),
                ..GuardrailConfig::default()
            },
            ..ondemand(0)
        };
        let mut sup = Supervisor::new(cfg);
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(1.0), "connection reset");
        let (r, out) = sub(&mut sup, BTC, 2.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert!(out.is_empty());
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.state, job.crashes), (2, JobState::Dead, 1));
        assert_eq!(job.next_retry_at, Some(t(31.0)));
    }

    #[test]
    fn row9_dead_job_resubscribe_keeps_refcount_and_crashes() {
        let mut sup = Supervisor::new(no_guardrail(ondemand(0)));
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, BTC, 0.0);
        sup.job_running(&sid(BTC), t(0.5));
        sup.job_failed(&sid(BTC), t(1.0), "eof");
        assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["running"], false);
        // Within the fixed 2 s wait: accepted, restart deferred.
        let (r, out) = sub(&mut sup, BTC, 2.0);
        assert_eq!((r, out), (SubscribeOutcome::Accepted, vec![]));
        // After it: the subscribe itself restarts the job.
        let (r, out) = sub(&mut sup, BTC, 3.5);
        assert_eq!((r, out), (SubscribeOutcome::Accepted, vec![start(BTC)]));
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.crashes, job.running), (4, 1, true));
        assert_eq!(job.last_crash_at, Some(t(1.0)));
        assert_eq!(sup.jobs_len(), 1);
    }

    #[test]
    fn row10_unsubscribe_decrements() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.last_zero_at), (1, None));
    }

    #[test]
    fn row11_unsubscribe_to_zero_sets_and_refreshes_idle_time() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        assert_eq!(rc(&sup, BTC), 0);
        assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(1.0)));
        sup.unsubscribe(&sid(BTC), t(5.0));
        assert_eq!(rc(&sup, BTC), 0, "floors at zero");
        assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(5.0)));
    }

    #[test]
    fn row12_unsubscribe_noops() {
        let mut sup = Supervisor::new(whitelisted(&[BTC], true));
        sup.start_whitelist(t(0.0), &mut Vec::new());
        sub(&mut sup, ETH, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0)); // pinned
        sup.unsubscribe(&sid(XRP), t(1.0)); // absent
        assert_eq!(rc(&sup, BTC), -1);
        assert_eq!(rc(&sup, ETH), 1);
        assert!(sup.job(&sid(XRP)).is_none());
        let mut read = Supervisor::new(SupervisorConfig { role: Role::Read, ..ondemand(0) });
        read.unsubscribe(&sid(BTC), t(1.0));
        assert_eq!(read.jobs_len(), 0);
    }

    #[test]
    fn row13_failure_marks_dead_and_counts_crash_once() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sup.job_running(&sid(BTC), t(0.1));
        sup.job_failed(&sid(BTC), t(1.0), "connection reset");
        sup.job_failed(&sid(BTC), t(1.1), "duplicate report");
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.state, job.running, job.crashes), (JobState::Dead, false, 1));
        // Guardrail defaults: first failure backs off 1 s.
        assert_eq!(job.next_retry_at, Some(t(2.0)));
        let snap = sup.snapshot(t(1.0));
        assert_eq!(snap["jobs"][0]["guardrail"]["last_error"], "connection reset");
        assert_eq!(snap["jobs"][0]["last_crash_at"], 1.0);
    }

    #[test]
    fn row14_reaper_restarts_dead_active_and_pinned_keeping_counters() {
        let mut sup = Supervisor::new(no_guardrail(whitelisted(&[XRP], true)));
        sup.start_whitelist(t(0.0), &mut Vec::new());
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(0.0), "exit");
        sup.job_failed(&sid(XRP), t(0.0), "exit");
        assert!(tick(&mut sup, 1.0).is_empty(), "2 s crash wait not over");
        assert_eq!(sup.next_deadline(), Some(t(2.0)));
        assert_eq!(tick(&mut sup, 2.2), vec![start(BTC), start(XRP)]);
        let btc = sup.job(&sid(BTC)).unwrap();
        let xrp = sup.job(&sid(XRP)).unwrap();
        assert_eq!((btc.refcount, btc.running, btc.crashes), (1, true, 1));
        assert_eq!((xrp.refcount, xrp.running, xrp.crashes), (-1, true, 1));
        assert_eq!(btc.started_at, t(2.2));
        assert_eq!(sup.jobs_len(), 2);
    }

    #[test]
    fn row15_reaper_skips_dead_job_while_breaker_open_then_probes() {
        let cfg = SupervisorConfig {
            guardrail: GuardrailConfig {
                crash_budget: 2,
                open_cooldown: Duration::from_secs(30),
                ..GuardrailConfig::default()
            },
            ..ondemand(0)
        };
        let mut sup = Supervisor::new(cfg);
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(0.0), "a"); // backoff 1 s
        assert_eq!(tick(&mut sup, 1.0), vec![start(BTC)]);
        sup.job_failed(&sid(BTC), t(1.0), "b"); // budget 2 reached: open 30 s
        assert_eq!(sup.job(&sid(BTC)).unwrap().breaker, BreakerState::Open);
        assert_eq!(sup.next_deadline(), Some(t(31.0)));
        assert!(tick(&mut sup, 2.0).is_empty());
        assert!(tick(&mut sup, 30.9).is_empty());
        assert!(sub(&mut sup, BTC, 15.0).1.is_empty(), "subscribe does not bypass the breaker");
        assert_eq!(tick(&mut sup, 31.0), vec![start(BTC)]);
        assert_eq!(sup.job(&sid(BTC)).unwrap().breaker, BreakerState::HalfOpen);
        // Failed probe: open again for the full cooldown.
        sup.job_failed(&sid(BTC), t(31.5), "probe failed");
        assert_eq!(sup.job(&sid(BTC)).unwrap().next_retry_at, Some(t(61.5)));
        assert!(tick(&mut sup, 61.0).is_empty());
        assert_eq!(tick(&mut sup, 61.5), vec![start(BTC)]);
        // Live again: breaker closed, crash history kept.
        sup.job_running(&sid(BTC), t(62.0));
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.breaker, job.crashes, job.refcount), (BreakerState::Closed, 3, 2));
    }

    #[test]
    fn row17_reaper_drops_dead_idle_job_with_stop() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        sup.job_failed(&sid(BTC), t(2.0), "exit");
        assert_eq!(sup.next_deadline(), Some(t(2.0)), "due at once");
        assert_eq!(tick(&mut sup, 2.5), vec![stop(BTC, StopReason::Reaped)]);
        assert_eq!(sup.jobs_len(), 0);
        assert_eq!(sup.next_deadline(), None);
    }

    #[test]
    fn row18_reaper_stops_idle_job_after_ttl() {
        let mut sup =
            Supervisor::new(SupervisorConfig { idle_ttl: Duration::from_secs(10), ..ondemand(0) });
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(5.0));
        assert_eq!(sup.next_deadline(), Some(t(15.0)));
        assert!(tick(&mut sup, 14.9).is_empty());
        assert_eq!(tick(&mut sup, 15.0), vec![stop(BTC, StopReason::Reaped)]);
        assert!(sup.job(&sid(BTC)).is_none());
    }

    #[test]
    fn row19_eviction_is_a_stop_with_reason() {
        let mut sup = Supervisor::new(ondemand(1));
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        let (r, out) = sub(&mut sup, ETH, 2.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert_eq!(out, vec![stop(BTC, StopReason::Evicted), start(ETH)]);
        let snap = sup.snapshot(t(2.0));
        let ids: Vec<&str> = snap["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["series_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![ETH]);
    }

    #[test]
    fn row20_shutdown_stops_everything_and_stays_closed() {
        let mut sup = Supervisor::new(whitelisted(&[XRP], true));
        sup.start_whitelist(t(0.0), &mut Vec::new());
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, ETH, 0.0);
        sup.job_failed(&sid(ETH), t(1.0), "x");
        let mut out = Vec::new();
        sup.shutdown(&mut out);
        assert_eq!(
            out,
            vec![
                stop(BTC, StopReason::Shutdown),
                stop(ETH, StopReason::Shutdown),
                stop(XRP, StopReason::Shutdown)
            ]
        );
        assert_eq!(sup.jobs_len(), 0);
        let (r, eff) = sub(&mut sup, BTC, 2.0);
        assert_eq!((r, eff), (SubscribeOutcome::Accepted, vec![]));
        assert!(tick(&mut sup, 100.0).is_empty());
        assert_eq!(sup.next_deadline(), None);
        assert_eq!(StopReason::Shutdown.to_string(), "shutdown");
        assert_eq!(StopReason::Evicted.to_string(), "evicted");
        assert_eq!(StopReason::Reaped.to_string(), "reaped");
    }

    // ---- reference catalogue ----

    #[test]
    fn reaper_policy_restart_stop_and_drop_sets() {
        // BTC dead rc=1, ETH running idle since 5 (now 20, ttl 10), XRP dead pinned.
        let cfg = SupervisorConfig {
            idle_ttl: Duration::from_secs(10),
            ..no_guardrail(whitelisted(&[XRP], true))
        };
        let mut sup = Supervisor::new(cfg);
        sup.start_whitelist(t(0.0), &mut Vec::new());
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, ETH, 0.0);
        sup.unsubscribe(&sid(ETH), t(5.0));
        sup.job_failed(&sid(BTC), t(1.0), "x");
        sup.job_failed(&sid(XRP), t(1.0), "x");
        assert_eq!(
            tick(&mut sup, 20.0),
            vec![stop(ETH, StopReason::Reaped), start(BTC), start(XRP)]
        );
    }

    #[test]
    fn capacity_policy_accepts_under_limit() {
        let mut sup = Supervisor::new(ondemand(2));
        sub(&mut sup, BTC, 0.0);
        assert_eq!(sub(&mut sup, ETH, 1.0), (SubscribeOutcome::Accepted, vec![start(ETH)]));
    }

    #[test]
    fn capacity_counts_dead_jobs_and_never_evicts_referenced_dead_ones() {
        let mut sup = Supervisor::new(ondemand(1));
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(1.0), "x");
        assert_eq!(sub(&mut sup, ETH, 2.0).0, SubscribeOutcome::Capacity);
    }

    #[test]
    fn capacity_ignores_pinned_jobs() {
        let mut sup =
            Supervisor::new(SupervisorConfig { max_ondemand_jobs: 1, ..whitelisted(&[XRP], true) });
        sup.start_whitelist(t(0.0), &mut Vec::new());
        assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
        assert_eq!(sub(&mut sup, ETH, 0.0).0, SubscribeOutcome::Capacity);
    }

    #[test]
    fn derived_subscription_maps_to_base_job() {
        let mut sup = Supervisor::new(ondemand(0));
        let (r, out) = sub(&mut sup, "binance:spot:BTC/USDT:5m", 0.0);
        assert_eq!(r, SubscribeOutcome::Accepted);
        assert_eq!(out, vec![start("binance:spot:BTC/USDT:1m")]);
        sub(&mut sup, "binance:spot:BTC/USDT:1h", 0.0);
        assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), 2);
        sup.unsubscribe(&sid("binance:spot:BTC/USDT:5m"), t(1.0));
        assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), 1);
        assert_eq!(
            sup.normalize(&sid("binance:futures:BTC/USDT:USDT:4h")),
            sid("binance:futures:BTC/USDT:USDT:1m")
        );
        // Not derived: a native job.
        assert_eq!(
            sup.normalize(&sid("binance:spot:BTC/USDT:30m")),
            sid("binance:spot:BTC/USDT:30m")
        );
    }

    #[test]
    fn derived_targets_equal_to_or_not_multiple_of_base_are_ignored() {
        let tf = |s: &str| Timeframe::parse(s).unwrap();
        let sup = Supervisor::new(SupervisorConfig {
            derived_base: tf("3m"),
            derived: vec![tf("3m"), tf("5m"), tf("15m")],
            ..SupervisorConfig::default()
        });
        assert_eq!(
            sup.normalize(&sid("binance:spot:BTC/USDT:5m")),
            sid("binance:spot:BTC/USDT:5m")
        );
        assert_eq!(
            sup.normalize(&sid("binance:spot:BTC/USDT:15m")),
            sid("binance:spot:BTC/USDT:3m")
        );
        let off =
            Supervisor::new(SupervisorConfig { derived: vec![], ..SupervisorConfig::default() });
        assert_eq!(
            off.normalize(&sid("binance:spot:BTC/USDT:5m")),
            sid("binance:spot:BTC/USDT:5m")
        );
    }

    #[test]
    fn role_ingest_starts_jobs_like_hybrid() {
        for role in [Role::Ingest, Role::Hybrid] {
            let mut sup = Supervisor::new(SupervisorConfig { role, ..ondemand(0) });
            assert_eq!(sub(&mut sup, ETH, 0.0).1, vec![start(ETH)]);
            assert_eq!(sup.snapshot(t(0.0))["ingest_jobs_enabled"], true);
        }
        assert_eq!(Role::parse_or_hybrid(" READ "), Role::Read);
        assert_eq!(Role::parse_or_hybrid("bogus"), Role::Hybrid);
        assert_eq!(Role::parse("bogus"), None);
    }

    #[test]
    fn whitelist_falls_back_to_ondemand_when_whitelist_ingest_disabled() {
        let mut sup = Supervisor::new(whitelisted(&[BTC], false));
        let mut out = Vec::new();
        sup.start_whitelist(t(0.0), &mut out);
        assert!(out.is_empty());
        assert_eq!(sub(&mut sup, BTC, 1.0).1, vec![start(BTC)]);
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.refcount, job.pinned), (1, false));
        assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["source"], "binance_ws");
    }

    #[test]
    fn whitelisted_derived_series_pins_its_base() {
        // Reference bug: a whitelisted 5m got a native 5m job and derived writes.
        let mut sup = Supervisor::new(whitelisted(
            &["binance:spot:BTC/USDT:5m", "binance:spot:BTC/USDT:1h", "binance:spot:BTC/USDT:1m"],
            true,
        ));
        let mut out = Vec::new();
        sup.start_whitelist(t(0.0), &mut out);
        assert_eq!(out, vec![start("binance:spot:BTC/USDT:1m")]);
        assert!(sup.is_pinned(&sid("binance:spot:BTC/USDT:1m")));
        let (r, eff) = sub(&mut sup, "binance:spot:BTC/USDT:15m", 1.0);
        assert_eq!((r, eff), (SubscribeOutcome::Accepted, vec![]));
        assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), -1);
        assert_eq!(
            sup.snapshot(t(1.0))["whitelist_series_ids"],
            json!([
                "binance:spot:BTC/USDT:1h",
                "binance:spot:BTC/USDT:1m",
                "binance:spot:BTC/USDT:5m"
            ])
        );
    }

    #[test]
    fn invalid_whitelist_entries_are_reported_not_started() {
        let mut sup = Supervisor::new(whitelisted(&["kraken:spot:BTC/USD:1m", BTC], true));
        let mut out = Vec::new();
        sup.start_whitelist(t(0.0), &mut out);
        assert_eq!(out, vec![start(BTC)]);
        assert_eq!(sup.whitelist_rejections().len(), 1);
        assert_eq!(
            sup.snapshot(t(0.0))["whitelist_errors"][0]["error"],
            "unsupported exchange: 'kraken' (supported: binance)"
        );
    }

    #[test]
    fn guardrail_snapshot_exposed_when_enabled() {
        let cfg = SupervisorConfig {
            guardrail: GuardrailConfig {
                crash_budget: 1,
                open_cooldown: Duration::from_millis(500),
                ..GuardrailConfig::default()
            },
            ..ondemand(0)
        };
        let mut sup = Supervisor::new(cfg);
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(0.01), "loop raised");
        let snap = sup.snapshot(t(0.05));
        assert_eq!(snap["loop_guardrail_enabled"], true);
        let g = &snap["jobs"][0]["guardrail"];
        assert_eq!(g["state"], "open");
        assert!(g["window_failures"].as_u64().unwrap() >= 1);
        assert_eq!(snap["jobs"][0]["state"], "dead");
        assert_eq!(snap["jobs"][0]["next_retry_at"], 0.51);

        let mut off = Supervisor::new(no_guardrail(ondemand(0)));
        sub(&mut off, BTC, 0.0);
        let snap = off.snapshot(t(0.0));
        assert_eq!(snap["loop_guardrail_enabled"], false);
        assert_eq!(snap["jobs"][0]["guardrail"], Value::Null);
    }

    #[test]
    fn snapshot_has_reference_shape() {
        let mut sup = Supervisor::new(SupervisorConfig {
            max_ondemand_jobs: 8,
            ..whitelisted(&[ETH, BTC], true)
        });
        sup.start_whitelist(Timestamp::from_secs(1_700_000_000), &mut Vec::new());
        sub(&mut sup, "binance:spot:SOL/USDT:1m", 1_700_000_001.0);
        sup.unsubscribe(
            &sid("binance:spot:SOL/USDT:1m"),
            Timestamp::from_millis(1_700_000_002_500),
        );
        let snap = sup.snapshot(Timestamp::from_secs(1_700_000_003));
        let jobs = snap["jobs"].as_array().unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j["series_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![BTC, ETH, "binance:spot:SOL/USDT:1m"]);
        let sol = &jobs[2];
        for key in [
            "series_id",
            "source",
            "refcount",
            "last_zero_at",
            "started_at",
            "crashes",
            "last_crash_at",
            "running",
            "guardrail",
        ] {
            assert!(sol.get(key).is_some(), "missing {key}");
        }
        assert_eq!(sol["last_zero_at"], 1_700_000_002.5);
        assert_eq!(sol["started_at"], 1_700_000_001.0);
        assert_eq!(sol["refcount"], 0);
        assert_eq!(sol["last_crash_at"], Value::Null);
        assert_eq!(jobs[0]["refcount"], -1);
        assert_eq!(snap["whitelist_series_ids"], json!([BTC, ETH]));
        assert_eq!(snap["ondemand_max_jobs"], 8);
        assert_eq!(snap["whitelist_ingest_enabled"], true);
        assert_eq!(snap["ingest_role"], "hybrid");
        assert_eq!(snap["ingest_jobs_enabled"], true);
        assert_eq!(snap["loop_guardrail_enabled"], true);
    }

    #[test]
    fn ondemand_disabled_never_creates_jobs() {
        let mut sup = Supervisor::new(SupervisorConfig {
            ondemand_enabled: false,
            ..SupervisorConfig::default()
        });
        assert_eq!(sub(&mut sup, BTC, 0.0), (SubscribeOutcome::Accepted, vec![]));
        sup.unsubscribe(&sid(BTC), t(1.0));
        assert_eq!(sup.jobs_len(), 0);
        assert!(matches!(
            sub(&mut sup, "binance:margin:BTC/USDT:1m", 0.0).0,
            SubscribeOutcome::Unsupported(_)
        ));
    }

    #[test]
    fn job_running_confirms_start_and_resets_breaker() {
        let mut sup = Supervisor::new(ondemand(0));
        sub(&mut sup, BTC, 0.0);
        sup.job_failed(&sid(BTC), t(0.0), "a");
        sup.job_running(&sid(BTC), t(0.5)); // dead: ignored
        assert_eq!(sup.job(&sid(BTC)).unwrap().state, JobState::Dead);
        assert_eq!(tick(&mut sup, 1.0), vec![start(BTC)]);
        sup.job_running(&sid(BTC), t(1.5));
        let job = sup.job(&sid(BTC)).unwrap();
        assert_eq!((job.state, job.breaker), (JobState::Running, BreakerState::Closed));
        // Backoff starts over after a success.
        sup.job_failed(&sid(BTC), t(10.0), "b");
        assert_eq!(sup.job(&sid(BTC)).unwrap().next_retry_at, Some(t(11.0)));
    }

    #[test]
    fn idle_ttl_has_a_one_second_minimum() {
        let mut sup = Supervisor::new(SupervisorConfig { idle_ttl: Duration::ZERO, ..ondemand(0) });
        sub(&mut sup, BTC, 0.0);
        sup.unsubscribe(&sid(BTC), t(1.0));
        assert!(tick(&mut sup, 1.5).is_empty());
        assert_eq!(tick(&mut sup, 2.0), vec![stop(BTC, StopReason::Reaped)]);
    }

    #[test]
    fn next_deadline_is_the_earliest_pending_action() {
        let mut sup =
            Supervisor::new(SupervisorConfig { idle_ttl: Duration::from_secs(60), ..ondemand(0) });
        assert_eq!(sup.next_deadline(), None);
        sub(&mut sup, BTC, 0.0);
        sub(&mut sup, ETH, 0.0);
        assert_eq!(sup.next_deadline(), None, "referenced running jobs need nothing");
        sup.unsubscribe(&sid(ETH), t(10.0));
        assert_eq!(sup.next_deadline(), Some(t(70.0)));
        sup.job_failed(&sid(BTC), t(20.0), "x");
        assert_eq!(sup.next_deadline(), Some(t(21.0)));
    }

    // ---- validation ----

    #[test]
    fn validate_messages_name_the_problem() {
        let sup = Supervisor::new(SupervisorConfig::default());
        let err = |s: &str| sup.validate(&sid(s)).unwrap_err();
        assert_eq!(
            err("kraken:spot:BTC/USD:1m"),
            "unsupported exchange: 'kraken' (supported: binance)"
        );
        assert_eq!(
            err("Binance:spot:BTC/USDT:1m"),
            "unsupported exchange: 'Binance' (supported: binance)"
        );
        assert_eq!(
            err("binance:margin:BTC/USDT:1m"),
            "unsupported market: 'margin' (supported: spot, futures)"
        );
        assert_eq!(
            err("binance:spot:BTCUSDT:1m"),
            "unsupported symbol: 'BTCUSDT' (expected BASE/QUOTE, e.g. BTC/USDT)"
        );
        assert_eq!(
            err("binance:spot:BTC/:1m"),
            "unsupported symbol: 'BTC/' (expected BASE/QUOTE, e.g. BTC/USDT)"
        );
        assert!(err("binance:spot:btc/usdt:1m").contains("upper-case"));
        assert!(err("binance:spot:BTC/USDT:USDT:1m").contains("only valid on futures"));
        assert_eq!(
            err("binance:spot:BTC/USDT:7m"),
            "unsupported timeframe: '7m' (supported: 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d, 3d, 1w)"
        );
        for ok in [
            "binance:spot:BTC/USDT:1m",
            "binance:futures:BTC/USDT:USDT:1h",
            "binance:futures:1000PEPE/USDT:4h",
            "binance:spot:ETH/BTC:1w",
            "binance:spot:BTC/USDT:5m",
        ] {
            assert_eq!(sup.validate(&sid(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn configured_derived_timeframe_is_valid_even_if_not_a_binance_interval() {
        let tf = |s: &str| Timeframe::parse(s).unwrap();
        let sup = Supervisor::new(SupervisorConfig {
            derived: vec![tf("10m")],
            ..SupervisorConfig::default()
        });
        assert_eq!(sup.validate(&sid("binance:spot:BTC/USDT:10m")), Ok(()));
        assert_eq!(
            sup.normalize(&sid("binance:spot:BTC/USDT:10m")),
            sid("binance:spot:BTC/USDT:1m")
        );
        assert!(sup.validate(&sid("binance:spot:BTC/USDT:7m")).unwrap_err().contains("10m"));
    }

    #[test]
    fn unsupported_subscribe_never_starts_or_counts() {
        let mut sup = Supervisor::new(ondemand(1));
        for bad in ["binance:spot:BTCUSDT:1m", "binance:spot:BTC/USDT:7m", "okx:spot:BTC/USDT:1m"] {
            let (r, out) = sub(&mut sup, bad, 0.0);
            assert!(matches!(r, SubscribeOutcome::Unsupported(_)), "{bad}");
            assert!(out.is_empty());
        }
        assert_eq!(sup.jobs_len(), 0);
        assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
    }

    // ---- property: refcounts, capacity, effect consistency ----

    mod props {
        use super::*;
        use proptest::prelude::*;

        const SERIES: [&str; 5] = [
            "binance:spot:BTC/USDT:1m",
            "binance:spot:BTC/USDT:5m", // derived → BTC 1m
            "binance:spot:ETH/USDT:1m",
            "binance:futures:XRP/USDT:1m", // whitelisted
            "binance:spot:SOL/USDT:1h",
        ];

        #[derive(Clone, Debug)]
        enum Op {
            Subscribe(usize),
            Unsubscribe(usize),
            Running(usize),
            Fail(usize),
            Tick,
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..SERIES.len()).prop_map(Op::Subscribe),
                3 => (0..SERIES.len()).prop_map(Op::Unsubscribe),
                2 => (0..SERIES.len()).prop_map(Op::Running),
                2 => (0..SERIES.len()).prop_map(Op::Fail),
                3 => Just(Op::Tick),
                3 => (0u64..40_000).prop_map(Op::Advance),
            ]
        }

        /// What the engine believes about one base series, from effects alone.
        #[derive(Clone, Copy, Default, Debug)]
        struct Attached {
            exists: bool,
            outstanding: bool,
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn supervisor_invariants(
                cap in 0usize..4,
                pin in any::<bool>(),
                guard in any::<bool>(),
                ops in proptest::collection::vec(op(), 1..120),
            ) {
                let cfg = SupervisorConfig {
                    max_ondemand_jobs: cap,
                    idle_ttl: Duration::from_secs(5),
                    whitelist: vec![sid(SERIES[3])],
                    whitelist_ingest_enabled: pin,
                    guardrail: GuardrailConfig {
                        enabled: guard,
                        crash_budget: 2,
                        open_cooldown: Duration::from_secs(10),
                        ..GuardrailConfig::default()
                    },
                    ..SupervisorConfig::default()
                };
                let mut sup = Supervisor::new(cfg);
                let mut now = Timestamp::from_secs(1_000);
                let mut model: BTreeMap<SeriesId, Attached> = BTreeMap::new();
                let mut out = Vec::new();
                sup.start_whitelist(now, &mut out);
                apply(&mut model, &mut out)?;
                for op in ops {
                    match op {
                        Op::Subscribe(i) => {
                            let r = sup.subscribe(&sid(SERIES[i]), now, &mut out);
                            prop_assert!(!matches!(r, SubscribeOutcome::Unsupported(_)));
                            if r == SubscribeOutcome::Capacity {
                                prop_assert!(out.is_empty());
                            }
                        }
                        Op::Unsubscribe(i) => sup.unsubscribe(&sid(SERIES[i]), now),
                        Op::Running(i) => sup.job_running(&sid(SERIES[i]), now),
                        Op::Fail(i) => {
                            let base = sup.normalize(&sid(SERIES[i]));
                            if sup.job(&base).is_some_and(|j| j.running) {
                                model.entry(base).or_default().outstanding = false;
                            }
                            sup.job_failed(&sid(SERIES[i]), now, "fail");
                        }
                        Op::Tick => {
                            // next_deadline is exact: due ⇔ on_tick acts.
                            let due = sup.next_deadline().is_some_and(|d| d <= now);
                            sup.on_tick(now, &mut out);
                            prop_assert_eq!(due, !out.is_empty(), "deadline vs action at {:?}", now);
                        }
                        Op::Advance(ms) => now = now.add(Duration::from_millis(ms)),
                    }
                    apply(&mut model, &mut out)?;
                    check(&sup, &model, cap)?;
                }
                sup.shutdown(&mut out);
                apply(&mut model, &mut out)?;
                prop_assert_eq!(sup.jobs_len(), 0);
                prop_assert!(model.values().all(|a| !a.exists));
            }
        }

        fn apply(
            model: &mut BTreeMap<SeriesId, Attached>,
            out: &mut Vec<Effect>,
        ) -> Result<(), TestCaseError> {
            for effect in out.drain(..) {
                match effect {
                    Effect::Start { series } => {
                        let a = model.entry(series.clone()).or_default();
                        prop_assert!(
                            !a.outstanding,
                            "two Starts without Stop/failure: {:?}",
                            series
                        );
                        *a = Attached { exists: true, outstanding: true };
                    }
                    Effect::Stop { series, .. } => {
                        let a = model.entry(series.clone()).or_default();
                        prop_assert!(a.exists, "Stop for a job never started: {:?}", series);
                        *a = Attached::default();
                    }
                }
            }
            Ok(())
        }

        fn check(
            sup: &Supervisor,
            model: &BTreeMap<SeriesId, Attached>,
            cap: usize,
        ) -> Result<(), TestCaseError> {
            let mut ondemand = 0;
            for (series, job) in &sup.jobs {
                let pinned = sup.is_pinned(series);
                if pinned {
                    prop_assert_eq!(job.refcount, -1);
                } else {
                    prop_assert!(job.refcount >= 0);
                    ondemand += 1;
                }
                let a = model.get(series).copied().unwrap_or_default();
                prop_assert!(a.exists, "job without a Start: {:?}", series);
                prop_assert_eq!(
                    a.outstanding,
                    !job.is_dead(),
                    "engine view vs state: {:?}",
                    series
                );
                prop_assert_eq!(sup.normalize(series), series.clone());
            }
            for (series, a) in model {
                prop_assert_eq!(a.exists, sup.jobs.contains_key(series), "{:?}", series);
            }
            if cap > 0 {
                prop_assert!(ondemand <= cap);
            }
            Ok(())
        }
    }
}
