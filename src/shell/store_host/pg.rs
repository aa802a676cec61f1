//! The PostgreSQL backend of the shell's store host: the core's store effects
//! become pipelined requests on ONE connection (`Driver<PgConn>`) registered
//! in the loop's own `mio::Poll` under [`PG_TOKEN`]; each answer goes back to
//! the core as `Input::StoreRead` / `Input::Persisted`, in the order the
//! effects were emitted. Nothing here blocks: an effect waits in a queue, on
//! the wire, or for its answer; the loop keeps turning meanwhile.
//!
//! Order: effects are submitted in emission order and one connection runs
//! them in that order, so a read sees every write emitted before it. An
//! effect that needs a second request (a job start with derived series: its
//! restore range depends on the head) holds the effects behind it until that
//! request is on the wire. Writes queued back to back go out as one request
//! (up to [`MAX_GROUP`]): one transaction, one commit for a burst of flushes.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] requests on the connection; the rest
//! wait in the effect queue (which the core bounds: see `store_host`) or the
//! HTTP read queue (bounded by the loop's `MAX_PARKED_READS` requests, each
//! asking for a few reads per round; the loop answers 503 past it). Effects
//! go first when both wait for room.
//!
//! The database down or failing — the decision:
//! - Start: klinegate starts DEGRADED, it does not wait for the database.
//!   The connection and the schema bootstrap are retried with the driver's
//!   backoff (100 ms doubling to 5 s); nothing is served from the store
//!   until the bootstrap has run on a connection. A bad URL is refused at
//!   start (exit 2); an unreachable server is not.
//! - An effect that finds no usable connection waits at most [`HOLD`] for one
//!   (a start, a reconnect in progress), then is answered
//!   `StoreReadResult::Failed` / `PersistOutcome::Failed`: the core's backlog
//!   policy applies (forming keeps flowing, closes are kept in order and
//!   published once a retry stores them).
//! - A request sent when the connection drops fails with the disconnect
//!   (the upsert is idempotent, so the core's retry is safe whether or not it
//!   was applied). A server that answers nothing for [`REQUEST_TIMEOUT`]
//!   gets its connection closed, which fails what it holds.
//! - HTTP reads never wait for a connection: without one they fail at once.
//!
//! Owns the connection, the effect queue and the request ↔ effect books.
//! Never decides what an answer means (the core does), never reads the
//! engine, never touches SQLite.

use super::http_reads::{Call, CallResult, Value};
use super::pg_plan::{self, Next, Step};
use crate::engine::{Input, LogLevel, Output};
use crate::shell::conn::stream_driver::{Backoff, Driver, LinkState, SansIo};
use crate::store::postgres::{ops, Answer, Bootstrap, BootstrapStep, PgConfig, PgConn, PgEvent, Request, RequestId, Schema};
use crate::store::{PersistOutcome, StoreError, StoreReadResult};
use mio::{Registry, Token};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The store connection's token in the loop's `Poll`.
pub const PG_TOKEN: Token = Token(usize::MAX - 16);
/// Requests held by the connection at once (sent and unanswered).
pub const MAX_IN_FLIGHT: usize = 256;
/// How long an effect waits for a usable connection before it fails.
pub const HOLD: Duration = Duration::from_secs(2);
/// Most writes queued back to back that go out as ONE request (one
/// transaction, one commit): a burst of flushes costs one round trip.
pub const MAX_GROUP: usize = 64;
/// A connection that answers nothing for this long while requests wait is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

enum Owner {
    Effect(u64),
    /// Writes sent as one transaction: the fence check's result sets to
    /// skip, then each effect and its statement count.
    Writes(usize, Vec<(u64, usize)>),
    Http(u64, Call),
    Bootstrap,
}

struct Effect {
    seq: u64,
    step: Option<Step>,
    answer: Option<Input>,
    is_write: bool,
    sent_at: Instant,
}

/// Write figures for `/health` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct PgStats {
    pub writes: u64,
    /// Requests (transactions) the writes went out in.
    pub write_requests: u64,
    pub write_seconds_sum: f64,
    pub write_seconds_max: f64,
    pub last_write_ok: bool,
    pub last_write_error: Option<String>,
}

pub struct PgHost {
    driver: Driver<PgConn>,
    schema: Schema,
    url: String,
    queue: VecDeque<(Instant, Output)>,
    effects: VecDeque<Effect>,
    owners: HashMap<RequestId, Owner>,
    next_seq: u64,
    barriers: usize,
    bootstrap: Option<Bootstrap>,
    schema_ready: bool,
    http_queue: VecDeque<(u64, Call)>,
    http_done: VecDeque<(u64, Call, CallResult)>,
    notes: VecDeque<(LogLevel, String)>,
    last_progress: Instant,
    was_up: bool,
    pub stats: PgStats,
    pub max_queued: usize,
    /// The bus lease's fence while this node leads (`set_fence`): every
    /// write transaction checks it first (`schema::fence_statements`).
    fence: Option<u64>,
}

impl PgHost {
    /// A host whose first connection attempt is due at `now` (the loop's first turn).
    pub fn new(cfg: PgConfig, addr: SocketAddr, token: Token, now: Instant) -> Result<PgHost, String> {
        let schema = Schema::new(&cfg.schema)?;
        let url = cfg.to_string();
        let driver = Driver::new(PgConn::new(cfg, MAX_IN_FLIGHT), addr, token, Backoff::default(), now);
        Ok(PgHost {
            driver,
            schema,
            url,
            queue: VecDeque::new(),
            effects: VecDeque::new(),
            owners: HashMap::new(),
            next_seq: 0,
            barriers: 0,
            bootstrap: None,
            schema_ready: false,
            http_queue: VecDeque::new(),
            http_done: VecDeque::new(),
            notes: VecDeque::new(),
            last_progress: now,
            was_up: false,
            stats: PgStats { last_write_ok: true, ..PgStats::default() },
            max_queued: 0,
            fence: None,
        })
    }

    /// This node leads the bus with `fence`: from now on every write
    /// transaction is refused by the database if a higher fence wrote.
    pub fn set_fence(&mut self, fence: u64) {
        self.fence = Some(fence);
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn owns(&self, token: Token) -> bool {
        token == self.driver.token()
    }

    /// Connected, handshake done and the schema bootstrapped.
    pub fn available(&self) -> bool {
        self.driver.proto.is_ready() && self.schema_ready && self.bootstrap.is_none()
    }

    /// Why the store cannot be used, while it cannot.
    pub fn down_reason(&self) -> Option<String> {
        if self.available() {
            return None;
        }
        Some(match self.driver.last_error() {
            Some(e) => format!("postgres unavailable ({}): {e}", self.url),
            None => format!("postgres ({}): connecting", self.url),
        })
    }

    pub fn offer(&mut self, output: Output) -> Option<Output> {
        match output {
            Output::ReadStore { .. } | Output::Persist { .. } => {
                self.queue.push_back((Instant::now(), output));
                self.max_queued = self.max_queued.max(self.queued());
                None
            }
            other => Some(other),
        }
    }

    /// Effects not yet answered (waiting to be sent, or for their answer).
    pub fn queued(&self) -> usize {
        self.queue.len() + self.effects.len()
    }

    /// An answer is ready for the core, or an effect can be sent now.
    pub fn has_work(&self) -> bool {
        self.effects.front().is_some_and(|e| e.answer.is_some())
            || (!self.queue.is_empty()
                && self.available()
                && self.barriers == 0
                && self.driver.proto.pending() < MAX_IN_FLIGHT)
    }

    /// The oldest effect's answer, once it has one.
    pub fn run_one(&mut self) -> Option<Input> {
        if self.effects.front().is_none_or(|e| e.answer.is_none()) {
            return None;
        }
        self.effects.pop_front().and_then(|e| e.answer)
    }

    /// Queues a read for an HTTP request (`ticket`); its result comes back
    /// from [`PgHost::poll_http`]. Without a usable connection it fails at
    /// once; with one it waits for room on the connection (the loop bounds
    /// the requests parked, and each asks for a few reads at a time).
    pub fn read_for_http(&mut self, ticket: u64, call: Call) {
        if let Some(why) = self.down_reason() {
            self.http_done.push_back((ticket, call, Err(StoreError { op: "read", message: why })));
            return;
        }
        self.http_queue.push_back((ticket, call));
        self.submit_http();
    }

    fn submit_http(&mut self) {
        while self.available() && self.driver.proto.pending() < MAX_IN_FLIGHT {
            let Some((ticket, call)) = self.http_queue.pop_front() else { return };
            match self.driver.proto.submit(call_request(&self.schema, &call)) {
                Ok(id) => {
                    self.touch_progress();
                    self.owners.insert(id, Owner::Http(ticket, call));
                }
                Err(full) => {
                    self.http_done.push_back((ticket, call, Err(StoreError { op: "read", message: full.to_string() })))
                }
            }
        }
        if let Some(why) = self.down_reason() {
            // The connection went away while they waited: they fail now.
            for (ticket, call) in self.http_queue.drain(..) {
                self.http_done.push_back((ticket, call, Err(StoreError { op: "read", message: why.clone() })));
            }
        }
    }

    #[must_use = "drain until None"]
    pub fn poll_http(&mut self) -> Option<(u64, Call, CallResult)> {
        self.http_done.pop_front()
    }

    /// Log lines for the loop (connects, drops, bootstrap).
    #[must_use = "drain until None"]
    pub fn poll_note(&mut self) -> Option<(LogLevel, String)> {
        self.notes.pop_front()
    }

    /// When the loop must call [`PgHost::pump`] at the latest.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut at = self.driver.next_wakeup();
        let mut earliest = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if !self.available() {
            if let Some((t, _)) = self.queue.front() {
                earliest(*t + HOLD);
            }
        }
        if !self.owners.is_empty() {
            earliest(self.last_progress + REQUEST_TIMEOUT);
        }
        at
    }

    /// A readiness event for [`PG_TOKEN`].
    pub fn on_event(&mut self, readable: bool, writable: bool, now: Instant, registry: &Registry) {
        self.driver.on_event(readable, writable, now, registry);
        self.collect(now, registry);
        self.pump(now, registry);
    }

    /// Once per loop turn (and after events): reconnects when due, sends what
    /// can be sent, fails what waited too long, writes the socket.
    pub fn pump(&mut self, now: Instant, registry: &Registry) {
        self.driver.step(now, registry);
        self.collect(now, registry);
        if !self.owners.is_empty() && now.saturating_duration_since(self.last_progress) >= REQUEST_TIMEOUT {
            let why = format!("no answer from postgres in {}s", REQUEST_TIMEOUT.as_secs());
            self.driver.close(now, registry, &why);
            self.collect(now, registry);
        }
        self.submit_queued(now);
        self.submit_http();
        self.driver.flush(now, registry);
        self.collect(now, registry);
    }

    fn touch_progress(&mut self) {
        if self.owners.is_empty() {
            self.last_progress = Instant::now();
        }
    }

    fn submit_queued(&mut self, now: Instant) {
        while let Some((queued_at, _)) = self.queue.front() {
            if self.barriers > 0 {
                return;
            }
            if !self.available() {
                if now.saturating_duration_since(*queued_at) < HOLD {
                    return;
                }
                let why = self.down_reason().unwrap_or_default();
                let Some((_, effect)) = self.queue.pop_front() else { return };
                let answer = failed_answer(&effect, &why);
                self.push_effect(answer, &effect, now);
                continue;
            }
            if self.driver.proto.pending() >= MAX_IN_FLIGHT {
                return;
            }
            let Some((_, effect)) = self.queue.pop_front() else { return };
            match pg_plan::start(&self.schema, &effect) {
                Some(Next::Answer(input)) => {
                    self.push_effect(Some(input), &effect, now);
                }
                Some(Next::Send(req, step)) => {
                    let seq = self.push_effect(None, &effect, now);
                    match step.write_statements() {
                        Some(n) => self.send_writes(seq, n, req, step, now),
                        None => self.send_step(seq, req, step),
                    }
                }
                None => {}
            }
        }
    }

    /// Sends the write `first` and the writes queued right behind it (at
    /// most [`MAX_GROUP`]) as one request: their statements share one Sync,
    /// so they commit together, in order, or fail together (then each is
    /// answered failed and the core retries it).
    fn send_writes(&mut self, first: u64, n: usize, req: Request, step: Step, now: Instant) {
        let mut stmts = statements(req);
        let mut members = vec![(first, n)];
        if let Some(e) = self.effect_mut(first) {
            e.step = Some(step);
        }
        while members.len() < MAX_GROUP && matches!(self.queue.front(), Some((_, Output::Persist { .. }))) {
            let Some((_, effect)) = self.queue.pop_front() else { break };
            match pg_plan::start(&self.schema, &effect) {
                Some(Next::Send(req, step)) if step.write_statements().is_some() => {
                    let n = step.write_statements().unwrap_or(0);
                    let seq = self.push_effect(None, &effect, now);
                    if let Some(e) = self.effect_mut(seq) {
                        e.step = Some(step);
                    }
                    stmts.extend(statements(req));
                    members.push((seq, n));
                }
                Some(Next::Answer(input)) => {
                    self.push_effect(Some(input), &effect, now);
                }
                // A write is a write: nothing else comes from a Persist.
                Some(Next::Send(..)) | None => {}
            }
        }
        let skip = match self.fence {
            Some(f) => {
                let mut fenced = crate::store::postgres::schema::fence_statements(&self.schema, f);
                let n = fenced.len();
                fenced.extend(stmts);
                stmts = fenced;
                n
            }
            None => 0,
        };
        match self.driver.proto.submit(Request::Extended(stmts)) {
            Ok(id) => {
                self.touch_progress();
                self.stats.write_requests += 1;
                self.owners.insert(id, Owner::Writes(skip, members));
            }
            Err(full) => {
                for (seq, _) in members {
                    if let Some(step) = self.effect_mut(seq).and_then(|e| e.step.take()) {
                        self.finish_effect(seq, step_failed(&step, &full.to_string()));
                    }
                }
            }
        }
    }

    fn on_writes_answer(&mut self, skip: usize, members: Vec<(u64, usize)>, answer: Answer) {
        match answer {
            Ok(sets) => {
                let mut sets = sets.into_iter().skip(skip);
                for (seq, n) in members {
                    let part: Vec<_> = sets.by_ref().take(n).collect();
                    self.on_effect_answer(seq, Ok(part));
                }
            }
            Err(e) => {
                for (seq, _) in members {
                    self.on_effect_answer(seq, Err(e.clone()));
                }
            }
        }
    }

    fn push_effect(&mut self, answer: Option<Input>, effect: &Output, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let is_write = matches!(effect, Output::Persist { .. });
        self.effects.push_back(Effect { seq, step: None, answer, is_write, sent_at: now });
        if let Some(Input::Persisted { result, .. }) = self.effects.back().and_then(|e| e.answer.as_ref()) {
            let result = result.clone();
            self.note_write(&result, Duration::ZERO);
        }
        seq
    }

    fn effect_mut(&mut self, seq: u64) -> Option<&mut Effect> {
        let front = self.effects.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.effects.get_mut(idx)
    }

    fn send_step(&mut self, seq: u64, req: Request, step: Step) {
        let barrier = step.is_barrier();
        match self.driver.proto.submit(req) {
            Ok(id) => {
                self.touch_progress();
                self.owners.insert(id, Owner::Effect(seq));
                if barrier {
                    self.barriers += 1;
                }
                if let Some(e) = self.effect_mut(seq) {
                    e.step = Some(step);
                }
            }
            Err(full) => {
                let answer = step_failed(&step, &full.to_string());
                self.finish_effect(seq, answer);
            }
        }
    }

    fn finish_effect(&mut self, seq: u64, answer: Input) {
        let now = Instant::now();
        let mut took = None;
        if let Some(e) = self.effect_mut(seq) {
            if e.is_write {
                took = Some(now.saturating_duration_since(e.sent_at));
            }
            e.answer = Some(answer.clone());
        }
        if let (Some(took), Input::Persisted { result, .. }) = (took, &answer) {
            self.note_write(result, took);
        }
    }

    fn note_write(&mut self, result: &PersistOutcome, took: Duration) {
        let st = &mut self.stats;
        st.writes += 1;
        let secs = took.as_secs_f64();
        st.write_seconds_sum += secs;
        st.write_seconds_max = st.write_seconds_max.max(secs);
        match result {
            PersistOutcome::Stored { .. } => {
                st.last_write_ok = true;
                st.last_write_error = None;
            }
            PersistOutcome::Failed(e) => {
                st.last_write_ok = false;
                st.last_write_error = Some(e.clone());
            }
        }
    }

    /// Handles every event the connection produced.
    fn collect(&mut self, now: Instant, registry: &Registry) {
        while let Some(ev) = self.driver.proto.poll_event() {
            match ev {
                PgEvent::Ready { backend_pid } => self.on_ready(backend_pid),
                PgEvent::Answer { id, answer } => {
                    self.last_progress = now;
                    match self.owners.remove(&id) {
                        Some(Owner::Effect(seq)) => self.on_effect_answer(seq, answer),
                        Some(Owner::Writes(skip, members)) => self.on_writes_answer(skip, members, answer),
                        Some(Owner::Http(ticket, call)) => {
                            let result = decode_call(&call, answer);
                            self.http_done.push_back((ticket, call, result));
                        }
                        Some(Owner::Bootstrap) => self.on_bootstrap_answer(answer, now, registry),
                        None => {}
                    }
                }
            }
        }
        let up = self.driver.state() == LinkState::Up;
        if self.was_up && !up {
            let why = self.driver.last_error().unwrap_or("closed").to_string();
            self.notes.push_back((LogLevel::Warn, format!("store_disconnected url={} error={why:?}", self.url)));
            self.bootstrap = None;
        }
        self.was_up = up;
    }

    fn on_ready(&mut self, backend_pid: i32) {
        self.notes.push_back((LogLevel::Info, format!("store_connected url={} backend_pid={backend_pid}", self.url)));
        if self.schema_ready {
            return;
        }
        let (b, req) = Bootstrap::start(self.schema.clone());
        if let Ok(id) = self.driver.proto.submit(req) {
            self.touch_progress();
            self.owners.insert(id, Owner::Bootstrap);
            self.bootstrap = Some(b);
        }
    }

    fn on_bootstrap_answer(&mut self, answer: Answer, now: Instant, registry: &Registry) {
        let Some(mut b) = self.bootstrap.take() else { return };
        if answer.as_ref().is_err_and(|e| e.is_disconnect()) {
            // The connection dropped under it: it runs again on the next one.
            return;
        }
        match b.on_answer(answer) {
            BootstrapStep::Send(req) => {
                if let Ok(id) = self.driver.proto.submit(req) {
                    self.owners.insert(id, Owner::Bootstrap);
                    self.bootstrap = Some(b);
                }
            }
            BootstrapStep::Done(info) => {
                self.schema_ready = true;
                self.notes.push_back((
                    LogLevel::Info,
                    format!(
                        "store_schema_ready url={} schema={} version={} hypertable={}",
                        self.url,
                        self.schema.name(),
                        info.version,
                        info.hypertable
                    ),
                ));
            }
            BootstrapStep::Failed(why) => {
                self.notes.push_back((LogLevel::Error, format!("store_bootstrap_failed url={} error={why:?}", self.url)));
                // Retried on the next connection, after the backoff.
                self.driver.close(now, registry, &why);
            }
        }
    }

    fn on_effect_answer(&mut self, seq: u64, answer: Answer) {
        let Some(step) = self.effect_mut(seq).and_then(|e| e.step.take()) else { return };
        if step.is_barrier() {
            self.barriers = self.barriers.saturating_sub(1);
        }
        match pg_plan::next(&self.schema, step, answer) {
            Next::Answer(input) => self.finish_effect(seq, input),
            Next::Send(req, step) => self.send_step(seq, req, step),
        }
    }
}

fn failed_answer(effect: &Output, why: &str) -> Option<Input> {
    match effect {
        Output::ReadStore { op, .. } => Some(Input::StoreRead { op: *op, result: StoreReadResult::Failed(why.to_string()) }),
        Output::Persist { op, .. } => Some(Input::Persisted { op: *op, result: PersistOutcome::Failed(why.to_string()) }),
        _ => None,
    }
}

fn step_failed(step: &Step, why: &str) -> Input {
    match step {
        Step::Write { op, .. } => Input::Persisted { op: *op, result: PersistOutcome::Failed(why.to_string()) },
        Step::After { op }
        | Step::AfterFull { op, .. }
        | Step::AfterFullExt { op, .. }
        | Step::TailStart { op }
        | Step::Bounds { op }
        | Step::JobHeads { op, .. }
        | Step::JobRestore { op, .. } => Input::StoreRead { op: *op, result: StoreReadResult::Failed(why.to_string()) },
    }
}

/// The statements of an extended request (a simple one becomes one statement).
fn statements(req: Request) -> Vec<crate::store::postgres::Statement> {
    match req {
        Request::Extended(s) => s,
        Request::Simple(sql) => vec![crate::store::postgres::Statement::new(sql, vec![])],
    }
}

/// The request answering an HTTP route's [`Call`].
pub fn call_request(s: &Schema, call: &Call) -> Request {
    match call {
        Call::HeadTime(id) => ops::head_time(s, id),
        Call::FirstTime(id) => ops::first_time(s, id),
        Call::ReadTail(id, n) => ops::read_tail(s, id, *n),
        Call::ReadAfter(id, since, n) => ops::read_after(s, id, *since, *n),
        Call::TailStart(id, n) => ops::tail_start(s, id, *n),
        Call::ReadRange(id, a, b, n) => ops::read_range(s, id, *a, *b, *n),
        Call::CountRange(id, a, b) => ops::count_range(s, id, *a, *b),
        Call::Gaps => ops::gaps(s),
        Call::ReadExt(id, a, b) => ops::read_ext(s, id, *a, *b),
    }
}

pub fn decode_call(call: &Call, answer: Answer) -> CallResult {
    Ok(match call {
        Call::HeadTime(_) => Value::Time(ops::decode_opt_time("head_time", answer)?),
        Call::FirstTime(_) => Value::Time(ops::decode_opt_time("first_time", answer)?),
        Call::TailStart(..) => Value::Time(ops::decode_opt_time("tail_start", answer)?),
        Call::ReadTail(..) => Value::Candles(ops::decode_candles("read_tail", answer, true)?),
        Call::ReadAfter(..) => Value::Candles(ops::decode_candles("read_after", answer, false)?),
        Call::ReadRange(..) => Value::Candles(ops::decode_candles("read_range", answer, false)?),
        Call::CountRange(..) => Value::Count(ops::decode_count("count_range", answer)?),
        Call::Gaps => Value::Gaps(ops::decode_gaps(answer)?),
        Call::ReadExt(..) => Value::Ext(ops::decode_ext(answer)?),
    })
}
