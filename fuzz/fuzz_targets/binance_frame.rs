//! Fuzzes `wire::binance::parse_frame`, the hand-written, allocation-free
//! scanner every exchange frame goes through.
//!
//! Checks: never panics; an accepted kline carries a candle that passes
//! `Candle::sanity_error`, whose time is the open of its interval's bucket;
//! every rejection has a stable `kind()` and a non-empty message; parsing is a
//! pure function (a second parse gives the same answer).
#![no_main]

use klinegate::wire::binance::{parse_frame, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let first = parse_frame(text);
    match &first {
        Ok(Frame::Kline(k)) => {
            let c = &k.candle;
            assert_eq!(c.sanity_error(), None, "accepted kline has an insane candle: {k:?}");
            assert!(c.candle_time > 0, "accepted kline with non-positive time: {k:?}");
            assert_eq!(k.interval.bucket_open(c.candle_time), c.candle_time, "misaligned accepted kline: {k:?}");
        }
        Ok(_) => {}
        Err(e) => {
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
    assert_eq!(first, parse_frame(text), "parse_frame is not a pure function");
});
