//! The mio shell: one thread, one `mio::Poll`, connections in a slab. It reads
//! the clock once per loop turn, feeds the engine inputs, carries out its
//! outputs, and writes client frames when sockets are writable. Everything it
//! does to the engine can be recorded as a journal.
//!
//! - [`event_loop`]: the loop itself and its dispatch, by concern.
//! - [`conn`]: one connection each — clients, exchange WebSocket, REST, TLS, the
//!   byte stream under them.
//! - [`api`]: the HTTP routes (pure functions of a request and read-only engine
//!   state), `/metrics`, health views and the market directory.
//! - [`dns`]: non-blocking name resolution (hosts file, resolv.conf nameservers over
//!   UDP on the loop's poll, cache); [`crate::wire::dns`] is its message codec.
//! - [`logger`] and [`timed_store`] serve the loop.
//!
//! Owns: every socket, the clock and the store handle. Never decides what the
//! engine decides: policy lives in [`crate::engine`].
// Outside the deterministic core: clocks and the rest of clippy.toml's list are allowed here.
#![allow(clippy::disallowed_methods)]
pub mod api;
pub mod bus_host;
pub mod conn;
pub mod dns;
pub mod event_loop;
pub mod logger;
pub mod store_host;
#[cfg(test)]
pub(crate) mod test_support;
pub mod timed_store;
