//! One PostgreSQL connection as a sans-IO state machine: bytes in, bytes out,
//! answers out. The wire format and SCRAM-SHA-256 / md5 come from the
//! `postgres-protocol` crate; this module owns the order of things: startup,
//! authentication, the first ReadyForQuery, then pipelined requests whose
//! answers are matched to them in order.
//!
//! It never touches a socket or a clock (the driver in
//! `shell::conn::stream_driver` does), never panics on server bytes, and never
//! holds more than `max_pending` requests.
//!
//! Pipelining and errors: every [`Request`] ends with exactly one
//! ReadyForQuery from the server (a simple Query, or extended-protocol
//! statements followed by ONE Sync). So answers are matched by counting
//! ReadyForQuery, and an error inside one request (the server skips to its
//! Sync) can never shift the answers of the requests behind it. The
//! statements of one extended request run in one implicit transaction: all
//! of them commit or none.
//!
//! The bound: at most `max_pending` requests are held (sent and waiting, plus
//! accepted and not yet sent). [`PgConn::submit`] refuses the next one with
//! [`Full`]; nothing already accepted is dropped, and the caller keeps what
//! was refused (the store backlog policy: data stays with the engine).
//!
//! Disconnects: a request already SENT fails with SQLSTATE `08006`
//! ([`PgError::is_disconnect`]) — it may or may not have been applied, so the
//! caller retries only what is idempotent (the upsert is). Requests accepted
//! but not yet sent stay queued and go out after the next handshake.

use crate::sans_io::SansIo;
use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::types;
use postgres_protocol::IsNull;
use std::collections::VecDeque;
use std::fmt;

use super::url::PgConfig;

/// Largest backend message accepted (a DataRow of candles is ~100 bytes; a
/// larger message is a broken or hostile server).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A parameter of an extended-protocol statement, sent in binary.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Null,
    I32(i32),
    I64(i64),
    F64(f64),
    Text(String),
    I64Array(Vec<i64>),
    F64Array(Vec<f64>),
    TextArray(Vec<String>),
}

impl Param {
    fn type_oid(&self) -> u32 {
        match self {
            Param::Null => 0,
            Param::I32(_) => 23,
            Param::I64(_) => 20,
            Param::F64(_) => 701,
            Param::Text(_) => 25,
            Param::I64Array(_) => 1016,
            Param::F64Array(_) => 1022,
            Param::TextArray(_) => 1009,
        }
    }
}

/// One SQL statement with `$n` parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Statement { sql: sql.into(), params }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Simple protocol: text results; several `;`-separated statements run
    /// in one implicit transaction unless the text has its own BEGIN/COMMIT.
    Simple(String),
    /// Extended protocol, binary parameters and results; the statements share
    /// one Sync, so they commit together or not at all.
    Extended(Vec<Statement>),
}

/// Column values of one row: text for simple requests, binary for extended.
pub type Row = Vec<Option<Bytes>>;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ResultSet {
    /// The command tag (`INSERT 0 3`, `SELECT 1`), empty for an empty query.
    pub tag: String,
    pub rows: Vec<Row>,
}

impl ResultSet {
    /// Rows affected as the tag says (`INSERT 0 3` → 3), 0 when it says none.
    pub fn affected(&self) -> u64 {
        self.tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

/// An error the server reported, or a lost connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    /// ERROR, FATAL, PANIC (localized variants are not used: `V` is read first).
    pub severity: String,
    /// SQLSTATE, e.g. `23505`; `08006` when the connection was lost.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

pub const SQLSTATE_CONNECTION_FAILURE: &str = "08006";

impl PgError {
    pub fn disconnected(reason: &str) -> Self {
        PgError {
            severity: "ERROR".to_string(),
            code: SQLSTATE_CONNECTION_FAILURE.to_string(),
            message: format!("connection lost before the answer: {reason}"),
            detail: None,
        }
    }

    pub fn is_disconnect(&self) -> bool {
        self.code == SQLSTATE_CONNECTION_FAILURE
    }

    fn from_fields(mut fields: ErrorFields<'_>) -> Self {
        let mut e = PgError { severity: String::new(), code: String::new(), message: String::new(), detail: None };
        let mut localized = String::new();
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => e.severity = v,
                b'S' => localized = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized;
        }
        e
    }

    fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

pub type Answer = Result<Vec<ResultSet>, PgError>;

/// Request ids, in submission order (answers come back in the same order).
pub type RequestId = u64;

#[derive(Debug, PartialEq)]
pub enum PgEvent {
    /// Handshake done on a new connection (`backend_pid` for pg_terminate_backend).
    Ready { backend_pid: i32 },
    /// The answer to request `id`.
    Answer { id: RequestId, answer: Answer },
}

/// [`PgConn::submit`] refused a request: `max_pending` are already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub max_pending: usize,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres queue full ({} requests waiting); retry after answers arrive", self.max_pending)
    }
}

enum Phase {
    /// No connection.
    Down,
    /// StartupMessage sent, waiting for an authentication request.
    Startup,
    /// SCRAM exchange in progress.
    Scram(Box<ScramSha256>),
    /// AuthenticationOk seen, waiting for the first ReadyForQuery.
    AwaitReady,
    Ready,
}

/// An answer being assembled for the request at the front of `sent`.
struct InFlight {
    id: RequestId,
    sets: Vec<ResultSet>,
    rows: Vec<Row>,
    error: Option<PgError>,
}

pub struct PgConn {
    config: PgConfig,
    phase: Phase,
    inbuf: BytesMut,
    out: BytesMut,
    sent: VecDeque<InFlight>,
    unsent: VecDeque<(RequestId, Request)>,
    next_id: RequestId,
    max_pending: usize,
    events: VecDeque<PgEvent>,
    backend_pid: i32,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Down => "down",
            Phase::Startup => "startup",
            Phase::Scram(_) => "scram",
            Phase::AwaitReady => "await_ready",
            Phase::Ready => "ready",
        };
        f.debug_struct("PgConn")
            .field("config", &self.config)
            .field("phase", &phase)
            .field("sent", &self.sent.len())
            .field("unsent", &self.unsent.len())
            .finish_non_exhaustive()
    }
}

impl PgConn {
    pub fn new(config: PgConfig, max_pending: usize) -> Self {
        PgConn {
            config,
            phase: Phase::Down,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            sent: VecDeque::new(),
            unsent: VecDeque::new(),
            next_id: 0,
            max_pending: max_pending.max(1),
            events: VecDeque::new(),
            backend_pid: 0,
        }
    }

    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Requests held: sent and waiting for an answer, plus not yet sent.
    pub fn pending(&self) -> usize {
        self.sent.len() + self.unsent.len()
    }

    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Accepts a request (sent at once when ready, else after the handshake).
    pub fn submit(&mut self, req: Request) -> Result<RequestId, Full> {
        if self.pending() >= self.max_pending {
            return Err(Full { max_pending: self.max_pending });
        }
        let id = self.next_id;
        self.next_id += 1;
        if matches!(self.phase, Phase::Ready) {
            self.send(id, &req);
        } else {
            self.unsent.push_back((id, req));
        }
        Ok(id)
    }

    #[must_use = "drain until None"]
    pub fn poll_event(&mut self) -> Option<PgEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, id: RequestId, req: &Request) {
        let mark = self.out.len();
        let encoded = match req {
            Request::Simple(sql) => frontend::query(sql, &mut self.out).map_err(|e| e.to_string()),
            Request::Extended(stmts) => encode_extended(stmts, &mut self.out),
        };
        match encoded {
            Ok(()) => self.sent.push_back(InFlight { id, sets: Vec::new(), rows: Vec::new(), error: None }),
            // A NUL in the SQL, too many params: the request fails alone and
            // whatever part of it was encoded is cut, so nothing of it
            // reaches the server and the stream stays well-formed.
            Err(message) => {
                self.out.truncate(mark);
                self.events.push_back(PgEvent::Answer {
                id,
                answer: Err(PgError {
                    severity: "ERROR".to_string(),
                    code: "22000".to_string(),
                    message: format!("request could not be encoded: {message}"),
                    detail: None,
                }),
                })
            }
        }
    }

    fn startup(&mut self) {
        let params = [
            ("user", self.config.user.as_str()),
            ("database", self.config.database.as_str()),
            ("application_name", "klinegate"),
            ("client_encoding", "UTF8"),
        ];
        // Cannot fail: the strings come from a parsed URL and contain no NUL
        // (a NUL would make the server refuse the startup, reported as such).
        let _ = frontend::startup_message(params.iter().copied(), &mut self.out);
        self.phase = Phase::Startup;
    }

    fn on_message(&mut self, msg: Message) -> Result<(), String> {
        match msg {
            Message::AuthenticationOk => self.phase = Phase::AwaitReady,
            Message::AuthenticationCleartextPassword => {
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), &mut self.out).map_err(|e| e.to_string())?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = self.password()?;
                let hash = md5_hash(self.config.user.as_bytes(), pw.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut self.out).map_err(|e| e.to_string())?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechs.next().map_err(|e| e.to_string())? {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return Err("server offers no SASL mechanism we speak (SCRAM-SHA-256 without channel binding)".into());
                }
                let pw = self.password()?;
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out).map_err(|e| e.to_string())?;
                self.phase = Phase::Scram(Box::new(s));
            }
            Message::AuthenticationSaslContinue(body) => {
                let Phase::Scram(s) = &mut self.phase else { return Err("unexpected SASL continue".into()) };
                s.update(body.data()).map_err(|e| format!("SCRAM: {e}"))?;
                frontend::sasl_response(s.message(), &mut self.out).map_err(|e| e.to_string())?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let Phase::Scram(s) = &mut self.phase else { return Err("unexpected SASL final".into()) };
                s.finish(body.data()).map_err(|e| format!("SCRAM: server signature refused: {e}"))?;
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err("server asks for an authentication method klinegate does not speak \
                            (use scram-sha-256, md5, password or trust)"
                    .into())
            }
            Message::BackendKeyData(body) => self.backend_pid = body.process_id(),
            Message::ParameterStatus(_) | Message::NoticeResponse(_) | Message::NotificationResponse(_) => {}
            Message::ReadyForQuery(_) => self.ready_for_query()?,
            Message::ErrorResponse(body) => {
                let e = PgError::from_fields(body.fields());
                match self.sent.front_mut() {
                    Some(f) if matches!(self.phase, Phase::Ready) && !e.is_fatal() => {
                        f.error.get_or_insert(e);
                    }
                    _ => return Err(e.to_string()),
                }
            }
            Message::DataRow(body) => {
                let f = self.front("DataRow")?;
                let buf = body.buffer_bytes().clone();
                let mut ranges = body.ranges();
                let mut row = Row::new();
                while let Some(r) = ranges.next().map_err(|e| format!("bad DataRow: {e}"))? {
                    row.push(r.map(|r| buf.slice(r)));
                }
                f.rows.push(row);
            }
            Message::CommandComplete(body) => {
                let tag = body.tag().map_err(|e| e.to_string())?.to_string();
                let f = self.front("CommandComplete")?;
                let rows = std::mem::take(&mut f.rows);
                f.sets.push(ResultSet { tag, rows });
            }
            Message::EmptyQueryResponse => {
                let f = self.front("EmptyQueryResponse")?;
                f.sets.push(ResultSet::default());
            }
            Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::NoData
            | Message::ParameterDescription(_)
            | Message::RowDescription(_) => {
                self.front("extended-protocol reply")?;
            }
            Message::PortalSuspended => return Err("unexpected PortalSuspended (no row limits are sent)".into()),
            Message::CopyData(_) | Message::CopyDone | Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                return Err("unexpected COPY message (klinegate never runs COPY)".into())
            }
            _ => return Err("unknown backend message".into()),
        }
        Ok(())
    }

    fn front(&mut self, what: &str) -> Result<&mut InFlight, String> {
        if !matches!(self.phase, Phase::Ready) {
            return Err(format!("unexpected {what} during startup"));
        }
        self.sent.front_mut().ok_or_else(|| format!("unexpected {what} with no request in flight"))
    }

    fn ready_for_query(&mut self) -> Result<(), String> {
        match self.phase {
            Phase::AwaitReady => {
                self.phase = Phase::Ready;
                self.events.push_back(PgEvent::Ready { backend_pid: self.backend_pid });
                while let Some((id, req)) = self.unsent.pop_front() {
                    self.send(id, &req);
                }
                Ok(())
            }
            Phase::Ready => {
                let f = self.sent.pop_front().ok_or("ReadyForQuery with no request in flight")?;
                let answer = match f.error {
                    Some(e) => Err(e),
                    None => Ok(f.sets),
                };
                self.events.push_back(PgEvent::Answer { id: f.id, answer });
                Ok(())
            }
            _ => Err("ReadyForQuery before authentication finished".into()),
        }
    }

    fn password(&self) -> Result<String, String> {
        self.config
            .password
            .clone()
            .ok_or_else(|| "the server asks for a password and the store URL has none".to_string())
    }
}

fn encode_extended(stmts: &[Statement], out: &mut BytesMut) -> Result<(), String> {
    for s in stmts {
            let types = s.params.iter().map(Param::type_oid);
            frontend::parse("", &s.sql, types, out).map_err(|e| e.to_string())?;
            frontend::bind("", "", Some(1), s.params.iter(), encode_param, Some(1), out).map_err(|e| match e {
                frontend::BindError::Conversion(e) => e.to_string(),
                frontend::BindError::Serialization(e) => e.to_string(),
            })?;
            frontend::execute("", 0, out).map_err(|e| e.to_string())?;
    }
    frontend::sync(out);
    Ok(())
}

type EncodeResult = Result<IsNull, Box<dyn std::error::Error + Sync + Send>>;

fn encode_param(p: &Param, buf: &mut BytesMut) -> EncodeResult {
    use postgres_protocol::types::ArrayDimension;
    fn dims(n: usize) -> Result<[ArrayDimension; 1], Box<dyn std::error::Error + Sync + Send>> {
        Ok([ArrayDimension { len: i32::try_from(n)?, lower_bound: 1 }])
    }
    match p {
        Param::Null => return Ok(IsNull::Yes),
        Param::I32(v) => types::int4_to_sql(*v, buf),
        Param::I64(v) => types::int8_to_sql(*v, buf),
        Param::F64(v) => types::float8_to_sql(*v, buf),
        Param::Text(v) => types::text_to_sql(v, buf),
        Param::I64Array(v) => types::array_to_sql(
            dims(v.len())?,
            20,
            v.iter(),
            |x, b| {
                types::int8_to_sql(*x, b);
                Ok(IsNull::No)
            },
            buf,
        )?,
        Param::F64Array(v) => types::array_to_sql(
            dims(v.len())?,
            701,
            v.iter(),
            |x, b| {
                types::float8_to_sql(*x, b);
                Ok(IsNull::No)
            },
            buf,
        )?,
        Param::TextArray(v) => types::array_to_sql(
            dims(v.len())?,
            25,
            v.iter(),
            |x, b| {
                types::text_to_sql(x, b);
                Ok(IsNull::No)
            },
            buf,
        )?,
    }
    Ok(IsNull::No)
}

impl SansIo for PgConn {
    fn connected(&mut self) {
        self.inbuf.clear();
        self.out.clear();
        self.startup();
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.inbuf.extend_from_slice(bytes);
        loop {
            if self.inbuf.len() >= 5 {
                let len = u32::from_be_bytes([self.inbuf[1], self.inbuf[2], self.inbuf[3], self.inbuf[4]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(format!("backend message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"));
                }
            }
            match Message::parse(&mut self.inbuf) {
                Ok(Some(msg)) => self.on_message(msg)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed backend message: {e}")),
            }
        }
    }

    fn output(&self) -> &[u8] {
        &self.out
    }

    fn advance_output(&mut self, n: usize) {
        let _ = self.out.split_to(n.min(self.out.len()));
    }

    fn disconnected(&mut self, reason: &str) {
        for f in self.sent.drain(..) {
            self.events.push_back(PgEvent::Answer { id: f.id, answer: Err(PgError::disconnected(reason)) });
        }
        self.inbuf.clear();
        self.out.clear();
        self.phase = Phase::Down;
    }

    fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }
}

/// Column decoders for binary results (extended requests).
pub mod col {
    use super::*;

    fn bad(what: &str) -> String {
        format!("column is not a valid {what}")
    }

    pub fn i64(v: &Option<Bytes>) -> Result<Option<i64>, String> {
        v.as_deref().map(|b| types::int8_from_sql(b).map_err(|_| bad("int8"))).transpose()
    }

    pub fn i32(v: &Option<Bytes>) -> Result<Option<i32>, String> {
        v.as_deref().map(|b| types::int4_from_sql(b).map_err(|_| bad("int4"))).transpose()
    }

    pub fn f64(v: &Option<Bytes>) -> Result<Option<f64>, String> {
        v.as_deref().map(|b| types::float8_from_sql(b).map_err(|_| bad("float8"))).transpose()
    }

    pub fn text(v: &Option<Bytes>) -> Result<Option<String>, String> {
        v.as_deref().map(|b| types::text_from_sql(b).map(str::to_string).map_err(|_| bad("text"))).transpose()
    }

    pub fn bool(v: &Option<Bytes>) -> Result<Option<bool>, String> {
        v.as_deref().map(|b| types::bool_from_sql(b).map_err(|_| bad("bool"))).transpose()
    }
}
