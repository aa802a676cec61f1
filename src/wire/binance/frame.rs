//! What parsing a Binance frame returns: [`Frame`], [`KlineEvent`], and why a frame
//! was rejected, [`FrameError`] (a stable metric label and words for an operator).
//!
//! Owns: the result and error types. Never parses.

use std::fmt;

use crate::model::{Candle, Timeframe};
use crate::wire::json_scan::ScanError;

#[allow(unused_imports)] // named in doc links
use super::names::is_supported_interval;

/// One text frame from a Binance market-stream connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A kline update, forming or final.
    Kline(KlineEvent<'a>),
    /// `{"result":null,"id":N}`: a SUBSCRIBE/UNSUBSCRIBE was accepted (which proves
    /// nothing about the stream existing: Binance acknowledges any name).
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
    /// `k.q`, `k.n`, `k.V`, `k.Q` when the frame has them (`kline_ext`).
    pub ext: Option<crate::kline_ext::KlineExt>,
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

impl From<ScanError> for FrameError {
    fn from(error: ScanError) -> Self {
        match error {
            ScanError::InvalidJson { offset, reason } => FrameError::InvalidJson { offset, reason },
            ScanError::DuplicateField { field } => FrameError::DuplicateField { field },
        }
    }
}
