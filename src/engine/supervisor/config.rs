//! What the supervisor is configured with: the instance [`Role`] and the
//! [`SupervisorConfig`] (on-demand cap, idle TTL, whitelist, derived targets,
//! guardrail).
//!
//! Owns: configuration values and their defaults. Never validates series (that is
//! `supported`) and holds no job state.

use std::fmt;

use crate::engine::guardrail::GuardrailConfig;
use crate::model::{SeriesId, Timeframe};
use crate::time::Duration;

/// Whether this instance runs ingest jobs. klinegate always honours the
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
