//! klinegate: a deterministic, single-threaded Binance kline ingest engine and
//! market WebSocket server.
//!
//! Map of the crate:
//! - [`time`], [`model`]: timestamps, series ids, timeframes, candles.
//! - [`timer`]: the hierarchical timer wheel the core schedules with.
//! - [`protocol`]: wire formats — Binance kline frames and control messages,
//!   and the client `/ws/market` protocol.
//! - [`engine`]: the sans-IO core. `handle(input, now)`, `handle_timeout(now)`,
//!   `poll_output()`, `poll_timeout()`. Never reads a clock, a socket, the
//!   environment or randomness.
//! - [`store`]: the candle store trait, SQLite and in-memory implementations.
//! - [`journal`]: record/replay of the core's inputs as JSON lines.
//! - [`config`], [`runconfig`]: engine settings; the `run` command's flags/env/TOML.
//! - [`net`]: the mio shell (`klinegate run`): HTTP, WebSocket, exchange connections.
//! - [`capture`]: recorded Binance captures → journals (a tool).
//! - [`bootstrap`]: freqtrade datadir import (a tool, not core).
//! - [`gen`]: synthetic journals (many streams, realistic cadence) for benches.
pub mod time;
pub mod model;
pub mod rng;
pub mod timer;
pub mod protocol;
pub mod engine;
pub mod store;
pub mod journal;
pub mod config;
pub mod capture;
pub mod net;
pub mod runconfig;
pub mod bootstrap;
pub mod gen;
