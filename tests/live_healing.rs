//! Healing with the real binary against the fake exchange's REST klines:
//! an outage is filled before the first live candle (no `gap`), a withheld
//! closing frame is fetched once by the watchdog, and after `kill -9` a
//! restart heals every missing candle from the stored head.
//!
//! The fake's REST serves the history it holds; adding history while
//! klinegate is away (rather than waiting real minutes) makes "the exchange
//! produced candles meanwhile" happen in a second.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, SPOT};
use serde_json::{json, Value};
use std::time::Duration;
use support::closed_times;
use support::live::now_minute_ms;
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;


fn price(t: i64) -> f64 {
    100.0 + ((t / MIN_MS) % 50) as f64
}

/// An exchange with BTCUSDT 1m history from two hours ago up to (not
/// including) `until_min_ago` minutes ago.
fn exchange_with_history(until_min_ago: i64) -> (FakeExchange, i64) {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    ex.fill_history(SPOT, "BTCUSDT", "1m", now - 120 * MIN_MS, now - until_min_ago * MIN_MS, price);
    (ex, now)
}

/// The rest of the history, up to the current minute, appears.
fn exchange_moves_on(ex: &FakeExchange, now: i64, from_min_ago: i64) {
    ex.fill_history(SPOT, "BTCUSDT", "1m", now - from_min_ago * MIN_MS, now + MIN_MS, price);
}

fn start(ex: &FakeExchange, dir: tempfile::TempDir, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", ""];
    args.extend_from_slice(extra);
    Live::start_in(dir, &args)
}


fn stored(path: &std::path::Path) -> Vec<(i64, f64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut st = conn.prepare("SELECT candle_time, close FROM candles WHERE series_id = ? ORDER BY candle_time").unwrap();
    st.query_map([S1], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn an_outage_is_healed_before_the_first_live_candle_without_a_gap() {
    let (ex, now) = exchange_with_history(40);
    let dir = tempfile::tempdir().unwrap();
    let live = start(&ex, dir, &["--heal-first-visit-candles", "45"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    let since = (now - 45 * MIN_MS) / 1000;
    c.send(json!({"type":"subscribe","series_id":S1,"since":since,"supports_batch":true}));
    let first = c.until(5 * SEC, |f| f["type"] == "candles_batch");
    assert_eq!(closed_times(&first), (1..=4).map(|k| since + 60 * k).collect::<Vec<_>>(), "catch-up up to 41 min ago");

    // The connection drops; meanwhile the exchange moves on 40 minutes.
    ex.reject_connections(true);
    ex.drop_all();
    std::thread::sleep(Duration::from_millis(300));
    exchange_moves_on(&ex, now, 40);
    ex.reject_connections(false);
    assert!(ex.wait_until(10 * SEC, |e| e.connect_count() >= 2 && e.subscriptions().len() == 1));
    // The first live close after the outage: the minute that just ended.
    ex.push_history_candle(SPOT, STREAM, now - MIN_MS, true);
    let last = (now - MIN_MS) / 1000;
    let got = c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f)).contains(&last));
    let times = closed_times(&got);
    let want: Vec<i64> = ((now - 40 * MIN_MS) / 1000..=last).step_by(60).collect();
    assert_eq!(times, want, "every missed candle, in order, then the live one: {got:?}");
    assert!(!got.iter().any(|f| f["type"] == "gap"), "no gap");
    let in_store: Vec<i64> = stored(&live.db_path()).iter().map(|r| r.0).collect();
    assert!(want.iter().all(|t| in_store.contains(t)), "all in the store");
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn a_withheld_close_is_fetched_once_by_the_watchdog() {
    let (ex, now) = exchange_with_history(10);
    let dir = tempfile::tempdir().unwrap();
    let live = start(&ex, dir, &["--heal-first-visit-candles", "15", "--late-close-ms", "500"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    let _ = c.until(3 * SEC, |f| f["type"] == "candle_closed" || f["type"] == "candles_batch");
    exchange_moves_on(&ex, now, 10);
    let m = now - 10 * MIN_MS; // the next candle after the stored ones
    ex.push_history_candle(SPOT, STREAM, m, false);
    // Minute m ends; its x:true never comes; minute m+1 starts.
    ex.push_history_candle(SPOT, STREAM, m + MIN_MS, false);
    let got = c.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == m / 1000);
    let times = closed_times(&got);
    assert_eq!(times.last(), Some(&(m / 1000)), "fetched over REST: {got:?}");
    assert_eq!(times.iter().filter(|t| **t == m / 1000).count(), 1);
    let fetches = ex.rest_requests_to("/api/v3/klines");
    assert!(fetches.iter().any(|r| r.param("startTime") == Some((m).to_string().as_str())), "{fetches:?}");
    // The late frame arrives: stored again (same candle), not published again.
    ex.push_history_candle(SPOT, STREAM, m, true);
    let again = c.until(Duration::from_millis(800), |_| false);
    assert!(!closed_times(&again).contains(&(m / 1000)), "not published twice: {again:?}");
    let rows = stored(&live.db_path());
    assert_eq!(rows.iter().filter(|r| r.0 == m / 1000).count(), 1, "stored exactly once");
}

#[test]
fn after_kill_9_a_restart_heals_every_missing_candle() {
    let (ex, now) = exchange_with_history(15);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("klinegate.db");
    let mut live = start(&ex, dir, &["--heal-first-visit-candles", "20"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    let _ = c.until(3 * SEC, |f| f["type"] == "candles_batch" || f["type"] == "candle_closed");
    live.kill9();
    let before: Vec<i64> = stored(&db).iter().map(|r| r.0).collect();
    assert!(!before.is_empty());
    // Fifteen minutes pass at the exchange while klinegate is down.
    exchange_moves_on(&ex, now, 15);
    let dir = live.dir.path().to_path_buf();
    let url = ex.ws_url();
    let db_arg = db.display().to_string();
    let mut again = Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "", "--db", &db_arg]);
    let _ = dir;
    let want: Vec<i64> = ((*before.first().unwrap())..=(now - MIN_MS) / 1000).step_by(60).collect();
    let mut have = Vec::new();
    for _ in 0..50 {
        have = stored(&db).iter().map(|r| r.0).collect();
        if have == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(have, want, "no closed candle missing after the restart");
    // Values are the exchange's own.
    let rows = stored(&db);
    let (t, close) = rows[rows.len() / 2];
    let expect = ex.history_candle(SPOT, "BTCUSDT", "1m", t * 1000).unwrap().close.parse::<f64>().unwrap();
    assert_eq!(close, expect);
    assert_eq!(again.terminate(10 * SEC), Some(0));
}

/// A user's first visit: the front end reads a series nobody ingests yet;
/// the job starts, fetches recent history, and a poll of the same route sees
/// it (spot and USD-M, with derived 5m consistent with its 1m base).
#[test]
fn first_visit_over_http_fills_history_within_seconds_for_spot_and_futures() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    for market in [SPOT, fake_exchange::FUTURES] {
        ex.fill_history(market, "ETHUSDT", "1m", now - 600 * MIN_MS, now + MIN_MS, price);
    }
    let dir = tempfile::tempdir().unwrap();
    let url = ex.ws_url();
    let live = Live::start_in(
        dir,
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--derived", "5m", "--heal-first-visit-candles", "300"],
    );
    for market in ["spot", "futures"] {
        let base = format!("binance:{market}:ETH/USDT:1m");
        let q = |s: &str| format!("/api/market/candles?series_id={}&limit=1000", s.replace('/', "%2F"));
        let started = std::time::Instant::now();
        let first = live.get_json(&q(&base));
        assert!(first["candles"].as_array().unwrap().is_empty(), "nothing stored before the first visit");
        let mut filled = Value::Null;
        while started.elapsed() < 10 * SEC {
            let v = live.get_json(&q(&base));
            if v["candles"].as_array().unwrap().len() >= 300 {
                filled = v;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = started.elapsed();
        let candles = filled["candles"].as_array().expect("history appeared");
        assert_eq!(candles.len(), 300, "{market}");
        eprintln!("{market}: first chart filled ({} candles) in {took:?}", candles.len());
        // Derived 5m candles roll up from the same 1m rows.
        let five = live.get_json(&q(&base.replace(":1m", ":5m")));
        let five = five["candles"].as_array().unwrap();
        assert!(five.len() >= 50, "{market}: {} 5m candles", five.len());
        let ones: std::collections::BTreeMap<i64, &Value> =
            candles.iter().map(|c| (c["candle_time"].as_i64().unwrap(), c)).collect();
        for c in five {
            let t = c["candle_time"].as_i64().unwrap();
            let minutes: Vec<&&Value> = (0..5).filter_map(|k| ones.get(&(t + 60 * k))).collect();
            if minutes.len() == 5 {
                assert_eq!(c["open"], minutes[0]["open"], "{market} 5m open at {t}");
                assert_eq!(c["close"], minutes[4]["close"], "{market} 5m close at {t}");
            }
        }
    }
    // REST connections are kept alive (#14 §5): requests to the one exchange host
    // share connections instead of paying a connect (and handshake) each.
    let (requests, connections) = (ex.rest_request_count(), ex.rest_connection_count());
    eprintln!("REST: {requests} requests over {connections} connections");
    assert!(requests >= 4, "{requests} requests");
    assert!((connections as usize) < requests, "{requests} requests over {connections} connections");
}
