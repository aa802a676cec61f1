//! Tools that drive the core from recorded or generated inputs.
//!
//! - [`journal`]: record/replay of the core's inputs as JSON lines.
//! - [`capture`]: recorded Binance captures → journals.
//! - [`gen`]: synthetic journals (many streams, realistic cadence) for benches.
//!
//! Owns: turning files into engine inputs and outputs into files. Never opens
//! a socket; a replay needs no network.
pub mod capture;
pub mod gen;
pub mod journal;
