//! The whole kline through the real binary (#15 §4): closes from the fake
//! exchange (whose frames carry `q`, `n`, `V`, `Q` as Binance's do) are
//! stored with their extra fields in SQLite and served on
//! `GET /api/market/candles?fields=full`; without `fields` the reply keeps
//! the reference's six keys per candle.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;
#[path = "support/netservers.rs"]
mod netservers;
#[path = "support/pg_host_store.rs"]
mod pg_host_store;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

/// The binary with a pinned 1m series on the fake exchange, which has sent
/// three closes (volume 2, 3, 4) starting ten minutes ago: the exchange (kept
/// alive), the binary, the first close's open time (ms) and the HTTP path
/// reading the three candles.
fn three_closes(store_args: &[&str]) -> (FakeExchange, Live, i64, String) {
    let ex = FakeExchange::start(FakeOptions::spot());
    let ws = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &ws, "--futures-ws-url", &ws, "--pin", S1, "--derived", "", "--heal", "false"];
    args.extend_from_slice(store_args);
    let mut live = Live::start(&args);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    assert!(live.wait_log("job_started", 10 * SEC).is_some());
    let t0 = support::live::now_minute_ms() - 10 * 60_000;
    for k in 0..3 {
        ex.push_kline(STREAM, t0 + k * 60_000, 10.0, 12.0, 9.0, 11.0, 2.0 + k as f64, true);
    }
    let path = format!("/api/market/candles?series_id={}&limit=3", S1.replace(':', "%3A").replace('/', "%2F"));
    (ex, live, t0, path)
}

#[test]
fn closes_keep_the_whole_kline_in_the_store_and_fields_full_serves_it() {
    serves_the_whole_kline(&[]);
}

#[test]
fn on_postgres_too() {
    let Some(store) = pg_host_store::PgHostStore::open("live_full_kline_on_postgres") else { return };
    let url = store.url();
    serves_the_whole_kline(&["--store-url", &url]);
}

fn serves_the_whole_kline(store_args: &[&str]) {
    let (_ex, mut live, t0, path) = three_closes(store_args);
    let end = Instant::now() + 10 * SEC;
    let plain = loop {
        let v = live.get_json(&path);
        if v["candles"].as_array().is_some_and(|c| c.len() == 3) || Instant::now() > end {
            break v;
        }
        std::thread::sleep(SEC / 10);
    };
    let candles = plain["candles"].as_array().expect("candles");
    assert_eq!(candles.len(), 3, "{plain}");
    assert!(candles.iter().all(|c| c.as_object().unwrap().len() == 6), "the default shape: {plain}");
    let full: Value = live.get_json(&format!("{path}&fields=full"));
    for (k, c) in full["candles"].as_array().unwrap().iter().enumerate() {
        let v = 2.0 + k as f64;
        // The fake exchange's frames: q = v * c, n = 10, V = v / 2, Q = q / 2.
        assert_eq!(c["candle_time"], json!((t0 / 1000) + 60 * k as i64));
        assert_eq!(c["volume"], json!(v));
        assert_eq!(c["quote_volume"], json!(v * 11.0), "{c}");
        assert_eq!(c["trades"], json!(10));
        assert_eq!(c["taker_buy_base_volume"], json!(v / 2.0));
        assert_eq!(c["taker_buy_quote_volume"], json!(v * 11.0 / 2.0));
    }
    let (status, body) = live.get(&format!("{path}&fields=everything"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

/// `fields=full` on the WebSocket `subscribe`: a full subscriber gets the
/// four extra fields on its catch-up (single frames and `candles_batch`), on
/// live `candle_closed` and on `candle_forming`; a default subscriber of the
/// same series gets the reference's six keys; a bad `fields` is a
/// `bad_request`.
#[test]
fn ws_subscribe_with_fields_full_gets_the_whole_kline_on_catchup_and_live() {
    ws_fields_full(&[]);
}

/// The same on PostgreSQL (the catch-up's full read is two pipelined requests there).
#[test]
fn ws_fields_full_on_postgres_too() {
    let Some(store) = pg_host_store::PgHostStore::open("live_full_kline_ws_on_postgres") else { return };
    let url = store.url();
    ws_fields_full(&["--store-url", &url]);
}

fn ws_fields_full(store_args: &[&str]) {
    let (ex, mut live, t0, path) = three_closes(store_args);
    let end = Instant::now() + 10 * SEC;
    while live.get_json(&path)["candles"].as_array().is_none_or(|c| c.len() < 3) && Instant::now() < end {
        std::thread::sleep(SEC / 10);
    }
    let since = t0 / 1000 - 60;
    let (mut full, mut batch, mut plain) = (live.ws(), live.ws(), live.ws());
    full.send(json!({"type":"subscribe","series_id":S1,"since":since,"fields":"full"}));
    batch.send(json!({"type":"subscribe","series_id":S1,"since":since,"fields":"full","supports_batch":true}));
    plain.send(json!({"type":"subscribe","series_id":S1,"since":since}));
    let last = t0 / 1000 + 120;
    let is_last = |f: &Value| f["candle"]["candle_time"] == json!(last);
    // The fake exchange's frames: q = v * c, n = 10, V = v / 2, Q = q / 2.
    let check_full = |c: &Value, v: f64| {
        // The keys (their order, the HTTP reply's, is checked byte for byte in
        // `wire::client`'s tests; `Value` here sorts them).
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = ["candle_time", "open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume"];
        want.sort_unstable();
        assert_eq!(keys, want, "the HTTP fields=full keys: {c}");
        assert_eq!(c["volume"], json!(v), "{c}");
        assert_eq!(c["quote_volume"], json!(v * 11.0), "{c}");
        assert_eq!(c["trades"], json!(10), "{c}");
        assert_eq!(c["taker_buy_base_volume"], json!(v / 2.0), "{c}");
        assert_eq!(c["taker_buy_quote_volume"], json!(v * 11.0 / 2.0), "{c}");
    };
    let got = full.until(10 * SEC, is_last);
    let closed: Vec<&Value> = got.iter().filter(|f| f["type"] == "candle_closed").collect();
    assert_eq!(closed.len(), 3, "{got:?}");
    for (k, f) in closed.iter().enumerate() {
        check_full(&f["candle"], 2.0 + k as f64);
    }
    let got = batch.until(10 * SEC, |f| f["type"] == "candles_batch");
    let candles = got.last().and_then(|f| f["candles"].as_array()).expect("a candles_batch");
    assert_eq!(candles.len(), 3, "{got:?}");
    for (k, c) in candles.iter().enumerate() {
        check_full(c, 2.0 + k as f64);
    }
    let got = plain.until(10 * SEC, is_last);
    assert_eq!(got.iter().filter(|f| f["type"] == "candle_closed").count(), 3, "{got:?}");
    assert!(got.iter().all(|f| f["candle"].as_object().is_none_or(|c| c.len() == 6)), "the default shape: {got:?}");

    // Live: a close, then a forming update of the next minute.
    let live_t = t0 + 3 * 60_000;
    ex.push_kline(STREAM, live_t, 10.0, 12.0, 9.0, 11.0, 5.0, true);
    ex.push_kline(STREAM, live_t + 60_000, 10.0, 12.0, 9.0, 11.0, 6.0, false);
    let forming = |f: &Value| f["type"] == "candle_forming";
    for (client, is_full) in [(&mut full, true), (&mut plain, false)] {
        // The close waits for its flush; the forming update may come first.
        let mut got = client.until(10 * SEC, |f| f["type"] == "candle_closed");
        if !got.iter().any(forming) {
            got.extend(client.until(10 * SEC, forming));
        }
        let closed = got.iter().find(|f| f["type"] == "candle_closed").expect("the live close");
        let formed = got.iter().find(|f| forming(f)).expect("the forming update");
        assert_eq!(closed["candle"]["candle_time"], json!(live_t / 1000));
        if is_full {
            check_full(&closed["candle"], 5.0);
            check_full(&formed["candle"], 6.0);
        } else {
            assert_eq!(closed["candle"].as_object().unwrap().len(), 6, "{closed}");
            assert_eq!(formed["candle"].as_object().unwrap().len(), 6, "{formed}");
        }
    }
    plain.send(json!({"type":"subscribe","series_id":S1,"fields":"everything"}));
    let err = plain.until(10 * SEC, |f| f["type"] == "error");
    assert_eq!(err.last(), Some(&json!({"type":"error","code":"bad_request","message":"invalid fields"})));
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
