//! The HTTP routes of the client port and the `/ws/market` upgrade decision:
//! a pure function of one parsed [`Request`], read-only engine state, the
//! shell's own figures ([`ShellStats`]) and [`HttpConfig`]. It owns the route
//! table, CORS, the optional shared-secret check and the reply shapes of
//! `docs/openapi.json` (the reference's). It never mutates the engine: writes come back as
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

use crate::wire::ws::deflate::{self, Accepted};
use crate::wire::http::{Request, Response};
use crate::engine::{CandlesReply, Engine, Input};
use crate::store::Store;
use crate::model::SeriesId;
use crate::shell::api::health;
use crate::shell::api::ingest;
use crate::shell::api::metrics;
use crate::shell::api::stats::ShellStats;

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

/// The routing decision for one request.
#[derive(Debug)]
pub enum Routed {
    /// Write this and keep going (honour `request.keep_alive`).
    Reply(Response),
    /// Give `input` a request id, feed it to `engine.handle(input, now)`,
    /// then answer its `Output::IngestDone { request, error }` with
    /// `apply_reply(reply, error, request, cfg)`.
    Apply { input: Input, reply: ApplyReply },
    /// Write these bytes (a complete `101 Switching Protocols` head); the
    /// connection is a WebSocket from the next byte on (bytes after the
    /// request's `consumed` are already WebSocket frames).
    /// `deflate`: the permessage-deflate offer the head accepted, if any.
    Upgrade { response: Vec<u8>, deflate: Option<crate::wire::ws::deflate::Accepted> },
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
        Endpoint::Metrics => reply(metrics::page(engine, stats), req, cfg),
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
            Ok((response, deflate)) => Routed::Upgrade { response, deflate },
            Err(refusal) => reply(refusal, req, cfg),
        },
    }
}

/// The reply to an ingest the engine has answered (`error` is its
/// `Output::IngestDone`'s), with CORS.
pub fn apply_reply(reply: ApplyReply, error: Option<String>, req: &Request, cfg: &HttpConfig) -> Response {
    with_cors(ingest::engine_reply(reply, error), req, cfg)
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

/// `GET /api/market/candles`: the tail when `since` is absent, else
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
        Ok(reply) if query.full => super::full_candles::respond(reply, store),
        Ok(reply) => ingest::serialized(200, &reply),
        Err(e) => Response::error(500, &format!("store_read_failed: {e}")),
    }
}

struct CandlesQuery {
    series_id: String,
    since: Option<i64>,
    limit: usize,
    /// `fields=full` (`full_candles`).
    full: bool,
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
        let full = super::full_candles::wants_full(req)?;
        Ok(CandlesQuery { series_id: series_id.to_string(), since, limit, full })
    }
}

// ---------------------------------------------------------------- upgrade

/// Validates an RFC 6455 opening handshake and builds the 101 head, accepting
/// permessage-deflate (RFC 7692) when the client offers it in a form we honour.
fn upgrade(req: &Request) -> Result<(Vec<u8>, Option<Accepted>), Response> {
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
    let offers = req.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"));
    let deflate = deflate::negotiate(offers.map(|(_, v)| v.as_str()));
    let extensions = match deflate {
        Some(_) => format!("Sec-WebSocket-Extensions: {}\r\n", deflate::ANSWER),
        None => String::new(),
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    );
    Ok((head.into_bytes(), deflate))
}

/// Base64 of 16 bytes: 22 alphabet characters then `==`.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
