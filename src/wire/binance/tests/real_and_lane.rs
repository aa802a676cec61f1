//! Tests of the Binance parser on the real captures, of stream names and
//! requests, and of the fast lane against the general walk.

use super::*;

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
