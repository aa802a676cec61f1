//! kill -9 at random moments while closed candles stream in, many times over,
//! on one SQLite file. After every kill the file must open cleanly
//! (`PRAGMA integrity_check` = ok) and hold, exactly once and with the values
//! pushed, every closed candle a client received — the engine persists before
//! it publishes, so a delivered candle is a durable one. Candles pushed but
//! not yet flushed may be lost; nothing else may.
//!
//! The moments are drawn from a seeded generator; the seed is printed, and
//! `KLINEGATE_DURABILITY_SEED=<n>` replays a run's choices.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
const ITERATIONS: usize = 60;

/// splitmix64: enough randomness for picking moments, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The close price pushed for a candle: a function of its time, so the
/// stored row can be checked against what the exchange sent.
fn close_of(t_s: i64) -> f64 {
    100.0 + (t_s / 60 % 1000) as f64 + 0.25
}

#[derive(Default)]
struct Totals {
    pushed: usize,
    delivered: usize,
    stored: usize,
    killed_before_any_delivery: usize,
    startup_kills: usize,
}

#[test]
fn kill_9_at_random_moments_never_loses_a_delivered_candle_nor_corrupts_the_file() {
    let seed = std::env::var("KLINEGATE_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("durability seed: {seed} (KLINEGATE_DURABILITY_SEED={seed} replays these choices)");
    let mut rng = Rng(seed);

    let ex = Arc::new(FakeExchange::start(FakeOptions::spot()));
    let url = ex.ws_url();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("durable.db");
    let db_arg = db.display().to_string();
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut next_time_s = (now_s / 60 - 30_000) * 60;
    let mut delivered_ever = BTreeSet::new();
    let mut pushed_ever = BTreeSet::new();
    let mut totals = Totals::default();
    let started = Instant::now();

    for iteration in 0..ITERATIONS {
        let batch_max = rng.pick(&["1", "3", "200"]);
        let flush_ms = rng.pick(&["1", "20", "100"]);
        let kill_after = Duration::from_millis(rng.below(400));
        let gap = Duration::from_millis(1 + rng.below(4));

        let last_conn = ex.connection_infos().iter().map(|c| c.id).max().unwrap_or(0);
        let mut live = Live::start(&[
            "--db", &db_arg, "--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "",
            "--ondemand", "false", "--batch-max", batch_max, "--flush-ms", flush_ms,
        ]);
        if rng.below(6) == 0 {
            // A kill during start-up, before any stream: the file must survive that too.
            live.kill9();
            let stored = stored_candles(&db);
            assert!(delivered_ever.iter().all(|t| stored.iter().any(|c| c.0 == *t)), "iteration {iteration}");
            totals.startup_kills += 1;
            continue;
        }
        let subscribed = ex.wait_until(10 * SEC, |e| {
            e.connection_infos().iter().any(|c| c.id > last_conn && c.subscriptions.iter().any(|s| s == STREAM))
        });
        assert!(subscribed, "iteration {iteration}: the restarted server subscribes upstream");

        let mut client = live.ws();
        client.send(json!({"type":"subscribe","series_id":S1,"since":next_time_s - 60}));
        // The reader keeps every closed candle until the kill ends its socket.
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let delivered = delivered.clone();
            thread::spawn(move || {
                let end = Instant::now() + 10 * SEC;
                while Instant::now() < end {
                    match client.ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                            if v["type"] == "candle_closed" {
                                delivered.lock().unwrap().push(v["candle"].clone());
                            }
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        // Let the subscribe land before the stream starts (it has no history to send).
        thread::sleep(Duration::from_millis(20));

        let stop = Arc::new(AtomicBool::new(false));
        let pusher = {
            let (ex, stop) = (ex.clone(), stop.clone());
            let first = next_time_s;
            thread::spawn(move || {
                let mut pushed = Vec::new();
                let mut t = first;
                while !stop.load(Ordering::SeqCst) {
                    let c = close_of(t);
                    if ex.push_kline(STREAM, t * 1000, c - 0.25, c + 1.0, c - 1.0, c, 2.0, true) > 0 {
                        pushed.push(t);
                    }
                    t += 60;
                    thread::sleep(gap);
                }
                (pushed, t)
            })
        };
        thread::sleep(kill_after);
        live.kill9();
        stop.store(true, Ordering::SeqCst);
        let (pushed, after) = pusher.join().unwrap();
        next_time_s = after;
        reader.join().unwrap();

        let delivered = delivered.lock().unwrap().clone();
        let stored = stored_candles(&db);
        let stored_times: BTreeSet<i64> = stored.iter().map(|c| c.0).collect();
        for c in &delivered {
            let t = c["candle_time"].as_i64().unwrap();
            assert!(stored_times.contains(&t), "iteration {iteration} (seed {seed}): delivered candle {t} not in the store");
            assert_eq!(c["close"].as_f64(), Some(close_of(t)), "delivered what was pushed");
            delivered_ever.insert(t);
        }
        for (t, close) in &stored {
            assert_eq!(*close, close_of(*t), "iteration {iteration}: stored row {t} holds what was pushed");
        }
        pushed_ever.extend(pushed.iter().copied());
        assert!(stored_times.is_subset(&pushed_ever), "iteration {iteration}: nothing stored that was not pushed");
        assert!(delivered_ever.is_subset(&stored_times), "iteration {iteration}: every candle ever delivered is still stored");
        totals.pushed += pushed.len();
        totals.delivered += delivered.len();
        totals.stored = stored.len();
        if delivered.is_empty() {
            totals.killed_before_any_delivery += 1;
        }
    }
    eprintln!(
        "durability: {ITERATIONS} kills in {:?}; pushed {} closed candles, delivered {} (all stored), stored {} ({} lost unflushed at kills), {} kills during start-up, {} kills before any delivery",
        started.elapsed(),
        totals.pushed,
        totals.delivered,
        totals.stored,
        totals.pushed - totals.stored,
        totals.startup_kills,
        totals.killed_before_any_delivery
    );
    assert!(totals.delivered > 0, "the stream reached the client in some iterations");
}

/// Opens the file as a fresh process would, checks its integrity, and returns
/// every stored (candle_time, close) of the series; a candle stored twice fails.
fn stored_candles(db: &std::path::Path) -> Vec<(i64, f64)> {
    let conn = rusqlite::Connection::open(db).expect("the database opens after kill -9");
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check runs");
    assert_eq!(check, "ok", "PRAGMA integrity_check after kill -9");
    let dupes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM (SELECT candle_time FROM candles WHERE series_id = ?1 GROUP BY candle_time HAVING COUNT(*) > 1)",
            [S1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dupes, 0, "no candle stored twice");
    let mut stmt = conn.prepare("SELECT candle_time, close FROM candles WHERE series_id = ?1 ORDER BY candle_time").unwrap();
    let rows = stmt.query_map([S1], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect();
    rows
}
