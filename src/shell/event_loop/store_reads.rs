//! The loop's side of a PostgreSQL store (`store_host::pg`): its socket
//! events and per-turn pump, its log lines, and HTTP requests that read the
//! store. With SQLite a route reads the store synchronously, as before. With
//! PostgreSQL the route first runs against an empty [`ReadCache`]: when it
//! reads nothing it is answered at once; otherwise the request is PARKED
//! (the connection reads nothing more until it is answered, like a parked
//! ingest), its reads go out pipelined, and the route runs again once they
//! are all answered (more rounds when a read depends on another; see
//! `http_reads`).
//!
//! The bound: at most [`MAX_PARKED_READS`] requests parked at once; the
//! next one is answered 503 `store_busy` at once (the client retries).
//! Never blocks; never decides what a route answers.

use super::{Conn, Server};
use crate::engine::{Input, LogLevel};
use crate::shell::api::routes::{self, Routed};
use crate::shell::store_host::http_reads::{Call, ReadCache, MAX_ROUNDS};
use crate::shell::store_host::StoreHost;
use crate::wire::http::{Request, Response};
use mio::Token;
use std::collections::BTreeMap;
use std::time::Duration;

/// HTTP requests parked for PostgreSQL reads at once; more are answered 503.
pub const MAX_PARKED_READS: usize = 256;

pub(super) struct ParkedRead {
    key: usize,
    req: Request,
    cache: ReadCache,
    outstanding: usize,
    rounds: usize,
}

#[derive(Default)]
pub(super) struct ParkedReads {
    by_ticket: BTreeMap<u64, ParkedRead>,
    next: u64,
}

impl ParkedReads {
    /// The connection `key` went away: its parked request is dropped.
    pub(super) fn forget(&mut self, key: usize) {
        self.by_ticket.retain(|_, p| p.key != key);
    }

    pub(super) fn len(&self) -> usize {
        self.by_ticket.len()
    }
}

impl Server {
    pub(super) fn store_owns(&self, token: Token) -> bool {
        matches!(&self.store, StoreHost::Pg(h) if h.owns(token))
    }

    pub(super) fn on_store_event(&mut self, readable: bool, writable: bool) {
        if let StoreHost::Pg(h) = &mut self.store {
            h.on_event(readable, writable, self.mono, self.poll.registry());
        }
        self.after_store_io();
    }

    /// Once per turn: reconnects, sends queued effects, fails held ones.
    pub(super) fn pump_store(&mut self) {
        if let StoreHost::Pg(h) = &mut self.store {
            h.pump(self.mono, self.poll.registry());
        }
        self.after_store_io();
    }

    /// How long the poll may wait for the store's next deadline.
    pub(super) fn store_wait(&self) -> Option<Duration> {
        match &self.store {
            StoreHost::Pg(h) => h.next_wakeup().map(|t| super::ceil_ms(t.saturating_duration_since(self.mono))),
            StoreHost::Sync(_) => None,
        }
    }

    fn after_store_io(&mut self) {
        let Some(h) = self.store.pg() else { return };
        let mut notes = Vec::new();
        while let Some(n) = h.poll_note() {
            notes.push(n);
        }
        let mut done = Vec::new();
        while let Some(d) = h.poll_http() {
            done.push(d);
        }
        for (level, line) in notes {
            self.log(level, &line);
        }
        for (ticket, call, result) in done {
            let Some(p) = self.store_reads.by_ticket.get_mut(&ticket) else { continue };
            p.cache.insert(call, result);
            p.outstanding = p.outstanding.saturating_sub(1);
            if p.outstanding == 0 {
                self.resume_read(ticket);
            }
        }
        self.stats.store_http_parked = self.store_reads.len() as u64;
    }

    /// Routes `req`, reading the store synchronously (SQLite) or parking it
    /// for PostgreSQL reads (`None`: parked, answered later).
    pub(super) fn route_with_store(&mut self, key: usize, req: &Request) -> Option<Routed> {
        if let Some(store) = self.store.store() {
            return Some(routes::route(req, &self.engine, store, &self.stats, &self.http_cfg));
        }
        let cache = ReadCache::default();
        let routed = routes::route(req, &self.engine, &cache, &self.stats, &self.http_cfg);
        let missed = cache.take_missed();
        if missed.is_empty() || !matches!(routed, Routed::Reply(_)) {
            return Some(routed);
        }
        if self.store_reads.len() >= MAX_PARKED_READS {
            self.log(LogLevel::Warn, &format!("store_reads_full parked={MAX_PARKED_READS} path={}", req.path));
            return Some(Routed::Reply(Response::error(503, "store_busy: too many requests waiting for the store")));
        }
        self.store_reads.next += 1;
        let ticket = self.store_reads.next;
        let parked = ParkedRead { key, req: req.clone(), cache, outstanding: 0, rounds: 1 };
        self.store_reads.by_ticket.insert(ticket, parked);
        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
            h.awaiting_reply = true;
        }
        self.send_reads(ticket, missed);
        self.stats.store_http_parked = self.store_reads.len() as u64;
        None
    }

    fn send_reads(&mut self, ticket: u64, calls: Vec<Call>) {
        if let Some(p) = self.store_reads.by_ticket.get_mut(&ticket) {
            p.outstanding = calls.len();
        }
        if let StoreHost::Pg(h) = &mut self.store {
            for call in calls {
                h.read_for_http(ticket, call);
            }
            h.pump(self.mono, self.poll.registry());
        }
    }

    /// Every read of a parked request is answered: route it again; answer
    /// it, or fetch what the new round asks for.
    fn resume_read(&mut self, ticket: u64) {
        let Some(p) = self.store_reads.by_ticket.get(&ticket) else { return };
        let routed = routes::route(&p.req, &self.engine, &p.cache, &self.stats, &self.http_cfg);
        let missed = p.cache.take_missed();
        if !missed.is_empty() && p.rounds < MAX_ROUNDS {
            if let Some(p) = self.store_reads.by_ticket.get_mut(&ticket) {
                p.rounds += 1;
            }
            return self.send_reads(ticket, missed);
        }
        let Some(p) = self.store_reads.by_ticket.remove(&ticket) else { return };
        let Routed::Reply(response) = routed else { return };
        if let Some(Conn::Http(h)) = self.conns.get_mut(p.key) {
            h.awaiting_reply = false;
        } else {
            return;
        }
        self.touch_after_read(&p.req, &response);
        self.send_response(p.key, &response, p.req.keep_alive);
        self.finish_http_io(p.key);
    }

    /// First visit: reading a series starts its job, which fills history.
    pub(super) fn touch_after_read(&mut self, req: &Request, response: &Response) {
        if req.method == "GET" && req.path == "/api/market/candles" && response.status == 200 {
            if let Some(series_id) = req.query_param("series_id") {
                // Request 0: nobody waits for its `IngestDone`.
                self.apply(Input::TouchSeries { request: 0, series_id: series_id.to_string() });
            }
        }
    }
}
