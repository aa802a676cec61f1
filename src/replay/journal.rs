//! Record and replay of the core's inputs as JSON lines.
//!
//! A journal is a header line followed by one line per step:
//! ```text
//! {"journal":"klinegate","version":2,"start_ns":…,"auto_timers":false,"settings":{…}}
//! {"now":…,"input":{"type":"client_connected","client":1}}
//! {"now":…,"input":{"type":"upstream_text","conn":1,"json":{"stream":…}}}
//! {"now":…,"timeout":true}
//! ```
//! Version 2 (`journal_v2`) embeds an exchange frame that is a JSON object as
//! JSON (`"json"`) instead of an escaped string (`"text"`, version 1, still read).
//! A live recording holds every `handle` (as `input`) and every
//! `handle_timeout` (as `timeout`) in the order the shell made them — a
//! client's write too, as the input `client_writable` with its byte budget
//! (header `recorded_writes`) — so a replay makes exactly the same calls:
//! frames coalesce, and a slow consumer is closed, exactly as they did live.
//! Without recorded writes (hand-written and converted journals) a client's
//! frames are written whole as soon as it has any. Older journals hold a
//! write as `{"now":…,"take":CLIENT}` (header `recorded_takes`): still read,
//! as `client_writable` with no budget limit (`Input::WRITE_ALL`).
//!
//! Store effects the core asks for (`ReadStore`, `Persist`) are answered by
//! `store_read` and `persisted` inputs. A live recording holds them (header
//! `recorded_store`), so its replay needs no database at all and reproduces
//! every job start, catch-up and store outage exactly; a journal without them
//! (hand-written, converted, generated) has each effect carried out at once,
//! at the same `now`, against the replay's own store.
//! Hand-written and converted journals
//! may set `auto_timers`: then the replayer fires each due timer at its exact
//! deadline before the next line (and up to an optional `{"now":…,"end":true}`).
//!
//! Replay output, one JSON line per effect, is deterministic byte for byte:
//! `{"now":…,"out":<Output>}`, `{"now":…,"client":…,"frame":<the frame>}` and
//! `{"now":…,"reply":"ok"|{"error":…}}` for ingest inputs.

use crate::cli::settings::Settings;
use crate::engine::{ClientId, ConnId, Engine, Input, Output};
use crate::store::Store;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{BufRead, Write};

pub const FORMAT: &str = "klinegate";
pub const VERSION: u32 = 2;
/// The oldest version still read (version 1: frame text only as `"text"`).
pub const MIN_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub journal: String,
    pub version: u32,
    pub start_ns: u64,
    #[serde(default)]
    pub auto_timers: bool,
    #[serde(default)]
    pub settings: Settings,
    /// Every write of a client's frames (`client_writable`) is recorded
    /// (live recordings); older journals call it `recorded_takes`.
    #[serde(default, skip_serializing_if = "is_false", alias = "recorded_takes")]
    pub recorded_writes: bool,
    /// Every store effect's answer is an input of its own (live recordings).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recorded_store: bool,
}

impl Header {
    pub fn new(settings: Settings, start: Timestamp, auto_timers: bool) -> Header {
        Header {
            journal: FORMAT.into(),
            version: VERSION,
            start_ns: start.as_nanos(),
            auto_timers,
            settings,
            recorded_writes: false,
            recorded_store: false,
        }
    }

    /// For a live recording: the shell records each client write (`client_writable`).
    #[must_use]
    pub fn with_recorded_writes(mut self) -> Header {
        self.recorded_writes = true;
        self
    }

    /// For a live recording: the shell records each store effect's answer.
    #[must_use]
    pub fn with_recorded_store(mut self) -> Header {
        self.recorded_store = true;
        self
    }
}

/// One journal line after the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub now: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::journal_v2::deserialize_input")]
    pub input: Option<Input>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub timeout: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub end: bool,
    /// Older journals' write of a client's frames (`{"now":…,"take":CLIENT}`):
    /// read as `client_writable` with `Input::WRITE_ALL`, never written.
    #[serde(default, skip_serializing)]
    pub take: Option<u64>,
}

impl Record {
    /// The input this record carries, an older journal's `take` included.
    fn into_input(self) -> Option<Input> {
        self.input.or(self.take.map(|client| Input::ClientWritable { client: ClientId(client), budget: Input::WRITE_ALL }))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug)]
pub enum JournalError {
    Io(std::io::Error),
    /// A line that is not valid journal JSON: 1-based line number and why.
    Parse { line: usize, message: String },
    Config(String),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io(e) => write!(f, "journal i/o error: {e}"),
            JournalError::Parse { line, message } => write!(f, "journal line {line}: {message}"),
            JournalError::Config(m) => write!(f, "journal settings: {m}"),
        }
    }
}

impl std::error::Error for JournalError {}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        JournalError::Io(e)
    }
}

/// Writes a journal as the shell steps the engine.
pub struct JournalWriter<W: Write> {
    out: W,
    /// Version 2: frame text that is a JSON object is written as JSON.
    json_frames: bool,
}

impl<W: Write> JournalWriter<W> {
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(JournalWriter { out, json_frames: header.version >= 2 })
    }

    pub fn input(&mut self, now: Timestamp, input: &Input) -> std::io::Result<()> {
        if let (true, Input::UpstreamText { conn, text }) = (self.json_frames, input) {
            if super::journal_v2::write_upstream_json(&mut self.out, now.as_nanos(), conn.0, text)? {
                return Ok(());
            }
        }
        let rec = Record { now: now.as_nanos(), input: Some(input.clone()), timeout: false, end: false, take: None };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    pub fn timeout(&mut self, now: Timestamp) -> std::io::Result<()> {
        writeln!(self.out, "{{\"now\":{},\"timeout\":true}}", now.as_nanos())
    }

    pub fn end(&mut self, now: Timestamp) -> std::io::Result<()> {
        writeln!(self.out, "{{\"now\":{},\"end\":true}}", now.as_nanos())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Counts from one replay.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplayStats {
    pub records: u64,
    pub inputs: u64,
    pub timeouts: u64,
    pub output_lines: u64,
}

/// Drives a fresh engine from a journal and writes its outputs.
pub struct Replayer<W: Write> {
    engine: Engine,
    /// Answers store effects a journal does not hold (never touched when
    /// the journal is a live recording: `recorded_store`).
    store: Box<dyn Store>,
    auto_timers: bool,
    recorded_writes: bool,
    recorded_store: bool,
    out: W,
    line: Vec<u8>,
    /// The first refusal (`IngestDone` with an error) drained since the
    /// current ingest input: its `reply` line.
    ingest_error: Option<String>,
    pub stats: ReplayStats,
}

pub fn read_header(line: &str) -> Result<Header, JournalError> {
    let header: Header = serde_json::from_str(line)
        .map_err(|e| JournalError::Parse { line: 1, message: format!("invalid header: {e}") })?;
    if header.journal != FORMAT || !(MIN_VERSION..=VERSION).contains(&header.version) {
        return Err(JournalError::Parse {
            line: 1,
            message: format!(
                "not a klinegate v{MIN_VERSION}..v{VERSION} journal (journal={:?}, version={})",
                header.journal, header.version
            ),
        });
    }
    Ok(header)
}

impl<W: Write> Replayer<W> {
    pub fn new(header: &Header, store: Box<dyn Store>, out: W) -> Result<Self, JournalError> {
        let cfg = header.settings.to_engine_config().map_err(|e| JournalError::Config(e.to_string()))?;
        let engine = Engine::new(cfg, Timestamp(header.start_ns));
        Ok(Replayer {
            engine,
            store,
            auto_timers: header.auto_timers,
            recorded_writes: header.recorded_writes,
            recorded_store: header.recorded_store,
            out,
            line: Vec::with_capacity(512),
            ingest_error: None,
            stats: ReplayStats::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn into_parts(self) -> (Engine, Box<dyn Store>, W) {
        (self.engine, self.store, self.out)
    }

    /// Whether the journal holds the answers to store effects (then the
    /// replay needs no database).
    pub fn store_recorded(&self) -> bool {
        self.recorded_store
    }

    /// Applies one record.
    pub fn step(&mut self, rec: Record) -> std::io::Result<()> {
        self.stats.records += 1;
        let now = Timestamp(rec.now);
        if self.auto_timers {
            self.run_timers_until(now)?;
        }
        let timeout = rec.timeout;
        if let Some(input) = rec.into_input() {
            self.stats.inputs += 1;
            if let Input::ClientWritable { client, budget } = input {
                self.write_client(now, client, budget)?;
                // The drained queue may ask for the next catch-up page.
                self.drain(now)?;
                return self.step_timeout(timeout, now);
            }
            let is_ingest = matches!(input, Input::IngestClosed { .. } | Input::IngestForming { .. });
            self.ingest_error = None;
            self.engine.handle(input, now);
            self.drain(now)?;
            if is_ingest {
                // "ok" unless the engine refused it at once (a store failure
                // of a recorded run is answered later, by its `IngestDone`).
                self.line.clear();
                let reply = match self.ingest_error.take() {
                    None => serde_json::json!("ok"),
                    Some(e) => serde_json::json!({ "error": e }),
                };
                let _ = write!(self.line, "{{\"now\":{},\"reply\":{}}}", now.as_nanos(), reply);
                self.emit_line()?;
            }
        }
        self.step_timeout(timeout, now)
    }

    fn step_timeout(&mut self, timeout: bool, now: Timestamp) -> std::io::Result<()> {
        if timeout {
            self.stats.timeouts += 1;
            self.engine.handle_timeout(now);
            self.drain(now)?;
        }
        Ok(())
    }

    /// Fires every timer due up to `until`, each at its own deadline.
    pub fn run_timers_until(&mut self, until: Timestamp) -> std::io::Result<()> {
        let mut guard = 0u64;
        while let Some(t) = self.engine.poll_timeout() {
            if t > until || guard > 10_000_000 {
                break;
            }
            guard += 1;
            let at = t.max(self.engine.now());
            self.stats.timeouts += 1;
            self.engine.handle_timeout(at);
            self.drain(at)?;
            if self.engine.poll_timeout() == Some(t) {
                // A deadline that does not move after firing would loop forever.
                break;
            }
        }
        Ok(())
    }

    fn emit_line(&mut self) -> std::io::Result<()> {
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        self.stats.output_lines += 1;
        Ok(())
    }

    /// Hands the engine the client's write (`ClientWritable`) and writes one
    /// line per frame it stages.
    fn write_client(&mut self, now: Timestamp, client: ClientId, budget: usize) -> std::io::Result<()> {
        self.engine.handle(Input::ClientWritable { client, budget }, now);
        while let Some(f) = self.engine.poll_client(client) {
            self.line.clear();
            let _ = write!(self.line, "{{\"now\":{},\"client\":{},\"frame\":", now.as_nanos(), client);
            self.line.extend_from_slice(&f);
            self.line.push(b'}');
            self.emit_line()?;
        }
        Ok(())
    }

    fn drain(&mut self, now: Timestamp) -> std::io::Result<()> {
        while let Some(output) = self.engine.poll_output() {
            if let Output::ClientReady { client } = output {
                // A recording says when the shell wrote the client; otherwise now, whole.
                if !self.recorded_writes {
                    self.write_client(now, client, Input::WRITE_ALL)?;
                }
                continue;
            }
            if let Output::IngestDone { error: Some(e), .. } = &output {
                self.ingest_error.get_or_insert_with(|| e.clone());
            }
            self.line.clear();
            let _ = write!(self.line, "{{\"now\":{},\"out\":", now.as_nanos());
            let _ = serde_json::to_writer(&mut self.line, &output);
            self.line.push(b'}');
            self.emit_line()?;
            // A recording holds the answer as an input of its own.
            if !self.recorded_store {
                super::hosted::carry(&mut self.engine, self.store.as_mut(), &output, now);
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The common record — an exchange frame, either version — parsed without serde's buffering
/// of internally tagged enums (most of a large replay's parse time). Any
/// other shape, or anything unexpected, falls back to the full parser.
/// Works on the line's bytes: only the frame text needs UTF-8 validation, and
/// it gets it once, after unescaping.
pub(super) fn parse_upstream_text_fast(line: &[u8]) -> Option<Record> {
    let rest = line.strip_prefix(b"{\"now\":")?;
    let (now, rest) = split_at_comma(rest)?;
    let rest = rest.strip_prefix(b"\"input\":{\"type\":\"upstream_text\",\"conn\":")?;
    let (conn, rest) = split_at_comma(rest)?;
    let text = match rest.strip_prefix(b"\"json\":") {
        Some(json) => super::journal_v2::embedded_text(json.strip_suffix(b"}}")?)?,
        None => unescape_simple(rest.strip_prefix(b"\"text\":")?.strip_suffix(b"}}")?)?,
    };
    Some(Record {
        now: ascii_number(now)?,
        input: Some(Input::UpstreamText { conn: ConnId(ascii_number(conn)?), text }),
        timeout: false,
        end: false,
        take: None,
    })
}

/// `(before, after)` the first comma.
fn split_at_comma(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b',')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// `str::parse::<u64>` of the bytes (the same rules, the same rejections).
fn ascii_number(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Decodes a JSON string literal whose escapes are the one-character kind
/// (frame text is full of `\"`); `None` for anything else (`\u…`, a stray
/// quote, invalid UTF-8), which then goes through serde_json.
///
/// Eight bytes a step: each step stores the whole word, then advances past it
/// or, when the word holds a quote or backslash, up to the first one and
/// decodes that escape. On the 500-series bench journal (73 escapes in a
/// ~400-byte frame) callgrind puts the byte loop it replaced at 5.9k
/// instructions a frame and this at 4.8k (one step per escape, ~35
/// instructions each, is what is left); replay CPU time went 1.95 → 1.67 s
/// on the 1M-frame journal. `unescape_bytewise` (tests) is the byte loop it
/// must agree with.
fn unescape_simple(lit: &[u8]) -> Option<String> {
    let inner = lit.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let n = inner.len();
    // A word past the end: every step stores a whole word (`o <= i` throughout).
    let mut out = vec![0u8; n + 8];
    let (mut i, mut o) = (0, 0);
    while i + 8 <= n {
        let mut word = [0u8; 8];
        word.copy_from_slice(&inner[i..i + 8]);
        out[o..o + 8].copy_from_slice(&word);
        let special = quote_or_backslash(u64::from_le_bytes(word));
        if special == 0 {
            i += 8;
            o += 8;
            continue;
        }
        let k = (special.trailing_zeros() >> 3) as usize;
        // The escape's two bytes; the second may lie past this word.
        let (at, next) = (i + k, i + k + 1);
        if inner[at] != b'\\' || next >= n {
            return None;
        }
        out[o + k] = unescaped(inner[next])?;
        i = next + 1;
        o += k + 1;
    }
    while i < n {
        let b = inner[i];
        if b == b'"' || b == b'\\' {
            if b == b'"' || i + 1 >= n {
                return None;
            }
            out[o] = unescaped(inner[i + 1])?;
            i += 2;
        } else {
            out[o] = b;
            i += 1;
        }
        o += 1;
    }
    out.truncate(o);
    String::from_utf8(out).ok()
}

/// The byte `\\c` stands for, for the one-character escapes; `None` for any
/// other (`\\u…` included).
#[inline(always)]
fn unescaped(c: u8) -> Option<u8> {
    Some(match c {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'n' => b'\n',
        b't' => b'\t',
        b'r' => b'\r',
        b'b' => 0x08,
        b'f' => 0x0c,
        _ => return None,
    })
}

/// The high bit of each byte of `word` that is a quote or a backslash, exact
/// for the lowest such byte (a higher one may be a false positive: the classic
/// has-zero-byte trick, whose borrow only propagates upwards).
#[inline(always)]
fn quote_or_backslash(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero_byte(word ^ (ONES * b'"' as u64)) | zero_byte(word ^ (ONES * b'\\' as u64))
}

/// Replays a whole journal into `out`.
pub fn replay<R: BufRead, W: Write>(
    mut reader: R,
    store: Box<dyn Store>,
    out: W,
) -> Result<(Replayer<W>, ReplayStats), JournalError> {
    // One reused line buffer: no allocation or UTF-8 pass per line on the fast path.
    let mut line = Vec::with_capacity(1024);
    if !read_line(&mut reader, &mut line)? {
        return Err(JournalError::Parse { line: 1, message: "empty journal".into() });
    }
    let header = read_header(line_str(&line)?)?;
    let mut replayer = Replayer::new(&header, store, out)?;
    let mut number = 1;
    while read_line(&mut reader, &mut line)? {
        number += 1;
        let rec = match parse_upstream_text_fast(&line) {
            Some(rec) => rec,
            None => {
                let text = line_str(&line)?;
                if text.trim().is_empty() {
                    continue;
                }
                serde_json::from_str::<Record>(text)
                    .map_err(|e| JournalError::Parse { line: number, message: e.to_string() })?
            }
        };
        let end = rec.end;
        let now = Timestamp(rec.now);
        replayer.step(rec)?;
        if end && replayer.auto_timers {
            replayer.run_timers_until(now)?;
        }
    }
    replayer.flush()?;
    let stats = replayer.stats.clone();
    Ok((replayer, stats))
}

/// Reads the next line into `buf` without its `\n` / `\r\n` (as
/// `BufRead::lines` strips them); false at the end of the input.
fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    // `read_until`, with memchr's vectorised search for the newline.
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        let (take, done) = match memchr::memchr(b'\n', available) {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            break;
        }
    }
    if buf.is_empty() {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(true)
}

/// The line as text, failing as `BufRead::lines` does on invalid UTF-8.
fn line_str(line: &[u8]) -> std::io::Result<&str> {
    std::str::from_utf8(line)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_parses_exactly_what_the_writer_writes() {
        let input = Input::UpstreamText { conn: ConnId(7), text: "{\"stream\":\"a\\\"b\",\"x\":1}".into() };
        let mut w = JournalWriter::new(Vec::new(), &Header::new(Settings::default(), Timestamp(5), false)).unwrap();
        w.input(Timestamp(123), &input).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let line = text.lines().nth(1).unwrap();
        let fast = parse_upstream_text_fast(line.as_bytes()).expect("fast path applies");
        let slow: Record = serde_json::from_str(line).unwrap();
        assert_eq!(fast, slow);
        assert!(parse_upstream_text_fast(br#"{"now":1,"timeout":true}"#).is_none());
        for lit in [r#""a\"b\\c\/\n\t""#, r#""plain""#, r#""""#, r#""é\"""#] {
            assert_eq!(unescape_simple(lit.as_bytes()), serde_json::from_str::<String>(lit).ok(), "{lit}");
        }
        assert_eq!(unescape_simple(br#""\u0041""#), None, "falls back to serde");
        assert_eq!(unescape_simple(br#""a"b""#), None);
        assert_eq!(unescape_simple(b"\"\xff\""), None, "invalid UTF-8 falls back");
    }

    /// The plain byte loop `unescape_simple` replaced: the reference it must agree with.
    fn unescape_bytewise(lit: &[u8]) -> Option<String> {
        let inner = lit.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        let mut out = Vec::with_capacity(inner.len());
        let mut i = 0;
        while let Some(&b) = inner.get(i) {
            if b == b'"' || b == b'\\' {
                if b == b'"' {
                    return None;
                }
                out.push(unescaped(*inner.get(i + 1)?)?);
                i += 2;
            } else {
                out.push(b);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    proptest::proptest! {
        /// Any literal (escapes anywhere, at word edges, at the end; bare quotes;
        /// multi-byte and invalid UTF-8): the word-at-a-time decoder agrees with
        /// the byte loop.
        #[test]
        fn word_unescape_agrees_with_the_byte_loop(
            body in proptest::collection::vec(proptest::prop_oneof![
                proptest::prelude::Just(b'\\'), proptest::prelude::Just(b'"'), proptest::prelude::Just(b'n'),
                proptest::prelude::Just(b'u'), proptest::prelude::Just(0xc3u8), proptest::prelude::Just(0xa9u8),
                proptest::prelude::Just(0xffu8), b'a'..=b'z'
            ], 0..70),
        ) {
            let mut lit = vec![b'"'];
            lit.extend_from_slice(&body);
            lit.push(b'"');
            proptest::prop_assert_eq!(unescape_simple(&lit), unescape_bytewise(&lit));
        }
    }

    #[test]
    fn word_unescape_on_a_kline_frame() {
        let text = r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"k":{"o":"1.0","x":false,"s":"a\\b\/c"}}}"#;
        let lit = serde_json::to_string(text).unwrap();
        assert_eq!(unescape_simple(lit.as_bytes()).as_deref(), Some(text));
        assert_eq!(unescape_bytewise(lit.as_bytes()).as_deref(), Some(text));
    }

    fn written_line(now: u64, conn: u64, text: String) -> String {
        let mut w = JournalWriter::new(Vec::new(), &Header::new(Settings::default(), Timestamp(5), false)).unwrap();
        w.input(Timestamp(now), &Input::UpstreamText { conn: ConnId(conn), text }).unwrap();
        let written = String::from_utf8(w.into_inner()).unwrap();
        written.lines().nth(1).unwrap().to_string()
    }

    proptest::proptest! {
        /// Whatever the frame text, the fast path either declines or decodes the
        /// line exactly as serde_json does.
        #[test]
        fn fast_path_agrees_with_serde_on_any_text(
            text in ".{0,40}|[a-z\"\\\\/:{},é\t\n]{0,40}",
            now in proptest::prelude::any::<u64>(),
            conn in proptest::prelude::any::<u64>(),
        ) {
            let line = written_line(now, conn, text.clone());
            let slow: Record = serde_json::from_str(&line).unwrap();
            match parse_upstream_text_fast(line.as_bytes()) {
                Some(fast) => proptest::prop_assert_eq!(fast, slow),
                // Only `\u` escapes (control characters) send a writer's line to serde.
                None => {
                    let needs_u_escape = text.chars().any(|c| c < ' ' && !"\t\n\r\u{8}\u{c}".contains(c));
                    proptest::prop_assert!(needs_u_escape);
                }
            }
        }
    }

    #[test]
    fn replay_reads_crlf_blank_lines_and_refuses_invalid_utf8() {
        let header = serde_json::to_string(&Header::new(Settings::default(), Timestamp(5), false)).unwrap();
        let journal = format!("{header}\r\n\r\n   \n{{\"now\":6,\"timeout\":true}}\r\n");
        let (_, stats) = replay(journal.as_bytes(), Box::new(crate::store::MemoryStore::new()), Vec::new()).unwrap();
        assert_eq!(stats.records, 1);
        let mut bad = format!("{header}\n").into_bytes();
        bad.extend_from_slice(b"{\"now\":6,\"timeout\":true,\"x\":\"\xff\"}\n");
        match replay(&bad[..], Box::new(crate::store::MemoryStore::new()), Vec::new()) {
            Err(JournalError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
            other => panic!("expected an InvalidData error, got {:?}", other.map(|r| r.1)),
        }
    }

    /// With recorded writes, a client's frames come out where the shell wrote
    /// the client (and coalesce meanwhile); without, as soon as they are
    /// queued. An older journal's `take` record (header `recorded_takes`) is
    /// read as a write with no budget limit.
    #[test]
    fn recorded_writes_decide_when_frames_come_out() {
        #[derive(Clone, Copy)]
        enum Writes {
            None,
            Recorded(usize),
            OldTakes,
        }
        let replay_with = |writes: Writes| -> Vec<String> {
            let mut header = Header::new(Settings { pins: vec![], ..Settings::default() }, Timestamp(5), false);
            if !matches!(writes, Writes::None) {
                header = header.with_recorded_writes();
            }
            let mut w = JournalWriter::new(Vec::new(), &header).unwrap();
            w.input(Timestamp(10), &Input::ClientConnected { client: ClientId(1) }).unwrap();
            w.input(Timestamp(20), &Input::ClientText { client: ClientId(1), text: "nope".into() }).unwrap();
            w.input(Timestamp(30), &Input::ClientText { client: ClientId(1), text: "{}".into() }).unwrap();
            if let Writes::Recorded(budget) = writes {
                w.input(Timestamp(40), &Input::ClientWritable { client: ClientId(1), budget }).unwrap();
                w.input(Timestamp(50), &Input::ClientWritable { client: ClientId(1), budget }).unwrap();
            }
            let mut text = String::from_utf8(w.into_inner()).unwrap();
            assert!(!text.contains("\"take\""), "no take record is written any more");
            if let Writes::OldTakes = writes {
                text = text.replace("\"recorded_writes\"", "\"recorded_takes\"");
                text.push_str("{\"now\":40,\"take\":1}\n");
            }
            let (replayer, _) = replay(text.as_bytes(), Box::new(crate::store::MemoryStore::new()), Vec::new()).unwrap();
            let (_, _, out) = replayer.into_parts();
            String::from_utf8(out).unwrap().lines().filter(|l| l.contains("\"frame\"")).map(str::to_string).collect()
        };
        let at = |lines: &[String]| -> Vec<String> {
            lines.iter().map(|l| l.split(',').next().unwrap_or_default().to_string()).collect()
        };
        assert_eq!(at(&replay_with(Writes::None)), ["{\"now\":20", "{\"now\":30"]);
        assert_eq!(at(&replay_with(Writes::Recorded(Input::WRITE_ALL))), ["{\"now\":40", "{\"now\":40"]);
        assert_eq!(at(&replay_with(Writes::OldTakes)), ["{\"now\":40", "{\"now\":40"]);
        // A budget of one byte: one frame per write, the rest stays queued in order.
        let one = replay_with(Writes::Recorded(1));
        assert_eq!(at(&one), ["{\"now\":40", "{\"now\":50"]);
        let all = replay_with(Writes::Recorded(Input::WRITE_ALL));
        let frame = |l: &String| l.split_once(",\"frame\":").map(|(_, f)| f.to_string());
        assert_eq!(one.iter().map(frame).collect::<Vec<_>>(), all.iter().map(frame).collect::<Vec<_>>());
    }
}
