//! Binance wire format: kline stream names and URLs, control requests
//! (`SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS`), and the frame parser for
//! everything a kline connection receives (kline events, control responses,
//! `serverShutdown`).
//!
//! Owns: the exact byte shapes Binance sends and accepts.
//! Never: keeps state, does I/O, reads a clock, panics on input, or allocates while
//! parsing a kline frame. Control responses and errors are rare and may allocate.
//!
//! The parser is a hand-written single-pass scanner over the frame's bytes. It
//! validates the whole frame as JSON (RFC 8259: strings, escapes including surrogate
//! pairs, numbers, literals, nesting up to [`MAX_NESTING`]), accepts fields in any
//! order with any whitespace, ignores fields it does not need, and borrows the
//! strings it returns from the frame. Values are collected as raw tokens first and
//! given meaning afterwards, so the event type (`e`) can arrive after the candle
//! (`k`). Frames laid out exactly as Binance writes them (its key order, no
//! whitespace) take a fast lane that compares the fixed text between values
//! instead of dispatching on keys; anything else takes the general walk, with the
//! same result (property-tested). `benches/parse.rs` compares it with
//! `serde_json::Value` (about 8x slower on real combined frames) and with typed
//! serde on borrowed `&str` fields (about 2.5x slower, and checks less), which is
//! why it is hand-written.
//!
//! Decisions worth knowing:
//! - `e`, `E`, `s`, `k.t`, `k.T`, `k.s`, `k.i`, `k.o/h/l/c/v`, `k.n`, `k.x` are all
//!   required: Binance always sends them, and a frame without them is not Binance.
//!   The reference system's bare `{"k":{...}}` payload is therefore rejected with
//!   [`FrameError::MissingField`] `e`.
//! - A field that appears twice is rejected ([`FrameError::DuplicateField`]) rather
//!   than resolved first- or last-wins, which differs between JSON parsers.
//! - Strings we hand out borrowed (`stream`, `s`, `k.s`) must be free of JSON escapes
//!   ([`FrameError::EscapedText`]); strings we only compare or convert (`e`, `k.i`,
//!   prices, keys) are unescaped properly.
//! - Weekly candles open on Monday 00:00 UTC, four days after the epoch's Thursday,
//!   so `k.t` of a `1w` candle is aligned when `(t - 4 days) % 1 week == 0`; every
//!   other interval is epoch-aligned.
//!
//! Files, one concern each: [`names`] (endpoints, intervals, stream names),
//! [`control`] (control requests and responses), [`frame`] (what a parse returns),
//! [`parse`] (the top-level walk and the fast lane), [`kline`] (the kline payload),
//! [`token`] (tokens into fields and values, shared by the walk), [`rest`] (REST klines). The JSON scanning itself is [`crate::wire::json_scan`].

mod control;
mod frame;
mod kline;
mod names;
mod parse;
pub mod rest;
mod token;
#[cfg(test)]
mod tests;

pub use crate::wire::json_scan::MAX_NESTING;
pub use control::{list_subscriptions_request, subscribe_request, unsubscribe_request};
pub use frame::{Frame, FrameError, KlineEvent};
pub use names::{
    combined_stream_url, default_ws_url, is_supported_interval, stream_name, StreamNameError,
    SymbolError, FUTURES_WS_URL, SPOT_WS_URL,
};
pub use parse::parse_frame;
