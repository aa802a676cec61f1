//! Store reads for HTTP routes on a store the loop cannot read synchronously
//! (PostgreSQL). The routes are written against the synchronous `Store`
//! trait; instead of a second version of each, a route runs against a
//! [`ReadCache`]: every read it asks for that the cache does not hold is
//! noted as a [`Call`] and answered with an error. The shell fetches the
//! missed calls, fills the cache and runs the route again, until it asks for
//! nothing new (at most [`MAX_ROUNDS`] rounds; past that the last reply
//! stands, whose misses read as store errors). Routes have no side effects,
//! so running one again changes nothing but its answer.
//!
//! Owns the call keys and the cache. Never performs a read and never writes.

use crate::model::Candle;
use crate::store::{GapRecord, SeriesBatch, Store, StoreError, StoreResult};
use std::cell::RefCell;
use std::collections::HashMap;

/// A route that still misses reads after this many fetch rounds is answered
/// with what it has (its misses read as store errors).
pub const MAX_ROUNDS: usize = 4;

/// One read a route asked for (a `Store` method and its arguments).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    HeadTime(String),
    FirstTime(String),
    ReadTail(String, usize),
    ReadAfter(String, i64, usize),
    TailStart(String, usize),
    ReadRange(String, i64, i64, usize),
    CountRange(String, i64, i64),
    Gaps,
    /// The whole kline's fields in a range (`fields=full`).
    ReadExt(String, i64, i64),
}

/// What a [`Call`] returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Time(Option<i64>),
    Candles(Vec<Candle>),
    Count(u64),
    Gaps(Vec<GapRecord>),
    Ext(Vec<(i64, crate::kline_ext::KlineExt)>),
}

pub type CallResult = Result<Value, StoreError>;

/// A read-only `Store` answering from fetched calls and noting the misses.
#[derive(Default)]
pub struct ReadCache {
    known: HashMap<Call, CallResult>,
    missed: RefCell<Vec<Call>>,
}

const PENDING: &str = "read not fetched yet";

impl ReadCache {
    pub fn insert(&mut self, call: Call, result: CallResult) {
        self.known.insert(call, result);
    }

    /// The calls missed since the last take, each once, in the order asked.
    pub fn take_missed(&self) -> Vec<Call> {
        let mut out: Vec<Call> = Vec::new();
        for c in self.missed.borrow_mut().drain(..) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    fn get(&self, op: &'static str, call: Call) -> CallResult {
        match self.known.get(&call) {
            Some(r) => r.clone(),
            None => {
                self.missed.borrow_mut().push(call);
                Err(StoreError { op, message: PENDING.to_string() })
            }
        }
    }
}

fn mismatch(op: &'static str) -> StoreError {
    StoreError { op, message: "answer of another kind".to_string() }
}

fn time(op: &'static str, r: CallResult) -> StoreResult<Option<i64>> {
    match r? {
        Value::Time(t) => Ok(t),
        _ => Err(mismatch(op)),
    }
}

fn candles(op: &'static str, r: CallResult) -> StoreResult<Vec<Candle>> {
    match r? {
        Value::Candles(c) => Ok(c),
        _ => Err(mismatch(op)),
    }
}

fn read_only(op: &'static str) -> StoreError {
    StoreError { op, message: "HTTP reads never write".to_string() }
}

impl Store for ReadCache {
    fn write_batches(&mut self, _: &[SeriesBatch]) -> StoreResult<()> {
        Err(read_only("write_batches"))
    }
    fn head_time(&self, s: &str) -> StoreResult<Option<i64>> {
        time("head_time", self.get("head_time", Call::HeadTime(s.to_string())))
    }
    fn first_time(&self, s: &str) -> StoreResult<Option<i64>> {
        time("first_time", self.get("first_time", Call::FirstTime(s.to_string())))
    }
    fn read_tail(&self, s: &str, limit: usize) -> StoreResult<Vec<Candle>> {
        candles("read_tail", self.get("read_tail", Call::ReadTail(s.to_string(), limit)))
    }
    fn read_after(&self, s: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        candles("read_after", self.get("read_after", Call::ReadAfter(s.to_string(), since, limit)))
    }
    fn tail_start(&self, s: &str, count: usize) -> StoreResult<Option<i64>> {
        time("tail_start", self.get("tail_start", Call::TailStart(s.to_string(), count)))
    }
    fn read_range(&self, s: &str, start: i64, end: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        candles("read_range", self.get("read_range", Call::ReadRange(s.to_string(), start, end, limit)))
    }
    fn count_range(&self, s: &str, start: i64, end: i64) -> StoreResult<u64> {
        match self.get("count_range", Call::CountRange(s.to_string(), start, end))? {
            Value::Count(n) => Ok(n),
            _ => Err(mismatch("count_range")),
        }
    }
    fn put_gap(&mut self, _: &GapRecord) -> StoreResult<()> {
        Err(read_only("put_gap"))
    }
    fn delete_gap(&mut self, _: &str) -> StoreResult<()> {
        Err(read_only("delete_gap"))
    }
    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        match self.get("gaps", Call::Gaps)? {
            Value::Gaps(g) => Ok(g),
            _ => Err(mismatch("gaps")),
        }
    }
    fn read_ext(&self, s: &str, start: i64, end: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        match self.get("read_ext", Call::ReadExt(s.to_string(), start, end))? {
            Value::Ext(e) => Ok(e),
            _ => Err(mismatch("read_ext")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Answers a call from a synchronous store (what the PG host does remotely).
    fn fetch(store: &dyn Store, call: &Call) -> CallResult {
        Ok(match call {
            Call::HeadTime(s) => Value::Time(store.head_time(s)?),
            Call::FirstTime(s) => Value::Time(store.first_time(s)?),
            Call::ReadTail(s, n) => Value::Candles(store.read_tail(s, *n)?),
            Call::ReadAfter(s, a, n) => Value::Candles(store.read_after(s, *a, *n)?),
            Call::TailStart(s, n) => Value::Time(store.tail_start(s, *n)?),
            Call::ReadRange(s, a, b, n) => Value::Candles(store.read_range(s, *a, *b, *n)?),
            Call::CountRange(s, a, b) => Value::Count(store.count_range(s, *a, *b)?),
            Call::Gaps => Value::Gaps(store.gaps()?),
            Call::ReadExt(s, a, b) => Value::Ext(store.read_ext(s, *a, *b)?),
        })
    }

    #[test]
    fn a_reader_sees_misses_then_the_fetched_answers() {
        let mut real = MemoryStore::new();
        let c = Candle { candle_time: 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 };
        real.write_batches(&[SeriesBatch { series_id: "s".into(), candles: vec![c] }]).unwrap();
        // A reader whose second read depends on its first.
        let reader = |st: &dyn Store| -> StoreResult<Vec<Candle>> {
            let head = st.head_time("s")?.unwrap_or(0);
            st.read_range("s", head, head, 10)
        };
        let mut cache = ReadCache::default();
        let mut rounds = 0;
        let result = loop {
            let r = reader(&cache);
            let missed = cache.take_missed();
            if missed.is_empty() {
                break r;
            }
            rounds += 1;
            assert!(rounds <= MAX_ROUNDS);
            for call in missed {
                let answer = fetch(&real, &call);
                cache.insert(call, answer);
            }
        };
        assert_eq!(rounds, 2);
        assert_eq!(result.unwrap(), vec![c]);
        assert!(cache.clone_writes_refused());
    }

    impl ReadCache {
        fn clone_writes_refused(&mut self) -> bool {
            self.write_batches(&[]).is_err() && self.put_gap(&GapRecord {
                series_id: "s".into(), from: 0, to: 0, reason: String::new(), attempts: 0, updated_at: 0,
            }).is_err()
        }
    }
}
