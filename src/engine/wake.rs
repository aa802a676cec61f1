//! Why the engine wants to be woken: [`Engine::next_wake`] is the earliest
//! deadline of every part that keeps one (the timer wheel, the upstream pool,
//! the supervisor, the write queue's retry, heal retries, the REST budgets,
//! retention) with the part that asked, and for the wheel the kind of its
//! earliest timer. `poll_timeout` is its time.
//!
//! Owns the names of those reasons only. Never decides anything: it reads
//! the same deadlines `handle_timeout` acts on.

use super::{Engine, TimerKey};
use crate::time::Timestamp;

/// The engine's next wake-up: when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    pub at: Timestamp,
    pub why: WakeReason,
}

/// The part of the engine whose deadline is the earliest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeReason {
    /// A timer on the engine's wheel, by kind.
    Timer(TimerKind),
    /// Exchange connections: silence timeout, rotation, control-message
    /// pacing, a reconnect's backoff or connect budget.
    Upstream,
    /// The supervisor: an idle job's reap, a failed job's restart backoff.
    Supervisor,
    /// The write queue retries a failed store write.
    StoreRetry,
    /// Heals wait for a retry.
    HealRetry,
    /// A REST request waits for its market's weight budget or pause.
    RestBudget,
    /// The next retention pass.
    Retention,
}

/// The kinds of timer the engine puts on its wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// A job's closed buffer is due to flush.
    Flush,
    /// A forming throttle's trailing edge.
    Forming,
    /// A job's late-close watchdog.
    Watchdog,
    /// A job's current candle closed by the clock: is it here?
    CloseDue,
    /// Subscriptions held for a catch-up heal get their catch-up.
    ReleaseHeld,
    /// The end of a step: flush every job that asked.
    FlushAll,
    /// Live streams silent too long are resubscribed.
    StallCheck,
}

impl WakeReason {
    /// A short name for logs (`flush`, `upstream`, …).
    pub fn name(self) -> &'static str {
        match self {
            WakeReason::Timer(kind) => match kind {
                TimerKind::Flush => "flush",
                TimerKind::Forming => "forming",
                TimerKind::Watchdog => "watchdog",
                TimerKind::CloseDue => "close_due",
                TimerKind::ReleaseHeld => "release_held",
                TimerKind::FlushAll => "flush_all",
                TimerKind::StallCheck => "stall_check",
            },
            WakeReason::Upstream => "upstream",
            WakeReason::Supervisor => "supervisor",
            WakeReason::StoreRetry => "store_retry",
            WakeReason::HealRetry => "heal_retry",
            WakeReason::RestBudget => "rest_budget",
            WakeReason::Retention => "retention",
        }
    }
}

impl std::fmt::Display for WakeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TimerKey {
    fn kind(self) -> TimerKind {
        match self {
            TimerKey::Flush(_) => TimerKind::Flush,
            TimerKey::Forming(..) => TimerKind::Forming,
            TimerKey::Watchdog(_) => TimerKind::Watchdog,
            TimerKey::CloseDue(_) => TimerKind::CloseDue,
            TimerKey::ReleaseHeld(_) => TimerKind::ReleaseHeld,
            TimerKey::FlushAll => TimerKind::FlushAll,
            TimerKey::StallCheck => TimerKind::StallCheck,
        }
    }
}

impl Engine {
    /// The earliest time `handle_timeout` has work, and why. Pure. When two
    /// parts are due at the same time the first in the order of
    /// [`WakeReason`] is named.
    #[must_use = "a pure query: the deadline to sleep until, and why"]
    pub fn next_wake(&self) -> Option<Wake> {
        let (at, why) = self.earliest_deadline()?;
        let why = match why {
            Some(why) => why,
            // `peek` is `Some` whenever `next_deadline` is.
            None => WakeReason::Timer(self.timers.peek()?.1.kind()),
        };
        Some(Wake { at, why })
    }

    /// The earliest deadline and its part (`None`: the wheel, whose earliest
    /// key is not looked up: `poll_timeout` needs the time only, and naming
    /// the wheel's timer walks the list of its slot).
    pub(super) fn earliest_deadline(&self) -> Option<(Timestamp, Option<WakeReason>)> {
        let deadlines = [
            (self.timers.next_deadline(), None),
            (self.pool.next_deadline(), Some(WakeReason::Upstream)),
            (self.supervisor.next_deadline(), Some(WakeReason::Supervisor)),
            (self.jobs.store_retry_at(), Some(WakeReason::StoreRetry)),
            (self.jobs.heal_retry_at(), Some(WakeReason::HealRetry)),
            (self.rest.next_deadline(), Some(WakeReason::RestBudget)),
            (self.retention.next_deadline(), Some(WakeReason::Retention)),
        ];
        deadlines.into_iter().filter_map(|(at, why)| Some((at?, why))).min_by_key(|(at, _)| *at)
    }
}
