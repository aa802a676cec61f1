//! The store's operations on PostgreSQL as request builders and answer
//! decoders, one pair per `Store` method, with the same semantics (pinned by
//! `tests/pg_store.rs`, the conformance cases of `tests/store_conformance.rs`).
//!
//! Owns the SQL and the mapping of rows to [`Candle`] / [`GapRecord`]. It
//! never sends anything (the caller submits the [`Request`] to its
//! connection and hands the answer back) and never panics on a row.
//!
//! A flush is ONE statement (`INSERT … SELECT FROM unnest(arrays) ON
//! CONFLICT DO UPDATE`), so it is one round trip and all-or-nothing whatever
//! its size. PostgreSQL refuses to update one row twice in one statement, so
//! the rows are first reduced to the last write of each (series, time) —
//! the same "later occurrence wins" rule as the other backends — and sorted
//! by key, which also makes concurrent writers lock rows in one order.

use super::conn::{col, Answer, Param, Request, ResultSet, Statement};
use super::schema::Schema;
use crate::model::Candle;
use crate::store::memory::reject_non_finite;
use crate::store::{GapRecord, SeriesBatch, StoreError, StoreResult};
use std::collections::BTreeMap;

fn limit(n: usize) -> Param {
    Param::I64(i64::try_from(n).unwrap_or(i64::MAX))
}

fn one(sql: String, params: Vec<Param>) -> Request {
    Request::Extended(vec![Statement::new(sql, params)])
}

/// The upsert of every batch in one statement; `None` when there is nothing
/// to write (no request needed). Non-finite values refuse the whole write.
pub fn write_batches(s: &Schema, batches: &[SeriesBatch]) -> StoreResult<Option<Request>> {
    reject_non_finite(batches)?;
    let mut last: BTreeMap<(&str, i64), &Candle> = BTreeMap::new();
    for b in batches {
        for c in &b.candles {
            last.insert((b.series_id.as_str(), c.candle_time), c);
        }
    }
    if last.is_empty() {
        return Ok(None);
    }
    let n = last.len();
    let (mut ids, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut cols: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(n));
    for ((sid, t), c) in last {
        ids.push(sid.to_string());
        times.push(t);
        for (v, x) in cols.iter_mut().zip([c.open, c.high, c.low, c.close, c.volume]) {
            v.push(x);
        }
    }
    let [o, h, l, cl, v] = cols;
    let sql = format!(
        "INSERT INTO {} (series_id, candle_time, open, high, low, close, volume)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[])
         ON CONFLICT (series_id, candle_time) DO UPDATE SET
           open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
           close = EXCLUDED.close, volume = EXCLUDED.volume",
        s.table("candles")
    );
    let params = vec![
        Param::TextArray(ids),
        Param::I64Array(times),
        Param::F64Array(o),
        Param::F64Array(h),
        Param::F64Array(l),
        Param::F64Array(cl),
        Param::F64Array(v),
    ];
    Ok(Some(one(sql, params)))
}

/// The insert-if-absent of one batch: rows already stored stay as they are;
/// the statement returns the `candle_time` of each row it DID insert, so the
/// caller knows which ones were kept (`StoreWrite::keep_existing`). `None`
/// when the batch is empty. Non-finite values refuse the write.
pub fn insert_absent(s: &Schema, batch: &SeriesBatch) -> StoreResult<Option<Statement>> {
    reject_non_finite(std::slice::from_ref(batch))?;
    if batch.candles.is_empty() {
        return Ok(None);
    }
    let n = batch.candles.len();
    let mut times = Vec::with_capacity(n);
    let mut cols: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(n));
    for c in &batch.candles {
        times.push(c.candle_time);
        for (v, x) in cols.iter_mut().zip([c.open, c.high, c.low, c.close, c.volume]) {
            v.push(x);
        }
    }
    let [o, h, l, cl, v] = cols;
    let sql = format!(
        "INSERT INTO {} (series_id, candle_time, open, high, low, close, volume)
         SELECT $1, t.* FROM unnest($2::int8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[]) AS t
         ON CONFLICT (series_id, candle_time) DO NOTHING RETURNING candle_time",
        s.table("candles")
    );
    let params = vec![
        Param::Text(batch.series_id.clone()),
        Param::I64Array(times),
        Param::F64Array(o),
        Param::F64Array(h),
        Param::F64Array(l),
        Param::F64Array(cl),
        Param::F64Array(v),
    ];
    Ok(Some(Statement::new(sql, params)))
}

/// The whole kline's extra fields of stored candles (`Store::write_ext`) as
/// one statement; rows the table does not hold are skipped. `None` when
/// there is nothing to write.
pub fn write_ext(s: &Schema, rows: &[crate::store::ExtRows]) -> Option<Statement> {
    let (mut ids, mut times, mut trades) = (Vec::new(), Vec::new(), Vec::new());
    let (mut q, mut v, mut qq) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        for (t, e) in &r.rows {
            ids.push(r.series_id.clone());
            times.push(*t);
            q.push(e.quote_volume);
            trades.push(i64::try_from(e.trades).unwrap_or(i64::MAX));
            v.push(e.taker_buy_base_volume);
            qq.push(e.taker_buy_quote_volume);
        }
    }
    if ids.is_empty() {
        return None;
    }
    let sql = format!(
        "UPDATE {} AS c SET quote_volume = u.q, trades = u.n, taker_buy_base_volume = u.v, taker_buy_quote_volume = u.qq
         FROM unnest($1::text[], $2::int8[], $3::float8[], $4::int8[], $5::float8[], $6::float8[]) AS u(sid, ct, q, n, v, qq)
         WHERE c.series_id = u.sid AND c.candle_time = u.ct",
        s.table("candles")
    );
    let params = vec![
        Param::TextArray(ids),
        Param::I64Array(times),
        Param::F64Array(q),
        Param::I64Array(trades),
        Param::F64Array(v),
        Param::F64Array(qq),
    ];
    Some(Statement::new(sql, params))
}

/// The extra fields known for `start <= candle_time <= end`, ascending;
/// decode with [`decode_ext`].
pub fn read_ext(s: &Schema, series_id: &str, start: i64, end: i64) -> Request {
    let sql = format!(
        "SELECT candle_time, quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume FROM {}
         WHERE series_id = $1 AND candle_time BETWEEN $2 AND $3 AND quote_volume IS NOT NULL AND trades IS NOT NULL
           AND taker_buy_base_volume IS NOT NULL AND taker_buy_quote_volume IS NOT NULL ORDER BY candle_time ASC",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), Param::I64(start), Param::I64(end)])
}

pub fn decode_ext(answer: Answer) -> StoreResult<Vec<(i64, crate::kline_ext::KlineExt)>> {
    const OP: &str = "read_ext";
    let set = first_set(OP, answer)?;
    let mut out = Vec::with_capacity(set.rows.len());
    for row in &set.rows {
        let cell = |i: usize| row.get(i).cloned().flatten();
        let null = || fail(OP)("NULL or missing column".to_string());
        let f = |i: usize| col::f64(&cell(i)).map_err(fail(OP))?.ok_or_else(null);
        let n = |i: usize| col::i64(&cell(i)).map_err(fail(OP))?.ok_or_else(null);
        out.push((
            n(0)?,
            crate::kline_ext::KlineExt {
                quote_volume: f(1)?,
                trades: u64::try_from(n(2)?).unwrap_or(0),
                taker_buy_base_volume: f(3)?,
                taker_buy_quote_volume: f(4)?,
            },
        ));
    }
    Ok(out)
}

/// One retention batch (`Store::prune_before`): the series are listed by a
/// skip scan of the primary key (one probe per distinct series), those of
/// the timeframe lose their oldest rows before the cutoff, at most
/// `limit` in all. Returns one row per candle deleted.
pub fn prune(s: &Schema, p: &crate::store::Prune) -> Request {
    let c = s.table("candles");
    let sql = format!(
        "WITH RECURSIVE ids(id) AS (
           (SELECT series_id FROM {c} ORDER BY series_id LIMIT 1)
           UNION ALL
           SELECT (SELECT series_id FROM {c} WHERE series_id > ids.id ORDER BY series_id LIMIT 1)
           FROM ids WHERE ids.id IS NOT NULL),
         v AS (
           SELECT x.series_id, x.candle_time FROM ids CROSS JOIN LATERAL (
             SELECT series_id, candle_time FROM {c}
             WHERE series_id = ids.id AND candle_time < $2 ORDER BY candle_time LIMIT $3) AS x
           WHERE ids.id IS NOT NULL AND right(ids.id, length($1::text)) = $1::text
           LIMIT $3)
         DELETE FROM {c} AS d USING v
         WHERE d.series_id = v.series_id AND d.candle_time = v.candle_time RETURNING 1"
    );
    one(sql, vec![Param::Text(format!(":{}", p.timeframe)), Param::I64(p.before), limit(p.limit)])
}

/// The open time of the oldest of the newest `n` rows (where `read_tail(n)`
/// starts); decode with [`decode_opt_time`].
pub fn tail_start(s: &Schema, series_id: &str, n: usize) -> Request {
    let sql = format!(
        "SELECT MIN(candle_time) FROM (SELECT candle_time FROM {} WHERE series_id = $1 \
         ORDER BY candle_time DESC LIMIT $2) AS tail",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), limit(n)])
}

/// The statements of several single-statement requests as ONE request: one
/// Sync, so they run in one transaction and come back as one answer with a
/// result set per statement, in order.
pub fn together(requests: Vec<Request>) -> Request {
    let mut stmts = Vec::new();
    for r in requests {
        match r {
            Request::Extended(s) => stmts.extend(s),
            Request::Simple(sql) => stmts.push(Statement::new(sql, vec![])),
        }
    }
    Request::Extended(stmts)
}

/// Splits a multi-statement answer into one single-set answer per
/// statement, for the decoders above; an error fails every part.
pub fn split(answer: Answer, parts: usize) -> Vec<Answer> {
    match answer {
        Ok(sets) => {
            let mut out: Vec<Answer> = sets.into_iter().map(|s| Ok(vec![s])).collect();
            out.resize_with(parts.max(out.len()), || Ok(Vec::new()));
            out
        }
        Err(e) => vec![Err(e); parts],
    }
}

pub fn head_time(s: &Schema, series_id: &str) -> Request {
    let sql = format!("SELECT MAX(candle_time) FROM {} WHERE series_id = $1", s.table("candles"));
    one(sql, vec![Param::Text(series_id.to_string())])
}

pub fn first_time(s: &Schema, series_id: &str) -> Request {
    let sql = format!("SELECT MIN(candle_time) FROM {} WHERE series_id = $1", s.table("candles"));
    one(sql, vec![Param::Text(series_id.to_string())])
}

const COLS: &str = "candle_time, open, high, low, close, volume";

/// The last `n` rows; decode with [`decode_candles`]`(…, true)` (they come newest first).
pub fn read_tail(s: &Schema, series_id: &str, n: usize) -> Request {
    let sql = format!(
        "SELECT {COLS} FROM {} WHERE series_id = $1 ORDER BY candle_time DESC LIMIT $2",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), limit(n)])
}

pub fn read_after(s: &Schema, series_id: &str, since: i64, n: usize) -> Request {
    let sql = format!(
        "SELECT {COLS} FROM {} WHERE series_id = $1 AND candle_time > $2 ORDER BY candle_time ASC LIMIT $3",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), Param::I64(since), limit(n)])
}

pub fn read_range(s: &Schema, series_id: &str, start: i64, end: i64, n: usize) -> Request {
    let sql = format!(
        "SELECT {COLS} FROM {} WHERE series_id = $1 AND candle_time BETWEEN $2 AND $3 \
         ORDER BY candle_time ASC LIMIT $4",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), Param::I64(start), Param::I64(end), limit(n)])
}

pub fn count_range(s: &Schema, series_id: &str, start: i64, end: i64) -> Request {
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE series_id = $1 AND candle_time BETWEEN $2 AND $3",
        s.table("candles")
    );
    one(sql, vec![Param::Text(series_id.to_string()), Param::I64(start), Param::I64(end)])
}

pub fn put_gap(s: &Schema, g: &GapRecord) -> Request {
    let sql = format!(
        "INSERT INTO {} (series_id, from_time, to_time, reason, attempts, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (series_id) DO UPDATE SET from_time = EXCLUDED.from_time, to_time = EXCLUDED.to_time,
           reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, updated_at = EXCLUDED.updated_at",
        s.table("klinegate_gaps")
    );
    let attempts = i32::try_from(g.attempts).unwrap_or(i32::MAX);
    one(
        sql,
        vec![
            Param::Text(g.series_id.clone()),
            Param::I64(g.from),
            Param::I64(g.to),
            Param::Text(g.reason.clone()),
            Param::I32(attempts),
            Param::I64(g.updated_at),
        ],
    )
}

pub fn delete_gap(s: &Schema, series_id: &str) -> Request {
    let sql = format!("DELETE FROM {} WHERE series_id = $1", s.table("klinegate_gaps"));
    one(sql, vec![Param::Text(series_id.to_string())])
}

pub fn gaps(s: &Schema) -> Request {
    let sql = format!(
        "SELECT series_id, from_time, to_time, reason, attempts, updated_at FROM {} ORDER BY series_id COLLATE \"C\"",
        s.table("klinegate_gaps")
    );
    one(sql, vec![])
}

// ------------------------------------------------------------- decoders

fn fail(op: &'static str) -> impl Fn(String) -> StoreError {
    move |message| StoreError { op, message }
}

fn sets(op: &'static str, answer: Answer) -> StoreResult<Vec<ResultSet>> {
    answer.map_err(|e| StoreError { op, message: format!("postgres: {e}") })
}

fn first_set(op: &'static str, answer: Answer) -> StoreResult<ResultSet> {
    sets(op, answer)?.into_iter().next().ok_or_else(|| fail(op)("postgres sent no result".to_string()))
}

/// Any answer that only has to succeed (upsert, gap writes).
pub fn decode_done(op: &'static str, answer: Answer) -> StoreResult<()> {
    sets(op, answer).map(|_| ())
}

/// `MAX`/`MIN`: one row, one nullable int8.
pub fn decode_opt_time(op: &'static str, answer: Answer) -> StoreResult<Option<i64>> {
    let set = first_set(op, answer)?;
    match set.rows.first().and_then(|r| r.first()) {
        Some(v) => col::i64(v).map_err(fail(op)),
        None => Ok(None),
    }
}

pub fn decode_count(op: &'static str, answer: Answer) -> StoreResult<u64> {
    let set = first_set(op, answer)?;
    let n = set.rows.first().and_then(|r| r.first()).map(col::i64).transpose().map_err(fail(op))?;
    Ok(n.flatten().map_or(0, |n| n.max(0) as u64))
}

/// Candle rows; `newest_first` rows are reversed to ascending.
pub fn decode_candles(op: &'static str, answer: Answer, newest_first: bool) -> StoreResult<Vec<Candle>> {
    let set = first_set(op, answer)?;
    let mut out = Vec::with_capacity(set.rows.len());
    for row in &set.rows {
        let need = |i: usize| -> StoreResult<&Option<bytes::Bytes>> {
            row.get(i).ok_or_else(|| fail(op)(format!("row has {} columns, expected 6", row.len())))
        };
        let f = |i: usize| -> StoreResult<f64> {
            col::f64(need(i)?).map_err(fail(op))?.ok_or_else(|| fail(op)("NULL in a candle column".to_string()))
        };
        let t = col::i64(need(0)?).map_err(fail(op))?.ok_or_else(|| fail(op)("NULL candle_time".to_string()))?;
        out.push(Candle { candle_time: t, open: f(1)?, high: f(2)?, low: f(3)?, close: f(4)?, volume: f(5)? });
    }
    if newest_first {
        out.reverse();
    }
    Ok(out)
}

pub fn decode_gaps(answer: Answer) -> StoreResult<Vec<GapRecord>> {
    const OP: &str = "gaps";
    let set = first_set(OP, answer)?;
    let mut out = Vec::with_capacity(set.rows.len());
    for row in &set.rows {
        let get = |i: usize| row.get(i).cloned().flatten();
        let null = || fail(OP)("NULL or missing column in the gap ledger".to_string());
        out.push(GapRecord {
            series_id: col::text(&get(0)).map_err(fail(OP))?.ok_or_else(null)?,
            from: col::i64(&get(1)).map_err(fail(OP))?.ok_or_else(null)?,
            to: col::i64(&get(2)).map_err(fail(OP))?.ok_or_else(null)?,
            reason: col::text(&get(3)).map_err(fail(OP))?.ok_or_else(null)?,
            attempts: col::i32(&get(4)).map_err(fail(OP))?.ok_or_else(null)?.max(0) as u32,
            updated_at: col::i64(&get(5)).map_err(fail(OP))?.ok_or_else(null)?,
        });
    }
    Ok(out)
}
