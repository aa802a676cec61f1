//! Read-only views of the engine for the shell's health, metrics and debug
//! routes: typed snapshots ([`Gauges`], [`Readiness`], [`RestFigures`]) and
//! the debug JSON. Never changes the engine.

use super::*;

/// One series' readiness (see [`Engine::series_readiness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub stream_live: bool,
    pub history_filled: bool,
}

/// REST figures (see [`Engine::rest_figures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestFigures {
    /// Weight of the requests sent since start.
    pub weight_sent: u64,
    /// Answers 429/418 (the market pauses for their Retry-After).
    pub rate_limited: u64,
    /// Weight used in the current minute: spot, USD-M futures.
    pub used_weight: [u32; 2],
}

/// Point-in-time engine figures (see [`Engine::gauges`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Gauges {
    pub clients: usize,
    pub subscriptions: usize,
    pub jobs_starting: usize,
    pub jobs_running: usize,
    pub jobs_dead: usize,
    pub upstream_connections: usize,
    pub upstream_streams: usize,
    pub upstream_reconnects: u64,
    pub upstream_rotations: u64,
    pub unpersisted_candles: usize,
    pub store_backlog_candles: usize,
    /// Series with a range healing could not fill yet (the gap ledger).
    pub gap_ledger_entries: usize,
}

impl Engine {

    /// `GET /api/market/debug/ingest_state`: the supervisor snapshot (the reference's shape)
    /// plus the upstream pool and engine counters.
    pub fn ingest_state(&self) -> serde_json::Value {
        let mut v = self.supervisor.snapshot(self.now);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("upstream".into(), self.pool.snapshot(self.now));
            obj.insert("counters".into(), self.counters.to_json());
            obj.insert("unpersisted_candles".into(), self.unpersisted_candles().into());
            let healing: Vec<serde_json::Value> = self
                .jobs
                .iter()
                .map(|(_, j)| j)
                .map(|j| {
                    serde_json::json!({
                        "series_id": j.base_id.as_str(),
                        "backfill": heal::heal_state_json(&j.heal_state),
                        "hole": j.hole.as_ref().map(heal::hole_json),
                    })
                })
                .collect();
            obj.insert("healing".into(), healing.into());
            obj.insert("rest".into(), serde_json::json!({"queued": self.rest.queued(), "inflight": self.rest.inflight()}));
            obj.insert("store_effects_in_flight".into(), self.store_ops.in_flight().into());
        }
        v
    }

    /// The healing state of the job that ingests `series_id` (its base job for
    /// a derived series), for health views.
    pub fn heal_state(&self, series_id: &str) -> Option<(ingest::HealState, Option<ingest::Hole>)> {
        let id = SeriesId::parse(series_id).ok()?;
        let base = self.supervisor.normalize(&id);
        let idx = self.series.lookup(base.as_str())?;
        self.jobs.get(idx).map(|j| (j.heal_state.clone(), j.hole.clone()))
    }

    /// Whether `series_id` is serving (for `/health/ready`): its job's stream
    /// is live, and its history is filled — its last heal ended without an
    /// error and none is running (with healing off, history is whatever the
    /// store holds). A hole older than what the exchange returned (e.g.
    /// before the listing) does not count: it is retried in the background
    /// and shown as `gap_ledger_entries`.
    pub fn series_readiness(&self, series_id: &SeriesId) -> Readiness {
        let base = self.supervisor.normalize(series_id);
        let stream_live = !self.supervisor.ingest_jobs_enabled()
            || self.supervisor.job(&base).is_some_and(|j| j.state == supervisor::JobState::Running);
        let job = self.series.lookup(base.as_str()).and_then(|i| self.jobs.get(i));
        let history_filled = !self.cfg.heal.enabled
            || job.is_some_and(|j| !j.lost && j.heal.is_none() && j.heal_state.state != "failed");
        Readiness { stream_live, history_filled }
    }

    /// The REST scheduler's figures for metrics.
    pub fn rest_figures(&self) -> RestFigures {
        RestFigures {
            weight_sent: self.rest.weight_sent,
            rate_limited: self.rest.responses_rate_limited,
            used_weight: [self.rest.used_weight(Market::Spot), self.rest.used_weight(Market::Futures)],
        }
    }

    /// The window of closed candles a reader of `id` may see now (rows
    /// "ahead" of it are hidden; `since` is clamped to it). The shell reads
    /// the store for `GET /api/market/candles` within it.
    pub fn closed_window(&self, id: &SeriesId) -> ClosedWindow {
        let known = self.series.lookup(id.as_str()).and_then(|i| self.series.get(i).last_closed);
        ClosedWindow::new(self.now.as_secs(), id.timeframe(), known)
    }

    /// The configured whitelist (pins), as given.
    pub fn whitelist(&self) -> Vec<String> {
        self.cfg.supervisor.whitelist.iter().map(|s| s.as_str().to_string()).collect()
    }

    /// Point-in-time figures for metrics.
    pub fn gauges(&self) -> Gauges {
        let by_state = self.supervisor.count_by_state();
        let count = |st: supervisor::JobState| by_state.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
        Gauges {
            clients: self.hub.client_count(),
            subscriptions: self.hub.subscription_count(),
            jobs_starting: count(supervisor::JobState::Starting),
            jobs_running: count(supervisor::JobState::Running),
            jobs_dead: count(supervisor::JobState::Dead),
            upstream_connections: self.pool.connection_count(),
            upstream_streams: self.pool.stream_count(),
            upstream_reconnects: self.pool.reconnects,
            upstream_rotations: self.pool.rotations,
            unpersisted_candles: self.unpersisted_candles(),
            store_backlog_candles: self.jobs.backlog_candles(),
            gap_ledger_entries: self.jobs.iter().map(|(_, j)| j).filter(|j| j.hole.is_some()).count(),
        }
    }

    pub fn client_count(&self) -> usize {
        self.hub.client_count()
    }

    pub fn subscription_count(&self) -> usize {
        self.hub.subscription_count()
    }

    pub fn upstream_connection_count(&self) -> usize {
        self.pool.connection_count()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
}
