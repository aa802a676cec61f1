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

/// The machines this driver steps (defined beside the vocabulary, so the
/// store and bus layers implement it without importing the shell).
pub use crate::sans_io::SansIo;


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
                    self.reset_backoff_if_ready(false);
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
                    self.reset_backoff_if_ready(was_ready);
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

    /// A machine that just became ready (handshake done) proves the server
    /// healthy again: the next failure waits the base delay.
    fn reset_backoff_if_ready(&mut self, was_ready: bool) {
        if !was_ready && self.proto.is_ready() {
            self.delay = self.backoff.base;
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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    /// Records what the driver told it; says "ready" once connected.
    #[derive(Default)]
    struct Probe {
        connected: u32,
        disconnects: Vec<String>,
        out: Vec<u8>,
        up: bool,
    }

    impl SansIo for Probe {
        fn connected(&mut self) {
            self.connected += 1;
            self.up = true;
            self.out.extend_from_slice(b"hello");
        }
        fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
            if bytes.starts_with(b"bad") {
                Err("probe refuses".to_string())
            } else {
                Ok(())
            }
        }
        fn output(&self) -> &[u8] {
            &self.out
        }
        fn advance_output(&mut self, n: usize) {
            self.out.drain(..n);
        }
        fn disconnected(&mut self, reason: &str) {
            self.up = false;
            self.disconnects.push(reason.to_string());
        }
        fn is_ready(&self) -> bool {
            self.up
        }
    }

    /// Turns the loop until `done` or 200 turns (each waits at most 50 ms).
    fn turn_until(poll: &mut Poll, d: &mut Driver<Probe>, now: Instant, done: impl Fn(&Driver<Probe>) -> bool) {
        let mut events = Events::with_capacity(8);
        for _ in 0..200 {
            if done(d) {
                return;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
            for e in events.iter() {
                d.on_event(e.is_readable() || e.is_read_closed(), e.is_writable(), now, poll.registry());
            }
        }
        panic!("condition not reached; state {:?}, last error {:?}", d.state(), d.last_error());
    }

    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn refused_connects_back_off_doubling_up_to_the_cap() {
        let mut poll = Poll::new().unwrap();
        let t0 = Instant::now();
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_millis(350) };
        let mut d = Driver::new(Probe::default(), closed_port(), Token(1), backoff, t0);
        assert_eq!(d.next_wakeup(), Some(t0));
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            d.step(now, poll.registry());
            turn_until(&mut poll, &mut d, now, |d| matches!(d.state(), LinkState::Down { .. }));
            let LinkState::Down { retry_at } = d.state() else { unreachable!() };
            delays.push(retry_at - now);
            // Not due yet: a step before retry_at does nothing.
            d.step(retry_at - Duration::from_millis(1), poll.registry());
            assert!(matches!(d.state(), LinkState::Down { .. }));
            now = retry_at;
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 350, 350]);
        assert!(d.last_error().is_some_and(|e| e.contains("connect to")), "{:?}", d.last_error());
        assert_eq!(d.proto.connected, 0);
        assert_eq!(d.connects(), 0);
    }

    #[test]
    fn connects_writes_and_resets_the_backoff_once_ready_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut poll = Poll::new().unwrap();
        let now = Instant::now();
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(5) };
        let mut d = Driver::new(Probe::default(), addr, Token(1), backoff, now);
        d.step(now, poll.registry());
        turn_until(&mut poll, &mut d, now, |d| d.state() == LinkState::Up && d.proto.output().is_empty());
        let (mut server, _) = listener.accept().unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The machine refuses what the server sends: the driver closes and backs off.
        std::io::Write::write_all(&mut server, b"bad").unwrap();
        turn_until(&mut poll, &mut d, now, |d| matches!(d.state(), LinkState::Down { .. }));
        assert_eq!(d.proto.disconnects, vec!["probe refuses".to_string()]);
        assert_eq!(d.next_wakeup(), Some(now + Duration::from_millis(100)));
        // The server closing the connection is a disconnect too; the machine
        // was ready again in between, so the delay is back to the base.
        let later = now + Duration::from_millis(100);
        d.step(later, poll.registry());
        turn_until(&mut poll, &mut d, later, |d| d.state() == LinkState::Up && d.proto.output().is_empty());
        let (mut server, _) = listener.accept().unwrap();
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        drop(server);
        turn_until(&mut poll, &mut d, later, |d| matches!(d.state(), LinkState::Down { .. }));
        assert_eq!(d.proto.disconnects[1], "the server closed the connection");
        assert_eq!(d.connects(), 2);
        assert_eq!(d.next_wakeup(), Some(later + Duration::from_millis(100)));
    }
}
