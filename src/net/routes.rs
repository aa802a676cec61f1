//! Routes (being written).
