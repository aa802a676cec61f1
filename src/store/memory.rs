//! In-memory store (being written).
pub struct MemoryStore;
