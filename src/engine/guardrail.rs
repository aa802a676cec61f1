//! Loop guardrail: the per-series circuit breaker that paces restarts of a
//! failing ingest job, as the reference system paces them.
//!
//! It owns the failure window, the consecutive-failure count, the exponential
//! backoff and the open / half-open / closed state. It is a pure state machine:
//! every call takes the engine's `now` ([`Timestamp`], Unix ns); it never reads a
//! clock, sleeps, or decides anything about jobs itself — the supervisor asks it
//! "may I attempt now?" and "how long after this failure?".
//!
//! Differences from the reference, on purpose:
//! - parameters come from [`GuardrailConfig`] instead of being hard-coded;
//! - a failure reported while `open` never flips the breaker back to `closed`
//!   (the reference did when the window had been trimmed below the budget);
//! - `last_failure_at` is the engine clock (Unix seconds), not a monotonic one,
//!   so the debug snapshot uses one clock throughout;
//! - the failure window is bounded: only the last `crash_budget` failure times
//!   matter for the "budget exhausted" test, so no more are kept.

use std::collections::VecDeque;
use std::fmt;

use serde_json::{json, Value};

use crate::time::{Duration, Timestamp};

/// The wait a disabled guardrail asks for after every failure (the reference's
/// fixed 2 s crash / reconnect pause).
pub const DISABLED_FAILURE_WAIT: Duration = Duration::from_secs(2);

/// `last_error` is shown in the debug snapshot; an upstream error text is not
/// ours to trust, so it is cut to this many characters.
const MAX_ERROR_CHARS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardrailConfig {
    pub enabled: bool,
    /// Failures inside `budget_window` that open the breaker (min 1).
    pub crash_budget: u32,
    /// Sliding window for counting failures (min 1 s).
    pub budget_window: Duration,
    /// Wait after the first consecutive failure; doubles per further failure.
    pub backoff_initial: Duration,
    /// Ceiling of the exponential backoff.
    pub backoff_max: Duration,
    /// How long the breaker stays open once the budget is exhausted.
    pub open_cooldown: Duration,
}

impl Default for GuardrailConfig {
    fn default() -> Self {
        GuardrailConfig {
            enabled: true,
            crash_budget: 5,
            budget_window: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
            open_cooldown: Duration::from_secs(30),
        }
    }
}

impl GuardrailConfig {
    /// The same configuration with the reference's minimums applied.
    fn clamped(mut self) -> Self {
        self.crash_budget = self.crash_budget.max(1);
        self.budget_window = self.budget_window.max(Duration::from_secs(1));
        self
    }

    pub fn to_json(&self) -> Value {
        json!({
            "crash_budget": self.crash_budget,
            "budget_window_s": self.budget_window.as_secs_f64(),
            "backoff_initial_s": self.backoff_initial.as_secs_f64(),
            "backoff_max_s": self.backoff_max.as_secs_f64(),
            "open_cooldown_s": self.open_cooldown.as_secs_f64(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts allowed; failures are paced by exponential backoff.
    Closed,
    /// Budget exhausted: no attempt before `open_until`.
    Open,
    /// Cooldown elapsed: one probe attempt allowed; its failure reopens.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct Guardrail {
    cfg: GuardrailConfig,
    state: BreakerState,
    /// Times of recent failures, oldest first, at most `crash_budget` of them.
    window: VecDeque<Timestamp>,
    consecutive_failures: u32,
    last_failure_at: Option<Timestamp>,
    last_error: Option<String>,
    last_backoff: Duration,
    /// Set while `Open`: the earliest time of the next attempt.
    open_until: Option<Timestamp>,
}

impl Guardrail {
    pub fn new(cfg: GuardrailConfig) -> Self {
        let cfg = cfg.clamped();
        Guardrail {
            window: VecDeque::with_capacity(cfg.crash_budget.min(64) as usize),
            cfg,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            last_failure_at: None,
            last_error: None,
            last_backoff: Duration::ZERO,
            open_until: None,
        }
    }

    pub fn config(&self) -> &GuardrailConfig {
        &self.cfg
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How long the caller must still wait before attempting; zero means "go".
    /// An open breaker whose cooldown has elapsed moves to half-open here, so
    /// the attempt that follows is the probe.
    pub fn before_attempt(&mut self, now: Timestamp) -> Duration {
        if !self.cfg.enabled {
            return Duration::ZERO;
        }
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => Duration::ZERO,
            BreakerState::Open => match self.open_until {
                Some(until) if now < until => until.since(now),
                _ => {
                    self.open_until = None;
                    self.state = BreakerState::HalfOpen;
                    Duration::ZERO
                }
            },
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn on_failure(&mut self, now: Timestamp, error: &str) -> Duration {
        self.record_failure(now, error);
        let wait = if !self.cfg.enabled {
            DISABLED_FAILURE_WAIT
        } else if self.window.len() >= self.cfg.crash_budget as usize {
            self.open(now)
        } else {
            match self.state {
                BreakerState::Closed => self.backoff(),
                // The probe failed: back to a full cooldown.
                BreakerState::HalfOpen => self.open(now),
                // A failure while open must not shorten (or end) the open
                // period; only an elapsed one counts as a failed probe.
                BreakerState::Open => match self.open_until {
                    Some(until) if now < until => until.since(now),
                    _ => self.open(now),
                },
            }
        };
        self.last_backoff = wait;
        wait
    }

    /// The guarded loop is healthy again: forget every failure.
    pub fn on_success(&mut self) {
        self.window.clear();
        self.consecutive_failures = 0;
        self.last_backoff = Duration::ZERO;
        self.open_until = None;
        self.state = BreakerState::Closed;
    }

    /// When an open breaker will allow its probe; `None` unless open. Pure, so
    /// a scheduler can compute deadlines without touching the state.
    pub fn open_until(&self) -> Option<Timestamp> {
        match self.state {
            BreakerState::Open if self.cfg.enabled => self.open_until,
            _ => None,
        }
    }

    pub fn window_failures(&self) -> usize {
        self.window.len()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The reference system's debug JSON shape, with `last_failure_at` in Unix seconds.
    pub fn snapshot(&self, now: Timestamp) -> Value {
        let next_retry_in =
            self.open_until().map(|until| until.since(now)).unwrap_or(Duration::ZERO);
        json!({
            "enabled": self.cfg.enabled,
            "state": self.state.as_str(),
            "window_failures": self.window.len(),
            "consecutive_failures": self.consecutive_failures,
            "last_failure_at": self.last_failure_at.map(Timestamp::as_secs_f64),
            "last_error": self.last_error,
            "last_backoff_s": self.last_backoff.as_secs_f64(),
            "next_retry_in_s": next_retry_in.as_secs_f64(),
            "config": self.cfg.to_json(),
        })
    }

    fn record_failure(&mut self, now: Timestamp, error: &str) {
        let horizon = Timestamp(now.as_nanos().saturating_sub(self.cfg.budget_window.as_nanos()));
        while self.window.front().is_some_and(|t| *t < horizon) {
            self.window.pop_front();
        }
        self.window.push_back(now);
        // Only the newest `crash_budget` entries can decide "budget exhausted".
        while self.window.len() > self.cfg.crash_budget as usize {
            self.window.pop_front();
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure_at = Some(now);
        self.last_error = Some(truncate_chars(error, MAX_ERROR_CHARS));
    }

    fn open(&mut self, now: Timestamp) -> Duration {
        self.state = BreakerState::Open;
        self.open_until = Some(now.add(self.cfg.open_cooldown));
        self.cfg.open_cooldown
    }

    /// `min(max, initial · 2^(consecutive − 1))`, saturating.
    fn backoff(&self) -> Duration {
        let exponent = self.consecutive_failures.saturating_sub(1);
        let factor = if exponent >= 63 { u64::MAX } else { 1u64 << exponent };
        self.cfg.backoff_initial.saturating_mul(factor).min(self.cfg.backoff_max)
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Timestamp {
        Timestamp(Duration::from_secs_f64(secs).as_nanos())
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    fn cfg(budget: u32, initial_ms: u64, cooldown_ms: u64) -> GuardrailConfig {
        GuardrailConfig {
            enabled: true,
            crash_budget: budget,
            budget_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_secs(15),
            open_cooldown: Duration::from_millis(cooldown_ms),
        }
    }

    #[test]
    fn opens_when_crash_budget_exhausted() {
        let mut g = Guardrail::new(cfg(2, 100, 5_000));
        assert_eq!(g.on_failure(at(10.0), "boom"), Duration::from_millis(100));
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.on_failure(at(11.0), "boom"), Duration::from_secs(5));
        assert_eq!(g.state(), BreakerState::Open);
        let snap = g.snapshot(at(11.0));
        assert_eq!(snap["state"], "open");
        assert!(snap["next_retry_in_s"].as_f64().unwrap() > 0.0);
        assert_eq!(snap["next_retry_in_s"].as_f64().unwrap(), 5.0);
    }

    #[test]
    fn half_open_then_success_resets() {
        let mut g = Guardrail::new(cfg(1, 1_000, 2_000));
        assert_eq!(g.on_failure(at(20.0), "boom"), Duration::from_secs(2));
        assert_eq!(secs(g.before_attempt(at(21.0))), 1.0);
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.before_attempt(at(22.1)), Duration::ZERO);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        g.on_success();
        assert_eq!(g.state(), BreakerState::Closed);
        let snap = g.snapshot(at(23.0));
        assert_eq!(snap["window_failures"], 0);
        assert_eq!(snap["consecutive_failures"], 0);
        assert_eq!(snap["last_backoff_s"], 0.0);
    }

    #[test]
    fn defaults_back_off_1_2_4_8_then_open_30() {
        let mut g = Guardrail::new(GuardrailConfig::default());
        let mut now = at(1000.0);
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(g.before_attempt(now), Duration::ZERO);
            let w = g.on_failure(now, "connect refused");
            waits.push(secs(w));
            now = now.add(w);
        }
        assert_eq!(waits, vec![1.0, 2.0, 4.0, 8.0, 30.0]);
        assert_eq!(g.state(), BreakerState::Open);
    }

    #[test]
    fn backoff_is_capped_at_max() {
        let mut g = Guardrail::new(GuardrailConfig {
            crash_budget: 100,
            budget_window: Duration::from_secs(1),
            ..GuardrailConfig::default()
        });
        let mut now = at(0.0);
        let mut last = Duration::ZERO;
        for _ in 0..80 {
            last = g.on_failure(now, "x");
            now = now.add(Duration::from_secs(10));
        }
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(last, Duration::from_secs(15));
    }

    #[test]
    fn failed_half_open_probe_reopens_for_full_cooldown() {
        let mut g = Guardrail::new(GuardrailConfig::default());
        let mut now = at(0.0);
        for _ in 0..5 {
            now = now.add(g.on_failure(now, "x"));
        }
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.before_attempt(now), Duration::ZERO);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        assert_eq!(g.on_failure(now, "probe failed"), Duration::from_secs(30));
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.before_attempt(now.add(Duration::from_secs(29))), Duration::from_secs(1));
    }

    #[test]
    fn half_open_probe_failure_reopens_even_after_window_expired() {
        let mut g = Guardrail::new(cfg(2, 100, 5_000));
        g.on_failure(at(0.0), "a");
        g.on_failure(at(1.0), "b");
        assert_eq!(g.state(), BreakerState::Open);
        // Long after the window: the budget is no longer exhausted.
        assert_eq!(g.before_attempt(at(500.0)), Duration::ZERO);
        assert_eq!(g.on_failure(at(500.0), "c"), Duration::from_secs(5));
        assert_eq!(g.window_failures(), 1);
        assert_eq!(g.state(), BreakerState::Open);
    }

    #[test]
    fn failure_while_open_keeps_it_open() {
        // Reference bug: with the window trimmed below the budget, a failure
        // while open returned a backoff and flipped the state to closed.
        let mut g = Guardrail::new(GuardrailConfig {
            budget_window: Duration::from_secs(1),
            ..cfg(2, 100, 30_000)
        });
        g.on_failure(at(0.0), "a");
        g.on_failure(at(0.5), "b");
        assert_eq!(g.state(), BreakerState::Open);
        let w = g.on_failure(at(10.0), "late failure");
        assert_eq!(g.window_failures(), 1);
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(w, Duration::from_secs_f64(20.5), "remaining cooldown, not a backoff");
        assert_eq!(g.before_attempt(at(10.0)), Duration::from_secs_f64(20.5));
    }

    #[test]
    fn failure_while_open_after_cooldown_counts_as_failed_probe() {
        let mut g = Guardrail::new(GuardrailConfig {
            budget_window: Duration::from_secs(1),
            ..cfg(2, 100, 5_000)
        });
        g.on_failure(at(0.0), "a");
        g.on_failure(at(0.5), "b");
        // Cooldown over but nobody called before_attempt yet.
        assert_eq!(g.on_failure(at(9.0), "c"), Duration::from_secs(5));
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.open_until(), Some(at(14.0)));
    }

    #[test]
    fn window_is_bounded_by_budget() {
        let mut g = Guardrail::new(GuardrailConfig {
            crash_budget: 3,
            budget_window: Duration::from_secs(1_000),
            ..GuardrailConfig::default()
        });
        for i in 0..50 {
            g.on_failure(at(i as f64), "x");
            assert!(g.window_failures() <= 3);
        }
    }

    #[test]
    fn window_trims_old_failures() {
        let mut g = Guardrail::new(GuardrailConfig {
            crash_budget: 3,
            budget_window: Duration::from_secs(10),
            ..GuardrailConfig::default()
        });
        g.on_failure(at(0.0), "x");
        g.on_failure(at(5.0), "x");
        g.on_failure(at(20.0), "x");
        assert_eq!(g.window_failures(), 1);
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.consecutive_failures(), 3);
    }

    #[test]
    fn disabled_waits_fixed_two_seconds_and_never_opens() {
        let mut g = Guardrail::new(GuardrailConfig { enabled: false, ..cfg(1, 100, 5_000) });
        for i in 0..10 {
            assert_eq!(g.before_attempt(at(i as f64)), Duration::ZERO);
            assert_eq!(g.on_failure(at(i as f64), "x"), Duration::from_secs(2));
        }
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.open_until(), None);
        assert_eq!(g.snapshot(at(10.0))["enabled"], false);
    }

    #[test]
    fn config_minimums_are_applied() {
        let g = Guardrail::new(GuardrailConfig {
            crash_budget: 0,
            budget_window: Duration::ZERO,
            ..GuardrailConfig::default()
        });
        assert_eq!(g.config().crash_budget, 1);
        assert_eq!(g.config().budget_window, Duration::from_secs(1));
    }

    #[test]
    fn snapshot_shape_uses_unix_seconds() {
        let mut g = Guardrail::new(GuardrailConfig::default());
        g.on_failure(Timestamp::from_millis(1_700_000_000_500), "connection reset");
        let s = g.snapshot(Timestamp::from_secs(1_700_000_001));
        assert_eq!(s["last_failure_at"].as_f64().unwrap(), 1_700_000_000.5);
        assert_eq!(s["last_error"], "connection reset");
        assert_eq!(s["last_backoff_s"], 1.0);
        assert_eq!(s["next_retry_in_s"], 0.0);
        assert_eq!(s["state"], "closed");
        assert_eq!(
            s["config"],
            json!({"crash_budget":5,"budget_window_s":60.0,"backoff_initial_s":1.0,
                   "backoff_max_s":15.0,"open_cooldown_s":30.0})
        );
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 9);
    }

    #[test]
    fn long_error_text_is_truncated() {
        let mut g = Guardrail::new(GuardrailConfig::default());
        g.on_failure(at(1.0), &"é".repeat(1000));
        let s = g.snapshot(at(1.0));
        assert_eq!(s["last_error"].as_str().unwrap().chars().count(), MAX_ERROR_CHARS);
    }
}
