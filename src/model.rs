//! The data model: series ids, timeframes, candles, and their parse errors.
//! Pure values; no I/O. Error messages are meant to be shown to a user as-is.

use std::fmt;

/// A candle timeframe in whole seconds: `Nm`, `Nh`, `Nd` or `Nw` with N ≥ 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeframe {
    seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeframeError {
    Empty,
    /// The last character is not one of `m`, `h`, `d`, `w`.
    UnsupportedUnit(String),
    /// The count before the unit is not a positive integer without sign or leading zero.
    InvalidCount(String),
}

impl fmt::Display for TimeframeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeframeError::Empty => write!(f, "empty timeframe"),
            TimeframeError::UnsupportedUnit(u) => write!(
                f,
                "unsupported timeframe unit: '{u}' (use m, h, d or w, e.g. 1m, 4h, 1d, 1w)"
            ),
            TimeframeError::InvalidCount(tf) => write!(
                f,
                "invalid timeframe: '{tf}' (expected a positive whole number before the unit, e.g. 5m)"
            ),
        }
    }
}

impl std::error::Error for TimeframeError {}

impl Timeframe {
    pub const M1: Timeframe = Timeframe { seconds: 60 };

    pub fn from_seconds(seconds: u32) -> Option<Timeframe> {
        (seconds > 0).then_some(Timeframe { seconds })
    }

    pub fn parse(s: &str) -> Result<Timeframe, TimeframeError> {
        let s = s.trim();
        let Some(unit) = s.chars().last() else {
            return Err(TimeframeError::Empty);
        };
        let mult: u64 = match unit {
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            other => return Err(TimeframeError::UnsupportedUnit(other.to_string())),
        };
        let count = &s[..s.len() - 1];
        let valid_digits = !count.is_empty()
            && count.bytes().all(|b| b.is_ascii_digit())
            && !count.starts_with('0');
        let n: u64 = if valid_digits { count.parse().unwrap_or(0) } else { 0 };
        let seconds = n.saturating_mul(mult);
        if n == 0 || seconds > u32::MAX as u64 {
            return Err(TimeframeError::InvalidCount(s.to_string()));
        }
        Ok(Timeframe { seconds: seconds as u32 })
    }

    pub const fn seconds(self) -> i64 {
        self.seconds as i64
    }

    /// Where buckets start relative to the epoch: weekly candles open on
    /// Monday 00:00 UTC (as Binance's do), and the epoch was a Thursday.
    fn bucket_offset(self) -> i64 {
        if self.seconds.is_multiple_of(604_800) {
            4 * 86_400
        } else {
            0
        }
    }

    /// Open time of the bucket containing `t` (seconds): epoch-aligned, except
    /// that weeks start on Monday.
    pub fn bucket_open(self, t: i64) -> i64 {
        let off = self.bucket_offset();
        (t - off).div_euclid(self.seconds()) * self.seconds() + off
    }

    /// Open time of the most recent fully closed candle at `now_s` (seconds);
    /// 0 when none has closed since the epoch, as the reference computes it.
    pub fn expected_latest_closed(self, now_s: i64) -> i64 {
        let tf = self.seconds();
        let aligned = self.bucket_open(now_s);
        if aligned >= tf {
            aligned - tf
        } else {
            0
        }
    }

    /// Binance interval name, e.g. `1m`, `4h`, `1d`, `1w`.
    pub fn binance_interval(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        if s.is_multiple_of(604_800) {
            write!(f, "{}w", s / 604_800)
        } else if s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{}s", s)
        }
    }
}

impl fmt::Debug for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `exchange:market:symbol:timeframe`. The symbol may itself contain `:`
/// (`binance:futures:BTC/USDT:USDT:1h`). Components are trimmed; `raw` is the
/// canonical re-joined form and is the key everywhere.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId {
    raw: String,
    exchange_len: usize,
    market_len: usize,
    symbol_len: usize,
    timeframe: Timeframe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesIdError {
    /// Fewer than four `:`-separated parts.
    Shape,
    /// One of the parts is empty (after trimming); names which.
    EmptyComponent(&'static str),
    Timeframe(TimeframeError),
}

impl fmt::Display for SeriesIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeriesIdError::Shape => {
                write!(f, "series_id must be '{{exchange}}:{{market}}:{{symbol}}:{{timeframe}}'")
            }
            SeriesIdError::EmptyComponent(which) => {
                write!(f, "invalid series_id (empty component: {which})")
            }
            SeriesIdError::Timeframe(e) => write!(f, "invalid series_id: {e}"),
        }
    }
}

impl std::error::Error for SeriesIdError {}

impl SeriesId {
    pub fn parse(s: &str) -> Result<SeriesId, SeriesIdError> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() < 4 {
            return Err(SeriesIdError::Shape);
        }
        let exchange = parts[0].trim();
        let market = parts[1].trim();
        let tf_raw = parts[parts.len() - 1].trim();
        let symbol_joined = parts[2..parts.len() - 1].join(":");
        let symbol = symbol_joined.trim();
        for (name, v) in [
            ("exchange", exchange),
            ("market", market),
            ("symbol", symbol),
            ("timeframe", tf_raw),
        ] {
            if v.is_empty() {
                return Err(SeriesIdError::EmptyComponent(name));
            }
        }
        let timeframe = Timeframe::parse(tf_raw).map_err(SeriesIdError::Timeframe)?;
        Ok(SeriesId::from_parts(exchange, market, symbol, timeframe))
    }

    pub fn from_parts(exchange: &str, market: &str, symbol: &str, timeframe: Timeframe) -> Self {
        let raw = format!("{exchange}:{market}:{symbol}:{timeframe}");
        SeriesId {
            raw,
            exchange_len: exchange.len(),
            market_len: market.len(),
            symbol_len: symbol.len(),
            timeframe,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn exchange(&self) -> &str {
        &self.raw[..self.exchange_len]
    }

    pub fn market(&self) -> &str {
        let start = self.exchange_len + 1;
        &self.raw[start..start + self.market_len]
    }

    pub fn symbol(&self) -> &str {
        let start = self.exchange_len + self.market_len + 2;
        &self.raw[start..start + self.symbol_len]
    }

    pub fn timeframe(&self) -> Timeframe {
        self.timeframe
    }

    /// The same exchange/market/symbol at another timeframe.
    #[must_use]
    pub fn with_timeframe(&self, tf: Timeframe) -> SeriesId {
        SeriesId::from_parts(self.exchange(), self.market(), self.symbol(), tf)
    }
}

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeriesId({})", self.raw)
    }
}

/// One OHLCV candle. `candle_time` is the open time in Unix seconds.
#[derive(Clone, Copy, PartialEq, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Candle {
    pub candle_time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

impl Candle {
    /// Why a candle is not acceptable as market data, if it is not: values must be
    /// finite and non-negative, and high/low must bound open and close.
    pub fn sanity_error(&self) -> Option<&'static str> {
        if let Some(why) = self.value_error() {
            return Some(why);
        }
        if self.high < self.open.max(self.close) {
            return Some("high below max(open, close)");
        }
        if self.low > self.open.min(self.close) {
            return Some("low above min(open, close)");
        }
        None
    }

    /// A value no store or client can use: non-finite or negative. (Unlike
    /// [`Candle::sanity_error`], high/low need not bound open/close: the HTTP
    /// ingest routes accept such candles, as the reference does.)
    pub fn value_error(&self) -> Option<&'static str> {
        let vals = [self.open, self.high, self.low, self.close, self.volume];
        if vals.iter().any(|v| !v.is_finite()) {
            return Some("non-finite value");
        }
        if vals.iter().any(|v| *v < 0.0) {
            return Some("negative value");
        }
        None
    }
}

/// Supported exchange markets.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Market {
    Spot,
    Futures,
}

impl Market {
    pub fn parse(s: &str) -> Option<Market> {
        match s {
            "spot" => Some(Market::Spot),
            "futures" => Some(Market::Futures),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::Futures => "futures",
        }
    }

    /// Index into per-market arrays (`[_; 2]`).
    pub const fn index(self) -> usize {
        match self {
            Market::Spot => 0,
            Market::Futures => 1,
        }
    }
}

/// Where a restart must start refolding stored base candles: the open of the
/// earliest bucket, over `targets`, that the candle after `base_head` falls
/// in. Pure: the store's job-start read (`StoreQuery::JobStart`)
/// and `DerivedFold::restore_start` share it.
pub fn restore_start(base_tf: Timeframe, targets: &[Timeframe], base_head: i64) -> i64 {
    let next = base_head.saturating_add(base_tf.seconds());
    targets.iter().map(|tf| tf.bucket_open(next)).min().unwrap_or(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_id_symbol_may_contain_colon() {
        let s = SeriesId::parse("binance:futures:BTC/USDT:USDT:1h").unwrap();
        assert_eq!(s.exchange(), "binance");
        assert_eq!(s.market(), "futures");
        assert_eq!(s.symbol(), "BTC/USDT:USDT");
        assert_eq!(s.timeframe().seconds(), 3600);
        assert_eq!(s.as_str(), "binance:futures:BTC/USDT:USDT:1h");
    }

    #[test]
    fn series_id_components_are_trimmed() {
        let s = SeriesId::parse(" binance : spot : BTC/USDT : 5m ").unwrap();
        assert_eq!(s.as_str(), "binance:spot:BTC/USDT:5m");
    }

    #[test]
    fn series_id_errors_name_the_problem() {
        assert_eq!(SeriesId::parse("a:b:c").unwrap_err(), SeriesIdError::Shape);
        assert_eq!(
            SeriesId::parse("binance::BTC/USDT:1m").unwrap_err().to_string(),
            "invalid series_id (empty component: market)"
        );
        assert_eq!(
            SeriesId::parse("binance:spot:BTC/USDT:1x").unwrap_err().to_string(),
            "invalid series_id: unsupported timeframe unit: 'x' (use m, h, d or w, e.g. 1m, 4h, 1d, 1w)"
        );
    }

    #[test]
    fn timeframe_grammar() {
        assert_eq!(Timeframe::parse("1m").unwrap().seconds(), 60);
        assert_eq!(Timeframe::parse("4h").unwrap().seconds(), 14_400);
        assert_eq!(Timeframe::parse("1d").unwrap().seconds(), 86_400);
        assert_eq!(Timeframe::parse("1w").unwrap().seconds(), 604_800);
        assert_eq!(Timeframe::parse("").unwrap_err(), TimeframeError::Empty);
        for bad in ["0m", "05m", "+5m", "-1m", "m", "1.5h"] {
            assert!(
                matches!(Timeframe::parse(bad), Err(TimeframeError::InvalidCount(_))),
                "{bad}"
            );
        }
        assert!(matches!(Timeframe::parse("1M"), Err(TimeframeError::UnsupportedUnit(_))));
        assert!(matches!(Timeframe::parse("1s"), Err(TimeframeError::UnsupportedUnit(_))));
        assert_eq!(Timeframe::parse("15m").unwrap().to_string(), "15m");
        assert_eq!(Timeframe::parse("60m").unwrap().to_string(), "1h");
    }

    #[test]
    fn expected_latest_closed_matches_reference_cases() {
        let m1 = Timeframe::M1;
        assert_eq!(m1.expected_latest_closed(1_735_689_665), 1_735_689_600);
        let m5 = Timeframe::parse("5m").unwrap();
        assert_eq!(m5.expected_latest_closed(1_700_000_100), 1_699_999_800);
        let h1 = Timeframe::parse("1h").unwrap();
        assert_eq!(h1.expected_latest_closed(1200), 0);
    }

    #[test]
    fn weekly_buckets_open_on_monday() {
        let w = Timeframe::parse("1w").unwrap();
        // 2024-01-01 was a Monday (1704067200); Wednesday 2024-01-03 belongs to it.
        assert_eq!(w.bucket_open(1_704_067_200 + 2 * 86_400), 1_704_067_200);
        assert_eq!(w.bucket_open(1_704_067_200), 1_704_067_200);
        assert_eq!(w.bucket_open(1_704_067_199), 1_704_067_200 - 604_800);
        let d = Timeframe::parse("1d").unwrap();
        assert_eq!(d.bucket_open(1_704_067_200 + 5), 1_704_067_200);
    }

    #[test]
    fn candle_sanity() {
        let c = Candle { candle_time: 0, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 };
        assert_eq!(c.sanity_error(), None);
        assert!(Candle { high: 1.2, ..c }.sanity_error().is_some());
        assert!(Candle { low: 1.1, ..c }.sanity_error().is_some());
        assert!(Candle { volume: -1.0, ..c }.sanity_error().is_some());
        assert!(Candle { close: f64::NAN, ..c }.sanity_error().is_some());
    }
}
