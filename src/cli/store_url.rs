//! `--store-url`: which store `klinegate run` uses. `sqlite:PATH` (the
//! default is `sqlite:./klinegate.db`; `--db PATH` is its shorthand) or
//! `postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]`.
//!
//! Owns the grammar of the setting only; never opens a store, never resolves
//! or connects to a host.

use crate::store::postgres::{parse_pg_url, PgConfig};
use std::path::PathBuf;

/// The store backend `klinegate run` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// The SQLite file is `RunConfig::db`.
    Sqlite,
    Postgres(PgConfig),
}

/// What a store URL names.
#[derive(Debug, PartialEq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(PgConfig),
}

pub const FORMS: &str = "sqlite:PATH or postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]";

pub fn parse_store_url(text: &str) -> Result<StoreUrl, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(format!("'{text}' names no file; expected {FORMS}"));
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return parse_pg_url(text).map(StoreUrl::Postgres);
    }
    Err(format!("unknown store URL '{text}'; expected {FORMS}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_postgres_urls_parse_and_others_are_refused() {
        assert_eq!(parse_store_url("sqlite:./k.db"), Ok(StoreUrl::Sqlite(PathBuf::from("./k.db"))));
        assert_eq!(parse_store_url("sqlite:///tmp/k.db"), Ok(StoreUrl::Sqlite(PathBuf::from("/tmp/k.db"))));
        let Ok(StoreUrl::Postgres(c)) = parse_store_url("postgres://u:p@127.0.0.1:5433/db?schema=kg") else {
            panic!("postgres URL refused")
        };
        assert_eq!((c.host.as_str(), c.port, c.database.as_str(), c.schema.as_str()), ("127.0.0.1", 5433, "db", "kg"));
        assert!(parse_store_url("sqlite:").unwrap_err().contains("names no file"));
        assert!(parse_store_url("mysql://x").unwrap_err().contains("expected sqlite:PATH or postgres://"));
        assert!(parse_store_url("postgres://u@h:1/db?schema=bad-name").is_err());
    }
}
