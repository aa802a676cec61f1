//! The deterministic core. One [`Engine`] owns the supervisor, the ingest jobs,
//! the derived-timeframe folds, the hub and the upstream pool, and talks to
//! the world only through values:
//!
//! - [`Engine::handle`]`(input, now)` — one event from outside; returns
//!   nothing (an HTTP ingest is answered by `Output::IngestDone`);
//! - [`Engine::handle_timeout`]`(now)` — fire every timer due at `now`;
//! - [`Engine::poll_output`] — drain what the shell must do, until `None`;
//! - `handle(Input::ClientWritable { client, budget })` then
//!   [`Engine::poll_client`] — a writable client's frames, up to a byte budget;
//! - [`Engine::poll_timeout`] — the earliest deadline (a pure query);
//!   [`Engine::next_wake`] says which part of the engine it is for.
//!
//! Call order: after every `handle`/`handle_timeout`, drain `poll_output`
//! before the next mutation — except `ClientWritable`, which the shell may hand
//! in while draining (on `ClientReady`): it changes only that client's queue
//! and does not settle a deferred fan-out. Time never goes backwards: the
//! engine keeps the maximum `now` it was given.
//!
//! Architecture invariants (checked by `tests/fixtures.rs` and clippy.toml): nothing here
//! reads a clock, the environment, randomness (only the seeded [`Rng`]),
//! threads, sockets or a store, and nothing iterates a hash map in a way that
//! reaches an output. The store is an effect: reads that decide something
//! and every write leave as `Output::ReadStore`/`Output::Persist` and come
//! back as `Input::StoreRead`/`Input::Persisted` (`store_ops.rs`).

mod bus;
mod catchup;
mod counters;
pub mod derived;
pub mod guardrail;
pub mod histogram;
pub mod hub;
pub mod listing;
pub mod pacer;
pub mod rate;
pub mod rest;
pub mod series;
pub mod supervisor;
pub mod upstream;

pub mod fasthash;
mod io;
pub mod job;
pub use job::{heal, ingest};
pub mod reload;
pub mod retention;
mod store_ops;
mod unlisted;
mod view;
mod client_requests;
mod drive;
mod wake;
mod window;

pub use counters::{CounterSample, Counters};
pub use io::{ClientId, ConnId, Frame, Input, LogLevel, Output, RestId, StoreOp};
pub use wake::{TimerKind, Wake, WakeReason};
pub use window::ClosedWindow;
pub use view::{Gauges, Readiness, RestFigures};

use crate::model::{Candle, Market, SeriesId};
use crate::wire::client::{self as wire, ClientRequest, RequestError};
use crate::rng::Rng;
use crate::time::{Duration, Timestamp};
use crate::timer::TimerWheel;
use job::Jobs;
use store_ops::{PendingSub, ReadFor, StoreOps, WriteFor};
use hub::{Hub, HubConfig, SubscribeError};
use series::{SeriesIdx, SeriesTable};
use std::collections::VecDeque;
use supervisor::{Effect, SubscribeOutcome, Supervisor, SupervisorConfig};
use upstream::{PoolEvent, UpstreamConfig, UpstreamPool};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub supervisor: SupervisorConfig,
    pub hub: HubConfig,
    pub upstream: UpstreamConfig,
    /// A live stream with no kline frame for this long is resubscribed (0 = off).
    pub stream_stall: Duration,
    /// Minimum spacing of forming updates per series (0 = every update).
    pub forming_interval: Duration,
    /// Flush the closed buffer when it holds this many candles.
    pub batch_max: usize,
    /// ...or when the last flush is this old.
    pub flush_interval: Duration,
    pub max_client_message_bytes: usize,
    /// Closed candles kept for retry while the store fails; beyond this newly
    /// closed candles are dropped and counted (REST healing refills them).
    pub store_backlog_max_candles: usize,
    pub rng_seed: u64,
    pub heal: heal::HealConfig,
    pub rest: rest::RestConfig,
    /// `--retention`: old candles pruned in batches (`retention.rs`).
    pub retention: retention::RetentionConfig,
    /// Keep the whole kline (quote volume, trades, taker-buy volumes) of
    /// closes and store it with them (`job/kline_ext.rs`).
    pub full_klines: bool,
}

/// Timers the engine schedules on its wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKey {
    /// Flush deadline of a job's closed buffer.
    Flush(SeriesIdx),
    /// Trailing edge of a forming throttle: job, throttle index (0 = base).
    Forming(SeriesIdx, u16),
    /// Late-close watchdog of a job (a newer candle is live, an older one never closed).
    Watchdog(SeriesIdx),
    /// A job's current candle closed `late_close` ago by the clock: is it here?
    CloseDue(SeriesIdx),
    /// Subscriptions held for a catch-up heal get their catch-up by then.
    ReleaseHeld(SeriesIdx),
    /// End of the current step: flush every job that asked (one transaction).
    FlushAll,
    /// The earliest moment a live stream may have gone silent too long.
    StallCheck,
}

/// Why a REST request was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestPurpose {
    /// One page of a job's heal, asking for open times up to `page_end`.
    Heal { job: SeriesIdx, page_end: i64 },
    /// One page of a derived series' history in its own interval (`job/native.rs`).
    Native { series: SeriesIdx, page_end: i64 },
}

/// `GET /api/market/candles` reply.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CandlesReply {
    pub series_id: String,
    pub server_head_time: Option<i64>,
    pub candles: Vec<Candle>,
}

pub struct Engine {
    cfg: EngineConfig,
    now: Timestamp,
    series: SeriesTable,
    hub: Hub,
    supervisor: Supervisor,
    pool: UpstreamPool,
    /// The ingest jobs, their write queue, heals and fills (`job/`).
    jobs: Jobs,
    timers: TimerWheel<TimerKey>,
    /// Store effects in flight and what each is for (`store_ops.rs`).
    store_ops: StoreOps,
    rest: rest::RestScheduler<RestPurpose>,
    /// Symbols each market lists (or refused), handed in by the shell.
    listings: listing::Listings,
    rest_calls: Vec<rest::RestCall>,
    outputs: VecDeque<Output>,
    counters: Counters,
    effects: Vec<Effect>,
    pool_events: Vec<PoolEvent>,
    fired: Vec<(Timestamp, TimerKey)>,
    /// Retention passes and their figures (`retention.rs`).
    retention: retention::Retention,
    shut_down: bool,
    /// Demand across nodes (`bus.rs`).
    bus: bus::BusBook,
    /// The shutdown's client closes went out (see `settle_shutdown`).
    shutdown_done: bool,
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Timestamp) -> Engine {
        let mut rng = Rng::new(cfg.rng_seed);
        let pool = UpstreamPool::new(cfg.upstream.clone(), Rng::new(rng.next_u64()));
        let store_ops = StoreOps::default();
        let mut supervisor = Supervisor::new(cfg.supervisor.clone());
        // An ingest node is a standby until the bus says it leads.
        supervisor.set_standby(cfg.supervisor.role == supervisor::Role::Ingest);
        Engine {
            hub: Hub::new(cfg.hub.clone(), store_ops.ids.clone()),
            supervisor,
            pool,
            now,
            series: SeriesTable::default(),
            jobs: Jobs::new(&cfg),
            timers: TimerWheel::new(now),
            store_ops,
            rest: rest::RestScheduler::new(cfg.rest.clone()),
            listings: listing::Listings::default(),
            rest_calls: Vec::new(),
            outputs: VecDeque::new(),
            counters: Counters::default(),
            effects: Vec::new(),
            pool_events: Vec::new(),
            fired: Vec::new(),
            retention: retention::Retention::default(),
            shut_down: false,
            bus: bus::BusBook::default(),
            shutdown_done: false,
            cfg,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn advance(&mut self, now: Timestamp) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Handles one input. It returns nothing: every answer is an output
    /// (an HTTP ingest or touch is answered by `Output::IngestDone` with its
    /// `request`, at once or once stored).
    pub fn handle(&mut self, input: Input, now: Timestamp) {
        if let Input::ClientWritable { client, budget } = input {
            // Only this client's queue changes: a deferred fan-out goes on
            // as before (no settle), and nothing else is pumped.
            self.advance(now);
            self.counters.inputs += 1;
            self.hub.writable(client, budget, &self.series, &mut self.outputs);
            return;
        }
        self.settle_fanout();
        self.advance(now);
        self.counters.inputs += 1;
        match input {
            Input::Start => {
                self.supervisor.start_whitelist(self.now, &mut self.effects);
                self.apply_effects();
                self.retention_arm();
            }
            Input::ClientConnected { client } => {
                if !self.hub.connect(client) {
                    self.log(LogLevel::Warn, format!("client_id_reused client={client}"));
                }
            }
            Input::ClientText { client, text } => {
                if self.admit_client_message(client) {
                    self.on_client_text(client, &text);
                }
            }
            Input::ClientBinary { client, len: _ } => {
                if self.admit_client_message(client) {
                    self.reject_client(client, &RequestError::Binary);
                }
            }
            Input::ClientDisconnected { client } => {
                self.on_client_gone(client);
            }
            Input::ClientWritable { .. } => {
                // Handled above, before the fan-out settles.
            }
            Input::UpstreamConnected { conn } => {
                self.pool.on_connected(conn, self.now, &mut self.outputs, &mut self.pool_events);
                self.log(LogLevel::Info, format!("upstream_connected conn={conn}"));
                self.apply_pool_events();
            }
            Input::UpstreamText { conn, text } => {
                self.on_upstream_text(conn, &text);
            }
            Input::UpstreamPing { conn } => {
                self.pool.on_ping(conn, self.now);
            }
            Input::UpstreamDisconnected { conn, reason } => {
                if self.pool.knows_conn(conn) {
                    self.log(LogLevel::Warn, format!("upstream_lost conn={conn} reason={reason:?}"));
                }
                self.pool.on_disconnected(conn, &reason, self.now, &mut self.outputs, &mut self.pool_events);
                self.apply_pool_events();
            }
            Input::IngestClosed { request, series_id, candles } => {
                if let Err(error) = self.ingest_closed(request, &series_id, candles) {
                    self.outputs.push_back(Output::IngestDone { request, error: Some(error) });
                }
            }
            Input::IngestForming { request, series_id, candle } => {
                let error = self.ingest_forming(&series_id, candle).err();
                self.outputs.push_back(Output::IngestDone { request, error });
            }
            Input::TouchSeries { request, series_id } => {
                let error = self.touch_series(&series_id).err();
                self.outputs.push_back(Output::IngestDone { request, error });
            }
            Input::Shutdown => {
                self.shutdown();
            }
            Input::Reload { settings } => {
                self.reload(settings);
            }
            Input::RestResponse { id, status, body, retry_after_s, used_weight } => {
                let result = if status == 200 { Ok(body) } else { Err((Some(status), body)) };
                self.on_rest_done(id, Some(status), retry_after_s, used_weight, result);
            }
            Input::StoreRead { op, result } => {
                self.on_store_read(op, result);
            }
            Input::Persisted { op, result } => {
                self.on_persisted(op, result);
            }
            Input::RestFailed { id, reason } => {
                self.counters.rest_failures += 1;
                self.on_rest_done(id, None, None, None, Err((None, reason)));
            }
            Input::SymbolsListed { market, symbols } => {
                self.on_symbols_listed(market, symbols);
            }
            Input::BusClosed { series_id, candles, entry } => {
                self.on_bus_closed(&series_id, candles, &entry);
            }
            Input::BusForming { series_id, candle } => {
                self.on_bus_forming(&series_id, candle);
            }
            Input::BusResync { reason } => {
                self.on_bus_resync(&reason);
            }
            Input::BusLeader { fence } => {
                self.on_bus_leader(fence);
            }
            Input::RemoteDemand { node, series_id, wanted } => {
                self.on_remote_demand(&node, &series_id, wanted);
            }
            Input::BusRefused { series_id, reason } => {
                self.on_bus_refused(&series_id, &reason);
            }
        }
        self.pump_rest();
    }

    fn on_rest_done(
        &mut self,
        id: RestId,
        status: Option<u16>,
        retry_after_s: Option<u64>,
        used_weight: Option<u32>,
        result: Result<String, (Option<u16>, String)>,
    ) {
        let Some((_, purpose)) = self.rest.complete(id, status, retry_after_s, used_weight, self.now) else { return };
        let refused = self.with_jobs(|jobs, cx| jobs.on_rest_done(cx, id, purpose, result));
        if let Some(job) = refused {
            self.on_symbol_refused(job);
        }
    }

    /// Sends the REST requests the budgets allow.
    fn pump_rest(&mut self) {
        let mut calls = std::mem::take(&mut self.rest_calls);
        self.rest.pump(self.now, &mut calls);
        for c in calls.drain(..) {
            self.counters.rest_requests += 1;
            self.outputs.push_back(Output::RestRequest { id: c.id, market: c.market, path: c.path });
        }
        self.rest_calls = calls;
    }

    /// Fires every timer due at `now`. Spurious or early calls are harmless.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
        let now = self.now;
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.timers.expire(now, &mut fired);
        for (_, key) in fired.drain(..) {
            self.settle_fanout();
            self.with_jobs(|jobs, cx| jobs.on_timer(cx, key));
        }
        self.fired = fired;
        self.settle_fanout();
        if self.pool.next_deadline().is_some_and(|t| t <= now) {
            self.pool.on_timeout(now, &mut self.outputs, &mut self.pool_events);
            self.apply_pool_events();
        }
        if self.supervisor.next_deadline().is_some_and(|t| t <= now) {
            self.supervisor.on_tick(now, &mut self.effects);
            self.apply_effects();
        }
        self.with_jobs(|jobs, cx| jobs.on_timeout(cx));
        self.retention_timeout();
        self.pump_rest();
    }

    /// The earliest time `handle_timeout` has work. Pure. Why it wakes:
    /// [`Engine::next_wake`].
    #[must_use = "the shell sleeps until this deadline, then calls handle_timeout"]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.earliest_deadline().map(|(at, _)| at)
    }

    /// The next thing the shell must do. A deferred forming fan-out
    /// (`HubConfig::defer_forming_fanout`) goes on here, one ready client at a
    /// time, once everything queued before it is out.
    #[must_use = "an output taken and dropped is work the shell never does; drain until None"]
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.hub.step_deferred(&self.series, &mut self.outputs, &mut self.counters);
        }
        self.outputs.pop_front()
    }

    /// Finishes a deferred forming fan-out before anything else changes the hub.
    fn settle_fanout(&mut self) {
        self.hub.settle(&self.series, &mut self.outputs, &mut self.counters);
    }

    /// The next frame for `client` that its last `Input::ClientWritable`
    /// staged, in queue order; the shell writes them until `None`. (The
    /// write may have asked for the client's next catch-up page: drain
    /// `poll_output` too.)
    #[must_use = "a staged frame taken and dropped never reaches the client; drain until None"]
    pub fn poll_client(&mut self, client: ClientId) -> Option<Frame> {
        self.hub.poll_client(client)
    }

    /// Bytes still queued for `client` (not yet staged by a write): after a
    /// partial write, more than 0 means write again when the socket allows.
    pub fn client_queued_bytes(&self, client: ClientId) -> usize {
        self.hub.queued_bytes(client)
    }

    fn log(&mut self, level: LogLevel, line: String) {
        self.outputs.push_back(Output::Log { level, line });
    }

    // --------------------------------------------------------------- shutdown

    fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.supervisor.shutdown(&mut self.effects);
        self.apply_effects();
        // Jobs the supervisor did not know (none normally) are flushed too.
        let rest: Vec<SeriesIdx> = self.jobs.iter().map(|(idx, _)| *idx).collect();
        for idx in rest {
            self.with_jobs(|jobs, cx| jobs.stop_job(cx, idx, "shutdown"));
        }
        self.with_jobs(|jobs, cx| jobs.retry_writes_now(cx));
        self.settle_shutdown();
    }

    /// Ends a shutdown once no write is awaiting its answer: the closes a
    /// write was storing are published first, then every client is closed
    /// `1001` and `shutdown_complete` logged (once; candles a failing store
    /// still holds are counted there and in the shell's exit code).
    fn settle_shutdown(&mut self) {
        if !self.shut_down || self.shutdown_done || self.jobs.awaiting_write() {
            return;
        }
        self.shutdown_done = true;
        let (code, reason) = hub::SHUTDOWN_CLOSE;
        for client in self.hub.open_client_ids() {
            self.outputs.push_back(Output::ClientClose { client, code, reason: reason.to_string() });
        }
        let left = self.unpersisted_candles();
        self.log(LogLevel::Info, format!("shutdown_complete unpersisted_candles={left}"));
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// Closed candles accepted but not yet persisted and published (buffers
    /// plus the write queue).
    pub fn unpersisted_candles(&self) -> usize {
        self.jobs.unpersisted_candles()
    }

    /// Store effects emitted and not answered yet.
    pub fn store_effects_in_flight(&self) -> usize {
        self.store_ops.in_flight()
    }

    // ---------------------------------------------------------- HTTP ingest

    fn ingest_closed(&mut self, request: u64, raw: &str, candles: Vec<Candle>) -> Result<(), String> {
        let id = SeriesId::parse(raw).map_err(|e| e.to_string())?;
        for c in &candles {
            if let Some(why) = c.value_error() {
                return Err(format!("invalid candle at {}: {why}", c.candle_time));
            }
        }
        let idx = self.series.intern(&id);
        let candles = ingest::dedupe_closed(candles, i64::MIN);
        if candles.is_empty() {
            self.outputs.push_back(Output::IngestDone { request, error: None });
            return Ok(());
        }
        // A tool's ingest may correct a row: it upserts, and bypasses the
        // write queue (its failure is the HTTP reply, not a retry).
        let batch = crate::store::SeriesBatch { series_id: id.as_str().to_string(), candles: candles.clone() };
        let write = crate::store::StoreWrite { batches: vec![batch], ..Default::default() };
        self.write_store(write, WriteFor::Ingest { request, set: vec![(idx, candles)] });
        Ok(())
    }

    fn touch_series(&mut self, raw: &str) -> Result<(), String> {
        let id = SeriesId::parse(raw).map_err(|e| e.to_string())?;
        let base = self.supervisor.normalize(&id);
        if !self.series.lookup(base.as_str()).is_some_and(|i| self.jobs.contains(i)) {
            match self.admit_series(&id) {
                SubscribeOutcome::Accepted => {
                    // No subscriber holds it: the job idles and is reaped after the TTL.
                    self.supervisor.unsubscribe(&id, self.now);
                    self.apply_effects();
                }
                SubscribeOutcome::Capacity => {
                    self.apply_effects();
                    return Err("ondemand_ingest_capacity".into());
                }
                SubscribeOutcome::Unsupported(msg) => return Err(msg),
            }
        }
        // A derived series read for the first time fills from its own interval.
        if job::native::applies(&self.cfg, &self.supervisor, &id) {
            let query = crate::store::StoreQuery::Bounds { series_id: id.as_str().to_string() };
            self.read_store(query, ReadFor::Touch(id));
        }
        Ok(())
    }

    fn ingest_forming(&mut self, raw: &str, candle: Candle) -> Result<(), String> {
        let id = SeriesId::parse(raw).map_err(|e| e.to_string())?;
        if let Some(why) = candle.value_error() {
            return Err(format!("invalid candle at {}: {why}", candle.candle_time));
        }
        let idx = self.series.intern(&id);
        self.hub.publish_forming(idx, &candle, &self.series, &mut self.outputs, &mut self.counters);
        Ok(())
    }
}
