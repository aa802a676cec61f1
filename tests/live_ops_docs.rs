//! The operations documents against the real binary over loopback (with the
//! fake exchange): every `/ws/market` frame a client receives — catch-up
//! batches and single closes, live closed and forming candles, gaps, error
//! frames of each code — and the close codes validate against
//! `docs/ws-market.asyncapi.json`; every message a client sends here validates
//! against its inbound messages; `/openapi.json` serves `docs/openapi.json`
//! byte for byte; every metric the Grafana dashboard and the alert rules name
//! is on a live `/metrics`. (The HTTP routes are fuzzed against the OpenAPI
//! document by `.ci/live-checks.sh`.)

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;
#[path = "support/json_schema.rs"]
mod json_schema;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use support::live::{now_minute_ms, Client, Live};
use tungstenite::Message;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
const MAX_SUBS: usize = 3;
const MAX_FRAME: usize = 4096;

fn doc(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The AsyncAPI document and what the test checks with it.
struct WsDoc {
    root: Value,
}

impl WsDoc {
    fn load() -> WsDoc {
        WsDoc { root: doc("docs/ws-market.asyncapi.json") }
    }

    /// The payload schemas of the messages of one operation, by their `type` const.
    fn payloads(&self, operation: &str) -> Vec<(String, Value)> {
        let refs = self.root["operations"][operation]["messages"].as_array().expect("operation messages");
        refs.iter()
            .map(|r| {
                let channel_msg = json_schema::resolve(&self.root, r["$ref"].as_str().unwrap()).unwrap();
                let msg = json_schema::resolve(&self.root, channel_msg["$ref"].as_str().unwrap()).unwrap();
                let kind = msg["payload"]["properties"]["type"]["const"].as_str().expect("type const").to_string();
                (kind, msg["payload"].clone())
            })
            .collect()
    }

    /// Validates one frame against the message of its `type` in `operation`.
    fn check(&self, operation: &str, frame: &Value) {
        let kind = frame["type"].as_str().unwrap_or_else(|| panic!("frame without a type: {frame}"));
        let payloads = self.payloads(operation);
        let (_, schema) = payloads
            .iter()
            .find(|(k, _)| k == kind)
            .unwrap_or_else(|| panic!("{kind:?} is not a documented message of {operation}: {frame}"));
        if let Err(e) = json_schema::validate(&self.root, schema, frame) {
            panic!("frame breaks the AsyncAPI document: {e}\n{frame}");
        }
        if kind == "error" {
            let code = frame["code"].as_str().unwrap();
            let templates = &schema["x-messages"][code];
            let message = frame["message"].as_str().unwrap();
            let known = templates.as_array().into_iter().flatten().filter_map(Value::as_str).any(|t| matches_template(t, message));
            assert!(known, "error message {message:?} is not among the documented {code} messages {templates}");
        }
    }

    fn check_close(&self, code: u16, reason: &str) {
        let documented = &self.root["info"]["x-close-codes"][code.to_string()];
        let known = documented.as_array().into_iter().flatten().filter_map(Value::as_str).any(|t| matches_template(t, reason));
        assert!(known, "close {code} {reason:?} is not documented (x-close-codes: {documented})");
    }
}

/// A documented text with `<name>` placeholders matches `text` when its literal
/// pieces appear in order, the first at the start and the last at the end, and
/// each placeholder stands for at least one character.
fn matches_template(template: &str, text: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        literals.push(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    literals.push(rest);
    if literals.len() == 1 {
        return template == text;
    }
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    if !text.starts_with(first) || !text.ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut at = first.len();
    let end = text.len() - last.len();
    for piece in &literals[1..literals.len() - 1] {
        // A placeholder takes at least one character before the next piece.
        match text.get(at + 1..end).and_then(|t| t.find(piece)) {
            Some(i) => at = at + 1 + i + piece.len(),
            None => return false,
        }
    }
    end > at
}

/// A client whose every frame, in and out, is checked against the document.
struct Checked<'a> {
    c: Client,
    doc: &'a WsDoc,
    seen: &'a std::cell::RefCell<BTreeSet<String>>,
}

impl Checked<'_> {
    fn send(&mut self, v: Value) {
        self.doc.check("sendSubscribe", &v);
        self.c.send(v);
    }

    /// Sends something the document does not describe (bad input).
    fn send_raw(&mut self, text: &str) {
        self.c.send_text(text);
    }

    fn note(&self, f: &Value) {
        self.doc.check("receiveMarketData", f);
        let mut key = f["type"].as_str().unwrap_or("?").to_string();
        if let Some(code) = f["code"].as_str() {
            key = format!("error:{code}");
        }
        self.seen.borrow_mut().insert(key);
    }

    fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let got = self.c.until(timeout, pred);
        got.iter().for_each(|f| self.note(f));
        got
    }

    fn next(&mut self, timeout: Duration) -> Value {
        let f = self.c.next(timeout).expect("a frame");
        self.note(&f);
        f
    }

    fn close(&mut self, timeout: Duration) -> (u16, String) {
        let (code, reason) = self.c.close_frame(timeout).expect("a close frame");
        self.doc.check_close(code, &reason);
        self.seen.borrow_mut().insert(format!("close:{code}"));
        (code, reason)
    }
}

fn candle(t: i64, close: f64) -> Value {
    json!({"candle_time": t, "open": 10.0, "high": 12.0, "low": 9.5, "close": close, "volume": 3.25})
}

#[test]
fn live_ws_frames_and_close_codes_match_the_asyncapi_document() {
    let doc = WsDoc::load();
    let seen = std::cell::RefCell::new(BTreeSet::new());
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let subs = MAX_SUBS.to_string();
    let frame_max = MAX_FRAME.to_string();
    let mut live = Live::start(&[
        "--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--enable-dev-api", "true",
        "--max-subscriptions-per-client", &subs, "--max-client-messages-per-s", "20",
        "--max-ondemand-jobs", "1", "--max-frame-bytes", &frame_max,
    ]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC), "pinned stream subscribed");
    let client = |live: &Live| Checked { c: live.ws(), doc: &doc, seen: &seen };

    // History for the catch-up: three closed minutes an hour ago.
    let t0 = now_minute_ms() / 1000 - 3600;
    let batch = json!({"series_id": S1, "candles": [candle(t0, 10.5), candle(t0 + 60, 11.0), candle(t0 + 120, 11.5)]});
    let (status, body) = live.post("/api/dev/market/ingest/candles_closed_batch", &batch.to_string());
    assert_eq!(status, 200, "{body}");

    // Catch-up as one batch, and as single closes.
    let mut batched = client(&live);
    batched.send(json!({"type":"subscribe","series_id":S1,"since":t0 - 60,"supports_batch":true}));
    let got = batched.until(5 * SEC, |f| f["type"] == "candles_batch");
    assert_eq!(got.last().map(|f| f["candles"].as_array().map(Vec::len)), Some(Some(3)), "{got:?}");
    let mut single = client(&live);
    single.send(json!({"type":"subscribe","series_id":S1,"since":t0 - 60}));
    let got = single.until(5 * SEC, |f| f["candle"]["candle_time"] == t0 + 120);
    assert_eq!(got.iter().filter(|f| f["type"] == "candle_closed").count(), 3, "{got:?}");
    // `fields=full` (#15 §4): the same frames, each candle a FullCandle (the
    // fields unknown here: the history came over HTTP ingest).
    let mut full = client(&live);
    full.send(json!({"type":"subscribe","series_id":S1,"since":t0 - 60,"supports_batch":true,"fields":"full"}));
    let got = full.until(5 * SEC, |f| f["type"] == "candles_batch");
    assert_eq!(got.last().and_then(|f| f["candles"][0].as_object().map(|c| c.len())), Some(10), "{got:?}");

    // A closed candle past a hole: the subscribers are told with a gap first.
    let (status, body) =
        live.post("/api/market/ingest/candle_closed", &json!({"series_id": S1, "candle": candle(t0 + 600, 12.0)}).to_string());
    assert_eq!(status, 200, "{body}");
    let got = single.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == t0 + 600);
    let gap = got.iter().find(|f| f["type"] == "gap").unwrap_or_else(|| panic!("a gap before the candle: {got:?}"));
    assert_eq!((gap["expected_next_time"].as_i64(), gap["actual_time"].as_i64()), (Some(t0 + 180), Some(t0 + 600)));

    // Live from the exchange: forming, then closed.
    let now_ms = now_minute_ms();
    ex.push_kline(STREAM, now_ms - 60_000, 20.0, 21.0, 19.0, 20.5, 1.5, false);
    ex.push_kline(STREAM, now_ms - 60_000, 20.0, 21.5, 19.0, 20.75, 2.5, true);
    let got = batched.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == (now_ms - 60_000) / 1000);
    assert!(got.iter().any(|f| f["type"] == "candle_forming"), "forming delivered: {got:?}");
    assert_eq!(got.last().map(|f| f["type"].clone()), Some(json!("candle_closed")), "{got:?}");
    let got = full.until(5 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == (now_ms - 60_000) / 1000);
    let live_full = got.iter().filter(|f| f["type"] == "candle_forming" || f["type"] == "candle_closed");
    assert!(live_full.clone().count() >= 2 && live_full.clone().all(|f| f["candle"].as_object().map(|c| c.len()) == Some(10)), "{got:?}");
    assert_eq!(got.last().map(|f| f["candle"]["trades"].clone()), Some(json!(10)), "the exchange's fields: {got:?}");

    // Refused messages: one error frame each, the connection lives on.
    let mut bad = client(&live);
    for text in [
        "not json",
        "[1]",
        "{}",
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","since":"yesterday"}"#,
        r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","supports_batch":"yes"}"#,
        r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","fields":"all"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"subscribe","series_id":"nope"}"#,
        r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:7m"}"#,
        r#"{"type":"subscribe","series_id":"binance:options:BTC/USDT:1m"}"#,
    ] {
        bad.send_raw(text);
        let f = bad.next(5 * SEC);
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("bad_request")), "{text}: {f}");
    }
    bad.c.ws.send(Message::Binary(vec![1u8, 2, 3].into())).unwrap();
    assert_eq!(bad.next(5 * SEC)["message"], "binary frames are not supported; send JSON text frames");

    // The per-connection subscription limit (the pinned series is one of them).
    let mut greedy = client(&live);
    for tf in ["1m", "5m", "15m", "1h"] {
        greedy.send(json!({"type":"subscribe","series_id":format!("binance:spot:BTC/USDT:{tf}")}));
    }
    let got = greedy.until(5 * SEC, |f| f["type"] == "error");
    let limit = got.last().unwrap_or_else(|| panic!("no frames"));
    assert_eq!((limit["code"].as_str(), limit["series_id"].as_str()), (Some("limit"), Some("binance:spot:BTC/USDT:1h")), "{got:?}");

    // On-demand capacity: one job allowed, a second symbol is refused.
    let mut eth = client(&live);
    eth.send(json!({"type":"subscribe","series_id":"binance:spot:ETH/USDT:1m"}));
    let mut sol = client(&live);
    sol.send(json!({"type":"subscribe","series_id":"binance:spot:SOL/USDT:1m"}));
    let got = sol.until(5 * SEC, |f| f["type"] == "error");
    assert_eq!(got.last().map(|f| f["code"].clone()), Some(json!("capacity")), "{got:?}");
    eth.until(Duration::from_millis(300), |_| false);

    // The message rate limit (20 a second, bursts of 40): a burst of 60 gets one rate_limited.
    let mut flood = client(&live);
    for _ in 0..60 {
        flood.send(json!({"type":"unsubscribe","series_id":"binance:spot:XRP/USDT:1m"}));
    }
    let got = flood.until(5 * SEC, |f| f["code"] == "rate_limited");
    assert_eq!(got.last().map(|f| f["code"].clone()), Some(json!("rate_limited")), "{got:?}");

    // Close codes: a message over --max-frame-bytes, then the server's shutdown.
    let mut big = client(&live);
    big.send_raw(&"z".repeat(MAX_FRAME + 1));
    assert_eq!(big.close(5 * SEC), (1009, format!("message too big (max {MAX_FRAME} bytes)")));
    support::live::signal(live.child.id(), "TERM");
    assert_eq!(batched.close(10 * SEC), (1001, "server_shutdown".to_string()));
    assert_eq!(live.wait_exit(10 * SEC), Some(0));

    let seen = seen.into_inner();
    for kind in [
        "candles_batch", "candle_closed", "candle_forming", "gap", "error:bad_request", "error:limit",
        "error:capacity", "error:rate_limited", "close:1009", "close:1001",
    ] {
        assert!(seen.contains(kind), "{kind} was not exercised: {seen:?}");
    }
}

/// Metric names (`klinegate_…`) in a dashboard expression or alert rule.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("klinegate_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn openapi_is_served_and_every_dashboard_and_alert_metric_is_exported() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let mut live = Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));

    let (status, served) = live.get("/openapi.json");
    assert_eq!(status, 200);
    let file = std::fs::read_to_string(format!("{}/docs/openapi.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(served == file, "GET /openapi.json is docs/openapi.json");

    // A closed candle, so the pinned series has a lag sample.
    let open = now_minute_ms() - 60_000;
    ex.push_kline(STREAM, open, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    let deadline = std::time::Instant::now() + 10 * SEC;
    let metrics = loop {
        let (status, text) = live.get("/metrics");
        assert_eq!(status, 200);
        if text.contains("klinegate_pinned_series_lag_seconds{") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ").or(Some(l).filter(|l| !l.starts_with('#'))))
        .filter_map(|l| l.split([' ', '{']).next())
        .map(str::to_string)
        .collect();
    let dashboard = std::fs::read_to_string(format!("{}/deploy/grafana/klinegate-dashboard.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let dash: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 20, "the dashboard's queries: {exprs:?}");
    let alerts = std::fs::read_to_string(format!("{}/deploy/prometheus/klinegate-alerts.yml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut named = metric_names(&exprs.join("\n"));
    named.extend(metric_names(&alerts));
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "named by the dashboard or the alerts but not on /metrics: {missing:?}");
    assert!(named.contains("klinegate_pinned_series_lag_seconds") && named.contains("klinegate_exchange_to_queue_seconds_bucket"));
    assert!(metrics.contains("klinegate_pinned_series_lag_seconds{series_id=\"binance:spot:BTC/USDT:1m\"}"), "{metrics}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn template_matching() {
    assert!(matches_template("invalid json", "invalid json"));
    assert!(!matches_template("invalid json", "invalid json!"));
    assert!(matches_template("message too big (max <N> bytes)", "message too big (max 4096 bytes)"));
    assert!(!matches_template("message too big (max <N> bytes)", "message too big (max  bytes"));
    assert!(matches_template("message too large (<N> bytes, max <M>)", "message too large (9 bytes, max 8)"));
    assert!(matches_template("unknown message type: <T>", "unknown message type: ping"));
    assert!(!matches_template("unknown message type: <T>", "unknown message type: "));
}
