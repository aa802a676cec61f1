//! The answer to one HTTP/1.1 request, read incrementally from the bytes of the
//! connection: status, headers and the body after transfer decoding
//! (`Content-Length`, `Transfer-Encoding: chunked`, or until EOF), interim 1xx
//! answers skipped. The head's grammar is `httparse`'s; this module owns the
//! size limits, the framing rules and the failure wording on top of it.
//!
//! Pure: bytes in, a [`Received`] or a reason out. It never touches a socket or
//! a clock, never interprets the body (text, JSON, rate-limit headers belong to
//! the caller, `shell::conn::rest`) and never panics on what a server sends.

/// A chunk-size line (size plus extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Header fields beyond this many fail the response.
const MAX_HEADERS: usize = 100;

/// Size limits of one response; exceeding one fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Status line plus headers (and, for chunked bodies, the trailers). Default 64 KiB.
    pub max_head_bytes: usize,
    /// The body after transfer decoding. Default 8 MiB: 1500 klines are about 250 KB, a
    /// per-symbol `exchangeInfo` a few KB (the full spot `exchangeInfo` is larger: ask for
    /// it with `symbols=` or raise the limit).
    pub max_body_bytes: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits { max_head_bytes: 64 * 1024, max_body_bytes: 8 * 1024 * 1024 }
    }
}

/// A complete response, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub status: u16,
    /// Header names lowercased, values trimmed; order and repeats kept.
    pub headers: Vec<(String, String)>,
    /// The body after transfer decoding, as bytes.
    pub body: Vec<u8>,
    /// The connection may carry another request (HTTP/1.1 keep-alive): the answer is
    /// HTTP/1.1 without `Connection: close`, its body framed by `Content-Length` or
    /// chunks (not until EOF), and nothing arrived after it.
    pub reusable: bool,
}

/// An incremental HTTP/1.1 response parser: feed it the bytes as they arrive, in any
/// pieces; it answers the outcome once the response is complete.
pub struct ResponseReader {
    limits: ResponseLimits,
    state: ReaderState,
}

enum ReaderState {
    /// Bytes of the head so far (interim 1xx responses are dropped from the front).
    Head(Vec<u8>),
    Body(BodyState),
    /// The outcome was returned; later bytes are ignored.
    Done,
}

struct BodyState {
    head: ResponseHead,
    framing: Framing,
    body: Vec<u8>,
    /// Bytes arrived after the end of the body (the connection is not reused then).
    surplus: bool,
}

struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    /// HTTP/1.1 (not 1.0) and no `Connection: close`.
    keep_alive: bool,
}

/// How the end of the body is found.
enum Framing {
    /// `Content-Length` (or a status that has no body): this many bytes are still due.
    Length {
        remaining: usize,
        total: usize,
    },
    Chunked(ChunkedDecoder),
    /// Neither: the body ends when the server closes the connection.
    UntilEof,
}

impl ResponseReader {
    pub fn new(limits: ResponseLimits) -> ResponseReader {
        ResponseReader {
            limits,
            state: ReaderState::Head(Vec::new()),
        }
    }

    /// Takes the next bytes of the connection. `Ok(Some)` once the response is complete;
    /// `Err` is the failure reason.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Received>, String> {
        match &mut self.state {
            ReaderState::Head(buf) => {
                buf.extend_from_slice(bytes);
                let buf = std::mem::take(buf);
                self.parse_head_from(buf)
            }
            ReaderState::Body(body) => {
                let left = body.framing.feed(bytes, &mut body.body, &self.limits)?;
                body.surplus |= left > 0;
                Ok(self.outcome_if_complete())
            }
            ReaderState::Done => Ok(None),
        }
    }

    /// The server closed the connection: complete only for an until-EOF body.
    pub fn finish_at_eof(&mut self) -> Result<Received, String> {
        match std::mem::replace(&mut self.state, ReaderState::Done) {
            ReaderState::Head(buf) if buf.is_empty() => {
                Err("the server closed the connection without answering".into())
            }
            ReaderState::Head(_) => {
                Err("the server closed the connection in the middle of the response head".into())
            }
            ReaderState::Body(body) => match body.framing {
                Framing::UntilEof => Ok(received(body.head, body.body, false)),
                Framing::Length { remaining, total } => Err(format!(
                    "the server closed the connection after {} of {total} body bytes (HTTP {})",
                    total - remaining,
                    body.head.status
                )),
                Framing::Chunked(_) => Err(format!(
                    "the server closed the connection in the middle of a chunked body (HTTP {})",
                    body.head.status
                )),
            },
            ReaderState::Done => Err("response already complete".into()),
        }
    }

    /// Parses the head once it is complete in `buf`, skipping interim (1xx) responses, and
    /// hands the bytes after it to the body.
    fn parse_head_from(&mut self, mut buf: Vec<u8>) -> Result<Option<Received>, String> {
        loop {
            let Some((head, head_len)) = parse_head(&buf, &self.limits)? else {
                self.state = ReaderState::Head(buf);
                return Ok(None);
            };
            if (100..200).contains(&head.status) {
                buf.drain(..head_len);
                continue;
            }
            let framing = Framing::for_head(&head, &self.limits)?;
            let mut body = Vec::new();
            if let Framing::Length { total, .. } = framing {
                body.reserve_exact(total);
            }
            self.state = ReaderState::Body(BodyState { head, framing, body, surplus: false });
            return self.feed(&buf[head_len..]);
        }
    }

    fn outcome_if_complete(&mut self) -> Option<Received> {
        let ReaderState::Body(body) = &self.state else {
            return None;
        };
        if !body.framing.is_complete() {
            return None;
        }
        let ReaderState::Body(body) = std::mem::replace(&mut self.state, ReaderState::Done) else {
            return None;
        };
        let reusable = !body.surplus;
        Some(received(body.head, body.body, reusable))
    }
}

/// `framed`: the body ended by its own framing with nothing after it.
fn received(head: ResponseHead, body: Vec<u8>, framed: bool) -> Received {
    let reusable = framed && head.keep_alive;
    Received { status: head.status, headers: head.headers, body, reusable }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The head at the front of `buf` and its length (through the empty line), once
/// complete. The grammar is httparse's; the limits and the wording are ours.
fn parse_head(buf: &[u8], limits: &ResponseLimits) -> Result<Option<(ResponseHead, usize)>, String> {
    let too_large = || format!("response head larger than {} bytes", limits.max_head_bytes);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_head_bytes => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e, buf)),
    };
    let status = response.code.filter(|code| (100..600).contains(code));
    let Some(status) = status else { return Err(refusal(httparse::Error::Status, buf)) };
    let mut headers = Vec::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| "response head is not valid UTF-8".to_string())?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let close = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"));
    let keep_alive = response.version == Some(1) && !close;
    Ok(Some((ResponseHead { status, headers, keep_alive }, len)))
}

fn refusal(e: httparse::Error, buf: &[u8]) -> String {
    use httparse::Error as E;
    match e {
        E::Version | E::Status => {
            let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            format!("malformed status line {line:?} (expected 'HTTP/1.1 200 OK')")
        }
        E::TooManyHeaders => format!("response has more than {MAX_HEADERS} header fields"),
        E::HeaderName | E::HeaderValue | E::NewLine | E::Token => format!("malformed response header line ({e})"),
    }
}

impl Framing {
    /// RFC 9112 §6.3: no body for 1xx/204/304; then Transfer-Encoding; then Content-Length;
    /// else until EOF. We asked for `Accept-Encoding: identity`, so a compressed body is an
    /// error rather than bytes we cannot read.
    fn for_head(head: &ResponseHead, limits: &ResponseLimits) -> Result<Framing, String> {
        if head.status == 204 || head.status == 304 {
            return Ok(Framing::Length {
                remaining: 0,
                total: 0,
            });
        }
        if let Some(coding) = header(&head.headers, "content-encoding") {
            if !coding.eq_ignore_ascii_case("identity") {
                return Err(format!(
                    "response has Content-Encoding {coding:?} although we asked for identity"
                ));
            }
        }
        let transfer_codings: Vec<&str> = head
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect();
        if let [only] = transfer_codings.as_slice() {
            if only.eq_ignore_ascii_case("chunked") {
                return Ok(Framing::Chunked(ChunkedDecoder::default()));
            }
        }
        if !transfer_codings.is_empty() {
            return Err(format!(
                "unsupported Transfer-Encoding {:?} (only chunked is understood)",
                transfer_codings.join(", ")
            ));
        }
        match content_length(&head.headers)? {
            Some(total) if total > limits.max_body_bytes => Err(body_too_large(limits)),
            Some(total) => Ok(Framing::Length {
                remaining: total,
                total,
            }),
            None => Ok(Framing::UntilEof),
        }
    }

    /// Decodes `input` into `body`. Bytes after the end of the body are ignored;
    /// returns how many there were.
    fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &ResponseLimits,
    ) -> Result<usize, String> {
        match self {
            Framing::Length { remaining, .. } => {
                let take = input.len().min(*remaining);
                body.extend_from_slice(&input[..take]);
                *remaining -= take;
                Ok(input.len() - take)
            }
            Framing::Chunked(decoder) => decoder.feed(input, body, limits),
            Framing::UntilEof => {
                if body.len() + input.len() > limits.max_body_bytes {
                    return Err(body_too_large(limits));
                }
                body.extend_from_slice(input);
                Ok(0)
            }
        }
    }

    fn is_complete(&self) -> bool {
        match self {
            Framing::Length { remaining, .. } => *remaining == 0,
            Framing::Chunked(decoder) => decoder.phase == ChunkPhase::Done,
            Framing::UntilEof => false,
        }
    }
}

/// Every `Content-Length` value (a list like `5, 5` included) must agree.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, String> {
    let mut length = None;
    let values = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','));
    for value in values.map(str::trim) {
        let parsed = value
            .parse::<usize>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
        match (parsed, length) {
            (None, _) => return Err(format!("invalid Content-Length {value:?}")),
            (Some(n), Some(seen)) if n != seen => {
                return Err("conflicting Content-Length values".into())
            }
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length)
}

fn body_too_large(limits: &ResponseLimits) -> String {
    format!(
        "response body larger than the {}-byte limit",
        limits.max_body_bytes
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkPhase {
    /// Expecting a chunk-size line (`1a2b;ext=1`).
    #[default]
    Size,
    /// Inside chunk data: this many bytes are still due.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1).
#[derive(Default)]
struct ChunkedDecoder {
    phase: ChunkPhase,
    /// The current line, when it spans more than one `feed`.
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    fn feed(
        &mut self,
        mut input: &[u8],
        body: &mut Vec<u8>,
        limits: &ResponseLimits,
    ) -> Result<usize, String> {
        while !input.is_empty() && self.phase != ChunkPhase::Done {
            if let ChunkPhase::Data(remaining) = self.phase {
                let take = input.len().min(remaining);
                body.extend_from_slice(&input[..take]);
                input = &input[take..];
                self.phase = match remaining - take {
                    0 => ChunkPhase::DataEnd,
                    left => ChunkPhase::Data(left),
                };
                continue;
            }
            let Some(line) = self.take_line(&mut input)? else {
                break;
            };
            self.phase = self.after_line(&line, body.len(), limits)?;
        }
        // Unread only when the body ended before the input did.
        Ok(input.len())
    }

    /// Moves bytes up to the next LF into the line buffer; the whole line (without CRLF)
    /// once its LF has arrived.
    fn take_line(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, String> {
        let end = input.iter().position(|&b| b == b'\n');
        let (part, rest) = input.split_at(end.map_or(input.len(), |i| i + 1));
        self.line.extend_from_slice(part);
        *input = rest;
        if self.line.len() > MAX_CHUNK_LINE {
            return Err(format!(
                "chunked body: line longer than {MAX_CHUNK_LINE} bytes"
            ));
        }
        if end.is_none() {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(line))
    }

    fn after_line(
        &mut self,
        line: &[u8],
        body_len: usize,
        limits: &ResponseLimits,
    ) -> Result<ChunkPhase, String> {
        match self.phase {
            ChunkPhase::Size => match parse_chunk_size(line)? {
                0 => Ok(ChunkPhase::Trailer),
                size if size > limits.max_body_bytes.saturating_sub(body_len) => {
                    Err(body_too_large(limits))
                }
                size => Ok(ChunkPhase::Data(size)),
            },
            ChunkPhase::DataEnd if line.is_empty() => Ok(ChunkPhase::Size),
            ChunkPhase::DataEnd => Err("chunked body: chunk data longer than its size".into()),
            ChunkPhase::Trailer if line.is_empty() => Ok(ChunkPhase::Done),
            ChunkPhase::Trailer => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > limits.max_head_bytes {
                    return Err(format!(
                        "chunked body: trailers larger than {} bytes",
                        limits.max_head_bytes
                    ));
                }
                Ok(ChunkPhase::Trailer)
            }
            phase @ (ChunkPhase::Data(_) | ChunkPhase::Done) => Ok(phase),
        }
    }
}

/// `1a2b` or `1a2b;name=value` → 0x1a2b.
fn parse_chunk_size(line: &[u8]) -> Result<usize, String> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = size.trim_ascii();
    let parsed = std::str::from_utf8(size)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| usize::from_str_radix(s, 16).ok());
    parsed.ok_or_else(|| {
        format!(
            "chunked body: bad chunk size line {:?}",
            String::from_utf8_lossy(line)
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `pieces` in order, then EOF if the response is not complete by then.
    fn parse_pieces(pieces: &[&[u8]], limits: ResponseLimits) -> Result<Received, String> {
        let mut reader = ResponseReader::new(limits);
        for piece in pieces {
            if let Some(received) = reader.feed(piece)? {
                return Ok(received);
            }
        }
        reader.finish_at_eof()
    }

    fn parse(raw: &[u8]) -> Result<Received, String> {
        parse_pieces(&[raw], ResponseLimits::default())
    }

    fn status_and_body(outcome: &Result<Received, String>) -> (u16, &str) {
        match outcome {
            Ok(r) => (r.status, std::str::from_utf8(&r.body).expect("a UTF-8 body in these tests")),
            Err(reason) => panic!("expected a response, got: {reason}"),
        }
    }

    fn failure(outcome: &Result<Received, String>) -> &str {
        match outcome {
            Err(reason) => reason,
            Ok(other) => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn headers_are_lowercased_trimmed_and_kept_in_order() {
        let raw = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n\
                    Retry-After:  7 \r\nX-MBX-USED-WEIGHT-1M: 6042\r\nContent-Length: 2\r\n\r\n{}";
        let r = parse(raw).unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers[0], ("content-type".into(), "application/json".into()));
        assert_eq!(r.headers[1], ("retry-after".into(), "7".into()));
        assert_eq!(r.headers[2], ("x-mbx-used-weight-1m".into(), "6042".into()));
    }

    #[test]
    fn status_codes_outside_100_to_599_are_malformed() {
        assert!(failure(&parse(b"HTTP/1.1 099 X\r\n\r\n")).contains("malformed status line"));
        assert!(failure(&parse(b"HTTP/1.1 600 X\r\n\r\n")).contains("malformed status line"));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(failure(&parse(raw.as_bytes())).contains("more than 100 header fields"));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;name=value\r\n[1,2,\r\nA\r\n3,4,5,6,7]\r\n0\r\nX-Trailer: yes\r\n\r\n";
        assert_eq!(status_and_body(&parse(raw)), (200, "[1,2,3,4,5,6,7]"));
    }

    #[test]
    fn body_until_eof_completes_only_at_eof() {
        let mut reader = ResponseReader::new(ResponseLimits::default());
        let fed = reader.feed(b"HTTP/1.0 200 OK\r\n\r\n[1,2]").unwrap();
        assert!(fed.is_none());
        assert_eq!(reader.feed(b",[3]").unwrap(), None);
        let outcome = reader.finish_at_eof();
        assert_eq!(status_and_body(&outcome), (200, "[1,2],[3]"));
    }

    #[test]
    fn interim_responses_are_skipped_and_204_has_no_body() {
        let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n\
                    HTTP/1.1 204 No Content\r\nX-MBX-USED-WEIGHT-1M: 3\r\n\r\n";
        let outcome = parse_pieces(&[raw], ResponseLimits::default());
        assert_eq!(status_and_body(&outcome), (204, ""));
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let raw = b"HTTP/1.1 200 OK\nContent-Length: 2\n\n[]";
        assert_eq!(status_and_body(&parse(raw)), (200, "[]"));
    }

    #[test]
    fn bytes_after_the_body_are_ignored() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]garbage";
        assert_eq!(status_and_body(&parse(raw)), (200, "[]"));
    }

    #[test]
    fn malformed_or_incomplete_responses_fail_with_a_reason() {
        let small = ResponseLimits {
            max_head_bytes: 256,
            max_body_bytes: 16,
        };
        let cases: [(&[u8], &str); 17] = [
            (b"", "without answering"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                "middle of the response head",
            ),
            (b"HTTP/2 200\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 200OK\r\n\r\n", "malformed status line"),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                "malformed response header",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[1]",
                "after 3 of 5 body bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
                "Content-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: \xff\xfe\r\n\r\n",
                "head is not valid UTF-8",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                "longer than its size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "middle of a chunked body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n",
                "16-byte limit",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n",
                "16-byte limit",
            ),
        ];
        for (raw, needle) in cases {
            let outcome = parse_pieces(&[raw], small);
            let reason = failure(&outcome);
            assert!(
                reason.contains(needle),
                "{:?}: {reason}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn size_limits_hold_for_streamed_bodies_and_heads() {
        let small = ResponseLimits {
            max_head_bytes: 64,
            max_body_bytes: 16,
        };
        let eof_body = [
            b"HTTP/1.1 200 OK\r\n\r\n".as_slice(),
            &[b'x'; 10],
            &[b'x'; 10],
        ];
        assert!(failure(&parse_pieces(&eof_body, small)).contains("16-byte limit"));
        let chunks =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n9\r\n";
        assert!(failure(&parse_pieces(&[chunks], small)).contains("16-byte limit"));
        let long_head = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(100));
        assert!(failure(&parse_pieces(&[long_head.as_bytes()], small)).contains("head larger"));
        let long_size_line = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "e".repeat(5000)
        );
        assert!(failure(&parse(long_size_line.as_bytes())).contains("line longer"));
    }

    /// A response with `body` framed one of three ways (chunk sizes from `chunks`).
    pub(crate) fn frame(body: &str, framing: u8, chunks: &[usize]) -> Vec<u8> {
        let mut raw = b"HTTP/1.1 200 OK\r\nX-MBX-USED-WEIGHT-1M: 12\r\n".to_vec();
        match framing {
            0 => raw.extend(format!("Content-Length: {}\r\n\r\n{body}", body.len()).bytes()),
            1 => {
                raw.extend(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = body.as_bytes();
                for &size in chunks.iter().cycle().take(body.len() + 1) {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
                    raw.extend(format!("{:x}\r\n", chunk.len()).bytes());
                    raw.extend(chunk);
                    raw.extend(b"\r\n");
                    rest = tail;
                }
                raw.extend(b"0\r\n\r\n");
            }
            _ => raw.extend(format!("\r\n{body}").bytes()),
        }
        raw
    }

    #[test]
    fn a_framed_http11_answer_leaves_the_connection_reusable() {
        let ok = |raw: &[u8]| parse(raw).map(|r| r.reusable);
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"), Ok(true));
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"), Ok(true));
        assert_eq!(ok(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(true));
        assert_eq!(ok(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n"), Ok(true));
    }

    #[test]
    fn close_http10_until_eof_or_surplus_bytes_end_the_connection() {
        let ok = |raw: &[u8]| parse(raw).map(|r| r.reusable);
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]"), Ok(false));
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\n[]"), Ok(false));
        assert_eq!(ok(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]"), Ok(false));
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\n\r\n[]"), Ok(false), "until EOF");
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]HTTP/1.1"), Ok(false), "surplus");
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\nX"),
            Ok(false),
            "surplus after chunks"
        );
        // Surplus in a later piece than the end of the body is never seen: the
        // answer is out as soon as the body ends, before it arrives.
        let pieces: [&[u8]; 2] = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[", b"]X"];
        assert_eq!(parse_pieces(&pieces, ResponseLimits::default()).map(|r| r.reusable), Ok(false));
    }

    proptest! {
        #[test]
        fn any_split_of_a_response_parses_like_the_whole(
            body in "[ -~é]{0,300}",
            framing in 0u8..3,
            chunks in prop::collection::vec(1usize..40, 1..8),
            cuts in prop::collection::vec(0usize..2000, 0..12),
        ) {
            let raw = frame(&body, framing, &chunks);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (raw.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([raw.len()]) {
                pieces.push(&raw[start..cut]);
                start = cut;
            }
            let outcome = parse_pieces(&pieces, ResponseLimits::default());
            prop_assert_eq!(status_and_body(&outcome), (200, body.as_str()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&raw);
        }
    }
}
