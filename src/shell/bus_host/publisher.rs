//! The ingest role's side of the bus, on one Redis connection in the loop's
//! `Poll`: the leader lease and the closed-candle stream.
//!
//! Lease: acquire-or-renew (`bus::lease`, Lua, `SET … PX` with a fencing
//! token) every third of the lease while leading, every tenth (≥ 100 ms) as
//! a standby. Taking it hands the core `Input::BusLeader { fence }` (jobs
//! start then). The lease counts as valid until `sent + lease` of the last
//! renewal that said "held" — a conservative bound, since Redis started its
//! `PX` clock after the send. FAIL-STOP: a leader whose renewal says
//! someone else holds the lease, whose fenced write is refused, or whose
//! lease runs out without a renewal (Redis unreachable) sets [`Publisher::fatal`];
//! the loop logs it and exits (code 3) so a service manager restarts the
//! process as a standby. Nothing is half-led.
//!
//! Closed stream: each `Output::BusPublish` (already stored) becomes one
//! fenced `XADD … MAXLEN ~` entry, pipelined (at most [`MAX_IN_FLIGHT`]),
//! in order. A disconnect puts every unanswered entry back at the front of
//! the queue (it may have been applied: at-least-once; readers drop what
//! they already delivered). The queue holds at most [`MAX_QUEUED`] entries:
//! past that the newest are dropped and counted, and once the queue drains a
//! resync marker entry tells readers to read what they missed from the store.
//! Forming updates are a plain `XADD` on their own stream, sent only while
//! connected and leading, else dropped (at most once; the next supersedes).
//!
//! Demand: while leading, every [`DEMAND_POLL`] one script reads every read
//! node's wanted series (dropping nodes whose key lapsed); the change since
//! the last poll goes to the core as `Input::RemoteDemand`. Forming updates
//! go out only for series some read node wants. A refusal
//! (`Output::BusRefused`) is an entry on the control stream for the read
//! node, and is forgotten here so a later want is offered again.
//!
//! Owns the connection and those queues. Never reads the engine; never
//! decides what a candle is.

use super::codec;
use crate::bus::lease::{self, LeaseKeys};
use crate::bus::streams;
use crate::bus::{Command, CommandId, RedisConfig, RedisConn, RedisEvent, Reply, Resp};
use crate::engine::{Input, LogLevel, Output};
use super::link::{BusLink, BusSide, LinkChange};
use mio::{Registry, Token};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Closed-stream entries sent and unanswered at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Closed-stream entries waiting to be sent; past it the newest are dropped.
pub const MAX_QUEUED: usize = 100_000;
/// Forming entries sent and unanswered at once; more are dropped.
const MAX_FORMING_IN_FLIGHT: usize = 64;
/// The forming stream is trimmed to about this many entries.
const FORMING_MAXLEN: u64 = 10_000;
/// A write refused for a reason other than a disconnect is retried after this.
const RETRY: Duration = Duration::from_millis(500);
/// How often the leader reads the read nodes' demand.
pub const DEMAND_POLL: Duration = Duration::from_millis(300);
/// The control stream is trimmed to about this many entries.
const CONTROL_MAXLEN: u64 = 1_000;

/// KEYS[1] the node set; every member NODE's wants are at KEYS[1]:NODE.
/// Returns [node, value, …]; nodes whose key lapsed are removed.
const READ_DEMAND: &str = r#"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', KEYS[1] .. ':' .. n)
  if v then out[#out + 1] = n; out[#out + 1] = v else redis.call('SREM', KEYS[1], n) end
end
return out
"#;

type Fields = Vec<(&'static str, Vec<u8>)>;
/// One closed-stream entry's fields and its candle count.
type Item = (Fields, u64);

enum Sent {
    Lease(Instant),
    Closed,
    Forming,
    Demand,
    Control,
}

/// Figures for `/health` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct PublisherStats {
    pub entries_published: u64,
    pub candles_published: u64,
    pub candles_dropped: u64,
    pub forming_sent: u64,
    pub forming_dropped: u64,
    pub last_error: Option<String>,
    /// The holder the last lease call saw (owner, fence).
    pub holder: Option<(String, u64)>,
}

pub struct Publisher {
    link: BusLink,
    keys: LeaseKeys,
    closed_key: String,
    forming_key: String,
    node: String,
    lease: Duration,
    maxlen: u64,
    sent: HashMap<CommandId, Sent>,
    lease_in_flight: bool,
    /// When the lease call in flight was sent: one unanswered for a whole
    /// lease closes the connection (a half-open link) and reopens it.
    lease_sent_at: Instant,
    /// The lease was confirmed on the current connection: closed entries
    /// wait for it after every reconnect (Redis may have lost the lease).
    lease_confirmed: bool,
    next_lease_at: Instant,
    /// The fence while this node leads.
    fence: Option<u64>,
    valid_until: Option<Instant>,
    pub leader_since: Option<Instant>,
    queue: VecDeque<Item>,
    in_flight: VecDeque<(CommandId, Item)>,
    forming_in_flight: usize,
    hole: bool,
    retry_at: Option<Instant>,
    fatal: Option<String>,
    demand_key: String,
    control_key: String,
    /// Each read node's wanted series as last handed to the core.
    demand: BTreeMap<String, BTreeSet<String>>,
    /// Series any read node wants (forming updates go out for these).
    wanted: BTreeSet<String>,
    demand_in_flight: bool,
    next_demand_at: Instant,
    pub stats: PublisherStats,
    /// The queue's bound ([`MAX_QUEUED`]; tests lower it).
    pub max_queued: usize,
}

impl Publisher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(cfg: RedisConfig, addr: SocketAddr, token: Token, prefix: &str, node: &str, lease_ms: u64, maxlen: u64, now: Instant) -> Self {
        let conn = RedisConn::new(cfg, Resp::V2, MAX_IN_FLIGHT + MAX_FORMING_IN_FLIGHT + 8);
        Publisher {
            link: BusLink::new(conn, addr, token, now),
            keys: LeaseKeys::new(&format!("{prefix}:")),
            closed_key: format!("{prefix}:closed"),
            forming_key: format!("{prefix}:forming"),
            node: node.to_string(),
            lease: Duration::from_millis(lease_ms),
            maxlen,
            sent: HashMap::new(),
            lease_in_flight: false,
            lease_sent_at: now,
            lease_confirmed: false,
            next_lease_at: now,
            fence: None,
            valid_until: None,
            leader_since: None,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            forming_in_flight: 0,
            hole: false,
            retry_at: None,
            fatal: None,
            demand_key: format!("{prefix}:demand"),
            control_key: format!("{prefix}:control"),
            demand: BTreeMap::new(),
            wanted: BTreeSet::new(),
            demand_in_flight: false,
            next_demand_at: now,
            stats: PublisherStats::default(),
            max_queued: MAX_QUEUED,
        }
    }

    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// Closed-stream entries not yet acknowledged (queued and in flight).
    pub fn backlog(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }

    /// Why this node must stop ingesting now (see the module comment).
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Each read node's wanted series, as the core was told (for `/health`).
    pub fn demand_view(&self) -> serde_json::Value {
        serde_json::json!(self.demand)
    }

    fn send_closed(&mut self) {
        let Some(fence) = self.fence else { return };
        if !self.connected() || !self.lease_confirmed || self.retry_at.is_some() || self.fatal.is_some() {
            return;
        }
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let (fields, n) = match self.queue.pop_front() {
                Some(item) => item,
                None if self.hole && self.in_flight.is_empty() => {
                    self.hole = false;
                    (codec::resync_fields(fence, &self.node), 0)
                }
                None => return,
            };
            let fields = with_fence(fields, fence);
            let args: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let cmd = lease::fenced_xadd(&self.keys, &self.node, fence, &self.closed_key, self.maxlen, &args);
            match self.link.driver.proto.submit(cmd) {
                Ok(id) => {
                    self.sent.insert(id, Sent::Closed);
                    self.in_flight.push_back((id, (fields, n)));
                }
                Err(_) => {
                    self.queue.push_front((fields, n));
                    return;
                }
            }
        }
    }

    fn on_lease(&mut self, sent_at: Instant, reply: Reply, now: Instant) {
        self.lease_in_flight = false;
        let state = match lease::decode_lease(reply) {
            Ok(s) => s,
            Err(e) => {
                self.stats.last_error = Some(e.to_string());
                self.next_lease_at = now + Duration::from_millis(100);
                return;
            }
        };
        self.stats.holder = Some((state.owner.clone(), state.fence));
        if state.held {
            self.lease_confirmed = true;
            self.valid_until = Some(sent_at + self.lease);
            self.next_lease_at = sent_at + self.lease / 3;
            if self.fence.is_none() {
                self.fence = Some(state.fence);
                self.leader_since = Some(now);
                self.link.note(
                    LogLevel::Info,
                    format!("bus_lease_acquired node={} fence={} lease_ms={}", self.node, state.fence, self.lease.as_millis()),
                );
                self.link.input(Input::BusLeader { fence: state.fence });
            } else if self.fence != Some(state.fence) {
                // Only a Redis that lost its data (restarted without
                // persistence) hands the holder a new fence: nobody else held
                // it in between (this call took it), so the node leads on
                // with the new fence; unacknowledged entries are resent with it.
                self.link.note(
                    LogLevel::Warn,
                    format!("bus_lease_reacquired node={} fence={} previous={:?} note=\"redis lost the lease (restart without persistence?)\"", self.node, state.fence, self.fence),
                );
                self.fence = Some(state.fence);
            }
        } else {
            if let Some(fence) = self.fence {
                self.fatal = Some(format!("lease lost: held by {} with fence {} (ours was {fence})", state.owner, state.fence));
            }
            self.next_lease_at = now + (self.lease / 10).max(Duration::from_millis(100));
        }
    }

    fn on_closed(&mut self, id: CommandId, reply: Reply, now: Instant) {
        match reply {
            Ok(_) => {
                if let Some(pos) = self.in_flight.iter().position(|(i, _)| *i == id) {
                    if let Some((_, (_, n))) = self.in_flight.remove(pos) {
                        self.stats.entries_published += 1;
                        self.stats.candles_published += n;
                    }
                }
            }
            Err(e) if lease::is_fenced(&e) => {
                self.fatal = Some(format!("fenced write refused: {e}"));
            }
            Err(e) => {
                // Every entry not acknowledged goes back, in order, for a resend.
                if self.in_flight.iter().any(|(i, _)| *i == id) {
                    while let Some((_, item)) = self.in_flight.pop_back() {
                        self.queue.push_front(item);
                    }
                    if !e.is_disconnect() {
                        self.link.note(LogLevel::Warn, format!("bus_publish_failed error={:?} action=retry", e.to_string()));
                        self.retry_at = Some(now + RETRY);
                    }
                }
                self.stats.last_error = Some(e.to_string());
            }
        }
    }
}

impl Publisher {
    /// The read nodes' demand now: what changed since the last poll goes to
    /// the core, in order (node, then series).
    fn on_demand(&mut self, reply: Reply) {
        let list = match reply.map(|v| v.into_list()) {
            Ok(Some(list)) => list,
            Ok(None) => return,
            Err(e) => {
                self.stats.last_error = Some(e.to_string());
                return;
            }
        };
        let mut now_view: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut it = list.into_iter();
        while let (Some(n), Some(v)) = (it.next(), it.next()) {
            if let (Some(node), Some(value)) = (n.as_str(), v.as_bytes()) {
                now_view.insert(node.to_string(), codec::parse_demand(value));
            }
        }
        let empty = BTreeSet::new();
        let nodes: BTreeSet<String> = self.demand.keys().chain(now_view.keys()).cloned().collect();
        for node in nodes {
            let before = self.demand.get(&node).unwrap_or(&empty);
            let after = now_view.get(&node).unwrap_or(&empty);
            for s in before.difference(after) {
                self.link.input(Input::RemoteDemand { node: node.clone(), series_id: s.clone(), wanted: false });
            }
            for s in after.difference(before) {
                self.link.input(Input::RemoteDemand { node: node.clone(), series_id: s.clone(), wanted: true });
            }
        }
        self.wanted = now_view.values().flatten().cloned().collect();
        self.demand = now_view;
    }
}

fn with_fence(mut fields: Fields, fence: u64) -> Fields {
    for (k, v) in fields.iter_mut() {
        if *k == "f" {
            *v = fence.to_string().into_bytes();
        }
    }
    fields
}

impl BusSide for Publisher {
    fn link(&self) -> &BusLink {
        &self.link
    }

    fn link_mut(&mut self) -> &mut BusLink {
        &mut self.link
    }

    fn offer(&mut self, out: Output) {
        match out {
            Output::BusPublish { series_id, candles } => {
                if self.queue.len() >= self.max_queued {
                    self.stats.candles_dropped += candles.len() as u64;
                    if !self.hole {
                        self.link.note(
                            LogLevel::Error,
                            format!("bus_backlog_full dropped_series={series_id} max_entries={} action=resync_marker", self.max_queued),
                        );
                    }
                    self.hole = true;
                    return;
                }
                let n = candles.len() as u64;
                self.queue.push_back((codec::closed_fields(&series_id, &candles, 0, &self.node), n));
            }
            Output::BusForming { series_id, candle } => {
                if !self.wanted.contains(&series_id) {
                    return;
                }
                if self.fence.is_none() || !self.connected() || self.forming_in_flight >= MAX_FORMING_IN_FLIGHT {
                    self.stats.forming_dropped += 1;
                    return;
                }
                let fields = codec::forming_fields(&series_id, &candle);
                let args: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                if let Ok(id) = self.link.driver.proto.submit(streams::xadd(&self.forming_key, Some(FORMING_MAXLEN), &args)) {
                    self.sent.insert(id, Sent::Forming);
                    self.forming_in_flight += 1;
                    self.stats.forming_sent += 1;
                }
            }
            Output::BusRefused { node, series_id, reason } => {
                if let Some(set) = self.demand.get_mut(&node) {
                    set.remove(&series_id);
                }
                let fields = codec::refused_fields(&node, &series_id, &reason);
                let args: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                if let Ok(id) = self.link.driver.proto.submit(streams::xadd(&self.control_key, Some(CONTROL_MAXLEN), &args)) {
                    self.sent.insert(id, Sent::Control);
                }
            }
            _ => {}
        }
    }

    /// When the loop must call [`Publisher::pump`] at the latest.
    fn next_wakeup(&self) -> Option<Instant> {
        let mut at = Some(if self.lease_in_flight { self.lease_sent_at + self.lease } else { self.next_lease_at });
        if self.fence.is_some() {
            at = at.map(|a| a.min(self.next_demand_at));
        }
        for t in [self.link.driver.next_wakeup(), self.valid_until, self.retry_at].into_iter().flatten() {
            at = Some(at.map_or(t, |a: Instant| a.min(t)));
        }
        at
    }

    fn pump(&mut self, now: Instant, registry: &Registry) {
        self.link.driver.step(now, registry);
        self.collect(now);
        if self.fence.is_some() && self.valid_until.is_some_and(|t| now >= t) && self.fatal.is_none() {
            let why = self.stats.last_error.clone().unwrap_or_else(|| "no renewal answered".into());
            self.fatal = Some(format!("lease expired without a renewal ({why})"));
        }
        if self.connected() && !self.lease_in_flight && now >= self.next_lease_at {
            let ttl = self.lease.as_millis() as u64;
            if let Ok(id) = self.link.driver.proto.submit(lease::acquire_or_renew(&self.keys, &self.node, ttl)) {
                self.sent.insert(id, Sent::Lease(now));
                self.lease_in_flight = true;
                self.lease_sent_at = now;
            }
        }
        if self.lease_in_flight && now.saturating_duration_since(self.lease_sent_at) >= self.lease {
            let why = format!("no answer from redis in {} ms", self.lease.as_millis());
            self.link.driver.close(now, registry, &why);
            self.lease_in_flight = false;
            self.collect(now);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        if self.fence.is_some() && self.connected() && !self.demand_in_flight && now >= self.next_demand_at {
            let cmd = Command::new("EVAL").arg(READ_DEMAND).arg("1").arg(&self.demand_key);
            if let Ok(id) = self.link.driver.proto.submit(cmd) {
                self.sent.insert(id, Sent::Demand);
                self.demand_in_flight = true;
                self.next_demand_at = now + DEMAND_POLL;
            }
        }
        self.send_closed();
        self.link.driver.flush(now, registry);
        self.collect(now);
    }

    fn collect(&mut self, now: Instant) {
        while let Some(ev) = self.link.driver.proto.poll_event() {
            match ev {
                RedisEvent::Ready => {
                    self.link.note(LogLevel::Info, format!("bus_connected role=ingest node={}", self.node));
                    self.next_lease_at = now;
                    self.lease_confirmed = false;
                }
                RedisEvent::Reply { id, reply } => match self.sent.remove(&id) {
                    Some(Sent::Lease(at)) => self.on_lease(at, reply, now),
                    Some(Sent::Closed) => self.on_closed(id, reply, now),
                    Some(Sent::Demand) => {
                        self.demand_in_flight = false;
                        self.on_demand(reply);
                    }
                    Some(Sent::Control) => {
                        if let Err(e) = reply {
                            self.stats.last_error = Some(e.to_string());
                        }
                    }
                    Some(Sent::Forming) => {
                        self.forming_in_flight = self.forming_in_flight.saturating_sub(1);
                        if let Err(e) = reply {
                            self.stats.forming_dropped += 1;
                            self.stats.last_error = Some(e.to_string());
                        }
                    }
                    None => {}
                },
            }
        }
        if let LinkChange::Down(why) = self.link.change() {
            self.link.note(LogLevel::Warn, format!("bus_disconnected role=ingest error={why:?}"));
            self.stats.last_error = Some(why);
        }
    }
}
