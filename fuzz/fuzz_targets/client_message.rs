//! Fuzzes the client `/ws/market` protocol: `wire::client::parse_request`
//! on arbitrary text, and the frame encoders on arbitrary strings.
//!
//! Checks: never panics; a subscribe names a non-empty series id; every error
//! frame (`bad_request_frame`, `error_frame`) and every gap/candle frame the
//! encoders write is valid JSON whose string fields round-trip exactly (so a
//! client-supplied string can never break out of its JSON string).
#![no_main]

use klinegate::model::Candle;
use klinegate::wire::client::{self, ClientRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("encoder wrote invalid JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match client::parse_request(&text) {
        Ok(ClientRequest::Subscribe { series_id, .. }) => {
            assert!(!series_id.is_empty(), "subscribe accepted with an empty series_id");
        }
        Ok(ClientRequest::Unsubscribe { .. }) => {}
        Err(e) => {
            let v = json(&client::bad_request_frame(&e));
            assert_eq!(v["type"], "error");
            assert_eq!(v["message"], Value::String(e.to_string()));
        }
    }
    // The encoders echo client-controlled strings (series ids, messages).
    let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    let v = json(&client::error_frame(a, b, Some(a)));
    assert_eq!((v["code"].as_str(), v["message"].as_str(), v["series_id"].as_str()), (Some(a), Some(b), Some(a)));
    let mut buf = Vec::new();
    client::write_gap_frame(&mut buf, b, data.len() as i64, -(data.len() as i64));
    assert_eq!(json(&buf)["series_id"].as_str(), Some(b));
    let c = Candle { candle_time: data.len() as i64 * 60, open: 1.5, high: 2.0, low: 1.0, close: 1.25, volume: 0.0 };
    buf.clear();
    client::write_candle_frame(&mut buf, data.len() % 2 == 0, a, &c);
    let v = json(&buf);
    assert_eq!(v["series_id"].as_str(), Some(a));
    assert_eq!(v["candle"]["close"].as_f64(), Some(1.25));
});
