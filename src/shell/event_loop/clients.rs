//! Client sockets before and besides the WebSocket: accepting connections (with
//! the total and per-address limits), reading HTTP requests and answering them
//! through `routes` in order, flushing and re-arming interest, and removing a
//! client socket of any kind (releasing its address count, parked requests and
//! event stream, and telling the engine when a WebSocket client leaves).
//!
//! It never writes to a socket that is not ready: what does not fit stays queued
//! on the connection until a writable event.

use super::{Conn, ParkedIngest, Server};
use crate::engine::{ClientId, Input, LogLevel};
use crate::shell::conn::client::HttpConn;
use crate::wire::http::Response;
use crate::shell::api::routes::{self, Routed};
use crate::shell::conn::tls_server::ServerTls;
use crate::shell::conn::transport::Transport;
use mio::{Interest, Token};
use crate::wire::forwarded;
use std::io;
use std::net::IpAddr;

/// The 503 detail when one client address holds `--max-connections-per-ip` connections.
const PER_ADDRESS_LIMIT: &str = "too many connections from this address";

impl Server {
    pub(super) fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log(LogLevel::Warn, &format!("accept_failed error={e:?}"));
                    return;
                }
            };
            let ip = peer.ip();
            // A trusted proxy carries many clients: its connections are counted
            // against the client each one forwards, at its first request.
            let counted_ip = (!self.cfg.trusted_proxies.iter().any(|c| c.contains(ip))).then_some(ip);
            let on_ip = counted_ip.and_then(|ip| self.per_ip.get(&ip).copied()).unwrap_or(0);
            let total = self.stats.connections_open as usize;
            if total >= self.cfg.max_connections || on_ip >= self.cfg.max_connections_per_ip {
                self.stats.connections_rejected += 1;
                let detail = if total >= self.cfg.max_connections {
                    "too many connections"
                } else {
                    self.stats.connections_rejected_per_ip += 1;
                    PER_ADDRESS_LIMIT
                };
                // Over TLS nothing can be said before a handshake: just close.
                if self.client_tls.is_none() {
                    let resp = Response::error(503, detail);
                    let mut buf = Vec::new();
                    resp.write_to(&mut buf, false);
                    let _ = io::Write::write(&mut stream, &buf);
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            let session = match self.client_tls.as_ref().map(ServerTls::session).transpose() {
                Ok(session) => session,
                Err(e) => {
                    self.log(LogLevel::Warn, &format!("client_tls_session_failed peer={peer} error={:?}", e.to_string()));
                    continue;
                }
            };
            let mut stream = Transport::new(stream, session);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self.poll.registry().register(stream.tcp_mut(), Token(key), Interest::READABLE).is_err() {
                continue;
            }
            let mut conn = HttpConn::new(stream, peer, self.mono);
            conn.counted_ip = counted_ip;
            entry.insert(Conn::Http(conn));
            if let Some(ip) = counted_ip {
                *self.per_ip.entry(ip).or_insert(0) += 1;
            }
            self.stats.connections_open += 1;
        }
    }

    pub(super) fn on_http_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mono = self.mono;
        match self.conns.get_mut(key) {
            Some(Conn::Http(h)) => {
                if writable && h.flush().is_err() {
                    return self.remove_client_conn(key);
                }
                if readable {
                    h.read_available(&self.limits, mono);
                }
            }
            _ => return,
        }
        // An event stream has nothing more to read but its end.
        if !self.sse.contains_key(&key) {
            self.serve_requests(key);
        }
        self.finish_http_io(key);
    }

    /// Answers the complete requests in the buffer, in order, while the
    /// connection may take more answers (see `HttpConn::wants_requests`).
    pub(super) fn serve_requests(&mut self, key: usize) {
        let mono = self.mono;
        loop {
            let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
            if !h.wants_requests() {
                if h.has_unserved_input() {
                    h.more_to_read = true;
                }
                return;
            }
            let req = match h.next_request(&self.limits, mono) {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(e) => {
                    let mut buf = Vec::new();
                    e.to_response().write_to(&mut buf, false);
                    h.queue(&buf);
                    h.close_after_write = true;
                    return;
                }
            };
            self.stats.http_requests += 1;
            if h.counted_ip.is_none() {
                if let Some(client) = forwarded::client_address(h.peer.ip(), &req.headers, &self.cfg.trusted_proxies) {
                    if self.per_ip.get(&client).copied().unwrap_or(0) >= self.cfg.max_connections_per_ip {
                        self.stats.connections_rejected += 1;
                        self.stats.connections_rejected_per_ip += 1;
                        let mut buf = Vec::new();
                        Response::error(503, PER_ADDRESS_LIMIT).write_to(&mut buf, false);
                        h.queue(&buf);
                        h.close_after_write = true;
                        return;
                    }
                    *self.per_ip.entry(client).or_insert(0) += 1;
                    h.counted_ip = Some(client);
                }
            }
            if self.handle_request(key, req) {
                // The rest of the bytes belong to the WebSocket (or the event stream).
                if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                    h.request_started = None;
                }
                return;
            }
        }
    }

    /// Answers one request; true when the connection became a WebSocket.
    fn handle_request(&mut self, key: usize, req: crate::wire::http::Request) -> bool {
        self.refresh_store_stats();
        self.refresh_upstream_stats();
        self.stats.ws_deflate = self.deflate.counters;
        // Parked for PostgreSQL reads: answered by `store_reads` later.
        let Some(routed) = self.route_with_store(key, &req) else { return false };
        let response = match routed {
            Routed::Reply(r) => {
                self.touch_after_read(&req, &r);
                r
            }
            Routed::Apply { mut input, reply } => {
                // Every ingest is answered by its `IngestDone`: at once (a
                // refusal, a forming update) or once stored, when the
                // connection waits for it, requests behind it too.
                self.next_ingest += 1;
                let request = self.next_ingest;
                if let Input::IngestClosed { request: r, .. } | Input::IngestForming { request: r, .. } = &mut input {
                    *r = request;
                }
                self.ingest_inline = Some(request);
                self.ingest_answer = None;
                self.apply(input);
                self.ingest_inline = None;
                match self.ingest_answer.take() {
                    Some(error) => routes::apply_reply(reply, error, &req, &self.http_cfg),
                    None => {
                        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                            h.awaiting_reply = true;
                        }
                        self.ingest_waiting.insert(request, ParkedIngest { key, reply, req });
                        return false;
                    }
                }
            }
            Routed::Directory { stream, cors } => match self.directory_request(key, &req, stream, cors) {
                Some(r) => r,
                // Now an event stream: nothing after its request is read.
                None if stream => return true,
                // Parked until a fetch ends: requests behind it wait for it.
                None => {
                    if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                        h.awaiting_reply = true;
                    }
                    return false;
                }
            },
            Routed::Upgrade { response, deflate } => {
                if self.shutdown_at.is_some() {
                    Response::error(503, "shutting down")
                } else {
                    if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                        h.queue(&response);
                        h.upgrade_after_write = true;
                        h.ws_deflate = deflate;
                    }
                    return true;
                }
            }
        };
        if response.status == 401 {
            self.stats.http_unauthorized += 1;
        }
        self.send_response(key, &response, req.keep_alive);
        false
    }

    pub(super) fn send_response(&mut self, key: usize, response: &crate::wire::http::Response, keep_alive: bool) {
        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
            let mut buf = Vec::with_capacity(256 + response.body.len());
            response.write_to(&mut buf, keep_alive);
            h.queue(&buf);
            if !keep_alive {
                h.close_after_write = true;
            }
        }
    }

    /// The engine stored (or could not store) a parked ingest: its reply.
    pub(super) fn finish_ingest(&mut self, request: u64, error: Option<String>) {
        let Some(p) = self.ingest_waiting.remove(&request) else { return };
        let response = routes::apply_reply(p.reply, error, &p.req, &self.http_cfg);
        let keep_alive = p.req.keep_alive;
        match self.conns.get_mut(p.key) {
            Some(Conn::Http(h)) => h.awaiting_reply = false,
            // The connection went away (or its slot is another kind now).
            _ => return,
        }
        self.send_response(p.key, &response, keep_alive);
        self.finish_http_io(p.key);
    }

    pub(super) fn finish_http_io(&mut self, key: usize) {
        let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
        let done = match h.flush() {
            Ok(done) => done,
            Err(_) => return self.remove_client_conn(key),
        };
        if done && h.upgrade_after_write {
            return self.upgrade(key);
        }
        // A failed TLS session has nothing left to say but its alert (already tried).
        let tls_failed = h.tls_error.is_some();
        if tls_failed || (done && h.close_after_write) || (h.peer_closed && !h.has_pending_output()) {
            return self.remove_client_conn(key);
        }
        if h.more_to_read && h.wants_requests() {
            // Bytes or requests are waiting that no readiness event will announce.
            self.pending_client_reads.push(key);
        }
        let interest = if done { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        let _ = self.poll.registry().reregister(h.stream.tcp_mut(), Token(key), interest);
    }

    /// Clients whose read budget ran out: read again (edge-triggered readiness
    /// would not announce what is already buffered).
    pub(super) fn drive_pending_client_reads(&mut self) {
        let mut keys = std::mem::take(&mut self.pending_client_reads);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            // The slot may have been reused by another connection meanwhile.
            match self.conns.get(key) {
                Some(Conn::Ws(w)) if w.more_to_read => self.on_ws_event(key, true, false),
                Some(Conn::Http(h)) if h.more_to_read => self.on_http_event(key, true, false),
                _ => {}
            }
        }
    }

    pub(super) fn any_client_wants_read(&self) -> bool {
        !self.pending_client_reads.is_empty()
    }

    fn release_ip(&mut self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Removes a client socket; a WebSocket's subscriptions are released.
    pub(super) fn remove_client_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else { return };
        self.sse.remove(&key);
        self.parked.retain(|p| p.key != key);
        self.store_reads.forget(key);
        self.stats.connections_open = self.stats.connections_open.saturating_sub(1);
        match conn {
            Conn::Http(mut h) => {
                if h.tls_handshaking() {
                    self.count_tls_handshake_failure(&h);
                }
                h.stream.say_goodbye();
                let _ = self.poll.registry().deregister(h.stream.tcp_mut());
                self.release_ip(h.counted_ip);
            }
            Conn::Ws(mut w) => {
                w.stream.say_goodbye();
                let _ = self.poll.registry().deregister(w.stream.tcp_mut());
                self.release_ip(w.counted_ip);
                self.clients.remove(&w.client);
                self.stats.ws_clients = self.stats.ws_clients.saturating_sub(1);
                self.apply(Input::ClientDisconnected { client: ClientId(w.client) });
            }
            Conn::Upstream { .. } | Conn::Rest { .. } | Conn::Directory { .. } => {}
        }
    }

    /// A TLS client connection ends before its handshake completed: a plain-text
    /// client or garbage on the TLS port, a refused certificate, a hang-up, a timeout.
    fn count_tls_handshake_failure(&mut self, h: &HttpConn) {
        self.stats.tls_handshake_failures += 1;
        let (level, reason) = match &h.tls_error {
            Some(e) => (LogLevel::Info, e.as_str()),
            // Port probes and health checks that only open TCP: not worth an info line.
            None => (LogLevel::Debug, "connection closed before the handshake completed"),
        };
        self.log(level, &format!("client_tls_handshake_failed peer={} reason={reason:?}", h.peer));
    }
}
