//! Discovery: lists the OHLCV files of a freqtrade datadir (root, its
//! `<exchange>/` subdirectories and `futures/`), in a stable sorted order, with
//! the series each holds, and the files it leaves out with a reason. Reads
//! directory listings only, never file contents.

use std::fs;
use std::path::{Path, PathBuf};

use super::naming::{parse_file_name, series_for_name, FileFormat};
use super::DEFAULT_EXCHANGE;
use crate::model::SeriesId;

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
