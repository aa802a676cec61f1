//! One ingest job's record (refcount, state, crash counters, guardrail), its
//! read-only [`JobView`], and the reaper's pure decision for one job at one instant.
//!
//! Owns: one job's bookkeeping. Never looks at other jobs, the capacity or the
//! whitelist (that is the supervisor) and emits no effect.

use crate::engine::guardrail::{BreakerState, Guardrail, GuardrailConfig};
use crate::time::{Duration, Timestamp};

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
pub(super) struct Job {
    pub(super) refcount: i64,
    pub(super) state: JobState,
    pub(super) started_at: Timestamp,
    pub(super) last_zero_at: Option<Timestamp>,
    pub(super) crashes: u32,
    pub(super) last_crash_at: Option<Timestamp>,
    /// While dead: now-of-failure + the guardrail's wait.
    pub(super) retry_at: Timestamp,
    pub(super) guardrail: Guardrail,
}

impl Job {
    pub(super) fn started(refcount: i64, now: Timestamp, guardrail: GuardrailConfig) -> Job {
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

    pub(super) fn is_dead(&self) -> bool {
        self.state == JobState::Dead
    }

    /// Someone (a pin or a subscriber) wants this job alive.
    pub(super) fn is_wanted(&self, pinned: bool) -> bool {
        pinned || self.refcount > 0
    }

    /// Earliest restart of a dead job: its backoff, and an open breaker's cooldown.
    pub(super) fn restart_not_before(&self) -> Timestamp {
        let breaker = self.guardrail.open_until().unwrap_or(Timestamp::ZERO);
        self.retry_at.max(breaker)
    }

    /// The moment a dead, unwanted job became droppable (≤ any later `now`).
    pub(super) fn droppable_since(&self) -> Timestamp {
        let crashed = self.last_crash_at.unwrap_or(Timestamp::ZERO);
        let released = self.last_zero_at.unwrap_or(Timestamp::ZERO);
        crashed.max(released)
    }
}

/// What the reaper does with one job at one instant (decided purely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReaperAction {
    Keep,
    /// Dead but wanted: restart if its retry time and guardrail allow.
    Restart,
    /// Unwanted: dead, or idle for at least the TTL.
    Reap,
}

pub(super) fn reaper_action(job: &Job, pinned: bool, now: Timestamp, ttl: Duration) -> ReaperAction {
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
