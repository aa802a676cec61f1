//! Naming: freqtrade's OHLCV file names (`<PAIR>-<tf>[-<candle type>].<format>`,
//! spot at the datadir root, futures under `futures/`) and how they map to our
//! series ids and back: the file candidates for a series, best format first, and
//! the series a found file holds. Pure string and path work: never touches the disk.

use std::path::{Path, PathBuf};

use crate::model::{SeriesId, Timeframe};

/// The on-disk formats we read, in the order we prefer them when a series has
/// several (feather is freqtrade's default and the fastest to read).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum FileFormat {
    Feather,
    Json,
    JsonGz,
}

impl FileFormat {
    pub const PRIORITY: [FileFormat; 3] =
        [FileFormat::Feather, FileFormat::Json, FileFormat::JsonGz];

    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Feather => "feather",
            FileFormat::Json => "json",
            FileFormat::JsonGz => "json.gz",
        }
    }

    /// Splits `name` into (format, stem), e.g. `X-1m.json.gz` → (JsonGz, `X-1m`).
    pub(super) fn split_name(name: &str) -> Option<(FileFormat, &str)> {
        // json.gz before json: both end in a form of "json".
        [FileFormat::JsonGz, FileFormat::Feather, FileFormat::Json]
            .into_iter()
            .find_map(|format| {
                let stem = name.strip_suffix(format.extension())?.strip_suffix('.')?;
                (!stem.is_empty()).then_some((format, stem))
            })
    }
}

/// freqtrade's candle types (the `-<type>` suffix of a file name; none = spot).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum CandleType {
    Spot,
    Futures,
    Mark,
    Index,
    PremiumIndex,
    FundingRate,
}

impl CandleType {
    fn from_suffix(s: &str) -> Option<CandleType> {
        match s {
            "futures" => Some(CandleType::Futures),
            "mark" => Some(CandleType::Mark),
            "index" => Some(CandleType::Index),
            "premiumIndex" => Some(CandleType::PremiumIndex),
            "funding_rate" => Some(CandleType::FundingRate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CandleType::Spot => "spot",
            CandleType::Futures => "futures",
            CandleType::Mark => "mark",
            CandleType::Index => "index",
            CandleType::PremiumIndex => "premiumIndex",
            CandleType::FundingRate => "funding_rate",
        }
    }

    /// Trade klines, the only candles a kline store may hold.
    pub fn is_kline(self) -> bool {
        matches!(self, CandleType::Spot | CandleType::Futures)
    }
}

/// A parsed freqtrade OHLCV file name `<pair>-<timeframe>[-<candle_type>].<ext>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreqtradeName {
    /// The sanitized pair as written in the name, e.g. `XRP_USDT_USDT`.
    pub pair: String,
    /// The timeframe as written in the name, e.g. `5m` or `1Mo`.
    pub timeframe: String,
    pub candle_type: CandleType,
    pub format: FileFormat,
}

/// Parses a file name; `None` when it is not an OHLCV file of a supported format
/// (trades files, parquet, anything else).
pub fn parse_file_name(name: &str) -> Option<FreqtradeName> {
    let (format, stem) = FileFormat::split_name(name)?;
    let (rest, last) = stem.rsplit_once('-')?;
    let (pair, timeframe, candle_type) = match CandleType::from_suffix(last) {
        Some(kind) => {
            let (pair, tf) = rest.rsplit_once('-')?;
            (pair, tf, kind)
        }
        None => (rest, last, CandleType::Spot),
    };
    let looks_like_timeframe = timeframe.starts_with(|c: char| c.is_ascii_digit())
        && timeframe.chars().all(|c| c.is_ascii_alphanumeric());
    if pair.is_empty() || !looks_like_timeframe {
        return None;
    }
    Some(FreqtradeName {
        pair: pair.to_string(),
        timeframe: timeframe.to_string(),
        candle_type,
        format,
    })
}

/// freqtrade's `pair_to_filename`: each of `/ . @ $ + : ␠` becomes `_`.
pub fn sanitize_pair(pair: &str) -> String {
    pair.chars()
        .map(|c| {
            if matches!(c, '/' | '.' | '@' | '$' | '+' | ':' | ' ') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The timeframe as freqtrade writes it in a file name: the month `1M` is `1Mo`
/// (so that it differs from `1m` on case-insensitive file systems).
pub fn timeframe_file_name(tf: &str) -> String {
    match tf.strip_suffix('M') {
        Some(count) => format!("{count}Mo"),
        None => tf.to_string(),
    }
}

/// Every path freqtrade could have stored `series` at, best first: by format
/// (feather, json, json.gz), then root (`datadir`, `datadir/<exchange>`), then,
/// for futures, `futures/` before the root itself and the candidate pair names of
/// freqtrade (`BTC_USDT`, `BTC_USDT_USDT`). Only names, no file-system access.
pub fn candidate_files(datadir: &Path, series: &SeriesId) -> Vec<PathBuf> {
    let tf = timeframe_file_name(&series.timeframe().to_string());
    let roots = [datadir.to_path_buf(), datadir.join(series.exchange())];
    let futures = series.market() == "futures";
    let stems: Vec<String> = if futures {
        futures_pair_candidates(series.symbol())
            .into_iter()
            .map(|pair| format!("{pair}-{tf}-futures"))
            .collect()
    } else {
        vec![format!("{}-{tf}", sanitize_pair(series.symbol()))]
    };
    let mut out = Vec::new();
    for format in FileFormat::PRIORITY {
        for root in &roots {
            let dirs = if futures {
                vec![root.join("futures"), root.clone()]
            } else {
                vec![root.clone()]
            };
            for dir in dirs {
                for stem in &stems {
                    let path = dir.join(format!("{stem}.{}", format.extension()));
                    if !out.contains(&path) {
                        out.push(path);
                    }
                }
            }
        }
    }
    out
}

/// The names freqtrade may have used: the symbol as given, the symbol without its `:SETTLE`, and
/// `BASE/QUOTE:SETTLE` (settle = the part after `:`, else the quote); sanitized,
/// deduplicated, in that order.
fn futures_pair_candidates(symbol: &str) -> Vec<String> {
    let (pair, settle) = match symbol.split_once(':') {
        Some((pair, settle)) => (pair, Some(settle)),
        None => (symbol, None),
    };
    let quote = pair.split_once('/').map(|(_, q)| q);
    let mut names = vec![sanitize_pair(symbol), sanitize_pair(pair)];
    if let Some(settle) = settle.or(quote) {
        names.push(sanitize_pair(&format!("{pair}:{settle}")));
    }
    let mut unique: Vec<String> = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

/// The series id a parsed file name stands for, or why it has none.
/// Pairs split on freqtrade's `_`: spot `BASE_QUOTE`, futures `BASE_QUOTE[_SETTLE]`
/// (USD-M: the settle currency must be the quote). A base or quote that itself
/// contained a sanitized character (`.`, `@`, …) cannot be told apart and is skipped.
pub fn series_for_name(exchange: &str, name: &FreqtradeName) -> Result<SeriesId, String> {
    if !name.candle_type.is_kline() {
        return Err(format!(
            "'{}' candles are not trade klines",
            name.candle_type.as_str()
        ));
    }
    let timeframe = timeframe_from_file(&name.timeframe)?;
    let parts: Vec<&str> = name.pair.split('_').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("pair '{}' has an empty part", name.pair));
    }
    let (market, symbol) = match (name.candle_type, parts.as_slice()) {
        (CandleType::Spot, [base, quote]) => ("spot", format!("{base}/{quote}")),
        (CandleType::Futures, [base, quote]) => ("futures", format!("{base}/{quote}")),
        (CandleType::Futures, [base, quote, settle]) if settle == quote => {
            ("futures", format!("{base}/{quote}"))
        }
        (CandleType::Futures, [_, quote, settle]) => {
            return Err(format!(
                "pair '{}' settles in {settle}, not its quote {quote} (coin-margined futures are not served)",
                name.pair
            ))
        }
        _ => {
            return Err(format!(
                "cannot split pair '{}' into BASE_QUOTE{}",
                name.pair,
                if name.candle_type == CandleType::Futures { "[_SETTLE]" } else { "" }
            ))
        }
    };
    Ok(SeriesId::from_parts(
        exchange,
        market,
        symbol.as_str(),
        timeframe,
    ))
}

fn timeframe_from_file(tf: &str) -> Result<Timeframe, String> {
    if tf.ends_with("Mo") {
        return Err(format!("month timeframe '{tf}' is not supported"));
    }
    Timeframe::parse(tf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SeriesId {
        SeriesId::parse(s).unwrap()
    }

    fn names(paths: &[PathBuf], base: &Path) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(base).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sanitize_follows_freqtrade() {
        assert_eq!(sanitize_pair("BTC/USDT"), "BTC_USDT");
        assert_eq!(sanitize_pair("BTC/USDT:USDT"), "BTC_USDT_USDT");
        assert_eq!(sanitize_pair("A.B@C$D+E F"), "A_B_C_D_E_F");
        assert_eq!(timeframe_file_name("1M"), "1Mo");
        assert_eq!(timeframe_file_name("1m"), "1m");
    }

    #[test]
    fn spot_candidates_prefer_feather_then_root() {
        let base = Path::new("/d");
        let got = candidate_files(base, &sid("binance:spot:BTC/USDT:1m"));
        assert_eq!(
            names(&got, base),
            [
                "BTC_USDT-1m.feather",
                "binance/BTC_USDT-1m.feather",
                "BTC_USDT-1m.json",
                "binance/BTC_USDT-1m.json",
                "BTC_USDT-1m.json.gz",
                "binance/BTC_USDT-1m.json.gz",
            ]
        );
    }

    #[test]
    fn futures_candidates_follow_reference_7_3() {
        let base = Path::new("/d");
        let got = candidate_files(base, &sid("binance:futures:BTC/USDT:5m"));
        assert_eq!(
            names(&got[..4], base),
            [
                "futures/BTC_USDT-5m-futures.feather",
                "futures/BTC_USDT_USDT-5m-futures.feather",
                "BTC_USDT-5m-futures.feather",
                "BTC_USDT_USDT-5m-futures.feather",
            ]
        );
        assert_eq!(got.len(), 3 * 2 * 2 * 2);
        let ccxt = candidate_files(base, &sid("binance:futures:BTC/USDT:USDT:1h"));
        assert_eq!(
            names(&ccxt[..2], base),
            [
                "futures/BTC_USDT_USDT-1h-futures.feather",
                "futures/BTC_USDT-1h-futures.feather"
            ]
        );
    }

    #[test]
    fn file_names_parse() {
        let n = parse_file_name("XRP_USDT_USDT-5m-futures.json").unwrap();
        assert_eq!(
            n,
            FreqtradeName {
                pair: "XRP_USDT_USDT".into(),
                timeframe: "5m".into(),
                candle_type: CandleType::Futures,
                format: FileFormat::Json
            }
        );
        let g = parse_file_name("XRP_USDT_USDT-1h-futures.json.gz").unwrap();
        assert_eq!(g.format, FileFormat::JsonGz);
        let f = parse_file_name("XRP_USDT_USDT-8h-funding_rate.feather").unwrap();
        assert_eq!(f.candle_type, CandleType::FundingRate);
        assert_eq!(
            parse_file_name("XRP_USDT_USDT-1h-premiumIndex.feather")
                .unwrap()
                .candle_type,
            CandleType::PremiumIndex
        );
        let s = parse_file_name("UNITTEST_BTC-1m.feather").unwrap();
        assert_eq!(
            (s.pair.as_str(), s.candle_type),
            ("UNITTEST_BTC", CandleType::Spot)
        );
        for not_ohlcv in [
            "candles.json",
            "XRP_ETH-trades.json",
            "BTC_USDT-1m.parquet",
            "-1m.json",
            "X-.json",
            "X-1m.txt",
        ] {
            assert_eq!(parse_file_name(not_ohlcv), None, "{not_ohlcv}");
        }
    }

    #[test]
    fn names_map_to_series() {
        let s = |name: &str| series_for_name("binance", &parse_file_name(name).unwrap());
        assert_eq!(
            s("UNITTEST_BTC-1m.json").unwrap().as_str(),
            "binance:spot:UNITTEST/BTC:1m"
        );
        assert_eq!(
            s("XRP_USDT_USDT-5m-futures.json").unwrap().as_str(),
            "binance:futures:XRP/USDT:5m"
        );
        assert_eq!(
            s("XRP_USDT-5m-futures.json").unwrap().as_str(),
            "binance:futures:XRP/USDT:5m"
        );
        assert!(s("BTC_USD_BTC-1h-futures.feather")
            .unwrap_err()
            .contains("coin-margined"));
        assert!(s("XRP_USDT_USDT-1h-mark.feather")
            .unwrap_err()
            .contains("not trade klines"));
        assert!(s("BTC_USDT-1Mo.feather").unwrap_err().contains("month"));
        assert!(s("A_B_C-1m.feather").unwrap_err().contains("cannot split"));
    }

    #[test]
    fn candidate_names_round_trip_through_discovery_mapping() {
        for raw in [
            "binance:spot:ETH/BTC:1m",
            "binance:futures:XRP/USDT:4h",
            "binance:spot:BTC/USDT:1w",
        ] {
            let series = sid(raw);
            for path in candidate_files(Path::new("/d"), &series) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let parsed = parse_file_name(&name).unwrap();
                assert_eq!(
                    series_for_name("binance", &parsed).unwrap(),
                    series,
                    "{name}"
                );
            }
        }
    }
}
