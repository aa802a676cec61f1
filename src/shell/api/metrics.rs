//! `/metrics`: the Prometheus text exposition (format 0.0.4, written by hand)
//! of the shell's figures ([`ShellStats`]), the engine's gauges and counters,
//! and the engine activity families: REST requests, failures and weight, heals
//! started/done/failed, late-close fetches, and the histogram of exchange
//! event time → frame queued for clients
//! (`klinegate_exchange_to_queue_seconds`), the REST weight budget and each
//! pinned series' lag behind its last close.
//!
//! It only reads the engine's figures; it never changes them.

use crate::engine::{Engine, Gauges};
use crate::shell::api::health::uptime_s;
use crate::shell::api::stats::ShellStats;
use crate::wire::http::Response;
use crate::model::Market;
use crate::shell::api::exposition::Exposition;

/// What the engine counts about its exchange REST use, healing and latency.
pub fn engine_activity(m: &mut Exposition, engine: &Engine) {
    let c = engine.counters();
    let rest = engine.rest_figures();
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

// ------------------------------------------------------------ the page

/// The whole `/metrics` page.
pub fn page(engine: &Engine, stats: &ShellStats) -> Response {
    let g = engine.gauges();
    let c = engine.counters();
    let mut m = Exposition { out: String::with_capacity(4096) };
    shell_metrics(&mut m, stats);
    engine_gauges(&mut m, &g);
    m.counters(&c.each());
    m.family("upstream_rejects_total", "counter", "Exchange frames rejected, by reason.");
    for (kind, n) in &c.upstream_rejects_by_kind {
        m.sample("upstream_rejects_total", &[("kind", kind)], *n as f64);
    }
    engine_activity(&mut m, engine);
    super::bus_metrics::bus_metrics(&mut m, stats);
    Response::text(200, "text/plain; version=0.0.4; charset=utf-8", m.out)
}

fn shell_metrics(m: &mut Exposition, s: &ShellStats) {
    m.gauge("uptime_seconds", "Seconds since the server started.", uptime_s(s));
    m.gauge("connections_open", "Open client TCP connections (HTTP and WebSocket).", s.connections_open as f64);
    m.counter("connections_rejected_total", "Client connections refused at accept (503).", s.connections_rejected);
    m.counter(
        "connections_rejected_per_ip_total",
        "Client connections refused by --max-connections-per-ip (included in connections_rejected_total).",
        s.connections_rejected_per_ip,
    );
    m.counter("http_unauthorized_total", "Requests refused (401) for a missing or wrong token.", s.http_unauthorized);
    m.counter("http_requests_total", "HTTP requests served.", s.http_requests);
    m.counter(
        "http_request_timeouts_total",
        "HTTP connections closed (408) for not completing a request within the idle timeout.",
        s.http_request_timeouts,
    );
    m.counter(
        "tls_handshake_failures_total",
        "TLS client connections closed before their handshake completed (plain text or garbage on the TLS port, refused certificate, hang-up, timeout).",
        s.tls_handshake_failures,
    );
    m.counter(
        "ws_messages_too_big_total",
        "WebSocket clients closed (1009) for a message over --max-frame-bytes.",
        s.ws_messages_too_big,
    );
    m.counter(
        "ws_protocol_errors_total",
        "WebSocket clients closed (1002, 1007) for breaking the WebSocket protocol.",
        s.ws_protocol_errors,
    );
    m.gauge("ws_clients", "Open /ws/market connections.", s.ws_clients as f64);
    m.counter("ws_frames_in_total", "WebSocket frames received from clients.", s.ws_frames_in);
    m.counter("ws_frames_out_total", "WebSocket frames written to clients.", s.ws_frames_out);
    m.counter("ws_bytes_out_total", "WebSocket bytes written to clients, as sent (compressed or not, frame heads included).", s.ws_bytes_out);
    let d = &s.ws_deflate;
    m.counter(
        "ws_deflate_frames_compressed_total",
        "Frames run through the permessage-deflate compressor (once per frame shared by many clients).",
        d.frames_compressed,
    );
    m.counter(
        "ws_deflate_frames_sent_total",
        "Frames sent compressed to permessage-deflate clients.",
        d.frames_sent_compressed,
    );
    m.counter(
        "ws_deflate_cache_hits_total",
        "Compressed frames sent from the form another client's send already computed.",
        d.cache_hits,
    );
    m.counter(
        "ws_deflate_bytes_saved_total",
        "Payload bytes not sent thanks to permessage-deflate, over every client.",
        d.bytes_saved,
    );
    m.counter("upstream_frames_in_total", "Frames read from exchange connections.", s.upstream_frames_in);
    m.gauge("upstream_connected", "Exchange connections currently open.", s.upstream_connected as f64);
    dns_metrics(m, &s.dns);
    m.gauge("store_ok", "1 when the store is writable.", if s.store_ok { 1.0 } else { 0.0 });
    m.family("store_write_seconds", "summary", "Time spent in store writes.");
    m.sample("store_write_seconds_sum", &[], s.store_write_seconds_sum);
    m.sample("store_write_seconds_count", &[], s.store_write_count as f64);
    m.gauge("store_write_seconds_max", "Longest store write.", s.store_write_seconds_max);
    m.gauge("store_queue", "Store effects (reads, writes) waiting for the loop's store slice.", s.store_queue as f64);
    m.gauge("store_slice_seconds_max", "Longest time one loop turn spent carrying out store effects.", s.store_slice_seconds_max);
    m.gauge("store_connected", "1 when the store can be used (PostgreSQL: connected, schema ready; SQLite: always).", if s.store_connected || s.store_backend.is_empty() { 1.0 } else { 0.0 });
    m.gauge("store_http_parked", "HTTP requests waiting for a PostgreSQL read.", s.store_http_parked as f64);
    m.histogram("loop_turn_seconds", "Time each event-loop turn spent working (from poll's return to the next poll).", &s.loop_turn);
    m.gauge("loop_turn_seconds_max", "Longest event-loop turn.", s.loop_turn_seconds_max);
}

fn dns_metrics(m: &mut Exposition, d: &crate::shell::dns::DnsStats) {
    m.counter("dns_lookups_total", "Host names looked up for exchange connections (IP literals excluded).", d.lookups);
    m.counter("dns_hosts_hits_total", "Lookups answered from the hosts file.", d.hosts_hits);
    m.counter("dns_cache_hits_total", "Lookups answered from the resolver cache (negative answers included).", d.cache_hits);
    m.counter("dns_queries_sent_total", "DNS queries sent to nameservers (each try of A and AAAA).", d.queries_sent);
    m.counter("dns_failures_total", "Lookups that ended without an address.", d.failures);
    m.counter("dns_nxdomain_total", "NXDOMAIN answers from nameservers.", d.nxdomain);
    m.counter("dns_timeouts_total", "DNS query tries that got no answer within the timeout.", d.timeouts);
    m.counter("dns_server_errors_total", "Nameserver answers that were errors (SERVFAIL, REFUSED, truncated, malformed).", d.server_errors);
    m.counter("dns_ignored_datagrams_total", "Datagrams on the resolver socket that answered no query in flight.", d.ignored_datagrams);
    m.gauge("dns_lookups_in_flight", "Lookups waiting for a nameserver.", d.in_flight as f64);
}

fn engine_gauges(m: &mut Exposition, g: &Gauges) {
    m.gauge("clients", "Clients the engine knows.", g.clients as f64);
    m.gauge("subscriptions", "Client subscriptions.", g.subscriptions as f64);
    m.family("jobs", "gauge", "Ingest jobs by state.");
    for (state, n) in [("starting", g.jobs_starting), ("running", g.jobs_running), ("dead", g.jobs_dead)] {
        m.sample("jobs", &[("state", state)], n as f64);
    }
    m.gauge("upstream_connections", "Exchange connections the pool holds (any state).", g.upstream_connections as f64);
    m.gauge("upstream_streams", "Kline streams subscribed upstream.", g.upstream_streams as f64);
    m.counter("upstream_reconnects_total", "Exchange reconnects after a lost connection.", g.upstream_reconnects);
    m.counter("upstream_rotations_total", "Planned exchange connection rotations.", g.upstream_rotations);
    m.gauge("unpersisted_candles", "Closed candles accepted but not yet stored.", g.unpersisted_candles as f64);
    m.gauge("store_backlog_candles", "Closed candles waiting for a store retry.", g.store_backlog_candles as f64);
    m.gauge("gap_ledger_entries", "Series with a range healing could not fill yet (retried).", g.gap_ledger_entries as f64);
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

    #[test]
    fn the_page_names_each_family_once_and_every_engine_counter() {
        let cfg = Settings { pins: vec![PIN.into()], ..Default::default() }.to_engine_config().unwrap();
        let engine = Engine::new(cfg, Timestamp::from_secs(1000));
        let stats = ShellStats { role: "read", bus: serde_json::json!({"connected": true}), ..ShellStats::default() };
        let Response { body, .. } = page(&engine, &stats);
        let text = String::from_utf8(body).unwrap();
        let mut types = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(types.insert(line.split(' ').nth(2).unwrap().to_string()), "family twice: {line}");
        }
        for c in engine.counters().each() {
            assert!(types.contains(&format!("klinegate_{}", c.metric)), "no family for {}", c.metric);
        }
        assert!(text.contains("klinegate_frames_sent_total{kind=\"closed\"} 0\n"));
    }
}
