//! WebSocket clients: the upgrade after the 101 response, reading messages (with
//! a per-event read budget; the message rate is the engine's), writing the engine's
//! queued frames as soon as the engine says a client is ready (`ClientReady`,
//! so the first client of a fan-out is written before the engine forms the
//! rest), or once its socket drains, write interest, and the close handshake
//! the engine asks for.
//!
//! A write is an input, journaled like any other: `ClientWritable` with a
//! budget of [`WRITE_BUDGET`] bytes, then `poll_client` until `None`; a client
//! with more queued is written again the next turn. It never writes a client
//! whose socket is backed up: the backlog stays in the engine's bounded queue
//! (slow-consumer policy). A write may make the engine ask for the client's
//! next catch-up page (`ReadStore`), so outputs are drained after the writes
//! of a turn.

use super::{Conn, Server, CLIENT_READ_BUDGET, WRITE_BUDGET};
use crate::engine::{ClientId, Input, LogLevel};
use crate::shell::conn::client::{WsConn, WsRead};
use mio::{Interest, Token};

/// Writes of what the engine still holds for a client before its close
/// frame (a queue is bounded by the backlog limit plus a catch-up page: a few
/// writes of `WRITE_BUDGET`).
const MAX_WRITES_AT_CLOSE: usize = 64;

impl Server {
    /// The 101 response is written: the socket becomes a WebSocket client.
    pub(super) fn upgrade(&mut self, key: usize) {
        let Some(Conn::Http(mut h)) = self.conns.try_remove(key) else { return };
        let leftover = h.take_leftover();
        let client = self.next_client;
        self.next_client += 1;
        let ws = WsConn::new(
            h.stream,
            leftover,
            h.peer,
            client,
            self.cfg.max_frame_bytes,
            h.ws_deflate,
            self.mono,
        );
        let entry = self.conns.vacant_entry();
        let new_key = entry.key();
        let mut ws = ws;
        ws.counted_ip = h.counted_ip;
        let _ = self.poll.registry().reregister(ws.stream.tcp_mut(), Token(new_key), Interest::READABLE);
        entry.insert(Conn::Ws(ws));
        self.clients.insert(client, new_key);
        self.stats.ws_clients += 1;
        self.apply(Input::ClientConnected { client: ClientId(client) });
        // Frames pipelined behind the upgrade request are already buffered.
        self.on_ws_event(new_key, true, false);
    }

    pub(super) fn on_ws_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mono = self.mono;
        let mut msgs = Vec::new();
        let client = match self.conns.get_mut(key) {
            Some(Conn::Ws(w)) if w.discarding => {
                w.more_to_read = false;
                if !w.discard_input() {
                    self.remove_client_conn(key);
                } else {
                    self.update_ws_interest(key);
                }
                return;
            }
            Some(Conn::Ws(w)) => {
                if writable && !w.flush() {
                    msgs.push(WsRead::Closed("write failed".into()));
                }
                self.stats.ws_bytes_out += w.take_bytes_sent();
                if readable {
                    w.read(CLIENT_READ_BUDGET, mono, &mut msgs);
                    if w.more_to_read {
                        self.pending_client_reads.push(key);
                    }
                }
                w.client
            }
            _ => return,
        };
        for m in msgs {
            match m {
                WsRead::Text(text) => {
                    self.stats.ws_frames_in += 1;
                    self.apply(Input::ClientText { client: ClientId(client), text });
                }
                WsRead::Binary(len) => {
                    self.stats.ws_frames_in += 1;
                    self.apply(Input::ClientBinary { client: ClientId(client), len });
                }
                WsRead::Closed(reason) => {
                    self.log(LogLevel::Debug, &format!("client_closed client={client} reason={reason:?}"));
                    return self.remove_client_conn(key);
                }
                WsRead::Fail { code, reason } => {
                    if code == 1009 {
                        self.stats.ws_messages_too_big += 1;
                    } else {
                        self.stats.ws_protocol_errors += 1;
                    }
                    return self.close_client(client, code, &reason);
                }
            }
        }
        if writable {
            // The socket drained: more frames may be waiting in the engine.
            self.ready_clients.push(client);
        }
        self.update_ws_interest(key);
    }

    pub(super) fn update_ws_interest(&mut self, key: usize) {
        if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
            if w.flush_pending == w.registered_writable {
                return; // unchanged: no syscall
            }
            w.registered_writable = w.flush_pending;
            let interest =
                if w.flush_pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(w.stream.tcp_mut(), Token(key), interest);
        }
    }

    /// Writes the queued frames of every client whose socket drained this turn.
    pub(super) fn write_ready_clients(&mut self) {
        if self.ready_clients.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready_clients);
        ready.sort_unstable();
        ready.dedup();
        let mut frames = std::mem::take(&mut self.frames);
        // Clients with more than a budget queued stay on the list: next turn.
        ready.retain(|&client| self.take_and_write(client, &mut frames));
        ready.append(&mut self.ready_clients);
        self.ready_clients = ready;
        self.frames = frames;
        // A drained queue may have asked for the next catch-up page.
        self.drain_outputs();
    }

    /// Writes one client's queued frames now (the engine said it is ready).
    pub(super) fn write_client(&mut self, client: u64) {
        let mut frames = std::mem::take(&mut self.frames);
        if self.take_and_write(client, &mut frames) {
            self.ready_clients.push(client); // more than a budget: next turn
        }
        self.frames = frames;
    }

    /// Writes up to [`WRITE_BUDGET`] bytes of a client's queued frames in one
    /// go, unless its socket is backed up or closing (then they stay queued in
    /// the engine and are written when the socket drains). True: more than
    /// the budget was queued, and the rest waits for the caller's next write.
    fn take_and_write(&mut self, client: u64, frames: &mut Vec<bytes::Bytes>) -> bool {
        let Some(&key) = self.clients.get(&client) else { return false };
        let Some(Conn::Ws(w)) = self.conns.get(key) else { return false };
        if w.flush_pending || w.closing_since.is_some() {
            return false; // written when the socket drains
        }
        // What is written when decides coalescing and slow-consumer closes:
        // an input. Its outputs (a catch-up read) go to the caller's drain.
        let id = ClientId(client);
        self.handle_recorded(Input::ClientWritable { client: id, budget: WRITE_BUDGET });
        frames.clear();
        frames.extend(std::iter::from_fn(|| self.engine.poll_client(id)));
        let more = self.engine.client_queued_bytes(id) > 0;
        if frames.is_empty() {
            return more;
        }
        let Some(Conn::Ws(w)) = self.conns.get_mut(key) else { return more };
        self.stats.ws_frames_out += frames.len() as u64;
        // `--io-uring`: all but the first client of a fan-out wait for the ring (`uring_writes`).
        let mut batch_full = false;
        let queue = match self.uring.as_mut() {
            Some(u) => w.uring_queued() || u.should_queue(w.raw_fd().is_some()),
            None => false,
        };
        let sent = if queue {
            if let (false, Some(u)) = (w.uring_queued(), self.uring.as_mut()) {
                batch_full = u.push(key, client);
            }
            w.queue_frames(frames, &mut self.deflate);
            true
        } else {
            w.send_frames(frames, &mut self.deflate)
        };
        self.stats.ws_bytes_out += w.take_bytes_sent();
        if !sent {
            self.remove_client_conn(key);
            return false;
        }
        self.update_ws_interest(key);
        if batch_full {
            self.flush_uring();
        }
        more
    }

    pub(super) fn close_client(&mut self, client: u64, code: u16, reason: &str) {
        if !self.clients.contains_key(&client) {
            return;
        }
        self.log(LogLevel::Info, &format!("client_close client={client} code={code} reason={reason:?}"));
        // What the engine still holds for it goes out before the close frame
        // too, a budget at a time while the socket takes it (a shutdown close
        // comes in the same turn as the last publish).
        let mut frames = std::mem::take(&mut self.frames);
        for _ in 0..MAX_WRITES_AT_CLOSE {
            // Stops when nothing is left, or the socket is backed up or closing.
            if self.engine.client_queued_bytes(ClientId(client)) == 0 || !self.take_and_write(client, &mut frames) {
                break;
            }
        }
        self.frames = frames;
        let Some(&key) = self.clients.get(&client) else { return };
        if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
            // Frames already taken go out before the close frame.
            w.close(code, reason, self.mono);
        }
        // Start draining now: what the peer already sent would not be
        // reported again by edge-triggered readiness.
        self.on_ws_event(key, false, false);
    }
}
