//! Prometheus text exposition (format 0.0.4, written by hand) and the
//! engine activity families: REST requests, failures and weight, heals
//! started/done/failed, late-close fetches, and the histogram of exchange
//! event time → frame queued for clients
//! (`klinegate_exchange_to_queue_seconds`), the REST weight budget and each
//! pinned series' lag behind its last close. The route table and the other
//! families are `shell::api::routes::metrics`.
//!
//! It only reads the engine's figures; it never changes them.

use crate::engine::histogram::Histogram;
use crate::engine::Engine;
use crate::model::Market;
use std::fmt::Write as _;

/// Prometheus text exposition format 0.0.4, written by hand: a few dozen
/// lines do not need a metrics library.
pub struct Exposition {
    pub out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP klinegate_{name} {help}\n# TYPE klinegate_{name} {kind}\n");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str("klinegate_");
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.out, "{sep}{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", prom_float(value));
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn prom_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// A histogram family: cumulative `_bucket{le=...}`, then `_sum` (seconds) and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &prom_float(le))], n as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds());
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// What the engine counts about its exchange REST use, healing and latency.
pub fn engine_activity(m: &mut Exposition, engine: &Engine) {
    let c = engine.counters();
    let rest = engine.rest_figures();
    m.counter("rest_requests_total", "Exchange REST requests sent (healing, late closes).", c.rest_requests);
    m.counter("rest_failures_total", "Exchange REST requests that got no answer (connect, DNS, TLS, timeout).", c.rest_failures);
    m.counter("rest_rate_limited_total", "Exchange REST answers 429/418 (the market pauses for Retry-After).", rest.rate_limited);
    m.counter("rest_weight_total", "Request weight of the exchange REST requests sent.", rest.weight_sent);
    m.family("rest_weight_used", "gauge", "Exchange REST weight used in the current minute, by market.");
    for market in [Market::Spot, Market::Futures] {
        m.sample("rest_weight_used", &[("market", market.as_str())], f64::from(rest.used_weight[market.index()]));
    }
    m.family("rest_weight_budget", "gauge", "Exchange REST weight we allow ourselves per UTC minute, by market.");
    for (market, budget) in [Market::Spot, Market::Futures].into_iter().zip(engine.rest_weight_budget()) {
        m.sample("rest_weight_budget", &[("market", market.as_str())], f64::from(budget));
    }
    pinned_lag(m, engine);
    retention(m, engine);
    m.counter("rest_rows_skipped_total", "Exchange REST kline rows skipped as malformed.", c.rest_rows_skipped);
    m.counter("heals_started_total", "History heals started (first visit, restart, reconnect, late close, catch-up).", c.heals_started);
    m.counter("heals_done_total", "History heals that ended with every page fetched.", c.heals_succeeded);
    m.counter("heals_failed_total", "History heals that ended with an error (the range is retried later).", c.heals_failed);
    m.counter("candles_healed_total", "Candles filled by healing.", c.candles_healed);
    m.counter("late_close_fetches_total", "REST fetches for a closing frame that came late.", c.late_close_fetches);
    m.counter("late_closes_upserted_total", "Closed candles filled in by a late-close fetch.", c.late_closes_upserted);
    m.histogram(
        "exchange_to_queue_seconds",
        "Exchange event time of a kline frame to the first client frame it caused being queued.",
        &c.exchange_to_queue,
    );
}

/// `--retention`'s figures: candles pruned, batches, failures, and when the
/// last pass ended (0 before the first).
fn retention(m: &mut Exposition, engine: &Engine) {
    let f = engine.retention_figures();
    m.counter("retention_pruned_candles_total", "Candles deleted by --retention (old candles of a timeframe with a limit).", f.pruned_candles);
    m.counter("retention_prune_batches_total", "Retention batches carried out (each deletes at most a few hundred candles).", f.batches);
    m.counter("retention_prune_failures_total", "Retention batches the store failed (the pass is retried after the interval).", f.failures);
    let last = f.last_pass_at.map_or(0.0, |t| t.as_secs_f64());
    m.gauge("retention_last_prune_timestamp_seconds", "Unix time the last retention pass ended (0: none yet).", last);
}

/// `klinegate_pinned_series_lag_seconds{series_id}` (and each pinned
/// series' `klinegate_pinned_series_timeframe_seconds`): the engine's time minus
/// the close time of each pinned series' newest closed candle. Healthy, it
/// stays under one timeframe plus the exchange's close delay. A pinned series
/// with no closed candle yet has no sample.
fn pinned_lag(m: &mut Exposition, engine: &Engine) {
    m.family(
        "pinned_series_lag_seconds",
        "gauge",
        "Seconds since the newest closed candle of each pinned series closed (engine time minus open time plus timeframe).",
    );
    let now_s = engine.now().as_secs();
    let pins = engine.pinned_closes();
    for pin in &pins {
        if let Some(closed_at) = pin.closed_at {
            m.sample("pinned_series_lag_seconds", &[("series_id", &pin.series_id)], (now_s - closed_at).max(0) as f64);
        }
    }
    m.family("pinned_series_timeframe_seconds", "gauge", "Timeframe of each pinned series (the lag alert compares the lag with it).");
    for pin in &pins {
        m.sample("pinned_series_timeframe_seconds", &[("series_id", &pin.series_id)], pin.tf_s as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::Settings;
    use crate::store::{SeriesBatch, Store};
    use crate::model::Candle;
    use crate::replay::hosted::Hosted;
    use crate::store::MemoryStore;
    use crate::time::Timestamp;

    const PIN: &str = "binance:spot:BTC/USDT:1m";

    fn rendered(engine: &Engine) -> String {
        let mut m = Exposition { out: String::new() };
        engine_activity(&mut m, engine);
        m.out
    }

    #[test]
    fn pinned_lag_is_engine_time_minus_the_last_close_and_budgets_are_per_market() {
        let cfg = |pins: Vec<String>| Settings { pins, ..Default::default() }.to_engine_config().unwrap();
        let unseeded = Engine::new(cfg(vec![PIN.into()]), Timestamp::from_secs(1000));
        assert!(!rendered(&unseeded).contains("klinegate_pinned_series_lag_seconds{"), "no sample before a close");

        // The pinned job starts from the stored head: the 1m candle opened at 900.
        let mut store = MemoryStore::new();
        let c = Candle { candle_time: 900, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 };
        store.write_batches(&[SeriesBatch { series_id: PIN.into(), candles: vec![c] }]).unwrap();
        let mut e = Hosted::new(Engine::new(cfg(vec![PIN.into()]), Timestamp::from_secs(1000)), store);
        e.handle(crate::engine::Input::Start, Timestamp::from_secs(1000)).unwrap();
        let text = rendered(&e.engine);
        // Closed at 900 + 60 = 960; the engine's time is 1000.
        assert!(text.contains("klinegate_pinned_series_lag_seconds{series_id=\"binance:spot:BTC/USDT:1m\"} 40\n"), "{text}");
        assert!(text.contains("klinegate_pinned_series_timeframe_seconds{series_id=\"binance:spot:BTC/USDT:1m\"} 60\n"), "{text}");
        assert!(text.contains("# TYPE klinegate_rest_weight_budget gauge\n"));
        assert!(text.contains("klinegate_rest_weight_budget{market=\"spot\"} 3000\n"), "{text}");
        assert!(text.contains("klinegate_rest_weight_budget{market=\"futures\"} 1200\n"), "{text}");
    }
}
