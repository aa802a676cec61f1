//! Test support for the network store and bus: find the real PostgreSQL and
//! Redis on loopback (or skip / fail), and drive one sans-IO connection over
//! its mio driver with bounded, blocking helpers.
//!
//! Reachability rule: a test that cannot reach its server FAILS when
//! `CI=true` (CI starts the servers) and otherwise SKIPS, printing why.
//! Addresses: `KLINEGATE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `KLINEGATE_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`). Every wait here is bounded.
//!
//! Include with `#[path = "support/netservers.rs"] mod netservers;`.
#![allow(dead_code)]

use klinegate::bus::{Command, RedisConfig, RedisConn, RedisEvent, Reply, Resp};
use klinegate::shell::conn::stream_driver::{Backoff, Driver, SansIo};
use klinegate::store::postgres::{parse_pg_url, Answer, PgConfig, PgConn, PgEvent, Request, RequestId};
use mio::{Events, Poll, Token};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "own_postgres.rs"]
mod own_postgres;

pub const WAIT: Duration = Duration::from_secs(20);

fn reachable(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to nothing"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(addr)
}

fn skip_or_fail(test: &str, what: &str, why: String) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {what} is not reachable under CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {what} is not reachable ({why}); start it or set CI=true to make this a failure");
}

/// The PostgreSQL config and address, or `None` (skip) outside CI. When
/// nothing answers on the default address (and `KLINEGATE_TEST_PG_URL` is not
/// set), the test process starts a server of its own (`own_postgres`).
pub fn pg_or_skip(test: &str) -> Option<(PgConfig, SocketAddr)> {
    let configured = std::env::var("KLINEGATE_TEST_PG_URL").ok();
    let url = configured.clone().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut cfg = parse_pg_url(&url).unwrap_or_else(|e| panic!("KLINEGATE_TEST_PG_URL: {e}"));
    match reachable(&cfg.host, cfg.port) {
        Ok(addr) => Some((cfg, addr)),
        Err(why) if configured.is_some() => {
            skip_or_fail(test, "PostgreSQL", why);
            None
        }
        Err(why) => match own_postgres::own_postgres() {
            Ok(addr) => {
                cfg.host = addr.ip().to_string();
                cfg.port = addr.port();
                Some((cfg, addr))
            }
            Err(own) => {
                skip_or_fail(test, "PostgreSQL", format!("{why}; starting one of our own failed: {own}"));
                None
            }
        },
    }
}

/// The Redis config and address, or `None` (skip) outside CI.
pub fn redis_or_skip(test: &str) -> Option<(RedisConfig, SocketAddr)> {
    let url = std::env::var("KLINEGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let cfg = klinegate::bus::parse_redis_url(&url).unwrap_or_else(|e| panic!("KLINEGATE_TEST_REDIS_URL: {e}"));
    match reachable(&cfg.host, cfg.port) {
        Ok(addr) => Some((cfg, addr)),
        Err(why) => {
            skip_or_fail(test, "Redis", why);
            None
        }
    }
}

/// A name no other test (or test process) uses: `{stem}_{pid}_{n}`.
pub fn unique(stem: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{stem}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One driver on its own `mio::Poll`, turned by hand.
pub struct Net<P> {
    pub poll: Poll,
    pub driver: Driver<P>,
    events: Events,
}

impl<P: SansIo> Net<P> {
    pub fn new(proto: P, addr: SocketAddr, backoff: Backoff) -> Self {
        let poll = Poll::new().expect("mio poll");
        let driver = Driver::new(proto, addr, Token(0), backoff, Instant::now());
        Net { poll, driver, events: Events::with_capacity(64) }
    }

    /// One loop turn: due reconnects, socket events, writes; waits at most `max_wait`.
    pub fn turn(&mut self, max_wait: Duration) {
        let now = Instant::now();
        self.driver.step(now, self.poll.registry());
        let wait = match self.driver.next_wakeup() {
            Some(at) => at.saturating_duration_since(now).min(max_wait),
            None => max_wait,
        };
        self.poll.poll(&mut self.events, Some(wait)).expect("mio poll");
        let now = Instant::now();
        let ready: Vec<(bool, bool)> = self.events.iter().map(|e| (e.is_readable() || e.is_read_closed(), e.is_writable())).collect();
        for (r, w) in ready {
            self.driver.on_event(r, w, now, self.poll.registry());
        }
        self.driver.step(now, self.poll.registry());
    }
}

/// A PostgreSQL connection with blocking helpers (tests only).
pub struct PgClient {
    pub net: Net<PgConn>,
    answers: HashMap<RequestId, Answer>,
    pub readies: u64,
    pub backend_pid: i32,
}

impl PgClient {
    /// Connects and waits for the handshake.
    pub fn connect(cfg: &PgConfig, addr: SocketAddr, max_pending: usize) -> PgClient {
        let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_millis(500) };
        let mut c = PgClient {
            net: Net::new(PgConn::new(cfg.clone(), max_pending), addr, backoff),
            answers: HashMap::new(),
            readies: 0,
            backend_pid: 0,
        };
        c.wait_ready(1);
        c
    }

    pub fn pump(&mut self, max_wait: Duration) {
        self.net.turn(max_wait);
        while let Some(ev) = self.net.driver.proto.poll_event() {
            match ev {
                PgEvent::Ready { backend_pid } => {
                    self.readies += 1;
                    self.backend_pid = backend_pid;
                }
                PgEvent::Answer { id, answer } => {
                    self.answers.insert(id, answer);
                }
            }
        }
    }

    /// Waits until `n` handshakes have completed in total.
    pub fn wait_ready(&mut self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.readies < n {
            assert!(Instant::now() < deadline, "postgres handshake {n} not done: {:?}", self.net.driver.last_error());
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn submit(&mut self, req: Request) -> RequestId {
        let id = self.net.driver.proto.submit(req).expect("queue has room");
        self.net.driver.flush(Instant::now(), self.net.poll.registry());
        id
    }

    pub fn wait(&mut self, id: RequestId) -> Answer {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(a) = self.answers.remove(&id) {
                return a;
            }
            assert!(Instant::now() < deadline, "no answer to request {id}: {:?}", self.net.driver.last_error());
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn run(&mut self, req: Request) -> Answer {
        let id = self.submit(req);
        self.wait(id)
    }

    /// A simple query that must succeed; its result sets' text cells.
    pub fn simple(&mut self, sql: &str) -> Vec<Vec<Vec<Option<String>>>> {
        let sets = self.run(Request::Simple(sql.to_string())).unwrap_or_else(|e| panic!("{sql}: {e}"));
        sets.into_iter()
            .map(|s| {
                s.rows
                    .into_iter()
                    .map(|r| r.into_iter().map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned())).collect())
                    .collect()
            })
            .collect()
    }
}

/// A Redis connection with blocking helpers (tests only).
pub struct RedisClient {
    pub net: Net<RedisConn>,
    replies: HashMap<u64, Reply>,
    pub readies: u64,
}

impl RedisClient {
    pub fn connect(cfg: &RedisConfig, addr: SocketAddr, resp: Resp, max_pending: usize) -> RedisClient {
        let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_millis(500) };
        let mut c = RedisClient {
            net: Net::new(RedisConn::new(cfg.clone(), resp, max_pending), addr, backoff),
            replies: HashMap::new(),
            readies: 0,
        };
        c.wait_ready(1);
        c
    }

    pub fn pump(&mut self, max_wait: Duration) {
        self.net.turn(max_wait);
        while let Some(ev) = self.net.driver.proto.poll_event() {
            match ev {
                RedisEvent::Ready => self.readies += 1,
                RedisEvent::Reply { id, reply } => {
                    self.replies.insert(id, reply);
                }
            }
        }
    }

    pub fn wait_ready(&mut self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.readies < n {
            assert!(Instant::now() < deadline, "redis handshake {n} not done: {:?}", self.net.driver.last_error());
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn submit(&mut self, cmd: Command) -> u64 {
        let id = self.net.driver.proto.submit(cmd).expect("queue has room");
        self.net.driver.flush(Instant::now(), self.net.poll.registry());
        id
    }

    pub fn wait(&mut self, id: u64) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            assert!(Instant::now() < deadline, "no reply to command {id}: {:?}", self.net.driver.last_error());
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn run(&mut self, cmd: Command) -> Reply {
        let id = self.submit(cmd);
        self.wait(id)
    }

    /// Deletes every key under `prefix` (test cleanup).
    pub fn delete_prefix(&mut self, prefix: &str) {
        let keys = self.run(Command::new("KEYS").arg(format!("{prefix}*"))).expect("KEYS");
        for k in keys.into_list().unwrap_or_default() {
            if let Some(k) = k.as_bytes() {
                let _ = self.run(Command::new("DEL").arg(k));
            }
        }
    }
}
