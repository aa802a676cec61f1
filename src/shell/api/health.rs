//! `/health` and `/health/ready`: read-only views of the engine and the
//! shell's figures ([`ShellStats`]). `/health` is always 200 while the process
//! answers and says what needs attention and why (`reasons`, the store's and
//! each market's exchange `last_error`); `/health/ready` is 503 until every
//! pinned series has a live stream and its history filled, then 200.
//!
//! It never changes the engine and never reads a clock (uptime comes from
//! the stats the loop filled).

use crate::engine::Engine;
use crate::model::{Market, SeriesId};
use crate::shell::api::stats::ShellStats;
use crate::wire::http::Response;

/// `/health`: always 200 while the process answers; `status` says whether
/// anything needs attention, `reasons` says what.
pub fn health(engine: &Engine, stats: &ShellStats) -> Response {
    let g = engine.gauges();
    let mut reasons = Vec::new();
    if !stats.store_ok {
        reasons.push("store_unavailable");
    }
    if g.store_backlog_candles > 0 {
        // Closed candles waiting for a store retry (not the normal flush buffers).
        reasons.push("store_backlog");
    }
    // Jobs exist but none has a live stream (lost connection, failing TLS,
    // breaker open): the data is not flowing.
    if g.jobs_running + g.jobs_starting + g.jobs_dead > 0 && g.jobs_running == 0 {
        reasons.push("upstream_disconnected");
    }
    if g.jobs_dead > 0 {
        reasons.push("ingest_jobs_dead");
    }
    let status = if reasons.is_empty() { "ok" } else { "degraded" };
    let c = engine.counters();
    let body = serde_json::json!({
        "status": status,
        "reasons": reasons,
        "store": {
            "ok": stats.store_ok,
            "last_error": stats.store_last_error,
            "path": stats.store_path,
            "backend": if stats.store_backend.is_empty() { "sqlite" } else { stats.store_backend },
            "connected": stats.store_connected || stats.store_backend.is_empty(),
            "writes": stats.store_write_count,
            "write_errors": c.store_write_errors,
            "backlog_candles": g.store_backlog_candles,
            "unpersisted_candles": g.unpersisted_candles,
        },
        "upstream": {
            "connections": g.upstream_connections,
            "connected": stats.upstream_connected,
            "streams": g.upstream_streams,
            "reconnects": g.upstream_reconnects,
            "rotations": g.upstream_rotations,
            "last_error": {
                "spot": stats.upstream_last_error[Market::Spot.index()],
                "futures": stats.upstream_last_error[Market::Futures.index()],
            },
        },
        "clients": g.clients,
        "tls": stats.client_tls,
        "subscriptions": g.subscriptions,
        "jobs": { "starting": g.jobs_starting, "running": g.jobs_running, "dead": g.jobs_dead },
        "uptime_s": uptime_s(stats),
        "role": if stats.role.is_empty() { "hybrid" } else { stats.role },
        "node_id": stats.node_id,
        "bus": stats.bus,
    });
    Response::json(200, &body)
}

pub fn uptime_s(stats: &ShellStats) -> f64 {
    (stats.now_unix_s - stats.started_unix_s).max(0.0)
}

/// `/health/ready`: 200 when every pinned series is serving, else 503; the
/// body lists each pinned series with what it is waiting for.
pub fn ready(engine: &Engine) -> Response {
    let mut all = true;
    let series: Vec<serde_json::Value> = engine
        .whitelist()
        .iter()
        .filter_map(|s| SeriesId::parse(s).ok())
        .map(|id| {
            let r = engine.series_readiness(&id);
            all &= r.stream_live && r.history_filled;
            serde_json::json!({
                "series_id": id.as_str(),
                "stream_live": r.stream_live,
                "history_filled": r.history_filled,
            })
        })
        .collect();
    let body = serde_json::json!({ "ready": all, "series": series });
    Response::json(if all { 200 } else { 503 }, &body)
}
