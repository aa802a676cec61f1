//! `--io-uring` (issue #14 §2): the client writes of a fan-out through one
//! io_uring beside the mio poll, in the loop's own thread. Of the clients the
//! engine makes ready between two flushes, the first is written directly (it
//! does not wait for the rest); the others' frames are encoded into their
//! connection's out-buffer and queued here, and sent in batches of 1,024
//! `IORING_OP_SEND`s (`MSG_DONTWAIT`) when a batch fills and when the engine's
//! outputs are drained, every completion reaped before the flush returns.
//! A short send or EAGAIN leaves the rest in the out-buffer for the normal
//! writable path; a failed send closes the client as a failed write does.
//!
//! Owns: the queue of connections waiting for the ring and the choice of who
//! goes direct. Never holds bytes (each connection does, and nothing is in
//! flight once `flush_uring` returns, so a closed client never frees memory
//! under the kernel), and never sends over TLS (those are written directly).

use super::{Conn, Server};
use crate::engine::LogLevel;
use crate::shell::conn::uring_writer::{self, Target, UringSender};

pub(super) struct UringWrites {
    sender: UringSender,
    /// (slab key, client id) waiting for the ring, in the order made ready.
    queued: Vec<(usize, u64)>,
    /// A client was written directly since the last flush.
    direct_done: bool,
    results: Vec<(u64, i32)>,
}

impl UringWrites {
    /// `--io-uring` at start: the writer, or why epoll writes stay (one log line).
    pub(super) fn start() -> Result<(UringWrites, String), String> {
        let kernel = uring_writer::available()?;
        let sender = UringSender::new(uring_writer::DEFAULT_BATCH)?;
        Ok((UringWrites { sender, queued: Vec::new(), direct_done: false, results: Vec::new() }, kernel))
    }

    /// Whether the next ready client should wait for the ring (the first
    /// since the last flush is written directly; TLS always is).
    pub(super) fn should_queue(&mut self, plain_tcp: bool) -> bool {
        if !plain_tcp {
            return false;
        }
        if !self.direct_done {
            self.direct_done = true;
            return false;
        }
        true
    }

    pub(super) fn push(&mut self, key: usize, client: u64) -> bool {
        self.queued.push((key, client));
        self.queued.len() >= self.sender.batch()
    }
}

impl Server {
    /// Sends every queued client's bytes through the ring and carries out
    /// the results. Called once a batch is full and after each drain of the
    /// engine's outputs (so nothing waits past the turn that formed it).
    pub(super) fn flush_uring(&mut self) {
        let Some(u) = self.uring.as_mut() else { return };
        u.direct_done = false;
        if u.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut u.queued);
        let mut results = std::mem::take(&mut u.results);
        results.clear();
        let ring_error = {
            let conns = &self.conns;
            let targets: Vec<Target<'_>> = queued
                .iter()
                .filter_map(|&(key, client)| match conns.get(key) {
                    Some(Conn::Ws(w)) if w.client == client => {
                        w.pending_for_uring().map(|(fd, bytes)| Target { tag: key as u64, fd, bytes })
                    }
                    _ => None,
                })
                .collect();
            self.stats.ws_uring_sends += targets.len() as u64;
            // Every completion is reaped before this returns: the borrowed
            // out-buffers are untouched until then.
            u.sender.send_all(&targets, &mut results).err()
        };
        if let Some(e) = ring_error {
            self.log(LogLevel::Warn, &format!("io_uring_send_failed error={e:?} (unsent bytes go out directly)"));
        }
        let mut failed = Vec::new();
        for &(tag, res) in &results {
            let key = tag as usize;
            if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
                if !w.uring_sent(res) {
                    failed.push(key);
                }
                self.stats.ws_bytes_out += w.take_bytes_sent();
            }
        }
        // Anything the ring did not report on (an error of the ring itself)
        // is written directly now.
        for &(key, client) in &queued {
            if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
                if w.client == client && w.uring_queued() {
                    w.unqueue_uring();
                    if !w.flush() {
                        failed.push(key);
                    }
                    self.stats.ws_bytes_out += w.take_bytes_sent();
                }
            }
        }
        if let Some(u) = self.uring.as_mut() {
            u.results = results;
        }
        for &(key, client) in &queued {
            if !failed.contains(&key) && self.clients.get(&client) == Some(&key) {
                self.update_ws_interest(key);
            }
        }
        for key in failed {
            self.remove_client_conn(key);
        }
    }
}
