//! The read role's side of the bus, on one Redis connection of its own (its
//! `XREAD BLOCK` holds the connection): every closed-stream entry after the
//! last one handled becomes `Input::BusClosed`, every forming entry
//! `Input::BusForming`.
//!
//! Resume: the reader keeps the id of the last closed entry it handled. On
//! every (re)connection it first asks `XINFO STREAM`: on the first
//! connection it starts at the stream's end (clients get history from the
//! store); after that it reads on from its last id, and when the stream was
//! trimmed past that id (`StreamInfo::missed_after`) or reset (its last
//! generated id is behind ours) it hands the core `Input::BusResync`, so
//! every subscription reads the hole from the store. An entry written with a
//! newer fence than the one before (a new leader: the old one may have
//! stored closes it never published) and a resync marker do the same.
//!
//! Demand: the series this node's clients want (`Output::BusDemand`) are
//! written to `P:demand:NODE` (TTL three lease periods, renewed every
//! period, rewritten at once on a change) and the node named in `P:demand`;
//! the leader's refusals for this node come on the control stream and go to
//! the core as `Input::BusRefused`. These commands queue behind a blocking
//! `XREAD`, which blocks [`BLOCK_MS`] at most.
//!
//! Owns the connection, the resume ids and the reader's figures. Never
//! decides what an entry means for a client (the core does).

use super::codec::{self, ClosedEntry};
use crate::bus::streams::{self, StreamId, StreamInfo};
use crate::bus::{Command, CommandId, RedisConfig, RedisConn, RedisEvent, Reply, Resp};
use crate::engine::{Input, LogLevel, Output};
use std::collections::BTreeSet;
use super::link::{BusLink, BusSide, LinkChange};
use mio::{Registry, Token};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries per stream per read.
const COUNT: u64 = 512;
/// How long one `XREAD` blocks on the server (ms).
pub const BLOCK_MS: u64 = 200;
/// After an error reply (not a disconnect), the next command waits this long.
const RETRY: Duration = Duration::from_millis(500);
/// How often the reader counts the closed entries after its last id.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// The count stops here (`lag_entries` ≥ this means "at least").
pub const LAG_CAP: u64 = 1000;
/// A connection (or connect attempt) that answers nothing for this long is
/// closed and reopened: a blocking read returns every [`BLOCK_MS`], so
/// silence means a half-open link.
pub const STALL: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing in flight: the next command goes out when due.
    Idle,
    Info(CommandId),
    Reading(CommandId),
}

/// Figures for `/health` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ReaderStats {
    pub entries: u64,
    pub candles: u64,
    pub forming: u64,
    pub resyncs: u64,
    pub bad_entries: u64,
    pub refusals: u64,
    /// Closed entries in the stream after the last one handled, at the last
    /// count (every 2 s; capped at [`LAG_CAP`]).
    pub lag_entries: u64,
    /// Unix ms at which the last closed entry was handled, and its id's ms
    /// (the Redis clock when the leader wrote it).
    pub last_handled_unix_ms: u64,
    pub last_entry_ms: u64,
    pub last_error: Option<String>,
}

pub struct Reader {
    link: BusLink,
    closed_key: String,
    forming_key: String,
    control_key: String,
    demand_key: String,
    node_demand_key: String,
    node: String,
    lease: Duration,
    demand: BTreeSet<String>,
    demand_dirty: bool,
    demand_in_flight: Option<CommandId>,
    next_demand_at: Instant,
    lag_in_flight: Option<CommandId>,
    next_lag_at: Instant,
    control_last: StreamId,
    state: State,
    retry_at: Option<Instant>,
    /// `None` until the first `XINFO` placed the reader at the stream's end.
    last: Option<StreamId>,
    forming_last: Option<StreamId>,
    last_fence: Option<u64>,
    /// The last reply, handshake or connection state change.
    last_progress: Instant,
    pub stats: ReaderStats,
}

impl Reader {
    pub fn new(cfg: RedisConfig, addr: SocketAddr, token: Token, prefix: &str, node: &str, lease_ms: u64, now: Instant) -> Self {
        // Forming and control entries from a second before start on (ids are
        // Redis's ms clock; a reader reads on from the last one it saw).
        let start = StreamId { ms: unix_ms().saturating_sub(1000), seq: 0 };
        Reader {
            link: BusLink::new(RedisConn::new(cfg, Resp::V2, 8), addr, token, now),
            closed_key: format!("{prefix}:closed"),
            forming_key: format!("{prefix}:forming"),
            control_key: format!("{prefix}:control"),
            demand_key: format!("{prefix}:demand"),
            node_demand_key: format!("{prefix}:demand:{node}"),
            node: node.to_string(),
            lease: Duration::from_millis(lease_ms),
            demand: BTreeSet::new(),
            demand_dirty: true,
            demand_in_flight: None,
            next_demand_at: now,
            lag_in_flight: None,
            next_lag_at: now + LAG_EVERY,
            control_last: start,
            state: State::Idle,
            retry_at: None,
            last: None,
            forming_last: Some(start),
            last_fence: None,
            last_progress: now,
            stats: ReaderStats::default(),
        }
    }

    pub fn last_id(&self) -> Option<StreamId> {
        self.last
    }

    pub fn demand_len(&self) -> usize {
        self.demand.len()
    }

    fn write_demand(&mut self, now: Instant) {
        if self.demand_in_flight.is_some() || !self.connected() || !(self.demand_dirty || now >= self.next_demand_at) {
            return;
        }
        let ttl = (self.lease * 3).as_millis().to_string();
        let set = Command::new("SET").arg(&self.node_demand_key).arg(codec::demand_value(&self.demand)).arg("PX").arg(ttl);
        let add = Command::new("SADD").arg(&self.demand_key).arg(&self.node);
        if let (Ok(id), Ok(_)) = (self.link.driver.proto.submit(set), self.link.driver.proto.submit(add)) {
            self.demand_in_flight = Some(id);
            self.demand_dirty = false;
            self.next_demand_at = now + self.lease;
        }
    }

    fn xread(&self, last: StreamId) -> Command {
        let forming = self.forming_last.map_or_else(|| "$".to_string(), |id| id.to_string());
        let control = self.control_last.to_string();
        Command::new("XREAD")
            .arg("COUNT")
            .arg(COUNT.to_string())
            .arg("BLOCK")
            .arg(BLOCK_MS.to_string())
            .arg("STREAMS")
            .arg(&self.closed_key)
            .arg(&self.forming_key)
            .arg(&self.control_key)
            .arg(last.to_string())
            .arg(forming)
            .arg(control)
    }

    fn failed(&mut self, e: crate::bus::RedisError, now: Instant) {
        self.state = State::Idle;
        if !e.is_disconnect() {
            self.retry_at = Some(now + RETRY);
        }
        self.stats.last_error = Some(e.to_string());
    }

    fn on_info(&mut self, reply: Reply, now: Instant) {
        let info = match streams::decode_xinfo(reply) {
            Ok(info) => info,
            // No stream yet: nothing was ever written, nothing was missed.
            Err(e) if e.message.contains("no such key") => StreamInfo::default(),
            Err(e) => return self.failed(e, now),
        };
        self.state = State::Idle;
        match self.last {
            None => {
                self.last = Some(info.last_generated_id);
                self.link.note(
                    LogLevel::Info,
                    format!("bus_reader_started from={} length={}", info.last_generated_id, info.length),
                );
            }
            Some(last) => {
                self.link.note(
                    LogLevel::Debug,
                    format!(
                        "bus_stream_info last_id={last} first_id={} last_generated={} length={} entries_added={}",
                        fmt_id(info.first_entry_id),
                        info.last_generated_id,
                        info.length,
                        info.entries_added
                    ),
                );
                let reset = info.last_generated_id < last;
                if reset || info.missed_after(last) {
                    let why = if reset { "stream_reset" } else { "stream_trimmed" };
                    self.link.note(
                        LogLevel::Warn,
                        format!("bus_hole reason={why} last_id={last} first_id={} action=read_store", fmt_id(info.first_entry_id)),
                    );
                    if reset {
                        self.last = Some(StreamId::ZERO);
                    }
                    self.resync(why);
                }
            }
        }
    }

    fn resync(&mut self, why: &str) {
        self.stats.resyncs += 1;
        self.link.input(Input::BusResync { reason: why.to_string() });
    }

    fn on_read(&mut self, reply: Reply, now: Instant) {
        let streams = match streams::decode_xread(reply) {
            Ok(s) => s,
            Err(e) => return self.failed(e, now),
        };
        self.state = State::Idle;
        for (key, entries) in streams {
            if key == self.control_key {
                for e in entries {
                    self.control_last = e.id;
                    match codec::decode_refused(&e) {
                        Ok((node, series_id, reason)) if node == self.node => {
                            self.stats.refusals += 1;
                            self.link.input(Input::BusRefused { series_id, reason });
                        }
                        Ok(_) => {}
                        Err(why) => self.bad_entry(why),
                    }
                }
                continue;
            }
            if key == self.forming_key {
                for e in entries {
                    self.forming_last = Some(e.id);
                    match codec::decode_forming(&e) {
                        Ok((series_id, candle)) => {
                            self.stats.forming += 1;
                            self.link.input(Input::BusForming { series_id, candle });
                        }
                        Err(why) => self.bad_entry(why),
                    }
                }
                continue;
            }
            for e in entries {
                self.last = Some(e.id);
                let entry = e.id.to_string();
                match codec::decode_closed(&e) {
                    Ok(ClosedEntry::Closed { series_id, candles, fence }) => {
                        self.new_fence(fence);
                        self.stats.entries += 1;
                        self.stats.candles += candles.len() as u64;
                        self.stats.last_entry_ms = e.id.ms;
                        self.stats.last_handled_unix_ms = unix_ms();
                        self.link.input(Input::BusClosed { series_id, candles, entry });
                    }
                    Ok(ClosedEntry::Resync { fence }) => {
                        self.new_fence(fence);
                        self.link.note(LogLevel::Warn, format!("bus_hole reason=leader_dropped entry={entry} action=read_store"));
                        self.resync("leader_dropped");
                    }
                    Err(why) => self.bad_entry(why),
                }
            }
        }
    }

    /// Another fence than the last one seen: a new leader (the closes its
    /// predecessor stored but never published are read from the store), or a
    /// Redis that lost its data and handed out fences anew.
    fn new_fence(&mut self, fence: u64) {
        match self.last_fence {
            Some(f) if fence != f => {
                self.link.note(LogLevel::Warn, format!("bus_new_leader fence={fence} previous={f} action=read_store"));
                self.last_fence = Some(fence);
                self.resync("new_leader");
            }
            None => self.last_fence = Some(fence),
            _ => {}
        }
    }

    fn bad_entry(&mut self, why: String) {
        self.stats.bad_entries += 1;
        self.link.note(LogLevel::Warn, format!("bus_entry_refused error={why:?}"));
    }
}

fn fmt_id(id: Option<StreamId>) -> String {
    id.map_or_else(|| "none".to_string(), |i| i.to_string())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl BusSide for Reader {
    fn link(&self) -> &BusLink {
        &self.link
    }

    fn link_mut(&mut self) -> &mut BusLink {
        &mut self.link
    }

    fn offer(&mut self, out: Output) {
        if let Output::BusDemand { series_id, wanted } = out {
            let changed = if wanted { self.demand.insert(series_id) } else { self.demand.remove(&series_id) };
            self.demand_dirty |= changed;
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let stall = (!self.link.down()).then_some(self.last_progress + STALL);
        [self.link.driver.next_wakeup(), self.retry_at, Some(self.next_demand_at), Some(self.next_lag_at), stall].into_iter().flatten().min()
    }

    fn pump(&mut self, now: Instant, registry: &Registry) {
        self.link.driver.step(now, registry);
        self.collect(now);
        let down = self.link.down();
        if !down && now.saturating_duration_since(self.last_progress) >= STALL {
            let why = format!("no answer from redis in {}s", STALL.as_secs());
            self.link.driver.close(now, registry, &why);
            self.last_progress = now;
            self.collect(now);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        self.write_demand(now);
        if let (None, Some(last), true) = (self.lag_in_flight, self.last, self.connected() && now >= self.next_lag_at) {
            if let Ok(id) = self.link.driver.proto.submit(streams::xrange_after(&self.closed_key, last, LAG_CAP)) {
                self.lag_in_flight = Some(id);
                self.next_lag_at = now + LAG_EVERY;
            }
        }
        if self.state == State::Idle && self.retry_at.is_none() && self.connected() {
            let cmd = match self.last {
                None => streams::xinfo_stream(&self.closed_key),
                Some(last) => self.xread(last),
            };
            if let Ok(id) = self.link.driver.proto.submit(cmd) {
                self.state = if self.last.is_none() { State::Info(id) } else { State::Reading(id) };
            }
        }
        self.link.driver.flush(now, registry);
        self.collect(now);
    }

    fn collect(&mut self, now: Instant) {
        while let Some(ev) = self.link.driver.proto.poll_event() {
            match ev {
                RedisEvent::Ready => {
                    self.last_progress = now;
                    // The demand key may have lapsed while the link was down.
                    self.demand_dirty = true;
                    self.link.note(LogLevel::Info, format!("bus_connected role=read last_id={}", fmt_id(self.last)));
                    // Every (re)connection checks the stream before reading on.
                    if let Some(last) = self.last {
                        if let Ok(id) = self.link.driver.proto.submit(streams::xinfo_stream(&self.closed_key)) {
                            self.state = State::Info(id);
                            self.last = Some(last);
                        }
                    }
                }
                RedisEvent::Reply { id, reply } if self.lag_in_flight == Some(id) => {
                    self.lag_in_flight = None;
                    // Entries after the id the count was asked from; the
                    // reader may have moved on since (the next count says).
                    if let Ok(entries) = streams::decode_entries(reply) {
                        self.stats.lag_entries = entries.iter().filter(|e| self.last.is_some_and(|l| e.id > l)).count() as u64;
                    }
                }
                RedisEvent::Reply { id, reply } if self.demand_in_flight == Some(id) => {
                    self.last_progress = now;
                    self.demand_in_flight = None;
                    if let Err(e) = reply {
                        self.demand_dirty = true;
                        self.stats.last_error = Some(e.to_string());
                    }
                }
                RedisEvent::Reply { id, reply } => {
                    if !reply.as_ref().is_err_and(|e| e.is_disconnect()) {
                        self.last_progress = now;
                    }
                    match self.state {
                        State::Info(i) if i == id => self.on_info(reply, now),
                        State::Reading(r) if r == id => self.on_read(reply, now),
                        _ => {}
                    }
                }
            }
        }
        match self.link.change() {
            LinkChange::Same => {}
            LinkChange::Up => self.last_progress = now,
            LinkChange::Down(why) => {
                self.last_progress = now;
                self.lag_in_flight = None;
                self.demand_in_flight = None;
                self.link.note(LogLevel::Warn, format!("bus_disconnected role=read last_id={} error={why:?}", fmt_id(self.last)));
                self.stats.last_error = Some(why);
                self.state = State::Idle;
            }
        }
    }
}
