//! The `/metrics` families of a node on the bus (issue #13): its role, and
//! the bus host's figures as `/health` shows them (`ShellStats::bus`), plus
//! the core's bus counters. A hybrid node shows only its role.
//!
//! It only reads figures; it never changes them.

use super::metrics::Exposition;
use super::stats::ShellStats;
use crate::engine::Engine;
use serde_json::Value;

pub fn bus_metrics(m: &mut Exposition, engine: &Engine, s: &ShellStats) {
    let role = if s.role.is_empty() { "hybrid" } else { s.role };
    m.family("node_info", "gauge", "This node: its role (hybrid, ingest, read) and its name on the bus.");
    m.sample("node_info", &[("role", role), ("node", &s.node_id)], 1.0);
    if s.bus.is_null() {
        return;
    }
    let b = &s.bus;
    let num = |k: &str| b[k].as_f64();
    let flag = |k: &str| if b[k] == Value::Bool(true) { 1.0 } else { 0.0 };
    m.gauge("bus_connected", "1 while the Redis bus connection is up.", flag("connected"));
    let c = engine.counters();
    if role == "ingest" {
        m.gauge("bus_leader", "1 while this ingest node holds the leader lease.", flag("leader"));
        m.gauge("bus_fence", "The fencing token of the lease this node holds (0: standby).", num("fence").unwrap_or(0.0));
        m.gauge("bus_lease_age_seconds", "Seconds since this node took the leader lease (0: standby).", num("leader_for_s").unwrap_or(0.0));
        m.gauge("bus_backlog_entries", "Closed-stream entries not yet acknowledged by Redis.", num("backlog_entries").unwrap_or(0.0));
        m.counter("bus_closed_published_total", "Closed candles handed to the bus after they were stored.", c.bus_closed_out);
        m.counter("bus_candles_dropped_total", "Closed candles dropped at the bus backlog bound (readers resync from the store).", num("candles_dropped").unwrap_or(0.0) as u64);
        m.counter("bus_forming_sent_total", "Forming updates sent on the bus.", num("forming_sent").unwrap_or(0.0) as u64);
        m.counter("bus_remote_demands_total", "Read-node demands the leader admitted or refused.", c.bus_remote_demands);
        m.counter("bus_remote_refusals_total", "Read-node demands refused for capacity.", c.bus_remote_refusals);
    } else {
        m.gauge("bus_lag_seconds", "Redis time of the last closed entry handled → when this node handled it.", num("lag_s").unwrap_or(0.0));
        m.gauge("bus_lag_entries", "Closed entries in the stream after the last one handled (counted every 2 s, at most 1000).", num("lag_entries").unwrap_or(0.0));
        m.gauge("bus_since_last_entry_seconds", "Seconds since the last closed entry was handled.", num("since_last_entry_s").unwrap_or(0.0));
        m.counter("bus_closed_received_total", "Closed candles taken from the bus and published.", c.bus_closed_in);
        m.counter("bus_closed_duplicates_total", "Closed candles from the bus dropped as already delivered.", c.bus_closed_dropped);
        m.counter("bus_resyncs_total", "Times the subscriptions read what the bus lost from the store.", c.bus_resyncs);
        m.counter("bus_refusals_total", "Leader refusals (capacity) for this node's clients.", num("refusals").unwrap_or(0.0) as u64);
    }
    let error = b["last_error"].as_str().unwrap_or("");
    m.family("bus_last_error_info", "gauge", "The last bus error (1 while one is recorded).");
    m.sample("bus_last_error_info", &[("error", error)], if error.is_empty() { 0.0 } else { 1.0 });
}
