//! Fan-out over loopback with real sockets (issue item 3b): how long one
//! forming update takes to reach the first and the last of N WebSocket
//! clients subscribed to one series, for the real `klinegate` binary fed by
//! the fake exchange, beside a raw baseline measured in the same run: a
//! minimal mio loop (this bench binary re-executed as a child process) that
//! writes the same frame bytes to the same number of sockets, one write each.
//!
//! Both servers get identical clients (a tungstenite handshake, then bare
//! sockets read by one mio thread in this process) and the same protocol: push
//! update k, wait until every client holds it (or a timeout), push k+1. The
//! klinegate figure includes the hop bench → fake exchange → klinegate, which
//! the raw loop (triggered over its own loopback control socket) does not
//! pay in full; the hop is measured with one client and reported separately.
//!
//! Arrival times are the kernel's receive timestamps (`SO_TIMESTAMPNS`, read
//! with `recvmsg`): when the bytes reached each client socket, not when the one
//! receiver thread got round to reading it (at 10,000 sockets that thread's own
//! pace would be most of a last-client figure). The trigger is stamped on the
//! same clock (CLOCK_REALTIME). Where the kernel gives no stamp, the read time is
//! used and counted. The user-space read time is reported beside it.
//!
//! CPU per delivered message: user + system CPU time of the server process
//! over the measured updates (the scheduler's `se.sum_exec_runtime` of each of
//! its threads in `/proc/PID/task/*/sched`, ns; the total `getrusage` reports
//! for it; clock ticks from `/proc/PID/stat` where that file is missing),
//! divided by updates × clients; for klinegate and for the raw writer.
//!
//! `cargo bench --bench loopback`; `KLINEGATE_BENCH_QUICK=1` for a smoke run;
//! `KLINEGATE_BENCH_SOURCES=N` spreads the clients over 127.0.0.1 … 127.0.0.N;
//! `KLINEGATE_BENCH_SIZES=1000,10000` sets the client counts;
//! `KLINEGATE_BENCH_PROFILE=N[:UPDATES]` for one klinegate run to attach a
//! profiler to; `KLINEGATE_BENCH_PIN=1` pins server and receiver to CPUs 0/1.
//! Never reaches beyond 127.0.0.1; every wait is bounded.

#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
#[path = "../tests/support/live.rs"]
mod live;
mod support;

use fake_exchange::{FakeExchange, FakeOptions, KlineFrame};
use live::Live;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

/// Set on the re-executed bench binary: serve as the raw baseline for N clients.
const RAW_SERVER_ENV: &str = "KLINEGATE_BENCH_RAW_SERVER";
/// `KLINEGATE_BENCH_PROFILE=N[:UPDATES]`: only klinegate via the direct feed
/// with N clients; prints the server pid and pauses 2 s before the measured
/// updates so `perf record -p PID` / `strace -c -p PID` can attach.
const PROFILE_ENV: &str = "KLINEGATE_BENCH_PROFILE";
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

fn main() {
    if let Ok(n) = std::env::var(RAW_SERVER_ENV) {
        let n: usize = n.parse().unwrap_or(0);
        if let Err(e) = raw_server(n) {
            eprintln!("raw baseline server failed: {e}");
            std::process::exit(1);
        }
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
        "loopback fan-out bench ({} mode); server and receiver {}; clients from {} source address(es) (KLINEGATE_BENCH_SOURCES)",
        if quick { "quick" } else { "full" },
        if pinning() { "pinned to CPUs 0 and 1" } else { "unpinned" },
        source_addresses()
    );

    let fake1 = run_klinegate(1, &hop_plan, Feed::Fake);
    let direct1 = run_klinegate(1, &hop_plan, Feed::Direct);
    let raw1 = run_raw(1, &hop_plan);
    let hops = Hops {
        fake_ms: (fake1.last_p(50.0) - raw1.last_p(50.0)).max(0.0),
        direct_ms: (direct1.last_p(50.0) - raw1.last_p(50.0)).max(0.0),
    };
    println!(
        "hop (1 client, {} updates, last p50/p99 ms): klinegate via fake exchange {:.3}/{:.3}, via direct feed {:.3}/{:.3}, raw {:.3}/{:.3}",
        hop_plan.updates,
        fake1.last_p(50.0),
        fake1.last_p(99.0),
        direct1.last_p(50.0),
        direct1.last_p(99.0),
        raw1.last_p(50.0),
        raw1.last_p(99.0),
    );
    println!(
        "  -> hop over raw: via fake exchange {:.3} ms, via direct feed {:.3} ms",
        hops.fake_ms, hops.direct_ms
    );

    // Rounds alternate the servers so load from other processes on the
    // shared cores falls on both alike; each round measures updates/rounds.
    let rounds = if quick { 1 } else { 3 };
    let round_plan = Plan { updates: plan.updates / rounds, ..plan };
    let mut rows = Vec::new();
    for &n in &sizes {
        let mut row = Row { n, fake: RunResult::default(), direct: RunResult::default(), raw: RunResult::default() };
        for _ in 0..rounds {
            row.fake.absorb(run_klinegate(n, &round_plan, Feed::Fake));
            row.direct.absorb(run_klinegate(n, &round_plan, Feed::Direct));
            row.raw.absorb(run_raw(n, &round_plan));
        }
        rows.push(row);
    }
    print_table(&rows, &hops, &plan);
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

fn profile_run(spec: &str) {
    let mut parts = spec.split(':').map(|p| p.parse::<usize>().ok());
    let n = parts.next().flatten().unwrap_or(10_000);
    let updates = parts.next().flatten().unwrap_or(200);
    let plan = Plan { updates, timeout: Duration::from_secs(5) };
    let r = run_klinegate_with(n, &plan, Feed::Direct, |live| {
        println!("server_pid={} (measuring in 2 s)", live.child.id());
        thread::sleep(Duration::from_secs(2));
    });
    println!("profile run done: last p50 {:.3} ms", r.last_p(50.0));
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `FakeExchange::push_kline`: queued for its connection thread, which a
    /// waker gets out of its poll at once (one thread hand-off per update).
    Fake,
    /// `DirectFeed`: the bench writes the pre-encoded combined kline frame
    /// straight into klinegate's upstream socket, like the raw trigger.
    Direct,
}

fn run_klinegate(n: usize, plan: &Plan, feed: Feed) -> RunResult {
    run_klinegate_with(n, plan, feed, |_| {})
}

fn run_klinegate_with(n: usize, plan: &Plan, feed: Feed, before_measure: impl FnOnce(&Live)) -> RunResult {
    let setup = Instant::now();
    let ex = FakeExchange::start(FakeOptions::spot());
    let direct = DirectFeed::start().expect("direct feed");
    let url = if feed == Feed::Fake { ex.ws_url() } else { direct.url() };
    let args = server_args(&url);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start(&arg_refs);
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
    live.drain_logs();
    let dropped = live.seen_logs.iter().filter(|l| l.contains("client_close client=")).count();
    if dropped > 0 {
        println!("  note: klinegate closed {dropped} clients during the run");
    }
    if live.terminate(Duration::from_secs(5)).is_none() {
        live.kill9();
    }
    let name = if feed == Feed::Fake { "kg/fake" } else { "kg/direct" };
    report_run(name, n, &result);
    result
}

fn run_raw(n: usize, plan: &Plan) -> RunResult {
    let setup = Instant::now();
    let (mut child, addr) = spawn_raw_server(n).expect("raw baseline server");
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
    report_run("raw", n, &result);
    result
}

/// The raw server answers each broadcast with its duration (u64 LE ns);
/// the last `updates` answers are the measured ones.
fn read_write_loop_times(control: &mut TcpStream, updates: usize) -> Vec<f64> {
    let _ = control.set_read_timeout(Some(Duration::from_millis(200)));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(got) = control.read(&mut chunk) {
        if got == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..got]);
        if got < chunk.len() {
            break;
        }
    }
    let all: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64 / 1e6)
        .collect();
    all[all.len().saturating_sub(updates)..].to_vec()
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
            .spawn(move || receive(socks, slots, tx, &stop, &payload_len))
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

/// Nanoseconds since the Unix epoch: the clock of `SO_TIMESTAMPNS`.
fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Every client holds update `seq` (or a later one). Times in ns since the
/// epoch: `first`/`last` by kernel receive timestamps (earliest and latest
/// client), `first_read`/`last_read` when the receiver read them.
struct Done {
    seq: i64,
    first: u64,
    last: u64,
    first_read: u64,
    last_read: u64,
}

fn wait_done(rx: &Receiver<Done>, seq: i64, timeout: Duration) -> Option<Done> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(d) if d.seq == seq => return Some(d),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

// ------------------------------------------------------------------ receiver

struct RxClient {
    stream: mio::net::TcpStream,
    /// Bytes of a frame split across reads.
    partial: Vec<u8>,
    /// Newest update this client holds (-1: none).
    seen: i64,
}

/// One thread reads every client socket (non-blocking, edge-triggered mio),
/// takes each read's kernel receive timestamp, and reports when the last client
/// holds update k. Returns how many reads came without a kernel timestamp.
fn receive(socks: Vec<TcpStream>, slots: usize, tx: Sender<Done>, stop: &AtomicBool, payload_len: &AtomicUsize) -> u64 {
    pin_current_thread(RECEIVER_CPU);
    let n = socks.len();
    let poll = Poll::new().expect("receiver poll");
    let mut clients: Vec<RxClient> = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        s.set_nonblocking(true).expect("nonblocking client");
        // Without it every read falls back to its read time (counted).
        let _ = enable_receive_timestamps(s.as_raw_fd());
        let mut stream = mio::net::TcpStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE).expect("register client");
        clients.push(RxClient { stream, partial: Vec::new(), seen: -1 });
    }
    let mut poll = poll;
    let mut events = Events::with_capacity(4096);
    let mut holders = vec![0usize; slots];
    // Per update: earliest and latest kernel stamp, first read time.
    let mut stamps: Vec<Option<(u64, u64, u64)>> = vec![None; slots];
    let mut unstamped = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        if poll.poll(&mut events, Some(Duration::from_millis(20))).is_err() {
            continue;
        }
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            loop {
                let (got, kernel) = match read_stamped(c.stream.as_raw_fd(), &mut buf) {
                    Ok((0, _)) => break,
                    Ok(read) => read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let read_at = realtime_ns();
                let at = kernel.unwrap_or_else(|| {
                    unstamped += 1;
                    read_at
                });
                let newest = newest_seq(c, &buf[..got], payload_len);
                if let Some(s) = newest.filter(|s| *s > c.seen) {
                    // Every update up to `s` counts as held (a skipped one was coalesced).
                    let from = (c.seen + 1).max(0) as usize;
                    for q in from..=(s as usize).min(slots - 1) {
                        holders[q] += 1;
                        let (first, last, first_read) = stamps[q].get_or_insert((at, at, read_at));
                        *first = (*first).min(at);
                        *last = (*last).max(at);
                        if holders[q] == n {
                            let (first, last, first_read) = (*first, *last, *first_read);
                            let _ = tx.send(Done { seq: q as i64, first, last, first_read, last_read: read_at });
                        }
                    }
                    c.seen = s;
                }
                // A short read drained the socket: the next byte raises a new edge.
                if got < buf.len() {
                    break;
                }
            }
        }
    }
    unstamped
}

/// A socket with `SO_TIMESTAMPNS` kept open for the whole bench (see `main`).
fn keep_receive_timestamps_on() -> Option<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    enable_receive_timestamps(socket.as_raw_fd()).ok()?;
    Some(socket)
}

/// Asks the kernel to stamp received data (`SO_TIMESTAMPNS`, CLOCK_REALTIME).
fn enable_receive_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`: the bytes read and, when the kernel attached one,
/// the receive timestamp of the data (ns since the epoch; for TCP, of the last
/// segment read).
fn read_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `buf` and `control`, both alive and writable.
    let got = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` as the kernel set it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((got as usize, stamp))
}

/// The newest update number in the frames completed by `data`.
fn newest_seq(c: &mut RxClient, data: &[u8], payload_len: &AtomicUsize) -> Option<i64> {
    let mut newest = None;
    let mut on_frame = |opcode: u8, payload: &[u8]| {
        if opcode != 1 {
            return;
        }
        if let Some(s) = forming_seq(payload) {
            payload_len.store(payload.len(), Ordering::Relaxed);
            newest = newest.max(Some(s));
        }
    };
    if c.partial.is_empty() {
        let used = scan_server_frames(data, &mut on_frame);
        c.partial.extend_from_slice(&data[used..]);
    } else {
        c.partial.extend_from_slice(data);
        let used = scan_server_frames(&c.partial, &mut on_frame);
        c.partial.drain(..used);
    }
    newest
}

// ------------------------------------------------------------------ raw baseline

fn spawn_raw_server(n: usize) -> io::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(RAW_SERVER_ENV, n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("listen="))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::other(format!("raw server said {line:?}")))?;
    Ok((child, addr))
}

fn wait_child(child: &mut Child, timeout: Duration) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct RawClient {
    stream: mio::net::TcpStream,
    /// Bytes the socket did not take (registered for WRITABLE while non-empty).
    pending: Vec<u8>,
}

const CONTROL: Token = Token(usize::MAX - 1);

/// The raw baseline: accepts a control connection and `n` WebSocket clients
/// (tungstenite server handshake), then on each control message (u32 LE
/// length + one encoded frame) writes those bytes to every client, one
/// `write` per socket, then answers with how long that took (u64 LE ns).
/// Exits when the control connection closes.
fn raw_server(n: usize) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("raw_started listen={}", listener.local_addr()?);
    io::stdout().flush()?;
    let (control, _) = listener.accept()?;
    control.set_nodelay(true)?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let ws = tungstenite::accept(s).map_err(|e| io::Error::other(format!("handshake: {e}")))?;
        let s = ws.into_inner();
        s.set_nonblocking(true)?;
        clients.push(RawClient { stream: mio::net::TcpStream::from_std(s), pending: Vec::new() });
    }
    drop(listener);
    control.set_nonblocking(true)?;
    let mut control = mio::net::TcpStream::from_std(control);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut control, CONTROL, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut inbox: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == CONTROL {
                loop {
                    match control.read(&mut chunk) {
                        Ok(0) => return Ok(()),
                        Ok(got) => inbox.extend_from_slice(&chunk[..got]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                while let Some(frame) = take_message(&mut inbox) {
                    let started = Instant::now();
                    broadcast(&poll, &mut clients, &frame);
                    let took = started.elapsed().as_nanos() as u64;
                    // Told after the clock stopped: the answer is not part of the loop.
                    let _ = control.write(&took.to_le_bytes());
                }
            } else if let Some(c) = clients.get_mut(ev.token().0) {
                flush_pending(&poll, c, ev.token());
            }
        }
    }
}

fn take_message(inbox: &mut Vec<u8>) -> Option<Vec<u8>> {
    if inbox.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes([inbox[0], inbox[1], inbox[2], inbox[3]]) as usize;
    if inbox.len() < 4 + len {
        return None;
    }
    let frame = inbox[4..4 + len].to_vec();
    inbox.drain(..4 + len);
    Some(frame)
}

fn broadcast(poll: &Poll, clients: &mut [RawClient], frame: &[u8]) {
    for (i, c) in clients.iter_mut().enumerate() {
        if !c.pending.is_empty() {
            c.pending.extend_from_slice(frame);
            continue;
        }
        let wrote = match c.stream.write(frame) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => continue,
        };
        if wrote < frame.len() {
            c.pending.extend_from_slice(&frame[wrote..]);
            let _ = poll.registry().register(&mut c.stream, Token(i), Interest::WRITABLE);
        }
    }
}

fn flush_pending(poll: &Poll, c: &mut RawClient, token: Token) {
    while !c.pending.is_empty() {
        match c.stream.write(&c.pending) {
            Ok(k) if k > 0 => {
                c.pending.drain(..k);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
    let _ = poll.registry().deregister(&mut c.stream);
    let _ = token;
}

// ------------------------------------------------------------------ table

struct Row {
    n: usize,
    fake: RunResult,
    direct: RunResult,
    raw: RunResult,
}

/// What klinegate's one-client latency adds over the raw loop's, per feed.
struct Hops {
    fake_ms: f64,
    direct_ms: f64,
}

fn print_table(rows: &[Row], hops: &Hops, plan: &Plan) {
    println!();
    println!(
        "fan-out of one forming update over loopback, trigger -> last client holds it ({} updates per row, ms)",
        plan.updates
    );
    println!("| clients | feed | klinegate p50 | klinegate p99 | raw p50 | raw p99 | raw write loop p50 | ratio p50 | ratio p99 | hop (ms) | ratio-hop p50 | ratio-hop p99 | target | raw ratio | hop subtracted |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        for (feed, kg, hop) in [("fake exchange", &row.fake, hops.fake_ms), ("direct", &row.direct, hops.direct_ms)] {
            let (k50, k99) = (kg.last_p(50.0), kg.last_p(99.0));
            let (r50, r99) = (row.raw.last_p(50.0), row.raw.last_p(99.0));
            let (q50, q99) = (k50 / r50, k99 / r99);
            let (h50, h99) = ((k50 - hop).max(0.0) / r50, (k99 - hop).max(0.0) / r99);
            let met = |a: f64, b: f64| if a <= TARGET_RATIO && b <= TARGET_RATIO { "met" } else { "missed" };
            println!(
                "| {} | {feed} | {k50:.3} | {k99:.3} | {r50:.3} | {r99:.3} | {:.3} | {q50:.2}x | {q99:.2}x | {hop:.3} | {h50:.2}x | {h99:.2}x | {TARGET_RATIO}x | {} | {} |",
                row.n,
                percentile(&row.raw.write_loop_ms, 50.0),
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
        for (feed, kg) in [("fake exchange", &row.fake), ("direct", &row.direct)] {
            let (k, r) = (kg.first_p(50.0), row.raw.first_p(50.0));
            let (kc, rc) = (kg.cpu_us_per_msg(), row.raw.cpu_us_per_msg());
            let met = if k / r <= FIRST_TARGET_RATIO && k <= FIRST_TARGET_MS { "met" } else { "missed" };
            println!(
                "| {} | {feed} | {k:.3} | {r:.3} | {:.2}x | ≤{FIRST_TARGET_RATIO}x and ≤{FIRST_TARGET_MS} ms: {met} | {:.2}x | {kc:.2} | {rc:.2} | {:.2}x |",
                row.n,
                k / r,
                kg.last_p(50.0) / row.raw.last_p(50.0),
                kc / rc
            );
        }
    }
    let missed: usize = rows.iter().map(|r| r.fake.missed + r.direct.missed + r.raw.missed).sum();
    if missed > 0 {
        println!("note: {missed} updates timed out (not every client got them) and are left out of the percentiles");
    }
}

// ------------------------------------------------------------------ direct feed

/// A minimal Binance combined-stream endpoint for klinegate's upstream: it
/// acknowledges every control request (`{"result":null,"id":N}`), answers
/// pings, and lets the bench write pre-encoded kline frames straight into the
/// socket (no queue, no polling thread in between). One connection at a time.
struct DirectFeed {
    addr: SocketAddr,
    writer: Arc<Mutex<Option<TcpStream>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DirectFeed {
    fn start() -> io::Result<DirectFeed> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let writer = Arc::new(Mutex::new(None));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (writer, requests, stop) = (writer.clone(), requests.clone(), stop.clone());
            thread::Builder::new()
                .name("direct-feed".into())
                .spawn(move || direct_feed_loop(listener, &writer, &requests, &stop))?
        };
        Ok(DirectFeed { addr, writer, requests, stop, thread: Some(thread) })
    }

    fn url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// A SUBSCRIBE naming `stream` arrived (and was acknowledged).
    fn wait_subscribed(&self, stream: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let seen = self.requests.lock().map(|r| r.iter().any(|m| m.contains("SUBSCRIBE") && m.contains(stream)));
            if seen.unwrap_or(false) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Writes one encoded frame to the connected klinegate (dropped if none).
    fn push(&self, frame: &[u8]) {
        if let Ok(mut w) = self.writer.lock() {
            if let Some(s) = w.as_mut() {
                let _ = s.write_all(frame);
            }
        }
    }
}

impl Drop for DirectFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn direct_feed_loop(
    listener: TcpListener,
    writer: &Mutex<Option<TcpStream>>,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut chunk = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((s, _)) = listener.accept() {
            if let Some(stream) = direct_feed_handshake(s) {
                if let (Ok(w), Ok(mut slot)) = (stream.try_clone(), writer.lock()) {
                    *slot = Some(w);
                    conn = Some((stream, Vec::new()));
                }
            }
        }
        let Some((stream, inbox)) = conn.as_mut() else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        match stream.read(&mut chunk) {
            Ok(0) => conn = None,
            Ok(got) => {
                inbox.extend_from_slice(&chunk[..got]);
                let used = scan_client_frames(inbox, |opcode, payload| {
                    let reply = match opcode {
                        1 => {
                            let text = String::from_utf8_lossy(&payload).into_owned();
                            let reply = request_id(&text).map(|id| format!(r#"{{"result":null,"id":{id}}}"#));
                            if let Ok(mut r) = requests.lock() {
                                r.push(text);
                            }
                            reply.map(|r| server_text_frame(r.as_bytes()))
                        }
                        9 => {
                            let mut pong = server_text_frame(&payload);
                            pong[0] = 0x8a;
                            Some(pong)
                        }
                        _ => None,
                    };
                    if let (Some(bytes), Ok(mut w)) = (reply, writer.lock()) {
                        if let Some(s) = w.as_mut() {
                            let _ = s.write_all(&bytes);
                        }
                    }
                });
                inbox.drain(..used);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => conn = None,
        }
    }
}

fn direct_feed_handshake(s: TcpStream) -> Option<TcpStream> {
    s.set_nonblocking(false).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let stream = tungstenite::accept(s).ok()?.into_inner();
    stream.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
    Some(stream)
}

/// `"id":N` of a control request.
fn request_id(text: &str) -> Option<u64> {
    let at = text.find("\"id\":")? + 5;
    let digits: String = text[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Splits masked client frames out of `data`, unmasking each payload; returns
/// the bytes consumed.
fn scan_client_frames(data: &[u8], mut on_frame: impl FnMut(u8, Vec<u8>)) -> usize {
    let mut spans = Vec::new();
    let used = scan_server_frames(data, |opcode, payload| spans.push((opcode, payload.to_vec())));
    // `scan_server_frames` skips the mask key; find it again to unmask.
    let mut at = 0;
    for (opcode, mut payload) in spans {
        let b1 = data[at + 1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mut header = 2 + ext;
        if b1 & 0x80 != 0 {
            let key = [data[at + header], data[at + header + 1], data[at + header + 2], data[at + header + 3]];
            header += 4;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        at += header + payload.len();
        on_frame(opcode, payload);
    }
    used
}
