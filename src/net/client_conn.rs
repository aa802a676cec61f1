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
    /// When the first byte of a request not yet complete arrived. A request
    /// must be complete within the idle timeout of this, however steadily its
    /// bytes trickle in (slowloris).
    pub request_started: Option<Instant>,
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
            request_started: None,
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
        if self.read_buf.is_empty() || self.upgrade_after_write {
            self.request_started = None;
        } else if self.request_started.is_none() || !out.is_empty() {
            self.request_started = Some(now);
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

    /// A best-effort `408` before the connection is dropped for taking too
    /// long over one request (one non-blocking write, errors ignored).
    pub fn answer_timeout(&mut self) {
        let mut buf = Vec::new();
        http::Response::error(408, "request_timeout").write_to(&mut buf, false);
        let _ = self.stream.write(&buf);
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
    /// The peer broke the protocol or a limit: answer with this close code.
    /// 1009 a message over the size limit, 1007 invalid UTF-8, 1002 anything
    /// else RFC 6455 forbids.
    Fail { code: u16, reason: String },
}

/// The close a tungstenite read error calls for, or None when the connection
/// is simply gone (reset, closed) and nothing can be said to the peer.
fn close_for(e: &tungstenite::Error, max_message: usize) -> Option<(u16, String)> {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(_) => Some((1009, format!("message too big (max {max_message} bytes)"))),
        tungstenite::Error::Utf8(_) => Some((1007, "text message is not valid UTF-8".into())),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(p) => Some((1002, format!("protocol error: {p}"))),
        _ => None,
    }
}

/// A token bucket per WebSocket client: `rate` messages per second, bursts
/// of up to `2 × rate`. A message that finds the bucket empty is refused by
/// the shell before the engine sees it (the connection lives on).
pub struct RateLimiter {
    rate: u32,
    /// Tokens in thousandths, so refills need no floating point.
    milli_tokens: u64,
    last_refill: Instant,
}

impl RateLimiter {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32, now: Instant) -> RateLimiter {
        RateLimiter { rate, milli_tokens: Self::capacity(rate), last_refill: now }
    }

    fn capacity(rate: u32) -> u64 {
        u64::from(rate) * 2 * 1000
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes one token; false when the client is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed_ms = now.saturating_duration_since(self.last_refill).as_millis();
        if elapsed_ms > 0 {
            // rate tokens per second = rate milli-tokens per millisecond.
            let refill = u64::try_from(elapsed_ms).unwrap_or(u64::MAX).saturating_mul(u64::from(self.rate));
            self.milli_tokens = self.milli_tokens.saturating_add(refill).min(Self::capacity(self.rate));
            self.last_refill = now;
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
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
    pub rate: RateLimiter,
    /// Once we sent a close frame the peer's bytes are read and thrown away
    /// until it hangs up: closing a socket with unread data resets it, and a
    /// reset can destroy our close frame before the peer reads it. (After a
    /// protocol failure tungstenite could not parse them anyway, and would
    /// buffer a too-big frame whole.)
    pub discarding: bool,
    write_shut: bool,
    max_message: usize,
    /// The interest last registered includes WRITABLE (re-registering costs
    /// an `epoll_ctl`: only done when this changes).
    pub registered_writable: bool,
    /// The read budget ran out with messages possibly left in the buffers: the
    /// loop reads again without waiting for a readiness event.
    pub more_to_read: bool,
}

impl WsConn {
    pub fn new(
        stream: TcpStream,
        leftover: Vec<u8>,
        peer: SocketAddr,
        client: u64,
        max_frame: usize,
        rate: u32,
        now: Instant,
    ) -> WsConn {
        // tungstenite's default read buffer (128 KiB) is filled out to its
        // capacity on the first read: it was 97% of an idle client's memory.
        // Client messages are small; 4 KiB grows as a big one needs.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame))
            .accept_unmasked_frames(false);
        let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(config));
        WsConn {
            ws,
            peer,
            client,
            last_seen: now,
            last_ping: now,
            flush_pending: false,
            closing_since: None,
            rate: RateLimiter::new(rate, now),
            discarding: false,
            write_shut: false,
            registered_writable: false,
            more_to_read: false,
            max_message: max_frame,
        }
    }

    /// Reads up to `budget` messages; pings are answered by tungstenite.
    pub fn read(&mut self, budget: usize, now: Instant, out: &mut Vec<WsRead>) {
        self.more_to_read = true;
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
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.more_to_read = false;
                    break;
                }
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                    out.push(WsRead::Closed("connection closed".into()));
                    return;
                }
                Err(e) => {
                    out.push(match close_for(&e, self.max_message) {
                        Some((code, reason)) => WsRead::Fail { code, reason },
                        None => WsRead::Closed(format!("websocket error: {e}")),
                    });
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

    /// One text frame the shell itself answers with (not from the engine).
    pub fn ping(&mut self, now: Instant) {
        self.last_ping = now;
        let _ = self.ws.write(Message::Ping(tungstenite::Bytes::new()));
        self.flush();
    }

    /// While discarding: flushes our close frame, then half-closes our side,
    /// and reads and drops whatever the peer still sends. False once the peer
    /// has hung up (or the socket failed): the connection can go.
    pub fn discard_input(&mut self) -> bool {
        if !self.flush() {
            return false;
        }
        if !self.flush_pending && !self.write_shut {
            self.write_shut = true;
            let _ = self.ws.get_mut().shutdown(std::net::Shutdown::Write);
        }
        let mut chunk = [0u8; 16 << 10];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.ws.get_mut().read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    pub fn close(&mut self, code: u16, reason: &str, now: Instant) {
        if self.closing_since.is_some() {
            return;
        }
        self.closing_since = Some(now);
        self.discarding = true;
        let frame = CloseFrame { code: code.into(), reason: reason.to_string().into() };
        let _ = self.ws.close(Some(frame));
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limiter_allows_a_burst_of_twice_the_rate_then_refills() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(5, t0);
        assert_eq!((0..12).filter(|_| r.allow(t0)).count(), 10, "burst is twice the rate");
        assert!(!r.allow(t0 + Duration::from_millis(100)), "half a token after 100 ms");
        assert!(r.allow(t0 + Duration::from_millis(200)), "one token after 200 ms at 5/s");
        assert!(!r.allow(t0 + Duration::from_millis(200)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| r.allow(later)).count(), 10, "refill is capped at the burst");
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0, t0);
        assert!((0..100_000).all(|_| r.allow(t0)));
    }
}
