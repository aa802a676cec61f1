//! Supervisor of ingest jobs (being written).
