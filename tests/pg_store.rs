//! The PostgreSQL pieces against the REAL server on 127.0.0.1 (issue #13):
//! connection + auth, pipelining, errors that do not desynchronize, the
//! schema bootstrap (reference table adopted, newer version refused),
//! reconnect after `pg_terminate_backend`, and the store conformance cases
//! of `tests/store_conformance.rs` run through the pipelined connection.
//!
//! Each test works in a schema of its own and drops it after. Without a
//! reachable server a test skips (prints why), or fails under `CI=true`.

#[path = "support/netservers.rs"]
mod netservers;

use klinegate::model::Candle;
use klinegate::store::postgres::schema::drop_schema_sql;
use klinegate::store::postgres::{ops, Bootstrap, BootstrapStep, Param, PgConfig, Request, Schema, SchemaInfo, Statement};
use klinegate::store::{GapRecord, SeriesBatch, Store, StoreResult};
use netservers::{pg_or_skip, unique, PgClient};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

const SID: &str = "binance:spot:BTC/USDT:1m";

fn candle(t: i64, close: f64) -> Candle {
    Candle { candle_time: t, open: close - 1.0, high: close + 2.0, low: close - 2.0, close, volume: close * 10.0 }
}

fn batch(series_id: &str, candles: Vec<Candle>) -> SeriesBatch {
    SeriesBatch { series_id: series_id.to_string(), candles }
}

fn times(rows: &[Candle]) -> Vec<i64> {
    rows.iter().map(|c| c.candle_time).collect()
}

/// Runs bootstrap to the end on `c`.
fn bootstrap(c: &mut PgClient, schema: &Schema) -> Result<SchemaInfo, String> {
    let (mut b, mut req) = Bootstrap::start(schema.clone());
    loop {
        let answer = c.run(req);
        match b.on_answer(answer) {
            BootstrapStep::Send(next) => req = next,
            BootstrapStep::Done(info) => return Ok(info),
            BootstrapStep::Failed(why) => return Err(why),
        }
    }
}

/// A store on its own schema, dropped with it. Implements `Store` by
/// submitting each operation's request and waiting for its answer.
struct PgTestStore {
    client: RefCell<PgClient>,
    schema: Schema,
}

impl PgTestStore {
    fn open(cfg: &PgConfig, addr: SocketAddr) -> PgTestStore {
        let schema = Schema::new(&unique("kg_t")).unwrap();
        let mut client = PgClient::connect(cfg, addr, 64);
        let info = bootstrap(&mut client, &schema).expect("bootstrap");
        assert_eq!(info.version, 2);
        PgTestStore { client: RefCell::new(client), schema }
    }

    fn run(&self, req: Request) -> klinegate::store::postgres::Answer {
        self.client.borrow_mut().run(req)
    }
}

impl Drop for PgTestStore {
    fn drop(&mut self) {
        let _ = self.client.get_mut().run(Request::Simple(drop_schema_sql(&self.schema)));
    }
}

impl Store for PgTestStore {
    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        match ops::write_batches(&self.schema, batches)? {
            Some(req) => ops::decode_done("write_batches", self.run(req)),
            None => Ok(()),
        }
    }
    fn head_time(&self, sid: &str) -> StoreResult<Option<i64>> {
        ops::decode_opt_time("head_time", self.run(ops::head_time(&self.schema, sid)))
    }
    fn first_time(&self, sid: &str) -> StoreResult<Option<i64>> {
        ops::decode_opt_time("first_time", self.run(ops::first_time(&self.schema, sid)))
    }
    fn read_tail(&self, sid: &str, limit: usize) -> StoreResult<Vec<Candle>> {
        ops::decode_candles("read_tail", self.run(ops::read_tail(&self.schema, sid, limit)), true)
    }
    fn read_after(&self, sid: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        ops::decode_candles("read_after", self.run(ops::read_after(&self.schema, sid, since, limit)), false)
    }
    fn read_range(&self, sid: &str, start: i64, end: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        ops::decode_candles("read_range", self.run(ops::read_range(&self.schema, sid, start, end, limit)), false)
    }
    fn count_range(&self, sid: &str, start: i64, end: i64) -> StoreResult<u64> {
        ops::decode_count("count_range", self.run(ops::count_range(&self.schema, sid, start, end)))
    }
    fn put_gap(&mut self, gap: &GapRecord) -> StoreResult<()> {
        ops::decode_done("put_gap", self.run(ops::put_gap(&self.schema, gap)))
    }
    fn delete_gap(&mut self, sid: &str) -> StoreResult<()> {
        ops::decode_done("delete_gap", self.run(ops::delete_gap(&self.schema, sid)))
    }
    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        ops::decode_gaps(self.run(ops::gaps(&self.schema)))
    }
}

// ------------------------------------------------------------ connection

#[test]
fn pg_connects_authenticates_and_answers() {
    let Some((cfg, addr)) = pg_or_skip("pg_connects_authenticates_and_answers") else { return };
    let mut c = PgClient::connect(&cfg, addr, 8);
    assert!(c.backend_pid > 0, "BackendKeyData gives the backend pid");
    let rows = c.simple("SELECT current_database(), current_setting('application_name'), current_setting('client_encoding')");
    assert_eq!(rows[0][0], vec![Some(cfg.database.clone()), Some("klinegate".into()), Some("UTF8".into())]);
}

#[test]
fn pg_pipelined_queries_are_answered_in_order() {
    let Some((cfg, addr)) = pg_or_skip("pg_pipelined_queries_are_answered_in_order") else { return };
    let mut c = PgClient::connect(&cfg, addr, 512);
    let n = 300i64;
    let ids: Vec<_> = (0..n)
        .map(|i| c.submit(Request::Extended(vec![Statement::new("SELECT $1::int8 * 2", vec![Param::I64(i)])])))
        .collect();
    assert_eq!(c.net.driver.proto.pending(), n as usize, "all in flight at once, none answered yet");
    for (i, id) in ids.into_iter().enumerate() {
        let sets = c.wait(id).expect("answer");
        let v = klinegate::store::postgres::conn::col::i64(&sets[0].rows[0][0]).unwrap();
        assert_eq!(v, Some(2 * i as i64));
    }
    assert_eq!(c.net.driver.proto.pending(), 0);
}

#[test]
fn pg_error_mid_pipeline_does_not_desynchronize_later_answers() {
    let Some((cfg, addr)) = pg_or_skip("pg_error_mid_pipeline_does_not_desynchronize_later_answers") else { return };
    let mut c = PgClient::connect(&cfg, addr, 16);
    let q = |sql: &str, p: Vec<Param>| Request::Extended(vec![Statement::new(sql, p)]);
    let a = c.submit(q("SELECT $1::int8", vec![Param::I64(1)]));
    let b = c.submit(q("SELECT 1 / $1::int8", vec![Param::I64(0)]));
    let d = c.submit(Request::Simple("SELECT * FROM no_such_table_kg".into()));
    let e = c.submit(q("SELECT $1::text", vec![Param::Text("after".into())]));
    let f = c.submit(Request::Simple("SELECT 7; SELECT 8".into()));
    let one = |sets: Vec<klinegate::store::postgres::ResultSet>| sets[0].rows[0][0].clone();
    assert_eq!(klinegate::store::postgres::conn::col::i64(&one(c.wait(a).unwrap())).unwrap(), Some(1));
    let err = c.wait(b).unwrap_err();
    assert_eq!((err.code.as_str(), err.severity.as_str()), ("22012", "ERROR"), "{err}");
    assert!(err.message.contains("division by zero"), "{err}");
    let err = c.wait(d).unwrap_err();
    assert_eq!(err.code, "42P01", "{err}");
    assert_eq!(klinegate::store::postgres::conn::col::text(&one(c.wait(e).unwrap())).unwrap().as_deref(), Some("after"));
    let sets = c.wait(f).unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[1].rows[0][0].as_deref(), Some(&b"8"[..]));
}

#[test]
fn pg_statements_of_one_request_commit_together_or_not_at_all() {
    let Some((cfg, addr)) = pg_or_skip("pg_statements_of_one_request_commit_together_or_not_at_all") else { return };
    let mut c = PgClient::connect(&cfg, addr, 16);
    let schema = Schema::new(&unique("kg_t")).unwrap();
    bootstrap(&mut c, &schema).unwrap();
    let table = schema.table("candles");
    let ins = |t: i64| {
        Statement::new(
            format!("INSERT INTO {table} VALUES ($1, $2, 1, 1, 1, 1, 1)"),
            vec![Param::Text(SID.into()), Param::I64(t)],
        )
    };
    let bad = Statement::new("SELECT 1 / 0", vec![]);
    let err = c.run(Request::Extended(vec![ins(60), ins(120), bad])).unwrap_err();
    assert_eq!(err.code, "22012");
    assert_eq!(c.simple(&format!("SELECT count(*) FROM {table}"))[0][0][0].as_deref(), Some("0"));
    c.run(Request::Extended(vec![ins(60), ins(120)])).unwrap();
    assert_eq!(c.simple(&format!("SELECT count(*) FROM {table}"))[0][0][0].as_deref(), Some("2"));
    c.simple(&drop_schema_sql(&schema));
}

#[test]
fn pg_queue_is_bounded_and_refuses_the_next_request() {
    let Some((cfg, addr)) = pg_or_skip("pg_queue_is_bounded_and_refuses_the_next_request") else { return };
    let mut c = PgClient::connect(&cfg, addr, 3);
    let ids: Vec<_> = (0..3).map(|_| c.submit(Request::Simple("SELECT 1".into()))).collect();
    let full = c.net.driver.proto.submit(Request::Simple("SELECT 2".into())).unwrap_err();
    assert_eq!(full.max_pending, 3);
    for id in ids {
        c.wait(id).unwrap();
    }
    // Room again once answers arrived; nothing accepted was lost.
    let id = c.submit(Request::Simple("SELECT 2".into()));
    assert!(c.wait(id).is_ok());
}

#[test]
fn pg_reconnects_after_the_server_terminates_the_connection() {
    let Some((cfg, addr)) = pg_or_skip("pg_reconnects_after_the_server_terminates_the_connection") else { return };
    let mut c = PgClient::connect(&cfg, addr, 16);
    let mut admin = PgClient::connect(&cfg, addr, 16);
    let first_pid = c.backend_pid;
    // A request in flight when the backend dies fails as a disconnect.
    let slow = c.submit(Request::Simple("SELECT pg_sleep(30)".into()));
    // Wait until the backend is busy in it, then terminate it from `admin`.
    let deadline = Instant::now() + netservers::WAIT;
    loop {
        c.pump(std::time::Duration::from_millis(20));
        let busy = admin.simple(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first_pid} AND state = 'active'"));
        if busy[0][0][0].as_deref() == Some("1") {
            break;
        }
        assert!(Instant::now() < deadline, "backend never became active");
    }
    admin.simple(&format!("SELECT pg_terminate_backend({first_pid})"));
    let err = c.wait(slow).unwrap_err();
    assert!(err.is_disconnect(), "{err}");
    assert!(err.message.contains("57P01") || err.message.contains("closed"), "{err}");
    // The driver reconnects by itself (backoff), and requests flow again.
    c.wait_ready(2);
    assert_ne!(c.backend_pid, first_pid);
    assert_eq!(c.simple("SELECT 41 + 1")[0][0][0].as_deref(), Some("42"));
    assert!(c.net.driver.connects() >= 2);
}

#[test]
fn pg_requests_submitted_while_down_wait_for_the_next_connection() {
    let Some((cfg, addr)) = pg_or_skip("pg_requests_submitted_while_down_wait_for_the_next_connection") else { return };
    let mut c = PgClient::connect(&cfg, addr, 16);
    let now = Instant::now();
    c.net.driver.close(now, c.net.poll.registry(), "test closes");
    assert!(!klinegate::shell::conn::stream_driver::SansIo::is_ready(&c.net.driver.proto));
    let id = c.submit(Request::Simple("SELECT 'queued'".into()));
    let sets = c.wait(id).expect("sent after the reconnect");
    assert_eq!(sets[0].rows[0][0].as_deref(), Some(&b"queued"[..]));
    assert_eq!(c.readies, 2);
}

// --------------------------------------------------------------- schema

#[test]
fn pg_bootstrap_adopts_a_reference_table_and_refuses_a_newer_version() {
    let Some((cfg, addr)) = pg_or_skip("pg_bootstrap_adopts_a_reference_table_and_refuses_a_newer_version") else { return };
    let mut c = PgClient::connect(&cfg, addr, 16);
    let schema = Schema::new(&unique("kg_ref")).unwrap();
    let s = schema.name();
    // The reference's bootstrap (§6.2, without the TimescaleDB lines) and a row of its history.
    c.simple(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.candles (
           series_id TEXT NOT NULL, candle_time BIGINT NOT NULL,
           open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL,
           close DOUBLE PRECISION NOT NULL, volume DOUBLE PRECISION NOT NULL,
           PRIMARY KEY (series_id, candle_time));
         CREATE INDEX IF NOT EXISTS idx_{s}_candles_series_time ON {s}.candles(series_id, candle_time);
         INSERT INTO {s}.candles VALUES ('{SID}', 60, 1, 2, 0.5, 1.5, 10)"
    ));
    let info = bootstrap(&mut c, &schema).expect("reference table adopted");
    assert_eq!(info, SchemaInfo { version: 2, hypertable: false });
    // Idempotent: a second node (or a restart) bootstraps again harmlessly.
    assert_eq!(bootstrap(&mut c, &schema).unwrap().version, 2);
    let rows = ops::decode_candles("read_tail", c.run(ops::read_tail(&schema, SID, 10)), true).unwrap();
    assert_eq!(rows, vec![Candle { candle_time: 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 10.0 }]);
    c.simple(&format!("UPDATE {s}.klinegate_schema SET version = 99"));
    let why = bootstrap(&mut c, &schema).unwrap_err();
    assert!(why.contains("version 99, newer than this build's 2"), "{why}");
    c.simple(&drop_schema_sql(&schema));
}

// ------------------------------------------------ conformance (as SQLite)

fn with_store(test: &str, check: impl FnOnce(&mut PgTestStore)) {
    let Some((cfg, addr)) = pg_or_skip(test) else { return };
    let mut s = PgTestStore::open(&cfg, addr);
    check(&mut s);
}

fn seed_ten<S: Store>(s: &mut S) {
    let rows = (1..=10).map(|i| candle(i * 60, i as f64)).collect();
    s.write_batches(&[batch(SID, rows)]).unwrap();
}

#[test]
fn pg_conformance_empty_store_and_empty_writes() {
    with_store("pg_conformance_empty_store_and_empty_writes", |s| {
        assert_eq!(s.head_time(SID).unwrap(), None);
        assert_eq!(s.first_time(SID).unwrap(), None);
        assert!(s.read_tail(SID, 10).unwrap().is_empty());
        assert!(s.read_after(SID, 0, 10).unwrap().is_empty());
        assert!(s.read_range(SID, i64::MIN, i64::MAX, 10).unwrap().is_empty());
        assert_eq!(s.count_range(SID, i64::MIN, i64::MAX).unwrap(), 0);
        s.write_batches(&[]).unwrap();
        s.write_batches(&[batch(SID, vec![])]).unwrap();
        assert_eq!(s.head_time(SID).unwrap(), None);
    });
}

#[test]
fn pg_conformance_upsert_is_idempotent_and_last_write_wins() {
    with_store("pg_conformance_upsert_is_idempotent_and_last_write_wins", |s| {
        s.write_batches(&[batch(SID, vec![candle(60, 1.0), candle(120, 2.0)])]).unwrap();
        s.write_batches(&[batch(SID, vec![candle(120, 20.0)])]).unwrap();
        assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 1.0), candle(120, 20.0)]);
        // The same candle twice → one row.
        s.write_batches(&[batch(SID, vec![candle(120, 20.0)])]).unwrap();
        s.write_batches(&[batch(SID, vec![candle(120, 20.0), candle(120, 20.0)])]).unwrap();
        assert_eq!(s.count_range(SID, 0, 1000).unwrap(), 2);
        // Within one write, the later occurrence wins (batches and candles in order).
        s.write_batches(&[batch(SID, vec![candle(60, 5.0)]), batch(SID, vec![candle(60, 6.0)])]).unwrap();
        assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(120, 20.0)]);
        assert_eq!(s.read_range(SID, 60, 60, 10).unwrap(), vec![candle(60, 6.0)]);
    });
}

#[test]
fn pg_conformance_older_times_head_and_first() {
    with_store("pg_conformance_older_times_head_and_first", |s| {
        s.write_batches(&[batch(SID, vec![candle(600, 1.0)])]).unwrap();
        s.write_batches(&[batch(SID, vec![candle(60, 2.0)])]).unwrap();
        assert_eq!(s.first_time(SID).unwrap(), Some(60));
        assert_eq!(s.head_time(SID).unwrap(), Some(600));
        assert_eq!(times(&s.read_tail(SID, 10).unwrap()), vec![60, 600]);
    });
}

#[test]
fn pg_conformance_tail_after_range_count() {
    with_store("pg_conformance_tail_after_range_count", |s| {
        seed_ten(s);
        assert_eq!(s.head_time(SID).unwrap(), Some(600));
        assert_eq!(s.first_time(SID).unwrap(), Some(60));
        // Tail: the newest rows, ascending.
        assert_eq!(times(&s.read_tail(SID, 3).unwrap()), vec![480, 540, 600]);
        assert_eq!(s.read_tail(SID, 11).unwrap().len(), 10);
        assert_eq!(s.read_tail(SID, usize::MAX).unwrap().len(), 10);
        assert!(s.read_tail(SID, 0).unwrap().is_empty());
        assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(600, 10.0)]);
        // After: exclusive, first rows, ascending.
        assert_eq!(times(&s.read_after(SID, 120, 3).unwrap()), vec![180, 240, 300]);
        assert_eq!(times(&s.read_after(SID, 119, 2).unwrap()), vec![120, 180]);
        assert!(s.read_after(SID, 600, 10).unwrap().is_empty());
        assert_eq!(s.read_after(SID, i64::MIN, usize::MAX).unwrap().len(), 10);
        assert!(s.read_after(SID, i64::MAX, 10).unwrap().is_empty());
        assert!(s.read_after(SID, 0, 0).unwrap().is_empty());
        // Range: inclusive, ascending, limited.
        assert_eq!(times(&s.read_range(SID, 120, 300, 100).unwrap()), vec![120, 180, 240, 300]);
        assert_eq!(times(&s.read_range(SID, 121, 299, 100).unwrap()), vec![180, 240]);
        assert_eq!(times(&s.read_range(SID, 120, 300, 2).unwrap()), vec![120, 180]);
        assert_eq!(times(&s.read_range(SID, 300, 300, 100).unwrap()), vec![300]);
        assert!(s.read_range(SID, 300, 120, 100).unwrap().is_empty(), "inverted range");
        assert!(s.read_range(SID, 120, 300, 0).unwrap().is_empty());
        assert_eq!(s.read_range(SID, i64::MIN, i64::MAX, usize::MAX).unwrap().len(), 10);
        // Counts: inclusive.
        assert_eq!(s.count_range(SID, 120, 300).unwrap(), 4);
        assert_eq!(s.count_range(SID, 121, 299).unwrap(), 2);
        assert_eq!(s.count_range(SID, 600, 600).unwrap(), 1);
        assert_eq!(s.count_range(SID, 601, 10_000).unwrap(), 0);
        assert_eq!(s.count_range(SID, 300, 120).unwrap(), 0);
        assert_eq!(s.count_range(SID, i64::MIN, i64::MAX).unwrap(), 10);
    });
}

#[test]
fn pg_conformance_series_are_kept_apart_whatever_their_ids() {
    with_store("pg_conformance_series_are_kept_apart_whatever_their_ids", |s| {
        let a = "binance:spot:ETH/USDT:1m";
        let b = "binance:spot:ETH/USDT:5m";
        s.write_batches(&[
            batch(a, vec![candle(60, 1.0), candle(120, 2.0)]),
            batch(b, vec![candle(300, 3.0)]),
            batch(SID, vec![candle(60, 4.0)]),
        ])
        .unwrap();
        assert_eq!(s.read_tail(a, 10).unwrap(), vec![candle(60, 1.0), candle(120, 2.0)]);
        assert_eq!(s.read_tail(b, 10).unwrap(), vec![candle(300, 3.0)]);
        assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 4.0)]);
        assert_eq!(s.head_time("binance:spot:ETH/USDT:1h").unwrap(), None);
        assert_eq!(s.head_time("binance:spot:ETH/USDT").unwrap(), None);
        let ids = [
            "binance:futures:BTC/USDT:USDT:1h",
            "x:y:a/b/c:d:e:1m",
            "binance:spot:币安/USDT:1m",
            "quote'and\"double:spot:A%B_C:1m",
        ];
        let batches: Vec<SeriesBatch> =
            ids.iter().enumerate().map(|(i, id)| batch(id, vec![candle(60, i as f64)])).collect();
        s.write_batches(&batches).unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(s.read_tail(id, 10).unwrap(), vec![candle(60, i as f64)], "{id}");
        }
        assert_eq!(s.head_time("quote'and\"double:spot:A_B%C:1m").unwrap(), None);
    });
}

#[test]
fn pg_conformance_extreme_times_and_exact_values() {
    with_store("pg_conformance_extreme_times_and_exact_values", |s| {
        let rows = vec![candle(i64::MIN, 1.0), candle(-60, 2.0), candle(0, 3.0), candle(i64::MAX, 4.0)];
        s.write_batches(&[batch(SID, rows)]).unwrap();
        assert_eq!(s.first_time(SID).unwrap(), Some(i64::MIN));
        assert_eq!(s.head_time(SID).unwrap(), Some(i64::MAX));
        assert_eq!(times(&s.read_tail(SID, 2).unwrap()), vec![0, i64::MAX]);
        assert_eq!(times(&s.read_after(SID, -60, 10).unwrap()), vec![0, i64::MAX]);
        assert_eq!(times(&s.read_after(SID, i64::MIN, 1).unwrap()), vec![-60]);
        assert_eq!(times(&s.read_range(SID, -60, 0, 10).unwrap()), vec![-60, 0]);
        assert_eq!(s.count_range(SID, i64::MIN, -1).unwrap(), 2);
        let sid = "exact:spot:X/Y:1m";
        let c = Candle {
            candle_time: 60,
            open: 0.1 + 0.2,
            high: 1e300,
            low: f64::MIN_POSITIVE,
            close: 65_432.123_456_789_01,
            volume: 0.0,
        };
        s.write_batches(&[batch(sid, vec![c])]).unwrap();
        let back = s.read_tail(sid, 1).unwrap();
        assert_eq!(back.len(), 1);
        for (x, y) in [(back[0].open, c.open), (back[0].high, c.high), (back[0].low, c.low), (back[0].close, c.close)] {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    });
}

#[test]
fn pg_conformance_non_finite_values_are_refused_and_nothing_is_written() {
    with_store("pg_conformance_non_finite_values_are_refused_and_nothing_is_written", |s| {
        s.write_batches(&[batch(SID, vec![candle(60, 1.0)])]).unwrap();
        for bad_value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let bad = Candle { high: bad_value, ..candle(180, 3.0) };
            let err = s
                .write_batches(&[
                    batch(SID, vec![candle(60, 9.0), candle(120, 2.0)]),
                    batch("other:spot:X/Y:1m", vec![bad]),
                ])
                .unwrap_err();
            assert_eq!(err.op, "write_batches");
            assert!(err.to_string().contains("non-finite"), "{err}");
            assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 1.0)]);
            assert_eq!(s.head_time("other:spot:X/Y:1m").unwrap(), None);
        }
    });
}

#[test]
fn pg_conformance_gap_ledger_put_replace_delete() {
    with_store("pg_conformance_gap_ledger_put_replace_delete", |s| {
        let g = |from: i64, attempts: u32| GapRecord {
            series_id: SID.to_string(),
            from,
            to: from + 600,
            reason: "rest_failed: 503".to_string(),
            attempts,
            updated_at: 1_700_000_000,
        };
        assert!(s.gaps().unwrap().is_empty());
        s.put_gap(&g(60, 1)).unwrap();
        s.put_gap(&g(120, 2)).unwrap();
        assert_eq!(s.gaps().unwrap(), vec![g(120, 2)], "one entry per series, replaced");
        let other = GapRecord { series_id: "binance:spot:AAA/USDT:1m".into(), ..g(60, 1) };
        s.put_gap(&other).unwrap();
        assert_eq!(s.gaps().unwrap(), vec![other.clone(), g(120, 2)], "by series id, byte order");
        s.delete_gap(SID).unwrap();
        assert_eq!(s.gaps().unwrap(), vec![other]);
        s.delete_gap("never:was:there:1m").unwrap();
    });
}

// ------------------------------------------------------------ throughput

/// Figures, not asserts: candles/s upserted through one pipelined
/// connection on loopback, in flushes of `per_flush` candles with up to
/// `depth` flushes in flight. Run with
/// `cargo test --release --test pg_store -- --ignored --nocapture pg_upsert_throughput`.
#[test]
#[ignore]
fn pg_upsert_throughput() {
    let Some((cfg, addr)) = pg_or_skip("pg_upsert_throughput") else { return };
    let store = PgTestStore::open(&cfg, addr);
    let schema = store.schema.clone();
    let mut c = store.client.borrow_mut();
    for (per_flush, depth) in [(1usize, 1usize), (1, 32), (100, 1), (100, 16), (1000, 8)] {
        let total = 200_000usize.min(per_flush * 20_000);
        let flushes = total / per_flush;
        let sid = format!("bench:spot:X/Y:{per_flush}x{depth}");
        let start = Instant::now();
        let mut inflight = std::collections::VecDeque::new();
        for f in 0..flushes {
            let rows = (0..per_flush).map(|i| candle(((f * per_flush + i) * 60) as i64, 1.0)).collect();
            let req = ops::write_batches(&schema, &[batch(&sid, rows)]).unwrap().unwrap();
            if inflight.len() == depth {
                let id = inflight.pop_front().unwrap();
                ops::decode_done("write_batches", c.wait(id)).unwrap();
            }
            inflight.push_back(c.submit(req));
        }
        for id in inflight {
            ops::decode_done("write_batches", c.wait(id)).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let n = ops::decode_count("count", c.run(ops::count_range(&schema, &sid, i64::MIN, i64::MAX))).unwrap();
        assert_eq!(n as usize, flushes * per_flush);
        println!(
            "pg upsert: {per_flush:>5} candles/flush, {depth:>2} in flight: {:>9.0} candles/s ({:>7.0} flushes/s, {} candles)",
            n as f64 / secs,
            flushes as f64 / secs,
            n
        );
        if depth == 1 {
            sqlite_beside(per_flush, flushes.min(5_000));
        }
    }
}

/// The same flush shape on a file-backed SQLite store, in the same run.
fn sqlite_beside(per_flush: usize, flushes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = klinegate::store::SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let sid = "bench:spot:X/Y:1m";
    let start = Instant::now();
    for f in 0..flushes {
        let rows = (0..per_flush).map(|i| candle(((f * per_flush + i) * 60) as i64, 1.0)).collect();
        s.write_batches(&[batch(sid, rows)]).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = flushes * per_flush;
    println!(
        "sqlite:    {per_flush:>5} candles/flush,  1 at a time: {:>9.0} candles/s ({:>7.0} flushes/s, {} candles)",
        n as f64 / secs,
        flushes as f64 / secs,
        n
    );
}
