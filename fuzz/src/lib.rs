//! Support for klinegate's fuzz targets: the model shell and invariant checker
//! ([`harness`]) that `engine_ops` drives and `tests/simulation.rs` shares.
pub mod harness;
