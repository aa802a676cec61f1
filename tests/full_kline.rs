//! The whole kline (#15 §4): Binance's quote volume, trade count and
//! taker-buy base/quote volume are parsed, kept by the engine for closes,
//! stored beside the candle (SQLite schema migration 3, the memory store),
//! summed into derived timeframes (only complete buckets), and served on
//! `GET /api/market/candles?fields=full`; without `fields` every shape stays
//! the reference's. Time is an input throughout.

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Engine, Input, Output};
use klinegate::kline_ext::KlineExt;
use klinegate::model::Candle;
use klinegate::replay::hosted::Hosted;
use klinegate::shell::api::routes::{route, HttpConfig, Routed};
use klinegate::shell::api::stats::ShellStats;
use klinegate::store::{ExtRows, MemoryStore, SeriesBatch, SqliteStore, Store};
use klinegate::time::Timestamp;
use klinegate::wire::binance::{parse_frame, Frame};
use serde_json::{json, Value};

const BTC1: &str = "binance:spot:BTC/USDT:1m";
const BTC5: &str = "binance:spot:BTC/USDT:5m";
const STREAM: &str = "btcusdt@kline_1m";
const T0: i64 = 1_700_000_100; // a whole 5 minutes

fn frame(t: i64, i: i64, is_final: bool, full: bool) -> String {
    let extra = if full {
        format!(r#","q":"{}.5","V":"{}.25","Q":"{}.75""#, 10 * i, i, 5 * i)
    } else {
        String::new()
    };
    format!(
        r#"{{"stream":"{STREAM}","data":{{"e":"kline","E":{e},"s":"BTCUSDT","k":{{"t":{t_ms},"T":{close},"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"100","c":"101","h":"102","l":"99","v":"{i}","n":{i},"x":{is_final}{extra},"B":"0"}}}}}}"#,
        e = (t + 60) * 1000,
        t_ms = t * 1000,
        close = (t + 60) * 1000 - 1,
    )
}

fn ext(i: i64) -> KlineExt {
    KlineExt {
        quote_volume: 10.0 * i as f64 + 0.5,
        trades: i as u64,
        taker_buy_base_volume: i as f64 + 0.25,
        taker_buy_quote_volume: 5.0 * i as f64 + 0.75,
    }
}

#[test]
fn the_parser_reads_the_whole_kline_and_a_frame_without_it_still_parses() {
    for text in [frame(T0, 3, true, true), frame(T0, 3, true, true).replace(r#""n":3,"x":true,"q""#, r#""x":true,"n":3,"q""#)] {
        let Ok(Frame::Kline(k)) = parse_frame(&text) else { panic!("{text}") };
        assert_eq!(k.ext, Some(ext(3)), "{text}");
    }
    let plain = frame(T0, 3, true, false);
    let Ok(Frame::Kline(k)) = parse_frame(&plain) else { panic!() };
    assert_eq!((k.ext, k.candle.volume), (None, 3.0));
    let bad = frame(T0, 3, true, true).replace(r#""q":"30.5""#, r#""q":"-1""#);
    let Ok(Frame::Kline(k)) = parse_frame(&bad) else { panic!("a bad q does not lose the candle") };
    assert_eq!(k.ext, None);
}

fn engine(full: bool) -> (Hosted<MemoryStore>, u64) {
    let settings = Settings {
        pins: vec![BTC1.into()],
        derived: "5m".into(),
        heal: false,
        full_klines: full,
        upstream_silence_s: 100_000,
        stream_stall_s: 0,
        ..Settings::default()
    };
    let mut h = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), Timestamp::from_secs(T0 as u64)), MemoryStore::new());
    h.handle(Input::Start, Timestamp::from_secs(T0 as u64)).unwrap();
    let conn = exchange(&mut h, T0).expect("a connection to the exchange");
    (h, conn.0)
}

/// Plays the exchange's side of connecting and subscribing; returns the connection.
fn exchange(h: &mut Hosted<MemoryStore>, t: i64) -> Option<klinegate::engine::ConnId> {
    let now = Timestamp::from_secs(t as u64);
    let mut conn = None;
    for _ in 0..10 {
        let outs = h.take_outputs();
        if outs.is_empty() {
            break;
        }
        for o in outs {
            match o {
                Output::UpstreamConnect { conn: c, .. } => {
                    conn = Some(c);
                    h.handle(Input::UpstreamConnected { conn: c }, now).unwrap();
                }
                Output::UpstreamSend { conn: c, text } => {
                    conn = Some(c);
                    let req: Value = serde_json::from_str(&text).unwrap();
                    let ack = json!({"result": null, "id": req["id"]}).to_string();
                    h.handle(Input::UpstreamText { conn: c, text: ack }, now).unwrap();
                }
                _ => {}
            }
        }
    }
    conn
}

/// Closes minutes `T0 + 60 i` for `i` in `minutes`, each with fields `ext(i + 1)`
/// unless `i` is in `without`, then lets every flush run.
fn play((h, conn): &mut (Hosted<MemoryStore>, u64), minutes: std::ops::Range<i64>, without: &[i64]) {
    let conn = *conn;
    for i in minutes {
        let t = T0 + 60 * i;
        let now = Timestamp::from_secs((t + 61) as u64);
        let text = frame(t, i + 1, true, !without.contains(&i));
        h.handle(Input::UpstreamText { conn: ConnId(conn), text }, now).unwrap();
        h.handle_timeout(Timestamp::from_secs((t + 62) as u64));
    }
}

fn stored_ext((h, _): &(Hosted<MemoryStore>, u64), id: &str) -> Vec<(i64, KlineExt)> {
    h.store.read_ext(id, i64::MIN, i64::MAX).unwrap()
}

#[test]
fn closes_store_their_fields_and_a_complete_derived_bucket_stores_the_sums() {
    let mut h = engine(true);
    play(&mut h, 0..6, &[]);
    let one: Vec<(i64, KlineExt)> = (0..6).map(|i| (T0 + 60 * i, ext(i + 1))).collect();
    assert_eq!(stored_ext(&h, BTC1), one);
    let five = h.0.store.read_tail(BTC5, 10).unwrap();
    assert_eq!(five.iter().map(|c| c.candle_time).collect::<Vec<_>>(), vec![T0], "one closed 5m candle");
    // Minutes 1..=5: quote 10*15 + 5*0.5, trades 15, taker base 15 + 5*0.25, taker quote 5*15 + 5*0.75.
    let sum = KlineExt { quote_volume: 152.5, trades: 15, taker_buy_base_volume: 16.25, taker_buy_quote_volume: 78.75 };
    assert_eq!(stored_ext(&h, BTC5), vec![(T0, sum)]);
}

#[test]
fn a_bucket_with_a_minute_without_fields_stores_none_for_the_derived_candle() {
    let mut h = engine(true);
    play(&mut h, 0..6, &[2]);
    assert_eq!(stored_ext(&h, BTC1).len(), 5, "the minute without fields has none");
    assert_eq!(h.0.store.read_tail(BTC5, 10).unwrap().len(), 1);
    assert!(stored_ext(&h, BTC5).is_empty(), "never a partial sum passed off as the whole");
}

#[test]
fn off_it_keeps_nothing_and_writes_as_before() {
    let mut h = engine(false);
    play(&mut h, 0..6, &[]);
    assert_eq!(h.0.store.read_tail(BTC1, 10).unwrap().len(), 6);
    assert!(stored_ext(&h, BTC1).is_empty());
    assert!(stored_ext(&h, BTC5).is_empty());
}

fn candle(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 }
}

#[test]
fn sqlite_migration_3_adds_the_columns_old_rows_have_none_and_an_upsert_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        // A version-2 database, as the previous release left it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE candles (series_id TEXT NOT NULL, candle_time INTEGER NOT NULL, open REAL NOT NULL,
               high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL, volume REAL NOT NULL,
               PRIMARY KEY (series_id, candle_time)) WITHOUT ROWID;
             CREATE TABLE gaps (series_id TEXT NOT NULL PRIMARY KEY, from_time INTEGER NOT NULL, to_time INTEGER NOT NULL,
               reason TEXT NOT NULL, attempts INTEGER NOT NULL, updated_at INTEGER NOT NULL);
             INSERT INTO candles VALUES ('binance:spot:BTC/USDT:1m', 60, 1, 2, 0.5, 1.5, 3);
             PRAGMA application_id = 1263291975; PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.read_tail(BTC1, 10).unwrap(), vec![candle(60)], "old rows stay");
    assert!(s.read_ext(BTC1, 0, 1000).unwrap().is_empty(), "and have no fields");
    s.write_batches(&[SeriesBatch { series_id: BTC1.into(), candles: vec![candle(120)] }]).unwrap();
    s.write_ext(&[ExtRows { series_id: BTC1.into(), rows: vec![(120, ext(2)), (180, ext(3))] }]).unwrap();
    assert_eq!(s.read_ext(BTC1, 0, 1000).unwrap(), vec![(120, ext(2))], "a row the store does not hold is skipped");
    s.write_batches(&[SeriesBatch { series_id: BTC1.into(), candles: vec![Candle { close: 1.75, ..candle(120) }] }]).unwrap();
    assert_eq!(s.read_ext(BTC1, 0, 1000).unwrap(), vec![(120, ext(2))], "a candle upsert keeps its fields");
    let user_version: i64 = rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(user_version, 3);
    // Retention takes the fields with the row.
    assert_eq!(s.prune_before("1m", 1000, 10).unwrap(), 2);
    assert!(s.read_ext(BTC1, 0, 1000).unwrap().is_empty());
}

fn get(target: &str) -> klinegate::wire::http::Request {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    match klinegate::wire::http::parse_request(raw.as_bytes(), &Default::default()) {
        klinegate::wire::http::Parse::Complete { request, .. } => request,
        other => panic!("{other:?}"),
    }
}

#[test]
fn http_fields_full_adds_the_four_fields_and_the_default_shape_is_unchanged() {
    let mut h = engine(true);
    play(&mut h, 0..6, &[4]);
    let cfg = HttpConfig::default();
    let body = |target: &str| -> Value {
        match route(&get(target), &h.0.engine, &h.0.store, &ShellStats::default(), &cfg) {
            Routed::Reply(r) => {
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                serde_json::from_slice(&r.body).unwrap()
            }
            _ => panic!("not a reply"),
        }
    };
    let id = BTC1.replace(':', "%3A").replace('/', "%2F");
    let plain = body(&format!("/api/market/candles?series_id={id}&limit=2"));
    assert_eq!(plain["candles"][0].as_object().unwrap().len(), 6, "the reference's six keys: {plain}");
    let full = body(&format!("/api/market/candles?series_id={id}&limit=2&fields=full"));
    let c = &full["candles"];
    assert_eq!(c[0]["candle_time"], T0 + 240);
    assert_eq!(c[0]["trades"], Value::Null, "minute 4 came without fields");
    assert_eq!(
        (c[1]["quote_volume"].clone(), c[1]["trades"].clone(), c[1]["taker_buy_base_volume"].clone(), c[1]["taker_buy_quote_volume"].clone()),
        (json!(60.5), json!(6), json!(6.25), json!(30.75))
    );
    assert_eq!(full["server_head_time"], plain["server_head_time"]);
    match route(&get(&format!("/api/market/candles?series_id={id}&fields=some")), &h.0.engine, &h.0.store, &ShellStats::default(), &cfg) {
        Routed::Reply(r) => assert_eq!(r.status, 400),
        _ => panic!(),
    }
}

/// A REST klines body for `path`'s range (`startTime`..`endTime`), rows whose
/// minute has closed by `now_s`, each with the fields `ext(minute index from T0 + 1)`.
fn rest_body(path: &str, now_s: i64) -> String {
    let param = |name: &str| -> i64 {
        let at = path.find(&format!("{name}=")).unwrap() + name.len() + 1;
        path[at..].split('&').next().unwrap().parse().unwrap()
    };
    let (start, end) = (param("startTime") / 1000, param("endTime") / 1000);
    let mut rows = Vec::new();
    let mut t = start;
    while t <= end && t + 60 <= now_s {
        let e = ext((t - T0) / 60 + 1);
        rows.push(json!([
            t * 1000, "100", "102", "99", "101", "1", t * 1000 + 59_999,
            e.quote_volume.to_string(), e.trades, e.taker_buy_base_volume.to_string(), e.taker_buy_quote_volume.to_string(), "0"
        ]));
        t += 60;
    }
    Value::Array(rows).to_string()
}

#[test]
fn candles_healed_over_rest_store_the_fields_of_the_exchange_rows() {
    let now_s = T0 + 600 + 10;
    let now = Timestamp::from_secs(now_s as u64);
    let settings = Settings {
        pins: vec![BTC1.into()],
        derived: String::new(),
        heal: true,
        heal_first_visit_candles: 8,
        full_klines: true,
        upstream_silence_s: 100_000,
        stream_stall_s: 0,
        ..Settings::default()
    };
    let mut h = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    h.handle(Input::Start, now).unwrap();
    for _ in 0..20 {
        let outs = h.take_outputs();
        if outs.is_empty() {
            break;
        }
        for o in outs {
            match o {
                Output::UpstreamConnect { conn, .. } => h.handle(Input::UpstreamConnected { conn }, now).unwrap(),
                Output::UpstreamSend { conn, text } => {
                    let req: Value = serde_json::from_str(&text).unwrap();
                    let ack = json!({"result": null, "id": req["id"]}).to_string();
                    h.handle(Input::UpstreamText { conn, text: ack }, now).unwrap();
                }
                Output::RestRequest { id, path, .. } => {
                    let body = rest_body(&path, now_s);
                    let reply = Input::RestResponse { id, status: 200, body, retry_after_s: None, used_weight: None };
                    h.handle(reply, now).unwrap();
                }
                _ => {}
            }
        }
        h.handle_timeout(Timestamp::from_secs(now_s as u64 + 1));
    }
    let stored: Vec<i64> = h.store.read_tail(BTC1, 100).unwrap().iter().map(|c| c.candle_time).collect();
    let want: Vec<i64> = (2..10).map(|k| T0 + 60 * k).collect();
    assert_eq!(stored, want, "the 8 most recent closed minutes healed");
    let fields = h.store.read_ext(BTC1, i64::MIN, i64::MAX).unwrap();
    assert_eq!(fields, want.iter().map(|t| (*t, ext((t - T0) / 60 + 1))).collect::<Vec<_>>());
}

fn client_frames(h: &mut Hosted<MemoryStore>, client: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    klinegate::replay::hosted::write_all(&mut h.engine, ClientId(client), &mut frames);
    frames.iter().map(|f| serde_json::from_slice(f).unwrap()).collect()
}

fn fields(c: &Value) -> Option<KlineExt> {
    serde_json::from_value::<klinegate::kline_ext::FullCandle>(c.clone()).unwrap().ext()
}

/// `fields=full` on the WebSocket subscribe, engine time as an input: a
/// derived series' live close carries its bucket's sums and its forming
/// candle the closed minutes so far plus the forming frame's; the catch-up
/// reads them from the store; a default subscriber of the series gets six keys.
#[test]
fn ws_fields_full_live_derived_close_and_forming_and_catchup_from_the_store() {
    let mut h = engine(true);
    let now = Timestamp::from_secs(T0 as u64);
    let sub = |since: Option<i64>, full: bool| {
        let mut v = json!({"type":"subscribe","series_id":BTC5,"since":since});
        if full {
            v["fields"] = json!("full");
        }
        v.to_string()
    };
    for (client, full) in [(1, true), (2, false)] {
        h.0.handle(Input::ClientConnected { client: ClientId(client) }, now).unwrap();
        h.0.handle(Input::ClientText { client: ClientId(client), text: sub(None, full) }, now).unwrap();
        client_frames(&mut h.0, client);
    }
    play(&mut h, 0..6, &[]);
    let sum = KlineExt { quote_volume: 152.5, trades: 15, taker_buy_base_volume: 16.25, taker_buy_quote_volume: 78.75 };
    let full = client_frames(&mut h.0, 1);
    let closed = full.iter().find(|f| f["type"] == "candle_closed").unwrap_or_else(|| panic!("{full:?}"));
    assert_eq!((closed["candle"]["candle_time"].as_i64(), fields(&closed["candle"])), (Some(T0), Some(sum)));
    let plain = client_frames(&mut h.0, 2);
    let closed = plain.iter().find(|f| f["type"] == "candle_closed").unwrap_or_else(|| panic!("{plain:?}"));
    assert_eq!(closed["candle"].as_object().unwrap().len(), 6, "{closed}");

    // Minute 6 forming (minute 5 closed): its bucket so far is ext(6) + the frame's ext(7).
    let (conn, t) = (h.1, T0 + 360);
    h.0.handle(Input::UpstreamText { conn: ConnId(conn), text: frame(t, 7, false, true) }, Timestamp::from_secs((t + 10) as u64)).unwrap();
    h.0.handle_timeout(Timestamp::from_secs((t + 20) as u64));
    let full = client_frames(&mut h.0, 1);
    let forming = full.iter().rev().find(|f| f["type"] == "candle_forming").unwrap_or_else(|| panic!("{full:?}"));
    assert_eq!(forming["candle"]["candle_time"].as_i64(), Some(T0 + 300));
    assert_eq!(fields(&forming["candle"]), Some(ext(6).add(ext(7))));
    let plain = client_frames(&mut h.0, 2);
    let forming = plain.iter().rev().find(|f| f["type"] == "candle_forming").unwrap_or_else(|| panic!("{plain:?}"));
    assert_eq!(forming["candle"].as_object().unwrap().len(), 6, "{forming}");

    // A catch-up reads the sums back from the store.
    let now = Timestamp::from_secs((t + 30) as u64);
    h.0.handle(Input::ClientConnected { client: ClientId(3) }, now).unwrap();
    h.0.handle(Input::ClientText { client: ClientId(3), text: sub(Some(T0 - 300), true) }, now).unwrap();
    let got = client_frames(&mut h.0, 3);
    let closed = got.iter().find(|f| f["type"] == "candle_closed").unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!((closed["candle"]["candle_time"].as_i64(), fields(&closed["candle"])), (Some(T0), Some(sum)));
}
