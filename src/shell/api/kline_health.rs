//! Kline health views (the reference's `GET /api/market/health` and
//! `GET /api/market/debug/series_health`), computed from the store and the
//! engine's own healing state ("backfill" here is klinegate's REST healing of
//! the series' ingest job). Read-only: never changes the engine.

use crate::wire::http::{Request, Response};
use crate::engine::ingest::{HealState, Hole};
use crate::engine::Engine;
use crate::model::{SeriesId, Timeframe};
use serde_json::{json, Value};

/// A succeeded heal counts as "recent" for this long (reference default 120 s).
const BACKFILL_RECENT_S: i64 = 120;
/// At most this many stored candles are scanned for gaps (the newest ones).
const GAP_SCAN_LIMIT: usize = 200_000;

fn bad(detail: String) -> Response {
    Response::error(400, &detail)
}

fn parse_int(req: &Request, name: &str, min: i64, max: i64, default: Option<i64>) -> Result<Option<i64>, Response> {
    match req.query_param(name) {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(bad(format!("{name} must be an integer in {min}..={max}"))),
        },
    }
}

fn series_param(req: &Request) -> Result<SeriesId, Response> {
    let raw = req.query_param("series_id").filter(|s| !s.is_empty()).ok_or_else(|| bad("missing series_id".into()))?;
    SeriesId::parse(raw).map_err(|e| bad(e.to_string()))
}

fn backfill_json(state: Option<&(HealState, Option<Hole>)>, now: i64, tf: i64, missing_s: Option<i64>) -> Value {
    let Some((h, hole)) = state else {
        return json!({"state":"idle","progress_pct":null,"started_at":null,"updated_at":null,"reason":null,
                      "note":null,"error":null,"recent":false,"start_missing_seconds":null,
                      "start_missing_candles":null,"current_missing_seconds":missing_s,
                      "current_missing_candles":missing_s.map(|m| (m + tf - 1) / tf)});
    };
    let updated = h.updated_at.map(|t| t.as_secs());
    // The reference's rule: updated within the window, whatever the state
    // (the status rules below still look at the state).
    let recent = updated.is_some_and(|u| now - u <= BACKFILL_RECENT_S);
    let progress = (h.wanted > 0).then(|| (h.healed as f64 * 100.0 / h.wanted as f64).min(100.0));
    json!({
        "state": if h.state.is_empty() { "idle" } else { h.state },
        "progress_pct": progress,
        "started_at": h.started_at.map(|t| t.as_secs()),
        "updated_at": updated,
        "reason": (!h.reason.is_empty()).then_some(h.reason),
        "note": hole.as_ref().map(|x| format!("hole {}..{} retried at {}", x.from, x.to, x.retry_at.as_secs())),
        "error": h.error,
        "recent": recent,
        "start_missing_seconds": (h.wanted > 0).then_some(h.wanted * tf),
        "start_missing_candles": (h.wanted > 0).then_some(h.wanted),
        "current_missing_seconds": missing_s,
        "current_missing_candles": missing_s.map(|m| (m + tf - 1) / tf),
    })
}

/// `GET /api/market/health?series_id=&now_time=`.
pub fn kline_health(req: &Request, engine: &Engine, store: &dyn crate::store::Store) -> Response {
    let id = match series_param(req) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let now = match parse_int(req, "now_time", 0, i64::MAX, Some(engine.now().as_secs())) {
        Ok(v) => v.unwrap_or(0),
        Err(r) => return r,
    };
    let tf = id.timeframe();
    let tf_s = tf.seconds();
    let expected = tf.expected_latest_closed(now);
    let head = match store.head_time(id.as_str()) {
        Ok(h) => h,
        Err(e) => return Response::error(500, &format!("store_read_failed: {e}")),
    };
    let heal = engine.heal_state(id.as_str());
    let missing_s = head.map(|h| (expected - h).max(0));
    let (status, reason) = match (head, &heal) {
        (None, _) => ("red", "missing_head"),
        (Some(h), _) if h > expected => ("yellow", "head_ahead_of_closed_window"),
        (Some(_), _) if missing_s.unwrap_or(0) <= 0 => ("green", "up_to_date"),
        (_, Some((h, _))) if h.state == "running" => ("yellow", "backfill_running"),
        (_, Some((h, _)))
            if h.state == "succeeded" && h.updated_at.is_some_and(|u| now - u.as_secs() <= BACKFILL_RECENT_S) =>
        {
            ("yellow", "backfill_recent")
        }
        _ => ("red", "lagging_no_recent_backfill"),
    };
    let body = json!({
        "series_id": id.as_str(),
        "timeframe_seconds": tf_s,
        "now_time": now,
        "expected_latest_closed_time": expected,
        "head_time": head,
        "lag_seconds": head.map(|h| (now - h).max(0)),
        "missing_seconds": missing_s,
        "missing_candles": missing_s.map(|m| (m + tf_s - 1) / tf_s),
        "status": status,
        "status_reason": reason,
        "backfill": backfill_json(heal.as_ref(), now, tf_s, missing_s),
    });
    Response::json(200, &body)
}

/// `GET /api/market/debug/series_health?series_id=&max_recent_gaps=&recent_base_buckets=`.
pub fn series_health(req: &Request, engine: &Engine, store: &dyn crate::store::Store) -> Response {
    let id = match series_param(req) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (max_gaps, buckets) = match (
        parse_int(req, "max_recent_gaps", 1, 50, Some(5)),
        parse_int(req, "recent_base_buckets", 1, 48, Some(8)),
    ) {
        (Ok(a), Ok(b)) => (a.unwrap_or(5) as usize, b.unwrap_or(8)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let now = engine.now().as_secs();
    let tf = id.timeframe().seconds();
    let read = || -> Result<Value, String> {
        let first = store.first_time(id.as_str()).map_err(|e| e.to_string())?;
        let head = store.head_time(id.as_str()).map_err(|e| e.to_string())?;
        let count = match (first, head) {
            (Some(f), Some(h)) => store.count_range(id.as_str(), f, h).map_err(|e| e.to_string())?,
            _ => 0,
        };
        let times: Vec<i64> =
            store.read_tail(id.as_str(), GAP_SCAN_LIMIT).map_err(|e| e.to_string())?.iter().map(|c| c.candle_time).collect();
        let gaps: Vec<(i64, i64)> = times.windows(2).filter(|w| w[1] - w[0] > tf).map(|w| (w[0], w[1])).collect();
        let recent: Vec<Value> = gaps
            .iter()
            .rev()
            .take(max_gaps)
            .map(|(p, n)| json!({"prev_time": p, "next_time": n, "delta_seconds": n - p, "missing_candles": (n - p) / tf - 1}))
            .collect();
        let base = id.with_timeframe(Timeframe::M1);
        let mut completeness = Vec::new();
        if tf > 60 {
            if let Some(base_head) = store.head_time(base.as_str()).map_err(|e| e.to_string())? {
                let last = id.timeframe().bucket_open(base_head);
                for k in (0..buckets).rev() {
                    let open = last - k * tf;
                    let actual = store.count_range(base.as_str(), open, open + tf - 60).map_err(|e| e.to_string())?;
                    let expected = tf / 60;
                    completeness.push(json!({"bucket_open_time": open, "expected_minutes": expected,
                                             "actual_minutes": actual, "missing_minutes": expected - actual as i64}));
                }
            }
        }
        Ok(json!({
            "series_id": id.as_str(),
            "timeframe_seconds": tf,
            "now_time": now,
            "first_time": first,
            "head_time": head,
            "lag_seconds": head.map(|h| (now - h).max(0)),
            "candle_count": count,
            "gap_count": gaps.len(),
            "max_gap_seconds": gaps.iter().map(|(p, n)| n - p).max(),
            "recent_gaps": recent,
            "base_series_id": base.as_str(),
            "base_bucket_completeness": completeness,
        }))
    };
    match read() {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(500, &format!("store_read_failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::Settings;
    use crate::engine::Input;
    use crate::model::Candle;
    use crate::wire::http::{parse_request, HttpLimits, Parse};
    use crate::replay::hosted::Hosted;
    use crate::store::MemoryStore;
    use crate::time::Timestamp;

    type Fx = Hosted<MemoryStore>;

    fn engine(now: u64) -> Fx {
        let s = Settings { pins: vec![], heal: false, ..Settings::default() };
        Hosted::new(Engine::new(s.to_engine_config().unwrap(), Timestamp::from_secs(now)), MemoryStore::new())
    }

    fn seed(e: &mut Fx, series: &str, times: &[i64]) {
        let candles =
            times.iter().map(|t| Candle { candle_time: *t, open: 1.0, high: 1.0, low: 1.0, close: 1.0, volume: 1.0 }).collect();
        let now = e.engine.now();
        e.handle(Input::IngestClosed { request: 0, series_id: series.into(), candles }, now).unwrap();
    }

    fn get(target: &str) -> Request {
        let raw = format!("GET {target} HTTP/1.1\r\n\r\n");
        match parse_request(raw.as_bytes(), &HttpLimits::default()) {
            Parse::Complete { request, .. } => request,
            _ => panic!("bad test request"),
        }
    }

    fn body(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn series_health_reports_gaps_and_bucket_completeness_as_the_reference() {
        let mut e = engine(1000);
        seed(&mut e, "binance:spot:BTC/USDT:1m", &[300, 360, 420, 540, 600, 660]);
        seed(&mut e, "binance:spot:BTC/USDT:5m", &[300, 900]);
        let r = series_health(&get("/x?series_id=binance:spot:BTC/USDT:5m&max_recent_gaps=3&recent_base_buckets=2"), &e.engine, &e.store);
        let v = body(&r);
        assert_eq!(v["gap_count"], 1);
        assert_eq!(v["max_gap_seconds"], 600);
        assert_eq!(v["recent_gaps"][0]["missing_candles"], 1);
        assert_eq!(v["base_series_id"], "binance:spot:BTC/USDT:1m");
        let b = v["base_bucket_completeness"].as_array().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1], json!({"bucket_open_time":600,"expected_minutes":5,"actual_minutes":2,"missing_minutes":3}));
        assert_eq!(b[0]["actual_minutes"], 4);
    }

    #[test]
    fn kline_health_status_rules() {
        let s = "binance:spot:BTC/USDT:1m";
        let mut e = engine(100_000);
        let v = body(&kline_health(&get(&format!("/x?series_id={s}")), &e.engine, &e.store));
        assert_eq!((v["status"].as_str(), v["status_reason"].as_str()), (Some("red"), Some("missing_head")));
        assert!(v["missing_seconds"].is_null());
        seed(&mut e, s, &[99_900]);
        let v = body(&kline_health(&get(&format!("/x?series_id={s}&now_time=99930")), &e.engine, &e.store));
        assert_eq!(v["status_reason"], "head_ahead_of_closed_window", "99900 is still forming at 99930");
        let v = body(&kline_health(&get(&format!("/x?series_id={s}&now_time=100010")), &e.engine, &e.store));
        assert_eq!((v["status"].as_str(), v["status_reason"].as_str()), (Some("green"), Some("up_to_date")));
        let v = body(&kline_health(&get(&format!("/x?series_id={s}&now_time=100500")), &e.engine, &e.store));
        assert_eq!(v["status_reason"], "lagging_no_recent_backfill");
        assert_eq!(v["missing_candles"], 9, "99960..=100440");
        assert_eq!(kline_health(&get("/x?series_id=nope"), &e.engine, &e.store).status, 400);
        assert_eq!(kline_health(&get(&format!("/x?series_id={s}&now_time=-1")), &e.engine, &e.store).status, 400);
    }

    #[test]
    fn backfill_recent_is_updated_at_within_the_window_whatever_the_state() {
        for state in ["running", "failed", "succeeded"] {
            let h = HealState { state, updated_at: Some(Timestamp::from_secs(1000)), ..HealState::default() };
            let at = |now| backfill_json(Some(&(h.clone(), None)), now, 60, Some(0))["recent"].clone();
            assert_eq!((at(1120), at(1121)), (json!(true), json!(false)), "{state}");
        }
    }
}
