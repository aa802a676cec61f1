//! `GET /api/market/candles?…&fields=full` (#15 §4): the same reply as
//! without it, each candle carrying the whole kline's four extra fields
//! after its own keys (`quote_volume`, `trades`, `taker_buy_base_volume`,
//! `taker_buy_quote_volume`; `null` when the store has none for it). Without
//! `fields` the reply is the reference's shape exactly.
//!
//! Owns the `fields` parameter and the full reply; reads the store, never
//! changes anything.

use crate::engine::CandlesReply;
use crate::kline_ext::FullCandle;
use crate::store::Store;
use crate::wire::http::{Request, Response};
use serde::Serialize;

/// `fields`: absent = the default shape; `full` = with the extra fields.
pub fn wants_full(req: &Request) -> Result<bool, String> {
    match req.query_param("fields").map(str::trim) {
        None | Some("") => Ok(false),
        Some("full") => Ok(true),
        Some(other) => Err(format!("fields must be full when given (got {other:?})")),
    }
}

#[derive(Serialize)]
struct FullReply {
    series_id: String,
    server_head_time: Option<i64>,
    candles: Vec<FullCandle>,
}

/// The full form of `reply`, the extra fields read from `store`.
pub fn respond(reply: CandlesReply, store: &dyn Store) -> Response {
    let (first, last) = match (reply.candles.first(), reply.candles.last()) {
        (Some(f), Some(l)) => (f.candle_time, l.candle_time),
        _ => (0, -1),
    };
    let ext = if first <= last { store.read_ext(&reply.series_id, first, last) } else { Ok(Vec::new()) };
    let ext = match ext {
        Ok(rows) => rows.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        Err(e) => return Response::error(500, &format!("store_read_failed: {e}")),
    };
    let candles = reply.candles.into_iter().map(|c| FullCandle::new(c, ext.get(&c.candle_time).copied())).collect();
    super::ingest::serialized(200, &FullReply { series_id: reply.series_id, server_head_time: reply.server_head_time, candles })
}
