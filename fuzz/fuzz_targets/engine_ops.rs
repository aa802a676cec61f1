//! Fuzzes the deterministic core with arbitrary sequences of operations: client
//! connects, messages (from a dictionary of valid and invalid ones over a few
//! series), binary frames, stalls and disconnects; upstream connects, failures,
//! acks, kline frames built from parameters, garbage; HTTP ingest; store
//! outages; time steps; shutdown. The model shell in `klinegate_fuzz::harness`
//! carries out the engine's outputs and checks invariants I1-I8 after every
//! step (listed there and in fuzz/README.md).
#![no_main]

use arbitrary::Arbitrary;
use klinegate::model::Candle;
use klinegate::time::Timestamp;
use klinegate_fuzz::harness::{series_pool, ConnState, Harness, SimSettings, STREAMS, T0};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Config {
    pinned: bool,
    derived: bool,
    small_backlog: bool,
    batch_max: u8,
    cap: u8,
    forming_zero: bool,
    tiny_store_backlog: bool,
    seed: u8,
}

#[derive(Arbitrary, Debug)]
enum Msg {
    Subscribe { series: u8, since: Option<i8>, batch: bool, full: bool },
    Unsubscribe { series: u8 },
    UnsubscribeAll,
    /// One of a few invalid messages.
    Bad(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Text(u8, Msg),
    RawText(u8, String),
    Binary(u8),
    Disconnect(u8),
    Stall(u8, bool),
    /// A client's bytes per write from now on (0: whole queues).
    WriteBudget(u8, u16),
    UpConnected(u8),
    UpFail(u8),
    UpAck(u8, u8),
    /// conn, stream, minute offset from now (-3..), final, price.
    Kline { conn: u8, stream: u8, offset: i8, is_final: bool, price: u16 },
    Garbage(u8, String),
    IngestClosed { series: u8, offsets: Vec<i8>, valid: bool },
    IngestForming { series: u8, offset: i8 },
    StoreDown(bool),
    Advance(u16),
    AdvanceMinutes(u8),
    RunTimers(u16),
    Shutdown,
}

const BAD: [&str; 9] = [
    "{not json",
    "[]",
    r#"{"type":"subscribe"}"#,
    r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:7m"}"#,
    r#"{"type":"subscribe","series_id":"binance:moon:BTC/USDT:1m"}"#,
    r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","since":"x"}"#,
    r#"{"type":"subscribe","series_id":"binance:spot:btc/usdt:1m","since":-5}"#,
    r#"{"type":"ping"}"#,
    r#"{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","fields":"everything"}"#,
];

fn client_id(i: u8) -> u64 {
    1 + (i % 4) as u64
}

fn series(i: u8) -> &'static str {
    let pool = series_pool();
    pool[i as usize % pool.len()]
}

/// Open time `offset` candles from the candle forming at `now`.
fn candle_time(now: Timestamp, tf_s: i64, offset: i8) -> i64 {
    let cur = now.as_secs() - now.as_secs().rem_euclid(tf_s);
    cur + tf_s * offset.clamp(-8, 3) as i64
}

fn candle(t: i64, price: u16) -> Candle {
    let p = price as f64 / 16.0;
    Candle { candle_time: t, open: p, high: p + 1.0, low: p, close: p, volume: 1.0 }
}

fn message(m: &Msg, now: Timestamp) -> String {
    match m {
        Msg::Subscribe { series: s, since, batch, full } => {
            let since = match since {
                None => String::new(),
                Some(k) => format!(r#","since":{}"#, candle_time(now, 60, *k)),
            };
            let fields = if *full { r#","fields":"full""# } else { "" };
            format!(r#"{{"type":"subscribe","series_id":"{}"{since},"supports_batch":{batch}{fields}}}"#, series(*s))
        }
        Msg::Unsubscribe { series: s } => format!(r#"{{"type":"unsubscribe","series_id":"{}"}}"#, series(*s)),
        Msg::UnsubscribeAll => r#"{"type":"unsubscribe"}"#.to_string(),
        Msg::Bad(i) => BAD[*i as usize % BAD.len()].to_string(),
    }
}

fn step(h: &mut Harness, op: &Op) {
    match op {
        Op::Connect(c) => h.connect(client_id(*c)),
        Op::Text(c, m) => {
            let text = message(m, h.now);
            h.client_text(client_id(*c), &text)
        }
        Op::RawText(c, t) => h.client_text(client_id(*c), t),
        Op::Binary(c) => h.client_binary(client_id(*c)),
        Op::Disconnect(c) => h.disconnect(client_id(*c)),
        Op::Stall(c, on) => h.set_stalled(client_id(*c), *on),
        Op::WriteBudget(c, b) => {
            let budget = if *b == 0 { klinegate::engine::Input::WRITE_ALL } else { *b as usize };
            h.set_write_budget(client_id(*c), budget)
        }
        Op::UpConnected(i) => {
            if let Some(conn) = h.conn_in(ConnState::Opening, *i as usize) {
                h.up_connected(conn)
            }
        }
        Op::UpFail(i) => {
            let conn = h.conn_in(ConnState::Opening, *i as usize).or(h.conn_in(ConnState::Open, *i as usize));
            if let Some(conn) = conn {
                h.up_disconnected(conn)
            }
        }
        Op::UpAck(i, k) => {
            if let Some(conn) = h.conn_in(ConnState::Open, *i as usize) {
                h.up_ack(conn, *k as usize)
            }
        }
        Op::Kline { conn, stream, offset, is_final, price } => {
            if let Some(c) = h.conn_in(ConnState::Open, *conn as usize) {
                // Only streams requested on this connection, as an exchange would.
                let streams = h.requested_streams(c);
                let Some(&s) = streams.get(*stream as usize % streams.len().max(1)) else { return h.check() };
                let t = candle_time(h.now, STREAMS[s].3, *offset);
                h.up_kline(c, s, t, *price as f64 / 16.0, *is_final)
            }
        }
        Op::Garbage(i, text) => {
            if let Some(conn) = h.conn_in(ConnState::Open, *i as usize) {
                h.up_text(conn, text)
            }
        }
        Op::IngestClosed { series: s, offsets, valid } => {
            let id = series(*s);
            let tf = klinegate::model::SeriesId::parse(id).map_or(60, |x| x.timeframe().seconds());
            let mut candles: Vec<Candle> =
                offsets.iter().take(8).map(|o| candle(candle_time(h.now, tf, *o), 100)).collect();
            if !valid {
                if let Some(c) = candles.first_mut() {
                    c.high = -1.0;
                }
            }
            h.ingest_closed(id, candles)
        }
        Op::IngestForming { series: s, offset } => {
            let id = series(*s);
            let tf = klinegate::model::SeriesId::parse(id).map_or(60, |x| x.timeframe().seconds());
            h.ingest_forming(id, candle(candle_time(h.now, tf, *offset), 50))
        }
        Op::StoreDown(on) => h.set_store_down(*on),
        Op::Advance(ms) => h.advance(*ms as u64),
        Op::AdvanceMinutes(m) => h.advance((*m % 16) as u64 * 60_000),
        Op::RunTimers(ms) => {
            let until = h.now.add(klinegate::time::Duration::from_millis(*ms as u64 * 10));
            h.run_until(until)
        }
        Op::Shutdown => h.shutdown(),
    }
    h.check();
}

fuzz_target!(|input: (Config, Vec<Op>)| {
    let (cfg, ops) = input;
    let sim = SimSettings {
        pinned: cfg.pinned,
        derived: cfg.derived,
        backlog_bytes: if cfg.small_backlog { 1500 } else { 1 << 20 },
        batch_max: 1 + (cfg.batch_max % 4) as usize,
        max_ondemand_jobs: (cfg.cap % 3) as usize,
        forming_ms: if cfg.forming_zero { 0 } else { 250 },
        store_backlog_max: if cfg.tiny_store_backlog { 3 } else { 1_000_000 },
        rng_seed: cfg.seed as u64,
    };
    let mut h = Harness::new(&sim, Timestamp::from_secs((T0 + 30) as u64));
    for op in ops.iter().take(256) {
        step(&mut h, op);
    }
    h.finish();
});
