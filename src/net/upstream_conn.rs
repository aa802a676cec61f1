//! Upstream connection (being written).
