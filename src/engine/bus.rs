//! The core's side of the bus between nodes (issue #13). Which role does
//! what, as values in and out — the shell's `bus_host` carries them over
//! Redis:
//! - `ingest`: every closed candle published after it is stored (base and
//!   derived, healed ones too) also leaves as `Output::BusPublish`, in the
//!   same order; forming updates leave as `Output::BusForming`. Until
//!   `Input::BusLeader` the node is a standby: no job starts.
//! - `read`: `Input::BusClosed` / `Input::BusForming` are published to
//!   subscribers WITHOUT persisting (the leader stored them), dropping
//!   candles at or before the newest one already delivered for the series;
//!   `Input::BusResync` makes every live subscription read what it missed
//!   from the store (the hub's catch-up, from its cursor).
//! - demand across nodes: a read node counts its subscriptions per series
//!   and says when a series becomes wanted or unwanted (`Output::BusDemand`);
//!   the leader takes each node's wants as `Input::RemoteDemand` and counts
//!   each (node, series) like one subscriber — the job starts on demand and
//!   is reaped after the idle TTL once nobody wants it; a capacity refusal
//!   goes back (`Output::BusRefused` → the read node's `Input::BusRefused`)
//!   and its subscribers there get the reference's `capacity` error frame.
//! - `hybrid`: nothing here emits or accepts anything.
//!
//! Never touches Redis, a clock or a store. Tests: `tests/engine_bus.rs`.

use super::series::SeriesIdx;
use super::supervisor::{Role, SubscribeOutcome};
use super::{Engine, LogLevel, Output};
use crate::model::{Candle, SeriesId};
use crate::wire::client as wire;
use std::collections::{BTreeMap, BTreeSet};

/// Demand bookkeeping: a read node's subscriptions per series; the leader's
/// (node, series) pairs it counts as subscribers.
#[derive(Debug, Default)]
pub(super) struct BusBook {
    local: BTreeMap<String, u32>,
    remote: BTreeSet<(String, String)>,
}

/// What the jobs publish also leaves for the bus (ingest role).
impl super::job::Ctx<'_> {
    /// Ingest role: a stored, published set of closes goes to the bus too.
    pub(super) fn bus_publish_closed(&mut self, idx: SeriesIdx, candles: &[Candle]) {
        if self.cfg.supervisor.role != Role::Ingest || candles.is_empty() {
            return;
        }
        self.counters.bus_closed_out += candles.len() as u64;
        let series_id = self.series.get(idx).id.as_str().to_string();
        self.outputs.push_back(Output::BusPublish { series_id, candles: candles.to_vec() });
    }

    /// Ingest role: a forming update goes to the bus (at most once).
    pub(super) fn bus_publish_forming(&mut self, idx: SeriesIdx, candle: &Candle) {
        if self.cfg.supervisor.role != Role::Ingest {
            return;
        }
        self.counters.bus_forming_out += 1;
        let series_id = self.series.get(idx).id.as_str().to_string();
        self.outputs.push_back(Output::BusForming { series_id, candle: *candle });
    }

    /// Bit `t`: derived target `t` of the job is in `which` (`t + 1`) and its
    /// forming updates have a receiver, a subscribed client or the bus (bits
    /// past 63 would always count as received).
    pub(super) fn forming_receivers(&self, derived: &[SeriesIdx], which: &[usize]) -> u64 {
        let bus = self.cfg.supervisor.role == Role::Ingest;
        let received = |t: usize, idx: SeriesIdx| bus || self.hub.subscriber_count(idx) != 0 || t >= 64;
        derived.iter().enumerate().filter(|(t, idx)| which.contains(&(t + 1)) && received(*t, **idx)).fold(0, |m, (t, _)| m | 1u64 << t.min(63))
    }
}

impl Engine {
    fn role(&self) -> Role {
        self.cfg.supervisor.role
    }

    fn bus_series(&mut self, what: &str, raw: &str) -> Option<SeriesIdx> {
        if self.role() != Role::Read {
            self.log(LogLevel::Warn, format!("bus_input_ignored kind={what} role={} series_id={raw}", self.role()));
            return None;
        }
        match SeriesId::parse(raw) {
            Ok(id) => Some(self.series.intern(&id)),
            Err(e) => {
                self.log(LogLevel::Warn, format!("bus_input_refused kind={what} series_id={raw:?} error={:?}", e.to_string()));
                None
            }
        }
    }

    pub(super) fn on_bus_closed(&mut self, raw: &str, mut candles: Vec<Candle>, entry: &str) {
        let Some(idx) = self.bus_series("closed", raw) else { return };
        candles.sort_by_key(|c| c.candle_time);
        candles.dedup_by_key(|c| c.candle_time);
        let before = candles.len();
        if let Some(last) = self.series.get(idx).last_closed {
            candles.retain(|c| c.candle_time > last);
        }
        let dropped = before - candles.len();
        if dropped > 0 {
            self.counters.bus_closed_dropped += dropped as u64;
            self.log(LogLevel::Debug, format!("bus_closed_duplicate series_id={raw} entry={entry} dropped={dropped}"));
        }
        let Some(last) = candles.last().map(|c| c.candle_time) else { return };
        self.counters.bus_closed_in += candles.len() as u64;
        self.series.note_closed(idx, last);
        self.hub.publish_closed(idx, &candles, &self.series, &mut self.outputs, &mut self.counters);
    }

    pub(super) fn on_bus_forming(&mut self, raw: &str, candle: Candle) {
        let Some(idx) = self.bus_series("forming", raw) else { return };
        if self.series.get(idx).last_closed.is_some_and(|t| candle.candle_time <= t) {
            return; // already closed here: a late forming update
        }
        self.hub.publish_forming(idx, &candle, &self.series, &mut self.outputs, &mut self.counters);
    }

    pub(super) fn on_bus_resync(&mut self, reason: &str) {
        if self.role() != Role::Read {
            return;
        }
        self.counters.bus_resyncs += 1;
        let mut n = 0;
        for i in 0..self.series.len() {
            let idx = SeriesIdx(i as u32);
            if self.hub.subscriber_count(idx) == 0 {
                continue;
            }
            n += 1;
            self.hub.resync(idx, &self.series, &mut self.outputs);
        }
        self.log(LogLevel::Info, format!("bus_resync reason={reason:?} series={n}"));
    }

    /// A new subscription was counted (read role: the demand for its series).
    pub(super) fn bus_demand_add(&mut self, id: &SeriesId) {
        if self.role() != Role::Read {
            return;
        }
        let n = self.bus.local.entry(id.as_str().to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.outputs.push_back(Output::BusDemand { series_id: id.as_str().to_string(), wanted: true });
        }
    }

    /// A counted subscription ended: the supervisor's reference and, in the
    /// read role, the node's demand are released.
    pub(super) fn release_series(&mut self, id: &SeriesId) {
        self.supervisor.unsubscribe(id, self.now);
        if self.role() != Role::Read {
            return;
        }
        let key = id.as_str();
        let Some(n) = self.bus.local.get_mut(key) else { return };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.bus.local.remove(key);
            self.outputs.push_back(Output::BusDemand { series_id: key.to_string(), wanted: false });
        }
    }

    pub(super) fn on_remote_demand(&mut self, node: &str, raw: &str, wanted: bool) {
        if self.role() != Role::Ingest {
            return;
        }
        let Ok(id) = SeriesId::parse(raw) else {
            self.log(LogLevel::Warn, format!("bus_demand_refused node={node} series_id={raw:?} reason=bad_series"));
            return;
        };
        let key = (node.to_string(), id.as_str().to_string());
        if !wanted {
            if self.bus.remote.remove(&key) {
                self.supervisor.unsubscribe(&id, self.now);
                self.log(LogLevel::Info, format!("bus_demand_released node={node} series_id={id}"));
            }
            return;
        }
        if self.bus.remote.contains(&key) {
            return;
        }
        self.counters.bus_remote_demands += 1;
        match self.admit_series(&id) {
            SubscribeOutcome::Accepted => {
                self.bus.remote.insert(key);
                self.log(LogLevel::Info, format!("bus_demand_accepted node={node} series_id={id}"));
            }
            SubscribeOutcome::Capacity => {
                self.counters.bus_remote_refusals += 1;
                self.counters.capacity_rejects += 1;
                self.log(LogLevel::Info, format!("bus_demand_rejected node={node} series_id={id} reason=capacity"));
                let out = Output::BusRefused { node: node.to_string(), series_id: id.as_str().to_string(), reason: "capacity".into() };
                self.outputs.push_back(out);
            }
            SubscribeOutcome::Unsupported(msg) => {
                self.log(LogLevel::Info, format!("bus_demand_refused node={node} series_id={id} reason={msg:?}"));
            }
        }
        self.apply_effects();
    }

    /// Read role: the leader refused `raw`: its subscribers here get the
    /// reference's `capacity` error and lose the subscription.
    pub(super) fn on_bus_refused(&mut self, raw: &str, reason: &str) {
        if self.role() != Role::Read {
            return;
        }
        let Ok(id) = SeriesId::parse(raw) else { return };
        let Some(idx) = self.series.lookup(id.as_str()) else { return };
        for client in self.hub.subscribers(idx) {
            if self.hub.unsubscribe(client, idx) {
                self.release_series(&id);
            }
            self.counters.capacity_rejects += 1;
            let frame = wire::error_frame(reason, "ondemand_ingest_capacity", Some(raw));
            self.hub.send_to(client, frame, &mut self.outputs);
            self.log(LogLevel::Info, format!("market_ws_subscribe_rejected client={client} series_id={raw} reason={reason} source=leader"));
        }
    }

    pub(super) fn on_bus_leader(&mut self, fence: u64) {
        if self.role() != Role::Ingest || !self.supervisor.is_standby() {
            return;
        }
        self.supervisor.set_standby(false);
        self.log(LogLevel::Info, format!("bus_leader fence={fence} action=start_ingest"));
        self.supervisor.start_whitelist(self.now, &mut self.effects);
        // This node's own clients subscribed while it stood by: each now
        // counts as the subscriber it would have been (their jobs start).
        for i in 0..self.series.len() {
            let idx = SeriesIdx(i as u32);
            let id = self.series.get(idx).id.clone();
            for _ in self.hub.subscribers(idx) {
                if let SubscribeOutcome::Capacity = self.supervisor.subscribe(&id, self.now, &mut self.effects) {
                    self.log(LogLevel::Info, format!("bus_leader_subscriber_refused series_id={id} reason=capacity"));
                }
            }
        }
        self.apply_effects();
    }
}
