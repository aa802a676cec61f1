//! Periodic housekeeping (every `HOUSEKEEPING`): idle and slow HTTP requests,
//! WebSocket pings, idle-client and close-handshake timeouts, late REST and
//! directory fetches, the journal flush, and the store statistics `/health` shows.

use super::{Conn, Server, CLOSE_TIMEOUT};
use std::time::Duration;

impl Server {
    pub(super) fn housekeeping(&mut self) {
        self.last_housekeeping = self.mono;
        self.refresh_bus_health();
        let idle = Duration::from_secs(self.cfg.client_idle_timeout_s);
        let ping_every = idle / 3;
        let mut expired = Vec::new();
        let mut close_idle = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            match conn {
                Conn::Http(h) if h.request_started.is_some_and(|t| self.mono.duration_since(t) >= idle) => {
                    self.stats.http_request_timeouts += 1;
                    h.answer_timeout();
                    expired.push(key);
                }
                Conn::Http(h) if self.mono.duration_since(h.last_activity) >= idle => {
                    if h.tls_handshaking() {
                        h.tls_error = Some(format!("no TLS handshake within {}s (--client-idle-timeout-s)", idle.as_secs()));
                    }
                    expired.push(key);
                }
                Conn::Ws(w) => {
                    if let Some(since) = w.closing_since {
                        // Until then it waits for the peer to hang up (on_ws_event).
                        if self.mono.duration_since(since) >= CLOSE_TIMEOUT {
                            expired.push(key);
                        }
                    } else if self.mono.duration_since(w.last_seen) >= idle {
                        close_idle.push(w.client);
                    } else if self.mono.duration_since(w.last_ping) >= ping_every {
                        w.ping(self.mono);
                    }
                }
                _ => {}
            }
        }
        for client in close_idle {
            self.close_client(client, 1001, "idle timeout");
        }
        expired.sort_unstable();
        for key in expired {
            self.remove_client_conn(key);
        }
        self.refresh_store_stats();
        self.expire_rest();
        self.expire_directory_fetches();
        self.refresh_symbol_lists();
        if let Some(j) = self.journal.as_mut() {
            let _ = j.flush();
        }
    }

    pub(super) fn refresh_store_stats(&mut self) {
        if let Some(h) = self.store.pg() {
            let (down, st) = (h.down_reason(), h.stats.clone());
            self.stats.store_connected = down.is_none();
            self.stats.store_ok = down.is_none() && st.last_write_ok;
            self.stats.store_last_error = down.or(st.last_write_error);
            self.stats.store_write_count = st.writes;
            self.stats.store_write_seconds_sum = st.write_seconds_sum;
            self.stats.store_write_seconds_max = st.write_seconds_max;
            self.stats.store_queue = self.store.queued() as u64;
            return;
        }
        let st = self.store_stats.borrow();
        self.stats.store_ok = st.last_write_ok;
        self.stats.store_last_error.clone_from(&st.last_error);
        self.stats.store_write_count = st.writes;
        self.stats.store_write_seconds_sum = st.write_seconds_sum;
        self.stats.store_write_seconds_max = st.write_seconds_max;
        self.stats.store_queue = self.store.queued() as u64;
        self.stats.store_slice_seconds_max = self.store.worst_slice_s();
    }
}
