//! One outgoing TCP connection on mio for a sans-IO protocol state machine
//! (the PostgreSQL store connection, the Redis bus connection): non-blocking
//! connect, read, write, and reconnect with backoff as a state the caller
//! steps with `now`.
//!
//! Owns: the socket, its mio registration and the reconnect schedule. It
//! never interprets a byte (that is the [`SansIo`] machine's job), never
//! blocks, never reads a clock (every entry point takes `now`) and never
//! resolves a name (it is handed a `SocketAddr`).
//!
//! Lifecycle: `Down { retry_at }` → (`step` at or after `retry_at`) →
//! `Connecting` → (writable, `connect` confirmed) → `Up`. Any error, EOF, or
//! a protocol violation reported by the machine closes the socket, tells the
//! machine ([`SansIo::disconnected`]) and schedules the next attempt after
//! the current backoff, which doubles up to a cap and returns to the base once
//! the machine reports it is ready (handshake done) again.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A protocol state machine with no I/O of its own.
pub trait SansIo {
    /// A fresh TCP connection is up: start the handshake (queue its bytes).
    fn connected(&mut self);
    /// Bytes received from the server. `Err` means the connection cannot go
    /// on (protocol violation, fatal server error); the driver closes it.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// Bytes waiting to be written.
    fn output(&self) -> &[u8];
    /// `n` bytes of [`SansIo::output`] were written.
    fn advance_output(&mut self, n: usize);
    /// The connection is gone: fail what was sent and not answered.
    fn disconnected(&mut self, reason: &str);
    /// The handshake is done and requests flow.
    fn is_ready(&self) -> bool;
}

/// Reconnect delays: `base`, doubled after each failed attempt, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No socket; the next attempt is due at `retry_at`.
    Down { retry_at: Instant },
    /// `connect` issued, not yet confirmed writable.
    Connecting,
    /// Connected (the machine may still be in its handshake).
    Up,
}

pub struct Driver<P> {
    pub proto: P,
    addr: SocketAddr,
    token: Token,
    sock: Option<TcpStream>,
    state: LinkState,
    backoff: Backoff,
    delay: Duration,
    /// Why the last connection ended or the last attempt failed.
    last_error: Option<String>,
    /// Connections that reached `Up` (1 after the first connect).
    connects: u64,
}

const READ_CHUNK: usize = 64 * 1024;

impl<P: SansIo> Driver<P> {
    /// A driver whose first attempt is due at `now` (call [`Driver::step`]).
    pub fn new(proto: P, addr: SocketAddr, token: Token, backoff: Backoff, now: Instant) -> Self {
        Driver {
            proto,
            addr,
            token,
            sock: None,
            state: LinkState::Down { retry_at: now },
            backoff,
            delay: backoff.base,
            last_error: None,
            connects: 0,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// When the caller must call [`Driver::step`] at the latest (a reconnect
    /// is due), `None` while a socket exists (its events drive it).
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.state {
            LinkState::Down { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Time passes: starts a connection attempt when one is due, and writes
    /// whatever the machine has queued meanwhile (requests submitted since).
    pub fn step(&mut self, now: Instant, registry: &Registry) {
        if let LinkState::Down { retry_at } = self.state {
            if now >= retry_at {
                self.start_connect(now, registry);
            }
        }
        if self.state == LinkState::Up {
            self.flush(now, registry);
        }
    }

    /// A mio event for this driver's token.
    pub fn on_event(&mut self, readable: bool, writable: bool, now: Instant, registry: &Registry) {
        if self.state == LinkState::Connecting && (writable || readable) {
            match self.sock.as_ref().map(connect_result) {
                Some(Ok(true)) => {
                    self.state = LinkState::Up;
                    self.connects += 1;
                    self.proto.connected();
                }
                Some(Ok(false)) => return,
                Some(Err(e)) => return self.fail(now, registry, format!("connect to {} failed: {e}", self.addr)),
                None => return,
            }
        }
        if self.state != LinkState::Up {
            return;
        }
        if readable {
            self.read(now, registry);
        }
        if self.state == LinkState::Up {
            self.flush(now, registry);
        }
    }

    /// Closes the connection on purpose (tests, shutdown); the next attempt
    /// is due after the current backoff.
    pub fn close(&mut self, now: Instant, registry: &Registry, reason: &str) {
        self.fail(now, registry, reason.to_string());
    }

    fn start_connect(&mut self, now: Instant, registry: &Registry) {
        match TcpStream::connect(self.addr) {
            Ok(mut sock) => {
                if let Err(e) = registry.register(&mut sock, self.token, Interest::READABLE | Interest::WRITABLE) {
                    return self.fail(now, registry, format!("register {}: {e}", self.addr));
                }
                let _ = sock.set_nodelay(true);
                self.sock = Some(sock);
                self.state = LinkState::Connecting;
            }
            Err(e) => self.fail(now, registry, format!("connect to {} failed: {e}", self.addr)),
        }
    }

    fn read(&mut self, now: Instant, registry: &Registry) {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let Some(sock) = self.sock.as_mut() else { return };
            match sock.read(&mut buf) {
                Ok(0) => return self.fail(now, registry, "the server closed the connection".to_string()),
                Ok(n) => {
                    let was_ready = self.proto.is_ready();
                    if let Err(e) = self.proto.feed(&buf[..n]) {
                        return self.fail(now, registry, e);
                    }
                    if !was_ready && self.proto.is_ready() {
                        self.delay = self.backoff.base;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(now, registry, format!("read from {}: {e}", self.addr)),
            }
        }
    }

    /// Writes queued output until done or the socket would block (then the
    /// next writable event resumes it).
    pub fn flush(&mut self, now: Instant, registry: &Registry) {
        while !self.proto.output().is_empty() {
            let Some(sock) = self.sock.as_mut() else { return };
            match sock.write(self.proto.output()) {
                Ok(0) => return self.fail(now, registry, "the connection stopped taking bytes".to_string()),
                Ok(n) => self.proto.advance_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(now, registry, format!("write to {}: {e}", self.addr)),
            }
        }
    }

    fn fail(&mut self, now: Instant, registry: &Registry, reason: String) {
        if let Some(mut sock) = self.sock.take() {
            let _ = registry.deregister(&mut sock);
        }
        self.proto.disconnected(&reason);
        self.last_error = Some(reason);
        self.state = LinkState::Down { retry_at: now + self.delay };
        self.delay = (self.delay * 2).min(self.backoff.max);
    }
}

/// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while
/// it is still in progress, `Err` when it failed.
fn connect_result(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
