//! Binance wire format: kline stream names and URLs, control requests
//! (`SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS`), and the frame parser for
//! everything a kline connection receives (kline events, control responses,
//! `serverShutdown`).
//!
//! Owns: the exact byte shapes Binance sends and accepts (spec `binance.md` §1–4).
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

use std::fmt;

use crate::model::{Candle, Market, Timeframe};

/// Combined-stream endpoint for spot (streams in `?streams=` or via `SUBSCRIBE`).
pub const SPOT_WS_URL: &str = "wss://stream.binance.com:9443/stream";
/// Combined-stream endpoint for USD-M futures on the routed `/market` path (since
/// 2026 the un-routed root delivers no klines; spec §1).
pub const FUTURES_WS_URL: &str = "wss://fstream.binance.com/market/stream";

/// JSON nesting deeper than this is rejected; real frames nest three levels.
pub const MAX_NESTING: u32 = 64;

/// The default combined-stream URL for a market.
pub fn default_ws_url(market: Market) -> &'static str {
    match market {
        Market::Spot => SPOT_WS_URL,
        Market::Futures => FUTURES_WS_URL,
    }
}

/// `base?streams=a/b/c`, the combined-stream URL subscribing to `streams` at connect.
pub fn combined_stream_url<S: AsRef<str>>(base: &str, streams: &[S]) -> String {
    let mut url = String::with_capacity(base.len() + 9 + streams.len() * 24);
    url.push_str(base);
    url.push_str("?streams=");
    for (i, s) in streams.iter().enumerate() {
        if i > 0 {
            url.push('/');
        }
        url.push_str(s.as_ref());
    }
    url
}

// ---------------------------------------------------------------------------
// Intervals and stream names
// ---------------------------------------------------------------------------

/// Binance kline intervals our [`Timeframe`] can express (spec §1: `1s` and `1M`
/// exist on Binance but are not whole-minute/week multiples we support).
const SUPPORTED_INTERVALS: [(&str, u32); 14] = [
    ("1m", 60),
    ("3m", 180),
    ("5m", 300),
    ("15m", 900),
    ("30m", 1_800),
    ("1h", 3_600),
    ("2h", 7_200),
    ("4h", 14_400),
    ("6h", 21_600),
    ("8h", 28_800),
    ("12h", 43_200),
    ("1d", 86_400),
    ("3d", 259_200),
    ("1w", 604_800),
];

const WEEK_SECONDS: i64 = 604_800;
/// 1970-01-01 was a Thursday; Binance weeks start on Monday, four days later.
const WEEK_START_OFFSET_MS: i64 = 4 * 86_400_000;

/// Whether Binance publishes a kline stream for `tf`.
pub fn is_supported_interval(tf: Timeframe) -> bool {
    SUPPORTED_INTERVALS
        .iter()
        .any(|&(_, s)| i64::from(s) == tf.seconds())
}

/// Binance interval name → timeframe, only for the exact names Binance uses.
fn interval_from_name(name: &str) -> Option<Timeframe> {
    SUPPORTED_INTERVALS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|&(_, s)| Timeframe::from_seconds(s))
}

/// Whether a kline open time (ms) is the start of a Binance bucket of `tf`.
fn open_time_aligned(open_time_ms: i64, tf: Timeframe) -> bool {
    let len_ms = tf.seconds() * 1000;
    let offset = if tf.seconds() == WEEK_SECONDS {
        WEEK_START_OFFSET_MS
    } else {
        0
    };
    open_time_ms.wrapping_sub(offset).rem_euclid(len_ms) == 0
}

/// Why a symbol/timeframe cannot name a Binance kline stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamNameError {
    /// The part before the first `:` has no `/` (`BTCUSDT` instead of `BTC/USDT`).
    MissingSlash { symbol: String },
    /// Nothing is left once `/` and `-` are removed.
    Empty { symbol: String },
    /// A character that cannot appear in a stream name (space, `@`, quote, ...).
    InvalidCharacter { symbol: String, ch: char },
    /// Binance has no kline stream at this timeframe.
    UnsupportedInterval { interval: Timeframe },
}

/// The name the brief asked for; the same type.
pub type SymbolError = StreamNameError;

impl fmt::Display for StreamNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamNameError::MissingSlash { symbol } => write!(
                f,
                "unsupported symbol format for binance kline stream: '{symbol}' \
                 (write base/quote, e.g. BTC/USDT or BTC/USDT:USDT)"
            ),
            StreamNameError::Empty { symbol } => {
                write!(f, "symbol '{symbol}' has no base or quote asset")
            }
            StreamNameError::InvalidCharacter { symbol, ch } => write!(
                f,
                "symbol '{symbol}' contains {ch:?}, which cannot appear in a binance stream name"
            ),
            StreamNameError::UnsupportedInterval { interval } => write!(
                f,
                "binance has no kline stream for timeframe {interval} \
                 (use 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w)"
            ),
        }
    }
}

impl std::error::Error for StreamNameError {}

/// Kline stream name for a ccxt-style symbol: `BTC/USDT:USDT`, 1h → `btcusdt@kline_1h`.
/// The part before the first `:` must contain `/`; `/` and `-` are removed and the
/// rest lowercased (reference §5.2). Built by construction because Binance
/// acknowledges any name, even one that will never deliver (spec §3).
pub fn stream_name(symbol: &str, tf: Timeframe) -> Result<String, StreamNameError> {
    let pair = symbol
        .split_once(':')
        .map_or(symbol, |(pair, _)| pair)
        .trim();
    if !pair.contains('/') {
        return Err(StreamNameError::MissingSlash {
            symbol: symbol.to_owned(),
        });
    }
    if !is_supported_interval(tf) {
        return Err(StreamNameError::UnsupportedInterval { interval: tf });
    }
    let mut name = String::with_capacity(pair.len() + 12);
    for ch in pair.chars() {
        match ch {
            '/' | '-' => {}
            c if c.is_alphanumeric() => name.extend(c.to_lowercase()),
            c => {
                return Err(StreamNameError::InvalidCharacter {
                    symbol: symbol.to_owned(),
                    ch: c,
                })
            }
        }
    }
    if name.is_empty() {
        return Err(StreamNameError::Empty {
            symbol: symbol.to_owned(),
        });
    }
    name.push_str("@kline_");
    name.push_str(&tf.binance_interval());
    Ok(name)
}

// ---------------------------------------------------------------------------
// Control requests
// ---------------------------------------------------------------------------

/// `{"method":"SUBSCRIBE","params":[...],"id":N}`.
pub fn subscribe_request<S: AsRef<str>>(id: u64, streams: &[S]) -> String {
    method_request("SUBSCRIBE", Some(streams), id)
}

/// `{"method":"UNSUBSCRIBE","params":[...],"id":N}`.
pub fn unsubscribe_request<S: AsRef<str>>(id: u64, streams: &[S]) -> String {
    method_request("UNSUBSCRIBE", Some(streams), id)
}

/// `{"method":"LIST_SUBSCRIPTIONS","id":N}`.
pub fn list_subscriptions_request(id: u64) -> String {
    method_request::<&str>("LIST_SUBSCRIPTIONS", None, id)
}

fn method_request<S: AsRef<str>>(method: &str, params: Option<&[S]>, id: u64) -> String {
    let names_len: usize = params.map_or(0, |p| p.iter().map(|s| s.as_ref().len() + 3).sum());
    let mut out = String::with_capacity(48 + names_len);
    out.push_str("{\"method\":");
    push_json_string(&mut out, method);
    if let Some(params) = params {
        out.push_str(",\"params\":[");
        for (i, s) in params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, s.as_ref());
        }
        out.push(']');
    }
    out.push_str(",\"id\":");
    out.push_str(&id.to_string());
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal. Stream names are built plain, but a request
/// must stay valid JSON whatever it is given.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// One text frame from a Binance market-stream connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A kline update, forming or final.
    Kline(KlineEvent<'a>),
    /// `{"result":null,"id":N}`: a SUBSCRIBE/UNSUBSCRIBE was accepted (which proves
    /// nothing about the stream existing, spec §3).
    ControlAck { id: u64 },
    /// `{"result":[...],"id":N}`: the answer to LIST_SUBSCRIPTIONS.
    ControlList { id: u64, streams: Vec<String> },
    /// `{"error":{"code":C,"msg":"..."},"id":N|null}`.
    ControlError {
        id: Option<u64>,
        code: i64,
        msg: String,
    },
    /// `serverShutdown` (raw or `!serverShutdown` combined): reconnect soon.
    ServerShutdown,
}

/// A kline event, values checked (interval supported, open time aligned, numbers
/// finite and non-negative, high/low bounding open/close).
#[derive(Debug, Clone, PartialEq)]
pub struct KlineEvent<'a> {
    /// The combined-form `stream` value, e.g. `btcusdt@kline_1m`; `None` for raw frames.
    pub stream: Option<&'a str>,
    /// `k.s`, as Binance sends it (uppercase), e.g. `BTCUSDT`.
    pub symbol: &'a str,
    /// `k.i`.
    pub interval: Timeframe,
    /// `candle_time` = `k.t` / 1000 (seconds); o/h/l/c/v from `k`.
    pub candle: Candle,
    /// `k.x`: the candle is closed and these are its final values.
    pub is_final: bool,
    /// `E`.
    pub event_time_ms: i64,
    /// `k.T` (= `k.t` + interval − 1 ms on Binance; not checked).
    pub close_time_ms: i64,
    /// `k.n`.
    pub trades: i64,
}

/// Why a frame was rejected. `kind()` is a stable metric label; `Display` says what
/// was wrong in words an operator can act on.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// Not JSON: `offset` is the byte where parsing stopped.
    InvalidJson {
        offset: usize,
        reason: &'static str,
    },
    /// Valid JSON, but not an object.
    NotAnObject,
    /// An event other than `kline` / `serverShutdown`; `event` is its `e` value.
    NotKline {
        event: String,
    },
    /// An object with neither `e`, `data`, `result` nor `error`.
    UnrecognizedFrame,
    MissingField {
        field: &'static str,
    },
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    DuplicateField {
        field: &'static str,
    },
    /// A string we would hand out borrowed contains a JSON escape sequence.
    EscapedText {
        field: &'static str,
    },
    /// `s` and `k.s` name different symbols.
    SymbolMismatch,
    /// `k.i` is not one of the intervals in [`is_supported_interval`].
    UnsupportedInterval {
        interval: String,
    },
    OpenTimeNotPositive {
        open_time_ms: i64,
    },
    OpenTimeMisaligned {
        open_time_ms: i64,
        interval: Timeframe,
    },
    /// A price or volume is not a decimal number.
    InvalidNumber {
        field: &'static str,
    },
    /// A price or volume overflows f64.
    NonFinite {
        field: &'static str,
    },
    /// A price or volume is below zero.
    Negative {
        field: &'static str,
    },
    /// High/low do not bound open/close (`Candle::sanity_error`).
    InconsistentCandle {
        reason: &'static str,
    },
}

impl FrameError {
    /// Stable short label, usable as a metric label value.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::InvalidJson { .. } => "invalid_json",
            FrameError::NotAnObject => "not_object",
            FrameError::NotKline { .. } => "non_kline_event",
            FrameError::UnrecognizedFrame => "unrecognized_frame",
            FrameError::MissingField { .. } => "missing_field",
            FrameError::WrongType { .. } => "wrong_type",
            FrameError::DuplicateField { .. } => "duplicate_field",
            FrameError::EscapedText { .. } => "escaped_text",
            FrameError::SymbolMismatch => "symbol_mismatch",
            FrameError::UnsupportedInterval { .. } => "unsupported_interval",
            FrameError::OpenTimeNotPositive { .. } => "open_time_not_positive",
            FrameError::OpenTimeMisaligned { .. } => "open_time_misaligned",
            FrameError::InvalidNumber { .. } => "invalid_number",
            FrameError::NonFinite { .. } => "non_finite",
            FrameError::Negative { .. } => "negative_value",
            FrameError::InconsistentCandle { .. } => "inconsistent_candle",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::InvalidJson { offset, reason } => {
                write!(f, "frame is not valid JSON: {reason} at byte {offset}")
            }
            FrameError::NotAnObject => {
                write!(
                    f,
                    "frame is JSON but not an object; binance frames are objects"
                )
            }
            FrameError::NotKline { event } => write!(
                f,
                "event '{event}' is not a kline event; subscribe only <symbol>@kline_<interval> \
                 streams on a kline connection"
            ),
            FrameError::UnrecognizedFrame => write!(
                f,
                "object is neither a market event (no 'e' or 'data') nor a control response \
                 (no 'result' or 'error')"
            ),
            FrameError::MissingField { field } => write!(f, "frame is missing field '{field}'"),
            FrameError::WrongType { field, expected } => {
                write!(f, "field '{field}' has the wrong type: expected {expected}")
            }
            FrameError::DuplicateField { field } => {
                write!(
                    f,
                    "field '{field}' appears more than once; the frame is ambiguous"
                )
            }
            FrameError::EscapedText { field } => write!(
                f,
                "field '{field}' contains a JSON escape sequence; symbols and stream names \
                 must be plain text"
            ),
            FrameError::SymbolMismatch => {
                write!(
                    f,
                    "symbol 's' and candle symbol 'k.s' differ; the frame is inconsistent"
                )
            }
            FrameError::UnsupportedInterval { interval } => write!(
                f,
                "kline interval '{interval}' is not supported \
                 (supported: 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w)"
            ),
            FrameError::OpenTimeNotPositive { open_time_ms } => write!(
                f,
                "kline open time k.t = {open_time_ms} must be a positive number of milliseconds"
            ),
            FrameError::OpenTimeMisaligned {
                open_time_ms,
                interval,
            } => write!(
                f,
                "kline open time k.t = {open_time_ms} ms is not the start of a {interval} bucket \
                 (buckets are epoch-aligned; weekly ones start Monday 00:00 UTC)"
            ),
            FrameError::InvalidNumber { field } => write!(
                f,
                "field '{field}' is not a decimal number (expected e.g. \"57520.11000000\")"
            ),
            FrameError::NonFinite { field } => {
                write!(f, "field '{field}' is too large to be a finite number")
            }
            FrameError::Negative { field } => {
                write!(
                    f,
                    "field '{field}' is negative; prices and volumes must be >= 0"
                )
            }
            FrameError::InconsistentCandle { reason } => write!(f, "candle rejected: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses one text frame: a kline event (raw payload or combined
/// `{"stream":..,"data":..}` form), a control response, or `serverShutdown`.
/// Allocates nothing for kline frames.
pub fn parse_frame(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut envelope = Envelope::default();
    if scan_binance_layout(text, &mut envelope).is_some() {
        return envelope.take_frame();
    }
    parse_frame_general(text)
}

/// [`parse_frame`] without the fast lane: the general walk, for any layout.
fn parse_frame_general(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut sc = Scanner::new(text);
    sc.skip_ws();
    if sc.peek() != Some(b'{') {
        // Distinguish "some other JSON value" from "not JSON at all".
        return match sc.value().and_then(|_| sc.expect_end()) {
            Some(()) => Err(FrameError::NotAnObject),
            None => Err(sc.take_error()),
        };
    }
    let mut envelope = Envelope::default();
    match sc
        .walk_object(|sc, key| envelope.field(sc, key))
        .and_then(|()| sc.expect_end())
    {
        Some(()) => envelope.take_frame(),
        None => Err(sc.take_error()),
    }
}

// ---------------------------------------------------------------------------
// Pass 1, fast lane: the layout Binance writes
// ---------------------------------------------------------------------------
//
// Binance writes every kline frame with the same keys in the same order and no
// whitespace. When a frame is that layout byte for byte around its values, the
// keys need no dispatch and cannot repeat, so the walk reduces to comparing the
// fixed text between values and scanning each value. Values are scanned by the
// same scalar scanners as the general walk, so the tokens collected are the ones
// the general walk would collect; any deviation (another order, whitespace, an
// extra, missing or escaped key, a nested value where a scalar belongs) abandons
// the lane, and the general walk starts over from the first byte. The lane roughly
// halves the time of a real frame (`benches/parse.rs`); a test checks it agrees
// with the general walk on real and mutated frames.

/// Fills `envelope` from a frame in Binance's exact layout, combined or raw form;
/// `None` (with `envelope` in an unspecified state) when the frame is laid out in
/// any other way, valid or not.
fn scan_binance_layout<'a>(text: &'a str, envelope: &mut Envelope<'a>) -> Option<()> {
    let mut sc = Scanner::new(text);
    if sc.lane_literal(b"{\"stream\":").is_some() {
        envelope.stream = Some(sc.lane_value()?);
        sc.lane_literal(b",\"data\":")?;
        let Nested::Object(payload) = envelope.data.insert(Nested::Object(Payload::default()))
        else {
            return None;
        };
        scan_payload_layout(&mut sc, payload)?;
        sc.lane_literal(b"}")?;
    } else {
        scan_payload_layout(&mut sc, &mut envelope.payload)?;
    }
    (sc.pos == text.len()).then_some(())
}

/// `{"e":..,"E":..,"s":..,"k":{..}}`
#[inline(always)]
fn scan_payload_layout<'a>(sc: &mut Scanner<'a>, payload: &mut Payload<'a>) -> Option<()> {
    payload.event = Some(sc.lane_field(b"{\"e\":")?);
    payload.event_time = Some(sc.lane_field(b",\"E\":")?);
    payload.symbol = Some(sc.lane_field(b",\"s\":")?);
    sc.lane_literal(b",\"k\":")?;
    let Nested::Object(k) = payload.kline.insert(Nested::Object(KlineFields::default())) else {
        return None;
    };
    scan_kline_layout(sc, k)?;
    sc.lane_literal(b"}")
}

/// `{"t":..,"T":..,"s":..,"i":..,"f":..,"L":..,"o":..,"c":..,"h":..,"l":..,"v":..,
/// "n":..,"x":..,"q":..,"V":..,"Q":..,"B":..}`; `f L q V Q B` are checked and dropped,
/// as the general walk does.
#[inline(always)]
fn scan_kline_layout<'a>(sc: &mut Scanner<'a>, k: &mut KlineFields<'a>) -> Option<()> {
    k.open_time = Some(sc.lane_field(b"{\"t\":")?);
    k.close_time = Some(sc.lane_field(b",\"T\":")?);
    k.symbol = Some(sc.lane_field(b",\"s\":")?);
    k.interval = Some(sc.lane_field(b",\"i\":")?);
    sc.lane_skip(b",\"f\":")?;
    sc.lane_skip(b",\"L\":")?;
    k.open = Some(sc.lane_field(b",\"o\":")?);
    k.close = Some(sc.lane_field(b",\"c\":")?);
    k.high = Some(sc.lane_field(b",\"h\":")?);
    k.low = Some(sc.lane_field(b",\"l\":")?);
    k.volume = Some(sc.lane_field(b",\"v\":")?);
    k.trades = Some(sc.lane_field(b",\"n\":")?);
    k.is_final = Some(sc.lane_field(b",\"x\":")?);
    sc.lane_skip(b",\"q\":")?;
    sc.lane_skip(b",\"V\":")?;
    sc.lane_skip(b",\"Q\":")?;
    sc.lane_skip(b",\"B\":")?;
    sc.lane_literal(b"}")
}

// ---------------------------------------------------------------------------
// Pass 1: collect raw tokens
// ---------------------------------------------------------------------------
//
// Scanning functions return `Option`: `None` means "stop, the scanner has recorded
// why". Keeping the (large) error out of every return value keeps the hot path's
// results in registers.

/// The contents of a JSON string literal, between the quotes, still escaped.
#[derive(Clone, Copy, Debug)]
struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

/// A scanned JSON value. Objects and arrays we do not need are validated and skipped.
#[derive(Clone, Copy, Debug)]
enum Token<'a> {
    Str(JsonStr<'a>),
    /// The number's text, already checked against the JSON number grammar.
    Num(&'a str),
    Bool(bool),
    Null,
    Object,
    Array,
}

/// A field that must be an object for us to look inside.
enum Nested<T> {
    Object(T),
    NotObject,
}

#[inline]
fn put<T>(sc: &mut Scanner<'_>, slot: &mut Option<T>, value: T, field: &'static str) -> Option<()> {
    if slot.is_some() {
        return sc.fail(FrameError::DuplicateField { field });
    }
    *slot = Some(value);
    Some(())
}

/// Parses a nested object with `on_field`, or records that the value was not an object.
fn nested<'a, T: Default>(
    sc: &mut Scanner<'a>,
    slot: &mut Option<Nested<T>>,
    field: &'static str,
    mut on_field: impl FnMut(&mut T, &mut Scanner<'a>, &[u8]) -> Option<()>,
) -> Option<()> {
    if slot.is_some() {
        return sc.fail(FrameError::DuplicateField { field });
    }
    if sc.peek() == Some(b'{') {
        // Filled in place: these structs are a few hundred bytes, not worth moving.
        let Nested::Object(inner) = slot.insert(Nested::Object(T::default())) else {
            return sc.invalid("internal: nested slot");
        };
        sc.walk_object(|sc, key| on_field(inner, sc, key))?;
    } else {
        sc.value()?;
        *slot = Some(Nested::NotObject);
    }
    Some(())
}

/// Top-level object: the combined-form wrapper, control-response fields, and the
/// raw-form payload fields.
#[derive(Default)]
struct Envelope<'a> {
    stream: Option<Token<'a>>,
    data: Option<Nested<Payload<'a>>>,
    result: Option<ResultField>,
    error: Option<Nested<ErrorFields<'a>>>,
    id: Option<Token<'a>>,
    payload: Payload<'a>,
}

enum ResultField {
    Null,
    List(Vec<String>),
    Other,
}

#[derive(Default)]
struct ErrorFields<'a> {
    code: Option<Token<'a>>,
    msg: Option<Token<'a>>,
}

/// An event payload: `e`, `E`, `s`, `k`.
#[derive(Default)]
struct Payload<'a> {
    event: Option<Token<'a>>,
    event_time: Option<Token<'a>>,
    symbol: Option<Token<'a>>,
    kline: Option<Nested<KlineFields<'a>>>,
}

/// The `k` object's fields we use; `f L q V Q B` are skipped.
#[derive(Default)]
struct KlineFields<'a> {
    open_time: Option<Token<'a>>,
    close_time: Option<Token<'a>>,
    symbol: Option<Token<'a>>,
    interval: Option<Token<'a>>,
    open: Option<Token<'a>>,
    high: Option<Token<'a>>,
    low: Option<Token<'a>>,
    close: Option<Token<'a>>,
    volume: Option<Token<'a>>,
    trades: Option<Token<'a>>,
    is_final: Option<Token<'a>>,
}

impl<'a> Envelope<'a> {
    fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        match key {
            // One-letter keys are payload fields (raw form); skip the long compares.
            [_] => self.payload.field(sc, key),
            b"stream" => {
                let value = sc.value()?;
                put(sc, &mut self.stream, value, "stream")
            }
            b"data" => nested(sc, &mut self.data, "data", Payload::field),
            b"result" => {
                let result = ResultField::scan(sc)?;
                put(sc, &mut self.result, result, "result")
            }
            b"error" => nested(sc, &mut self.error, "error", ErrorFields::field),
            b"id" => {
                let value = sc.value()?;
                put(sc, &mut self.id, value, "id")
            }
            _ => self.payload.field(sc, key),
        }
    }
}

impl ResultField {
    fn scan(sc: &mut Scanner<'_>) -> Option<ResultField> {
        if sc.peek() != Some(b'[') {
            return Some(match sc.value()? {
                Token::Null => ResultField::Null,
                _ => ResultField::Other,
            });
        }
        let mut names = Vec::new();
        let mut all_strings = true;
        sc.walk_array(|sc| {
            match sc.value()? {
                Token::Str(s) => names.push(unescape_to_string(s)),
                _ => all_strings = false,
            }
            Some(())
        })?;
        Some(if all_strings {
            ResultField::List(names)
        } else {
            ResultField::Other
        })
    }
}

impl<'a> ErrorFields<'a> {
    fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        let (slot, name) = match key {
            b"code" => (&mut self.code, "error.code"),
            b"msg" => (&mut self.msg, "error.msg"),
            _ => return sc.value().map(drop),
        };
        let value = sc.value()?;
        put(sc, slot, value, name)
    }
}

impl<'a> Payload<'a> {
    fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        // Byte patterns compile to a length check and byte compares, not memcmp calls.
        let (slot, name) = match key {
            [b'e'] => (&mut self.event, "e"),
            [b'E'] => (&mut self.event_time, "E"),
            [b's'] => (&mut self.symbol, "s"),
            [b'k'] => return nested(sc, &mut self.kline, "k", KlineFields::field),
            _ => return sc.value().map(drop),
        };
        let value = sc.value()?;
        put(sc, slot, value, name)
    }
}

impl<'a> KlineFields<'a> {
    fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        let [byte] = key else {
            return sc.value().map(drop);
        };
        let (slot, name) = match byte {
            b't' => (&mut self.open_time, "k.t"),
            b'T' => (&mut self.close_time, "k.T"),
            b's' => (&mut self.symbol, "k.s"),
            b'i' => (&mut self.interval, "k.i"),
            b'o' => (&mut self.open, "k.o"),
            b'h' => (&mut self.high, "k.h"),
            b'l' => (&mut self.low, "k.l"),
            b'c' => (&mut self.close, "k.c"),
            b'v' => (&mut self.volume, "k.v"),
            b'n' => (&mut self.trades, "k.n"),
            b'x' => (&mut self.is_final, "k.x"),
            _ => return sc.value().map(drop),
        };
        let value = sc.value()?;
        put(sc, slot, value, name)
    }
}

// ---------------------------------------------------------------------------
// Pass 2: give the tokens meaning
// ---------------------------------------------------------------------------

impl<'a> Envelope<'a> {
    fn take_frame(&mut self) -> Result<Frame<'a>, FrameError> {
        if let Some(data) = &self.data {
            let stream = plain_str(required(self.stream, "stream")?, "stream")?;
            if stream == "!serverShutdown" {
                return Ok(Frame::ServerShutdown);
            }
            return match data {
                Nested::Object(payload) => payload.to_frame(Some(stream)),
                Nested::NotObject => Err(FrameError::WrongType {
                    field: "data",
                    expected: "an object",
                }),
            };
        }
        if self.payload.event.is_some() {
            return self.payload.to_frame(None);
        }
        if let Some(error) = &self.error {
            return control_error(error, self.id);
        }
        if let Some(result) = self.result.take() {
            return control_result(result, self.id);
        }
        if self.payload.kline.is_some() {
            return Err(FrameError::MissingField { field: "e" });
        }
        Err(FrameError::UnrecognizedFrame)
    }
}

fn control_result<'a>(result: ResultField, id: Option<Token<'a>>) -> Result<Frame<'a>, FrameError> {
    let id = unsigned(required(id, "id")?, "id")?;
    match result {
        ResultField::Null => Ok(Frame::ControlAck { id }),
        ResultField::List(streams) => Ok(Frame::ControlList { id, streams }),
        ResultField::Other => Err(FrameError::WrongType {
            field: "result",
            expected: "null or an array of stream names",
        }),
    }
}

fn control_error<'a>(
    error: &Nested<ErrorFields<'a>>,
    id: Option<Token<'a>>,
) -> Result<Frame<'a>, FrameError> {
    let Nested::Object(error) = error else {
        return Err(FrameError::WrongType {
            field: "error",
            expected: "an object",
        });
    };
    // Binance answers an unparseable request with `"id":null`.
    let id = match id {
        None | Some(Token::Null) => None,
        Some(token) => Some(unsigned(token, "id")?),
    };
    let code = integer(required(error.code, "error.code")?, "error.code")?;
    let msg = match required(error.msg, "error.msg")? {
        Token::Str(s) => unescape_to_string(s),
        _ => {
            return Err(FrameError::WrongType {
                field: "error.msg",
                expected: "a string",
            })
        }
    };
    Ok(Frame::ControlError { id, code, msg })
}

impl<'a> Payload<'a> {
    fn to_frame(&self, stream: Option<&'a str>) -> Result<Frame<'a>, FrameError> {
        let Token::Str(event) = required(self.event, "e")? else {
            return Err(FrameError::WrongType {
                field: "e",
                expected: "a string",
            });
        };
        let is_kline = with_unescaped(event, |name| match name {
            Some("kline") => Ok(true),
            Some("serverShutdown") => Ok(false),
            other => Err(FrameError::NotKline {
                event: clipped(other.unwrap_or(event.raw)),
            }),
        })?;
        if !is_kline {
            return Ok(Frame::ServerShutdown);
        }
        let event_time_ms = integer(required(self.event_time, "E")?, "E")?;
        let top_symbol = plain_str(required(self.symbol, "s")?, "s")?;
        let kline = match required(self.kline.as_ref(), "k")? {
            Nested::Object(k) => k,
            Nested::NotObject => {
                return Err(FrameError::WrongType {
                    field: "k",
                    expected: "an object",
                })
            }
        };
        let event = kline.to_event(stream, event_time_ms)?;
        if event.symbol != top_symbol {
            return Err(FrameError::SymbolMismatch);
        }
        Ok(Frame::Kline(event))
    }
}

impl<'a> KlineFields<'a> {
    fn to_event(
        &self,
        stream: Option<&'a str>,
        event_time_ms: i64,
    ) -> Result<KlineEvent<'a>, FrameError> {
        let open_time_ms = integer(required(self.open_time, "k.t")?, "k.t")?;
        let close_time_ms = integer(required(self.close_time, "k.T")?, "k.T")?;
        let symbol = plain_str(required(self.symbol, "k.s")?, "k.s")?;
        let interval = interval(required(self.interval, "k.i")?)?;
        let open = decimal(required(self.open, "k.o")?, "k.o")?;
        let high = decimal(required(self.high, "k.h")?, "k.h")?;
        let low = decimal(required(self.low, "k.l")?, "k.l")?;
        let close = decimal(required(self.close, "k.c")?, "k.c")?;
        let volume = decimal(required(self.volume, "k.v")?, "k.v")?;
        let trades = integer(required(self.trades, "k.n")?, "k.n")?;
        let is_final = match required(self.is_final, "k.x")? {
            Token::Bool(b) => b,
            _ => {
                return Err(FrameError::WrongType {
                    field: "k.x",
                    expected: "true or false",
                })
            }
        };
        if open_time_ms <= 0 {
            return Err(FrameError::OpenTimeNotPositive { open_time_ms });
        }
        if !open_time_aligned(open_time_ms, interval) {
            return Err(FrameError::OpenTimeMisaligned {
                open_time_ms,
                interval,
            });
        }
        let candle = Candle {
            candle_time: open_time_ms / 1000,
            open,
            high,
            low,
            close,
            volume,
        };
        if let Some(reason) = candle.sanity_error() {
            return Err(FrameError::InconsistentCandle { reason });
        }
        Ok(KlineEvent {
            stream,
            symbol,
            interval,
            candle,
            is_final,
            event_time_ms,
            close_time_ms,
            trades,
        })
    }
}

#[inline(always)]
fn required<T>(slot: Option<T>, field: &'static str) -> Result<T, FrameError> {
    // A match, not `ok_or`: that would build (and drop) the error on every call.
    match slot {
        Some(value) => Ok(value),
        None => Err(FrameError::MissingField { field }),
    }
}

/// A string handed out borrowed from the frame, so it must need no unescaping.
fn plain_str<'a>(token: Token<'a>, field: &'static str) -> Result<&'a str, FrameError> {
    match token {
        Token::Str(JsonStr {
            raw,
            escaped: false,
        }) => Ok(raw),
        Token::Str(_) => Err(FrameError::EscapedText { field }),
        _ => Err(FrameError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn integer(token: Token<'_>, field: &'static str) -> Result<i64, FrameError> {
    const EXPECTED: &str = "an integer within the signed 64-bit range";
    match token {
        Token::Num(text) => match parse_i64(text) {
            Some(value) => Ok(value),
            None => Err(FrameError::WrongType {
                field,
                expected: EXPECTED,
            }),
        },
        _ => Err(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
    }
}

fn unsigned(token: Token<'_>, field: &'static str) -> Result<u64, FrameError> {
    const EXPECTED: &str = "an unsigned 64-bit integer";
    match token {
        Token::Num(text) => parse_u64(text).ok_or(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
        _ => Err(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
    }
}

fn interval(token: Token<'_>) -> Result<Timeframe, FrameError> {
    let Token::Str(s) = token else {
        return Err(FrameError::WrongType {
            field: "k.i",
            expected: "a string such as \"1m\"",
        });
    };
    with_unescaped(s, |name| {
        name.and_then(interval_from_name)
            .ok_or_else(|| FrameError::UnsupportedInterval {
                interval: clipped(name.unwrap_or(s.raw)),
            })
    })
}

/// A price or volume: a decimal string (Binance's form) or a JSON number.
#[inline]
fn decimal(token: Token<'_>, field: &'static str) -> Result<f64, FrameError> {
    let value = match token {
        Token::Str(s) => with_unescaped(s, |text| text.and_then(parse_decimal)),
        Token::Num(text) => parse_decimal(text),
        _ => {
            return Err(FrameError::WrongType {
                field,
                expected: "a decimal string or number",
            })
        }
    };
    let value = value.ok_or(FrameError::InvalidNumber { field })?;
    if !value.is_finite() {
        return Err(FrameError::NonFinite { field });
    }
    if value < 0.0 {
        return Err(FrameError::Negative { field });
    }
    Ok(value)
}

/// At most 64 characters of an untrusted name, for an error message.
fn clipped(s: &str) -> String {
    s.chars().take(64).collect()
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

/// Exact powers of ten representable in f64 (10^22 is the largest).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?` to the correctly rounded f64 —
/// bit-identical to `str::parse::<f64>` (property-tested below, and on every price
/// of the recorded captures).
///
/// Fast path (Clinger): when all digits fit a mantissa `m <= 2^53` and there are at
/// most 22 fraction digits, `m` and `10^k` are exact f64s and one IEEE division is
/// correctly rounded, so `m / 10^k` is the correctly rounded value. That covers
/// every Binance price and volume; anything else goes to `str::parse`.
#[inline]
pub fn parse_decimal(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    let int_start = usize::from(negative);
    let (mut mantissa, mut i) = accumulate_digits(bytes, int_start, 0);
    let int_digits = i - int_start;
    if int_digits == 0 {
        return None;
    }
    let mut frac_digits = 0usize;
    if bytes.get(i) == Some(&b'.') {
        let frac_start = i + 1;
        (mantissa, i) = accumulate_digits(bytes, frac_start, mantissa);
        frac_digits = i - frac_start;
        if frac_digits == 0 {
            return None;
        }
    }
    if i != bytes.len() {
        // An exponent (or trailing junk): the general path decides.
        return parse_decimal_bytewise(text);
    }
    // 19 digits always fit a u64, so the wrapping arithmetic did not wrap.
    if int_digits + frac_digits > 19 || mantissa > (1u64 << 53) || frac_digits >= POW10.len() {
        return text.parse().ok();
    }
    let magnitude = mantissa as f64 / POW10[frac_digits];
    Some(if negative { -magnitude } else { magnitude })
}

/// `10^n` for the digit counts of one eight-byte chunk.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Appends the run of ASCII digits at `bytes[i..]` to `acc` (wrapping past 19
/// digits; callers count them) and returns it with the index after the run.
/// Eight digits at a time while eight bytes remain, then a byte at a time.
#[inline(always)]
fn accumulate_digits(bytes: &[u8], mut i: usize, mut acc: u64) -> (u64, usize) {
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let w = u64::from_le_bytes(chunk);
        let n = leading_digit_count(w);
        if n == 0 {
            return (acc, i);
        }
        // Keep the `n` digits (the low bytes: the text's order), as the high end of
        // an eight-digit number whose low bytes are leading zeros.
        let digits = (w.wrapping_sub(0x3030_3030_3030_3030)) << (8 * (8 - n));
        acc = acc
            .wrapping_mul(POW10_U64[n])
            .wrapping_add(eight_digits_value(digits));
        i += n;
        if n < 8 {
            return (acc, i);
        }
    }
    while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        acc = acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        i += 1;
    }
    (acc, i)
}

/// How many of the eight bytes of `w`, from the lowest (the first in the text),
/// are ASCII digits before the first non-digit.
#[inline(always)]
fn leading_digit_count(w: u64) -> usize {
    // x = byte ^ '0' is 0..=9 exactly for digits. `x + 0x76` reaches the high bit
    // for x >= 10; a carry out of a byte only happens for x >= 0x8a, a non-digit
    // already marked, so bytes below the first non-digit are judged exactly.
    let x = w ^ 0x3030_3030_3030_3030;
    let non_digit = (x.wrapping_add(0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
    (non_digit.trailing_zeros() / 8) as usize
}

/// The value of eight decimal digits 0..=9, one per byte, the lowest byte the most
/// significant (as read from text): three multiplications instead of eight.
#[inline(always)]
fn eight_digits_value(d: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    // Each byte pair becomes a two-digit number in the pair's low byte.
    let pairs = d.wrapping_mul(10).wrapping_add(d >> 8);
    ((pairs & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

/// [`parse_decimal`] a byte at a time, for exponents.
fn parse_decimal_bytewise(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;

    let int_start = i;
    while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
        i += 1;
    }
    if i == int_start {
        return None;
    }
    let mut frac_digits = 0usize;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            digits += 1;
            i += 1;
        }
        frac_digits = i - frac_start;
        if frac_digits == 0 {
            return None;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start || i != bytes.len() {
            return None;
        }
        return text.parse().ok();
    }
    if i != bytes.len() {
        return None;
    }
    // 19 digits always fit a u64, so the wrapping arithmetic above did not wrap.
    if digits > 19 || mantissa > (1u64 << 53) || frac_digits >= POW10.len() {
        return text.parse().ok();
    }
    let magnitude = mantissa as f64 / POW10[frac_digits];
    Some(if negative { -magnitude } else { magnitude })
}

/// A JSON integer (already grammar-checked) as i64; `None` if fractional or too big.
fn parse_i64(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = parse_u64(digits)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    if text.len() <= 19 {
        // Nineteen digits cannot overflow a u64: no checked arithmetic needed.
        return text.bytes().try_fold(0u64, |acc, b| {
            let digit = b.wrapping_sub(b'0');
            (digit < 10).then(|| acc * 10 + u64::from(digit))
        });
    }
    text.bytes().try_fold(0u64, |acc, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

// ---------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------

/// Calls `sink` with the unescaped pieces of an already-validated string body;
/// stops and returns false when `sink` does.
fn unescape(raw: &str, mut sink: impl FnMut(&str) -> bool) -> bool {
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        if !sink(&rest[..at]) {
            return false;
        }
        let Some((ch, used)) = decode_escape(rest.as_bytes().get(at + 1..).unwrap_or(&[])) else {
            return false;
        };
        if !sink(ch.encode_utf8(&mut [0u8; 4])) {
            return false;
        }
        rest = rest.get(at + 1 + used..).unwrap_or("");
    }
    sink(rest)
}

/// One escape after its backslash: the character and how many bytes it used.
/// Surrogates must come as a high/low pair (as serde_json and browsers require).
fn decode_escape(esc: &[u8]) -> Option<(char, usize)> {
    let simple = match esc.first()? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(esc.get(1..5)?)?;
            if !(0xD800..0xDC00).contains(&high) {
                return char::from_u32(high).map(|c| (c, 5));
            }
            if esc.get(5..7)? != b"\\u" {
                return None;
            }
            let low = hex4(esc.get(7..11)?)?;
            if !(0xDC00..0xE000).contains(&low) {
                return None;
            }
            let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            return char::from_u32(code).map(|c| (c, 11));
        }
        _ => return None,
    };
    Some((simple, 1))
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    if bytes.len() != 4 {
        return None;
    }
    bytes
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + (b as char).to_digit(16)?))
}

/// Calls `f` with the string's unescaped text, or `None` if that is longer than 64
/// bytes (longer than anything we unescape for meaning). Strings without escapes —
/// all of them in practice — are passed through untouched.
#[inline]
fn with_unescaped<R>(s: JsonStr<'_>, f: impl FnOnce(Option<&str>) -> R) -> R {
    if !s.escaped {
        return f(Some(s.raw));
    }
    let mut buf = [0u8; 64];
    f(unescape_into(s, &mut buf))
}

/// Unescapes into `buf` without allocating; `None` if it does not fit.
fn unescape_into<'b>(s: JsonStr<'b>, buf: &'b mut [u8]) -> Option<&'b str> {
    if !s.escaped {
        return Some(s.raw);
    }
    let mut len = 0;
    let complete = unescape(s.raw, |piece| {
        let Some(dst) = buf.get_mut(len..len + piece.len()) else {
            return false;
        };
        dst.copy_from_slice(piece.as_bytes());
        len += piece.len();
        true
    });
    if !complete {
        return None;
    }
    std::str::from_utf8(buf.get(..len)?).ok()
}

fn unescape_to_string(s: JsonStr<'_>) -> String {
    let mut out = String::with_capacity(s.raw.len());
    unescape(s.raw, |piece| {
        out.push_str(piece);
        true
    });
    out
}

// ---------------------------------------------------------------------------
// The JSON scanner
// ---------------------------------------------------------------------------

/// Index of the first byte at or after `i` that ends or interrupts a string body
/// (`"`, `\\` or a control character), or `bytes.len()` if there is none.
///
/// Eight bytes at a time: each test below sets the high bit of every byte that
/// matches, and may also set it in bytes *above* a match (borrow propagation) but
/// never below the first one, so the lowest set bit names the first special byte
/// exactly. Jumping straight to it (rather than stepping a byte at a time up to
/// the closing quote) is what makes strings cheap.
#[inline(always)]
fn find_string_special(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit set in the first zero byte of `w` (and perhaps in some above it).
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let w = u64::from_le_bytes(chunk);
        let special = has_zero(w ^ (ONES * u64::from(b'"')))
            | has_zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
            return i;
        }
        i += 1;
    }
    i
}

/// Index of the first non-digit at or after `i` (or `bytes.len()`), eight bytes
/// at a time: timestamps and trade ids are 9–13 digits.
#[inline(always)]
fn skip_digits(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let n = leading_digit_count(u64::from_le_bytes(chunk));
        i += n;
        if n < 8 {
            return i;
        }
    }
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// A cursor over the frame. Every method either consumes a complete syntactic
/// element or returns `None` after recording why in `error`; indexing goes through
/// `get`, so no input can make it panic.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: u32,
    error: Option<FrameError>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
            error: None,
        }
    }

    #[inline(always)]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// `text[start..end]`, `None` unless both ends are char boundaries (they are
    /// always next to ASCII delimiters here). Two `split_at_checked`, which
    /// inline, rather than `str::get`, which here did not (15 calls a frame).
    #[inline(always)]
    fn slice(&self, start: usize, end: usize) -> Option<&'a str> {
        let (head, _) = self.text.split_at_checked(end)?;
        head.split_at_checked(start).map(|(_, tail)| tail)
    }

    /// Records why scanning stopped; always `None`, to be returned.
    #[cold]
    fn fail<T>(&mut self, error: FrameError) -> Option<T> {
        self.error = Some(error);
        None
    }

    #[cold]
    fn invalid_at<T>(&mut self, offset: usize, reason: &'static str) -> Option<T> {
        self.fail(FrameError::InvalidJson { offset, reason })
    }

    #[cold]
    fn invalid<T>(&mut self, reason: &'static str) -> Option<T> {
        self.invalid_at(self.pos, reason)
    }

    /// The error recorded by the failed scan.
    fn take_error(&mut self) -> FrameError {
        let fallback = FrameError::InvalidJson {
            offset: self.pos,
            reason: "invalid JSON",
        };
        self.error.take().unwrap_or(fallback)
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    #[inline]
    fn eat(&mut self, byte: u8, reason: &'static str) -> Option<()> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return self.invalid(reason);
        }
        self.pos += 1;
        Some(())
    }

    fn expect_end(&mut self) -> Option<()> {
        self.skip_ws();
        if self.pos != self.text.len() {
            return self.invalid("unexpected text after the JSON value");
        }
        Some(())
    }

    #[inline]
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.invalid("nesting too deep");
        }
        Some(())
    }

    /// Walks the object starting at the next `{`. `on_field` is called with the
    /// unescaped key and the scanner just before the value, and must consume
    /// exactly one value.
    #[inline]
    fn walk_object(
        &mut self,
        mut on_field: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{', "expected '{'")?;
        self.enter()?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            if let Some(key) = self.one_byte_key() {
                // Binance's keys are one plain byte: `"k":` needs no general scan.
                on_field(self, key)?;
            } else {
                if self.peek() != Some(b'"') {
                    return self.invalid("expected a string key");
                }
                let key = self.string()?;
                self.eat(b':', "expected ':' after an object key")?;
                self.skip_ws();
                // An escaped key too long to unescape is longer than any key we know.
                with_unescaped(key, |k| on_field(self, k.map_or(&b"\\"[..], str::as_bytes)))?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return self.invalid("expected ',' or '}' after an object value"),
            }
        }
    }

    /// Consumes `"x":` (one plain byte key, colon right after) and returns the key.
    #[inline(always)]
    fn one_byte_key(&mut self) -> Option<&'a [u8]> {
        let bytes = self.bytes();
        let window = bytes.get(self.pos..self.pos + 4)?;
        let plain = !matches!(window[1], b'"' | b'\\' | 0..=0x1f);
        if window[0] == b'"' && plain && window[2] == b'"' && window[3] == b':' {
            let key = bytes.get(self.pos + 1..self.pos + 2)?;
            self.pos += 4;
            self.skip_ws();
            return Some(key);
        }
        None
    }

    /// Walks the array starting at the next `[`; `on_item` consumes one value.
    fn walk_array(&mut self, mut on_item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[', "expected '['")?;
        self.enter()?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            on_item(self)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return self.invalid("expected ',' or ']' after an array item"),
            }
        }
    }

    /// Fast lane: consumes `expected` if the text continues with exactly it.
    #[inline(always)]
    fn lane_literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.pos + expected.len();
        if self.bytes().get(self.pos..end)? != expected {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Fast lane: `expected` (the text before a value), then a scalar value.
    #[inline(always)]
    fn lane_field(&mut self, expected: &[u8]) -> Option<Token<'a>> {
        self.lane_literal(expected)?;
        self.lane_value()
    }

    /// Fast lane: `expected`, then a scalar value we have no use for, validated as
    /// [`Self::lane_field`] would but without building its token.
    #[inline(always)]
    fn lane_skip(&mut self, expected: &[u8]) -> Option<()> {
        self.lane_literal(expected)?;
        match self.peek()? {
            b'"' => self.string_end().map(drop),
            b'-' | b'0'..=b'9' => self.number_end().map(drop),
            _ => self.lane_value().map(drop),
        }
    }

    /// Fast lane: a string, number or literal, scanned exactly as [`Self::value`]
    /// does; `None` for anything else (an object or array leaves the lane, so
    /// nesting depth never matters in it).
    #[inline(always)]
    fn lane_value(&mut self) -> Option<Token<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Token::Str),
            b'-' | b'0'..=b'9' => self.number().map(Token::Num),
            b't' => self.literal("true", Token::Bool(true)),
            b'f' => self.literal("false", Token::Bool(false)),
            b'n' => self.literal("null", Token::Null),
            _ => None,
        }
    }

    /// Scans any JSON value; objects and arrays are validated and skipped.
    #[inline]
    fn value(&mut self) -> Option<Token<'a>> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.string().map(Token::Str),
            Some(b'-' | b'0'..=b'9') => self.number().map(Token::Num),
            Some(b'{') => self.skip_composite(b'{').map(|()| Token::Object),
            Some(b'[') => self.skip_composite(b'[').map(|()| Token::Array),
            Some(b't') => self.literal("true", Token::Bool(true)),
            Some(b'f') => self.literal("false", Token::Bool(false)),
            Some(b'n') => self.literal("null", Token::Null),
            Some(_) => self.invalid("expected a JSON value"),
            None => self.invalid("unexpected end of frame"),
        }
    }

    /// Validates and skips an object or array we have no use for (kept out of line:
    /// kline frames have none).
    #[inline(never)]
    fn skip_composite(&mut self, open: u8) -> Option<()> {
        if open == b'{' {
            self.walk_object(|sc, _| sc.value().map(drop))
        } else {
            self.walk_array(|sc| sc.value().map(drop))
        }
    }

    fn literal(&mut self, word: &'static str, token: Token<'a>) -> Option<Token<'a>> {
        if !self
            .bytes()
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word.as_bytes()))
        {
            return self.invalid("invalid literal (expected true, false or null)");
        }
        self.pos += word.len();
        Some(token)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    #[inline]
    fn number(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let end = self.number_end()?;
        // Both ends sit next to ASCII bytes, so they are char boundaries.
        self.slice(start, end)
    }

    /// Scans the number at the cursor (see [`Self::number`]); the index after it.
    #[inline(always)]
    fn number_end(&mut self) -> Option<usize> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut i = start;
        let digits_from = |i: usize| skip_digits(bytes, i);
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_from(i + 1),
            _ => return self.invalid_at(i, "invalid number"),
        }
        if bytes.get(i) == Some(&b'.') {
            let end = digits_from(i + 1);
            if end == i + 1 {
                return self.invalid_at(end, "invalid number");
            }
            i = end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits_from(i);
            if end == i {
                return self.invalid_at(end, "invalid number");
            }
            i = end;
        }
        self.pos = i;
        Some(i)
    }

    /// Scans the string literal at the next `"`, validating escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<JsonStr<'a>> {
        let start = self.pos + 1;
        let (end, escaped) = self.string_end()?;
        // Both ends sit next to ASCII quotes, so they are char boundaries.
        let raw = self.slice(start, end)?;
        Some(JsonStr { raw, escaped })
    }

    /// Scans the string literal at the next `"`, validating escapes; the index of
    /// its closing quote and whether it has escapes.
    #[inline(always)]
    fn string_end(&mut self) -> Option<(usize, bool)> {
        let bytes = self.bytes();
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = find_string_special(bytes, i);
            match bytes.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match Self::escape_end(bytes, i) {
                        Some(next) => i = next,
                        None => return self.invalid_at(i, "invalid escape"),
                    }
                }
                Some(0..=0x1f) => return self.invalid_at(i, "control character in string"),
                Some(_) => i += 1,
                None => return self.invalid_at(i, "unterminated string"),
            }
        }
        self.pos = i + 1;
        Some((i, escaped))
    }

    /// Index just past the valid escape whose backslash is at `at`.
    fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
        let rest = bytes.get(at + 1..)?;
        match rest.first()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
            // \u is rare: reuse the decoder so validation and decoding agree.
            _ => decode_escape(rest).map(|(_, used)| at + 1 + used),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

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

    // --- numbers -------------------------------------------------------------

    fn same_as_std(text: &str) -> bool {
        parse_decimal(text).map(f64::to_bits) == text.parse::<f64>().ok().map(f64::to_bits)
    }

    #[test]
    fn decimal_edge_cases_match_std() {
        for text in [
            "0",
            "-0",
            "-0.0",
            "0.1",
            "57520.11000000",
            "0.00000001",
            "9007199254740992",
            "9007199254740993",
            "9007199254740993.0",
            "18446744073709551615",
            "18446744073709551616",
            "1234567890123456789",
            "12345678901234567890",
            "0.0000000000000000000000001",
            "1.7976931348623157e308",
            "1e400",
            "4.9e-324",
            "1E5",
            "1e+5",
            "2.5e-3",
            "00012.50",
            "83091.60",
            "13.551",
        ] {
            assert!(same_as_std(text), "{text}");
        }
        for bad in [
            "", "-", ".5", "5.", "1e", "1e+", "nan", "inf", "+1", "1,5", " 1", "1 ", "--1",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
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

    fn naive_digits(text: &[u8]) -> u64 {
        text.iter().fold(0, |acc, b| acc * 10 + u64::from(b - b'0'))
    }

    #[test]
    fn eight_digit_chunks_read_like_a_digit_loop() {
        for text in ["00000000", "99999999", "12345678", "10000001", "00000009"] {
            let w = u64::from_le_bytes(text.as_bytes().try_into().unwrap());
            assert_eq!(leading_digit_count(w), 8);
            assert_eq!(
                eight_digits_value(w - 0x3030_3030_3030_3030),
                naive_digits(text.as_bytes())
            );
        }
    }

    proptest! {
        #[test]
        fn leading_digit_count_is_exact(bytes in any::<[u8; 8]>()) {
            let expected = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            prop_assert_eq!(leading_digit_count(u64::from_le_bytes(bytes)), expected);
        }

        #[test]
        fn digit_runs_accumulate_like_a_digit_loop(text in "[0-9]{0,30}[.a\\x00-]?[0-9]{0,5}") {
            let run = text.bytes().take_while(u8::is_ascii_digit).count();
            let (acc, end) = accumulate_digits(text.as_bytes(), 0, 0);
            prop_assert_eq!(end, run);
            if run <= 19 {
                prop_assert_eq!(acc, naive_digits(&text.as_bytes()[..run]));
            }
        }

        /// Binance's shapes: an integer part of 1–9 digits and 0–8 fraction digits
        /// (spot pads to 8, futures uses the tick size), including zeros and
        /// `0.00000001`-style values, positive and negative.
        #[test]
        fn binance_shaped_decimals_are_bit_identical_to_std(
            int in "0|[1-9][0-9]{0,8}",
            frac in prop::option::of("[0-9]{1,8}"),
            negative in any::<bool>(),
        ) {
            let text = format!(
                "{}{int}{}",
                if negative { "-" } else { "" },
                frac.map(|f| format!(".{f}")).unwrap_or_default()
            );
            prop_assert!(same_as_std(&text), "{}", text);
        }

        #[test]
        fn long_and_odd_decimals_are_bit_identical_to_std(
            text in "-?[0-9]{1,34}(\\.[0-9]{1,34})?"
        ) {
            prop_assert!(same_as_std(&text), "{}", text);
        }
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
        fn decimal_fast_path_is_bit_identical_to_std(
            text in "-?[0-9]{1,24}(\\.[0-9]{1,26})?([eE][+-]?[0-9]{1,3})?"
        ) {
            prop_assert!(same_as_std(&text), "{}", text);
        }

        #[test]
        fn formatted_prices_are_bit_identical_to_std(x in 0f64..1e9, places in 0usize..13) {
            let text = format!("{x:.places$}");
            prop_assert!(same_as_std(&text), "{}", text);
        }

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
}
