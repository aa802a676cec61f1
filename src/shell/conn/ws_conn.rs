//! One `/ws/market` client after the upgrade: our own RFC 6455 server side
//! (`wire::ws`) over the non-blocking [`Transport`], with permessage-deflate
//! when the client offered it (RFC 7692, no context takeover either way).
//! Reads frames into messages under the size limit, answers pings and the
//! peer's close, writes the engine's frames (compressed ones taken from the
//! shared [`DeflateCache`]) with one write per batch, and runs our side of the
//! close handshake. Under `--io-uring` the shell may queue a batch instead
//! (`queue_frames`): the bytes stay here, the event loop sends them through
//! the ring before the turn ends and reports the result (`uring_sent`).
//!
//! Owns: the bytes in flight of one client. Never decides what to answer (the
//! engine does) and never blocks. The exchange side keeps tungstenite.

use crate::shell::conn::deflate_cache::DeflateCache;
use crate::shell::conn::transport::Transport;
use crate::wire::ws::deflate::Accepted;
use crate::wire::ws::decoder::{Decoder, Event};
use crate::wire::ws::frame;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Most bytes read from one socket per readiness event, for fairness.
const READ_BUDGET: usize = 256 << 10;
/// Buffers bigger than this are given back once empty: an idle client holds
/// (almost) nothing.
const KEEP_CAPACITY: usize = 4 << 10;

/// What reading a WebSocket produced.
pub enum WsRead {
    Text(String),
    Binary(usize),
    /// The peer closed, or the connection failed; the reason is for the log.
    Closed(String),
    /// The peer broke the protocol or a limit: answer with this close code.
    /// 1009 a message over the size limit (inflated or not), 1007 invalid
    /// UTF-8 or deflate data, 1002 anything else RFC 6455 forbids.
    Fail { code: u16, reason: String },
}

pub struct WsConn {
    pub(crate) stream: Transport,
    pub peer: SocketAddr,
    /// Carried over from the HTTP connection it was (see `HttpConn::counted_ip`).
    pub counted_ip: Option<IpAddr>,
    pub client: u64,
    pub last_seen: Instant,
    pub last_ping: Instant,
    /// Bytes are queued that the socket has not taken yet.
    pub flush_pending: bool,
    /// A close was sent; the connection ends once it is flushed or times out.
    pub closing_since: Option<Instant>,
    /// Once we sent a close frame the peer's bytes are read and thrown away
    /// until it hangs up: closing a socket with unread data resets it, and a
    /// reset can destroy our close frame before the peer reads it.
    pub discarding: bool,
    write_shut: bool,
    /// The interest last registered includes WRITABLE (re-registering costs
    /// an `epoll_ctl`: only done when this changes).
    pub registered_writable: bool,
    /// The read budget ran out with messages possibly left in the buffers: the
    /// loop reads again without waiting for a readiness event.
    pub more_to_read: bool,
    /// permessage-deflate as negotiated at the upgrade.
    deflate: Option<Accepted>,
    decoder: Decoder,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    /// Bytes of `write_buf` already written.
    written: usize,
    /// Bytes the socket took since the shell last asked (`take_bytes_sent`).
    bytes_sent: u64,
    /// The unwritten bytes wait for the event loop's io_uring send this turn:
    /// nothing is written directly until it reports (`uring_sent`), so bytes
    /// queued meanwhile (a pong) go out behind them.
    uring_queued: bool,
}

impl WsConn {
    pub(crate) fn new(
        stream: Transport,
        leftover: Vec<u8>,
        peer: SocketAddr,
        client: u64,
        max_frame: usize,
        deflate: Option<Accepted>,
        now: Instant,
    ) -> WsConn {
        WsConn {
            stream,
            peer,
            counted_ip: None,
            client,
            last_seen: now,
            last_ping: now,
            flush_pending: false,
            closing_since: None,
            discarding: false,
            write_shut: false,
            registered_writable: false,
            more_to_read: false,
            deflate,
            decoder: Decoder::new(max_frame, deflate.is_some()),
            read_buf: leftover,
            write_buf: Vec::new(),
            written: 0,
            bytes_sent: 0,
            uring_queued: false,
        }
    }

    /// Whether this client negotiated permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.deflate.is_some()
    }

    /// Bytes the socket took since the last call (frames as they went out:
    /// compressed or not, heads included).
    pub fn take_bytes_sent(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_sent)
    }

    /// Reads up to `budget` messages; pings are answered (pongs queued and
    /// flushed), a peer's close is echoed.
    pub fn read(&mut self, budget: usize, now: Instant, out: &mut Vec<WsRead>) {
        self.more_to_read = true;
        let mut messages = 0;
        let mut total = 0;
        let mut consumed = 0;
        'outer: loop {
            // Whole frames already buffered first: a big frame's head is judged
            // before its payload is read.
            while messages < budget {
                match self.decoder.next(&mut self.read_buf[consumed..]) {
                    Ok((None, n)) => {
                        consumed += n;
                        break;
                    }
                    Ok((Some(event), n)) => {
                        consumed += n;
                        self.last_seen = now;
                        messages += 1;
                        if let Some(end) = self.on_event(event, out) {
                            out.push(end);
                            break 'outer;
                        }
                    }
                    Err(f) => {
                        out.push(WsRead::Fail { code: f.code, reason: f.reason });
                        break 'outer;
                    }
                }
            }
            if messages >= budget {
                break;
            }
            self.read_buf.drain(..consumed);
            consumed = 0;
            if total >= READ_BUDGET {
                break;
            }
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    out.push(WsRead::Closed("connection closed".into()));
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.read_buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.more_to_read = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.push(WsRead::Closed(format!("websocket error: {e}")));
                    break;
                }
            }
        }
        self.read_buf.drain(..consumed);
        if self.read_buf.is_empty() && self.read_buf.capacity() > KEEP_CAPACITY {
            self.read_buf = Vec::new();
        }
        // A pong queued by a ping must go out even if nothing else is written.
        if !self.write_buf.is_empty() {
            self.flush();
        }
    }

    /// Answers control frames; a message for the shell goes to `out`. Returns
    /// what ends the reading (the peer's close).
    fn on_event(&mut self, event: Event, out: &mut Vec<WsRead>) -> Option<WsRead> {
        match event {
            Event::Text(t) => out.push(WsRead::Text(t)),
            Event::Binary(n) => out.push(WsRead::Binary(n)),
            Event::Ping(payload) => {
                if self.closing_since.is_none() {
                    frame::write_frame(&mut self.write_buf, frame::OP_PONG, false, &payload);
                }
            }
            Event::Pong => {}
            Event::Close(close) => {
                self.uring_queued = false;
                if self.closing_since.is_none() {
                    // Echo the code (RFC 6455 §5.5.1), best effort: the shell drops the socket next.
                    let payload = close.as_ref().map(|(code, _)| code.to_be_bytes().to_vec()).unwrap_or_default();
                    frame::write_frame(&mut self.write_buf, frame::OP_CLOSE, false, &payload);
                    self.flush();
                }
                let why = close.map_or("no code".to_string(), |(code, reason)| format!("{code} {reason}"));
                return Some(WsRead::Closed(format!("peer closed: {why}")));
            }
        }
        None
    }

    /// Queues frames (already JSON text) and flushes; false when the socket
    /// failed. Frames are only taken from the engine while nothing is pending,
    /// so the buffer never grows past one turn's worth. A client that
    /// negotiated compression gets each frame's shared compressed form when
    /// compressing pays.
    pub fn send_frames(&mut self, frames: &[bytes::Bytes], cache: &mut DeflateCache) -> bool {
        self.encode_frames(frames, cache);
        self.flush()
    }

    /// Like `send_frames`, but the bytes wait for the event loop's io_uring
    /// send (`pending_for_uring`, then `uring_sent`) instead of a write now.
    pub fn queue_frames(&mut self, frames: &[bytes::Bytes], cache: &mut DeflateCache) {
        self.encode_frames(frames, cache);
        self.uring_queued = true;
    }

    /// The socket and the bytes a queued io_uring send is to carry (None if
    /// nothing is queued: the client closed or wrote directly meanwhile).
    pub fn pending_for_uring(&self) -> Option<(std::os::unix::io::RawFd, &[u8])> {
        if !self.uring_queued || self.written >= self.write_buf.len() {
            return None;
        }
        Some((self.raw_fd()?, &self.write_buf[self.written..]))
    }

    /// The plain TCP socket (None over TLS: rustls must see every byte).
    pub fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        match &self.stream {
            Transport::Plain(tcp) => Some(tcp.as_raw_fd()),
            Transport::Tls(_) => None,
        }
    }

    /// The io_uring send of the queued bytes completed with `res` (bytes
    /// taken, or `-errno`). A short send or EINTR writes the rest directly;
    /// EAGAIN leaves it for the writable path. False when the socket failed.
    pub fn uring_sent(&mut self, res: i32) -> bool {
        self.uring_queued = false;
        if res >= 0 {
            self.written += res as usize;
            self.bytes_sent += res as u64;
            return self.flush();
        }
        if res == -libc::EAGAIN {
            self.flush_pending = true;
            return true;
        }
        if res == -libc::EINTR {
            return self.flush();
        }
        false
    }

    /// Whether the bytes wait for the ring.
    pub fn uring_queued(&self) -> bool {
        self.uring_queued
    }

    /// Drops the wait for the ring: what is queued is written directly (the
    /// ring skips this client). Called before a close frame is queued.
    pub fn unqueue_uring(&mut self) {
        self.uring_queued = false;
    }

    fn encode_frames(&mut self, frames: &[bytes::Bytes], cache: &mut DeflateCache) {
        for f in frames {
            let compressed = match self.deflate {
                Some(a) => cache.compressed(f, a.max_compressed_message()),
                None => None,
            };
            match compressed {
                Some(c) => frame::write_frame(&mut self.write_buf, frame::OP_TEXT, true, c),
                None => frame::write_frame(&mut self.write_buf, frame::OP_TEXT, false, f),
            }
        }
    }

    /// Writes what is queued; false when the socket failed. While an io_uring
    /// send is queued this does nothing (the ring carries the bytes in order).
    pub fn flush(&mut self) -> bool {
        if self.uring_queued {
            return true;
        }
        while self.written < self.write_buf.len() {
            match self.stream.write(&self.write_buf[self.written..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.written += n;
                    self.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush_pending = true;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.written = 0;
        self.write_buf.clear();
        if self.write_buf.capacity() > KEEP_CAPACITY {
            self.write_buf = Vec::new();
        }
        // TLS records rustls took but the socket did not.
        loop {
            match self.stream.flush() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush_pending = true;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.flush_pending = false;
        true
    }

    /// A ping from the server (the idle check).
    pub fn ping(&mut self, now: Instant) {
        self.last_ping = now;
        frame::write_frame(&mut self.write_buf, frame::OP_PING, false, &[]);
        self.flush();
    }

    /// While discarding: flushes our close frame, then half-closes our side
    /// (over TLS: `close_notify` once the close frame's records are out, then
    /// the TCP half-close once that is out too), and reads and drops whatever
    /// the peer still sends. False once the peer has hung up (or the socket
    /// failed): the connection can go.
    pub fn discard_input(&mut self) -> bool {
        self.uring_queued = false;
        if !self.flush() {
            return false;
        }
        if !self.flush_pending && !self.write_shut {
            match self.stream.shut_down_write() {
                Ok(true) => self.write_shut = true,
                // close_notify is queued behind a full socket: wait until writable.
                Ok(false) => self.flush_pending = true,
                Err(_) => return false,
            }
        }
        self.read_buf = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.stream.read(&mut chunk) {
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
        // Frames already queued go out (directly) before the close frame.
        self.uring_queued = false;
        frame::write_frame(&mut self.write_buf, frame::OP_CLOSE, false, &frame::close_payload(code, reason));
        self.flush();
    }
}

#[cfg(test)]
#[path = "ws_conn_uring_tests.rs"]
mod uring_tests;
