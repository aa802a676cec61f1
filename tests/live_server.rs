//! The real `klinegate` binary over loopback against the fake Binance
//! exchange: catch-up, throttled forming and closed candles (also in the
//! SQLite file), shared upstream streams, HTTP routes, SIGTERM persistence.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::time::Duration;
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const S5: &str = "binance:spot:BTC/USDT:5m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--enable-dev-api", "true"];
    args.extend_from_slice(extra);
    Live::start(&args)
}

/// A candle open time (ms) aligned to five minutes, in the recent past.
fn recent_bucket_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now / 300 - 2) * 300 * 1000
}

fn sqlite_rows(path: &std::path::Path, series: &str) -> Vec<(i64, f64)> {
    let conn = rusqlite::Connection::open(path).expect("open db");
    let mut stmt = conn.prepare("SELECT candle_time, close FROM candles WHERE series_id = ? ORDER BY candle_time").unwrap();
    stmt.query_map([series], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn subscribe_gets_forming_and_closed_that_are_in_sqlite_and_1m_5m_share_one_stream() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let mut live = start(&ex, &["--pin", S1, "--derived", "5m"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC), "pinned stream subscribed");

    let mut c1 = live.ws();
    c1.send(json!({"type":"subscribe","series_id":S1}));
    let mut c5 = live.ws();
    c5.send(json!({"type":"subscribe","series_id":S5}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ex.subscriptions(), vec![STREAM.to_string()], "1m and 5m share the one 1m stream");
    assert_eq!(ex.connections(), 1);

    let t0 = recent_bucket_ms();
    for k in 0..5 {
        let t = t0 + k * 60_000;
        let p = 100.0 + k as f64;
        ex.push_kline(STREAM, t, p, p + 1.0, p - 1.0, p + 0.5, 2.0, false);
        ex.push_kline(STREAM, t, p, p + 2.0, p - 1.0, p + 0.6, 3.0, true);
    }
    let got = c1.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == (t0 + 240_000) / 1000);
    let closed: Vec<i64> =
        got.iter().filter(|f| f["type"] == "candle_closed").map(|f| f["candle"]["candle_time"].as_i64().unwrap()).collect();
    assert_eq!(closed, (0..5).map(|k| (t0 + k * 60_000) / 1000).collect::<Vec<_>>(), "{got:?}");
    assert!(got.iter().any(|f| f["type"] == "candle_forming"), "forming delivered: {got:?}");

    let got5 = c5.until(5 * SEC, |f| f["type"] == "candle_closed");
    let last = got5.last().expect("5m frames");
    assert_eq!(last["type"], "candle_closed", "{got5:?}");
    assert_eq!(last["candle"]["candle_time"], t0 / 1000);
    assert_eq!(last["candle"]["open"], 100.0);
    assert_eq!(last["candle"]["close"], 104.6);
    assert_eq!(last["candle"]["volume"], 15.0);

    let rows = sqlite_rows(&live.db_path(), S1);
    assert_eq!(rows.len(), 5, "closed candles are in the SQLite file");
    assert_eq!(sqlite_rows(&live.db_path(), S5).len(), 1);

    // HTTP read path agrees.
    let v = live.get_json(&format!("/api/market/candles?series_id={}&limit=3", S1.replace('/', "%2F")));
    assert_eq!(v["candles"].as_array().unwrap().len(), 3);
    assert_eq!(v["server_head_time"], (t0 + 240_000) / 1000);
    assert_eq!(ex.violation_count(), 0, "{:?}", ex.violations());
    // The debug log says why the engine's timers woke the loop.
    let wake = live.wait_log("engine_wake why=", 5 * SEC).expect("an engine_wake debug line");
    let why = wake.split("why=").nth(1).and_then(|w| w.split_whitespace().next()).unwrap_or("");
    let known = ["flush", "forming", "watchdog", "close_due", "release_held", "flush_all", "stall_check", "upstream", "supervisor"];
    assert!(known.contains(&why), "{wake}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn catch_up_from_history_then_live() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1]);
    let t0 = recent_bucket_ms() / 1000 - 3600;
    let candles: Vec<_> = (0..3)
        .map(|k| json!({"candle_time": t0 + 60 * k, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0}))
        .collect();
    let (status, body) =
        live.post("/api/dev/market/ingest/candles_closed_batch", &json!({"series_id": S1, "candles": candles}).to_string());
    assert_eq!(status, 200, "{body}");
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1,"since":t0,"supports_batch":true}));
    let f = c.next(5 * SEC).expect("catch-up");
    assert_eq!(f["type"], "candles_batch");
    let times: Vec<i64> = f["candles"].as_array().unwrap().iter().map(|c| c["candle_time"].as_i64().unwrap()).collect();
    assert_eq!(times, vec![t0 + 60, t0 + 120]);
    // A candle ingested afterwards arrives live, as a single candle.
    let (status, _) = live.post(
        "/api/market/ingest/candle_closed",
        &json!({"series_id": S1, "candle": {"candle_time": t0 + 180, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0}}).to_string(),
    );
    assert_eq!(status, 200);
    let f = c.next(5 * SEC).expect("live");
    assert_eq!(f["type"], "candle_closed");
    assert_eq!(f["candle"]["candle_time"], t0 + 180);
}

#[test]
fn bad_input_gets_an_error_and_the_connection_lives_on() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1]);
    let mut c = live.ws();
    c.send_text("not json");
    assert_eq!(c.next(5 * SEC).unwrap()["message"], "invalid json");
    c.send(json!({"type":"noop"}));
    assert_eq!(c.next(5 * SEC).unwrap()["message"], "unknown message type: noop");
    c.ws.send(tungstenite::Message::Binary(vec![1u8, 2, 3].into())).unwrap();
    let f = c.next(5 * SEC).unwrap();
    assert_eq!(f["code"], "bad_request");
    c.send(json!({"type":"subscribe","series_id":"kraken:spot:BTC/USD:1m"}));
    let f = c.next(5 * SEC).unwrap();
    assert!(f["message"].as_str().unwrap().contains("unsupported exchange"), "{f}");
    c.send(json!({"type":"subscribe","series_id":S1,"since":0}));
    // Still alive: a subscribe with nothing to catch up is silent; an ingest shows it.
    let (status, _) = live.post(
        "/api/market/ingest/candle_closed",
        &json!({"series_id": S1, "candle": {"candle_time": 60, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0}}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(c.next(5 * SEC).unwrap()["type"], "candle_closed");
}

#[test]
fn http_routes_answer_as_the_spec_says() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1]);
    assert_eq!(live.get_json("/api/market/whitelist")["series_ids"], json!([S1]));
    let health = live.get_json("/health");
    assert!(health["status"].is_string(), "{health}");
    let state = live.get_json("/api/market/debug/ingest_state");
    assert_eq!(state["jobs"][0]["series_id"], S1);
    assert_eq!(live.get("/nope").0, 404);
    assert_eq!(live.get("/api/market/candles").0, 400);
    let (status, metrics) = live.get("/metrics");
    assert_eq!(status, 200);
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(name.starts_with("klinegate_"), "{line}");
    }
    assert!(metrics.contains("klinegate_jobs"), "{metrics}");
}

#[test]
fn sigterm_persists_every_buffered_closed_candle() {
    let ex = FakeExchange::start(FakeOptions::spot());
    // A long flush interval and a big batch keep closed candles in the buffer.
    let mut live = start(&ex, &["--pin", S1, "--derived", "", "--flush-ms", "600000", "--batch-max", "1000"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    let t0 = recent_bucket_ms();
    // The first close flushes at once (the last flush is old); the next ones wait.
    for k in 0..4 {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(live.terminate(10 * SEC), Some(0), "clean exit after SIGTERM");
    assert_eq!(sqlite_rows(&live.db_path(), S1).len(), 4, "every buffered closed candle persisted");
    assert_eq!(c.close_frame(2 * SEC).map(|c| c.0), Some(1001));
}

#[test]
fn a_recorded_run_replays_to_the_same_client_frames() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.journal.jsonl");
    let journal_arg = journal.display().to_string();
    let url = ex.ws_url();
    let mut live = Live::start_in(
        dir,
        &[
            "--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "5m", "--record", &journal_arg,
            "--max-client-messages-per-s", "5",
        ],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    c.send(json!({"type":"subscribe","series_id":S5}));
    // A burst over the message rate: the refusals are the engine's, so they replay too.
    for i in 0..20 {
        c.ws.write(tungstenite::Message::Text(json!({"type":format!("m{i}")}).to_string().into())).unwrap();
    }
    c.ws.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = recent_bucket_ms();
    for k in 0..6 {
        let t = t0 + k * 60_000;
        ex.push_kline(STREAM, t, 10.0, 11.0, 9.0, 10.5, 1.0, false);
        std::thread::sleep(Duration::from_millis(30));
        ex.push_kline(STREAM, t, 10.0, 12.0, 9.0, 10.7, 2.0, false);
        ex.push_kline(STREAM, t, 10.0, 12.0, 9.0, 10.8, 2.5, true);
    }
    let last = (t0 + 5 * 60_000) / 1000;
    let mut live_frames =
        c.until(5 * SEC, |f| f["type"] == "candle_closed" && f["series_id"] == S1 && f["candle"]["candle_time"] == last);
    std::thread::sleep(Duration::from_millis(600)); // trailing edges
    assert_eq!(live.terminate(10 * SEC), Some(0));
    while let Some(f) = c.next(Duration::from_millis(300)) {
        live_frames.push(f);
    }
    assert!(live_frames.len() > 10, "{live_frames:?}");
    assert!(live_frames.iter().any(|f| f["code"] == "rate_limited"), "the burst was refused: {live_frames:?}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
        .args(["replay", &journal_arg])
        .output()
        .expect("replay runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["client"] == 1)
        .map(|v| v["frame"].clone())
        .collect();
    assert_eq!(replayed, live_frames, "the replay reproduces exactly what the client saw");
    // And twice gives the same bytes.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate")).args(["replay", &journal_arg]).output().unwrap();
    assert_eq!(again.stdout, out.stdout);
}

/// Regression: a client pipelining more messages than one read budget (64)
/// had the rest left unread until it sent more bytes (edge-triggered poll).
#[test]
fn regression_pipelined_messages_beyond_the_read_budget_are_all_answered() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1]);
    let mut c = live.ws();
    for i in 0..100 {
        let msg = json!({"type":"subscribe","series_id":format!("kraken:spot:X{i}/USD:1m")}).to_string();
        c.ws.write(tungstenite::Message::Text(msg.into())).unwrap();
    }
    c.ws.flush().unwrap();
    let got = c.until(5 * SEC, |_| false);
    assert_eq!(got.len(), 100, "every pipelined message answered");
}
