//! A model shell around klinegate's deterministic core, shared by the
//! `engine_ops` fuzz target and `tests/simulation.rs`. It plays the part of the
//! mio shell, with the exchange played by [`ExchangeModel`] in its `Held` mode:
//! it opens the upstream connections the engine asks for (or fails them) and
//! acks control requests only when its caller says so,
//! writes client frames unless a client is stalled (`ClientWritable` with the
//! client's byte budget, whole queues unless set), reports a client closed
//! by the engine as disconnected, and fires timers. After every step it checks
//! the core's invariants from the outside and panics with a message naming the
//! broken one.
//!
//! Invariants checked (see `fuzz/README.md`):
//! - I1 no panic inside the engine;
//! - I2 per (client, series), closed candle times delivered (single frames and
//!   batches) strictly increase; only a re-subscribe by the client resets this;
//! - I3 a forming candle is never delivered at or before the last closed candle
//!   delivered for that (client, series);
//! - I4 a gap notice describes a real hole: `actual > expected`,
//!   `expected == last delivered + tf` when the client had one, and the next
//!   closed candle delivered for the series is at `actual`;
//! - I5 nothing is delivered to, or announced for, a client after its
//!   disconnect was reported;
//! - I6 job refcounts (`ingest_state().jobs[].refcount`) are >= -1, and -1 only
//!   for pinned jobs;
//! - I7 every closed candle the engine accepted from the exchange (its
//!   `closed_accepted` counter moved for that frame) is in the store under the
//!   series of the connection's market, or is still counted in
//!   `unpersisted_candles()` (or was dropped and counted because the store
//!   backlog was full); after a final `Shutdown` with a working store, all of
//!   them are in the store;
//! - I8 after `handle_timeout(now)`, `poll_timeout()` is later than `now` (a
//!   deadline at or before `now` would make the shell spin).
//!
//! Never reads a clock or randomness: everything comes from the caller. It is
//! a test oracle: a broken invariant panics, with the invariant's name.

use super::exchange::{Answer, ExchangeModel};
pub use super::exchange::{kline_frame, ConnState};
use crate::cli::settings::Settings;
use crate::engine::{ClientId, ConnId, Engine, Input, Output};
use crate::model::{Candle, SeriesId};
use crate::wire::client::{parse_request, ClientRequest};
use crate::replay::hosted;
use crate::store::{MemoryStore, Store};
use crate::time::{Duration, Timestamp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Open time of the first candle the harness talks about: a multiple of 5 min.
pub const T0: i64 = 1_699_999_800;

/// (stream, symbol, timeframe, timeframe seconds) the fake exchange can send.
pub const STREAMS: [(&str, &str, &str, i64); 6] = [
    ("btcusdt@kline_1m", "BTC/USDT", "1m", 60),
    ("ethusdt@kline_1m", "ETH/USDT", "1m", 60),
    ("btcusdt@kline_5m", "BTC/USDT", "5m", 300),
    ("btcusdt@kline_1h", "BTC/USDT", "1h", 3600),
    ("solusdt@kline_1m", "SOL/USDT", "1m", 60),
    ("xrpusdt@kline_1m", "XRP/USDT", "1m", 60),
];

/// Index in [`STREAMS`] of a stream name.
pub fn stream_index(name: &str) -> Option<usize> {
    STREAMS.iter().position(|s| s.0 == name)
}

/// Series ids clients subscribe to (both markets, base and derived). Spot and
/// futures use different symbols here: the same symbol on both markets hits
/// the stream-name collision in tests/regressions.rs
/// (`spot_and_futures_series_of_one_symbol_keep_their_own_candles`), which
/// would fail nearly every run. Set `KLINEGATE_CROSS_MARKET=1` to use
/// [`SERIES_CROSS_MARKET`] instead once that is fixed.
pub const SERIES_DISJOINT: [&str; 6] = [
    "binance:spot:BTC/USDT:1m",
    "binance:spot:BTC/USDT:5m",
    "binance:spot:ETH/USDT:1m",
    "binance:futures:SOL/USDT:1m",
    "binance:futures:XRP/USDT:1m",
    "binance:spot:BTC/USDT:1h",
];

/// Like [`SERIES_DISJOINT`], with futures series sharing spot's symbols.
pub const SERIES_CROSS_MARKET: [&str; 6] = [
    "binance:spot:BTC/USDT:1m",
    "binance:spot:BTC/USDT:5m",
    "binance:spot:ETH/USDT:1m",
    "binance:futures:BTC/USDT:1m",
    "binance:futures:ETH/USDT:1m",
    "binance:spot:BTC/USDT:1h",
];

/// The series pool in use (see [`SERIES_DISJOINT`]).
pub fn series_pool() -> &'static [&'static str; 6] {
    static CROSS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let cross = *CROSS.get_or_init(|| std::env::var("KLINEGATE_CROSS_MARKET").is_ok_and(|v| v == "1"));
    if cross {
        &SERIES_CROSS_MARKET
    } else {
        &SERIES_DISJOINT
    }
}

/// Knobs of one run; each maps onto a [`Settings`] field.
#[derive(Clone, Debug)]
pub struct SimSettings {
    pub pinned: bool,
    pub derived: bool,
    pub backlog_bytes: usize,
    pub batch_max: usize,
    pub max_ondemand_jobs: usize,
    pub forming_ms: u64,
    pub store_backlog_max: usize,
    pub rng_seed: u64,
}

impl SimSettings {
    pub fn to_settings(&self) -> Settings {
        Settings {
            pins: if self.pinned { vec![series_pool()[0].to_string()] } else { vec![] },
            derived: if self.derived { "5m,1h".into() } else { String::new() },
            client_max_backlog_bytes: self.backlog_bytes.max(1),
            batch_max: self.batch_max.max(1),
            max_ondemand_jobs: self.max_ondemand_jobs,
            forming_interval_ms: self.forming_ms,
            flush_ms: 500,
            idle_ttl_s: 60,
            upstream_silence_s: 60,
            store_backlog_max_candles: self.store_backlog_max.max(1),
            spot_ws_url: "ws://127.0.0.1:1/spot".into(),
            futures_ws_url: "ws://127.0.0.1:1/futures".into(),
            rng_seed: self.rng_seed,
            ..Settings::default()
        }
    }
}

#[derive(Debug)]
struct ClientModel {
    stalled: bool,
    /// Bytes per write (`ClientWritable`'s budget): what stays queued waits
    /// for the next write, coalescing and counting against the backlog.
    budget: usize,
    /// Last closed candle time delivered, per series.
    last_closed: BTreeMap<String, i64>,
    /// A gap notice delivered and not yet followed by its candle: (expected, actual).
    pending_gap: BTreeMap<String, (i64, i64)>,
}

impl Default for ClientModel {
    fn default() -> Self {
        ClientModel {
            stalled: false,
            budget: Input::WRITE_ALL,
            last_closed: BTreeMap::new(),
            pending_gap: BTreeMap::new(),
        }
    }
}

/// What a run exercised, for the simulation's coverage report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub steps: u64,
    pub frames: u64,
    pub closed_delivered: u64,
    pub batches: u64,
    pub gaps: u64,
    pub forming: u64,
    pub errors: u64,
    pub accepted: u64,
    pub slow_closes: u64,
    pub upstream_connects: u64,
    pub acks: u64,
    pub store_failures: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.frames += o.frames;
        self.closed_delivered += o.closed_delivered;
        self.batches += o.batches;
        self.gaps += o.gaps;
        self.forming += o.forming;
        self.errors += o.errors;
        self.accepted += o.accepted;
        self.slow_closes += o.slow_closes;
        self.upstream_connects += o.upstream_connects;
        self.acks += o.acks;
        self.store_failures += o.store_failures;
    }
}

pub struct Harness {
    pub engine: Engine,
    pub now: Timestamp,
    /// The engine's store, its effects carried out at once; its writes fail
    /// while `store_down`.
    pub store: MemoryStore,
    store_down: bool,
    clients: BTreeMap<u64, ClientModel>,
    /// Clients the engine asked to close, to be reported disconnected.
    to_close: Vec<u64>,
    /// REST answers to deliver once outputs are drained (the model exchange
    /// has no REST history: `[]`).
    rest_pending: Vec<Input>,
    /// Clients whose disconnect was reported (until their id is reused).
    gone: BTreeSet<u64>,
    /// The exchange side: connections, outstanding control requests, streams.
    pub exchange: ExchangeModel,
    /// Closed candles the engine accepted from the exchange: (series, time).
    accepted: BTreeSet<(String, i64)>,
    pinned: BTreeSet<String>,
    frames: Vec<crate::engine::Frame>,
    pub stats: Stats,
}

fn tf_seconds(series: &str) -> i64 {
    SeriesId::parse(series).map_or(60, |id| id.timeframe().seconds())
}

fn canonical(series: &str) -> Option<String> {
    SeriesId::parse(series).ok().map(|id| id.as_str().to_string())
}

impl Harness {
    pub fn new(sim: &SimSettings, start: Timestamp) -> Harness {
        let settings = sim.to_settings();
        let cfg = settings.to_engine_config().expect("harness settings are valid");
        let mut h = Harness {
            engine: Engine::new(cfg, start),
            now: start,
            store: MemoryStore::new(),
            store_down: false,
            clients: BTreeMap::new(),
            to_close: Vec::new(),
            rest_pending: Vec::new(),
            gone: BTreeSet::new(),
            exchange: ExchangeModel::new(Answer::Held),
            accepted: BTreeSet::new(),
            pinned: settings.pins.iter().filter_map(|p| canonical(p)).collect(),
            frames: Vec::new(),
            stats: Stats::default(),
        };
        h.input(Input::Start);
        h
    }

    // ------------------------------------------------------------ stepping

    fn input(&mut self, input: Input) {
        self.stats.steps += 1;
        self.engine.handle(input, self.now);
        self.settle();
    }

    /// Drains outputs like the shell does, delivers frames, reports closes.
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.engine.poll_output() {
                progressed = true;
                self.on_output(out);
            }
            let ready: Vec<u64> =
                self.clients.iter().filter(|(_, c)| !c.stalled).map(|(id, _)| *id).collect();
            for id in ready {
                self.deliver(id);
            }
            for id in std::mem::take(&mut self.to_close) {
                progressed = true;
                if self.clients.contains_key(&id) {
                    self.deliver(id);
                    self.report_gone(id);
                }
            }
            for input in std::mem::take(&mut self.rest_pending) {
                progressed = true;
                self.engine.handle(input, self.now);
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_output(&mut self, out: Output) {
        // The shell's side of the exchange contract, checked before the model answers.
        match &out {
            Output::UpstreamConnect { conn, .. } => {
                self.stats.upstream_connects += 1;
                assert!(!self.exchange.conns.contains_key(&conn.0), "shell: UpstreamConnect reuses the live conn id {conn}");
            }
            Output::UpstreamSend { conn, text } => {
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("engine sent invalid JSON upstream ({e}): {text}"));
                let Some(c) = self.exchange.conns.get(&conn.0) else {
                    panic!("UpstreamSend on conn {conn} that is not open: {text}");
                };
                assert_eq!(c.state, ConnState::Open, "UpstreamSend before the connection opened: {text}");
                assert!(v["id"].as_u64().is_some(), "control request without id: {text}");
            }
            _ => {}
        }
        if let Some(replies) = self.exchange.on_output(&out, self.now) {
            // Held: only REST requests are answered, once outputs are drained.
            self.rest_pending.extend(replies.into_iter().filter_map(|r| self.exchange.deliver(r)));
            return;
        }
        match out {
            Output::ClientReady { client } => {
                assert!(
                    self.clients.contains_key(&client.0),
                    "I5: ClientReady for client {client}, which is not connected (gone: {})",
                    self.gone.contains(&client.0)
                );
            }
            Output::ClientClose { client, reason, .. } => {
                assert!(self.clients.contains_key(&client.0), "I5: ClientClose for unknown client {client}");
                if reason.starts_with("slow_consumer") {
                    self.stats.slow_closes += 1;
                }
                self.to_close.push(client.0);
            }
            // Carried out at once on the harness's store, as a replay without recorded answers does.
            o @ (Output::ReadStore { .. } | Output::Persist { .. }) => {
                hosted::carry(&mut self.engine, &mut self.store, &o, self.now);
            }
            Output::IngestDone { .. } | Output::Log { .. } => {}
            Output::UpstreamConnect { .. } | Output::UpstreamSend { .. } | Output::UpstreamClose { .. } | Output::RestRequest { .. } => {
                unreachable!("the exchange model takes every exchange output")
            }
            // The bus (issue #13): the harness runs a hybrid engine, which emits none.
            Output::BusPublish { .. } | Output::BusForming { .. } | Output::BusDemand { .. } | Output::BusRefused { .. } => {}
        }
    }

    fn report_gone(&mut self, client: u64) {
        self.clients.remove(&client);
        self.gone.insert(client);
        self.stats.steps += 1;
        self.engine.handle(Input::ClientDisconnected { client: ClientId(client) }, self.now);
        self.check_nothing_for(client);
        // Outputs of the disconnect are drained by the caller's settle loop.
    }

    fn check_nothing_for(&mut self, client: u64) {
        self.frames.clear();
        hosted::write_all(&mut self.engine, ClientId(client), &mut self.frames);
        assert!(
            self.frames.is_empty(),
            "I5: {} frame(s) for client {client} after its disconnect, first: {}",
            self.frames.len(),
            String::from_utf8_lossy(&self.frames[0])
        );
    }

    /// Takes the client's queued frames and checks them in order.
    fn deliver(&mut self, client: u64) {
        self.frames.clear();
        let budget = self.clients.get(&client).map_or(Input::WRITE_ALL, |c| c.budget).max(1);
        hosted::write_client(&mut self.engine, ClientId(client), budget, self.now, &mut self.frames);
        let frames = std::mem::take(&mut self.frames);
        for f in &frames {
            self.check_frame(client, f);
        }
        self.frames = frames;
    }

    fn check_frame(&mut self, client: u64, bytes: &[u8]) {
        self.stats.frames += 1;
        let text = String::from_utf8_lossy(bytes);
        let v: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("client frame is not JSON ({e}): {text}"));
        let Some(model) = self.clients.get_mut(&client) else {
            panic!("I5: frame for client {client} that is not connected: {text}");
        };
        let series = v["series_id"].as_str().unwrap_or("").to_string();
        match v["type"].as_str() {
            Some("candle_closed") => {
                let t = v["candle"]["candle_time"].as_i64().expect("closed candle time");
                self.stats.closed_delivered += 1;
                closed_step(model, client, &series, t, &text);
            }
            Some("candles_batch") => {
                self.stats.batches += 1;
                let candles = v["candles"].as_array().cloned().unwrap_or_default();
                assert!(!candles.is_empty(), "empty batch frame: {text}");
                for c in candles {
                    let t = c["candle_time"].as_i64().expect("batch candle time");
                    self.stats.closed_delivered += 1;
                    closed_step(model, client, &series, t, &text);
                }
            }
            Some("candle_forming") => {
                self.stats.forming += 1;
                let t = v["candle"]["candle_time"].as_i64().expect("forming candle time");
                if let Some(last) = model.last_closed.get(&series) {
                    assert!(t > *last, "I3: client {client} got forming {t} for {series} after closed {last}: {text}");
                }
            }
            Some("gap") => {
                self.stats.gaps += 1;
                let e = v["expected_next_time"].as_i64().expect("gap expected");
                let a = v["actual_time"].as_i64().expect("gap actual");
                assert!(a > e, "I4: gap without a hole for client {client}: {text}");
                if let Some(last) = model.last_closed.get(&series) {
                    let tf = tf_seconds(&series);
                    assert_eq!(e, last + tf, "I4: client {client} gap does not start after its last candle {last}: {text}");
                }
                assert!(model.pending_gap.insert(series, (e, a)).is_none(), "I4: two gap notices in a row for client {client}: {text}");
            }
            Some("error") => self.stats.errors += 1,
            other => panic!("unknown frame type {other:?}: {text}"),
        }
    }

    // ------------------------------------------------------------ clients

    pub fn is_connected(&self, client: u64) -> bool {
        self.clients.contains_key(&client)
    }

    pub fn connected_clients(&self) -> Vec<u64> {
        self.clients.keys().copied().collect()
    }

    pub fn connect(&mut self, client: u64) {
        if self.clients.contains_key(&client) || self.engine.is_shut_down() {
            return;
        }
        self.gone.remove(&client);
        self.clients.insert(client, ClientModel::default());
        self.input(Input::ClientConnected { client: ClientId(client) });
    }

    pub fn client_text(&mut self, client: u64, text: &str) {
        if !self.clients.contains_key(&client) {
            return;
        }
        // What was queued before this message belongs before its effects:
        // written whole (a write at a time of the client's budget).
        self.deliver(client);
        while self.engine.client_queued_bytes(ClientId(client)) > 0 {
            self.deliver(client);
        }
        if let Ok(ClientRequest::Subscribe { series_id, .. }) = parse_request(text) {
            if let (Some(id), Some(model)) = (canonical(&series_id), self.clients.get_mut(&client)) {
                // A re-subscribe is the one thing that may move a cursor back.
                model.last_closed.remove(&id);
                model.pending_gap.remove(&id);
            }
        }
        self.input(Input::ClientText { client: ClientId(client), text: text.to_string() });
    }

    pub fn client_binary(&mut self, client: u64) {
        if self.clients.contains_key(&client) {
            self.input(Input::ClientBinary { client: ClientId(client), len: 3 });
        }
    }

    pub fn disconnect(&mut self, client: u64) {
        if self.clients.contains_key(&client) {
            self.report_gone(client);
            self.settle();
        }
    }

    /// The client's bytes per write from now on (`Input::WRITE_ALL`: whole queues).
    pub fn set_write_budget(&mut self, client: u64, budget: usize) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.budget = budget;
        }
        self.settle();
    }

    pub fn set_stalled(&mut self, client: u64, stalled: bool) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.stalled = stalled;
        }
        self.settle();
    }

    // ------------------------------------------------------------ upstream

    /// The `i`-th connection (modulo) in `state`, ascending by id.
    pub fn conn_in(&self, state: ConnState, i: usize) -> Option<u64> {
        self.exchange.conn_in(state, i)
    }

    pub fn up_connected(&mut self, conn: u64) {
        if let Some(input) = self.exchange.open(conn) {
            self.input(input);
        }
    }

    pub fn up_disconnected(&mut self, conn: u64) {
        if let Some(input) = self.exchange.drop_conn(conn, "fake exchange closed") {
            self.input(input);
        }
    }

    /// Answers the `i`-th outstanding control request of `conn` with an ack.
    pub fn up_ack(&mut self, conn: u64, i: usize) {
        let Some(c) = self.exchange.conns.get(&conn) else { return };
        let ids: Vec<u64> = c.outstanding.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        if let Some(input) = self.exchange.ack(conn, ids[i % ids.len()]) {
            self.stats.acks += 1;
            self.input(input);
        }
    }

    /// Streams requested on `conn` that the harness can build frames for.
    pub fn requested_streams(&self, conn: u64) -> Vec<usize> {
        self.exchange.conns.get(&conn).map_or(Vec::new(), |c| c.requested.iter().filter_map(|s| stream_index(s)).collect())
    }

    pub fn up_text(&mut self, conn: u64, text: &str) {
        if self.exchange.conns.get(&conn).is_some_and(|c| c.state == ConnState::Open) {
            self.input(Input::UpstreamText { conn: ConnId(conn), text: text.to_string() });
        }
    }

    /// Sends a kline frame on an open connection and records an accepted close.
    /// Only for a stream requested on that connection: an exchange sends
    /// nothing else, and the engine routes frames by stream name without
    /// looking at the connection (finding F1 in fuzz/README.md).
    pub fn up_kline(&mut self, conn: u64, stream: usize, t: i64, price: f64, is_final: bool) {
        let (name, sym, tf, tf_s) = STREAMS[stream % STREAMS.len()];
        let Some(market) = self
            .exchange
            .conns
            .get(&conn)
            .filter(|c| c.state == ConnState::Open && c.requested.contains(name))
            .map(|c| c.market.as_str())
        else {
            return;
        };
        let before = self.engine.counters().closed_accepted;
        self.up_text(conn, &kline_frame(name, t, tf_s, price, is_final));
        if self.engine.counters().closed_accepted > before {
            assert!(is_final, "a forming frame moved closed_accepted");
            self.stats.accepted += 1;
            self.accepted.insert((format!("binance:{market}:{sym}:{tf}"), t));
        }
    }

    // ------------------------------------------------------------ other inputs

    pub fn ingest_closed(&mut self, series: &str, candles: Vec<Candle>) {
        self.input(Input::IngestClosed { request: 0, series_id: series.to_string(), candles });
    }

    pub fn ingest_forming(&mut self, series: &str, candle: Candle) {
        self.input(Input::IngestForming { request: 0, series_id: series.to_string(), candle });
    }

    pub fn set_store_down(&mut self, down: bool) {
        if down && !self.store_down {
            self.stats.store_failures += 1;
        }
        self.store_down = down;
        self.store.fail_writes(down);
    }

    pub fn shutdown(&mut self) {
        self.input(Input::Shutdown);
    }

    /// Advances time by `ms` and fires what is due, like one loop turn.
    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.add(Duration::from_millis(ms));
        self.fire(self.now);
    }

    /// Runs every timer due up to `until`, each at its own deadline, then
    /// moves time to `until`. Bounded: a spinning deadline trips I8 first.
    pub fn run_until(&mut self, until: Timestamp) {
        for _ in 0..10_000 {
            match self.engine.poll_timeout() {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.fire(self.now);
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        self.fire(self.now);
    }

    fn fire(&mut self, now: Timestamp) {
        self.stats.steps += 1;
        self.engine.handle_timeout(now);
        // I8 is about the timeout alone: the inputs its outputs cause (a
        // closed client reported gone, a REST answer) may make work due at
        // this same instant, which the next `handle_timeout` then does.
        if let Some(next) = self.engine.poll_timeout() {
            assert!(
                next > now,
                "I8: after handle_timeout({now:?}) poll_timeout() is {next:?}, not later (wakes for {:?})",
                self.engine.next_wake()
            );
        }
        self.settle();
    }

    // ------------------------------------------------------------ invariants

    /// I6 and I7, cheap enough to run after every step.
    pub fn check(&self) {
        let state = self.engine.ingest_state();
        for job in state["jobs"].as_array().into_iter().flatten() {
            let rc = job["refcount"].as_i64().unwrap_or(0);
            let pinned = job["pinned"].as_bool().unwrap_or(false);
            let series = job["series_id"].as_str().unwrap_or("?");
            assert!(rc >= -1, "I6: refcount {rc} < -1 for {series}");
            assert!(rc != -1 || pinned, "I6: refcount -1 on the unpinned job {series}");
            assert!(!pinned || self.pinned.contains(series), "I6: {series} reported pinned but not configured");
        }
        let missing = self.missing_accepted();
        let c = self.engine.counters();
        let allowance = self.engine.unpersisted_candles() as u64 + c.closed_dropped_backlog_full;
        assert!(
            missing.len() as u64 <= allowance,
            "I7: {} accepted closed candle(s) neither stored nor buffered (unpersisted {}, dropped {}): {:?}",
            missing.len(),
            self.engine.unpersisted_candles(),
            c.closed_dropped_backlog_full,
            &missing[..missing.len().min(8)]
        );
    }

    fn missing_accepted(&self) -> Vec<(String, i64)> {
        self.accepted
            .iter()
            .filter(|(s, t)| self.store.count_range(s, *t, *t).unwrap_or(0) == 0)
            .cloned()
            .collect()
    }

    /// Shuts down with a working store (running the retry timer if a failing
    /// store left a backlog at an earlier shutdown) and checks that nothing accepted is
    /// lost (I7, strict form) and that every client was closed.
    pub fn finish(&mut self) {
        self.set_store_down(false);
        self.shutdown();
        // A Shutdown that met a failing store left a backlog; its retry timer
        // (100 ms .. 5 s backoff) writes it now that the store works.
        if self.engine.unpersisted_candles() > 0 {
            self.run_until(self.now.add(Duration::from_secs(10)));
        }
        self.check();
        assert!(self.clients.is_empty(), "clients left open after shutdown: {:?}", self.connected_clients());
        let dropped = self.engine.counters().closed_dropped_backlog_full;
        let missing = self.missing_accepted();
        assert!(
            missing.len() as u64 <= dropped,
            "I7: {} accepted closed candle(s) lost at shutdown (dropped by a full backlog: {dropped}): {:?}",
            missing.len(),
            &missing[..missing.len().min(8)]
        );
    }
}

/// I2 and I4 for one delivered closed candle.
fn closed_step(model: &mut ClientModel, client: u64, series: &str, t: i64, text: &str) {
    if let Some(last) = model.last_closed.get(series) {
        assert!(t > *last, "I2: client {client} got closed {t} for {series} after closed {last}: {text}");
    }
    if let Some((_, actual)) = model.pending_gap.remove(series) {
        assert_eq!(t, actual, "I4: client {client} gap promised {actual} next for {series}, got {t}: {text}");
    }
    model.last_closed.insert(series.to_string(), t);
}
