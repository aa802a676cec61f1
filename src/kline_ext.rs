//! The whole kline (#15 §4): what Binance's kline carries beyond a candle's
//! OHLCV — quote asset volume (`q`), trade count (`n`), taker-buy base and
//! quote volume (`V`, `Q`). It travels BESIDE a [`Candle`] as an optional
//! value (the candle type itself is unchanged, so nothing that builds
//! candles changes): parsed from the exchange frame, kept by the engine for
//! the closes it stores, written by the store next to the row, summed into
//! derived timeframes, and served to clients that ask for `fields=full`.
//!
//! Owns the value, its fold and its JSON shape. Never decides when a candle
//! has one (unknown is `None`: freqtrade imports, healed rows, old rows).

use crate::model::Candle;
use serde::{Deserialize, Serialize};

/// The extra fields of one kline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KlineExt {
    pub quote_volume: f64,
    pub trades: u64,
    pub taker_buy_base_volume: f64,
    pub taker_buy_quote_volume: f64,
}

impl KlineExt {
    /// The fields of a candle made of `self`'s interval followed by `o`'s:
    /// every field is a sum.
    #[must_use]
    pub fn add(self, o: KlineExt) -> KlineExt {
        KlineExt {
            quote_volume: self.quote_volume + o.quote_volume,
            trades: self.trades.saturating_add(o.trades),
            taker_buy_base_volume: self.taker_buy_base_volume + o.taker_buy_base_volume,
            taker_buy_quote_volume: self.taker_buy_quote_volume + o.taker_buy_quote_volume,
        }
    }

    /// `None` when every value is finite and non-negative, else why not.
    pub fn value_error(&self) -> Option<&'static str> {
        let vols = [self.quote_volume, self.taker_buy_base_volume, self.taker_buy_quote_volume];
        if vols.iter().any(|v| !v.is_finite()) {
            return Some("a full-kline volume is not finite");
        }
        if vols.iter().any(|v| *v < 0.0) {
            return Some("a full-kline volume is negative");
        }
        None
    }
}

/// One candle as `fields=full` serves it: the candle's own keys in their
/// usual order, then the four extra fields (`null` when unknown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullCandle {
    #[serde(flatten)]
    pub candle: Candle,
    pub quote_volume: Option<f64>,
    pub trades: Option<u64>,
    pub taker_buy_base_volume: Option<f64>,
    pub taker_buy_quote_volume: Option<f64>,
}

impl FullCandle {
    pub fn new(candle: Candle, ext: Option<KlineExt>) -> FullCandle {
        FullCandle {
            candle,
            quote_volume: ext.map(|e| e.quote_volume),
            trades: ext.map(|e| e.trades),
            taker_buy_base_volume: ext.map(|e| e.taker_buy_base_volume),
            taker_buy_quote_volume: ext.map(|e| e.taker_buy_quote_volume),
        }
    }

    /// The extra fields, when all four are known.
    pub fn ext(&self) -> Option<KlineExt> {
        Some(KlineExt {
            quote_volume: self.quote_volume?,
            trades: self.trades?,
            taker_buy_base_volume: self.taker_buy_base_volume?,
            taker_buy_quote_volume: self.taker_buy_quote_volume?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_add_and_serialize_after_the_candle_keys() {
        let a = KlineExt { quote_volume: 1.5, trades: 2, taker_buy_base_volume: 0.25, taker_buy_quote_volume: 0.5 };
        let b = KlineExt { quote_volume: 2.0, trades: 3, taker_buy_base_volume: 0.75, taker_buy_quote_volume: 1.0 };
        assert_eq!(a.add(b), KlineExt { quote_volume: 3.5, trades: 5, taker_buy_base_volume: 1.0, taker_buy_quote_volume: 1.5 });
        let c = Candle { candle_time: 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 };
        let text = serde_json::to_string(&FullCandle::new(c, Some(a))).unwrap();
        assert_eq!(
            text,
            r#"{"candle_time":60,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":3.0,"quote_volume":1.5,"trades":2,"taker_buy_base_volume":0.25,"taker_buy_quote_volume":0.5}"#
        );
        let none = serde_json::to_value(FullCandle::new(c, None)).unwrap();
        assert_eq!(none["trades"], serde_json::Value::Null);
        assert_eq!(serde_json::from_str::<FullCandle>(&text).unwrap().ext(), Some(a));
        assert!(KlineExt { quote_volume: -1.0, ..a }.value_error().is_some());
        assert!(KlineExt { quote_volume: f64::NAN, ..a }.value_error().is_some());
    }
}
