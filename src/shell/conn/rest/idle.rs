//! Kept-alive REST connections between requests (HTTP/1.1 keep-alive): the socket of a
//! finished request whose answer left it reusable ([`IdleConn`]), and the bounded pool the
//! shell keeps them in ([`RestPool`]) so the next request to the same exchange host skips
//! the TCP connect and the TLS handshake.
//!
//! Owns: which idle sockets are kept, for how long, and the check that one is still open
//! before it is handed out. Never registers an idle socket with the poll (it is registered
//! again by the request that takes it), never writes a request, never retries: a request
//! on a reused socket that the server had closed redials itself ([`super::RestConn`]).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::shell::conn::transport::Transport;

/// Idle sockets kept at most, over every host. The REST scheduler runs a few requests at
/// a time; past the bound the oldest idle socket is closed.
pub const MAX_IDLE: usize = 8;

/// An idle socket older than this is closed instead of reused: below the idle timeouts
/// HTTP servers and load balancers commonly apply (60–75 s), so the exchange rarely closes
/// one under a request (and when it does, the request redials once).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a connection goes: what decides whether a request may reuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub secure: bool,
    pub host: String,
    pub port: u16,
}

/// A connection between two requests: open, not registered with the poll.
pub struct IdleConn {
    pub(super) transport: Transport,
    pub(super) to: Destination,
    /// The address it is connected to (a redial goes there, without a name lookup).
    pub(super) peer: SocketAddr,
    since: Instant,
}

impl IdleConn {
    pub(super) fn new(transport: Transport, to: Destination, peer: SocketAddr, since: Instant) -> IdleConn {
        IdleConn { transport, to, peer, since }
    }

    /// Still open and silent: a read finds nothing (`WouldBlock`). End of stream, an error
    /// or bytes nobody asked for (a server's late goodbye) mean it must not carry a request.
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.transport.read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn close(mut self) {
        self.transport.shut_down();
    }
}

/// The idle connections, newest last. Bounded by [`MAX_IDLE`]; none older than
/// [`IDLE_TIMEOUT`] is handed out.
pub struct RestPool {
    idle: Vec<IdleConn>,
    /// Connections handed out again (each saved a connect and, for https, a handshake).
    pub reused: u64,
}

impl Default for RestPool {
    fn default() -> Self {
        RestPool { idle: Vec::with_capacity(MAX_IDLE), reused: 0 }
    }
}

impl RestPool {
    /// Keeps `conn` for the next request to its destination; past [`MAX_IDLE`], the
    /// oldest idle connection is closed.
    pub fn put(&mut self, conn: IdleConn) {
        if self.idle.len() >= MAX_IDLE {
            self.idle.remove(0).close();
        }
        self.idle.push(conn);
    }

    /// The newest idle connection to `to` that is still open, if any; those found closed
    /// on the way are dropped.
    pub fn take(&mut self, to: &Destination, now: Instant) -> Option<IdleConn> {
        self.expire(now);
        while let Some(i) = self.idle.iter().rposition(|c| c.to == *to) {
            let mut conn = self.idle.remove(i);
            if conn.is_open() {
                self.reused += 1;
                return Some(conn);
            }
            conn.close();
        }
        None
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] or longer.
    pub fn expire(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.idle.len() {
            if now.saturating_duration_since(self.idle[i].since) >= IDLE_TIMEOUT {
                self.idle.remove(i).close();
            } else {
                i += 1;
            }
        }
    }

    /// How many idle connections a probe finds open (tests wait on it).
    #[cfg(test)]
    pub(super) fn open_count(&mut self) -> usize {
        self.idle.iter_mut().map(|c| c.is_open()).filter(|open| *open).count()
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }
}
