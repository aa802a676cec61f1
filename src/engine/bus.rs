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
//! - `hybrid`: nothing here emits or accepts anything.
//!
//! Never touches Redis, a clock or a store. Tests: `tests/engine_bus.rs`.

use super::series::SeriesIdx;
use super::supervisor::Role;
use super::{Engine, LogLevel, Output};
use crate::model::{Candle, SeriesId};

impl Engine {
    fn role(&self) -> Role {
        self.cfg.supervisor.role
    }

    /// Ingest role: a stored, published set of closes goes to the bus too.
    pub(super) fn bus_publish_closed(&mut self, idx: SeriesIdx, candles: &[Candle]) {
        if self.role() != Role::Ingest || candles.is_empty() {
            return;
        }
        self.counters.bus_closed_out += candles.len() as u64;
        let series_id = self.series.get(idx).id.as_str().to_string();
        self.outputs.push_back(Output::BusPublish { series_id, candles: candles.to_vec() });
    }

    /// Ingest role: a forming update goes to the bus (at most once).
    pub(super) fn bus_publish_forming(&mut self, idx: SeriesIdx, candle: &Candle) {
        if self.role() != Role::Ingest {
            return;
        }
        self.counters.bus_forming_out += 1;
        let series_id = self.series.get(idx).id.as_str().to_string();
        self.outputs.push_back(Output::BusForming { series_id, candle: *candle });
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
            if self.series.get(idx).subscribers.is_empty() {
                continue;
            }
            n += 1;
            self.hub.resync(idx, &self.series, &mut self.outputs);
        }
        self.log(LogLevel::Info, format!("bus_resync reason={reason:?} series={n}"));
    }

    pub(super) fn on_bus_leader(&mut self, fence: u64) {
        if self.role() != Role::Ingest || !self.supervisor.is_standby() {
            return;
        }
        self.supervisor.set_standby(false);
        self.log(LogLevel::Info, format!("bus_leader fence={fence} action=start_ingest"));
        self.supervisor.start_whitelist(self.now, &mut self.effects);
        self.apply_effects();
    }
}
