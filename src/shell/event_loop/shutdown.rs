//! Signals and shutdown: the SIGINT/SIGTERM pipe the loop polls, the first
//! signal's graceful shutdown (stop accepting, tell the engine, end event streams
//! and exchange connections, flush clients), the second signal's immediate exit,
//! and the exit code (non-zero when candles were left unpersisted).

use super::{Conn, Server, SIGNALS};
use crate::engine::{Input, LogLevel};
use mio::net::UnixStream;
use mio::{Interest, Poll};
use std::io::Read;
use std::time::Duration;

impl Server {
    /// Returns true when the process must exit at once (second signal).
    pub(super) fn on_signal(&mut self) -> bool {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.signals.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        if self.shutdown_at.is_some() {
            self.log(LogLevel::Warn, "second_signal action=exit_now");
            if let Some(j) = self.journal.as_mut() {
                let _ = j.flush();
            }
            return true;
        }
        self.log(LogLevel::Info, "shutdown_requested");
        self.shutdown_at = Some(self.mono);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.apply(Input::Shutdown);
        self.close_event_streams();
        let keys: Vec<usize> = self.upstreams.values().copied().collect();
        for key in keys {
            if let Some(Conn::Upstream { conn, .. }) = self.conns.get_mut(key) {
                conn.close("shutdown");
            }
            self.drop_upstream(key, "shutdown", false);
        }
        self.write_ready_clients();
        false
    }

    pub(super) fn shutdown_finished(&self) -> bool {
        let Some(at) = self.shutdown_at else { return false };
        let grace = Duration::from_secs(self.cfg.shutdown_grace_s);
        // Done when every client is gone and the store has carried out what
        // the engine asked (the engine closes clients only once its writes
        // are answered); the grace bounds both.
        let settled = self.clients.is_empty() && !self.store.has_work() && self.engine.store_effects_in_flight() == 0;
        settled || self.mono.duration_since(at) >= grace
    }

    pub(super) fn finish(mut self) -> i32 {
        let left = self.engine.unpersisted_candles();
        if let Some(j) = self.journal.as_mut() {
            let _ = j.flush();
        }
        let level = if left == 0 { LogLevel::Info } else { LogLevel::Error };
        self.log(level, &format!("server_stopped unpersisted_candles={left}"));
        if left == 0 {
            0
        } else {
            1
        }
    }
}

/// SIGINT/SIGTERM write a byte into a pipe the loop polls (no extra thread).
pub(super) fn install_signal_pipe(poll: &Poll) -> Result<UnixStream, String> {
    let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("signal pipe: {e}"))?;
    read.set_nonblocking(true).map_err(|e| format!("signal pipe: {e}"))?;
    write.set_nonblocking(true).map_err(|e| format!("signal pipe: {e}"))?;
    let write2 = write.try_clone().map_err(|e| format!("signal pipe: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write)
        .map_err(|e| format!("cannot install SIGINT handler: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write2)
        .map_err(|e| format!("cannot install SIGTERM handler: {e}"))?;
    let mut read = UnixStream::from_std(read);
    poll.registry()
        .register(&mut read, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("signal pipe: {e}"))?;
    Ok(read)
}
