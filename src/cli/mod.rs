//! Settings as a user gives them.
//!
//! - [`settings`]: the engine's settings as plain values (what a journal header
//!   records), validated into an `EngineConfig`.
//! - [`run_config`]: the `run` command's flags, environment and TOML file,
//!   layered (flag > environment > file > default) into a `RunConfig`; the flags
//!   are declared in [`run_args`] and the layering is [`layers`].
//! - [`store_url`]: `--store-url` (SQLite or PostgreSQL).
//!
//! Owns: parsing and validating configuration. The engine never reads it
//! directly; the shell and tools hand the resulting values in.
// Outside the deterministic core: clocks and the rest of clippy.toml's list are allowed here.
#![allow(clippy::disallowed_methods)]
pub mod layers;
pub mod run_args;
pub mod run_config;
pub mod settings;
pub mod store_url;
