//! One exchange WebSocket connection, non-blocking, driven by the shell's single `mio::Poll`:
//! TCP connect → rustls client handshake (for `wss://`) → tungstenite client handshake → open.
//!
//! This module owns the bytes of one upstream socket and turns them into [`UpstreamEvent`]s
//! (connected, text frame, ping, closed with a reason). It answers server pings itself
//! (tungstenite queues the pong with the ping's payload; we flush it), because Binance closes
//! a connection that does not pong in time.
//!
//! It never reads a clock, never sleeps, never blocks and never decides anything about
//! streams or subscriptions: timeouts (connect, handshake, silence) and pacing are the
//! engine's job. It never resolves a name either: an IP literal is connected at once, a host
//! name leaves the connection waiting in its first state until the shell hands it the
//! addresses from [`crate::shell::dns::Resolver`] (which never blocks) through
//! [`UpstreamConn::on_resolved`].
//!
//! # How the event loop drives it
//! - [`UpstreamConn::connect`] registers the socket with the given token, or, for a host
//!   name, returns a connection without a socket: [`UpstreamConn::resolving_host`] names the
//!   host to look up, and [`UpstreamConn::on_resolved`] starts the connect (or reports
//!   `Closed` with the resolver's reason).
//! - On every readiness event for that token call [`UpstreamConn::on_event`]; the flags are
//!   hints only, every call makes whatever progress the socket allows.
//! - If [`UpstreamConn::wants_read`] is true afterwards, the per-call message budget ran out
//!   with data possibly still buffered (no new readiness event will come for it): call
//!   `on_event` again later in the same loop turn or the next one.
//! - After every `on_event`, `send_text` or `close`, call [`UpstreamConn::reregister`]. It is
//!   a no-op unless the interest changed (WRITABLE is wanted only while connecting or
//!   handshaking, or while output is pending) or the socket was replaced (fallback to the next
//!   resolved address), so it costs nothing on the hot path.
//! - `Closed` is reported exactly once, by `on_event` or `on_resolved`; a fatal error inside
//!   `send_text` is returned as `Err` instead and no `Closed` event follows it.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::client::{ClientHandshake, Request};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::shell::conn::transport::{describe_io_error, describe_tls_handshake_error, Transport};

/// Close-frame reasons are limited to 123 bytes by RFC 6455 (125 minus the status code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

// ---------------------------------------------------------------------------------------------
// TLS setup
// ---------------------------------------------------------------------------------------------

/// The rustls client configuration shared by every upstream connection: the webpki root
/// certificates plus, optionally, extra trust anchors from a PEM file (a private CA, or the
/// self-signed certificate of a test exchange).
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup").finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Builds the configuration. `extra_ca_pem` names a PEM file whose certificates are
    /// trusted in addition to the webpki roots; the error names the file when it cannot be
    /// read, holds no certificate, or holds one that is not a usable trust anchor.
    pub fn new(extra_ca_pem: Option<&Path>) -> Result<TlsSetup, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_pem {
            for cert in read_pem_certificates(path)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "CA file {}: certificate not usable as a trust anchor: {e}",
                        path.display()
                    )
                })?;
            }
        }
        // The ring provider is named explicitly so no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsSetup {
            config: Arc::new(config),
        })
    }
}

fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// URL
// ---------------------------------------------------------------------------------------------

/// A parsed `ws://` or `wss://` URL (also used for the `http://` / `https://` base URLs of
/// [`crate::shell::conn::rest`]: same parts, same default ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `true` for `wss://` (or `https://`): TLS.
    pub secure: bool,
    /// Host name or IP literal, without the brackets of an IPv6 literal.
    pub host: String,
    /// Explicit port, or 80 / 443 by scheme.
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl WsUrl {
    /// `host[:port]` as it goes into the `Host` header (port omitted when it is the default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.secure { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn to_url_string(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Parses `ws://host[:port][/path][?query]` or the `wss://` form. IPv6 literals go in
/// brackets (`ws://[::1]:9000/stream`). User info and fragments are rejected.
pub fn parse_ws_url(url: &str) -> Result<WsUrl, String> {
    parse_url_with_schemes(url, "ws://", "wss://")
}

/// [`parse_ws_url`] with other scheme prefixes (`"http://"`, `"https://"`): the part after
/// the scheme has the same grammar and the same rules.
pub(crate) fn parse_url_with_schemes(
    url: &str,
    plain_scheme: &str,
    secure_scheme: &str,
) -> Result<WsUrl, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix(secure_scheme) {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix(plain_scheme) {
        (false, rest)
    } else {
        return Err(format!(
            "URL {url:?}: must start with {plain_scheme} or {secure_scheme}"
        ));
    };
    if url.contains('#') {
        return Err(format!("URL {url:?}: fragments (#...) are not allowed"));
    }
    let split_at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split_at);
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    if authority.contains('@') {
        return Err(format!(
            "URL {url:?}: user info (user@host) is not supported"
        ));
    }
    let (host, port) = split_host_port(authority).map_err(|e| format!("URL {url:?}: {e}"))?;
    let port = port.unwrap_or(if secure { 443 } else { 80 });
    Ok(WsUrl {
        secure,
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or("IPv6 literal is missing its closing ']'")?;
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let after = &rest[end + 1..];
        let port_text = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the IPv6 literal")),
        };
        (host, port_text)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if !authority.starts_with('[') && host.contains(':') {
        return Err("IPv6 literals must be written in brackets, e.g. [::1]".to_owned());
    }
    let port = match port_text {
        None => None,
        Some(text) => Some(parse_port(text)?),
    };
    Ok((host.to_owned(), port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {text:?} is not a number from 1 to 65535")),
    }
}

// ---------------------------------------------------------------------------------------------
// Public connection API
// ---------------------------------------------------------------------------------------------

/// Limits of one upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Largest accepted message (and frame). A larger one closes the connection.
    /// Binance frames are under 2 KiB; the default is 1 MiB.
    pub max_message_size: usize,
    /// At most this many messages are read per [`UpstreamConn::on_event`] call, so one busy
    /// connection cannot starve the loop. Default 1024.
    pub max_messages_per_event: usize,
    /// Bytes of outgoing frames buffered before `send_text` refuses more (`WouldBlock`).
    /// A single frame larger than this can never be sent. Default 1 MiB.
    pub max_write_buffer: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            max_message_size: 1 << 20,
            max_messages_per_event: 1024,
            max_write_buffer: 1 << 20,
        }
    }
}

/// What an upstream connection reports to the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEvent {
    /// The WebSocket handshake completed; frames may be sent now.
    Connected,
    /// One text message from the exchange.
    Text(String),
    /// The exchange pinged us; the pong (same payload) is already queued and being flushed.
    /// Reported because pongs count toward the exchange's incoming-message rate limit.
    Ping,
    /// The connection is over; nothing more will be reported. The reason is for humans and
    /// logs (it names close codes, HTTP statuses, TLS and I/O errors).
    Closed { reason: String },
}

/// One non-blocking exchange WebSocket. See the module docs for how to drive it.
pub struct UpstreamConn {
    state: State,
    url: WsUrl,
    config: UpstreamConfig,
    token: Token,
    /// Interest the current socket is registered with; `None` when it is not registered
    /// (a fresh fallback socket, or after close).
    registered: Option<Interest>,
    /// Set when the message budget ran out before the socket said `WouldBlock`.
    read_pending: bool,
    /// Set when the last flush stopped on `WouldBlock`: we need a writable event.
    output_pending: bool,
    binary_ignored: u64,
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn")
            .field("url", &self.url)
            .field("state", &self.state.name())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl UpstreamConn {
    /// Starts connecting to `url` with default limits. See [`UpstreamConn::connect_with_config`].
    pub fn connect(
        url: &str,
        tls: &TlsSetup,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UpstreamConn> {
        Self::connect_with_config(url, tls, UpstreamConfig::default(), registry, token)
    }

    /// Parses the URL. For an IP literal host, starts a non-blocking TCP connect and
    /// registers the socket under `token` (READABLE | WRITABLE). For a host name, returns a
    /// connection in the resolving state, with no socket: the caller looks up
    /// [`resolving_host`](Self::resolving_host) and calls [`on_resolved`](Self::on_resolved).
    /// Nothing here blocks.
    ///
    /// Errors (bad URL, socket creation failed) mean no connection exists: the caller treats
    /// them like an immediate `Closed`.
    pub fn connect_with_config(
        url: &str,
        tls: &TlsSetup,
        config: UpstreamConfig,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UpstreamConn> {
        let url = parse_ws_url(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Some(addrs) = literal_addrs(&url) {
            return Self::connect_to_addrs(url, addrs, tls, config, registry, token);
        }
        let request = build_request(&url)?;
        let resolving = Resolving { request, tls: tls.clone() };
        Ok(UpstreamConn::in_state(State::Resolving(Box::new(resolving)), url, config, token))
    }

    /// A connection in `state`, with nothing registered or pending yet.
    fn in_state(state: State, url: WsUrl, config: UpstreamConfig, token: Token) -> UpstreamConn {
        UpstreamConn {
            state,
            url,
            config,
            token,
            registered: None,
            read_pending: false,
            output_pending: false,
            binary_ignored: 0,
        }
    }

    /// The host name this connection waits to have resolved; `None` once it has addresses
    /// (or was given an IP literal).
    pub fn resolving_host(&self) -> Option<&str> {
        match self.state {
            State::Resolving(_) => Some(&self.url.host),
            _ => None,
        }
    }

    /// The name lookup ended: starts the connect to `addrs` in order (the URL's port on
    /// each) and registers the socket under the connection's token, or reports `Closed`
    /// with `Err`'s reason (or with the connect error when every address refused at once).
    /// Does nothing unless the connection is resolving.
    pub fn on_resolved(
        &mut self,
        result: Result<&[IpAddr], String>,
        registry: &Registry,
        out: &mut Vec<UpstreamEvent>,
    ) {
        let State::Resolving(resolving) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let reason = match result {
            Err(reason) => reason,
            Ok(ips) => {
                let mut addrs: VecDeque<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(*ip, self.url.port)).collect();
                match start_transport(&self.url, &mut addrs, &resolving.tls) {
                    Ok((transport, addr, failures)) => {
                        let connecting = Connecting {
                            transport,
                            request: resolving.request,
                            addr,
                            fallback: addrs,
                            failures,
                        };
                        self.state = State::TcpConnecting(connecting);
                        match self.reregister(registry, self.token) {
                            Ok(()) => return,
                            Err(e) => {
                                self.shut_down();
                                format!("cannot register the socket: {e}")
                            }
                        }
                    }
                    Err(e) => e.to_string(),
                }
            }
        };
        out.push(UpstreamEvent::Closed { reason });
    }

    /// `connect_with_config` after name resolution: tries `addrs` in order.
    fn connect_to_addrs(
        url: WsUrl,
        mut addrs: VecDeque<SocketAddr>,
        tls: &TlsSetup,
        config: UpstreamConfig,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UpstreamConn> {
        let request = build_request(&url)?;
        let (transport, addr, failures) = start_transport(&url, &mut addrs, tls)?;
        let connecting = Connecting {
            transport,
            request,
            addr,
            fallback: addrs,
            failures,
        };
        let mut conn = UpstreamConn::in_state(State::TcpConnecting(connecting), url, config, token);
        conn.reregister(registry, token)?;
        Ok(conn)
    }

    /// Makes all the progress the socket allows: finishes the connect and handshakes, reads
    /// up to `max_messages_per_event` messages, flushes pending output (pongs included).
    /// `readable`/`writable` are hints; spurious calls are harmless.
    pub fn on_event(&mut self, readable: bool, writable: bool, out: &mut Vec<UpstreamEvent>) {
        // Every state tries both directions; mio readiness may be spurious or coalesced.
        let _ = (readable, writable);
        self.read_pending = false;
        while self.step(out) {}
    }

    /// True when the last `on_event` stopped at the message budget: more data may be
    /// buffered and no readiness event will announce it. Call `on_event` again.
    pub fn wants_read(&self) -> bool {
        self.read_pending && self.is_open()
    }

    /// True from `Connected` until `Closed` (or `close`).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Queues a text frame and flushes as far as the socket allows; the rest goes out on a
    /// later writable event (call `reregister` so that WRITABLE is wanted).
    ///
    /// Errors: `NotConnected` when not open (state unchanged); `WouldBlock` when the write
    /// buffer (`max_write_buffer`) is full (the frame was not queued, state unchanged); any
    /// other error means the connection is dead: it is now closed and no `Closed` event
    /// will follow, so the caller handles it as one.
    pub fn send_text(&mut self, text: String) -> io::Result<()> {
        let State::Open(ws) = &mut self.state else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "upstream not open",
            ));
        };
        match ws.write(Message::Text(text.into())) {
            Ok(()) => {}
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "upstream write buffer full",
                ));
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(self.die_on_send(describe_ws_error(&e))),
        }
        match self.flush_open() {
            Ok(()) => Ok(()),
            Err(reason) => Err(self.die_on_send(reason)),
        }
    }

    /// Sends a close frame (code 1000, `reason` truncated to 123 bytes) as far as the socket
    /// allows, then shuts the socket down. No event is reported for a local close.
    pub fn close(&mut self, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: truncate_utf8(reason).into(),
        };
        if let State::Open(ws) = &mut self.state {
            // Best effort: the peer may already be gone, and we never wait for its reply.
            let _ = ws.close(Some(frame));
            let _ = ws.flush();
        }
        self.shut_down();
    }

    /// Brings the registration in line with what the connection needs now: registers a
    /// replaced socket, adds WRITABLE while connecting/handshaking or while output is
    /// pending, drops it otherwise. No system call when nothing changed. `token` may differ
    /// from the one given at connect (it is then used from now on).
    pub fn reregister(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let wanted = self.wanted_interest();
        let registration = Registration {
            registered: &mut self.registered,
            token: &mut self.token,
        };
        registration.update(registry, self.state.socket_mut(), wanted, token)
    }

    /// Removes the socket from the poll (if it is still registered). Safe to call in any
    /// state; after `Closed` or `close` the socket is already gone and this does nothing.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        let was_registered = self.registered.take().is_some();
        match self.state.socket_mut() {
            Some(socket) if was_registered => registry.deregister(socket),
            _ => Ok(()),
        }
    }

    /// Binary frames received and dropped (the exchange sends JSON text only).
    pub fn binary_frames_ignored(&self) -> u64 {
        self.binary_ignored
    }

    /// The URL this connection was opened with.
    pub fn url(&self) -> &WsUrl {
        &self.url
    }

    fn wanted_interest(&self) -> Option<Interest> {
        let both = Interest::READABLE | Interest::WRITABLE;
        match &self.state {
            State::TcpConnecting(_) | State::TlsHandshaking(_) | State::WsHandshaking(_) => {
                Some(both)
            }
            State::Open(_) if self.output_pending => Some(both),
            State::Open(_) => Some(Interest::READABLE),
            State::Resolving(_) | State::Closed => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

type WsHandshake = MidHandshake<ClientHandshake<Transport>>;

enum State {
    /// Waiting for the shell's resolver; no socket yet.
    Resolving(Box<Resolving>),
    TcpConnecting(Connecting),
    TlsHandshaking(TlsHandshaking),
    WsHandshaking(Box<WsHandshake>),
    Open(Box<WebSocket<Transport>>),
    Closed,
}

struct Resolving {
    request: Request,
    tls: TlsSetup,
}

struct Connecting {
    transport: Transport,
    request: Request,
    addr: SocketAddr,
    /// Resolved addresses not tried yet.
    fallback: VecDeque<SocketAddr>,
    /// One line per address that failed, for the final reason.
    failures: Vec<String>,
}

struct TlsHandshaking {
    transport: Transport,
    request: Request,
}

/// What one step of the state machine achieved.
enum Step {
    /// The state changed and the new state may be able to progress right away.
    Progressed(State),
    /// Nothing more to do until the next readiness event.
    Wait(State),
    /// The connection failed; the reason goes into `Closed`.
    Failed(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Resolving(_) => "resolving",
            State::TcpConnecting(_) => "tcp-connecting",
            State::TlsHandshaking(_) => "tls-handshaking",
            State::WsHandshaking(_) => "ws-handshaking",
            State::Open(_) => "open",
            State::Closed => "closed",
        }
    }

    fn transport_mut(&mut self) -> Option<&mut Transport> {
        match self {
            State::TcpConnecting(c) => Some(&mut c.transport),
            State::TlsHandshaking(t) => Some(&mut t.transport),
            State::WsHandshaking(mid) => Some(mid.get_mut().get_mut()),
            State::Open(ws) => Some(ws.get_mut()),
            State::Resolving(_) | State::Closed => None,
        }
    }

    fn socket_mut(&mut self) -> Option<&mut TcpStream> {
        self.transport_mut().map(Transport::tcp_mut)
    }
}

impl UpstreamConn {
    /// Runs one step of the current state. Returns true when the caller should step again.
    fn step(&mut self, out: &mut Vec<UpstreamEvent>) -> bool {
        let step = match std::mem::replace(&mut self.state, State::Closed) {
            State::Resolving(r) => Step::Wait(State::Resolving(r)),
            State::TcpConnecting(c) => self.step_tcp_connect(c),
            State::TlsHandshaking(t) => self.step_tls_handshake(t),
            State::WsHandshaking(mid) => self.step_ws_handshake(*mid, out),
            State::Open(ws) => self.step_open(ws, out),
            State::Closed => Step::Wait(State::Closed),
        };
        match step {
            Step::Progressed(state) => {
                self.state = state;
                true
            }
            Step::Wait(state) => {
                self.state = state;
                false
            }
            Step::Failed(reason) => {
                // The failing state already dropped (and so closed) its socket.
                self.registered = None;
                self.output_pending = false;
                out.push(UpstreamEvent::Closed { reason });
                false
            }
        }
    }

    fn step_tcp_connect(&mut self, mut c: Connecting) -> Step {
        match tcp_connect_result(c.transport.tcp_mut()) {
            Ok(false) => Step::Wait(State::TcpConnecting(c)),
            Ok(true) => {
                // Small control frames (pongs, SUBSCRIBE) must not wait for Nagle.
                let _ = c.transport.tcp_mut().set_nodelay(true);
                let next = TlsHandshaking {
                    transport: c.transport,
                    request: c.request,
                };
                if next.transport.is_tls() {
                    Step::Progressed(State::TlsHandshaking(next))
                } else {
                    start_ws_handshake(next, self.ws_config())
                }
            }
            Err(e) => {
                c.failures
                    .push(format!("connect to {} failed: {e}", c.addr));
                self.try_next_address(c)
            }
        }
    }

    /// Replaces the socket with one connecting to the next resolved address. The new
    /// socket is unregistered until the caller's next `reregister`.
    fn try_next_address(&mut self, mut c: Connecting) -> Step {
        match connect_next(&mut c.fallback, &mut c.failures) {
            Some((tcp, addr)) => {
                c.transport.replace_tcp(tcp);
                c.addr = addr;
                self.registered = None;
                Step::Wait(State::TcpConnecting(c))
            }
            None => Step::Failed(c.failures.join("; ")),
        }
    }

    fn step_tls_handshake(&mut self, mut t: TlsHandshaking) -> Step {
        match t.transport.drive_tls_handshake() {
            Ok(false) => Step::Wait(State::TlsHandshaking(t)),
            Ok(true) => start_ws_handshake(t, self.ws_config()),
            Err(e) => Step::Failed(describe_tls_handshake_error(&self.url.host, &e)),
        }
    }

    fn step_ws_handshake(&mut self, mid: WsHandshake, out: &mut Vec<UpstreamEvent>) -> Step {
        match mid.handshake() {
            Ok((ws, _response)) => {
                out.push(UpstreamEvent::Connected);
                // Frames that arrived with the 101 response sit in tungstenite's buffer and
                // will get no readiness event: read them now.
                Step::Progressed(State::Open(Box::new(ws)))
            }
            Err(HandshakeError::Interrupted(mid)) => {
                Step::Wait(State::WsHandshaking(Box::new(mid)))
            }
            Err(HandshakeError::Failure(e)) => Step::Failed(describe_handshake_error(&e)),
        }
    }

    fn step_open(&mut self, ws: Box<WebSocket<Transport>>, out: &mut Vec<UpstreamEvent>) -> Step {
        self.state = State::Open(ws);
        let result = self.read_messages(out).and_then(|()| self.flush_open());
        let state = std::mem::replace(&mut self.state, State::Closed);
        match result {
            Ok(()) => Step::Wait(state),
            Err(reason) => {
                if let State::Open(mut ws) = state {
                    // Sends tungstenite's queued close reply if there is one; best effort.
                    let _ = ws.flush();
                    ws.get_mut().shut_down();
                }
                Step::Failed(reason)
            }
        }
    }

    /// Reads messages until `WouldBlock` or the budget is spent. `Err` is the close reason.
    fn read_messages(&mut self, out: &mut Vec<UpstreamEvent>) -> Result<(), String> {
        let State::Open(ws) = &mut self.state else {
            return Ok(());
        };
        for _ in 0..self.config.max_messages_per_event.max(1) {
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(e) => return Err(describe_ws_error(&e)),
            };
            match message {
                Message::Text(text) => out.push(UpstreamEvent::Text(text.as_str().to_owned())),
                Message::Binary(_) => self.binary_ignored += 1,
                Message::Ping(_) => out.push(UpstreamEvent::Ping),
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => return Err(describe_close_frame(frame.as_ref())),
            }
        }
        self.read_pending = true;
        Ok(())
    }

    /// Flushes queued frames (ours and tungstenite's automatic pongs). `WouldBlock` only
    /// marks output as pending. `Err` is the close reason.
    fn flush_open(&mut self) -> Result<(), String> {
        let State::Open(ws) = &mut self.state else {
            return Ok(());
        };
        match ws.flush() {
            Ok(()) => {
                self.output_pending = false;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.output_pending = true;
                Ok(())
            }
            Err(e) => Err(describe_ws_error(&e)),
        }
    }

    fn die_on_send(&mut self, reason: String) -> io::Error {
        self.shut_down();
        io::Error::new(io::ErrorKind::ConnectionAborted, reason)
    }

    /// Shuts the socket down (TLS close_notify first, best effort) and forgets it.
    fn shut_down(&mut self) {
        if let Some(transport) = self.state.transport_mut() {
            transport.shut_down();
        }
        self.state = State::Closed;
        self.registered = None;
        self.output_pending = false;
        self.read_pending = false;
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size))
            // We flush after every write anyway; no batching threshold, so a frame goes to
            // the socket at once. (tungstenite asserts max > threshold: hence the `max(1)`.)
            .write_buffer_size(0)
            .max_write_buffer_size(self.config.max_write_buffer.max(1))
    }
}

fn start_ws_handshake(t: TlsHandshaking, config: WebSocketConfig) -> Step {
    match ClientHandshake::start(t.transport, t.request, Some(config)) {
        Ok(mid) => Step::Progressed(State::WsHandshaking(Box::new(mid))),
        Err(e) => Step::Failed(describe_handshake_error(&e)),
    }
}

/// The registration bookkeeping of one connection (its fields, borrowed), shared by the
/// upstream and REST connections.
pub(crate) struct Registration<'a> {
    /// Interest the socket is registered with; `None` when it is not registered.
    pub(crate) registered: &'a mut Option<Interest>,
    /// The token it is (or will be) registered under.
    pub(crate) token: &'a mut Token,
}

impl Registration<'_> {
    /// Registers, reregisters or deregisters `socket` so that it has `wanted` under `token`,
    /// with a system call only when something differs. No socket (closed): nothing is
    /// registered any more.
    pub(crate) fn update(
        self,
        registry: &Registry,
        socket: Option<&mut TcpStream>,
        wanted: Option<Interest>,
        token: Token,
    ) -> io::Result<()> {
        let token_changed = token != *self.token;
        *self.token = token;
        let Some(socket) = socket else {
            *self.registered = None;
            return Ok(());
        };
        match (*self.registered, wanted) {
            (None, Some(interest)) => registry.register(socket, token, interest)?,
            (Some(now), Some(interest)) if now != interest || token_changed => {
                registry.reregister(socket, token, interest)?
            }
            (Some(_), None) => registry.deregister(socket)?,
            _ => {}
        }
        *self.registered = wanted;
        Ok(())
    }
}

/// The mio recipe for a non-blocking connect: a pending error means failure, a peer
/// address means connected, `NotConnected` means not yet (spurious event).
pub(crate) fn tcp_connect_result(tcp: &TcpStream) -> io::Result<bool> {
    if let Some(e) = tcp.take_error()? {
        return Err(e);
    }
    match tcp.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn build_request(url: &WsUrl) -> io::Result<Request> {
    url.to_url_string()
        .as_str()
        .into_client_request()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("WebSocket request: {e}"),
            )
        })
}

fn new_tls_session(url: &WsUrl, tls: &TlsSetup) -> io::Result<ClientConnection> {
    let name = ServerName::try_from(url.host.clone()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {:?}: {e}", url.host),
        )
    })?;
    ClientConnection::new(Arc::clone(&tls.config), name)
        .map_err(|e| io::Error::other(format!("TLS session for {}: {e}", url.host)))
}

/// The address of a URL whose host is an IP literal; `None` for a host name (which goes
/// through the shell's resolver).
pub(crate) fn literal_addrs(url: &WsUrl) -> Option<VecDeque<SocketAddr>> {
    let ip = url.host.parse::<IpAddr>().ok()?;
    Some(VecDeque::from([SocketAddr::new(ip, url.port)]))
}

/// Creates the TLS session (for a secure URL) and starts a TCP connect to the first of
/// `addrs` that accepts one; the rest stay in `addrs` as fallbacks. Returns the transport,
/// the address it is connecting to, and one line per address that already refused.
pub(crate) fn start_transport(
    url: &WsUrl,
    addrs: &mut VecDeque<SocketAddr>,
    tls: &TlsSetup,
) -> io::Result<(Transport, SocketAddr, Vec<String>)> {
    let tls_session = if url.secure {
        Some(new_tls_session(url, tls)?)
    } else {
        None
    };
    let mut failures = Vec::new();
    let Some((tcp, addr)) = connect_next(addrs, &mut failures) else {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            failures.join("; "),
        ));
    };
    Ok((Transport::new(tcp, tls_session.map(rustls::Connection::Client)), addr, failures))
}

/// Starts a connect to the next address in `addrs` that accepts one, noting each refusal in
/// `failures`. `None` when every address refused.
pub(crate) fn connect_next(
    addrs: &mut VecDeque<SocketAddr>,
    failures: &mut Vec<String>,
) -> Option<(TcpStream, SocketAddr)> {
    while let Some(addr) = addrs.pop_front() {
        match TcpStream::connect(addr) {
            Ok(tcp) => return Some((tcp, addr)),
            Err(e) => failures.push(format!("connect to {addr} failed: {e}")),
        }
    }
    None
}

fn truncate_utf8(text: &str) -> &str {
    if text.len() <= MAX_CLOSE_REASON_BYTES {
        return text;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

// ---------------------------------------------------------------------------------------------
// Close reasons
// ---------------------------------------------------------------------------------------------

fn describe_close_frame(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("server sent close frame {}", f.code),
        Some(f) => format!("server sent close frame {}: {}", f.code, f.reason.as_str()),
        None => "server sent close frame without a status code".to_owned(),
    }
}

fn describe_handshake_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => format!(
            "WebSocket handshake rejected: HTTP {} (expected 101 Switching Protocols)",
            response.status()
        ),
        other => format!("WebSocket handshake failed: {}", describe_ws_error(other)),
    }
}

fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io_error) => describe_io_error(io_error),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "server closed the connection without a close frame".to_owned()
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection already closed".to_owned()
        }
        tungstenite::Error::Capacity(c) => format!("message over the size limit: {c}"),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: a real mio::Poll loop against tiny WebSocket servers on loopback threads.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use crate::shell::test_support::{
        closed_port, spawn_tcp_server, spawn_tls_server, ServerTls, TlsServer, TEST_TIMEOUT,
    };
    use mio::{Events, Poll};
    use std::net::{TcpListener, TcpStream as StdTcpStream};
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    const TOKEN: Token = Token(7);

    type ServerWs = WebSocket<StdTcpStream>;

    // --- the client side: the shell loop in miniature -----------------------------------------

    struct Driver {
        poll: Poll,
        events: Events,
        conn: UpstreamConn,
        seen: Vec<UpstreamEvent>,
        /// Largest number of Text events produced by one `on_event` call.
        max_texts_per_call: usize,
    }

    impl Driver {
        fn connect(url: &str, tls: &TlsSetup, config: UpstreamConfig) -> Driver {
            let poll = Poll::new().unwrap();
            let mut conn = UpstreamConn::connect_with_config(url, tls, config, poll.registry(), TOKEN)
                .unwrap();
            // `localhost` (the TLS tests' certificate name) as the shell's hosts lookup has it.
            if let Some(host) = conn.resolving_host() {
                let addrs = crate::shell::dns::Hosts::default().lookup(host).expect("only localhost");
                let mut out = Vec::new();
                conn.on_resolved(Ok(&addrs), poll.registry(), &mut out);
                assert!(out.is_empty(), "{out:?}");
            }
            Driver::with_conn(poll, conn)
        }

        fn with_conn(poll: Poll, conn: UpstreamConn) -> Driver {
            Driver {
                poll,
                events: Events::with_capacity(16),
                conn,
                seen: Vec::new(),
                max_texts_per_call: 0,
            }
        }

        /// Runs the loop until `done(events so far)`; panics after TEST_TIMEOUT.
        fn run_until(&mut self, mut done: impl FnMut(&[UpstreamEvent]) -> bool) {
            let deadline = Instant::now() + TEST_TIMEOUT;
            while !done(&self.seen) {
                assert!(
                    Instant::now() < deadline,
                    "timed out; events: {:?}",
                    self.seen
                );
                self.turn();
            }
        }

        fn run_until_closed(&mut self) -> String {
            self.run_until(|seen| closed_reason(seen).is_some());
            closed_reason(&self.seen).unwrap().to_owned()
        }

        /// One loop turn: poll, dispatch, re-dispatch a connection that wants to read more,
        /// bring the registration up to date.
        fn turn(&mut self) {
            let wait = if self.conn.wants_read() {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            self.poll.poll(&mut self.events, Some(wait)).unwrap();
            let ours = self.events.iter().any(|e| e.token() == TOKEN);
            if ours || self.conn.wants_read() {
                let mut out = Vec::new();
                self.conn.on_event(true, true, &mut out);
                let texts = out
                    .iter()
                    .filter(|e| matches!(e, UpstreamEvent::Text(_)))
                    .count();
                self.max_texts_per_call = self.max_texts_per_call.max(texts);
                self.seen.extend(out);
            }
            self.conn.reregister(self.poll.registry(), TOKEN).unwrap();
        }

        fn texts(&self) -> Vec<&str> {
            self.seen
                .iter()
                .filter_map(|e| match e {
                    UpstreamEvent::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect()
        }

        /// After Closed, more turns and spurious events report nothing.
        fn assert_silent_after_close(&mut self) {
            let before = self.seen.len();
            for _ in 0..3 {
                self.turn();
                let mut out = Vec::new();
                self.conn.on_event(true, true, &mut out);
                assert!(out.is_empty(), "events after Closed: {out:?}");
            }
            assert_eq!(self.seen.len(), before);
            assert!(!self.conn.is_open());
            let closes = self
                .seen
                .iter()
                .filter(|e| matches!(e, UpstreamEvent::Closed { .. }))
                .count();
            assert_eq!(closes, 1, "{:?}", self.seen);
        }
    }

    fn closed_reason(seen: &[UpstreamEvent]) -> Option<&str> {
        seen.iter().find_map(|e| match e {
            UpstreamEvent::Closed { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    fn connected(seen: &[UpstreamEvent]) -> bool {
        seen.contains(&UpstreamEvent::Connected)
    }

    fn plain_tls() -> TlsSetup {
        TlsSetup::new(None).unwrap()
    }

    // --- the server side ---------------------------------------------------------------------

    /// Accepts one WebSocket on a loopback port and runs `script` on it in a thread.
    fn spawn_ws_server<F>(script: F) -> (u16, thread::JoinHandle<()>)
    where
        F: FnOnce(ServerWs) + Send + 'static,
    {
        spawn_tcp_server(move |stream| script(tungstenite::accept(stream).unwrap()))
    }

    /// Reads until the client's close arrives (or the socket dies); returns the close frame.
    fn read_until_close<S: Read + Write>(ws: &mut WebSocket<S>) -> Option<CloseFrame> {
        loop {
            match ws.read() {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn read_text<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
        loop {
            if let Message::Text(t) = ws.read().unwrap() {
                return t.as_str().to_owned();
            }
        }
    }

    fn close_from_server<S: Read + Write>(ws: &mut WebSocket<S>, code: CloseCode, reason: &str) {
        ws.close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .unwrap();
        // Drain until the client's reply (or EOF) so the close handshake completes.
        while ws.read().is_ok() {}
    }

    // --- URL parsing -------------------------------------------------------------------------

    #[test]
    fn parse_ws_url_accepts_the_usual_forms() {
        let cases = [
            (
                "wss://stream.binance.com:9443/stream",
                true,
                "stream.binance.com",
                9443,
                "/stream",
            ),
            (
                "wss://fstream.binance.com/market/stream?streams=a/b",
                true,
                "fstream.binance.com",
                443,
                "/market/stream?streams=a/b",
            ),
            (
                "ws://127.0.0.1:9000/stream",
                false,
                "127.0.0.1",
                9000,
                "/stream",
            ),
            ("ws://example.org", false, "example.org", 80, "/"),
            ("ws://example.org?x=1", false, "example.org", 80, "/?x=1"),
            ("ws://[::1]:9000/ws", false, "::1", 9000, "/ws"),
            ("wss://[2001:db8::1]/", true, "2001:db8::1", 443, "/"),
        ];
        for (text, secure, host, port, path) in cases {
            let url = parse_ws_url(text).unwrap();
            assert_eq!(
                url,
                WsUrl {
                    secure,
                    host: host.into(),
                    port,
                    path: path.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn parse_ws_url_rejects_with_a_reason() {
        let cases = [
            ("http://x/", "ws://"),
            ("ws://", "missing host"),
            ("ws://:80/", "missing host"),
            ("ws://host:0/", "port"),
            ("ws://host:99999/", "port"),
            ("ws://host:abc/", "port"),
            ("ws://::1/", "brackets"),
            ("ws://[::1/", "']'"),
            ("ws://[nothex]/", "IPv6"),
            ("ws://user@host/", "user info"),
            ("ws://host/#frag", "fragment"),
        ];
        for (text, needle) in cases {
            let err = parse_ws_url(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn authority_omits_default_port_and_brackets_ipv6() {
        assert_eq!(
            parse_ws_url("wss://a.com:443/").unwrap().authority(),
            "a.com"
        );
        assert_eq!(
            parse_ws_url("wss://a.com:9443/").unwrap().authority(),
            "a.com:9443"
        );
        assert_eq!(
            parse_ws_url("ws://[::1]:81/").unwrap().authority(),
            "[::1]:81"
        );
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_utf8(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_utf8("short"), "short");
    }

    // --- TlsSetup ----------------------------------------------------------------------------

    #[test]
    fn tls_setup_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = TlsSetup::new(Some(&missing)).unwrap_err();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = TlsSetup::new(Some(&empty)).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let err = TlsSetup::new(Some(&garbage)).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
    }

    // --- plain ws:// behaviour ---------------------------------------------------------------

    #[test]
    fn receives_text_skips_binary_and_sends_text() {
        let (tx, rx) = mpsc::channel();
        let (port, server) = spawn_ws_server(move |mut ws| {
            ws.send(Message::text("one")).unwrap();
            ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
            ws.send(Message::text("two")).unwrap();
            ws.send(Message::text("three")).unwrap();
            tx.send(read_text(&mut ws)).unwrap();
            close_from_server(&mut ws, CloseCode::Normal, "bye");
        });
        let url = format!("ws://127.0.0.1:{port}/stream?streams=btcusdt@kline_1m");
        let mut d = Driver::connect(&url, &plain_tls(), UpstreamConfig::default());
        d.run_until(|seen| seen.len() >= 4);
        assert_eq!(d.seen[0], UpstreamEvent::Connected);
        assert!(d.conn.is_open());
        assert_eq!(d.texts(), ["one", "two", "three"]);
        assert_eq!(d.conn.binary_frames_ignored(), 1);

        d.conn
            .send_text("{\"method\":\"SUBSCRIBE\",\"params\":[],\"id\":1}".to_owned())
            .unwrap();
        let reason = d.run_until_closed();
        assert!(
            reason.contains("1000") && reason.contains("bye"),
            "{reason}"
        );
        assert_eq!(
            rx.recv_timeout(TEST_TIMEOUT).unwrap(),
            "{\"method\":\"SUBSCRIBE\",\"params\":[],\"id\":1}"
        );
        d.assert_silent_after_close();
        server.join().unwrap();
    }

    #[test]
    fn server_ping_is_answered_with_the_same_payload() {
        let (tx, rx) = mpsc::channel();
        let (port, server) = spawn_ws_server(move |mut ws| {
            ws.send(Message::Ping(b"1700000000123".to_vec().into()))
                .unwrap();
            let pong = loop {
                if let Message::Pong(payload) = ws.read().unwrap() {
                    break payload;
                }
            };
            tx.send(pong.to_vec()).unwrap();
            close_from_server(&mut ws, CloseCode::Normal, "");
        });
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/stream"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        d.run_until(|seen| seen.contains(&UpstreamEvent::Ping));
        let pong = rx.recv_timeout(TEST_TIMEOUT).unwrap();
        assert_eq!(pong, b"1700000000123");
        d.run_until_closed();
        server.join().unwrap();
    }

    #[test]
    fn server_close_frame_reports_code_and_reason_and_gets_a_reply() {
        let (tx, rx) = mpsc::channel();
        let (port, server) = spawn_ws_server(move |mut ws| {
            ws.close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "Too many requests".into(),
            }))
            .unwrap();
            // tungstenite reports the peer's close reply as ConnectionClosed.
            let reply = loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            tx.send(matches!(reply, tungstenite::Error::ConnectionClosed))
                .unwrap();
        });
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        let reason = d.run_until_closed();
        assert!(
            reason.contains("1008") && reason.contains("Too many requests"),
            "{reason}"
        );
        assert!(
            rx.recv_timeout(TEST_TIMEOUT).unwrap(),
            "server did not get our close reply"
        );
        d.assert_silent_after_close();
        server.join().unwrap();
    }

    #[test]
    fn local_close_sends_a_close_frame_and_reports_nothing() {
        let (tx, rx) = mpsc::channel();
        let (port, server) = spawn_ws_server(move |mut ws| {
            let frame = read_until_close(&mut ws);
            tx.send(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
                .unwrap();
        });
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        d.run_until(connected);
        d.conn.close("rotating connection");
        d.conn.reregister(d.poll.registry(), TOKEN).unwrap();
        assert!(!d.conn.is_open());
        let got = rx.recv_timeout(TEST_TIMEOUT).unwrap();
        assert_eq!(got, Some((1000, "rotating connection".to_owned())));
        for _ in 0..3 {
            d.turn();
        }
        assert_eq!(d.seen, [UpstreamEvent::Connected]);
        assert!(d.conn.send_text("late".into()).is_err());
        d.conn.deregister(d.poll.registry()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn eof_without_close_frame_is_reported() {
        let (port, server) = spawn_ws_server(drop);
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        let reason = d.run_until_closed();
        assert!(reason.contains("without a close frame"), "{reason}");
        assert!(connected(&d.seen));
        server.join().unwrap();
    }

    #[test]
    fn host_name_waits_for_the_resolver_without_a_socket_then_connects() {
        let (port, server) = spawn_ws_server(|mut ws| {
            ws.send(Message::text("after dns")).unwrap();
            close_from_server(&mut ws, CloseCode::Normal, "");
        });
        let poll = Poll::new().unwrap();
        let url = format!("ws://Exchange.Test:{port}/stream");
        let mut conn = UpstreamConn::connect(&url, &plain_tls(), poll.registry(), TOKEN).unwrap();
        assert_eq!(conn.resolving_host(), Some("Exchange.Test"));
        assert_eq!(conn.wanted_interest(), None, "no socket while resolving");
        let mut out = Vec::new();
        conn.on_event(true, true, &mut out);
        conn.reregister(poll.registry(), TOKEN).unwrap();
        assert!(out.is_empty() && !conn.is_open());
        assert_eq!(conn.send_text("early".into()).unwrap_err().kind(), io::ErrorKind::NotConnected);
        let addrs = [IpAddr::from([127, 0, 0, 1])];
        conn.on_resolved(Ok(&addrs), poll.registry(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(conn.resolving_host(), None);
        let mut d = Driver::with_conn(poll, conn);
        d.run_until(|seen| closed_reason(seen).is_some());
        assert!(connected(&d.seen));
        assert_eq!(d.texts(), ["after dns"]);
        // A second answer (a stale waiter) changes nothing.
        let mut late = Vec::new();
        d.conn.on_resolved(Err("late".into()), d.poll.registry(), &mut late);
        assert!(late.is_empty());
        server.join().unwrap();
    }

    #[test]
    fn failed_resolution_is_closed_with_the_resolver_reason() {
        let poll = Poll::new().unwrap();
        let mut conn = UpstreamConn::connect("wss://nowhere.test/stream", &plain_tls(), poll.registry(), TOKEN).unwrap();
        let mut out = Vec::new();
        let reason = "resolving nowhere.test: no such name (NXDOMAIN)".to_owned();
        conn.on_resolved(Err(reason.clone()), poll.registry(), &mut out);
        assert_eq!(out, [UpstreamEvent::Closed { reason }]);
        let mut d = Driver::with_conn(poll, conn);
        d.seen = out;
        d.assert_silent_after_close();
    }

    #[test]
    fn connecting_to_a_closed_port_closes_quickly() {
        let port = closed_port();
        let url = format!("ws://127.0.0.1:{port}/stream");
        let poll = Poll::new().unwrap();
        let conn = UpstreamConn::connect(&url, &plain_tls(), poll.registry(), TOKEN);
        // Loopback may refuse at once (an Err) or report it as an event (a Closed).
        let reason = match conn {
            Err(e) => e.to_string(),
            Ok(conn) => Driver::with_conn(poll, conn).run_until_closed(),
        };
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        assert!(reason.contains(&port.to_string()), "{reason}");
    }

    #[test]
    fn falls_back_to_the_next_address() {
        let (port, server) = spawn_ws_server(|mut ws| {
            ws.send(Message::text("via fallback")).unwrap();
            close_from_server(&mut ws, CloseCode::Normal, "");
        });
        let dead: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let live: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let url = parse_ws_url(&format!("ws://localhost:{port}/")).unwrap();
        let poll = Poll::new().unwrap();
        let conn = UpstreamConn::connect_to_addrs(
            url,
            VecDeque::from([dead, live]),
            &plain_tls(),
            UpstreamConfig::default(),
            poll.registry(),
            TOKEN,
        );
        // If the kernel refused `dead` synchronously, connect_first already skipped it.
        let mut d = Driver::with_conn(poll, conn.unwrap());
        d.run_until(|seen| seen.len() >= 2);
        assert_eq!(
            d.seen[..2],
            [
                UpstreamEvent::Connected,
                UpstreamEvent::Text("via fallback".into())
            ]
        );
        d.run_until_closed();
        server.join().unwrap();
    }

    #[test]
    fn http_error_instead_of_101_reports_the_status() {
        let (port, server) = spawn_tcp_server(|mut stream| {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client hung up before sending the request");
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            assert!(
                text.starts_with("GET /stream?streams=x HTTP/1.1\r\n"),
                "{text}"
            );
            assert!(text.to_lowercase().contains(&format!(
                "host: 127.0.0.1:{}",
                stream.local_addr().unwrap().port()
            )));
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/stream?streams=x"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        let reason = d.run_until_closed();
        assert!(reason.contains("404"), "{reason}");
        assert!(!connected(&d.seen));
        d.assert_silent_after_close();
        server.join().unwrap();
    }

    #[test]
    fn oversized_message_closes_the_connection() {
        let (port, server) = spawn_ws_server(|mut ws| {
            // The client hangs up mid-send; that error is expected.
            let _ = ws.send(Message::text("x".repeat(4096)));
        });
        let config = UpstreamConfig {
            max_message_size: 1024,
            ..UpstreamConfig::default()
        };
        let mut d = Driver::connect(&format!("ws://127.0.0.1:{port}/"), &plain_tls(), config);
        let reason = d.run_until_closed();
        assert!(reason.contains("size limit"), "{reason}");
        server.join().unwrap();
    }

    #[test]
    fn message_budget_bounds_each_call_and_loses_nothing() {
        const COUNT: usize = 300;
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let (port, server) = spawn_ws_server(move |mut ws| {
            go_rx.recv_timeout(TEST_TIMEOUT).unwrap();
            for i in 0..COUNT {
                ws.write(Message::text(format!("m{i}"))).unwrap();
            }
            ws.flush().unwrap();
            sent_tx.send(()).unwrap();
            assert_eq!(read_text(&mut ws), "done");
            close_from_server(&mut ws, CloseCode::Normal, "");
        });
        let config = UpstreamConfig {
            max_messages_per_event: 10,
            ..UpstreamConfig::default()
        };
        let mut d = Driver::connect(&format!("ws://127.0.0.1:{port}/"), &plain_tls(), config);
        d.run_until(connected);
        // Let every frame reach our socket buffer before the loop reads, so the budget binds.
        go_tx.send(()).unwrap();
        sent_rx.recv_timeout(TEST_TIMEOUT).unwrap();
        d.run_until(|seen| seen.len() > COUNT);
        let expected: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
        assert_eq!(d.texts(), expected);
        assert_eq!(
            d.max_texts_per_call, 10,
            "the budget should bind and never be exceeded"
        );
        d.conn.send_text("done".into()).unwrap();
        d.run_until_closed();
        server.join().unwrap();
    }

    #[test]
    fn pending_output_wants_writable_and_is_flushed_later() {
        const CHUNK: usize = 64 * 1024;
        let (go_tx, go_rx) = mpsc::channel::<usize>();
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let (port, server) = spawn_ws_server(move |mut ws| {
            // Read nothing until the client has filled every buffer on the way.
            let expected = go_rx.recv_timeout(TEST_TIMEOUT).unwrap();
            let mut received = 0;
            while received < expected {
                if let Message::Text(t) = ws.read().unwrap() {
                    assert_eq!(t.len(), CHUNK);
                    received += 1;
                }
            }
            done_tx.send(received).unwrap();
            close_from_server(&mut ws, CloseCode::Normal, "");
        });
        let mut d = Driver::connect(
            &format!("ws://127.0.0.1:{port}/"),
            &plain_tls(),
            UpstreamConfig::default(),
        );
        d.run_until(connected);
        assert_eq!(d.conn.registered, Some(Interest::READABLE));
        let mut sent = 0;
        while !d.conn.output_pending {
            assert!(sent < 4096, "socket never pushed back");
            match d.conn.send_text("x".repeat(CHUNK)) {
                Ok(()) => sent += 1,
                Err(e) => panic!("send_text: {e}"),
            }
        }
        d.conn.reregister(d.poll.registry(), TOKEN).unwrap();
        assert_eq!(
            d.conn.registered,
            Some(Interest::READABLE | Interest::WRITABLE)
        );
        go_tx.send(sent).unwrap();
        // Only writable events can move the rest: the server sends nothing meanwhile.
        let deadline = Instant::now() + TEST_TIMEOUT;
        while d.conn.output_pending {
            assert!(Instant::now() < deadline, "pending output never flushed");
            d.turn();
        }
        assert_eq!(d.conn.registered, Some(Interest::READABLE));
        assert_eq!(done_rx.recv_timeout(TEST_TIMEOUT).unwrap(), sent);
        d.run_until_closed();
        server.join().unwrap();
    }

    #[test]
    fn send_before_open_is_not_connected() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let poll = Poll::new().unwrap();
        let mut conn = UpstreamConn::connect(
            &format!("ws://127.0.0.1:{port}/"),
            &plain_tls(),
            poll.registry(),
            TOKEN,
        )
        .unwrap();
        let err = conn.send_text("early".into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        assert!(!conn.is_open());
        conn.deregister(poll.registry()).unwrap();
    }

    // --- wss:// ------------------------------------------------------------------------------

    /// A rustls + tungstenite server with a fresh self-signed certificate for localhost.
    /// `script` gets `None` when the handshake fails (the untrusted-client test).
    fn spawn_tls_ws_server<F>(script: F) -> TlsServer
    where
        F: FnOnce(Option<WebSocket<ServerTls>>) + Send + 'static,
    {
        spawn_tls_server(move |tls| script(tungstenite::accept(tls).ok()))
    }

    #[test]
    fn wss_with_a_trusted_self_signed_certificate() {
        let (tx, rx) = mpsc::channel();
        let server = spawn_tls_ws_server(move |ws| {
            let mut ws = ws.expect("TLS/WebSocket handshake failed on the server");
            ws.send(Message::text("tls-hello")).unwrap();
            ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
            tx.send(read_text(&mut ws)).unwrap();
            close_from_server(&mut ws, CloseCode::Away, "rotate");
        });
        let tls = TlsSetup::new(Some(&server.ca_pem)).unwrap();
        let url = format!("wss://localhost:{}/stream", server.port);
        let mut d = Driver::connect(&url, &tls, UpstreamConfig::default());
        d.run_until(|seen| seen.contains(&UpstreamEvent::Ping));
        assert_eq!(
            d.seen[..2],
            [
                UpstreamEvent::Connected,
                UpstreamEvent::Text("tls-hello".into())
            ]
        );
        d.conn.send_text("over tls".into()).unwrap();
        let reason = d.run_until_closed();
        assert!(
            reason.contains("1001") && reason.contains("rotate"),
            "{reason}"
        );
        assert_eq!(rx.recv_timeout(TEST_TIMEOUT).unwrap(), "over tls");
        d.assert_silent_after_close();
        server.handle.join().unwrap();
    }

    #[test]
    fn wss_with_an_untrusted_certificate_reports_a_tls_error() {
        let server =
            spawn_tls_ws_server(|ws| assert!(ws.is_none(), "handshake should have failed"));
        let url = format!("wss://localhost:{}/stream", server.port);
        let mut d = Driver::connect(&url, &plain_tls(), UpstreamConfig::default());
        let reason = d.run_until_closed();
        assert!(
            reason.contains("TLS") && reason.contains("certificate"),
            "{reason}"
        );
        assert!(!connected(&d.seen));
        d.assert_silent_after_close();
        server.handle.join().unwrap();
    }
}
