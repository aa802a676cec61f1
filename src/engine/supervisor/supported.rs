//! What can be ingested at all: the one exchange, its markets, the Binance intervals
//! our timeframes express, symbol spelling, and which derived targets make sense for
//! a base timeframe.
//!
//! Owns: the up-front checks that turn an unstartable series into a clear message.
//! Never holds state.

use std::collections::BTreeSet;

use crate::model::Timeframe;

/// The only exchange with a realtime source (compared exactly, lower case).
pub const SUPPORTED_EXCHANGE: &str = "binance";

/// The markets the Binance source can stream.
pub const SUPPORTED_MARKETS: [&str; 2] = ["spot", "futures"];

/// Binance kline intervals that our [`Timeframe`] can express (no `1s`, `1M`).
pub(super) const BINANCE_INTERVALS: [(u32, &str); 14] = [
    (60, "1m"),
    (180, "3m"),
    (300, "5m"),
    (900, "15m"),
    (1_800, "30m"),
    (3_600, "1h"),
    (7_200, "2h"),
    (14_400, "4h"),
    (21_600, "6h"),
    (28_800, "8h"),
    (43_200, "12h"),
    (86_400, "1d"),
    (259_200, "3d"),
    (604_800, "1w"),
];

/// Longest asset code accepted in a symbol; real ones are ≤ 10 characters.
const MAX_ASSET_LEN: usize = 20;

/// Whether the exchange serves klines of this interval (REST and streams).
pub fn is_binance_interval(tf: Timeframe) -> bool {
    BINANCE_INTERVALS.iter().any(|(secs, _)| i64::from(*secs) == tf.seconds())
}

/// Derived targets that make sense: multiples of the base other than the base
/// itself. A base the exchange cannot stream turns derivation off, because
/// every derived subscription would otherwise map to an unstartable job.
pub(super) fn effective_derived(base: Timeframe, targets: &[Timeframe]) -> BTreeSet<Timeframe> {
    if !is_binance_interval(base) {
        return BTreeSet::new();
    }
    targets.iter().copied().filter(|t| *t != base && t.seconds() % base.seconds() == 0).collect()
}

pub(super) fn validate_exchange(exchange: &str) -> Result<(), String> {
    if exchange == SUPPORTED_EXCHANGE {
        Ok(())
    } else {
        Err(format!("unsupported exchange: '{exchange}' (supported: {SUPPORTED_EXCHANGE})"))
    }
}

pub(super) fn validate_market(market: &str) -> Result<(), String> {
    if SUPPORTED_MARKETS.contains(&market) {
        Ok(())
    } else {
        Err(format!("unsupported market: '{market}' (supported: {})", SUPPORTED_MARKETS.join(", ")))
    }
}

/// `BASE/QUOTE`, or for futures also the CCXT form `BASE/QUOTE:SETTLE`; asset
/// codes are upper-case letters and digits, so one market symbol has exactly
/// one spelling (one job, one stream).
pub(super) fn validate_symbol(market: &str, symbol: &str) -> Result<(), String> {
    let (pair, settle) = match symbol.split_once(':') {
        Some((pair, settle)) => (pair, Some(settle)),
        None => (symbol, None),
    };
    let Some((base, quote)) = pair.split_once('/') else {
        return Err(format!("unsupported symbol: '{symbol}' (expected BASE/QUOTE, e.g. BTC/USDT)"));
    };
    let assets = [Some(base), Some(quote), settle];
    if assets.iter().flatten().any(|a| a.is_empty() || a.contains(['/', ':'])) {
        return Err(format!("unsupported symbol: '{symbol}' (expected BASE/QUOTE, e.g. BTC/USDT)"));
    }
    if !assets.iter().flatten().all(|a| is_asset_code(a)) {
        return Err(format!(
            "unsupported symbol: '{symbol}' (asset codes are upper-case letters and digits, e.g. BTC/USDT)"
        ));
    }
    if settle.is_some() && market != "futures" {
        return Err(format!(
            "unsupported symbol: '{symbol}' (a ':SETTLE' suffix is only valid on futures; use BASE/QUOTE)"
        ));
    }
    Ok(())
}

fn is_asset_code(s: &str) -> bool {
    s.len() <= MAX_ASSET_LEN && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}
