//! Test support: build journals in code, replay them, and pick frames out of
//! the replay's output lines. Shared by the scenario and fixture tests.
#![allow(dead_code)]

pub mod exchange_model;
pub mod live;
pub mod recorder;
pub mod replay_frames;
pub mod tcp_proxy;
pub mod scenarios;

use klinegate::replay::journal::{self, Header};
use klinegate::store::{MemoryStore, Store};
use serde_json::{json, Value};

pub const NS: u64 = 1_000_000_000;

/// A journal under construction. Times are given in (fractional) seconds.
pub struct JournalBuilder {
    header: Header,
    lines: Vec<String>,
}

impl JournalBuilder {
    /// `settings` is merged over defaults; `pins` default to none here, and
    /// REST healing is off unless a scenario turns it on (it needs answers).
    pub fn new(start_s: f64, settings: Value) -> Self {
        let mut base = json!({"pins": [], "heal": false});
        if let (Some(b), Some(s)) = (base.as_object_mut(), settings.as_object()) {
            for (k, v) in s {
                b.insert(k.clone(), v.clone());
            }
        }
        let settings = serde_json::from_value(base).expect("valid test settings");
        let header = Header::new(settings, klinegate::time::Timestamp(secs(start_s)), true);
        JournalBuilder { header, lines: Vec::new() }
    }

    pub fn input(&mut self, t: f64, input: Value) -> &mut Self {
        self.lines.push(json!({"now": secs(t), "input": input}).to_string());
        self
    }

    pub fn client_text(&mut self, t: f64, client: u64, msg: Value) -> &mut Self {
        self.input(t, json!({"type":"client_text","client":client,"text":msg.to_string()}))
    }

    pub fn connect(&mut self, t: f64, client: u64) -> &mut Self {
        self.input(t, json!({"type":"client_connected","client":client}))
    }

    pub fn upstream(&mut self, t: f64, conn: u64, text: String) -> &mut Self {
        self.input(t, json!({"type":"upstream_text","conn":conn,"text":text}))
    }

    pub fn ingest_closed(&mut self, t: f64, series: &str, times: &[i64]) -> &mut Self {
        let candles: Vec<Value> = times.iter().map(|t| candle_json(*t, 1.0)).collect();
        self.input(t, json!({"type":"ingest_closed","series_id":series,"candles":candles}))
    }

    pub fn end(&mut self, t: f64) -> &mut Self {
        self.lines.push(json!({"now": secs(t), "end": true}).to_string());
        self
    }

    pub fn text(&self) -> String {
        let mut s = serde_json::to_string(&self.header).expect("header serializes");
        s.push('\n');
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

pub fn secs(t: f64) -> u64 {
    (t * NS as f64).round() as u64
}

pub fn candle_json(t: i64, close: f64) -> Value {
    json!({"candle_time": t, "open": close, "high": close + 1.0, "low": close - 0.5, "close": close, "volume": 1.0})
}

/// A combined-stream kline frame as Binance sends it.
pub fn kline(stream: &str, t_s: i64, close: f64, is_final: bool) -> String {
    let (sym, interval) = stream.split_once("@kline_").expect("kline stream");
    let tf_ms: i64 = match interval {
        "1m" => 60_000,
        "5m" => 300_000,
        "1h" => 3_600_000,
        other => panic!("test helper: interval {other}"),
    };
    let t = t_s * 1000;
    json!({"stream": stream, "data": {"e":"kline","E": t + 1000,"s": sym.to_uppercase(),"k":{
        "t": t, "T": t + tf_ms - 1, "s": sym.to_uppercase(), "i": interval, "f": 1, "L": 2,
        "o": format!("{:.2}", close), "c": format!("{:.2}", close),
        "h": format!("{:.2}", close + 1.0), "l": format!("{:.2}", close - 0.5),
        "v": "1.00", "n": 2, "x": is_final, "q": "1.0", "V": "0.5", "Q": "0.5", "B": "0"}}})
    .to_string()
}

pub fn ack(id: u64) -> String {
    json!({"result": null, "id": id}).to_string()
}

/// Replays journal text on a fresh in-memory store; returns the output lines.
pub fn replay_text(text: &str) -> Vec<String> {
    replay_with_store(text, Box::new(MemoryStore::new())).0
}

/// Replays journal text on `store`; returns the output lines, the engine
/// and the store as the replay left them.
pub fn replay_with_store(text: &str, store: Box<dyn Store>) -> (Vec<String>, klinegate::engine::Engine, Box<dyn Store>) {
    let mut out = Vec::new();
    let (replayer, _) = journal::replay(text.as_bytes(), store, &mut out).expect("journal replays");
    let (engine, store, _) = replayer.into_parts();
    let lines = String::from_utf8(out).expect("utf8").lines().map(str::to_string).collect();
    (lines, engine, store)
}

pub fn parse(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).expect("output line is JSON")).collect()
}

/// The frames delivered to one client, in order.
pub fn frames_for(lines: &[String], client: u64) -> Vec<Value> {
    parse(lines)
        .into_iter()
        .filter(|v| v["client"] == json!(client))
        .map(|v| v["frame"].clone())
        .collect()
}

/// Outputs of one `type` (e.g. "upstream_send").
pub fn outputs_of(lines: &[String], kind: &str) -> Vec<Value> {
    parse(lines).into_iter().filter(|v| v["out"]["type"] == json!(kind)).map(|v| v["out"].clone()).collect()
}

/// Compact description of a frame for assertions: `closed 160`, `batch [160,220]`, `gap 160->220`.
pub fn brief(f: &Value) -> String {
    match f["type"].as_str().unwrap_or("?") {
        "candle_closed" => format!("closed {}", f["candle"]["candle_time"]),
        "candle_forming" => format!("forming {} c={}", f["candle"]["candle_time"], f["candle"]["close"]),
        "candles_batch" => {
            let ts: Vec<String> = f["candles"].as_array().map_or(vec![], |a| {
                a.iter().map(|c| c["candle_time"].to_string()).collect()
            });
            format!("batch [{}]", ts.join(","))
        }
        "gap" => format!("gap {}->{}", f["expected_next_time"], f["actual_time"]),
        "error" => format!("error {} {}", f["code"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or("")),
        other => other.to_string(),
    }
}

pub fn briefs(frames: &[Value]) -> Vec<String> {
    frames.iter().map(brief).collect()
}

/// Closed candle times a client received, whether single or batched, in order.
pub fn closed_times(frames: &[Value]) -> Vec<i64> {
    let mut out = Vec::new();
    for f in frames {
        match f["type"].as_str() {
            Some("candle_closed") => out.push(f["candle"]["candle_time"].as_i64().unwrap_or(0)),
            Some("candles_batch") => out.extend(
                f["candles"].as_array().into_iter().flatten().map(|c| c["candle_time"].as_i64().unwrap_or(0)),
            ),
            _ => {}
        }
    }
    out
}
