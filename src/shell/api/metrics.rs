//! Prometheus text exposition (format 0.0.4, written by hand) and the
//! engine activity families: REST requests, failures and weight, heals
//! started/done/failed, late-close fetches, and the histogram of exchange
//! event time → frame queued for clients
//! (`klinegate_exchange_to_queue_seconds`). The route table and the other
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
