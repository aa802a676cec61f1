//! The PostgreSQL store, as pieces the shell's store host plugs in
//! (`shell::store_host::pg`, issue #13): nothing here blocks, and the engine
//! never calls any of it (it emits store effects; the host turns them into
//! these requests).
//!
//! - [`url`] — `postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]`.
//! - [`conn`] — one connection as a sans-IO state machine on the
//!   `postgres-protocol` codec — startup, SCRAM/md5/cleartext/trust auth,
//!   pipelined simple and extended queries, typed errors, a bounded queue.
//! - [`schema`] — the reference's `candles` table, klinegate's tables beside
//!   it, TimescaleDB when offered; bootstrap as request/answer steps.
//! - [`ops`] — every `Store` operation as a request builder + answer decoder.
//!
//! The socket side is `shell::conn::stream_driver::Driver<PgConn>`.
//! Owns: the PostgreSQL protocol and SQL. Never reads a clock, never opens a
//! socket itself, never panics on what the server sends.

pub mod conn;
#[cfg(test)]
mod conn_tests;
pub mod ops;
pub mod schema;
pub mod url;

pub use conn::{Answer, Full, Param, PgConn, PgError, PgEvent, Request, RequestId, ResultSet, Statement};
pub use schema::{Bootstrap, BootstrapStep, Schema, SchemaInfo};
pub use url::{parse_pg_url, PgConfig};
