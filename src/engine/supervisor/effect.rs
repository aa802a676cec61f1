//! What the supervisor tells the engine: [`Effect`]s to carry out (start a job, stop
//! one with a [`StopReason`]) and the [`SubscribeOutcome`] of a subscription.
//!
//! Owns: the supervisor's output values. Never decides anything.

use std::fmt;

use crate::model::SeriesId;

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
