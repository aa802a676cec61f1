//! The bus between klinegate nodes on Redis (issue #13): pieces that the
//! ingest and read roles plug in. Nothing here blocks, and nothing here is
//! called by the engine yet.
//!
//! - [`url`] — `redis://HOST:PORT[/DB]`.
//! - [`conn`] — one Redis connection as a sans-IO state machine on the
//!   `redis-protocol` codec (RESP2 or RESP3), pipelined, typed errors, a
//!   bounded queue.
//! - [`streams`] — `XADD … MAXLEN ~`, `XREAD`/`XRANGE` from an id,
//!   `XINFO STREAM` (was the stream trimmed past a reader?).
//! - [`lease`] — the leader lease with a fencing token (Lua), and the fenced
//!   `XADD` a deposed leader cannot get through.
//!
//! The socket side is `shell::conn::stream_driver::Driver<RedisConn>`.
//! Owns: the Redis protocol and command shapes. Never reads a clock, never
//! opens a socket itself, never panics on what the server sends.

pub mod conn;
#[cfg(test)]
mod conn_tests;
pub mod lease;
pub mod streams;
pub mod url;

pub use conn::{Command, CommandId, RedisConn, RedisError, RedisEvent, Reply, Resp, Value};
pub use streams::{Entry, StreamId, StreamInfo};
pub use url::{parse_redis_url, RedisConfig};
