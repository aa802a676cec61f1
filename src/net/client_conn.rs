//! One client socket on the listening port: first an HTTP/1.1 connection
//! (keep-alive, pipelining), and after a `/ws/market` upgrade a WebSocket
//! (tungstenite over the non-blocking stream). Owns the bytes in flight and
//! nothing else: what to answer is decided by `routes` and the engine.

use super::http::{self, HttpLimits, Parse, Request};
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Most bytes read from one socket per readiness event, for fairness.
const READ_BUDGET: usize = 256 << 10;

pub struct HttpConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    pub close_after_write: bool,
    /// A 101 response is queued: once it is written the socket becomes a WebSocket.
    pub upgrade_after_write: bool,
    pub last_activity: Instant,
    pub peer_closed: bool,
}

impl HttpConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            peer,
            read_buf: Vec::new(),
            write_buf: Vec::new(),
            close_after_write: false,
            upgrade_after_write: false,
            last_activity: now,
            peer_closed: false,
        }
    }

    /// Reads what is available and returns every complete request (or the
    /// parse error that ends the connection).
    pub fn read_requests(&mut self, limits: &HttpLimits, now: Instant) -> Result<Vec<Request>, http::HttpError> {
        let mut chunk = [0u8; 16 << 10];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.read_buf.extend_from_slice(&chunk[..n]);
                    self.last_activity = now;
                    if self.read_buf.len() > limits.max_head_bytes + limits.max_body_bytes {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.peer_closed = true;
                    break;
                }
            }
        }
        let mut out = Vec::new();
        while !self.upgrade_after_write {
            match http::parse_request(&self.read_buf, limits) {
                Parse::Complete { request, consumed } => {
                    self.read_buf.drain(..consumed);
                    out.push(request);
                }
                Parse::Incomplete => break,
                Parse::Error(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Bytes read past the last complete request (a client may pipeline its
    /// first WebSocket frames behind the upgrade request).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.read_buf)
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Writes as much as the socket takes; true when everything is out.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.write_buf.is_empty() {
            match self.stream.write(&self.write_buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.write_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    pub fn has_pending_output(&self) -> bool {
        !self.write_buf.is_empty()
    }
}

/// What reading a WebSocket produced.
pub enum WsRead {
    Text(String),
    Binary(usize),
    /// The peer closed, or the connection failed; the reason is for the log.
    Closed(String),
}

pub struct WsConn {
    pub ws: WebSocket<TcpStream>,
    pub peer: SocketAddr,
    pub client: u64,
    pub last_seen: Instant,
    pub last_ping: Instant,
    /// tungstenite holds bytes the socket has not taken yet.
    pub flush_pending: bool,
    /// A close was sent; the connection ends once it is flushed or times out.
    pub closing_since: Option<Instant>,
}

impl WsConn {
    pub fn new(stream: TcpStream, leftover: Vec<u8>, peer: SocketAddr, client: u64, max_frame: usize, now: Instant) -> WsConn {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame))
            .accept_unmasked_frames(false);
        let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(config));
        WsConn { ws, peer, client, last_seen: now, last_ping: now, flush_pending: false, closing_since: None }
    }

    /// Reads up to `budget` messages; pings are answered by tungstenite.
    pub fn read(&mut self, budget: usize, now: Instant, out: &mut Vec<WsRead>) {
        for _ in 0..budget {
            match self.ws.read() {
                Ok(msg) => {
                    self.last_seen = now;
                    match msg {
                        Message::Text(t) => out.push(WsRead::Text(t.as_str().to_string())),
                        Message::Binary(b) => out.push(WsRead::Binary(b.len())),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(frame) => {
                            let why = frame.map_or("no code".to_string(), |f| format!("{} {}", f.code, f.reason));
                            out.push(WsRead::Closed(format!("peer closed: {why}")));
                            return;
                        }
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                    out.push(WsRead::Closed("connection closed".into()));
                    return;
                }
                Err(e) => {
                    out.push(WsRead::Closed(format!("websocket error: {e}")));
                    return;
                }
            }
        }
        // A pong queued by a ping must go out even if nothing else is written.
        self.flush();
    }

    /// Queues frames (already JSON text) and flushes; false when the socket
    /// failed. Frames are only taken from the engine while nothing is pending,
    /// so tungstenite's buffer never grows past one turn's worth.
    pub fn send_frames(&mut self, frames: &[bytes::Bytes]) -> bool {
        for f in frames {
            let Ok(text) = tungstenite::Utf8Bytes::try_from(f.clone()) else { continue };
            match self.ws.write(Message::Text(text)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        self.flush()
    }

    /// Flushes tungstenite's buffer; false when the socket failed.
    pub fn flush(&mut self) -> bool {
        match self.ws.flush() {
            Ok(()) => {
                self.flush_pending = false;
                true
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.flush_pending = true;
                true
            }
            Err(tungstenite::Error::ConnectionClosed) => {
                self.flush_pending = false;
                true
            }
            Err(_) => false,
        }
    }

    pub fn ping(&mut self, now: Instant) {
        self.last_ping = now;
        let _ = self.ws.write(Message::Ping(tungstenite::Bytes::new()));
        self.flush();
    }

    pub fn close(&mut self, code: u16, reason: &str, now: Instant) {
        if self.closing_since.is_some() {
            return;
        }
        self.closing_since = Some(now);
        let frame = CloseFrame { code: code.into(), reason: reason.to_string().into() };
        let _ = self.ws.close(Some(frame));
        self.flush();
    }
}
