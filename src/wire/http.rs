//! HTTP/1.x on the shared client port, as pure functions over bytes: parse one
//! request from the front of a buffer ([`parse_request`]) and serialize a
//! [`Response`]. The head's grammar is `httparse`'s; this module owns what is
//! klinegate's on top of it: the size limits and the status each refusal gets,
//! body framing, keep-alive rules and the target's query. It never touches a
//! socket or a clock (so responses carry no `Date`) and never panics on what a
//! client sends. [`response`] reads the answers of the exchange's REST API.
//!
//! Deliberate limits: bodies are `Content-Length` only (any `Transfer-Encoding`
//! is refused with 501); no obs-fold header continuation; header values must
//! be UTF-8; empty lines before the request line are skipped; `Host` is not
//! required (tools that write raw requests by hand are common on loopback).
//! The request target's path is kept as sent (not percent-decoded); the query
//! is decoded into pairs.

pub mod response;

use std::fmt::Write as _;

/// Bounds on what one request may occupy in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line plus headers plus the blank line.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_head_bytes: 16 << 10, max_body_bytes: 1 << 20 }
    }
}

/// Headers beyond this count are refused with 431 like an oversized head.
const MAX_HEADERS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path part of the target, as sent (no query, not decoded).
    pub path: String,
    /// Query pairs in order; percent-decoded, `+` read as a space.
    pub query: Vec<(String, String)>,
    /// Header names lowercased; values trimmed; order and repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header lists `token` in its comma-separated value
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| has_token(v, token))
    }

    /// The first value of query parameter `name` (exact match).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A request the parser refuses; `status` is what to answer before closing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into() }
    }

    /// `{"detail": message}` with this status. The caller should close the
    /// connection after writing it: the byte stream is no longer in sync.
    pub fn to_response(&self) -> Response {
        Response::error(self.status, &self.message)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse {
    /// One request; `consumed` bytes of the buffer belong to it (the rest may
    /// be the next pipelined request, or WebSocket frames after an upgrade).
    Complete { request: Request, consumed: usize },
    /// Call again when more bytes have arrived.
    Incomplete,
    Error(HttpError),
}

/// The parsed head, before the body is known to be complete.
struct Head {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    /// Bytes up to and including the blank line.
    len: usize,
}

/// Parses the request at the front of `buf`. Incremental: with fewer bytes
/// than a whole request it answers `Incomplete`, and the same call with more
/// bytes gives the same result a single full buffer would.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Parse {
    let head = match parse_head(buf, limits) {
        Ok(Some(head)) => head,
        Ok(None) => return Parse::Incomplete,
        Err(e) => return Parse::Error(e),
    };
    let body_len = match body_length(&head.headers, limits) {
        Ok(n) => n,
        Err(e) => return Parse::Error(e),
    };
    let end = head.len + body_len;
    if buf.len() < end {
        return Parse::Incomplete;
    }
    let (path, query) = match split_target(&head.target) {
        Ok(parts) => parts,
        Err(e) => return Parse::Error(e),
    };
    let keep_alive = keep_alive(head.minor_version, &head.headers);
    let request = Request {
        method: head.method,
        path,
        query,
        headers: head.headers,
        body: buf[head.len..end].to_vec(),
        keep_alive,
    };
    Parse::Complete { request, consumed: end }
}

/// True when the head at the front of `buf` is complete, asks for
/// `Expect: 100-continue`, and its body has not fully arrived: the shell
/// should then write `HTTP/1.1 100 Continue\r\n\r\n` once (curl waits a
/// second for it before sending bodies over 1 KiB).
pub fn wants_continue(buf: &[u8], limits: &HttpLimits) -> bool {
    let Ok(Some(head)) = parse_head(buf, limits) else { return false };
    let expects = head.headers.iter().any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"));
    let Ok(body_len) = body_length(&head.headers, limits) else { return false };
    expects && head.minor_version >= 1 && buf.len() < head.len + body_len
}

fn parse_head(buf: &[u8], limits: &HttpLimits) -> Result<Option<Head>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => return Err(head_too_large(limits)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e, buf)),
    };
    if len > limits.max_head_bytes {
        return Err(head_too_large(limits));
    }
    // httparse has checked the grammar; what it lets through and we do not is
    // non-ASCII in the target and non-UTF-8 (obs-text) in header values.
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Ok(None);
    };
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::new(400, "malformed request target"));
    }
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| HttpError::new(400, "request head is not valid UTF-8"))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Some(Head { method: method.to_string(), target: target.to_string(), minor_version, headers, len }))
}

fn head_too_large(limits: &HttpLimits) -> HttpError {
    HttpError::new(431, format!("request head larger than {} bytes", limits.max_head_bytes))
}

/// The answer to a head httparse refused. A version error is 505 when the
/// request line names another HTTP version (`HTTP/2.0`), 400 otherwise.
fn refusal(e: httparse::Error, buf: &[u8]) -> HttpError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => HttpError::new(431, format!("too many header fields (max {MAX_HEADERS})")),
        E::Version => {
            let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default().trim_ascii_end();
            match std::str::from_utf8(version) {
                Ok(v) if v.starts_with("HTTP/") && v.len() > 5 => {
                    HttpError::new(505, format!("HTTP version {v} not supported (use HTTP/1.1)"))
                }
                _ => HttpError::new(400, "malformed request line (expected 'METHOD target HTTP/1.1')"),
            }
        }
        E::Token => HttpError::new(400, "malformed request line (expected 'METHOD target HTTP/1.1')"),
        E::HeaderName => {
            HttpError::new(400, "malformed header line (a bad name, no ':', or obsolete line folding)")
        }
        E::HeaderValue => HttpError::new(400, "control character in a header value"),
        E::NewLine | E::Status => HttpError::new(400, "malformed line end in the request head"),
    }
}

fn body_length(headers: &[(String, String)], limits: &HttpLimits) -> Result<usize, HttpError> {
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::new(
            501,
            "Transfer-Encoding (chunked) request bodies are not supported; send the body with Content-Length",
        ));
    }
    let mut length: Option<u64> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n == "content-length") {
        // A list like "5, 5" is allowed when every member agrees.
        for item in v.split(',').map(str::trim) {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::new(400, format!("invalid Content-Length {v:?}")));
            }
            let n = item.parse::<u64>().unwrap_or(u64::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::new(400, "conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    let n = length.unwrap_or(0);
    if n > limits.max_body_bytes as u64 {
        return Err(HttpError::new(413, format!("request body larger than {} bytes", limits.max_body_bytes)));
    }
    Ok(n as usize)
}

fn keep_alive(minor_version: u8, headers: &[(String, String)]) -> bool {
    let connection = headers.iter().filter(|(n, _)| n == "connection");
    let (mut close, mut keep) = (false, false);
    for (_, v) in connection {
        close |= has_token(v, "close");
        keep |= has_token(v, "keep-alive");
    }
    if close {
        false
    } else {
        minor_version >= 1 || keep
    }
}

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Splits the target into path and decoded query pairs. Accepts origin-form
/// (`/p?q`), absolute-form (`http://host/p?q`, as proxies send) and `*`.
fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), HttpError> {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let origin_form = if target.starts_with('/') || target == "*" {
        target
    } else if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        rest.find(['/', '?']).map_or("/", |i| &rest[i..])
    } else {
        return Err(HttpError::new(400, "request target must be a path starting with '/'"));
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_string(), parse_query(query)))
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte;
/// a malformed escape is kept literally; invalid UTF-8 becomes U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).and_then(hex_value), bytes.get(i + 2).and_then(hex_value)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

// ------------------------------------------------------------------ responses

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers, `Content-Type` among them. `Content-Length` and
    /// `Connection` are written by [`Response::write_to`], never stored here.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        // Serializing a Value cannot fail (its map keys are strings).
        let body = serde_json::to_vec(value).unwrap_or_default();
        Response::text(status, "application/json", body)
    }

    pub fn text(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    /// `{"detail": "..."}`, the FastAPI error shape the front end reads.
    pub fn error(status: u16, detail: &str) -> Response {
        Response::json(status, &serde_json::json!({ "detail": detail }))
    }

    /// A response with no body and no content type (204, 101-less replies).
    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Appends the serialized response. 1xx, 204 and 304 carry neither a body
    /// nor `Content-Length` (RFC 9110 §8.6).
    pub fn write_to(&self, out: &mut Vec<u8>, keep_alive: bool) {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let bodiless = self.status < 200 || self.status == 204 || self.status == 304;
        if !bodiless {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
        out.extend_from_slice(head.as_bytes());
        if !bodiless {
            out.extend_from_slice(&self.body);
        }
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lim() -> HttpLimits {
        HttpLimits::default()
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &lim()) {
            Parse::Complete { request, consumed } => (request, consumed),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn error_status(buf: &[u8], limits: &HttpLimits) -> u16 {
        match parse_request(buf, limits) {
            Parse::Error(e) => e.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_get_with_query_and_headers() {
        let raw = b"GET /api/market/candles?series_id=binance%3Afutures%3ABTC%2FUSDT%3A1m&limit=2&x=a+b HTTP/1.1\r\nHost: x\r\nX-Thing:  v  \r\n\r\n";
        let (req, used) = complete(raw);
        assert_eq!(used, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/api/market/candles");
        assert_eq!(req.query_param("series_id"), Some("binance:futures:BTC/USDT:1m"));
        assert_eq!(req.query_param("limit"), Some("2"));
        assert_eq!(req.query_param("x"), Some("a b"));
        assert_eq!(req.header("x-thing"), Some("v"));
        assert_eq!(req.header("HOST"), Some("x"));
        assert!(req.keep_alive);
        assert!(req.body.is_empty());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let ka = |raw: &[u8]| complete(raw).0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"));
    }

    #[test]
    fn body_by_content_length_and_pipelining() {
        let first = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let second = b"GET /b HTTP/1.1\r\n\r\n".to_vec();
        let buf = [first.clone(), second.clone()].concat();
        let (req, used) = complete(&buf);
        assert_eq!((req.path.as_str(), req.body.as_slice(), used), ("/a", &b"hello"[..], first.len()));
        let (req2, used2) = complete(&buf[used..]);
        assert_eq!((req2.path.as_str(), used2), ("/b", second.len()));
        assert_eq!(parse_request(&first[..first.len() - 1], &lim()), Parse::Incomplete);
    }

    #[test]
    fn bare_lf_lines_are_accepted() {
        let (req, used) = complete(b"GET /x?a=1 HTTP/1.1\nHost: h\n\nrest");
        assert_eq!((req.path.as_str(), req.header("host"), used), ("/x", Some("h"), 29));
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the
        // request line (a client's stray CRLF after a previous body).
        let (req, used) = complete(b"\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
        assert_eq!((req.path.as_str(), used), ("/health", 28));
    }

    #[test]
    fn non_ascii_targets_and_non_utf8_header_values_are_400() {
        assert_eq!(error_status("GET /caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes(), &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nA: caf\xe9\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n", &lim()), 400);
    }

    #[test]
    fn absolute_form_target_keeps_only_path_and_query() {
        let (req, _) = complete(b"GET http://example.com:80/health?a=1 HTTP/1.1\r\n\r\n");
        assert_eq!((req.path.as_str(), req.query_param("a")), ("/health", Some("1")));
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let small = HttpLimits { max_head_bytes: 64, max_body_bytes: 4 };
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &lim()), 501);
        assert_eq!(error_status(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", &small), 413);
        assert_eq!(error_status(&[b'a'; 65], &small), 431);
        let long_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(60));
        assert_eq!(error_status(long_head.as_bytes(), &small), 431);
        assert_eq!(error_status(b"GET /\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/2.0\r\n\r\n", &lim()), 505);
        assert_eq!(error_status(b"GET / FTP/1.0\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET nope HTTP/1.1\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &lim()), 400);
        assert_eq!(error_status(b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n", &lim()), 400);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(error_status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &lim()), 431);
    }

    #[test]
    fn agreeing_content_length_list_is_accepted() {
        let (req, _) = complete(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok");
        assert_eq!(req.body, b"ok");
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode("%E2%82%AC+x"), "\u{20ac} x");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(percent_decode("%+1"), "% 1");
    }

    #[test]
    fn expect_continue_is_reported_until_the_body_arrives() {
        let head = b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".to_vec();
        assert!(wants_continue(&head, &lim()));
        assert!(!wants_continue(&[head.clone(), b"abc".to_vec()].concat(), &lim()));
        assert!(!wants_continue(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n", &lim()));
    }

    #[test]
    fn response_serialization() {
        let mut out = Vec::new();
        Response::error(404, "not_found").write_to(&mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: keep-alive\r\n\r\n{\"detail\":\"not_found\"}"
        );
        let mut out = Vec::new();
        Response::empty(204).with_header("Vary", "Origin").write_to(&mut out, false);
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 204 No Content\r\nVary: Origin\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn parse_error_response_has_detail() {
        let e = HttpError::new(413, "too big");
        let r = e.to_response();
        assert_eq!((r.status, r.body.as_slice()), (413, &br#"{"detail":"too big"}"#[..]));
    }

    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "OPTIONS", "DELETE"]);
        let path = "/[a-z0-9/_.-]{0,20}";
        let query = prop::option::of("[a-z]{1,5}=[a-zA-Z0-9%+]{0,8}(&[a-z]{1,5}=[a-z0-9]{0,4}){0,3}");
        let headers = prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..6);
        let body = prop::collection::vec(any::<u8>(), 0..40);
        let version = prop::sample::select(vec!["HTTP/1.0", "HTTP/1.1"]);
        let lf_only = any::<bool>();
        (method, path, query, headers, body, version, lf_only).prop_map(|(m, p, q, hs, body, v, lf)| {
            let eol = if lf { "\n" } else { "\r\n" };
            let mut s = format!("{m} {p}{} {v}{eol}", q.map(|q| format!("?{q}")).unwrap_or_default());
            for (n, val) in hs {
                let n = n.to_ascii_lowercase();
                if n == "content-length" || n == "transfer-encoding" {
                    continue;
                }
                s.push_str(&format!("{n}: {}{eol}", val.trim()));
            }
            s.push_str(&format!("Content-Length: {}{eol}{eol}", body.len()));
            [s.into_bytes(), body].concat()
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..512)) {
            let small = HttpLimits { max_head_bytes: 128, max_body_bytes: 64 };
            let _ = parse_request(&buf, &small);
            let _ = parse_request(&buf, &lim());
            let _ = wants_continue(&buf, &lim());
        }

        #[test]
        fn never_panics_on_mangled_requests(
            req in valid_request(),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut buf = req;
            for (at, byte) in cuts {
                let i = at.index(buf.len());
                buf[i] = byte;
            }
            let _ = parse_request(&buf, &lim());
        }

        #[test]
        fn every_prefix_is_incomplete_and_the_whole_parses(req in valid_request(), trailing in prop::collection::vec(any::<u8>(), 0..16)) {
            let full = parse_request(&req, &lim());
            let Parse::Complete { consumed, .. } = &full else {
                return Err(TestCaseError::fail(format!("valid request refused: {full:?}")));
            };
            prop_assert_eq!(*consumed, req.len());
            for cut in 0..req.len() {
                prop_assert_eq!(parse_request(&req[..cut], &lim()), Parse::Incomplete);
            }
            // Bytes after the request (the next one, or WS frames) change nothing.
            let more = [req.clone(), trailing].concat();
            prop_assert_eq!(parse_request(&more, &lim()), full);
        }
    }
}
