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
//!
//! The URL grammar is [`crate::shell::conn::url`], the TLS client setup
//! [`crate::shell::conn::tls_client`], the connect mechanics [`crate::shell::conn::dial`].

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::client::{ClientHandshake, Request};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::shell::conn::dial::{connect_next, literal_addrs, start_transport, tcp_connect_result, Registration};
use crate::shell::conn::transport::{describe_io_error, describe_tls_handshake_error, Transport};

pub use crate::shell::conn::tls_client::TlsSetup;
pub use crate::shell::conn::url::{parse_ws_url, WsUrl};

#[cfg(test)]
mod tests;

/// Close-frame reasons are limited to 123 bytes by RFC 6455 (125 minus the status code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

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
    /// This `on_event` reads at most one message (`on_event_one`).
    one_message: bool,
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
            one_message: false,
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

    /// Like `on_event`, but reads at most one message: the caller hands it on,
    /// then calls again while `wants_read`, so the work a message causes is not
    /// held up by reading (and the read that finds nothing) behind it.
    pub fn on_event_one(&mut self, readable: bool, writable: bool, out: &mut Vec<UpstreamEvent>) {
        self.one_message = true;
        self.on_event(readable, writable, out);
        self.one_message = false;
    }

    /// Messages one readiness event may read (`max_messages_per_event`).
    pub fn messages_per_event(&self) -> usize {
        self.config.max_messages_per_event.max(1)
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
        let budget = if self.one_message { 1 } else { self.config.max_messages_per_event.max(1) };
        for _ in 0..budget {
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
            // tungstenite zero-fills its read buffer out to this size on every
            // read (the one that finds nothing included): at the 128 KiB default
            // that memset was most of the time from an exchange frame's arrival
            // to the first client's write. Kline frames are ~300 bytes; the
            // buffer grows as a bigger message needs.
            .read_buffer_size(4096)
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
