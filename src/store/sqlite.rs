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
//!
//! Failures are values the engine retries, never a reason to stop: a locked
//! or full database fails the write (the message says which and what to do);
//! a database that cannot be written (file mode, read-only mount) still opens
//! for reading when its schema is current, and every write reopens the
//! connection until the file is writable again. An optional size cap
//! (`max_page_count`) turns "disk full" into a limit the operator chooses.

use super::memory::reject_non_finite;
use super::{GapRecord, SeriesBatch, Store, StoreError, StoreResult};
use crate::model::Candle;
use rusqlite::{params, Connection, DatabaseName, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
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
    // v3. The whole kline (#15 §4): quote volume, trade count, taker-buy
    // base and quote volume, NULL when unknown (`sqlite_ext`).
    super::sqlite_ext::MIGRATION_V3,
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
const SELECT_TAIL_START: &str = "SELECT MIN(candle_time) FROM (SELECT candle_time FROM candles
     WHERE series_id = ?1 ORDER BY candle_time DESC LIMIT ?2)";
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
    busy_timeout: Duration,
    /// The size cap set by [`SqliteStore::set_size_limit`]: re-applied on
    /// every reopen (`max_page_count` belongs to the connection, not the file).
    size_limit: Option<u64>,
    /// The connection cannot write: it was opened read-only, or a write failed
    /// with SQLITE_READONLY. SQLite never upgrades a connection it opened
    /// read-only, so the next write reopens it first (see [`Self::reopen`]).
    reopen_before_write: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating the parent directory and file if missing) the database
    /// at `path`, switch it to WAL, and bring its schema up to date.
    ///
    /// A file this process cannot write (restored with the wrong owner or
    /// mode, a read-only mount) still opens when its schema is current: reads
    /// work, writes fail with a "read-only" error and are retried, and each
    /// retry reopens the file, so the store recovers once it is made writable
    /// ([`SqliteStore::is_read_only`] tells the caller to warn). A read-only
    /// file whose schema needs migrating is refused.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(path, &e))?;
        }
        // No SQLITE_OPEN_URI: a path is always a file name, never a `file:` URI
        // whose query string could change how the database is opened.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = connect_file(path, flags, DEFAULT_BUSY_TIMEOUT)?;
        let reopen_before_write = is_read_only(&conn);
        Ok(SqliteStore {
            conn,
            path: Some(path.to_path_buf()),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            size_limit: None,
            reopen_before_write,
        })
    }

    /// A private database that lives as long as this value (tests, replays).
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        let mut conn = Connection::open_in_memory().map_err(err("open"))?;
        prepare(&mut conn, DEFAULT_BUSY_TIMEOUT, false)?;
        Ok(SqliteStore {
            conn,
            path: None,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            size_limit: None,
            reopen_before_write: false,
        })
    }

    /// The database file, `None` when in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True while the connection cannot write (the file, its directory or
    /// its `-wal`/`-shm` files are not writable by this process).
    pub fn is_read_only(&self) -> bool {
        self.reopen_before_write || is_read_only(&self.conn)
    }

    /// How long a write waits for another connection's lock before failing
    /// with "database is locked" (default 5 s).
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> StoreResult<()> {
        self.conn.busy_timeout(timeout).map_err(err("set_busy_timeout"))?;
        self.busy_timeout = timeout;
        Ok(())
    }

    /// Caps the database at `max_bytes` (`None`: no cap) through SQLite's
    /// `max_page_count`: a write that would grow the file past it fails with
    /// "database is full" and is retried; pages freed by deleted rows are
    /// reused, so deleting rows makes room again. Returns the cap in effect,
    /// in bytes: at least one page, and never below the file's current size
    /// (SQLite does not shrink a database to fit).
    pub fn set_size_limit(&mut self, max_bytes: Option<u64>) -> StoreResult<Option<u64>> {
        let effective = apply_size_limit(&self.conn, max_bytes)?;
        self.size_limit = max_bytes;
        Ok(effective)
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

    /// Before a write: a connection known not to write is replaced by a fresh
    /// one, which is writable if the file has been fixed meanwhile. A failed
    /// reopen is not an error here; the write then fails and reports why.
    fn prepare_write(&mut self) {
        if self.reopen_before_write {
            if let Some(path) = self.path.clone() {
                let _ = self.reopen(&path);
            }
        }
    }

    /// Replaces the connection. The old one is closed FIRST: SQLite shares one
    /// `-shm` mapping between the connections of a process, so a new
    /// connection opened beside a read-only one would stay read-only.
    fn reopen(&mut self, path: &Path) -> StoreResult<()> {
        const OP: &str = "reopen";
        companions_follow_main_file(path);
        let placeholder = Connection::open_in_memory().map_err(err(OP))?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        // Without CREATE: a database that disappeared is not silently replaced
        // by an empty one.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = connect_file(path, flags, self.busy_timeout)?;
        apply_size_limit(&conn, self.size_limit)?;
        self.reopen_before_write = is_read_only(&conn);
        self.conn = conn;
        Ok(())
    }

    /// Turns a failed write into a [`StoreError`] that says what to do, and
    /// marks the connection for a reopen when the database was read-only.
    fn write_failed(&mut self, op: &'static str, at: Option<String>, e: rusqlite::Error) -> StoreError {
        let code = e.sqlite_error_code();
        if code == Some(ErrorCode::ReadOnly) {
            self.reopen_before_write = true;
        }
        let path = self.path.as_deref().map_or_else(|| ":memory:".to_string(), |p| p.display().to_string());
        let why = match code {
            Some(ErrorCode::ReadOnly) => format!(
                "the database is read-only: {path} (or its -wal/-shm files, or its directory) is not \
                 writable by this process; fix the permissions or the mount, the store is reopened \
                 on the next retry ({e})"
            ),
            Some(ErrorCode::DiskFull) => match self.size_limit {
                Some(max) => format!(
                    "the database is full: {path} is at its size limit of {} (--store-max-mb) or the \
                     disk is full; delete old rows or raise the limit ({e})",
                    describe_bytes(max)
                ),
                None => format!("the disk holding {path} is full; free some space ({e})"),
            },
            _ => e.to_string(),
        };
        let message = match at {
            Some(at) => format!("{at}: {why}; nothing was written"),
            None => why,
        };
        StoreError { op, message }
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

fn open_error(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError { op: "open", message: format!("{}: {e}", path.display()) }
}

/// Opens and prepares a connection to the file at `path`. SQLite opens a file
/// it may read but not write read-only without an error; [`prepare`] then
/// leaves it untouched.
fn connect_file(path: &Path, flags: OpenFlags, busy: Duration) -> StoreResult<Connection> {
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))?;
    prepare(&mut conn, busy, true).map_err(|e| {
        let message = match e.op {
            "open" => format!("{}: {}", path.display(), e.message),
            op => format!("{}: {op}: {}", path.display(), e.message),
        };
        StoreError { op: "open", message }
    })?;
    Ok(conn)
}

fn is_read_only(conn: &Connection) -> bool {
    conn.is_readonly(DatabaseName::Main).unwrap_or(true)
}

/// Pragmas, then migrations. WAL must be set outside any transaction. A
/// read-only connection changes nothing: it only checks the schema is current.
fn prepare(conn: &mut Connection, busy: Duration, is_file: bool) -> StoreResult<()> {
    conn.busy_timeout(busy).map_err(err("open"))?;
    // The first statement reads the schema, so a database SQLite cannot read
    // fails here.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(read_error("open"))?;
    conn.pragma_update(None, "foreign_keys", true).map_err(read_error("open"))?;
    if is_read_only(conn) {
        return check_schema_read_only(conn);
    }
    if is_file {
        enable_wal(conn)?;
    }
    migrate(conn)
}

fn enable_wal(conn: &Connection) -> StoreResult<()> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(read_error("open"))?;
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

/// A read-only database is usable as it is only when its schema is the one
/// this build writes; nothing can be migrated without writing.
fn check_schema_read_only(conn: &Connection) -> StoreResult<()> {
    let (version, app_id) = read_schema(conn)?;
    check_ownership(version, app_id)?;
    if version != SCHEMA_VERSION {
        return Err(StoreError {
            op: "open",
            message: format!(
                "the database is read-only and its schema must be upgraded first (from version \
                 {version} to {SCHEMA_VERSION}); make it writable and start again"
            ),
        });
    }
    Ok(())
}

/// `(user_version, application_id)` from the database header.
fn read_schema(conn: &Connection) -> StoreResult<(i64, i64)> {
    let version = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(read_error("open"))?;
    let app_id = conn.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(read_error("open"))?;
    Ok((version, app_id))
}

/// Apply every migration the database lacks, all in one transaction, so a
/// crash mid-upgrade leaves the previous version intact. IMMEDIATE takes
/// the write lock first so two processes opening at once cannot both migrate.
/// A database already current is only read: opening (or reopening) it never
/// waits for another process's write lock.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let (version, app_id) = read_schema(conn)?;
    if version == SCHEMA_VERSION {
        return check_ownership(version, app_id);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err("migrate"))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err("migrate"))?;
    let app_id: i64 = tx.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(err("migrate"))?;
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

/// SQLite's own cap (SQLITE_MAX_PAGE_COUNT): setting it lifts any limit.
const NO_PAGE_LIMIT: u64 = 0xFFFF_FFFE;

/// Sets `max_page_count` from a byte cap; returns the cap in effect in bytes.
fn apply_size_limit(conn: &Connection, max_bytes: Option<u64>) -> StoreResult<Option<u64>> {
    const OP: &str = "set_size_limit";
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0)).map_err(err(OP))?;
    let page_size = u64::try_from(page_size).unwrap_or(0).max(1);
    let pages = match max_bytes {
        Some(bytes) => (bytes / page_size).clamp(1, NO_PAGE_LIMIT),
        None => NO_PAGE_LIMIT,
    };
    let set: i64 = conn
        .pragma_update_and_check(None, "max_page_count", pages as i64, |r| r.get(0))
        .map_err(err(OP))?;
    Ok(max_bytes.map(|_| u64::try_from(set).unwrap_or(0).saturating_mul(page_size)))
}

/// SQLite creates a database's `-wal` and `-shm` files with the main file's
/// mode at that moment. A database opened while its file was read-only
/// therefore gets read-only companions, and they keep the connection
/// read-only after the operator makes the main file writable again. Give
/// them back the write permission the main file now has (best effort: only
/// their owner may; otherwise the write keeps failing with a clear error).
fn companions_follow_main_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(main) = std::fs::metadata(path) else { return };
    let main_mode = main.permissions().mode() & 0o777;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let companion = PathBuf::from(name);
        let Ok(meta) = std::fs::metadata(&companion) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        let missing_write = main_mode & 0o222 & !mode;
        if missing_write != 0 {
            let _ = std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(mode | missing_write));
        }
    }
}

fn describe_bytes(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
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

/// For the reads done at open: a WAL database can only be read once SQLite
/// has created its `-wal` and `-shm` files; in a read-only directory it
/// cannot, and every read fails with SQLITE_READONLY.
fn read_error(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| {
        let message = if e.sqlite_error_code() == Some(ErrorCode::ReadOnly) {
            format!(
                "{e}: cannot read the database; SQLite must be able to create its -wal and -shm \
                 files (its directory is read-only?) — make the directory writable"
            )
        } else {
            e.to_string()
        };
        StoreError { op, message }
    }
}

/// One transaction for every batch; any early return drops `tx`, which rolls
/// back: all batches or none. A failing row names itself.
fn upsert_batches(conn: &mut Connection, batches: &[SeriesBatch]) -> Result<(), (Option<String>, rusqlite::Error)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| (None, e))?;
    {
        let mut upsert = tx.prepare_cached(UPSERT).map_err(|e| (None, e))?;
        for batch in batches {
            for c in &batch.candles {
                upsert
                    .execute(params![batch.series_id, c.candle_time, c.open, c.high, c.low, c.close, c.volume])
                    .map_err(|e| (Some(format!("series {} candle_time {}", batch.series_id, c.candle_time)), e))?;
            }
        }
    }
    tx.commit().map_err(|e| (None, e))
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
    fn write_ext(&mut self, rows: &[super::ExtRows]) -> StoreResult<()> {
        if rows.iter().all(|r| r.rows.is_empty()) {
            return Ok(());
        }
        self.prepare_write();
        super::sqlite_ext::write(&mut self.conn, rows).map_err(|e| self.write_failed("write_ext", None, e))
    }

    fn read_ext(&self, series_id: &str, start: i64, end: i64) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
        super::sqlite_ext::read(&self.conn, series_id, start, end).map_err(err("read_ext"))
    }

    fn prune_before(&mut self, timeframe: &str, before: i64, limit: usize) -> StoreResult<u64> {
        self.prepare_write();
        super::sqlite_prune::prune(&mut self.conn, timeframe, before, limit).map_err(|e| self.write_failed("prune", None, e))
    }

    fn write_batches(&mut self, batches: &[SeriesBatch]) -> StoreResult<()> {
        if batches.iter().all(|b| b.candles.is_empty()) {
            return Ok(()); // nothing to write: don't take the write lock
        }
        reject_non_finite(batches)?;
        self.prepare_write();
        upsert_batches(&mut self.conn, batches).map_err(|(at, e)| self.write_failed("write_batches", at, e))
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

    fn tail_start(&self, series_id: &str, count: usize) -> StoreResult<Option<i64>> {
        const OP: &str = "tail_start";
        let mut stmt = self.conn.prepare_cached(SELECT_TAIL_START).map_err(err(OP))?;
        stmt.query_row(params![series_id, sql_limit(count)], |row| row.get(0)).map_err(err(OP))
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
        self.prepare_write();
        let row = params![g.series_id, g.from, g.to, g.reason, g.attempts, g.updated_at];
        let result = self.conn.prepare_cached(PUT_GAP).and_then(|mut stmt| stmt.execute(row));
        result.map(drop).map_err(|e| self.write_failed("put_gap", None, e))
    }

    fn delete_gap(&mut self, series_id: &str) -> StoreResult<()> {
        self.prepare_write();
        let result = self.conn.prepare_cached(DELETE_GAP).and_then(|mut stmt| stmt.execute(params![series_id]));
        result.map(drop).map_err(|e| self.write_failed("delete_gap", None, e))
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

    fn candles(from: i64, n: i64) -> Vec<Candle> {
        (0..n)
            .map(|k| Candle { candle_time: from + k * 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 })
            .collect()
    }

    fn batch(series_id: &str, from: i64, n: i64) -> Vec<SeriesBatch> {
        vec![SeriesBatch { series_id: series_id.to_string(), candles: candles(from, n) }]
    }

    fn count(conn: &Connection, series_id: &str) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM candles WHERE series_id = ?1", [series_id], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_size_limit_fails_writes_as_full_and_deleted_rows_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut s = SqliteStore::open(&path).unwrap();
        const LIMIT: u64 = 64 << 10;
        assert_eq!(s.set_size_limit(Some(LIMIT)).unwrap(), Some(LIMIT));
        // Fill with another series until the cap refuses a batch.
        let mut written = 0;
        let full = loop {
            match s.write_batches(&batch("binance:spot:FILL/USDT:1m", written * 60, 50)) {
                Ok(()) => written += 50,
                Err(e) => break e,
            }
            assert!(written < 100_000, "the cap never refused a write");
        };
        assert!(full.message.contains("the database is full"), "{full}");
        assert!(full.message.contains("size limit of 65536 bytes") && full.message.contains("--store-max-mb"), "{full}");
        assert!(!s.is_read_only(), "a full database is not a read-only one");
        let other = Connection::open(&path).unwrap();
        assert_eq!(count(&other, "binance:spot:FILL/USDT:1m"), written, "the refused batch left nothing behind");
        let pages: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert!(pages as u64 * 4096 <= LIMIT, "{pages} pages");
        assert!(s.write_batches(&batch("binance:spot:BTC/USDT:1m", 0, 50)).is_err(), "still full");
        // Another process deletes rows: their pages are reused, the file does not grow.
        other.execute("DELETE FROM candles WHERE series_id = 'binance:spot:FILL/USDT:1m'", []).unwrap();
        s.write_batches(&batch("binance:spot:BTC/USDT:1m", 0, 50)).unwrap();
        assert_eq!(count(&other, "binance:spot:BTC/USDT:1m"), 50);
        let after: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert!(after as u64 * 4096 <= LIMIT, "{after} pages");
    }

    #[test]
    fn a_size_limit_is_whole_pages_never_below_the_current_size_and_can_be_lifted() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        s.write_batches(&batch("a:b:C/D:1m", 0, 500)).unwrap();
        let pages: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(s.set_size_limit(Some(1)).unwrap(), Some(pages as u64 * 4096));
        assert_eq!(s.set_size_limit(Some(10 * 4096 + 5)).unwrap(), Some((pages as u64).max(10) * 4096));
        assert_eq!(s.set_size_limit(None).unwrap(), None);
        s.write_batches(&batch("a:b:C/D:1m", 500 * 60, 5000)).unwrap();
        assert_eq!(describe_bytes(2 << 20), "2 MiB");
        assert_eq!(describe_bytes(4096), "4096 bytes");
    }

    #[test]
    fn a_read_only_failure_is_explained_and_the_next_write_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.set_busy_timeout(Duration::from_millis(50)).unwrap();
        s.set_size_limit(Some(1 << 20)).unwrap();
        assert!(!s.is_read_only());
        let readonly = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("attempt to write a readonly database".into()),
        );
        let e = s.write_failed("write_batches", Some("series x candle_time 60".into()), readonly);
        assert!(e.message.starts_with("series x candle_time 60: the database is read-only:"), "{e}");
        assert!(e.message.contains("reopened on the next retry") && e.message.ends_with("nothing was written"), "{e}");
        assert!(s.is_read_only(), "marked for a reopen");
        // The file is writable: the next write reopens and succeeds, keeping the settings.
        s.write_batches(&batch("a:b:C/D:1m", 0, 3)).unwrap();
        assert!(!s.is_read_only());
        assert_eq!(s.read_tail("a:b:C/D:1m", 10).unwrap().len(), 3);
        let busy: i64 = s.conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        let max: i64 = s.conn.query_row("PRAGMA max_page_count", [], |r| r.get(0)).unwrap();
        assert_eq!((busy, max), (50, 256), "busy timeout and size cap survive the reopen");
    }

    #[test]
    fn a_reopen_does_not_wait_for_another_process_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.write_batches(&batch("a:b:C/D:1m", 0, 2)).unwrap();
        s.set_busy_timeout(Duration::from_millis(20)).unwrap();
        s.reopen_before_write = true;
        let locker = Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let e = s.write_batches(&batch("a:b:C/D:1m", 120, 1)).unwrap_err();
        assert!(e.message.contains("locked"), "the reopen succeeded, the write met the lock: {e}");
        assert!(!s.is_read_only());
        assert_eq!(s.read_tail("a:b:C/D:1m", 10).unwrap().len(), 2, "reads still work");
        locker.execute_batch("ROLLBACK").unwrap();
        s.write_batches(&batch("a:b:C/D:1m", 120, 1)).unwrap();
    }

    #[test]
    fn a_reopen_never_creates_a_missing_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.reopen_before_write = true;
        std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
        assert!(s.write_batches(&batch("a:b:C/D:1m", 0, 1)).is_err());
        assert!(!path.exists(), "no empty database appeared in its place");
        assert!(s.is_read_only(), "still waiting for a reopen");
    }

    /// Only meaningful when file modes bind this process (not root).
    #[test]
    fn a_read_only_file_opens_for_reading_and_recovers_once_writable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.write_batches(&batch("a:b:C/D:1m", 0, 2)).unwrap();
        s.checkpoint().unwrap();
        s.close().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            eprintln!("skipping: file modes do not bind this process (running as root)");
            return;
        }
        let mut s = SqliteStore::open(&path).unwrap();
        assert!(s.is_read_only());
        assert_eq!(s.read_tail("a:b:C/D:1m", 10).unwrap().len(), 2, "history is readable");
        let e = s.write_batches(&batch("a:b:C/D:1m", 120, 1)).unwrap_err();
        assert!(e.message.contains("the database is read-only"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        s.write_batches(&batch("a:b:C/D:1m", 120, 1)).unwrap();
        assert!(!s.is_read_only());
        assert_eq!(s.read_tail("a:b:C/D:1m", 10).unwrap().len(), 3);
    }

    #[test]
    fn a_read_only_database_must_already_be_at_the_current_schema() {
        let conn = Connection::open_in_memory().unwrap();
        let e = check_schema_read_only(&conn).unwrap_err();
        assert!(e.message.contains("read-only and its schema must be upgraded first (from version 0 to"), "{e}");
        let current = SqliteStore::open_in_memory().unwrap();
        check_schema_read_only(&current.conn).unwrap();
    }

    #[test]
    fn companions_get_back_the_write_permission_of_the_main_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let (wal, shm) = (dir.path().join("k.db-wal"), dir.path().join("k.db-shm"));
        for p in [&path, &wal, &shm] {
            std::fs::write(p, b"").unwrap();
        }
        set(&path, 0o444);
        set(&wal, 0o400);
        set(&shm, 0o444);
        companions_follow_main_file(&path);
        assert_eq!((mode(&wal), mode(&shm)), (0o400, 0o444), "a read-only main file gives nothing");
        set(&path, 0o664);
        companions_follow_main_file(&path);
        assert_eq!((mode(&wal), mode(&shm)), (0o620, 0o664), "write bits of the main file only");
        std::fs::remove_file(&wal).unwrap();
        companions_follow_main_file(&path); // a missing companion is fine
    }

    #[test]
    fn checkpoint_and_close_on_memory_db_are_ok() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.checkpoint().unwrap();
        s.close().unwrap();
    }
}
