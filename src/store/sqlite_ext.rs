//! The whole kline on SQLite (#15 §4): the four extra columns schema
//! migration 3 adds to `candles` (NULL when unknown, so every older row,
//! freqtrade import and healed candle simply has none), written after the
//! candle rows of the same write and read for `fields=full`. An upsert of a
//! candle alone leaves them as they are.
//!
//! Owns this SQL; never decides which candles have fields.

use crate::kline_ext::KlineExt;
use crate::store::ExtRows;
use rusqlite::{params, Connection, TransactionBehavior};

/// Appended to `sqlite::MIGRATIONS` as version 3.
pub(super) const MIGRATION_V3: &str = "ALTER TABLE candles ADD COLUMN quote_volume REAL;
     ALTER TABLE candles ADD COLUMN trades INTEGER;
     ALTER TABLE candles ADD COLUMN taker_buy_base_volume REAL;
     ALTER TABLE candles ADD COLUMN taker_buy_quote_volume REAL;";

const UPDATE_EXT: &str = "UPDATE candles SET quote_volume = ?3, trades = ?4, taker_buy_base_volume = ?5,
       taker_buy_quote_volume = ?6 WHERE series_id = ?1 AND candle_time = ?2";

const SELECT_EXT: &str = "SELECT candle_time, quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume
     FROM candles WHERE series_id = ?1 AND candle_time BETWEEN ?2 AND ?3 AND quote_volume IS NOT NULL
       AND trades IS NOT NULL AND taker_buy_base_volume IS NOT NULL AND taker_buy_quote_volume IS NOT NULL
     ORDER BY candle_time ASC";

pub(super) fn write(conn: &mut Connection, rows: &[ExtRows]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut update = tx.prepare_cached(UPDATE_EXT)?;
        for r in rows {
            for (t, e) in &r.rows {
                let trades = i64::try_from(e.trades).unwrap_or(i64::MAX);
                update.execute(params![
                    r.series_id,
                    t,
                    e.quote_volume,
                    trades,
                    e.taker_buy_base_volume,
                    e.taker_buy_quote_volume
                ])?;
            }
        }
    }
    tx.commit()
}

pub(super) fn read(conn: &Connection, series_id: &str, start: i64, end: i64) -> rusqlite::Result<Vec<(i64, KlineExt)>> {
    let mut stmt = conn.prepare_cached(SELECT_EXT)?;
    let rows = stmt.query_map(params![series_id, start, end], |r| {
        let trades: i64 = r.get(2)?;
        Ok((
            r.get::<_, i64>(0)?,
            KlineExt {
                quote_volume: r.get(1)?,
                trades: u64::try_from(trades).unwrap_or(0),
                taker_buy_base_volume: r.get(3)?,
                taker_buy_quote_volume: r.get(4)?,
            },
        ))
    })?;
    rows.collect()
}
