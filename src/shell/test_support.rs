//! Test-only helpers shared by the connection tests of this module: one-shot loopback TCP
//! servers on threads, a port nothing listens on, and a TLS server with a fresh self-signed
//! certificate whose PEM the client side can trust through `TlsSetup`.
//!
//! Everything here blocks and panics freely: it runs only inside `cargo test`, on threads
//! that stand in for the exchange.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Upper bound on every wait in a connection test (server reads, client loops).
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side of one test TLS connection.
pub(crate) type ServerTls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Accepts one connection on a loopback port and runs `script` on it in a thread. The
/// stream has a read timeout of [`TEST_TIMEOUT`] so a stuck test fails instead of hanging.
pub(crate) fn spawn_tcp_server<F>(script: F) -> (u16, thread::JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        script(stream);
    });
    (port, handle)
}

/// A loopback port that was free a moment ago: connecting to it is refused.
pub(crate) fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A one-shot TLS server for `localhost` / `127.0.0.1`; trust `ca_pem` to accept it.
pub(crate) struct TlsServer {
    pub(crate) port: u16,
    pub(crate) ca_pem: PathBuf,
    pub(crate) handle: thread::JoinHandle<()>,
    /// Keeps `ca_pem` on disk for as long as the server is in use.
    _dir: tempfile::TempDir,
}

/// Accepts one TCP connection, wraps it in a rustls server session with a fresh self-signed
/// certificate and runs `script` on it. The TLS handshake happens lazily on the first read
/// or write by `script` (an untrusting client makes that first I/O fail).
pub(crate) fn spawn_tls_server<F>(script: F) -> TlsServer
where
    F: FnOnce(ServerTls) + Send + 'static,
{
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("exchange-ca.pem");
    std::fs::write(&ca_pem, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    let (port, handle) = spawn_tcp_server(move |stream| {
        let session = rustls::ServerConnection::new(config).unwrap();
        script(rustls::StreamOwned::new(session, stream));
    });
    TlsServer {
        port,
        ca_pem,
        handle,
        _dir: dir,
    }
}
