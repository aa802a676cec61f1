//! What the two sides of the bus (`publisher`, `reader`) share: one Redis
//! connection driven in the loop's `Poll` with the same reconnect backoff,
//! the inputs and log notes it holds for the loop, and whether the link was
//! up at the last look; and [`BusSide`], the calls the loop makes on either.
//!
//! Owns the connection and those two queues (drained by the loop each turn,
//! so they hold one turn's worth). Never decides what a reply means: each
//! side's `collect` does.

use crate::bus::RedisConn;
use crate::engine::{Input, LogLevel, Output};
use crate::shell::conn::stream_driver::{Backoff, Driver, LinkState, SansIo};
use mio::{Registry, Token};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Reconnect backoff of a bus connection.
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };

pub struct BusLink {
    pub driver: Driver<RedisConn>,
    inputs: VecDeque<Input>,
    notes: VecDeque<(LogLevel, String)>,
    was_up: bool,
}

/// How the link changed since the last [`BusLink::change`].
pub enum LinkChange {
    Same,
    Up,
    /// Went down, and why.
    Down(String),
}

impl BusLink {
    pub fn new(conn: RedisConn, addr: SocketAddr, token: Token, now: Instant) -> Self {
        BusLink { driver: Driver::new(conn, addr, token, BACKOFF, now), inputs: VecDeque::new(), notes: VecDeque::new(), was_up: false }
    }

    pub fn connected(&self) -> bool {
        self.driver.proto.is_ready()
    }

    pub fn down(&self) -> bool {
        matches!(self.driver.state(), LinkState::Down { .. })
    }

    /// An input for the core, handed over at the loop's next drain.
    pub fn input(&mut self, input: Input) {
        self.inputs.push_back(input);
    }

    /// A log line, handed over at the loop's next drain.
    pub fn note(&mut self, level: LogLevel, line: String) {
        self.notes.push_back((level, line));
    }

    /// Whether the link came up or went down since the last call.
    pub fn change(&mut self) -> LinkChange {
        let up = self.driver.state() == LinkState::Up;
        let was = std::mem::replace(&mut self.was_up, up);
        match (was, up) {
            (false, true) => LinkChange::Up,
            (true, false) => LinkChange::Down(self.driver.last_error().unwrap_or("closed").to_string()),
            _ => LinkChange::Same,
        }
    }
}

/// The loop's calls on a side of the bus.
pub trait BusSide {
    fn link(&self) -> &BusLink;
    fn link_mut(&mut self) -> &mut BusLink;
    /// Handles every event the connection has produced.
    fn collect(&mut self, now: Instant);
    /// Sends what is due, checks deadlines, flushes.
    fn pump(&mut self, now: Instant, registry: &Registry);
    /// An engine output for the bus.
    fn offer(&mut self, out: Output);
    /// When the loop must call [`BusSide::pump`] at the latest.
    fn next_wakeup(&self) -> Option<Instant>;

    fn owns(&self, token: Token) -> bool {
        token == self.link().driver.token()
    }

    fn connected(&self) -> bool {
        self.link().connected()
    }

    #[must_use = "drain until None"]
    fn poll_input(&mut self) -> Option<Input> {
        self.link_mut().inputs.pop_front()
    }

    #[must_use = "drain until None"]
    fn poll_note(&mut self) -> Option<(LogLevel, String)> {
        self.link_mut().notes.pop_front()
    }

    fn on_event(&mut self, readable: bool, writable: bool, now: Instant, registry: &Registry) {
        self.link_mut().driver.on_event(readable, writable, now, registry);
        self.collect(now);
        self.pump(now, registry);
    }
}
