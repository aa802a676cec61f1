//! The shell's side of the exchange: the engine's exchange WebSocket connections
//! (`UpstreamConnect`/`UpstreamSend`/`UpstreamClose` and the events they raise),
//! its REST requests (`RestRequest`, answered `RestResponse`/`RestFailed`, with a
//! deadline), and the hand-over of name lookups between these connections (and
//! the directory's fetches) and the non-blocking resolver.
//!
//! It never blocks the loop (connects and lookups are started, then driven by
//! readiness) and never delivers a DNS answer inside the engine's output drain.

use super::{Conn, Server, REST_TIMEOUT};
use crate::engine::{ConnId, Input, LogLevel, RestId};
use crate::model::Market;
use crate::shell::dns::Answer;
use crate::shell::conn::rest::{RestConn, RestOutcome};
use crate::shell::conn::upstream::{UpstreamConn, UpstreamEvent};
use mio::Token;
use std::io;

impl Server {
    // ---------------------------------------------------------------- REST

    pub(super) fn start_rest(&mut self, id: u64, market: crate::model::Market, path: &str) {
        let base = self.cfg.rest_base_url(market);
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        match RestConn::start_pooled(base, path, &self.tls, &mut self.rest_pool, self.poll.registry(), token) {
            Ok(conn) => {
                entry.insert(Conn::Rest { id, conn });
                self.await_resolution(token.0);
            }
            Err(e) => self.pending_inputs.push_back(Input::RestFailed { id: RestId(id), reason: format!("GET {base}{path}: {e}") }),
        }
    }

    pub(super) fn on_rest_event(&mut self, key: usize, readable: bool, writable: bool) {
        let (id, outcome) = match self.conns.get_mut(key) {
            Some(Conn::Rest { id, conn }) => {
                let outcome = conn.on_event(readable, writable);
                let _ = conn.reregister(self.poll.registry(), Token(key));
                (*id, outcome)
            }
            _ => return,
        };
        let Some(outcome) = outcome else { return };
        self.finish_rest(key, id, outcome);
    }

    /// The engine's REST request `id` at `key` ended: keep its connection for the
    /// next request when the answer allows, and tell the engine.
    fn finish_rest(&mut self, key: usize, id: u64, outcome: RestOutcome) {
        if let Some(Conn::Rest { conn, .. }) = self.conns.try_remove(key) {
            self.keep_rest_conn(conn);
        }
        let input = match outcome {
            RestOutcome::Response { status, body, retry_after_s, used_weight_1m, .. } => {
                Input::RestResponse { id: RestId(id), status, body, retry_after_s, used_weight: used_weight_1m }
            }
            RestOutcome::Failed { reason } => Input::RestFailed { id: RestId(id), reason },
        };
        self.apply(input);
    }

    /// A finished REST connection: into the pool when its answer left it reusable,
    /// else closed.
    pub(super) fn keep_rest_conn(&mut self, mut conn: RestConn) {
        let _ = conn.deregister(self.poll.registry());
        if let Some(idle) = conn.into_idle(self.mono) {
            self.rest_pool.put(idle);
        }
    }

    /// REST requests past their deadline are answered as failed; idle kept-alive
    /// connections past their time are closed.
    pub(super) fn expire_rest(&mut self) {
        self.rest_pool.expire(self.mono);
        let mut late = Vec::new();
        for (key, conn) in self.conns.iter() {
            if let Conn::Rest { id, conn } = conn {
                if self.mono.duration_since(conn.started_at()) >= REST_TIMEOUT {
                    late.push((key, *id, conn.url().to_string()));
                }
            }
        }
        for (key, id, url) in late {
            if let Some(Conn::Rest { mut conn, .. }) = self.conns.try_remove(key) {
                let _ = conn.deregister(self.poll.registry());
            }
            self.apply(Input::RestFailed { id: RestId(id), reason: format!("GET {url}: timed out after {REST_TIMEOUT:?}") });
        }
    }

    // ------------------------------------------------------------ upstream

    pub(super) fn open_upstream(&mut self, engine_conn: u64, market: Market, url: &str) {
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        match UpstreamConn::connect(url, &self.tls, self.poll.registry(), token) {
            Ok(conn) => {
                entry.insert(Conn::Upstream { engine_conn, market, conn });
                self.upstreams.insert(engine_conn, token.0);
                self.await_resolution(token.0);
            }
            Err(e) => {
                let reason = format!("connect failed: {e}");
                self.note_upstream_error(market, &reason);
                self.pending_inputs.push_back(Input::UpstreamDisconnected { conn: ConnId(engine_conn), reason });
            }
        }
    }

    /// Why `market`'s last exchange connection failed (DNS, connect, TLS, a
    /// close by the exchange), for `/health`; cleared when one connects.
    fn note_upstream_error(&mut self, market: Market, reason: &str) {
        self.stats.upstream_last_error[market.index()] = Some(reason.to_string());
    }

    /// `upstream_connected` is the exchange connections open now (counted,
    /// never accumulated: closes and reconnects keep it true).
    pub(super) fn refresh_upstream_stats(&mut self) {
        let open = self.upstreams.values().filter(|k| matches!(self.conns.get(**k), Some(Conn::Upstream { conn, .. }) if conn.is_open()));
        self.stats.upstream_connected = open.count() as u64;
    }

    pub(super) fn send_upstream(&mut self, engine_conn: u64, text: String) {
        let Some(&key) = self.upstreams.get(&engine_conn) else { return };
        let Some(Conn::Upstream { conn, .. }) = self.conns.get_mut(key) else { return };
        let result = conn.send_text(text);
        let _ = conn.reregister(self.poll.registry(), Token(key));
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::WouldBlock {
                self.drop_upstream(key, &format!("send failed: {e}"), true);
            }
        }
    }

    pub(super) fn close_upstream(&mut self, engine_conn: u64, reason: &str) {
        let Some(key) = self.upstreams.remove(&engine_conn) else { return };
        if let Some(Conn::Upstream { mut conn, .. }) = self.conns.try_remove(key) {
            conn.close(reason);
            let _ = conn.deregister(self.poll.registry());
        }
    }

    /// The connection ended on our side of the shell; tell the engine if asked.
    pub(super) fn drop_upstream(&mut self, key: usize, reason: &str, notify: bool) {
        if let Some(Conn::Upstream { engine_conn, market, mut conn }) = self.conns.try_remove(key) {
            let _ = conn.deregister(self.poll.registry());
            self.upstreams.remove(&engine_conn);
            if notify {
                self.note_upstream_error(market, reason);
                self.pending_inputs.push_back(Input::UpstreamDisconnected { conn: ConnId(engine_conn), reason: reason.into() });
            }
        }
    }

    /// Reads the connection a message at a time, each handed to the engine (and
    /// its outputs carried out) before the next is read, up to the connection's
    /// per-event budget; past it, the rest is read next turn (`wants_read`).
    pub(super) fn on_upstream_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mut budget = None;
        loop {
            let mut evs = Vec::new();
            let (engine_conn, market, more, left) = match self.conns.get_mut(key) {
                Some(Conn::Upstream { engine_conn, market, conn }) => {
                    let left = budget.get_or_insert(conn.messages_per_event());
                    *left = left.saturating_sub(1);
                    conn.on_event_one(readable, writable, &mut evs);
                    let _ = conn.reregister(self.poll.registry(), Token(key));
                    (*engine_conn, *market, conn.wants_read(), *left)
                }
                _ => return,
            };
            self.dispatch_upstream_events(key, engine_conn, market, evs);
            if !more || left == 0 {
                return;
            }
        }
    }

    fn dispatch_upstream_events(&mut self, key: usize, engine_conn: u64, market: Market, evs: Vec<UpstreamEvent>) {
        for ev in evs {
            match ev {
                UpstreamEvent::Connected => {
                    self.stats.upstream_last_error[market.index()] = None;
                    self.apply(Input::UpstreamConnected { conn: ConnId(engine_conn) });
                }
                UpstreamEvent::Text(text) => {
                    self.stats.upstream_frames_in += 1;
                    self.apply(Input::UpstreamText { conn: ConnId(engine_conn), text });
                }
                UpstreamEvent::Ping => {
                    self.apply(Input::UpstreamPing { conn: ConnId(engine_conn) });
                }
                UpstreamEvent::Closed { reason } => {
                    self.note_upstream_error(market, &reason);
                    self.drop_upstream(key, &reason, false);
                    self.apply(Input::UpstreamDisconnected { conn: ConnId(engine_conn), reason });
                    return;
                }
            }
        }
    }

    pub(super) fn any_upstream_wants_read(&self) -> bool {
        self.upstreams.values().any(|k| matches!(self.conns.get(*k), Some(Conn::Upstream { conn, .. }) if conn.wants_read()))
    }

    pub(super) fn drive_pending_upstream_reads(&mut self) {
        let mut keys: Vec<usize> = self
            .upstreams
            .values()
            .copied()
            .filter(|k| matches!(self.conns.get(*k), Some(Conn::Upstream { conn, .. }) if conn.wants_read()))
            .collect();
        keys.sort_unstable();
        for key in keys {
            self.on_upstream_event(key, true, false);
        }
    }

    // ----------------------------------------------------------------- DNS

    /// The connection just put at `key` may wait for a host name: start its lookup. The
    /// answer (at once from the hosts file or the cache, else from a nameserver) is
    /// delivered by `deliver_dns_answers`, never inside the engine's output drain.
    pub(super) fn await_resolution(&mut self, key: usize) {
        let host = match self.conns.get(key) {
            Some(Conn::Upstream { conn, .. }) => conn.resolving_host(),
            Some(Conn::Rest { conn, .. } | Conn::Directory { conn, .. }) => conn.resolving_host(),
            _ => None,
        };
        let Some(host) = host.map(str::to_owned) else { return };
        let name = self.resolver.lookup(&host, self.poll.registry(), self.mono);
        self.dns_waiters.entry(name).or_default().push(key);
    }

    /// Hands every finished lookup to the connections waiting for it. A failure flows
    /// through each connection's own failure path (`UpstreamDisconnected`, `RestFailed`, a
    /// failed directory fetch), exactly like a refused connect.
    pub(super) fn deliver_dns_answers(&mut self) {
        while let Some(note) = self.resolver.poll_note() {
            self.log(LogLevel::Info, &note);
        }
        while let Some(answer) = self.resolver.poll_answer() {
            self.log(LogLevel::Debug, &answer.log_line());
            for key in self.dns_waiters.remove(&answer.host).unwrap_or_default() {
                self.on_resolved(key, &answer);
            }
        }
        self.stats.dns = self.resolver.stats();
    }

    fn on_resolved(&mut self, key: usize, answer: &Answer) {
        let result = match &answer.result {
            Ok(addrs) => Ok(addrs.as_slice()),
            Err(e) => Err(e.to_string()),
        };
        // The slot may have been freed and reused since the lookup began: only a
        // connection still resolving that same name takes the answer.
        let waiting = |host: Option<&str>| host.is_some_and(|h| crate::wire::dns::normalize(h) == answer.host);
        let registry = self.poll.registry();
        match self.conns.get_mut(key) {
            Some(Conn::Upstream { engine_conn, market, conn }) if waiting(conn.resolving_host()) => {
                let mut evs = Vec::new();
                conn.on_resolved(result, registry, &mut evs);
                let (engine_conn, market) = (*engine_conn, *market);
                self.dispatch_upstream_events(key, engine_conn, market, evs);
            }
            Some(Conn::Rest { id, conn }) if waiting(conn.resolving_host()) => {
                let id = *id;
                if let Some(outcome) = conn.on_resolved(result, registry) {
                    self.finish_rest(key, id, outcome);
                }
            }
            Some(Conn::Directory { conn, .. }) if waiting(conn.resolving_host()) => {
                if let Some(outcome) = conn.on_resolved(result, registry) {
                    self.finish_directory_fetch(key, outcome);
                }
            }
            _ => {}
        }
    }
}
