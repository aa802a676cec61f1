//! One client socket on the listening port: first an HTTP/1.1 connection
//! (keep-alive, pipelining), and after a `/ws/market` upgrade a WebSocket
//! ([`WsConn`], our own RFC 6455 server side with permessage-deflate). The stream is a [`Transport`]:
//! plain TCP, or a rustls server session when `--tls-cert`/`--tls-key` are
//! given (its handshake advances as the connection reads and flushes). Owns
//! the bytes in flight and nothing else: what to answer is decided by
//! `routes` and the engine.

use crate::wire::http::{self, HttpLimits, Parse, Request};
use crate::shell::conn::transport::{tls_cause, Transport};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The WebSocket it becomes after a `/ws/market` upgrade.
pub use super::ws_conn::{WsConn, WsRead};

/// Most bytes read from one socket per readiness event, for fairness.
const READ_BUDGET: usize = 256 << 10;

/// Response bytes queued for one HTTP client past which no further request of
/// its is read or answered: a client that pipelines requests without reading
/// the answers is held back by TCP instead of growing this buffer.
pub const MAX_QUEUED_RESPONSE_BYTES: usize = 1 << 20;

pub struct HttpConn {
    pub(crate) stream: Transport,
    pub peer: SocketAddr,
    /// The address this connection is counted against in the per-address limit:
    /// the peer's, or behind a trusted proxy the client it forwards (set at its
    /// first request; `None` until then, or when the proxy names nobody).
    pub counted_ip: Option<IpAddr>,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    pub close_after_write: bool,
    /// A 101 response is queued: once it is written the socket becomes a WebSocket.
    pub upgrade_after_write: bool,
    /// permessage-deflate as the upgrade's answer accepted it.
    pub ws_deflate: Option<crate::wire::ws::deflate::Accepted>,
    pub last_activity: Instant,
    /// When the first byte of a request not yet complete arrived. A request
    /// must be complete within the idle timeout of this, however steadily its
    /// bytes trickle in (slowloris).
    pub request_started: Option<Instant>,
    pub peer_closed: bool,
    /// Why the TLS session failed (the rustls error, or a timeout), for the log; the
    /// connection ends at once when this is set.
    pub tls_error: Option<String>,
    /// A request is parked (waiting for the exchange): requests pipelined
    /// behind it wait too, so answers go out in request order.
    pub awaiting_reply: bool,
    /// Bytes may be left unread in the socket, or requests unanswered in the
    /// buffer, that no readiness event will announce (edge-triggered): the
    /// read budget ran out, or reading waited for the backlog to drain.
    pub more_to_read: bool,
}

impl HttpConn {
    pub(crate) fn new(stream: Transport, peer: SocketAddr, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            peer,
            counted_ip: None,
            read_buf: Vec::new(),
            write_buf: Vec::new(),
            close_after_write: false,
            upgrade_after_write: false,
            ws_deflate: None,
            last_activity: now,
            request_started: None,
            peer_closed: false,
            tls_error: None,
            awaiting_reply: false,
            more_to_read: false,
        }
    }

    /// Whether the next request may be read and answered now.
    pub fn wants_requests(&self) -> bool {
        !self.upgrade_after_write && !self.awaiting_reply && self.write_buf.len() < MAX_QUEUED_RESPONSE_BYTES
    }

    /// Reads what is available, up to the read budget, unless requests must
    /// wait or the buffer already holds the largest request allowed: then
    /// `more_to_read` says to come back once that changes.
    pub fn read_available(&mut self, limits: &HttpLimits, now: Instant) {
        if !self.wants_requests() || self.read_buf.len() > limits.max_head_bytes + limits.max_body_bytes {
            self.more_to_read = true;
            return;
        }
        self.more_to_read = false;
        let mut chunk = [0u8; 16 << 10];
        let mut total = 0;
        loop {
            if total >= READ_BUDGET {
                self.more_to_read = true;
                break;
            }
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
                Err(e) => {
                    if let Some(cause) = tls_cause(&e) {
                        self.tls_error = Some(cause.to_string());
                    }
                    self.peer_closed = true;
                    break;
                }
            }
        }
    }

    /// The next complete request in the buffer, if any (or the parse error
    /// that ends the connection). Also keeps the slowloris clock: it runs
    /// from the first byte of a request until the request is complete.
    pub fn next_request(&mut self, limits: &HttpLimits, now: Instant) -> Result<Option<Request>, http::HttpError> {
        match http::parse_request(&self.read_buf, limits) {
            Parse::Complete { request, consumed } => {
                self.read_buf.drain(..consumed);
                self.request_started = if self.read_buf.is_empty() { None } else { Some(now) };
                Ok(Some(request))
            }
            Parse::Incomplete => {
                if self.read_buf.is_empty() {
                    self.request_started = None;
                } else if self.request_started.is_none() {
                    self.request_started = Some(now);
                }
                Ok(None)
            }
            Parse::Error(e) => Err(e),
        }
    }

    /// Requests were left unanswered while they had to wait: more may be
    /// read and answered once `wants_requests` holds again.
    pub fn has_unserved_input(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// Bytes read past the last complete request (a client may pipeline its
    /// first WebSocket frames behind the upgrade request).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.read_buf)
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Writes as much as the socket takes; true when everything is out,
    /// including TLS records still queued in the session (handshake flights,
    /// the tail of a response that rustls took but the socket did not).
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
        loop {
            match self.stream.flush() {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A best-effort `408` before the connection is dropped for taking too
    /// long over one request (one non-blocking write, errors ignored).
    pub fn answer_timeout(&mut self) {
        let mut buf = Vec::new();
        http::Response::error(408, "request_timeout").write_to(&mut buf, false);
        let _ = self.stream.write(&buf);
    }

    pub fn has_pending_output(&self) -> bool {
        !self.write_buf.is_empty() || self.stream.wants_write()
    }

    /// A TLS connection that has not finished its handshake (never for plain TCP).
    pub fn tls_handshaking(&self) -> bool {
        self.stream.is_handshaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what is there and parses every complete request, as the server loop does.
    fn read_requests(conn: &mut HttpConn, limits: &HttpLimits) -> Vec<Request> {
        conn.read_available(limits, Instant::now());
        let mut out = Vec::new();
        while let Some(req) = conn.next_request(limits, Instant::now()).unwrap() {
            out.push(req);
        }
        out
    }
    use crate::shell::conn::tls_server::ServerTls;
    use crate::shell::test_support::TEST_TIMEOUT;
    use std::sync::Arc;
    use std::time::Duration;

    /// A server-side TLS `HttpConn` on loopback and the port's self-signed certificate.
    struct TlsPair {
        conn: HttpConn,
        cert: rustls::pki_types::CertificateDer<'static>,
        _dir: tempfile::TempDir,
    }

    /// Listens, lets `client` connect in a thread, and wraps the accepted socket in a
    /// non-blocking rustls server session, as the shell does.
    fn tls_pair<F>(client: F) -> (TlsPair, std::thread::JoinHandle<()>)
    where
        F: FnOnce(std::net::TcpStream, rustls::pki_types::CertificateDer<'static>) + Send + 'static,
    {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, pair.cert.pem()).unwrap();
        std::fs::write(&key_path, pair.signing_key.serialize_pem()).unwrap();
        let tls = ServerTls::from_pem_files(&cert_path, &key_path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cert = pair.cert.der().clone();
        let client_cert = cert.clone();
        let handle = std::thread::spawn(move || {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
            client(stream, client_cert)
        });
        let (std_stream, peer) = listener.accept().unwrap();
        std_stream.set_nonblocking(true).unwrap();
        // A small send buffer so that big writes meet a full socket quickly.
        socket2::SockRef::from(&std_stream).set_send_buffer_size(32 << 10).unwrap();
        let transport = Transport::new(mio::net::TcpStream::from_std(std_stream), Some(tls.session().unwrap()));
        let conn = HttpConn::new(transport, peer, Instant::now());
        (TlsPair { conn, cert, _dir: dir }, handle)
    }

    fn client_session(cert: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
    }

    /// Polls `step` until it returns `Some`, for at most `TEST_TIMEOUT`.
    fn wait_for<T>(mut step: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + TEST_TIMEOUT;
        loop {
            if let Some(v) = step() {
                return v;
            }
            assert!(Instant::now() < end, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn tls_handshake_advances_from_reads_and_a_big_response_is_flushed_through_rustls() {
        const BODY: usize = 3 << 20;
        let (mut pair, client) = tls_pair(|stream, cert| {
            let mut tls = rustls::StreamOwned::new(client_session(cert), stream);
            tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            // Read slowly at first so the server's socket fills and rustls holds records.
            std::thread::sleep(Duration::from_millis(300));
            let mut got = Vec::new();
            let mut chunk = [0u8; 64 << 10];
            while got.len() < BODY {
                let n = tls.read(&mut chunk).unwrap();
                assert!(n > 0, "eof after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got.len(), BODY);
            assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "bytes arrive intact and in order");
        });
        let limits = HttpLimits::default();
        assert!(pair.conn.tls_handshaking());
        let requests = wait_for(|| {
            let got = read_requests(&mut pair.conn, &limits);
            assert!(!pair.conn.peer_closed, "{:?}", pair.conn.tls_error);
            // The server's flight may be queued behind a full socket: flushing is part of it.
            let _ = pair.conn.flush().unwrap();
            (!got.is_empty()).then_some(got)
        });
        assert_eq!(requests[0].path, "/big");
        assert!(!pair.conn.tls_handshaking());
        let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
        pair.conn.queue(&body);
        let mut partial_flushes = 0;
        wait_for(|| {
            if pair.conn.flush().unwrap() {
                return Some(());
            }
            partial_flushes += 1;
            assert!(pair.conn.has_pending_output());
            None
        });
        assert!(!pair.conn.has_pending_output(), "nothing left in rustls either");
        assert!(partial_flushes > 0, "the socket pushed back at least once");
        client.join().unwrap();
        let _ = pair.cert;
    }

    #[test]
    fn a_tls_half_close_comes_after_the_queued_reply_and_says_close_notify() {
        let (mut pair, client) = tls_pair(|stream, cert| {
            let mut tls = rustls::StreamOwned::new(client_session(cert), stream);
            tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut got = Vec::new();
            // Ok(0) only after close_notify; a bare FIN would be UnexpectedEof.
            tls.read_to_end(&mut got).expect("a clean TLS end");
            assert_eq!(got, b"bye");
        });
        let limits = HttpLimits::default();
        wait_for(|| {
            let got = read_requests(&mut pair.conn, &limits);
            let _ = pair.conn.flush().unwrap();
            (!got.is_empty()).then_some(())
        });
        pair.conn.queue(b"bye");
        wait_for(|| pair.conn.flush().unwrap().then_some(()));
        wait_for(|| pair.conn.stream.shut_down_write().unwrap().then_some(()));
        client.join().unwrap();
    }

    #[test]
    fn plain_http_on_a_tls_connection_fails_with_the_rustls_reason() {
        let (mut pair, client) = tls_pair(|mut stream, _| {
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            assert!(!answer.starts_with(b"HTTP/"), "no HTTP answer before a handshake");
        });
        let limits = HttpLimits::default();
        wait_for(|| {
            let got = read_requests(&mut pair.conn, &limits);
            assert!(got.is_empty());
            pair.conn.peer_closed.then_some(())
        });
        let reason = pair.conn.tls_error.clone().expect("a rustls error");
        assert!(pair.conn.tls_handshaking(), "never got past the handshake");
        assert!(!reason.is_empty());
        pair.conn.stream.say_goodbye();
        drop(pair);
        client.join().unwrap();
    }
}
