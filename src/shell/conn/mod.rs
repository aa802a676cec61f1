//! One connection each, non-blocking, driven by the event loop.
//!
//! - [`client`]: one client socket, HTTP then (after the upgrade) WebSocket.
//! - [`ws_conn`]: one `/ws/market` WebSocket (our own RFC 6455 + RFC 7692 server side).
//! - [`deflate_cache`]: broadcast frames compressed once, shared by every client.
//! - [`upstream`]: one exchange WebSocket (TCP → rustls → tungstenite).
//! - [`url`]: the `ws(s)://` and `http(s)://` URLs we connect to.
//! - [`dial`]: a non-blocking connect to the first address that accepts one, and
//!   registration only when interest changes (shared by upstream and rest).
//! - [`tls_client`]: the rustls client configuration and sessions.
//! - [`rest`]: one exchange REST request (HTTP/1.1 GET over TCP or rustls).
//! - [`transport`]: the byte stream under all of them, plain TCP or rustls.
//! - [`stream_driver`]: one outgoing TCP connection for a sans-IO protocol
//!   machine (PostgreSQL store, Redis bus), reconnecting with backoff.
//! - [`tls_server`]: TLS for clients, the rustls server configuration loaded
//!   from `--tls-cert`/`--tls-key`.
//!
//! Owns: bytes in and out of one socket. Never resolves a name (the shell's
//! resolver hands addresses in) and never blocks.
pub mod client;
pub mod deflate_cache;
pub mod dial;
pub mod rest;
pub mod stream_driver;
pub mod tls_client;
pub mod tls_server;
pub mod transport;
pub mod upstream;
pub mod url;
pub mod ws_conn;
