//! Record, then replay with no database: the real binary runs with
//! `--record`, a client sees what it sees, and `klinegate replay JOURNAL`
//! (no `--db`) must give every client exactly the same frames, because the
//! store's answers (reads at job start, subscription bounds, catch-up pages,
//! write results) are inputs on the record like any other.
//!
//! Three runs the store used to make inexact: one started on an existing
//! database, one through a locked store, one with many catch-ups.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::model::{Candle, SeriesId};
use klinegate::store::{SeriesBatch, SqliteStore, Store};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use support::live::{now_minute_ms, Client, Live};
use support::replay_frames::{client_ids, closed_times, read_rest, replay_frames};

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

/// `n` one-minute candles of `series` ending `end_back` minutes before now.
fn seed(db: &Path, series: &str, n: i64, end_back: i64) -> Vec<i64> {
    let mut store = SqliteStore::open(db).expect("open the seed database");
    let last = now_minute_ms() / 1000 - 60 * end_back;
    let times: Vec<i64> = (0..n).map(|k| last - 60 * (n - 1 - k)).collect();
    let candles = times
        .iter()
        .map(|t| Candle { candle_time: *t, open: 10.0, high: 11.0, low: 9.0, close: 10.5, volume: 2.0 })
        .collect();
    let id = SeriesId::parse(series).expect("series id");
    store.write_batches(&[SeriesBatch { series_id: id.as_str().to_string(), candles }]).expect("seed write");
    times
}

fn start(ex: &FakeExchange, dir: tempfile::TempDir, journal: &Path, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let journal = journal.display().to_string();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--record", &journal];
    args.extend_from_slice(extra);
    Live::start_in(dir, &args)
}

#[test]
fn a_run_started_on_an_existing_database_replays_exactly_without_it() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.jsonl");
    // History up to two minutes ago: the job starts from the stored head,
    // heals the two missing minutes, and the client's catch-up is the store's.
    let seeded = seed(&dir.path().join("klinegate.db"), S1, 8, 2);
    let mut live = start(&ex, dir, &journal, &["--pin", S1, "--derived", ""]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let head = live.wait_log("job_started series_id=binance:spot:BTC/USDT:1m", 5 * SEC).expect("job started");
    assert!(head.contains(&format!("head_time={}", seeded[7])), "the job starts from the stored head: {head}");
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1,"since":seeded[0] - 60}));
    let mut seen = c.until(5 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&seeded[7]));
    let t = now_minute_ms();
    ex.push_kline(STREAM, t - 60_000, 10.0, 12.0, 9.0, 11.0, 3.0, true);
    seen.extend(c.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == (t - 60_000) / 1000));
    assert_eq!(live.terminate(10 * SEC), Some(0));
    read_rest(&mut c, &mut seen);
    let got = closed_times(&seen, S1);
    assert!(seeded.iter().all(|t| got.contains(t)), "catch-up from the store: {got:?}");

    let replayed = replay_frames(&journal);
    let ids = client_ids(&journal);
    assert_eq!(replayed.get(&ids[0]), Some(&seen), "the replay sends the client exactly what it saw");
}

#[test]
fn a_run_through_a_locked_store_replays_exactly_without_it() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.jsonl");
    let db = dir.path().join("klinegate.db");
    let mut live = start(&ex, dir, &journal, &["--pin", S1, "--derived", "", "--heal", "false"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    let mut seen = c.until(Duration::from_millis(300), |_| false);
    let t0 = now_minute_ms() - 10 * 60_000;
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for k in 0..3 {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = || support::live::metric_value(&live.get("/metrics").1, "klinegate_store_write_errors_total").unwrap_or(0.0);
    let until = std::time::Instant::now() + 10 * SEC;
    while errors() < 2.0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(errors() >= 2.0, "the write and a retry failed");
    locker.execute_batch("ROLLBACK").unwrap();
    let last = (t0 + 2 * 60_000) / 1000;
    seen.extend(c.until(10 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == last));
    assert_eq!(live.terminate(10 * SEC), Some(0));
    read_rest(&mut c, &mut seen);
    let want: Vec<i64> = (0..3).map(|k| (t0 + k * 60_000) / 1000).collect();
    assert_eq!(closed_times(&seen, S1), want, "published once stored, in order: {seen:?}");

    let replayed = replay_frames(&journal);
    let ids = client_ids(&journal);
    assert_eq!(replayed.get(&ids[0]), Some(&seen), "the replay goes through the same outage");
}

#[test]
fn a_run_with_many_catchups_replays_exactly_without_its_database() {
    const SERIES: [&str; 4] =
        ["binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m", "binance:spot:SOL/USDT:1m", "binance:spot:BNB/USDT:1m"];
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.jsonl");
    let db = dir.path().join("klinegate.db");
    let seeded: Vec<Vec<i64>> = SERIES.iter().map(|s| seed(&db, s, 1500, 1)).collect();
    let mut live = start(&ex, dir, &journal, &["--pin", SERIES[0], "--derived", "", "--heal", "false"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    // Six clients, each subscribing to every series from its first candle,
    // batched or not: 36,000 catch-up candles read a page at a time.
    let mut clients: Vec<Client> = (0..6).map(|_| live.ws()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for (s, times) in SERIES.iter().zip(&seeded) {
            c.send(json!({"type":"subscribe","series_id":s,"since":times[0] - 60,"supports_batch": i % 2 == 0}));
        }
    }
    let want: usize = seeded.iter().map(Vec::len).sum();
    let mut seen: Vec<Vec<Value>> = Vec::new();
    for c in clients.iter_mut() {
        let (mut frames, mut got) = (Vec::new(), 0);
        let until = std::time::Instant::now() + 20 * SEC;
        while got < want && std::time::Instant::now() < until {
            match c.next(SEC) {
                Some(f) => {
                    got += SERIES.iter().map(|s| closed_times(std::slice::from_ref(&f), s).len()).sum::<usize>();
                    frames.push(f);
                }
                None => break,
            }
        }
        seen.push(frames);
    }
    assert_eq!(live.terminate(10 * SEC), Some(0));
    for (c, frames) in clients.iter_mut().zip(seen.iter_mut()) {
        read_rest(c, frames);
    }
    for frames in &seen {
        for (s, times) in SERIES.iter().zip(&seeded) {
            assert_eq!(&closed_times(frames, s), times, "{s}: the whole history, in order, once");
        }
    }

    let replayed = replay_frames(&journal);
    let ids = client_ids(&journal);
    assert_eq!(ids.len(), 6);
    for (id, frames) in ids.iter().zip(&seen) {
        assert_eq!(replayed.get(id), Some(frames), "client {id}: the replay sends exactly what it saw");
    }
}
