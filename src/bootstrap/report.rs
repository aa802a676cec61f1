//! What an import tells its user: the per-series and overall reports, their
//! one-line-per-series summary with UTC times, and the progress bar drawn on
//! stderr when it is a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use super::discovery::SkippedFile;
use crate::model::SeriesId;

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

pub(super) fn progress_bar(wanted: bool) -> indicatif::ProgressBar {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(1_509_836_520), "2017-11-04T23:02:00Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_string(-1), "1969-12-31T23:59:59Z");
    }
}
