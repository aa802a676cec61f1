//! Durable candle store on SQLite (rusqlite, bundled): one connection, WAL
//! journal, a schema this module creates and versions itself, and every
//! flush written as ONE transaction (all batches or none).
//!
//! It owns the connection, the pragmas and the migrations. It must never
//! panic on a database error (every rusqlite error becomes a [`StoreError`]),
//! never leave a partial flush behind, and never silently adopt a schema it
//! does not know (a newer version or a foreign database is refused on open).
//!
//! Durability: `synchronous=NORMAL` under WAL means a commit survives a crash
//! of this process; a power loss may drop the last commits before the next
//! checkpoint, never corrupt the file. That trade buys a flush without fsync.

use super::memory::reject_non_finite;
use super::{GapRecord, SeriesBatch, Store, StoreError, StoreResult};
use crate::model::Candle;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Written to the SQLite header (`PRAGMA application_id`) so that a database
/// belonging to another program is recognised and refused. ASCII "KLNG".
const APPLICATION_ID: i64 = 0x4B4C_4E47;

const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Ordered schema migrations; migration `i` brings the schema to version
/// `i + 1` (kept in `PRAGMA user_version`). Append only; never edit one that
/// has shipped.
const MIGRATIONS: &[&str] = &[
    // v1. WITHOUT ROWID: every read and write goes through the primary key
    // (series_id, candle_time), so clustering rows by it means one b-tree
    // instead of a rowid table plus a PK index — each upsert touches one tree
    // instead of two, each range read walks contiguous leaf pages, and the key
    // is not stored twice. Rows are ~70 bytes, far below the size where
    // SQLite advises against WITHOUT ROWID. The historical schema's extra
    // index on (series_id, candle_time) duplicated the PK and is dropped.
    // Plain CREATE TABLE (no IF NOT EXISTS): an unknown `candles` table in a
    // database without our version stamp is an error, not adopted silently.
    "CREATE TABLE candles (
        series_id   TEXT    NOT NULL,
        candle_time INTEGER NOT NULL,
        open        REAL    NOT NULL,
        high        REAL    NOT NULL,
        low         REAL    NOT NULL,
        close       REAL    NOT NULL,
        volume      REAL    NOT NULL,
        PRIMARY KEY (series_id, candle_time)
    ) WITHOUT ROWID;",
    // v2. The gap ledger: one unhealed range per series, retried until healed.
    "CREATE TABLE gaps (
        series_id  TEXT    NOT NULL PRIMARY KEY,
        from_time  INTEGER NOT NULL,
        to_time    INTEGER NOT NULL,
        reason     TEXT    NOT NULL,
        attempts   INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const PUT_GAP: &str = "INSERT INTO gaps (series_id, from_time, to_time, reason, attempts, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (series_id) DO UPDATE SET from_time = excluded.from_time, to_time = excluded.to_time,
         reason = excluded.reason, attempts = excluded.attempts, updated_at = excluded.updated_at";
const DELETE_GAP: &str = "DELETE FROM gaps WHERE series_id = ?1";
const SELECT_GAPS: &str =
    "SELECT series_id, from_time, to_time, reason, attempts, updated_at FROM gaps ORDER BY series_id";

const UPSERT: &str = "INSERT INTO candles (series_id, candle_time, open, high, low, close, volume)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (series_id, candle_time) DO UPDATE SET
         open = excluded.open, high = excluded.high, low = excluded.low,
         close = excluded.close, volume = excluded.volume";
const SELECT_HEAD: &str = "SELECT MAX(candle_time) FROM candles WHERE series_id = ?1";
const SELECT_FIRST: &str = "SELECT MIN(candle_time) FROM candles WHERE series_id = ?1";
const SELECT_TAIL_DESC: &str = "SELECT candle_time, open, high, low, close, volume FROM candles
     WHERE series_id = ?1 ORDER BY candle_time DESC LIMIT ?2";
const SELECT_AFTER: &str = "SELECT candle_time, open, high, low, close, volume FROM candles
     WHERE series_id = ?1 AND candle_time > ?2 ORDER BY candle_time ASC LIMIT ?3";
const SELECT_RANGE: &str = "SELECT candle_time, open, high, low, close, volume FROM candles
     WHERE series_id = ?1 AND candle_time BETWEEN ?2 AND ?3 ORDER BY candle_time ASC LIMIT ?4";
const COUNT_RANGE: &str =
    "SELECT COUNT(*) FROM candles WHERE series_id = ?1 AND candle_time BETWEEN ?2 AND ?3";

pub struct SqliteStore {
    conn: Connection,
    /// `None` for an in-memory database.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating the parent directory and file if missing) the database
    /// at `path`, switch it to WAL, and bring its schema up to date.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let at = |e: &dyn std::fmt::Display| StoreError {
            op: "open",
            message: format!("{}: {e}", path.display()),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| at(&e))?;
        }
        // No SQLITE_OPEN_URI: a path is always a file name, never a `file:` URI
        // whose query string could change how the database is opened.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| at(&e))?;
        let mut store = SqliteStore { conn, path: Some(path.to_path_buf()) };
        store.prepare(true).map_err(|e| at(&e))?;
        Ok(store)
    }

    /// A private database that lives as long as this value (tests, replays).
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(err("open"))?;
        let mut store = SqliteStore { conn, path: None };
        store.prepare(false)?;
        Ok(store)
    }

    /// The database file, `None` when in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How long a write waits for another connection's lock before failing
    /// with "database is locked" (default 5 s).
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> StoreResult<()> {
        self.conn.busy_timeout(timeout).map_err(err("set_busy_timeout"))
    }

    /// Fold the WAL back into the main file and truncate it (for shutdown, so
    /// the database is a single self-contained file at rest).
    pub fn checkpoint(&self) -> StoreResult<()> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(err("checkpoint"))?;
        if busy != 0 {
            return Err(StoreError {
                op: "checkpoint",
                message: "another connection is using the database; the WAL was not truncated \
                          (harmless, it will be checkpointed later)"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Close the connection, reporting any error (dropping closes silently).
    pub fn close(self) -> StoreResult<()> {
        self.conn.close().map_err(|(_, e)| err("close")(e))
    }

    /// Pragmas, then migrations. WAL must be set outside any transaction.
    fn prepare(&mut self, is_file: bool) -> StoreResult<()> {
        self.conn.busy_timeout(DEFAULT_BUSY_TIMEOUT).map_err(err("open"))?;
        if is_file {
            self.enable_wal()?;
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL").map_err(err("open"))?;
        self.conn.pragma_update(None, "foreign_keys", true).map_err(err("open"))?;
        self.migrate()
    }

    fn enable_wal(&self) -> StoreResult<()> {
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err("open"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError {
                op: "open",
                message: format!(
                    "could not enable WAL journal (got '{mode}'); the file system may not \
                     support it (e.g. a network share) — put the database on a local disk"
                ),
            });
        }
        Ok(())
    }

    /// Apply every migration the database lacks, all in one transaction, so a
    /// crash mid-upgrade leaves the previous version intact. IMMEDIATE takes
    /// the write lock first so two processes opening at once cannot both migrate.
    fn migrate(&mut self) -> StoreResult<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("migrate"))?;
        let version: i64 =
            tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err("migrate"))?;
        let app_id: i64 =
            tx.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(err("migrate"))?;
        check_ownership(version, app_id)?;
        if version == SCHEMA_VERSION {
            return Ok(()); // dropping `tx` rolls back a transaction that changed nothing
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(|e| StoreError {
                op: "migrate",
                message: format!("applying schema migration {}: {e}", index + 1),
            })?;
        }
        // PRAGMA values cannot be bound parameters; both are our own integers.
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(err("migrate"))?;
        tx.commit().map_err(err("migrate"))
    }

    fn query_candles<P: rusqlite::Params>(
        &self,
        op: &'static str,
        sql: &str,
        params: P,
    ) -> StoreResult<Vec<Candle>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err(op))?;
        let rows = stmt.query_map(params, candle_from_row).map_err(err(op))?;
        rows.collect::<Result<Vec<Candle>, _>>().map_err(err(op))
    }

    fn query_time(&self, op: &'static str, sql: &str, series_id: &str) -> StoreResult<Option<i64>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err(op))?;
        // MAX/MIN over no rows yields one row holding NULL.
        let value: Option<Option<i64>> =
            stmt.query_row(params![series_id], |row| row.get(0)).optional().map_err(err(op))?;
        Ok(value.flatten())
    }
}

/// Refuse a database written by a newer klinegate or by another program.
fn check_ownership(version: i64, app_id: i64) -> StoreResult<()> {
    let foreign = app_id != APPLICATION_ID && (app_id != 0 || version != 0);
    if foreign {
        return Err(StoreError {
            op: "open",
            message: format!(
                "not a klinegate database (application_id {app_id:#x}, user_version {version}); \
                 point klinegate at a new file"
            ),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError {
            op: "open",
            message: format!(
                "database schema version {version} is newer than this klinegate supports \
                 ({SCHEMA_VERSION}); upgrade klinegate or use another database file"
            ),
        });
    }
    if version < 0 {
        return Err(StoreError {
            op: "open",
            message: format!("invalid database schema version {version}"),
        });
    }
    Ok(())
}

fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError { op, message: e.to_string() }
}

fn candle_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Candle> {
    Ok(Candle {
        candle_time: row.get(0)?,
        open: row.get(1)?,
        high: row.get(2)?,
        low: row.get(3)?,
        close: row.get(4)?,
        volume: row.get(5)?,
    })
}

/// `LIMIT` takes an i64; anything above `i64::MAX` means "no limit" anyway.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        const OP: &str = "write_batches";
        if batches.iter().all(|b| b.candles.is_empty()) {
            return Ok(()); // nothing to write: don't take the write lock
        }
        reject_non_finite(batches)?;
        // Any early return drops `tx`, which rolls back: all batches or none.
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err(OP))?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(err(OP))?;
            for batch in batches {
                for c in &batch.candles {
                    upsert
                        .execute(params![
                            batch.series_id,
                            c.candle_time,
                            c.open,
                            c.high,
                            c.low,
                            c.close,
                            c.volume
                        ])
                        .map_err(|e| StoreError {
                            op: OP,
                            message: format!(
                                "series {} candle_time {}: {e}; nothing was written",
                                batch.series_id, c.candle_time
                            ),
                        })?;
                }
            }
        }
        tx.commit().map_err(err(OP))
    }

    fn head_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        self.query_time("head_time", SELECT_HEAD, series_id)
    }

    fn first_time(&self, series_id: &str) -> StoreResult<Option<i64>> {
        self.query_time("first_time", SELECT_FIRST, series_id)
    }

    fn read_tail(&self, series_id: &str, limit: usize) -> StoreResult<Vec<Candle>> {
        let mut tail = self.query_candles(
            "read_tail",
            SELECT_TAIL_DESC,
            params![series_id, sql_limit(limit)],
        )?;
        tail.reverse();
        Ok(tail)
    }

    fn read_after(&self, series_id: &str, since: i64, limit: usize) -> StoreResult<Vec<Candle>> {
        self.query_candles("read_after", SELECT_AFTER, params![series_id, since, sql_limit(limit)])
    }

    fn read_range(
        &self,
        series_id: &str,
        start: i64,
        end: i64,
        limit: usize,
    ) -> StoreResult<Vec<Candle>> {
        let params = params![series_id, start, end, sql_limit(limit)];
        self.query_candles("read_range", SELECT_RANGE, params)
    }

    fn count_range(&self, series_id: &str, start: i64, end: i64) -> StoreResult<u64> {
        const OP: &str = "count_range";
        let mut stmt = self.conn.prepare_cached(COUNT_RANGE).map_err(err(OP))?;
        let n: i64 =
            stmt.query_row(params![series_id, start, end], |row| row.get(0)).map_err(err(OP))?;
        // COUNT(*) is never negative; clamp rather than trust a cast.
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn put_gap(&mut self, g: &GapRecord) -> StoreResult<()> {
        const OP: &str = "put_gap";
        let mut stmt = self.conn.prepare_cached(PUT_GAP).map_err(err(OP))?;
        stmt.execute(params![g.series_id, g.from, g.to, g.reason, g.attempts, g.updated_at]).map_err(err(OP))?;
        Ok(())
    }

    fn delete_gap(&mut self, series_id: &str) -> StoreResult<()> {
        const OP: &str = "delete_gap";
        let mut stmt = self.conn.prepare_cached(DELETE_GAP).map_err(err(OP))?;
        stmt.execute(params![series_id]).map_err(err(OP))?;
        Ok(())
    }

    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        const OP: &str = "gaps";
        let mut stmt = self.conn.prepare_cached(SELECT_GAPS).map_err(err(OP))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(GapRecord {
                    series_id: r.get(0)?,
                    from: r.get(1)?,
                    to: r.get(2)?,
                    reason: r.get(3)?,
                    attempts: r.get(4)?,
                    updated_at: r.get(5)?,
                })
            })
            .map_err(err(OP))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err(OP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_store_is_at_current_schema_version() {
        let s = SqliteStore::open_in_memory().unwrap();
        let v: i64 = s.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(s.path(), None);
    }

    #[test]
    fn ownership_rules() {
        assert!(check_ownership(0, 0).is_ok()); // fresh file
        assert!(check_ownership(SCHEMA_VERSION, APPLICATION_ID).is_ok());
        let newer = check_ownership(SCHEMA_VERSION + 1, APPLICATION_ID).unwrap_err();
        assert!(newer.message.contains("newer"), "{newer}");
        let foreign = check_ownership(3, 0).unwrap_err();
        assert!(foreign.message.contains("not a klinegate database"), "{foreign}");
        assert!(check_ownership(0, 0x1234).is_err());
    }

    #[test]
    fn limit_conversion_never_overflows() {
        assert_eq!(sql_limit(0), 0);
        assert_eq!(sql_limit(200), 200);
        assert_eq!(sql_limit(usize::MAX), i64::MAX);
    }

    #[test]
    fn checkpoint_and_close_on_memory_db_are_ok() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.checkpoint().unwrap();
        s.close().unwrap();
    }
}
