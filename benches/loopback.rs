//! Fan-out over loopback with real sockets (issue item 3b, issue #14 §1/§2):
//! how long one forming update takes to reach the first and the last of N
//! WebSocket clients subscribed to one series, for the real `klinegate`
//! binary, beside raw baselines measured in the same run: a minimal mio loop
//! (this bench binary re-executed as a child process, `support/raw_server.rs`)
//! that writes the same frame bytes to the same number of sockets, with one
//! `write` each (epoll, the baseline klinegate is held to) or with io_uring
//! sends submitted together (`support/uring_send.rs`: all clients in one
//! submission, in batches, or the first client written directly and the
//! rest batched).
//!
//! Every server gets identical clients (a tungstenite handshake, then bare
//! sockets read by one mio thread in this process) and the same protocol: push
//! update k, wait until every client holds it (or a timeout), push k+1.
//! klinegate is fed through the fake exchange or the direct feed
//! (`support/direct_feed.rs`); the hop bench → feed → klinegate, which the
//! raw loops (triggered over their own loopback control socket) do not pay
//! in full, is measured with one client and reported separately.
//!
//! Arrival times are the kernel's receive timestamps (`SO_TIMESTAMPNS`, read
//! with `recvmsg`, `support/receiver.rs`): when the bytes reached each client
//! socket, not when the one receiver thread got round to reading it. The
//! trigger is stamped on the same clock (CLOCK_REALTIME). Where the kernel
//! gives no stamp, the read time is used and counted.
//!
//! CPU per delivered message: user + system CPU time of the server process
//! over the measured updates (the scheduler's `se.sum_exec_runtime` of each of
//! its threads in `/proc/PID/task/*/sched`; clock ticks from `/proc/PID/stat`
//! where that file is missing), divided by updates × clients.
//!
//! `cargo bench --bench loopback`; `KLINEGATE_BENCH_QUICK=1` for a smoke run;
//! `KLINEGATE_BENCH_SERVERS=fake,direct,uring,uring-all,uring-first` chooses
//! the servers besides the raw epoll writer, which always runs (quick default
//! `fake,direct,uring`; full default all five); `KLINEGATE_BENCH_URING_BATCH=B`
//! (default 1024) sets the batch of the `uring` and `uring-first` rows;
//! `KLINEGATE_BENCH_SOURCES=N` spreads the clients over 127.0.0.1 … 127.0.0.N;
//! `KLINEGATE_BENCH_SIZES=1000,10000` sets the client counts;
//! `KLINEGATE_BENCH_ROUNDS=R` the alternation rounds (full default 3);
//! `KLINEGATE_BENCH_PROFILE=N[:UPDATES]` for one klinegate run to attach a
//! profiler to (`KLINEGATE_BENCH_WRAP="valgrind --tool=callgrind …"` runs it
//! under that command, with callgrind's collection switched on for the
//! measured updates only); `KLINEGATE_BENCH_PIN=1` pins server and receiver
//! to CPUs 0/1. Never reaches beyond 127.0.0.1; every wait is bounded.

#[path = "support/direct_feed.rs"]
mod direct_feed;
#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
#[path = "../tests/support/live.rs"]
mod live;
#[path = "support/raw_server.rs"]
mod raw_server;
#[path = "support/receiver.rs"]
mod receiver;
mod support;
#[path = "support/uring_send.rs"]
mod uring_send;

use direct_feed::DirectFeed;
use fake_exchange::{FakeExchange, FakeOptions, KlineFrame};
use live::Live;
use raw_server::{read_write_loop_times, spawn_raw_server, wait_child, Writer};
use receiver::{keep_receive_timestamps_on, realtime_ns, receive, wait_done};
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;
use uring_send::UringMode;

/// `KLINEGATE_BENCH_PROFILE=N[:UPDATES]`: only klinegate via the direct feed
/// with N clients; prints the server pid and pauses 2 s before the measured
/// updates so `perf record -p PID` / `strace -c -p PID` can attach.
const PROFILE_ENV: &str = "KLINEGATE_BENCH_PROFILE";
/// A command (split on spaces) the profile run starts klinegate under.
const WRAP_ENV: &str = "KLINEGATE_BENCH_WRAP";
/// With pinning on, the server under test runs on one CPU, the receiver on the other.
const SERVER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
/// Ratio to the raw baseline the issue asks for.
const TARGET_RATIO: f64 = 1.25;
/// First client (issue 14 §1): within this ratio of the raw writer's first client, and this p50.
const FIRST_TARGET_RATIO: f64 = 1.2;
const FIRST_TARGET_MS: f64 = 0.150;
/// Warm-up updates (each one a retry) until every client is subscribed.
const MAX_WARMUPS: i64 = 30;

/// One server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Kg(Feed),
    Raw(Writer),
}

impl Server {
    fn label(&self) -> String {
        match self {
            Server::Kg(Feed::Fake) => "kg/fake".into(),
            Server::Kg(Feed::Direct) => "kg/direct".into(),
            Server::Raw(w) => w.label(),
        }
    }
}

const EPOLL: Server = Server::Raw(Writer::Epoll);

/// The servers of this run (`KLINEGATE_BENCH_SERVERS`), the epoll writer
/// always among them; io_uring rows are dropped, with a visible note, where
/// io_uring cannot run.
fn servers(quick: bool) -> Vec<Server> {
    let default = if quick { "fake,direct,uring" } else { "fake,direct,uring,uring-all,uring-first" };
    let spec = std::env::var("KLINEGATE_BENCH_SERVERS").unwrap_or_else(|_| default.into());
    let batch = Some(uring_send::batch_from_env());
    let uring = uring_send::available();
    match &uring {
        Ok(what) => println!("io_uring available ({what})"),
        Err(e) => println!("io_uring unavailable ({e}): uring rows skipped, epoll writes only"),
    }
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let server = match name {
            "fake" => Server::Kg(Feed::Fake),
            "direct" => Server::Kg(Feed::Direct),
            "raw" | "epoll" => EPOLL,
            "uring" => Server::Raw(Writer::Uring(UringMode { batch, first_direct: false })),
            "uring-all" => Server::Raw(Writer::Uring(UringMode { batch: None, first_direct: false })),
            "uring-first" => Server::Raw(Writer::Uring(UringMode { batch, first_direct: true })),
            other => {
                println!("note: unknown server {other:?} in KLINEGATE_BENCH_SERVERS (fake, direct, raw, uring, uring-all, uring-first)");
                continue;
            }
        };
        if matches!(server, Server::Raw(Writer::Uring(_))) && uring.is_err() {
            println!("skip: {} (io_uring unavailable)", server.label());
            continue;
        }
        if !out.contains(&server) {
            out.push(server);
        }
    }
    if !out.contains(&EPOLL) {
        out.push(EPOLL);
    }
    out
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "?".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn main() {
    if raw_server::serve_if_asked() {
        return;
    }
    if let Ok(spec) = std::env::var(PROFILE_ENV) {
        return profile_run(&spec);
    }
    // Sockets with receive timestamps on keep the kernel's timestamping switched
    // on; when the last one closes (between runs) it is switched off, and turning
    // it back on is deferred: a run's first segments would come unstamped.
    let _keep_stamping = keep_receive_timestamps_on();
    let quick = quick();
    let default_sizes: &[usize] = if quick { &[200, 1_000] } else { &[1_000, 10_000] };
    let sizes: Vec<usize> = std::env::var("KLINEGATE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default_sizes.to_vec());
    let plan = Plan { updates: if quick { 10 } else { 60 }, timeout: Duration::from_secs(if quick { 2 } else { 5 }) };
    let hop_plan = Plan { updates: if quick { 30 } else { 100 }, ..plan };
    let started = Instant::now();
    println!(
        "loopback fan-out bench ({} mode); server and receiver {}; clients from {} source address(es) (KLINEGATE_BENCH_SOURCES); load average {} on {} CPUs",
        if quick { "quick" } else { "full" },
        if pinning() { "pinned to CPUs 0 and 1" } else { "unpinned" },
        source_addresses(),
        loadavg(),
        thread::available_parallelism().map_or(1, |n| n.get())
    );
    let servers = servers(quick);
    println!("servers: {}", servers.iter().map(Server::label).collect::<Vec<_>>().join(", "));

    let feeds: Vec<Feed> = servers.iter().filter_map(|s| if let Server::Kg(f) = s { Some(*f) } else { None }).collect();
    let raw1 = run_server(EPOLL, 1, &hop_plan);
    let mut hops = Vec::new();
    for &feed in &feeds {
        let kg1 = run_server(Server::Kg(feed), 1, &hop_plan);
        println!(
            "hop (1 client, {} updates, last p50/p99 ms): {} {:.3}/{:.3}, raw {:.3}/{:.3} -> hop {:.3} ms",
            hop_plan.updates,
            Server::Kg(feed).label(),
            kg1.last_p(50.0),
            kg1.last_p(99.0),
            raw1.last_p(50.0),
            raw1.last_p(99.0),
            (kg1.last_p(50.0) - raw1.last_p(50.0)).max(0.0)
        );
        hops.push((feed, (kg1.last_p(50.0) - raw1.last_p(50.0)).max(0.0)));
    }

    // Rounds alternate the servers so load from other processes on the
    // shared cores falls on all alike; each round measures updates/rounds.
    let rounds = env_usize("KLINEGATE_BENCH_ROUNDS").unwrap_or(if quick { 1 } else { 3 }).max(1);
    let round_plan = Plan { updates: (plan.updates / rounds).max(1), ..plan };
    let mut rows = Vec::new();
    for &n in &sizes {
        let mut row = Row { n, results: servers.iter().map(|s| (*s, RunResult::default())).collect() };
        for _ in 0..rounds {
            for (server, result) in row.results.iter_mut() {
                result.absorb(run_server(*server, n, &round_plan));
            }
        }
        rows.push(row);
    }
    print_tables(&rows, &hops, &Plan { updates: round_plan.updates * rounds, ..plan });
    println!("total bench time {:.1} s; load average at the end {}", started.elapsed().as_secs_f64(), loadavg());
}

fn run_server(server: Server, n: usize, plan: &Plan) -> RunResult {
    match server {
        Server::Kg(feed) => run_klinegate(n, plan, feed),
        Server::Raw(writer) => run_raw(n, plan, writer),
    }
}

fn profile_run(spec: &str) {
    let mut parts = spec.split(':').map(|p| p.parse::<usize>().ok());
    let n = parts.next().flatten().unwrap_or(10_000);
    let updates = parts.next().flatten().unwrap_or(200);
    let plan = Plan { updates, timeout: Duration::from_secs(if std::env::var(WRAP_ENV).is_ok() { 60 } else { 5 }) };
    let callgrind = std::env::var(WRAP_ENV).is_ok_and(|w| w.contains("callgrind"));
    let toggle = |pid: u32, on: bool| {
        if callgrind {
            let status = Command::new("callgrind_control")
                .args(["-i", if on { "on" } else { "off" }, &pid.to_string()])
                .stdout(Stdio::null())
                .status();
            println!("callgrind instrumentation {} for pid {pid}: {status:?}", if on { "on" } else { "off" });
        }
    };
    let r = run_klinegate_with(
        n,
        &plan,
        Feed::Direct,
        |live| {
            println!("server_pid={} (measuring in 2 s)", live.child.id());
            toggle(live.child.id(), true);
            thread::sleep(Duration::from_secs(2));
        },
        |live| toggle(live.child.id(), false),
    );
    println!(
        "profile run done: {} measured updates to {n} clients, last p50 {:.3} ms, first p50 {:.3} ms",
        r.last_ms.len(),
        r.last_p(50.0),
        r.first_p(50.0)
    );
}

/// `KLINEGATE_BENCH_WRAP`: the klinegate command rebuilt to run under that
/// command (its environment changes and arguments kept).
fn wrap_command(cmd: &mut Command) {
    let Ok(wrap) = std::env::var(WRAP_ENV) else { return };
    let mut words = wrap.split_whitespace();
    let Some(program) = words.next() else { return };
    let mut wrapped = Command::new(program);
    wrapped.args(words).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
    *cmd = wrapped;
}


// ------------------------------------------------------------------ runs

#[derive(Clone, Copy)]
struct Plan {
    updates: usize,
    /// Longest wait for every client to hold one update.
    timeout: Duration,
}

/// One server at one client count: per measured update, ms from trigger to
/// the first and to the last client holding it.
#[derive(Default)]
struct RunResult {
    /// By kernel receive timestamps (see the module comment).
    first_ms: Vec<f64>,
    last_ms: Vec<f64>,
    /// By the receiver thread's read times.
    first_user_ms: Vec<f64>,
    last_user_ms: Vec<f64>,
    /// Reads that came without a kernel timestamp (their read time was used).
    unstamped: u64,
    /// Server CPU (user + system) over the measured updates, in seconds, and
    /// the messages delivered meanwhile (updates × clients).
    cpu_s: f64,
    delivered: u64,
    missed: usize,
    payload_len: usize,
    setup_s: f64,
    /// Raw baseline only: ms its loop spent writing one update to every socket.
    write_loop_ms: Vec<f64>,
}

impl RunResult {
    fn absorb(&mut self, other: RunResult) {
        self.first_ms.extend(other.first_ms);
        self.last_ms.extend(other.last_ms);
        self.first_user_ms.extend(other.first_user_ms);
        self.last_user_ms.extend(other.last_user_ms);
        self.unstamped += other.unstamped;
        self.cpu_s += other.cpu_s;
        self.delivered += other.delivered;
        self.write_loop_ms.extend(other.write_loop_ms);
        self.missed += other.missed;
        self.payload_len = other.payload_len;
        self.setup_s += other.setup_s;
    }

    fn last_p(&self, p: f64) -> f64 {
        percentile(&self.last_ms, p)
    }
    fn first_p(&self, p: f64) -> f64 {
        percentile(&self.first_ms, p)
    }
    /// Server CPU µs per delivered message (NaN when nothing was delivered).
    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.delivered as f64
    }
}

/// Where klinegate's upstream frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// `FakeExchange::push_kline`: queued for its connection thread, which a
    /// waker gets out of its poll at once (one thread hand-off per update).
    Fake,
    /// `DirectFeed`: the bench writes the pre-encoded combined kline frame
    /// straight into klinegate's upstream socket, like the raw trigger.
    Direct,
}

fn run_klinegate(n: usize, plan: &Plan, feed: Feed) -> RunResult {
    run_klinegate_with(n, plan, feed, |_| {}, |_| {})
}

fn run_klinegate_with(
    n: usize,
    plan: &Plan,
    feed: Feed,
    before_measure: impl FnOnce(&Live),
    after_measure: impl FnOnce(&Live),
) -> RunResult {
    let setup = Instant::now();
    let ex = FakeExchange::start(FakeOptions::spot());
    let direct = DirectFeed::start().expect("direct feed");
    let url = if feed == Feed::Fake { ex.ws_url() } else { direct.url() };
    let args = server_args(&url);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start_with(tempfile::tempdir().expect("temp dir"), &arg_refs, wrap_command);
    pin_process(live.child.id(), SERVER_CPU);
    let subscribed = match feed {
        Feed::Fake => ex.wait_for_subscriptions(&[STREAM], Duration::from_secs(10)),
        Feed::Direct => direct.wait_subscribed(STREAM, Duration::from_secs(10)),
    };
    assert!(subscribed, "klinegate subscribed upstream");
    let mut socks = connect_many(live.addr, n).expect("klinegate clients");
    let subscribe = subscribe_frame(SERIES);
    for s in &mut socks {
        send_all(s, &subscribe).expect("subscribe");
    }
    let open_ms = current_minute_ms();
    let frames: Vec<Vec<u8>> = (0..MAX_WARMUPS + plan.updates as i64)
        .map(|seq| {
            let (o, h, l, c, v) = forming_prices(seq);
            let frame = KlineFrame::new(STREAM, open_ms, o, h, l, c, v, false);
            server_text_frame(frame.combined_json(STREAM).as_bytes())
        })
        .collect();
    let pid = live.child.id();
    let result = measure(socks, plan, setup, pid, || before_measure(&live), |seq| {
        match feed {
            Feed::Fake => {
                let (o, h, l, c, v) = forming_prices(seq);
                ex.push_kline(STREAM, open_ms, o, h, l, c, v, false);
            }
            Feed::Direct => direct.push(&frames[seq as usize]),
        }
    });
    after_measure(&live);
    live.drain_logs();
    let dropped = live.seen_logs.iter().filter(|l| l.contains("client_close client=")).count();
    if dropped > 0 {
        println!("  note: klinegate closed {dropped} clients during the run");
    }
    // Under a profiler the exit (and its profile dump) takes longer.
    let exit_wait = Duration::from_secs(if std::env::var(WRAP_ENV).is_ok() { 120 } else { 5 });
    if live.terminate(exit_wait).is_none() {
        live.kill9();
    }
    let name = if feed == Feed::Fake { "kg/fake" } else { "kg/direct" };
    report_run(name, n, &result);
    result
}

fn run_raw(n: usize, plan: &Plan, writer: Writer) -> RunResult {
    let setup = Instant::now();
    let (mut child, addr) = spawn_raw_server(n, writer).expect("raw baseline server");
    pin_process(child.id(), SERVER_CPU);
    let mut control = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("control connection");
    control.set_nodelay(true).expect("nodelay");
    let socks = connect_many(addr, n).expect("raw clients");
    let open_ms = current_minute_ms();
    // Frames are encoded before the clock starts: the baseline writes bytes only.
    let messages: Vec<Vec<u8>> = (0..MAX_WARMUPS + plan.updates as i64)
        .map(|seq| {
            let frame = server_text_frame(&forming_payload(open_ms, seq));
            let mut msg = (frame.len() as u32).to_le_bytes().to_vec();
            msg.extend_from_slice(&frame);
            msg
        })
        .collect();
    let pid = child.id();
    let mut result = measure(socks, plan, setup, pid, || {}, |seq| {
        control.write_all(&messages[seq as usize]).expect("trigger raw server");
    });
    result.write_loop_ms = read_write_loop_times(&mut control, plan.updates);
    drop(control);
    wait_child(&mut child, Duration::from_secs(5));
    report_run(&writer.label(), n, &result);
    result
}

fn report_run(name: &str, n: usize, r: &RunResult) {
    if !r.write_loop_ms.is_empty() {
        println!(
            "  {name:<9} {n:>6} clients: its write loop took p50 {:.3} ms p99 {:.3} ms ({:.2} µs per socket at p50)",
            percentile(&r.write_loop_ms, 50.0),
            percentile(&r.write_loop_ms, 99.0),
            percentile(&r.write_loop_ms, 50.0) * 1e3 / n as f64
        );
    }
    println!(
        "  {name:<9} {n:>6} clients: last p50 {:>8.3} ms p99 {:>8.3} ms | first p50 {:>7.3} ms | read by receiver: last p50 {:.3} first p50 {:.3} ms | CPU {:.2} µs/msg | {} updates, {} missed, {} unstamped reads, payload {} B, setup {:.1} s",
        r.last_p(50.0),
        r.last_p(99.0),
        r.first_p(50.0),
        percentile(&r.last_user_ms, 50.0),
        percentile(&r.first_user_ms, 50.0),
        r.cpu_us_per_msg(),
        r.last_ms.len(),
        r.missed,
        r.unstamped,
        r.payload_len,
        r.setup_s
    );
}

/// Warm-up updates until every client holds one (each retry is a new update,
/// so slow subscriptions catch up), then `plan.updates` measured updates, one
/// at a time. `trigger(seq)` makes the server send update `seq`.
fn measure(
    socks: Vec<TcpStream>,
    plan: &Plan,
    setup: Instant,
    server_pid: u32,
    before_measure: impl FnOnce(),
    mut trigger: impl FnMut(i64),
) -> RunResult {
    let n = socks.len();
    let slots = (MAX_WARMUPS as usize) + plan.updates;
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let payload_len = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let (stop, payload_len) = (stop.clone(), payload_len.clone());
        thread::Builder::new()
            .name("bench-receiver".into())
            .spawn(move || receive(RECEIVER_CPU, socks, slots, tx, &stop, &payload_len))
            .expect("spawn receiver")
    };

    let mut seq = 0i64;
    let mut ready = false;
    while seq < MAX_WARMUPS && !ready {
        trigger(seq);
        ready = wait_done(&rx, seq, Duration::from_millis(1000)).is_some();
        seq += 1;
    }
    assert!(ready, "not every one of {n} clients received a warm-up update within {MAX_WARMUPS} tries");
    let setup_s = setup.elapsed().as_secs_f64();
    before_measure();

    let mut result = RunResult { setup_s, ..RunResult::default() };
    let cpu_before = cpu_seconds(server_pid);
    for k in 0..plan.updates as i64 {
        let s = MAX_WARMUPS + k;
        // A short pause so the previous update's tail work is not measured.
        thread::sleep(Duration::from_millis(2));
        let pushed = realtime_ns();
        trigger(s);
        match wait_done(&rx, s, plan.timeout) {
            Some(done) => {
                let ms = |at: u64| at.saturating_sub(pushed) as f64 / 1e6;
                result.first_ms.push(ms(done.first));
                result.last_ms.push(ms(done.last));
                result.first_user_ms.push(ms(done.first_read));
                result.last_user_ms.push(ms(done.last_read));
                result.delivered += n as u64;
            }
            None => result.missed += 1,
        }
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_seconds(server_pid)) {
        result.cpu_s = (after - before).max(0.0);
    }
    stop.store(true, Ordering::Relaxed);
    result.unstamped = receiver.join().unwrap_or(0);
    result.payload_len = payload_len.load(Ordering::Relaxed);
    result
}

/// CPU time (user + system) process `pid` has used, in seconds: the sum of its
/// threads' `se.sum_exec_runtime` (ms with ns digits), else clock ticks.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let from_sched = || -> Option<f64> {
        let mut total_ms = 0.0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let text = std::fs::read_to_string(task.ok()?.path().join("sched")).ok()?;
            let line = text.lines().find(|l| l.starts_with("se.sum_exec_runtime"))?;
            total_ms += line.rsplit(':').next()?.trim().parse::<f64>().ok()?;
        }
        Some(total_ms / 1e3)
    };
    from_sched().or_else(|| Some(cpu_ticks(pid)? as f64 / clock_ticks_per_sec()))
}

// ------------------------------------------------------------------ tables

struct Row {
    n: usize,
    results: Vec<(Server, RunResult)>,
}

impl Row {
    fn get(&self, server: Server) -> Option<&RunResult> {
        self.results.iter().find(|(s, _)| *s == server).map(|(_, r)| r)
    }
}

fn print_tables(rows: &[Row], hops: &[(Feed, f64)], plan: &Plan) {
    println!();
    println!(
        "fan-out of one forming update over loopback, trigger -> last client holds it ({} updates per row, ms; raw = epoll writer)",
        plan.updates
    );
    println!("| clients | feed | klinegate p50 | klinegate p99 | raw p50 | raw p99 | raw write loop p50 | ratio p50 | ratio p99 | hop (ms) | ratio-hop p50 | ratio-hop p99 | target | raw ratio | hop subtracted |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(raw) = row.get(EPOLL) else { continue };
        for &(feed, hop) in hops {
            let Some(kg) = row.get(Server::Kg(feed)) else { continue };
            let (k50, k99) = (kg.last_p(50.0), kg.last_p(99.0));
            let (r50, r99) = (raw.last_p(50.0), raw.last_p(99.0));
            let (q50, q99) = (k50 / r50, k99 / r99);
            let (h50, h99) = ((k50 - hop).max(0.0) / r50, (k99 - hop).max(0.0) / r99);
            let met = |a: f64, b: f64| if a <= TARGET_RATIO && b <= TARGET_RATIO { "met" } else { "missed" };
            println!(
                "| {} | {} | {k50:.3} | {k99:.3} | {r50:.3} | {r99:.3} | {:.3} | {q50:.2}x | {q99:.2}x | {hop:.3} | {h50:.2}x | {h99:.2}x | {TARGET_RATIO}x | {} | {} |",
                row.n,
                Server::Kg(feed).label(),
                percentile(&raw.write_loop_ms, 50.0),
                met(q50, q99),
                met(h50, h99)
            );
        }
    }
    println!();
    println!("first client and CPU, same rows (kernel receive timestamps; CPU = server user+system per delivered message)");
    println!("| clients | feed | klinegate first p50 | raw first p50 | first ratio | target | last p50 ratio | klinegate CPU µs/msg | raw CPU µs/msg | CPU ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(raw) = row.get(EPOLL) else { continue };
        for &(feed, _) in hops {
            let Some(kg) = row.get(Server::Kg(feed)) else { continue };
            let (k, r) = (kg.first_p(50.0), raw.first_p(50.0));
            let (kc, rc) = (kg.cpu_us_per_msg(), raw.cpu_us_per_msg());
            let met = if k / r <= FIRST_TARGET_RATIO && k <= FIRST_TARGET_MS { "met" } else { "missed" };
            println!(
                "| {} | {} | {k:.3} | {r:.3} | {:.2}x | ≤{FIRST_TARGET_RATIO}x and ≤{FIRST_TARGET_MS} ms: {met} | {:.2}x | {kc:.2} | {rc:.2} | {:.2}x |",
                row.n,
                Server::Kg(feed).label(),
                k / r,
                kg.last_p(50.0) / raw.last_p(50.0),
                kc / rc
            );
        }
    }
    println!();
    println!("every server against the raw epoll writer, same run, alternated (ratios < 1: better than epoll)");
    println!("| clients | server | last p50 | last p99 | first p50 | CPU µs/msg | write loop p50 | last p50 ratio | last p99 ratio | first p50 ratio | CPU ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(raw) = row.get(EPOLL) else { continue };
        for (server, r) in &row.results {
            // klinegate reports no write loop of its own.
            let write_loop = if r.write_loop_ms.is_empty() {
                "—".to_string()
            } else {
                format!("{:.3}", percentile(&r.write_loop_ms, 50.0))
            };
            println!(
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {write_loop} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                row.n,
                server.label(),
                r.last_p(50.0),
                r.last_p(99.0),
                r.first_p(50.0),
                r.cpu_us_per_msg(),
                r.last_p(50.0) / raw.last_p(50.0),
                r.last_p(99.0) / raw.last_p(99.0),
                r.first_p(50.0) / raw.first_p(50.0),
                r.cpu_us_per_msg() / raw.cpu_us_per_msg()
            );
        }
    }
    let missed: usize = rows.iter().flat_map(|r| r.results.iter()).map(|(_, r)| r.missed).sum();
    if missed > 0 {
        println!("note: {missed} updates timed out (not every client got them) and are left out of the percentiles");
    }
}
