//! The HTTP candle ingest routes (`candle_closed`, `candle_forming`, the dev
//! batch): their JSON bodies, what is refused before the engine sees a
//! candle, and the reply shapes once it has.
//!
//! Refused here with 400 and a `detail` that names the problem, nothing
//! stored: a body that is not JSON (or not `application/json`, 415), a bad
//! series id, a batch of 0 or more than [`MAX_BATCH_CANDLES`], a
//! `candle_time` not on its timeframe's grid (`candle_time_misaligned: …`) or
//! later than the candle open now (`candle_time_in_future: …`). High/low
//! that do not bound open/close are accepted (as the reference does); the
//! engine refuses non-finite and negative values.
//!
//! It never touches the engine or reads a clock: `now_s` is passed in.

use crate::engine::Input;
use crate::model::{Candle, SeriesId};
use crate::wire::http::{Request, Response};
use serde::{Deserialize, Serialize};

/// Most candles one dev batch may carry (reference: 1..20000).
pub const MAX_BATCH_CANDLES: usize = 20_000;

/// How to answer an ingest once the engine has taken it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyReply {
    /// `candle_closed` and `candle_forming`: `{"ok","series_id","candle_time"}`.
    Candle { series_id: String, candle_time: i64 },
    /// The dev batch: `{"ok","series_id","count","first_candle_time","last_candle_time"}`.
    Batch { series_id: String, count: usize, first_candle_time: Option<i64>, last_candle_time: Option<i64> },
}

#[derive(Deserialize)]
struct IngestOneBody {
    series_id: String,
    candle: Candle,
}

#[derive(Deserialize)]
struct IngestBatchBody {
    series_id: String,
    candles: Vec<Candle>,
    /// Accepted for compatibility; the engine always publishes what it stores.
    #[serde(default)]
    #[allow(dead_code)]
    publish_ws: bool,
}

#[derive(Serialize)]
struct CandleReply<'a> {
    ok: bool,
    series_id: &'a str,
    candle_time: i64,
}

#[derive(Serialize)]
struct BatchReply<'a> {
    ok: bool,
    series_id: &'a str,
    count: usize,
    first_candle_time: Option<i64>,
    last_candle_time: Option<i64>,
}

/// `candle_closed` (or, with `forming`, `candle_forming`) at `now_s`: the
/// engine input and its reply, or the refusal.
pub fn ingest_one(req: &Request, forming: bool, now_s: i64) -> Result<(Input, ApplyReply), Response> {
    let body: IngestOneBody = json_body(req)?;
    let id = SeriesId::parse(&body.series_id).map_err(|e| Response::error(400, &e.to_string()))?;
    check_candle_times(&id, std::slice::from_ref(&body.candle), now_s).map_err(|d| Response::error(400, &d))?;
    let reply = ApplyReply::Candle { series_id: body.series_id.clone(), candle_time: body.candle.candle_time };
    let input = if forming {
        Input::IngestForming { request: 0, series_id: body.series_id, candle: body.candle }
    } else {
        Input::IngestClosed { request: 0, series_id: body.series_id, candles: vec![body.candle] }
    };
    Ok((input, reply))
}

/// The dev batch at `now_s`.
pub fn ingest_batch(req: &Request, now_s: i64) -> Result<(Input, ApplyReply), Response> {
    let body: IngestBatchBody = json_body(req)?;
    let id = SeriesId::parse(&body.series_id).map_err(|e| Response::error(400, &e.to_string()))?;
    if body.candles.is_empty() || body.candles.len() > MAX_BATCH_CANDLES {
        let detail = format!("candles must hold 1 to {MAX_BATCH_CANDLES} items (got {})", body.candles.len());
        return Err(Response::error(400, &detail));
    }
    check_candle_times(&id, &body.candles, now_s).map_err(|d| Response::error(400, &d))?;
    let reply = ApplyReply::Batch {
        series_id: body.series_id.clone(),
        count: body.candles.len(),
        first_candle_time: body.candles.first().map(|c| c.candle_time),
        last_candle_time: body.candles.last().map(|c| c.candle_time),
    };
    Ok((Input::IngestClosed { request: 0, series_id: body.series_id, candles: body.candles }, reply))
}

/// Every `candle_time` must open a candle of the series' timeframe and not
/// be later than the candle open at `now_s`. The first offender is named.
pub fn check_candle_times(id: &SeriesId, candles: &[Candle], now_s: i64) -> Result<(), String> {
    let tf = id.timeframe();
    let open_now = tf.bucket_open(now_s);
    for c in candles {
        let t = c.candle_time;
        if tf.bucket_open(t) != t {
            return Err(format!(
                "candle_time_misaligned: candle_time {t} is not the open time of a {tf} candle (nearest: {})",
                tf.bucket_open(t)
            ));
        }
        if t > open_now {
            return Err(format!(
                "candle_time_in_future: candle_time {t} is later than the {tf} candle open now ({open_now})"
            ));
        }
    }
    Ok(())
}

/// The reply to an ingest the engine has answered (`error` is its
/// `Output::IngestDone`'s). Store failures (`ingest_pipeline_failed…`)
/// are 500 with the reference's detail; anything else the engine refused is
/// the caller's fault: 400.
pub fn engine_reply(reply: ApplyReply, error: Option<String>) -> Response {
    match error {
        Some(e) if e.starts_with("ingest_pipeline_failed") => Response::error(500, &e),
        Some(e) => Response::error(400, &e),
        None => match reply {
            ApplyReply::Candle { series_id, candle_time } => {
                serialized(200, &CandleReply { ok: true, series_id: &series_id, candle_time })
            }
            ApplyReply::Batch { series_id, count, first_candle_time, last_candle_time } => serialized(
                200,
                &BatchReply { ok: true, series_id: &series_id, count, first_candle_time, last_candle_time },
            ),
        },
    }
}

/// A JSON body from a typed value, keeping its field order (a `Value` would
/// sort keys; the reference's shapes list them in struct order).
pub fn serialized<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::text(status, "application/json", body),
        Err(e) => Response::error(500, &format!("serialization_failed: {e}")),
    }
}

/// Parses a JSON body. A Content-Type other than JSON is refused (415): a
/// browser may send text/plain cross-origin without a preflight, so this is
/// also what keeps other sites from posting candles.
fn json_body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, Response> {
    if let Some(ct) = req.header("content-type") {
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(Response::error(415, "Content-Type must be application/json"));
        }
    }
    serde_json::from_slice(&req.body).map_err(|e| Response::error(400, &format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: i64) -> Candle {
        Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 }
    }

    #[test]
    fn candle_times_must_be_on_the_grid_and_not_after_the_open_candle() {
        let m1 = SeriesId::parse("binance:spot:BTC/USDT:1m").unwrap();
        let now = 1_700_000_030; // the 1m candle open now is 1_699_999_980
        assert_eq!(check_candle_times(&m1, &[c(1_699_999_920), c(1_699_999_980)], now), Ok(()));
        let e = check_candle_times(&m1, &[c(1_699_999_940)], now).unwrap_err();
        assert!(e.starts_with("candle_time_misaligned: candle_time 1699999940 "), "{e}");
        let e = check_candle_times(&m1, &[c(1_700_000_040)], now).unwrap_err();
        assert!(e.starts_with("candle_time_in_future: candle_time 1700000040 "), "{e}");
        let year_5138 = 99_999_999_960;
        assert!(check_candle_times(&m1, &[c(year_5138)], now).unwrap_err().starts_with("candle_time_in_future"));
        let h1 = SeriesId::parse("binance:spot:BTC/USDT:1h").unwrap();
        assert!(check_candle_times(&h1, &[c(1_699_999_980)], now).unwrap_err().starts_with("candle_time_misaligned"));
        assert_eq!(check_candle_times(&h1, &[c(1_699_995_600)], now), Ok(()));
    }
}
