//! Tools that drive the core from recorded or generated inputs.
//!
//! - [`journal`]: record/replay of the core's inputs as JSON lines
//!   (`journal_v2`: frame text embedded as JSON, the version written now).
//! - [`capture`]: recorded Binance captures → journals.
//! - [`gen`]: synthetic journals (many streams, realistic cadence) for benches.
//! - [`exchange`]: the one sans-IO model of Binance every tool and test plays.
//! - [`sim`]: a model shell with invariant checks (the simulation and fuzz harness).
//! - [`hosted`]: carries store effects out on a store, as the shell's store host does.
//!
//! Owns: turning files into engine inputs and outputs into files. Never opens
//! a socket; a replay needs no network.
// Outside the deterministic core: clocks and the rest of clippy.toml's list are allowed here.
#![allow(clippy::disallowed_methods)]
pub mod capture;
pub mod gen;
pub mod hosted;
pub mod exchange;
pub mod journal;
mod journal_v2;
mod json_check;
pub mod sim;
