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
