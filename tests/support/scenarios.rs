//! The named scenario journals behind fixtures/: every worked example of
//! reference-system.md §2.10 and the supervisor/upstream scenarios. The
//! fixture test writes them (bless) and checks their golden outputs; the
//! semantic tests assert what the client sees in each.
#![allow(dead_code)]

use super::recorder::Recorder;
use super::{ack, kline, secs, JournalBuilder};
use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Input, Output};
use klinegate::time::{Duration, Timestamp};
use serde_json::{json, Value};

pub const FUT: &str = "binance:futures:BTC/USDT:1m";
pub const T0: i64 = 1_700_000_100; // aligned to 5 minutes
pub const BTC1: &str = "binance:spot:BTC/USDT:1m";
pub const BTC5: &str = "binance:spot:BTC/USDT:5m";
pub const ETH1: &str = "binance:spot:ETH/USDT:1m";
pub const STREAM: &str = "btcusdt@kline_1m";

pub fn t(offset: f64) -> f64 {
    T0 as f64 + offset
}

/// Store seeded with `seed` (HTTP ingest, as the reference tests do), one
/// client subscribing with `sub`, then an ingest of each of `next`.
pub fn seeded(seed: &[i64], sub: Value, next: &[i64]) -> String {
    let mut j = JournalBuilder::new(1000.0, json!({}));
    j.input(1000.0, json!({"type":"start"})).ingest_closed(1000.0, FUT, seed).connect(1001.0, 1);
    j.client_text(1001.0, 1, sub);
    for (i, n) in next.iter().enumerate() {
        j.ingest_closed(1002.0 + i as f64, FUT, &[*n]);
    }
    j.end(1010.0);
    j.text()
}

pub fn sub(since: Option<i64>, batch: bool) -> Value {
    let mut v = json!({"type":"subscribe","series_id":FUT});
    if let Some(s) = since {
        v["since"] = json!(s);
    }
    if batch {
        v["supports_batch"] = json!(true);
    }
    v
}

/// A client subscribed to 1m and 5m; the exchange connection opened and acked.
pub fn live_start(settings: Value) -> JournalBuilder {
    // Quiet gaps in these scripts are longer than the default silence timeout.
    let mut merged = json!({"upstream_silence_s": 600});
    for (k, v) in settings.as_object().into_iter().flatten() {
        merged[k] = v.clone();
    }
    let mut j = JournalBuilder::new(t(-2.0), merged);
    j.input(t(-2.0), json!({"type":"start"}))
        .connect(t(-2.0), 1)
        .client_text(t(-2.0), 1, json!({"type":"subscribe","series_id":BTC1}))
        .client_text(t(-2.0), 1, json!({"type":"subscribe","series_id":BTC5}))
        .input(t(-1.9), json!({"type":"upstream_connected","conn":1}))
        .upstream(t(-1.8), 1, ack(1));
    j
}

/// Five minutes of trading: forming updates (one inside the throttle window,
/// sent on the trailing edge), then the close, for each minute.
pub fn five_minutes(j: &mut JournalBuilder) {
    for k in 0..5i64 {
        let open = T0 + 60 * k;
        let base = 100.0 + k as f64;
        j.upstream(open as f64 + 1.0, 1, kline(STREAM, open, base, false));
        j.upstream(open as f64 + 2.0, 1, kline(STREAM, open, base + 0.1, false));
        j.upstream(open as f64 + 2.1, 1, kline(STREAM, open, base + 0.2, false));
        j.upstream(open as f64 + 60.1, 1, kline(STREAM, open, base + 0.3, true));
    }
}

pub fn derived_shares_base_job() -> String {
    let mut j = live_start(json!({}));
    five_minutes(&mut j);
    j.end(t(310.0));
    j.text()
}

pub fn capacity_evicts_idle() -> String {
    let mut j = JournalBuilder::new(t(0.0), json!({"max_ondemand_jobs": 1, "derived": ""}));
    j.input(t(0.0), json!({"type":"start"}))
        .connect(t(0.0), 1)
        .connect(t(0.0), 2)
        .client_text(t(0.0), 1, json!({"type":"subscribe","series_id":BTC1}))
        .client_text(t(2.0), 1, json!({"type":"unsubscribe","series_id":BTC1}))
        .client_text(t(3.0), 2, json!({"type":"subscribe","series_id":ETH1,"since":0}))
        .end(t(4.0));
    j.text()
}

pub fn capacity_rejects() -> String {
    let mut j = JournalBuilder::new(t(0.0), json!({"max_ondemand_jobs": 1, "derived": ""}));
    j.input(t(0.0), json!({"type":"start"}))
        .connect(t(0.0), 1)
        .connect(t(0.0), 2)
        .client_text(t(0.0), 1, json!({"type":"subscribe","series_id":BTC1}))
        .client_text(t(1.0), 2, json!({"type":"subscribe","series_id":ETH1,"since":0}))
        .end(t(4.0));
    j.text()
}

/// An on-demand job idle for longer than the TTL is reaped; a pinned one is not.
pub fn reaper_ttl_and_pinned(until: f64) -> String {
    let settings = json!({"pins": [ETH1], "idle_ttl_s": 60, "derived": ""});
    let mut j = JournalBuilder::new(t(0.0), settings);
    j.input(t(0.0), json!({"type":"start"}))
        .connect(t(0.0), 1)
        .client_text(t(0.0), 1, json!({"type":"subscribe","series_id":BTC1}))
        .input(t(0.5), json!({"type":"client_disconnected","client":1}))
        .end(t(until));
    j.text()
}

pub fn reconnect_backoff() -> String {
    let mut j = live_start(json!({"derived": ""}));
    j.upstream(t(1.0), 1, kline(STREAM, T0, 100.0, false))
        .input(t(2.0), json!({"type":"upstream_disconnected","conn":1,"reason":"reset"}))
        .input(t(2.0), json!({"type":"upstream_disconnected","conn":1,"reason":"duplicate report"}))
        .end(t(30.0));
    j.text()
}

/// Every connection attempt fails at once until the breaker has opened twice;
/// then the half-open probe connects and delivers data. Recorded reactively.
pub fn breaker_open_then_half_open_recovers() -> String {
    // Scripted streams are quieter than Binance's (no frame every 1-2 s): no stall checks.
    let settings =
        Settings { pins: vec![BTC1.into()], derived: "".into(), heal: false, stream_stall_s: 0, ..Settings::default() };
    let start = Timestamp::from_secs(T0 as u64);
    let mut rec = Recorder::new(settings, start);
    let mut outs = rec.handle(start, Input::Start);
    let end = start.add(Duration::from_secs(120));
    let mut connects = 0;
    loop {
        for o in std::mem::take(&mut outs) {
            if let Output::UpstreamConnect { conn, .. } = o {
                connects += 1;
                let now = rec.now;
                if connects <= 6 {
                    outs.extend(rec.handle(now, Input::UpstreamDisconnected { conn, reason: "refused".into() }));
                } else {
                    outs.extend(rec.handle(now, Input::UpstreamConnected { conn }));
                    outs.extend(rec.handle(now, Input::UpstreamText { conn, text: ack(1) }));
                    let text = kline(STREAM, T0 + 60, 1.0, false);
                    outs.extend(rec.handle(now, Input::UpstreamText { conn, text }));
                }
            }
        }
        match rec.next_timer(end) {
            Some(at) => outs = rec.timeout(at),
            None => break,
        }
    }
    rec.journal_text()
}

pub fn forming_trailing_edge() -> String {
    let mut j = live_start(json!({"derived": ""}));
    j.upstream(t(1.0), 1, kline(STREAM, T0, 100.0, false))
        .upstream(t(1.1), 1, kline(STREAM, T0, 100.1, false))
        .upstream(t(1.2), 1, kline(STREAM, T0, 100.2, false))
        .upstream(t(1.3), 1, kline(STREAM, T0, 100.3, false))
        .upstream(t(60.1), 1, kline(STREAM, T0, 100.4, true))
        .upstream(t(60.2), 1, kline(STREAM, T0, 100.5, false))
        .end(t(61.0));
    j.text()
}

pub fn shutdown_flushes() -> String {
    let mut j = live_start(json!({"batch_max": 1000, "flush_ms": 600000, "derived": ""}));
    j.upstream(t(60.1), 1, kline(STREAM, T0, 100.0, true))
        .upstream(t(60.2), 1, kline(STREAM, T0 + 60, 101.0, true))
        .input(t(60.3), json!({"type":"shutdown"}))
        .end(t(61.0));
    j.text()
}

pub fn bad_requests() -> String {
    let mut j = JournalBuilder::new(1000.0, json!({}));
    j.ingest_closed(1000.0, FUT, &[100]).connect(1001.0, 1);
    for text in BAD_REQUESTS {
        j.input(1001.0, json!({"type":"client_text","client":1,"text":text}));
    }
    j.input(1001.0, json!({"type":"client_binary","client":1,"len":3}));
    j.client_text(1002.0, 1, json!({"type":"subscribe","series_id":FUT,"since":0})).end(1003.0);
    j.text()
}

pub const BAD_REQUESTS: [&str; 11] = [
    "[\"bad-envelope\"]",
    "{\"series_id\":\"x\"}",
    "{\"type\":\"noop\"}",
    "{\"type\":\"subscribe\"}",
    "{\"type\":\"subscribe\",\"series_id\":\"s\",\"since\":true}",
    "{\"type\":\"subscribe\",\"series_id\":\"s\",\"supports_batch\":\"1\"}",
    "not json",
    "{\"type\":\"subscribe\",\"series_id\":\"binance:spot:BTC/USDT\"}",
    "{\"type\":\"subscribe\",\"series_id\":\"binance:spot:BTC/USDT:7x\"}",
    "{\"type\":\"subscribe\",\"series_id\":\"kraken:spot:BTC/USD:1m\"}",
    "{\"type\":\"subscribe\",\"series_id\":\"binance:margin:BTC/USDT:1m\"}",
];

/// A client over its message rate (2 a second, bursts of 4): ten messages at
/// once — four answered, the fifth refused with one `rate_limited` error, the
/// rest refused silently; a second later the refill admits two more and the
/// next refusal is answered again.
pub fn rate_limited() -> String {
    let mut j = JournalBuilder::new(1000.0, json!({"max_client_messages_per_s": 2}));
    j.ingest_closed(1000.0, FUT, &[100]).connect(1001.0, 1);
    for _ in 0..10 {
        j.input(1001.0, json!({"type":"client_text","client":1,"text":"{\"type\":\"noop\"}"}));
    }
    for _ in 0..3 {
        j.input(1002.0, json!({"type":"client_text","client":1,"text":"{\"type\":\"noop\"}"}));
    }
    j.input(1002.0, json!({"type":"client_binary","client":1,"len":3}));
    j.client_text(1004.0, 1, json!({"type":"subscribe","series_id":FUT,"since":0})).end(1005.0);
    j.text()
}

/// Every fixture: file stem and journal text.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("we_since_100", seeded(&[100, 160, 220], sub(Some(100), false), &[280])),
        ("we_since_100_batch", seeded(&[100, 160, 220], sub(Some(100), true), &[280])),
        ("we_since_0", seeded(&[100, 160, 220], sub(Some(0), false), &[])),
        ("we_since_head", seeded(&[100, 160, 220], sub(Some(220), false), &[280])),
        ("we_live_gap", seeded(&[100], sub(Some(100), false), &[220])),
        ("we_catchup_gap_batch", seeded(&[100, 220, 280], sub(Some(100), true), &[])),
        ("sup_derived_shares_base_job", derived_shares_base_job()),
        ("sup_capacity_evicts_idle", capacity_evicts_idle()),
        ("sup_capacity_rejects", capacity_rejects()),
        ("sup_reaper_ttl_pinned_kept", reaper_ttl_and_pinned(3600.0)),
        ("sup_reconnect_backoff", reconnect_backoff()),
        ("sup_breaker_half_open", breaker_open_then_half_open_recovers()),
        ("live_forming_trailing_edge", forming_trailing_edge()),
        ("live_shutdown_flushes", shutdown_flushes()),
        ("client_bad_requests", bad_requests()),
        ("client_rate_limited", rate_limited()),
        ("heal_first_visit", heal_first_visit().journal),
        ("heal_reconnect", heal_reconnect().journal),
        ("heal_late_close", heal_late_close().journal),
        ("heal_rest_failure", heal_rest_failure().journal),
        ("heal_catchup", heal_catchup().journal),
    ]
}

/// The journal's start time in seconds (for tests that need it).
pub fn start_secs(text: &str) -> f64 {
    let header: Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap_or(json!({}));
    header["start_ns"].as_u64().unwrap_or(0) as f64 / secs(1.0) as f64
}

// ------------------------------------------------------------------ healing
// Scenarios with an exchange model answering REST; each returns the journal
// and the model (what the client saw, what REST was asked).

use super::exchange_model::{candle, ExchangeModel};
use klinegate::store::Store;

pub struct Healed {
    pub journal: String,
    pub model: ExchangeModel,
    pub engine_store: Vec<(String, Vec<i64>)>,
    /// The store's gap ledger at the end.
    pub gaps: Vec<klinegate::store::GapRecord>,
    /// The gap ledger right after the first heal failed (for the failure scenario).
    pub gaps_midway: Vec<klinegate::store::GapRecord>,
}

fn heal_settings(first_visit: usize, derived: &str) -> Settings {
    Settings {
        pins: vec![BTC1.into()],
        derived: derived.into(),
        heal_first_visit_candles: first_visit,
        upstream_silence_s: 3600,
        // Scripted streams are quieter than Binance's (no frame every 1-2 s): no stall checks.
        stream_stall_s: 0,
        ..Settings::default()
    }
}

fn stored(store: &dyn klinegate::store::Store, series: &[&str]) -> Vec<(String, Vec<i64>)> {
    series
        .iter()
        .map(|s| {
            let times = store.read_tail(s, 100_000).unwrap().iter().map(|c| c.candle_time).collect();
            (s.to_string(), times)
        })
        .collect()
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_millis((secs * 1000) as u64)
}

fn finish(rec: Recorder, model: ExchangeModel, series: &[&str]) -> Healed {
    finish_with(rec, model, series, Vec::new())
}

fn finish_with(rec: Recorder, model: ExchangeModel, series: &[&str], gaps_midway: Vec<klinegate::store::GapRecord>) -> Healed {
    let engine_store = stored(&rec.store, series);
    let gaps = rec.store.gaps().unwrap_or_default();
    Healed { journal: rec.journal_text(), model, engine_store, gaps, gaps_midway }
}

fn subscribe(model: &mut ExchangeModel, rec: &mut Recorder, client: u64, series: &str, since: Option<i64>) {
    let now = rec.now;
    model.step(rec, now, Input::ClientConnected { client: ClientId(client) });
    let msg = json!({"type":"subscribe","series_id":series,"since":since,"supports_batch":true});
    model.step(rec, now, Input::ClientText { client: ClientId(client), text: msg.to_string() });
}

/// A series with no stored history: its job fetches the first-visit depth
/// (the open candle's row is not stored) and derived 5m candles roll up.
pub fn heal_first_visit() -> Healed {
    let now_s = T0 + 40 * 60 + 10; // 10 s into minute 40
    let history = (0..=40).map(|k| candle(T0 + 60 * k, 100.0 + k as f64));
    let mut model = ExchangeModel::new(history);
    let mut rec = Recorder::new(heal_settings(30, "5m"), ts(now_s));
    subscribe(&mut model, &mut rec, 1, BTC1, None);
    subscribe(&mut model, &mut rec, 2, BTC5, None);
    let outs = rec.handle(ts(now_s), Input::Start);
    model.settle(&mut rec, outs);
    model.run_until(&mut rec, ts(now_s + 2));
    finish(rec, model, &[BTC1, BTC5])
}

/// The stream drops for five minutes: the missing candles are fetched and
/// delivered before the first live one, in order, with no gap.
pub fn heal_reconnect() -> Healed {
    let history = (0..20).map(|k| candle(T0 + 60 * k, 100.0 + k as f64));
    let mut model = ExchangeModel::new(history);
    let mut rec = Recorder::new(heal_settings(3, ""), ts(T0 + 125));
    let outs = rec.handle(ts(T0 + 125), Input::Start);
    model.settle(&mut rec, outs); // first visit: candles 0 and 1
    subscribe(&mut model, &mut rec, 1, BTC1, Some(T0 - 60));
    let conn = model.conn.expect("connected");
    let c2 = candle(T0 + 120, 102.0);
    let text = model.kline_text(&c2, true);
    model.step(&mut rec, ts(T0 + 180), Input::UpstreamText { conn: ConnId(conn), text });
    model.step(&mut rec, ts(T0 + 190), Input::UpstreamDisconnected { conn: ConnId(1), reason: "reset".into() });
    // Reconnects after its backoff; stays quiet until minute 8 closes.
    model.run_until(&mut rec, ts(T0 + 500));
    let conn = model.conn.expect("reconnected");
    let c8 = candle(T0 + 480, 108.0);
    let text = model.kline_text(&c8, true);
    model.step(&mut rec, ts(T0 + 540), Input::UpstreamText { conn: ConnId(conn), text });
    model.run_until(&mut rec, ts(T0 + 560));
    finish(rec, model, &[BTC1])
}

/// A candle's closing frame never comes: the watchdog fetches it once; the
/// frame arriving later is stored over it, not published again.
pub fn heal_late_close() -> Healed {
    let history = (0..10).map(|k| candle(T0 + 60 * k, 100.0 + k as f64));
    let mut model = ExchangeModel::new(history);
    let mut rec = Recorder::new(heal_settings(1, ""), ts(T0 + 65));
    let outs = rec.handle(ts(T0 + 65), Input::Start);
    model.settle(&mut rec, outs); // first visit: candle 0
    subscribe(&mut model, &mut rec, 1, BTC1, Some(T0));
    let conn = model.conn.expect("connected");
    let forming1 = model.kline_text(&candle(T0 + 60, 101.0), false);
    model.step(&mut rec, ts(T0 + 100), Input::UpstreamText { conn: ConnId(conn), text: forming1 });
    // Minute 1 closes at T0+120 but its x:true never comes; minute 2 starts.
    let forming2 = model.kline_text(&candle(T0 + 120, 102.0), false);
    model.step(&mut rec, ts(T0 + 121), Input::UpstreamText { conn: ConnId(conn), text: forming2 });
    model.run_until(&mut rec, ts(T0 + 130));
    // The late frame finally arrives.
    let late = model.kline_text(&candle(T0 + 60, 101.0), true);
    model.step(&mut rec, ts(T0 + 131), Input::UpstreamText { conn: ConnId(conn), text: late });
    model.run_until(&mut rec, ts(T0 + 135));
    finish(rec, model, &[BTC1])
}

/// REST fails: after the gate opens the client gets a `gap`, then the hole is
/// healed later (written behind the head) once REST answers again.
pub fn heal_rest_failure() -> Healed {
    let history = (0..30).map(|k| candle(T0 + 60 * k, 100.0 + k as f64));
    let mut model = ExchangeModel::new(history);
    for _ in 0..5 {
        model.exchange.rest_failures.push_back((500, "{\"code\":-1000,\"msg\":\"internal error\"}".into()));
    }
    let mut rec = Recorder::new(heal_settings(5, ""), ts(T0 + 305));
    subscribe(&mut model, &mut rec, 1, BTC1, Some(T0 - 60));
    let outs = rec.handle(ts(T0 + 305), Input::Start);
    model.settle(&mut rec, outs);
    let conn = model.conn.expect("connected");
    let c5 = candle(T0 + 300, 105.0);
    let text = model.kline_text(&c5, true);
    model.step(&mut rec, ts(T0 + 361), Input::UpstreamText { conn: ConnId(conn), text });
    // Five failed attempts (backoff 2+4+8+16 s) end the heal; the hole is
    // retried 60 s later: look at the ledger in between.
    model.run_until(&mut rec, ts(T0 + 361 + 60));
    let midway = rec.store.gaps().unwrap_or_default();
    model.run_until(&mut rec, ts(T0 + 361 + 600));
    finish_with(rec, model, &[BTC1], midway)
}

/// A client asks for history older than the store holds: it is healed first
/// and the client's catch-up (held meanwhile) starts at its `since`, no gap.
pub fn heal_catchup() -> Healed {
    let now_s = T0 + 30 * 60 + 10;
    let history = (0..=30).map(|k| candle(T0 + 60 * k, 100.0 + k as f64));
    let mut model = ExchangeModel::new(history);
    let mut rec = Recorder::new(heal_settings(10, "5m"), ts(now_s));
    let outs = rec.handle(ts(now_s), Input::Start);
    model.settle(&mut rec, outs); // first visit: minutes 20..=29
    rec.handle(ts(now_s + 1), Input::ClientConnected { client: ClientId(1) });
    let msg = json!({"type":"subscribe","series_id":BTC1,"since":T0 + 5 * 60,"supports_batch":true});
    let outs = rec.handle(ts(now_s + 1), Input::ClientText { client: ClientId(1), text: msg.to_string() });
    model.settle(&mut rec, outs);
    model.run_until(&mut rec, ts(now_s + 3));
    finish(rec, model, &[BTC1, BTC5])
}
