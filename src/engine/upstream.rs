//! The upstream pool: which exchange connections exist, which kline streams
//! each carries, and the control traffic that keeps them so. Streams of one
//! market share connections (combined stream + live SUBSCRIBE/UNSUBSCRIBE), at
//! most `streams_per_connection` each; control messages batch many stream
//! names each and are spaced evenly under the exchange's per-connection rate,
//! pongs counted ([`Pacer`]); a stream that went silent on a live connection
//! is resubscribed on request; connection attempts are paced under the
//! per-IP budget; lost connections come back with exponential backoff and
//! seeded jitter; connections are rotated make-before-break before the 24 h
//! cut-off; a silent connection is replaced.
//!
//! It emits `UpstreamConnect/Send/Close` outputs and reports stream liveness
//! to the engine as [`PoolEvent`]s. It never touches a socket or a clock.

use crate::engine::ConnId;
use super::guardrail::{Guardrail, GuardrailConfig};
use super::pacer::Pacer;
use super::Output;
use crate::model::Market;
use crate::wire::binance;
use crate::rng::Rng;
use crate::time::{Duration, Timestamp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub spot_url: String,
    pub futures_url: String,
    pub streams_per_connection: usize,
    /// Messages per second, evenly spaced, per connection: SUBSCRIBE and
    /// UNSUBSCRIBE plus the pongs answering the exchange's pings.
    pub control_rate_spot: usize,
    pub control_rate_futures: usize,
    /// Stream names per SUBSCRIBE/UNSUBSCRIBE message.
    pub names_per_request: usize,
    /// A connection with no frame (data, ack or ping) for this long is replaced.
    pub silence_timeout: Duration,
    /// Connections are rotated (make-before-break) after this age.
    pub rotate_after: Duration,
    /// At most `connect_budget` connection attempts per `connect_window`.
    pub connect_budget: usize,
    pub connect_window: Duration,
    /// Reconnect breaker/backoff per market.
    pub guardrail: GuardrailConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            spot_url: "wss://stream.binance.com:9443/stream".into(),
            futures_url: "wss://fstream.binance.com/market/stream".into(),
            streams_per_connection: 200,
            control_rate_spot: 2,
            control_rate_futures: 5,
            names_per_request: 200,
            silence_timeout: Duration::from_secs(60),
            rotate_after: Duration::from_secs(23 * 3600),
            connect_budget: 250,
            connect_window: Duration::from_secs(300),
            guardrail: GuardrailConfig::default(),
        }
    }
}

/// What the pool tells the engine about streams.
#[derive(Debug, PartialEq)]
pub enum PoolEvent {
    /// The exchange acknowledged the stream's subscription on an open connection.
    StreamLive { market: Market, stream: String },
    /// The stream's connection was lost; it will be resubscribed after backoff.
    StreamLost { market: Market, stream: String, reason: String },
    /// A connection (re)opened after having been lost: history may need healing.
    Reconnected { conn: ConnId, market: Market },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Subscribe,
    Unsubscribe,
}

#[derive(Debug)]
struct Conn {
    market: Market,
    state: ConnState,
    created_at: Timestamp,
    opened_at: Option<Timestamp>,
    last_activity: Timestamp,
    /// Streams this connection is responsible for (acked or not).
    streams: BTreeSet<String>,
    to_subscribe: VecDeque<String>,
    to_unsubscribe: VecDeque<String>,
    inflight: BTreeMap<u64, (Method, Vec<String>)>,
    acked: BTreeSet<String>,
    pacer: Pacer,
    /// The kind of the last control message sent (SUBSCRIBE and UNSUBSCRIBE take turns).
    last_method: Method,
    /// This connection replaces `replaces` (rotation) and takes its streams once live.
    replaces: Option<ConnId>,
    /// A replacement is being opened for this connection.
    replaced_by: Option<ConnId>,
    received_data: bool,
    /// Replaced by a rotation: closed at this time, after frames already in
    /// flight on it have been read (closing at once could drop one).
    retire_at: Option<Timestamp>,
}

/// How long a rotated-out connection keeps being read before it is closed.
const ROTATION_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct MarketState {
    guardrail: Guardrail,
    /// Streams wanted but not assigned to any connection yet.
    waiting: BTreeSet<String>,
    /// No new connection before this time (backoff).
    retry_at: Option<Timestamp>,
    /// A connection of this market was lost and not yet replaced.
    lost: bool,
}

pub struct UpstreamPool {
    cfg: UpstreamConfig,
    next_conn: u64,
    next_request: u64,
    conns: BTreeMap<ConnId, Conn>,
    /// Streams wanted, per market (spot and USD-M share stream names).
    wanted: [BTreeSet<String>; 2],
    markets: [MarketState; 2],
    connect_times: VecDeque<Timestamp>,
    /// Seeded by the engine; jitter only.
    rng: Rng,
    pub reconnects: u64,
    pub rotations: u64,
    pub control_sent: u64,
    pub control_errors: u64,
}


impl UpstreamPool {
    pub fn new(cfg: UpstreamConfig, rng: Rng) -> Self {
        let market = || MarketState {
            guardrail: Guardrail::new(cfg.guardrail.clone()),
            waiting: BTreeSet::new(),
            retry_at: None,
            lost: false,
        };
        UpstreamPool {
            markets: [market(), market()],
            cfg,
            next_conn: 1,
            next_request: 1,
            conns: BTreeMap::new(),
            wanted: [BTreeSet::new(), BTreeSet::new()],
            connect_times: VecDeque::new(),
            rng,
            reconnects: 0,
            rotations: 0,
            control_sent: 0,
            control_errors: 0,
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn stream_count(&self) -> usize {
        self.wanted.iter().map(BTreeSet::len).sum()
    }

    /// The market of a connection.
    pub fn conn_market(&self, conn: ConnId) -> Option<Market> {
        self.conns.get(&conn).map(|c| c.market)
    }

    pub fn knows_conn(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Wants `stream` delivered. Idempotent.
    pub fn attach(&mut self, stream: &str, market: Market, now: Timestamp, out: &mut VecDeque<Output>) {
        if !self.wanted[market.index()].insert(stream.to_string()) {
            return;
        }
        self.markets[market.index()].waiting.insert(stream.to_string());
        self.assign_waiting(market, now, out);
    }

    /// No longer wants `stream` on `market`. Idempotent.
    pub fn detach(&mut self, stream: &str, market: Market, now: Timestamp, out: &mut VecDeque<Output>) {
        if !self.wanted[market.index()].remove(stream) {
            return;
        }
        self.markets[market.index()].waiting.remove(stream);
        let holders: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.market == market && c.streams.contains(stream))
            .map(|(id, _)| *id)
            .collect();
        for id in holders {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            conn.streams.remove(stream);
            conn.to_subscribe.retain(|s| s != stream);
            if conn.acked.remove(stream) || conn.inflight.values().any(|(_, n)| n.iter().any(|s| s == stream)) {
                conn.to_unsubscribe.push_back(stream.to_string());
            }
            if conn.streams.is_empty() && conn.replaces.is_none() && conn.replaced_by.is_none() {
                self.close(id, "no streams left", out);
            } else {
                self.pump(id, now, out);
            }
        }
    }

    /// Assigns waiting streams of a market to connections with room, opening
    /// new connections when allowed (backoff and connect budget permitting).
    fn assign_waiting(&mut self, market: Market, now: Timestamp, out: &mut VecDeque<Output>) {
        let per_conn = self.cfg.streams_per_connection.max(1);
        loop {
            let ms = &self.markets[market.index()];
            if ms.waiting.is_empty() {
                return;
            }
            let room = self.conns.iter().find(|(_, c)| {
                c.market == market && c.replaced_by.is_none() && c.replaces.is_none() && c.streams.len() < per_conn
            });
            let target = match room {
                Some((id, _)) => *id,
                None => match self.open_conn(market, now, out) {
                    Some(id) => id,
                    None => return,
                },
            };
            let conn = match self.conns.get_mut(&target) {
                Some(c) => c,
                None => return,
            };
            let ms = &mut self.markets[market.index()];
            while conn.streams.len() < per_conn {
                let Some(stream) = ms.waiting.pop_first() else { break };
                conn.streams.insert(stream.clone());
                conn.to_subscribe.push_back(stream);
            }
            self.pump(target, now, out);
        }
    }

    fn connect_allowed(&mut self, market: Market, now: Timestamp) -> bool {
        while self.connect_times.front().is_some_and(|t| now.since(*t) >= self.cfg.connect_window) {
            self.connect_times.pop_front();
        }
        let ms = &mut self.markets[market.index()];
        if ms.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        if ms.guardrail.before_attempt(now) > Duration::ZERO {
            return false;
        }
        self.connect_times.len() < self.cfg.connect_budget
    }

    fn open_conn(&mut self, market: Market, now: Timestamp, out: &mut VecDeque<Output>) -> Option<ConnId> {
        if !self.connect_allowed(market, now) {
            return None;
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.connect_times.push_back(now);
        self.conns.insert(id, Conn {
            market,
            state: ConnState::Connecting,
            created_at: now,
            opened_at: None,
            last_activity: now,
            streams: BTreeSet::new(),
            to_subscribe: VecDeque::new(),
            to_unsubscribe: VecDeque::new(),
            inflight: BTreeMap::new(),
            acked: BTreeSet::new(),
            pacer: Pacer::new(self.rate(market)),
            last_method: Method::Subscribe,
            replaces: None,
            replaced_by: None,
            received_data: false,
            retire_at: None,
        });
        let url = match market {
            Market::Spot => self.cfg.spot_url.clone(),
            Market::Futures => self.cfg.futures_url.clone(),
        };
        out.push_back(Output::UpstreamConnect { conn: id, market, url });
        Some(id)
    }

    fn rate(&self, market: Market) -> usize {
        match market {
            Market::Spot => self.cfg.control_rate_spot,
            Market::Futures => self.cfg.control_rate_futures,
        }
    }

    fn close(&mut self, id: ConnId, reason: &str, out: &mut VecDeque<Output>) {
        if self.conns.remove(&id).is_some() {
            out.push_back(Output::UpstreamClose { conn: id, reason: reason.to_string() });
        }
    }

    /// The shell finished the WebSocket handshake.
    pub fn on_connected(&mut self, id: ConnId, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.state = ConnState::Open;
        conn.opened_at = Some(now);
        conn.last_activity = now;
        let market = conn.market;
        let ms = &mut self.markets[market.index()];
        if ms.lost {
            ms.lost = false;
            self.reconnects += 1;
            events.push(PoolEvent::Reconnected { conn: id, market });
        }
        self.pump(id, now, out);
    }

    /// Any frame (data, ack, ping) arrived on the connection.
    pub fn on_activity(&mut self, id: ConnId, now: Timestamp, data: bool) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.last_activity = now;
            if data && !conn.received_data {
                conn.received_data = true;
                // Only a connection that delivered data counts as healthy for the
                // breaker: "connect, then closed at once" keeps counting failures.
                self.markets[conn.market.index()].guardrail.on_success();
            }
        }
    }

    /// The exchange pinged the connection and the shell answered with a pong
    /// at once: the pong counts against the same message limit, so the next
    /// paced message waits a full gap after it.
    pub fn on_ping(&mut self, id: ConnId, now: Timestamp) {
        self.on_activity(id, now, false);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.pacer.sent(now);
        }
    }

    /// A stream delivered nothing for too long while its connection lives:
    /// UNSUBSCRIBE then SUBSCRIBE it again on the same connection (paced like
    /// any control message). `StreamLive` follows the new acknowledgement.
    /// Returns false when no open connection carries the stream acknowledged
    /// (it is being (re)subscribed already).
    pub fn resubscribe(&mut self, stream: &str, market: Market, now: Timestamp, out: &mut VecDeque<Output>) -> bool {
        let holder = self.conns.iter().find(|(_, c)| {
            c.market == market && c.state == ConnState::Open && c.streams.contains(stream) && c.acked.contains(stream)
        });
        let Some(id) = holder.map(|(id, _)| *id) else { return false };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.acked.remove(stream);
            conn.to_unsubscribe.push_back(stream.to_string());
            conn.to_subscribe.push_back(stream.to_string());
        }
        self.pump(id, now, out);
        true
    }

    /// A control response (`{"result":…,"id":…}` or an error) arrived.
    pub fn on_control_ack(&mut self, id: ConnId, request: u64, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.last_activity = now;
        let Some((method, names)) = conn.inflight.remove(&request) else { return };
        if method == Method::Subscribe {
            for name in names {
                if conn.streams.contains(&name) {
                    conn.acked.insert(name.clone());
                    events.push(PoolEvent::StreamLive { market: conn.market, stream: name });
                }
            }
        }
        self.finish_rotation_if_ready(id, now);
        self.pump(id, now, out);
    }

    /// The exchange refused a control request: treat the connection as broken.
    pub fn on_control_error(&mut self, id: ConnId, msg: &str, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        self.control_errors += 1;
        if self.conns.contains_key(&id) {
            out.push_back(Output::UpstreamClose { conn: id, reason: format!("control error: {msg}") });
            self.lose(id, &format!("control error: {msg}"), now, out, events);
        }
    }

    /// The exchange announced a shutdown: rotate now.
    pub fn on_server_shutdown(&mut self, id: ConnId, now: Timestamp, out: &mut VecDeque<Output>) {
        self.start_rotation(id, now, out);
    }

    /// The connection closed or failed (handshake, TLS, reset, close frame).
    pub fn on_disconnected(&mut self, id: ConnId, reason: &str, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        self.lose(id, reason, now, out, events);
    }

    fn lose(&mut self, id: ConnId, reason: &str, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        let Some(conn) = self.conns.remove(&id) else { return };
        let market = conn.market;
        // A failed replacement leaves the old connection serving; try again later.
        if let Some(old) = conn.replaces {
            if let Some(o) = self.conns.get_mut(&old) {
                o.replaced_by = None;
            }
        }
        let slot = market.index();
        let ms = &mut self.markets[slot];
        let backoff = ms.guardrail.on_failure(now, reason);
        // Seeded jitter (up to a quarter of the delay) spreads reconnects out.
        let wait = Duration(backoff.0 + self.rng.below(backoff.0 / 4 + 1));
        ms.lost = true;
        ms.retry_at = Some(now.add(wait));
        let orphans: Vec<String> = match conn.replaced_by {
            // The replacement takes over the streams: nothing is lost.
            Some(next) if self.conns.contains_key(&next) => {
                if let Some(n) = self.conns.get_mut(&next) {
                    n.replaces = None;
                }
                Vec::new()
            }
            _ if conn.replaces.is_some() => Vec::new(),
            _ => conn.streams.into_iter().collect(),
        };
        for stream in orphans {
            if self.wanted[slot].contains(&stream) {
                events.push(PoolEvent::StreamLost { market, stream: stream.clone(), reason: reason.to_string() });
                self.markets[slot].waiting.insert(stream);
            }
        }
        self.assign_waiting(market, now, out);
    }

    fn start_rotation(&mut self, id: ConnId, now: Timestamp, out: &mut VecDeque<Output>) {
        let Some(conn) = self.conns.get(&id) else { return };
        if conn.replaced_by.is_some() || conn.replaces.is_some() || conn.state != ConnState::Open {
            return;
        }
        let market = conn.market;
        let streams: Vec<String> = conn.streams.iter().cloned().collect();
        let Some(new_id) = self.open_conn(market, now, out) else { return };
        if let Some(n) = self.conns.get_mut(&new_id) {
            n.replaces = Some(id);
            n.streams.extend(streams.iter().cloned());
            n.to_subscribe.extend(streams);
        }
        if let Some(o) = self.conns.get_mut(&id) {
            o.replaced_by = Some(new_id);
        }
        self.rotations += 1;
    }

    /// Once the replacement has every stream acknowledged, the old connection
    /// is drained for a moment, then closed (make-before-break).
    fn finish_rotation_if_ready(&mut self, new_id: ConnId, now: Timestamp) {
        let Some(n) = self.conns.get(&new_id) else { return };
        let Some(old) = n.replaces else { return };
        if !n.to_subscribe.is_empty() || !n.inflight.is_empty() || n.acked.len() < n.streams.len() {
            return;
        }
        // Streams detached from the old connection during the overlap were never
        // added to the new one; streams added to the old one in the meantime move.
        let moved: Vec<String> = self
            .conns
            .get(&old)
            .map(|o| o.streams.iter().filter(|s| !n.streams.contains(*s)).cloned().collect())
            .unwrap_or_default();
        if let Some(n) = self.conns.get_mut(&new_id) {
            n.replaces = None;
            for s in moved {
                n.streams.insert(s.clone());
                n.to_subscribe.push_back(s);
            }
        }
        if let Some(o) = self.conns.get_mut(&old) {
            o.retire_at = Some(now.add(ROTATION_DRAIN));
        }
    }

    /// Sends the next queued control message if the pacer allows: every name
    /// queued (up to `names_per_request`) goes in that one message, so a burst
    /// of new streams costs one message per gap, not one per stream.
    fn pump(&mut self, id: ConnId, now: Timestamp, out: &mut VecDeque<Output>) {
        let per_msg = self.cfg.names_per_request.max(1);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state != ConnState::Open || !conn.pacer.ready(now) {
            return;
        }
        // Both kinds waiting: they take turns (neither starves under churn),
        // except that a stream waiting for both is unsubscribed first.
        let unsubscribe_first = match (conn.to_unsubscribe.is_empty(), conn.to_subscribe.is_empty()) {
            (true, true) => return,
            (false, true) => true,
            (true, false) => false,
            (false, false) => {
                conn.last_method == Method::Subscribe
                    || conn.to_subscribe.iter().any(|s| conn.to_unsubscribe.contains(s))
            }
        };
        let (method, queue) = if unsubscribe_first {
            (Method::Unsubscribe, &mut conn.to_unsubscribe)
        } else {
            (Method::Subscribe, &mut conn.to_subscribe)
        };
        let n = queue.len().min(per_msg);
        let names: Vec<String> = queue.drain(..n).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let request = self.next_request;
        self.next_request += 1;
        let text = match method {
            Method::Subscribe => binance::subscribe_request(request, &refs),
            Method::Unsubscribe => binance::unsubscribe_request(request, &refs),
        };
        conn.inflight.insert(request, (method, names));
        conn.last_method = method;
        conn.pacer.sent(now);
        self.control_sent += 1;
        out.push_back(Output::UpstreamSend { conn: id, text });
    }

    /// The earliest time `on_timeout` has something to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| next = Some(next.map_or(t, |n: Timestamp| n.min(t)));
        for c in self.conns.values() {
            if let Some(t) = c.retire_at {
                consider(t);
            }
            consider(c.last_activity.add(self.cfg.silence_timeout));
            if let (Some(opened), None, None) = (c.opened_at, c.replaced_by, c.replaces) {
                consider(opened.add(self.cfg.rotate_after));
            }
            let queued = !c.to_subscribe.is_empty() || !c.to_unsubscribe.is_empty();
            if queued && c.state == ConnState::Open {
                consider(c.pacer.ready_at());
            }
        }
        for ms in &self.markets {
            if !ms.waiting.is_empty() {
                let mut at = ms.retry_at.unwrap_or(Timestamp::ZERO);
                if self.connect_times.len() >= self.cfg.connect_budget {
                    if let Some(front) = self.connect_times.front() {
                        at = at.max(front.add(self.cfg.connect_window));
                    }
                }
                if let Some(open_until) = ms.guardrail.open_until() {
                    at = at.max(open_until);
                }
                consider(at);
            }
        }
        next
    }

    /// Timers: silence detection, rotation, pacing, reconnects.
    pub fn on_timeout(&mut self, now: Timestamp, out: &mut VecDeque<Output>, events: &mut Vec<PoolEvent>) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get(&id) else { continue };
            if c.retire_at.is_some_and(|t| t <= now) {
                self.close(id, "rotated", out);
                continue;
            }
            if now.since(c.last_activity) >= self.cfg.silence_timeout {
                let reason = if c.state == ConnState::Open { "silent" } else { "connect timeout" };
                out.push_back(Output::UpstreamClose { conn: id, reason: reason.to_string() });
                self.lose(id, reason, now, out, events);
                continue;
            }
            let due_rotation = c
                .opened_at
                .is_some_and(|o| now.since(o) >= self.cfg.rotate_after && c.replaced_by.is_none() && c.replaces.is_none());
            if due_rotation {
                self.start_rotation(id, now, out);
            }
            self.pump(id, now, out);
        }
        for market in [Market::Spot, Market::Futures] {
            self.assign_waiting(market, now, out);
        }
    }

    /// Debug view of connections and markets.
    pub fn snapshot(&self, now: Timestamp) -> serde_json::Value {
        let conns: Vec<serde_json::Value> = self
            .conns
            .iter()
            .map(|(id, c)| {
                serde_json::json!({
                    "conn": id,
                    "market": c.market.as_str(),
                    "state": match c.state { ConnState::Connecting => "connecting", ConnState::Open => "open" },
                    "streams": c.streams.len(),
                    "acked": c.acked.len(),
                    "age_s": now.since(c.created_at).as_secs_f64(),
                    "rotating": c.replaced_by.is_some() || c.replaces.is_some(),
                })
            })
            .collect();
        let markets: Vec<serde_json::Value> = [Market::Spot, Market::Futures]
            .iter()
            .map(|m| {
                let ms = &self.markets[m.index()];
                serde_json::json!({
                    "market": m.as_str(),
                    "waiting_streams": ms.waiting.len(),
                    "retry_in_s": ms.retry_at.map_or(0.0, |t| t.since(now).as_secs_f64()),
                    "breaker": ms.guardrail.snapshot(now),
                })
            })
            .collect();
        serde_json::json!({
            "connections": conns,
            "markets": markets,
            "reconnects": self.reconnects,
            "rotations": self.rotations,
        })
    }
}
