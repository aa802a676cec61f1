//! Engine settings as plain values: what a user configures (flags, environment,
//! file) and what a journal header records so a replay rebuilds the same engine.
//! Converting to [`EngineConfig`] validates every value and names the setting
//! at fault. Never reads the environment itself: the CLI layer does that.

use crate::engine::guardrail::GuardrailConfig;
use crate::engine::heal::HealConfig;
use crate::engine::hub::HubConfig;
use crate::engine::rest::RestConfig;
use crate::engine::supervisor::{Role, SupervisorConfig};
use crate::engine::upstream::UpstreamConfig;
use crate::engine::EngineConfig;
use crate::model::{SeriesId, Timeframe};
use crate::time::Duration;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Pinned series (whitelist): ingested from start, never reaped.
    pub pins: Vec<String>,
    pub ondemand: bool,
    /// 0 = unlimited.
    pub max_ondemand_jobs: usize,
    pub idle_ttl_s: u64,
    /// Comma-separated derived timeframes folded locally from 1m; empty disables.
    pub derived: String,
    pub forming_interval_ms: u64,
    pub batch_max: usize,
    pub flush_ms: u64,
    /// hybrid | ingest | read
    pub role: String,
    pub catchup_limit: usize,
    pub client_max_backlog_bytes: usize,
    pub max_subscriptions_per_client: usize,
    /// Messages per second one client may send (bursts of twice that); 0 = no
    /// limit. A journal without this key replays with no limit, as recorded
    /// before the core enforced it.
    #[serde(default)]
    pub max_client_messages_per_s: u32,
    pub max_client_message_bytes: usize,
    pub streams_per_connection: usize,
    pub control_rate_spot: usize,
    pub control_rate_futures: usize,
    pub spot_ws_url: String,
    pub futures_ws_url: String,
    pub upstream_silence_s: u64,
    /// A live stream with no kline frame for this long is resubscribed; 0 =
    /// off. A journal without this key replays with it off, as recorded
    /// before the core detected frozen streams.
    #[serde(default)]
    pub stream_stall_s: u64,
    pub upstream_rotate_s: u64,
    pub breaker_crash_budget: u32,
    pub breaker_window_s: u64,
    pub breaker_backoff_initial_ms: u64,
    pub breaker_backoff_max_ms: u64,
    pub breaker_cooldown_s: u64,
    pub store_backlog_max_candles: usize,
    pub rng_seed: u64,
    /// Heal history over REST (start, reconnect, late closes).
    pub heal: bool,
    pub heal_first_visit_candles: usize,
    pub heal_max_candles: usize,
    pub late_close_ms: u64,
    pub heal_gate_ms: u64,
    pub rest_weight_budget_spot: u32,
    pub rest_weight_budget_futures: u32,
    /// Per-timeframe retention, e.g. `1m=90d,5m=2y`; empty keeps everything.
    /// A journal without this key replays with none (and none is not written,
    /// so journals recorded without retention are unchanged).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub retention: String,
    /// Keep and store the whole kline (quote volume, trades, taker-buy
    /// volumes). `klinegate run` turns it on by default; a journal without
    /// the key replays with it off, as recorded before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_klines: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pins: vec!["binance:spot:BTC/USDT:1m".into()],
            ondemand: true,
            max_ondemand_jobs: 0,
            idle_ttl_s: 60,
            derived: "5m,15m,1h,4h,1d".into(),
            forming_interval_ms: 250,
            batch_max: 200,
            flush_ms: 500,
            role: "hybrid".into(),
            catchup_limit: 5000,
            client_max_backlog_bytes: 4 << 20,
            max_subscriptions_per_client: 256,
            max_client_messages_per_s: 50,
            max_client_message_bytes: 64 << 10,
            streams_per_connection: 200,
            control_rate_spot: 2,
            control_rate_futures: 5,
            spot_ws_url: "wss://stream.binance.com:9443/stream".into(),
            futures_ws_url: "wss://fstream.binance.com/market/stream".into(),
            upstream_silence_s: 60,
            stream_stall_s: 10,
            upstream_rotate_s: 23 * 3600,
            breaker_crash_budget: 5,
            breaker_window_s: 60,
            breaker_backoff_initial_ms: 1000,
            breaker_backoff_max_ms: 15_000,
            breaker_cooldown_s: 30,
            store_backlog_max_candles: 1_000_000,
            rng_seed: 1,
            heal: true,
            heal_first_visit_candles: 2000,
            heal_max_candles: 20_000,
            late_close_ms: 5000,
            heal_gate_ms: 3000,
            rest_weight_budget_spot: 3000,
            rest_weight_budget_futures: 1200,
            retention: String::new(),
            full_klines: false,
        }
    }
}

/// A setting with an unusable value; the message names it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

fn positive(setting: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(bad(setting, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// Parses `5m,15m,1h` (whitespace and empty items ignored, duplicates dropped).
pub fn parse_timeframe_list(s: &str) -> Result<Vec<Timeframe>, String> {
    let mut out: Vec<Timeframe> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let tf = Timeframe::parse(part).map_err(|e| e.to_string())?;
        if !out.contains(&tf) {
            out.push(tf);
        }
    }
    Ok(out)
}

pub fn parse_role(s: &str) -> Result<Role, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "hybrid" => Ok(Role::Hybrid),
        "ingest" => Ok(Role::Ingest),
        "read" => Ok(Role::Read),
        other => Err(format!("unknown role '{other}' (expected hybrid, ingest or read)")),
    }
}

impl Settings {
    pub fn to_engine_config(&self) -> Result<EngineConfig, ConfigError> {
        let mut whitelist = Vec::new();
        for p in &self.pins {
            let id = SeriesId::parse(p).map_err(|e| bad("pin", format!("'{p}': {e}")))?;
            whitelist.push(id);
        }
        let derived = parse_timeframe_list(&self.derived).map_err(|e| bad("derived", e))?;
        let role = parse_role(&self.role).map_err(|e| bad("role", e))?;
        let guardrail = GuardrailConfig {
            enabled: true,
            crash_budget: positive("breaker-crash-budget", self.breaker_crash_budget as u64)? as u32,
            budget_window: Duration::from_secs(positive("breaker-window-s", self.breaker_window_s)?),
            backoff_initial: Duration::from_millis(positive(
                "breaker-backoff-initial-ms",
                self.breaker_backoff_initial_ms,
            )?),
            backoff_max: Duration::from_millis(positive("breaker-backoff-max-ms", self.breaker_backoff_max_ms)?),
            open_cooldown: Duration::from_secs(self.breaker_cooldown_s),
        };
        for (name, url) in [("spot-ws-url", &self.spot_ws_url), ("futures-ws-url", &self.futures_ws_url)] {
            if !(url.starts_with("wss://") || url.starts_with("ws://")) {
                return Err(bad(name, format!("'{url}' is not a ws:// or wss:// URL")));
            }
        }
        Ok(EngineConfig {
            supervisor: SupervisorConfig {
                ondemand_enabled: self.ondemand,
                max_ondemand_jobs: self.max_ondemand_jobs,
                idle_ttl: Duration::from_secs(positive("idle-ttl", self.idle_ttl_s)?),
                whitelist,
                whitelist_ingest_enabled: true,
                role,
                derived_base: Timeframe::M1,
                derived,
                guardrail: guardrail.clone(),
            },
            hub: HubConfig {
                catchup_limit: positive("catchup-limit", self.catchup_limit as u64)? as usize,
                max_backlog_bytes: positive("client-max-backlog-bytes", self.client_max_backlog_bytes as u64)?
                    as usize,
                max_subscriptions_per_client: positive(
                    "max-subscriptions-per-client",
                    self.max_subscriptions_per_client as u64,
                )? as usize,
                max_messages_per_s: self.max_client_messages_per_s,
                ..HubConfig::default()
            },
            upstream: UpstreamConfig {
                spot_url: self.spot_ws_url.clone(),
                futures_url: self.futures_ws_url.clone(),
                streams_per_connection: positive("streams-per-connection", self.streams_per_connection as u64)?
                    .min(1024) as usize,
                control_rate_spot: positive("control-rate-spot", self.control_rate_spot as u64)? as usize,
                control_rate_futures: positive("control-rate-futures", self.control_rate_futures as u64)? as usize,
                silence_timeout: Duration::from_secs(positive("upstream-silence-s", self.upstream_silence_s)?),
                rotate_after: Duration::from_secs(positive("upstream-rotate-s", self.upstream_rotate_s)?),
                guardrail,
                ..UpstreamConfig::default()
            },
            stream_stall: Duration::from_secs(self.stream_stall_s),
            forming_interval: Duration::from_millis(self.forming_interval_ms),
            batch_max: positive("batch-max", self.batch_max as u64)? as usize,
            flush_interval: Duration::from_millis(positive("flush-ms", self.flush_ms)?),
            max_client_message_bytes: positive("max-client-message-bytes", self.max_client_message_bytes as u64)?
                as usize,
            store_backlog_max_candles: positive("store-backlog-max-candles", self.store_backlog_max_candles as u64)?
                as usize,
            rng_seed: self.rng_seed,
            heal: HealConfig {
                enabled: self.heal,
                first_visit_candles: self.heal_first_visit_candles,
                max_candles: positive("heal-max-candles", self.heal_max_candles as u64)? as usize,
                late_close: Duration::from_millis(positive("late-close-ms", self.late_close_ms)?),
                gate_timeout: Duration::from_millis(self.heal_gate_ms),
                ..HealConfig::default()
            },
            rest: RestConfig {
                weight_budget_spot: positive("rest-weight-budget-spot", self.rest_weight_budget_spot as u64)? as u32,
                weight_budget_futures: positive("rest-weight-budget-futures", self.rest_weight_budget_futures as u64)?
                    as u32,
                ..RestConfig::default()
            },
            retention: crate::engine::retention::RetentionConfig {
                keep: crate::engine::retention::parse_retention(&self.retention).map_err(|e| bad("retention", e))?,
                ..Default::default()
            },
            full_klines: self.full_klines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Settings::default().to_engine_config().unwrap();
        assert_eq!(cfg.supervisor.derived.len(), 5);
        assert_eq!(cfg.batch_max, 200);
    }

    #[test]
    fn errors_name_the_setting() {
        let s = Settings { derived: "5m,7x".into(), ..Settings::default() };
        assert_eq!(s.to_engine_config().unwrap_err().setting, "derived");
        let s = Settings { pins: vec!["nope".into()], ..Settings::default() };
        assert_eq!(s.to_engine_config().unwrap_err().setting, "pin");
        let s = Settings { role: "writer".into(), ..Settings::default() };
        assert!(s.to_engine_config().unwrap_err().to_string().contains("role"));
        let s = Settings { flush_ms: 0, ..Settings::default() };
        assert_eq!(s.to_engine_config().unwrap_err().setting, "flush-ms");
    }

    #[test]
    fn settings_round_trip_through_json_with_defaults_for_missing_keys() {
        let s: Settings = serde_json::from_str(r#"{"pins":[],"batch_max":3}"#).unwrap();
        assert_eq!(s.batch_max, 3);
        assert!(s.pins.is_empty());
        assert_eq!(s.flush_ms, 500);
        assert!(serde_json::from_str::<Settings>(r#"{"bogus":1}"#).is_err());
    }
}
