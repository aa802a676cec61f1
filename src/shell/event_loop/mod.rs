//! `klinegate run`: the event loop. One thread, one `mio::Poll`, connections in
//! a slab (listener, clients, exchange connections, the signal pipe).
//!
//! One loop turn: wait until a socket is ready or the engine's next deadline;
//! read the clock once; feed every ready socket's input to the engine
//! (recording it when `--record` is on); fire due engine timers; carry out the
//! engine's outputs; write each ready client's queued frames in one go.
//! Writes never block: a client whose socket is full gets no more frames from
//! the engine until it drains, so its backlog stays in the engine's bounded
//! queue and the slow-consumer policy applies.
//!
//! This file owns the `Server` state, its start-up (`new`), the loop and the
//! dispatch of readiness events and engine outputs. Each concern the loop
//! drives is an `impl Server` block of its own:
//! - `clients`: accepting sockets, HTTP requests, removing client sockets;
//! - `ws_clients`: the upgrade, WebSocket reads and writes, the close handshake;
//! - `upstreams`: exchange WebSockets, the engine's REST requests, DNS hand-over;
//! - `directory`: the market directory (`top_markets`) and its event streams;
//! - `housekeeping`: timeouts, pings, journal flush, store statistics;
//! - `shutdown`: the signal pipe, graceful shutdown and the exit code;
//! - `startup`: opening the store (SQLite notes and freqtrade bootstrap, or PostgreSQL) for `new`;
//! - `uring_writes`: `--io-uring`, the fan-out's client writes batched through io_uring;
//! - `store_reads`: a PostgreSQL store's socket and pump, and HTTP requests parked for its reads.

mod bus;
mod clients;
mod directory;
mod housekeeping;
mod reload;
mod shutdown;
mod startup;
mod store_reads;
mod upstreams;
mod uring_writes;
mod ws_clients;

use directory::Parked;
use shutdown::install_signal_pipe;
use crate::shell::conn::client::{HttpConn, WsConn};
use crate::shell::dns::{Resolver, ResolverFiles};
use crate::wire::http::HttpLimits;
use crate::shell::logger::Logger;
use crate::shell::api::markets::{Directory, DirectoryConfig, FetchKind, SseStream};
use crate::shell::api::routes::HttpConfig;
use crate::shell::api::stats::ShellStats;
use crate::shell::store_host::StoreHost;
use crate::shell::timed_store::StoreStats;
use crate::shell::conn::rest::{RestConn, RestPool};
use crate::shell::conn::tls_server::ServerTls;
use crate::shell::conn::upstream::{TlsSetup, UpstreamConn};
use crate::engine::fasthash::FastMap;
use crate::engine::{Engine, Input, LogLevel, Output};
use crate::replay::journal::{Header, JournalWriter};
use crate::cli::run_config::RunConfig;
use crate::time::Timestamp;
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The SIGHUP pipe (`reload`).
const RELOAD: Token = Token(usize::MAX - 24);
/// The resolver's UDP sockets (IPv4, IPv6).
const DNS: [Token; 2] = [Token(usize::MAX - 8), Token(usize::MAX - 9)];
/// Messages read from one client per readiness event.
const CLIENT_READ_BUDGET: usize = 64;
/// Bytes of queued frames written to one client per write (`ClientWritable`'s
/// budget); a client with more queued is written again the next turn.
const WRITE_BUDGET: usize = 256 << 10;
/// Housekeeping (idle clients, pings, journal flush) runs this often.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// A client that does not finish its close handshake is dropped after this.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

enum Conn {
    Http(HttpConn),
    Ws(WsConn),
    Upstream { engine_conn: u64, market: crate::model::Market, conn: UpstreamConn },
    /// One REST request the engine asked for (`RestRequest { id }`).
    Rest { id: u64, conn: RestConn },
    /// One market-directory fetch (`shell::api::markets`), not the engine's.
    Directory { market: crate::model::Market, kind: FetchKind, conn: RestConn },
}

/// A REST request that takes longer than this is answered `RestFailed`.
const REST_TIMEOUT: Duration = Duration::from_secs(15);

/// Maps the wall clock to engine time: never backwards, read once per turn.
/// An HTTP ingest waiting for the engine's `IngestDone` (a closed-candle
/// ingest, answered once stored).
struct ParkedIngest {
    key: usize,
    reply: crate::shell::api::ingest::ApplyReply,
    req: crate::wire::http::Request,
}

struct Clock {
    origin_unix: Duration,
    origin: Instant,
    last: Timestamp,
}

impl Clock {
    fn new() -> Clock {
        let origin_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { origin_unix, origin: Instant::now(), last: Timestamp::ZERO }
    }

    fn now(&mut self) -> (Timestamp, Instant) {
        let mono = Instant::now();
        let ns = (self.origin_unix + mono.duration_since(self.origin)).as_nanos() as u64;
        self.last = self.last.max(Timestamp(ns));
        (self.last, mono)
    }
}

pub struct Server {
    cfg: RunConfig,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: UnixStream,
    /// SIGHUP: reload the configuration (`reload`).
    reload_pipe: UnixStream,
    conns: Slab<Conn>,
    engine: Engine,
    /// The store, and the core's store effects waiting to be carried out.
    store: StoreHost,
    /// Closed-candle ingests waiting for `IngestDone`, by request.
    ingest_waiting: BTreeMap<u64, ParkedIngest>,
    next_ingest: u64,
    /// The ingest `handle_request` is applying, and its answer when the
    /// engine gave it at once (a refusal, a forming update).
    ingest_inline: Option<u64>,
    ingest_answer: Option<Option<String>>,
    journal: Option<JournalWriter<BufWriter<File>>>,
    tls: TlsSetup,
    /// TLS for clients (`--tls-cert`/`--tls-key`): every accepted socket is a rustls
    /// server session. `None`: plain TCP.
    client_tls: Option<ServerTls>,
    http_cfg: HttpConfig,
    limits: HttpLimits,
    logger: Logger,
    clock: Clock,
    now: Timestamp,
    mono: Instant,
    stats: ShellStats,
    store_stats: Rc<RefCell<StoreStats>>,
    // Lookups only, never iterated for output.
    upstreams: HashMap<u64, usize>,
    /// Looked up once per client write: a fast hash (ids are ours, not a peer's).
    clients: FastMap<u64, usize>,
    per_ip: HashMap<IpAddr, usize>,
    next_client: u64,
    ready_clients: Vec<u64>,
    /// Client slots whose read budget ran out this turn (read again next turn).
    pending_client_reads: Vec<usize>,
    pending_inputs: VecDeque<Input>,
    frames: Vec<bytes::Bytes>,
    /// Broadcast frames compressed once for every permessage-deflate client.
    deflate: crate::shell::conn::deflate_cache::DeflateCache,
    /// `--io-uring` when the kernel allows it; None: epoll writes.
    uring: Option<uring_writes::UringWrites>,
    shutdown_at: Option<Instant>,
    last_housekeeping: Instant,
    directory: Directory,
    /// `top_markets` requests waiting for a directory fetch, in arrival order.
    parked: Vec<Parked>,
    /// HTTP connections that became event streams, by slab key.
    sse: BTreeMap<usize, SseStream>,
    /// Name lookups for exchange connections; never blocks the loop.
    resolver: Resolver,
    /// Host name → slab keys of the connections waiting for its addresses.
    dns_waiters: BTreeMap<String, Vec<usize>>,
    /// HTTP requests waiting for PostgreSQL reads (`store_reads`).
    store_reads: store_reads::ParkedReads,
    /// Kept-alive exchange REST connections between requests.
    rest_pool: RestPool,
    /// The Redis bus of an `ingest` or `read` node (`bus`); `None` for hybrid.
    bus: Option<crate::shell::bus_host::BusHost>,
    /// This node's name on the bus (`--node-id`, default `ROLE-PID`).
    node_id: String,
}

/// `d` rounded up to the millisecond (epoll's unit), so the loop never wakes
/// before a deadline and then spins on it.
fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)
}

fn unix_secs(t: Timestamp) -> f64 {
    t.as_secs_f64()
}

impl Server {
    /// Opens the store, binds the port, installs signal handlers. Errors are
    /// one line for the user (exit code 2).
    pub fn new(cfg: RunConfig) -> Result<Server, String> {
        let opened = match &cfg.store {
            crate::cli::store_url::StoreBackend::Postgres(pg) => startup::open_postgres(&cfg, pg)?,
            crate::cli::store_url::StoreBackend::Sqlite => startup::open_sqlite(&cfg)?,
        };
        let startup::OpenedStore { host: store, stats: store_stats, notes: store_notes, read_only, bootstrapped } = opened;
        let tls = TlsSetup::new(cfg.extra_ca.as_deref()).map_err(|e| format!("--extra-ca: {e}"))?;
        let client_tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key)?),
            // runconfig refuses one without the other.
            _ => None,
        };
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let mut listener =
            TcpListener::bind(cfg.listen).map_err(|e| format!("--listen {}: cannot listen: {e}", cfg.listen))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("cannot register the listener: {e}"))?;
        let signals = install_signal_pipe(&poll)?;
        let reload_pipe = reload::install_reload_pipe(&poll)?;
        let mut clock = Clock::new();
        let (now, mono) = clock.now();
        let journal = match &cfg.record {
            None => None,
            Some(path) => {
                let file = File::create(path).map_err(|e| format!("--record {}: {e}", path.display()))?;
                let header = Header::new(cfg.settings.clone(), now, false).with_recorded_writes().with_recorded_store();
                Some(JournalWriter::new(BufWriter::new(file), &header).map_err(|e| format!("--record: {e}"))?)
            }
        };
        let mut engine_cfg = cfg.engine.clone();
        // The shell writes each ready client at once (`drain_outputs`), so the
        // forming fan-out is formed a client at a time as outputs are polled.
        engine_cfg.hub.defer_forming_fanout = true;
        let engine = Engine::new(engine_cfg, now);
        let role = cfg.engine.supervisor.role;
        let node_id = cfg.bus.as_ref().and_then(|b| b.node_id.clone()).unwrap_or_else(|| format!("{role}-{}", std::process::id()));
        let bus = match &cfg.bus {
            Some(b) => crate::shell::bus_host::BusHost::new(role, b, &node_id, mono)?,
            None => None,
        };
        let http_cfg = HttpConfig {
            cors_origins: cfg.cors_origins.clone(),
            enable_debug_api: cfg.enable_debug_api,
            enable_dev_api: cfg.enable_dev_api,
            enable_ingest_api: cfg.ingest_api,
            auth_token: cfg.auth_token.clone(),
            ..HttpConfig::default()
        };
        let limits = HttpLimits {
            max_body_bytes: if cfg.enable_dev_api { 4 << 20 } else { HttpLimits::default().max_body_bytes },
            ..HttpLimits::default()
        };
        let stats = ShellStats {
            store_ok: read_only.is_none(),
            store_last_error: read_only,
            store_path: store.pg_url().map_or_else(|| cfg.db.display().to_string(), str::to_string),
            store_backend: store.backend(),
            store_connected: store.pg_url().is_none(),
            started_unix_s: unix_secs(now),
            now_unix_s: unix_secs(now),
            client_tls: client_tls.is_some(),
            role: role.as_str(),
            node_id: node_id.clone(),
            ..ShellStats::default()
        };
        let logger = Logger::new(cfg.log_level, cfg.log_format);
        let uring = if cfg.io_uring {
            match uring_writes::UringWrites::start() {
                Ok((u, kernel)) => {
                    let batch = crate::shell::conn::uring_writer::DEFAULT_BATCH;
                    logger.log(unix_secs(now), LogLevel::Info, &format!("client_writer kind=io_uring {kernel} batch={batch}"));
                    Some(u)
                }
                Err(reason) => {
                    logger.log(unix_secs(now), LogLevel::Warn, &format!("io_uring_unavailable reason={reason:?}"));
                    None
                }
            }
        } else {
            None
        };
        let mut stats = stats;
        stats.client_writer = if uring.is_some() { "io_uring" } else { "epoll" };
        for line in bootstrapped {
            logger.log(unix_secs(now), LogLevel::Info, &line);
        }
        for (level, line) in store_notes {
            logger.log(unix_secs(now), level, &line);
        }
        let files = ResolverFiles { resolv_conf: cfg.resolv_conf.clone(), ..ResolverFiles::default() };
        let mut resolver = Resolver::new(&files, DNS, mono);
        while let Some(note) = resolver.poll_note() {
            logger.log(unix_secs(now), LogLevel::Warn, &note);
        }
        let servers = crate::shell::dns::describe_servers(resolver.config());
        logger.log(unix_secs(now), LogLevel::Debug, &format!("dns_config nameservers={servers}"));
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            reload_pipe,
            conns: Slab::with_capacity(1024),
            engine,
            store,
            ingest_waiting: BTreeMap::new(),
            next_ingest: 0,
            ingest_inline: None,
            ingest_answer: None,
            journal,
            tls,
            client_tls,
            http_cfg,
            limits,
            logger,
            clock,
            now,
            mono,
            stats,
            store_stats,
            upstreams: HashMap::new(),
            clients: FastMap::default(),
            per_ip: HashMap::new(),
            next_client: 1,
            ready_clients: Vec::new(),
            pending_client_reads: Vec::new(),
            pending_inputs: VecDeque::new(),
            frames: Vec::new(),
            deflate: Default::default(),
            uring,
            shutdown_at: None,
            last_housekeeping: mono,
            directory: Directory::new(DirectoryConfig {
                exchange_info_ttl: Duration::from_secs(cfg.markets_exchange_info_ttl_s),
                tickers_ttl: Duration::from_secs(cfg.markets_tickers_ttl_s),
                force_every: Duration::from_secs(cfg.markets_force_every_s),
                ..DirectoryConfig::default()
            }),
            parked: Vec::new(),
            sse: BTreeMap::new(),
            resolver,
            dns_waiters: BTreeMap::new(),
            store_reads: store_reads::ParkedReads::default(),
            rest_pool: RestPool::default(),
            bus,
            node_id,
            cfg,
        })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn log(&self, level: LogLevel, line: &str) {
        self.logger.log(unix_secs(self.now), level, line);
    }

    /// Runs until shutdown completes. Returns the process exit code.
    pub fn run(mut self) -> i32 {
        let addr = self.local_addr().map_or("?".to_string(), |a| a.to_string());
        self.log(
            LogLevel::Info,
            &format!(
                "server_started listen={addr} tls={} db={} pins={} record={} role={} node={}",
                self.client_tls.is_some(),
                self.stats.store_path,
                self.cfg.settings.pins.join(","),
                self.cfg.record.as_ref().map_or("off".into(), |p| p.display().to_string()),
                self.stats.role,
                self.node_id
            ),
        );
        self.refresh_bus_health();
        self.apply(Input::Start);
        self.refresh_symbol_lists();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.log(LogLevel::Error, &format!("poll_failed error={e:?}"));
                    return 1;
                }
            }
            let (now, mono) = self.clock.now();
            let turn = Instant::now();
            self.now = now;
            self.mono = mono;
            self.stats.now_unix_s = unix_secs(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNALS => {
                        if self.on_signal() {
                            return 130;
                        }
                    }
                    RELOAD => self.on_reload_signal(),
                    token if self.bus_owns(token) => self.on_bus_event(event.is_readable() || event.is_read_closed(), event.is_writable()),
                    token if self.store_owns(token) => self.on_store_event(event.is_readable() || event.is_read_closed(), event.is_writable()),
                    token if self.resolver.owns(token) => {
                        self.resolver.on_readable(token, self.poll.registry(), self.mono)
                    }
                    token => self.on_conn_event(token.0, event.is_readable(), event.is_writable()),
                }
            }
            self.drive_pending_upstream_reads();
            self.drive_pending_client_reads();
            if let Some(wake) = self.engine.next_wake().filter(|w| w.at <= self.now) {
                if self.logger.enabled(LogLevel::Debug) {
                    let late_ms = (self.now.as_nanos() - wake.at.as_nanos()) / 1_000_000;
                    self.log(LogLevel::Debug, &format!("engine_wake why={} late_ms={late_ms}", wake.why));
                }
                self.fire_timers();
            }
            self.process_pending_inputs();
            self.run_store_slice();
            self.pump_store();
            if let Some(code) = self.pump_bus() {
                return code;
            }
            self.resolver.handle_timeout(self.poll.registry(), self.mono);
            self.deliver_dns_answers();
            self.tick_event_streams();
            self.write_ready_clients();
            if self.mono.duration_since(self.last_housekeeping) >= HOUSEKEEPING {
                self.housekeeping();
            }
            if self.shutdown_finished() {
                return self.finish();
            }
            self.note_turn(turn);
        }
    }

    fn note_turn(&mut self, started: Instant) {
        let took = started.elapsed();
        self.stats.loop_turn.observe(crate::time::Duration(took.as_nanos() as u64));
        self.stats.loop_turn_seconds_max = self.stats.loop_turn_seconds_max.max(took.as_secs_f64());
    }

    fn poll_timeout(&self) -> Duration {
        let mut wait = HOUSEKEEPING;
        if let Some(t) = self.engine.poll_timeout() {
            let ns = t.as_nanos().saturating_sub(self.clock.last.as_nanos());
            wait = wait.min(ceil_ms(Duration::from_nanos(ns)));
        }
        if let Some(due) = self.next_event_stream_due() {
            wait = wait.min(due.saturating_duration_since(self.mono));
        }
        if let Some(due) = self.resolver.poll_timeout() {
            wait = wait.min(ceil_ms(due.saturating_duration_since(self.mono)));
        }
        if let Some(store) = self.store_wait() {
            wait = wait.min(store);
        }
        if let Some(bus) = self.bus_wait() {
            wait = wait.min(bus);
        }
        if self.resolver.wants_poll() {
            wait = Duration::ZERO;
        }
        if !self.pending_inputs.is_empty()
            || !self.ready_clients.is_empty()
            || self.store.has_work()
            || self.any_upstream_wants_read()
            || self.any_client_wants_read()
        {
            wait = Duration::ZERO;
        }
        wait
    }

    // -------------------------------------------------------------- engine

    /// Records and applies one input, then carries out its outputs.
    fn apply(&mut self, input: Input) {
        self.handle_recorded(input);
        self.drain_outputs();
    }

    /// Records and applies one input, leaving its outputs to the caller's
    /// drain (a client's write, made while outputs are being drained).
    fn handle_recorded(&mut self, input: Input) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.input(self.now, &input) {
                self.logger.log(unix_secs(self.now), LogLevel::Error, &format!("journal_write_failed error={e:?}"));
                self.journal = None;
            }
        }
        self.engine.handle(input, self.now);
    }

    fn fire_timers(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            let _ = j.timeout(self.now);
        }
        self.engine.handle_timeout(self.now);
        self.drain_outputs();
    }

    fn process_pending_inputs(&mut self) {
        while let Some(input) = self.pending_inputs.pop_front() {
            self.apply(input);
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::UpstreamConnect { conn, market, url } => self.open_upstream(conn.0, market, &url),
                Output::UpstreamSend { conn, text } => self.send_upstream(conn.0, text),
                Output::UpstreamClose { conn, reason } => self.close_upstream(conn.0, &reason),
                // Written at once: the first client of a fan-out goes out
                // before the engine forms the rest (deferred forming fan-out).
                Output::ClientReady { client } => self.write_client(client.0),
                Output::ClientClose { client, code, reason } => self.close_client(client.0, code, &reason),
                Output::Log { level, line } => self.log(level, &line),
                Output::RestRequest { id, market, path } => self.start_rest(id.0, market, &path),
                effect @ (Output::ReadStore { .. } | Output::Persist { .. }) => {
                    // Carried out in order by `run_store_slice`; the answer is
                    // an input of its own, recorded like any other.
                    let _ = self.store.offer(effect);
                }
                // The request being applied is answered by `handle_request`
                // itself; a parked one (stored later) by `finish_ingest`.
                Output::IngestDone { request, error } if self.ingest_inline == Some(request) => {
                    self.ingest_answer = Some(error);
                }
                Output::IngestDone { request, error } => self.finish_ingest(request, error),
                bus @ (Output::BusPublish { .. }
                | Output::BusForming { .. }
                | Output::BusDemand { .. }
                | Output::BusRefused { .. }) => self.offer_bus(bus),
            }
        }
        // `--io-uring`: the clients queued while the outputs were carried out.
        self.flush_uring();
    }

    /// Carries the engine's store effects out, in order, for at most one
    /// slice (`store_host::SLICE`) after the first, feeding each answer back.
    fn run_store_slice(&mut self) {
        if !self.store.has_work() {
            return;
        }
        let started = Instant::now();
        while let Some(answer) = self.store.run_one() {
            self.apply(answer);
            if started.elapsed() >= crate::shell::store_host::SLICE {
                break;
            }
        }
        self.store.slice_took(started);
    }

    fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        match self.conns.get(key) {
            Some(Conn::Http(_)) => self.on_http_event(key, readable, writable),
            Some(Conn::Ws(_)) => self.on_ws_event(key, readable, writable),
            Some(Conn::Upstream { .. }) => self.on_upstream_event(key, readable, writable),
            Some(Conn::Rest { .. }) => self.on_rest_event(key, readable, writable),
            Some(Conn::Directory { .. }) => self.on_directory_event(key, readable, writable),
            None => {}
        }
    }
}
