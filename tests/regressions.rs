//! Regression tests for bugs found by the fuzz targets and the seeded
//! simulation (fuzz/, tests/simulation.rs). Each test names where it was found.

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Engine, Input, Output};
use klinegate::model::Market;
use klinegate::replay::hosted::Hosted;
use klinegate::store::{MemoryStore, Store};
use klinegate::time::Timestamp;
use serde_json::Value;

const T0: i64 = 1_699_999_800;

fn kline(stream: &str, t: i64, is_final: bool) -> String {
    let sym = stream.split('@').next().unwrap_or("").to_uppercase();
    let ms = t * 1000;
    format!(
        r#"{{"stream":"{stream}","data":{{"e":"kline","E":{e},"s":"{sym}","k":{{"t":{ms},"T":{end},"s":"{sym}","i":"1m","f":1,"L":2,"o":"10.00","c":"10.00","h":"11.00","l":"9.50","v":"1.00","n":2,"x":{is_final},"q":"1.0","V":"0.5","Q":"0.5","B":"0"}}}}}}"#,
        e = ms + 60_000,
        end = ms + 59_999,
    )
}

/// Drains outputs, answering like a shell and an exchange that opens every
/// connection and acks every control request. Returns the market of each
/// connection opened.
fn drain(e: &mut Hosted<MemoryStore>, now: Timestamp, conns: &mut Vec<(u64, Market)>) {
    let mut acks = Vec::new();
    let mut opened = Vec::new();
    while let Some(out) = e.poll_output() {
        match out {
            Output::UpstreamConnect { conn, market, .. } => {
                conns.push((conn.0, market));
                opened.push(conn);
            }
            Output::UpstreamSend { conn, text } => {
                let v: Value = serde_json::from_str(&text).unwrap();
                acks.push((conn, v["id"].as_u64().unwrap()));
            }
            _ => {}
        }
    }
    for conn in opened {
        e.handle(Input::UpstreamConnected { conn }, now).unwrap();
        drain(e, now, conns);
    }
    for (conn, id) in acks {
        let text = format!(r#"{{"result":null,"id":{id}}}"#);
        e.handle(Input::UpstreamText { conn, text }, now).unwrap();
        drain(e, now, conns);
    }
}

/// Found by tests/simulation.rs (seed 0, invariant I7) and confirmed here.
///
/// The same symbol and interval on spot and on futures have the same Binance
/// stream name (`ethusdt@kline_1m`), and the engine routes exchange frames by
/// stream name alone (`Engine::stream_jobs: HashMap<String, SeriesIdx>`,
/// src/engine/jobs.rs `on_kline` / `start_job`, now `job/frames.rs` and `job/lifecycle.rs`), ignoring the connection's
/// market; the upstream pool does the same (`UpstreamPool::attach` returns
/// early when `stream_market` already holds the name, src/engine/upstream.rs).
/// With both series subscribed: no futures connection is ever opened (the
/// futures series never gets exchange data), the futures job, started second,
/// takes over the name in `stream_jobs`, so spot candles are stored and
/// published as futures candles; and stopping either job detaches the stream
/// the other still needs.
///
/// Fixed: streams are keyed by (market, stream name) in `Engine::stream_jobs`
/// and in the pool, and a frame's job is looked up with the market of the
/// connection it arrived on.
#[test]
fn spot_and_futures_series_of_one_symbol_keep_their_own_candles() {
    let settings = Settings { pins: vec![], derived: String::new(), ..Settings::default() };
    let now = Timestamp::from_secs((T0 + 90) as u64);
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    let mut conns = Vec::new();
    e.handle(Input::ClientConnected { client: ClientId(1) }, now).unwrap();
    for s in ["binance:spot:ETH/USDT:1m", "binance:futures:ETH/USDT:1m"] {
        let text = format!(r#"{{"type":"subscribe","series_id":"{s}"}}"#);
        e.handle(Input::ClientText { client: ClientId(1), text }, now).unwrap();
        drain(&mut e, now, &mut conns);
    }
    let spot = conns.iter().find(|(_, m)| *m == Market::Spot).expect("a spot connection").0;

    e.handle(Input::UpstreamText { conn: ConnId(spot), text: kline("ethusdt@kline_1m", T0, true) }, now).unwrap();
    e.handle(Input::Shutdown, now).unwrap();
    while e.poll_output().is_some() {}

    let times = |series: &str| -> Vec<i64> {
        e.store.read_tail(series, 10).unwrap().iter().map(|c| c.candle_time).collect()
    };
    // Today: [] and [T0] — the spot candle is stored as a futures candle.
    assert_eq!(times("binance:spot:ETH/USDT:1m"), vec![T0], "the spot candle belongs to the spot series");
    assert_eq!(times("binance:futures:ETH/USDT:1m"), Vec::<i64>::new(), "no futures candle was sent");
    // Today: only the spot connection — the pool thinks the futures stream is served.
    assert!(
        conns.iter().any(|(_, m)| *m == Market::Futures),
        "the futures series needs a futures connection: {conns:?}"
    );
}

/// Found by tests/live_upstream.rs under load: a rotation closed the old
/// connection the moment the new one's SUBSCRIBE was acknowledged, so a frame
/// the exchange had already sent on the old connection (read after the ack)
/// was dropped. The old connection is now drained for a moment first.
#[test]
fn a_frame_on_the_rotated_out_connection_after_the_new_ack_is_kept() {
    let settings = Settings {
        pins: vec!["binance:spot:BTC/USDT:1m".into()],
        derived: String::new(),
        heal: false,
        upstream_rotate_s: 10,
        ..Settings::default()
    };
    let mut now = Timestamp::from_secs(T0 as u64);
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    let mut conns = Vec::new();
    e.handle(Input::Start, now).unwrap();
    drain(&mut e, now, &mut conns);
    let old = conns[0].0;
    // Rotation time: the replacement opens, subscribes and is acknowledged.
    now = Timestamp::from_secs(T0 as u64 + 11);
    e.handle_timeout(now);
    drain(&mut e, now, &mut conns);
    assert_eq!(conns.len(), 2, "a replacement connection was opened");
    // A close sent on the old connection before the switch is read now.
    e.handle(Input::UpstreamText { conn: ConnId(old), text: kline("btcusdt@kline_1m", T0 - 60, true) }, now).unwrap();
    now = Timestamp::from_secs(T0 as u64 + 12);
    e.handle_timeout(now);
    let stored = e.store.read_tail("binance:spot:BTC/USDT:1m", 10).unwrap();
    assert_eq!(stored.iter().map(|c| c.candle_time).collect::<Vec<_>>(), vec![T0 - 60]);
}
