//! A scripted exchange for engine-level scenarios: it answers the engine's
//! outputs the way Binance would — connections open, SUBSCRIBE is acked, REST
//! klines come from a scripted 1m history (the row of the candle still open at
//! the engine's `now` carries forming values) — through a `Recorder`, so every
//! scenario is also a journal.
#![allow(dead_code)]

use super::recorder::Recorder;
use klinegate::engine::{Input, Output};
use klinegate::model::Candle;
use klinegate::time::Timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

pub struct ExchangeModel {
    /// 1m history by open time (seconds).
    pub history: BTreeMap<i64, Candle>,
    /// Scripted REST failures, used before any success: (status, body).
    pub rest_failures: VecDeque<(u16, String)>,
    /// Every REST path requested, with the time.
    pub rest_log: Vec<(Timestamp, String)>,
    pub conn: Option<u64>,
    /// Frames every client received, in order: (client, frame).
    pub frames: Vec<(u64, Value)>,
    pub closes: Vec<(u64, u16)>,
}

pub fn candle(t: i64, close: f64) -> Candle {
    Candle { candle_time: t, open: close - 0.5, high: close + 1.0, low: close - 1.0, close, volume: 2.0 }
}

fn query_param(path: &str, name: &str) -> Option<i64> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}=")).and_then(|v| v.parse().ok()))
}

impl ExchangeModel {
    pub fn new(history: impl IntoIterator<Item = Candle>) -> ExchangeModel {
        ExchangeModel {
            history: history.into_iter().map(|c| (c.candle_time, c)).collect(),
            rest_failures: VecDeque::new(),
            rest_log: Vec::new(),
            conn: None,
            frames: Vec::new(),
            closes: Vec::new(),
        }
    }

    /// Carries out outputs until the engine is quiet.
    pub fn settle(&mut self, rec: &mut Recorder, outs: Vec<Output>) {
        let mut queue: VecDeque<Output> = outs.into();
        while let Some(o) = queue.pop_front() {
            let now = rec.now;
            let more = match o {
                Output::UpstreamConnect { conn, .. } => {
                    self.conn = Some(conn);
                    rec.handle(now, Input::UpstreamConnected { conn })
                }
                Output::UpstreamSend { conn, text } => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match v["id"].as_u64() {
                        Some(id) => rec.handle(now, Input::UpstreamText { conn, text: json!({"result":null,"id":id}).to_string() }),
                        None => Vec::new(),
                    }
                }
                Output::RestRequest { id, path, .. } => {
                    self.rest_log.push((now, path.clone()));
                    let input = match self.rest_failures.pop_front() {
                        Some((status, body)) => Input::RestResponse { id, status, body, retry_after_s: None, used_weight: None },
                        None => Input::RestResponse { id, status: 200, body: self.klines(&path, now), retry_after_s: None, used_weight: Some(2) },
                    };
                    rec.handle(now, input)
                }
                Output::ClientClose { client, code, .. } => {
                    self.closes.push((client, code));
                    Vec::new()
                }
                _ => Vec::new(),
            };
            queue.extend(more);
        }
        self.frames.extend(rec.take_frames());
    }

    /// A klines response for `path` at `now`, with Binance's row layout.
    fn klines(&self, path: &str, now: Timestamp) -> String {
        let start = query_param(path, "startTime").unwrap_or(0) / 1000;
        let end = query_param(path, "endTime").unwrap_or(i64::MAX / 1000) / 1000;
        let limit = query_param(path, "limit").unwrap_or(500) as usize;
        let now_ms = (now.as_nanos() / 1_000_000) as i64;
        let rows: Vec<Value> = self
            .history
            .range(start..=end)
            .filter(|(t, _)| **t * 1000 <= now_ms)
            .take(limit)
            .map(|(t, c)| {
                json!([t * 1000, c.open.to_string(), c.high.to_string(), c.low.to_string(), c.close.to_string(),
                       c.volume.to_string(), t * 1000 + 59_999, "0", 1, "0", "0", "0"])
            })
            .collect();
        Value::Array(rows).to_string()
    }

    /// One input, then settle, then (as the shell does at the end of a loop
    /// turn) fire the timers already due.
    pub fn step(&mut self, rec: &mut Recorder, now: Timestamp, input: Input) {
        let outs = rec.handle(now, input);
        self.settle(rec, outs);
        self.run_until(rec, now);
    }

    /// Fires every timer up to `until`, settling after each.
    pub fn run_until(&mut self, rec: &mut Recorder, until: Timestamp) {
        while let Some(at) = rec.next_timer(until) {
            let outs = rec.timeout(at.max(rec.now));
            self.settle(rec, outs);
        }
    }

    /// A kline frame for the connected stream.
    pub fn kline_text(&self, c: &Candle, is_final: bool) -> String {
        super::kline("btcusdt@kline_1m", c.candle_time, c.close, is_final)
    }

    pub fn frames_of(&self, client: u64) -> Vec<Value> {
        self.frames.iter().filter(|(c, _)| *c == client).map(|(_, f)| f.clone()).collect()
    }
}
