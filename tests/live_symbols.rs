//! Issue #12 points 4, 6 and two items of 7, against the real binary and the
//! fake exchange over loopback: unknown symbols are answered (and cost no
//! stream and no REST when the market's symbol list is known), a `-1121`
//! ends the job, paging stops at the first empty page, a first visit to a
//! derived timeframe is filled from the exchange's native interval klines,
//! derived volumes print the exchange's exact decimal, and every
//! `heal_started` ends in a `heal_done`/`heal_failed`/`heal_cancelled` line.
//! Every wait is bounded.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, FakeSymbol, SPOT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::live::now_minute_ms;
use support::live::{Client, Live};

const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;


fn price(t: i64) -> f64 {
    100.0 + ((t / MIN_MS) % 50) as f64
}

/// klinegate on `ex`, no pins, nothing derived unless `extra` says so.
fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", ""];
    if !extra.contains(&"--derived") {
        args.extend_from_slice(&["--derived", ""]);
    }
    args.extend_from_slice(extra);
    Live::start(&args)
}

fn subscribe(c: &mut Client, series: &str) {
    c.send(json!({"type":"subscribe","series_id":series,"supports_batch":true}));
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Every `heal_started` line of `series` has a matching end line.
fn heal_lines(live: &mut Live, series: &str) -> (usize, usize) {
    live.drain_logs();
    let of = |l: &&String| l.contains(&format!("series_id={series} "));
    let started = live.seen_logs.iter().filter(of).filter(|l| l.contains("heal_started")).count();
    let ended = live
        .seen_logs
        .iter()
        .filter(of)
        .filter(|l| l.contains("heal_done") || l.contains("heal_failed") || l.contains("heal_cancelled"))
        .count();
    (started, ended)
}

// ------------------------------------------------------------- point 7: heal ends

#[test]
fn a_job_reaped_or_evicted_mid_heal_logs_heal_cancelled() {
    const ETH: &str = "binance:spot:ETH/USDT:1m";
    const SOL: &str = "binance:spot:SOL/USDT:1m";
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    for sym in ["ETHUSDT", "SOLUSDT", "XRPUSDT"] {
        ex.fill_history(SPOT, sym, "1m", now - 100 * MIN_MS, now, price);
    }
    // Every REST answer takes 4 s: the heals are still running when their jobs go.
    ex.rest_delay(4 * SEC);
    let mut live = start(&ex, &["--idle-ttl", "1", "--max-ondemand-jobs", "1", "--heal-first-visit-candles", "50"]);

    // Reaped: subscribe, leave, the idle TTL (1 s) ends the job mid-heal.
    let mut c = live.ws();
    subscribe(&mut c, ETH);
    assert!(live.wait_log(&format!("heal_started series_id={ETH} "), 10 * SEC).is_some());
    c.send(json!({"type":"unsubscribe","series_id":ETH}));
    let stopped = live.wait_log(&format!("job_stopped series_id={ETH} "), 10 * SEC).expect("reaped");
    assert!(stopped.contains("reason=reaped"), "{stopped}");
    let cancelled = live.wait_log(&format!("heal_cancelled series_id={ETH} "), 2 * SEC);
    assert!(cancelled.is_some_and(|l| l.contains("cause=reaped")), "no heal_cancelled line for the reaped job");

    // Evicted: the one on-demand slot goes to the next series while SOL heals.
    subscribe(&mut c, SOL);
    assert!(live.wait_log(&format!("heal_started series_id={SOL} "), 10 * SEC).is_some());
    c.send(json!({"type":"unsubscribe","series_id":SOL}));
    subscribe(&mut c, "binance:spot:XRP/USDT:1m");
    let stopped = live.wait_log(&format!("job_stopped series_id={SOL} "), 10 * SEC).expect("evicted");
    assert!(stopped.contains("reason=evicted"), "{stopped}");
    assert!(live.wait_log(&format!("heal_cancelled series_id={SOL} "), 2 * SEC).is_some_and(|l| l.contains("cause=evicted")));

    for series in [ETH, SOL] {
        let (started, ended) = heal_lines(&mut live, series);
        assert!(started >= 1 && started == ended, "{series}: {started} heal_started, {ended} ends");
    }
}

// ------------------------------------------------------ point 4: unknown symbols

const TYPO: &str = "binance:spot:BTC/USTD:1m";
const TYPO_ERROR: &str = "unknown symbol: BTC/USTD is not listed on binance spot";

fn error_frame(message: &str) -> Value {
    json!({"type":"error","code":"bad_request","message":message})
}

/// The first frame of `c` that is an `error`, within `timeout`.
fn next_error(c: &mut Client, timeout: Duration) -> Option<Value> {
    c.until(timeout, |f| f["type"] == "error").into_iter().find(|f| f["type"] == "error")
}

fn listed_spot(ex: &FakeExchange) {
    ex.set_markets(SPOT, vec![FakeSymbol::new("BTC", "USDT"), FakeSymbol::new("ETH", "USDT")]);
}

#[test]
fn a_symbol_the_known_list_lacks_is_answered_and_costs_no_stream_and_no_rest() {
    let ex = FakeExchange::start(FakeOptions::spot());
    listed_spot(&ex);
    let mut live = start(&ex, &["--max-client-messages-per-s", "1000"]);
    assert!(live.wait_log("symbols_listed market=spot count=2", 10 * SEC).is_some(), "the spot list is fetched at start");

    // 256 made-up symbols from one unauthenticated client.
    let mut flood = live.ws();
    for i in 0..256 {
        subscribe(&mut flood, &format!("binance:spot:FAKE{i}/USDT:1m"));
    }
    let mut answered = 0;
    let end = Instant::now() + 10 * SEC;
    while answered < 256 && Instant::now() < end {
        match flood.next(Duration::from_millis(250)) {
            Some(f) if f["message"].as_str().is_some_and(|m| m.starts_with("unknown symbol: FAKE")) => answered += 1,
            _ => {}
        }
    }
    std::thread::sleep(SEC); // anything they would have started has had time to
    let klines = ex.rest_requests_to("/klines").len();
    let streams = live.metric("klinegate_upstream_streams");
    eprintln!("256 made-up symbols: {answered} answered, {klines} REST klines requests, {streams} upstream streams");
    assert_eq!(answered, 256, "every made-up symbol is answered");
    assert_eq!(klines, 0, "no REST request for a symbol the list lacks");
    assert_eq!(streams, 0.0, "no upstream stream for a symbol the list lacks");
    assert!(ex.subscriptions().is_empty(), "nothing subscribed upstream: {:?}", ex.subscriptions());
    assert!(!live.seen_logs.iter().any(|l| l.contains("job_started")), "no job started");

    // The exact answers: the WebSocket error frame and the HTTP 404 with its detail.
    let mut c = live.ws();
    subscribe(&mut c, TYPO);
    assert_eq!(next_error(&mut c, 5 * SEC), Some(error_frame(TYPO_ERROR)));
    let (status, body) = live.get(&format!("/api/market/candles?series_id={TYPO}"));
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (404, json!({"detail": TYPO_ERROR})));
    assert!(ex.rest_requests_to("/klines").is_empty() && ex.subscriptions().is_empty());
}

#[test]
fn without_a_list_the_first_invalid_symbol_answer_ends_the_job_and_its_subscriptions() {
    // No markets scripted: the fake's exchangeInfo lists nothing, which is not a usable list;
    // its klines answer BTCUSTD with Binance's -1121.
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.rest_fail_symbol_with("BTCUSTD", 400, r#"{"code":-1121,"msg":"Invalid symbol."}"#);
    let mut live = start(&ex, &["--derived", "5m"]);
    assert!(live.wait_log("symbols_list_ignored market=spot", 10 * SEC).is_some());

    let mut a = live.ws();
    let mut b = live.ws();
    subscribe(&mut a, TYPO);
    subscribe(&mut b, "binance:spot:BTC/USTD:5m");
    // The job starts (nothing says the symbol is unknown yet); its first history page gets -1121.
    assert_eq!(next_error(&mut a, 10 * SEC), Some(error_frame(TYPO_ERROR)));
    assert_eq!(next_error(&mut b, 5 * SEC), Some(error_frame(TYPO_ERROR)));
    assert!(live.wait_log("job_stopped series_id=binance:spot:BTC/USTD:1m reason=unlisted", 5 * SEC).is_some());
    assert!(
        eventually(5 * SEC, || !ex.subscriptions().iter().any(|s| s.starts_with("btcustd@"))),
        "the stream is unsubscribed upstream: {:?}",
        ex.subscriptions()
    );
    assert!(eventually(5 * SEC, || live.metric("klinegate_subscriptions") == 0.0), "both subscriptions removed");
    // The 1m heal's first page and the 5m fill's first page went out together; nothing after.
    std::thread::sleep(Duration::from_millis(500));
    let spent = ex.rest_requests_to("/klines").len();
    assert!((1..=2).contains(&spent), "one request per fetch that was already under way ({spent})");

    // Remembered: asking again is answered at once, with no new job and no REST.
    subscribe(&mut a, TYPO);
    assert_eq!(next_error(&mut a, 5 * SEC), Some(error_frame(TYPO_ERROR)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ex.rest_requests_to("/klines").len(), spent, "no new request for a refused symbol");
    for series in ["binance:spot:BTC/USTD:1m", "binance:spot:BTC/USTD:5m"] {
        let (started, ended) = heal_lines(&mut live, series);
        assert_eq!(started, ended, "{series}: every heal that met -1121 (or was cut short by it) has its end line");
    }
}

#[test]
fn the_list_arriving_later_ends_a_job_it_does_not_list() {
    let ex = FakeExchange::start(FakeOptions::spot());
    listed_spot(&ex);
    // The first spot exchangeInfo fails: the list is not known when the client subscribes.
    ex.rest_fail_next_on("/api/v3/exchangeInfo", 1, 503, "{}");
    let mut live = start(&ex, &["--heal", "false"]);
    assert!(live.wait_log("market_directory_fetch_failed path=/api/v3/exchangeInfo", 10 * SEC).is_some());
    let mut c = live.ws();
    subscribe(&mut c, TYPO);
    assert!(ex.wait_for_subscriptions(&["btcustd@kline_1m"], 10 * SEC), "the job starts while nothing is known");
    // The retry (5 s after the failure) brings the list, which ends the job.
    assert!(live.wait_log("symbols_listed market=spot count=2", 15 * SEC).is_some());
    assert_eq!(next_error(&mut c, 5 * SEC), Some(error_frame(TYPO_ERROR)));
    assert!(eventually(5 * SEC, || ex.subscriptions().is_empty()), "unsubscribed upstream: {:?}", ex.subscriptions());
    assert!(eventually(5 * SEC, || live.metric("klinegate_subscriptions") == 0.0));
}

// ---------------------------------------------- point 4: paging stops at the listing

#[test]
fn paging_over_history_stops_at_the_first_empty_page_not_at_heal_max_candles() {
    const SOL: &str = "binance:spot:SOL/USDT:1m";
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    // SOLUSDT was listed 300 minutes ago: nothing exists before that.
    ex.fill_history(SPOT, "SOLUSDT", "1m", now - 300 * MIN_MS, now, price);
    // A first visit 20,000 minutes deep: 20 pages of 1,000 if paging went on to the end.
    let mut live = start(&ex, &["--heal-max-candles", "20000", "--heal-first-visit-candles", "20000"]);
    let mut c = live.ws();
    let since = (now - 20_000 * MIN_MS) / 1000;
    c.send(json!({"type":"subscribe","series_id":SOL,"since":since,"supports_batch":true}));
    let frames = c.until(15 * SEC, |f| f["type"] == "candles_batch");
    let batch = frames.iter().find(|f| f["type"] == "candles_batch").expect("catch-up");
    let got = batch["candles"].as_array().map_or(0, Vec::len);
    assert!(got >= 299, "the whole listed history comes back ({got})");
    assert!(eventually(5 * SEC, || {
        let (started, ended) = heal_lines(&mut live, SOL);
        started >= 1 && started == ended
    }));
    std::thread::sleep(2 * SEC); // a heal still to come (a hole retried) has had time to start
    let (started, ended) = heal_lines(&mut live, SOL);
    assert_eq!(started, ended);
    let requests = ex.rest_requests_to("/klines");
    let pages = requests.len();
    eprintln!("klines pages for 20,000 minutes asked, 300 listed: {pages}");
    assert!(pages <= 2, "paging stops at the listing, not after 20 pages of nothing ({pages} requests)");
}

// ------------------------------------- point 6: derived timeframes on a first visit

const BTC: &str = "binance:spot:BTC/USDT";

/// Closed candles the HTTP API serves for `series` (limit 5000).
fn served(live: &Live, series: &str) -> Vec<Value> {
    let v = live.get_json(&format!("/api/market/candles?series_id={series}&limit=5000"));
    v["candles"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_first_visit_to_a_derived_timeframe_fills_2000_bars_from_the_native_interval() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    let day = 1440 * MIN_MS;
    // The exchange holds ~2,100 candles of every interval.
    for (interval, step) in [("1m", MIN_MS), ("5m", 5 * MIN_MS), ("1h", 60 * MIN_MS), ("4h", 240 * MIN_MS), ("1d", day)] {
        ex.fill_history(SPOT, "BTCUSDT", interval, now - 2100 * step, now + step, price);
    }
    let mut live = start(&ex, &["--derived", "5m,15m,1h,4h,1d"]);
    let mut c = live.ws();
    let mut counts = Vec::new();
    for tf in ["5m", "1h", "4h", "1d"] {
        let series = format!("{BTC}:{tf}");
        subscribe(&mut c, &series);
        let frames = c.until(10 * SEC, |f| f["type"] == "candles_batch" && f["series_id"] == series.as_str());
        let caught_up = frames.iter().any(|f| f["type"] == "candles_batch");
        let filled = live.wait_log(&format!("heal_done series_id={series} "), 10 * SEC).is_some();
        counts.push((tf, served(&live, &series).len(), caught_up, filled));
    }
    eprintln!("bars after a first visit (timeframe, bars, catch-up sent, fill done): {counts:?}");
    let counts: Vec<(&str, usize)> = counts
        .into_iter()
        .map(|(tf, n, caught_up, filled)| {
            assert!(caught_up && filled, "{tf}: catch-up {caught_up}, fill done {filled}");
            (tf, n)
        })
        .collect();
    for (tf, n) in &counts {
        assert!((1999..=2000).contains(n), "{tf}: {n} bars, not ~2,000 from the native interval");
    }
    let native = ex.rest_requests_to("/klines").iter().filter(|r| r.params.get("interval").is_some_and(|i| i != "1m")).count();
    assert!(native <= 8, "two pages per timeframe at most ({native})");
}

#[test]
fn a_stored_derived_candle_is_never_written_over_by_a_different_value() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    ex.fill_history(SPOT, "BTCUSDT", "1m", now - 100 * MIN_MS, now + MIN_MS, price);
    let dir = tempfile::tempdir().unwrap();
    let url = ex.ws_url();
    let args = ["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", "", "--derived", "5m", "--heal-first-visit-candles", "60"];
    let mut live = Live::start_in(dir, &args);
    // A 5m bucket the 1m history will also complete is already stored with other values.
    let bucket = (now - 30 * MIN_MS) / 1000 / 300 * 300;
    let five = format!("{BTC}:5m");
    let seeded = json!({"series_id": five, "candle": {"candle_time": bucket, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 42.0}});
    let (status, body) = live.post("/api/market/ingest/candle_closed", &seeded.to_string());
    assert_eq!(status, 200, "{body}");
    // The 1m first-visit heal rolls 60 minutes up into 5m buckets, that one included.
    let mut c = live.ws();
    subscribe(&mut c, &format!("{BTC}:1m"));
    assert!(live.wait_log(&format!("heal_done series_id={BTC}:1m "), 15 * SEC).is_some());
    let rows = served(&live, &five);
    assert!(rows.len() >= 10, "the rollup wrote the other buckets ({})", rows.len());
    let row = rows.iter().find(|r| r["candle_time"] == bucket).expect("the seeded bucket");
    assert_eq!((row["close"].as_f64(), row["volume"].as_f64()), (Some(1.5), Some(42.0)), "written over: {row}");
}

#[test]
fn a_derived_volume_prints_the_exchanges_exact_decimal() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    // Five minutes whose float sum is 13048.056999999999; the exchange's 5m says 13048.057.
    let volumes = [2797.964, 3606.372, 4154.893, 1375.438, 1113.39];
    let first = (now - 60 * MIN_MS) / (5 * MIN_MS) * (5 * MIN_MS);
    let candles = (0..40)
        .map(|i| {
            let t = first + i * MIN_MS;
            fake_exchange::RestCandle::new(t, "1m", 100.0, 101.0, 99.0, 100.5, volumes[(i % 5) as usize])
        })
        .collect();
    ex.upsert_history(SPOT, "BTCUSDT", "1m", candles);
    let mut live = start(&ex, &["--derived", "5m", "--heal-first-visit-candles", "70"]);
    let mut c = live.ws();
    subscribe(&mut c, &format!("{BTC}:1m"));
    assert!(live.wait_log(&format!("heal_done series_id={BTC}:1m "), 15 * SEC).is_some());
    let (status, body) = live.get(&format!("/api/market/candles?series_id={BTC}:5m&limit=100"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"volume\":13048.057"), "exact decimal volume: {body}");
    assert!(!body.contains("13048.056999"), "float noise on the wire: {body}");
    let conn = rusqlite::Connection::open(live.db_path()).unwrap();
    let stored: Vec<f64> = conn
        .prepare("SELECT volume FROM candles WHERE series_id = ?")
        .unwrap()
        .query_map([format!("{BTC}:5m")], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(!stored.is_empty() && stored.iter().all(|v| v.to_string() == "13048.057"), "stored: {stored:?}");
}
