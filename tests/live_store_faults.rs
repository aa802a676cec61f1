//! Store faults against the real binary. Three ways the SQLite store stops
//! taking writes while closes arrive:
//! - another process holds the write lock;
//! - the database is at its `--store-max-mb` size cap ("disk full");
//! - the database file is read-only (wrong mode after a restore).
//!
//! In each, the server keeps serving (forming candles flow, the loop never
//! stalls), keeps the closed candles (counted as unpersisted, health degraded
//! and naming the error), and once the store recovers persists and publishes
//! them in order, exactly once. Nothing accepted is lost.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::model::Candle;
use klinegate::store::{SeriesBatch, SqliteStore, Store};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::closed_times;
use support::live::{Client, Live};

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
/// Closed candles pushed during each outage.
const CLOSES: i64 = 5;

/// The binary against a fake exchange, with one client subscribed to `S1`.
struct Rig {
    ex: FakeExchange,
    live: Live,
    client: Client,
    /// Open time (ms) of the first close pushed during the outage.
    t0: i64,
}

impl Rig {
    /// `dir` holds the database (`klinegate.db`, possibly prepared). Returns
    /// the rig and the client's catch-up frames.
    fn start(dir: tempfile::TempDir, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> (Rig, Vec<Value>) {
        let ex = FakeExchange::start(FakeOptions::spot());
        let url = ex.ws_url();
        let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "", "--heal", "false"];
        args.extend_from_slice(extra);
        let live = Live::start_with(dir, &args, adjust);
        assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
        let mut client = live.ws();
        client.send(json!({"type":"subscribe","series_id":S1}));
        let catchup = client.until(Duration::from_millis(500), |_| false);
        (Rig { ex, live, client, t0: outage_t0_ms() }, catchup)
    }

    fn wanted_times(&self) -> Vec<i64> {
        (0..CLOSES).map(|k| (self.t0 + k * 60_000) / 1000).collect()
    }

    /// Pushes the closes while the store cannot take them and checks the
    /// outage contract; `error_says` must appear in /health's last store error.
    fn push_closes_during_outage(&mut self, error_says: &str) {
        for k in 0..CLOSES {
            self.ex.push_kline(STREAM, self.t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
            std::thread::sleep(Duration::from_millis(50));
        }
        // The loop keeps serving while the store fails: a forming update arrives
        // (the wait only bounds a hang; that it arrives at all, before any close
        // is published, is the check).
        self.ex.push_kline(STREAM, self.t0 + CLOSES * 60_000, 1.0, 2.0, 0.5, 1.6, 1.0, false);
        let during = self.client.until(3 * SEC, |f| f["type"] == "candle_forming");
        assert!(during.iter().any(|f| f["type"] == "candle_forming"), "forming flows during the outage: {during:?}");
        assert!(closed_times(&during).is_empty(), "nothing published before it is persisted: {during:?}");
        // The flush (at most --flush-ms later) fails: counted, kept, reported.
        assert!(wait_for(5 * SEC, || write_errors(&self.live) >= 1.0), "store errors counted");
        let reported = || self.live.get_json("/health")["store"]["last_error"].as_str().is_some_and(|e| e.contains(error_says));
        assert!(wait_for(5 * SEC, reported), "health names the error: {}", self.live.get_json("/health"));
        let health = self.live.get_json("/health");
        assert_eq!(health["status"], "degraded", "{health}");
        assert_eq!(health["store"]["ok"], false, "{health}");
        assert_eq!(health["store"]["unpersisted_candles"], CLOSES, "{health}");
    }

    /// The store is back: the kept closes are persisted, then published in
    /// order and exactly once; health is clean again.
    fn assert_recovered(&mut self) {
        let want = self.wanted_times();
        let last = *want.last().unwrap();
        let after = self.client.until(15 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == last);
        assert_eq!(closed_times(&after), want, "{after:?}");
        let more = self.client.until(Duration::from_millis(700), |_| false);
        assert!(closed_times(&more).is_empty(), "published exactly once: {more:?}");
        let conn = rusqlite::Connection::open(self.live.db_path()).unwrap();
        let stored: Vec<i64> = conn
            .prepare("SELECT candle_time FROM candles WHERE series_id = ?1 AND candle_time >= ?2 ORDER BY candle_time")
            .unwrap()
            .query_map(rusqlite::params![S1, want[0]], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, want, "nothing accepted was lost");
        let clean = || {
            let h = self.live.get_json("/health");
            h["store"]["ok"] == true && h["store"]["last_error"].is_null() && h["store"]["unpersisted_candles"] == 0
        };
        assert!(wait_for(5 * SEC, clean), "health recovers: {}", self.live.get_json("/health"));
    }
}

/// Ten minutes ago, on a minute boundary: closed, recent, no heal needed.
fn outage_t0_ms() -> i64 {
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now_s / 60 * 60 - 600) * 1000
}

fn write_errors(live: &Live) -> f64 {
    support::live::metric_value(&live.get("/metrics").1, "klinegate_store_write_errors_total").unwrap_or(0.0)
}

fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `n` one-minute candles of `series` from `from_s`, shaped like the pushed
/// closes (same values, so rows of either series take the same space).
fn batch(series: &str, from_s: i64, n: i64) -> Vec<SeriesBatch> {
    let candles = (0..n)
        .map(|k| Candle { candle_time: from_s + k * 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 })
        .collect();
    vec![SeriesBatch { series_id: series.to_string(), candles }]
}

#[test]
fn a_locked_store_keeps_closes_and_persists_them_when_it_recovers() {
    let (mut rig, _) = Rig::start(tempfile::tempdir().unwrap(), &[], |_| {});
    // Another process takes the write lock.
    let locker = rusqlite::Connection::open(rig.live.db_path()).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    rig.push_closes_during_outage("database is locked");
    // The lock goes away.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    rig.assert_recovered();
}

/// Same length as `S1` and sorting before it: the pushed rows go to the end
/// of the b-tree, where the filler left no room for one more such row.
const FILLER: &str = "binance:spot:AAA/USDT:1m";
const CAP_MB: u64 = 1;

/// Fills the database with `FILLER` rows up to the cap, one row at a time at
/// the end, so no row like the pushed ones fits without a new page.
fn fill_to_the_cap(db: &Path, probe_s: i64) {
    let mut store = SqliteStore::open(db).unwrap();
    store.set_size_limit(Some(CAP_MB << 20)).unwrap();
    let mut next = 1_000_000_000;
    for step in [500, 1] {
        while store.write_batches(&batch(FILLER, next, step)).is_ok() {
            next += step * 60;
        }
    }
    let full = store.write_batches(&batch(S1, probe_s, 1)).expect_err("precondition: the cap leaves no room");
    assert!(full.message.contains("the database is full"), "{full}");
    store.checkpoint().unwrap();
    store.close().unwrap();
}

#[test]
fn a_store_at_its_size_cap_keeps_closes_and_persists_them_when_rows_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("klinegate.db");
    fill_to_the_cap(&db, outage_t0_ms() / 1000);
    let cap = (CAP_MB << 20).to_string();
    let (mut rig, _) = Rig::start(dir, &["--store-max-mb", &CAP_MB.to_string()], |_| {});
    assert!(rig.live.wait_log(&format!("store_size_limit requested_bytes={cap} max_bytes={cap}"), 5 * SEC).is_some());
    rig.push_closes_during_outage("the database is full");
    let health = rig.live.get_json("/health");
    assert!(health["store"]["last_error"].as_str().unwrap().contains("size limit of 1 MiB"), "{health}");
    // Another process deletes old rows: their pages are reused, the file stays under the cap.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute("DELETE FROM candles WHERE series_id = ?1", [FILLER]).unwrap();
    rig.assert_recovered();
    let pages: u64 = other.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let page_size: u64 = other.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert!(pages * page_size <= CAP_MB << 20, "{pages} pages of {page_size} bytes");
}

/// The account the server runs as when the test runs as root (file modes do
/// not bind root, so a read-only file needs an unprivileged server).
const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Whether a user other than the owner may run `bin`: it and every directory
/// above it must be executable by others.
fn runnable_by_others(bin: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    bin.ancestors().all(|p| p.as_os_str().is_empty() || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_read_only_store_serves_history_keeps_closes_and_persists_them_once_writable() {
    let as_nobody = running_as_root();
    let bin = Path::new(env!("CARGO_BIN_EXE_klinegate"));
    if as_nobody && !runnable_by_others(bin) {
        eprintln!(
            "skipping: running as root, so the server must run as uid {NOBODY} for a read-only file to bind it, \
             but {} (or a directory above it) is not executable by others",
            bin.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("klinegate.db");
    // A current database with some history, closed cleanly (no -wal/-shm left).
    let history_from = outage_t0_ms() / 1000 - 3 * 60;
    let mut store = SqliteStore::open(&db).unwrap();
    store.write_batches(&batch(S1, history_from, 3)).unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();
    if as_nobody {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        std::os::unix::fs::chown(&db, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    set_mode(&db, 0o444);
    let as_user = move |cmd: &mut Command| {
        if as_nobody {
            use std::os::unix::process::CommandExt;
            cmd.uid(NOBODY).gid(NOBODY);
        }
    };
    let (mut rig, catchup) = Rig::start(dir, &[], as_user);
    // It starts, says why it is degraded, and serves the history it can read.
    assert!(rig.live.wait_log("store_read_only", 5 * SEC).is_some(), "a warning at start: {:?}", rig.live.seen_logs);
    let health = rig.live.get_json("/health");
    assert_eq!((health["status"].clone(), health["store"]["ok"].clone()), (json!("degraded"), json!(false)), "{health}");
    assert!(health["store"]["last_error"].as_str().unwrap().contains("store is read-only"), "{health}");
    let history: Vec<i64> = (0..3).map(|k| history_from + k * 60).collect();
    assert_eq!(closed_times(&catchup), history, "catch-up read from the read-only store: {catchup:?}");
    let candles = rig.live.get_json(&format!("/api/market/candles?series_id={}", S1.replace(':', "%3A").replace('/', "%2F")));
    assert_eq!(candles["candles"].as_array().map(Vec::len), Some(3), "{candles}");

    rig.push_closes_during_outage("the database is read-only");
    // The operator fixes the file's mode (only the file: the -wal/-shm files
    // SQLite created read-only beside it are the server's to fix).
    set_mode(&rig.live.db_path(), 0o644);
    rig.assert_recovered();
}
