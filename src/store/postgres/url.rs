//! `--store-url postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]` parsed into
//! a [`PgConfig`], with an error that says what is wrong and shows the form.
//!
//! Owns the grammar only: it never resolves the host, never connects, and
//! never prints the password (`Debug` hides it).

use std::fmt;

pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_SCHEMA: &str = "public";
const FORM: &str = "postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]";

#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    pub user: String,
    pub password: Option<String>,
    /// A name or an address literal (IPv6 without brackets); resolved by the shell.
    pub host: String,
    pub port: u16,
    pub database: String,
    /// Checked by [`check_schema_name`].
    pub schema: String,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .finish()
    }
}

impl fmt::Display for PgConfig {
    /// The URL without its password, for logs and `/health`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "postgres://{}@{}:{}/{}?schema={}", self.user, host, self.port, self.database, self.schema)
    }
}

/// The reference's rule for its schema name (`postgres_schema.py`):
/// `^[A-Za-z_][A-Za-z0-9_]*$`. The name is spliced into SQL unquoted, as the
/// reference does, so the same name reaches the same (case-folded) schema.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("invalid schema name {name:?}: it must match ^[A-Za-z_][A-Za-z0-9_]*$"))
    }
}

/// Parses a store URL. `postgresql://` is accepted as a synonym; the port
/// defaults to 5432 and the schema to `public`.
pub fn parse_pg_url(url: &str) -> Result<PgConfig, String> {
    let bad = |why: &str| format!("invalid PostgreSQL URL: {why} (expected {FORM})");
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("it must start with postgres://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("the database name is missing"))?;
    let database = percent_decode(path).map_err(|e| bad(&e))?;
    if database.is_empty() || database.contains('/') {
        return Err(bad("the database name is missing or contains '/'"));
    }
    let (userinfo, hostport) = authority.rsplit_once('@').ok_or_else(|| bad("the user is missing"))?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(percent_decode(p).map_err(|e| bad(&e))?)),
        None => (userinfo, None),
    };
    let user = percent_decode(user).map_err(|e| bad(&e))?;
    if user.is_empty() {
        return Err(bad("the user is empty"));
    }
    let (host, port) = split_host_port(hostport, DEFAULT_PORT).map_err(|e| bad(&e))?;
    let mut schema = DEFAULT_SCHEMA.to_string();
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", v)) => schema = percent_decode(v).map_err(|e| bad(&e))?,
            _ => return Err(bad(&format!("unknown parameter {pair:?} (only schema=NAME is understood)"))),
        }
    }
    check_schema_name(&schema).map_err(|e| bad(&e))?;
    Ok(PgConfig { user, password, host, port, database, schema })
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`, `default_port` when no port is given;
/// shared with the Redis URL.
pub fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("an IPv6 host needs its closing ']'")?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("a '%' must be followed by two hex digits")?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes must decode to UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_form() {
        let c = parse_pg_url("postgres://kg:p%40ss@db.local:6543/candles?schema=trade_canvas").unwrap();
        assert_eq!(c.user, "kg");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!((c.host.as_str(), c.port), ("db.local", 6543));
        assert_eq!(c.database, "candles");
        assert_eq!(c.schema, "trade_canvas");
        assert!(!format!("{c:?}").contains("p@ss"));
        assert_eq!(c.to_string(), "postgres://kg@db.local:6543/candles?schema=trade_canvas");
    }

    #[test]
    fn defaults_and_ipv6() {
        let c = parse_pg_url("postgresql://root@[::1]/test").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.schema.as_str()), ("::1", 5432, "public"));
        assert_eq!(c.password, None);
    }

    #[test]
    fn clear_errors() {
        for (url, needle) in [
            ("sqlite:x.db", "must start with postgres://"),
            ("postgres://root@127.0.0.1:5432", "database name is missing"),
            ("postgres://127.0.0.1:5432/db", "user is missing"),
            ("postgres://root@127.0.0.1:99999/db", "port \"99999\""),
            ("postgres://root@127.0.0.1:5432/db?schema=1bad", "invalid schema name"),
            ("postgres://root@127.0.0.1:5432/db?schema=a;drop", "invalid schema name"),
            ("postgres://root@127.0.0.1:5432/db?sslmode=require", "unknown parameter"),
            ("postgres://root@:5432/db", "host is empty"),
        ] {
            let e = parse_pg_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.contains(FORM), "{url}: {e}");
        }
    }
}
