//! Several klinegate nodes (issue #13) — the real binaries on a shared store
//! (PostgreSQL with a schema of the test's own, or one SQLite file when no
//! PostgreSQL answers outside CI) and the real Redis (a key prefix of the
//! test's own, deleted after), with the fake exchange:
//! - 1 ingest + 1 read node: a client on the read node gets every close of a
//!   pinned series (1m and its derived 5m) exactly once, in order — the same
//!   closes the ingest node stored; the read node opens no exchange
//!   connection; the read node's recorded journal replays the client's frames
//!   byte for byte with no database and no Redis;
//! - 2 ingest + 2 read nodes: kill -9 the leader mid-stream → the standby
//!   takes the lease and the stream over; every close is stored exactly once
//!   and every read-node client receives every close exactly once, in order
//!   (the failover time is printed);
//! - a trimmed stream: a read node cut from Redis while the stream is
//!   trimmed past its last entry reads the hole from the store.
//!
//! Without a Redis on `KLINEGATE_TEST_REDIS_URL` a test starts a
//! `redis-server` of its own; without one installed it skips (printing why)
//! outside CI and fails under `CI=true`.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;
#[path = "support/netservers.rs"]
mod netservers;

use fake_exchange::{FakeExchange, FakeOptions, RestCandle};
use klinegate::bus::{Command, Resp};
use netservers::{pg_or_skip, redis_or_skip, unique, PgClient, RedisClient};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::live::{now_minute_ms, Live};
use support::replay_frames::{client_ids, closed_times, read_rest, replay_frames};

const S1: &str = "binance:spot:BTC/USDT:1m";
const S5: &str = "binance:spot:BTC/USDT:5m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// The shared store and bus of one test; dropped (schema, keys) at the end.
struct Shared {
    redis_url: String,
    redis: RedisClient,
    prefix: String,
    store_url: String,
    pg: Option<(PgClient, String, klinegate::store::postgres::PgConfig, std::net::SocketAddr)>,
    _dir: tempfile::TempDir,
    /// A redis-server this test started because none answered.
    _own: Option<OwnRedis>,
}

impl Shared {
    fn new(test: &str) -> Option<Shared> {
        Shared::with_store(test, true)
    }

    /// `postgres`: use PostgreSQL when it answers (else the shared SQLite file).
    fn with_store(test: &str, postgres: bool) -> Option<Shared> {
        // The configured Redis, or one of the test's own when none answers
        // (and redis-server is installed); else skip (fail under CI=true).
        let url = std::env::var("KLINEGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let cfg = klinegate::bus::parse_redis_url(&url).expect("KLINEGATE_TEST_REDIS_URL");
        let up = format!("{}:{}", cfg.host, cfg.port)
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, SEC).is_ok());
        let own = if up { None } else { OwnRedis::start(test) };
        let (rcfg, raddr) = match &own {
            Some(r) => {
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", r.port).parse().unwrap();
                (klinegate::bus::RedisConfig { host: "127.0.0.1".into(), port: r.port, db: 0 }, addr)
            }
            None => redis_or_skip(test)?,
        };
        let redis = RedisClient::connect(&rcfg, raddr, Resp::V2, 64);
        let prefix = unique("kgnodes");
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL on the configured address, or one this process starts.
        let pg = if postgres { pg_or_skip(test) } else { None };
        let (store_url, pg) = match pg {
            Some((cfg, addr)) => {
                let schema = unique("kg_nodes");
                let mut url = format!("postgres://{}@{}/{}?schema={schema}", cfg.user, addr, cfg.database);
                if let Some(p) = &cfg.password {
                    url = url.replacen('@', &format!(":{p}@"), 1);
                }
                (url, Some((PgClient::connect(&cfg, addr, 8), schema, cfg, addr)))
            }
            None => {
                eprintln!("{test}: no PostgreSQL: the nodes share one SQLite file");
                (format!("sqlite:{}", dir.path().join("shared.db").display()), None)
            }
        };
        let redis_url = format!("redis://{}:{}/{}", rcfg.host, rcfg.port, rcfg.db);
        Some(Shared { redis_url, redis, prefix, store_url, pg, _dir: dir, _own: own })
    }

    fn node(&self, role: &str, name: &str, ex: &FakeExchange, extra: &[&str]) -> Live {
        let ws = ex.ws_url();
        let mut args: Vec<&str> = vec![
            "--role", role, "--node-id", name, "--bus-url", &self.redis_url, "--bus-prefix", &self.prefix,
            "--store-url", &self.store_url, "--spot-ws-url", &ws, "--futures-ws-url", &ws, "--pin", S1,
        ];
        if !extra.contains(&"--derived") {
            args.extend_from_slice(&["--derived", "5m"]);
        }
        args.extend_from_slice(extra);
        Live::start(&args)
    }

    /// Stored candle times of `series`, ascending (duplicates would show).
    fn stored(&mut self, series: &str) -> Vec<i64> {
        match &mut self.pg {
            Some((pg, schema, ..)) => {
                let rows = pg.simple(&format!("SELECT candle_time FROM {schema}.candles WHERE series_id = '{series}' ORDER BY candle_time"));
                rows[0].iter().filter_map(|r| r[0].as_deref().and_then(|t| t.parse().ok())).collect()
            }
            None => {
                let path = self.store_url.trim_start_matches("sqlite:").to_string();
                let conn = rusqlite::Connection::open(path).expect("open the shared SQLite file");
                let mut st = conn.prepare("SELECT candle_time FROM candles WHERE series_id = ?1 ORDER BY candle_time").unwrap();
                st.query_map([series], |r| r.get::<_, i64>(0)).unwrap().filter_map(Result::ok).collect()
            }
        }
    }

    fn redis(&mut self, cmd: Command) -> Value {
        match self.redis.run(cmd) {
            Ok(v) => json!(format!("{v:?}")),
            Err(e) => json!(format!("error {e}")),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let prefix = format!("{}:", self.prefix);
        self.redis.delete_prefix(&prefix);
        if let Some((_, schema, cfg, addr)) = &self.pg {
            let mut pg = PgClient::connect(cfg, *addr, 4);
            let _ = pg.run(klinegate::store::postgres::Request::Simple(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
        }
    }
}

fn subscribe(live: &Live, series: &[&str]) -> support::live::Client {
    let mut c = live.ws();
    for s in series {
        c.send(json!({"type":"subscribe","series_id":s}));
    }
    c
}

#[test]
fn a_read_node_serves_every_close_the_ingest_node_stored_once_in_order() {
    let test = "a_read_node_serves_every_close_the_ingest_node_stored_once_in_order";
    let Some(mut shared) = Shared::new(test) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let mut ingest = shared.node("ingest", "ingest-a", &ex, &["--heal", "false"]);
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-a", 10 * SEC).is_some(), "the only ingest node leads");
    assert!(ingest.wait_log("job_started series_id=binance:spot:BTC/USDT:1m", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));

    let rdir = tempfile::tempdir().unwrap();
    let journal = rdir.path().join("read.jsonl");
    let jr = journal.display().to_string();
    let mut read = shared.node("read", "read-a", &ex, &["--heal", "false", "--record", &jr]);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = subscribe(&read, &[S1, S5]);
    let wants = |ingest: &Live| ingest.get_json("/health")["bus"]["demand"]["read-a"] == json!([S1, S5]);
    assert!(wait_until(10 * SEC, || wants(&ingest)), "the leader sees what the read node's client wants");

    // 20 minutes of closes, starting at a 5m boundary: 20 1m, 4 5m.
    let t0 = (now_minute_ms() - 40 * 60_000) / 300_000 * 300_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    let mut seen = Vec::new();
    for k in 0..20 {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0 + k as f64, 2.0 + k as f64, 0.5, 1.5 + k as f64, 1.0, false);
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0 + k as f64, 2.0 + k as f64, 0.5, 1.5 + k as f64, 1.0, true);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(19))));
    seen.extend(c.until(3 * SEC, |f| closed_times(std::slice::from_ref(f), S5).contains(&minute(15))));
    let expected_1m: Vec<i64> = (0..20).map(minute).collect();
    let expected_5m: Vec<i64> = (0..4).map(|k| minute(5 * k)).collect();
    assert_eq!(closed_times(&seen, S1), expected_1m, "every 1m close once, in order");
    assert_eq!(closed_times(&seen, S5), expected_5m, "every derived 5m close once, in order");
    assert_eq!(shared.stored(S1), expected_1m, "the ingest node stored each once");
    assert_eq!(shared.stored(S5), expected_5m);
    assert!(seen.iter().any(|f| f["type"] == "candle_forming"), "forming updates cross the bus too");
    assert_eq!(ex.connect_count(), 1, "the read node opened no exchange connection");
    let h = read.get_json("/health");
    assert_eq!((h["role"].clone(), h["bus"]["connected"].clone()), (json!("read"), json!(true)), "{h}");
    let h = ingest.get_json("/health");
    assert_eq!((h["role"].clone(), h["bus"]["leader"].clone()), (json!("ingest"), json!(true)), "{h}");
    assert_eq!(ingest.metric("klinegate_bus_leader"), 1.0);
    assert_eq!(ingest.metric("klinegate_bus_closed_published_total"), 24.0, "20 1m + 4 5m");
    assert!(wait_until(5 * SEC, || read.metric("klinegate_bus_closed_received_total") == 24.0));
    assert!(read.get("/metrics").1.contains("klinegate_node_info{role=\"read\",node=\"read-a\"} 1"));
    println!(
        "1 ingest + 1 read: candles expected {} stored {} delivered {} (1m), expected {} stored {} delivered {} (5m)",
        expected_1m.len(),
        shared.stored(S1).len(),
        closed_times(&seen, S1).len(),
        expected_5m.len(),
        shared.stored(S5).len(),
        closed_times(&seen, S5).len()
    );

    assert_eq!(read.terminate(10 * SEC), Some(0));
    read_rest(&mut c, &mut seen);
    let replayed = replay_frames(&journal);
    let ids = client_ids(&journal);
    assert_eq!(replayed.get(&ids[0]), Some(&seen), "the read node's journal replays its client's frames exactly");
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
    let _ = shared.redis(Command::new("PING"));
}

/// Minute `k`'s prices (the live frames and the REST history agree).
fn px(k: i64) -> (f64, f64, f64, f64) {
    let o = 100.0 + k as f64;
    (o, o + 2.0, o - 1.0, o + 1.0)
}

fn push_close(ex: &FakeExchange, t0: i64, k: i64) {
    let (o, h, l, c) = px(k);
    ex.push_kline(STREAM, t0 + k * 60_000, o, h, l, c, 1.0, false);
    ex.push_kline(STREAM, t0 + k * 60_000, o, h, l, c, 1.0, true);
}

#[test]
fn killing_the_ingest_leader_hands_over_without_losing_or_repeating_a_close() {
    let test = "killing_the_ingest_leader_hands_over_without_losing_or_repeating_a_close";
    let Some(mut shared) = Shared::new(test) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = (now_minute_ms() - 40 * 60_000) / 300_000 * 300_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    // The exchange's history of the 20 minutes: what a new leader heals from.
    let rows = (0..20)
        .map(|k| {
            let (o, h, l, c) = px(k);
            RestCandle::new(t0 + k * 60_000, "1m", o, h, l, c, 1.0)
        })
        .collect();
    ex.set_history("spot", "BTCUSDT", "1m", rows);
    let heal = ["--heal-first-visit-candles", "5", "--bus-lease-ms", "2000"];
    let mut a = shared.node("ingest", "ingest-a", &ex, &heal);
    assert!(a.wait_log("bus_lease_acquired node=ingest-a", 10 * SEC).is_some());
    assert!(a.wait_log("job_started series_id=binance:spot:BTC/USDT:1m", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut b = shared.node("ingest", "ingest-b", &ex, &heal);
    let mut r1 = shared.node("read", "read-1", &ex, &[]);
    let mut r2 = shared.node("read", "read-2", &ex, &[]);
    for r in [&mut r1, &mut r2] {
        assert!(r.wait_log("bus_reader_started", 10 * SEC).is_some());
    }
    assert!(wait_until(5 * SEC, || b.get_json("/health")["bus"]["connected"] == json!(true)));
    let hb = b.get_json("/health");
    assert_eq!((hb["bus"]["leader"].clone(), hb["jobs"]["running"].clone()), (json!(false), json!(0)), "a standby: {hb}");
    let mut clients = [subscribe(&r1, &[S1, S5]), subscribe(&r1, &[S1]), subscribe(&r2, &[S1, S5])];
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];

    // Mid-stream: 10 closes through the leader, then it dies.
    for k in 0..10 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    for (c, s) in clients.iter_mut().zip(seen.iter_mut()) {
        s.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(9))));
    }
    a.kill9();
    let killed = Instant::now();
    assert!(wait_until(5 * SEC, || ex.connections() == 0), "the fake exchange saw the leader's connection drop");
    // The handover window: closes nobody receives live (the REST history has them).
    for k in 10..15 {
        assert_eq!(push_close_count(&ex, t0, k), 0, "no live connection while nobody leads");
    }
    let took_over = b.wait_log("bus_lease_acquired node=ingest-b", 20 * SEC).expect("the standby takes the lease");
    let lease_s = killed.elapsed().as_secs_f64();
    assert!(took_over.contains("fence="), "{took_over}");
    assert!(b.wait_log("job_started series_id=binance:spot:BTC/USDT:1m", 10 * SEC).is_some());
    assert!(wait_until(10 * SEC, || ex.subscriptions().iter().any(|s| s == STREAM)));
    for (c, s) in clients.iter_mut().zip(seen.iter_mut()) {
        s.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(14))));
    }
    let first_close_s = killed.elapsed().as_secs_f64();
    for k in 15..20 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    for (c, s) in clients.iter_mut().zip(seen.iter_mut()) {
        s.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(19))));
        s.extend(c.until(2 * SEC, |_| false));
    }

    let expected: Vec<i64> = (0..20).map(minute).collect();
    let expected_5m: Vec<i64> = (0..4).map(|k| minute(5 * k)).collect();
    assert_eq!(shared.stored(S1), expected, "every close stored exactly once");
    assert_eq!(shared.stored(S5), expected_5m, "every derived close stored exactly once");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(closed_times(s, S1), expected, "client {i}: every close once, in order");
    }
    assert_eq!(closed_times(&seen[0], S5), expected_5m, "derived closes across the handover");
    assert_eq!(closed_times(&seen[2], S5), expected_5m);
    let hb = b.get_json("/health");
    assert_eq!(hb["bus"]["leader"], json!(true), "{hb}");
    println!(
        "failover (lease 2000 ms): lease taken {lease_s:.2} s after kill -9, first healed close at the clients {first_close_s:.2} s; \
         candles expected {} stored {} delivered {:?}",
        expected.len(),
        shared.stored(S1).len(),
        seen.iter().map(|s| closed_times(s, S1).len()).collect::<Vec<_>>()
    );
    for live in [&mut b, &mut r1, &mut r2] {
        assert_eq!(live.terminate(10 * SEC), Some(0));
    }
}

fn push_close_count(ex: &FakeExchange, t0: i64, k: i64) -> usize {
    let (o, h, l, c) = px(k);
    ex.push_kline(STREAM, t0 + k * 60_000, o, h, l, c, 1.0, true)
}

#[test]
fn a_read_node_client_makes_the_leader_start_a_job_and_gets_its_capacity_refusal() {
    let test = "a_read_node_client_makes_the_leader_start_a_job_and_gets_its_capacity_refusal";
    let Some(shared) = Shared::new(test) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let eth = "binance:spot:ETH/USDT:1m";
    let sol = "binance:spot:SOL/USDT:1m";
    let lease = ["--heal", "false", "--bus-lease-ms", "1000", "--max-ondemand-jobs", "1", "--idle-ttl", "1"];
    let mut ingest = shared.node("ingest", "ingest-d", &ex, &lease);
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-d", 10 * SEC).is_some());
    let mut read = shared.node("read", "read-d", &ex, &lease);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());

    // A client on the read node wants a series nobody ingests: the leader starts it.
    let mut a = subscribe(&read, &[eth]);
    assert!(ingest.wait_log("bus_demand_accepted node=read-d series_id=binance:spot:ETH/USDT:1m", 10 * SEC).is_some());
    assert!(ingest.wait_log("job_started series_id=binance:spot:ETH/USDT:1m", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&["ethusdt@kline_1m"], 10 * SEC));
    let t0 = now_minute_ms() - 10 * 60_000;
    for k in 0..3 {
        ex.push_kline("ethusdt@kline_1m", t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    }
    let got = a.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), eth).contains(&((t0 + 120_000) / 1000)));
    assert_eq!(closed_times(&got, eth), (0..3).map(|k| (t0 + k * 60_000) / 1000).collect::<Vec<_>>());

    // The leader is at its on-demand cap: the next series is refused, and the
    // read node's client gets the reference's capacity error.
    let mut b = subscribe(&read, &[sol]);
    let frames = b.until(10 * SEC, |f| f["type"] == "error");
    let err = frames.iter().find(|f| f["type"] == "error").unwrap_or_else(|| panic!("no error frame: {frames:?}"));
    assert_eq!((err["code"].clone(), err["series_id"].clone()), (json!("capacity"), json!(sol)), "{err}");
    assert!(ingest.wait_log("bus_demand_rejected node=read-d series_id=binance:spot:SOL/USDT:1m reason=capacity", SEC).is_some());

    // The read node dies: its demand lapses (3 leases) and the job is reaped after the idle TTL.
    read.kill9();
    let killed = Instant::now();
    assert!(ingest.wait_log("bus_demand_released node=read-d series_id=binance:spot:ETH/USDT:1m", 10 * SEC).is_some());
    let lapsed = killed.elapsed().as_secs_f64();
    assert!(ingest.wait_log("job_stopped series_id=binance:spot:ETH/USDT:1m reason=reaped", 10 * SEC).is_some());
    println!("demand of a killed read node lapsed after {lapsed:.2} s (lease 1 s, TTL 3 leases)");
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
}

/// A redis-server of the test's own on a free loopback port (no persistence:
/// a restart loses every key), killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(test: &str) -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut r = OwnRedis { port, child: None };
        if let Err(e) = r.spawn() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: cannot start redis-server under CI=true: {e}");
            }
            eprintln!("SKIPPED {test}: cannot start redis-server ({e})");
            return None;
        }
        Some(r)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        if wait_until(5 * SEC, || std::net::TcpStream::connect(addr).is_ok()) {
            Ok(())
        } else {
            Err("redis-server did not listen".into())
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn restarting_redis_mid_stream_loses_and_repeats_nothing_and_closes_no_client() {
    let test = "restarting_redis_mid_stream_loses_and_repeats_nothing_and_closes_no_client";
    let Some(mut shared) = Shared::new(test) else { return };
    let Some(mut redis) = OwnRedis::start(test) else { return };
    shared.redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = (now_minute_ms() - 40 * 60_000) / 300_000 * 300_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    let mut ingest = shared.node("ingest", "ingest-r", &ex, &["--heal", "false"]);
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-r", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut read = shared.node("read", "read-r", &ex, &["--heal", "false"]);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = subscribe(&read, &[S1, S5]);
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = Vec::new();
    for k in 0..8 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(7))));

    // Redis dies (every key lost) while closes keep coming, and comes back.
    redis.kill();
    let down = Instant::now();
    for k in 8..12 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(60));
    }
    redis.spawn().expect("redis-server restarts");
    let outage = down.elapsed().as_secs_f64();
    for k in 12..20 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(19))));
    seen.extend(c.until(2 * SEC, |_| false));

    let expected: Vec<i64> = (0..20).map(minute).collect();
    let expected_5m: Vec<i64> = (0..4).map(|k| minute(5 * k)).collect();
    assert_eq!(shared.stored(S1), expected, "every close stored once");
    assert_eq!(closed_times(&seen, S1), expected, "every close delivered once, in order, across the restart");
    assert_eq!(closed_times(&seen, S5), expected_5m);
    assert!(!seen.iter().any(|f| f["type"] == "error"), "{seen:?}");
    assert!(read.wait_log("bus_hole reason=stream_reset", SEC).is_some(), "the reader saw the stream reset");
    assert_eq!(ingest.get_json("/health")["bus"]["leader"], json!(true), "the leader led on");
    println!(
        "redis restart (no persistence, outage {outage:.2} s): candles expected {} stored {} delivered {}",
        expected.len(),
        shared.stored(S1).len(),
        closed_times(&seen, S1).len()
    );
    assert_eq!(read.terminate(10 * SEC), Some(0), "the client was never closed before this");
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
}

#[test]
fn ingest_and_read_roles_without_a_bus_url_exit_2_with_one_line() {
    for role in ["ingest", "read"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
            .args(["run", "--role", role, "--listen", "127.0.0.1:0"])
            .env_remove("KLINEGATE_BUS_URL")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{role}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("--bus-url") && err.contains(&format!("--role {role}")), "{err}");
    }
}

#[test]
fn a_read_node_cut_off_while_the_stream_is_trimmed_past_it_reads_the_hole_from_the_store() {
    let test = "a_read_node_cut_off_while_the_stream_is_trimmed_past_it_reads_the_hole_from_the_store";
    let Some(mut shared) = Shared::new(test) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = now_minute_ms() / 60_000 * 60_000 - 400 * 60_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    // A stream trimmed hard.
    let flags = ["--heal", "false", "--derived", "", "--bus-maxlen", "10", "--batch-max", "1"];
    let mut ingest = shared.node("ingest", "ingest-t", &ex, &flags);
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-t", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let direct = shared.redis_url.clone();
    let target: std::net::SocketAddr = direct.trim_start_matches("redis://").split('/').next().unwrap().parse().unwrap();
    let proxy = support::tcp_proxy::TcpProxy::start(target);
    shared.redis_url = format!("redis://{}", proxy.addr);
    let mut read = shared.node("read", "read-t", &ex, &flags);
    shared.redis_url = direct;
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = subscribe(&read, &[S1]);
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    for k in 0..5 {
        push_close(&ex, t0, k);
    }
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(4))));

    proxy.cut();
    // One flush (one entry) per close: more than a stream node (100 entries)
    // goes by, so MAXLEN ~ trims past the reader's last entry.
    for k in 5..255 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(wait_until(20 * SEC, || ingest.metric("klinegate_bus_closed_published_total") >= 255.0));
    let key = format!("{}:closed", shared.prefix);
    let len = shared.redis(Command::new("XLEN").arg(&key));
    proxy.restore();
    if read.wait_log("bus_hole reason=stream_trimmed", 20 * SEC).is_none() {
        read.drain_logs();
        let bus: Vec<&String> = read.seen_logs.iter().filter(|l| l.contains("bus_")).collect();
        panic!("the reader did not see the trim (XLEN {len}): {bus:#?}");
    }
    seen.extend(c.until(20 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(254))));
    for k in 255..260 {
        push_close(&ex, t0, k);
    }
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(259))));
    seen.extend(c.until(SEC, |_| false));
    let expected: Vec<i64> = (0..260).map(minute).collect();
    assert_eq!(shared.stored(S1), expected);
    let got = closed_times(&seen, S1);
    assert_eq!(got, expected, "the hole from the store, the rest from the stream: once each, in order");
    assert!(!seen.iter().any(|f| f["type"] == "gap"), "no gap frame");
    println!("trimmed stream (XLEN {len} after 255 entries): candles expected {} stored {} delivered {}", expected.len(), shared.stored(S1).len(), got.len());
    assert_eq!(read.terminate(10 * SEC), Some(0));
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
}

#[test]
fn postgres_refuses_a_write_from_a_leader_whose_fence_is_behind() {
    let test = "postgres_refuses_a_write_from_a_leader_whose_fence_is_behind";
    let Some(mut shared) = Shared::new(test) else { return };
    let Some(schema) = shared.pg.as_ref().map(|p| p.1.clone()) else {
        eprintln!("SKIPPED {test}: the fence row is PostgreSQL's (no PostgreSQL here)");
        return;
    };
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = now_minute_ms() - 30 * 60_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    let mut a = shared.node("ingest", "ingest-f", &ex, &["--heal", "false", "--derived", ""]);
    assert!(a.wait_log("bus_lease_acquired node=ingest-f", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    push_close(&ex, t0, 0);
    assert!(wait_until(10 * SEC, || shared.stored(S1) == vec![minute(0)]));
    assert!(wait_until(5 * SEC, || a.get_json("/health")["bus"]["fence"].is_u64()));
    let fence = a.get_json("/health")["bus"]["fence"].as_u64().unwrap();
    let sql = |shared: &mut Shared, q: String| {
        if let Some((pg, ..)) = shared.pg.as_mut() {
            pg.simple(&q);
        }
    };
    // A newer leader wrote (as far as the database knows): this node's batch is refused.
    sql(&mut shared, format!("UPDATE {schema}.klinegate_fence SET fence = {}", fence + 1));
    push_close(&ex, t0, 1);
    let refused = a.wait_log("store_write_failed", 10 * SEC).expect("the write is refused");
    assert!(refused.contains("fenced"), "{refused}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shared.stored(S1), vec![minute(0)], "nothing of the refused batch is stored");
    // Back to this node's fence: the retry goes through, in order.
    sql(&mut shared, format!("UPDATE {schema}.klinegate_fence SET fence = {fence}"));
    assert!(wait_until(15 * SEC, || shared.stored(S1) == vec![minute(0), minute(1)]), "{:?}", shared.stored(S1));
    assert_eq!(a.terminate(10 * SEC), Some(0));
}

/// Figures, not asserts: the latency a read node adds over a hybrid node in
/// the same run (exchange frame pushed → close received by a client, each
/// client read on a thread of its own), both on SQLite and flushing every
/// close at once, so the difference is the bus hop. Run with
/// `cargo test --test live_bus_nodes bench_ -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_read_node_added_latency_over_a_hybrid_node() {
    let test = "bench_read_node_added_latency_over_a_hybrid_node";
    let Some(shared) = Shared::with_store(test, false) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let ws = ex.ws_url();
    let fast = ["--heal", "false", "--derived", "", "--batch-max", "1"];
    let hybrid = Live::start(&["--spot-ws-url", &ws, "--futures-ws-url", &ws, "--pin", S1, "--derived", "", "--heal", "false", "--batch-max", "1"]);
    let mut ingest = shared.node("ingest", "ingest-bench", &ex, &fast);
    assert!(ingest.wait_log("bus_lease_acquired", 10 * SEC).is_some());
    let mut read = shared.node("read", "read-bench", &ex, &fast);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    assert!(wait_until(10 * SEC, || ex.connections() >= 2 && ex.subscriptions().iter().any(|s| s == STREAM)));
    std::thread::sleep(Duration::from_millis(500));
    const N: i64 = 300;
    let t0 = now_minute_ms() - 400 * 60_000;
    let last = (t0 + (N - 1) * 60_000) / 1000;
    let spawn = |mut c: support::live::Client| {
        std::thread::spawn(move || {
            let mut got: Vec<(i64, Instant)> = Vec::new();
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end && !got.iter().any(|(t, _)| *t == last) {
                if let Some(f) = c.next(Duration::from_millis(100)) {
                    for t in closed_times(std::slice::from_ref(&f), S1) {
                        got.push((t, Instant::now()));
                    }
                }
            }
            got
        })
    };
    let (th, tr) = (spawn(subscribe(&hybrid, &[S1])), spawn(subscribe(&read, &[S1])));
    std::thread::sleep(Duration::from_millis(500));
    let mut pushed = std::collections::BTreeMap::new();
    for k in 0..N {
        let (o, h, l, c) = px(k);
        pushed.insert((t0 + k * 60_000) / 1000, Instant::now());
        ex.push_kline(STREAM, t0 + k * 60_000, o, h, l, c, 1.0, true);
        std::thread::sleep(Duration::from_millis(20));
    }
    let lat = |got: Vec<(i64, Instant)>| -> Vec<f64> {
        let mut v: Vec<f64> = got
            .iter()
            .filter_map(|(t, at)| pushed.get(t).map(|p| at.saturating_duration_since(*p).as_secs_f64() * 1000.0))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let (lh, lr) = (lat(th.join().unwrap()), lat(tr.join().unwrap()));
    let pct = |v: &[f64], p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "close latency, exchange push → client (ms; {} / {} closes): hybrid p50 {:.2} p99 {:.2}; read node p50 {:.2} p99 {:.2}; added p50 {:.2} p99 {:.2}",
        lh.len(),
        lr.len(),
        pct(&lh, 0.5),
        pct(&lh, 0.99),
        pct(&lr, 0.5),
        pct(&lr, 0.99),
        pct(&lr, 0.5) - pct(&lh, 0.5),
        pct(&lr, 0.99) - pct(&lh, 0.99)
    );
}

#[test]
fn the_leaders_postgres_outage_holds_closes_and_read_nodes_get_each_once_after() {
    let test = "the_leaders_postgres_outage_holds_closes_and_read_nodes_get_each_once_after";
    let Some(mut shared) = Shared::new(test) else { return };
    let Some(pg_addr) = shared.pg.as_ref().map(|p| p.3) else {
        eprintln!("SKIPPED {test}: needs PostgreSQL");
        return;
    };
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = (now_minute_ms() - 60 * 60_000) / 300_000 * 300_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    // The leader reaches PostgreSQL through a proxy the test cuts; the read node directly.
    let proxy = support::tcp_proxy::TcpProxy::start(pg_addr);
    let direct = shared.store_url.clone();
    shared.store_url = direct.replace(&pg_addr.to_string(), &proxy.addr.to_string());
    let mut ingest = shared.node("ingest", "ingest-p", &ex, &["--heal", "false"]);
    shared.store_url = direct;
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-p", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut read = shared.node("read", "read-p", &ex, &["--heal", "false"]);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = subscribe(&read, &[S1, S5]);
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = Vec::new();
    for k in 0..5 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(4))));

    proxy.cut();
    let cut = Instant::now();
    for k in 5..12 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(wait_until(10 * SEC, || ingest.metric("klinegate_store_write_errors_total") >= 1.0), "the leader's writes fail");
    let during = c.until(SEC, |_| false);
    assert!(closed_times(&during, S1).iter().all(|t| *t < minute(5)), "nothing is published before it is stored: {during:?}");
    seen.extend(during);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed()));
    proxy.restore();
    let outage = cut.elapsed().as_secs_f64();
    for k in 12..20 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(30 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(19))));
    seen.extend(c.until(2 * SEC, |_| false));
    let expected: Vec<i64> = (0..20).map(minute).collect();
    let expected_5m: Vec<i64> = (0..4).map(|k| minute(5 * k)).collect();
    assert_eq!(shared.stored(S1), expected, "stored once each");
    assert_eq!(closed_times(&seen, S1), expected, "delivered once each, in order");
    assert_eq!(closed_times(&seen, S5), expected_5m);
    println!(
        "leader's PostgreSQL cut for {outage:.1} s: candles expected {} stored {} delivered {}",
        expected.len(),
        shared.stored(S1).len(),
        closed_times(&seen, S1).len()
    );
    assert_eq!(read.terminate(10 * SEC), Some(0), "the client was never closed before this");
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
}

/// Figures, not asserts: N clients on one read node, then N on each of two
/// read nodes, in the same run — the p99 of exchange push → close received.
/// Run with `cargo test --test live_bus_nodes bench_ -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_two_read_nodes_carry_twice_the_clients() {
    let test = "bench_two_read_nodes_carry_twice_the_clients";
    let Some(shared) = Shared::with_store(test, false) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let fast = ["--heal", "false", "--derived", "", "--batch-max", "1"];
    let mut ingest = shared.node("ingest", "ingest-b2", &ex, &fast);
    assert!(ingest.wait_log("bus_lease_acquired", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut r1 = shared.node("read", "read-b1", &ex, &fast);
    let mut r2 = shared.node("read", "read-b2", &ex, &fast);
    for r in [&mut r1, &mut r2] {
        assert!(r.wait_log("bus_reader_started", 10 * SEC).is_some());
    }
    const CLIENTS: usize = 50;
    const N: i64 = 100;
    let run = |nodes: &[&Live], first_minute: i64| -> Vec<(usize, f64)> {
        let t0 = now_minute_ms() - 600 * 60_000 + first_minute * 60_000;
        let last = (t0 + (N - 1) * 60_000) / 1000;
        let mut threads = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for _ in 0..CLIENTS {
                let mut c = subscribe(node, &[S1]);
                threads.push((n, std::thread::spawn(move || {
                    let mut got: Vec<(i64, Instant)> = Vec::new();
                    let end = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < end && !got.iter().any(|(t, _)| *t == last) {
                        if let Some(f) = c.next(Duration::from_millis(100)) {
                            for t in closed_times(std::slice::from_ref(&f), S1) {
                                got.push((t, Instant::now()));
                            }
                        }
                    }
                    got
                })));
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        let mut pushed = std::collections::BTreeMap::new();
        for k in 0..N {
            let (o, h, l, c) = px(k);
            pushed.insert((t0 + k * 60_000) / 1000, Instant::now());
            ex.push_kline(STREAM, t0 + k * 60_000, o, h, l, c, 1.0, true);
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = Vec::new();
        for (n, t) in threads {
            for (time, at) in t.join().unwrap() {
                if let Some(p) = pushed.get(&time) {
                    out.push((n, at.saturating_duration_since(*p).as_secs_f64() * 1000.0));
                }
            }
        }
        out
    };
    let p99 = |v: &[(usize, f64)], node: usize| {
        let mut l: Vec<f64> = v.iter().filter(|(n, _)| *n == node).map(|(_, x)| *x).collect();
        l.sort_by(|a, b| a.total_cmp(b));
        (l.len(), l.get(((l.len() as f64 - 1.0) * 0.99).round() as usize).copied().unwrap_or(f64::NAN))
    };
    let one = run(&[&r1], 0);
    let two = run(&[&r1, &r2], 200);
    let (n1, a) = p99(&one, 0);
    let (n2a, b) = p99(&two, 0);
    let (n2b, c) = p99(&two, 1);
    println!(
        "{CLIENTS} clients per read node, {N} closes: one node p99 {a:.2} ms ({n1} deliveries); two nodes p99 {b:.2} / {c:.2} ms ({n2a} + {n2b} deliveries)"
    );
}

#[test]
fn a_read_node_that_was_down_catches_its_clients_up_from_the_store_then_the_stream() {
    let test = "a_read_node_that_was_down_catches_its_clients_up_from_the_store_then_the_stream";
    let Some(mut shared) = Shared::new(test) else { return };
    let ex = FakeExchange::start(FakeOptions::spot());
    let t0 = (now_minute_ms() - 80 * 60_000) / 300_000 * 300_000;
    let minute = |k: i64| (t0 + k * 60_000) / 1000;
    let mut ingest = shared.node("ingest", "ingest-c", &ex, &["--heal", "false", "--derived", ""]);
    assert!(ingest.wait_log("bus_lease_acquired node=ingest-c", 10 * SEC).is_some());
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut read = shared.node("read", "read-c", &ex, &["--heal", "false", "--derived", ""]);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = subscribe(&read, &[S1]);
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    for k in 0..5 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(4))));
    // The read node goes down; the stream and the store move on without it.
    read.kill9();
    for k in 5..30 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wait_until(10 * SEC, || shared.stored(S1).len() == 30));
    // It comes back; the client resumes from the last close it saw.
    let mut read = shared.node("read", "read-c", &ex, &["--heal", "false", "--derived", ""]);
    assert!(read.wait_log("bus_reader_started", 10 * SEC).is_some());
    let mut c = read.ws();
    c.send(json!({"type":"subscribe","series_id":S1,"since":minute(4)}));
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(29))));
    for k in 30..35 {
        push_close(&ex, t0, k);
        std::thread::sleep(Duration::from_millis(30));
    }
    seen.extend(c.until(10 * SEC, |f| closed_times(std::slice::from_ref(f), S1).contains(&minute(34))));
    seen.extend(c.until(SEC, |_| false));
    let expected: Vec<i64> = (0..35).map(minute).collect();
    assert_eq!(closed_times(&seen, S1), expected, "the store's hole, then the stream: once each, in order");
    assert_eq!(shared.stored(S1), expected);
    assert_eq!(read.terminate(10 * SEC), Some(0));
    assert_eq!(ingest.terminate(10 * SEC), Some(0));
}
