//! The market directory (`GET /api/market/top_markets`) and its event streams
//! (`/top_markets/stream`): starting the exchange fetches the directory wants,
//! parking requests until they end, answering them, and ticking SSE streams.
//!
//! A parked request or waiting stream is answered when its market's fetches end
//! (or time out); at most `MAX_PARKED` requests wait at once.

use super::{Conn, Server, REST_TIMEOUT};
use crate::engine::LogLevel;
use crate::wire::http::Response;
use crate::shell::api::markets::{self, FetchKind, SseStream, TopQuery};
use crate::shell::conn::rest::{RestConn, RestLimits, RestOutcome};
use mio::Token;
use std::time::Instant;

/// A `top_markets` request waiting for its market's fetches.
pub(super) struct Parked {
    pub(super) key: usize,
    query: TopQuery,
    arrived: Instant,
    keep_alive: bool,
    cors: Vec<(String, String)>,
}

/// At most this many requests wait for the exchange at once; more get 503.
const MAX_PARKED: usize = 4096;

// ------------------------------------------------------- market directory

impl Server {
    /// `GET /api/market/top_markets[/stream]`: the reply now, or `None` when
    /// the request is parked until a fetch ends (or became an event stream).
    pub(super) fn directory_request(
        &mut self,
        key: usize,
        req: &crate::wire::http::Request,
        stream: bool,
        cors: Vec<(String, String)>,
    ) -> Option<Response> {
        let with_cors = |mut r: Response, cors: Vec<(String, String)>| {
            r.headers.extend(cors);
            Some(r)
        };
        if stream {
            return match markets::parse_stream_query(req) {
                Err(r) => with_cors(r, cors),
                Ok(_) if self.shutdown_at.is_some() => with_cors(Response::error(503, "shutting down"), cors),
                Ok(query) => {
                    self.open_event_stream(key, query, &cors);
                    None
                }
            };
        }
        let query = match markets::parse_top_query(req) {
            Ok(q) => q,
            Err(r) => return with_cors(r, cors),
        };
        if query.force {
            let ip = match self.conns.get(key) {
                Some(Conn::Http(h)) => h.peer.ip(),
                _ => return None,
            };
            if !self.directory.allow_force(ip, self.mono) {
                let every = self.directory.config().force_every.as_secs().max(1).to_string();
                return with_cors(Response::error(429, "rate_limited").with_header("Retry-After", &every), cors);
            }
        }
        self.start_directory_fetches(query.market, query.force, true);
        if !self.directory.busy(query.market) {
            return with_cors(self.directory_answer(&query, self.mono), cors);
        }
        if self.parked.len() >= MAX_PARKED {
            return with_cors(Response::error(503, "too many requests waiting for the exchange"), cors);
        }
        self.parked.push(Parked { key, query, arrived: self.mono, keep_alive: req.keep_alive, cors });
        None
    }

    fn directory_answer(&self, query: &TopQuery, arrived: Instant) -> Response {
        let now_ms = (self.now.as_nanos() / 1_000_000) as i64;
        match self.directory.top(query, arrived, now_ms) {
            Ok(top) => Response::text(200, "application/json", top.to_json()),
            Err(e) => e.to_response(),
        }
    }

    /// Starts the fetches the directory wants for `market` (`client`: for a
    /// client's request, not an event stream's tick). One that cannot even
    /// start counts as failed at once.
    fn start_directory_fetches(&mut self, market: crate::model::Market, force: bool, client: bool) {
        for kind in self.directory.needed_for(market, force, client, self.mono) {
            self.start_directory_fetch(market, kind);
        }
    }

    /// Keeps the engine's symbol lists fresh: each market's exchangeInfo is
    /// fetched at start and again after its TTL (in the roles that run
    /// ingest jobs; a `read` node starts none, so needs none).
    pub(super) fn refresh_symbol_lists(&mut self) {
        if !self.cfg.engine.supervisor.role.runs_ingest_jobs() || self.shutdown_at.is_some() {
            return;
        }
        for market in [crate::model::Market::Spot, crate::model::Market::Futures] {
            if self.directory.symbol_list_due(market, self.mono) {
                self.start_directory_fetch(market, FetchKind::ExchangeInfo);
            }
        }
    }

    /// Starts one fetch the directory marked in flight.
    fn start_directory_fetch(&mut self, market: crate::model::Market, kind: FetchKind) {
        let base = self.cfg.rest_base_url(market);
        let path = kind.path(market);
        let limits = RestLimits { max_body_bytes: self.directory.config().max_body_bytes, ..RestLimits::default() };
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        match RestConn::start_pooled(base, path, &self.tls, &mut self.rest_pool, self.poll.registry(), token) {
            Ok(conn) => {
                entry.insert(Conn::Directory { market, kind, conn: conn.with_limits(limits) });
                self.await_resolution(token.0);
            }
            Err(e) => {
                let reason = format!("GET {base}{path}: {e}");
                self.record_directory_fetch(market, kind, Err(reason));
            }
        }
    }

    pub(super) fn on_directory_event(&mut self, key: usize, readable: bool, writable: bool) {
        let outcome = match self.conns.get_mut(key) {
            Some(Conn::Directory { conn, .. }) => {
                let outcome = conn.on_event(readable, writable);
                let _ = conn.reregister(self.poll.registry(), Token(key));
                outcome
            }
            _ => return,
        };
        let Some(outcome) = outcome else { return };
        self.finish_directory_fetch(key, outcome);
    }

    pub(super) fn finish_directory_fetch(&mut self, key: usize, outcome: RestOutcome) {
        let Some(Conn::Directory { market, kind, conn }) = self.conns.try_remove(key) else { return };
        self.keep_rest_conn(conn);
        let result = match &outcome {
            RestOutcome::Response { status, body, retry_after_s, .. } => Ok((*status, body.as_str(), *retry_after_s)),
            RestOutcome::Failed { reason } => Err(reason.clone()),
        };
        self.record_directory_fetch(market, kind, result);
        self.settle_directory(market);
    }

    fn record_directory_fetch(
        &mut self,
        market: crate::model::Market,
        kind: FetchKind,
        result: Result<(u16, &str, Option<u64>), String>,
    ) {
        let path = kind.path(market);
        match self.directory.on_fetched(market, kind, result, self.mono) {
            Ok(()) => self.log(LogLevel::Debug, &format!("market_directory_fetched path={path}")),
            Err(e) => self.log(LogLevel::Warn, &format!("market_directory_fetch_failed path={path} error={e:?}")),
        }
        // The engine checks subscribed symbols against the market's list.
        if let Some(symbols) = self.directory.take_new_pairs(market) {
            self.apply(crate::engine::Input::SymbolsListed { market, symbols });
        }
    }

    /// Once no fetch of `market` is under way: answer its parked requests and
    /// the event streams that were waiting.
    fn settle_directory(&mut self, market: crate::model::Market) {
        if self.directory.busy(market) {
            return;
        }
        let (ready, waiting): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| p.query.market == market);
        self.parked = waiting;
        for p in ready {
            let mut response = self.directory_answer(&p.query, p.arrived);
            response.headers.extend(p.cors);
            if let Some(Conn::Http(h)) = self.conns.get_mut(p.key) {
                let mut buf = Vec::with_capacity(256 + response.body.len());
                response.write_to(&mut buf, p.keep_alive);
                h.queue(&buf);
                h.awaiting_reply = false;
                if !p.keep_alive {
                    h.close_after_write = true;
                }
            }
            // Requests pipelined behind the parked one are answered now.
            self.serve_requests(p.key);
            self.finish_http_io(p.key);
        }
        let streams: Vec<usize> =
            self.sse.iter().filter(|(_, s)| s.waiting && s.query.top.market == market).map(|(k, _)| *k).collect();
        for key in streams {
            self.tick_event_stream(key);
        }
    }

    pub(super) fn expire_directory_fetches(&mut self) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c, Conn::Directory { conn, .. } if self.mono.duration_since(conn.started_at()) >= REST_TIMEOUT)
            })
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let Some(Conn::Directory { market, kind, mut conn }) = self.conns.try_remove(key) else { continue };
            let _ = conn.deregister(self.poll.registry());
            let reason = format!("GET {}: timed out after {REST_TIMEOUT:?}", conn.url());
            self.record_directory_fetch(market, kind, Err(reason));
            self.settle_directory(market);
        }
    }

    // ---------------------------------------------------------- event streams

    /// The HTTP connection at `key` becomes an event stream: the head now,
    /// the first event at once (or when its market's fetch ends).
    fn open_event_stream(&mut self, key: usize, query: markets::StreamQuery, cors: &[(String, String)]) {
        let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
        h.queue(&markets::sse_head(cors));
        self.sse.insert(key, SseStream::new(query, self.mono));
        self.tick_event_stream(key);
    }

    pub(super) fn next_event_stream_due(&self) -> Option<Instant> {
        self.sse.values().filter(|s| !s.waiting).map(|s| s.next_due).min()
    }

    pub(super) fn tick_event_streams(&mut self) {
        let due: Vec<usize> = self.sse.iter().filter(|(_, s)| s.is_due(self.mono)).map(|(k, _)| *k).collect();
        for key in due {
            self.tick_event_stream(key);
        }
    }

    /// One tick: fetch first if the cache is stale (the stream waits), else
    /// an event or a ping; the stream ends after `max_events`.
    fn tick_event_stream(&mut self, key: usize) {
        let Some(query) = self.sse.get(&key).map(|s| s.query.top.clone()) else { return };
        self.start_directory_fetches(query.market, false, false);
        if self.directory.busy(query.market) {
            if let Some(s) = self.sse.get_mut(&key) {
                s.waiting = true;
            }
            return;
        }
        let now_ms = (self.now.as_nanos() / 1_000_000) as i64;
        let answer = self.directory.top(&query, self.mono, now_ms);
        let Some(stream) = self.sse.get_mut(&key) else { return };
        let (bytes, done) = stream.tick(answer, self.mono);
        if done {
            self.sse.remove(&key);
        }
        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
            h.queue(&bytes);
            h.last_activity = self.mono;
            h.close_after_write |= done;
        }
        self.finish_http_io(key);
    }

    /// Shutdown: every event stream ends once what is queued is written.
    pub(super) fn close_event_streams(&mut self) {
        let keys: Vec<usize> = self.sse.keys().copied().collect();
        self.sse.clear();
        for key in keys {
            if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                h.close_after_write = true;
            }
            self.finish_http_io(key);
        }
    }
}
