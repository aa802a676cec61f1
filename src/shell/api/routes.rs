//! The HTTP routes of the client port and the `/ws/market` upgrade decision:
//! a pure function of one parsed [`Request`], read-only engine state, the
//! shell's own figures ([`ShellStats`]) and [`HttpConfig`]. It owns the route
//! table, CORS, the optional shared-secret check and the reply shapes of
//! reference-system.md §8. It never mutates the engine: writes come back as
//! [`Routed::Apply`] so the shell feeds them through `Engine::handle` (and the
//! journal records them), then builds the reply with [`apply_reply`].
//!
//! Gates: `candle_closed` ingest needs `enable_ingest_api` (`--ingest-api`,
//! on by default only for a loopback listen address); `candle_forming` and
//! `debug/ingest_state` need `enable_debug_api`; the batch ingest needs
//! `enable_dev_api`. A disabled route answers `404 {"detail":"not_found"}`
//! exactly like an unknown one. The ingest bodies and what they refuse are
//! `shell::api::ingest`.
//!
//! Order of checks: Origin (403) → preflight (204, on any path: a browser's
//! call to a route we do not serve then fails as a plain 404, not a CORS
//! error) → route lookup (404) → shared secret (401) → method (405) → the
//! handler.

use crate::wire::http::{Request, Response};
use crate::engine::{CandlesReply, Engine, Gauges, Input};
use crate::store::Store;
use crate::model::SeriesId;
use crate::shell::api::health::{self, uptime_s};
use crate::shell::api::ingest;
use crate::shell::api::metrics::{self, Exposition};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Origins a browser front end may call from (exact match, trailing `/`
    /// ignored; `*` allows any). Empty: no CORS headers and no Origin check.
    pub cors_origins: Vec<String>,
    pub enable_debug_api: bool,
    pub enable_dev_api: bool,
    /// `POST /api/market/ingest/candle_closed` is served (`--ingest-api`).
    pub enable_ingest_api: bool,
    /// Shared secret for every route but `/health`, `/health/ready` and preflights.
    pub auth_token: Option<String>,
    /// Upper bound of `limit` on `GET /api/market/candles`.
    pub max_candles_limit: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: vec!["http://localhost:5173".into(), "http://127.0.0.1:5173".into()],
            enable_debug_api: false,
            enable_dev_api: false,
            enable_ingest_api: true,
            auth_token: None,
            max_candles_limit: 5000,
        }
    }
}

/// What the shell knows and the engine does not; filled once per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShellStats {
    pub connections_open: u64,
    pub ws_clients: u64,
    pub http_requests: u64,
    pub ws_frames_in: u64,
    pub ws_frames_out: u64,
    pub ws_bytes_out: u64,
    pub upstream_frames_in: u64,
    /// Exchange connections open now.
    pub upstream_connected: u64,
    /// Why each market's last exchange connection failed (spot, futures);
    /// `None` once one connects.
    pub upstream_last_error: [Option<String>; 2],
    pub store_ok: bool,
    /// Why the store is not ok (the last failed write, or read-only at start);
    /// `None` once a write succeeds.
    pub store_last_error: Option<String>,
    pub store_path: String,
    pub store_write_count: u64,
    pub store_write_seconds_sum: f64,
    pub store_write_seconds_max: f64,
    /// Store effects waiting for the shell's store slice.
    pub store_queue: u64,
    /// The longest store slice of one loop turn, in seconds.
    pub store_slice_seconds_max: f64,
    /// How long each loop turn's work took (poll wake-up to the next poll).
    pub loop_turn: crate::engine::histogram::Histogram,
    pub loop_turn_seconds_max: f64,
    pub connections_rejected: u64,
    /// Of those, refused by --max-connections-per-ip.
    pub connections_rejected_per_ip: u64,
    /// Requests refused for a missing or wrong shared secret.
    pub http_unauthorized: u64,
    /// WebSocket clients closed with 1009 for a message over --max-frame-bytes.
    pub ws_messages_too_big: u64,
    /// WebSocket clients closed with 1002/1007 for breaking RFC 6455.
    pub ws_protocol_errors: u64,
    /// HTTP connections dropped (408) for not completing a request in time.
    pub http_request_timeouts: u64,
    /// Clients are served over TLS (`--tls-cert`/`--tls-key`).
    pub client_tls: bool,
    /// TLS client connections that ended before their handshake completed.
    pub tls_handshake_failures: u64,
    /// The non-blocking resolver's counters (`shell::dns`).
    pub dns: crate::shell::dns::DnsStats,
    pub started_unix_s: f64,
    pub now_unix_s: f64,
    /// `sqlite` or `postgres` (empty reads as `sqlite`).
    pub store_backend: &'static str,
    /// PostgreSQL: connected and bootstrapped; SQLite: always true.
    pub store_connected: bool,
    /// HTTP requests parked for a PostgreSQL read now.
    pub store_http_parked: u64,
    /// `hybrid`, `ingest` or `read` (empty reads as `hybrid`).
    pub role: &'static str,
    pub node_id: String,
    /// The bus host's view (`shell::bus_host::BusHost::health`); null for hybrid.
    pub bus: serde_json::Value,
}

/// The routing decision for one request.
#[derive(Debug)]
pub enum Routed {
    /// Write this and keep going (honour `request.keep_alive`).
    Reply(Response),
    /// Feed `input` to `engine.handle(input, now)`, then answer with
    /// `apply_reply(reply, result, request, cfg)`.
    Apply { input: Input, reply: ApplyReply },
    /// Write these bytes (a complete `101 Switching Protocols` head); the
    /// connection is a WebSocket from the next byte on (bytes after the
    /// request's `consumed` are already WebSocket frames).
    Upgrade { response: Vec<u8> },
    /// The market directory answers (`shell::api::markets`), possibly later (its
    /// cache may need a fetch) or as an event stream; these CORS headers go
    /// on whatever it answers.
    Directory { stream: bool, cors: Vec<(String, String)> },
}

pub use crate::shell::api::ingest::{ApplyReply, MAX_BATCH_CANDLES};
const DEFAULT_CANDLES_LIMIT: usize = 500;
const PREFLIGHT_MAX_AGE_S: &str = "600";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Ready,
    Metrics,
    Candles,
    Whitelist,
    IngestState,
    IngestClosed,
    IngestForming,
    DevBatch,
    WsMarket,
    KlineHealth,
    SeriesHealth,
    TopMarkets,
    TopMarketsStream,
    OpenApi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Always,
    DebugApi,
    DevApi,
    IngestApi,
}

/// (path, method, endpoint, gate). One method per path.
const ROUTES: &[(&str, &str, Endpoint, Gate)] = &[
    ("/health", "GET", Endpoint::Health, Gate::Always),
    ("/health/ready", "GET", Endpoint::Ready, Gate::Always),
    ("/metrics", "GET", Endpoint::Metrics, Gate::Always),
    ("/api/market/candles", "GET", Endpoint::Candles, Gate::Always),
    ("/api/market/whitelist", "GET", Endpoint::Whitelist, Gate::Always),
    ("/api/market/debug/ingest_state", "GET", Endpoint::IngestState, Gate::DebugApi),
    ("/api/market/ingest/candle_closed", "POST", Endpoint::IngestClosed, Gate::IngestApi),
    ("/api/market/ingest/candle_forming", "POST", Endpoint::IngestForming, Gate::DebugApi),
    ("/api/dev/market/ingest/candles_closed_batch", "POST", Endpoint::DevBatch, Gate::DevApi),
    ("/ws/market", "GET", Endpoint::WsMarket, Gate::Always),
    // Kline health is on by default (the reference gates it behind a flag).
    ("/api/market/health", "GET", Endpoint::KlineHealth, Gate::Always),
    ("/api/market/debug/series_health", "GET", Endpoint::SeriesHealth, Gate::DebugApi),
    ("/api/market/top_markets", "GET", Endpoint::TopMarkets, Gate::Always),
    ("/api/market/top_markets/stream", "GET", Endpoint::TopMarketsStream, Gate::Always),
    ("/openapi.json", "GET", Endpoint::OpenApi, Gate::Always),
];

fn lookup(path: &str, cfg: &HttpConfig) -> Option<(&'static str, Endpoint)> {
    let &(_, method, endpoint, gate) = ROUTES.iter().find(|(p, ..)| *p == path)?;
    let enabled = match gate {
        Gate::Always => true,
        Gate::DebugApi => cfg.enable_debug_api,
        Gate::DevApi => cfg.enable_dev_api,
        Gate::IngestApi => cfg.enable_ingest_api,
    };
    enabled.then_some((method, endpoint))
}

/// Decides what to do with one request.
/// `store` serves the reads that change no engine state (candles, health
/// views); everything that changes state goes to the engine as an input.
pub fn route(req: &Request, engine: &Engine, store: &dyn Store, stats: &ShellStats, cfg: &HttpConfig) -> Routed {
    if let Some(origin) = req.header("origin") {
        if !cfg.cors_origins.is_empty() && !origin_allowed(origin, cfg) {
            return Routed::Reply(with_cors(Response::error(403, "origin_not_allowed"), req, cfg));
        }
    }
    let found = lookup(&req.path, cfg);
    // A preflight is answered on any path a browser may ask about: the call
    // itself then gets its 404, which the front end can read.
    if req.method == "OPTIONS" && (found.is_some() || req.header("origin").is_some()) {
        return reply(preflight(found.map(|(method, _)| method)), req, cfg);
    }
    let Some((method, endpoint)) = found else {
        return reply(Response::error(404, "not_found"), req, cfg);
    };
    if !matches!(endpoint, Endpoint::Health | Endpoint::Ready) && !authorized(req, cfg) {
        let denied = Response::error(401, "unauthorized").with_header("WWW-Authenticate", "Bearer");
        return reply(denied, req, cfg);
    }
    if req.method != method {
        let allow = format!("{method}, OPTIONS");
        return reply(Response::error(405, "method_not_allowed").with_header("Allow", &allow), req, cfg);
    }
    match endpoint {
        Endpoint::Health => reply(health::health(engine, stats), req, cfg),
        Endpoint::Ready => reply(health::ready(engine), req, cfg),
        Endpoint::Metrics => reply(metrics(engine, stats), req, cfg),
        Endpoint::Candles => reply(candles(req, engine, store, cfg), req, cfg),
        Endpoint::Whitelist => {
            let body = serde_json::json!({ "series_ids": engine.whitelist() });
            reply(Response::json(200, &body), req, cfg)
        }
        Endpoint::IngestState => reply(Response::json(200, &ingest_state(engine, store)), req, cfg),
        Endpoint::IngestClosed => to_apply(ingest::ingest_one(req, false, ingest_now_s(engine, stats)), req, cfg),
        Endpoint::IngestForming => to_apply(ingest::ingest_one(req, true, ingest_now_s(engine, stats)), req, cfg),
        Endpoint::DevBatch => to_apply(ingest::ingest_batch(req, ingest_now_s(engine, stats)), req, cfg),
        Endpoint::OpenApi => reply(crate::shell::api::docs::openapi(), req, cfg),
        Endpoint::KlineHealth => reply(crate::shell::api::kline_health::kline_health(req, engine, store), req, cfg),
        Endpoint::SeriesHealth => reply(crate::shell::api::kline_health::series_health(req, engine, store), req, cfg),
        Endpoint::TopMarkets | Endpoint::TopMarketsStream => Routed::Directory {
            stream: endpoint == Endpoint::TopMarketsStream,
            cors: with_cors(Response::empty(200), req, cfg).headers,
        },
        Endpoint::WsMarket => match upgrade(req) {
            Ok(response) => Routed::Upgrade { response },
            Err(refusal) => reply(refusal, req, cfg),
        },
    }
}

/// The reply to an ingest the engine has handled (`result` is what
/// `Engine::handle` returned), with CORS.
pub fn apply_reply(reply: ApplyReply, result: Result<(), String>, req: &Request, cfg: &HttpConfig) -> Response {
    with_cors(ingest::engine_reply(reply, result), req, cfg)
}

/// The time ingest candles are checked against: the loop's clock this turn
/// (the engine's own time when that is later, as in tests with no shell).
fn ingest_now_s(engine: &Engine, stats: &ShellStats) -> i64 {
    engine.now().as_secs().max(stats.now_unix_s.floor() as i64)
}

fn to_apply(decided: Result<(Input, ApplyReply), Response>, req: &Request, cfg: &HttpConfig) -> Routed {
    match decided {
        Ok((input, reply)) => Routed::Apply { input, reply },
        Err(refusal) => reply(refusal, req, cfg),
    }
}

fn reply(response: Response, req: &Request, cfg: &HttpConfig) -> Routed {
    Routed::Reply(with_cors(response, req, cfg))
}

// ------------------------------------------------------------- CORS, auth

fn origin_allowed(origin: &str, cfg: &HttpConfig) -> bool {
    cfg.cors_origins.iter().any(|o| {
        let o = o.trim().trim_end_matches('/');
        o == "*" || o.eq_ignore_ascii_case(origin.trim_end_matches('/'))
    })
}

/// Adds `Vary: Origin` whenever CORS is configured, and echoes an allowed
/// Origin so a browser on another origin may read the reply.
fn with_cors(mut response: Response, req: &Request, cfg: &HttpConfig) -> Response {
    if cfg.cors_origins.is_empty() {
        return response;
    }
    if let Some(origin) = req.header("origin").filter(|o| origin_allowed(o, cfg)) {
        response = response.with_header("Access-Control-Allow-Origin", origin);
    }
    response.with_header("Vary", "Origin")
}

/// 204 with the CORS answer; `Allow` names the route's method when it is one we serve.
fn preflight(method: Option<&str>) -> Response {
    let allow = method.map_or_else(|| "OPTIONS".to_string(), |m| format!("{m}, OPTIONS"));
    Response::empty(204)
        .with_header("Allow", &allow)
        .with_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        .with_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
        .with_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_S)
}

/// No token configured, or `Authorization: Bearer <t>` / `?token=<t>` matches.
fn authorized(req: &Request, cfg: &HttpConfig) -> bool {
    let Some(expected) = cfg.auth_token.as_deref() else { return true };
    let bearer = req.header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    // Both candidates are compared so timing does not tell which one was sent.
    let by_header = bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
    let by_query = req.query_param("token").is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
    by_header | by_query
}

/// Compares without an early exit on the first differing byte, so response
/// time does not reveal how much of a guess was right. (The length is not
/// secret: it only says how long the configured token is.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------- reads

/// `GET /api/market/debug/ingest_state`: the engine's snapshot plus the
/// store's gap ledger.
fn ingest_state(engine: &Engine, store: &dyn Store) -> serde_json::Value {
    let mut v = engine.ingest_state();
    if let Some(obj) = v.as_object_mut() {
        let ledger = store.gaps().map(|g| serde_json::to_value(g).unwrap_or_default()).unwrap_or_default();
        obj.insert("gap_ledger".into(), ledger);
    }
    v
}

/// `GET /api/market/candles` (§8.1): the tail when `since` is absent, else
/// the first `limit` candles after it; rows "ahead" of the engine's closed
/// window hidden, `since` clamped to it.
fn read_candles(
    engine: &Engine,
    store: &dyn Store,
    series_id: &str,
    since: Option<i64>,
    limit: usize,
) -> Result<CandlesReply, String> {
    let id = SeriesId::parse(series_id).map_err(|e| e.to_string())?;
    let name = id.as_str();
    let window = engine.closed_window(&id);
    let read = match since {
        None => store.read_tail(name, limit),
        Some(s) => store.read_after(name, window.clamp(s), limit),
    };
    let candles = window.filter_ahead(read.map_err(|e| e.to_string())?);
    let server_head_time = store.head_time(name).map_err(|e| e.to_string())?;
    Ok(CandlesReply { series_id: name.to_string(), server_head_time, candles })
}

fn candles(req: &Request, engine: &Engine, store: &dyn Store, cfg: &HttpConfig) -> Response {
    let query = match CandlesQuery::from_request(req, cfg) {
        Ok(q) => q,
        Err(detail) => return Response::error(400, &detail),
    };
    // A symbol its market does not list: 404, and no job is started for it.
    if let Some(detail) = engine.unlisted_symbol(&query.series_id) {
        return Response::error(404, &detail);
    }
    match read_candles(engine, store, &query.series_id, query.since, query.limit) {
        Ok(reply) => ingest::serialized(200, &reply),
        Err(e) => Response::error(500, &format!("store_read_failed: {e}")),
    }
}

struct CandlesQuery {
    series_id: String,
    since: Option<i64>,
    limit: usize,
}

impl CandlesQuery {
    fn from_request(req: &Request, cfg: &HttpConfig) -> Result<CandlesQuery, String> {
        let series_id = req.query_param("series_id").unwrap_or("");
        if series_id.is_empty() {
            return Err("series_id is required".into());
        }
        SeriesId::parse(series_id).map_err(|e| e.to_string())?;
        let since = match req.query_param("since") {
            None => None,
            Some(s) => match s.trim().parse::<i64>() {
                Ok(v) if v >= 0 => Some(v),
                _ => return Err(format!("since must be an integer >= 0 (got {s:?})")),
            },
        };
        let max = cfg.max_candles_limit.max(1);
        let limit = match req.query_param("limit") {
            None => DEFAULT_CANDLES_LIMIT.min(max),
            Some(s) => match s.trim().parse::<usize>() {
                Ok(v) if (1..=max).contains(&v) => v,
                _ => return Err(format!("limit must be an integer from 1 to {max} (got {s:?})")),
            },
        };
        Ok(CandlesQuery { series_id: series_id.to_string(), since, limit })
    }
}

// --------------------------------------------------------------- metrics

fn metrics(engine: &Engine, stats: &ShellStats) -> Response {
    let g = engine.gauges();
    let c = engine.counters();
    let mut m = Exposition { out: String::with_capacity(4096) };
    shell_metrics(&mut m, stats);
    engine_gauges(&mut m, &g);
    m.counter("upstream_frames_total", "Exchange frames the engine handled.", c.upstream_frames);
    m.counter("upstream_kline_frames_total", "Exchange kline frames parsed.", c.kline_frames);
    m.counter(
        "stream_stalls_total",
        "Live kline streams resubscribed after no frame for --stream-stall-s.",
        c.stream_stalls,
    );
    m.family("upstream_rejects_total", "counter", "Exchange frames rejected, by reason.");
    for (kind, n) in &c.upstream_rejects_by_kind {
        m.sample("upstream_rejects_total", &[("kind", kind)], *n as f64);
    }
    m.counter("stale_forming_total", "Forming updates older than what was already sent.", c.stale_forming);
    m.counter("stale_closed_total", "Closed candles at or before the series head, dropped.", c.stale_closed);
    m.counter("closed_accepted_total", "Closed candles accepted for persistence.", c.closed_accepted);
    m.counter("flushes_total", "Closed-buffer flushes to the store.", c.flushes);
    m.counter("candles_persisted_total", "Candles written to the store.", c.candles_persisted);
    m.counter("store_write_errors_total", "Failed store writes (retried from the backlog).", c.store_write_errors);
    m.counter("store_read_errors_total", "Failed store reads.", c.store_read_errors);
    m.counter(
        "closed_dropped_backlog_full_total",
        "Closed candles dropped because the store backlog was full.",
        c.closed_dropped_backlog_full,
    );
    m.family("frames_sent_total", "counter", "Candle frames queued to clients, by kind.");
    m.sample("frames_sent_total", &[("kind", "forming")], c.frames_forming as f64);
    m.sample("frames_sent_total", &[("kind", "closed")], c.frames_closed as f64);
    m.counter("forming_coalesced_total", "Forming updates replaced by a newer one before sending.", c.forming_coalesced);
    m.counter("gaps_sent_total", "Gap notices sent to clients.", c.gaps_sent);
    m.counter("catchup_candles_total", "Candles sent as subscribe catch-up.", c.catchup_candles);
    m.counter("subscribes_total", "Subscriptions handled.", c.subscribes);
    m.counter("client_bad_requests_total", "Client messages refused as malformed.", c.client_bad_requests);
    m.counter(
        "client_messages_rate_limited_total",
        "WebSocket client messages dropped for exceeding --max-client-messages-per-s.",
        c.client_messages_rate_limited,
    );
    m.counter("client_limit_rejects_total", "Subscribes refused by the per-connection limit.", c.client_limit_rejects);
    m.counter("capacity_rejects_total", "Subscribes refused for on-demand job capacity.", c.capacity_rejects);
    m.counter("slow_consumer_closes_total", "Clients closed for falling too far behind.", c.slow_consumer_closes);
    m.counter("queue_drops_total", "Frames dropped from client queues.", c.queue_drops);
    m.counter("jobs_started_total", "Ingest jobs started.", c.jobs_started);
    m.counter("jobs_stopped_total", "Ingest jobs stopped.", c.jobs_stopped);
    m.counter("engine_inputs_total", "Inputs handled by the engine.", c.inputs);
    metrics::engine_activity(&mut m, engine);
    super::bus_metrics::bus_metrics(&mut m, engine, stats);
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
    m.counter("ws_bytes_out_total", "WebSocket bytes written to clients.", s.ws_bytes_out);
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

// ---------------------------------------------------------------- upgrade

/// Validates an RFC 6455 opening handshake and builds the 101 head.
fn upgrade(req: &Request) -> Result<Vec<u8>, Response> {
    if !req.header_has_token("upgrade", "websocket") {
        return Err(Response::error(426, "websocket_upgrade_required").with_header("Upgrade", "websocket"));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(Response::error(400, "websocket handshake needs 'Connection: Upgrade'"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Response::error(426, "unsupported websocket version (use 13)")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = req.header("sec-websocket-key").unwrap_or("");
    if !is_websocket_key(key) {
        return Err(Response::error(400, "invalid Sec-WebSocket-Key (want 16 bytes, base64)"));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(head.into_bytes())
}

/// Base64 of 16 bytes: 22 alphabet characters then `==`.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::Settings;
    use crate::model::Candle;
    use crate::store::MemoryStore;
    use crate::time::Timestamp;
    use serde_json::{json, Value};

    const S: &str = "binance:futures:BTC/USDT:1m";
    const ORIGIN: &str = "http://localhost:5173";

    /// An engine and the store that answers its effects at once.
    type Fx = crate::replay::hosted::Hosted<MemoryStore>;

    fn engine() -> Fx {
        let cfg = Settings { pins: vec![], ..Default::default() }.to_engine_config().unwrap();
        Fx::new(Engine::new(cfg, Timestamp::from_secs(1000)), MemoryStore::new())
    }

    fn candle(t: i64) -> Candle {
        Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 10.0 }
    }

    fn seeded(times: &[i64]) -> Fx {
        let mut e = engine();
        let candles = times.iter().map(|t| candle(*t)).collect();
        let input = Input::IngestClosed { request: 1, series_id: S.into(), candles };
        e.handle(input, Timestamp::from_secs(1000)).unwrap();
        e
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut raw = format!("{method} {target} HTTP/1.1\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        match crate::wire::http::parse_request(raw.as_bytes(), &Default::default()) {
            crate::wire::http::Parse::Complete { request, .. } => request,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn get(target: &str) -> Request {
        req("GET", target, &[], "")
    }

    fn reply_of(routed: Routed) -> Response {
        match routed {
            Routed::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn run(r: &Request, e: &Fx, cfg: &HttpConfig) -> Response {
        reply_of(route(r, &e.engine, &e.store, &ShellStats::default(), cfg))
    }

    fn body_json(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn enc(s: &str) -> String {
        s.replace(':', "%3A").replace('/', "%2F")
    }

    #[test]
    fn candles_tail_with_limit_matches_reference_example() {
        let e = seeded(&[100, 160, 220]);
        let r = run(&get(&format!("/api/market/candles?series_id={}&limit=2", enc(S))), &e, &HttpConfig::default());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let want = json!({"series_id": S, "server_head_time": 220, "candles": [
            {"candle_time":160,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10.0},
            {"candle_time":220,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10.0}]});
        assert_eq!(body_json(&r), want);
        // Key order as the reference emits it.
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.starts_with(r#"{"series_id":"binance:futures:BTC/USDT:1m","server_head_time":220,"candles":[{"candle_time":160,"open":1.0"#), "{text}");
    }

    #[test]
    fn candles_since_is_exclusive() {
        let e = seeded(&[100, 160, 220]);
        let r = run(&get(&format!("/api/market/candles?series_id={S}&since=160")), &e, &HttpConfig::default());
        let v = body_json(&r);
        let times: Vec<i64> = v["candles"].as_array().unwrap().iter().map(|c| c["candle_time"].as_i64().unwrap()).collect();
        assert_eq!((times, v["server_head_time"].clone()), (vec![220], json!(220)));
    }

    #[test]
    fn candles_of_an_unknown_series_are_empty_with_null_head() {
        let r = run(&get("/api/market/candles?series_id=binance:spot:ETH/USDT:1m"), &engine(), &HttpConfig::default());
        assert_eq!(body_json(&r), json!({"series_id":"binance:spot:ETH/USDT:1m","server_head_time":null,"candles":[]}));
    }

    #[test]
    fn candles_validation_errors_are_400_with_detail() {
        let e = engine();
        let cfg = HttpConfig::default();
        for target in [
            "/api/market/candles".to_string(),
            "/api/market/candles?series_id=".to_string(),
            format!("/api/market/candles?series_id={S}&limit=0"),
            format!("/api/market/candles?series_id={S}&limit=5001"),
            format!("/api/market/candles?series_id={S}&limit=abc"),
            format!("/api/market/candles?series_id={S}&since=-1"),
            format!("/api/market/candles?series_id={S}&since=1.5"),
            "/api/market/candles?series_id=binance:spot:BTC/USDT:7q".to_string(),
            "/api/market/candles?series_id=nonsense".to_string(),
        ] {
            let r = run(&get(&target), &e, &cfg);
            assert_eq!(r.status, 400, "{target}");
            assert!(body_json(&r)["detail"].as_str().is_some_and(|d| !d.is_empty()), "{target}");
        }
        let ok = run(&get(&format!("/api/market/candles?series_id={S}&limit=5000")), &e, &cfg);
        assert_eq!(ok.status, 200);
    }

    #[test]
    fn whitelist_lists_pins() {
        let cfg = Settings { pins: vec!["binance:spot:BTC/USDT:1m".into()], ..Default::default() }
            .to_engine_config()
            .unwrap();
        let e = Fx::new(Engine::new(cfg, Timestamp::from_secs(1000)), MemoryStore::new());
        let r = run(&get("/api/market/whitelist"), &e, &HttpConfig::default());
        assert_eq!(body_json(&r), json!({"series_ids":["binance:spot:BTC/USDT:1m"]}));
    }

    #[test]
    fn debug_and_dev_routes_are_404_unless_enabled() {
        let e = engine();
        let off = HttpConfig::default();
        let on = HttpConfig { enable_debug_api: true, enable_dev_api: true, ..HttpConfig::default() };
        let state = get("/api/market/debug/ingest_state");
        let r = run(&state, &e, &off);
        assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
        let r = run(&state, &e, &on);
        assert_eq!(r.status, 200);
        assert!(body_json(&r)["jobs"].is_array());
        let body = json!({"series_id": S, "candle": candle(60)}).to_string();
        let forming = req("POST", "/api/market/ingest/candle_forming", &[], &body);
        assert_eq!(run(&forming, &e, &off).status, 404);
        assert!(matches!(route(&forming, &e.engine, &e.store, &ShellStats::default(), &on), Routed::Apply { .. }));
        let batch = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &json!({"series_id":S,"candles":[candle(60)]}).to_string());
        assert_eq!(run(&batch, &e, &off).status, 404);
        assert!(matches!(route(&batch, &e.engine, &e.store, &ShellStats::default(), &on), Routed::Apply { .. }));
    }

    #[test]
    fn candle_closed_round_trip_through_the_engine() {
        let mut e = engine();
        let cfg = HttpConfig::default();
        let body = json!({"series_id": S, "candle": candle(1_700_000_040)}).to_string();
        let r = req("POST", "/api/market/ingest/candle_closed", &[("Content-Type", "application/json")], &body);
        let now = ShellStats { now_unix_s: 1_700_000_200.0, ..ShellStats::default() };
        let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &now, &cfg) else { panic!("not an apply") };
        assert_eq!(input, Input::IngestClosed { request: 0, series_id: S.into(), candles: vec![candle(1_700_000_040)] });
        let result = e.handle(input, Timestamp::from_secs(1_700_000_200));
        let resp = apply_reply(reply, result, &r, &cfg);
        assert_eq!(resp.status, 200);
        assert_eq!(String::from_utf8(resp.body).unwrap(), format!(r#"{{"ok":true,"series_id":"{S}","candle_time":1700000040}}"#));
        assert_eq!(e.store.head_time(S).unwrap(), Some(1_700_000_040));
    }

    #[test]
    fn forming_reply_and_batch_reply_shapes() {
        let cfg = HttpConfig { enable_debug_api: true, enable_dev_api: true, ..HttpConfig::default() };
        let mut e = engine();
        let r = req("POST", "/api/market/ingest/candle_forming", &[], &json!({"series_id": S, "candle": candle(60)}).to_string());
        let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
        assert!(matches!(input, Input::IngestForming { .. }));
        let result = e.handle(input, Timestamp::from_secs(1000));
        assert_eq!(body_json(&apply_reply(reply, result, &r, &cfg)), json!({"ok":true,"series_id":S,"candle_time":60}));

        let batch = json!({"series_id": S, "candles": [candle(60), candle(120), candle(180)], "publish_ws": true});
        let r = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &batch.to_string());
        let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
        let result = e.handle(input, Timestamp::from_secs(1000));
        let text = String::from_utf8(apply_reply(reply, result, &r, &cfg).body).unwrap();
        assert_eq!(text, format!(r#"{{"ok":true,"series_id":"{S}","count":3,"first_candle_time":60,"last_candle_time":180}}"#));

        let empty = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &json!({"series_id": S, "candles": []}).to_string());
        assert_eq!(run(&empty, &e, &cfg).status, 400);
    }

    #[test]
    fn ingest_errors_map_to_400_or_500() {
        let cfg = HttpConfig::default();
        let r = get("/");
        let reply = || ApplyReply::Candle { series_id: S.into(), candle_time: 1 };
        let bad = apply_reply(reply(), Err("invalid candle at 1: negative value".into()), &r, &cfg);
        assert_eq!((bad.status, body_json(&bad)), (400, json!({"detail":"invalid candle at 1: negative value"})));
        let failed = apply_reply(reply(), Err(format!("ingest_pipeline_failed:store.upsert_many_closed:{S}: disk")), &r, &cfg);
        assert_eq!(failed.status, 500);
        assert!(body_json(&failed)["detail"].as_str().unwrap().starts_with("ingest_pipeline_failed:"));
        // And the engine really produces the 500 prefix when the store fails.
        let mut e = engine();
        e.store.fail_writes(true);
        let input = Input::IngestClosed { request: 1, series_id: S.into(), candles: vec![candle(60)] };
        let result = e.handle(input, Timestamp::from_secs(1000));
        assert_eq!(apply_reply(reply(), result, &r, &cfg).status, 500);
    }

    #[test]
    fn ingest_body_problems_are_refused_before_the_engine() {
        let e = engine();
        let cfg = HttpConfig::default();
        let path = "/api/market/ingest/candle_closed";
        type Case<'a> = (&'a [(&'a str, &'a str)], String, u16);
        let cases: [Case; 4] = [
            (&[], "not json".into(), 400),
            (&[], json!({"series_id": S}).to_string(), 400),
            (&[], json!({"series_id": "bad", "candle": candle(1)}).to_string(), 400),
            (&[("Content-Type", "text/plain")], json!({"series_id": S, "candle": candle(1)}).to_string(), 415),
        ];
        for (headers, body, status) in cases {
            let r = run(&req("POST", path, headers, &body), &e, &cfg);
            assert_eq!(r.status, status, "{body}");
            assert!(body_json(&r)["detail"].is_string());
        }
    }

    #[test]
    fn candle_closed_is_404_when_the_ingest_api_is_off() {
        let e = engine();
        let off = HttpConfig { enable_ingest_api: false, ..HttpConfig::default() };
        let body = json!({"series_id": S, "candle": candle(60)}).to_string();
        let r = run(&req("POST", "/api/market/ingest/candle_closed", &[], &body), &e, &off);
        assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
        let on = route(&req("POST", "/api/market/ingest/candle_closed", &[], &body), &e.engine, &e.store, &ShellStats::default(), &HttpConfig::default());
        assert!(matches!(on, Routed::Apply { .. }));
    }

    #[test]
    fn ingest_refuses_off_grid_and_future_candles_and_accepts_unbounded_high_low() {
        let mut e = engine(); // now = 1000 s: the 1m candle open now is 960
        let cfg = HttpConfig::default();
        let post = |c: Candle| req("POST", "/api/market/ingest/candle_closed", &[], &json!({"series_id": S, "candle": c}).to_string());
        for (t, want) in [(940, "candle_time_misaligned"), (1020, "candle_time_in_future"), (99_999_999_960, "candle_time_in_future")] {
            let r = run(&post(candle(t)), &e, &cfg);
            assert_eq!(r.status, 400, "{t}");
            assert!(body_json(&r)["detail"].as_str().unwrap().starts_with(want), "{t}: {:?}", body_json(&r));
        }
        let batch = json!({"series_id": S, "candles": [candle(60), candle(90)]}).to_string();
        let dev = HttpConfig { enable_dev_api: true, ..HttpConfig::default() };
        let r = run(&req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &batch), &e, &dev);
        assert!(body_json(&r)["detail"].as_str().unwrap().starts_with("candle_time_misaligned"));
        // The shell's clock counts when it is ahead of the engine's.
        let later = ShellStats { now_unix_s: 1100.5, ..ShellStats::default() };
        assert!(matches!(route(&post(candle(1080)), &e.engine, &e.store, &later, &cfg), Routed::Apply { .. }));
        // High below open is stored (the reference accepts it), the open candle too.
        let odd = Candle { candle_time: 960, open: 5.0, high: 1.0, low: 0.5, close: 1.5, volume: 1.0 };
        let Routed::Apply { input, reply } = route(&post(odd), &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
        let result = e.handle(input, Timestamp::from_secs(1000));
        assert_eq!(apply_reply(reply, result, &post(odd), &cfg).status, 200);
        assert_eq!(e.store.head_time(S).unwrap(), Some(960));
    }

    #[test]
    fn preflight_on_any_path_is_204_with_cors() {
        let e = engine();
        let cfg = HttpConfig::default();
        let pre = req("OPTIONS", "/api/not/served", &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")], "");
        let r = run(&pre, &e, &cfg);
        assert_eq!(r.status, 204);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
        let gated = req("OPTIONS", "/api/market/debug/ingest_state", &[("Origin", ORIGIN)], "");
        assert_eq!(run(&gated, &e, &cfg).status, 204);
        // Without an Origin it is no preflight: an unknown path stays 404.
        assert_eq!(run(&req("OPTIONS", "/api/not/served", &[], ""), &e, &cfg).status, 404);
        let evil = req("OPTIONS", "/api/not/served", &[("Origin", "https://evil.example")], "");
        assert_eq!(run(&evil, &e, &cfg).status, 403);
    }

    #[test]
    fn unknown_path_404_wrong_method_405() {
        let e = engine();
        let cfg = HttpConfig::default();
        let r = run(&get("/nope"), &e, &cfg);
        assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
        let r = run(&req("POST", "/api/market/candles", &[], ""), &e, &cfg);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
        assert_eq!(run(&get("/api/market/ingest/candle_closed"), &e, &cfg).status, 405);
    }

    #[test]
    fn cors_preflight_and_allowed_origin_echo() {
        let e = engine();
        let cfg = HttpConfig::default();
        let pre = req("OPTIONS", "/api/market/candles", &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")], "");
        let r = run(&pre, &e, &cfg);
        assert_eq!(r.status, 204);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
        assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type, Authorization"));
        assert_eq!(r.header("vary"), Some("Origin"));
        let mut out = Vec::new();
        r.write_to(&mut out, true);
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));

        let plain = run(&req("GET", "/health", &[("Origin", "http://127.0.0.1:5173")], ""), &e, &cfg);
        assert_eq!(plain.header("access-control-allow-origin"), Some("http://127.0.0.1:5173"));
        let no_origin = run(&get("/health"), &e, &cfg);
        assert_eq!((no_origin.header("access-control-allow-origin"), no_origin.header("vary")), (None, Some("Origin")));
        let errors_too = run(&req("GET", "/nope", &[("Origin", ORIGIN)], ""), &e, &cfg);
        assert_eq!(errors_too.header("access-control-allow-origin"), Some(ORIGIN));
    }

    #[test]
    fn foreign_origin_is_403_unless_the_list_is_empty_or_wildcard() {
        let e = engine();
        let evil = req("GET", "/api/market/whitelist", &[("Origin", "https://evil.example")], "");
        let r = run(&evil, &e, &HttpConfig::default());
        assert_eq!((r.status, body_json(&r)), (403, json!({"detail":"origin_not_allowed"})));
        assert_eq!(r.header("access-control-allow-origin"), None);
        let open = HttpConfig { cors_origins: vec![], ..HttpConfig::default() };
        let r = run(&evil, &e, &open);
        assert_eq!((r.status, r.header("access-control-allow-origin"), r.header("vary")), (200, None, None));
        let any = HttpConfig { cors_origins: vec!["*".into()], ..HttpConfig::default() };
        assert_eq!(run(&evil, &e, &any).header("access-control-allow-origin"), Some("https://evil.example"));
    }

    fn ws_headers(key: &str) -> Vec<(&str, &str)> {
        vec![
            ("Host", "localhost"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ]
    }

    #[test]
    fn websocket_upgrade_uses_the_rfc_accept_key() {
        let r = req("GET", "/ws/market", &ws_headers("dGhlIHNhbXBsZSBub25jZQ=="), "");
        let Routed::Upgrade { response } = route(&r, &engine().engine, &MemoryStore::new(), &ShellStats::default(), &HttpConfig::default()) else {
            panic!("not an upgrade")
        };
        assert_eq!(
            String::from_utf8(response).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn websocket_upgrade_refusals() {
        let e = engine();
        let cfg = HttpConfig::default();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let plain = run(&get("/ws/market"), &e, &cfg);
        assert_eq!((plain.status, plain.header("upgrade")), (426, Some("websocket")));
        let mut h = ws_headers(key);
        h[3].1 = "8";
        assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 426);
        let mut h = ws_headers("short==");
        assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 400);
        h = ws_headers(key);
        h[2].1 = "keep-alive";
        assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 400);
        let mut h = ws_headers(key);
        h.push(("Origin", "https://evil.example"));
        assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 403);
        let mut h = ws_headers(key);
        h.push(("Origin", ORIGIN));
        assert!(matches!(route(&req("GET", "/ws/market", &h, ""), &e.engine, &e.store, &ShellStats::default(), &cfg), Routed::Upgrade { .. }));
    }

    #[test]
    fn shared_secret_guards_everything_but_health_and_preflight() {
        let e = engine();
        let cfg = HttpConfig { auth_token: Some("s3cret".into()), ..HttpConfig::default() };
        let denied = run(&get("/api/market/whitelist"), &e, &cfg);
        assert_eq!((denied.status, body_json(&denied)), (401, json!({"detail":"unauthorized"})));
        assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "Bearer wrong")], ""), &e, &cfg).status, 401);
        assert_eq!(run(&get("/api/market/whitelist?token=s3cre"), &e, &cfg).status, 401);
        assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "Bearer s3cret")], ""), &e, &cfg).status, 200);
        assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "bearer s3cret")], ""), &e, &cfg).status, 200);
        assert_eq!(run(&get("/api/market/whitelist?token=s3cret"), &e, &cfg).status, 200);
        assert_eq!(run(&get("/metrics"), &e, &cfg).status, 401);
        assert_eq!(run(&get("/health"), &e, &cfg).status, 200);
        assert_eq!(run(&req("OPTIONS", "/metrics", &[("Origin", ORIGIN)], ""), &e, &cfg).status, 204);
        let mut h = ws_headers("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 401);
        h.push(("Authorization", "Bearer s3cret"));
        assert!(matches!(route(&req("GET", "/ws/market", &h, ""), &e.engine, &e.store, &ShellStats::default(), &cfg), Routed::Upgrade { .. }));
        assert!(matches!(
            route(&req("GET", "/ws/market?token=s3cret", &ws_headers("dGhlIHNhbXBsZSBub25jZQ=="), ""), &e.engine, &e.store, &ShellStats::default(), &cfg),
            Routed::Upgrade { .. }
        ));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn health_reports_status_and_reasons() {
        let e = seeded(&[60]);
        let stats = ShellStats { store_ok: true, store_path: "m.db".into(), started_unix_s: 1000.0, now_unix_s: 1012.5, ..Default::default() };
        let r = reply_of(route(&get("/health"), &e.engine, &e.store, &stats, &HttpConfig::default()));
        let v = body_json(&r);
        assert_eq!((r.status, v["status"].clone(), v["uptime_s"].clone()), (200, json!("ok"), json!(12.5)));
        for key in ["store", "upstream", "clients", "jobs", "subscriptions", "reasons"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["jobs"], json!({"starting":0,"running":0,"dead":0}));
        assert_eq!(v["store"]["last_error"], json!(null));
        let down = ShellStats { store_ok: false, store_last_error: Some("store write_batches failed: full".into()), ..stats };
        let v = body_json(&reply_of(route(&get("/health"), &e.engine, &e.store, &down, &HttpConfig::default())));
        assert_eq!((v["status"].clone(), v["reasons"].clone()), (json!("degraded"), json!(["store_unavailable"])));
        assert_eq!(v["store"]["last_error"], json!("store write_batches failed: full"));
    }

    #[test]
    fn metrics_are_valid_prometheus_text() {
        let e = seeded(&[60, 120]);
        let stats = ShellStats { store_ok: true, store_write_count: 3, store_write_seconds_sum: 0.0125, http_requests: 7, ..Default::default() };
        let r = reply_of(route(&get("/metrics"), &e.engine, &e.store, &stats, &HttpConfig::default()));
        assert_eq!((r.status, r.header("content-type")), (200, Some("text/plain; version=0.0.4; charset=utf-8")));
        let text = String::from_utf8(r.body).unwrap();
        let mut typed = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "summary", "histogram"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "duplicate TYPE {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("klinegate_"), "{line}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    for pair in labels[1..labels.len() - 1].split(',') {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'), "{line}");
                    }
                }
            }
            let family = ["_sum", "_count", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "summary" || k == "histogram")));
            let family = family.unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
            if typed[family] == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
        }
        assert!(text.contains("klinegate_jobs{state=\"running\"} 0\n"));
        assert!(text.contains("klinegate_http_requests_total 7\n"));
        assert!(text.contains("klinegate_store_write_seconds_sum 0.0125\n"));
        assert!(text.contains("klinegate_store_write_seconds_count 3\n"));
        assert!(text.contains("klinegate_candles_persisted_total 2\n"));
        assert!(text.contains("# TYPE klinegate_exchange_to_queue_seconds histogram\n"));
        assert!(text.contains("klinegate_exchange_to_queue_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("klinegate_exchange_to_queue_seconds_count 0\n"));
        for name in ["rest_requests_total", "rest_failures_total", "rest_weight_total", "heals_started_total", "heals_done_total", "heals_failed_total", "late_close_fetches_total"] {
            assert!(text.contains(&format!("# TYPE klinegate_{name} counter\n")), "{name}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        use crate::shell::api::metrics::{escape_label, prom_float};
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(prom_float(f64::INFINITY), "+Inf");
        assert_eq!(prom_float(3.0), "3");
    }
}
