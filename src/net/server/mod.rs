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

use super::client_conn::{HttpConn, WsConn, WsRead};
use super::dns::{Answer, Resolver, ResolverFiles};
use super::http::{HttpLimits, Response};
use super::logger::Logger;
use super::markets::{self, Directory, DirectoryConfig, FetchKind, SseStream, TopQuery};
use super::routes::{self, HttpConfig, Routed, ShellStats};
use super::timed_store::{StoreStats, TimedStore};
use super::rest_conn::{RestConn, RestLimits, RestOutcome};
use super::server_tls::ServerTls;
use super::transport::Transport;
use super::upstream_conn::{TlsSetup, UpstreamConn, UpstreamEvent};
use crate::engine::{Engine, Input, LogLevel, Output};
use crate::journal::{Header, JournalWriter};
use crate::runconfig::RunConfig;
use crate::store::SqliteStore;
use crate::time::Timestamp;
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The resolver's UDP sockets (IPv4, IPv6).
const DNS: [Token; 2] = [Token(usize::MAX - 8), Token(usize::MAX - 9)];
/// Messages read from one client per readiness event.
const CLIENT_READ_BUDGET: usize = 64;
/// Housekeeping (idle clients, pings, journal flush) runs this often.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// A client that does not finish its close handshake is dropped after this.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

enum Conn {
    Http(HttpConn),
    Ws(WsConn),
    Upstream { engine_conn: u64, conn: UpstreamConn },
    /// One REST request the engine asked for (`RestRequest { id }`).
    Rest { id: u64, conn: RestConn },
    /// One market-directory fetch (`net::markets`), not the engine's.
    Directory { market: crate::model::Market, kind: FetchKind, conn: RestConn },
}

/// The longest a store write waits for another process's lock.
const STORE_BUSY_TIMEOUT: Duration = Duration::from_millis(50);

/// A REST request that takes longer than this is answered `RestFailed`.
const REST_TIMEOUT: Duration = Duration::from_secs(15);

/// Maps the wall clock to engine time: never backwards, read once per turn.
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
    conns: Slab<Conn>,
    engine: Engine,
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
    clients: HashMap<u64, usize>,
    per_ip: HashMap<IpAddr, usize>,
    next_client: u64,
    ready_clients: Vec<u64>,
    /// Client slots whose read budget ran out this turn (read again next turn).
    pending_client_reads: Vec<usize>,
    pending_inputs: VecDeque<Input>,
    frames: Vec<bytes::Bytes>,
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
}

fn unix_secs(t: Timestamp) -> f64 {
    t.as_secs_f64()
}

impl Server {
    /// Opens the store, binds the port, installs signal handlers. Errors are
    /// one line for the user (exit code 2).
    pub fn new(cfg: RunConfig) -> Result<Server, String> {
        let mut store = SqliteStore::open(&cfg.db).map_err(|e| format!("--db {}: {e}", cfg.db.display()))?;
        let store_notes = store_open_notes(&cfg, &mut store)?;
        let read_only = store_cannot_ingest(&cfg, &store).then(|| READ_ONLY_NOTE.to_string());
        let bootstrapped = bootstrap_pins(&cfg, &mut store);
        // One thread serves everything: a write must not wait seconds for another
        // process's lock. A locked store fails fast; the engine keeps the batch
        // and retries with backoff.
        store
            .set_busy_timeout(STORE_BUSY_TIMEOUT)
            .map_err(|e| format!("--db {}: {e}", cfg.db.display()))?;
        let (store, store_stats) = TimedStore::new(store);
        if let Some(why) = &read_only {
            store_stats.borrow_mut().mark_failing(why.clone());
        }
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
        let mut clock = Clock::new();
        let (now, mono) = clock.now();
        let journal = match &cfg.record {
            None => None,
            Some(path) => {
                let file = File::create(path).map_err(|e| format!("--record {}: {e}", path.display()))?;
                let header = Header::new(cfg.settings.clone(), now, false);
                Some(JournalWriter::new(BufWriter::new(file), &header).map_err(|e| format!("--record: {e}"))?)
            }
        };
        let engine = Engine::new(cfg.engine.clone(), Box::new(store), now);
        let http_cfg = HttpConfig {
            cors_origins: cfg.cors_origins.clone(),
            enable_debug_api: cfg.enable_debug_api,
            enable_dev_api: cfg.enable_dev_api,
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
            store_path: cfg.db.display().to_string(),
            started_unix_s: unix_secs(now),
            now_unix_s: unix_secs(now),
            client_tls: client_tls.is_some(),
            ..ShellStats::default()
        };
        let logger = Logger::new(cfg.log_level, cfg.log_format);
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
        let servers = super::dns::describe_servers(resolver.config());
        logger.log(unix_secs(now), LogLevel::Debug, &format!("dns_config nameservers={servers}"));
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::with_capacity(1024),
            engine,
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
            clients: HashMap::new(),
            per_ip: HashMap::new(),
            next_client: 1,
            ready_clients: Vec::new(),
            pending_client_reads: Vec::new(),
            pending_inputs: VecDeque::new(),
            frames: Vec::new(),
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
                "server_started listen={addr} tls={} db={} pins={} record={}",
                self.client_tls.is_some(),
                self.cfg.db.display(),
                self.cfg.settings.pins.join(","),
                self.cfg.record.as_ref().map_or("off".into(), |p| p.display().to_string())
            ),
        );
        let _ = self.apply(Input::Start);
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
                    token if self.resolver.owns(token) => {
                        self.resolver.on_readable(token, self.poll.registry(), self.mono)
                    }
                    token => self.on_conn_event(token.0, event.is_readable(), event.is_writable()),
                }
            }
            self.drive_pending_upstream_reads();
            self.drive_pending_client_reads();
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                self.fire_timers();
            }
            self.process_pending_inputs();
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
        }
    }

    fn poll_timeout(&self) -> Duration {
        let mut wait = HOUSEKEEPING;
        if let Some(t) = self.engine.poll_timeout() {
            let ns = t.as_nanos().saturating_sub(self.clock.last.as_nanos());
            // Round up to the millisecond so a deadline is never polled for early.
            wait = wait.min(Duration::from_nanos(ns.div_ceil(1_000_000) * 1_000_000));
        }
        if let Some(due) = self.next_event_stream_due() {
            wait = wait.min(due.saturating_duration_since(self.mono));
        }
        if let Some(due) = self.resolver.poll_timeout() {
            // Rounded up like the engine's deadline: never woken before the retry is due.
            let left = due.saturating_duration_since(self.mono);
            wait = wait.min(Duration::from_micros(left.as_micros().div_ceil(1000) as u64 * 1000));
        }
        if self.resolver.wants_poll() {
            wait = Duration::ZERO;
        }
        if !self.pending_inputs.is_empty() || self.any_upstream_wants_read() || self.any_client_wants_read() {
            wait = Duration::ZERO;
        }
        wait
    }

    // -------------------------------------------------------------- engine

    /// Records and applies one input, then carries out its outputs.
    fn apply(&mut self, input: Input) -> Result<(), String> {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.input(self.now, &input) {
                self.logger.log(unix_secs(self.now), LogLevel::Error, &format!("journal_write_failed error={e:?}"));
                self.journal = None;
            }
        }
        let result = self.engine.handle(input, self.now);
        self.drain_outputs();
        result
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
            let _ = self.apply(input);
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::UpstreamConnect { conn, url, .. } => self.open_upstream(conn, &url),
                Output::UpstreamSend { conn, text } => self.send_upstream(conn, text),
                Output::UpstreamClose { conn, reason } => self.close_upstream(conn, &reason),
                Output::ClientReady { client } => self.ready_clients.push(client),
                Output::ClientClose { client, code, reason } => self.close_client(client, code, &reason),
                Output::Log { level, line } => self.log(level, &line),
                Output::RestRequest { id, market, path } => self.start_rest(id, market, &path),
            }
        }
    }

    // ---------------------------------------------------------------- REST

    fn start_rest(&mut self, id: u64, market: crate::model::Market, path: &str) {
        let base = match market {
            crate::model::Market::Spot => &self.cfg.spot_rest_url,
            crate::model::Market::Futures => &self.cfg.futures_rest_url,
        };
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        match RestConn::start(base, path, &self.tls, self.poll.registry(), token) {
            Ok(conn) => {
                entry.insert(Conn::Rest { id, conn });
                self.await_resolution(token.0);
            }
            Err(e) => self.pending_inputs.push_back(Input::RestFailed { id, reason: format!("GET {base}{path}: {e}") }),
        }
    }

    fn on_rest_event(&mut self, key: usize, readable: bool, writable: bool) {
        let (id, outcome) = match self.conns.get_mut(key) {
            Some(Conn::Rest { id, conn }) => {
                let outcome = conn.on_event(readable, writable);
                let _ = conn.reregister(self.poll.registry(), Token(key));
                (*id, outcome)
            }
            _ => return,
        };
        let Some(outcome) = outcome else { return };
        self.finish_rest(key, id, outcome);
    }

    /// The engine's REST request `id` at `key` ended: drop it and tell the engine.
    fn finish_rest(&mut self, key: usize, id: u64, outcome: RestOutcome) {
        if let Some(Conn::Rest { mut conn, .. }) = self.conns.try_remove(key) {
            let _ = conn.deregister(self.poll.registry());
        }
        let input = match outcome {
            RestOutcome::Response { status, body, retry_after_s, used_weight_1m, .. } => {
                Input::RestResponse { id, status, body, retry_after_s, used_weight: used_weight_1m }
            }
            RestOutcome::Failed { reason } => Input::RestFailed { id, reason },
        };
        let _ = self.apply(input);
    }

    /// REST requests past their deadline are answered as failed.
    fn expire_rest(&mut self) {
        let mut late = Vec::new();
        for (key, conn) in self.conns.iter() {
            if let Conn::Rest { id, conn } = conn {
                if self.mono.duration_since(conn.started_at()) >= REST_TIMEOUT {
                    late.push((key, *id, conn.url().to_string()));
                }
            }
        }
        for (key, id, url) in late {
            if let Some(Conn::Rest { mut conn, .. }) = self.conns.try_remove(key) {
                let _ = conn.deregister(self.poll.registry());
            }
            let _ = self.apply(Input::RestFailed { id, reason: format!("GET {url}: timed out after {REST_TIMEOUT:?}") });
        }
    }

    // ------------------------------------------------------------ upstream

    fn open_upstream(&mut self, engine_conn: u64, url: &str) {
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        match UpstreamConn::connect(url, &self.tls, self.poll.registry(), token) {
            Ok(conn) => {
                entry.insert(Conn::Upstream { engine_conn, conn });
                self.upstreams.insert(engine_conn, token.0);
                self.await_resolution(token.0);
            }
            Err(e) => {
                self.pending_inputs.push_back(Input::UpstreamDisconnected {
                    conn: engine_conn,
                    reason: format!("connect failed: {e}"),
                });
            }
        }
    }

    fn send_upstream(&mut self, engine_conn: u64, text: String) {
        let Some(&key) = self.upstreams.get(&engine_conn) else { return };
        let Some(Conn::Upstream { conn, .. }) = self.conns.get_mut(key) else { return };
        let result = conn.send_text(text);
        let _ = conn.reregister(self.poll.registry(), Token(key));
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::WouldBlock {
                self.drop_upstream(key, &format!("send failed: {e}"), true);
            }
        }
    }

    fn close_upstream(&mut self, engine_conn: u64, reason: &str) {
        let Some(key) = self.upstreams.remove(&engine_conn) else { return };
        if let Some(Conn::Upstream { mut conn, .. }) = self.conns.try_remove(key) {
            conn.close(reason);
            let _ = conn.deregister(self.poll.registry());
        }
    }

    /// The connection ended on our side of the shell; tell the engine if asked.
    fn drop_upstream(&mut self, key: usize, reason: &str, notify: bool) {
        if let Some(Conn::Upstream { engine_conn, mut conn }) = self.conns.try_remove(key) {
            let _ = conn.deregister(self.poll.registry());
            self.upstreams.remove(&engine_conn);
            if notify {
                self.pending_inputs.push_back(Input::UpstreamDisconnected { conn: engine_conn, reason: reason.into() });
            }
        }
    }

    fn on_upstream_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mut evs = Vec::new();
        let engine_conn = match self.conns.get_mut(key) {
            Some(Conn::Upstream { engine_conn, conn }) => {
                conn.on_event(readable, writable, &mut evs);
                let _ = conn.reregister(self.poll.registry(), Token(key));
                *engine_conn
            }
            _ => return,
        };
        self.dispatch_upstream_events(key, engine_conn, evs);
    }

    fn dispatch_upstream_events(&mut self, key: usize, engine_conn: u64, evs: Vec<UpstreamEvent>) {
        for ev in evs {
            match ev {
                UpstreamEvent::Connected => {
                    self.stats.upstream_connected += 1;
                    let _ = self.apply(Input::UpstreamConnected { conn: engine_conn });
                }
                UpstreamEvent::Text(text) => {
                    self.stats.upstream_frames_in += 1;
                    let _ = self.apply(Input::UpstreamText { conn: engine_conn, text });
                }
                UpstreamEvent::Ping => {
                    let _ = self.apply(Input::UpstreamPing { conn: engine_conn });
                }
                UpstreamEvent::Closed { reason } => {
                    self.drop_upstream(key, &reason, false);
                    let _ = self.apply(Input::UpstreamDisconnected { conn: engine_conn, reason });
                    return;
                }
            }
        }
    }

    fn any_upstream_wants_read(&self) -> bool {
        self.upstreams.values().any(|k| matches!(self.conns.get(*k), Some(Conn::Upstream { conn, .. }) if conn.wants_read()))
    }

    fn drive_pending_upstream_reads(&mut self) {
        let mut keys: Vec<usize> = self
            .upstreams
            .values()
            .copied()
            .filter(|k| matches!(self.conns.get(*k), Some(Conn::Upstream { conn, .. }) if conn.wants_read()))
            .collect();
        keys.sort_unstable();
        for key in keys {
            self.on_upstream_event(key, true, false);
        }
    }

    // ----------------------------------------------------------------- DNS

    /// The connection just put at `key` may wait for a host name: start its lookup. The
    /// answer (at once from the hosts file or the cache, else from a nameserver) is
    /// delivered by `deliver_dns_answers`, never inside the engine's output drain.
    fn await_resolution(&mut self, key: usize) {
        let host = match self.conns.get(key) {
            Some(Conn::Upstream { conn, .. }) => conn.resolving_host(),
            Some(Conn::Rest { conn, .. } | Conn::Directory { conn, .. }) => conn.resolving_host(),
            _ => None,
        };
        let Some(host) = host.map(str::to_owned) else { return };
        let name = self.resolver.lookup(&host, self.poll.registry(), self.mono);
        self.dns_waiters.entry(name).or_default().push(key);
    }

    /// Hands every finished lookup to the connections waiting for it. A failure flows
    /// through each connection's own failure path (`UpstreamDisconnected`, `RestFailed`, a
    /// failed directory fetch), exactly like a refused connect.
    fn deliver_dns_answers(&mut self) {
        while let Some(note) = self.resolver.poll_note() {
            self.log(LogLevel::Info, &note);
        }
        while let Some(answer) = self.resolver.poll_answer() {
            self.log(LogLevel::Debug, &answer.log_line());
            for key in self.dns_waiters.remove(&answer.host).unwrap_or_default() {
                self.on_resolved(key, &answer);
            }
        }
        self.stats.dns = self.resolver.stats();
    }

    fn on_resolved(&mut self, key: usize, answer: &Answer) {
        let result = match &answer.result {
            Ok(addrs) => Ok(addrs.as_slice()),
            Err(e) => Err(e.to_string()),
        };
        // The slot may have been freed and reused since the lookup began: only a
        // connection still resolving that same name takes the answer.
        let waiting = |host: Option<&str>| host.is_some_and(|h| super::dns_wire::normalize(h) == answer.host);
        let registry = self.poll.registry();
        match self.conns.get_mut(key) {
            Some(Conn::Upstream { engine_conn, conn }) if waiting(conn.resolving_host()) => {
                let mut evs = Vec::new();
                conn.on_resolved(result, registry, &mut evs);
                let engine_conn = *engine_conn;
                self.dispatch_upstream_events(key, engine_conn, evs);
            }
            Some(Conn::Rest { id, conn }) if waiting(conn.resolving_host()) => {
                let id = *id;
                if let Some(outcome) = conn.on_resolved(result, registry) {
                    self.finish_rest(key, id, outcome);
                }
            }
            Some(Conn::Directory { conn, .. }) if waiting(conn.resolving_host()) => {
                if let Some(outcome) = conn.on_resolved(result, registry) {
                    self.finish_directory_fetch(key, outcome);
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------- clients

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log(LogLevel::Warn, &format!("accept_failed error={e:?}"));
                    return;
                }
            };
            let ip = peer.ip();
            let on_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            let total = self.stats.connections_open as usize;
            if total >= self.cfg.max_connections || on_ip >= self.cfg.max_connections_per_ip {
                self.stats.connections_rejected += 1;
                let detail = if total >= self.cfg.max_connections {
                    "too many connections"
                } else {
                    self.stats.connections_rejected_per_ip += 1;
                    "too many connections from this address"
                };
                // Over TLS nothing can be said before a handshake: just close.
                if self.client_tls.is_none() {
                    let resp = Response::error(503, detail);
                    let mut buf = Vec::new();
                    resp.write_to(&mut buf, false);
                    let _ = io::Write::write(&mut stream, &buf);
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            let session = match self.client_tls.as_ref().map(ServerTls::session).transpose() {
                Ok(session) => session,
                Err(e) => {
                    self.log(LogLevel::Warn, &format!("client_tls_session_failed peer={peer} error={:?}", e.to_string()));
                    continue;
                }
            };
            let mut stream = Transport::new(stream, session);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self.poll.registry().register(stream.tcp_mut(), Token(key), Interest::READABLE).is_err() {
                continue;
            }
            entry.insert(Conn::Http(HttpConn::new(stream, peer, self.mono)));
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.stats.connections_open += 1;
        }
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

    fn on_http_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mono = self.mono;
        match self.conns.get_mut(key) {
            Some(Conn::Http(h)) => {
                if writable && h.flush().is_err() {
                    return self.remove_client_conn(key);
                }
                if readable {
                    h.read_available(&self.limits, mono);
                }
            }
            _ => return,
        }
        // An event stream has nothing more to read but its end.
        if !self.sse.contains_key(&key) {
            self.serve_requests(key);
        }
        self.finish_http_io(key);
    }

    /// Answers the complete requests in the buffer, in order, while the
    /// connection may take more answers (see `HttpConn::wants_requests`).
    fn serve_requests(&mut self, key: usize) {
        let mono = self.mono;
        loop {
            let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
            if !h.wants_requests() {
                if h.has_unserved_input() {
                    h.more_to_read = true;
                }
                return;
            }
            let req = match h.next_request(&self.limits, mono) {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(e) => {
                    let mut buf = Vec::new();
                    e.to_response().write_to(&mut buf, false);
                    h.queue(&buf);
                    h.close_after_write = true;
                    return;
                }
            };
            self.stats.http_requests += 1;
            if self.handle_request(key, req) {
                // The rest of the bytes belong to the WebSocket (or the event stream).
                if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                    h.request_started = None;
                }
                return;
            }
        }
    }

    /// Answers one request; true when the connection became a WebSocket.
    fn handle_request(&mut self, key: usize, req: super::http::Request) -> bool {
        self.refresh_store_stats();
        let routed = routes::route(&req, &self.engine, &self.stats, &self.http_cfg);
        let response = match routed {
            Routed::Reply(r) => {
                // First visit: reading a series starts its job, which fills history.
                if req.method == "GET" && req.path == "/api/market/candles" && r.status == 200 {
                    if let Some(series_id) = req.query_param("series_id") {
                        let _ = self.apply(Input::TouchSeries { series_id: series_id.to_string() });
                    }
                }
                r
            }
            Routed::Apply { input, reply } => {
                let result = self.apply(input);
                routes::apply_reply(reply, result, &req, &self.http_cfg)
            }
            Routed::Directory { stream, cors } => match self.directory_request(key, &req, stream, cors) {
                Some(r) => r,
                // Now an event stream: nothing after its request is read.
                None if stream => return true,
                // Parked until a fetch ends: requests behind it wait for it.
                None => {
                    if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                        h.awaiting_reply = true;
                    }
                    return false;
                }
            },
            Routed::Upgrade { response } => {
                if self.shutdown_at.is_some() {
                    Response::error(503, "shutting down")
                } else {
                    if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                        h.queue(&response);
                        h.upgrade_after_write = true;
                    }
                    return true;
                }
            }
        };
        if response.status == 401 {
            self.stats.http_unauthorized += 1;
        }
        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
            let mut buf = Vec::with_capacity(256 + response.body.len());
            response.write_to(&mut buf, req.keep_alive);
            h.queue(&buf);
            if !req.keep_alive {
                h.close_after_write = true;
            }
        }
        false
    }

    fn finish_http_io(&mut self, key: usize) {
        let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
        let done = match h.flush() {
            Ok(done) => done,
            Err(_) => return self.remove_client_conn(key),
        };
        if done && h.upgrade_after_write {
            return self.upgrade(key);
        }
        // A failed TLS session has nothing left to say but its alert (already tried).
        let tls_failed = h.tls_error.is_some();
        if tls_failed || (done && h.close_after_write) || (h.peer_closed && !h.has_pending_output()) {
            return self.remove_client_conn(key);
        }
        if h.more_to_read && h.wants_requests() {
            // Bytes or requests are waiting that no readiness event will announce.
            self.pending_client_reads.push(key);
        }
        let interest = if done { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        let _ = self.poll.registry().reregister(h.stream.tcp_mut(), Token(key), interest);
    }

    /// The 101 response is written: the socket becomes a WebSocket client.
    fn upgrade(&mut self, key: usize) {
        let Some(Conn::Http(mut h)) = self.conns.try_remove(key) else { return };
        let leftover = h.take_leftover();
        let client = self.next_client;
        self.next_client += 1;
        let ws = WsConn::new(
            h.stream,
            leftover,
            h.peer,
            client,
            self.cfg.max_frame_bytes,
            self.cfg.max_client_messages_per_s,
            self.mono,
        );
        let entry = self.conns.vacant_entry();
        let new_key = entry.key();
        let mut ws = ws;
        let _ = self.poll.registry().reregister(ws.ws.get_mut().tcp_mut(), Token(new_key), Interest::READABLE);
        entry.insert(Conn::Ws(ws));
        self.clients.insert(client, new_key);
        self.stats.ws_clients += 1;
        let _ = self.apply(Input::ClientConnected { client });
        // Frames pipelined behind the upgrade request are already buffered.
        self.on_ws_event(new_key, true, false);
    }

    fn on_ws_event(&mut self, key: usize, readable: bool, writable: bool) {
        let mono = self.mono;
        let mut msgs = Vec::new();
        let client = match self.conns.get_mut(key) {
            Some(Conn::Ws(w)) if w.discarding => {
                w.more_to_read = false;
                if !w.discard_input() {
                    self.remove_client_conn(key);
                } else {
                    self.update_ws_interest(key);
                }
                return;
            }
            Some(Conn::Ws(w)) => {
                if writable && !w.flush() {
                    msgs.push(WsRead::Closed("write failed".into()));
                }
                if readable {
                    w.read(CLIENT_READ_BUDGET, mono, &mut msgs);
                    if w.more_to_read {
                        self.pending_client_reads.push(key);
                    }
                }
                w.client
            }
            _ => return,
        };
        for m in msgs {
            match m {
                WsRead::Text(text) => {
                    self.stats.ws_frames_in += 1;
                    if self.over_rate(key, client) {
                        continue;
                    }
                    let _ = self.apply(Input::ClientText { client, text });
                }
                WsRead::Binary(len) => {
                    self.stats.ws_frames_in += 1;
                    if self.over_rate(key, client) {
                        continue;
                    }
                    let _ = self.apply(Input::ClientBinary { client, len });
                }
                WsRead::Closed(reason) => {
                    self.log(LogLevel::Debug, &format!("client_closed client={client} reason={reason:?}"));
                    return self.remove_client_conn(key);
                }
                WsRead::Fail { code, reason } => {
                    if code == 1009 {
                        self.stats.ws_messages_too_big += 1;
                    } else {
                        self.stats.ws_protocol_errors += 1;
                    }
                    return self.close_client(client, code, &reason);
                }
            }
        }
        if writable {
            // The socket drained: more frames may be waiting in the engine.
            self.ready_clients.push(client);
        }
        self.update_ws_interest(key);
    }

    /// True when the client is over its message rate: the message is dropped
    /// (counted) and answered with a `rate_limited` error, unless the socket is
    /// backed up, so a flood cannot make us buffer replies without bound. The
    /// engine's frames already queued for this client go out first, so the
    /// client sees replies in the order it sent its messages.
    fn over_rate(&mut self, key: usize, client: u64) -> bool {
        let mono = self.mono;
        let Some(Conn::Ws(w)) = self.conns.get_mut(key) else { return true };
        if w.rate.allow(mono) {
            return false;
        }
        self.stats.client_messages_rate_limited += 1;
        if w.flush_pending || w.closing_since.is_some() {
            return true;
        }
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        self.engine.take_client_frames(client, &mut frames);
        self.stats.ws_frames_out += frames.len() as u64 + 1;
        self.stats.ws_bytes_out += frames.iter().map(|f| f.len() as u64).sum::<u64>();
        let error = rate_limited_frame(w.rate.rate());
        frames.push(bytes::Bytes::from(error));
        let ok = w.send_frames(&frames);
        self.frames = frames;
        if !ok {
            self.remove_client_conn(key);
        }
        true
    }

    fn update_ws_interest(&mut self, key: usize) {
        if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
            if w.flush_pending == w.registered_writable {
                return; // unchanged: no syscall
            }
            w.registered_writable = w.flush_pending;
            let interest =
                if w.flush_pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(w.ws.get_mut().tcp_mut(), Token(key), interest);
        }
    }

    /// Clients whose read budget ran out: read again (edge-triggered readiness
    /// would not announce what is already buffered).
    fn drive_pending_client_reads(&mut self) {
        let mut keys = std::mem::take(&mut self.pending_client_reads);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            // The slot may have been reused by another connection meanwhile.
            match self.conns.get(key) {
                Some(Conn::Ws(w)) if w.more_to_read => self.on_ws_event(key, true, false),
                Some(Conn::Http(h)) if h.more_to_read => self.on_http_event(key, true, false),
                _ => {}
            }
        }
    }

    fn any_client_wants_read(&self) -> bool {
        !self.pending_client_reads.is_empty()
    }

    /// Writes every ready client's queued frames: one flush per client per turn.
    fn write_ready_clients(&mut self) {
        if self.ready_clients.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready_clients);
        ready.sort_unstable();
        ready.dedup();
        let mut frames = std::mem::take(&mut self.frames);
        for client in ready.drain(..) {
            let Some(&key) = self.clients.get(&client) else { continue };
            let Some(Conn::Ws(w)) = self.conns.get_mut(key) else { continue };
            if w.flush_pending || w.closing_since.is_some() {
                continue; // taken again when the socket drains
            }
            frames.clear();
            self.engine.take_client_frames(client, &mut frames);
            if frames.is_empty() {
                continue;
            }
            self.stats.ws_frames_out += frames.len() as u64;
            self.stats.ws_bytes_out += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            if !w.send_frames(&frames) {
                self.remove_client_conn(key);
                continue;
            }
            self.update_ws_interest(key);
        }
        self.ready_clients = ready;
        self.frames = frames;
    }

    fn close_client(&mut self, client: u64, code: u16, reason: &str) {
        let Some(&key) = self.clients.get(&client) else { return };
        self.log(LogLevel::Info, &format!("client_close client={client} code={code} reason={reason:?}"));
        if let Some(Conn::Ws(w)) = self.conns.get_mut(key) {
            // Frames already taken go out before the close frame.
            w.close(code, reason, self.mono);
        }
        // Start draining now: what the peer already sent would not be
        // reported again by edge-triggered readiness.
        self.on_ws_event(key, false, false);
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Removes a client socket; a WebSocket's subscriptions are released.
    fn remove_client_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else { return };
        self.sse.remove(&key);
        self.parked.retain(|p| p.key != key);
        self.stats.connections_open = self.stats.connections_open.saturating_sub(1);
        match conn {
            Conn::Http(mut h) => {
                if h.tls_handshaking() {
                    self.count_tls_handshake_failure(&h);
                }
                h.stream.say_goodbye();
                let _ = self.poll.registry().deregister(h.stream.tcp_mut());
                self.release_ip(h.peer.ip());
            }
            Conn::Ws(mut w) => {
                w.ws.get_mut().say_goodbye();
                let _ = self.poll.registry().deregister(w.ws.get_mut().tcp_mut());
                self.release_ip(w.peer.ip());
                self.clients.remove(&w.client);
                self.stats.ws_clients = self.stats.ws_clients.saturating_sub(1);
                let _ = self.apply(Input::ClientDisconnected { client: w.client });
            }
            Conn::Upstream { .. } | Conn::Rest { .. } | Conn::Directory { .. } => {}
        }
    }

    /// A TLS client connection ends before its handshake completed: a plain-text
    /// client or garbage on the TLS port, a refused certificate, a hang-up, a timeout.
    fn count_tls_handshake_failure(&mut self, h: &HttpConn) {
        self.stats.tls_handshake_failures += 1;
        let (level, reason) = match &h.tls_error {
            Some(e) => (LogLevel::Info, e.as_str()),
            // Port probes and health checks that only open TCP: not worth an info line.
            None => (LogLevel::Debug, "connection closed before the handshake completed"),
        };
        self.log(level, &format!("client_tls_handshake_failed peer={} reason={reason:?}", h.peer));
    }

    // --------------------------------------------------------- housekeeping

    fn housekeeping(&mut self) {
        self.last_housekeeping = self.mono;
        let idle = Duration::from_secs(self.cfg.client_idle_timeout_s);
        let ping_every = idle / 3;
        let mut expired = Vec::new();
        let mut close_idle = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            match conn {
                Conn::Http(h) if h.request_started.is_some_and(|t| self.mono.duration_since(t) >= idle) => {
                    self.stats.http_request_timeouts += 1;
                    h.answer_timeout();
                    expired.push(key);
                }
                Conn::Http(h) if self.mono.duration_since(h.last_activity) >= idle => {
                    if h.tls_handshaking() {
                        h.tls_error = Some(format!("no TLS handshake within {}s (--client-idle-timeout-s)", idle.as_secs()));
                    }
                    expired.push(key);
                }
                Conn::Ws(w) => {
                    if let Some(since) = w.closing_since {
                        // Until then it waits for the peer to hang up (on_ws_event).
                        if self.mono.duration_since(since) >= CLOSE_TIMEOUT {
                            expired.push(key);
                        }
                    } else if self.mono.duration_since(w.last_seen) >= idle {
                        close_idle.push(w.client);
                    } else if self.mono.duration_since(w.last_ping) >= ping_every {
                        w.ping(self.mono);
                    }
                }
                _ => {}
            }
        }
        for client in close_idle {
            self.close_client(client, 1001, "idle timeout");
        }
        expired.sort_unstable();
        for key in expired {
            self.remove_client_conn(key);
        }
        self.refresh_store_stats();
        self.expire_rest();
        self.expire_directory_fetches();
        if let Some(j) = self.journal.as_mut() {
            let _ = j.flush();
        }
    }

    fn refresh_store_stats(&mut self) {
        let st = self.store_stats.borrow();
        self.stats.store_ok = st.last_write_ok;
        self.stats.store_last_error.clone_from(&st.last_error);
        self.stats.store_write_count = st.writes;
        self.stats.store_write_seconds_sum = st.write_seconds_sum;
        self.stats.store_write_seconds_max = st.write_seconds_max;
    }

    // ------------------------------------------------------------- shutdown

    /// Returns true when the process must exit at once (second signal).
    fn on_signal(&mut self) -> bool {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.signals.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        if self.shutdown_at.is_some() {
            self.log(LogLevel::Warn, "second_signal action=exit_now");
            if let Some(j) = self.journal.as_mut() {
                let _ = j.flush();
            }
            return true;
        }
        self.log(LogLevel::Info, "shutdown_requested");
        self.shutdown_at = Some(self.mono);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let _ = self.apply(Input::Shutdown);
        self.close_event_streams();
        let keys: Vec<usize> = self.upstreams.values().copied().collect();
        for key in keys {
            if let Some(Conn::Upstream { conn, .. }) = self.conns.get_mut(key) {
                conn.close("shutdown");
            }
            self.drop_upstream(key, "shutdown", false);
        }
        self.write_ready_clients();
        false
    }

    fn shutdown_finished(&self) -> bool {
        let Some(at) = self.shutdown_at else { return false };
        let grace = Duration::from_secs(self.cfg.shutdown_grace_s);
        self.clients.is_empty() || self.mono.duration_since(at) >= grace
    }

    fn finish(mut self) -> i32 {
        let left = self.engine.unpersisted_candles();
        if let Some(j) = self.journal.as_mut() {
            let _ = j.flush();
        }
        let level = if left == 0 { LogLevel::Info } else { LogLevel::Error };
        self.log(level, &format!("server_stopped unpersisted_candles={left}"));
        if left == 0 {
            0
        } else {
            1
        }
    }
}

const READ_ONLY_NOTE: &str =
    "store is read-only: closed candles will be buffered until it becomes writable (make the database file, its \
     -wal/-shm files and its directory writable by this process; writes are retried with backoff)";

/// Applies `--store-max-mb` and says, as log lines, what the operator should
/// know about the store before the engine starts (a cap, a read-only file).
fn store_open_notes(cfg: &RunConfig, store: &mut SqliteStore) -> Result<Vec<(LogLevel, String)>, String> {
    let mut notes = Vec::new();
    let cap = store.set_size_limit(cfg.store_max_bytes).map_err(|e| format!("--store-max-mb: {e}"))?;
    if let (Some(asked), Some(cap)) = (cfg.store_max_bytes, cap) {
        let (level, note) = if cap > asked {
            (LogLevel::Warn, " note=\"the database is already larger: capped at its current size\"")
        } else {
            (LogLevel::Info, "")
        };
        notes.push((level, format!("store_size_limit requested_bytes={asked} max_bytes={cap}{note}")));
    }
    if store_cannot_ingest(cfg, store) {
        notes.push((LogLevel::Warn, format!("store_read_only path={:?} note={READ_ONLY_NOTE:?}", cfg.db.display().to_string())));
    }
    Ok(notes)
}

/// A read-only store is a fault only for a process that ingests.
fn store_cannot_ingest(cfg: &RunConfig, store: &SqliteStore) -> bool {
    store.is_read_only() && cfg.engine.supervisor.role != crate::engine::supervisor::Role::Read
}

/// `--freqtrade-datadir`: pinned series with no stored history get the newest
/// freqtrade rows before the engine starts (REST healing fills the rest).
fn bootstrap_pins(cfg: &RunConfig, store: &mut SqliteStore) -> Vec<String> {
    use crate::store::Store;
    let Some(dir) = cfg.freqtrade_datadir.as_deref() else { return Vec::new() };
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut lines = Vec::new();
    for pin in &cfg.settings.pins {
        let Ok(id) = crate::model::SeriesId::parse(pin) else { continue };
        if !matches!(store.head_time(id.as_str()), Ok(None)) {
            continue;
        }
        let limit = cfg.settings.heal_first_visit_candles.max(1);
        let line = match crate::bootstrap::bootstrap_series_closed_by(dir, &id, store, limit, Some(now_s)) {
            Ok(n) => format!("freqtrade_bootstrap series_id={id} rows={n}"),
            Err(e) => format!("freqtrade_bootstrap_failed series_id={id} error={:?}", e.to_string()),
        };
        lines.push(line);
    }
    lines
}

/// The error a client over its message rate gets (its message is dropped).
fn rate_limited_frame(rate: u32) -> Vec<u8> {
    let message = format!("too many messages: limit {rate} per second");
    crate::protocol::client::error_frame("rate_limited", &message, None)
}

/// SIGINT/SIGTERM write a byte into a pipe the loop polls (no extra thread).
fn install_signal_pipe(poll: &Poll) -> Result<UnixStream, String> {
    let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("signal pipe: {e}"))?;
    read.set_nonblocking(true).map_err(|e| format!("signal pipe: {e}"))?;
    write.set_nonblocking(true).map_err(|e| format!("signal pipe: {e}"))?;
    let write2 = write.try_clone().map_err(|e| format!("signal pipe: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write)
        .map_err(|e| format!("cannot install SIGINT handler: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write2)
        .map_err(|e| format!("cannot install SIGTERM handler: {e}"))?;
    let mut read = UnixStream::from_std(read);
    poll.registry()
        .register(&mut read, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("signal pipe: {e}"))?;
    Ok(read)
}

/// A `top_markets` request waiting for its market's fetches.
struct Parked {
    key: usize,
    query: TopQuery,
    arrived: Instant,
    keep_alive: bool,
    cors: Vec<(String, String)>,
}

/// At most this many requests wait for the exchange at once; more get 503.
const MAX_PARKED: usize = 4096;

// ------------------------------------------------------- market directory

impl Server {
    /// `GET /api/market/top_markets[/stream]`: the reply now, or `None` when
    /// the request is parked until a fetch ends (or became an event stream).
    fn directory_request(
        &mut self,
        key: usize,
        req: &super::http::Request,
        stream: bool,
        cors: Vec<(String, String)>,
    ) -> Option<Response> {
        let with_cors = |mut r: Response, cors: Vec<(String, String)>| {
            r.headers.extend(cors);
            Some(r)
        };
        if stream {
            return match markets::parse_stream_query(req) {
                Err(r) => with_cors(r, cors),
                Ok(_) if self.shutdown_at.is_some() => with_cors(Response::error(503, "shutting down"), cors),
                Ok(query) => {
                    self.open_event_stream(key, query, &cors);
                    None
                }
            };
        }
        let query = match markets::parse_top_query(req) {
            Ok(q) => q,
            Err(r) => return with_cors(r, cors),
        };
        if query.force {
            let ip = match self.conns.get(key) {
                Some(Conn::Http(h)) => h.peer.ip(),
                _ => return None,
            };
            if !self.directory.allow_force(ip, self.mono) {
                let every = self.directory.config().force_every.as_secs().max(1).to_string();
                return with_cors(Response::error(429, "rate_limited").with_header("Retry-After", &every), cors);
            }
        }
        self.start_directory_fetches(query.market, query.force);
        if !self.directory.busy(query.market) {
            return with_cors(self.directory_answer(&query, self.mono), cors);
        }
        if self.parked.len() >= MAX_PARKED {
            return with_cors(Response::error(503, "too many requests waiting for the exchange"), cors);
        }
        self.parked.push(Parked { key, query, arrived: self.mono, keep_alive: req.keep_alive, cors });
        None
    }

    fn directory_answer(&self, query: &TopQuery, arrived: Instant) -> Response {
        let now_ms = (self.now.as_nanos() / 1_000_000) as i64;
        match self.directory.top(query, arrived, now_ms) {
            Ok(top) => Response::text(200, "application/json", top.to_json()),
            Err(e) => e.to_response(),
        }
    }

    /// Starts the fetches the directory wants for `market`. One that cannot
    /// even start counts as failed at once.
    fn start_directory_fetches(&mut self, market: crate::model::Market, force: bool) {
        for kind in self.directory.needed(market, force, self.mono) {
            let base = match market {
                crate::model::Market::Spot => &self.cfg.spot_rest_url,
                crate::model::Market::Futures => &self.cfg.futures_rest_url,
            };
            let path = kind.path(market);
            let limits = RestLimits { max_body_bytes: self.directory.config().max_body_bytes, ..RestLimits::default() };
            let entry = self.conns.vacant_entry();
            let token = Token(entry.key());
            match RestConn::start(base, path, &self.tls, self.poll.registry(), token) {
                Ok(conn) => {
                    entry.insert(Conn::Directory { market, kind, conn: conn.with_limits(limits) });
                    self.await_resolution(token.0);
                }
                Err(e) => {
                    let reason = format!("GET {base}{path}: {e}");
                    self.record_directory_fetch(market, kind, Err(reason));
                }
            }
        }
    }

    fn on_directory_event(&mut self, key: usize, readable: bool, writable: bool) {
        let outcome = match self.conns.get_mut(key) {
            Some(Conn::Directory { conn, .. }) => {
                let outcome = conn.on_event(readable, writable);
                let _ = conn.reregister(self.poll.registry(), Token(key));
                outcome
            }
            _ => return,
        };
        let Some(outcome) = outcome else { return };
        self.finish_directory_fetch(key, outcome);
    }

    fn finish_directory_fetch(&mut self, key: usize, outcome: RestOutcome) {
        let Some(Conn::Directory { market, kind, mut conn }) = self.conns.try_remove(key) else { return };
        let _ = conn.deregister(self.poll.registry());
        let result = match &outcome {
            RestOutcome::Response { status, body, retry_after_s, .. } => Ok((*status, body.as_str(), *retry_after_s)),
            RestOutcome::Failed { reason } => Err(reason.clone()),
        };
        self.record_directory_fetch(market, kind, result);
        self.settle_directory(market);
    }

    fn record_directory_fetch(
        &mut self,
        market: crate::model::Market,
        kind: FetchKind,
        result: Result<(u16, &str, Option<u64>), String>,
    ) {
        let path = kind.path(market);
        match self.directory.on_fetched(market, kind, result, self.mono) {
            Ok(()) => self.log(LogLevel::Debug, &format!("market_directory_fetched path={path}")),
            Err(e) => self.log(LogLevel::Warn, &format!("market_directory_fetch_failed path={path} error={e:?}")),
        }
    }

    /// Once no fetch of `market` is under way: answer its parked requests and
    /// the event streams that were waiting.
    fn settle_directory(&mut self, market: crate::model::Market) {
        if self.directory.busy(market) {
            return;
        }
        let (ready, waiting): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| p.query.market == market);
        self.parked = waiting;
        for p in ready {
            let mut response = self.directory_answer(&p.query, p.arrived);
            response.headers.extend(p.cors);
            if let Some(Conn::Http(h)) = self.conns.get_mut(p.key) {
                let mut buf = Vec::with_capacity(256 + response.body.len());
                response.write_to(&mut buf, p.keep_alive);
                h.queue(&buf);
                h.awaiting_reply = false;
                if !p.keep_alive {
                    h.close_after_write = true;
                }
            }
            // Requests pipelined behind the parked one are answered now.
            self.serve_requests(p.key);
            self.finish_http_io(p.key);
        }
        let streams: Vec<usize> =
            self.sse.iter().filter(|(_, s)| s.waiting && s.query.top.market == market).map(|(k, _)| *k).collect();
        for key in streams {
            self.tick_event_stream(key);
        }
    }

    fn expire_directory_fetches(&mut self) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c, Conn::Directory { conn, .. } if self.mono.duration_since(conn.started_at()) >= REST_TIMEOUT)
            })
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let Some(Conn::Directory { market, kind, mut conn }) = self.conns.try_remove(key) else { continue };
            let _ = conn.deregister(self.poll.registry());
            let reason = format!("GET {}: timed out after {REST_TIMEOUT:?}", conn.url());
            self.record_directory_fetch(market, kind, Err(reason));
            self.settle_directory(market);
        }
    }

    // ---------------------------------------------------------- event streams

    /// The HTTP connection at `key` becomes an event stream: the head now,
    /// the first event at once (or when its market's fetch ends).
    fn open_event_stream(&mut self, key: usize, query: markets::StreamQuery, cors: &[(String, String)]) {
        let Some(Conn::Http(h)) = self.conns.get_mut(key) else { return };
        h.queue(&markets::sse_head(cors));
        self.sse.insert(key, SseStream::new(query, self.mono));
        self.tick_event_stream(key);
    }

    fn next_event_stream_due(&self) -> Option<Instant> {
        self.sse.values().filter(|s| !s.waiting).map(|s| s.next_due).min()
    }

    fn tick_event_streams(&mut self) {
        let due: Vec<usize> = self.sse.iter().filter(|(_, s)| s.is_due(self.mono)).map(|(k, _)| *k).collect();
        for key in due {
            self.tick_event_stream(key);
        }
    }

    /// One tick: fetch first if the cache is stale (the stream waits), else
    /// an event or a ping; the stream ends after `max_events`.
    fn tick_event_stream(&mut self, key: usize) {
        let Some(query) = self.sse.get(&key).map(|s| s.query.top.clone()) else { return };
        self.start_directory_fetches(query.market, false);
        if self.directory.busy(query.market) {
            if let Some(s) = self.sse.get_mut(&key) {
                s.waiting = true;
            }
            return;
        }
        let now_ms = (self.now.as_nanos() / 1_000_000) as i64;
        let answer = self.directory.top(&query, self.mono, now_ms);
        let Some(stream) = self.sse.get_mut(&key) else { return };
        let (bytes, done) = stream.tick(answer, self.mono);
        if done {
            self.sse.remove(&key);
        }
        if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
            h.queue(&bytes);
            h.last_activity = self.mono;
            h.close_after_write |= done;
        }
        self.finish_http_io(key);
    }

    /// Shutdown: every event stream ends once what is queued is written.
    fn close_event_streams(&mut self) {
        let keys: Vec<usize> = self.sse.keys().copied().collect();
        self.sse.clear();
        for key in keys {
            if let Some(Conn::Http(h)) = self.conns.get_mut(key) {
                h.close_after_write = true;
            }
            self.finish_http_io(key);
        }
    }
}
