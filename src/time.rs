//! Time as a value: the core never reads a clock; every entry point takes a
//! [`Timestamp`] handed in by the caller. This module owns the time types and
//! their arithmetic and nothing else.

use std::fmt;

/// Nanoseconds since the Unix epoch. The shell reads the wall clock once per
/// loop turn and passes it in; replays pass the journal's recorded value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

pub const NANOS_PER_MS: u64 = 1_000_000;
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms.saturating_mul(NANOS_PER_MS))
    }

    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(NANOS_PER_SEC))
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub const fn as_millis(self) -> u64 {
        self.0 / NANOS_PER_MS
    }

    /// Whole Unix seconds (floor).
    pub const fn as_secs(self) -> i64 {
        (self.0 / NANOS_PER_SEC) as i64
    }

    /// Seconds as a float, for debug snapshots that keep the reference's float shape.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    #[must_use = "a Timestamp is a value: `add` returns the later time, it does not move this one"]
    pub const fn add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.0))
    }

    /// `self - earlier`, zero when `earlier` is later.
    pub const fn since(self, earlier: Timestamp) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.0 / NANOS_PER_SEC, self.0 % NANOS_PER_SEC)
    }
}

/// A span of time in nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Duration(pub u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms.saturating_mul(NANOS_PER_MS))
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration(s.saturating_mul(NANOS_PER_SEC))
    }

    pub fn from_secs_f64(s: f64) -> Self {
        // NaN and non-positive values are no duration.
        if s.is_nan() || s <= 0.0 {
            return Duration::ZERO;
        }
        Duration((s * NANOS_PER_SEC as f64).min(u64::MAX as f64) as u64)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub const fn as_millis(self) -> u64 {
        self.0 / NANOS_PER_MS
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    #[must_use]
    pub const fn saturating_mul(self, k: u64) -> Self {
        Duration(self.0.saturating_mul(k))
    }
}
