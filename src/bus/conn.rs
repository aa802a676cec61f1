//! One Redis connection as a sans-IO state machine: commands in, bytes out,
//! bytes in, replies out, on the `redis-protocol` crate's RESP2/RESP3 codec.
//!
//! It never touches a socket or a clock (`shell::conn::stream_driver` does),
//! never panics on server bytes, and never holds more than `max_pending`
//! commands.
//!
//! Pipelining: commands are written back to back; Redis answers each with
//! exactly one reply, in order, so replies are matched by position. An error
//! reply (`-ERR …`) is that command's answer ([`RedisError`]) and shifts
//! nothing. RESP3 out-of-band pushes are not replies and are skipped. A
//! blocking command (`XREAD BLOCK`) holds every command behind it until it
//! returns, so a reader that blocks gets a connection of its own.
//!
//! Handshake: `HELLO 3` when RESP3 is asked for, `SELECT db` when the URL
//! names a database; their replies are checked here, and commands submitted
//! meanwhile wait, then go out in order.
//!
//! The bound: at most `max_pending` commands held (sent and waiting, plus
//! not yet sent); [`RedisConn::submit`] refuses the next with [`Full`] and
//! drops nothing already accepted. Disconnects fail the SENT commands with
//! [`RedisError::disconnected`] (they may have run); unsent ones wait for
//! the next connection.

use super::url::RedisConfig;
use crate::sans_io::SansIo;
use bytes::BytesMut;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame as Frame2};
use redis_protocol::resp3::types::OwnedFrame as Frame3;
use std::collections::VecDeque;
use std::fmt;

/// Largest reply accepted before it is complete (a broken or hostile server).
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resp {
    V2,
    V3,
}

/// A reply, RESP2 and RESP3 alike.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Simple string (`+OK`).
    Status(String),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    /// RESP3 map, in wire order.
    Map(Vec<(Value, Value)>),
    /// An error nested inside an aggregate (e.g. one command of an EXEC).
    Error(RedisError),
}

impl Value {
    /// Bulk, status and verbatim strings as bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bulk(_) | Value::Status(_) => self.as_str().and_then(|s| s.parse().ok()),
            _ => None,
        }
    }

    /// Arrays as they are; RESP3 maps flattened to `[k1, v1, k2, v2, …]`
    /// (the RESP2 shape), so decoders handle both protocols alike.
    pub fn into_list(self) -> Option<Vec<Value>> {
        match self {
            Value::Array(v) => Some(v),
            Value::Map(kv) => Some(kv.into_iter().flat_map(|(k, v)| [k, v]).collect()),
            _ => None,
        }
    }
}

/// An error reply or a lost connection. `kind` is the first word of the
/// reply (`ERR`, `WRONGTYPE`, `NOSCRIPT`, …); `DISCONNECTED` for a lost one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisError {
    pub kind: String,
    pub message: String,
}

impl RedisError {
    pub fn from_reply(text: &str) -> Self {
        match text.split_once(' ') {
            Some((k, m)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
                RedisError { kind: k.to_string(), message: m.to_string() }
            }
            _ => RedisError { kind: "ERR".to_string(), message: text.to_string() },
        }
    }

    pub fn disconnected(reason: &str) -> Self {
        RedisError { kind: "DISCONNECTED".to_string(), message: format!("connection lost before the reply: {reason}") }
    }

    pub fn is_disconnect(&self) -> bool {
        self.kind == "DISCONNECTED"
    }

    /// A reply of an unexpected shape (decoders).
    pub fn unexpected(what: &str, got: &Value) -> Self {
        RedisError { kind: "UNEXPECTED".to_string(), message: format!("expected {what}, got {got:?}") }
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.message)
    }
}

impl std::error::Error for RedisError {}

pub type Reply = Result<Value, RedisError>;
pub type CommandId = u64;

/// A command: its name and arguments, as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command(pub Vec<Vec<u8>>);

impl Command {
    pub fn new(name: &str) -> Self {
        Command(vec![name.as_bytes().to_vec()])
    }

    #[must_use]
    pub fn arg(mut self, a: impl AsRef<[u8]>) -> Self {
        self.0.push(a.as_ref().to_vec());
        self
    }

    #[must_use]
    pub fn arg_int(self, n: i64) -> Self {
        let mut b = itoa::Buffer::new();
        let s = b.format(n).to_string();
        self.arg(s)
    }
}

#[derive(Debug, PartialEq)]
pub enum RedisEvent {
    /// Handshake done on a new connection.
    Ready,
    Reply { id: CommandId, reply: Reply },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub max_pending: usize,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis queue full ({} commands waiting); retry after replies arrive", self.max_pending)
    }
}

/// Who is waiting for the next reply.
enum Waiter {
    /// A handshake command; its reply is checked here.
    Handshake(&'static str),
    Caller(CommandId),
}

pub struct RedisConn {
    config: RedisConfig,
    resp: Resp,
    up: bool,
    ready: bool,
    inbuf: BytesMut,
    out: BytesMut,
    sent: VecDeque<Waiter>,
    /// The `Caller` entries of `sent` (handshake commands are not counted).
    callers_sent: usize,
    unsent: VecDeque<(CommandId, Command)>,
    next_id: CommandId,
    max_pending: usize,
    events: VecDeque<RedisEvent>,
}

impl RedisConn {
    pub fn new(config: RedisConfig, resp: Resp, max_pending: usize) -> Self {
        RedisConn {
            config,
            resp,
            up: false,
            ready: false,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            sent: VecDeque::new(),
            callers_sent: 0,
            unsent: VecDeque::new(),
            next_id: 0,
            max_pending: max_pending.max(1),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Caller commands held (sent and waiting, plus not yet sent).
    pub fn pending(&self) -> usize {
        self.callers_sent + self.unsent.len()
    }

    pub fn submit(&mut self, cmd: Command) -> Result<CommandId, Full> {
        if self.pending() >= self.max_pending {
            return Err(Full { max_pending: self.max_pending });
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.ready {
            self.send(id, &cmd);
        } else {
            self.unsent.push_back((id, cmd));
        }
        Ok(id)
    }

    #[must_use = "drain until None"]
    pub fn poll_event(&mut self) -> Option<RedisEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, id: CommandId, cmd: &Command) {
        self.encode(cmd);
        self.sent.push_back(Waiter::Caller(id));
        self.callers_sent += 1;
    }

    fn encode(&mut self, cmd: &Command) {
        let args: Vec<BorrowedFrame<'_>> = cmd.0.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        let frame = BorrowedFrame::Array(&args);
        // Cannot fail: extend_encode grows the buffer to the frame's length first.
        let _ = redis_protocol::resp2::encode::extend_encode_borrowed(&mut self.out, &frame, false);
    }

    fn finish_handshake_if_done(&mut self) {
        if self.up && !self.ready && self.sent.is_empty() {
            self.ready = true;
            self.events.push_back(RedisEvent::Ready);
            while let Some((id, cmd)) = self.unsent.pop_front() {
                self.send(id, &cmd);
            }
        }
    }

    /// Decodes one complete frame from the front of `inbuf`.
    fn decode_one(&mut self) -> Result<Option<(Value, bool)>, String> {
        let decoded = match self.resp {
            Resp::V2 => redis_protocol::resp2::decode::decode(&self.inbuf)
                .map(|o| o.map(|(f, n)| (from_resp2(f), false, n))),
            Resp::V3 => redis_protocol::resp3::decode::complete::decode(&self.inbuf).map(|o| {
                o.map(|(f, n)| {
                    let push = matches!(f, Frame3::Push { .. });
                    (from_resp3(f), push, n)
                })
            }),
        };
        match decoded {
            Ok(Some((v, push, n))) => {
                let _ = self.inbuf.split_to(n);
                Ok(Some((v, push)))
            }
            Ok(None) if self.inbuf.len() > MAX_REPLY => {
                Err(format!("reply larger than the {MAX_REPLY}-byte limit"))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("malformed reply: {e}")),
        }
    }
}

fn from_resp2(f: Frame2) -> Value {
    match f {
        Frame2::SimpleString(s) => Value::Status(String::from_utf8_lossy(&s).into_owned()),
        Frame2::Error(e) => Value::Error(RedisError::from_reply(&e)),
        Frame2::Integer(n) => Value::Int(n),
        Frame2::BulkString(b) => Value::Bulk(b),
        Frame2::Array(a) => Value::Array(a.into_iter().map(from_resp2).collect()),
        Frame2::Null => Value::Nil,
    }
}

fn from_resp3(f: Frame3) -> Value {
    match f {
        Frame3::BlobString { data, .. } | Frame3::ChunkedString(data) | Frame3::BigNumber { data, .. } => {
            Value::Bulk(data)
        }
        Frame3::VerbatimString { data, .. } => Value::Bulk(data),
        Frame3::SimpleString { data, .. } => Value::Status(String::from_utf8_lossy(&data).into_owned()),
        Frame3::BlobError { data, .. } => Value::Error(RedisError::from_reply(&String::from_utf8_lossy(&data))),
        Frame3::SimpleError { data, .. } => Value::Error(RedisError::from_reply(&data)),
        Frame3::Boolean { data, .. } => Value::Bool(data),
        Frame3::Null => Value::Nil,
        Frame3::Number { data, .. } => Value::Int(data),
        Frame3::Double { data, .. } => Value::Double(data),
        Frame3::Array { data, .. } | Frame3::Push { data, .. } => {
            Value::Array(data.into_iter().map(from_resp3).collect())
        }
        Frame3::Set { data, .. } => Value::Array(data.into_iter().map(from_resp3).collect()),
        Frame3::Map { data, .. } => Value::Map(data.into_iter().map(|(k, v)| (from_resp3(k), from_resp3(v))).collect()),
        // HELLO is a frame a client sends, never a reply.
        Frame3::Hello { .. } => Value::Nil,
    }
}

impl SansIo for RedisConn {
    fn connected(&mut self) {
        self.inbuf.clear();
        self.out.clear();
        self.up = true;
        self.ready = false;
        if self.resp == Resp::V3 {
            self.encode(&Command::new("HELLO").arg("3"));
            self.sent.push_back(Waiter::Handshake("HELLO 3"));
        }
        if self.config.db != 0 {
            self.encode(&Command::new("SELECT").arg_int(i64::from(self.config.db)));
            self.sent.push_back(Waiter::Handshake("SELECT"));
        }
        self.finish_handshake_if_done();
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.inbuf.extend_from_slice(bytes);
        while let Some((value, push)) = self.decode_one()? {
            if push {
                continue;
            }
            let reply = match value {
                Value::Error(e) => Err(e),
                v => Ok(v),
            };
            match self.sent.pop_front() {
                Some(Waiter::Caller(id)) => {
                    self.callers_sent -= 1;
                    self.events.push_back(RedisEvent::Reply { id, reply });
                }
                Some(Waiter::Handshake(what)) => {
                    if let Err(e) = reply {
                        return Err(format!("{what} refused: {e}"));
                    }
                    self.finish_handshake_if_done();
                }
                None => return Err("a reply arrived with no command waiting".to_string()),
            }
        }
        Ok(())
    }

    fn output(&self) -> &[u8] {
        &self.out
    }

    fn advance_output(&mut self, n: usize) {
        let _ = self.out.split_to(n.min(self.out.len()));
    }

    fn disconnected(&mut self, reason: &str) {
        for w in self.sent.drain(..) {
            if let Waiter::Caller(id) = w {
                self.events.push_back(RedisEvent::Reply { id, reply: Err(RedisError::disconnected(reason)) });
            }
        }
        self.callers_sent = 0;
        self.inbuf.clear();
        self.out.clear();
        self.up = false;
        self.ready = false;
    }

    fn is_ready(&self) -> bool {
        self.ready
    }
}
