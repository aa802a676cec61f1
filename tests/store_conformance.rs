//! One behaviour suite for every `Store` implementation: each check is a
//! generic function run against `MemoryStore`, `SqliteStore::open_in_memory`,
//! a file-backed `SqliteStore`, and PostgreSQL through the server's store host
//! (a schema of its own per test, dropped after; skipped with a printed reason
//! when no server is reachable, a failure under `CI=true`), so the backends
//! cannot drift apart. Then
//! SQLite-only checks (durability, WAL, rollback, schema versioning), a
//! property test comparing the two backends on random writes, and an ignored
//! throughput measurement that prints figures and asserts nothing about time.

#[path = "support/netservers.rs"]
mod netservers;
#[path = "support/pg_host_store.rs"]
mod pg_host_store;

use klinegate::model::Candle;
use klinegate::store::{MemoryStore, SeriesBatch, SqliteStore, Store};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SID: &str = "binance:spot:BTC/USDT:1m";

/// A candle whose values all derive from `close`, so rows are easy to compare.
fn candle(t: i64, close: f64) -> Candle {
    Candle {
        candle_time: t,
        open: close - 1.0,
        high: close + 2.0,
        low: close - 2.0,
        close,
        volume: close * 10.0,
    }
}

fn batch(series_id: &str, candles: Vec<Candle>) -> SeriesBatch {
    SeriesBatch { series_id: series_id.to_string(), candles }
}

fn times(rows: &[Candle]) -> Vec<i64> {
    rows.iter().map(|c| c.candle_time).collect()
}

/// Seeds SID with 60, 120, ..., 600.
fn seed_ten<S: Store>(s: &mut S) {
    let rows = (1..=10).map(|i| candle(i * 60, i as f64)).collect();
    s.write_batches(&[batch(SID, rows)]).unwrap();
}

// ---------------------------------------------------------------- the suite

fn empty_store_reads_nothing<S: Store>(s: S) {
    assert_eq!(s.head_time(SID).unwrap(), None);
    assert_eq!(s.first_time(SID).unwrap(), None);
    assert!(s.read_tail(SID, 10).unwrap().is_empty());
    assert!(s.read_after(SID, 0, 10).unwrap().is_empty());
    assert!(s.read_range(SID, i64::MIN, i64::MAX, 10).unwrap().is_empty());
    assert_eq!(s.count_range(SID, i64::MIN, i64::MAX).unwrap(), 0);
}

fn empty_writes_are_ok<S: Store>(mut s: S) {
    s.write_batches(&[]).unwrap();
    s.write_batches(&[batch(SID, vec![])]).unwrap();
    assert_eq!(s.head_time(SID).unwrap(), None);
}

fn upsert_last_write_wins<S: Store>(mut s: S) {
    s.write_batches(&[batch(SID, vec![candle(60, 1.0), candle(120, 2.0)])]).unwrap();
    s.write_batches(&[batch(SID, vec![candle(120, 20.0)])]).unwrap();
    assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 1.0), candle(120, 20.0)]);
    // Identical re-write is a no-op in effect.
    s.write_batches(&[batch(SID, vec![candle(120, 20.0)])]).unwrap();
    assert_eq!(s.count_range(SID, 0, 1000).unwrap(), 2);
    // Within one write, the later occurrence wins (batches and candles in order).
    s.write_batches(&[batch(SID, vec![candle(60, 5.0)]), batch(SID, vec![candle(60, 6.0)])])
        .unwrap();
    assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(120, 20.0)]);
    assert_eq!(s.read_range(SID, 60, 60, 10).unwrap(), vec![candle(60, 6.0)]);
}

fn older_times_can_be_inserted_any_time<S: Store>(mut s: S) {
    s.write_batches(&[batch(SID, vec![candle(600, 1.0)])]).unwrap();
    s.write_batches(&[batch(SID, vec![candle(60, 2.0)])]).unwrap();
    assert_eq!(s.first_time(SID).unwrap(), Some(60));
    assert_eq!(s.head_time(SID).unwrap(), Some(600));
    assert_eq!(times(&s.read_tail(SID, 10).unwrap()), vec![60, 600]);
}

fn head_and_first<S: Store>(mut s: S) {
    seed_ten(&mut s);
    assert_eq!(s.head_time(SID).unwrap(), Some(600));
    assert_eq!(s.first_time(SID).unwrap(), Some(60));
}

fn tail_is_the_newest_rows_ascending<S: Store>(mut s: S) {
    seed_ten(&mut s);
    assert_eq!(times(&s.read_tail(SID, 3).unwrap()), vec![480, 540, 600]);
    assert_eq!(s.read_tail(SID, 10).unwrap().len(), 10);
    assert_eq!(s.read_tail(SID, 11).unwrap().len(), 10);
    assert_eq!(s.read_tail(SID, usize::MAX).unwrap().len(), 10);
    assert!(s.read_tail(SID, 0).unwrap().is_empty());
    assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(600, 10.0)]);
}

fn after_is_exclusive_first_rows_ascending<S: Store>(mut s: S) {
    seed_ten(&mut s);
    assert_eq!(times(&s.read_after(SID, 120, 3).unwrap()), vec![180, 240, 300]);
    assert_eq!(times(&s.read_after(SID, 119, 2).unwrap()), vec![120, 180]);
    assert!(s.read_after(SID, 600, 10).unwrap().is_empty());
    assert_eq!(s.read_after(SID, i64::MIN, usize::MAX).unwrap().len(), 10);
    assert!(s.read_after(SID, i64::MAX, 10).unwrap().is_empty());
    assert!(s.read_after(SID, 0, 0).unwrap().is_empty());
}

fn range_is_inclusive_ascending_limited<S: Store>(mut s: S) {
    seed_ten(&mut s);
    assert_eq!(times(&s.read_range(SID, 120, 300, 100).unwrap()), vec![120, 180, 240, 300]);
    assert_eq!(times(&s.read_range(SID, 121, 299, 100).unwrap()), vec![180, 240]);
    assert_eq!(times(&s.read_range(SID, 120, 300, 2).unwrap()), vec![120, 180]);
    assert_eq!(times(&s.read_range(SID, 300, 300, 100).unwrap()), vec![300]);
    assert!(s.read_range(SID, 300, 120, 100).unwrap().is_empty(), "inverted range");
    assert!(s.read_range(SID, 120, 300, 0).unwrap().is_empty());
    assert_eq!(s.read_range(SID, i64::MIN, i64::MAX, usize::MAX).unwrap().len(), 10);
}

fn counts_are_inclusive<S: Store>(mut s: S) {
    seed_ten(&mut s);
    assert_eq!(s.count_range(SID, 120, 300).unwrap(), 4);
    assert_eq!(s.count_range(SID, 121, 299).unwrap(), 2);
    assert_eq!(s.count_range(SID, 600, 600).unwrap(), 1);
    assert_eq!(s.count_range(SID, 601, 10_000).unwrap(), 0);
    assert_eq!(s.count_range(SID, 300, 120).unwrap(), 0);
    assert_eq!(s.count_range(SID, i64::MIN, i64::MAX).unwrap(), 10);
}

fn multi_series_batch_keeps_series_apart<S: Store>(mut s: S) {
    let a = "binance:spot:ETH/USDT:1m";
    let b = "binance:spot:ETH/USDT:5m";
    s.write_batches(&[
        batch(a, vec![candle(60, 1.0), candle(120, 2.0)]),
        batch(b, vec![candle(300, 3.0)]),
        batch(SID, vec![candle(60, 4.0)]),
    ])
    .unwrap();
    assert_eq!(s.read_tail(a, 10).unwrap(), vec![candle(60, 1.0), candle(120, 2.0)]);
    assert_eq!(s.read_tail(b, 10).unwrap(), vec![candle(300, 3.0)]);
    assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 4.0)]);
    assert_eq!(s.head_time(b).unwrap(), Some(300));
    assert_eq!(s.head_time("binance:spot:ETH/USDT:1h").unwrap(), None);
    // A series id that is a prefix of another shares nothing with it.
    assert_eq!(s.head_time("binance:spot:ETH/USDT").unwrap(), None);
}

fn series_ids_with_colons_slashes_and_unicode<S: Store>(mut s: S) {
    let ids = [
        "binance:futures:BTC/USDT:USDT:1h",
        "x:y:a/b/c:d:e:1m",
        "binance:spot:币安/USDT:1m",
        "quote'and\"double:spot:A%B_C:1m",
    ];
    let batches: Vec<SeriesBatch> =
        ids.iter().enumerate().map(|(i, id)| batch(id, vec![candle(60, i as f64)])).collect();
    s.write_batches(&batches).unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(s.read_tail(id, 10).unwrap(), vec![candle(60, i as f64)], "{id}");
    }
    // LIKE-style wildcards in an id are not wildcards.
    assert_eq!(s.head_time("quote'and\"double:spot:A_B%C:1m").unwrap(), None);
}

fn zero_negative_and_extreme_times<S: Store>(mut s: S) {
    let rows = vec![candle(i64::MIN, 1.0), candle(-60, 2.0), candle(0, 3.0), candle(i64::MAX, 4.0)];
    s.write_batches(&[batch(SID, rows)]).unwrap();
    assert_eq!(s.first_time(SID).unwrap(), Some(i64::MIN));
    assert_eq!(s.head_time(SID).unwrap(), Some(i64::MAX));
    assert_eq!(times(&s.read_tail(SID, 2).unwrap()), vec![0, i64::MAX]);
    assert_eq!(times(&s.read_after(SID, -60, 10).unwrap()), vec![0, i64::MAX]);
    assert_eq!(times(&s.read_after(SID, i64::MIN, 1).unwrap()), vec![-60]);
    assert_eq!(times(&s.read_range(SID, -60, 0, 10).unwrap()), vec![-60, 0]);
    assert_eq!(s.count_range(SID, i64::MIN, -1).unwrap(), 2);
}

fn values_round_trip_exactly<S: Store>(mut s: S) {
    let c = Candle {
        candle_time: 60,
        open: 0.1 + 0.2,
        high: 1e300,
        low: f64::MIN_POSITIVE,
        close: 65_432.123_456_789_01,
        volume: 0.0,
    };
    s.write_batches(&[batch(SID, vec![c])]).unwrap();
    let back = s.read_tail(SID, 1).unwrap();
    assert_eq!(back.len(), 1);
    for (x, y) in [
        (back[0].open, c.open),
        (back[0].high, c.high),
        (back[0].low, c.low),
        (back[0].close, c.close),
        (back[0].volume, c.volume),
    ] {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}

fn non_finite_values_are_refused_and_nothing_is_written<S: Store>(mut s: S) {
    s.write_batches(&[batch(SID, vec![candle(60, 1.0)])]).unwrap();
    for bad_value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let bad = Candle { high: bad_value, ..candle(180, 3.0) };
        let err = s
            .write_batches(&[
                batch(SID, vec![candle(60, 9.0), candle(120, 2.0)]),
                batch("other:spot:X/Y:1m", vec![bad]),
            ])
            .unwrap_err();
        assert_eq!(err.op, "write_batches");
        assert!(err.to_string().contains("non-finite"), "{err}");
        assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 1.0)]);
        assert_eq!(s.head_time("other:spot:X/Y:1m").unwrap(), None);
    }
}

fn tail_start_is_where_read_tail_starts<S: Store>(mut s: S) {
    assert_eq!(s.tail_start(SID, 3).unwrap(), None, "no rows");
    seed_ten(&mut s);
    s.write_batches(&[batch("other:spot:X/Y:1m", vec![candle(30, 1.0)])]).unwrap();
    for n in [0usize, 1, 3, 10, 11, usize::MAX] {
        let expected = s.read_tail(SID, n).unwrap().first().map(|c| c.candle_time);
        assert_eq!(s.tail_start(SID, n).unwrap(), expected, "count {n}");
    }
    assert_eq!(s.tail_start(SID, 3).unwrap(), Some(480));
    assert_eq!(s.tail_start(SID, 100).unwrap(), Some(60), "fewer rows than asked: the first");
}

/// Retention: only the timeframe's series lose rows, only those before the
/// cutoff, oldest first, at most `limit` per call, until none are left.
fn prune_deletes_old_rows_of_the_timeframe_in_batches<S: Store>(mut s: S) {
    let five = "binance:spot:BTC/USDT:5m";
    let eth = "binance:spot:ETH/USDT:1m";
    let lookalike = "binance:spot:BTC/USDT:11m";
    s.write_batches(&[
        batch(SID, (1..=10).map(|i| candle(i * 60, i as f64)).collect()),
        batch(eth, (1..=4).map(|i| candle(i * 60, i as f64)).collect()),
        batch(five, (1..=10).map(|i| candle(i * 300, i as f64)).collect()),
        batch(lookalike, vec![candle(60, 1.0)]),
    ])
    .unwrap();
    // Before 301: SID 60..300 (5 rows) and ETH 60..240 (4 rows) are old.
    assert_eq!(s.prune_before("1m", 301, 0).unwrap(), 0, "a zero limit deletes nothing");
    assert_eq!(s.prune_before("1m", 301, 3).unwrap(), 3, "at most the limit");
    assert_eq!(s.prune_before("1m", 301, 3).unwrap(), 3);
    assert_eq!(s.prune_before("1m", 301, 3).unwrap(), 3);
    assert_eq!(s.prune_before("1m", 301, 3).unwrap(), 0, "nothing old is left");
    assert_eq!(times(&s.read_tail(SID, 100).unwrap()), vec![360, 420, 480, 540, 600], "recent rows stay");
    assert!(s.read_tail(eth, 100).unwrap().is_empty());
    assert_eq!(s.count_range(five, i64::MIN, i64::MAX).unwrap(), 10, "other timeframes untouched");
    assert_eq!(s.count_range(lookalike, i64::MIN, i64::MAX).unwrap(), 1, "':11m' is not ':1m'");
    assert_eq!(s.prune_before("5m", 1500, 100).unwrap(), 4);
    assert_eq!(s.first_time(five).unwrap(), Some(1500));
}

/// The whole kline (#15 §4): fields written for stored rows only, read back
/// by range, kept by a candle upsert, gone with the row.
fn whole_kline_fields_round_trip<S: Store>(mut s: S) {
    use klinegate::kline_ext::KlineExt;
    use klinegate::store::ExtRows;
    let e = |i: u64| KlineExt { quote_volume: i as f64 * 1.5, trades: i, taker_buy_base_volume: 0.25, taker_buy_quote_volume: 0.5 };
    seed_ten(&mut s);
    s.write_ext(&[ExtRows { series_id: SID.into(), rows: vec![(60, e(1)), (120, e(2)), (9_999, e(3))] }]).unwrap();
    assert_eq!(s.read_ext(SID, 0, 1_000_000).unwrap(), vec![(60, e(1)), (120, e(2))], "only stored rows");
    assert_eq!(s.read_ext(SID, 100, 200).unwrap(), vec![(120, e(2))], "inclusive range");
    s.write_batches(&[batch(SID, vec![candle(120, 99.0)])]).unwrap();
    assert_eq!(s.read_ext(SID, 120, 120).unwrap(), vec![(120, e(2))], "a candle upsert keeps them");
    assert!(s.read_ext("other:spot:X/Y:1m", 0, 1_000_000).unwrap().is_empty());
    assert_eq!(s.prune_before("1m", 100, 10).unwrap(), 1);
    assert_eq!(s.read_ext(SID, 0, 1_000_000).unwrap(), vec![(120, e(2))], "gone with the row");
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $( #[test] fn $check() { super::$check(MemoryStore::new()) } )*
        }
        mod sqlite_in_memory {
            use super::*;
            $( #[test] fn $check() { super::$check(SqliteStore::open_in_memory().unwrap()) } )*
        }
        mod sqlite_file {
            use super::*;
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$check(SqliteStore::open(&dir.path().join("candles.db")).unwrap())
                }
            )*
        }
        mod postgres_through_store_host {
            $(
                #[test]
                fn $check() {
                    let Some(store) = crate::pg_host_store::PgHostStore::open(stringify!($check)) else { return };
                    super::$check(store)
                }
            )*
        }
    };
}

conformance!(
    empty_store_reads_nothing,
    empty_writes_are_ok,
    upsert_last_write_wins,
    older_times_can_be_inserted_any_time,
    head_and_first,
    tail_is_the_newest_rows_ascending,
    tail_start_is_where_read_tail_starts,
    after_is_exclusive_first_rows_ascending,
    range_is_inclusive_ascending_limited,
    counts_are_inclusive,
    multi_series_batch_keeps_series_apart,
    series_ids_with_colons_slashes_and_unicode,
    zero_negative_and_extreme_times,
    values_round_trip_exactly,
    non_finite_values_are_refused_and_nothing_is_written,
    prune_deletes_old_rows_of_the_timeframe_in_batches,
    whole_kline_fields_round_trip,
);

// ------------------------------------------------------------ SQLite only

fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested").join("deeper").join("candles.db")
}

fn raw_connection(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn open_creates_parent_directories_and_reports_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let s = SqliteStore::open(&path).unwrap();
    assert!(path.exists());
    assert_eq!(s.path(), Some(path.as_path()));
}

#[test]
fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    seed_ten(&mut s);
    s.write_batches(&[batch(SID, vec![candle(600, 99.0)])]).unwrap();
    s.close().unwrap();

    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count_range(SID, i64::MIN, i64::MAX).unwrap(), 10);
    assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(600, 99.0)]);
    drop(s);
    // Dropping without close() is fine too.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.head_time(SID).unwrap(), Some(600));
}

#[test]
fn file_database_is_in_wal_mode_and_checkpoint_truncates_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    let mode: String =
        raw_connection(&path).query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");

    seed_ten(&mut s);
    let wal = path.with_extension("db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "commits go to the WAL");
    s.checkpoint().unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    assert_eq!(s.head_time(SID).unwrap(), Some(600));
}

#[test]
fn failure_mid_transaction_rolls_back_every_batch_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    s.write_batches(&[batch(SID, vec![candle(60, 1.0)])]).unwrap();

    // Another connection installs a trigger that aborts one specific insert:
    // the failure happens after earlier rows of the same write went in.
    raw_connection(&path)
        .execute_batch(
            "CREATE TRIGGER refuse_666 BEFORE INSERT ON candles WHEN NEW.candle_time = 666
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let flush = [
        batch(SID, vec![candle(60, 10.0), candle(120, 2.0)]),
        batch("binance:spot:ETH/USDT:1m", vec![candle(60, 3.0)]),
        batch("binance:spot:SOL/USDT:1m", vec![candle(600, 4.0), candle(666, 5.0)]),
    ];
    let err = s.write_batches(&flush).unwrap_err();
    assert_eq!(err.op, "write_batches");
    assert!(err.message.contains("injected failure"), "{err}");
    assert!(err.message.contains("candle_time 666"), "{err}");

    assert_eq!(s.read_tail(SID, 10).unwrap(), vec![candle(60, 1.0)], "update rolled back");
    assert_eq!(s.head_time("binance:spot:ETH/USDT:1m").unwrap(), None);
    assert_eq!(s.head_time("binance:spot:SOL/USDT:1m").unwrap(), None);
    // A fresh connection sees the same: nothing was committed.
    let n: i64 =
        raw_connection(&path).query_row("SELECT COUNT(*) FROM candles", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);

    raw_connection(&path).execute_batch("DROP TRIGGER refuse_666").unwrap();
    s.write_batches(&flush).unwrap();
    assert_eq!(s.count_range("binance:spot:SOL/USDT:1m", 0, 1000).unwrap(), 2);
    assert_eq!(s.read_tail(SID, 1).unwrap(), vec![candle(120, 2.0)]);
}

#[test]
fn write_lock_held_elsewhere_fails_cleanly_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    s.set_busy_timeout(Duration::from_millis(50)).unwrap();

    let other = raw_connection(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let flush = [batch(SID, vec![candle(60, 1.0)])];
    let err = s.write_batches(&flush).unwrap_err();
    assert_eq!(err.op, "write_batches");
    assert!(err.message.contains("locked"), "{err}");
    // Reads still work under WAL while another connection writes.
    assert_eq!(s.head_time(SID).unwrap(), None);

    other.execute_batch("ROLLBACK").unwrap();
    s.write_batches(&flush).unwrap();
    assert_eq!(s.head_time(SID).unwrap(), Some(60));
}

#[test]
fn newer_schema_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    seed_ten(&mut s);
    s.close().unwrap();
    raw_connection(&path).execute_batch("PRAGMA user_version = 99").unwrap();

    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.op, "open");
    let text = err.to_string();
    assert!(text.contains("schema version 99 is newer"), "{text}");
    assert!(text.contains("upgrade klinegate"), "{text}");
    assert!(text.contains(&path.display().to_string()), "names the file: {text}");
}

#[test]
fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    raw_connection(&path)
        .execute_batch("CREATE TABLE candles (x TEXT); PRAGMA application_id = 42;")
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.message.contains("not a klinegate database"), "{err}");

    // Unstamped but already holding a `candles` table: migration fails, not adopted.
    let other = dir.path().join("legacy.db");
    raw_connection(&other).execute_batch("CREATE TABLE candles (x TEXT);").unwrap();
    let err = SqliteStore::open(&other).unwrap_err();
    assert!(err.message.contains("migration 1"), "{err}");
    assert!(err.message.contains("already exists"), "{err}");
}

#[test]
fn a_file_that_is_not_sqlite_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x5a_u8; 8192]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.op, "open");
    assert!(err.message.contains("garbage.db"), "{err}");
}

// ------------------------------------------- the backends agree, randomly

#[derive(Clone, Debug)]
struct Write(Vec<(usize, Vec<(i64, f64)>)>);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    let candles = prop::collection::vec((-5i64..40, 0.0f64..1e6), 0..12);
    let one_write = prop::collection::vec((0usize..3, candles), 0..4).prop_map(Write);
    prop::collection::vec(one_write, 1..6)
}

const IDS: [&str; 3] = ["a:spot:X/Y:1m", "a:spot:X/Y:5m", "b:futures:X/Y:Y:1m"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn memory_and_sqlite_agree(ops in writes(), since in -6i64..41, start in -6i64..41,
                               end in -6i64..41, limit in 0usize..15) {
        let mut mem = MemoryStore::new();
        let mut sql = SqliteStore::open_in_memory().unwrap();
        for Write(batches) in &ops {
            let batches: Vec<SeriesBatch> = batches
                .iter()
                .map(|(i, cs)| batch(IDS[*i], cs.iter().map(|(t, v)| candle(*t * 60, *v)).collect()))
                .collect();
            mem.write_batches(&batches).unwrap();
            sql.write_batches(&batches).unwrap();
        }
        for id in IDS {
            let (since, start, end) = (since * 60, start * 60, end * 60);
            prop_assert_eq!(mem.head_time(id).unwrap(), sql.head_time(id).unwrap());
            prop_assert_eq!(mem.first_time(id).unwrap(), sql.first_time(id).unwrap());
            prop_assert_eq!(mem.read_tail(id, limit).unwrap(), sql.read_tail(id, limit).unwrap());
            prop_assert_eq!(mem.read_after(id, since, limit).unwrap(),
                            sql.read_after(id, since, limit).unwrap());
            prop_assert_eq!(mem.read_range(id, start, end, limit).unwrap(),
                            sql.read_range(id, start, end, limit).unwrap());
            prop_assert_eq!(mem.count_range(id, start, end).unwrap(),
                            sql.count_range(id, start, end).unwrap());
        }
    }
}

// ------------------------------------------------------------- figures

/// Prints write throughput; asserts nothing about time. Run with
/// `cargo test --release --test store_conformance -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly in release mode"]
fn measure_write_throughput() {
    const SERIES: usize = 6;
    const BATCH: usize = 200;
    const TOTAL: usize = 100_000;
    let ids: Vec<String> = (0..SERIES).map(|i| format!("binance:spot:SYM{i}/USDT:1m")).collect();
    let mut next_time = vec![0i64; SERIES];
    // One flush: BATCH candles spread over SERIES series, each series ascending.
    let flush = |next_time: &mut [i64]| -> Vec<SeriesBatch> {
        (0..SERIES)
            .map(|i| {
                let n = BATCH / SERIES + usize::from(i < BATCH % SERIES);
                let candles = (0..n)
                    .map(|_| {
                        next_time[i] += 60;
                        candle(next_time[i], 50_000.0 + (next_time[i] % 997) as f64)
                    })
                    .collect();
                batch(&ids[i], candles)
            })
            .collect()
    };

    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("bench.db")).unwrap();

    let mut single = Vec::new();
    for _ in 0..50 {
        let batches = flush(&mut next_time);
        let t0 = Instant::now();
        s.write_batches(&batches).unwrap();
        single.push(t0.elapsed());
    }
    single.sort();
    println!(
        "one flush of {BATCH} candles / {SERIES} series (file, WAL): min {:?} median {:?} max {:?}",
        single[0],
        single[single.len() / 2],
        single[single.len() - 1]
    );

    let flushes: Vec<Vec<SeriesBatch>> =
        (0..TOTAL / BATCH).map(|_| flush(&mut next_time)).collect();
    let t0 = Instant::now();
    for batches in &flushes {
        s.write_batches(batches).unwrap();
    }
    let elapsed = t0.elapsed();
    println!(
        "sustained: {TOTAL} candles in {} flushes of {BATCH} in {:?} = {:.0} candles/s",
        TOTAL / BATCH,
        elapsed,
        TOTAL as f64 / elapsed.as_secs_f64()
    );

    let t0 = Instant::now();
    let reads = 1000;
    for i in 0..reads {
        let tail = s.read_tail(&ids[i % SERIES], 500).unwrap();
        assert_eq!(tail.len(), 500);
    }
    println!("read_tail(500) x {reads}: {:?} per call", t0.elapsed() / reads as u32);

    let t0 = Instant::now();
    s.checkpoint().unwrap();
    println!("checkpoint(TRUNCATE) after {} rows: {:?}", TOTAL + 50 * BATCH, t0.elapsed());
}

/// The gap ledger behaves the same in both stores and survives a reopen.
#[test]
fn gap_ledger_put_replace_delete_and_survive_reopen() {
    use klinegate::store::{GapRecord, MemoryStore, SqliteStore, Store};
    let g = |from, attempts| GapRecord {
        series_id: "binance:spot:BTC/USDT:1m".into(),
        from,
        to: from + 600,
        reason: "HTTP 500".into(),
        attempts,
        updated_at: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let mut stores: Vec<Box<dyn Store>> = vec![Box::new(MemoryStore::new()), Box::new(SqliteStore::open(&path).unwrap())];
    if let Some(pg) = pg_host_store::PgHostStore::open("gap_ledger_put_replace_delete_and_survive_reopen") {
        stores.push(Box::new(pg));
    }
    for mut s in stores {
        assert!(s.gaps().unwrap().is_empty());
        s.put_gap(&g(60, 1)).unwrap();
        s.put_gap(&g(120, 2)).unwrap();
        assert_eq!(s.gaps().unwrap(), vec![g(120, 2)], "one entry per series, replaced");
        s.delete_gap("binance:spot:BTC/USDT:1m").unwrap();
        assert!(s.gaps().unwrap().is_empty());
        s.put_gap(&g(180, 3)).unwrap();
    }
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.gaps().unwrap(), vec![g(180, 3)]);
}

/// Every kind of store effect the core emits (job starts with and without
/// derived series and a gap entry, bounds, tail starts, catch-up pages, writes
/// with insert-if-absent batches and ledger changes), offered to the
/// PostgreSQL store host all at once (pipelined), answers exactly as the
/// memory store answers them one by one, in the same order.
#[test]
fn postgres_store_host_answers_every_effect_as_the_memory_store() {
    use klinegate::engine::{Input, Output, StoreOp};
    use klinegate::store::{GapRecord, LedgerChange, StoreQuery, StoreWrite};
    let Some(pg) = pg_host_store::PgHostStore::open("postgres_store_host_answers_every_effect_as_the_memory_store") else {
        return;
    };
    let base = "binance:spot:BTC/USDT:1m";
    let (d5, d1h) = ("binance:spot:BTC/USDT:5m", "binance:spot:BTC/USDT:1h");
    let t0 = 1_700_000_400; // a 5m and 1h boundary
    let minutes: Vec<Candle> = (0..90).map(|i| candle(t0 + i * 60, 100.0 + i as f64)).collect();
    let gap = GapRecord { series_id: base.into(), from: t0 - 600, to: t0 - 60, reason: "HTTP 500".into(), attempts: 2, updated_at: 9 };
    let write = |batches: Vec<SeriesBatch>, keep: Vec<usize>, ledger: Vec<LedgerChange>| StoreWrite { batches, keep_existing: keep, ledger, prune: None, ext: vec![] };
    let job = StoreQuery::JobStart { series_id: base.into(), derived: vec![d5.into(), d1h.into()] };
    let effects: Vec<Output> = vec![
        StoreQuery::Bounds { series_id: base.into() }.into_effect(1),
        job.clone().into_effect(2),
        write(vec![batch(base, minutes[..60].to_vec())], vec![], vec![LedgerChange::Put(gap.clone())]).into_effect(3),
        write(vec![batch(d5, vec![candle(t0, 1.0), candle(t0 + 300, 2.0)])], vec![0], vec![]).into_effect(4),
        // The 5m bucket at t0 is kept, t0 + 600 is new; the base upserts beside it.
        write(vec![batch(base, minutes[60..].to_vec()), batch(d5, vec![candle(t0, 9.0), candle(t0 + 600, 3.0)])], vec![1], vec![])
            .into_effect(5),
        job.into_effect(6),
        StoreQuery::JobStart { series_id: base.into(), derived: vec![] }.into_effect(7),
        StoreQuery::Bounds { series_id: d5.into() }.into_effect(8),
        StoreQuery::TailStart { series_id: base.into(), count: 30 }.into_effect(9),
        StoreQuery::TailStart { series_id: base.into(), count: 1000 }.into_effect(10),
        StoreQuery::After { series_id: base.into(), after: t0 + 600, limit: 7 }.into_effect(11),
        write(vec![], vec![], vec![LedgerChange::Delete(base.into())]).into_effect(12),
        StoreQuery::JobStart { series_id: "binance:spot:ETH/USDT:1m".into(), derived: vec![d5.into()] }.into_effect(13),
        write(vec![], vec![], vec![]).into_effect(14),
    ];
    let mut memory = MemoryStore::new();
    let expected: Vec<Input> = effects.iter().filter_map(|e| klinegate::replay::hosted::answer(&mut memory, e)).collect();
    for e in effects.iter().cloned() {
        pg.runner.offer(e);
    }
    let mut got = Vec::new();
    for _ in 0..2000 {
        if got.len() == expected.len() {
            break;
        }
        pg.runner.turn(std::time::Duration::from_millis(20));
        got.extend(pg.runner.take_answers());
    }
    assert_eq!(got.len(), expected.len(), "answers: {got:#?}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
    // And nothing was left unanswered; the three writes queued back to back
    // (behind the job start) went out as one transaction.
    assert_eq!(pg.runner.outstanding(), 0);
    let stats = pg.runner.host_mut().stats.clone();
    assert_eq!((stats.writes, stats.write_requests), (5, 2), "{stats:?}");
    let _ = StoreOp(0);

    trait IntoEffect {
        fn into_effect(self, op: u64) -> Output;
    }
    impl IntoEffect for StoreQuery {
        fn into_effect(self, op: u64) -> Output {
            Output::ReadStore { op: StoreOp(op), query: self }
        }
    }
    impl IntoEffect for StoreWrite {
        fn into_effect(self, op: u64) -> Output {
            Output::Persist { op: StoreOp(op), write: self }
        }
    }
}
