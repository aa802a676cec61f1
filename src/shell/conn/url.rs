//! The URLs we connect to: `ws://` / `wss://` exchange streams and the `http://` /
//! `https://` REST bases, parsed into scheme, host, port and path (IPv6 literals in
//! brackets, default ports, no user info or fragment).
//!
//! Owns: URL text to parts and back. Never resolves a host or opens a socket.

/// A parsed `ws://` or `wss://` URL (also used for the `http://` / `https://` base URLs of
/// [`crate::shell::conn::rest`]: same parts, same default ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `true` for `wss://` (or `https://`): TLS.
    pub secure: bool,
    /// Host name or IP literal, without the brackets of an IPv6 literal.
    pub host: String,
    /// Explicit port, or 80 / 443 by scheme.
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl WsUrl {
    /// `host[:port]` as it goes into the `Host` header (port omitted when it is the default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.secure { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub(crate) fn to_url_string(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Parses `ws://host[:port][/path][?query]` or the `wss://` form. IPv6 literals go in
/// brackets (`ws://[::1]:9000/stream`). User info and fragments are rejected.
pub fn parse_ws_url(url: &str) -> Result<WsUrl, String> {
    parse_url_with_schemes(url, "ws://", "wss://")
}

/// [`parse_ws_url`] with other scheme prefixes (`"http://"`, `"https://"`): the part after
/// the scheme has the same grammar and the same rules.
pub(crate) fn parse_url_with_schemes(
    url: &str,
    plain_scheme: &str,
    secure_scheme: &str,
) -> Result<WsUrl, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix(secure_scheme) {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix(plain_scheme) {
        (false, rest)
    } else {
        return Err(format!(
            "URL {url:?}: must start with {plain_scheme} or {secure_scheme}"
        ));
    };
    if url.contains('#') {
        return Err(format!("URL {url:?}: fragments (#...) are not allowed"));
    }
    let split_at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split_at);
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    if authority.contains('@') {
        return Err(format!(
            "URL {url:?}: user info (user@host) is not supported"
        ));
    }
    let (host, port) = split_host_port(authority).map_err(|e| format!("URL {url:?}: {e}"))?;
    let port = port.unwrap_or(if secure { 443 } else { 80 });
    Ok(WsUrl {
        secure,
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or("IPv6 literal is missing its closing ']'")?;
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let after = &rest[end + 1..];
        let port_text = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the IPv6 literal")),
        };
        (host, port_text)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if !authority.starts_with('[') && host.contains(':') {
        return Err("IPv6 literals must be written in brackets, e.g. [::1]".to_owned());
    }
    let port = match port_text {
        None => None,
        Some(text) => Some(parse_port(text)?),
    };
    Ok((host.to_owned(), port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {text:?} is not a number from 1 to 65535")),
    }
}
