//! Binance endpoints, kline intervals and stream names: which combined-stream URL a
//! market uses, which timeframes Binance publishes, how a symbol becomes a stream
//! name, and whether a kline open time starts a Binance bucket.
//!
//! Owns: names and alignment rules. Never parses a frame or builds a request body.

use std::fmt;

use crate::model::{Market, Timeframe};

/// Combined-stream endpoint for spot (streams in `?streams=` or via `SUBSCRIBE`).
pub const SPOT_WS_URL: &str = "wss://stream.binance.com:9443/stream";
/// Combined-stream endpoint for USD-M futures on the routed `/market` path (since
/// 2026 the un-routed root delivers no klines).
pub const FUTURES_WS_URL: &str = "wss://fstream.binance.com/market/stream";


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

/// Binance kline intervals our [`Timeframe`] can express (`1s` and `1M`
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
pub(super) fn interval_from_name(name: &str) -> Option<Timeframe> {
    SUPPORTED_INTERVALS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|&(_, s)| Timeframe::from_seconds(s))
}

/// Whether a kline open time (ms) is the start of a Binance bucket of `tf`.
pub(super) fn open_time_aligned(open_time_ms: i64, tf: Timeframe) -> bool {
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
/// rest lowercased (as the reference system names streams). Built by construction
/// because Binance acknowledges any name, even one that will never deliver.
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
