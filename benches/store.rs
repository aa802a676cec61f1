//! Persisting closed candles. Store level: `write_batches` of one flush — a
//! base series' batch of 1, 20 or 200 closed 1m candles plus the derived
//! candles (5m,15m,1h,4h,1d) whose buckets those minutes complete, as the
//! engine's flush builds it — through `SqliteStore` on a temp file (WAL,
//! synchronous=NORMAL), flushes cycling over 500 series for a few seconds so
//! the figure is sustained on a growing database. Baselines in the same run:
//! the same flushes into `MemoryStore`, and raw rusqlite inserts of the same
//! rows in one transaction per flush (same schema, plain INSERT, no upsert, no
//! validation). Engine level: closed frames of 500 pinned series, one per
//! series per minute, through the whole core (ingest, derived folds, one
//! transaction per job flush, publish) into `SqliteStore`, against the same
//! with `MemoryStore`, and the same through the server's PostgreSQL store
//! host (pipelined on one connection, a schema of its own, dropped after)
//! beside SQLite in the same run — skipped with a printed line when no
//! server answers at `KLINEGATE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! `cargo bench --bench store`; `KLINEGATE_BENCH_QUICK=1` for a short run.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use klinegate::cli::settings::Settings;
use klinegate::engine::{ConnId, Engine, Input, Output};
use klinegate::model::Candle;
use klinegate::replay::hosted;
use klinegate::shell::store_host::runner::PgRunner;
use klinegate::store::{MemoryStore, SeriesBatch, SqliteStore, Store};

#[path = "../tests/support/netservers.rs"]
mod netservers;
use klinegate::time::Timestamp;
use rusqlite::{params, Connection};

/// A day boundary, so every derived bucket starts complete.
const T0: i64 = 1_699_920_000;
const SERIES: usize = 500;
/// Derived timeframes in minutes, as the default `derived` setting.
const DERIVED: [(i64, &str); 5] = [(5, "5m"), (15, "15m"), (60, "1h"), (240, "4h"), (1440, "1d")];
const TARGET_PER_S: f64 = 100_000.0;

fn symbol(i: usize) -> String {
    let mut s = String::new();
    let mut n = i;
    for _ in 0..4 {
        s.insert(0, (b'A' + (n % 26) as u8) as char);
        n /= 26;
    }
    s
}

fn series_id(i: usize, tf: &str) -> String {
    format!("binance:spot:{}/USDT:{tf}", symbol(i))
}

fn candle(t: i64, k: i64) -> Candle {
    let close = 100.0 + (k % 37) as f64 * 0.25;
    Candle { candle_time: t, open: close - 0.5, high: close + 1.0, low: close - 1.0, close, volume: 3.5 + (k % 11) as f64 }
}

/// Builds the flushes: series `s`, minutes `[from, from + n)`, base batch then
/// one batch per derived timeframe with a bucket ending inside the range.
struct Flushes {
    next_minute: Vec<i64>,
    names: Vec<Vec<String>>,
    cursor: usize,
}

impl Flushes {
    fn new() -> Self {
        let names = (0..SERIES)
            .map(|i| std::iter::once("1m").chain(DERIVED.iter().map(|(_, n)| *n)).map(|tf| series_id(i, tf)).collect())
            .collect();
        Flushes { next_minute: vec![0; SERIES], names, cursor: 0 }
    }

    fn next(&mut self, n: i64) -> Vec<SeriesBatch> {
        let s = self.cursor;
        self.cursor = (self.cursor + 1) % SERIES;
        let from = self.next_minute[s];
        self.next_minute[s] += n;
        let mut batches = vec![SeriesBatch {
            series_id: self.names[s][0].clone(),
            candles: (from..from + n).map(|m| candle(T0 + m * 60, m)).collect(),
        }];
        for (d, (tf_min, _)) in DERIVED.iter().enumerate() {
            // Buckets b whose last minute (b + 1) * tf - 1 is inside [from, from + n).
            let candles: Vec<Candle> =
                (from / tf_min..(from + n) / tf_min).map(|b| candle(T0 + b * tf_min * 60, b)).collect();
            if !candles.is_empty() {
                batches.push(SeriesBatch { series_id: self.names[s][d + 1].clone(), candles });
            }
        }
        // The engine writes a flush sorted by series id.
        batches.sort_by(|a, b| a.series_id.cmp(&b.series_id));
        batches
    }
}

/// Raw rusqlite: the same schema and pragmas, plain INSERT, one transaction per flush.
struct Raw {
    conn: Connection,
}

impl Raw {
    fn open(path: &Path) -> Raw {
        let conn = Connection::open(path).expect("open raw db");
        conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
        conn.pragma_update(None, "synchronous", "NORMAL").expect("sync");
        conn.execute_batch(
            "CREATE TABLE candles (series_id TEXT NOT NULL, candle_time INTEGER NOT NULL, open REAL NOT NULL,
             high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL, volume REAL NOT NULL,
             PRIMARY KEY (series_id, candle_time)) WITHOUT ROWID;",
        )
        .expect("schema");
        Raw { conn }
    }

    fn write(&mut self, batches: &[SeriesBatch]) {
        let tx = self.conn.transaction().expect("tx");
        {
            let mut ins = tx.prepare_cached("INSERT INTO candles VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").expect("prepare");
            for b in batches {
                for c in &b.candles {
                    ins.execute(params![b.series_id, c.candle_time, c.open, c.high, c.low, c.close, c.volume])
                        .expect("insert");
                }
            }
        }
        tx.commit().expect("commit");
    }
}

/// Candles per second and µs per flush over `budget`, flushes of `n` minutes.
/// The batches are built outside the timing.
fn sustained(mut write: impl FnMut(&[SeriesBatch]), n: i64, budget: Duration) -> (f64, f64) {
    let mut flushes = Flushes::new();
    let mut candles = 0usize;
    let mut count = 0usize;
    let mut timed = Duration::ZERO;
    while timed < budget {
        let sets: Vec<Vec<SeriesBatch>> = (0..SERIES).map(|_| flushes.next(n)).collect();
        let t = Instant::now();
        for set in &sets {
            write(set);
        }
        timed += t.elapsed();
        candles += sets.iter().flatten().map(|b| b.candles.len()).sum::<usize>();
        count += sets.len();
    }
    (candles as f64 / timed.as_secs_f64(), timed.as_secs_f64() * 1e6 / count as f64)
}

fn kline_text(i: usize, minute: i64) -> String {
    let sym = symbol(i);
    let t = minute * 1000;
    format!(
        r#"{{"stream":"{lower}usdt@kline_1m","data":{{"e":"kline","E":{e},"s":"{sym}USDT","k":{{"t":{t},"T":{tt},"s":"{sym}USDT","i":"1m","f":100,"L":200,"o":"100.50000000","c":"101.25000000","h":"102.00000000","l":"99.00000000","v":"12.50000000","n":100,"x":true,"q":"1265.6","V":"6.2","Q":"632.8","B":"0"}}}}}}"#,
        lower = sym.to_ascii_lowercase(),
        e = t + 60_000,
        tt = t + 59_999,
    )
}

/// Carries the engine's store effects out, as the shell's store host does.
trait Carrier {
    /// Carries out (or sends) the store effects queued now, feeds back the
    /// answers that are in; the other outputs.
    fn drain(&mut self, e: &mut Engine, now: Timestamp) -> Vec<Output>;
    /// Waits until every effect sent is answered (answers fed back).
    fn settle(&mut self, e: &mut Engine, now: Timestamp);
    /// Effects sent and not yet answered.
    fn busy(&self) -> bool;
}

/// A synchronous store: each effect run at once.
struct Sync(Box<dyn Store>);

impl Carrier for Sync {
    fn drain(&mut self, e: &mut Engine, now: Timestamp) -> Vec<Output> {
        hosted::drain(e, self.0.as_mut(), now)
    }
    fn settle(&mut self, _: &mut Engine, _: Timestamp) {}
    fn busy(&self) -> bool {
        false
    }
}

/// The PostgreSQL store host on its own poll: effects pipelined.
struct Pg(PgRunner);

impl Carrier for Pg {
    fn drain(&mut self, e: &mut Engine, now: Timestamp) -> Vec<Output> {
        let mut others = Vec::new();
        loop {
            while let Some(o) = e.poll_output() {
                match o {
                    Output::ReadStore { .. } | Output::Persist { .. } => self.0.offer(o),
                    other => others.push(other),
                }
            }
            self.0.turn(Duration::ZERO);
            let answers = self.0.take_answers();
            if answers.is_empty() {
                return others;
            }
            for a in answers {
                e.handle(a, now);
            }
        }
    }
    fn settle(&mut self, e: &mut Engine, now: Timestamp) {
        while self.0.outstanding() > 0 {
            self.0.turn(Duration::from_millis(5));
            for a in self.0.take_answers() {
                e.handle(a, now);
            }
        }
    }
    fn busy(&self) -> bool {
        self.0.outstanding() > 0
    }
}

/// Answers the engine's connects and SUBSCRIBEs at once, until it is quiet;
/// notes which connection carries each stream.
fn answer(e: &mut Engine, store: &mut dyn Carrier, now: Timestamp, stream_conn: &mut HashMap<String, u64>) {
    loop {
        let outs: Vec<Output> = store.drain(e, now);
        if outs.is_empty() {
            if !store.busy() {
                return;
            }
            store.settle(e, now);
            continue;
        }
        for o in outs {
            let input = match o {
                Output::UpstreamConnect { conn, .. } => Input::UpstreamConnected { conn },
                Output::UpstreamSend { conn, text } => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    let Some(id) = v.get("id").and_then(|i| i.as_u64()) else { continue };
                    for s in v["params"].as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
                        stream_conn.insert(s.to_string(), conn.0);
                    }
                    Input::UpstreamText { conn, text: format!("{{\"result\":null,\"id\":{id}}}") }
                }
                _ => continue,
            };
            e.handle(input, now);
        }
    }
}

/// Closed candles persisted per second (base + derived) through the engine:
/// 500 pinned series, each closing one candle per minute of engine time.
fn engine_closed(store: &mut dyn Carrier, budget: Duration) -> (f64, f64) {
    let settings = Settings { pins: (0..SERIES).map(|i| series_id(i, "1m")).collect(), heal: false, ..Settings::default() };
    // Set up shortly before the first close, well inside the silence timeout.
    let mut now = Timestamp::from_secs(T0 as u64 + 50);
    let mut e = Engine::new(settings.to_engine_config().expect("settings"), now);
    e.handle(Input::Start, now);
    let mut stream_conn = HashMap::new();
    answer(&mut e, store, now, &mut stream_conn);
    assert_eq!(e.gauges().jobs_running, SERIES, "every pinned stream is live");
    let conns: Vec<u64> =
        (0..SERIES).map(|i| stream_conn[&format!("{}usdt@kline_1m", symbol(i).to_ascii_lowercase())]).collect();
    let mut timed = Duration::ZERO;
    let mut minute = T0;
    let mut frames = 0u64;
    while timed < budget {
        let inputs: Vec<(Timestamp, Input)> = (0..SERIES)
            .map(|i| {
                let at = Timestamp::from_millis(((minute + 60) * 1000) as u64 + 50 + i as u64 / 10);
                (at, Input::UpstreamText { conn: ConnId(conns[i]), text: kline_text(i, minute) })
            })
            .collect();
        let t = Instant::now();
        for (k, (at, input)) in inputs.into_iter().enumerate() {
            now = at;
            // The shell checks timers once per loop turn (here: per 64 frames).
            if k % 64 == 0 && e.poll_timeout().is_some_and(|d| d <= now) {
                e.handle_timeout(now);
            }
            e.handle(input, now);
            // Each flush's write carried out at once, as one shell slice
            // (PostgreSQL: sent, answers fed back as they come).
            store.drain(&mut e, now);
        }
        store.settle(&mut e, now);
        timed += t.elapsed();
        frames += SERIES as u64;
        minute += 60;
    }
    let c = e.counters();
    assert_eq!(c.upstream_rejects, 0, "{:?}", c.upstream_rejects_by_kind);
    assert_eq!(c.closed_accepted, frames, "every closed frame is accepted");
    assert_eq!(c.store_write_errors, 0);
    black_box(c.candles_persisted);
    (c.candles_persisted as f64 / timed.as_secs_f64(), frames as f64 / timed.as_secs_f64())
}

struct Row {
    name: String,
    figure: f64,
    baseline_name: String,
    baseline: f64,
    target: bool,
}

fn main() {
    let quick = std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let budget = if quick { Duration::from_millis(300) } else { Duration::from_secs(4) };
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "store: flushes of N closed 1m candles (+ the derived candles they complete) cycling over {SERIES} series, \
         SQLite on a temp file (WAL, synchronous=NORMAL){}",
        if quick { " (QUICK mode)" } else { "" }
    );
    let mut rows = Vec::new();
    let mut detail = Vec::new();
    for n in [1i64, 20, 200] {
        let mut sqlite = SqliteStore::open(&dir.path().join(format!("store-{n}.db"))).expect("open sqlite store");
        let (sq_rate, sq_us) = sustained(|b| sqlite.write_batches(b).expect("sqlite write"), n, budget);
        let mut mem = MemoryStore::new();
        let (mem_rate, mem_us) = sustained(|b| mem.write_batches(b).expect("memory write"), n, budget);
        let mut raw = Raw::open(&dir.path().join(format!("raw-{n}.db")));
        let (raw_rate, raw_us) = sustained(|b| raw.write(b), n, budget);
        detail.push(format!(
            "  batch {n:>3}: per flush SqliteStore {sq_us:.1} us, raw rusqlite {raw_us:.1} us, MemoryStore {mem_us:.2} us"
        ));
        rows.push(Row {
            name: format!("SqliteStore flush, batch {n}"),
            figure: sq_rate,
            baseline_name: "raw rusqlite, 1 tx/flush".into(),
            baseline: raw_rate,
            target: true,
        });
        rows.push(Row {
            name: format!("SqliteStore flush, batch {n}"),
            figure: sq_rate,
            baseline_name: "MemoryStore".into(),
            baseline: mem_rate,
            target: true,
        });
    }
    let (eng_sq, frames_sq) =
        engine_closed(&mut Sync(Box::new(SqliteStore::open(&dir.path().join("engine.db")).expect("open engine db"))), budget);
    let (eng_mem, frames_mem) = engine_closed(&mut Sync(Box::new(MemoryStore::new())), budget);
    detail.push(format!(
        "  engine: closed frames/s SqliteStore {frames_sq:.0}, MemoryStore {frames_mem:.0} (each frame = one job flush = one transaction)"
    ));
    rows.push(Row {
        name: "engine closed path, 500 series, SqliteStore".into(),
        figure: eng_sq,
        baseline_name: "same, MemoryStore".into(),
        baseline: eng_mem,
        target: true,
    });

    match postgres_engine(budget) {
        Ok((eng_pg, frames_pg)) => {
            detail.push(format!(
                "  engine: closed frames/s PostgreSQL {frames_pg:.0} (store host, pipelined on one connection), SqliteStore {frames_sq:.0}"
            ));
            rows.push(Row {
                name: "engine closed path, 500 series, PostgreSQL".into(),
                figure: eng_pg,
                baseline_name: "same run, SqliteStore".into(),
                baseline: eng_sq,
                target: true,
            });
        }
        Err(why) => println!("SKIPPED PostgreSQL engine figure: {why}"),
    }

    println!(
        "{:<44} {:>14} {:<26} {:>14} {:>7} {:>12} {:>7}",
        "bench (candles/s, base + derived)", "figure", "baseline", "", "ratio", "target", "result"
    );
    for r in &rows {
        let result = if !r.target {
            "-"
        } else if r.figure >= TARGET_PER_S {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "{:<44} {:>12.0}/s {:<26} {:>12.0}/s {:>6.2}x {:>12} {:>7}",
            r.name,
            r.figure,
            r.baseline_name,
            r.baseline,
            r.figure / r.baseline,
            ">= 100000/s",
            result
        );
    }
    for d in detail {
        println!("{d}");
    }
}

/// The engine's closed path through the PostgreSQL store host, on a schema
/// of its own (dropped after); `Err` (why) when no server answers.
fn postgres_engine(budget: Duration) -> Result<(f64, f64), String> {
    let url = std::env::var("KLINEGATE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut cfg = klinegate::store::postgres::parse_pg_url(&url)?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(cfg.host.as_str(), cfg.port))
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("{url}: {e}"))?;
    cfg.schema = netservers::unique("kg_bench");
    let runner = PgRunner::new(cfg.clone(), addr)?;
    runner.wait_available()?;
    let mut carrier = Pg(runner);
    let figures = engine_closed(&mut carrier, budget);
    let st = carrier.0.host_mut().stats.clone();
    println!(
        "  postgres: {} writes in {} requests (writes queued back to back share one transaction, at most {})",
        st.writes,
        st.write_requests,
        klinegate::shell::store_host::pg::MAX_GROUP
    );
    let mut c = netservers::PgClient::connect(&cfg, addr, 4);
    let _ = c.run(klinegate::store::postgres::Request::Simple(format!("DROP SCHEMA {} CASCADE", cfg.schema)));
    Ok(figures)
}
