//! The deterministic core (being written).
pub mod guardrail;
pub mod supervisor;
pub mod derived;
