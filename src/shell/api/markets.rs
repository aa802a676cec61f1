//! The market directory behind `GET /api/market/top_markets` and
//! `GET /api/market/top_markets/stream`: Binance symbols ranked by 24 h quote
//! volume. It owns the query parsing, a cache per market of `exchangeInfo`
//! (the tradable symbols) and `ticker/24hr` (prices and volumes) with their
//! fetch times, what must be fetched when, the per-client limit on forced
//! refreshes, the reply JSON and the Server-Sent Events framing.
//!
//! It never opens a socket, never reads the clock and never touches the
//! engine: the server passes `Instant`s in, carries out the fetches this
//! module asks for (a `RestConn` each) and hands the bodies back. This is the
//! shell's business only; nothing here is recorded in the journal.

use crate::wire::http::{Request, Response};
use crate::model::Market;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The one exchange the directory knows.
pub const EXCHANGE: &str = "binance";
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on the force limiter's table (one entry per client address).
const MAX_FORCE_CLIENTS: usize = 10_000;
/// An SSE comment line: keeps proxies and browsers from timing the stream out.
pub const SSE_PING: &[u8] = b": ping\n\n";

/// How fresh the caches must be and how often a client may force a refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryConfig {
    pub exchange_info_ttl: Duration,
    pub tickers_ttl: Duration,
    /// A client address may ask `force=true` at most once per this.
    pub force_every: Duration,
    /// After a failed fetch, the same fetch is not tried again before this
    /// (or the exchange's `Retry-After`, when longer) by event streams and
    /// while older data is there to serve. With nothing to serve, a failure
    /// is never kept as the answer: a client's next request tries again
    /// (unless the exchange said when, with 429/418 or `Retry-After`).
    pub retry_after_failure: Duration,
    /// The full spot `exchangeInfo` is tens of megabytes.
    pub max_body_bytes: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            exchange_info_ttl: Duration::from_secs(3600),
            tickers_ttl: Duration::from_secs(10),
            force_every: Duration::from_secs(10),
            retry_after_failure: Duration::from_secs(5),
            max_body_bytes: 64 << 20,
        }
    }
}

/// The two documents a market's directory is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchKind {
    ExchangeInfo,
    Tickers,
}

impl FetchKind {
    const ALL: [FetchKind; 2] = [FetchKind::ExchangeInfo, FetchKind::Tickers];

    fn index(self) -> usize {
        match self {
            FetchKind::ExchangeInfo => 0,
            FetchKind::Tickers => 1,
        }
    }

    /// The REST path (spot `/api/v3`, USD-M `/fapi/v1`), without the base URL.
    pub fn path(self, market: Market) -> &'static str {
        match (market, self) {
            (Market::Spot, FetchKind::ExchangeInfo) => "/api/v3/exchangeInfo",
            (Market::Spot, FetchKind::Tickers) => "/api/v3/ticker/24hr",
            (Market::Futures, FetchKind::ExchangeInfo) => "/fapi/v1/exchangeInfo",
            (Market::Futures, FetchKind::Tickers) => "/fapi/v1/ticker/24hr",
        }
    }
}

// ------------------------------------------------------------------ queries

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopQuery {
    pub market: Market,
    pub quote_asset: String,
    pub limit: usize,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamQuery {
    pub top: TopQuery,
    pub interval: Duration,
    /// Close the stream after this many events (`top_markets` and `error`).
    pub max_events: Option<u64>,
}

fn bad(detail: String) -> Response {
    Response::error(400, &detail)
}

/// `exchange`, `market`, `quote_asset`, `limit`, `force`; a bad one is a 400.
pub fn parse_top_query(req: &Request) -> Result<TopQuery, Response> {
    let exchange = req.query_param("exchange").unwrap_or(EXCHANGE);
    if !exchange.eq_ignore_ascii_case(EXCHANGE) {
        return Err(bad(format!("unsupported exchange {exchange:?}: only \"binance\" is supported")));
    }
    let market_text = req.query_param("market").unwrap_or("spot");
    let market = Market::parse(&market_text.to_ascii_lowercase())
        .ok_or_else(|| bad(format!("market must be \"spot\" or \"futures\", not {market_text:?}")))?;
    let quote_asset = req.query_param("quote_asset").unwrap_or("USDT").to_ascii_uppercase();
    if quote_asset.is_empty() || quote_asset.len() > 20 || !quote_asset.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad(format!("quote_asset must be 1 to 20 letters or digits, not {quote_asset:?}")));
    }
    let limit = match req.query_param("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(bad(format!("limit must be an integer from 1 to {MAX_LIMIT}, not {text:?}"))),
        },
    };
    let force = match req.query_param("force") {
        None => false,
        Some(text) => parse_bool(text).ok_or_else(|| bad(format!("force must be true or false, not {text:?}")))?,
    };
    Ok(TopQuery { market, quote_asset, limit, force })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// The top-markets query plus `interval_s` (0.2–30, default 2) and `max_events`.
pub fn parse_stream_query(req: &Request) -> Result<StreamQuery, Response> {
    let top = parse_top_query(req)?;
    let interval = match req.query_param("interval_s") {
        None => DEFAULT_INTERVAL,
        Some(text) => match text.parse::<f64>() {
            Ok(s) if s.is_finite() && (MIN_INTERVAL.as_secs_f64()..=MAX_INTERVAL.as_secs_f64()).contains(&s) => {
                Duration::from_secs_f64(s)
            }
            _ => return Err(bad(format!("interval_s must be a number from 0.2 to 30, not {text:?}"))),
        },
    };
    let max_events = match req.query_param("max_events") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => return Err(bad(format!("max_events must be a positive integer, not {text:?}"))),
        },
    };
    Ok(StreamQuery { top, interval, max_events })
}

// -------------------------------------------------------------------- cache

/// A tradable symbol from `exchangeInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listing {
    symbol_id: String,
    base_asset: String,
    quote_asset: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Ticker {
    last_price: f64,
    quote_volume: f64,
    price_change_percent: f64,
}

struct Cached<T> {
    value: T,
    at: Instant,
}

#[derive(Default)]
struct MarketCache {
    listings: Option<Cached<Vec<Listing>>>,
    /// Keyed by symbol id; looked up only, never iterated for output.
    tickers: Option<Cached<HashMap<String, Ticker>>>,
    /// Every symbol exchangeInfo lists (any status or contract) as
    /// `BASE/QUOTE`, fetched but not yet handed to the engine.
    new_pairs: Option<Vec<String>>,
    in_flight: [bool; 2],
    /// No new fetch of that kind before this (after a failure or a 429/418).
    blocked_until: [Option<Instant>; 2],
    /// That pause is the exchange's own (429/418 or `Retry-After`): always kept.
    told: [bool; 2],
    last_error: Option<String>,
}

impl MarketCache {
    fn fetched_at(&self, kind: FetchKind) -> Option<Instant> {
        match kind {
            FetchKind::ExchangeInfo => self.listings.as_ref().map(|c| c.at),
            FetchKind::Tickers => self.tickers.as_ref().map(|c| c.at),
        }
    }
}

/// One row of the reply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    pub exchange: &'static str,
    pub market: &'static str,
    /// `BTC/USDT`.
    pub symbol: String,
    /// `BTCUSDT`, as the exchange spells it.
    pub symbol_id: String,
    pub base_asset: String,
    pub quote_asset: String,
    pub last_price: f64,
    pub quote_volume: f64,
    pub price_change_percent: f64,
}

/// The reply body (field order as documented).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopMarkets {
    pub exchange: &'static str,
    pub market: &'static str,
    pub quote_asset: String,
    pub limit: usize,
    pub generated_at_ms: i64,
    /// True when the data was already cached when the request arrived
    /// (including stale data served because the exchange failed).
    pub cached: bool,
    pub items: Vec<Item>,
}

impl TopMarkets {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and finite floats always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why no list can be given: nothing cached and the exchange failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub detail: String,
}

impl Unavailable {
    pub fn to_response(&self) -> Response {
        Response::error(502, &self.detail)
    }
}

/// The caches of both markets and the force limiter.
pub struct Directory {
    cfg: DirectoryConfig,
    markets: [MarketCache; 2],
    /// Last accepted `force=true` per client address (lookups and pruning only).
    forced_at: HashMap<IpAddr, Instant>,
}

impl Directory {
    pub fn new(cfg: DirectoryConfig) -> Directory {
        Directory { cfg, markets: Default::default(), forced_at: HashMap::new() }
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.cfg
    }

    /// True (and remembered) when `ip` may force a refresh now.
    pub fn allow_force(&mut self, ip: IpAddr, now: Instant) -> bool {
        let every = self.cfg.force_every;
        if self.forced_at.get(&ip).is_some_and(|t| now.saturating_duration_since(*t) < every) {
            return false;
        }
        if self.forced_at.len() >= MAX_FORCE_CLIENTS {
            self.forced_at.retain(|_, t| now.saturating_duration_since(*t) < every);
            if self.forced_at.len() >= MAX_FORCE_CLIENTS {
                return false; // a flood from that many addresses: refuse rather than grow
            }
        }
        self.forced_at.insert(ip, now);
        true
    }

    /// The fetches to start now for an answer about `market`; each is marked
    /// in flight. Stale (or, with `force`, any) tickers and stale
    /// exchangeInfo are fetched, unless a fetch of that kind is already under
    /// way or was refused recently.
    pub fn needed(&mut self, market: Market, force: bool, now: Instant) -> Vec<FetchKind> {
        self.needed_for(market, force, false, now)
    }

    /// [`Directory::needed`] for a client's request (`client` true): a kind
    /// with nothing cached is fetched again even during the pause after a
    /// plain failure — a failure is never kept as the answer. Event streams
    /// (`client` false) keep the pause, so they never retry in a tight loop.
    pub fn needed_for(&mut self, market: Market, force: bool, client: bool, now: Instant) -> Vec<FetchKind> {
        let ttls = [self.cfg.exchange_info_ttl, self.cfg.tickers_ttl];
        let cache = &mut self.markets[market.index()];
        let mut out = Vec::new();
        for kind in FetchKind::ALL {
            let i = kind.index();
            let paused = cache.blocked_until[i].is_some_and(|t| now < t);
            let retry_now = client && !cache.told[i] && cache.fetched_at(kind).is_none();
            if cache.in_flight[i] || (paused && !retry_now) {
                continue;
            }
            let stale = cache.fetched_at(kind).is_none_or(|at| now.saturating_duration_since(at) >= ttls[i]);
            if stale || (force && kind == FetchKind::Tickers) {
                cache.in_flight[i] = true;
                out.push(kind);
            }
        }
        out
    }

    /// Whether `market`'s exchangeInfo should be fetched now to keep the
    /// engine's symbol list fresh (missing or older than its TTL, not under
    /// way, not refused recently); when so it is marked in flight.
    pub fn symbol_list_due(&mut self, market: Market, now: Instant) -> bool {
        let ttl = self.cfg.exchange_info_ttl;
        let cache = &mut self.markets[market.index()];
        let i = FetchKind::ExchangeInfo.index();
        if cache.in_flight[i] || cache.blocked_until[i].is_some_and(|t| now < t) {
            return false;
        }
        let stale = cache.fetched_at(FetchKind::ExchangeInfo).is_none_or(|at| now.saturating_duration_since(at) >= ttl);
        cache.in_flight[i] |= stale;
        stale
    }

    /// The symbols of the last exchangeInfo fetched, once (`BASE/QUOTE`).
    pub fn take_new_pairs(&mut self, market: Market) -> Option<Vec<String>> {
        self.markets[market.index()].new_pairs.take()
    }

    /// True while a fetch for `market` is under way (answers wait for it).
    pub fn busy(&self, market: Market) -> bool {
        self.markets[market.index()].in_flight.iter().any(|f| *f)
    }

    /// A fetch ended. `Ok((status, body, retry_after_s))` for any HTTP
    /// answer, `Err(reason)` when there was none. Failures keep the old cache,
    /// and let every client force its next refresh at once (the limiter must
    /// not block the first retry after an error).
    pub fn on_fetched(
        &mut self,
        market: Market,
        kind: FetchKind,
        outcome: Result<(u16, &str, Option<u64>), String>,
        now: Instant,
    ) -> Result<(), String> {
        let result = self.record_fetch(market, kind, outcome, now);
        if result.is_err() {
            self.forced_at.clear();
        }
        result
    }

    fn record_fetch(
        &mut self,
        market: Market,
        kind: FetchKind,
        outcome: Result<(u16, &str, Option<u64>), String>,
        now: Instant,
    ) -> Result<(), String> {
        let retry_floor = self.cfg.retry_after_failure;
        let cache = &mut self.markets[market.index()];
        let i = kind.index();
        cache.in_flight[i] = false;
        let parsed = match outcome {
            Ok((200, body, _)) => match kind {
                FetchKind::ExchangeInfo => parse_exchange_info(market, body).map(|(l, pairs)| {
                    cache.listings = Some(Cached { value: l, at: now });
                    cache.new_pairs = Some(pairs);
                }),
                FetchKind::Tickers => parse_tickers(body).map(|t| {
                    cache.tickers = Some(Cached { value: t, at: now });
                }),
            },
            Ok((status, body, retry_after_s)) => {
                let told = retry_after_s.is_some() || matches!(status, 429 | 418);
                let wait = Duration::from_secs(retry_after_s.unwrap_or(0)).max(retry_floor);
                cache.blocked_until[i] = Some(now + wait);
                cache.told[i] = told;
                let excerpt: String = body.chars().take(200).collect();
                return Err(record(cache, format!("GET {}: HTTP {status}: {excerpt}", kind.path(market))));
            }
            Err(reason) => Err(reason),
        };
        match parsed {
            Ok(()) => {
                cache.blocked_until[i] = None;
                cache.last_error = None;
                Ok(())
            }
            Err(reason) => {
                cache.blocked_until[i] = Some(now + retry_floor);
                cache.told[i] = false;
                Err(record(cache, reason))
            }
        }
    }

    /// The ranked list for `q` from what is cached. `arrived` is when the
    /// request came in: data fetched before it is reported `cached`.
    pub fn top(&self, q: &TopQuery, arrived: Instant, now_ms: i64) -> Result<TopMarkets, Unavailable> {
        let cache = &self.markets[q.market.index()];
        let (Some(listings), Some(tickers)) = (&cache.listings, &cache.tickers) else {
            let why = cache.last_error.as_deref().unwrap_or("no data fetched yet");
            return Err(Unavailable { detail: format!("upstream_unavailable: {why}") });
        };
        let market = q.market.as_str();
        let mut items: Vec<Item> = listings
            .value
            .iter()
            .filter(|l| l.quote_asset == q.quote_asset)
            .filter_map(|l| {
                let t = tickers.value.get(&l.symbol_id)?;
                Some(Item {
                    exchange: EXCHANGE,
                    market,
                    symbol: format!("{}/{}", l.base_asset, l.quote_asset),
                    symbol_id: l.symbol_id.clone(),
                    base_asset: l.base_asset.clone(),
                    quote_asset: l.quote_asset.clone(),
                    last_price: t.last_price,
                    quote_volume: t.quote_volume,
                    price_change_percent: t.price_change_percent,
                })
            })
            .collect();
        // Ties broken by symbol so equal volumes list the same way every time.
        items.sort_by(|a, b| b.quote_volume.total_cmp(&a.quote_volume).then_with(|| a.symbol_id.cmp(&b.symbol_id)));
        items.truncate(q.limit);
        let cached = tickers.at <= arrived && listings.at <= arrived;
        Ok(TopMarkets {
            exchange: EXCHANGE,
            market,
            quote_asset: q.quote_asset.clone(),
            limit: q.limit,
            generated_at_ms: now_ms,
            cached,
            items,
        })
    }
}

fn record(cache: &mut MarketCache, reason: String) -> String {
    cache.last_error = Some(reason.clone());
    reason
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExchangeInfo {
    symbols: Vec<RawSymbol>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSymbol {
    symbol: String,
    status: String,
    base_asset: String,
    quote_asset: String,
    #[serde(default)]
    contract_type: Option<String>,
}

/// The directory's listings (TRADING symbols; on futures, PERPETUAL contracts
/// only) and every listed pair `BASE/QUOTE` (any status or contract: a
/// symbol on a break still has history).
fn parse_exchange_info(market: Market, body: &str) -> Result<(Vec<Listing>, Vec<String>), String> {
    let raw: RawExchangeInfo =
        serde_json::from_str(body).map_err(|e| format!("{}: unreadable exchangeInfo: {e}", market.as_str()))?;
    let mut pairs: Vec<String> = raw.symbols.iter().map(|s| format!("{}/{}", s.base_asset, s.quote_asset)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let listings = raw
        .symbols
        .into_iter()
        .filter(|s| s.status == "TRADING")
        .filter(|s| market == Market::Spot || s.contract_type.as_deref() == Some("PERPETUAL"))
        .map(|s| Listing { symbol_id: s.symbol, base_asset: s.base_asset, quote_asset: s.quote_asset })
        .collect();
    Ok((listings, pairs))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTicker {
    symbol: String,
    last_price: String,
    quote_volume: String,
    price_change_percent: String,
}

/// Tickers whose numbers do not parse (or are not finite) are left out.
fn parse_tickers(body: &str) -> Result<HashMap<String, Ticker>, String> {
    let raw: Vec<RawTicker> = serde_json::from_str(body).map_err(|e| format!("unreadable ticker/24hr: {e}"))?;
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|x| x.is_finite());
    Ok(raw
        .into_iter()
        .filter_map(|t| {
            let ticker = Ticker {
                last_price: number(&t.last_price)?,
                quote_volume: number(&t.quote_volume)?,
                price_change_percent: number(&t.price_change_percent)?,
            };
            Some((t.symbol, ticker))
        })
        .collect())
}

// ---------------------------------------------------------------------- SSE

/// The response head of an event stream: no length, the body ends when the
/// connection does. `extra` carries the CORS headers.
pub fn sse_head(extra: &[(String, String)]) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    head.into_bytes()
}

/// One event block. `data` must be one line (compact JSON is).
pub fn sse_event(id: u64, event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("id: {id}\nevent: {event}\ndata: ").into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// One client's event stream: when it is due and what it last said.
pub struct SseStream {
    pub query: StreamQuery,
    pub next_due: Instant,
    /// Due, but waiting for a fetch of its market to finish.
    pub waiting: bool,
    last_items: Option<Vec<Item>>,
    last_error: Option<String>,
    next_id: u64,
    events: u64,
}

impl SseStream {
    /// The first tick is due at once.
    pub fn new(query: StreamQuery, now: Instant) -> SseStream {
        SseStream { query, next_due: now, waiting: false, last_items: None, last_error: None, next_id: 1, events: 0 }
    }

    pub fn is_due(&self, now: Instant) -> bool {
        !self.waiting && now >= self.next_due
    }

    /// The bytes of one tick: an event when the list changed (or a new
    /// failure), a ping otherwise. True when `max_events` is reached and the
    /// stream must close after these bytes.
    pub fn tick(&mut self, answer: Result<TopMarkets, Unavailable>, now: Instant) -> (Vec<u8>, bool) {
        self.waiting = false;
        self.next_due = now + self.query.interval;
        let bytes = match answer {
            Ok(top) if self.last_items.as_ref() != Some(&top.items) || self.last_error.is_some() => {
                self.last_error = None;
                let bytes = self.event("top_markets", &top.to_json());
                self.last_items = Some(top.items);
                bytes
            }
            Err(e) if self.last_error.as_ref() != Some(&e.detail) => {
                let body = serde_json::to_vec(&serde_json::json!({ "detail": e.detail })).unwrap_or_default();
                self.last_error = Some(e.detail);
                self.event("error", &body)
            }
            _ => SSE_PING.to_vec(),
        };
        let done = self.query.max_events.is_some_and(|max| self.events >= max);
        (bytes, done)
    }

    fn event(&mut self, name: &str, data: &[u8]) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        self.events += 1;
        sse_event(id, name, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> Request {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        match crate::wire::http::parse_request(raw.as_bytes(), &Default::default()) {
            crate::wire::http::Parse::Complete { request, .. } => request,
            _ => panic!("test request must parse"),
        }
    }

    fn spot_info() -> String {
        serde_json::json!({"symbols": [
            {"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT"},
            {"symbol":"ETHUSDT","status":"TRADING","baseAsset":"ETH","quoteAsset":"USDT"},
            {"symbol":"OLDUSDT","status":"BREAK","baseAsset":"OLD","quoteAsset":"USDT"},
            {"symbol":"ETHBTC","status":"TRADING","baseAsset":"ETH","quoteAsset":"BTC"},
        ]})
        .to_string()
    }

    fn tickers(btc_volume: &str) -> String {
        serde_json::json!([
            {"symbol":"BTCUSDT","lastPrice":"60000.5","quoteVolume":btc_volume,"priceChangePercent":"1.5"},
            {"symbol":"ETHUSDT","lastPrice":"3000","quoteVolume":"2000","priceChangePercent":"-2"},
            {"symbol":"OLDUSDT","lastPrice":"1","quoteVolume":"99999","priceChangePercent":"0"},
            {"symbol":"ETHBTC","lastPrice":"0.05","quoteVolume":"50","priceChangePercent":"0"},
        ])
        .to_string()
    }

    fn query(limit: usize) -> TopQuery {
        TopQuery { market: Market::Spot, quote_asset: "USDT".into(), limit, force: false }
    }

    fn loaded(now: Instant) -> Directory {
        let mut d = Directory::new(DirectoryConfig::default());
        assert_eq!(d.needed(Market::Spot, false, now), vec![FetchKind::ExchangeInfo, FetchKind::Tickers]);
        assert!(d.busy(Market::Spot));
        d.on_fetched(Market::Spot, FetchKind::ExchangeInfo, Ok((200, &spot_info(), None)), now).unwrap();
        d.on_fetched(Market::Spot, FetchKind::Tickers, Ok((200, &tickers("1000"), None)), now).unwrap();
        d
    }

    #[test]
    fn queries_parse_with_defaults_and_refuse_bad_values() {
        let q = parse_top_query(&get("/x")).unwrap();
        assert_eq!(q, TopQuery { market: Market::Spot, quote_asset: "USDT".into(), limit: 20, force: false });
        let q = parse_top_query(&get("/x?market=futures&quote_asset=usdc&limit=5&force=true")).unwrap();
        assert_eq!((q.market, q.quote_asset.as_str(), q.limit, q.force), (Market::Futures, "USDC", 5, true));
        for bad in ["exchange=okx", "market=coinm", "limit=0", "limit=101", "limit=x", "force=maybe", "quote_asset=US-DT"] {
            assert_eq!(parse_top_query(&get(&format!("/x?{bad}"))).unwrap_err().status, 400, "{bad}");
        }
        let s = parse_stream_query(&get("/x?interval_s=0.5&max_events=3")).unwrap();
        assert_eq!((s.interval, s.max_events), (Duration::from_millis(500), Some(3)));
        assert_eq!(parse_stream_query(&get("/x")).unwrap().interval, Duration::from_secs(2));
        for bad in ["interval_s=0.1", "interval_s=31", "interval_s=nan", "max_events=0"] {
            assert_eq!(parse_stream_query(&get(&format!("/x?{bad}"))).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn ranks_trading_symbols_of_the_quote_by_volume() {
        let t0 = Instant::now();
        let d = loaded(t0);
        let top = d.top(&query(20), t0 + Duration::from_secs(1), 5).unwrap();
        let ids: Vec<&str> = top.items.iter().map(|i| i.symbol_id.as_str()).collect();
        assert_eq!(ids, ["ETHUSDT", "BTCUSDT"]);
        assert_eq!(top.items[1].symbol, "BTC/USDT");
        assert_eq!(top.items[1].last_price, 60000.5);
        assert!(top.cached);
        assert_eq!(d.top(&query(1), t0, 5).unwrap().items.len(), 1);
        // Fetched after the request arrived: fresh.
        assert!(!d.top(&query(1), t0 - Duration::from_millis(1), 5).unwrap().cached);
    }

    #[test]
    fn futures_keep_perpetuals_only() {
        let body = serde_json::json!({"symbols": [
            {"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","contractType":"PERPETUAL"},
            {"symbol":"BTCUSDT_250627","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","contractType":"CURRENT_QUARTER"},
        ]})
        .to_string();
        let (l, pairs) = parse_exchange_info(Market::Futures, &body).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(pairs, vec!["BTC/USDT".to_string()], "every listed pair, once, for the engine's symbol check");
        assert_eq!(parse_exchange_info(Market::Spot, &body).unwrap().0.len(), 2);
    }

    #[test]
    fn ttl_force_and_failures_decide_the_fetches() {
        let t0 = Instant::now();
        let mut d = loaded(t0);
        let s = |n| t0 + Duration::from_secs(n);
        assert!(d.needed(Market::Spot, false, s(5)).is_empty());
        assert_eq!(d.needed(Market::Spot, true, s(5)), vec![FetchKind::Tickers]);
        assert!(d.needed(Market::Spot, true, s(5)).is_empty(), "already in flight");
        let failed = d.on_fetched(Market::Spot, FetchKind::Tickers, Err("reset".into()), s(6));
        assert_eq!(failed, Err("reset".into()));
        // Stale data still answers; no retry before the failure pause.
        assert!(d.top(&query(5), s(7), 0).unwrap().cached);
        assert!(d.needed(Market::Spot, false, s(10)).is_empty());
        assert_eq!(d.needed(Market::Spot, false, s(11)), vec![FetchKind::Tickers]);
        let _ = d.on_fetched(Market::Spot, FetchKind::Tickers, Ok((429, "{}", Some(60))), s(11));
        assert!(d.needed(Market::Spot, true, s(30)).is_empty(), "Retry-After honoured even when forced");
        assert_eq!(d.needed(Market::Spot, false, s(3700)), vec![FetchKind::ExchangeInfo, FetchKind::Tickers]);
    }

    #[test]
    fn nothing_cached_and_a_failure_is_unavailable() {
        let t0 = Instant::now();
        let mut d = Directory::new(DirectoryConfig::default());
        let _ = d.needed(Market::Futures, false, t0);
        let _ = d.on_fetched(Market::Futures, FetchKind::ExchangeInfo, Ok((500, "oops", None)), t0);
        let _ = d.on_fetched(Market::Futures, FetchKind::Tickers, Err("reset".into()), t0);
        let q = TopQuery { market: Market::Futures, ..query(5) };
        let e = d.top(&q, t0, 0).unwrap_err();
        assert!(e.detail.starts_with("upstream_unavailable"), "{e:?}");
        assert_eq!(e.to_response().status, 502);
        // An event stream keeps the pause; a client's request fetches again.
        assert!(d.needed(Market::Futures, false, t0).is_empty());
        assert_eq!(d.needed_for(Market::Futures, false, true, t0), vec![FetchKind::ExchangeInfo, FetchKind::Tickers]);
        // Unless the exchange said when.
        let _ = d.on_fetched(Market::Futures, FetchKind::Tickers, Ok((429, "{}", Some(30))), t0);
        let later = t0 + Duration::from_secs(1);
        assert!(d.needed_for(Market::Futures, false, true, later).is_empty(), "exchangeInfo in flight, tickers told to wait");
    }

    #[test]
    fn a_failed_fetch_lets_the_next_forced_refresh_through() {
        let t0 = Instant::now();
        let mut d = loaded(t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(d.allow_force(a, t0));
        assert_eq!(d.needed(Market::Spot, true, t0), vec![FetchKind::Tickers]);
        let _ = d.on_fetched(Market::Spot, FetchKind::Tickers, Err("connection refused".into()), t0);
        assert!(d.allow_force(a, t0 + Duration::from_secs(1)), "first retry after the error");
        assert!(!d.allow_force(a, t0 + Duration::from_secs(2)), "then limited again");
    }

    #[test]
    fn force_is_limited_per_address() {
        let t0 = Instant::now();
        let mut d = Directory::new(DirectoryConfig::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(d.allow_force(a, t0));
        assert!(!d.allow_force(a, t0 + Duration::from_secs(9)));
        assert!(d.allow_force(b, t0 + Duration::from_secs(9)));
        assert!(d.allow_force(a, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn stream_sends_events_on_change_pings_otherwise_and_stops_at_max() {
        let t0 = Instant::now();
        let mut d = loaded(t0);
        let sq = StreamQuery { top: query(5), interval: Duration::from_secs(1), max_events: Some(2) };
        let mut s = SseStream::new(sq.clone(), t0);
        assert!(s.is_due(t0));
        let (first, done) = s.tick(d.top(&sq.top, t0, 1), t0);
        let text = String::from_utf8(first).unwrap();
        assert!(text.starts_with("id: 1\nevent: top_markets\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n") && !done);
        assert!(!s.is_due(t0 + Duration::from_millis(999)));
        let (same, done) = s.tick(d.top(&sq.top, t0, 2), t0 + Duration::from_secs(1));
        assert_eq!((same.as_slice(), done), (SSE_PING, false), "generated_at alone is no change");
        d.on_fetched(Market::Spot, FetchKind::Tickers, Ok((200, &tickers("5000"), None)), t0).unwrap();
        let (changed, done) = s.tick(d.top(&sq.top, t0, 3), t0 + Duration::from_secs(2));
        assert!(String::from_utf8(changed).unwrap().starts_with("id: 2\nevent: top_markets\n"));
        assert!(done);
        let mut e = SseStream::new(sq, t0);
        let (err, _) = e.tick(Err(Unavailable { detail: "upstream_unavailable: x".into() }), t0);
        assert_eq!(err, b"id: 1\nevent: error\ndata: {\"detail\":\"upstream_unavailable: x\"}\n\n");
        let (again, _) = e.tick(Err(Unavailable { detail: "upstream_unavailable: x".into() }), t0);
        assert_eq!(again, SSE_PING);
    }

    #[test]
    fn sse_head_has_no_length_and_carries_extra_headers() {
        let head = String::from_utf8(sse_head(&[("Vary".into(), "Origin".into())])).unwrap();
        assert!(head.contains("Content-Type: text/event-stream\r\n"));
        assert!(head.contains("Vary: Origin\r\n") && head.ends_with("\r\n\r\n"));
        assert!(!head.contains("Content-Length"));
    }
}
