//! The kline event payload (`e`, `E`, `s`, `k`): its fields collected as tokens, in
//! Binance's exact layout or any other, then checked and turned into a
//! [`KlineEvent`] (interval supported, open time aligned, numbers finite and
//! non-negative, high/low bounding open/close).
//!
//! Owns: the meaning of a kline payload. Never scans JSON bytes itself and never
//! allocates for a valid kline.

use super::frame::{Frame, FrameError, KlineEvent};
use super::names::{interval_from_name, open_time_aligned};
use super::token::{clipped, integer, nested, plain_str, put, required, Nested};
use crate::model::{Candle, Timeframe};
use crate::wire::json_scan::{parse_decimal, with_unescaped, Scanner, Token};

/// `{"e":..,"E":..,"s":..,"k":{..}}`
#[inline(always)]
pub(super) fn scan_payload_layout<'a>(sc: &mut Scanner<'a>, payload: &mut Payload<'a>) -> Option<()> {
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
/// "n":..,"x":..,"q":..,"V":..,"Q":..,"B":..}`; `f L B` are checked and dropped,
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
    k.quote_volume = Some(sc.lane_field(b",\"q\":")?);
    k.taker_base = Some(sc.lane_field(b",\"V\":")?);
    k.taker_quote = Some(sc.lane_field(b",\"Q\":")?);
    sc.lane_skip(b",\"B\":")?;
    sc.lane_literal(b"}")
}

/// An event payload: `e`, `E`, `s`, `k`.
#[derive(Default)]
pub(super) struct Payload<'a> {
    pub(super) event: Option<Token<'a>>,
    event_time: Option<Token<'a>>,
    symbol: Option<Token<'a>>,
    pub(super) kline: Option<Nested<KlineFields<'a>>>,
}

/// The `k` object's fields we use; `f L B` are skipped. `q V Q` are optional
/// (a frame without them has no full-kline fields).
#[derive(Default)]
pub(super) struct KlineFields<'a> {
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
    quote_volume: Option<Token<'a>>,
    taker_base: Option<Token<'a>>,
    taker_quote: Option<Token<'a>>,
}

impl<'a> Payload<'a> {
    pub(super) fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
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
    pub(super) fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
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
            b'q' => (&mut self.quote_volume, "k.q"),
            b'V' => (&mut self.taker_base, "k.V"),
            b'Q' => (&mut self.taker_quote, "k.Q"),
            _ => return sc.value().map(drop),
        };
        let value = sc.value()?;
        put(sc, slot, value, name)
    }
}

impl<'a> Payload<'a> {
    pub(super) fn to_frame(&self, stream: Option<&'a str>) -> Result<Frame<'a>, FrameError> {
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
        // Optional: a frame without them, or with one unusable, is still a
        // candle; it just has no full-kline fields.
        let ext = (|| {
            Some(crate::kline_ext::KlineExt {
                quote_volume: decimal(self.quote_volume?, "k.q").ok()?,
                trades: u64::try_from(trades).ok()?,
                taker_buy_base_volume: decimal(self.taker_base?, "k.V").ok()?,
                taker_buy_quote_volume: decimal(self.taker_quote?, "k.Q").ok()?,
            })
        })();
        Ok(KlineEvent {
            stream,
            symbol,
            interval,
            candle,
            is_final,
            event_time_ms,
            close_time_ms,
            trades,
            ext,
        })
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
