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

mod real_and_lane;
