//! One REST request to the exchange, non-blocking, driven by the shell's single `mio::Poll`:
//! TCP connect → rustls client handshake (for `https://`) → write one HTTP/1.1 `GET` →
//! read the response with the pure codec [`crate::wire::http::response`].
//!
//! This module owns the bytes of one REST socket and turns them into one [`RestOutcome`]:
//! the status, the headers, the body as text, and the two rate-limit headers Binance sends
//! (`Retry-After` on 429/418, `X-MBX-USED-WEIGHT-1M` on every answer).
//!
//! Connections are kept alive (HTTP/1.1): when an answer leaves its connection reusable,
//! [`RestConn::into_idle`] hands the open socket over for the shell's [`RestPool`], and
//! [`RestConn::start_pooled`] sends the next request to the same host over it, without a
//! TCP connect or TLS handshake. A request on a reused socket that fails before any byte of
//! an answer (the server closed it while idle) redials the same address once, on a fresh
//! connection; nothing else is retried.
//!
//! It never reads the clock to decide anything, never sleeps, never blocks and never
//! interprets the body: deadlines, backoff after 429/418 and JSON parsing belong to the
//! caller. It never resolves a name: as for [`crate::shell::conn::upstream::UpstreamConn::connect`],
//! an IP literal is connected at once and a host name waits, without a socket, for the
//! addresses the shell's non-blocking [`crate::shell::dns::Resolver`] finds
//! ([`RestConn::resolving_host`], [`RestConn::on_resolved`]).
//! The TCP/TLS plumbing (address fallback, [`TlsSetup`], the non-blocking TLS stream) is
//! shared with `upstream_conn`.
//!
//! # How the event loop drives it
//! - [`RestConn::start`] registers the socket with the given token, or (host name) leaves the
//!   request resolving: look [`RestConn::resolving_host`] up and call
//!   [`RestConn::on_resolved`], which may return the outcome at once (a failed lookup).
//! - On every readiness event for that token call [`RestConn::on_event`]; the flags are
//!   hints only, every call makes whatever progress the socket allows. It returns
//!   `Some(outcome)` exactly once; the socket is closed at that moment, or kept for
//!   [`RestConn::into_idle`] when the answer left it reusable.
//! - After every `on_event`, call [`RestConn::reregister`]: READABLE always, WRITABLE while
//!   connecting, handshaking or writing the request. No system call when nothing changed.
//! - To give up early (a deadline the caller keeps, see [`RestConn::started_at`]), call
//!   [`RestConn::deregister`] and drop the connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

mod idle;
pub use idle::{Destination as IdleDestination, IdleConn, RestPool};

use mio::{Interest, Registry, Token};

use crate::shell::conn::transport::{describe_io_error, describe_tls_handshake_error, Transport};
use crate::wire::http::response::{Received, ResponseReader};
use crate::shell::conn::dial::{connect_next, literal_addrs, start_transport, tcp_connect_result, Registration};
use crate::shell::conn::tls_client::TlsSetup;
use crate::shell::conn::url::{parse_url_with_schemes, WsUrl};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Size limits of one response; exceeding one fails the request (the codec's own type).
pub use crate::wire::http::response::ResponseLimits as RestLimits;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestOutcome {
    /// A complete HTTP response, whatever its status (429, 418 and 4xx/5xx included: the
    /// caller reads `status`, the rate-limit fields and the JSON error body).
    Response {
        status: u16,
        /// Header names lowercased, values trimmed; order and repeats kept.
        headers: Vec<(String, String)>,
        body: String,
        /// `Retry-After` as whole seconds (Binance's form); `None` when absent or not a number.
        retry_after_s: Option<u64>,
        /// `X-MBX-USED-WEIGHT-1M`: the IP's request weight used in the current minute.
        used_weight_1m: Option<u32>,
    },
    /// No usable response: connect, TLS or I/O error, malformed or oversized response,
    /// connection closed early, body not UTF-8. The reason names the URL and is for humans.
    Failed { reason: String },
}

/// One non-blocking HTTP/1.1 GET. See the module docs for how to drive it.
pub struct RestConn {
    phase: Phase,
    /// `None` once finished (the socket is closed then).
    transport: Option<Transport>,
    /// `GET` request bytes, written during `Phase::Writing`.
    request: Vec<u8>,
    /// `scheme://authority/target`, for failure reasons and logs.
    url: String,
    host: String,
    port: u16,
    /// `https`: TLS over the TCP connection.
    secure: bool,
    limits: RestLimits,
    token: Token,
    /// Interest the current socket is registered with; `None` when not registered.
    registered: Option<Interest>,
    started_at: Instant,
    /// On a reused (kept-alive) socket: how to redial if the server closed it while idle.
    /// Cleared once used, or once the answer's first byte arrives.
    redial: Option<Box<Redial>>,
    /// Some byte of the answer has arrived.
    answered: bool,
    /// Finished with a reusable answer: the socket is kept for [`RestConn::into_idle`].
    keep: bool,
}

/// A fresh connection to the address a reused socket was connected to.
struct Redial {
    tls: TlsSetup,
    peer: SocketAddr,
}

impl std::fmt::Debug for RestConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (url, phase, token) = (&self.url, self.phase.name(), self.token.0);
        write!(f, "RestConn(GET {url}, {phase}, token {token})")
    }
}

impl RestConn {
    /// Starts `GET base_url + path_and_query` with the default [`RestLimits`] (see
    /// [`RestConn::with_limits`]).
    ///
    /// `base_url` is `https://api.binance.com` or `http://127.0.0.1:PORT`; a path prefix such
    /// as `http://proxy/binance` is kept. `path_and_query` must start with `/` and be
    /// printable ASCII (the caller percent-encodes). For an IP literal host a non-blocking
    /// connect starts and the socket is registered under `token` (READABLE | WRITABLE); for
    /// a host name the request waits for [`on_resolved`](Self::on_resolved). If an address
    /// fails the next resolved one is tried. Nothing here blocks.
    ///
    /// Errors (bad URL or path, every address refused at once) mean no request exists: the
    /// caller treats them like an immediate `Failed`.
    pub fn start(
        base_url: &str,
        path_and_query: &str,
        tls: &TlsSetup,
        registry: &Registry,
        token: Token,
    ) -> io::Result<RestConn> {
        let url = parse_url_with_schemes(base_url, "http://", "https://").map_err(invalid_input)?;
        let target = request_target(&url, path_and_query).map_err(invalid_input)?;
        if let Some(addrs) = literal_addrs(&url) {
            return Self::start_to(Destination { url, target, addrs }, tls, registry, token);
        }
        Ok(RestConn::in_phase(Phase::Resolving(Box::new(tls.clone())), None, url, &target, token))
    }

    /// A request in `phase` for `url` + `target`, with the default limits and nothing
    /// registered yet.
    fn in_phase(phase: Phase, transport: Option<Transport>, url: WsUrl, target: &str, token: Token) -> RestConn {
        RestConn {
            phase,
            transport,
            request: build_request(&url.authority(), target),
            url: full_url(&url, target),
            host: url.host,
            port: url.port,
            secure: url.secure,
            limits: RestLimits::default(),
            token,
            registered: None,
            started_at: Instant::now(),
            redial: None,
            answered: false,
            keep: false,
        }
    }

    /// Like [`start`](Self::start), but over an idle connection to the same host from
    /// `pool` when one is open (registered under `token`, the request written at once
    /// when the socket takes it); else a new connection as `start` makes.
    pub fn start_pooled(
        base_url: &str,
        path_and_query: &str,
        tls: &TlsSetup,
        pool: &mut RestPool,
        registry: &Registry,
        token: Token,
    ) -> io::Result<RestConn> {
        let url = parse_url_with_schemes(base_url, "http://", "https://").map_err(invalid_input)?;
        let target = request_target(&url, path_and_query).map_err(invalid_input)?;
        let to = IdleDestination { secure: url.secure, host: url.host.clone(), port: url.port };
        let Some(idle) = pool.take(&to, Instant::now()) else {
            return Self::start(base_url, path_and_query, tls, registry, token);
        };
        let redial = Box::new(Redial { tls: tls.clone(), peer: idle.peer });
        let mut conn = RestConn::in_phase(Phase::Writing { written: 0 }, Some(idle.transport), url, &target, token);
        conn.redial = Some(redial);
        conn.reregister(registry, token)?;
        Ok(conn)
    }

    /// The open socket of a request that finished with a reusable answer, for the pool;
    /// `None` (and the socket closed) otherwise. Deregister it first.
    pub fn into_idle(mut self, now: Instant) -> Option<IdleConn> {
        let mut transport = self.transport.take()?;
        let peer = match transport.tcp_mut().peer_addr() {
            Ok(peer) if self.keep && self.registered.is_none() => peer,
            _ => {
                transport.shut_down();
                return None;
            }
        };
        let to = IdleDestination { secure: self.secure, host: std::mem::take(&mut self.host), port: self.port };
        Some(IdleConn::new(transport, to, peer, now))
    }

    /// A reused socket failed before any answer: a fresh connection to the same address,
    /// the request written again from its start. `Err` when the connect cannot start.
    fn redial_fresh(&mut self, redial: Redial) -> io::Result<()> {
        if let Some(mut old) = self.transport.take() {
            old.shut_down();
        }
        let url = WsUrl { secure: self.secure, host: self.host.clone(), port: self.port, path: String::new() };
        let mut addrs = VecDeque::from([redial.peer]);
        let (transport, addr, failures) = start_transport(&url, &mut addrs, &redial.tls)?;
        self.transport = Some(transport);
        self.phase = Phase::Connecting(Dial { addr, fallback: addrs, failures });
        // The new socket is not registered yet: the caller's reregister does it.
        self.registered = None;
        Ok(())
    }

    /// The host name this request waits to have resolved; `None` once it has addresses
    /// (or was given an IP literal).
    pub fn resolving_host(&self) -> Option<&str> {
        match self.phase {
            Phase::Resolving(_) => Some(&self.host),
            _ => None,
        }
    }

    /// The name lookup ended: starts the connect to `addrs` in order and registers the
    /// socket under the request's token (returns `None`: drive it with `on_event`), or
    /// returns the `Failed` outcome (lookup error, every address refused at once). Does
    /// nothing (`None`) unless the request is resolving.
    pub fn on_resolved(&mut self, result: Result<&[IpAddr], String>, registry: &Registry) -> Option<RestOutcome> {
        let Phase::Resolving(tls) = std::mem::replace(&mut self.phase, Phase::Finished) else {
            return None;
        };
        let reason = match result {
            Err(reason) => reason,
            Ok(ips) => match self.connect_resolved(ips, &tls, registry) {
                Ok(()) => return None,
                Err(e) => e.to_string(),
            },
        };
        self.close_socket();
        Some(RestOutcome::Failed { reason: format!("GET {}: {reason}", self.url) })
    }

    fn connect_resolved(&mut self, ips: &[IpAddr], tls: &TlsSetup, registry: &Registry) -> io::Result<()> {
        let url = WsUrl { secure: self.secure, host: self.host.clone(), port: self.port, path: String::new() };
        let mut addrs: VecDeque<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, self.port)).collect();
        let (transport, addr, failures) = start_transport(&url, &mut addrs, tls)?;
        self.transport = Some(transport);
        self.phase = Phase::Connecting(Dial { addr, fallback: addrs, failures });
        self.reregister(registry, self.token)
    }

    /// Replaces the size limits. Takes effect for the whole response when called before the
    /// first `on_event` (limits are read when the request has been written).
    #[must_use]
    pub fn with_limits(mut self, limits: RestLimits) -> RestConn {
        self.limits = limits;
        self
    }

    /// `start` after parsing and name resolution: tries `dest.addrs` in order.
    fn start_to(
        dest: Destination,
        tls: &TlsSetup,
        registry: &Registry,
        token: Token,
    ) -> io::Result<RestConn> {
        let Destination {
            url,
            target,
            mut addrs,
        } = dest;
        let (transport, addr, failures) = start_transport(&url, &mut addrs, tls)?;
        let dial = Dial { addr, fallback: addrs, failures };
        let mut conn = RestConn::in_phase(Phase::Connecting(dial), Some(transport), url, &target, token);
        conn.reregister(registry, token)?;
        Ok(conn)
    }

    /// Makes all the progress the socket allows. Returns the outcome exactly once, when the
    /// response is complete or the request failed; `None` before and after that.
    /// `readable`/`writable` are hints; spurious calls are harmless.
    pub fn on_event(&mut self, readable: bool, writable: bool) -> Option<RestOutcome> {
        // Every phase tries its direction regardless; readiness may be spurious or coalesced.
        let _ = (readable, writable);
        loop {
            match self.step() {
                Step::Progressed(phase) => self.phase = phase,
                Step::Wait(phase) => {
                    self.phase = phase;
                    return None;
                }
                Step::NewSocket(phase) => {
                    // The fallback socket is not registered yet: the caller's reregister does it.
                    self.phase = phase;
                    self.registered = None;
                    return None;
                }
                Step::Finished(outcome, reusable) => {
                    if reusable {
                        // The socket stays open for `into_idle`; nothing more is read.
                        self.keep = true;
                        self.phase = Phase::Finished;
                        self.redial = None;
                        self.request = Vec::new();
                    } else {
                        self.close_socket();
                    }
                    return Some(outcome);
                }
                Step::Failed(reason) => {
                    let mut reason = format!("GET {}: {reason}", self.url);
                    if let Some(redial) = self.redial.take().filter(|_| !self.answered) {
                        match self.redial_fresh(*redial) {
                            Ok(()) => return None,
                            Err(e) => reason = format!("{reason}; then on a new connection: {e}"),
                        }
                    }
                    self.close_socket();
                    return Some(RestOutcome::Failed { reason });
                }
            }
        }
    }

    /// Brings the registration in line with the phase: READABLE | WRITABLE until the request
    /// is written, READABLE while reading, none once finished. No system call when nothing
    /// changed. `token` may differ from the one given at start (it is used from now on).
    pub fn reregister(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let wanted = self.phase.wanted_interest();
        let socket = self.transport.as_mut().map(Transport::tcp_mut);
        let registration = Registration {
            registered: &mut self.registered,
            token: &mut self.token,
        };
        registration.update(registry, socket, wanted, token)
    }

    /// Removes the socket from the poll if it is still registered. Safe in any phase; after
    /// the outcome the socket is already gone and this does nothing.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        let was_registered = self.registered.take().is_some();
        match self.transport.as_mut() {
            Some(transport) if was_registered => registry.deregister(transport.tcp_mut()),
            _ => Ok(()),
        }
    }

    /// When `start` was called: the caller's deadline runs from here.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The full URL requested (`https://api.binance.com/api/v3/klines?...`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True once `on_event` has returned the outcome.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    fn close_socket(&mut self) {
        if let Some(mut transport) = self.transport.take() {
            // TLS close_notify and a TCP shutdown, best effort; the peer may be gone.
            transport.shut_down();
        }
        self.phase = Phase::Finished;
        self.registered = None;
        self.request = Vec::new();
    }
}

/// Where one request goes: the parsed base URL, the request target, the resolved addresses.
struct Destination {
    url: WsUrl,
    target: String,
    addrs: VecDeque<SocketAddr>,
}

fn full_url(url: &WsUrl, target: &str) -> String {
    let scheme = if url.secure { "https" } else { "http" };
    format!("{scheme}://{}{target}", url.authority())
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The request target: the base URL's path prefix (if any) followed by `path_and_query`.
fn request_target(base: &WsUrl, path_and_query: &str) -> Result<String, String> {
    if !path_and_query.starts_with('/') {
        return Err(format!("REST path {path_and_query:?} must start with '/'"));
    }
    if !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "REST path {path_and_query:?} has spaces, control or non-ASCII characters (percent-encode them)"
        ));
    }
    if base.path.contains('?') {
        return Err(format!(
            "REST base URL path {:?} must not have a query",
            base.path
        ));
    }
    Ok(format!(
        "{}{path_and_query}",
        base.path.trim_end_matches('/')
    ))
}

fn build_request(authority: &str, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\n\
         Host: {authority}\r\n\
         User-Agent: klinegate/{}\r\n\
         Accept: application/json\r\n\
         Accept-Encoding: identity\r\n\
         \r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

enum Phase {
    /// Waiting for the shell's resolver; no socket yet. Holds the TLS setup for the connect.
    Resolving(Box<TlsSetup>),
    Connecting(Dial),
    /// Also passed through (at once) for plain `http://`.
    TlsHandshaking,
    /// `written` bytes of the request are accepted by the transport.
    Writing {
        written: usize,
    },
    Reading(Box<ResponseReader>),
    Finished,
}

/// The TCP connect in progress and the addresses left to try.
struct Dial {
    addr: SocketAddr,
    fallback: VecDeque<SocketAddr>,
    /// One line per address that failed, for the final reason.
    failures: Vec<String>,
}

/// What one step of the state machine achieved.
enum Step {
    /// The phase changed and may be able to progress right away.
    Progressed(Phase),
    /// Nothing more to do until the next readiness event.
    Wait(Phase),
    /// The socket was replaced by one to the next address; it needs registering.
    NewSocket(Phase),
    /// The answer, and whether its connection may carry another request.
    Finished(RestOutcome, bool),
    /// The request failed; the reason is completed with the URL.
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Resolving(_) => "resolving",
            Phase::Connecting(_) => "connecting",
            Phase::TlsHandshaking => "tls-handshaking",
            Phase::Writing { .. } => "writing",
            Phase::Reading(_) => "reading",
            Phase::Finished => "finished",
        }
    }

    fn wanted_interest(&self) -> Option<Interest> {
        match self {
            Phase::Connecting(_) | Phase::TlsHandshaking | Phase::Writing { .. } => {
                Some(Interest::READABLE | Interest::WRITABLE)
            }
            Phase::Reading(_) => Some(Interest::READABLE),
            Phase::Resolving(_) | Phase::Finished => None,
        }
    }
}

impl RestConn {
    /// Runs one step of the current phase.
    fn step(&mut self) -> Step {
        if let Phase::Resolving(_) = self.phase {
            return Step::Wait(std::mem::replace(&mut self.phase, Phase::Finished));
        }
        let Some(transport) = self.transport.as_mut() else {
            return Step::Wait(Phase::Finished);
        };
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Connecting(dial) => step_connect(transport, dial),
            Phase::TlsHandshaking => match transport.drive_tls_handshake() {
                Ok(false) => Step::Wait(Phase::TlsHandshaking),
                Ok(true) => Step::Progressed(Phase::Writing { written: 0 }),
                Err(e) => Step::Failed(describe_tls_handshake_error(&self.host, &e)),
            },
            Phase::Writing { written } => {
                step_write(transport, &self.request, written, self.limits)
            }
            Phase::Reading(reader) => step_read(transport, reader, &mut self.answered),
            Phase::Resolving(tls) => Step::Wait(Phase::Resolving(tls)),
            Phase::Finished => Step::Wait(Phase::Finished),
        }
    }
}

fn step_connect(transport: &mut Transport, mut dial: Dial) -> Step {
    match tcp_connect_result(transport.tcp_mut()) {
        Ok(false) => Step::Wait(Phase::Connecting(dial)),
        Ok(true) => {
            // The request is one small write: it must not wait for Nagle.
            let _ = transport.tcp_mut().set_nodelay(true);
            Step::Progressed(Phase::TlsHandshaking)
        }
        Err(e) => {
            dial.failures
                .push(format!("connect to {} failed: {e}", dial.addr));
            match connect_next(&mut dial.fallback, &mut dial.failures) {
                Some((tcp, addr)) => {
                    transport.replace_tcp(tcp);
                    dial.addr = addr;
                    Step::NewSocket(Phase::Connecting(dial))
                }
                None => Step::Failed(dial.failures.join("; ")),
            }
        }
    }
}

fn step_write(
    transport: &mut Transport,
    request: &[u8],
    mut written: usize,
    limits: RestLimits,
) -> Step {
    while written < request.len() {
        match transport.write(&request[written..]) {
            Ok(0) => return Step::Failed("connection closed while sending the request".into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Step::Wait(Phase::Writing { written })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Step::Failed(format!("sending the request: {}", describe_io_error(&e)))
            }
        }
    }
    // TLS may still hold records of the request; they must reach the socket before we read.
    match transport.flush() {
        Ok(()) => Step::Progressed(Phase::Reading(Box::new(ResponseReader::new(limits)))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait(Phase::Writing { written }),
        Err(e) => Step::Failed(format!("sending the request: {}", describe_io_error(&e))),
    }
}

/// Reads the answer; `answered` is set by its first byte.
fn step_read(transport: &mut Transport, mut reader: Box<ResponseReader>, answered: &mut bool) -> Step {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        let fed = match transport.read(&mut buf) {
            // Read to its end: the connection is over whatever the answer said.
            Ok(0) => reader.finish_at_eof().and_then(outcome).map(|o| Some((o, false))),
            Ok(n) => {
                *answered = true;
                reader.feed(&buf[..n]).map(|done| {
                    done.map(|r| {
                        let reusable = r.reusable;
                        match outcome(r) {
                            Ok(o) => (o, reusable),
                            Err(reason) => (RestOutcome::Failed { reason }, false),
                        }
                    })
                })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Step::Wait(Phase::Reading(reader))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("reading the response: {}", describe_io_error(&e))),
        };
        match fed {
            Ok(None) => {}
            Ok(Some((outcome, reusable))) => return Step::Finished(outcome, reusable),
            Err(reason) => return Step::Failed(reason),
        }
    }
}

/// The exchange's answer as klinegate uses it: the body as text and Binance's two
/// rate-limit headers read out. `Err` when the body is not UTF-8.
fn outcome(received: Received) -> Result<RestOutcome, String> {
    let Received { status, headers, body, .. } = received;
    let body = String::from_utf8(body)
        .map_err(|e| format!("response body (HTTP {status}) is not valid UTF-8: {e}"))?;
    let retry_after_s = header(&headers, "retry-after").and_then(|v| v.parse().ok());
    let used_weight_1m = header(&headers, "x-mbx-used-weight-1m").and_then(|v| v.parse().ok());
    Ok(RestOutcome::Response { status, headers, body, retry_after_s, used_weight_1m })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests;
