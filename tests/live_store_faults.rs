//! Store faults against the real binary: another process holds the SQLite
//! write lock while closes arrive. The server keeps serving (forming candles
//! flow, the loop never stalls on the lock), keeps the closed candles (counted
//! as unpersisted), and persists and publishes them, in order, once the lock
//! is released. Nothing accepted is lost.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use support::closed_times;
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_locked_store_keeps_closes_and_persists_them_when_it_recovers() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let live = Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "", "--heal", "false"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(200));

    // Another process takes the write lock.
    let locker = rusqlite::Connection::open(live.db_path()).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let now_min = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / 60 * 60;
    let t0 = (now_min - 600) * 1000;
    let started = Instant::now();
    for k in 0..5 {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The loop keeps serving while the store is locked: a forming update arrives.
    ex.push_kline(STREAM, t0 + 5 * 60_000, 1.0, 2.0, 0.5, 1.6, 1.0, false);
    let during = c.until(3 * SEC, |f| f["type"] == "candle_forming");
    assert!(during.iter().any(|f| f["type"] == "candle_forming"), "forming flows during the outage: {during:?}");
    assert!(closed_times(&during).is_empty(), "nothing published before it is persisted: {during:?}");
    assert!(started.elapsed() < 3 * SEC, "the loop did not stall on the lock");
    // The flush (at most --flush-ms later) fails on the lock: counted, kept.
    let errors = |live: &Live| -> f64 {
        live.get("/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("klinegate_store_write_errors_total ").and_then(|v| v.parse().ok()))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + 5 * SEC;
    while errors(&live) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(errors(&live) >= 1.0, "store errors counted");
    let health = live.get_json("/health");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["unpersisted_candles"], 5, "{health}");

    // The lock goes away: the kept closes are persisted, then published in order.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let want: Vec<i64> = (0..5).map(|k| (t0 + k * 60_000) / 1000).collect();
    let after = c.until(15 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == *want.last().unwrap());
    assert_eq!(closed_times(&after), want, "{after:?}");
    let conn = rusqlite::Connection::open(live.db_path()).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM candles WHERE series_id = ?", [S1], |r| r.get(0)).unwrap();
    assert_eq!(n, 5, "nothing accepted was lost");
}
