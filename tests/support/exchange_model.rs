//! A scripted exchange for engine-level scenarios: the library's one model of
//! Binance (`klinegate::replay::exchange`, answering at once: connections
//! open, SUBSCRIBE is acked, REST klines come from a scripted 1m history)
//! driven through a `Recorder`, so every scenario is also a journal.
#![allow(dead_code)]

use super::recorder::Recorder;
use klinegate::engine::{Input, Output};
use klinegate::model::Candle;
use klinegate::replay::exchange::{self, Answer};
use klinegate::time::Timestamp;
use serde_json::Value;
use std::collections::VecDeque;

pub struct ExchangeModel {
    pub exchange: exchange::ExchangeModel,
    /// The last connection opened.
    pub conn: Option<u64>,
    /// Frames every client received, in order: (client, frame).
    pub frames: Vec<(u64, Value)>,
    pub closes: Vec<(u64, u16)>,
}

pub fn candle(t: i64, close: f64) -> Candle {
    Candle { candle_time: t, open: close - 0.5, high: close + 1.0, low: close - 1.0, close, volume: 2.0 }
}

impl ExchangeModel {
    pub fn new(history: impl IntoIterator<Item = Candle>) -> ExchangeModel {
        let mut exchange = exchange::ExchangeModel::with_history(Answer::Auto, history);
        exchange.rest_used_weight = Some(2);
        ExchangeModel {
            exchange,
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
            if let Output::UpstreamConnect { conn, .. } = &o {
                self.conn = Some(conn.0);
            }
            let more = match self.exchange.on_output(&o, now) {
                Some(replies) => {
                    let mut more = Vec::new();
                    for r in replies {
                        if let Some(input) = self.exchange.deliver(r) {
                            more.extend(rec.handle(now, input));
                        }
                    }
                    more
                }
                None => match o {
                    Output::ClientClose { client, code, .. } => {
                        self.closes.push((client.0, code));
                        Vec::new()
                    }
                    _ => Vec::new(),
                },
            };
            queue.extend(more);
        }
        self.frames.extend(rec.take_frames());
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
