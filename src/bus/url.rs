//! `--bus-url redis://HOST:PORT[/DB]` parsed into a [`RedisConfig`], with an
//! error that says what is wrong and shows the form.
//!
//! Owns the grammar only: never resolves the host, never connects.

use crate::store::postgres::url::split_host_port;
use std::fmt;

pub const DEFAULT_PORT: u16 = 6379;
const FORM: &str = "redis://HOST:PORT[/DB]";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// A name or an address literal (IPv6 without brackets); resolved by the shell.
    pub host: String,
    pub port: u16,
    /// The logical database (`SELECT`), 0 by default.
    pub db: u32,
}

impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "redis://{}:{}/{}", host, self.port, self.db)
    }
}

pub fn parse_redis_url(url: &str) -> Result<RedisConfig, String> {
    let bad = |why: &str| format!("invalid Redis URL: {why} (expected {FORM})");
    let rest = url.strip_prefix("redis://").ok_or_else(|| bad("it must start with redis://"))?;
    if rest.contains('@') {
        return Err(bad("credentials are not supported"));
    }
    if rest.contains('?') {
        return Err(bad("query parameters are not supported"));
    }
    let (hostport, db) = match rest.split_once('/') {
        Some((h, "")) => (h, 0),
        Some((h, d)) => (h, d.parse::<u32>().map_err(|_| bad(&format!("database {d:?} is not a number")))?),
        None => (rest, 0),
    };
    let (host, port) = split_host_port(hostport, DEFAULT_PORT).map_err(|e| bad(&e))?;
    Ok(RedisConfig { host, port, db })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let c = parse_redis_url("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("127.0.0.1", 6380, 2));
        let c = parse_redis_url("redis://localhost").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("localhost", 6379, 0));
        let c = parse_redis_url("redis://[::1]/").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db), ("::1", 6379, 0));
        let c = parse_redis_url("redis://[::1]:7000").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
        assert_eq!(c.to_string(), "redis://[::1]:7000/0");
    }

    #[test]
    fn clear_errors() {
        for (url, needle) in [
            ("postgres://x", "must start with redis://"),
            ("redis://h:6379/x", "database \"x\""),
            ("redis://h:0", "port \"0\""),
            ("redis://user:pw@h:6379", "credentials"),
            ("redis://:6379", "host is empty"),
        ] {
            let e = parse_redis_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.contains(FORM), "{url}: {e}");
        }
    }
}
