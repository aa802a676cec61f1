//! Freqtrade history import: reads a freqtrade data directory (`json`, `jsongz`
//! and `feather` OHLCV files, spot and futures layouts) and upserts its candles
//! into a [`Store`], either all at once (`klinegate import-freqtrade`) or for one
//! series that has no stored head yet (the run-time bootstrap).
//!
//! This is a tool module, not part of the deterministic core: it reads files and
//! may draw a progress bar on a terminal. The engine must never call it while
//! stepping; the shell or the CLI does, before or beside the core. It never
//! reads a clock (time, when needed, is an argument), never touches the network,
//! and never writes anything but the store it is handed.
//!
//! What it guarantees: timestamps come out as candle open times in Unix seconds,
//! ascending, one row per time (the last of duplicates wins, as freqtrade's own
//! reader does); rows with missing, non-finite, negative or inconsistent values
//! are skipped and counted by reason; gaps stay gaps (nothing is filled); writes
//! are upserts, so importing twice leaves the store as importing once.
//! Reference: shared/spec/reference-system.md §7, shared/data/SOURCES.md §2.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use crate::model::{Candle, SeriesId, Timeframe};
use crate::store::{SeriesBatch, SqliteStore, Store, StoreError};

/// Exchange assumed for files at the datadir root (freqtrade keeps one datadir
/// per exchange; `<datadir>/<exchange>/` subdirectories name theirs).
pub const DEFAULT_EXCHANGE: &str = "binance";

/// Rows per `write_batches` call: one transaction each, so a long import holds
/// the database lock only briefly and a failure loses at most one batch of work.
pub const WRITE_BATCH_ROWS: usize = 5000;

/// The OHLCV columns of a feather file, by name (freqtrade's names).
const DATE_COLUMN: &str = "date";
const VALUE_COLUMNS: [&str; 5] = ["open", "high", "low", "close", "volume"];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why an import or a file read failed. Messages name the file and what to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportError {
    /// The file or directory could not be read.
    Io { path: PathBuf, message: String },
    /// A `.json`/`.json.gz` file is not an array of `[ms, o, h, l, c, v]` rows.
    Json { path: PathBuf, message: String },
    /// A `.feather` file is not a readable Arrow IPC file.
    Arrow { path: PathBuf, message: String },
    /// A feather file lacks one of `date, open, high, low, close, volume`.
    MissingColumn { path: PathBuf, column: &'static str },
    /// A feather column has a type that cannot hold a time or a price.
    ColumnType {
        path: PathBuf,
        column: &'static str,
        data_type: String,
    },
    /// The extension is not one of `.feather`, `.json`, `.json.gz`.
    UnsupportedFormat { path: PathBuf },
    /// The file holds mark/index/premium-index prices or funding rates, not trade klines.
    NotKline {
        path: PathBuf,
        candle_type: &'static str,
    },
    /// A requested series has no freqtrade file; lists every name that was tried.
    NoFile {
        series: String,
        looked: Vec<PathBuf>,
    },
    /// A `--series` argument does not parse.
    BadSeries { input: String, message: String },
    /// Writing to the store failed (nothing of the failing batch was written).
    Store(StoreError),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io { path, message } => {
                write!(f, "cannot read {}: {message}", path.display())
            }
            ImportError::Json { path, message } => write!(
                f,
                "{} is not freqtrade OHLCV json (an array of [ms, open, high, low, close, volume] rows): {message}",
                path.display()
            ),
            ImportError::Arrow { path, message } => write!(
                f,
                "{} is not a readable feather (Arrow IPC) file: {message}",
                path.display()
            ),
            ImportError::MissingColumn { path, column } => write!(
                f,
                "{} has no '{column}' column (freqtrade OHLCV files have date, open, high, low, close, volume)",
                path.display()
            ),
            ImportError::ColumnType { path, column, data_type } => write!(
                f,
                "{}: column '{column}' has type {data_type}, which is not a time or a number",
                path.display()
            ),
            ImportError::UnsupportedFormat { path } => write!(
                f,
                "{}: unsupported format (supported: .feather, .json, .json.gz; convert with \
                 `freqtrade convert-data --format-to feather`)",
                path.display()
            ),
            ImportError::NotKline { path, candle_type } => write!(
                f,
                "{} holds '{candle_type}' candles, not trade klines; only spot and futures \
                 OHLCV files can be imported",
                path.display()
            ),
            ImportError::NoFile { series, looked } => {
                write!(f, "no freqtrade file for {series}; looked for:")?;
                for p in looked {
                    write!(f, " {}", p.display())?;
                }
                Ok(())
            }
            ImportError::BadSeries { input, message } => {
                write!(f, "bad series '{input}': {message}")
            }
            ImportError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<StoreError> for ImportError {
    fn from(e: StoreError) -> Self {
        ImportError::Store(e)
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |e| ImportError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Naming: freqtrade's file names and our series ids
// ---------------------------------------------------------------------------

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
    fn split_name(name: &str) -> Option<(FileFormat, &str)> {
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
/// reference §7.3 (`BTC_USDT`, `BTC_USDT_USDT`). Only names, no file-system access.
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

/// Reference §7.3: the symbol as given, the symbol without its `:SETTLE`, and
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

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// An OHLCV file found in a datadir and the series it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredFile {
    pub series: SeriesId,
    pub path: PathBuf,
    pub format: FileFormat,
}

/// A file in a datadir that will not be imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// What a datadir holds: importable files sorted by (series, format priority,
/// path), and every other file with the reason it is skipped, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    pub files: Vec<DiscoveredFile>,
    pub skipped: Vec<SkippedFile>,
}

/// Every OHLCV file of a datadir mapped to its series id (several formats of one
/// series give several entries, best format first). Skipped files are dropped;
/// see [`discover_detailed`] for them.
pub fn discover(datadir: &Path) -> Vec<(SeriesId, PathBuf)> {
    discover_detailed(datadir)
        .files
        .into_iter()
        .map(|f| (f.series, f.path))
        .collect()
}

/// Walks the datadir root and `futures/` (exchange [`DEFAULT_EXCHANGE`]) and each
/// other subdirectory `<exchange>/` and its `futures/` (exchange = the directory
/// name, lowercased). Unreadable directories are reported as skipped.
pub fn discover_detailed(datadir: &Path) -> Discovery {
    let mut found = Discovery::default();
    let scan = |dir: &Path, exchange: &str, found: &mut Discovery| {
        for path in sorted_entries(dir, found)
            .into_iter()
            .filter(|p| p.is_file())
        {
            classify_file(path, exchange, found);
        }
    };
    scan(datadir, DEFAULT_EXCHANGE, &mut found);
    scan(&datadir.join("futures"), DEFAULT_EXCHANGE, &mut found);
    let subdirs: Vec<PathBuf> = sorted_entries(datadir, &mut Discovery::default())
        .into_iter()
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "futures"))
        .collect();
    for dir in subdirs {
        let exchange = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| DEFAULT_EXCHANGE.to_string());
        scan(&dir, &exchange, &mut found);
        scan(&dir.join("futures"), &exchange, &mut found);
    }
    found
        .files
        .sort_by(|a, b| (&a.series, a.format, &a.path).cmp(&(&b.series, b.format, &b.path)));
    found.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Directory entries sorted by path (read_dir order is file-system dependent).
/// A missing directory is simply empty; an unreadable one is reported.
fn sorted_entries(dir: &Path, found: &mut Discovery) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            found.skipped.push(SkippedFile {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            });
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
}

fn classify_file(path: PathBuf, exchange: &str, found: &mut Discovery) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(parsed) = parse_file_name(&name) else {
        let reason = unrecognized_reason(&name);
        found.skipped.push(SkippedFile { path, reason });
        return;
    };
    match series_for_name(exchange, &parsed) {
        Ok(series) => found.files.push(DiscoveredFile {
            series,
            path,
            format: parsed.format,
        }),
        Err(reason) => found.skipped.push(SkippedFile { path, reason }),
    }
}

fn unrecognized_reason(name: &str) -> String {
    let stem = name.split('.').next().unwrap_or(name);
    if stem.ends_with("-trades") {
        "a trades file, not candles".to_string()
    } else if name.ends_with(".parquet") || name.ends_with(".h5") {
        "unsupported format (convert to feather with `freqtrade convert-data`)".to_string()
    } else {
        "not a freqtrade OHLCV file name (<pair>-<timeframe>[-<type>].<feather|json|json.gz>)"
            .to_string()
    }
}

// ---------------------------------------------------------------------------
// Reading one file
// ---------------------------------------------------------------------------

/// The rows of one file, cleaned: `candles` ascending with unique times, and
/// every row that did not become a candle counted under its reason.
/// `rows_read == candles.len() + skipped.values().sum()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OhlcvRead {
    pub candles: Vec<Candle>,
    pub rows_read: u64,
    pub skipped: BTreeMap<&'static str, u64>,
}

/// Reason a row is dropped because a later row has the same time.
pub const SKIP_DUPLICATE: &str = "duplicate time (the last row wins)";
const SKIP_NULL: &str = "missing value";
const SKIP_BAD_TIME: &str = "time out of range";
/// Reason a row is dropped in an import because its time is not a candle open.
pub const SKIP_UNALIGNED: &str = "time not aligned to the timeframe";

/// The candles of one freqtrade OHLCV file (see [`read_ohlcv`]).
pub fn read_ohlcv_file(path: &Path) -> Result<Vec<Candle>, ImportError> {
    read_ohlcv(path).map(|read| read.candles)
}

/// Reads a `.feather`, `.json` or `.json.gz` OHLCV file. Refuses mark, index,
/// premium-index and funding-rate files by name. Times come out in seconds.
pub fn read_ohlcv(path: &Path) -> Result<OhlcvRead, ImportError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(parsed) = parse_file_name(&name) {
        if !parsed.candle_type.is_kline() {
            return Err(ImportError::NotKline {
                path: path.to_path_buf(),
                candle_type: parsed.candle_type.as_str(),
            });
        }
    }
    let rows = match FileFormat::split_name(&name).map(|(format, _)| format) {
        Some(FileFormat::Feather) => read_feather_rows(path)?,
        Some(FileFormat::Json) => read_json_rows(path, &fs::read(path).map_err(io_error(path))?)?,
        Some(FileFormat::JsonGz) => read_json_rows(path, &gunzip(path)?)?,
        None => {
            return Err(ImportError::UnsupportedFormat {
                path: path.to_path_buf(),
            })
        }
    };
    Ok(clean_rows(rows))
}

fn gunzip(path: &Path) -> Result<Vec<u8>, ImportError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut out)
        .map_err(io_error(path))?;
    Ok(out)
}

/// A row as read, before cleaning: the time already in seconds when known.
#[derive(Clone, Copy, Debug)]
struct RawRow {
    time: Option<i64>,
    values: [Option<f64>; 5],
}

/// Drops rows with a missing value or time, or failing [`Candle::sanity_error`];
/// sorts by time (stable, so file order decides among equal times) and keeps the
/// last row of each time.
fn clean_rows(rows: Vec<RawRow>) -> OhlcvRead {
    let mut read = OhlcvRead {
        rows_read: rows.len() as u64,
        ..OhlcvRead::default()
    };
    let mut candles = Vec::with_capacity(rows.len());
    for row in rows {
        let candle = match (row.time, row.values) {
            (Some(t), [Some(open), Some(high), Some(low), Some(close), Some(volume)]) => Candle {
                candle_time: t,
                open,
                high,
                low,
                close,
                volume,
            },
            (None, _) => {
                *read.skipped.entry(SKIP_BAD_TIME).or_default() += 1;
                continue;
            }
            _ => {
                *read.skipped.entry(SKIP_NULL).or_default() += 1;
                continue;
            }
        };
        match candle.sanity_error() {
            Some(reason) => *read.skipped.entry(reason).or_default() += 1,
            None => candles.push(candle),
        }
    }
    if candles
        .windows(2)
        .any(|w| w[0].candle_time > w[1].candle_time)
    {
        candles.sort_by_key(|c| c.candle_time);
    }
    let before = candles.len();
    keep_last_per_time(&mut candles);
    let duplicates = (before - candles.len()) as u64;
    if duplicates > 0 {
        *read.skipped.entry(SKIP_DUPLICATE).or_default() += duplicates;
    }
    read.candles = candles;
    read
}

/// On a time-sorted vector, keeps only the last candle of each run of equal times.
fn keep_last_per_time(candles: &mut Vec<Candle>) {
    let mut write = 0;
    for read in 0..candles.len() {
        let is_last_of_run =
            read + 1 == candles.len() || candles[read + 1].candle_time != candles[read].candle_time;
        if is_last_of_run {
            candles[write] = candles[read];
            write += 1;
        }
    }
    candles.truncate(write);
}

/// How raw integer times in a file map to seconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RawTimeUnit {
    Seconds,
    Millis,
    Micros,
    Nanos,
}

impl RawTimeUnit {
    fn per_second(self) -> i64 {
        match self {
            RawTimeUnit::Seconds => 1,
            RawTimeUnit::Millis => 1_000,
            RawTimeUnit::Micros => 1_000_000,
            RawTimeUnit::Nanos => 1_000_000_000,
        }
    }

    /// Whole seconds (floor), so a jittered `…:00.002` lands on its second.
    pub fn to_seconds(self, raw: i64) -> i64 {
        raw.div_euclid(self.per_second())
    }
}

/// The unit of an untyped integer time column, from its largest magnitude —
/// reference §7.4 (`> 1e14` ns, `> 1e11` ms, else s), refined so that
/// microseconds are recognised too: every real-world time after 1973 is above
/// 1e17 in ns, above 1e14 in µs, above 1e11 in ms and below 1e11 in s.
pub fn infer_time_unit(max_abs: i64) -> RawTimeUnit {
    let m = max_abs.unsigned_abs();
    if m > 100_000_000_000_000_000 {
        RawTimeUnit::Nanos
    } else if m > 100_000_000_000_000 {
        RawTimeUnit::Micros
    } else if m > 100_000_000_000 {
        RawTimeUnit::Millis
    } else {
        RawTimeUnit::Seconds
    }
}

/// A time column before its unit is known: raw integers plus either a fixed
/// unit (typed timestamps) or `None` (infer from the largest value).
struct RawTimes {
    values: Vec<Option<i64>>,
    unit: Option<RawTimeUnit>,
}

impl RawTimes {
    fn into_seconds(self) -> Vec<Option<i64>> {
        let unit = self.unit.unwrap_or_else(|| {
            infer_time_unit(
                self.values
                    .iter()
                    .flatten()
                    .map(|v| v.saturating_abs())
                    .max()
                    .unwrap_or(0),
            )
        });
        self.values
            .into_iter()
            .map(|v| v.map(|raw| unit.to_seconds(raw)))
            .collect()
    }
}

// --- json / jsongz ---

/// One json row: `[date, open, high, low, close, volume]`; pandas writes NaN as null.
#[derive(serde::Deserialize)]
struct JsonRow(
    Option<serde_json::Number>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// freqtrade writes epoch milliseconds; the unit is still inferred from the
/// largest value so that a file written in seconds is not read as 1970.
fn read_json_rows(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>, ImportError> {
    let rows: Vec<JsonRow> = serde_json::from_slice(bytes).map_err(|e| ImportError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let times = RawTimes {
        values: rows
            .iter()
            .map(|r| r.0.as_ref().and_then(json_time))
            .collect(),
        unit: None,
    };
    Ok(times
        .into_seconds()
        .into_iter()
        .zip(rows)
        .map(|(time, r)| RawRow {
            time,
            values: [r.1, r.2, r.3, r.4, r.5],
        })
        .collect())
}

/// An integer time, or a float one floored; `None` when out of `i64` range.
fn json_time(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?.floor();
    (f.is_finite() && f.abs() < 9.0e18).then_some(f as i64)
}

// --- feather ---

/// Reads a feather file from memory. arrow-ipc is not hardened against damaged
/// files: some bad offsets panic, and a damaged compressed-length prefix can make
/// it allocate without bound, which aborts the process. So the lengths it trusts
/// are checked first ([`check_ipc_lengths`]) and any panic left is caught and
/// turned into an error: a damaged file must never take the server down.
fn read_feather_rows(path: &Path) -> Result<Vec<RawRow>, ImportError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let arrow = |message: String| ImportError::Arrow {
        path: path.to_path_buf(),
        message,
    };
    check_ipc_lengths(&bytes).map_err(arrow)?;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_feather(path, &bytes)
    }));
    decoded.unwrap_or_else(|_| {
        Err(arrow(
            "the Arrow reader failed on malformed data (the file is damaged)".to_string(),
        ))
    })
}

fn decode_feather(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>, ImportError> {
    let arrow = |e: arrow_schema::ArrowError| ImportError::Arrow {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(arrow)?;
    let schema = reader.schema();
    for column in std::iter::once(DATE_COLUMN).chain(VALUE_COLUMNS) {
        if schema.index_of(column).is_err() {
            let column = static_column_name(column);
            return Err(ImportError::MissingColumn {
                path: path.to_path_buf(),
                column,
            });
        }
    }
    let mut times = RawTimes {
        values: Vec::new(),
        unit: None,
    };
    let mut values: Vec<[Option<f64>; 5]> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow)?;
        append_batch(path, &batch, &mut times, &mut values)?;
    }
    Ok(times
        .into_seconds()
        .into_iter()
        .zip(values)
        .map(|(time, values)| RawRow { time, values })
        .collect())
}

/// LZ4 cannot expand data by more than about 255 times (a match's length grows
/// by 255 per extra byte), so a compressed buffer declaring more is damaged.
const MAX_LZ4_EXPANSION: i64 = 256;

/// Checks, with arrow-ipc's own flatbuffer accessors, the lengths that
/// arrow-ipc uses before it validates them: every footer block must lie inside
/// the file, every buffer inside its block's body, and every compressed buffer
/// must declare a decompressed size that LZ4 could produce from it. Files that
/// are not Arrow IPC at all are left for the reader to reject with its message.
fn check_ipc_lengths(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    if n < 10 || &bytes[n - 6..] != b"ARROW1" {
        return Ok(());
    }
    let footer_len = i32::from_le_bytes([bytes[n - 10], bytes[n - 9], bytes[n - 8], bytes[n - 7]]);
    let footer_start = usize::try_from(footer_len)
        .ok()
        .and_then(|len| (n - 10).checked_sub(len))
        .ok_or_else(|| format!("footer length {footer_len} does not fit in the file"))?;
    let footer = arrow_ipc::root_as_footer(&bytes[footer_start..n - 10])
        .map_err(|e| format!("damaged footer: {e}"))?;
    let blocks = footer.recordBatches().into_iter().flatten();
    for block in blocks.chain(footer.dictionaries().into_iter().flatten()) {
        check_block(bytes, block)?;
    }
    Ok(())
}

fn check_block(bytes: &[u8], block: &arrow_ipc::Block) -> Result<(), String> {
    let range = |start: i64, len: i64, within: usize| -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= within).then_some(start..end)
    };
    let damaged = || format!("block at offset {} lies outside the file", block.offset());
    let meta = range(
        block.offset(),
        i64::from(block.metaDataLength()),
        bytes.len(),
    )
    .ok_or_else(damaged)?;
    let body_start = i64::try_from(meta.end).map_err(|_| damaged())?;
    let body = range(body_start, block.bodyLength(), bytes.len()).ok_or_else(damaged)?;
    let meta = &bytes[meta];
    // An encapsulated message: [0xFFFFFFFF] <i32 length> <flatbuffer>.
    let skip = if meta.starts_with(&[0xff; 4]) { 8 } else { 4 };
    let message = arrow_ipc::root_as_message(meta.get(skip..).unwrap_or_default())
        .map_err(|e| format!("damaged message at offset {}: {e}", block.offset()))?;
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    let Some(batch) = batch else { return Ok(()) };
    let compressed = batch.compression().is_some();
    let body = &bytes[body];
    for buffer in batch.buffers().into_iter().flatten() {
        let at = range(buffer.offset(), buffer.length(), body.len()).ok_or_else(|| {
            format!(
                "buffer at offset {} lies outside its block",
                buffer.offset()
            )
        })?;
        if !compressed || at.len() < 8 {
            continue;
        }
        let prefix: [u8; 8] = body[at.start..at.start + 8].try_into().unwrap_or_default();
        let declared = i64::from_le_bytes(prefix);
        // -1 marks a buffer stored uncompressed.
        let possible = MAX_LZ4_EXPANSION
            .saturating_mul(buffer.length())
            .saturating_add(1024);
        if declared < -1 || declared > possible {
            return Err(format!(
                "a compressed buffer of {} bytes declares {declared} bytes decompressed",
                buffer.length()
            ));
        }
    }
    Ok(())
}

fn static_column_name(column: &str) -> &'static str {
    std::iter::once(DATE_COLUMN)
        .chain(VALUE_COLUMNS)
        .find(|c| *c == column)
        .unwrap_or(DATE_COLUMN)
}

/// Appends one record batch, looking columns up by name (order does not matter).
fn append_batch(
    path: &Path,
    batch: &RecordBatch,
    times: &mut RawTimes,
    values: &mut Vec<[Option<f64>; 5]>,
) -> Result<(), ImportError> {
    let column = |name: &'static str| {
        batch
            .column_by_name(name)
            .ok_or(ImportError::MissingColumn {
                path: path.to_path_buf(),
                column: name,
            })
    };
    let (batch_times, unit) = time_column(path, column(DATE_COLUMN)?.as_ref())?;
    match (times.unit, unit, times.values.is_empty()) {
        (_, _, true) => times.unit = unit,
        (a, b, false) if a != b => {
            return Err(ImportError::Arrow {
                path: path.to_path_buf(),
                message: "record batches disagree on the type of the date column".to_string(),
            })
        }
        _ => {}
    }
    times.values.extend(batch_times);
    let mut columns = Vec::with_capacity(VALUE_COLUMNS.len());
    for name in VALUE_COLUMNS {
        columns.push(float_column(path, name, column(name)?.as_ref())?);
    }
    values.extend((0..batch.num_rows()).map(|i| {
        [
            columns[0][i],
            columns[1][i],
            columns[2][i],
            columns[3][i],
            columns[4][i],
        ]
    }));
    Ok(())
}

/// Raw times of a `date` column and their unit (`None` = infer, for plain integers).
fn time_column(
    path: &Path,
    array: &dyn Array,
) -> Result<(Vec<Option<i64>>, Option<RawTimeUnit>), ImportError> {
    let (raw, unit) = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => (
            ints::<TimestampSecondType>(array),
            Some(RawTimeUnit::Seconds),
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => (
            ints::<TimestampMillisecondType>(array),
            Some(RawTimeUnit::Millis),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => (
            ints::<TimestampMicrosecondType>(array),
            Some(RawTimeUnit::Micros),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => (
            ints::<TimestampNanosecondType>(array),
            Some(RawTimeUnit::Nanos),
        ),
        DataType::Date64 => (
            ints_of(array.as_primitive::<arrow_array::types::Date64Type>()),
            Some(RawTimeUnit::Millis),
        ),
        DataType::Date32 => {
            let days = array.as_primitive::<arrow_array::types::Date32Type>();
            let secs = days
                .iter()
                .map(|d| d.map(|d| i64::from(d) * 86_400))
                .collect();
            (secs, Some(RawTimeUnit::Seconds))
        }
        DataType::Int64 => (ints::<Int64Type>(array), None),
        DataType::Int32 => (ints::<Int32Type>(array), None),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>();
            (
                v.iter()
                    .map(|x| x.and_then(|x| i64::try_from(x).ok()))
                    .collect(),
                None,
            )
        }
        DataType::UInt32 => (ints::<UInt32Type>(array), None),
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>();
            let raw = v
                .iter()
                .map(|x| {
                    x.map(f64::floor)
                        .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                        .map(|f| f as i64)
                })
                .collect();
            (raw, None)
        }
        other => {
            return Err(ImportError::ColumnType {
                path: path.to_path_buf(),
                column: DATE_COLUMN,
                data_type: other.to_string(),
            })
        }
    };
    Ok((raw, unit))
}

fn ints<T>(array: &dyn Array) -> Vec<Option<i64>>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    ints_of(array.as_primitive::<T>())
}

fn ints_of<T>(array: &arrow_array::PrimitiveArray<T>) -> Vec<Option<i64>>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    array.iter().map(|v| v.map(Into::into)).collect()
}

/// A price or volume column as floats; integer columns are widened.
fn float_column(
    path: &Path,
    name: &'static str,
    array: &dyn Array,
) -> Result<Vec<Option<f64>>, ImportError> {
    fn widen<T>(array: &dyn Array) -> Vec<Option<f64>>
    where
        T: ArrowPrimitiveType,
        T::Native: Into<f64>,
    {
        array
            .as_primitive::<T>()
            .iter()
            .map(|v| v.map(Into::into))
            .collect()
    }
    Ok(match array.data_type() {
        DataType::Float64 => widen::<Float64Type>(array),
        DataType::Float32 => widen::<Float32Type>(array),
        DataType::Int32 => widen::<Int32Type>(array),
        DataType::Int16 => widen::<Int16Type>(array),
        DataType::Int8 => widen::<Int8Type>(array),
        DataType::UInt32 => widen::<UInt32Type>(array),
        DataType::UInt16 => widen::<UInt16Type>(array),
        DataType::UInt8 => widen::<UInt8Type>(array),
        // 64-bit integers: exact up to 2^53, which covers any price or volume.
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|x| x as f64))
            .collect(),
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|x| x as f64))
            .collect(),
        other => {
            return Err(ImportError::ColumnType {
                path: path.to_path_buf(),
                column: name,
                data_type: other.to_string(),
            })
        }
    })
}

// ---------------------------------------------------------------------------
// Import into a store
// ---------------------------------------------------------------------------

/// What the import did for one series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesReport {
    pub series: SeriesId,
    /// The file that was read (the best format present).
    pub file: PathBuf,
    /// Other formats of the same series, present but not read.
    pub ignored_files: Vec<PathBuf>,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rows not written, by reason. `rows_read == rows_written + Σ skipped`.
    pub skipped: BTreeMap<&'static str, u64>,
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Places where consecutive written candles are more than one timeframe apart.
    pub gaps: u64,
}

impl SeriesReport {
    pub fn rows_skipped(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// What an import did: one entry per series (sorted by series id), and the files
/// of the datadir that were not imported, with reasons.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    pub series: Vec<SeriesReport>,
    pub skipped_files: Vec<SkippedFile>,
}

impl ImportReport {
    pub fn rows_written(&self) -> u64 {
        self.series.iter().map(|s| s.rows_written).sum()
    }

    /// One line per series: `series rows_written first last gaps skipped`, then
    /// one `skipped FILE: reason` line per file left out.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.series {
            let time = |t: Option<i64>| t.map(utc_string).unwrap_or_else(|| "-".to_string());
            out.push_str(&format!(
                "{} rows={} first={} last={} gaps={} skipped={}\n",
                s.series,
                s.rows_written,
                time(s.first),
                time(s.last),
                s.gaps,
                s.rows_skipped()
            ));
        }
        for f in &self.skipped_files {
            out.push_str(&format!("skipped {}: {}\n", f.path.display(), f.reason));
        }
        out
    }
}

/// A series and the files to import it from, best first.
struct Plan {
    series: SeriesId,
    files: Vec<PathBuf>,
}

/// Imports every series of `datadir` (or only those in `only`) into `store`,
/// reading the best format of each, writing [`WRITE_BATCH_ROWS`] rows per
/// transaction. Upserts: a re-import writes the same rows again. When `only`
/// names a series without a file, nothing is written and the error lists the
/// names tried. `progress` draws a bar on stderr if it is a terminal.
pub fn import(
    datadir: &Path,
    only: &[SeriesId],
    store: &mut dyn Store,
    progress: bool,
) -> Result<ImportReport, ImportError> {
    if !datadir.is_dir() {
        return Err(ImportError::Io {
            path: datadir.to_path_buf(),
            message: "not a directory (pass freqtrade's datadir, e.g. user_data/data/binance)"
                .to_string(),
        });
    }
    let discovery = discover_detailed(datadir);
    let plans = plan_import(datadir, only, &discovery)?;
    let bar = progress_bar(progress);
    let mut report = ImportReport {
        series: Vec::new(),
        skipped_files: discovery.skipped,
    };
    for plan in plans {
        bar.set_message(plan.series.to_string());
        let series_report = import_one(&plan, store, &bar)?;
        report.series.push(series_report);
    }
    bar.finish_and_clear();
    Ok(report)
}

fn plan_import(
    datadir: &Path,
    only: &[SeriesId],
    discovery: &Discovery,
) -> Result<Vec<Plan>, ImportError> {
    if only.is_empty() {
        // Discovery is sorted by (series, format): group consecutive entries.
        let mut plans: Vec<Plan> = Vec::new();
        for f in &discovery.files {
            match plans.last_mut() {
                Some(plan) if plan.series == f.series => plan.files.push(f.path.clone()),
                _ => plans.push(Plan {
                    series: f.series.clone(),
                    files: vec![f.path.clone()],
                }),
            }
        }
        return Ok(plans);
    }
    let mut plans = Vec::new();
    for series in only {
        let looked = candidate_files(datadir, series);
        let files: Vec<PathBuf> = looked.iter().filter(|p| p.is_file()).cloned().collect();
        if files.is_empty() {
            return Err(ImportError::NoFile {
                series: series.to_string(),
                looked,
            });
        }
        plans.push(Plan {
            series: series.clone(),
            files,
        });
    }
    plans.sort_by(|a, b| a.series.cmp(&b.series));
    plans.dedup_by(|a, b| a.series == b.series);
    Ok(plans)
}

fn import_one(
    plan: &Plan,
    store: &mut dyn Store,
    bar: &indicatif::ProgressBar,
) -> Result<SeriesReport, ImportError> {
    let file = plan.files[0].clone();
    let read = read_ohlcv(&file)?;
    let (candles, skipped, rows_read) = keep_aligned(read, plan.series.timeframe());
    bar.inc_length(candles.len() as u64);
    write_in_batches(store, &plan.series, &candles, |n| bar.inc(n as u64))?;
    let report = SeriesReport {
        series: plan.series.clone(),
        file,
        ignored_files: plan.files[1..].to_vec(),
        rows_read,
        rows_written: candles.len() as u64,
        first: candles.first().map(|c| c.candle_time),
        last: candles.last().map(|c| c.candle_time),
        gaps: count_gaps(&candles, plan.series.timeframe()),
        skipped,
    };
    Ok(report)
}

/// Drops candles whose time is not a bucket open of `tf` (the store and every
/// gap rule downstream assume aligned times), counting them.
fn keep_aligned(read: OhlcvRead, tf: Timeframe) -> (Vec<Candle>, BTreeMap<&'static str, u64>, u64) {
    let OhlcvRead {
        mut candles,
        rows_read,
        mut skipped,
    } = read;
    let before = candles.len();
    candles.retain(|c| tf.bucket_open(c.candle_time) == c.candle_time);
    let unaligned = (before - candles.len()) as u64;
    if unaligned > 0 {
        *skipped.entry(SKIP_UNALIGNED).or_default() += unaligned;
    }
    (candles, skipped, rows_read)
}

/// Number of places where the next candle opens more than one timeframe later.
pub fn count_gaps(candles: &[Candle], tf: Timeframe) -> u64 {
    candles
        .windows(2)
        .filter(|w| w[1].candle_time - w[0].candle_time > tf.seconds())
        .count() as u64
}

fn write_in_batches(
    store: &mut dyn Store,
    series: &SeriesId,
    candles: &[Candle],
    mut on_written: impl FnMut(usize),
) -> Result<(), ImportError> {
    for chunk in candles.chunks(WRITE_BATCH_ROWS) {
        let batch = SeriesBatch {
            series_id: series.to_string(),
            candles: chunk.to_vec(),
        };
        store.write_batches(std::slice::from_ref(&batch))?;
        on_written(chunk.len());
    }
    Ok(())
}

fn progress_bar(wanted: bool) -> indicatif::ProgressBar {
    if !(wanted && std::io::stderr().is_terminal()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} {wide_msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Run-time bootstrap of one series (reference §7.1 `maybe_bootstrap`): if a
/// freqtrade file exists for it, upserts its newest `max(limit, 1)` candles and
/// returns how many; `Ok(0)` when there is no file. Does not look at the store's
/// head: the caller decides when a series needs it (no stored head).
pub fn bootstrap_series(
    datadir: &Path,
    series: &SeriesId,
    store: &mut dyn Store,
    limit: usize,
) -> Result<usize, ImportError> {
    bootstrap_series_closed_by(datadir, series, store, limit, None)
}

/// [`bootstrap_series`], but when `now_s` is given, leaves out candles not yet
/// closed at `now_s` (freqtrade files may end with a still-open candle).
pub fn bootstrap_series_closed_by(
    datadir: &Path,
    series: &SeriesId,
    store: &mut dyn Store,
    limit: usize,
    now_s: Option<i64>,
) -> Result<usize, ImportError> {
    let Some(file) = candidate_files(datadir, series)
        .into_iter()
        .find(|p| p.is_file())
    else {
        return Ok(0);
    };
    let tf = series.timeframe();
    let (mut candles, _, _) = keep_aligned(read_ohlcv(&file)?, tf);
    if let Some(now) = now_s {
        candles.retain(|c| c.candle_time.saturating_add(tf.seconds()) <= now);
    }
    let newest = &candles[candles.len().saturating_sub(limit.max(1))..];
    write_in_batches(store, series, newest, |_| {})?;
    Ok(newest.len())
}

/// The `import-freqtrade` command: imports into the SQLite database at `db` and
/// returns the summary text (one line per series) without printing anything.
/// `series` empty imports everything found in `datadir`.
pub fn run_import_cli(datadir: &Path, series: &[String], db: &Path) -> Result<String, String> {
    let only = series
        .iter()
        .map(|s| {
            SeriesId::parse(s).map_err(|e| {
                ImportError::BadSeries {
                    input: s.clone(),
                    message: e.to_string(),
                }
                .to_string()
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut store = SqliteStore::open(db).map_err(|e| e.to_string())?;
    let report = import(datadir, &only, &mut store, true).map_err(|e| e.to_string())?;
    store.close().map_err(|e| e.to_string())?;
    if report.series.is_empty() {
        return Err(format!(
            "no freqtrade OHLCV files found in {} (expected <PAIR>-<tf>.feather|json|json.gz, \
             futures in futures/)\n{}",
            datadir.display(),
            report.summary()
        ));
    }
    Ok(report.summary())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, UTC).
pub fn utc_string(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), by 400-year eras.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    #[test]
    fn unit_heuristic() {
        let t = 1_509_836_520_i64; // 2017-11-04 23:02 UTC
        assert_eq!(infer_time_unit(t), RawTimeUnit::Seconds);
        assert_eq!(infer_time_unit(t * 1000), RawTimeUnit::Millis);
        assert_eq!(infer_time_unit(t * 1_000_000), RawTimeUnit::Micros);
        assert_eq!(infer_time_unit(t * 1_000_000_000), RawTimeUnit::Nanos);
        // Reference §7.4 boundaries: ≤ 1e11 is seconds, just above is ms.
        assert_eq!(infer_time_unit(100_000_000_000), RawTimeUnit::Seconds);
        assert_eq!(infer_time_unit(100_000_000_001), RawTimeUnit::Millis);
        assert_eq!(infer_time_unit(0), RawTimeUnit::Seconds);
        assert_eq!(
            infer_time_unit(i64::MIN.saturating_abs()),
            RawTimeUnit::Nanos
        );
        for unit in [
            RawTimeUnit::Seconds,
            RawTimeUnit::Millis,
            RawTimeUnit::Micros,
            RawTimeUnit::Nanos,
        ] {
            assert_eq!(unit.to_seconds(t * unit.per_second()), t);
        }
        // Jittered funding-rate style time floors to its second.
        assert_eq!(
            RawTimeUnit::Millis.to_seconds(1_637_193_600_002),
            1_637_193_600
        );
        assert_eq!(RawTimeUnit::Millis.to_seconds(-1), -1);
    }

    fn row(t: i64, v: f64) -> RawRow {
        RawRow {
            time: Some(t),
            values: [Some(v), Some(v), Some(v), Some(v), Some(1.0)],
        }
    }

    #[test]
    fn cleaning_sorts_dedupes_last_wins_and_counts_skips() {
        let mut bad = row(240, 1.0);
        bad.values[1] = Some(0.5); // high below open
        let mut null = row(300, 1.0);
        null.values[4] = None;
        let read = clean_rows(vec![
            row(120, 2.0),
            row(60, 1.0),
            row(120, 3.0),
            bad,
            null,
            RawRow {
                time: None,
                ..row(0, 1.0)
            },
            row(360, f64::NAN),
        ]);
        let times: Vec<(i64, f64)> = read
            .candles
            .iter()
            .map(|c| (c.candle_time, c.close))
            .collect();
        assert_eq!(times, [(60, 1.0), (120, 3.0)]);
        assert_eq!(read.rows_read, 7);
        assert_eq!(read.skipped[SKIP_DUPLICATE], 1);
        assert_eq!(read.skipped[SKIP_NULL], 1);
        assert_eq!(read.skipped[SKIP_BAD_TIME], 1);
        assert_eq!(read.skipped["non-finite value"], 1);
        assert_eq!(read.skipped["high below max(open, close)"], 1);
        assert_eq!(
            read.rows_read,
            read.candles.len() as u64 + read.skipped.values().sum::<u64>()
        );
    }

    #[test]
    fn json_rows_in_ms_and_seconds() {
        let path = Path::new("x.json");
        let ms = br#"[[1509836520000,1.0,2.0,0.5,1.5,10.0],[1509836580000,1,2,0.5,1.5,null]]"#;
        let rows = read_json_rows(path, ms).unwrap();
        assert_eq!(rows[0].time, Some(1_509_836_520));
        assert_eq!(rows[1].values[4], None);
        let secs = br#"[[1509836520,1.0,2.0,0.5,1.5,10.0]]"#;
        assert_eq!(
            read_json_rows(path, secs).unwrap()[0].time,
            Some(1_509_836_520)
        );
        let err = read_json_rows(path, br#"{"date":{}}"#).unwrap_err();
        assert!(matches!(err, ImportError::Json { .. }), "{err}");
        assert!(read_json_rows(path, br#"[[1,2,3]]"#).is_err());
    }

    #[test]
    fn gaps_and_alignment() {
        let tf = Timeframe::M1;
        let c = |t| Candle {
            candle_time: t,
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 0.0,
        };
        assert_eq!(count_gaps(&[c(0), c(60), c(180), c(240), c(600)], tf), 2);
        let read = OhlcvRead {
            candles: vec![c(0), c(61), c(120)],
            rows_read: 3,
            skipped: BTreeMap::new(),
        };
        let (kept, skipped, _) = keep_aligned(read, tf);
        assert_eq!(kept.len(), 2);
        assert_eq!(skipped[SKIP_UNALIGNED], 1);
    }

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(1_509_836_520), "2017-11-04T23:02:00Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_string(-1), "1969-12-31T23:59:59Z");
    }
}
