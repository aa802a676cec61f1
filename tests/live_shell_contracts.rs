//! Issue #12 points 5 and 7 (the shell's side), over loopback against the
//! real binary and the fake exchange: the ingest route's switch and the
//! candle_time checks, the connected gauge after reconnects, per-market
//! `upstream.last_error`, `/health/ready`, the engine activity metrics,
//! `backfill.recent`, `top_markets` after an exchange outage, and preflights
//! on any path. Every wait is bounded.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, RejectMode, SPOT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::live::now_minute_ms;
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;
const ORIGIN: &str = "http://localhost:5173";
const TOP: &str = "/api/market/top_markets";

fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--derived", ""];
    args.extend_from_slice(extra);
    Live::start(&args)
}


fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {body}"))
}

fn candle(t: i64) -> Value {
    json!({"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0})
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole response (head and body) of one raw request.
fn raw(live: &Live, request: &str) -> String {
    let mut s = TcpStream::connect_timeout(&live.addr, 5 * SEC).expect("connect");
    s.set_read_timeout(Some(5 * SEC)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

// ------------------------------------------------------------ point 5: ingest

#[test]
fn ingest_api_off_answers_404_and_auto_on_loopback_serves_it() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let t = now_minute_ms() / 1000 - 600;
    let body = json!({"series_id": S1, "candle": candle(t)}).to_string();
    let off = start(&ex, &["--pin", S1, "--ingest-api", "off"]);
    let (status, reply) = off.post("/api/market/ingest/candle_closed", &body);
    assert_eq!((status, json_of(&reply)), (404, json!({"detail": "not_found"})));
    let auto = start(&ex, &["--pin", S1]);
    let (status, reply) = auto.post("/api/market/ingest/candle_closed", &body);
    assert_eq!(status, 200, "auto with a loopback --listen is on: {reply}");
}

#[test]
fn ingest_refuses_off_grid_and_future_candles_and_stores_nothing() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--heal", "false"]);
    let open_now = now_minute_ms() / 1000;
    for (t, want) in [
        (open_now - 600 + 40, "candle_time_misaligned"),
        (open_now + 120, "candle_time_in_future"),
        (99_999_999_960, "candle_time_in_future"), // year 5138
    ] {
        let (status, reply) = live.post("/api/market/ingest/candle_closed", &json!({"series_id": S1, "candle": candle(t)}).to_string());
        assert_eq!(status, 400, "{t}: {reply}");
        let detail = json_of(&reply)["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.starts_with(want), "{t}: {detail}");
    }
    let stored = live.get_json(&format!("/api/market/candles?series_id={S1}"));
    assert_eq!(stored["candles"], json!([]), "nothing stored: {stored}");
    // High below open is accepted (the reference does; the front end's e2e suite seeds such candles).
    let odd = json!({"candle_time": open_now - 600, "open": 5.0, "high": 1.0, "low": 0.5, "close": 1.5, "volume": 1.0});
    let (status, reply) = live.post("/api/market/ingest/candle_closed", &json!({"series_id": S1, "candle": odd}).to_string());
    assert_eq!(status, 200, "{reply}");
}

// -------------------------------------------------------- point 7: upstream

#[test]
fn connected_gauge_is_the_connections_open_now_after_reconnects() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--heal", "false"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    for round in 2..=4u64 {
        ex.drop_all();
        let ok = ex.wait_until(20 * SEC, |e| e.connect_count() >= round && e.subscriptions().len() == 1);
        assert!(ok, "reconnect {round}");
    }
    assert!(eventually(5 * SEC, || live.metric("klinegate_upstream_connected") == 1.0), "gauge {}", live.metric("klinegate_upstream_connected"));
    assert_eq!(live.get_json("/health")["upstream"]["connected"], 1);
}

#[test]
fn health_says_why_the_exchange_is_unreachable_per_market() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--heal", "false"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    assert_eq!(live.get_json("/health")["upstream"]["last_error"], json!({"spot": null, "futures": null}));
    ex.set_reject_mode(RejectMode::HttpStatus(503));
    ex.drop_all();
    let mut health = Value::Null;
    let seen = eventually(20 * SEC, || {
        health = live.get_json("/health");
        health["upstream"]["last_error"]["spot"].as_str().is_some_and(|e| e.contains("503"))
    });
    assert!(seen, "spot last_error names the refusal: {health}");
    assert_eq!(health["upstream"]["last_error"]["futures"], Value::Null);
    ex.set_reject_mode(RejectMode::Accept);
    assert!(eventually(30 * SEC, || live.get_json("/health")["upstream"]["last_error"]["spot"].is_null()), "cleared on reconnect");
}

#[test]
fn ready_is_503_until_the_pinned_stream_is_live_and_its_history_filled() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    ex.fill_history(SPOT, "BTCUSDT", "1m", now - 120 * MIN_MS, now, |t| 100.0 + ((t / MIN_MS) % 50) as f64);
    ex.set_reject_mode(RejectMode::CloseTcp);
    let live = start(&ex, &["--pin", S1]);
    let (status, body) = live.get("/health/ready");
    assert_eq!(status, 503, "{body}");
    assert_eq!(json_of(&body)["series"][0]["stream_live"], false, "{body}");
    ex.set_reject_mode(RejectMode::Accept);
    let mut last = (0, String::new());
    let ready = eventually(40 * SEC, || {
        last = live.get("/health/ready");
        last.0 == 200
    });
    assert!(ready, "ready once live and healed: {last:?}");
    let v = json_of(&last.1);
    assert_eq!(v["series"][0], json!({"series_id": S1, "stream_live": true, "history_filled": true}));
    // The heal that filled it is in /metrics.
    assert!(live.metric("klinegate_heals_started_total") >= 1.0);
    assert!(live.metric("klinegate_heals_done_total") >= 1.0);
    assert!(live.metric("klinegate_rest_requests_total") >= 1.0);
    assert!(live.metric("klinegate_rest_weight_total") >= 1.0);
    assert_eq!(live.metric("klinegate_heals_failed_total"), 0.0);
}

#[test]
fn exchange_to_queue_histogram_counts_frames_queued_for_clients() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--heal", "false", "--forming-interval-ms", "0"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(200));
    let t = now_minute_ms();
    ex.push_kline(STREAM, t, 1.0, 2.0, 0.5, 1.5, 1.0, false);
    let got = c.until(5 * SEC, |f| f["type"] == "candle_forming");
    assert!(got.iter().any(|f| f["type"] == "candle_forming"), "{got:?}");
    let (_, text) = live.get("/metrics");
    assert!(text.contains("# TYPE klinegate_exchange_to_queue_seconds histogram"), "{text}");
    let count = support::live::metric_value(&text, "klinegate_exchange_to_queue_seconds_count").unwrap();
    let inf = support::live::metric_value(&text, "klinegate_exchange_to_queue_seconds_bucket{le=\"+Inf\"}").unwrap();
    assert!(count >= 1.0 && inf == count, "count {count}, +Inf {inf}");
}

#[test]
fn backfill_recent_follows_updated_at_while_the_heal_is_unfinished() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    ex.fill_history(SPOT, "BTCUSDT", "1m", now - 120 * MIN_MS, now, |_| 100.0);
    ex.rest_fail_next(1000, 500, r#"{"code":-1000,"msg":"boom"}"#);
    let live = start(&ex, &["--pin", S1]);
    let mut v = Value::Null;
    let unfinished = eventually(30 * SEC, || {
        v = live.get_json(&format!("/api/market/health?series_id={S1}"));
        ["running", "failed"].contains(&v["backfill"]["state"].as_str().unwrap_or(""))
    });
    assert!(unfinished, "the heal cannot finish: {v}");
    assert_eq!(v["backfill"]["recent"], true, "updated just now, whatever the state: {v}");
}

// ------------------------------------------------- point 7: directory, CORS

#[test]
fn top_markets_answers_200_once_the_exchange_recovers() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", vec![fake_exchange::FakeSymbol::new("BTC", "USDT").with_ticker("60000", "5000000", "1")]);
    let mut live = start(&ex, &[]);
    live.wait_startup_fetches();
    ex.rest_fail_next(1, 500, r#"{"code":-1000,"msg":"boom"}"#);
    let (status, body) = live.get(&format!("{TOP}?force=true"));
    assert_eq!(status, 502, "{body}");
    // The exchange is back: the next request (forced or not) is answered.
    let (status, body) = live.get(&format!("{TOP}?force=true"));
    assert_eq!(status, 200, "the first retry after an error is not rate limited: {body}");
    assert_eq!(json_of(&body)["items"][0]["symbol_id"], "BTCUSDT");

    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", vec![fake_exchange::FakeSymbol::new("BTC", "USDT").with_ticker("60000", "5000000", "1")]);
    let mut live = start(&ex, &[]);
    live.wait_startup_fetches();
    ex.rest_fail_next(1, 500, r#"{"code":-1000,"msg":"boom"}"#);
    assert_eq!(live.get(TOP).0, 502);
    let (status, body) = live.get(TOP);
    assert_eq!(status, 200, "a failure is not cached as the answer: {body}");
}

#[test]
fn preflight_on_a_path_we_do_not_serve_is_204_with_cors() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &[]);
    let head = raw(
        &live,
        &format!("OPTIONS /api/market/not_served HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert!(head.contains(&format!("Access-Control-Allow-Origin: {ORIGIN}")), "{head}");
    assert!(head.contains("Access-Control-Allow-Methods: GET, POST, OPTIONS"), "{head}");
    // The call itself is then a plain 404 the front end can read.
    let get = raw(&live, &format!("GET /api/market/not_served HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nConnection: close\r\n\r\n"));
    assert!(get.starts_with("HTTP/1.1 404") && get.contains(&format!("Access-Control-Allow-Origin: {ORIGIN}")), "{get}");
}
