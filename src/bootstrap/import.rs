//! Importing into a store: plans which series to import from which files
//! (everything discovered, or the series asked for), reads the best file of each,
//! drops unaligned times, and upserts in `WRITE_BATCH_ROWS` batches. Also the
//! run-time bootstrap of one series and the `import-freqtrade` command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::discovery::{discover_detailed, Discovery};
use super::naming::candidate_files;
use super::read::{read_ohlcv, OhlcvRead, SKIP_UNALIGNED};
use super::report::{progress_bar, ImportReport, SeriesReport};
use super::{ImportError, WRITE_BATCH_ROWS};
use crate::model::{Candle, SeriesId, Timeframe};
use crate::store::{SeriesBatch, SqliteStore, Store};

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

/// Run-time bootstrap of one series (the reference system's `maybe_bootstrap`): if a
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
