//! Retention on SQLite: one batch of `Store::prune_before` as ONE
//! transaction. The series are listed by a skip scan of the primary key
//! (one index probe per distinct series, never a table scan), filtered by
//! timeframe, and each loses its oldest rows before the cutoff until the
//! batch's limit is reached — every delete walks the (series_id,
//! candle_time) key from its start, so a batch costs its size plus one probe
//! per series of the timeframe.
//!
//! Owns the SQL; never decides what to prune (the core does).

use rusqlite::{params, Connection, TransactionBehavior};

const LIST_SERIES: &str = "WITH RECURSIVE s(id) AS (
       SELECT MIN(series_id) FROM candles
       UNION ALL
       SELECT (SELECT MIN(series_id) FROM candles WHERE series_id > s.id) FROM s WHERE s.id IS NOT NULL)
     SELECT id FROM s WHERE id IS NOT NULL";

const DELETE_OLDEST: &str = "DELETE FROM candles WHERE series_id = ?1 AND candle_time IN (
       SELECT candle_time FROM candles WHERE series_id = ?1 AND candle_time < ?2
       ORDER BY candle_time ASC LIMIT ?3)";

pub(super) fn prune(conn: &mut Connection, timeframe: &str, before: i64, limit: usize) -> rusqlite::Result<u64> {
    if limit == 0 {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ids: Vec<String> = {
        let mut stmt = tx.prepare_cached(LIST_SERIES)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()?
    };
    let mut left = limit;
    {
        let mut delete = tx.prepare_cached(DELETE_OLDEST)?;
        for id in ids.iter().filter(|id| super::of_timeframe(id, timeframe)) {
            if left == 0 {
                break;
            }
            let n = delete.execute(params![id, before, i64::try_from(left).unwrap_or(i64::MAX)])?;
            left = left.saturating_sub(n);
        }
    }
    tx.commit()?;
    Ok((limit - left) as u64)
}
