//! The loop's side of the bus host (`shell::bus_host`): its socket events,
//! its pump once per turn, the inputs it hands the core (journaled like any
//! other), the core's bus outputs, and the fail-stop exit of a deposed
//! leader.
//!
//! Never interprets an entry and never decides leadership (the host does).

use super::Server;
use crate::engine::{LogLevel, Output};
use mio::Token;
use std::time::Duration;

/// Exit code of an ingest node that lost the leader lease (fail-stop).
pub const EXIT_LEASE_LOST: i32 = 3;

impl Server {
    pub(super) fn bus_owns(&self, token: Token) -> bool {
        self.bus.as_ref().is_some_and(|b| b.owns(token))
    }

    pub(super) fn on_bus_event(&mut self, readable: bool, writable: bool) {
        if let Some(b) = self.bus.as_mut() {
            b.on_event(readable, writable, self.mono, self.poll.registry());
        }
    }

    pub(super) fn offer_bus(&mut self, out: Output) {
        if let Some(b) = self.bus.as_mut() {
            b.offer(out);
        }
    }

    /// Pumps the bus, feeds its inputs to the core, logs its notes. `Some(code)`:
    /// this node must exit now (a leader that lost its lease).
    pub(super) fn pump_bus(&mut self) -> Option<i32> {
        for _ in 0..2 {
            let b = self.bus.as_mut()?;
            b.pump(self.mono, self.poll.registry());
            // Before the core hears it leads: its writes carry the fence.
            if let (Some(fence), Some(pg)) = (b.fence(), self.store.pg()) {
                pg.set_fence(fence);
            }
            let b = self.bus.as_mut()?;
            let mut inputs = Vec::new();
            while let Some(input) = b.poll_input() {
                inputs.push(input);
            }
            let mut notes = Vec::new();
            while let Some(note) = b.poll_note() {
                notes.push(note);
            }
            for (level, line) in notes {
                self.log(level, &line);
            }
            if let Some(why) = self.bus.as_ref().and_then(|b| b.fatal()).map(str::to_string) {
                self.log(
                    LogLevel::Error,
                    &format!("bus_lease_lost node={} error={why:?} action=exit code={EXIT_LEASE_LOST} note=\"fail-stop: restart this process; it rejoins as a standby\"", self.node_id),
                );
                if let Some(j) = self.journal.as_mut() {
                    let _ = j.flush();
                }
                return Some(EXIT_LEASE_LOST);
            }
            if inputs.is_empty() {
                break;
            }
            for input in inputs {
                self.apply(input);
            }
        }
        None
    }

    /// How long the loop may sleep for the bus's sake.
    pub(super) fn bus_wait(&self) -> Option<Duration> {
        let at = self.bus.as_ref()?.next_wakeup()?;
        Some(super::ceil_ms(at.saturating_duration_since(self.mono)))
    }

    /// The `/health` view of the bus, refreshed by housekeeping.
    pub(super) fn refresh_bus_health(&mut self) {
        if let Some(b) = self.bus.as_ref() {
            self.stats.bus = b.health(self.mono);
        }
    }
}
