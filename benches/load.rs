//! Load and soak (issue "Load and soak"): the real release `klinegate` with
//! 1,000 pinned series fed by the fake exchange, 10,000 WebSocket clients on
//! loopback each subscribed to 3 seeded-random series, a driver pushing
//! forming updates at a realistic cadence (each stream every ~2 s, phases
//! spread) plus bursts, and closes on a fixed schedule of consecutive past
//! minutes per stream, for a fixed time. Every client verifies its own
//! stream: each close of each of its series exactly once and in order.
//!
//! Every pushed update carries `close = PRICE_BASE + seq`; the driver records
//! when it pushed `seq`, so a receiver turns any frame into a delivery latency
//! (push into the fake exchange → frame read by the client; this includes the
//! fake exchange's own ~0–10 ms poll hop, the server's 250 ms forming throttle
//! for bursts, and its 500 ms close flush interval).
//!
//! Two runs: the baseline (every client reads) and the slow-consumer run (10%
//! of clients stop reading once subscribed). Reported per run: frames
//! delivered, closes delivered vs expected, lost / out-of-order closes,
//! forming and close latency p50/p99/max, server CPU (utime+stime delta from
//! `/proc/<pid>/stat`) and VmRSS at start / peak / end; for the slow run, the
//! reading clients' latency as a ratio of the baseline (target ≤ 1.10) and
//! how many slow clients the server closed (1008 slow_consumer).
//!
//! `cargo bench --bench load`; `KLINEGATE_BENCH_QUICK=1` for 1,000 clients /
//! 100 series / ~5 s. Never reaches beyond 127.0.0.1; every wait is bounded.

#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
#[path = "../tests/support/live.rs"]
mod live;
mod support;

use fake_exchange::{FakeExchange, FakeOptions};
use live::Live;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Series each client subscribes to.
const SUBS_PER_CLIENT: usize = 3;
/// Receiver threads (clients are dealt round-robin).
const RECEIVERS: usize = 2;
/// Each stream gets a forming update this often (phases spread evenly).
const FORMING_EVERY: Duration = Duration::from_secs(2);
/// Each stream closes its current candle this often (consecutive past minutes).
const CLOSE_EVERY: Duration = Duration::from_secs(3);
/// Every BURST_EVERY, BURST_STREAMS_PCT % of the streams get BURST_LEN updates back to back.
const BURST_EVERY: Duration = Duration::from_secs(5);
const BURST_STREAMS_PCT: u64 = 10;
const BURST_LEN: usize = 5;
/// Upper bound on pushed updates (warm-up plus measured); the push-time table is this long.
const MAX_PUSHES: usize = 2_000_000;
/// The slow-consumer run: this share of clients stops reading.
const SLOW_PCT: usize = 10;
/// Reading clients' latency in the slow run may be at most this times the baseline.
const TARGET_RATIO: f64 = 1.10;
/// Bytes queued for one client before the server closes it (the flag below).
const BACKLOG_LIMIT: usize = 262_144;
/// How far in the past the first candle of every stream opens (minutes).
const PAST_MINUTES: i64 = 100_000;
const SEED: u64 = 0x6b6c_696e_6567_6174;

#[derive(Clone, Copy)]
struct Plan {
    clients: usize,
    series: usize,
    run_for: Duration,
}

fn main() {
    let quick = quick();
    let plan = if quick {
        Plan { clients: 1_000, series: 100, run_for: Duration::from_secs(5) }
    } else {
        Plan { clients: 10_000, series: 1_000, run_for: Duration::from_secs(60) }
    };
    let started = Instant::now();
    println!(
        "load bench ({} mode): {} clients x {SUBS_PER_CLIENT} subscriptions over {} pinned series, {:.0} s per run",
        if quick { "quick" } else { "full" },
        plan.clients,
        plan.series,
        plan.run_for.as_secs_f64()
    );
    let baseline = run(&plan, 0);
    baseline.report("baseline");
    let slow = run(&plan, SLOW_PCT);
    slow.report("slow consumers");
    print_table(&plan, &baseline, &slow);
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

// ------------------------------------------------------------------ naming

fn series_id(i: usize) -> String {
    format!("binance:spot:S{i:04}/USDT:1m")
}

fn stream_name(i: usize) -> String {
    format!("s{i:04}usdt@kline_1m")
}

/// Series index from the `series_id` value of a frame (`binance:spot:S0042/USDT:1m`).
fn series_index(payload: &[u8]) -> Option<usize> {
    let key = br#""series_id":"binance:spot:S"#;
    let at = find(payload, key)? + key.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The number after `"key":` (up to `,` or `}`).
fn number_after<T: std::str::FromStr>(payload: &[u8], key: &[u8]) -> Option<T> {
    let at = find(payload, key)? + key.len();
    let end = payload[at..].iter().position(|b| *b == b',' || *b == b'}')? + at;
    std::str::from_utf8(&payload[at..end]).ok()?.parse().ok()
}

// ------------------------------------------------------------------ shared state

/// What the driver and the receivers share.
struct Shared {
    epoch: Instant,
    /// Nanoseconds after `epoch` at which update `seq` was pushed (0: never).
    push_ns: Vec<AtomicU64>,
    /// Update `seq` was pushed as part of a burst (the server's 250 ms forming
    /// throttle holds all but the first of a burst for its trailing edge).
    burst: Vec<AtomicBool>,
    /// Updates from this seq on are measured (u64::MAX during warm-up).
    measure_from: AtomicU64,
    /// (client, series) pairs that have received a forming update.
    warm_pairs: AtomicUsize,
    /// Closes received by reading clients (any order), for the end-of-run drain.
    closes_read: AtomicU64,
    /// Closes received by slow clients once they are read again at the end.
    slow_closes_read: AtomicU64,
    /// Slow clients stop being read.
    stop_slow: AtomicBool,
    /// Slow clients are read again (after the measured run) to verify them too.
    drain_slow: AtomicBool,
    stop: AtomicBool,
    /// Open time (ms) of candle 0 of every stream.
    base_open_ms: i64,
}

impl Shared {
    fn since_epoch_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

// ------------------------------------------------------------------ one run

#[derive(Default)]
struct RunResult {
    reading_clients: usize,
    slow_clients: usize,
    frames: u64,
    frames_measured: u64,
    forming_ms: Vec<f32>,
    cadence_ms: Vec<f32>,
    close_ms: Vec<f32>,
    closes_expected: u64,
    closes_got: u64,
    clients_with_lost: usize,
    lost: u64,
    out_of_order: u64,
    gaps: u64,
    reading_closed_by_server: usize,
    slow_closes_expected: u64,
    slow_closes_got: u64,
    slow_lost: u64,
    slow_out_of_order: u64,
    /// Slow clients that received a 1008 close when read again.
    slow_closed_1008: usize,
    /// Bytes a slow client found waiting when read again (largest, total).
    slow_backlog_max: u64,
    slow_backlog_sum: u64,
    pushes: u64,
    cpu_pct: f64,
    rss_start: u64,
    rss_connected: u64,
    rss_peak: u64,
    rss_end: u64,
    slow_closes_metric: f64,
    coalesced_metric: f64,
    queue_drops_metric: f64,
    measured_s: f64,
    setup_s: f64,
}

impl RunResult {
    fn forming_p(&self, p: f64) -> f64 {
        pct_f32(&self.forming_ms, p)
    }
    fn close_p(&self, p: f64) -> f64 {
        pct_f32(&self.close_ms, p)
    }
    fn cadence_p(&self, p: f64) -> f64 {
        pct_f32(&self.cadence_ms, p)
    }

    fn report(&self, name: &str) {
        println!(
            "  {name}: {} reading + {} slow clients, {} pushes in {:.1} s, {} frames delivered ({} measured), closes {}/{} ({} lost in {} clients, {} out of order, {} gaps), forming p50/p99/max {:.1}/{:.1}/{:.1} ms, close p50/p99/max {:.1}/{:.1}/{:.1} ms, CPU {:.0}%, VmRSS start/connected/peak/end {:.1}/{:.1}/{:.1}/{:.1} MiB, setup {:.1} s",
            self.reading_clients,
            self.slow_clients,
            self.pushes,
            self.measured_s,
            self.frames,
            self.frames_measured,
            self.closes_got,
            self.closes_expected,
            self.lost,
            self.clients_with_lost,
            self.out_of_order,
            self.gaps,
            self.forming_p(50.0),
            self.forming_p(99.0),
            self.forming_p(100.0),
            self.close_p(50.0),
            self.close_p(99.0),
            self.close_p(100.0),
            self.cpu_pct,
            mib(self.rss_start),
            mib(self.rss_connected),
            mib(self.rss_peak),
            mib(self.rss_end),
            self.setup_s,
        );
        println!(
            "    server metrics: slow_consumer_closes_total {}, forming_coalesced_total {}, queue_drops_total {}; reading clients closed by the server: {}",
            self.slow_closes_metric, self.coalesced_metric, self.queue_drops_metric, self.reading_closed_by_server
        );
        if self.slow_clients > 0 {
            println!(
                "    slow clients read again at the end: closes {}/{} ({} lost, {} out of order), {} got 1008, backlog waiting per client mean {:.1} KiB max {:.1} KiB",
                self.slow_closes_got,
                self.slow_closes_expected,
                self.slow_lost,
                self.slow_out_of_order,
                self.slow_closed_1008,
                kib(self.slow_backlog_sum as f64 / self.slow_clients as f64),
                kib(self.slow_backlog_max as f64)
            );
        }
    }
}

fn pct_f32(samples: &[f32], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f32> = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1] as f64
}

fn run(plan: &Plan, slow_pct: usize) -> RunResult {
    let setup = Instant::now();
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().expect("temp dir");
    let whitelist = dir.path().join("whitelist.json");
    let ids: Vec<String> = (0..plan.series).map(series_id).collect();
    std::fs::write(&whitelist, serde_json::json!({ "series_ids": ids }).to_string()).expect("write whitelist");
    let url = ex.ws_url();
    let whitelist_path = whitelist.to_string_lossy().into_owned();
    let args: Vec<String> = [
        "--spot-ws-url",
        &url,
        "--futures-ws-url",
        &url,
        "--whitelist",
        &whitelist_path,
        "--derived",
        "",
        "--heal",
        "false",
        "--max-connections",
        "20000",
        "--max-connections-per-ip",
        "20000",
        "--max-subscriptions-per-client",
        "256",
        "--client-max-backlog-bytes",
        &BACKLOG_LIMIT.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start_in(dir, &arg_refs);
    let pid = live.child.id();
    let streams: Vec<String> = (0..plan.series).map(stream_name).collect();
    let stream_refs: Vec<&str> = streams.iter().map(String::as_str).collect();
    assert!(
        ex.wait_for_subscriptions(&stream_refs, Duration::from_secs(180)),
        "klinegate subscribed all {} streams upstream (has {})",
        plan.series,
        ex.subscriptions().len()
    );
    let mut result = RunResult::default();
    result.rss_start = settled_rss(pid, Duration::from_secs(3));
    let rss_peak = Arc::new(AtomicU64::new(result.rss_start));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (rss_peak.clone(), sampling.clone());
        thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                if let Some(r) = vm_rss_bytes(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // Clients: connect, pick series, subscribe.
    let socks = connect_many(live.addr, plan.clients).expect("clients");
    let mut rng = SplitMix64(SEED);
    let mut clients = Vec::with_capacity(plan.clients);
    for (i, mut sock) in socks.into_iter().enumerate() {
        let mut subs: Vec<usize> = Vec::with_capacity(SUBS_PER_CLIENT);
        while subs.len() < SUBS_PER_CLIENT.min(plan.series) {
            let s = rng.below(plan.series as u64) as usize;
            if !subs.contains(&s) {
                subs.push(s);
            }
        }
        for &s in &subs {
            send_all(&mut sock, &subscribe_frame(&series_id(s))).expect("subscribe");
        }
        let slow = slow_pct > 0 && i % (100 / slow_pct) == (100 / slow_pct) - 1;
        clients.push(RxClient::new(sock, subs, slow).expect("client socket"));
    }
    result.slow_clients = clients.iter().filter(|c| c.slow).count();
    result.reading_clients = clients.len() - result.slow_clients;
    let total_pairs: usize = clients.iter().map(|c| c.subs.len()).sum();
    // Reading subscribers per series: the drain waits for each of them to hold every close.
    let mut reading_per_stream = vec![0u64; plan.series];
    let mut slow_per_stream = vec![0u64; plan.series];
    for c in &clients {
        let per_stream = if c.slow { &mut slow_per_stream } else { &mut reading_per_stream };
        c.subs.iter().for_each(|&s| per_stream[s] += 1);
    }

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        push_ns: (0..MAX_PUSHES).map(|_| AtomicU64::new(0)).collect(),
        burst: (0..MAX_PUSHES).map(|_| AtomicBool::new(false)).collect(),
        measure_from: AtomicU64::new(u64::MAX),
        warm_pairs: AtomicUsize::new(0),
        closes_read: AtomicU64::new(0),
        slow_closes_read: AtomicU64::new(0),
        stop_slow: AtomicBool::new(false),
        drain_slow: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        base_open_ms: current_minute_ms() - PAST_MINUTES * 60_000,
    });
    let mut groups: Vec<Vec<RxClient>> = (0..RECEIVERS).map(|_| Vec::new()).collect();
    for (i, c) in clients.into_iter().enumerate() {
        groups[i % RECEIVERS].push(c);
    }
    let receivers: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("load-rx{i}"))
                .spawn(move || receive(group, &shared))
                .expect("spawn receiver")
        })
        .collect();

    // Warm-up: a forming round over every stream until every pair saw one.
    let mut driver = Driver::new(&ex, &shared, plan.series);
    let warm_end = Instant::now() + Duration::from_secs(120);
    while shared.warm_pairs.load(Ordering::Relaxed) < total_pairs && Instant::now() < warm_end {
        for s in 0..plan.series {
            driver.push_forming(s);
        }
        thread::sleep(Duration::from_millis(500));
    }
    let warmed = shared.warm_pairs.load(Ordering::Relaxed);
    assert_eq!(warmed, total_pairs, "every (client, series) pair got a forming update during warm-up");
    result.rss_connected = settled_rss(pid, Duration::from_secs(3));
    shared.stop_slow.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_millis(100));
    result.setup_s = setup.elapsed().as_secs_f64();

    // Measured run.
    let cpu_before = cpu_ticks(pid).unwrap_or(0);
    let t0 = Instant::now();
    shared.measure_from.store(driver.next_seq, Ordering::Relaxed);
    let pushes_before = driver.next_seq;
    driver.run_schedule(plan.run_for);
    result.measured_s = t0.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(pid).unwrap_or(0);
    result.cpu_pct = (cpu_after.saturating_sub(cpu_before)) as f64 / clock_ticks_per_sec() / result.measured_s * 100.0;
    result.pushes = driver.next_seq - pushes_before;

    // Drain: wait (bounded) until reading clients hold every pushed close.
    let closes_per_stream = driver.closes_pushed.clone();
    let expected_total: u64 = reading_per_stream.iter().zip(&closes_per_stream).map(|(r, c)| r * c).sum();
    let drain_end = Instant::now() + Duration::from_secs(10);
    while shared.closes_read.load(Ordering::Relaxed) < expected_total && Instant::now() < drain_end {
        thread::sleep(Duration::from_millis(50));
    }
    // Then the slow clients read what waited for them (kernel buffers and the
    // server's queue), so their streams are verified too.
    let expected_slow: u64 = slow_per_stream.iter().zip(&closes_per_stream).map(|(r, c)| r * c).sum();
    shared.drain_slow.store(true, Ordering::Relaxed);
    let drain_end = Instant::now() + Duration::from_secs(10);
    while shared.slow_closes_read.load(Ordering::Relaxed) < expected_slow && Instant::now() < drain_end {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(200));
    shared.stop.store(true, Ordering::Relaxed);
    let groups: Vec<RxOutcome> = receivers.into_iter().map(|r| r.join().expect("receiver")).collect();
    result.rss_end = vm_rss_bytes(pid).unwrap_or(0);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    result.rss_peak = rss_peak.load(Ordering::Relaxed).max(result.rss_end);

    for g in groups {
        result.frames += g.frames;
        result.frames_measured += g.frames_measured;
        result.forming_ms.extend(g.forming_ms);
        result.cadence_ms.extend(g.cadence_ms);
        result.close_ms.extend(g.close_ms);
        for c in g.clients.iter().filter(|c| !c.slow) {
            let mut client_lost = 0;
            for (k, &s) in c.subs.iter().enumerate() {
                let expected = closes_per_stream[s];
                result.closes_expected += expected;
                result.closes_got += c.closes_in_order[k];
                client_lost += expected.saturating_sub(c.closes_in_order[k]);
            }
            result.lost += client_lost;
            result.clients_with_lost += usize::from(client_lost > 0);
            result.out_of_order += c.out_of_order;
            result.gaps += c.gaps;
            result.reading_closed_by_server += usize::from(c.close_code.is_some());
        }
        for c in g.clients.iter().filter(|c| c.slow) {
            let mut client_lost = 0;
            for (k, &s) in c.subs.iter().enumerate() {
                let expected = closes_per_stream[s];
                result.slow_closes_expected += expected;
                result.slow_closes_got += c.closes_in_order[k];
                client_lost += expected.saturating_sub(c.closes_in_order[k]);
            }
            result.slow_lost += client_lost;
            result.slow_out_of_order += c.out_of_order;
            result.slow_closed_1008 += usize::from(c.close_code == Some(1008));
            let backlog = c.bytes_read - c.bytes_at_stop;
            result.slow_backlog_max = result.slow_backlog_max.max(backlog);
            result.slow_backlog_sum += backlog;
        }
    }

    let (status, metrics) = live.get("/metrics");
    if status == 200 {
        result.slow_closes_metric = metric_value(&metrics, "klinegate_slow_consumer_closes_total").unwrap_or(f64::NAN);
        result.coalesced_metric = metric_value(&metrics, "klinegate_forming_coalesced_total").unwrap_or(f64::NAN);
        result.queue_drops_metric = metric_value(&metrics, "klinegate_queue_drops_total").unwrap_or(f64::NAN);
    }
    if live.terminate(Duration::from_secs(10)).is_none() {
        live.kill9();
    }
    result
}

// ------------------------------------------------------------------ driver

/// Pushes updates into the fake exchange and records when.
struct Driver<'a> {
    ex: &'a FakeExchange,
    shared: &'a Shared,
    next_seq: u64,
    /// Candle index each stream is forming.
    candle: Vec<i64>,
    /// Closes pushed per stream (= candles 0..n closed).
    closes_pushed: Vec<u64>,
    streams: Vec<String>,
    rng: SplitMix64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Forming(usize),
    Close(usize),
    Burst,
}

impl<'a> Driver<'a> {
    fn new(ex: &'a FakeExchange, shared: &'a Shared, series: usize) -> Driver<'a> {
        Driver {
            ex,
            shared,
            next_seq: 1,
            candle: vec![0; series],
            closes_pushed: vec![0; series],
            streams: (0..series).map(stream_name).collect(),
            rng: SplitMix64(SEED ^ 0xd1b5),
        }
    }

    fn push(&mut self, s: usize, is_final: bool) {
        let seq = self.next_seq;
        if seq as usize >= MAX_PUSHES {
            return;
        }
        self.next_seq += 1;
        let open_ms = self.shared.base_open_ms + self.candle[s] * 60_000;
        let c = PRICE_BASE + seq as f64;
        self.shared.push_ns[seq as usize].store(self.shared.since_epoch_ns().max(1), Ordering::Relaxed);
        self.ex.push_kline(&self.streams[s], open_ms, PRICE_BASE, c + 1.0, PRICE_BASE - 1.0, c, 2.0, is_final);
    }

    fn push_forming(&mut self, s: usize) {
        self.push(s, false);
    }

    fn push_close(&mut self, s: usize) {
        self.push(s, true);
        self.closes_pushed[s] += 1;
        self.candle[s] += 1;
    }

    /// The realistic schedule for `run_for`: per stream a forming update every
    /// FORMING_EVERY and a close every CLOSE_EVERY (phases spread over the
    /// period), and every BURST_EVERY a burst on a random tenth of the streams.
    fn run_schedule(&mut self, run_for: Duration) {
        let n = self.streams.len();
        let start = Instant::now();
        let mut queue: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
        for s in 0..n {
            let phase = FORMING_EVERY.mul_f64(s as f64 / n as f64);
            queue.push(Reverse((phase, Event::Forming(s))));
            let close_phase = CLOSE_EVERY.mul_f64((s as f64 + 0.5) / n as f64);
            queue.push(Reverse((close_phase, Event::Close(s))));
        }
        queue.push(Reverse((BURST_EVERY / 2, Event::Burst)));
        while let Some(Reverse((due, event))) = queue.pop() {
            if due >= run_for {
                break;
            }
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
            match event {
                Event::Forming(s) => {
                    self.push_forming(s);
                    queue.push(Reverse((due + FORMING_EVERY, event)));
                }
                Event::Close(s) => {
                    self.push_close(s);
                    queue.push(Reverse((due + CLOSE_EVERY, event)));
                }
                Event::Burst => {
                    let picked = (n as u64 * BURST_STREAMS_PCT / 100).max(1);
                    for _ in 0..picked {
                        let s = self.rng.below(n as u64) as usize;
                        for _ in 0..BURST_LEN {
                            if let Some(flag) = self.shared.burst.get(self.next_seq as usize) {
                                flag.store(true, Ordering::Relaxed);
                            }
                            self.push_forming(s);
                        }
                    }
                    queue.push(Reverse((due + BURST_EVERY, event)));
                }
            }
        }
    }
}

// ------------------------------------------------------------------ receivers

struct RxClient {
    stream: mio::net::TcpStream,
    partial: Vec<u8>,
    subs: Vec<usize>,
    /// Per subscription: the candle index of the next close expected.
    next_close: Vec<i64>,
    closes_in_order: Vec<u64>,
    warmed: Vec<bool>,
    out_of_order: u64,
    gaps: u64,
    slow: bool,
    registered: bool,
    close_code: Option<u16>,
    bytes_read: u64,
    /// `bytes_read` when a slow client stopped reading.
    bytes_at_stop: u64,
}

impl RxClient {
    fn new(sock: TcpStream, subs: Vec<usize>, slow: bool) -> io::Result<RxClient> {
        sock.set_nonblocking(true)?;
        let n = subs.len();
        Ok(RxClient {
            stream: mio::net::TcpStream::from_std(sock),
            partial: Vec::new(),
            subs,
            next_close: vec![0; n],
            closes_in_order: vec![0; n],
            warmed: vec![false; n],
            out_of_order: 0,
            gaps: 0,
            slow,
            registered: false,
            close_code: None,
            bytes_read: 0,
            bytes_at_stop: 0,
        })
    }
}

struct RxOutcome {
    clients: Vec<RxClient>,
    frames: u64,
    frames_measured: u64,
    forming_ms: Vec<f32>,
    /// Forming updates pushed at the regular cadence (not in a burst).
    cadence_ms: Vec<f32>,
    close_ms: Vec<f32>,
}

fn receive(mut clients: Vec<RxClient>, shared: &Shared) -> RxOutcome {
    let mut out = RxOutcome {
        clients: Vec::new(),
        frames: 0,
        frames_measured: 0,
        forming_ms: Vec::new(),
        cadence_ms: Vec::new(),
        close_ms: Vec::new(),
    };
    let Ok(mut poll) = Poll::new() else { return RxOutcome { clients, ..out } };
    for (i, c) in clients.iter_mut().enumerate() {
        c.registered = poll.registry().register(&mut c.stream, Token(i), Interest::READABLE).is_ok();
    }
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 64 << 10];
    let mut slow_stopped = false;
    let mut slow_draining = false;
    // Clients to read again even without an event (a read cut short).
    let mut first_pass = true;
    while !shared.stop.load(Ordering::Relaxed) {
        if !slow_stopped && shared.stop_slow.load(Ordering::Relaxed) {
            for c in clients.iter_mut().filter(|c| c.slow && c.registered) {
                let _ = poll.registry().deregister(&mut c.stream);
                c.registered = false;
                c.bytes_at_stop = c.bytes_read;
            }
            slow_stopped = true;
        }
        if slow_stopped && !slow_draining && shared.drain_slow.load(Ordering::Relaxed) {
            for (i, c) in clients.iter_mut().enumerate().filter(|(_, c)| c.slow && c.close_code.is_none()) {
                c.registered = poll.registry().register(&mut c.stream, Token(i), Interest::READABLE).is_ok();
                read_client(c, &mut buf, shared, &mut out);
            }
            slow_draining = true;
        }
        if poll.poll(&mut events, Some(Duration::from_millis(20))).is_err() {
            continue;
        }
        let ready: Vec<usize> = if first_pass {
            first_pass = false;
            (0..clients.len()).collect()
        } else {
            events.iter().map(|e| e.token().0).collect()
        };
        for i in ready {
            let Some(c) = clients.get_mut(i) else { continue };
            if !c.registered {
                continue;
            }
            read_client(c, &mut buf, shared, &mut out);
        }
    }
    out.clients = clients;
    out
}

fn read_client(c: &mut RxClient, buf: &mut [u8], shared: &Shared, out: &mut RxOutcome) {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                c.close_code.get_or_insert(1006);
                c.registered = false;
                return;
            }
            Ok(got) => {
                c.bytes_read += got as u64;
                c.partial.extend_from_slice(&buf[..got]);
                let data = std::mem::take(&mut c.partial);
                let used = scan_server_frames(&data, |opcode, payload| on_frame(c, opcode, payload, shared, out));
                c.partial = data[used..].to_vec();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.close_code.get_or_insert(1006);
                c.registered = false;
                return;
            }
        }
    }
}

fn on_frame(c: &mut RxClient, opcode: u8, payload: &[u8], shared: &Shared, out: &mut RxOutcome) {
    if opcode == 8 {
        let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
        c.close_code = Some(code);
        return;
    }
    if opcode != 1 {
        return;
    }
    out.frames += 1;
    let forming = payload.starts_with(br#"{"type":"candle_forming""#);
    let closed = payload.starts_with(br#"{"type":"candle_closed""#);
    if payload.starts_with(br#"{"type":"gap""#) {
        c.gaps += 1;
        return;
    }
    if !forming && !closed {
        return;
    }
    let Some(series) = series_index(payload) else { return };
    let Some(k) = c.subs.iter().position(|s| *s == series) else { return };
    let Some(close) = number_after::<f64>(payload, br#""close":"#) else { return };
    let seq = (close - PRICE_BASE).round() as u64;
    let measure_from = shared.measure_from.load(Ordering::Relaxed);
    // Slow clients' frames are read late on purpose: no latency from them.
    if seq >= measure_from && !c.slow {
        out.frames_measured += 1;
        let pushed = shared.push_ns.get(seq as usize).map_or(0, |p| p.load(Ordering::Relaxed));
        if pushed > 0 {
            let ms = shared.since_epoch_ns().saturating_sub(pushed) as f64 / 1e6;
            let burst = shared.burst.get(seq as usize).is_some_and(|b| b.load(Ordering::Relaxed));
            if forming && !burst {
                out.cadence_ms.push(ms as f32);
            }
            if forming {
                out.forming_ms.push(ms as f32);
            } else {
                out.close_ms.push(ms as f32);
            }
        }
    }
    if forming {
        if !c.warmed[k] {
            c.warmed[k] = true;
            shared.warm_pairs.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let Some(candle_time) = number_after::<i64>(payload, br#""candle_time":"#) else { return };
    let index = (candle_time * 1000 - shared.base_open_ms).div_euclid(60_000);
    let counter = if c.slow { &shared.slow_closes_read } else { &shared.closes_read };
    counter.fetch_add(1, Ordering::Relaxed);
    if index == c.next_close[k] {
        c.closes_in_order[k] += 1;
        c.next_close[k] += 1;
    } else {
        c.out_of_order += 1;
        if index > c.next_close[k] {
            c.next_close[k] = index + 1;
        }
    }
}

// ------------------------------------------------------------------ table

fn print_table(plan: &Plan, base: &RunResult, slow: &RunResult) {
    println!();
    println!(
        "load over loopback: {} clients x {SUBS_PER_CLIENT} series of {}, {:.0} s measured per run; forming every {:.0} s per stream + bursts ({BURST_STREAMS_PCT}% of streams x {BURST_LEN} every {:.0} s), a close every {:.0} s per stream; latency = push into the fake exchange -> frame read by the client",
        plan.clients,
        plan.series,
        plan.run_for.as_secs_f64(),
        FORMING_EVERY.as_secs_f64(),
        BURST_EVERY.as_secs_f64(),
        CLOSE_EVERY.as_secs_f64()
    );
    println!("| run | reading / slow clients | frames delivered | closes got / expected | lost | out of order | gaps | forming p50 / p99 / max (ms) | of which cadence (no burst) p50 / p99 / max (ms) | close p50 / p99 / max (ms) | server CPU | VmRSS start / connected / peak / end (MiB) | slow clients closed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in [("baseline", base), ("10% slow", slow)] {
        println!(
            "| {name} | {} / {} | {} | {} / {} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.0}% | {:.1} / {:.1} / {:.1} / {:.1} | {} |",
            r.reading_clients,
            r.slow_clients,
            r.frames_measured,
            r.closes_got,
            r.closes_expected,
            r.lost,
            r.out_of_order,
            r.gaps,
            r.forming_p(50.0),
            r.forming_p(99.0),
            r.forming_p(100.0),
            r.cadence_p(50.0),
            r.cadence_p(99.0),
            r.cadence_p(100.0),
            r.close_p(50.0),
            r.close_p(99.0),
            r.close_p(100.0),
            r.cpu_pct,
            mib(r.rss_start),
            mib(r.rss_connected),
            mib(r.rss_peak),
            mib(r.rss_end),
            r.slow_closes_metric,
        );
    }
    let ratio = |a: f64, b: f64| a / b;
    let (f50, f99) = (ratio(slow.forming_p(50.0), base.forming_p(50.0)), ratio(slow.forming_p(99.0), base.forming_p(99.0)));
    let (c50, c99) = (ratio(slow.close_p(50.0), base.close_p(50.0)), ratio(slow.close_p(99.0), base.close_p(99.0)));
    let (k50, k99) = (ratio(slow.cadence_p(50.0), base.cadence_p(50.0)), ratio(slow.cadence_p(99.0), base.cadence_p(99.0)));
    let met = |r: f64| if r <= TARGET_RATIO { "met" } else { "missed" };
    println!();
    println!("| reading clients' latency, slow run / baseline | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!("| forming | {f50:.2}x ({}) | {f99:.2}x ({}) | ≤ {TARGET_RATIO}x |", met(f50), met(f99));
    println!("| forming, cadence only | {k50:.2}x ({}) | {k99:.2}x ({}) | ≤ {TARGET_RATIO}x |", met(k50), met(k99));
    println!("| close | {c50:.2}x ({}) | {c99:.2}x ({}) | ≤ {TARGET_RATIO}x |", met(c50), met(c99));
    let violations = base.lost + base.out_of_order + slow.lost + slow.out_of_order;
    println!(
        "closed-candle verification (reading clients): {}",
        if violations == 0 { "every close of every series exactly once and in order".to_string() } else { format!("{violations} violations (see rows)") }
    );
    println!(
        "slow clients: {} of {} closed by the server (1008 slow_consumer past {} KiB queued); read again at the end they found mean {:.1} / max {:.1} KiB waiting and got closes {}/{} ({} lost, {} out of order); VmRSS peak {:.1} MiB vs baseline {:.1} MiB",
        slow.slow_closes_metric,
        slow.slow_clients,
        BACKLOG_LIMIT / 1024,
        kib(slow.slow_backlog_sum as f64 / slow.slow_clients.max(1) as f64),
        kib(slow.slow_backlog_max as f64),
        slow.slow_closes_got,
        slow.slow_closes_expected,
        slow.slow_lost,
        slow.slow_out_of_order,
        mib(slow.rss_peak),
        mib(base.rss_peak)
    );
}
