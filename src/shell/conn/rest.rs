//! One REST request to the exchange, non-blocking, driven by the shell's single `mio::Poll`:
//! TCP connect → rustls client handshake (for `https://`) → write one HTTP/1.1 `GET` →
//! read the response with the pure codec [`crate::wire::http::response`].
//!
//! This module owns the bytes of one REST socket and turns them into one [`RestOutcome`]:
//! the status, the headers, the body as text, and the two rate-limit headers Binance sends
//! (`Retry-After` on 429/418, `X-MBX-USED-WEIGHT-1M` on every answer). The connection is used
//! for exactly one request (`Connection: close`); there is no pooling and no retry.
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
//!   `Some(outcome)` exactly once; the socket is closed at that moment.
//! - After every `on_event`, call [`RestConn::reregister`]: READABLE always, WRITABLE while
//!   connecting, handshaking or writing the request. No system call when nothing changed.
//! - To give up early (a deadline the caller keeps, see [`RestConn::started_at`]), call
//!   [`RestConn::deregister`] and drop the connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

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
        }
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
                Step::Finished(outcome) => {
                    self.close_socket();
                    return Some(outcome);
                }
                Step::Failed(reason) => {
                    self.close_socket();
                    let reason = format!("GET {}: {reason}", self.url);
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
         Connection: close\r\n\
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
    Finished(RestOutcome),
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
            Phase::Reading(reader) => step_read(transport, reader),
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

fn step_read(transport: &mut Transport, mut reader: Box<ResponseReader>) -> Step {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        let fed = match transport.read(&mut buf) {
            Ok(0) => reader.finish_at_eof().and_then(outcome).map(Some),
            Ok(n) => reader
                .feed(&buf[..n])
                .map(|done| done.map(|r| outcome(r).unwrap_or_else(|reason| RestOutcome::Failed { reason }))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Step::Wait(Phase::Reading(reader))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("reading the response: {}", describe_io_error(&e))),
        };
        match fed {
            Ok(None) => {}
            Ok(Some(outcome)) => return Step::Finished(outcome),
            Err(reason) => return Step::Failed(reason),
        }
    }
}

/// The exchange's answer as klinegate uses it: the body as text and Binance's two
/// rate-limit headers read out. `Err` when the body is not UTF-8.
fn outcome(received: Received) -> Result<RestOutcome, String> {
    let Received { status, headers, body } = received;
    let body = String::from_utf8(body)
        .map_err(|e| format!("response body (HTTP {status}) is not valid UTF-8: {e}"))?;
    let retry_after_s = header(&headers, "retry-after").and_then(|v| v.parse().ok());
    let used_weight_1m = header(&headers, "x-mbx-used-weight-1m").and_then(|v| v.parse().ok());
    Ok(RestOutcome::Response { status, headers, body, retry_after_s, used_weight_1m })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Tests: the parser on its own, then a real mio::Poll loop against tiny loopback servers.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::test_support::{closed_port, spawn_tcp_server, spawn_tls_server, TEST_TIMEOUT};
    use mio::{Events, Poll};
    use crate::wire::http::response::tests::frame;
    use std::net::TcpStream as StdTcpStream;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const TOKEN: Token = Token(3);

    // --- the outcome of a parsed response (the codec's own tests are in wire::http::response)

    /// Feeds `pieces` in order, then EOF if the response is not complete by then.
    fn parse_pieces(pieces: &[&[u8]], limits: RestLimits) -> RestOutcome {
        let mut reader = ResponseReader::new(limits);
        let done = |r: Result<Received, String>| {
            r.and_then(outcome).unwrap_or_else(|reason| RestOutcome::Failed { reason })
        };
        for piece in pieces {
            match reader.feed(piece) {
                Ok(Some(received)) => return done(Ok(received)),
                Ok(None) => {}
                Err(reason) => return RestOutcome::Failed { reason },
            }
        }
        done(reader.finish_at_eof())
    }

    fn parse(raw: &[u8]) -> RestOutcome {
        parse_pieces(&[raw], RestLimits::default())
    }

    fn status_and_body(outcome: &RestOutcome) -> (u16, &str) {
        match outcome {
            RestOutcome::Response { status, body, .. } => (*status, body.as_str()),
            RestOutcome::Failed { reason } => panic!("expected a response, got: {reason}"),
        }
    }

    /// `(retry_after_s, used_weight_1m)` of a response.
    fn rate_fields(outcome: &RestOutcome) -> (Option<u64>, Option<u32>) {
        match outcome {
            RestOutcome::Response {
                retry_after_s,
                used_weight_1m,
                ..
            } => (*retry_after_s, *used_weight_1m),
            RestOutcome::Failed { reason } => panic!("expected a response, got: {reason}"),
        }
    }

    fn failure(outcome: &RestOutcome) -> &str {
        match outcome {
            RestOutcome::Failed { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn rate_limited_response_reports_retry_after_and_weight() {
        let body = r#"{"code":-1003,"msg":"Too many requests."}"#;
        let raw = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n\
             Retry-After: 7\r\nX-MBX-USED-WEIGHT-1M: 6042\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let outcome = parse(raw.as_bytes());
        assert_eq!(status_and_body(&outcome), (429, body));
        assert_eq!(rate_fields(&outcome), (Some(7), Some(6042)));
        let RestOutcome::Response { headers, .. } = outcome else {
            unreachable!()
        };
        let content_type = ("content-type".into(), "application/json".into());
        assert_eq!(headers[0], content_type);
        assert_eq!(headers[2], ("x-mbx-used-weight-1m".into(), "6042".into()));
    }

    #[test]
    fn absent_or_unparsable_rate_headers_are_none() {
        let raw = b"HTTP/1.1 418 I'm a teapot\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n\
                    Content-Length: 2\r\n\r\n{}";
        let outcome = parse(raw);
        assert_eq!(status_and_body(&outcome), (418, "{}"));
        assert_eq!(rate_fields(&outcome), (None, None));
    }

    #[test]
    fn a_body_that_is_not_utf8_fails() {
        let outcome = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe");
        assert!(failure(&outcome).contains("(HTTP 200) is not valid UTF-8"), "{outcome:?}");
        let outcome = parse(b"HTTP/1.0 200 OK\r\n\r\n\xff");
        assert!(failure(&outcome).contains("not valid UTF-8"), "{outcome:?}");
    }

    #[test]
    fn request_target_joins_the_base_path_and_refuses_bad_paths() {
        let base = parse_url_with_schemes("http://h/prefix/", "http://", "https://").unwrap();
        assert_eq!(
            request_target(&base, "/api/v3/klines?a=1").unwrap(),
            "/prefix/api/v3/klines?a=1"
        );
        let root = parse_url_with_schemes("https://h", "http://", "https://").unwrap();
        assert_eq!(request_target(&root, "/x").unwrap(), "/x");
        assert!(request_target(&root, "x")
            .unwrap_err()
            .contains("start with '/'"));
        assert!(request_target(&root, "/a b")
            .unwrap_err()
            .contains("percent-encode"));
        assert!(request_target(&root, "/a\r\nX: y")
            .unwrap_err()
            .contains("percent-encode"));
        let with_query = parse_url_with_schemes("http://h/?q=1", "http://", "https://").unwrap();
        assert!(request_target(&with_query, "/x")
            .unwrap_err()
            .contains("query"));
    }

    // --- the client side: the shell loop in miniature ---------------------------------------

    struct Driver {
        poll: Poll,
        events: Events,
        conn: RestConn,
        /// The interest after every turn, to check the registration rules.
        interests: Vec<Option<Interest>>,
    }

    impl Driver {
        fn start(base: &str, path: &str, tls: &TlsSetup, limits: RestLimits) -> Driver {
            let poll = Poll::new().unwrap();
            let mut conn = RestConn::start(base, path, tls, poll.registry(), TOKEN)
                .unwrap()
                .with_limits(limits);
            // `localhost` (the TLS tests' certificate name) as the shell's hosts lookup has it.
            if let Some(host) = conn.resolving_host() {
                let addrs = crate::shell::dns::Hosts::default().lookup(host).expect("only localhost");
                assert_eq!(conn.on_resolved(Ok(&addrs), poll.registry()), None);
            }
            Driver::with_conn(poll, conn)
        }

        fn with_conn(poll: Poll, conn: RestConn) -> Driver {
            let interests = vec![conn.registered];
            Driver {
                poll,
                events: Events::with_capacity(8),
                conn,
                interests,
            }
        }

        /// Turns the loop until the outcome; `on_event` only on our readiness events.
        fn run(&mut self) -> RestOutcome {
            let deadline = Instant::now() + TEST_TIMEOUT;
            loop {
                assert!(Instant::now() < deadline, "no outcome: {:?}", self.conn);
                let wait = Some(Duration::from_millis(50));
                self.poll.poll(&mut self.events, wait).unwrap();
                let ours = self.events.iter().any(|e| e.token() == TOKEN);
                let outcome = if ours {
                    self.conn.on_event(true, true)
                } else {
                    None
                };
                self.conn.reregister(self.poll.registry(), TOKEN).unwrap();
                self.interests.push(self.conn.registered);
                if let Some(outcome) = outcome {
                    self.assert_finished();
                    return outcome;
                }
            }
        }

        fn assert_finished(&mut self) {
            assert!(self.conn.is_finished());
            assert_eq!(self.conn.registered, None);
            assert_eq!(
                self.conn.on_event(true, true),
                None,
                "outcome reported twice"
            );
            self.conn.deregister(self.poll.registry()).unwrap();
        }
    }

    fn plain_tls() -> TlsSetup {
        TlsSetup::new(None).unwrap()
    }

    // --- the server side ---------------------------------------------------------------------

    /// Reads up to the end of the request head; `None` if the client (or TLS) failed first.
    fn read_request_head<S: Read>(stream: &mut S) -> Option<String> {
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
            head.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// Waits until the client hangs up: proves the client finished without our EOF.
    fn wait_for_client_close<S: Read>(stream: &mut S) {
        let mut buf = [0u8; 64];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Answers one request with `response`, then `after` (e.g. wait for the client's close).
    /// The request head comes back through the channel.
    fn spawn_http_server(
        response: Vec<u8>,
        after: fn(&mut StdTcpStream),
    ) -> (u16, thread::JoinHandle<()>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let (port, handle) = spawn_tcp_server(move |mut stream| {
            let head = read_request_head(&mut stream).expect("no request");
            // Tests that ignore the request drop the receiver.
            let _ = tx.send(head);
            // The client may hang up early on purpose (size limit): ignore write errors.
            let _ = stream.write_all(&response);
            after(&mut stream);
        });
        (port, handle, rx)
    }

    fn hang_up(_: &mut StdTcpStream) {}

    #[test]
    fn host_name_waits_for_the_resolver_then_fetches() {
        let body = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let (port, server, heads) = spawn_http_server(body.into(), hang_up);
        let poll = Poll::new().unwrap();
        let base = format!("http://api.exchange.test:{port}/v1");
        let mut conn = RestConn::start(&base, "/ping", &plain_tls(), poll.registry(), TOKEN).unwrap();
        assert_eq!(conn.resolving_host(), Some("api.exchange.test"));
        assert_eq!(conn.on_event(true, true), None, "nothing to do while resolving");
        conn.reregister(poll.registry(), TOKEN).unwrap();
        assert_eq!(conn.registered, None);
        assert!(!conn.is_finished());
        let addrs = [IpAddr::from([127, 0, 0, 1])];
        assert_eq!(conn.on_resolved(Ok(&addrs), poll.registry()), None);
        assert_eq!(conn.resolving_host(), None);
        let outcome = Driver::with_conn(poll, conn).run();
        assert!(matches!(outcome, RestOutcome::Response { status: 200, .. }), "{outcome:?}");
        let head = heads.recv().unwrap();
        assert!(head.starts_with("GET /v1/ping HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("Host: api.exchange.test:{port}\r\n")), "{head}");
        server.join().unwrap();
    }

    #[test]
    fn failed_resolution_is_the_failed_outcome() {
        let poll = Poll::new().unwrap();
        let mut conn = RestConn::start("https://fapi.example", "/x", &plain_tls(), poll.registry(), TOKEN).unwrap();
        let reason = "resolving fapi.example: timed out after 10.0 s".to_owned();
        let outcome = conn.on_resolved(Err(reason), poll.registry());
        assert_eq!(
            outcome,
            Some(RestOutcome::Failed { reason: "GET https://fapi.example/x: resolving fapi.example: timed out after 10.0 s".into() })
        );
        assert!(conn.is_finished());
        assert_eq!(conn.on_resolved(Err("again".into()), poll.registry()), None);
    }

    fn base(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Serves `response` once (then `after`) and runs `GET path` against it to the outcome.
    fn fetch(
        response: impl Into<Vec<u8>>,
        after: fn(&mut StdTcpStream),
        path: &str,
        limits: RestLimits,
    ) -> RestOutcome {
        let (port, server, _) = spawn_http_server(response.into(), after);
        let outcome = Driver::start(&base(port), path, &plain_tls(), limits).run();
        server.join().unwrap();
        outcome
    }

    #[test]
    fn content_length_response_arrives_without_waiting_for_eof() {
        let body = r#"[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n\
             X-MBX-USED-WEIGHT-1M: 2\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (port, server, requests) =
            spawn_http_server(response.into_bytes(), wait_for_client_close);
        let path = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1";
        let mut d = Driver::start(&base(port), path, &plain_tls(), RestLimits::default());
        assert_eq!(d.conn.url(), format!("http://127.0.0.1:{port}{path}"));
        let outcome = d.run();
        let RestOutcome::Response {
            status,
            body: got,
            used_weight_1m,
            ..
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            (*status, got.as_str(), *used_weight_1m),
            (200, body, Some(2))
        );

        let request = requests.recv_timeout(TEST_TIMEOUT).unwrap();
        let expected = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: klinegate/{}\r\n\
             Accept: application/json\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(request, expected);
        server.join().unwrap();

        // Both directions while connecting/writing, then READABLE only, then nothing.
        let both = Some(Interest::READABLE | Interest::WRITABLE);
        assert_eq!(d.interests.first(), Some(&both));
        assert_eq!(d.interests.last(), Some(&None));
        assert!(d
            .interests
            .iter()
            .all(|i| [both, Some(Interest::READABLE), None].contains(i)));
    }

    #[test]
    fn chunked_response_over_loopback() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                         b\r\n{\"symbols\":\r\n4\r\n[]}\n\r\n0\r\n\r\n";
        let path = "/api/v3/exchangeInfo";
        let outcome = fetch(
            *response,
            wait_for_client_close,
            path,
            RestLimits::default(),
        );
        assert_eq!(status_and_body(&outcome), (200, "{\"symbols\":[]}\n"));
    }

    #[test]
    fn body_until_eof_over_loopback() {
        let response = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[\"1.5\"]";
        let path = "/api/v3/ticker/24hr?symbol=X";
        let outcome = fetch(*response, hang_up, path, RestLimits::default());
        assert_eq!(status_and_body(&outcome), (200, "[\"1.5\"]"));
    }

    #[test]
    fn rate_limit_answer_over_loopback() {
        let body = r#"{"code":-1003,"msg":"Way too much request weight used."}"#;
        let response = format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 31\r\nx-mbx-used-weight-1m: 2401\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let path = "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1500";
        let outcome = fetch(response, wait_for_client_close, path, RestLimits::default());
        assert_eq!(status_and_body(&outcome), (429, body));
        assert_eq!(rate_fields(&outcome), (Some(31), Some(2401)));
    }

    #[test]
    fn connection_refused_fails_quickly() {
        let port = closed_port();
        let poll = Poll::new().unwrap();
        let conn = RestConn::start(
            &base(port),
            "/api/v3/klines",
            &plain_tls(),
            poll.registry(),
            TOKEN,
        );
        // Loopback may refuse at once (an Err) or report it as an event (a Failed).
        let reason = match conn {
            Err(e) => e.to_string(),
            Ok(conn) => failure(&Driver::with_conn(poll, conn).run()).to_owned(),
        };
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        assert!(reason.contains(&port.to_string()), "{reason}");
    }

    #[test]
    fn server_closing_mid_body_fails() {
        let response = *b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,2,3";
        let outcome = fetch(response, hang_up, "/x", RestLimits::default());
        let reason = failure(&outcome);
        assert!(reason.contains("/x: the server closed"), "{reason}");
        assert!(reason.contains("after 6 of 100 body bytes"), "{reason}");
        assert!(reason.starts_with("GET http://127.0.0.1:"), "{reason}");
    }

    #[test]
    fn oversized_bodies_fail() {
        // Declared too large for the default 8 MiB limit: refused from the head alone.
        let declared = *b"HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n";
        let outcome = fetch(
            declared,
            wait_for_client_close,
            "/big",
            RestLimits::default(),
        );
        assert!(
            failure(&outcome).contains("8388608-byte limit"),
            "{outcome:?}"
        );

        // Streamed past a small limit with no length announced.
        let mut streamed = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        streamed.extend(std::iter::repeat_n(b'x', 256 * 1024));
        let limits = RestLimits {
            max_body_bytes: 100_000,
            ..RestLimits::default()
        };
        let outcome = fetch(streamed, hang_up, "/big", limits);
        assert!(
            failure(&outcome).contains("100000-byte limit"),
            "{outcome:?}"
        );
    }

    #[test]
    fn slow_server_sending_small_pieces() {
        let body: String = (0..40).map(|i| format!("[{i},\"{i}.5\"],")).collect();
        let response = frame(&body, 1, &[7, 1, 13]);
        let (port, server) = spawn_tcp_server(move |mut stream| {
            read_request_head(&mut stream).expect("no request");
            stream.set_nodelay(true).unwrap();
            for piece in response.chunks(5) {
                stream.write_all(piece).unwrap();
                thread::sleep(Duration::from_millis(1));
            }
            wait_for_client_close(&mut stream);
        });
        let mut d = Driver::start(&base(port), "/slow", &plain_tls(), RestLimits::default());
        assert_eq!(status_and_body(&d.run()), (200, body.as_str()));
        // Many readable turns while reading, never WRITABLE then.
        let reading = d
            .interests
            .iter()
            .filter(|i| **i == Some(Interest::READABLE))
            .count();
        assert!(reading > 10, "{:?}", d.interests);
        server.join().unwrap();
    }

    #[test]
    fn falls_back_to_the_next_address() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let (port, server, _) = spawn_http_server(response, wait_for_client_close);
        let dead: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let live: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let url =
            parse_url_with_schemes(&format!("http://localhost:{port}"), "http://", "https://")
                .unwrap();
        let poll = Poll::new().unwrap();
        let dest = Destination {
            url,
            target: "/".to_owned(),
            addrs: VecDeque::from([dead, live]),
        };
        let conn = RestConn::start_to(dest, &plain_tls(), poll.registry(), TOKEN).unwrap();
        // If the kernel refused `dead` synchronously, start already skipped it.
        let outcome = Driver::with_conn(poll, conn).run();
        assert_eq!(status_and_body(&outcome), (200, "ok"));
        server.join().unwrap();
    }

    #[test]
    fn bad_input_is_refused_at_start() {
        let poll = Poll::new().unwrap();
        let cases = [
            ("ftp://h", "/x", "http://"),
            ("http://h:0", "/x", "port"),
            ("http://127.0.0.1:1", "x", "start with '/'"),
        ];
        for (base, path, needle) in cases {
            let err =
                RestConn::start(base, path, &plain_tls(), poll.registry(), TOKEN).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(needle), "{base} {path}: {err}");
        }
    }

    // --- https:// ----------------------------------------------------------------------------

    #[test]
    fn https_with_a_trusted_self_signed_certificate() {
        let (tx, rx) = mpsc::channel();
        let server = spawn_tls_server(move |mut tls| {
            let head = read_request_head(&mut tls).expect("TLS handshake or request failed");
            tx.send(head).unwrap();
            let body = "[1,2,3]";
            let response = format!(
                "HTTP/1.1 200 OK\r\nX-MBX-USED-WEIGHT-1M: 5\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(response.as_bytes()).unwrap();
            tls.flush().unwrap();
            wait_for_client_close(&mut tls);
        });
        let tls = TlsSetup::new(Some(&server.ca_pem)).unwrap();
        let base = format!("https://localhost:{}", server.port);
        let mut d = Driver::start(
            &base,
            "/fapi/v1/klines?symbol=BTCUSDT",
            &tls,
            RestLimits::default(),
        );
        let outcome = d.run();
        assert_eq!(status_and_body(&outcome), (200, "[1,2,3]"));
        let request = rx.recv_timeout(TEST_TIMEOUT).unwrap();
        assert!(
            request.contains(&format!("\r\nHost: localhost:{}\r\n", server.port)),
            "{request}"
        );
        server.handle.join().unwrap();
    }

    #[test]
    fn https_with_an_untrusted_certificate_fails_with_a_tls_error() {
        let server = spawn_tls_server(|mut tls| {
            assert!(
                read_request_head(&mut tls).is_none(),
                "handshake should have failed"
            );
        });
        let base = format!("https://localhost:{}", server.port);
        let mut d = Driver::start(&base, "/api/v3/klines", &plain_tls(), RestLimits::default());
        let outcome = d.run();
        let reason = failure(&outcome);
        assert!(
            reason.contains("TLS") && reason.contains("certificate"),
            "{reason}"
        );
        server.handle.join().unwrap();
    }
}
