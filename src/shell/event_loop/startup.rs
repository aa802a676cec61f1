//! What `Server::new` does to the store before the engine starts: opens it
//! (SQLite: the size cap and read-only notes for the log, and the freqtrade
//! bootstrap of pinned series that have no stored history; PostgreSQL: the
//! host's address and the store host, which connects on the loop). Runs
//! once, before the loop; never after.

use crate::cli::run_config::RunConfig;
use crate::engine::LogLevel;
use crate::shell::store_host::{pg::PG_TOKEN, PgHost, StoreHost};
use crate::shell::timed_store::{StoreStats, TimedStore};
use crate::store::postgres::PgConfig;
use crate::store::SqliteStore;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a store write waits for another process's lock.
const STORE_BUSY_TIMEOUT: Duration = Duration::from_millis(50);

/// The store host and what the loop logs and shows about it at start.
pub(super) struct OpenedStore {
    pub host: StoreHost,
    /// Write figures of a synchronous store (PostgreSQL keeps its own).
    pub stats: Rc<RefCell<StoreStats>>,
    pub notes: Vec<(LogLevel, String)>,
    pub read_only: Option<String>,
    pub bootstrapped: Vec<String>,
}

pub(super) fn open_sqlite(cfg: &RunConfig) -> Result<OpenedStore, String> {
    let mut store = SqliteStore::open(&cfg.db).map_err(|e| format!("--db {}: {e}", cfg.db.display()))?;
    let notes = store_open_notes(cfg, &mut store)?;
    let read_only = store_cannot_ingest(cfg, &store).then(|| READ_ONLY_NOTE.to_string());
    let bootstrapped = bootstrap_pins(cfg, &mut store);
    // One thread serves everything: a write must not wait seconds for another
    // process's lock. A locked store fails fast; the engine keeps the batch
    // and retries with backoff.
    store.set_busy_timeout(STORE_BUSY_TIMEOUT).map_err(|e| format!("--db {}: {e}", cfg.db.display()))?;
    let (store, stats) = TimedStore::new(store);
    if let Some(why) = &read_only {
        stats.borrow_mut().mark_failing(why.clone());
    }
    Ok(OpenedStore { host: StoreHost::new(Box::new(store)), stats, notes, read_only, bootstrapped })
}

/// PostgreSQL: resolves the host once (before the loop; an IP literal or
/// `localhost` needs no DNS server) and creates the store host. The server
/// need not be up: the host connects on the loop and retries with backoff
/// (klinegate starts degraded, see `store_host::pg`).
pub(super) fn open_postgres(cfg: &RunConfig, pg: &PgConfig) -> Result<OpenedStore, String> {
    use std::net::ToSocketAddrs;
    let addr = (pg.host.as_str(), pg.port)
        .to_socket_addrs()
        .map_err(|e| format!("--store-url {pg}: cannot resolve {}: {e}", pg.host))?
        .next()
        .ok_or_else(|| format!("--store-url {pg}: {} resolves to no address", pg.host))?;
    let host = PgHost::new(pg.clone(), addr, PG_TOKEN, Instant::now()).map_err(|e| format!("--store-url {pg}: {e}"))?;
    let mut notes = vec![(LogLevel::Info, format!("store_postgres url={pg} address={addr}"))];
    if cfg.store_max_bytes.is_some() {
        notes.push((LogLevel::Warn, "store_size_limit_ignored note=\"--store-max-mb applies to SQLite only\"".to_string()));
    }
    if cfg.freqtrade_datadir.is_some() {
        notes.push((LogLevel::Warn, "freqtrade_bootstrap_skipped note=\"--freqtrade-datadir bootstraps SQLite only\"".to_string()));
    }
    let stats = Rc::new(RefCell::new(StoreStats { last_write_ok: true, ..StoreStats::default() }));
    Ok(OpenedStore { host: StoreHost::Pg(Box::new(host)), stats, notes, read_only: None, bootstrapped: Vec::new() })
}

const READ_ONLY_NOTE: &str =
    "store is read-only: closed candles will be buffered until it becomes writable (make the database file, its \
     -wal/-shm files and its directory writable by this process; writes are retried with backoff)";

/// Applies `--store-max-mb` and says, as log lines, what the operator should
/// know about the store before the engine starts (a cap, a read-only file).
fn store_open_notes(cfg: &RunConfig, store: &mut SqliteStore) -> Result<Vec<(LogLevel, String)>, String> {
    let mut notes = Vec::new();
    let cap = store.set_size_limit(cfg.store_max_bytes).map_err(|e| format!("--store-max-mb: {e}"))?;
    if let (Some(asked), Some(cap)) = (cfg.store_max_bytes, cap) {
        let (level, note) = if cap > asked {
            (LogLevel::Warn, " note=\"the database is already larger: capped at its current size\"")
        } else {
            (LogLevel::Info, "")
        };
        notes.push((level, format!("store_size_limit requested_bytes={asked} max_bytes={cap}{note}")));
    }
    if store_cannot_ingest(cfg, store) {
        notes.push((LogLevel::Warn, format!("store_read_only path={:?} note={READ_ONLY_NOTE:?}", cfg.db.display().to_string())));
    }
    Ok(notes)
}

/// A read-only store is a fault only for a process that ingests.
fn store_cannot_ingest(cfg: &RunConfig, store: &SqliteStore) -> bool {
    store.is_read_only() && cfg.engine.supervisor.role != crate::engine::supervisor::Role::Read
}

/// `--freqtrade-datadir`: pinned series with no stored history get the newest
/// freqtrade rows before the engine starts (REST healing fills the rest).
fn bootstrap_pins(cfg: &RunConfig, store: &mut SqliteStore) -> Vec<String> {
    use crate::store::Store;
    let Some(dir) = cfg.freqtrade_datadir.as_deref() else { return Vec::new() };
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut lines = Vec::new();
    for pin in &cfg.settings.pins {
        let Ok(id) = crate::model::SeriesId::parse(pin) else { continue };
        if !matches!(store.head_time(id.as_str()), Ok(None)) {
            continue;
        }
        let limit = cfg.settings.heal_first_visit_candles.max(1);
        let line = match crate::bootstrap::bootstrap_series_closed_by(dir, &id, store, limit, Some(now_s)) {
            Ok(n) => format!("freqtrade_bootstrap series_id={id} rows={n}"),
            Err(e) => format!("freqtrade_bootstrap_failed series_id={id} error={:?}", e.to_string()),
        };
        lines.push(line);
    }
    lines
}
