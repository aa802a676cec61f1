//! `klinegate tail` and `klinegate export` against the real binary: tail
//! watching a live server over loopback, export reading a store into CSV and
//! Parquet (read back and compared value for value).

mod support;

use klinegate::model::Candle;
use klinegate::store::{SeriesBatch, SqliteStore, Store};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::live::Live;

const SERIES: &str = "binance:spot:BTC/USDT:1m";
const T0: i64 = 1_700_000_040; // a minute boundary

fn klinegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_klinegate")).args(args).stdin(Stdio::null()).output().expect("run klinegate")
}

/// `n` one-minute candles from `T0` with values that differ per candle.
fn candles(n: usize) -> Vec<Candle> {
    (0..n)
        .map(|i| {
            let p = 100.0 + i as f64 * 0.25;
            Candle { candle_time: T0 + 60 * i as i64, open: p, high: p + 1.5, low: p - 0.5, close: p + 0.75, volume: 10.0 + i as f64 / 8.0 }
        })
        .collect()
}

fn seed(db: &Path, cs: &[Candle]) {
    let mut store = SqliteStore::open(db).expect("open store");
    for chunk in cs.chunks(5_000) {
        store.write_batches(&[SeriesBatch { series_id: SERIES.into(), candles: chunk.to_vec() }]).expect("seed");
    }
}

#[test]
fn export_writes_the_range_as_csv_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let all = candles(25_000);
    seed(&db, &all);
    // A range inside the data, crossing the 10,000-candle read pages twice.
    let (from, to) = (all[1_000].candle_time, all[23_999].candle_time);
    let out = dir.path().join("out.csv");
    let run = klinegate(&[
        "export", SERIES, "--from", &from.to_string(), "--to", &to.to_string(), "--db", db.to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("23000 candles"));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 23_001);
    assert_eq!(lines[0], "candle_time,time,open,high,low,close,volume");
    assert_eq!(lines[1], "1700060040,2023-11-15T14:54:00Z,350,351.5,349.5,350.75,135");
    assert_eq!(lines[23_000], "1701439980,2023-12-01T14:13:00Z,6099.75,6101.25,6099.25,6100.5,3009.875");
    // Dates work as bounds, and standard output is the default.
    let run = klinegate(&["export", SERIES, "--from", "2023-11-14T22:15", "--to", "2023-11-14T22:16:59", "--db", db.to_str().unwrap()]);
    assert!(run.status.success());
    let text = String::from_utf8_lossy(&run.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn export_writes_parquet_that_reads_back_exactly() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let all = candles(70_000);
    seed(&db, &all);
    let out = dir.path().join("out.parquet");
    let run = klinegate(&[
        "export", SERIES, "--from", "0", "--to", "9999999999", "--format", "parquet", "--db", db.to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let reader = SerializedFileReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 70_000);
    assert_eq!(reader.metadata().num_row_groups(), 2, "64k rows per group");
    for (i, row) in reader.get_row_iter(None).unwrap().enumerate() {
        let row = row.unwrap();
        let c = &all[i];
        let got = (row.get_long(0).unwrap(), row.get_double(1).unwrap(), row.get_double(2).unwrap());
        assert_eq!(got, (c.candle_time, c.open, c.high), "row {i}");
        let got = (row.get_double(3).unwrap(), row.get_double(4).unwrap(), row.get_double(5).unwrap());
        assert_eq!(got, (c.low, c.close, c.volume), "row {i}");
    }
}

#[test]
fn export_refuses_bad_requests_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--from".into(), "10".into(), "--to".into(), "20".into(), "--db".into(), db.display().to_string()], "no database at"),
        (vec!["--from".into(), "20".into(), "--to".into(), "10".into()], "is after --to"),
        (vec!["--from".into(), "yesterday".into(), "--to".into(), "10".into()], "unix seconds"),
        (vec!["--from".into(), "1".into(), "--to".into(), "2".into(), "--format".into(), "xls".into()], "expected csv or parquet"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["export".to_string(), SERIES.to_string()];
        args.extend(extra);
        let run = klinegate(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let run = klinegate(&["export", "BTCUSDT", "--from", "1", "--to", "2"]);
    assert_eq!(run.status.code(), Some(2));
}

/// Runs tail until it exits by itself (bounded: killed after 30 s).
fn tail(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_klinegate"))
        .arg("tail")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn tail_prints_catch_up_candles_one_line_each_and_stops_at_count() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("klinegate.db"), &candles(10));
    let live = Live::start_in(dir, &["--pin", SERIES]);
    let url = format!("ws://{}/ws/market", live.addr);
    let since = (T0 + 4 * 60).to_string();
    let run = tail(&[SERIES, "--url", &url, "--since", &since, "--count", "3", "--closed-only"]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&run.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "2023-11-14T22:19:00Z  closed   binance:spot:BTC/USDT:1m  o=101.25 h=102.75 l=100.75 c=102.0 v=10.625");
    assert!(lines[2].starts_with("2023-11-14T22:21:00Z  closed "), "{out}");
    // --json prints the frames themselves.
    let run = tail(&[SERIES, "--url", &url, "--since", &since, "--count", "3", "--json"]);
    let out = String::from_utf8_lossy(&run.stdout);
    let frame: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("")).expect("a JSON frame");
    assert!(matches!(frame["type"].as_str(), Some("candles_batch" | "candle_closed")), "{frame}");
}

#[test]
fn tail_reports_server_errors_and_connect_failures() {
    let live = Live::start(&[]);
    let url = format!("ws://{}/ws/market", live.addr);
    let run = tail(&["binance:spot:BTC/USDT:7m", "--url", &url]);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.starts_with("klinegate tail: server error bad_request"), "{err}");
    // Nothing listens on port 1.
    let run = tail(&[SERIES, "--url", "ws://127.0.0.1:1/ws/market"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("connecting to 127.0.0.1:1"));
    let run = tail(&[SERIES, "--url", "http://127.0.0.1:1/"]);
    assert_eq!(run.status.code(), Some(2));
}

/// `--fields full` (#15 §4): the whole kline's four columns after the usual
/// ones — values where the store has them, empty (CSV) / null (Parquet) where not.
#[test]
fn export_fields_full_adds_the_whole_kline_columns() {
    use klinegate::kline_ext::KlineExt;
    use klinegate::store::ExtRows;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let all = candles(3);
    seed(&db, &all);
    let e = KlineExt { quote_volume: 1234.5, trades: 42, taker_buy_base_volume: 5.25, taker_buy_quote_volume: 600.75 };
    SqliteStore::open(&db).unwrap().write_ext(&[ExtRows { series_id: SERIES.into(), rows: vec![(T0 + 60, e)] }]).unwrap();
    let run = klinegate(&["export", SERIES, "--from", "0", "--to", "9999999999", "--db", db.to_str().unwrap(), "--fields", "full"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "candle_time,time,open,high,low,close,volume,quote_volume,trades,taker_buy_base_volume,taker_buy_quote_volume");
    assert!(lines[1].ends_with(",10,,,,"), "no fields: empty cells: {}", lines[1]);
    assert!(lines[2].ends_with(",1234.5,42,5.25,600.75"), "{}", lines[2]);
    let out = dir.path().join("full.parquet");
    let args = ["export", SERIES, "--from", "0", "--to", "9999999999", "--format", "parquet", "--fields", "full"];
    let run = klinegate(&[&args[..], &["--db", db.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let reader = SerializedFileReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].get_double(6).is_err(), "null where unknown");
    assert_eq!((rows[1].get_double(6).unwrap(), rows[1].get_long(7).unwrap()), (1234.5, 42));
    assert_eq!((rows[1].get_double(8).unwrap(), rows[1].get_double(9).unwrap()), (5.25, 600.75));
    let plain = klinegate(&["export", SERIES, "--from", "0", "--to", "9999999999", "--db", db.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).lines().next(), Some("candle_time,time,open,high,low,close,volume"));
}
