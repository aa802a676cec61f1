//! Opening an outgoing connection without blocking, shared by the upstream WebSocket
//! and REST connections: the literal address of a URL, a TCP connect to the first
//! address that accepts one (the rest kept as fallbacks), the mio recipe for telling a
//! finished connect from a pending one, and registering only when interest changes.
//!
//! Owns: the connect and registration mechanics. Never resolves a name (the shell's
//! resolver hands addresses in), never speaks a protocol over the socket.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::shell::conn::tls_client::{new_tls_session, TlsSetup};
use crate::shell::conn::transport::Transport;
use crate::shell::conn::url::WsUrl;

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
