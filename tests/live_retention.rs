//! `--retention` against the real binary (#15 §3), on SQLite and on
//! PostgreSQL: a store seeded with old and recent candles loses the old ones
//! in batches (the log shows each batch, never more than the batch size),
//! keeps the recent ones and the other timeframes, and `/metrics` shows what
//! was pruned and when.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;
#[path = "support/netservers.rs"]
mod netservers;
#[path = "support/pg_host_store.rs"]
mod pg_host_store;

use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::model::Candle;
use klinegate::store::{SeriesBatch, SqliteStore, Store};
use std::time::Duration;
use support::live::Live;

const BTC1: &str = "binance:spot:BTC/USDT:1m";
const ETH1: &str = "binance:spot:ETH/USDT:1m";
const BTC5: &str = "binance:spot:BTC/USDT:5m";
const SEC: Duration = Duration::from_secs(1);
const DAY: i64 = 86_400;

fn candle(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 }
}

fn now_minute() -> i64 {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    s / 60 * 60
}

/// 2,000 old + 100 recent BTC minutes, 300 old ETH minutes, 50 old 5m candles.
fn seed(store: &mut dyn Store, now: i64) {
    let old_from = now - 3 * DAY;
    store
        .write_batches(&[
            SeriesBatch { series_id: BTC1.into(), candles: (0..2000).map(|i| candle(old_from + 60 * i)).collect() },
            SeriesBatch { series_id: BTC1.into(), candles: (1..=100).map(|i| candle(now - 60 * i)).collect() },
            SeriesBatch { series_id: ETH1.into(), candles: (0..300).map(|i| candle(old_from + 60 * i)).collect() },
            SeriesBatch { series_id: BTC5.into(), candles: (0..50).map(|i| candle(old_from + 300 * i)).collect() },
        ])
        .unwrap();
}

/// Runs the binary with `--retention 1m=1d` on `store_args` and checks the
/// pass; `count` reads the store afterwards.
fn prunes_old_candles_in_batches(store_args: &[&str], count: &dyn Fn(&str) -> u64) {
    let ex = FakeExchange::start(FakeOptions::spot());
    let ws = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &ws, "--futures-ws-url", &ws, "--pin", BTC1, "--derived", "", "--heal", "false"];
    args.extend_from_slice(&["--retention", "1m=1d"]);
    args.extend_from_slice(store_args);
    let mut live = Live::start(&args);
    let done = live.wait_log("retention_pass_done", 30 * SEC).expect("a retention pass at start");
    assert!(done.contains("pruned_candles=2300"), "{done}");
    let batches: Vec<u64> = live
        .seen_logs
        .iter()
        .filter(|l| l.contains("retention_batch timeframe=1m"))
        .filter_map(|l| l.split("pruned_candles=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(batches, vec![500, 500, 500, 500, 300], "in batches of at most 500");
    assert_eq!(live.metric("klinegate_retention_pruned_candles_total"), 2300.0);
    assert_eq!(live.metric("klinegate_retention_prune_batches_total"), 5.0);
    let last = live.metric("klinegate_retention_last_prune_timestamp_seconds");
    assert!(last >= (now_minute() - 120) as f64, "last prune time is recent: {last}");
    assert_eq!(count(BTC1), 100, "the recent minutes stay");
    assert_eq!(count(ETH1), 0);
    assert_eq!(count(BTC5), 50, "a timeframe without a limit keeps everything");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn sqlite_store_prunes_old_candles_in_batches_and_keeps_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("klinegate.db");
    {
        let mut store = SqliteStore::open(&db).unwrap();
        seed(&mut store, now_minute());
    }
    let db_arg = db.display().to_string();
    let count = |id: &str| SqliteStore::open(&db).unwrap().count_range(id, i64::MIN, i64::MAX).unwrap();
    prunes_old_candles_in_batches(&["--db", &db_arg], &count);
}

#[test]
fn postgres_store_prunes_old_candles_in_batches_and_keeps_recent_ones() {
    let Some(mut store) = pg_host_store::PgHostStore::open("postgres_store_prunes_old_candles_in_batches") else { return };
    seed(&mut store, now_minute());
    let url = store.url();
    let count = |id: &str| store.count_range(id, i64::MIN, i64::MAX).unwrap();
    prunes_old_candles_in_batches(&["--store-url", &url], &count);
}
