//! The one sans-IO model of Binance (its WebSockets and its REST klines) that
//! every tool and test playing the exchange against an engine shares: the
//! capture converter ([`super::capture`]), the journal generator
//! ([`super::gen`]), the simulation ([`super::sim`], also the `engine_ops`
//! fuzz target's harness), the engine-level scenario tests and the benches.
//!
//! It reads the engine's exchange-bound outputs (`UpstreamConnect`,
//! `UpstreamSend`, `UpstreamClose`, `RestRequest`) and answers them as
//! Binance does: a connection opens, each `SUBSCRIBE`/`UNSUBSCRIBE` is
//! acknowledged with `{"result":null,"id":N}`, streams are live on their
//! connection once acknowledged, and a klines request gets the rows of a
//! scripted 1m history in Binance's layout (`[]` when it holds none) or a
//! scripted failure.
//!
//! Answers are [`Reply`] values the caller delivers when it chooses (at once,
//! after a latency, or when a fuzzer says so) through [`ExchangeModel::deliver`],
//! which applies the answer's effect (a connection opened, streams live) at
//! that moment, and drops an answer whose connection was closed meanwhile.
//! With [`Answer::Held`] the model answers nothing by itself: the caller
//! opens connections and acks requests one by one (`open`, `ack`).
//!
//! Owns: what the exchange knows (connections, outstanding requests, live
//! and requested streams, its REST history). Never touches the engine's
//! clients or store, never reads a clock (time comes with each call).

use crate::engine::{ConnId, Input, Output};
use crate::model::{Candle, Market};
use crate::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Whether the model answers connects and control requests by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Every connect, control request and REST request gets a [`Reply`].
    Auto,
    /// Connects and control requests wait for `open`/`ack`; REST requests
    /// still get a [`Reply`].
    Held,
}

/// What kind of round trip a reply stands for (a caller adds its latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Connected,
    Ack,
    Rest,
}

/// An answer waiting to be delivered with [`ExchangeModel::deliver`].
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub input: Input,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// `UpstreamConnect` seen; not yet reported connected.
    Opening,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Subscribe,
    Unsubscribe,
    Other,
}

#[derive(Debug)]
pub struct ConnModel {
    pub market: Market,
    pub state: ConnState,
    /// Control requests sent and not yet answered: id → (method, streams).
    pub outstanding: BTreeMap<u64, (Method, Vec<String>)>,
    /// Streams acknowledged as subscribed on this connection.
    pub streams: BTreeSet<String>,
    /// Every stream ever named in a SUBSCRIBE on this connection: the only
    /// ones an exchange sends on it (late frames after UNSUBSCRIBE included).
    pub requested: BTreeSet<String>,
}

#[derive(Debug)]
pub struct ExchangeModel {
    answer: Answer,
    pub conns: BTreeMap<u64, ConnModel>,
    /// 1m history served by REST klines, by open time (seconds).
    pub history: BTreeMap<i64, Candle>,
    /// Scripted REST failures, used before any success: (status, body).
    pub rest_failures: VecDeque<(u16, String)>,
    /// Every REST path requested, with the time.
    pub rest_log: Vec<(Timestamp, String)>,
    /// `X-MBX-USED-WEIGHT` reported with each successful REST reply.
    pub rest_used_weight: Option<u32>,
    /// Connections the engine asked for, ever.
    pub connects: u64,
    /// Control requests acknowledged, ever.
    pub acks: u64,
}

impl ExchangeModel {
    pub fn new(answer: Answer) -> ExchangeModel {
        ExchangeModel {
            answer,
            conns: BTreeMap::new(),
            history: BTreeMap::new(),
            rest_failures: VecDeque::new(),
            rest_log: Vec::new(),
            rest_used_weight: None,
            connects: 0,
            acks: 0,
        }
    }

    /// With a 1m REST history.
    pub fn with_history(answer: Answer, history: impl IntoIterator<Item = Candle>) -> ExchangeModel {
        let mut m = ExchangeModel::new(answer);
        m.history = history.into_iter().map(|c| (c.candle_time, c)).collect();
        m
    }

    /// Takes one engine output. `None` when it is not addressed to the
    /// exchange (client and store outputs, logs); else the replies it causes.
    pub fn on_output(&mut self, out: &Output, now: Timestamp) -> Option<Vec<Reply>> {
        let mut replies = Vec::new();
        match out {
            Output::UpstreamConnect { conn, market, .. } => {
                self.connects += 1;
                let fresh = ConnModel {
                    market: *market,
                    state: ConnState::Opening,
                    outstanding: BTreeMap::new(),
                    streams: BTreeSet::new(),
                    requested: BTreeSet::new(),
                };
                self.conns.insert(conn.0, fresh);
                if self.answer == Answer::Auto {
                    replies.push(Reply { kind: ReplyKind::Connected, input: Input::UpstreamConnected { conn: *conn } });
                }
            }
            Output::UpstreamSend { conn, text } => {
                let Some((id, method, streams)) = control_request(text) else { return Some(replies) };
                let Some(c) = self.conns.get_mut(&conn.0) else { return Some(replies) };
                if method == Method::Subscribe {
                    c.requested.extend(streams.iter().cloned());
                }
                c.outstanding.insert(id, (method, streams));
                if self.answer == Answer::Auto && method != Method::Other {
                    replies.push(Reply { kind: ReplyKind::Ack, input: ack_input(conn.0, id) });
                }
            }
            Output::UpstreamClose { conn, .. } => {
                self.conns.remove(&conn.0);
            }
            Output::RestRequest { id, path, .. } => {
                self.rest_log.push((now, path.clone()));
                let input = match self.rest_failures.pop_front() {
                    Some((status, body)) => {
                        Input::RestResponse { id: *id, status, body, retry_after_s: None, used_weight: None }
                    }
                    None => Input::RestResponse {
                        id: *id,
                        status: 200,
                        body: self.klines(path, now),
                        retry_after_s: None,
                        used_weight: self.rest_used_weight,
                    },
                };
                replies.push(Reply { kind: ReplyKind::Rest, input });
            }
            _ => return None,
        }
        Some(replies)
    }

    /// Applies a reply's effect now and gives its input to hand the engine,
    /// or `None` when its connection was closed (or never opened) meanwhile.
    pub fn deliver(&mut self, reply: Reply) -> Option<Input> {
        match &reply.input {
            Input::UpstreamConnected { conn } => self.open(conn.0),
            Input::UpstreamText { conn, text } => {
                let id = ack_id(text)?;
                self.ack(conn.0, id)
            }
            _ => Some(reply.input),
        }
    }

    /// Opens an `Opening` connection: the input reporting it.
    pub fn open(&mut self, conn: u64) -> Option<Input> {
        let c = self.conns.get_mut(&conn).filter(|c| c.state == ConnState::Opening)?;
        c.state = ConnState::Open;
        Some(Input::UpstreamConnected { conn: ConnId(conn) })
    }

    /// Acknowledges the outstanding request `id` of an open `conn`: its
    /// streams become live (or stop being live), and the ack's input.
    pub fn ack(&mut self, conn: u64, id: u64) -> Option<Input> {
        let c = self.conns.get_mut(&conn).filter(|c| c.state == ConnState::Open)?;
        let (method, streams) = c.outstanding.remove(&id)?;
        for s in streams {
            match method {
                Method::Subscribe => c.streams.insert(s),
                Method::Unsubscribe => c.streams.remove(&s),
                Method::Other => false,
            };
        }
        self.acks += 1;
        Some(ack_input(conn, id))
    }

    /// The exchange drops a connection: the input reporting it.
    pub fn drop_conn(&mut self, conn: u64, reason: &str) -> Option<Input> {
        self.conns.remove(&conn)?;
        Some(Input::UpstreamDisconnected { conn: ConnId(conn), reason: reason.to_string() })
    }

    /// The open connection `stream` is live on.
    pub fn live_conn(&self, stream: &str) -> Option<u64> {
        self.conns.iter().find(|(_, c)| c.state == ConnState::Open && c.streams.contains(stream)).map(|(id, _)| *id)
    }

    /// The `i`-th connection (modulo) in `state`, ascending by id.
    pub fn conn_in(&self, state: ConnState, i: usize) -> Option<u64> {
        let ids: Vec<u64> = self.conns.iter().filter(|(_, c)| c.state == state).map(|(id, _)| *id).collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    /// A klines reply body for `path` at `now`, in Binance's row layout: the
    /// history's rows from `startTime` to `endTime`, opened by `now`, at most `limit`.
    fn klines(&self, path: &str, now: Timestamp) -> String {
        let start = query_param(path, "startTime").unwrap_or(0) / 1000;
        let end = query_param(path, "endTime").unwrap_or(i64::MAX / 1000) / 1000;
        let limit = query_param(path, "limit").unwrap_or(500) as usize;
        let now_ms = (now.as_nanos() / 1_000_000) as i64;
        let rows: Vec<serde_json::Value> = self
            .history
            .range(start..=end)
            .filter(|(t, _)| **t * 1000 <= now_ms)
            .take(limit)
            .map(|(t, c)| {
                serde_json::json!([t * 1000, c.open.to_string(), c.high.to_string(), c.low.to_string(),
                       c.close.to_string(), c.volume.to_string(), t * 1000 + 59_999, "0", 1, "0", "0", "0"])
            })
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
}

fn ack_input(conn: u64, id: u64) -> Input {
    Input::UpstreamText { conn: ConnId(conn), text: format!("{{\"result\":null,\"id\":{id}}}") }
}

/// The id of an ack (`{"result":null,"id":N}`).
fn ack_id(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("result")?.is_null().then_some(())?;
    v.get("id")?.as_u64()
}

/// `(id, method, streams)` of a control request the engine sent.
pub fn control_request(text: &str) -> Option<(u64, Method, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = v.get("id")?.as_u64()?;
    let method = match v.get("method").and_then(|m| m.as_str()) {
        Some("SUBSCRIBE") => Method::Subscribe,
        Some("UNSUBSCRIBE") => Method::Unsubscribe,
        _ => Method::Other,
    };
    let streams = v
        .get("params")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Some((id, method, streams))
}

fn query_param(path: &str, name: &str) -> Option<i64> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// A combined-stream kline frame as Binance sends it, for a stream named
/// `<symbol>@kline_<interval>`: open = close = `price`, high `price + 1`,
/// low `price - 0.5` (floored at 0), volume 1.
pub fn kline_frame(stream: &str, t: i64, tf_s: i64, price: f64, is_final: bool) -> String {
    let sym = stream.split('@').next().unwrap_or("").to_uppercase();
    let interval = stream.rsplit('_').next().unwrap_or("1m");
    let ms = t * 1000;
    format!(
        concat!(
            r#"{{"stream":"{stream}","data":{{"e":"kline","E":{e},"s":"{sym}","k":{{"t":{ms},"T":{end},"s":"{sym}","i":"{i}","f":1,"L":2,"#,
            r#""o":"{o:.2}","c":"{c:.2}","h":"{h:.2}","l":"{l:.2}","v":"1.00","n":2,"x":{x},"q":"1.0","V":"0.5","Q":"0.5","B":"0"}}}}}}"#
        ),
        stream = stream,
        e = ms + 1000,
        sym = sym,
        ms = ms,
        end = ms + tf_s * 1000 - 1,
        i = interval,
        o = price,
        c = price,
        h = price + 1.0,
        l = (price - 0.5).max(0.0),
        x = is_final,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RestId;
    use crate::time::Duration;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn sub(conn: u64, id: u64, streams: &[&str]) -> Output {
        let text = serde_json::json!({"method": "SUBSCRIBE", "params": streams, "id": id}).to_string();
        Output::UpstreamSend { conn: ConnId(conn), text }
    }

    #[test]
    fn auto_answers_are_applied_when_delivered_and_dropped_after_a_close() {
        let mut m = ExchangeModel::new(Answer::Auto);
        let connect = Output::UpstreamConnect { conn: ConnId(1), market: Market::Spot, url: "wss://x".into() };
        let open = m.on_output(&connect, t(0)).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(m.live_conn("a@kline_1m"), None);
        assert_eq!(m.deliver(open[0].clone()), Some(Input::UpstreamConnected { conn: ConnId(1) }));
        let ack = m.on_output(&sub(1, 7, &["a@kline_1m", "b@kline_1m"]), t(1)).unwrap();
        assert_eq!(m.live_conn("a@kline_1m"), None, "not live before the ack is delivered");
        m.deliver(ack[0].clone()).unwrap();
        assert_eq!(m.live_conn("b@kline_1m"), Some(1));
        // A reply whose connection closed before delivery is dropped.
        let ack2 = m.on_output(&sub(1, 8, &["c@kline_1m"]), t(2)).unwrap();
        assert!(m.on_output(&Output::UpstreamClose { conn: ConnId(1), reason: "x".into() }, t(2)).unwrap().is_empty());
        assert_eq!(m.deliver(ack2[0].clone()), None);
        assert_eq!(m.live_conn("b@kline_1m"), None);
        assert_eq!(m.on_output(&Output::Log { level: crate::engine::LogLevel::Info, line: String::new() }, t(2)), None);
    }

    #[test]
    fn held_answers_wait_for_open_and_ack_and_unsubscribe_ends_a_stream() {
        let mut m = ExchangeModel::new(Answer::Held);
        let connect = Output::UpstreamConnect { conn: ConnId(3), market: Market::Futures, url: "wss://x".into() };
        assert!(m.on_output(&connect, t(0)).unwrap().is_empty());
        assert_eq!(m.conn_in(ConnState::Opening, 5), Some(3));
        assert_eq!(m.ack(3, 1), None, "no ack on a connection still opening");
        m.open(3).unwrap();
        assert!(m.on_output(&sub(3, 1, &["a@kline_1m"]), t(1)).unwrap().is_empty());
        assert_eq!(m.ack(3, 2), None, "no ack for a request never sent");
        m.ack(3, 1).unwrap();
        assert_eq!(m.live_conn("a@kline_1m"), Some(3));
        let unsub = serde_json::json!({"method": "UNSUBSCRIBE", "params": ["a@kline_1m"], "id": 2}).to_string();
        m.on_output(&Output::UpstreamSend { conn: ConnId(3), text: unsub }, t(2)).unwrap();
        m.ack(3, 2).unwrap();
        assert_eq!(m.live_conn("a@kline_1m"), None);
        assert!(m.conns[&3].requested.contains("a@kline_1m"), "requested is kept for late frames");
        assert_eq!(m.drop_conn(3, "gone"), Some(Input::UpstreamDisconnected { conn: ConnId(3), reason: "gone".into() }));
        assert_eq!(m.drop_conn(3, "gone"), None);
    }

    #[test]
    fn rest_klines_come_from_the_history_opened_by_now_or_a_scripted_failure() {
        let c = |s: i64| Candle { candle_time: s, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 };
        let mut m = ExchangeModel::with_history(Answer::Held, [c(60), c(120), c(180)]);
        m.rest_used_weight = Some(2);
        m.rest_failures.push_back((429, "slow down".into()));
        let req = |id| Output::RestRequest { id, market: Market::Spot, path: "/api/v3/klines?symbol=A&interval=1m&startTime=60000&limit=5".into() };
        let r = m.on_output(&req(RestId(1)), t(200)).unwrap();
        assert!(matches!(&r[0].input, Input::RestResponse { status: 429, .. }));
        let r = m.on_output(&req(RestId(2)), Timestamp::from_secs(120).add(Duration::from_millis(1))).unwrap();
        let Input::RestResponse { status: 200, body, used_weight: Some(2), .. } = &r[0].input else { panic!("{r:?}") };
        let rows: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        assert_eq!(rows.len(), 2, "the row opening after now is not served");
        assert_eq!(rows[1][0], 120_000);
        assert_eq!(rows[1][4], "1.5");
        assert_eq!(m.rest_log.len(), 2);
        let empty = ExchangeModel::new(Answer::Auto).on_output(&req(RestId(3)), t(999)).unwrap();
        assert!(matches!(&empty[0].input, Input::RestResponse { status: 200, body, used_weight: None, .. } if body == "[]"));
    }

    #[test]
    fn kline_frames_parse_as_binance_klines() {
        let text = kline_frame("btcusdt@kline_5m", 300, 300, 10.0, true);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"]["k"]["T"], 599_999);
        assert_eq!(v["data"]["k"]["x"], true);
        assert_eq!(v["data"]["k"]["l"], "9.50");
    }
}
