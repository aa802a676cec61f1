//! Commands besides `run` that a person runs by hand: [`tail`] watches a
//! running server's `/ws/market`, [`export`] writes a series' stored candles
//! as CSV or Parquet.
//!
//! Owns: their own blocking I/O (one socket, one file). Never part of the
//! engine or the event loop; they only use its public pieces.
// Outside the deterministic core: clocks and the rest of clippy.toml's list are allowed here.
#![allow(clippy::disallowed_methods)]
pub mod export;
pub mod tail;
