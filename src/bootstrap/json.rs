//! The `.json` and `.json.gz` formats: an array of `[date, o, h, l, c, v]`
//! rows (pandas' `to_json(orient="values")`), gzip-compressed or not, read into
//! raw rows with times in seconds.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::row::{RawRow, RawTimes};
use super::{io_error, ImportError};

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
pub(super) fn read_json_rows(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>, ImportError> {
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

pub(super) fn gunzip(path: &Path) -> Result<Vec<u8>, ImportError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut out)
        .map_err(io_error(path))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
