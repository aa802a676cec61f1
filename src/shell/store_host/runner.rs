//! A [`PgHost`] on a `mio::Poll` of its own, for tests, benchmarks and tools
//! that have no event loop: [`PgRunner`] turns the poll by hand, and
//! [`PgRunner`] also implements the synchronous `Store` trait by sending
//! each operation THROUGH the host (writes as `Persist` effects, reads as the
//! HTTP reads' calls) and waiting for its answer — so the store conformance
//! suite runs against the very code the server runs.
//!
//! Every wait is bounded ([`PgRunner::wait_limit`]); a wait that runs out is
//! a store error, never a hang. Never used by `klinegate run`.

use super::http_reads::{Call, CallResult, Value};
use super::pg::PgHost;
use crate::engine::{Input, Output, StoreOp};
use crate::model::Candle;
use crate::store::postgres::PgConfig;
use crate::store::{GapRecord, LedgerChange, PersistOutcome, SeriesBatch, Store, StoreError, StoreResult, StoreWrite};
use mio::{Events, Poll, Token};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Inner {
    poll: Poll,
    events: Events,
    host: PgHost,
    answers: Vec<Input>,
    http: Vec<(u64, Call, CallResult)>,
    next: u64,
}

pub struct PgRunner {
    inner: RefCell<Inner>,
    pub wait_limit: Duration,
}

impl PgRunner {
    pub fn new(cfg: PgConfig, addr: SocketAddr) -> Result<PgRunner, String> {
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let host = PgHost::new(cfg, addr, Token(0), Instant::now())?;
        let inner = Inner { poll, events: Events::with_capacity(64), host, answers: Vec::new(), http: Vec::new(), next: 0 };
        Ok(PgRunner { inner: RefCell::new(inner), wait_limit: Duration::from_secs(20) })
    }

    /// Turns until the host is connected and its schema bootstrapped (or the limit).
    pub fn wait_available(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.wait_limit;
        while !self.inner.borrow().host.available() {
            if Instant::now() >= deadline {
                return Err(self.inner.borrow().host.down_reason().unwrap_or_default());
            }
            self.turn(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Hands an effect to the host (`ReadStore` / `Persist`); it goes out at
    /// the next [`PgRunner::turn`] (as the loop's pump sends a turn's effects).
    pub fn offer(&self, effect: Output) {
        let _ = self.inner.borrow_mut().host.offer(effect);
    }

    /// One turn: waits at most `max_wait` for the socket, collects answers.
    pub fn turn(&self, max_wait: Duration) {
        let mut guard = self.inner.borrow_mut();
        let i = &mut *guard;
        let now = Instant::now();
        i.host.pump(now, i.poll.registry());
        let wait = i.host.next_wakeup().map_or(max_wait, |t| t.saturating_duration_since(now).min(max_wait));
        let wait = if i.host.has_work() { Duration::ZERO } else { wait };
        let _ = i.poll.poll(&mut i.events, Some(wait));
        let now = Instant::now();
        let ready: Vec<(bool, bool)> =
            i.events.iter().map(|e| (e.is_readable() || e.is_read_closed(), e.is_writable())).collect();
        for (r, w) in ready {
            i.host.on_event(r, w, now, i.poll.registry());
        }
        i.host.pump(now, i.poll.registry());
        while let Some(a) = i.host.run_one() {
            i.answers.push(a);
        }
        while let Some(h) = i.host.poll_http() {
            i.http.push(h);
        }
    }

    /// Answers collected so far, in order (taken).
    pub fn take_answers(&self) -> Vec<Input> {
        std::mem::take(&mut self.inner.borrow_mut().answers)
    }

    /// Effects offered and not yet answered (queued, on the wire, or ready).
    pub fn outstanding(&self) -> usize {
        self.inner.borrow().host.queued()
    }

    pub fn host_mut(&self) -> std::cell::RefMut<'_, PgHost> {
        std::cell::RefMut::map(self.inner.borrow_mut(), |i| &mut i.host)
    }

    fn next_id(&self) -> u64 {
        let mut i = self.inner.borrow_mut();
        i.next += 1;
        // Far from any op id a test engine would use.
        (1 << 62) + i.next
    }

    fn persist(&self, write: StoreWrite, what: &'static str) -> StoreResult<()> {
        self.persist_counted(write, what).map(|_| ())
    }

    /// Like `persist`, returning the candles its `prune` deleted.
    fn persist_counted(&self, write: StoreWrite, what: &'static str) -> StoreResult<u64> {
        let op = StoreOp(self.next_id());
        self.offer(Output::Persist { op, write });
        let deadline = Instant::now() + self.wait_limit;
        loop {
            {
                let mut i = self.inner.borrow_mut();
                if let Some(pos) = i.answers.iter().position(|a| matches!(a, Input::Persisted { op: o, .. } if *o == op)) {
                    return match i.answers.remove(pos) {
                        Input::Persisted { result: PersistOutcome::Stored { pruned, .. }, .. } => Ok(pruned),
                        Input::Persisted { result: PersistOutcome::Failed(message), .. } => {
                            Err(StoreError { op: what, message })
                        }
                        _ => Err(StoreError { op: what, message: "unexpected answer".into() }),
                    };
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError { op: what, message: "no answer in time".into() });
            }
            self.turn(Duration::from_millis(20));
        }
    }

    fn call(&self, call: Call, what: &'static str) -> CallResult {
        let ticket = self.next_id();
        {
            let mut guard = self.inner.borrow_mut();
            let i = &mut *guard;
            i.host.read_for_http(ticket, call);
            i.host.pump(Instant::now(), i.poll.registry());
        }
        let deadline = Instant::now() + self.wait_limit;
        loop {
            {
                let mut i = self.inner.borrow_mut();
                while let Some(h) = i.host.poll_http() {
                    i.http.push(h);
                }
                if let Some(pos) = i.http.iter().position(|(t, _, _)| *t == ticket) {
                    return i.http.remove(pos).2;
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError { op: what, message: "no answer in time".into() });
            }
            self.turn(Duration::from_millis(20));
        }
    }
}

fn kind(what: &'static str) -> StoreError {
    StoreError { op: what, message: "answer of another kind".into() }
}

impl Store for PgRunner {
    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        self.persist(StoreWrite { batches: batches.to_vec(), ..StoreWrite::default() }, "write_batches")
    }
    fn head_time(&self, s: &str) -> StoreResult<Option<i64>> {
        match self.call(Call::HeadTime(s.into()), "head_time")? {
            Value::Time(t) => Ok(t),
            _ => Err(kind("head_time")),
        }
    }
    fn first_time(&self, s: &str) -> StoreResult<Option<i64>> {
        match self.call(Call::FirstTime(s.into()), "first_time")? {
            Value::Time(t) => Ok(t),
            _ => Err(kind("first_time")),
        }
    }
    fn read_tail(&self, s: &str, n: usize) -> StoreResult<Vec<Candle>> {
        match self.call(Call::ReadTail(s.into(), n), "read_tail")? {
            Value::Candles(c) => Ok(c),
            _ => Err(kind("read_tail")),
        }
    }
    fn read_after(&self, s: &str, since: i64, n: usize) -> StoreResult<Vec<Candle>> {
        match self.call(Call::ReadAfter(s.into(), since, n), "read_after")? {
            Value::Candles(c) => Ok(c),
            _ => Err(kind("read_after")),
        }
    }
    fn tail_start(&self, s: &str, n: usize) -> StoreResult<Option<i64>> {
        match self.call(Call::TailStart(s.into(), n), "tail_start")? {
            Value::Time(t) => Ok(t),
            _ => Err(kind("tail_start")),
        }
    }
    fn read_range(&self, s: &str, a: i64, b: i64, n: usize) -> StoreResult<Vec<Candle>> {
        match self.call(Call::ReadRange(s.into(), a, b, n), "read_range")? {
            Value::Candles(c) => Ok(c),
            _ => Err(kind("read_range")),
        }
    }
    fn count_range(&self, s: &str, a: i64, b: i64) -> StoreResult<u64> {
        match self.call(Call::CountRange(s.into(), a, b), "count_range")? {
            Value::Count(n) => Ok(n),
            _ => Err(kind("count_range")),
        }
    }
    fn put_gap(&mut self, gap: &GapRecord) -> StoreResult<()> {
        self.persist(StoreWrite { ledger: vec![LedgerChange::Put(gap.clone())], ..StoreWrite::default() }, "put_gap")
    }
    fn delete_gap(&mut self, s: &str) -> StoreResult<()> {
        let ledger = vec![LedgerChange::Delete(s.to_string())];
        self.persist(StoreWrite { ledger, ..StoreWrite::default() }, "delete_gap")
    }
    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        match self.call(Call::Gaps, "gaps")? {
            Value::Gaps(g) => Ok(g),
            _ => Err(kind("gaps")),
        }
    }
    fn write_ext(&mut self, rows: &[crate::store::ExtRows]) -> StoreResult<()> {
        self.persist(StoreWrite { ext: rows.to_vec(), ..StoreWrite::default() }, "write_ext")
    }
    fn read_ext(&self, s: &str, a: i64, b: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        match self.call(Call::ReadExt(s.into(), a, b), "read_ext")? {
            Value::Ext(e) => Ok(e),
            _ => Err(kind("read_ext")),
        }
    }
    fn prune_before(&mut self, timeframe: &str, before: i64, limit: usize) -> StoreResult<u64> {
        let prune = Some(crate::store::Prune { timeframe: timeframe.to_string(), before, limit });
        self.persist_counted(StoreWrite { prune, ..StoreWrite::default() }, "prune")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreQuery, StoreReadResult};

    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    fn cfg() -> PgConfig {
        crate::store::postgres::parse_pg_url("postgres://kg@127.0.0.1:1/db?schema=kg").expect("url")
    }

    /// No server: effects wait at most HOLD for a connection, then fail in
    /// the order emitted (the core's backlog policy takes over); HTTP reads
    /// fail at once; the host says why.
    #[test]
    fn without_a_server_effects_fail_after_the_hold_in_order_and_reads_at_once() {
        let runner = PgRunner::new(cfg(), closed_port()).expect("runner");
        let write = StoreWrite {
            batches: vec![SeriesBatch {
                series_id: "s".into(),
                candles: vec![Candle { candle_time: 60, open: 1.0, high: 1.0, low: 1.0, close: 1.0, volume: 1.0 }],
            }],
            ..StoreWrite::default()
        };
        let offered = Instant::now();
        runner.offer(Output::Persist { op: StoreOp(1), write });
        runner.offer(Output::ReadStore { op: StoreOp(2), query: StoreQuery::Bounds { series_id: "s".into() } });
        let mut answers = Vec::new();
        while answers.len() < 2 {
            runner.turn(Duration::from_millis(50));
            answers.extend(runner.take_answers());
        }
        assert!(offered.elapsed() >= super::super::pg::HOLD, "held for a connection first");
        match (&answers[0], &answers[1]) {
            (
                Input::Persisted { op: StoreOp(1), result: PersistOutcome::Failed(w) },
                Input::StoreRead { op: StoreOp(2), result: StoreReadResult::Failed(r) },
            ) => {
                assert!(w.contains("postgres unavailable") && w.contains("connect to"), "{w}");
                assert_eq!(w, r);
            }
            other => panic!("unexpected answers {other:?}"),
        }
        assert_eq!(runner.outstanding(), 0);
        let read = runner.head_time("s");
        assert!(read.as_ref().is_err_and(|e| e.message.contains("postgres unavailable")), "{read:?}");
        assert!(runner.host_mut().down_reason().is_some());
    }
}
