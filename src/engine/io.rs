//! The engine's boundary values: [`Input`] (everything that can happen to it,
//! serializable so a journal can record and replay it) and [`Output`]
//! (everything it asks the shell to do).

use crate::model::{Candle, Market};
use crate::store::{PersistOutcome, StoreQuery, StoreReadResult, StoreWrite};
use serde::{Deserialize, Serialize};

/// One client frame, serialized once and shared by every client it goes to.
pub type Frame = bytes::Bytes;

/// One event from outside. Time is not part of it: it comes with the call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Start pinned jobs. Sent once by the shell after constructing the engine.
    Start,
    ClientConnected { client: ClientId },
    ClientText { client: ClientId, text: String },
    ClientBinary { client: ClientId, len: usize },
    ClientDisconnected { client: ClientId },
    /// The client's socket can take `budget` more bytes (`Input::WRITE_ALL`:
    /// no limit): frames move from the front of its queue, in order, until
    /// that many bytes are staged (one frame at least), and `poll_client`
    /// hands them out. Writing changes coalescing and the slow-consumer
    /// state, so it is an input like any other (and journaled as one).
    ClientWritable { client: ClientId, budget: usize },
    UpstreamConnected { conn: ConnId },
    UpstreamText { conn: ConnId, text: String },
    /// A WebSocket ping, already answered by the shell with a pong — proof the
    /// connection lives, and a message counted against the exchange's limit.
    UpstreamPing { conn: ConnId },
    UpstreamDisconnected { conn: ConnId, reason: String },
    /// `POST /api/market/ingest/candle_closed` (one candle) or the dev batch
    /// route. Answered by `IngestDone { request }` once stored (or refused).
    IngestClosed {
        #[serde(default)]
        request: u64,
        series_id: String,
        candles: Vec<Candle>,
    },
    /// `POST /api/market/ingest/candle_forming`. Answered at once by
    /// `IngestDone { request }` (published, or refused).
    IngestForming {
        #[serde(default)]
        request: u64,
        series_id: String,
        candle: Candle,
    },
    /// SIGINT/SIGTERM: flush everything, close clients with 1001.
    Shutdown,
    /// SIGHUP: the whitelist and limits re-read from the configuration
    /// (`engine::reload`; the shell refuses a bad file before this).
    Reload { settings: super::reload::Reloadable },
    /// A reader asked for a series (`GET /api/market/candles`): start its job
    /// if it has none, so its history is filled (debounced: a no-op while the
    /// job exists; the job is reaped after the idle TTL like any other).
    /// Answered at once by `IngestDone { request }` (the shell's touch
    /// after a read uses request 0: nobody waits for it).
    TouchSeries {
        #[serde(default)]
        request: u64,
        series_id: String,
    },
    /// The answer to a `RestRequest` (any HTTP status).
    RestResponse {
        id: RestId,
        status: u16,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        used_weight: Option<u32>,
    },
    /// A `RestRequest` could not be carried out (connect, TLS, timeout, …).
    RestFailed { id: RestId, reason: String },
    /// The market's symbol list (from its `exchangeInfo`) as `BASE/QUOTE`
    /// pairs: series of any other symbol are unknown (see `listing.rs`).
    SymbolsListed { market: Market, symbols: Vec<String> },
    /// The answer to a `ReadStore` (journaled, so a replay needs no database).
    StoreRead { op: StoreOp, result: StoreReadResult },
    /// The answer to a `Persist` (journaled, so a replay needs no database).
    Persisted { op: StoreOp, result: PersistOutcome },
    /// Read role: closed candles the ingest leader stored, from the bus
    /// stream entry `entry` (its id, the bus sequence number). Published to
    /// subscribers without persisting; candles at or before the newest one
    /// already delivered for the series are dropped.
    BusClosed { series_id: String, candles: Vec<Candle>, entry: String },
    /// Read role: a forming update from the bus (at most once).
    BusForming { series_id: String, candle: Candle },
    /// Read role: the bus may have lost entries for this node (the stream
    /// was trimmed past the last entry read, a new leader took over, the
    /// leader dropped entries at its bound): every live subscription reads
    /// what it missed from the store, after its cursor.
    BusResync { reason: String },
    /// Ingest role: this node holds the leader lease (`fence`): start the
    /// pinned jobs and accept on-demand ones. Until then it is a standby.
    BusLeader { fence: u64 },
    /// Ingest leader: read node `node`'s clients want `series_id` (or no
    /// longer do). Counted like one subscriber per node: the job starts on
    /// demand, and is reaped after the idle TTL once no node wants it.
    RemoteDemand { node: String, series_id: String, wanted: bool },
    /// Read role: the leader could not start `series_id`'s job (`reason`:
    /// `capacity`): its subscribers here get the error and are unsubscribed.
    BusRefused { series_id: String, reason: String },
}

impl Input {
    /// A `ClientWritable` budget with no limit: every queued frame.
    pub const WRITE_ALL: usize = usize::MAX;
}

/// Ids in the boundary values: plain numbers on the wire (a journal line
/// holds `"client":3`) and in logs, distinct types in code.
macro_rules! boundary_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

boundary_id!(
    /// A client connection (`/ws/market`), numbered by the shell.
    ClientId
);
boundary_id!(
    /// An exchange WebSocket connection, numbered by the engine.
    ConnId
);
boundary_id!(
    /// A REST request (`RestRequest`) and its answer, numbered by the engine.
    RestId
);

/// Names one store effect (`ReadStore`, `Persist`) and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreOp(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    /// Open a WebSocket to `url`; report `UpstreamConnected` or `UpstreamDisconnected`.
    UpstreamConnect { conn: ConnId, market: Market, url: String },
    UpstreamSend { conn: ConnId, text: String },
    /// Close the connection; the engine has already forgotten it.
    UpstreamClose { conn: ConnId, reason: String },
    /// Frames are queued for this client (its queue was empty): hand the
    /// engine `Input::ClientWritable` when its socket can take them, then
    /// `poll_client`.
    ClientReady { client: ClientId },
    /// Close the client with this WebSocket close code; then report
    /// `ClientDisconnected` so its subscriptions are released.
    ClientClose { client: ClientId, code: u16, reason: String },
    Log { level: LogLevel, line: String },
    /// `GET <the market's REST base URL><path>`; answer with `RestResponse` or `RestFailed`.
    RestRequest { id: RestId, market: Market, path: String },
    /// Run `query` against the store (`StoreQuery::run`) and answer with
    /// `StoreRead { op, .. }`, in a later step. Store effects (`ReadStore`,
    /// `Persist`) are carried out in the order they are emitted, as one FIFO,
    /// so a read sees every write emitted before it.
    ReadStore { op: StoreOp, query: StoreQuery },
    /// Carry `write` out (`StoreWrite::run`) and answer with
    /// `Persisted { op, .. }`, in a later step.
    Persist { op: StoreOp, write: StoreWrite },
    /// The answer to an HTTP ingest or touch (`IngestClosed`, `IngestForming`,
    /// `TouchSeries`) with its `request`: `None` when done (a closed ingest:
    /// stored and published), else why not (the HTTP reply's error). Every
    /// such input gets exactly one.
    IngestDone {
        request: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Ingest role: append these closes (already stored, published here in
    /// the same order) to the bus's closed-candle stream.
    BusPublish { series_id: String, candles: Vec<Candle> },
    /// Ingest role: a forming update for read nodes (at most once).
    BusForming { series_id: String, candle: Candle },
    /// Read role: this node's clients want `series_id` (first subscriber) or
    /// no longer do (last one gone); the leader starts or releases its job.
    BusDemand { series_id: String, wanted: bool },
    /// Ingest leader: node `node`'s demand for `series_id` was refused
    /// (`reason`: `capacity`).
    BusRefused { node: String, series_id: String, reason: String },
}
