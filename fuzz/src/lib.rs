//! Support for klinegate's fuzz targets: the model shell and invariant checker
//! that `engine_ops` drives lives in the library (`klinegate::replay::sim`),
//! shared with `tests/simulation.rs`.
pub use klinegate::replay::sim as harness;
