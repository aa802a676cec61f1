//! What `Server::new` does to the store before the engine starts: the size cap
//! and read-only notes for the log, and the freqtrade bootstrap of pinned series
//! that have no stored history. Runs once, before the loop; never after.

use crate::engine::LogLevel;
use crate::cli::run_config::RunConfig;
use crate::store::SqliteStore;
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) const READ_ONLY_NOTE: &str =
    "store is read-only: closed candles will be buffered until it becomes writable (make the database file, its \
     -wal/-shm files and its directory writable by this process; writes are retried with backoff)";

/// Applies `--store-max-mb` and says, as log lines, what the operator should
/// know about the store before the engine starts (a cap, a read-only file).
pub(super) fn store_open_notes(cfg: &RunConfig, store: &mut SqliteStore) -> Result<Vec<(LogLevel, String)>, String> {
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
pub(super) fn store_cannot_ingest(cfg: &RunConfig, store: &SqliteStore) -> bool {
    store.is_read_only() && cfg.engine.supervisor.role != crate::engine::supervisor::Role::Read
}

/// `--freqtrade-datadir`: pinned series with no stored history get the newest
/// freqtrade rows before the engine starts (REST healing fills the rest).
pub(super) fn bootstrap_pins(cfg: &RunConfig, store: &mut SqliteStore) -> Vec<String> {
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
