//! klinegate: a deterministic, single-threaded Binance kline ingest engine and
//! market WebSocket server.
//!
//! Map of the crate:
//! - [`time`], [`model`]: timestamps, series ids, timeframes, candles;
//!   [`calendar`]: unix seconds <-> RFC 3339 text; [`kline_ext`]: the whole
//!   kline's extra fields (quote volume, trades, taker-buy volumes).
//! - [`timer`]: the hierarchical timer wheel the core schedules with.
//! - [`wire`]: every pure codec — Binance kline frames and control messages,
//!   the client `/ws/market` protocol, HTTP/1.1 heads, DNS messages.
//! - [`engine`]: the sans-IO core. `handle(input, now)`, `handle_timeout(now)`,
//!   `poll_output()`, `poll_timeout()`. Never reads a clock, a socket, the
//!   environment or randomness.
//! - [`store`]: the candle store the shell owns: SQLite, in-memory, and
//!   PostgreSQL (its sans-IO connection, schema and operations).
//! - [`sans_io`]: the contract of a protocol machine the shell's socket driver steps.
//! - [`bus`]: the Redis connection, Streams and leader lease between nodes
//!   (not wired in yet).
//! - [`replay`]: record/replay journals, capture conversion, the journal generator.
//! - [`cli`]: engine settings; the `run` command's flags/env/TOML layering.
//! - [`shell`]: the mio shell (`klinegate run`): HTTP, WebSocket, exchange connections.
//! - [`bootstrap`]: freqtrade datadir import (a tool, not core).
//! - [`tools`]: `tail` (watch a running server) and `export` (CSV/Parquet).
pub mod time;
pub mod calendar;
pub mod model;
pub mod kline_ext;
pub mod rng;
pub mod timer;
pub mod sans_io;
pub mod wire;
pub mod engine;
pub mod store;
pub mod bus;
pub mod replay;
pub mod cli;
pub mod shell;
pub mod bootstrap;
pub mod tools;
