//! The client `/ws/market` protocol: parsing inbound messages with the reference
//! system's exact validation order and error strings, and encoding outbound
//! frames as compact JSON with the reference's key order. Pure functions: no
//! state, no I/O. Encoders write into a caller's buffer so a broadcast frame is
//! serialized once and its bytes shared by every receiver.

use crate::kline_ext::KlineExt;
use crate::model::Candle;
use serde_json::Value;
use std::fmt;

/// A valid inbound request.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    /// `full`: the client sent `"fields":"full"` (#15 §4): its candles carry
    /// the whole kline's extra fields ([`write_full_candle`]).
    Subscribe { series_id: String, since: Option<i64>, supports_batch: bool, full: bool },
    /// `series_id` is `None` when missing or empty: the reference ignores those silently.
    Unsubscribe { series_id: Option<String> },
}

/// Why an inbound message was refused. Every variant becomes one
/// `{"type":"error","code":"bad_request","message":…}` frame; the connection lives on.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    InvalidJson,
    Binary,
    TooLarge { len: usize, max: usize },
    Envelope,
    MissingType,
    MissingSeriesId,
    InvalidSince,
    InvalidSupportsBatch,
    InvalidFields,
    UnknownType(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::InvalidJson => f.write_str("invalid json"),
            RequestError::Binary => {
                f.write_str("binary frames are not supported; send JSON text frames")
            }
            RequestError::TooLarge { len, max } => {
                write!(f, "message too large ({len} bytes, max {max})")
            }
            RequestError::Envelope => f.write_str("invalid message envelope"),
            RequestError::MissingType => f.write_str("missing message type"),
            RequestError::MissingSeriesId => f.write_str("missing series_id"),
            RequestError::InvalidSince => f.write_str("invalid since"),
            RequestError::InvalidSupportsBatch => f.write_str("invalid supports_batch"),
            RequestError::InvalidFields => f.write_str("invalid fields"),
            RequestError::UnknownType(t) => write!(f, "unknown message type: {t}"),
        }
    }
}

/// Parses one text frame, in the reference system's validation order.
pub fn parse_request(text: &str) -> Result<ClientRequest, RequestError> {
    let value: Value = serde_json::from_str(text).map_err(|_| RequestError::InvalidJson)?;
    let Value::Object(obj) = value else {
        return Err(RequestError::Envelope);
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        _ => return Err(RequestError::MissingType),
    };
    let series_id = match obj.get("series_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    match kind {
        "subscribe" => {
            let series_id = series_id.ok_or(RequestError::MissingSeriesId)?;
            // Unlike the reference, booleans are not integers here, and neither are
            // floats or strings: only a JSON integer (or null) is a valid `since`.
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(n.as_i64().ok_or(RequestError::InvalidSince)?),
                Some(_) => return Err(RequestError::InvalidSince),
            };
            let supports_batch = match obj.get("supports_batch") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(RequestError::InvalidSupportsBatch),
            };
            // Not in the reference: `fields` (#15 §4), checked last. Absent,
            // null or empty: the default shape (as `fields=` on HTTP).
            let full = match obj.get("fields") {
                None | Some(Value::Null) => false,
                Some(Value::String(f)) if f.is_empty() => false,
                Some(Value::String(f)) if f == "full" => true,
                Some(_) => return Err(RequestError::InvalidFields),
            };
            Ok(ClientRequest::Subscribe { series_id, since, supports_batch, full })
        }
        "unsubscribe" => Ok(ClientRequest::Unsubscribe { series_id }),
        other => Err(RequestError::UnknownType(other.to_string())),
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // Series ids and codes never need escaping: copy them between quotes (serde_json
    // escapes only `"`, `\\` and control characters, so the bytes are the same).
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        return;
    }
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends `v` byte for byte as `ryu` formats it (`null` when not finite).
fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if write_f64_short_decimal(buf, v) {
        return;
    }
    if v.is_finite() {
        let mut b = ryu::Buffer::new();
        buf.extend_from_slice(b.format_finite(v).as_bytes());
    } else {
        // Never emit the non-JSON tokens NaN/Infinity (reference weakness 6).
        buf.extend_from_slice(b"null");
    }
}

/// Below this, eight-decimal values are formatted without `ryu` (2^23).
const SHORT_DECIMAL_MAX: f64 = 8_388_608.0;

/// The fast path of [`write_f64`] for prices and volumes, which come from
/// decimals with at most 8 fraction digits: about 3x faster than `ryu` (45 ns a
/// value on the bench machine), and the same bytes. Writes and returns true when
/// `v` is in `[1e-5, 2^23)` and some decimal `c` with at most 8 fraction digits
/// parses to `v`; otherwise writes nothing.
///
/// Why the bytes are `ryu`'s: below 2^23 a double's rounding interval is narrower
/// than 1e-9, so `c` is the only decimal with at most 8 fraction digits that parses
/// to `v`; any other decimal parsing to `v` has more fraction digits and so more
/// significant digits (near a power of ten the one with fewer fraction digits is
/// still the shorter). `c` is therefore the shortest round-tripping decimal, which
/// is what `ryu` prints, and `ryu` lays it out as `int.frac` (`int.0` for whole
/// numbers; `0.000ddd` down to 1e-5, below which it switches to an exponent).
/// Finding `c`: `v * 1e8` is within 0.11 of `c * 1e8` in this range, so rounding
/// it gives `c * 1e8` when `c` exists, and the division check (exact operands, one
/// correctly rounded IEEE division = parsing `c`) confirms it. Property-tested
/// against `ryu` on random and real values.
fn write_f64_short_decimal(buf: &mut Vec<u8>, v: f64) -> bool {
    // Also false for NaN, negatives and zero (`ryu` writes "0.0"; -0.0 "-0.0").
    if !(1e-5..SHORT_DECIMAL_MAX).contains(&v) {
        return false;
    }
    // Rounds half up: `scaled < 2^50`, so adding 0.5 is exact, and the cast
    // truncates (`f64::round` is a libm call on baseline x86-64).
    let scaled = v * 1e8;
    let mut digits = (scaled + 0.5) as u64;
    if digits as f64 / 1e8 != v {
        return false;
    }
    let mut frac_len = 8usize;
    while frac_len > 0 && digits % 10 == 0 {
        digits /= 10;
        frac_len -= 1;
    }
    // Right to left into a stack buffer: fraction digits (or the "0" of
    // "int.0"), the point, then the integer part (at least one digit).
    // Longest: 7 integer digits, '.', 8 fraction digits.
    let mut text = [0u8; 24];
    let mut at = text.len();
    let mut put = |byte: u8| {
        at -= 1;
        text[at] = byte;
    };
    if frac_len == 0 {
        put(b'0');
    }
    for _ in 0..frac_len {
        put(b'0' + (digits % 10) as u8);
        digits /= 10;
    }
    put(b'.');
    loop {
        put(b'0' + (digits % 10) as u8);
        digits /= 10;
        if digits == 0 {
            break;
        }
    }
    buf.extend_from_slice(&text[at..]);
    true
}

fn write_i64(buf: &mut Vec<u8>, v: i64) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(v).as_bytes());
}

/// `{"candle_time":…,"open":…,"high":…,"low":…,"close":…,"volume":…}`
pub fn write_candle(buf: &mut Vec<u8>, c: &Candle) {
    buf.extend_from_slice(b"{\"candle_time\":");
    write_i64(buf, c.candle_time);
    buf.extend_from_slice(b",\"open\":");
    write_f64(buf, c.open);
    buf.extend_from_slice(b",\"high\":");
    write_f64(buf, c.high);
    buf.extend_from_slice(b",\"low\":");
    write_f64(buf, c.low);
    buf.extend_from_slice(b",\"close\":");
    write_f64(buf, c.close);
    buf.extend_from_slice(b",\"volume\":");
    write_f64(buf, c.volume);
    buf.push(b'}');
}

/// [`write_candle`] then the whole kline's four extra fields (#15 §4), in
/// the order and with the values `GET /api/market/candles?fields=full`
/// serves them ([`crate::kline_ext::FullCandle`]; `null` when unknown).
pub fn write_full_candle(buf: &mut Vec<u8>, c: &Candle, ext: Option<KlineExt>) {
    write_candle(buf, c);
    buf.pop(); // the closing brace
    buf.extend_from_slice(b",\"quote_volume\":");
    write_opt(buf, ext.map(|e| e.quote_volume));
    buf.extend_from_slice(b",\"trades\":");
    match ext {
        Some(e) => {
            let mut b = itoa::Buffer::new();
            buf.extend_from_slice(b.format(e.trades).as_bytes());
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"taker_buy_base_volume\":");
    write_opt(buf, ext.map(|e| e.taker_buy_base_volume));
    buf.extend_from_slice(b",\"taker_buy_quote_volume\":");
    write_opt(buf, ext.map(|e| e.taker_buy_quote_volume));
    buf.push(b'}');
}

fn write_opt(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => write_f64(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_head(buf: &mut Vec<u8>, kind: &str, series_id: &str) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"series_id\":");
    write_json_str(buf, series_id);
}

/// `{"type":"candle_closed"|"candle_forming","series_id":S,"candle":C}`
pub fn write_candle_frame(buf: &mut Vec<u8>, forming: bool, series_id: &str, c: &Candle) {
    let kind = if forming { "candle_forming" } else { "candle_closed" };
    write_head(buf, kind, series_id);
    buf.extend_from_slice(b",\"candle\":");
    write_candle(buf, c);
    buf.push(b'}');
}

/// [`write_candle_frame`] with the candle in its full shape ([`write_full_candle`]).
pub fn write_full_candle_frame(buf: &mut Vec<u8>, forming: bool, series_id: &str, c: &Candle, ext: Option<KlineExt>) {
    let kind = if forming { "candle_forming" } else { "candle_closed" };
    write_head(buf, kind, series_id);
    buf.extend_from_slice(b",\"candle\":");
    write_full_candle(buf, c, ext);
    buf.push(b'}');
}

/// [`write_batch_frame`] with every candle in its full shape; `ext[i]` is
/// `candles[i]`'s (missing entries are unknown).
pub fn write_full_batch_frame(buf: &mut Vec<u8>, series_id: &str, candles: &[Candle], ext: &[Option<KlineExt>]) {
    write_head(buf, "candles_batch", series_id);
    buf.extend_from_slice(b",\"candles\":[");
    for (i, c) in candles.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_full_candle(buf, c, ext.get(i).copied().flatten());
    }
    buf.extend_from_slice(b"]}");
}

/// `{"type":"candles_batch","series_id":S,"candles":[C,…]}`
pub fn write_batch_frame(buf: &mut Vec<u8>, series_id: &str, candles: &[Candle]) {
    write_head(buf, "candles_batch", series_id);
    buf.extend_from_slice(b",\"candles\":[");
    for (i, c) in candles.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_candle(buf, c);
    }
    buf.extend_from_slice(b"]}");
}

/// `{"type":"gap","series_id":S,"expected_next_time":…,"actual_time":…}`
pub fn write_gap_frame(buf: &mut Vec<u8>, series_id: &str, expected_next: i64, actual: i64) {
    write_head(buf, "gap", series_id);
    buf.extend_from_slice(b",\"expected_next_time\":");
    write_i64(buf, expected_next);
    buf.extend_from_slice(b",\"actual_time\":");
    write_i64(buf, actual);
    buf.push(b'}');
}

/// `{"type":"error","code":…,"message":…[,"series_id":…]}`
pub fn write_error_frame(buf: &mut Vec<u8>, code: &str, message: &str, series_id: Option<&str>) {
    buf.extend_from_slice(b"{\"type\":\"error\",\"code\":");
    write_json_str(buf, code);
    buf.extend_from_slice(b",\"message\":");
    write_json_str(buf, message);
    if let Some(s) = series_id {
        buf.extend_from_slice(b",\"series_id\":");
        write_json_str(buf, s);
    }
    buf.push(b'}');
}

/// One-shot helpers returning owned bytes.
pub fn error_frame(code: &str, message: &str, series_id: Option<&str>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    write_error_frame(&mut buf, code, message, series_id);
    buf
}

pub fn bad_request_frame(err: &RequestError) -> Vec<u8> {
    error_frame("bad_request", &err.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn reference_error_frames_are_exact() {
        let cases = [
            ("[\"bad-envelope\"]", "invalid message envelope"),
            ("{\"series_id\":\"x\"}", "missing message type"),
            ("{\"type\":\"\"}", "missing message type"),
            ("{\"type\":\"noop\"}", "unknown message type: noop"),
            ("{\"type\":\"subscribe\"}", "missing series_id"),
            ("{\"type\":\"subscribe\",\"series_id\":\"\"}", "missing series_id"),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"since\":\"100\"}", "invalid since"),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"since\":100.0}", "invalid since"),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"since\":true}", "invalid since"),
            (
                "{\"type\":\"subscribe\",\"series_id\":\"s\",\"supports_batch\":1}",
                "invalid supports_batch",
            ),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"fields\":\"all\"}", "invalid fields"),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"fields\":[\"full\"]}", "invalid fields"),
            ("{\"type\":\"subscribe\",\"series_id\":\"s\",\"since\":\"x\",\"fields\":\"all\"}", "invalid since"),
        ];
        for (input, message) in cases {
            let err = parse_request(input).unwrap_err();
            let expected =
                format!("{{\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"{message}\"}}");
            assert_eq!(text(bad_request_frame(&err)), expected, "{input}");
        }
        assert_eq!(parse_request("{not json").unwrap_err(), RequestError::InvalidJson);
    }

    #[test]
    fn subscribe_and_unsubscribe_parse() {
        assert_eq!(
            parse_request(r#"{"type":"subscribe","series_id":"a:b:c:1m","since":-5,"extra":1}"#)
                .unwrap(),
            ClientRequest::Subscribe { series_id: "a:b:c:1m".into(), since: Some(-5), supports_batch: false, full: false }
        );
        assert_eq!(
            parse_request(r#"{"type":"subscribe","series_id":"s","since":null,"supports_batch":true}"#)
                .unwrap(),
            ClientRequest::Subscribe { series_id: "s".into(), since: None, supports_batch: true, full: false }
        );
        assert_eq!(
            parse_request(r#"{"type":"subscribe","series_id":"s","fields":"full"}"#).unwrap(),
            ClientRequest::Subscribe { series_id: "s".into(), since: None, supports_batch: false, full: true }
        );
        assert_eq!(
            parse_request(r#"{"type":"unsubscribe"}"#).unwrap(),
            ClientRequest::Unsubscribe { series_id: None }
        );
    }

    #[test]
    fn frames_have_reference_shape_and_key_order() {
        let c = Candle { candle_time: 1_700_000_000, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 10.0 };
        let mut buf = Vec::new();
        write_candle_frame(&mut buf, false, "binance:spot:BTC/USDT:1m", &c);
        assert_eq!(
            text(buf),
            r#"{"type":"candle_closed","series_id":"binance:spot:BTC/USDT:1m","candle":{"candle_time":1700000000,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10.0}}"#
        );
        let mut buf = Vec::new();
        write_gap_frame(&mut buf, "s", 160, 220);
        assert_eq!(text(buf), r#"{"type":"gap","series_id":"s","expected_next_time":160,"actual_time":220}"#);
        let mut buf = Vec::new();
        write_batch_frame(&mut buf, "s", &[c, c]);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["candles"].as_array().unwrap().len(), 2);
        assert_eq!(
            text(error_frame("capacity", "ondemand_ingest_capacity", Some("x"))),
            r#"{"type":"error","code":"capacity","message":"ondemand_ingest_capacity","series_id":"x"}"#
        );
    }

    /// The full shape is byte for byte what HTTP `fields=full` serves (serde's `FullCandle`).
    #[test]
    fn full_candles_are_the_http_full_shape() {
        use crate::kline_ext::FullCandle;
        let c = Candle { candle_time: 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 };
        let e = KlineExt { quote_volume: 4.5, trades: 7, taker_buy_base_volume: 0.1 + 0.2, taker_buy_quote_volume: 12345.678 };
        for ext in [Some(e), None] {
            let mut buf = Vec::new();
            write_full_candle(&mut buf, &c, ext);
            assert_eq!(text(buf), serde_json::to_string(&FullCandle::new(c, ext)).unwrap());
        }
        let mut buf = Vec::new();
        write_full_candle_frame(&mut buf, true, "s", &c, Some(e));
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!((v["type"].as_str(), v["candle"]["trades"].as_u64()), (Some("candle_forming"), Some(7)));
        let mut buf = Vec::new();
        write_full_batch_frame(&mut buf, "s", &[c, c], &[Some(e)]);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["candles"][0]["trades"], 7);
        assert_eq!(v["candles"][1]["trades"], Value::Null);
    }

    fn ryu_text(v: f64) -> String {
        ryu::Buffer::new().format_finite(v).to_string()
    }

    fn ours_text(v: f64) -> String {
        let mut buf = Vec::new();
        write_f64(&mut buf, v);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn float_edge_cases_are_written_as_ryu_writes_them() {
        for v in [
            0.0, -0.0, 1e-5, 0.00001, 0.000011, 9.99999e-6, 0.000001, 1e-8, 0.00000001, 0.1, 0.5, 1.0,
            9.99999999, 10.0, 99999999.0, 8_388_607.99999999, 8_388_608.0, 1e15, 36500.0, 36450.01,
            2063.88, 0.3, 0.1 + 0.2, 1.0 / 3.0, f64::MIN_POSITIVE, f64::MAX, 123456.789, 4e-5, 4.5e-5,
        ] {
            assert_eq!(ours_text(v), ryu_text(v), "{v:e}");
        }
    }

    /// Every decimal of the recorded captures, as parsed by the engine, is written
    /// back exactly as `ryu` writes it.
    #[test]
    #[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
    fn every_decimal_of_the_captures_is_written_as_ryu_writes_it() {
        let dir = concat!(env!("KLINEGATE_SHARED_DATA_DIR"), "/cryptofeed/sample_data");
        let mut checked = 0usize;
        for name in ["BINANCE-ee25be.0", "BINANCE_FUTURES.ws.1.0", "BINANCE_FUTURES.ws.5.0"] {
            let path = format!("{dir}/{name}");
            let Ok(text) = std::fs::read_to_string(&path) else {
                eprintln!("skipping: {path} not present");
                continue;
            };
            let decimals = text
                .split('"')
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            for t in decimals {
                let Some(v) = crate::wire::json_scan::parse_decimal(t) else { continue };
                assert_eq!(ours_text(v), ryu_text(v), "{t}");
                checked += 1;
            }
        }
        eprintln!("{checked} decimals written");
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in ".{0,24}|[a-z:/\"\\\\\n\t\u{1}\u{7f}é]{0,12}") {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &s);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&s).unwrap());
        }
    }

    proptest::proptest! {
        /// Binance's shapes: up to 9 integer digits, up to 8 fraction digits.
        #[test]
        fn binance_shaped_values_are_written_as_ryu_writes_them(
            text in "(0|[1-9][0-9]{0,8})(\\.[0-9]{1,8})?"
        ) {
            let v: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(ours_text(v), ryu_text(v), "{}", text);
        }

        #[test]
        fn arbitrary_values_are_written_as_ryu_writes_them(bits in proptest::prelude::any::<u64>()) {
            let v = f64::from_bits(bits);
            if v.is_finite() {
                proptest::prop_assert_eq!(ours_text(v), ryu_text(v));
            }
        }

        #[test]
        fn values_in_the_fast_range_are_written_as_ryu_writes_them(
            v in 1e-6f64..1e7, places in 0usize..10
        ) {
            // Arbitrary doubles (mostly not short decimals) and rounded ones.
            let rounded: f64 = format!("{v:.places$}").parse().unwrap();
            proptest::prop_assert_eq!(ours_text(v), ryu_text(v));
            proptest::prop_assert_eq!(ours_text(rounded), ryu_text(rounded));
        }
    }

    #[test]
    fn non_finite_values_never_become_non_json_tokens() {
        let c = Candle { candle_time: 1, open: f64::NAN, high: f64::INFINITY, low: 0.0, close: 0.0, volume: 0.0 };
        let mut buf = Vec::new();
        write_candle(&mut buf, &c);
        assert!(serde_json::from_slice::<Value>(&buf).is_ok());
    }
}
