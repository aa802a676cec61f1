//! A fake Binance market-data exchange for integration tests: it serves the
//! combined-stream WebSocket (`/stream`, `/market/stream`, raw `/ws/...`) on
//! 127.0.0.1, plain or TLS, answers SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS /
//! SET_PROPERTY / GET_PROPERTY like Binance does, enforces the spot limits
//! (messages per rolling second, streams per connection) by closing with 1008,
//! pushes kline frames only to subscribers, and records everything a test wants
//! to assert on: violations, incoming messages with receive times, pings and
//! pongs, connection counts.
//!
//! The same port answers Binance's REST market data (any request line whose
//! path starts with `/api/` or `/fapi/`; everything else is a WebSocket
//! upgrade): klines from a scripted history per (market, symbol, interval) with
//! the real ordering, limit and error rules and the still-forming last candle
//! decided by the fake clock; exchangeInfo and ticker/24hr from scripted
//! markets; request weight per UTC minute of the fake clock with
//! `X-MBX-USED-WEIGHT-1M`, 429 and 418 with `Retry-After`; injectable failures,
//! delays and dropped connections; and a log of every REST request.
//!
//! It owns its threads (one accept thread, one per connection, one optional
//! synthetic cadence thread) and ends all of them, within a bounded time, when
//! the `FakeExchange` is dropped. Every blocking read and write has a timeout.
//! The accept thread and each WebSocket connection's thread are event-driven:
//! each blocks in its own `mio::Poll` on its socket and a `mio::Waker`, so a
//! frame a test queues is written at once (no polling interval in between).
//! It must never bind anything but loopback and never reach the network.
//!
//! Include it from a test file with
//! `#[path = "support/fake_exchange.rs"] mod fake_exchange;`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{WebSocket, WebSocketConfig};
use tungstenite::{Bytes, Message};

/// How often `wait_until` looks at its condition (the test thread's own wait).
const WAIT_STEP: Duration = Duration::from_millis(5);
/// Longest a connection or the accept thread blocks in its poll with nothing to
/// do: wakers end every wait that matters (queued frames, shutdown, silence
/// lifted); this cap only bounds how long a lost wake-up could stall it.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// After a failed `accept` (other than "nothing to accept"), wait this long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(5);
/// Messages one connection reads in a row before it looks at its outbound
/// queue again (reads resume without waiting for a new readiness event).
const READ_BURST: usize = 64;
/// mio tokens of a connection's (and the accept thread's) poll.
const SOCKET: mio::Token = mio::Token(0);
const WAKE: mio::Token = mio::Token(1);
/// A client that does not finish TLS + the WebSocket upgrade in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// One blocked write gives up after this (the frame stays buffered for later).
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// A client that has not taken our bytes for this long is dropped (reset).
const SLOW_CLIENT_LIMIT: Duration = Duration::from_secs(5);
/// After we send a close frame we wait this long for the client's reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Frames queued for one connection but not yet written.
const OUTBOUND_CAPACITY: usize = 65_536;
/// Bytes tungstenite may buffer for a slow client before the connection is dropped.
const MAX_WRITE_BUFFER: usize = 16 << 20;
/// Entries kept in the incoming-message log; later ones are counted, not kept.
const LOG_CAPACITY: usize = 100_000;
/// Candles a cadence stream may close in one clock jump; beyond that it skips ahead.
const MAX_CLOSES_PER_ROLL: usize = 100;
/// The rolling window of the incoming-message limit.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A request head (request line + headers) longer than this is refused.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// A kept-alive REST connection with no new request for this long is closed.
const REST_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Candles `fill_history` may create in one call (a larger range is a broken test).
const MAX_FILL: i64 = 2_000_000;

// ---------------------------------------------------------------------------
// Options and records
// ---------------------------------------------------------------------------

/// How the fake exchange behaves. `FakeOptions::default()` is Binance spot.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Serve `wss://` with a certificate from a CA generated at start (see `ca_pem`).
    pub tls: bool,
    /// Incoming messages (text, binary, ping, pong) allowed in any rolling second;
    /// one more closes the connection with 1008 "Too many requests". Spot 5, USD-M 10.
    pub max_msgs_per_sec: usize,
    /// Subscriptions allowed on one connection; more gives error code 4 and close 1008.
    pub max_streams: usize,
    /// Send a ping (payload: the fake clock in ms, as text) this often.
    pub ping_interval: Option<Duration>,
    /// Drop a connection whose pong has not arrived this long after a ping.
    pub pong_timeout: Option<Duration>,
    /// Start of the fake clock in ms since the epoch; default: the wall clock.
    pub clock_start_ms: Option<i64>,
    /// Network delay variation on the way in: each message is seen by the rate
    /// limit up to this much later than it was read (a seeded pseudo-random
    /// amount per message, order kept), so messages sent evenly can arrive
    /// bunched, as over a real network. Zero: seen when read.
    pub arrival_jitter: Duration,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            tls: false,
            max_msgs_per_sec: 5,
            max_streams: 1024,
            ping_interval: None,
            pong_timeout: None,
            clock_start_ms: None,
            arrival_jitter: Duration::ZERO,
        }
    }
}

impl FakeOptions {
    /// Binance spot limits (the default).
    pub fn spot() -> Self {
        Self::default()
    }

    /// Binance USD-M limits: 10 incoming messages per second.
    pub fn usdm() -> Self {
        FakeOptions {
            max_msgs_per_sec: 10,
            ..Self::default()
        }
    }

    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// What happens to a new TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectMode {
    /// Normal service.
    Accept,
    /// Accept the TCP connection and close it at once, before any handshake.
    CloseTcp,
    /// Answer the WebSocket upgrade with this HTTP status (e.g. 429, 503).
    HttpStatus(u16),
}

/// Something the client did that Binance would punish or reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// More than `max_msgs_per_sec` incoming messages in a rolling second (closed 1008).
    TooManyMessages,
    /// More than `max_streams` subscriptions (error code 4, closed 1008).
    TooManySubscriptions,
    /// A control message Binance answers with an error (codes 0 to 3).
    InvalidRequest,
    /// A subscribed name that is not `<lowercase symbol>@kline_<interval>`: Binance
    /// acks it and then sends nothing, so it is almost always a client bug.
    BadStreamName,
    /// No pong within `pong_timeout` of a ping (connection dropped).
    PongTimeout,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub conn: u64,
    pub kind: ViolationKind,
    pub at: Instant,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncomingKind {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

impl IncomingKind {
    /// Binance counts pings, pongs and control messages against the rate limit.
    fn counts_toward_limit(self) -> bool {
        !matches!(self, IncomingKind::Close)
    }
}

/// One message received from a client, with its receive time.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub conn: u64,
    pub at: Instant,
    pub kind: IncomingKind,
    /// The text, or the ping/pong payload read as UTF-8 (lossy).
    pub text: String,
}

/// A server ping and, if it came, the matching pong.
#[derive(Clone, Debug)]
pub struct PingRecord {
    pub conn: u64,
    pub payload: String,
    pub sent_at: Instant,
    pub pong_at: Option<Instant>,
}

/// One open connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    /// Request path and query, e.g. `/market/stream?streams=btcusdt@kline_1m`.
    pub path: String,
    /// Combined (`{"stream":..,"data":..}`) or raw payloads.
    pub combined: bool,
    /// In subscription order.
    pub subscriptions: Vec<String>,
    pub opened_at: Instant,
}

/// How a capture is replayed.
#[derive(Clone, Debug, Default)]
pub struct PlayOptions {
    /// `None`: as fast as possible. `Some(s)`: sleep (gap in `E`) / s between frames.
    pub speed: Option<f64>,
    /// Added to `E`, `k.t` and `k.T` of every frame (move a 2021 capture to now).
    pub shift_ms: i64,
    /// Stop after this many frames.
    pub max_frames: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlayReport {
    /// Frames read from the file.
    pub frames: usize,
    /// Frame deliveries (one frame to two subscribers counts two).
    pub delivered: usize,
    /// Lines that were neither a combined frame nor a raw kline payload.
    pub skipped_lines: usize,
}

// ---------------------------------------------------------------------------
// Kline frames
// ---------------------------------------------------------------------------

/// A Binance kline event with every field, prices as decimal strings.
#[derive(Clone, Debug, PartialEq)]
pub struct KlineFrame {
    pub event_time_ms: i64,
    /// Uppercase, as Binance sends it.
    pub symbol: String,
    pub interval: String,
    pub open_time_ms: i64,
    pub close_time_ms: i64,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub open: String,
    pub close: String,
    pub high: String,
    pub low: String,
    pub volume: String,
    pub trades: u64,
    pub is_final: bool,
    pub quote_volume: String,
    pub taker_buy_base: String,
    pub taker_buy_quote: String,
}

impl KlineFrame {
    /// A realistic frame for `stream` (`btcusdt@kline_1m`) with spot precision (8
    /// places). Derived fields: `T = t + interval - 1`, `q = v * c`, taker buy half
    /// of it, `n = 0` and `f = L = -1` when `v` is zero. `E` is `t` for a forming
    /// frame and `T + 1` for a final one (the exchange overrides it with its clock).
    /// Panics on a stream name that is not a kline stream (a broken test).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: &str,
        open_time_ms: i64,
        o: f64,
        h: f64,
        l: f64,
        c: f64,
        v: f64,
        is_final: bool,
    ) -> Self {
        let (symbol, interval) = parse_kline_stream(stream)
            .unwrap_or_else(|| panic!("not a kline stream name: {stream:?}"));
        let interval_ms =
            interval_ms(&interval).unwrap_or_else(|| panic!("unknown interval in {stream:?}"));
        let close_time_ms = open_time_ms + interval_ms - 1;
        let empty = v == 0.0;
        let trades = if empty { 0 } else { 10 };
        let first_trade_id = if empty { -1 } else { 1_000 };
        let last_trade_id = if empty {
            -1
        } else {
            first_trade_id + trades as i64 - 1
        };
        let quote = v * c;
        KlineFrame {
            event_time_ms: if is_final {
                close_time_ms + 1
            } else {
                open_time_ms
            },
            symbol: symbol.to_ascii_uppercase(),
            interval,
            open_time_ms,
            close_time_ms,
            first_trade_id,
            last_trade_id,
            open: format!("{o:.8}"),
            close: format!("{c:.8}"),
            high: format!("{h:.8}"),
            low: format!("{l:.8}"),
            volume: format!("{v:.8}"),
            trades,
            is_final,
            quote_volume: format!("{quote:.8}"),
            taker_buy_base: format!("{:.8}", v / 2.0),
            taker_buy_quote: format!("{:.8}", quote / 2.0),
        }
    }

    /// The `data` payload, fields in Binance's order.
    pub fn data_json(&self) -> String {
        format!(
            concat!(
                r#"{{"e":"kline","E":{},"s":{},"k":{{"t":{},"T":{},"s":{},"i":{},"f":{},"L":{},"#,
                r#""o":{},"c":{},"h":{},"l":{},"v":{},"n":{},"x":{},"q":{},"V":{},"Q":{},"B":"0"}}}}"#
            ),
            self.event_time_ms,
            json_str(&self.symbol),
            self.open_time_ms,
            self.close_time_ms,
            json_str(&self.symbol),
            json_str(&self.interval),
            self.first_trade_id,
            self.last_trade_id,
            json_str(&self.open),
            json_str(&self.close),
            json_str(&self.high),
            json_str(&self.low),
            json_str(&self.volume),
            self.trades,
            self.is_final,
            json_str(&self.quote_volume),
            json_str(&self.taker_buy_base),
            json_str(&self.taker_buy_quote),
        )
    }

    /// The combined-stream form `{"stream":..,"data":..}`.
    pub fn combined_json(&self, stream: &str) -> String {
        combined(stream, &self.data_json())
    }
}

fn combined(stream: &str, data: &str) -> String {
    format!(r#"{{"stream":{},"data":{}}}"#, json_str(stream), data)
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `btcusdt@kline_1m` → (`btcusdt`, `1m`), only for lowercase symbols and known intervals.
pub fn parse_kline_stream(stream: &str) -> Option<(String, String)> {
    let (symbol, rest) = stream.split_once('@')?;
    let interval = rest.strip_prefix("kline_")?;
    let symbol_ok = !symbol.is_empty()
        && symbol
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !symbol_ok || interval_ms(interval).is_none() {
        return None;
    }
    Some((symbol.to_string(), interval.to_string()))
}

/// Binance kline intervals in ms (`1M` counted as 30 days: the fake has no calendar).
pub fn interval_ms(interval: &str) -> Option<i64> {
    const KNOWN: [(&str, i64); 16] = [
        ("1s", 1_000),
        ("1m", 60_000),
        ("3m", 180_000),
        ("5m", 300_000),
        ("15m", 900_000),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("2h", 7_200_000),
        ("4h", 14_400_000),
        ("6h", 21_600_000),
        ("8h", 28_800_000),
        ("12h", 43_200_000),
        ("1d", 86_400_000),
        ("3d", 259_200_000),
        ("1w", 604_800_000),
        ("1M", 2_592_000_000),
    ];
    KNOWN
        .iter()
        .find(|(name, _)| *name == interval)
        .map(|(_, ms)| *ms)
}

/// Path of a file under `shared/data/cryptofeed/derived/`, if it is present.
pub fn derived_capture(name: &str) -> Option<PathBuf> {
    let path = Path::new(concat!(
        env!("KLINEGATE_SHARED_DATA_DIR"),
        "/cryptofeed/derived/"
    ))
    .join(name);
    path.exists().then_some(path)
}

/// The distinct stream names in a capture file, sorted.
pub fn capture_streams(path: &Path) -> io::Result<Vec<String>> {
    let file = std::fs::File::open(path)?;
    let mut streams = BTreeSet::new();
    for line in BufReader::new(file).lines() {
        if let Some((stream, _)) = parse_capture_line(&line?) {
            streams.insert(stream);
        }
    }
    Ok(streams.into_iter().collect())
}

/// A capture line is a combined frame or a raw kline payload; returns (stream, data text).
fn parse_capture_line(line: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    if let (Some(stream), Some(data)) = (
        value.get("stream").and_then(Value::as_str),
        value.get("data"),
    ) {
        return Some((
            stream.to_string(),
            verbatim_data(line).unwrap_or_else(|| data.to_string()),
        ));
    }
    let symbol = value.get("s")?.as_str()?.to_ascii_lowercase();
    let interval = value.get("k")?.get("i")?.as_str()?;
    Some((
        format!("{symbol}@kline_{interval}"),
        line.trim().to_string(),
    ))
}

/// The `data` member's text exactly as recorded, when the line has the
/// `{"stream":..,"data":<data>}` shape (keeps Binance's field order).
fn verbatim_data(line: &str) -> Option<String> {
    let line = line.trim();
    let start = line.find(r#""data":"#)? + r#""data":"#.len();
    let data = line.get(start..line.len().checked_sub(1)?)?;
    serde_json::from_str::<Value>(data).ok()?;
    Some(data.to_string())
}

/// Adds `shift_ms` to every `"E":`, `"t":` and `"T":` number in a kline payload.
fn shift_times(data: &str, shift_ms: i64) -> String {
    if shift_ms == 0 {
        return data.to_string();
    }
    let mut out = String::with_capacity(data.len() + 8);
    let mut rest = data;
    while let Some(pos) = ["\"E\":", "\"t\":", "\"T\":"]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
    {
        let key_end = pos + 4;
        out.push_str(&rest[..key_end]);
        rest = &rest[key_end..];
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-')
            .count();
        match rest[..digits].parse::<i64>() {
            Ok(n) => out.push_str(&(n + shift_ms).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn event_time_of(data: &str) -> Option<i64> {
    serde_json::from_str::<Value>(data).ok()?.get("E")?.as_i64()
}

// ---------------------------------------------------------------------------
// Synthetic candles
// ---------------------------------------------------------------------------

const UNITS: i64 = 100_000_000; // 1e-8: prices and volumes are exact integers of these

/// A candle that moves by a deterministic random walk, one trade per update.
#[derive(Clone, Debug)]
struct SynthCandle {
    symbol: String,
    interval: String,
    interval_ms: i64,
    open_time_ms: i64,
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: i64,
    quote: i64,
    taker_base: i64,
    taker_quote: i64,
    trades: u64,
    first_id: i64,
    last_id: i64,
    rng: u64,
}

impl SynthCandle {
    fn new(stream: &str, open_time_ms: i64) -> Self {
        let (symbol, interval) = parse_kline_stream(stream)
            .unwrap_or_else(|| panic!("not a kline stream name: {stream:?}"));
        let interval_ms = interval_ms(&interval).unwrap_or(60_000);
        let seed = fnv1a(stream.as_bytes());
        let price = (100 + (seed % 900) as i64) * UNITS;
        SynthCandle {
            symbol: symbol.to_ascii_uppercase(),
            interval,
            interval_ms,
            open_time_ms: open_time_ms - open_time_ms.rem_euclid(interval_ms),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 0,
            quote: 0,
            taker_base: 0,
            taker_quote: 0,
            trades: 0,
            first_id: -1,
            last_id: (seed % 1_000_000) as i64 * 1_000,
            rng: seed | 1,
        }
    }

    fn close_time_ms(&self) -> i64 {
        self.open_time_ms + self.interval_ms - 1
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: deterministic per stream name.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One trade: price moves by -5..=5 cents, quantity 0.001..1.
    fn trade(&mut self) {
        let step = (self.next_random() % 11) as i64 - 5;
        let price = (self.close + step * UNITS / 100).max(UNITS / 100);
        let qty = ((self.next_random() % 1000) as i64 + 1) * UNITS / 1000;
        let notional = (price as i128 * qty as i128 / UNITS as i128) as i64;
        if self.trades == 0 {
            self.first_id = self.last_id + 1;
        }
        self.last_id += 1;
        self.trades += 1;
        self.close = price;
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.volume += qty;
        self.quote += notional;
        if self.next_random() % 2 == 0 {
            self.taker_base += qty;
            self.taker_quote += notional;
        }
    }

    fn frame(&self, event_time_ms: i64, is_final: bool) -> KlineFrame {
        let empty = self.trades == 0;
        KlineFrame {
            event_time_ms,
            symbol: self.symbol.clone(),
            interval: self.interval.clone(),
            open_time_ms: self.open_time_ms,
            close_time_ms: self.close_time_ms(),
            first_trade_id: if empty { -1 } else { self.first_id },
            last_trade_id: if empty { -1 } else { self.last_id },
            open: units(self.open),
            close: units(self.close),
            high: units(self.high),
            low: units(self.low),
            volume: units(self.volume),
            trades: self.trades,
            is_final,
            quote_volume: units(self.quote),
            taker_buy_base: units(self.taker_base),
            taker_buy_quote: units(self.taker_quote),
        }
    }

    /// The next candle opens at this one's close, with no trades yet.
    fn roll_to(&mut self, open_time_ms: i64) {
        self.open_time_ms = open_time_ms;
        self.open = self.close;
        self.high = self.close;
        self.low = self.close;
        self.volume = 0;
        self.quote = 0;
        self.taker_base = 0;
        self.taker_quote = 0;
        self.trades = 0;
        self.first_id = -1;
    }
}

fn units(u: i64) -> String {
    let sign = if u < 0 { "-" } else { "" };
    let a = u.unsigned_abs();
    format!("{sign}{}.{:08}", a / UNITS as u64, a % UNITS as u64)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

enum Outbound {
    Text(String),
    Ping(Vec<u8>),
    Close(u16, String),
    /// Reset the TCP connection (linger 0) without a close frame.
    Kill,
}

struct ConnEntry {
    info: ConnInfo,
    tx: SyncSender<Outbound>,
    /// Wakes the connection's thread out of its poll (a frame was queued, the
    /// exchange stops, silence ended).
    waker: Arc<mio::Waker>,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    conns: BTreeMap<u64, ConnEntry>,
    tcp_accepts: u64,
    ws_connects: u64,
    rejected: u64,
    violations: Vec<Violation>,
    incoming: Vec<Incoming>,
    incoming_dropped: u64,
    pings: Vec<PingRecord>,
    unmatched_pongs: u64,
    frames_queued: u64,
    outbound_overflow: u64,
    synth: BTreeMap<String, SynthCandle>,
    cadence: BTreeSet<String>,
    /// Streams whose frames are withheld (the connection, pings and replies go
    /// on) until a client SUBSCRIBEs to them again: a frozen stream.
    frozen: BTreeSet<String>,
    workers: Vec<JoinHandle<()>>,
}

impl State {
    fn violation(&mut self, conn: u64, kind: ViolationKind, detail: String) {
        self.violations.push(Violation {
            conn,
            kind,
            at: Instant::now(),
            detail,
        });
    }

    /// Queues `text` for one connection; a full queue is counted, not waited on.
    fn send(&mut self, conn: u64, out: Outbound) -> bool {
        let Some(entry) = self.conns.get(&conn) else {
            return false;
        };
        match entry.tx.try_send(out) {
            Ok(()) => {
                // A failed wake leaves the frame for the next turn (IDLE_WAIT at worst).
                let _ = entry.waker.wake();
                true
            }
            Err(TrySendError::Full(_)) => {
                self.outbound_overflow += 1;
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Sends `data` to every connection subscribed to `stream`, wrapped or raw
    /// per connection. Returns how many connections it was queued for.
    fn push_data(&mut self, stream: &str, data: &str) -> usize {
        if self.frozen.contains(stream) {
            return 0;
        }
        let targets: Vec<(u64, bool)> = self
            .conns
            .values()
            .filter(|c| c.info.subscriptions.iter().any(|s| s == stream))
            .map(|c| (c.info.id, c.info.combined))
            .collect();
        let wrapped = combined(stream, data);
        let mut delivered = 0;
        for (id, is_combined) in targets {
            let text = if is_combined {
                wrapped.clone()
            } else {
                data.to_string()
            };
            if self.send(id, Outbound::Text(text)) {
                delivered += 1;
            }
        }
        self.frames_queued += delivered as u64;
        delivered
    }

    fn push_text_to_subscribers(&mut self, stream: &str, text: &str) -> usize {
        if self.frozen.contains(stream) {
            return 0;
        }
        let targets: Vec<u64> = self
            .conns
            .values()
            .filter(|c| c.info.subscriptions.iter().any(|s| s == stream))
            .map(|c| c.info.id)
            .collect();
        let delivered = targets
            .into_iter()
            .filter(|id| self.send(*id, Outbound::Text(text.to_string())))
            .count();
        self.frames_queued += delivered as u64;
        delivered
    }
}

struct Shared {
    opts: FakeOptions,
    tls: Option<Arc<ServerConfig>>,
    shutdown: AtomicBool,
    silent: AtomicBool,
    reject: Mutex<RejectMode>,
    clock_offset_ms: AtomicI64,
    state: Mutex<State>,
    rest: Mutex<RestState>,
}

/// Locks, ignoring poison: a test that panicked while holding the lock must not
/// turn every later assertion into a second, confusing panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn now_ms(&self) -> i64 {
        wall_ms() + self.clock_offset_ms.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Every connection thread looks at its state again now.
    fn wake_all(&self) {
        for entry in self.state().conns.values() {
            let _ = entry.waker.wake();
        }
    }

    fn forming_update(&self, stream: &str) -> usize {
        let now = self.now_ms();
        let mut state = self.state();
        let candle = state
            .synth
            .entry(stream.to_string())
            .or_insert_with(|| SynthCandle::new(stream, now));
        candle.trade();
        let event_time = now.clamp(candle.open_time_ms, candle.close_time_ms());
        let data = candle.frame(event_time, false).data_json();
        state.push_data(stream, &data)
    }

    fn close_candle(&self, stream: &str, open_time_ms: i64) -> usize {
        let now = self.now_ms();
        let mut state = self.state();
        Self::close_candle_locked(&mut state, stream, open_time_ms, now)
    }

    /// Final frame for candle `open_time_ms`: the synthetic candle's values when it
    /// is the current one, else an empty candle at the last price. The stream's
    /// synthetic candle then moves to the next interval.
    fn close_candle_locked(state: &mut State, stream: &str, open_time_ms: i64, now: i64) -> usize {
        let candle = state
            .synth
            .entry(stream.to_string())
            .or_insert_with(|| SynthCandle::new(stream, open_time_ms));
        let frame = if candle.open_time_ms == open_time_ms {
            let close_time = candle.close_time_ms();
            candle.frame(now.max(close_time + 1), true)
        } else {
            let mut empty = candle.clone();
            empty.roll_to(open_time_ms);
            empty.frame(now.max(empty.close_time_ms() + 1), true)
        };
        if candle.open_time_ms <= open_time_ms {
            let next = open_time_ms + candle.interval_ms;
            candle.roll_to(next);
        }
        state.push_data(stream, &frame.data_json())
    }

    /// Closes every cadence candle whose close time the fake clock has passed.
    fn roll_cadence(&self) {
        let now = self.now_ms();
        let mut state = self.state();
        let streams: Vec<String> = state.cadence.iter().cloned().collect();
        for stream in streams {
            for _ in 0..MAX_CLOSES_PER_ROLL {
                let current = match state.synth.get(&stream) {
                    Some(c) if c.close_time_ms() < now => c.open_time_ms,
                    _ => break,
                };
                Self::close_candle_locked(&mut state, &stream, current, now);
            }
            // A jump longer than the cap skips the candles in between, like a lost close.
            if let Some(candle) = state.synth.get_mut(&stream) {
                if candle.close_time_ms() < now {
                    let aligned = now - now.rem_euclid(candle.interval_ms);
                    candle.roll_to(aligned);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The exchange
// ---------------------------------------------------------------------------

/// A running fake exchange. Dropping it stops every thread it started.
pub struct FakeExchange {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    accept_thread: Option<JoinHandle<()>>,
    /// Ends the accept thread's wait at shutdown.
    accept_waker: Arc<mio::Waker>,
    cadence: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl FakeExchange {
    /// Binds 127.0.0.1:0 and starts serving. Panics if the test machine cannot
    /// bind loopback or build the TLS config (the test setup is broken then).
    pub fn start(opts: FakeOptions) -> FakeExchange {
        let (tls, ca_pem) = if opts.tls {
            let material = make_tls_material();
            (Some(material.config), Some(material.ca_pem))
        } else {
            (None, None)
        };
        let offset = opts
            .clock_start_ms
            .map(|start| start - wall_ms())
            .unwrap_or(0);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            opts,
            tls,
            shutdown: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            reject: Mutex::new(RejectMode::Accept),
            clock_offset_ms: AtomicI64::new(offset),
            state: Mutex::new(State::default()),
            rest: Mutex::new(RestState::default()),
        });
        let poll = mio::Poll::new().expect("accept poll");
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&listener.as_raw_fd()),
                SOCKET,
                mio::Interest::READABLE,
            )
            .expect("register listener");
        let accept_waker =
            Arc::new(mio::Waker::new(poll.registry(), WAKE).expect("accept waker"));
        let accept_shared = shared.clone();
        let accept_thread = thread::Builder::new()
            .name("fakex-accept".into())
            .spawn(move || accept_loop(accept_shared, listener, poll))
            .expect("spawn accept thread");
        FakeExchange {
            shared,
            addr,
            ca_pem,
            accept_thread: Some(accept_thread),
            accept_waker,
            cadence: Mutex::new(None),
        }
    }

    // -- addresses ---------------------------------------------------------

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:PORT` or `wss://127.0.0.1:PORT` (no path).
    pub fn base_url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// The combined-stream URL, `ws://127.0.0.1:PORT/stream` (or `wss://`).
    pub fn ws_url(&self) -> String {
        format!("{}/stream", self.base_url())
    }

    /// The USD-M style routed URL, `.../market/stream`.
    pub fn market_ws_url(&self) -> String {
        format!("{}/market/stream", self.base_url())
    }

    /// PEM of the CA that signed the server certificate (TLS only). The
    /// certificate is valid for `127.0.0.1` and `localhost`.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Writes the CA PEM to `dir/fake-exchange-ca.pem` (for `--extra-ca`).
    pub fn write_ca_pem(&self, dir: &Path) -> Option<PathBuf> {
        let pem = self.ca_pem.as_ref()?;
        let path = dir.join("fake-exchange-ca.pem");
        std::fs::write(&path, pem).expect("write CA PEM");
        Some(path)
    }

    // -- pushing frames ------------------------------------------------------

    /// A kline frame (see `KlineFrame::new`) with `E` from the fake clock, to every
    /// connection subscribed to `stream`. Returns the number of connections.
    #[allow(clippy::too_many_arguments)]
    pub fn push_kline(
        &self,
        stream: &str,
        open_time_ms: i64,
        o: f64,
        h: f64,
        l: f64,
        c: f64,
        v: f64,
        is_final: bool,
    ) -> usize {
        let mut frame = KlineFrame::new(stream, open_time_ms, o, h, l, c, v, is_final);
        let now = self.now_ms();
        frame.event_time_ms = if is_final {
            now.max(frame.close_time_ms + 1)
        } else {
            now.clamp(frame.open_time_ms, frame.close_time_ms)
        };
        self.push_frame(stream, &frame)
    }

    /// `frame` as given (its `E` untouched) to subscribers of `stream`.
    pub fn push_frame(&self, stream: &str, frame: &KlineFrame) -> usize {
        self.push_data(stream, &frame.data_json())
    }

    /// Any payload, wrapped as `{"stream":..,"data":<data>}` for combined connections.
    pub fn push_data(&self, stream: &str, data: &str) -> usize {
        self.shared.state().push_data(stream, data)
    }

    /// `text` exactly as given (no wrapping) to subscribers of `stream`:
    /// for malformed or unusual frames.
    pub fn push_raw(&self, stream: &str, text: &str) -> usize {
        self.shared.state().push_text_to_subscribers(stream, text)
    }

    /// `text` exactly as given to every connection, subscribed or not.
    pub fn broadcast_raw(&self, text: &str) -> usize {
        let mut state = self.shared.state();
        let ids: Vec<u64> = state.conns.keys().copied().collect();
        ids.into_iter()
            .filter(|id| state.send(*id, Outbound::Text(text.to_string())))
            .count()
    }

    /// Binance's `serverShutdown` event to every connection.
    pub fn send_server_shutdown(&self) -> usize {
        let data = format!(r#"{{"e":"serverShutdown","E":{}}}"#, self.now_ms());
        let mut state = self.shared.state();
        let targets: Vec<(u64, bool)> = state
            .conns
            .values()
            .map(|c| (c.info.id, c.info.combined))
            .collect();
        targets
            .into_iter()
            .filter(|(id, is_combined)| {
                let text = if *is_combined {
                    combined("!serverShutdown", &data)
                } else {
                    data.clone()
                };
                state.send(*id, Outbound::Text(text))
            })
            .count()
    }

    /// Replays a capture (combined frames or raw kline payloads, one per line) to
    /// subscribers, in the calling thread. Frames for streams nobody subscribed
    /// to are read and dropped, like the exchange would never have sent them.
    pub fn play_capture(&self, path: &Path, opts: &PlayOptions) -> io::Result<PlayReport> {
        let file = std::fs::File::open(path)?;
        let mut report = PlayReport::default();
        let mut previous_event: Option<i64> = None;
        for line in BufReader::new(file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            if opts.max_frames.is_some_and(|max| report.frames >= max) || self.shared.stopping() {
                break;
            }
            let Some((stream, data)) = parse_capture_line(&line) else {
                report.skipped_lines += 1;
                continue;
            };
            let event = event_time_of(&data);
            if let (Some(speed), Some(prev), Some(now)) = (opts.speed, previous_event, event) {
                let gap_ms = ((now - prev).max(0) as f64 / speed.max(1e-6)).min(10_000.0);
                thread::sleep(Duration::from_micros((gap_ms * 1000.0) as u64));
            }
            previous_event = event.or(previous_event);
            report.frames += 1;
            report.delivered += self.push_data(&stream, &shift_times(&data, opts.shift_ms));
        }
        Ok(report)
    }

    // -- synthetic cadence and fake clock -----------------------------------

    /// The fake clock in ms since the epoch (wall clock + offset).
    pub fn now_ms(&self) -> i64 {
        self.shared.now_ms()
    }

    /// Moves the fake clock forward; cadence streams close every candle passed.
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.shared.roll_cadence();
    }

    /// Sets the fake clock; cadence streams close every candle passed.
    pub fn set_clock_ms(&self, ms: i64) {
        self.shared
            .clock_offset_ms
            .store(ms - wall_ms(), Ordering::SeqCst);
        self.shared.roll_cadence();
    }

    /// Open time of the stream's current synthetic candle.
    pub fn current_open_time(&self, stream: &str) -> Option<i64> {
        self.shared
            .state()
            .synth
            .get(stream)
            .map(|c| c.open_time_ms)
    }

    /// One forming (`x:false`) update of the stream's synthetic candle (created
    /// in the fake clock's current interval on first use).
    pub fn forming_update(&self, stream: &str) -> usize {
        self.shared.forming_update(stream)
    }

    /// The final (`x:true`) frame of candle `open_time_ms`, then the synthetic
    /// candle moves to the next interval. Returns the number of connections.
    pub fn close_candle(&self, stream: &str, open_time_ms: i64) -> usize {
        self.shared.close_candle(stream, open_time_ms)
    }

    /// Adds `streams` to the synthetic cadence and starts its thread if needed:
    /// every `every`, each cadence stream gets one forming update, and every
    /// candle whose close time the fake clock passed gets its final frame first.
    pub fn start_cadence(&self, streams: &[&str], every: Duration) {
        let now = self.now_ms();
        {
            let mut state = self.shared.state();
            for stream in streams {
                state.cadence.insert(stream.to_string());
                state
                    .synth
                    .entry(stream.to_string())
                    .or_insert_with(|| SynthCandle::new(stream, now));
            }
        }
        let mut cadence = lock(&self.cadence);
        if cadence.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, thread_stop) = (self.shared.clone(), stop.clone());
        let handle = thread::Builder::new()
            .name("fakex-cadence".into())
            .spawn(move || cadence_loop(shared, thread_stop, every))
            .expect("spawn cadence thread");
        *cadence = Some((stop, handle));
    }

    /// Stops the cadence thread and forgets the cadence streams.
    pub fn stop_cadence(&self) {
        if let Some((stop, handle)) = lock(&self.cadence).take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        self.shared.state().cadence.clear();
    }

    // -- faults --------------------------------------------------------------

    /// Resets every connection (TCP RST, no close frame) and waits, at most 2 s,
    /// until they are gone.
    pub fn drop_all(&self) {
        let ids = self.for_each_conn(|| Outbound::Kill);
        self.wait_gone(&ids, Duration::from_secs(2));
    }

    /// Sends a close frame to every connection and returns at once; each
    /// connection ends when the client's close reply arrives, or 1 s later.
    /// Returns the number of connections asked to close.
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        self.for_each_conn(|| Outbound::Close(code, reason.to_string()))
            .len()
    }

    /// While silent, nothing is sent (frames are discarded, no pings, no control
    /// replies) and nothing is read, so the client sees a stalled exchange.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
        // Connections read what arrived while silent (their poll saw it already).
        self.shared.wake_all();
    }

    /// Freezes `stream`: its frames are dropped while the connection stays open,
    /// pings continue and control requests are answered, until a client sends a
    /// SUBSCRIBE naming it (a resubscription thaws it, as it does on Binance).
    pub fn freeze_stream(&self, stream: &str) {
        self.shared.state().frozen.insert(stream.to_string());
    }

    /// Whether `stream` is still frozen (no SUBSCRIBE for it since `freeze_stream`).
    pub fn is_frozen(&self, stream: &str) -> bool {
        self.shared.state().frozen.contains(stream)
    }

    /// `true`: accept TCP and close at once. `false`: normal service.
    pub fn reject_connections(&self, reject: bool) {
        self.set_reject_mode(if reject {
            RejectMode::CloseTcp
        } else {
            RejectMode::Accept
        });
    }

    pub fn set_reject_mode(&self, mode: RejectMode) {
        *lock(&self.shared.reject) = mode;
    }

    /// Sends a ping with `payload` to every connection now (recorded in `pings`).
    pub fn ping_all(&self, payload: &str) -> usize {
        self.for_each_conn(|| Outbound::Ping(payload.as_bytes().to_vec()))
            .len()
    }

    fn for_each_conn(&self, make: impl Fn() -> Outbound) -> Vec<u64> {
        let mut state = self.shared.state();
        let ids: Vec<u64> = state.conns.keys().copied().collect();
        for id in &ids {
            state.send(*id, make());
        }
        ids
    }

    fn wait_gone(&self, ids: &[u64], timeout: Duration) -> bool {
        self.wait_until(timeout, |ex| {
            let state = ex.shared.state();
            ids.iter().all(|id| !state.conns.contains_key(id))
        })
    }

    // -- observations --------------------------------------------------------

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.shared.state().conns.len()
    }

    /// Completed WebSocket handshakes since start.
    pub fn connect_count(&self) -> u64 {
        self.shared.state().ws_connects
    }

    /// TCP connections accepted since start (including rejected ones).
    pub fn tcp_accept_count(&self) -> u64 {
        self.shared.state().tcp_accepts
    }

    /// Connections refused by `reject_connections` / `set_reject_mode`.
    pub fn rejected_count(&self) -> u64 {
        self.shared.state().rejected
    }

    /// Union of the subscriptions of all connections, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        let state = self.shared.state();
        let all: BTreeSet<&String> = state
            .conns
            .values()
            .flat_map(|c| c.info.subscriptions.iter())
            .collect();
        all.into_iter().cloned().collect()
    }

    /// Subscription count per open connection, in connection order.
    pub fn subscriptions_per_connection(&self) -> Vec<usize> {
        self.shared
            .state()
            .conns
            .values()
            .map(|c| c.info.subscriptions.len())
            .collect()
    }

    pub fn connection_infos(&self) -> Vec<ConnInfo> {
        self.shared
            .state()
            .conns
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.shared.state().violations.clone()
    }

    pub fn violation_count(&self) -> usize {
        self.shared.state().violations.len()
    }

    /// Every message received from any client, in order, with receive times.
    pub fn incoming(&self) -> Vec<Incoming> {
        self.shared.state().incoming.clone()
    }

    /// Only the text (control) messages.
    pub fn control_messages(&self) -> Vec<Incoming> {
        self.shared
            .state()
            .incoming
            .iter()
            .filter(|m| m.kind == IncomingKind::Text)
            .cloned()
            .collect()
    }

    /// The most rate-limited messages (text, binary, ping, pong) that connection
    /// `conn` sent within any `window`: pacing checks compare it with a limit.
    pub fn max_messages_in_window(&self, conn: u64, window: Duration) -> usize {
        let times: Vec<Instant> = self
            .shared
            .state()
            .incoming
            .iter()
            .filter(|m| m.conn == conn && m.kind.counts_toward_limit())
            .map(|m| m.at)
            .collect();
        max_in_window(&times, window)
    }

    pub fn pings(&self) -> Vec<PingRecord> {
        self.shared.state().pings.clone()
    }

    /// Pongs whose payload matched no outstanding ping (unsolicited pongs).
    pub fn unmatched_pongs(&self) -> u64 {
        self.shared.state().unmatched_pongs
    }

    /// Frames queued for clients since start (one per connection reached).
    pub fn frames_queued(&self) -> u64 {
        self.shared.state().frames_queued
    }

    /// Frames discarded because a connection's outbound queue was full.
    pub fn outbound_overflow(&self) -> u64 {
        self.shared.state().outbound_overflow
    }

    // -- waiting ---------------------------------------------------------------

    /// Looks at `cond` every 5 ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&FakeExchange) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(WAIT_STEP);
        }
    }

    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |ex| ex.connections() >= n)
    }

    /// Waits until every stream in `streams` is subscribed on some connection.
    pub fn wait_for_subscriptions(&self, streams: &[&str], timeout: Duration) -> bool {
        self.wait_until(timeout, |ex| {
            let subs = ex.subscriptions();
            streams.iter().all(|s| subs.iter().any(|x| x == s))
        })
    }

    /// Stops every thread. Idempotent; also done by `Drop`.
    pub fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _ = self.accept_waker.wake();
        self.shared.wake_all();
        if let Some((stop, handle)) = lock(&self.cadence).take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        let workers = std::mem::take(&mut self.shared.state().workers);
        for handle in workers {
            let _ = handle.join();
        }
    }
}

impl Drop for FakeExchange {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

fn cadence_loop(shared: Arc<Shared>, stop: Arc<AtomicBool>, every: Duration) {
    let every = every.max(Duration::from_millis(1));
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::SeqCst) && !shared.stopping() {
        let now = Instant::now();
        if now < next {
            thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next += every;
        shared.roll_cadence();
        let streams: Vec<String> = shared.state().cadence.iter().cloned().collect();
        for stream in streams {
            shared.forming_update(&stream);
        }
    }
}

// ---------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------

struct TlsMaterial {
    ca_pem: String,
    config: Arc<ServerConfig>,
}

/// A fresh CA and a server certificate for `127.0.0.1` / `localhost` signed by it.
fn make_tls_material() -> TlsMaterial {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "klinegate fake exchange test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("sign server cert");

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
        .expect("server TLS config");
    TlsMaterial {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
    }
}

// ---------------------------------------------------------------------------
// Accepting and serving connections
// ---------------------------------------------------------------------------

/// A served byte stream: plain or TLS, plus the bytes already read while
/// peeking at the request line, which are handed out again before new ones
/// (so tungstenite sees the whole upgrade request).
struct ServerStream {
    io: ServerIo,
    replay: Vec<u8>,
    replay_pos: usize,
}

enum ServerIo {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl ServerStream {
    fn new(io: ServerIo) -> Self {
        ServerStream {
            io,
            replay: Vec::new(),
            replay_pos: 0,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.io {
            ServerIo::Plain(s) => s,
            ServerIo::Tls(s) => &s.sock,
        }
    }

    /// `bytes` are read again before anything new from the socket.
    fn replay(&mut self, bytes: Vec<u8>) {
        self.replay = bytes;
        self.replay_pos = 0;
    }
}

impl Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.replay_pos < self.replay.len() {
            let pending = &self.replay[self.replay_pos..];
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            self.replay_pos += n;
            return Ok(n);
        }
        match &mut self.io {
            ServerIo::Plain(s) => s.read(buf),
            ServerIo::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ServerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.io {
            ServerIo::Plain(s) => s.write(buf),
            ServerIo::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            ServerIo::Plain(s) => s.flush(),
            ServerIo::Tls(s) => s.flush(),
        }
    }
}

/// Accepts until the listener would block, then waits in `poll` (listener
/// readable, edge-triggered, or the shutdown waker).
fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut poll: mio::Poll) {
    let mut events = mio::Events::with_capacity(4);
    while !shared.stopping() {
        let tcp = match listener.accept() {
            Ok((tcp, _)) => tcp,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // An error (EINTR) only ends this wait early; the loop looks again.
                let _ = poll.poll(&mut events, Some(IDLE_WAIT));
                continue;
            }
            Err(_) => {
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        let mode = *lock(&shared.reject);
        let id = {
            let mut state = shared.state();
            state.tcp_accepts += 1;
            state.workers.retain(|h| !h.is_finished());
            if mode == RejectMode::CloseTcp {
                state.rejected += 1;
            }
            state.next_conn += 1;
            state.next_conn
        };
        if mode == RejectMode::CloseTcp {
            reset(&tcp);
            continue;
        }
        let conn_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("fakex-conn-{id}"))
            .spawn(move || serve_connection(conn_shared, tcp, id, mode));
        if let Ok(handle) = spawned {
            shared.state().workers.push(handle);
        }
    }
}

/// Closing with linger 0 makes the kernel send RST instead of FIN.
fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, id: u64, mode: RejectMode) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(20)));
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let opened = wrap_stream(&shared, tcp).and_then(|mut stream| {
        let head = read_request_head(&shared, &mut stream, deadline)?;
        Ok((stream, head))
    });
    let (mut stream, head) = match opened {
        Ok(opened) => opened,
        Err(_) => {
            if matches!(mode, RejectMode::HttpStatus(_)) {
                shared.state().rejected += 1;
            }
            return;
        }
    };
    // One port serves both: REST paths are answered here, the rest is a WebSocket upgrade.
    if is_rest_target(&head) {
        serve_rest(&shared, stream, head, id);
        return;
    }
    stream.replay(head);
    let (ws, uri) = match handshake(&shared, stream, mode, deadline) {
        Ok(done) => done,
        Err(_) => {
            if matches!(mode, RejectMode::HttpStatus(_)) {
                shared.state().rejected += 1;
            }
            return;
        }
    };
    let Some(route) = route(&uri) else { return };
    let Ok(waiter) = Waiter::new(ws.get_ref().tcp()) else {
        return;
    };
    let (tx, rx) = mpsc::sync_channel(OUTBOUND_CAPACITY);
    let waker = waiter.waker.clone();
    {
        let mut state = shared.state();
        state.ws_connects += 1;
        let info = ConnInfo {
            id,
            path: uri,
            combined: route.combined,
            subscriptions: Vec::new(),
            opened_at: Instant::now(),
        };
        state.conns.insert(id, ConnEntry { info, tx, waker });
    }
    let mut conn = Conn::new(shared.clone(), id, ws, rx, waiter);
    if !route.initial.is_empty() {
        conn.subscribe(&route.initial, None);
    }
    conn.run();
    shared.state().conns.remove(&id);
}

fn wrap_stream(shared: &Shared, tcp: TcpStream) -> Result<ServerStream, String> {
    let io = match &shared.tls {
        Some(config) => {
            let conn = ServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
            ServerIo::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
        None => ServerIo::Plain(tcp),
    };
    Ok(ServerStream::new(io))
}

/// Reads (through TLS, when configured) until the end of the first request's
/// head, retrying across read timeouts until `deadline` or shutdown. Returns
/// every byte read, which may run past the head.
fn read_request_head(
    shared: &Shared,
    stream: &mut ServerStream,
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while find_head_end(&buf).is_none() {
        if buf.len() > MAX_HTTP_HEAD {
            return Err("request head too large".into());
        }
        match read_some(shared, stream, &mut buf, deadline) {
            Ok(true) => {}
            Ok(false) => return Err("closed before a request".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(buf)
}

/// The WebSocket upgrade on a stream whose request head is queued for replay,
/// retried across read timeouts until `deadline` or shutdown. Returns the request URI.
#[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
fn handshake(
    shared: &Shared,
    stream: ServerStream,
    mode: RejectMode,
    deadline: Instant,
) -> Result<(WebSocket<ServerStream>, String), String> {
    let uri = Rc::new(RefCell::new(String::new()));
    let seen = uri.clone();
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let target = req.uri().to_string();
        if let RejectMode::HttpStatus(status) = mode {
            return Err(http_error(status, "rejected by the fake exchange"));
        }
        if route(&target).is_none() {
            return Err(http_error(404, "no such path on the fake exchange"));
        }
        *seen.borrow_mut() = target;
        Ok(resp)
    };
    let config = WebSocketConfig::default().max_write_buffer_size(MAX_WRITE_BUFFER);
    let mut attempt = tungstenite::accept_hdr_with_config(stream, callback, Some(config));
    loop {
        match attempt {
            Ok(ws) => return Ok((ws, uri.take())),
            Err(HandshakeError::Interrupted(mid)) => {
                if shared.stopping() || Instant::now() >= deadline {
                    return Err("handshake timed out".into());
                }
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(e)) => return Err(e.to_string()),
        }
    }
}

fn http_error(status: u16, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_string()));
    *resp.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::SERVICE_UNAVAILABLE);
    resp
}

struct Route {
    combined: bool,
    initial: Vec<String>,
}

/// `/stream?streams=a/b`, `/ws`, `/ws/a/b`, each optionally under `/market` or `/public`.
fn route(uri: &str) -> Option<Route> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let path = path
        .strip_prefix("/market")
        .or_else(|| path.strip_prefix("/public"))
        .unwrap_or(path);
    let split = |s: &str| {
        s.split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    if path == "/stream" {
        let streams = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("streams="))
            .unwrap_or("");
        return Some(Route {
            combined: true,
            initial: split(streams),
        });
    }
    if path == "/ws" {
        return Some(Route {
            combined: false,
            initial: Vec::new(),
        });
    }
    path.strip_prefix("/ws/").map(|names| Route {
        combined: false,
        initial: split(names),
    })
}

/// What a connection's thread blocks in: its socket (non-blocking from here
/// on, readable and writable, edge-triggered) and its waker.
struct Waiter {
    poll: mio::Poll,
    events: mio::Events,
    waker: Arc<mio::Waker>,
}

impl Waiter {
    fn new(tcp: &TcpStream) -> io::Result<Waiter> {
        tcp.set_nonblocking(true)?;
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&tcp.as_raw_fd()),
            SOCKET,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        Ok(Waiter {
            poll,
            events: mio::Events::with_capacity(4),
            waker,
        })
    }

    /// Until the socket becomes readable or writable, the waker fires, or `timeout`.
    fn wait(&mut self, timeout: Duration) {
        // An error (EINTR) only ends this wait early; the caller looks again.
        let _ = self.poll.poll(&mut self.events, Some(timeout));
    }
}

/// One served connection, owned by its thread.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    ws: WebSocket<ServerStream>,
    rx: Receiver<Outbound>,
    waiter: Waiter,
    recent: VecDeque<Instant>,
    /// When the previous message was seen (arrivals keep their order) and the
    /// state of the jitter generator.
    last_arrival: Option<Instant>,
    jitter_seed: u64,
    outstanding_pings: Vec<(Vec<u8>, usize, Instant)>,
    next_ping: Option<Instant>,
    closing_until: Option<Instant>,
    /// Since when writes have been blocked (the client is not reading).
    blocked_since: Option<Instant>,
}

/// Why a connection's loop ended.
enum End {
    /// Close handshake done, client went away, or a fatal I/O error.
    Gone,
    /// Reset the TCP connection.
    Reset,
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        id: u64,
        ws: WebSocket<ServerStream>,
        rx: Receiver<Outbound>,
        waiter: Waiter,
    ) -> Self {
        let next_ping = shared
            .opts
            .ping_interval
            .map(|every| Instant::now() + every);
        Conn {
            shared,
            id,
            ws,
            rx,
            waiter,
            recent: VecDeque::new(),
            last_arrival: None,
            jitter_seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            outstanding_pings: Vec::new(),
            next_ping,
            closing_until: None,
            blocked_since: None,
        }
    }

    fn silent(&self) -> bool {
        self.shared.silent.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        if let End::Reset = self.serve() {
            reset(self.ws.get_ref().tcp());
        }
    }

    fn serve(&mut self) -> End {
        loop {
            if self.shared.stopping() {
                self.begin_close(1001, "Going away");
                let _ = self.ws.flush();
                return End::Gone;
            }
            if let Some(end) = self.drain_outbound() {
                return end;
            }
            if let Some(end) = self.check_pings() {
                return end;
            }
            let flushed = self.ws.flush();
            if let Some(end) = self.note_write(flushed) {
                return end;
            }
            if self
                .blocked_since
                .is_some_and(|since| since.elapsed() >= SLOW_CLIENT_LIMIT)
            {
                return End::Reset;
            }
            if self
                .closing_until
                .is_some_and(|until| Instant::now() >= until)
            {
                return End::Gone;
            }
            let mut read = 0;
            if !self.silent() || self.closing_until.is_some() {
                while read < READ_BURST {
                    match self.ws.read() {
                        Ok(message) => self.on_message(message),
                        Err(e) if would_block(&e) => break,
                        Err(_) => return End::Gone,
                    }
                    read += 1;
                }
            }
            // Something read (replies to flush, or more to read): go round at once.
            // Otherwise the socket is drained and only an event or a deadline
            // can give this connection work.
            if read == 0 {
                let timeout = self.idle_timeout();
                self.waiter.wait(timeout);
            }
        }
    }

    /// How long the connection may wait for an event: until its nearest
    /// deadline (ping, pong timeout, close linger, slow-client limit).
    fn idle_timeout(&self) -> Duration {
        let pong_deadline = self
            .shared
            .opts
            .pong_timeout
            .and_then(|t| self.outstanding_pings.first().map(|(_, _, sent)| *sent + t));
        let deadlines = [
            self.next_ping,
            pong_deadline,
            self.closing_until,
            self.blocked_since.map(|since| since + SLOW_CLIENT_LIMIT),
        ];
        let now = Instant::now();
        deadlines
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .fold(IDLE_WAIT, Duration::min)
    }

    /// Tracks write progress; `Some` when the connection must end.
    fn note_write(&mut self, result: tungstenite::Result<()>) -> Option<End> {
        match result {
            Ok(()) => {
                self.blocked_since = None;
                None
            }
            Err(e) if would_block(&e) => {
                self.blocked_since.get_or_insert_with(Instant::now);
                None
            }
            Err(_) => Some(End::Gone),
        }
    }

    /// Writes queued frames until the queue is empty or the socket blocks (then
    /// the rest waits, so shutdown and timers are still looked at).
    fn drain_outbound(&mut self) -> Option<End> {
        loop {
            let out = match self.rx.try_recv() {
                Ok(out) => out,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return Some(End::Gone),
            };
            let result = match out {
                Outbound::Kill => return Some(End::Reset),
                Outbound::Close(code, reason) => {
                    self.begin_close(code, &reason);
                    Ok(())
                }
                Outbound::Text(_) | Outbound::Ping(_)
                    if self.silent() || self.closing_until.is_some() =>
                {
                    Ok(())
                }
                Outbound::Text(text) => self.ws.write(Message::text(text)),
                Outbound::Ping(payload) => self.send_ping(payload),
            };
            let blocked = matches!(&result, Err(e) if would_block(e));
            if let Some(end) = self.note_write(result) {
                return Some(end);
            }
            if blocked {
                return None;
            }
        }
    }

    fn send_ping(&mut self, payload: Vec<u8>) -> tungstenite::Result<()> {
        let now = Instant::now();
        let index = {
            let mut state = self.shared.state();
            state.pings.push(PingRecord {
                conn: self.id,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                sent_at: now,
                pong_at: None,
            });
            state.pings.len() - 1
        };
        self.outstanding_pings.push((payload.clone(), index, now));
        self.ws.write(Message::Ping(Bytes::from(payload)))
    }

    /// Periodic server pings and the pong deadline.
    fn check_pings(&mut self) -> Option<End> {
        let now = Instant::now();
        if let Some(timeout) = self.shared.opts.pong_timeout {
            if let Some((_, _, sent)) = self.outstanding_pings.first() {
                if now.duration_since(*sent) >= timeout {
                    let detail = format!("no pong {} ms after ping", timeout.as_millis());
                    self.shared
                        .state()
                        .violation(self.id, ViolationKind::PongTimeout, detail);
                    return Some(End::Reset);
                }
            }
        }
        let (Some(due), Some(every)) = (self.next_ping, self.shared.opts.ping_interval) else {
            return None;
        };
        if now < due || self.silent() || self.closing_until.is_some() {
            return None;
        }
        self.next_ping = Some(now + every);
        let payload = self.shared.now_ms().to_string().into_bytes();
        match self.send_ping(payload) {
            Ok(()) => None,
            Err(e) if would_block(&e) => None,
            Err(_) => Some(End::Gone),
        }
    }

    fn begin_close(&mut self, code: u16, reason: &str) {
        if self.closing_until.is_some() {
            return;
        }
        self.closing_until = Some(Instant::now() + CLOSE_LINGER);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = self.ws.close(Some(frame));
    }

    fn on_message(&mut self, message: Message) {
        let (kind, text) = match &message {
            Message::Text(t) => (IncomingKind::Text, t.as_str().to_string()),
            Message::Binary(b) => (
                IncomingKind::Binary,
                String::from_utf8_lossy(b).into_owned(),
            ),
            Message::Ping(p) => (IncomingKind::Ping, String::from_utf8_lossy(p).into_owned()),
            Message::Pong(p) => (IncomingKind::Pong, String::from_utf8_lossy(p).into_owned()),
            Message::Close(_) => (IncomingKind::Close, String::new()),
            Message::Frame(_) => return,
        };
        let now = self.arrival(Instant::now());
        self.record_incoming(kind, text, now);
        if self.closing_until.is_some() {
            return;
        }
        if kind.counts_toward_limit() && self.over_rate_limit(now) {
            let detail = format!(
                "more than {} messages in 1 s",
                self.shared.opts.max_msgs_per_sec
            );
            self.shared
                .state()
                .violation(self.id, ViolationKind::TooManyMessages, detail);
            self.begin_close(1008, "Too many requests");
            return;
        }
        match message {
            Message::Text(t) => self.on_control(t.as_str()),
            Message::Pong(p) => self.on_pong(&p, now),
            // tungstenite answers pings itself and the close handshake too.
            _ => {}
        }
    }

    /// When the exchange sees a message read at `read_at` (see `arrival_jitter`).
    fn arrival(&mut self, read_at: Instant) -> Instant {
        let max = self.shared.opts.arrival_jitter.as_micros() as u64;
        let mut at = read_at;
        if max > 0 {
            self.jitter_seed ^= self.jitter_seed << 13;
            self.jitter_seed ^= self.jitter_seed >> 7;
            self.jitter_seed ^= self.jitter_seed << 17;
            at += Duration::from_micros(self.jitter_seed % (max + 1));
        }
        let at = self.last_arrival.map_or(at, |last| at.max(last));
        self.last_arrival = Some(at);
        at
    }

    fn record_incoming(&self, kind: IncomingKind, text: String, at: Instant) {
        let mut state = self.shared.state();
        if state.incoming.len() < LOG_CAPACITY {
            state.incoming.push(Incoming {
                conn: self.id,
                at,
                kind,
                text,
            });
        } else {
            state.incoming_dropped += 1;
        }
    }

    /// Strict rolling window: the message at `now` plus those in the previous second.
    fn over_rate_limit(&mut self, now: Instant) -> bool {
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() > self.shared.opts.max_msgs_per_sec
    }

    fn on_pong(&mut self, payload: &[u8], now: Instant) {
        match self
            .outstanding_pings
            .iter()
            .position(|(p, _, _)| p.as_slice() == payload)
        {
            Some(pos) => {
                let (_, index, _) = self.outstanding_pings.remove(pos);
                if let Some(record) = self.shared.state().pings.get_mut(index) {
                    record.pong_at = Some(now);
                }
            }
            None => self.shared.state().unmatched_pongs += 1,
        }
    }

    fn reply(&mut self, text: String) {
        if self.silent() {
            return;
        }
        let _ = self.ws.write(Message::text(text));
    }

    fn reply_error(&mut self, code: i64, msg: &str, id: &Value) {
        self.shared.state().violation(
            self.id,
            ViolationKind::InvalidRequest,
            format!("code {code}: {msg}"),
        );
        self.reply(format!(
            r#"{{"error":{{"code":{code},"msg":{}}},"id":{id}}}"#,
            json_str(msg)
        ));
    }

    /// Binance's control protocol: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS,
    /// SET_PROPERTY / GET_PROPERTY `combined`, with its error codes.
    fn on_control(&mut self, text: &str) {
        let request: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.reply_error(3, &format!("Invalid JSON: {e}"), &Value::Null),
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        if !valid_id(&id) {
            return self.reply_error(
                2,
                "Invalid request: request ID must be an integer, a string or null",
                &Value::Null,
            );
        }
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return self.reply_error(2, "Invalid request: missing field `method`", &id);
        };
        let params = request.get("params");
        match method {
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let Some(names) = string_list(params) else {
                    return self.reply_error(
                        2,
                        "Invalid request: `params` must be a list of stream names",
                        &id,
                    );
                };
                if method == "SUBSCRIBE" {
                    self.subscribe(&names, Some(&id));
                } else {
                    self.unsubscribe(&names);
                    self.reply(format!(r#"{{"result":null,"id":{id}}}"#));
                }
            }
            "LIST_SUBSCRIPTIONS" => {
                let subs = self.info(|c| c.subscriptions.clone()).unwrap_or_default();
                let list = Value::from(subs);
                self.reply(format!(r#"{{"result":{list},"id":{id}}}"#));
            }
            "SET_PROPERTY" => self.set_property(params, &id),
            "GET_PROPERTY" => match params.and_then(|p| p.get(0)).and_then(Value::as_str) {
                Some("combined") => {
                    let combined = self.info(|c| c.combined).unwrap_or(true);
                    self.reply(format!(r#"{{"result":{combined},"id":{id}}}"#));
                }
                _ => self.reply_error(0, "Unknown property", &id),
            },
            other => {
                let msg = format!(
                    "Invalid request: unknown variant `{other}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, \
                     `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
                );
                self.reply_error(2, &msg, &id);
            }
        }
    }

    fn set_property(&mut self, params: Option<&Value>, id: &Value) {
        let name = params.and_then(|p| p.get(0)).and_then(Value::as_str);
        if name != Some("combined") {
            return self.reply_error(0, "Unknown property", id);
        }
        let Some(value) = params.and_then(|p| p.get(1)).and_then(Value::as_bool) else {
            return self.reply_error(1, "Invalid value type: expected Boolean", id);
        };
        self.update_info(|c| c.combined = value);
        self.reply(format!(r#"{{"result":null,"id":{id}}}"#));
    }

    /// Adds names (deduplicated, in order). Over `max_streams`: error code 4 and
    /// close 1008, as observed on Binance. `id` is `None` for URL subscriptions.
    fn subscribe(&mut self, names: &[String], id: Option<&Value>) {
        let max = self.shared.opts.max_streams;
        let id_text = id.cloned().unwrap_or(Value::Null);
        let bad: Vec<&String> = names
            .iter()
            .filter(|n| parse_kline_stream(n).is_none())
            .collect();
        let total = {
            let mut state = self.shared.state();
            for name in &bad {
                state.violation(
                    self.id,
                    ViolationKind::BadStreamName,
                    format!("subscribed {name:?}"),
                );
            }
            let Some(entry) = state.conns.get_mut(&self.id) else {
                return;
            };
            for name in names {
                if !entry.info.subscriptions.contains(name) {
                    entry.info.subscriptions.push(name.clone());
                }
            }
            let total = entry.info.subscriptions.len();
            for name in names {
                state.frozen.remove(name);
            }
            total
        };
        if total > max {
            self.shared.state().violation(
                self.id,
                ViolationKind::TooManySubscriptions,
                format!("{total} subscriptions, limit {max}"),
            );
            self.reply(format!(
                r#"{{"error":{{"code":4,"msg":"Too many subscriptions"}},"id":{id_text}}}"#
            ));
            self.begin_close(1008, "Invalid request");
            return;
        }
        if id.is_some() {
            self.reply(format!(r#"{{"result":null,"id":{id_text}}}"#));
        }
    }

    fn unsubscribe(&mut self, names: &[String]) {
        self.update_info(|c| c.subscriptions.retain(|s| !names.contains(s)));
    }

    fn info<T>(&self, read: impl FnOnce(&ConnInfo) -> T) -> Option<T> {
        self.shared
            .state()
            .conns
            .get(&self.id)
            .map(|c| read(&c.info))
    }

    fn update_info(&self, change: impl FnOnce(&mut ConnInfo)) {
        if let Some(c) = self.shared.state().conns.get_mut(&self.id) {
            change(&mut c.info);
        }
    }
}

/// Spot accepts a 64-bit integer, a string of at most 36 characters, or null.
fn valid_id(id: &Value) -> bool {
    match id {
        Value::Null => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::String(s) => {
            s.len() <= 36
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        _ => false,
    }
}

fn string_list(params: Option<&Value>) -> Option<Vec<String>> {
    params?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

// ---------------------------------------------------------------------------
// REST: public types
// ---------------------------------------------------------------------------

/// Binance spot (`/api/v3/...`).
pub const SPOT: &str = "spot";
/// Binance USD-M futures (`/fapi/v1/...`).
pub const FUTURES: &str = "futures";

/// One kline as the REST API returns it (a 12-field row), prices as decimal strings.
#[derive(Clone, Debug, PartialEq)]
pub struct RestCandle {
    pub open_time_ms: i64,
    pub close_time_ms: i64,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub quote_volume: String,
    pub trades: u64,
    pub taker_buy_base: String,
    pub taker_buy_quote: String,
}

impl RestCandle {
    /// A closed candle with 8-place prices. Derived like `KlineFrame::new`:
    /// `closeTime = openTime + interval - 1`, quote volume `v * c`, taker buy half
    /// of it, 10 trades (0 when `v` is zero). Panics on an unknown interval.
    pub fn new(open_time_ms: i64, interval: &str, o: f64, h: f64, l: f64, c: f64, v: f64) -> Self {
        let step = interval_ms(interval).unwrap_or_else(|| panic!("unknown interval {interval:?}"));
        let quote = v * c;
        RestCandle {
            open_time_ms,
            close_time_ms: open_time_ms + step - 1,
            open: fmt8(o),
            high: fmt8(h),
            low: fmt8(l),
            close: fmt8(c),
            volume: fmt8(v),
            quote_volume: fmt8(quote),
            trades: if v == 0.0 { 0 } else { 10 },
            taker_buy_base: fmt8(v / 2.0),
            taker_buy_quote: fmt8(quote / 2.0),
        }
    }

    /// The row `[openTime,"o","h","l","c","v",closeTime,"q",trades,"V","Q","0"]`.
    pub fn row_json(&self) -> String {
        format!(
            r#"[{},{},{},{},{},{},{},{},{},{},{},"0"]"#,
            self.open_time_ms,
            json_str(&self.open),
            json_str(&self.high),
            json_str(&self.low),
            json_str(&self.close),
            json_str(&self.volume),
            self.close_time_ms,
            json_str(&self.quote_volume),
            self.trades,
            json_str(&self.taker_buy_base),
            json_str(&self.taker_buy_quote),
        )
    }

    /// What the exchange shows for this candle while it is still forming at
    /// `now_ms`: the elapsed fraction `f` of the interval (in whole seconds, so
    /// values change once a second) has happened, so the
    /// close moved `f` of the way from open to the final close, high/low span
    /// open and that close, volumes and trades are `f` of the final ones. At or
    /// after the close time it is the candle itself.
    pub fn forming_at(&self, now_ms: i64) -> RestCandle {
        let span = (self.close_time_ms - self.open_time_ms + 1).max(1) as f64;
        // Whole seconds only, so two reads a few ms apart agree.
        let elapsed = (now_ms - self.open_time_ms).max(0);
        let f = ((elapsed - elapsed % 1000) as f64 / span).clamp(0.0, 1.0);
        if now_ms > self.close_time_ms {
            return self.clone();
        }
        let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        let o = num(&self.open);
        let c = o + (num(&self.close) - o) * f;
        RestCandle {
            high: fmt8(o.max(c)),
            low: fmt8(o.min(c)),
            close: fmt8(c),
            volume: fmt8(num(&self.volume) * f),
            quote_volume: fmt8(num(&self.quote_volume) * f),
            trades: (self.trades as f64 * f) as u64,
            taker_buy_base: fmt8(num(&self.taker_buy_base) * f),
            taker_buy_quote: fmt8(num(&self.taker_buy_quote) * f),
            ..self.clone()
        }
    }

    /// The same values as a WebSocket kline event (trade ids made up, consistent
    /// with `trades`).
    pub fn to_frame(
        &self,
        symbol: &str,
        interval: &str,
        event_time_ms: i64,
        is_final: bool,
    ) -> KlineFrame {
        let (first, last) = if self.trades == 0 {
            (-1, -1)
        } else {
            (1_000, 1_000 + self.trades as i64 - 1)
        };
        KlineFrame {
            event_time_ms,
            symbol: symbol.to_ascii_uppercase(),
            interval: interval.to_string(),
            open_time_ms: self.open_time_ms,
            close_time_ms: self.close_time_ms,
            first_trade_id: first,
            last_trade_id: last,
            open: self.open.clone(),
            close: self.close.clone(),
            high: self.high.clone(),
            low: self.low.clone(),
            volume: self.volume.clone(),
            trades: self.trades,
            is_final,
            quote_volume: self.quote_volume.clone(),
            taker_buy_base: self.taker_buy_base.clone(),
            taker_buy_quote: self.taker_buy_quote.clone(),
        }
    }
}

fn fmt8(x: f64) -> String {
    format!("{x:.8}")
}

/// One symbol of a scripted market, for exchangeInfo and ticker/24hr.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeSymbol {
    /// e.g. `BTCUSDT`.
    pub symbol: String,
    pub base: String,
    pub quote: String,
    /// `TRADING`, `BREAK`, `HALT`, ... (futures also `SETTLING`, `PENDING_TRADING`).
    pub status: String,
    /// Futures only; `None` on a futures market is served as `PERPETUAL`.
    pub contract_type: Option<String>,
    pub last_price: String,
    pub quote_volume: String,
    pub price_change_percent: String,
}

impl FakeSymbol {
    /// A trading spot-style symbol `base + quote`, last price 100, quote volume 1e6, +0%.
    pub fn new(base: &str, quote: &str) -> Self {
        FakeSymbol {
            symbol: format!("{base}{quote}"),
            base: base.to_string(),
            quote: quote.to_string(),
            status: "TRADING".to_string(),
            contract_type: None,
            last_price: "100.00000000".to_string(),
            quote_volume: "1000000.00000000".to_string(),
            price_change_percent: "0.000".to_string(),
        }
    }

    /// A trading USD-M perpetual.
    pub fn perpetual(base: &str, quote: &str) -> Self {
        FakeSymbol {
            contract_type: Some("PERPETUAL".to_string()),
            ..Self::new(base, quote)
        }
    }

    pub fn with_status(mut self, status: &str) -> Self {
        self.status = status.to_string();
        self
    }

    pub fn with_contract_type(mut self, contract_type: &str) -> Self {
        self.contract_type = Some(contract_type.to_string());
        self
    }

    /// ticker/24hr values, as the exchange's decimal strings.
    pub fn with_ticker(
        mut self,
        last_price: &str,
        quote_volume: &str,
        price_change_percent: &str,
    ) -> Self {
        self.last_price = last_price.to_string();
        self.quote_volume = quote_volume.to_string();
        self.price_change_percent = price_change_percent.to_string();
        self
    }
}

/// The request-weight limiter of one market.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestLimits {
    /// `REQUEST_WEIGHT` per UTC minute of the fake clock: spot 6000, USD-M 2400.
    pub weight_per_minute: u32,
    /// Over-limit requests answered 429 within one minute before the next one
    /// is banned with 418. `None`: never ban.
    pub ban_after_429s: Option<u32>,
    /// How long a ban lasts on the fake clock (Binance: 2 minutes to 3 days).
    pub ban: Duration,
}

impl RestLimits {
    pub fn spot() -> Self {
        RestLimits {
            weight_per_minute: 6000,
            ban_after_429s: Some(3),
            ban: Duration::from_secs(120),
        }
    }

    pub fn futures() -> Self {
        RestLimits {
            weight_per_minute: 2400,
            ..Self::spot()
        }
    }
}

/// One REST request as the fake saw it.
#[derive(Clone, Debug)]
pub struct RestRequestLog {
    /// The TCP connection it came on (keep-alive requests share one).
    pub conn: u64,
    pub at: Instant,
    /// The fake clock when it arrived.
    pub clock_ms: i64,
    pub method: String,
    /// Without the query, e.g. `/api/v3/klines`.
    pub path: String,
    /// Percent-decoded query parameters (a repeated name keeps the last value).
    pub params: BTreeMap<String, String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    /// Weight charged (0 for refused, injected or dropped requests).
    pub weight: u32,
    /// `X-MBX-USED-WEIGHT-1M` as answered.
    pub used_weight: u32,
}

impl RestRequestLog {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `Some("spot")` for `/api/...`, `Some("futures")` for `/fapi/...`.
    pub fn market(&self) -> Option<&'static str> {
        RestMarket::of_path(&self.path).map(RestMarket::name)
    }
}

// ---------------------------------------------------------------------------
// REST: state
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RestMarket {
    Spot,
    Futures,
}

impl RestMarket {
    /// Panics on anything but `"spot"` / `"futures"`: a broken test.
    fn parse(market: &str) -> RestMarket {
        match market {
            SPOT => RestMarket::Spot,
            FUTURES | "usdm" => RestMarket::Futures,
            other => panic!("unknown market {other:?}: use \"spot\" or \"futures\""),
        }
    }

    fn of_path(path: &str) -> Option<RestMarket> {
        if path.starts_with("/api/") {
            Some(RestMarket::Spot)
        } else if path.starts_with("/fapi/") {
            Some(RestMarket::Futures)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            RestMarket::Spot => SPOT,
            RestMarket::Futures => FUTURES,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn max_limit(self) -> u64 {
        match self {
            RestMarket::Spot => 1000,
            RestMarket::Futures => 1500,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RestMarket::Spot => "/api/v3",
            RestMarket::Futures => "/fapi/v1",
        }
    }
}

type CandleFn = Arc<dyn Fn(i64) -> RestCandle + Send + Sync>;

/// The history of one (market, symbol, interval): a table, a generator, or both
/// (table entries win), plus scripted values for candles while they form.
#[derive(Default)]
struct History {
    table: BTreeMap<i64, RestCandle>,
    generator: Option<(i64, CandleFn)>,
    forming: BTreeMap<i64, RestCandle>,
}

impl History {
    /// Rows by Binance's rules: with `start`, the oldest from `start`; else the
    /// most recent up to `end` (or now). Never a candle that has not opened by
    /// `now`. Ascending, at most `limit`, final values (forming applied later).
    fn select(
        &self,
        step: i64,
        start: Option<i64>,
        end: Option<i64>,
        limit: usize,
        now: i64,
    ) -> Vec<RestCandle> {
        let upper = end.map_or(now, |e| e.min(now));
        let lower = start.unwrap_or(i64::MIN);
        if lower > upper || limit == 0 {
            return Vec::new();
        }
        let ascending = start.is_some();
        // The first `limit` of a union are among the first `limit` of each part.
        let mut picked: BTreeMap<i64, RestCandle> = BTreeMap::new();
        let range = self.table.range(lower..=upper);
        let from_table: Vec<(&i64, &RestCandle)> = if ascending {
            range.take(limit).collect()
        } else {
            range.rev().take(limit).collect()
        };
        for (t, c) in from_table {
            picked.insert(*t, c.clone());
        }
        if let Some((from_ms, make)) = &self.generator {
            let first = align_up(lower.max(*from_ms), step);
            let last = upper - upper.rem_euclid(step);
            let times: Vec<i64> = if ascending {
                (0..limit as i64)
                    .map(|i| first + i * step)
                    .take_while(|t| *t <= last)
                    .collect()
            } else {
                (0..limit as i64)
                    .map(|i| last - i * step)
                    .take_while(|t| *t >= first)
                    .collect()
            };
            for t in times {
                picked.entry(t).or_insert_with(|| make(t));
            }
        }
        let mut rows: Vec<RestCandle> = picked.into_values().collect();
        if rows.len() > limit {
            if ascending {
                rows.truncate(limit);
            } else {
                rows.drain(..rows.len() - limit);
            }
        }
        rows
    }

    fn candle_at(&self, open_time_ms: i64, step: i64) -> Option<RestCandle> {
        if let Some(c) = self.table.get(&open_time_ms) {
            return Some(c.clone());
        }
        let (from_ms, make) = self.generator.as_ref()?;
        let aligned = open_time_ms.rem_euclid(step) == 0;
        (aligned && open_time_ms >= *from_ms).then(|| make(open_time_ms))
    }

    /// The row as served at `now`: forming values while `openTime <= now <= closeTime`.
    fn as_served(&self, candle: RestCandle, now: i64) -> RestCandle {
        if candle.open_time_ms <= now && now <= candle.close_time_ms {
            match self.forming.get(&candle.open_time_ms) {
                Some(scripted) => scripted.clone(),
                None => candle.forming_at(now),
            }
        } else {
            candle
        }
    }
}

fn align_up(x: i64, step: i64) -> i64 {
    match x.rem_euclid(step) {
        0 => x,
        r => x.saturating_add(step - r),
    }
}

/// Weight used in the current UTC minute, and the 429/418 state.
#[derive(Default)]
struct WeightMeter {
    minute: i64,
    used: u32,
    rejected_429: u32,
    banned_until_ms: Option<i64>,
}

impl WeightMeter {
    fn roll(&mut self, now: i64) {
        let minute = now.div_euclid(60_000);
        if minute != self.minute {
            self.minute = minute;
            self.used = 0;
            self.rejected_429 = 0;
        }
    }
}

struct PerMarket {
    limits: RestLimits,
    meter: WeightMeter,
    symbols: Vec<FakeSymbol>,
}

/// A failure answered instead of the real response.
#[derive(Clone, Debug)]
struct RestFault {
    path_contains: Option<String>,
    remaining: u32,
    status: u16,
    body: String,
}

struct RestState {
    histories: BTreeMap<(RestMarket, String, String), History>,
    markets: [PerMarket; 2],
    faults: VecDeque<RestFault>,
    failing_symbols: BTreeMap<String, (u16, String)>,
    delay: Duration,
    drop_connections: bool,
    log: Vec<RestRequestLog>,
    requests: usize,
    connections: u64,
}

impl Default for RestState {
    fn default() -> Self {
        let market = |limits| PerMarket {
            limits,
            meter: WeightMeter::default(),
            symbols: Vec::new(),
        };
        RestState {
            histories: BTreeMap::new(),
            markets: [market(RestLimits::spot()), market(RestLimits::futures())],
            faults: VecDeque::new(),
            failing_symbols: BTreeMap::new(),
            delay: Duration::ZERO,
            drop_connections: false,
            log: Vec::new(),
            requests: 0,
            connections: 0,
        }
    }
}

/// What to send back for one request.
struct RestReply {
    status: u16,
    body: String,
    weight: u32,
    used_weight: u32,
    retry_after_s: Option<i64>,
}

fn api_error(status: u16, code: i64, msg: &str) -> (u16, String) {
    (
        status,
        format!(r#"{{"code":{code},"msg":{}}}"#, json_str(msg)),
    )
}

fn invalid_symbol() -> (u16, String) {
    api_error(400, -1121, "Invalid symbol.")
}

fn mandatory(name: &str) -> (u16, String) {
    api_error(
        400,
        -1102,
        &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    )
}

fn seconds_until(now: i64, until: i64) -> i64 {
    ((until - now).max(1) + 999) / 1000
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Klines,
    ExchangeInfo,
    Ticker24h,
    Ping,
    Time,
}

impl Endpoint {
    fn of(market: RestMarket, path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix(market.prefix())?;
        Some(match rest {
            "/klines" => Endpoint::Klines,
            "/exchangeInfo" => Endpoint::ExchangeInfo,
            "/ticker/24hr" => Endpoint::Ticker24h,
            "/ping" => Endpoint::Ping,
            "/time" => Endpoint::Time,
            _ => return None,
        })
    }

    /// Request weight as documented (USD-M klines as measured: bands inclusive
    /// at the top, no `limit` costs 5).
    fn weight(self, market: RestMarket, params: &BTreeMap<String, String>) -> u32 {
        let one_symbol = params.contains_key("symbol");
        match (self, market) {
            (Endpoint::Klines, RestMarket::Spot) => 2,
            (Endpoint::Klines, RestMarket::Futures) => {
                match params.get("limit").map(|l| l.parse::<u64>()) {
                    None | Some(Err(_)) => 5,
                    Some(Ok(l)) if l <= 100 => 1,
                    Some(Ok(l)) if l <= 500 => 2,
                    Some(Ok(l)) if l <= 1000 => 5,
                    Some(Ok(_)) => 10,
                }
            }
            (Endpoint::ExchangeInfo, RestMarket::Spot) => 20,
            (Endpoint::ExchangeInfo, RestMarket::Futures) => 1,
            (Endpoint::Ticker24h, RestMarket::Spot) => {
                if one_symbol {
                    2
                } else {
                    80
                }
            }
            (Endpoint::Ticker24h, RestMarket::Futures) => {
                if one_symbol {
                    1
                } else {
                    40
                }
            }
            (Endpoint::Ping | Endpoint::Time, _) => 1,
        }
    }
}

impl RestState {
    fn market(&mut self, market: RestMarket) -> &mut PerMarket {
        &mut self.markets[market.index()]
    }

    fn history(&mut self, market: RestMarket, symbol: &str, interval: &str) -> &mut History {
        self.histories
            .entry((market, symbol.to_ascii_uppercase(), interval.to_string()))
            .or_default()
    }

    /// A market whose symbol list is not scripted (`set_markets`) knows every
    /// well-formed symbol (upper-case letters and digits), so tests that never
    /// script one keep their klines (empty without history); a scripted list
    /// makes everything it lacks, and has no history of, `-1121 Invalid symbol`.
    fn knows_symbol(&self, market: RestMarket, symbol: &str) -> bool {
        let listed = &self.markets[market.index()].symbols;
        if listed.is_empty() {
            return !symbol.is_empty()
                && symbol
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        }
        listed.iter().any(|s| s.symbol == symbol)
            || self
                .histories
                .keys()
                .any(|(m, s, _)| *m == market && s == symbol)
    }

    fn take_fault(&mut self, path: &str) -> Option<(u16, String)> {
        let index = self.faults.iter().position(|f| {
            f.remaining > 0
                && f.path_contains
                    .as_deref()
                    .map_or(true, |p| path.contains(p))
        })?;
        let fault = &mut self.faults[index];
        fault.remaining -= 1;
        let answer = (fault.status, fault.body.clone());
        if fault.remaining == 0 {
            self.faults.remove(index);
        }
        Some(answer)
    }

    /// The whole decision for one request, in Binance's order: injected faults,
    /// unknown paths, the ban, the weight limit, then the endpoint itself.
    fn respond(
        &mut self,
        method: &str,
        path: &str,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> RestReply {
        let Some(market) = RestMarket::of_path(path) else {
            return reply(404, r#"{"code":-1,"msg":"Not found."}"#.into(), 0, 0, None);
        };
        let meter = &mut self.market(market).meter;
        meter.roll(now);
        let used = meter.used;
        let next_minute = (meter.minute + 1) * 60_000;
        if let Some((status, body)) = self.take_fault(path) {
            let retry = matches!(status, 418 | 429).then(|| seconds_until(now, next_minute));
            return reply(status, body, 0, used, retry);
        }
        let Some(endpoint) = Endpoint::of(market, path) else {
            return reply(
                404,
                r#"{"code":-1,"msg":"Not found."}"#.into(),
                0,
                used,
                None,
            );
        };
        if method != "GET" {
            let (status, body) = api_error(405, -1, "Method not allowed.");
            return reply(status, body, 0, used, None);
        }
        let weight = endpoint.weight(market, params);
        if let Some(refused) = self.admit(market, weight, now) {
            return refused;
        }
        let used = self.market(market).meter.used;
        let failing = params
            .get("symbol")
            .and_then(|s| self.failing_symbols.get(s))
            .cloned();
        let (status, body) = match failing {
            Some(failure) => failure,
            None => self.serve_endpoint(endpoint, market, params, now),
        };
        reply(status, body, weight, used, None)
    }

    /// Charges `weight`, or returns the 429 / 418 reply that refuses the request.
    fn admit(&mut self, market: RestMarket, weight: u32, now: i64) -> Option<RestReply> {
        let PerMarket { limits, meter, .. } = self.market(market);
        let used = meter.used;
        if let Some(until) = meter.banned_until_ms.filter(|until| *until > now) {
            let body = api_error(418, -1003, "Way too many requests; IP banned until later.").1;
            return Some(reply(418, body, 0, used, Some(seconds_until(now, until))));
        }
        if used.saturating_add(weight) <= limits.weight_per_minute {
            meter.used = used + weight;
            return None;
        }
        if limits
            .ban_after_429s
            .is_some_and(|n| meter.rejected_429 >= n)
        {
            let until = now + limits.ban.as_millis() as i64;
            meter.banned_until_ms = Some(until);
            let body = api_error(418, -1003, "Way too many requests; IP banned until later.").1;
            return Some(reply(418, body, 0, used, Some(seconds_until(now, until))));
        }
        meter.rejected_429 += 1;
        let next_minute = (meter.minute + 1) * 60_000;
        let msg = "Too much request weight used; please use WebSocket Streams for live updates to avoid polling the API.";
        Some(reply(
            429,
            api_error(429, -1003, msg).1,
            0,
            used,
            Some(seconds_until(now, next_minute)),
        ))
    }

    fn serve_endpoint(
        &self,
        endpoint: Endpoint,
        market: RestMarket,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> (u16, String) {
        match endpoint {
            Endpoint::Klines => self.klines(market, params, now),
            Endpoint::ExchangeInfo => self.exchange_info(market, params, now),
            Endpoint::Ticker24h => self.ticker_24h(market, params, now),
            Endpoint::Ping => (200, "{}".into()),
            Endpoint::Time => (200, format!(r#"{{"serverTime":{now}}}"#)),
        }
    }

    fn klines(
        &self,
        market: RestMarket,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> (u16, String) {
        let Some(symbol) = params.get("symbol").filter(|s| !s.is_empty()) else {
            return mandatory("symbol");
        };
        let Some(interval) = params.get("interval").filter(|s| !s.is_empty()) else {
            return mandatory("interval");
        };
        let step = match interval_ms(interval) {
            Some(_) if market == RestMarket::Futures && interval == "1s" => None,
            step => step,
        };
        let Some(step) = step else {
            return api_error(400, -1120, "Invalid interval.");
        };
        if !self.knows_symbol(market, symbol) {
            return invalid_symbol();
        }
        let number = |name: &str| -> Result<Option<i64>, (u16, String)> {
            match params.get(name) {
                None => Ok(None),
                Some(text) => text.parse::<i64>().map(Some).map_err(|_| {
                    api_error(
                        400,
                        -1100,
                        &format!("Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."),
                    )
                }),
            }
        };
        let (start, end, limit) = match (number("startTime"), number("endTime"), number("limit")) {
            (Ok(s), Ok(e), Ok(l)) => (s, e, l),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
        };
        let limit = limit.unwrap_or(500);
        if limit < 1 || limit as u64 > market.max_limit() {
            return api_error(400, -1130, "Data sent for parameter 'limit' is not valid.");
        }
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return api_error(400, -1023, "Start time is greater than end time.");
            }
        }
        let key = (market, symbol.clone(), interval.clone());
        let rows: Vec<String> = match self.histories.get(&key) {
            None => Vec::new(),
            Some(history) => history
                .select(step, start, end, limit as usize, now)
                .into_iter()
                .map(|c| history.as_served(c, now).row_json())
                .collect(),
        };
        (200, format!("[{}]", rows.join(",")))
    }

    /// Symbols picked by `symbol=` or `symbols=["A","B"]`; all when neither.
    fn chosen_symbols(
        &self,
        market: RestMarket,
        params: &BTreeMap<String, String>,
    ) -> Result<Vec<&FakeSymbol>, (u16, String)> {
        let all = &self.markets[market.index()].symbols;
        let wanted: Vec<String> = if let Some(one) = params.get("symbol") {
            vec![one.clone()]
        } else if let Some(list) = params.get("symbols") {
            match serde_json::from_str::<Vec<String>>(list) {
                Ok(names) => names,
                Err(_) => return Err(mandatory("symbols")),
            }
        } else {
            return Ok(all.iter().collect());
        };
        wanted
            .iter()
            .map(|name| {
                all.iter()
                    .find(|s| &s.symbol == name)
                    .ok_or_else(invalid_symbol)
            })
            .collect()
    }

    fn exchange_info(
        &self,
        market: RestMarket,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> (u16, String) {
        let symbols = match self.chosen_symbols(market, params) {
            Ok(symbols) => symbols,
            Err(e) => return e,
        };
        let limit = self.markets[market.index()].limits.weight_per_minute;
        let rate_limits = serde_json::json!([
            {"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":limit},
        ]);
        let body = match market {
            RestMarket::Spot => serde_json::json!({
                "timezone": "UTC",
                "serverTime": now,
                "rateLimits": rate_limits,
                "exchangeFilters": [],
                "symbols": symbols.iter().map(|s| serde_json::json!({
                    "symbol": s.symbol,
                    "status": s.status,
                    "baseAsset": s.base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": s.quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                    "icebergAllowed": true,
                    "ocoAllowed": true,
                    "isSpotTradingAllowed": true,
                    "isMarginTradingAllowed": false,
                    "filters": [],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                })).collect::<Vec<_>>(),
            }),
            RestMarket::Futures => serde_json::json!({
                "timezone": "UTC",
                "serverTime": now,
                "futuresType": "U_MARGINED",
                "rateLimits": rate_limits,
                "exchangeFilters": [],
                "assets": [],
                "symbols": symbols.iter().map(|s| serde_json::json!({
                    "symbol": s.symbol,
                    "pair": s.symbol,
                    "contractType": s.contract_type.as_deref().unwrap_or("PERPETUAL"),
                    "deliveryDate": 4_133_404_800_000i64,
                    "onboardDate": 1_569_398_400_000i64,
                    "status": s.status,
                    "baseAsset": s.base,
                    "quoteAsset": s.quote,
                    "marginAsset": s.quote,
                    "pricePrecision": 2,
                    "quantityPrecision": 3,
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "filters": [],
                    "orderTypes": ["LIMIT", "MARKET"],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                })).collect::<Vec<_>>(),
            }),
        };
        (200, body.to_string())
    }

    fn ticker_24h(
        &self,
        market: RestMarket,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> (u16, String) {
        let symbols = match self.chosen_symbols(market, params) {
            Ok(symbols) => symbols,
            Err(e) => return e,
        };
        let tickers: Vec<Value> = symbols
            .iter()
            .map(|s| ticker_json(market, s, now))
            .collect();
        let body = match (params.contains_key("symbol"), tickers.first()) {
            (true, Some(one)) => one.to_string(),
            _ => Value::from(tickers).to_string(),
        };
        (200, body)
    }
}

fn reply(
    status: u16,
    body: String,
    weight: u32,
    used_weight: u32,
    retry_after_s: Option<i64>,
) -> RestReply {
    RestReply {
        status,
        body,
        weight,
        used_weight,
        retry_after_s,
    }
}

/// A 24 h ticker whose other fields agree with last price, change and quote volume.
fn ticker_json(market: RestMarket, s: &FakeSymbol, now: i64) -> Value {
    let num = |t: &str| t.parse::<f64>().unwrap_or(0.0);
    let last = num(&s.last_price);
    let open = last / (1.0 + num(&s.price_change_percent) / 100.0);
    let volume = if last > 0.0 {
        num(&s.quote_volume) / last
    } else {
        0.0
    };
    let mut t = serde_json::json!({
        "symbol": s.symbol,
        "priceChange": fmt8(last - open),
        "priceChangePercent": s.price_change_percent,
        "weightedAvgPrice": fmt8((open + last) / 2.0),
        "lastPrice": s.last_price,
        "lastQty": "0.01000000",
        "openPrice": fmt8(open),
        "highPrice": fmt8(open.max(last)),
        "lowPrice": fmt8(open.min(last)),
        "volume": fmt8(volume),
        "quoteVolume": s.quote_volume,
        "openTime": now - 86_400_000,
        "closeTime": now,
        "firstId": 1,
        "lastId": 1000,
        "count": 1000,
    });
    if market == RestMarket::Spot {
        if let Some(map) = t.as_object_mut() {
            map.insert("prevClosePrice".into(), Value::from(fmt8(open)));
            map.insert("bidPrice".into(), Value::from(s.last_price.clone()));
            map.insert("bidQty".into(), Value::from("1.00000000"));
            map.insert("askPrice".into(), Value::from(s.last_price.clone()));
            map.insert("askQty".into(), Value::from("1.00000000"));
        }
    }
    t
}

// ---------------------------------------------------------------------------
// REST: HTTP/1.1 over the shared port
// ---------------------------------------------------------------------------

/// Offset just past `\r\n\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn request_target(head: &[u8]) -> Option<String> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    line.split(' ').nth(1).map(str::to_string)
}

fn is_rest_target(head: &[u8]) -> bool {
    request_target(head).is_some_and(|t| RestMarket::of_path(&t).is_some())
}

/// Reads once into `buf`, retrying across read timeouts until `deadline` or
/// shutdown. `Ok(false)` at end of stream.
fn read_some(
    shared: &Shared,
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if shared.stopping() {
                    return Err(io::Error::other("shutting down"));
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request in time",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

struct HttpRequest {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
}

fn parse_head(head: &[u8]) -> Option<HttpRequest> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close")
                && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        }
    }
    Some(HttpRequest {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        content_length,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn response_bytes(r: &RestReply, keep_alive: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nX-MBX-USED-WEIGHT-1M: {}\r\n",
        r.status,
        reason_phrase(r.status),
        r.body.len(),
        r.used_weight,
    );
    if let Some(s) = r.retry_after_s {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(r.body.as_bytes());
    bytes
}

/// Writes everything, riding out write timeouts for up to `SLOW_CLIENT_LIMIT`.
fn write_fully(shared: &Shared, stream: &mut ServerStream, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + SLOW_CLIENT_LIMIT;
    let stalled = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    };
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if stalled(&e) && Instant::now() < deadline && !shared.stopping() => {}
            Err(e) => return Err(e),
        }
    }
    loop {
        match stream.flush() {
            Ok(()) => return Ok(()),
            Err(e) if stalled(&e) && Instant::now() < deadline && !shared.stopping() => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps `delay` in short steps so shutdown is not held up.
fn interruptible_sleep(shared: &Shared, delay: Duration) {
    let until = Instant::now() + delay;
    while !shared.stopping() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Serves REST requests on one connection (keep-alive unless the client says
/// `Connection: close` or speaks HTTP/1.0) until it closes, idles out or the
/// exchange stops. `buf` holds the bytes read so far, the first head among them.
fn serve_rest(shared: &Shared, mut stream: ServerStream, mut buf: Vec<u8>, conn: u64) {
    lock(&shared.rest).connections += 1;
    loop {
        let deadline = Instant::now() + REST_IDLE_TIMEOUT;
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HTTP_HEAD {
                let r = reply(431, String::new(), 0, 0, None);
                let _ = write_fully(shared, &mut stream, &response_bytes(&r, false));
                return;
            }
            match read_some(shared, &mut stream, &mut buf, deadline) {
                Ok(true) => {}
                _ => return,
            }
        };
        let Some(request) = parse_head(&buf[..head_end]) else {
            let r = reply(400, String::new(), 0, 0, None);
            let _ = write_fully(shared, &mut stream, &response_bytes(&r, false));
            return;
        };
        while buf.len() < head_end + request.content_length {
            if !matches!(read_some(shared, &mut stream, &mut buf, deadline), Ok(true)) {
                return;
            }
        }
        buf.drain(..head_end + request.content_length);
        let Some((reply, delay)) = shared.rest_request(conn, &request.method, &request.target)
        else {
            reset(stream.tcp());
            return;
        };
        interruptible_sleep(shared, delay);
        let keep_alive = request.keep_alive && !shared.stopping();
        if write_fully(shared, &mut stream, &response_bytes(&reply, keep_alive)).is_err()
            || !keep_alive
        {
            return;
        }
    }
}

impl Shared {
    /// Decides and logs one request; `None` means drop the connection instead.
    fn rest_request(&self, conn: u64, method: &str, target: &str) -> Option<(RestReply, Duration)> {
        let now = self.now_ms();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params = parse_query(query);
        let mut rest = lock(&self.rest);
        let dropped = rest.drop_connections;
        let answer = if dropped {
            None
        } else {
            Some(rest.respond(method, path, &params, now))
        };
        rest.requests += 1;
        if rest.log.len() < LOG_CAPACITY {
            let (status, weight, used_weight) = match &answer {
                Some(r) => (r.status, r.weight, r.used_weight),
                None => (0, 0, 0),
            };
            rest.log.push(RestRequestLog {
                conn,
                at: Instant::now(),
                clock_ms: now,
                method: method.to_string(),
                path: path.to_string(),
                params,
                status,
                weight,
                used_weight,
            });
        }
        answer.map(|r| (r, rest.delay))
    }
}

// ---------------------------------------------------------------------------
// REST: the test-facing API
// ---------------------------------------------------------------------------

impl FakeExchange {
    /// `http://127.0.0.1:PORT` (or `https://`): the same port as the WebSocket.
    pub fn http_base_url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// The REST base URL for `market` (both markets share the one port; the
    /// path prefix, `/api/v3` or `/fapi/v1`, tells them apart).
    pub fn rest_base_url(&self, market: &str) -> String {
        RestMarket::parse(market);
        self.http_base_url()
    }

    fn rest(&self) -> MutexGuard<'_, RestState> {
        lock(&self.shared.rest)
    }

    // -- history -------------------------------------------------------------

    /// Replaces the scripted history of (market, symbol, interval) with `candles`
    /// (keyed by open time). Candles that have not opened on the fake clock are
    /// not served until they have; the one open now is served with forming values.
    pub fn set_history(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        candles: Vec<RestCandle>,
    ) {
        let market = RestMarket::parse(market);
        let mut rest = self.rest();
        let history = rest.history(market, symbol, interval);
        history.table = candles.into_iter().map(|c| (c.open_time_ms, c)).collect();
        history.generator = None;
    }

    /// Adds or replaces single candles without touching the rest of the history.
    pub fn upsert_history(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        candles: Vec<RestCandle>,
    ) {
        let market = RestMarket::parse(market);
        let mut rest = self.rest();
        let history = rest.history(market, symbol, interval);
        history
            .table
            .extend(candles.into_iter().map(|c| (c.open_time_ms, c)));
    }

    /// An endless history from `from_ms` (aligned up to the interval): `make(open_time)`
    /// gives the closed candle. Scripted table candles win over generated ones.
    pub fn set_history_fn(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        from_ms: i64,
        make: impl Fn(i64) -> RestCandle + Send + Sync + 'static,
    ) {
        let market = RestMarket::parse(market);
        interval_ms(interval).unwrap_or_else(|| panic!("unknown interval {interval:?}"));
        self.rest().history(market, symbol, interval).generator = Some((from_ms, Arc::new(make)));
    }

    /// Adds candles for every aligned open time in `[from_ms, to_ms)`: open at
    /// `price_fn(t)`, close at `price_fn(t + interval)`, high/low 0.1 % outside
    /// them, volume `1 + (t / interval) % 7`. Returns how many were added.
    pub fn fill_history(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        from_ms: i64,
        to_ms: i64,
        price_fn: impl Fn(i64) -> f64,
    ) -> usize {
        let step = interval_ms(interval).unwrap_or_else(|| panic!("unknown interval {interval:?}"));
        let first = align_up(from_ms, step);
        let count = if to_ms > first {
            (to_ms - first + step - 1) / step
        } else {
            0
        };
        assert!(
            count <= MAX_FILL,
            "fill_history of {count} candles: too many for a test"
        );
        let candles: Vec<RestCandle> = (0..count)
            .map(|i| {
                let t = first + i * step;
                let (o, c) = (price_fn(t), price_fn(t + step));
                let v = 1.0 + (t / step).rem_euclid(7) as f64;
                RestCandle::new(t, interval, o, o.max(c) * 1.001, o.min(c) * 0.999, c, v)
            })
            .collect();
        self.upsert_history(market, symbol, interval, candles);
        count as usize
    }

    /// Exact values served for candle `open_time_ms` while it is forming
    /// (instead of `RestCandle::forming_at`).
    pub fn set_forming_row(&self, market: &str, symbol: &str, interval: &str, candle: RestCandle) {
        let market = RestMarket::parse(market);
        let mut rest = self.rest();
        rest.history(market, symbol, interval)
            .forming
            .insert(candle.open_time_ms, candle);
    }

    /// The closed (final) values of one scripted candle.
    pub fn history_candle(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        open_time_ms: i64,
    ) -> Option<RestCandle> {
        let market = RestMarket::parse(market);
        let step = interval_ms(interval)?;
        let key = (market, symbol.to_ascii_uppercase(), interval.to_string());
        self.rest()
            .histories
            .get(&key)?
            .candle_at(open_time_ms, step)
    }

    /// The row the REST API would serve for this candle right now (forming
    /// values while it is open), or `None` if it has not opened or is unknown.
    pub fn served_candle(
        &self,
        market: &str,
        symbol: &str,
        interval: &str,
        open_time_ms: i64,
    ) -> Option<RestCandle> {
        let now = self.now_ms();
        let market = RestMarket::parse(market);
        let step = interval_ms(interval)?;
        let key = (market, symbol.to_ascii_uppercase(), interval.to_string());
        let rest = self.rest();
        let history = rest.histories.get(&key)?;
        let candle = history
            .candle_at(open_time_ms, step)
            .filter(|c| c.open_time_ms <= now)?;
        Some(history.as_served(candle, now))
    }

    /// Pushes a scripted candle to WebSocket subscribers of `stream`
    /// (`btcusdt@kline_1m`), so REST and the stream agree: final values with
    /// `x:true`, or the forming values REST serves now with `x:false`.
    /// Returns the number of connections, 0 when the candle is unknown.
    pub fn push_history_candle(
        &self,
        market: &str,
        stream: &str,
        open_time_ms: i64,
        is_final: bool,
    ) -> usize {
        let Some((symbol, interval)) = parse_kline_stream(stream) else {
            panic!("not a kline stream name: {stream:?}");
        };
        let now = self.now_ms();
        let candle = if is_final {
            self.history_candle(market, &symbol, &interval, open_time_ms)
        } else {
            self.served_candle(market, &symbol, &interval, open_time_ms)
        };
        let Some(candle) = candle else { return 0 };
        let event_time = if is_final {
            now.max(candle.close_time_ms + 1)
        } else {
            now.clamp(candle.open_time_ms, candle.close_time_ms)
        };
        self.push_frame(
            stream,
            &candle.to_frame(&symbol, &interval, event_time, is_final),
        )
    }

    // -- markets and limits ----------------------------------------------------

    /// The symbols exchangeInfo and ticker/24hr list for `market`, in this order.
    /// A listed symbol is also a valid klines symbol (empty history by default).
    pub fn set_markets(&self, market: &str, symbols: Vec<FakeSymbol>) {
        let market = RestMarket::parse(market);
        self.rest().market(market).symbols = symbols;
    }

    pub fn set_rest_limits(&self, market: &str, limits: RestLimits) {
        let market = RestMarket::parse(market);
        self.rest().market(market).limits = limits;
    }

    /// Forgets used weight, 429 counts and bans of both markets.
    pub fn rest_reset_weights(&self) {
        let mut rest = self.rest();
        for m in rest.markets.iter_mut() {
            m.meter = WeightMeter::default();
        }
    }

    /// Weight used in the fake clock's current minute.
    pub fn rest_used_weight(&self, market: &str) -> u32 {
        let market = RestMarket::parse(market);
        let now = self.now_ms();
        let mut rest = self.rest();
        let meter = &mut rest.market(market).meter;
        meter.roll(now);
        meter.used
    }

    // -- faults ----------------------------------------------------------------

    /// The next `n` REST requests (any path) get `status` and `body` instead of
    /// their answer; no weight is charged, 429/418 carry `Retry-After` (seconds to
    /// the next minute). Queued after earlier injections.
    pub fn rest_fail_next(&self, n: u32, status: u16, body: &str) {
        self.push_fault(None, n, status, body);
    }

    /// Like `rest_fail_next`, only for requests whose path contains `path_contains`
    /// (e.g. `"/klines"`, `"exchangeInfo"`).
    pub fn rest_fail_next_on(&self, path_contains: &str, n: u32, status: u16, body: &str) {
        self.push_fault(Some(path_contains.to_string()), n, status, body);
    }

    fn push_fault(&self, path_contains: Option<String>, n: u32, status: u16, body: &str) {
        if n == 0 {
            return;
        }
        self.rest().faults.push_back(RestFault {
            path_contains,
            remaining: n,
            status,
            body: body.to_string(),
        });
    }

    /// Every request with `symbol=<symbol>` (either market) gets a 500
    /// `{"code":-1000,...}` until `rest_unfail_symbol` (weight is still charged).
    pub fn rest_fail_symbol(&self, symbol: &str) {
        self.rest_fail_symbol_with(
            symbol,
            500,
            r#"{"code":-1000,"msg":"An unknown error occured while processing the request."}"#,
        );
    }

    pub fn rest_fail_symbol_with(&self, symbol: &str, status: u16, body: &str) {
        self.rest()
            .failing_symbols
            .insert(symbol.to_string(), (status, body.to_string()));
    }

    pub fn rest_unfail_symbol(&self, symbol: &str) {
        self.rest().failing_symbols.remove(symbol);
    }

    /// Every REST response waits this long before it is written (`ZERO`: off).
    pub fn rest_delay(&self, delay: Duration) {
        self.rest().delay = delay;
    }

    /// While `true`, every REST request is answered by a TCP reset.
    pub fn rest_drop_connections(&self, drop: bool) {
        self.rest().drop_connections = drop;
    }

    // -- observations ------------------------------------------------------------

    /// Every REST request so far, in arrival order (the first 100 000).
    pub fn rest_requests(&self) -> Vec<RestRequestLog> {
        self.rest().log.clone()
    }

    /// Requests whose path contains `fragment`, e.g. `"/klines"`.
    pub fn rest_requests_to(&self, fragment: &str) -> Vec<RestRequestLog> {
        self.rest()
            .log
            .iter()
            .filter(|r| r.path.contains(fragment))
            .cloned()
            .collect()
    }

    /// REST requests received (including dropped ones and those past the log).
    pub fn rest_request_count(&self) -> usize {
        self.rest().requests
    }

    /// TCP connections that carried REST requests (keep-alive reuses one).
    pub fn rest_connection_count(&self) -> u64 {
        self.rest().connections
    }
}
