//! The byte stream every socket of ours runs on: plain TCP, or TLS over TCP
//! (rustls client sessions to the exchange, server sessions for clients when
//! `--tls-cert`/`--tls-key` are given). Non-blocking: reads and writes return
//! `WouldBlock` exactly when the socket does, which is what tungstenite's
//! resumable reader and handshakes expect.
//!
//! It owns the TLS state machine's plumbing (records in and out of the socket)
//! and nothing else: no clocks, no timeouts, no protocol above TLS.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::Connection;

/// A non-blocking byte stream: plain TCP, or TLS over TCP. Reads and writes return
/// `WouldBlock` exactly when the socket does, which is what tungstenite's resumable
/// reader and handshake expect (and what the REST client's own reader expects).
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsTransport>),
}

impl Transport {
    /// Plain TCP, or TLS with the given session (client or server side) over it.
    pub(crate) fn new(tcp: TcpStream, tls_session: Option<Connection>) -> Transport {
        match tls_session {
            Some(tls) => Transport::Tls(Box::new(TlsTransport { tls, tcp, tcp_eof: false })),
            None => Transport::Plain(tcp),
        }
    }

    pub(crate) fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &mut tls.tcp,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Swaps in a fresh socket before any byte was exchanged (address fallback).
    pub(crate) fn replace_tcp(&mut self, tcp: TcpStream) {
        *self.tcp_mut() = tcp;
    }

    /// Advances the TLS handshake as far as the socket allows; `Ok(true)` once it is done
    /// (at once for plain TCP). Errors are described by [`describe_tls_handshake_error`].
    pub(crate) fn drive_tls_handshake(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(tls) => tls.drive_handshake(),
        }
    }

    /// True while a TLS session has not finished its handshake (never for plain TCP).
    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.tls.is_handshaking())
    }

    /// True when TLS records are queued that the socket has not taken yet: output is
    /// still pending even if every layer above has handed over its bytes.
    pub(crate) fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.tls.wants_write())
    }

    /// Half-closes our sending side once everything queued is out; TLS says
    /// `close_notify` first, so the peer can tell our end from a truncation. `Ok(true)`
    /// once the TCP write side is shut; `Ok(false)` while records are still queued
    /// (call again when the socket is writable).
    pub(crate) fn shut_down_write(&mut self) -> io::Result<bool> {
        if let Transport::Tls(tls) = self {
            tls.tls.send_close_notify(); // a no-op the second time
            match tls.write_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Already reset or shut by the peer: nothing more to say either way.
        let _ = self.tcp_mut().shutdown(Shutdown::Write);
        Ok(true)
    }

    /// Before the socket is dropped: a TLS session past its handshake says
    /// `close_notify` (one non-blocking write attempt, errors ignored). Nothing for plain
    /// TCP, nor mid-handshake (a failed handshake already queued its alert, sent here).
    pub(crate) fn say_goodbye(&mut self) {
        if let Transport::Tls(tls) = self {
            if !tls.tls.is_handshaking() {
                tls.tls.send_close_notify();
            }
            let _ = tls.write_records();
        }
    }

    pub(crate) fn shut_down(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.tls.send_close_notify();
            let _ = tls.write_records();
        }
        let _ = self.tcp_mut().shutdown(Shutdown::Both);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

pub(crate) struct TlsTransport {
    tls: Connection,
    tcp: TcpStream,
    tcp_eof: bool,
}

impl TlsTransport {
    /// Writes queued TLS records until none are left or the socket would block.
    fn write_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Reads what the socket has into rustls and decrypts it. TLS failures come back as
    /// `InvalidData` wrapping the `rustls::Error` (after trying to send the alert).
    fn read_records(&mut self) -> io::Result<()> {
        if self.tls.read_tls(&mut self.tcp)? == 0 {
            self.tcp_eof = true;
        }
        if let Err(e) = self.tls.process_new_packets() {
            let _ = self.write_records();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Advances the handshake as far as the socket allows. `Ok(true)` once it is done (our
    /// last flight may still be queued; it goes out ahead of the first write).
    fn drive_handshake(&mut self) -> io::Result<bool> {
        loop {
            match self.write_records() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if !self.tls.is_handshaking() {
                return Ok(true);
            }
            if self.tcp_eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the TLS handshake",
                ));
            }
            match self.read_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for TlsTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Plaintext already decrypted comes first; only an empty buffer reads the socket.
            match self.tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            if self.tcp_eof {
                return Ok(0);
            }
            self.read_records()?;
            // Records may ask for an answer (key update); a blocked write waits for flush.
            match self.write_records() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for TlsTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Earlier records go first; a full kernel buffer is not an error here.
        match self.write_records() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let accepted = self.tls.writer().write(buf)?;
        if accepted == 0 && !buf.is_empty() {
            // rustls' own buffer limit is reached: backpressure until the socket drains.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The bytes are ours now; a write error surfaces on the next call.
        let _ = self.write_records();
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_records()?;
        self.tcp.flush()
    }
}

/// The rustls error inside an `io::Error` made by `TlsTransport`, if that is what it is.
pub(crate) fn tls_cause(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why the TLS handshake with `host` failed: the rustls error when there is one.
pub(crate) fn describe_tls_handshake_error(host: &str, e: &io::Error) -> String {
    let cause = match tls_cause(e) {
        Some(tls_error) => tls_error.to_string(),
        None => describe_io_error(e),
    };
    format!("TLS handshake with {host} failed: {cause}")
}

pub(crate) fn describe_io_error(e: &io::Error) -> String {
    if let Some(tls_error) = tls_cause(e) {
        return format!("TLS error: {tls_error}");
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("connection closed by the server: {e}"),
        io::ErrorKind::ConnectionReset => format!("connection reset by the server: {e}"),
        _ => format!("I/O error: {e}"),
    }
}
