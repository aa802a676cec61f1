//! Freqtrade history import: reads a freqtrade data directory (`json`, `jsongz`
//! and `feather` OHLCV files, spot and futures layouts) and upserts its candles
//! into a [`Store`](crate::store::Store), either all at once (`klinegate import-freqtrade`) or for one
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
//!
//! Files: `naming` (file names ↔ series ids), `discovery` (what a datadir
//! holds), `read` (one file to clean candles) with its formats `json`
//! (json/jsongz) and `feather` (Arrow IPC), `import` (planning and writing
//! to the store, the run-time bootstrap, the CLI command), `report` (what the
//! user is told: reports, summary, progress). This file holds the errors.
// Outside the deterministic core: clocks and the rest of clippy.toml's list are allowed here.
#![allow(clippy::disallowed_methods)]

mod discovery;
mod feather;
mod import;
mod json;
mod naming;
mod read;
mod report;
mod row;

pub use discovery::{discover, discover_detailed, DiscoveredFile, Discovery, SkippedFile};
pub use import::{bootstrap_series, bootstrap_series_closed_by, count_gaps, import, run_import_cli};
pub use naming::{
    candidate_files, parse_file_name, sanitize_pair, series_for_name, timeframe_file_name, CandleType,
    FileFormat, FreqtradeName,
};
pub use read::{read_ohlcv, read_ohlcv_file, OhlcvRead, SKIP_DUPLICATE, SKIP_UNALIGNED};
pub use row::{infer_time_unit, RawTimeUnit};
pub use report::{utc_string, ImportReport, SeriesReport};

use std::fmt;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// Exchange assumed for files at the datadir root (freqtrade keeps one datadir
/// per exchange; `<datadir>/<exchange>/` subdirectories name theirs).
pub const DEFAULT_EXCHANGE: &str = "binance";

/// Rows per `write_batches` call: one transaction each, so a long import holds
/// the database lock only briefly and a failure loses at most one batch of work.
pub const WRITE_BATCH_ROWS: usize = 5000;

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
