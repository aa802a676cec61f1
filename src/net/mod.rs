//! The mio shell: one thread, one `mio::Poll`, connections in a slab. It reads
//! the clock once per loop turn, feeds the engine inputs, carries out its
//! outputs, and writes client frames when sockets are writable. Everything it
//! does to the engine can be recorded as a journal.
//!
//! - [`http`]: HTTP/1.1 request parsing and response writing (pure).
//! - [`routes`]: the HTTP routes and the `/ws/market` upgrade decision (pure
//!   functions of a request and read-only engine state).
//! - [`upstream_conn`]: one exchange WebSocket (TCP → rustls → tungstenite),
//!   non-blocking.
//! - [`rest_conn`]: one exchange REST request (HTTP/1.1 GET over TCP or rustls),
//!   non-blocking.
//! - [`transport`]: the byte stream under all of them, plain TCP or rustls.
//! - [`server_tls`]: TLS for clients, the rustls server configuration loaded
//!   from `--tls-cert`/`--tls-key`.
//! - [`dns`]: non-blocking name resolution (hosts file, resolv.conf nameservers over
//!   UDP on the loop's poll, cache); [`dns_wire`] is its pure message codec.
//! - [`client_conn`]: one client socket, HTTP then (after the upgrade) WebSocket.
//! - [`server`]: the loop itself; [`logger`] and [`timed_store`] serve it.
pub mod client_conn;
pub mod dns;
pub mod dns_wire;
pub mod http;
pub mod kline_health;
pub mod logger;
pub mod markets;
pub mod rest_conn;
pub mod routes;
pub mod server;
pub mod server_tls;
#[cfg(test)]
pub(crate) mod test_support;
pub mod timed_store;
pub mod transport;
pub mod upstream_conn;
