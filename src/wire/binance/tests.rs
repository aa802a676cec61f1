//! Tests of the Binance frame parser, names and control messages: real captures,
//! every rejection, the fast lane against the general walk, and property tests.

use super::*;
use proptest::prelude::*;
use serde_json::Value;
use super::names::{interval_from_name, open_time_aligned};
use super::parse::{parse_frame_general, scan_binance_layout, Envelope};
use crate::model::{Candle, Market, Timeframe};
use crate::wire::json_scan::tests::same_as_std;

const DATA: &str = concat!(env!("KLINEGATE_SHARED_DATA_DIR"), "");

/// A real spot frame ([CF] `BINANCE-ee25be.0`), combined form.
const SPOT_FRAME: &str = r#"{"stream":"ethusdt@kline_1m","data":{"e":"kline","E":1617566591776,"s":"ETHUSDT","k":{"t":1617566580000,"T":1617566639999,"s":"ETHUSDT","i":"1m","f":346711017,"L":346711087,"o":"2063.88000000","c":"2064.73000000","h":"2065.00000000","l":"2063.88000000","v":"70.86425000","n":71,"x":false,"q":"146321.71560700","V":"46.98201000","Q":"97009.77617410","B":"0"}}}"#;

/// The payload of `SPOT_FRAME`, i.e. what a raw `/ws/` connection sends.
fn raw_of(frame: &str) -> String {
    let v: Value = serde_json::from_str(frame).unwrap();
    v["data"].to_string()
}

/// A raw kline payload with the given `k` fields overriding a valid 1m candle.
fn raw_with(k_overrides: &str, top_overrides: &str) -> String {
    let mut top: serde_json::Map<String, Value> =
        serde_json::from_str(r#"{"e":"kline","E":1700000060001,"s":"BTCUSDT"}"#).unwrap();
    let mut k: serde_json::Map<String, Value> = serde_json::from_str(
        r#"{"t":1700000040000,"T":1700000099999,"s":"BTCUSDT","i":"1m","o":"1.0","h":"2.0","l":"0.5","c":"1.5","v":"100","n":7,"x":true}"#,
    )
    .unwrap();
    let patch = |m: &mut serde_json::Map<String, Value>, o: &str| {
        let o: serde_json::Map<String, Value> = serde_json::from_str(o).unwrap();
        for (key, val) in o {
            if val == Value::String("<remove>".into()) {
                m.remove(&key);
            } else {
                m.insert(key, val);
            }
        }
    };
    patch(&mut k, k_overrides);
    top.insert("k".into(), Value::Object(k));
    patch(&mut top, top_overrides);
    Value::Object(top).to_string()
}

fn kline(frame: &str) -> KlineEvent<'_> {
    match parse_frame(frame) {
        Ok(Frame::Kline(k)) => k,
        other => panic!("expected a kline from {frame}, got {other:?}"),
    }
}

fn err_kind(frame: &str) -> &'static str {
    match parse_frame(frame) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e.kind()
        }
        Ok(f) => panic!("expected an error from {frame}, got {f:?}"),
    }
}

#[test]
fn parses_a_real_combined_spot_frame() {
    let k = kline(SPOT_FRAME);
    assert_eq!(k.stream, Some("ethusdt@kline_1m"));
    assert_eq!(k.symbol, "ETHUSDT");
    assert_eq!(k.interval, Timeframe::M1);
    assert_eq!(
        k.candle,
        Candle {
            candle_time: 1_617_566_580,
            open: 2063.88,
            high: 2065.0,
            low: 2063.88,
            close: 2064.73,
            volume: 70.86425,
        }
    );
    assert!(!k.is_final);
    assert_eq!(k.event_time_ms, 1_617_566_591_776);
    assert_eq!(k.close_time_ms, 1_617_566_639_999);
    assert_eq!(k.trades, 71);
}

#[test]
fn raw_form_parses_to_the_same_event_without_stream() {
    let raw = raw_of(SPOT_FRAME);
    let from_raw = kline(&raw);
    let from_combined = kline(SPOT_FRAME);
    assert_eq!(from_raw.stream, None);
    assert_eq!(
        KlineEvent {
            stream: from_combined.stream,
            ..from_raw
        },
        from_combined
    );
}

#[test]
fn key_order_whitespace_and_extra_fields_do_not_matter() {
    let shuffled = r#"
      { "data" : { "k" : { "x" : true , "v" : "100" , "c" : "1.5" , "l" : "0.5" ,
                           "extra" : [ { "deep" : [ 1 , 2.5e3 , null , false ] } , "s" ] ,
                           "h" : "2.0" , "o" : "1.0" , "i" : "1m" , "s" : "BTCUSDT" ,
                           "T" : 1700000099999 , "t" : 1700000040000 , "n" : 7 } ,
                   "s" : "BTCUSDT" , "E" : 1700000060001 , "e" : "kline", "zz": {} } ,
        "other" : "ignored",
        "stream" : "btcusdt@kline_1m" }
    "#;
    let k = kline(shuffled);
    assert_eq!(k.stream, Some("btcusdt@kline_1m"));
    assert_eq!(k.candle.candle_time, 1_700_000_040);
    assert_eq!(
        (k.candle.open, k.candle.high, k.candle.low),
        (1.0, 2.0, 0.5)
    );
    assert_eq!((k.candle.close, k.candle.volume), (1.5, 100.0));
    assert!(k.is_final);
}

#[test]
fn reference_bare_payload_is_rejected_for_missing_event_type() {
    // Reference test_parse_binance_kline_payload_finalized. The reference accepted
    // it; we require e/E/s/i/T/n because Binance always sends them.
    let bare = r#"{"k":{"t":1700000000000,"o":"1.0","h":"2.0","l":"0.5","c":"1.5","v":"100","x":true}}"#;
    assert_eq!(
        parse_frame(bare),
        Err(FrameError::MissingField { field: "e" })
    );
    // Its open time 1700000000000 is 2023-11-14 22:13:20 UTC, not a minute boundary,
    // so even with every field present we reject it as misaligned.
    let full = raw_with(r#"{"t":1700000000000,"T":1700000059999}"#, "{}");
    assert_eq!(err_kind(&full), "open_time_misaligned");
    // On the minute before, the same candle parses to the reference's values.
    let aligned = raw_with(r#"{"t":1699999980000,"T":1700000039999}"#, "{}");
    let k = kline(&aligned);
    assert_eq!(k.candle.candle_time, 1_699_999_980);
    assert_eq!(
        [
            k.candle.open,
            k.candle.high,
            k.candle.low,
            k.candle.close,
            k.candle.volume
        ],
        [1.0, 2.0, 0.5, 1.5, 100.0]
    );
    assert!(k.is_final);
    let forming = raw_with(r#"{"t":1699999980000,"x":false}"#, "{}");
    assert!(!kline(&forming).is_final);
}

#[test]
fn numbers_as_json_numbers_are_accepted() {
    let frame = raw_with(r#"{"o":1.25,"h":2,"l":0.5,"c":1.5e0,"v":0}"#, "{}");
    let k = kline(&frame);
    assert_eq!(
        [k.candle.open, k.candle.high, k.candle.close],
        [1.25, 2.0, 1.5]
    );
}

#[test]
fn every_rejection_has_its_kind() {
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "invalid_json"),
        ("{".into(), "invalid_json"),
        ("{\"e\":\"kline\"".into(), "invalid_json"),
        ("{\"e\":kline}".into(), "invalid_json"),
        ("{\"a\":1,}".into(), "invalid_json"),
        ("{\"a\":01}".into(), "invalid_json"),
        ("{\"a\":\"\\x\"}".into(), "invalid_json"),
        ("{\"a\":\"\\ud800\"}".into(), "invalid_json"),
        ("{\"a\":\"\\udc00\"}".into(), "invalid_json"),
        ("{\"a\":\"tab\there\"}".into(), "invalid_json"),
        ("{} {}".into(), "invalid_json"),
        (
            format!("{}{}", "[".repeat(100), "]".repeat(100)),
            "invalid_json",
        ),
        (
            format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100)),
            "invalid_json",
        ),
        ("[1,2]".into(), "not_object"),
        ("\"kline\"".into(), "not_object"),
        ("null".into(), "not_object"),
        (
            r#"{"e":"aggTrade","E":1,"s":"BTCUSDT","p":"1"}"#.into(),
            "non_kline_event",
        ),
        (
            r#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","b":[["1","2"]]}}"#.into(),
            "non_kline_event",
        ),
        ("{}".into(), "unrecognized_frame"),
        (r#"{"foo":1}"#.into(), "unrecognized_frame"),
        (raw_with("{}", r#"{"E":"<remove>"}"#), "missing_field"),
        (raw_with(r#"{"i":"<remove>"}"#, "{}"), "missing_field"),
        (raw_with(r#"{"x":"<remove>"}"#, "{}"), "missing_field"),
        (
            r#"{"stream":"btcusdt@kline_1m"}"#.into(),
            "unrecognized_frame",
        ),
        (r#"{"data":{"e":"kline"}}"#.into(), "missing_field"),
        (r#"{"result":null}"#.into(), "missing_field"),
        (raw_with(r#"{"t":"1700000040000"}"#, "{}"), "wrong_type"),
        (raw_with(r#"{"t":1700000040000.5}"#, "{}"), "wrong_type"),
        (
            raw_with(r#"{"t":99999999999999999999}"#, "{}"),
            "wrong_type",
        ),
        (raw_with(r#"{"x":1}"#, "{}"), "wrong_type"),
        (raw_with(r#"{"o":null}"#, "{}"), "wrong_type"),
        (raw_with(r#"{"s":5}"#, "{}"), "wrong_type"),
        (raw_with("{}", r#"{"k":[1]}"#), "wrong_type"),
        (raw_with("{}", r#"{"e":5}"#), "wrong_type"),
        (r#"{"stream":"a","data":[]}"#.into(), "wrong_type"),
        (r#"{"result":true,"id":2}"#.into(), "wrong_type"),
        (r#"{"result":null,"id":-1}"#.into(), "wrong_type"),
        (r#"{"error":"bad","id":1}"#.into(), "wrong_type"),
        (r#"{"e":"kline","e":"kline"}"#.into(), "duplicate_field"),
        (
            raw_with(r#"{"t":1700000040000}"#, "{}").replacen(
                "\"t\":",
                "\"t\":1700000040000,\"t\":",
                1,
            ),
            "duplicate_field",
        ),
        (
            raw_with("{}", "{}").replacen("\"BTCUSDT\"", "\"BTC\\u0055SDT\"", 1),
            "escaped_text",
        ),
        (raw_with(r#"{"s":"ETHUSDT"}"#, "{}"), "symbol_mismatch"),
        (raw_with(r#"{"i":"1s"}"#, "{}"), "unsupported_interval"),
        (raw_with(r#"{"i":"1M"}"#, "{}"), "unsupported_interval"),
        (raw_with(r#"{"i":"60m"}"#, "{}"), "unsupported_interval"),
        (raw_with(r#"{"t":0}"#, "{}"), "open_time_not_positive"),
        (raw_with(r#"{"t":-60000}"#, "{}"), "open_time_not_positive"),
        (
            raw_with(r#"{"t":1700000040001}"#, "{}"),
            "open_time_misaligned",
        ),
        (
            raw_with(r#"{"t":1700000040000,"i":"5m"}"#, "{}"),
            "open_time_misaligned",
        ),
        (raw_with(r#"{"o":"nan"}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"o":"inf"}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"o":""}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"o":"1.0 "}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"o":"0x10"}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"o":"1."}"#, "{}"), "invalid_number"),
        (raw_with(r#"{"h":"1e400"}"#, "{}"), "non_finite"),
        (raw_with(r#"{"v":"-1"}"#, "{}"), "negative_value"),
        (raw_with(r#"{"l":-0.5}"#, "{}"), "negative_value"),
        (raw_with(r#"{"h":"1.2"}"#, "{}"), "inconsistent_candle"),
        (raw_with(r#"{"l":"1.1"}"#, "{}"), "inconsistent_candle"),
    ];
    for (frame, kind) in &cases {
        let got = parse_frame(frame).map_err(|e| e.kind());
        assert_eq!(got, Err(*kind), "frame: {frame}");
    }
    // Every kind is exercised.
    let kinds: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.1).collect();
    assert_eq!(kinds.len(), 16, "{kinds:?}");
}

#[test]
fn errors_name_the_problem() {
    let missing = parse_frame(&raw_with(r#"{"T":"<remove>"}"#, "{}")).unwrap_err();
    assert_eq!(missing, FrameError::MissingField { field: "k.T" });
    assert_eq!(missing.to_string(), "frame is missing field 'k.T'");
    let event = parse_frame(r#"{"e":"aggTrade"}"#).unwrap_err();
    assert_eq!(
        event,
        FrameError::NotKline {
            event: "aggTrade".into()
        }
    );
    assert!(event.to_string().contains("'aggTrade'"));
    let interval = parse_frame(&raw_with(r#"{"i":"1M"}"#, "{}")).unwrap_err();
    assert_eq!(
        interval,
        FrameError::UnsupportedInterval {
            interval: "1M".into()
        }
    );
    let bad = parse_frame(&raw_with(r#"{"c":"abc"}"#, "{}")).unwrap_err();
    assert_eq!(bad, FrameError::InvalidNumber { field: "k.c" });
    let json = parse_frame(r#"{"a":tru}"#).unwrap_err();
    assert_eq!(
        json,
        FrameError::InvalidJson {
            offset: 5,
            reason: "invalid literal (expected true, false or null)"
        }
    );
    // An absurdly long event name is clipped in the error.
    let long = format!(r#"{{"e":"{}"}}"#, "x".repeat(1000));
    let FrameError::NotKline { event } = parse_frame(&long).unwrap_err() else {
        panic!()
    };
    assert_eq!(event.len(), 64);
}

#[test]
fn escapes_are_decoded_where_we_decode_and_refused_where_we_borrow() {
    // Escaped keys and escaped event / interval / price values mean the same thing.
    // (raw_with goes through serde_json, so escapes are spliced into its output.)
    let escaped = raw_with("{}", "{}")
        .replacen("\"E\"", "\"\\u0045\"", 1)
        .replacen("\"kline\"", "\"k\\u006Cine\"", 1)
        .replacen("\"1m\"", "\"1\\u006d\"", 1)
        .replacen("\"o\":\"1.0\"", "\"\\u006f\":\"\\u0031.0\"", 1);
    assert_eq!(escaped.matches("\\u00").count(), 5, "{escaped}");
    let k = kline(&escaped);
    assert_eq!(k.interval, Timeframe::M1);
    assert_eq!(k.candle.open, 1.0);
    assert_eq!(k.event_time_ms, 1_700_000_060_001);
    // Escapes in skipped values are validated, including surrogate pairs.
    let pair = raw_with("{}", r#"{"note":"\ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t"}"#);
    assert!(matches!(parse_frame(&pair), Ok(Frame::Kline(_))));
    // The symbol is handed out borrowed, so an escape there is refused cleanly.
    let sym = raw_with("{}", "{}").replacen("\"s\":\"BTCUSDT\"", "\"s\":\"BTC\\u0055SDT\"", 1);
    assert_eq!(
        parse_frame(&sym),
        Err(FrameError::EscapedText { field: "k.s" })
    );
    let stream = SPOT_FRAME.replacen("ethusdt@", "ethusdt\\u0040", 1);
    assert_eq!(
        parse_frame(&stream),
        Err(FrameError::EscapedText { field: "stream" })
    );
}

#[test]
fn weekly_candles_align_to_monday() {
    // 2017-08-14 00:00 UTC, a Monday: Binance's first BTCUSDT weekly candle.
    let monday = raw_with(r#"{"t":1502668800000,"i":"1w"}"#, "{}");
    assert_eq!(kline(&monday).interval.seconds(), 604_800);
    // 2017-08-17 00:00 UTC is an epoch-aligned week start (a Thursday): rejected.
    let thursday = raw_with(r#"{"t":1502928000000,"i":"1w"}"#, "{}");
    assert_eq!(err_kind(&thursday), "open_time_misaligned");
    // 3d is epoch-aligned (Binance 3d candle 2017-07-14 00:00 UTC).
    let three_days = raw_with(r#"{"t":1499990400000,"i":"3d"}"#, "{}");
    assert_eq!(kline(&three_days).candle.candle_time, 1_499_990_400);
    assert!(open_time_aligned(
        4 * 86_400_000,
        Timeframe::from_seconds(604_800).unwrap()
    ));
}

#[test]
fn control_responses() {
    assert_eq!(
        parse_frame(r#"{"result":null,"id":1}"#),
        Ok(Frame::ControlAck { id: 1 })
    );
    assert_eq!(
        parse_frame(r#"{"id":3,"result":["a","b\/c"]}"#),
        Ok(Frame::ControlList {
            id: 3,
            streams: vec!["a".into(), "b/c".into()]
        })
    );
    assert_eq!(
        parse_frame(r#"{"result":[],"id":18446744073709551615}"#),
        Ok(Frame::ControlList {
            id: u64::MAX,
            streams: vec![]
        })
    );
    assert_eq!(
        parse_frame(r#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":7}"#),
        Ok(Frame::ControlError {
            id: Some(7),
            code: 2,
            msg: "Invalid request: unknown variant".into()
        })
    );
    assert_eq!(
        parse_frame(
            r#"{"error":{"msg":"Invalid JSON: expected value at line 1 column 1","code":3},"id":null}"#
        ),
        Ok(Frame::ControlError {
            id: None,
            code: 3,
            msg: "Invalid JSON: expected value at line 1 column 1".into()
        })
    );
    assert_eq!(
        parse_frame(r#"{"error":{"code":4,"msg":"Too many subscriptions"}}"#),
        Ok(Frame::ControlError {
            id: None,
            code: 4,
            msg: "Too many subscriptions".into()
        })
    );
    assert_eq!(
        err_kind(r#"{"error":{"code":"x","msg":"m"},"id":1}"#),
        "wrong_type"
    );
    assert_eq!(err_kind(r#"{"error":{"code":1},"id":1}"#), "missing_field");
    assert_eq!(err_kind(r#"{"result":[1],"id":1}"#), "wrong_type");
}

#[test]
fn server_shutdown_in_both_forms() {
    assert_eq!(
        parse_frame(r#"{"e":"serverShutdown","E":1}"#),
        Ok(Frame::ServerShutdown)
    );
    assert_eq!(
        parse_frame(r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}"#),
        Ok(Frame::ServerShutdown)
    );
}

#[test]
fn truncated_frames_are_errors_never_panics() {
    for end in 0..SPOT_FRAME.len() {
        assert!(parse_frame(&SPOT_FRAME[..end]).is_err(), "prefix {end}");
    }
}

// --- real data ---------------------------------------------------------

/// The slow reference: serde_json::Value and field extraction.
#[derive(Debug, PartialEq)]
struct Reference {
    stream: Option<String>,
    symbol: String,
    interval: String,
    values: [f64; 5],
    open_time_ms: i64,
    close_time_ms: i64,
    event_time_ms: i64,
    trades: i64,
    is_final: bool,
}

fn reference_parse(frame: &str) -> Option<Reference> {
    let v: Value = serde_json::from_str(frame).ok()?;
    let (stream, payload) = match v.get("data") {
        Some(d) => (Some(v["stream"].as_str()?.to_owned()), d),
        None => (None, &v),
    };
    if payload["e"].as_str()? != "kline" {
        return None;
    }
    let k = &payload["k"];
    let num = |key: &str| k[key].as_str()?.parse::<f64>().ok();
    Some(Reference {
        stream,
        symbol: k["s"].as_str()?.to_owned(),
        interval: k["i"].as_str()?.to_owned(),
        values: [num("o")?, num("h")?, num("l")?, num("c")?, num("v")?],
        open_time_ms: k["t"].as_i64()?,
        close_time_ms: k["T"].as_i64()?,
        event_time_ms: payload["E"].as_i64()?,
        trades: k["n"].as_i64()?,
        is_final: k["x"].as_bool()?,
    })
}

fn assert_matches_reference(frame: &str) {
    let expected = reference_parse(frame).expect("reference parse");
    let k = kline(frame);
    let c = k.candle;
    let got = Reference {
        stream: k.stream.map(str::to_owned),
        symbol: k.symbol.to_owned(),
        interval: k.interval.binance_interval(),
        values: [c.open, c.high, c.low, c.close, c.volume],
        open_time_ms: c.candle_time * 1000,
        close_time_ms: k.close_time_ms,
        event_time_ms: k.event_time_ms,
        trades: k.trades,
        is_final: k.is_final,
    };
    assert_eq!(got, expected, "frame: {frame}");
    assert_eq!(
        got.values.map(f64::to_bits),
        expected.values.map(f64::to_bits)
    );
}

fn read_data(rel: &str) -> Option<String> {
    let path = format!("{DATA}/{rel}");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(_) => {
            eprintln!("skipping: {path} not present");
            None
        }
    }
}

const CRYPTOFEED: [&str; 3] = [
    "BINANCE-ee25be.0",
    "BINANCE_FUTURES.ws.1.0",
    "BINANCE_FUTURES.ws.5.0",
];

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn every_derived_cryptofeed_frame_matches_the_reference() {
    for name in CRYPTOFEED {
        let Some(text) = read_data(&format!("cryptofeed/derived/{name}.kline_frames.jsonl"))
        else {
            continue;
        };
        let mut count = 0;
        let mut finals = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            assert_matches_reference(line);
            assert_matches_reference(&raw_of(line));
            count += 1;
            finals += usize::from(kline(line).is_final);
        }
        assert!(count >= 67, "{name}: {count} frames");
        eprintln!("{name}: {count} kline frames, {finals} final");
    }
}

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn every_frame_of_the_cryptofeed_captures_is_classified() {
    for name in CRYPTOFEED {
        let Some(text) = read_data(&format!("cryptofeed/sample_data/{name}")) else {
            continue;
        };
        let (mut klines, mut others) = (0, 0);
        // Capture lines are `<receive_ts>: <frame>`; the header and REST lines are not.
        for line in text.lines().skip(1) {
            let Some((ts, frame)) = line.split_once(": ") else {
                continue;
            };
            if ts.parse::<f64>().is_err() {
                continue;
            }
            match parse_frame(frame) {
                Ok(Frame::Kline(_)) => {
                    assert_matches_reference(frame);
                    klines += 1;
                }
                Err(FrameError::NotKline { event }) => {
                    assert_ne!(event, "kline");
                    others += 1;
                }
                other => panic!("{name}: unexpected {other:?} for {frame}"),
            }
        }
        assert!(
            klines >= 67 && others > 1000,
            "{name}: {klines} klines, {others} others"
        );
    }
}

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn polyoxide_pretty_printed_futures_frame() {
    let Some(text) = read_data("polyoxide/ws/stream_btcusdt_kline_1m.json") else {
        return;
    };
    assert_matches_reference(&text);
    let k = kline(&text);
    assert_eq!(k.stream, Some("btcusdt@kline_1m"));
    assert_eq!(k.symbol, "BTCUSDT");
    assert_eq!(k.candle.candle_time, 1_791_382_980);
    assert_eq!([k.candle.open, k.candle.close], [83084.90, 83091.60]);
    assert_eq!(
        [k.candle.high, k.candle.low, k.candle.volume],
        [83091.70, 83051.20, 13.551]
    );
    assert_eq!(k.trades, 1027);
}

// --- stream names and requests ----------------------------------------

fn tf(s: &str) -> Timeframe {
    Timeframe::parse(s).unwrap()
}

#[test]
fn stream_names_follow_the_reference() {
    assert_eq!(
        stream_name("BTC/USDT", tf("1m")).unwrap(),
        "btcusdt@kline_1m"
    );
    assert_eq!(
        stream_name("BTC/USDT:USDT", tf("1h")).unwrap(),
        "btcusdt@kline_1h"
    );
    assert_eq!(
        stream_name(" 1000PEPE-X/USDT ", tf("1w")).unwrap(),
        "1000pepexusdt@kline_1w"
    );
    assert_eq!(
        stream_name("ETH/BTC", tf("60m")).unwrap(),
        "ethbtc@kline_1h"
    );
    let no_slash = stream_name("BTCUSDT", tf("1m")).unwrap_err();
    assert!(matches!(no_slash, StreamNameError::MissingSlash { .. }));
    assert!(no_slash.to_string().contains("'BTCUSDT'"), "{no_slash}");
    // The slash must be in the pair, not after the settle-currency colon.
    assert!(stream_name("BTCUSDT:USDT/X", tf("1m")).is_err());
    assert!(matches!(
        stream_name("/", tf("1m")),
        Err(StreamNameError::Empty { .. })
    ));
    assert!(matches!(
        stream_name("BTC/US DT", tf("1m")),
        Err(StreamNameError::InvalidCharacter { ch: ' ', .. })
    ));
    assert!(matches!(
        stream_name("BTC/USDT", tf("2m")),
        Err(StreamNameError::UnsupportedInterval { .. })
    ));
}

#[test]
fn supported_intervals() {
    for name in [
        "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w",
    ] {
        assert!(is_supported_interval(tf(name)), "{name}");
        assert_eq!(interval_from_name(name), Some(tf(name)));
        assert_eq!(tf(name).binance_interval(), name);
    }
    for name in ["2m", "10m", "3h", "2d", "2w"] {
        assert!(!is_supported_interval(tf(name)), "{name}");
    }
}

#[test]
fn urls_and_control_requests() {
    assert_eq!(
        default_ws_url(Market::Spot),
        "wss://stream.binance.com:9443/stream"
    );
    assert_eq!(
        default_ws_url(Market::Futures),
        "wss://fstream.binance.com/market/stream"
    );
    assert_eq!(
        combined_stream_url(SPOT_WS_URL, &["btcusdt@kline_1m", "ethusdt@kline_1m"]),
        "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    );
    assert_eq!(
        subscribe_request(1, &["btcusdt@kline_1m"]),
        r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}"#
    );
    assert_eq!(
        unsubscribe_request(312, &["a@kline_1m".to_string(), "b@kline_5m".to_string()]),
        r#"{"method":"UNSUBSCRIBE","params":["a@kline_1m","b@kline_5m"],"id":312}"#
    );
    assert_eq!(
        list_subscriptions_request(3),
        r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#
    );
    let hostile = subscribe_request(9, &["a\"b\\c\n"]);
    let v: Value = serde_json::from_str(&hostile).unwrap();
    assert_eq!(v["params"][0], "a\"b\\c\n");
}

// --- the fast lane ---------------------------------------------------------

/// The raw form as Binance sends it (keys in Binance's order), cut out of a
/// combined frame's text; `raw_of` re-serializes and sorts the keys.
fn raw_in_binance_order(frame: &str) -> &str {
    let start = frame.find(",\"data\":").unwrap() + ",\"data\":".len();
    &frame[start..frame.len() - 1]
}

fn lane_accepts(text: &str) -> bool {
    scan_binance_layout(text, &mut Envelope::default()).is_some()
}

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn the_fast_lane_takes_every_real_frame_and_agrees_with_the_general_walk() {
    let mut checked = 0;
    for name in CRYPTOFEED {
        let Some(text) = read_data(&format!("cryptofeed/derived/{name}.kline_frames.jsonl"))
        else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            for form in [line, raw_in_binance_order(line)] {
                assert!(lane_accepts(form), "lane refused {form}");
                assert_eq!(parse_frame(form), parse_frame_general(form), "{form}");
            }
            checked += 1;
        }
    }
    assert!(lane_accepts(SPOT_FRAME));
    assert_eq!(parse_frame(SPOT_FRAME), parse_frame_general(SPOT_FRAME));
    eprintln!("{checked} real frames through the fast lane");
}

#[test]
fn the_fast_lane_leaves_other_layouts_to_the_general_walk() {
    let spaced = SPOT_FRAME.replace(",\"E\":", ", \"E\":");
    let extra = SPOT_FRAME.replace("\"B\":\"0\"", "\"B\":\"0\",\"Z\":1");
    let nested = SPOT_FRAME.replace("\"B\":\"0\"", "\"B\":[\"0\"]");
    let escaped_key = SPOT_FRAME.replace("\"t\":", "\"\\u0074\":");
    let trailing_ws = format!("{SPOT_FRAME}\n");
    for text in [&spaced, &extra, &nested, &escaped_key, &trailing_ws] {
        assert!(!lane_accepts(text), "{text}");
        assert_eq!(parse_frame(text), parse_frame_general(text), "{text}");
    }
    assert_eq!(kline(&spaced), kline(SPOT_FRAME));
    assert_eq!(kline(&escaped_key), kline(SPOT_FRAME));
}

proptest! {
    /// Byte edits drawn from JSON's own alphabet keep many frames valid or
    /// nearly so: whatever the lane makes of them, the answer (event or error,
    /// down to the error's offset) is the general walk's.
    #[test]
    fn the_fast_lane_agrees_with_the_general_walk_on_edited_frames(
        edits in prop::collection::vec(
            (0usize..400, prop::sample::select(&b"{}[]\":,. 0123456789-etfnulrsx\\"[..]), 0usize..3),
            1..5,
        ),
        raw in any::<bool>(),
    ) {
        let base = if raw { raw_in_binance_order(SPOT_FRAME) } else { SPOT_FRAME };
        let mut bytes = base.as_bytes().to_vec();
        for (at, byte, how) in edits {
            let at = at % bytes.len();
            match how {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => { bytes.remove(at); }
            }
        }
        let text = String::from_utf8(bytes).unwrap();
        prop_assert_eq!(parse_frame(&text), parse_frame_general(&text), "{}", text);
    }

    #[test]
    fn the_fast_lane_agrees_with_the_general_walk_on_other_values(
        open in "[0-9]{1,9}(\\.[0-9]{1,8})?",
        trades in "-?(0|[1-9][0-9]{0,19})",
        x in prop::sample::select(&["true", "false", "null", "1", "\"true\""][..]),
        event in prop::sample::select(&["kline", "serverShutdown", "trade", "kl\\u0069ne", ""][..]),
    ) {
        let text = SPOT_FRAME
            .replace("\"o\":\"2063.88000000\"", &format!("\"o\":\"{open}\""))
            .replace("\"n\":71", &format!("\"n\":{trades}"))
            .replace("\"x\":false", &format!("\"x\":{x}"))
            .replace("\"e\":\"kline\"", &format!("\"e\":\"{event}\""));
        prop_assert!(lane_accepts(&text));
        prop_assert_eq!(parse_frame(&text), parse_frame_general(&text), "{}", text);
    }
}

/// Every quoted decimal in the recorded captures (prices, volumes, quantities of
/// every event type, not only klines) converts exactly as `str::parse` does.
#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn every_decimal_string_of_the_captures_matches_std() {
    let mut checked = 0usize;
    for name in CRYPTOFEED {
        let Some(text) = read_data(&format!("cryptofeed/sample_data/{name}")) else {
            continue;
        };
        let decimals = text.split('"').filter(|t| {
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        });
        for t in decimals {
            assert!(same_as_std(t), "{t}");
            checked += 1;
        }
    }
    eprintln!("{checked} decimal strings checked");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,3}|.{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse_frame(&text);
    }

    #[test]
    fn never_panics_on_mutated_real_frames(
        edits in prop::collection::vec((0usize..400, any::<char>()), 1..6)
    ) {
        let mut chars: Vec<char> = SPOT_FRAME.chars().collect();
        for (at, ch) in edits {
            let at = at % chars.len();
            chars[at] = ch;
        }
        let text: String = chars.into_iter().collect();
        if let Ok(Frame::Kline(k)) = parse_frame(&text) {
            prop_assert!(k.candle.sanity_error().is_none());
        }
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json(
        text in "[{}\\[\\]\":, 0-9a-z\\\\.eE+-]{0,40}"
    ) {
        let serde = serde_json::from_str::<Value>(&text);
        let ours = parse_frame(&text);
        match serde {
            Err(e) if e.to_string().contains("out of range") => {}
            Err(_) => prop_assert!(ours.is_err(), "accepted invalid JSON {:?}", text),
            Ok(_) => prop_assert!(
                !matches!(ours, Err(FrameError::InvalidJson { .. })),
                "rejected valid JSON {:?}: {:?}", text, ours
            ),
        }
    }

    #[test]
    fn valid_json_is_never_called_invalid(value in arb_json()) {
        for text in [value.to_string(), serde_json::to_string_pretty(&value).unwrap()] {
            let ours = parse_frame(&text);
            prop_assert!(!matches!(ours, Err(FrameError::InvalidJson { .. })), "{} -> {:?}", text, ours);
            if !value.is_object() {
                prop_assert_eq!(ours, Err(FrameError::NotAnObject));
            }
        }
    }

    #[test]
    fn extra_fields_anywhere_do_not_change_the_event(
        extra_top in arb_json(), extra_k in arb_json(), key in "[a-z]{2,5}"
    ) {
        let mut v: Value = serde_json::from_str(SPOT_FRAME).unwrap();
        v[key.as_str()] = extra_top.clone();
        v["data"][key.as_str()] = extra_top;
        v["data"]["k"][key.as_str()] = extra_k;
        let text = v.to_string();
        prop_assert_eq!(kline(&text), kline(SPOT_FRAME));
    }
}
