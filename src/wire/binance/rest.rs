//! Binance REST klines: request paths, request weights and response rows, for
//! spot (`GET /api/v3/klines`) and USD-M (`GET /fapi/v1/klines`). Pure; the
//! shell performs the requests. Rows are `[openTime, "o","h","l","c","v",
//! closeTime, …]`; a row whose close time is not yet past is the still-forming
//! candle and must never be stored as closed (the caller filters by time).

use crate::model::{Candle, Market, Timeframe};
use serde_json::Value;

/// Maximum rows per request.
pub fn max_limit(market: Market) -> usize {
    match market {
        Market::Spot => 1000,
        Market::Futures => 1500,
    }
}

/// Request weight of one klines call (spot: 2; USD-M by `limit`, measured
/// inclusive at the top of each band).
pub fn klines_weight(market: Market, limit: usize) -> u32 {
    match market {
        Market::Spot => 2,
        Market::Futures => match limit {
            0..=100 => 1,
            101..=500 => 2,
            501..=1000 => 5,
            _ => 10,
        },
    }
}

/// `BTCUSDT` from a stream name `btcusdt@kline_1m`.
pub fn symbol_from_stream(stream: &str) -> String {
    stream.split('@').next().unwrap_or(stream).to_ascii_uppercase()
}

/// The path and query for candles opening in `[start_s, end_s]` (seconds).
pub fn klines_path(market: Market, symbol: &str, tf: Timeframe, start_s: i64, end_s: i64, limit: usize) -> String {
    let prefix = match market {
        Market::Spot => "/api/v3/klines",
        Market::Futures => "/fapi/v1/klines",
    };
    format!(
        "{prefix}?symbol={symbol}&interval={tf}&startTime={}&endTime={}&limit={limit}",
        start_s.saturating_mul(1000),
        end_s.saturating_mul(1000)
    )
}

/// One row: the candle (open time in seconds) and its close time in ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestKline {
    pub candle: Candle,
    pub close_time_ms: i64,
    /// Columns 7-10 (quote volume, trades, taker-buy base and quote volume)
    /// when present and usable.
    pub ext: Option<crate::kline_ext::KlineExt>,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Parses a klines response body. Malformed rows are skipped and counted.
pub fn parse_klines(body: &str) -> Result<(Vec<RestKline>, usize), String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("klines body is not JSON: {e}"))?;
    let Value::Array(rows) = v else {
        return Err(format!("klines body is not an array: {}", truncate(body, 200)));
    };
    let mut out = Vec::with_capacity(rows.len());
    let mut skipped = 0;
    for row in &rows {
        let parsed = (|| {
            let r = row.as_array()?;
            let open_ms = r.first()?.as_i64()?;
            let candle = Candle {
                candle_time: open_ms.div_euclid(1000),
                open: number(r.get(1)?)?,
                high: number(r.get(2)?)?,
                low: number(r.get(3)?)?,
                close: number(r.get(4)?)?,
                volume: number(r.get(5)?)?,
            };
            let close_time_ms = r.get(6)?.as_i64()?;
            let ext = (|| {
                let e = crate::kline_ext::KlineExt {
                    quote_volume: number(r.get(7)?)?,
                    trades: r.get(8)?.as_u64()?,
                    taker_buy_base_volume: number(r.get(9)?)?,
                    taker_buy_quote_volume: number(r.get(10)?)?,
                };
                e.value_error().is_none().then_some(e)
            })();
            (candle.sanity_error().is_none() && open_ms % 1000 == 0).then_some(RestKline { candle, close_time_ms, ext })
        })();
        match parsed {
            Some(k) => out.push(k),
            None => skipped += 1,
        }
    }
    Ok((out, skipped))
}

/// The exchange's error code for a symbol it does not list.
pub const INVALID_SYMBOL: i64 = -1121;

/// The `code` of an exchange error body (`{"code":-1121,"msg":"Invalid symbol."}`).
pub fn error_code(body: &str) -> Option<i64> {
    serde_json::from_str::<Value>(body).ok()?.get("code")?.as_i64()
}

/// An exchange error body (`{"code":-1121,"msg":"Invalid symbol."}`) as text.
pub fn error_text(status: u16, body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("msg").is_some() => {
            format!("HTTP {status}: {} (code {})", v["msg"].as_str().unwrap_or(""), v["code"])
        }
        _ => format!("HTTP {status}: {}", truncate(body, 200)),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_weights_and_symbols() {
        let tf = Timeframe::M1;
        assert_eq!(
            klines_path(Market::Spot, "BTCUSDT", tf, 60, 120, 1000),
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=60000&endTime=120000&limit=1000"
        );
        assert!(klines_path(Market::Futures, "BTCUSDT", tf, 0, 0, 1500).starts_with("/fapi/v1/klines?"));
        assert_eq!(klines_weight(Market::Futures, 100), 1);
        assert_eq!(klines_weight(Market::Futures, 500), 2);
        assert_eq!(klines_weight(Market::Futures, 1500), 10);
        assert_eq!(klines_weight(Market::Spot, 1000), 2);
        assert_eq!(symbol_from_stream("btcusdt@kline_1m"), "BTCUSDT");
    }

    #[test]
    #[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
    fn real_response_rows_parse() {
        let path = concat!(env!("KLINEGATE_SHARED_DATA_DIR"), "/polyoxide/rest/klines.json");
        let Ok(body) = std::fs::read_to_string(path) else {
            eprintln!("skipping: {path} not present");
            return;
        };
        let (rows, skipped) = parse_klines(&body).unwrap();
        assert_eq!((rows.len(), skipped), (2, 0));
        assert_eq!(rows[1].candle.candle_time, 1_791_382_980, "the second row is the forming candle of the WS fixture");
        assert_eq!(rows[0].close_time_ms, rows[0].candle.candle_time * 1000 + 59_999);
    }

    #[test]
    fn malformed_rows_are_skipped_and_errors_are_readable() {
        let body = r#"[[60000,"1","2","0.5","1.5","3",119999],[1,"x"],[120000,"1","0.5","0.5","1.5","3",179999]]"#;
        let (rows, skipped) = parse_klines(body).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(skipped, 2, "a short row and high < open");
        assert!(parse_klines("{}").is_err());
        assert_eq!(error_text(400, r#"{"code":-1121,"msg":"Invalid symbol."}"#), "HTTP 400: Invalid symbol. (code -1121)");
        assert_eq!(error_code(r#"{"code":-1121,"msg":"Invalid symbol."}"#), Some(INVALID_SYMBOL));
        assert_eq!(error_code("<html>"), None);
    }
}
