//! Reading one OHLCV file, whatever its format: dispatches on the file name to
//! the json/jsongz or feather reader, then cleans the raw rows into candles
//! (times in seconds, ascending, one per time, bad rows skipped and counted by
//! reason). The raw row and time types the readers share are in `row`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::feather::read_feather_rows;
use super::json::{gunzip, read_json_rows};
use super::naming::{parse_file_name, FileFormat};
use super::row::RawRow;
use super::{io_error, ImportError};
use crate::model::Candle;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
