//! Resident memory of the real `klinegate` binary (issue item 4): `VmRSS` from
//! `/proc/<server pid>/status` at start, after N idle WebSocket clients
//! connected, after each subscribed to one series (and received an update),
//! and after one client started J on-demand ingest jobs (J distinct series the
//! fake exchange acknowledges). Bytes per idle client, per subscribed client
//! and per job, against the targets (≤ 16 KiB per idle client, ≤ 64 KiB per job).
//!
//! `cargo bench --bench memory`; `KLINEGATE_BENCH_QUICK=1` for a smoke run;
//! `KLINEGATE_BENCH_DEBUG=1` prints the server's log lines at the end.
//! Never reaches beyond 127.0.0.1; every wait is bounded.

#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
#[path = "../tests/support/live.rs"]
mod live;
mod support;

use fake_exchange::{FakeExchange, FakeOptions};
use live::Live;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const TARGET_IDLE_CLIENT: f64 = 16.0 * 1024.0;
const TARGET_JOB: f64 = 64.0 * 1024.0;
/// Subscriptions sent by one job client (below klinegate's 64-message read budget).
const SUBS_PER_JOB_CLIENT: usize = 50;

fn main() {
    let quick = quick();
    let clients: usize = if quick { 1_000 } else { 10_000 };
    let jobs: usize = if quick { 100 } else { 1_000 };
    let started = Instant::now();
    println!("memory bench ({} mode): {clients} clients, {jobs} on-demand jobs", if quick { "quick" } else { "full" });

    let ex = FakeExchange::start(FakeOptions::spot());
    let mut args = server_args(&ex.ws_url());
    let max_subs = (jobs + 16).to_string();
    args.extend(["--max-subscriptions-per-client".to_string(), max_subs]);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start(&arg_refs);
    assert!(ex.wait_for_subscriptions(&[STREAM], Duration::from_secs(10)), "pinned stream subscribed");
    let pid = live.child.id();
    let rss_start = settled_rss(pid, Duration::from_secs(3));
    println!("  start: VmRSS {:.1} MiB", mib(rss_start));

    // Idle: connected and upgraded, nothing subscribed.
    let t = Instant::now();
    let mut socks = connect_many(live.addr, clients).expect("idle clients");
    let rss_idle = settled_rss(pid, Duration::from_secs(5));
    println!("  {clients} idle clients connected in {:.1} s: VmRSS {:.1} MiB", t.elapsed().as_secs_f64(), mib(rss_idle));

    // Subscribed: each client subscribed and holding a delivered forming update.
    let t = Instant::now();
    let subscribe = subscribe_frame(SERIES);
    for s in &mut socks {
        send_all(s, &subscribe).expect("subscribe");
    }
    let confirmed = confirm_subscribed(&ex, &mut socks, Duration::from_secs(if quick { 10 } else { 30 }));
    let rss_sub = settled_rss(pid, Duration::from_secs(5));
    println!(
        "  {confirmed}/{clients} clients subscribed and got an update in {:.1} s: VmRSS {:.1} MiB",
        t.elapsed().as_secs_f64(),
        mib(rss_sub)
    );

    // Jobs: a few more clients subscribe to `jobs` distinct unpinned series,
    // at most SUBS_PER_JOB_CLIENT each: klinegate reads 64 messages per
    // readiness event and does not come back for the rest (see the report),
    // so one client pipelining 1,000 subscribes would stall at 64.
    let t = Instant::now();
    let job_clients = jobs.div_ceil(SUBS_PER_JOB_CLIENT);
    let mut jobbers = connect_many(live.addr, job_clients).expect("job clients");
    let rss_before_jobs = settled_rss(pid, Duration::from_secs(3));
    for i in 1..=jobs {
        let client = &mut jobbers[(i - 1) / SUBS_PER_JOB_CLIENT];
        send_all(client, &subscribe_frame(&format!("binance:spot:S{i:04}/USDT:1m"))).expect("job subscribe");
    }
    let upstream = wait_upstream_streams(&ex, &mut jobbers, jobs + 1, Duration::from_secs(if quick { 10 } else { 60 }));
    let rss_jobs = settled_rss(pid, Duration::from_secs(5));
    println!(
        "  {jobs} on-demand jobs started by {job_clients} clients ({} upstream streams, {} upstream connections) in {:.1} s: VmRSS {:.1} MiB",
        upstream,
        ex.connections(),
        t.elapsed().as_secs_f64(),
        mib(rss_jobs)
    );

    let per_idle = rss_idle.saturating_sub(rss_start) as f64 / clients as f64;
    let per_sub_total = rss_sub.saturating_sub(rss_start) as f64 / clients as f64;
    let per_sub_extra = rss_sub.saturating_sub(rss_idle) as f64 / clients as f64;
    let per_job = rss_jobs.saturating_sub(rss_before_jobs) as f64 / jobs as f64;
    let met = |v: f64, target: f64| if v <= target { "met" } else { "missed" };
    println!();
    println!("resident memory of the klinegate process (VmRSS deltas from /proc/{pid}/status)");
    println!("| measure | count | VmRSS delta (MiB) | per unit (KiB) | target (KiB) | result |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| idle client | {clients} | {:.1} | {:.2} | 16 | {} |",
        mib(rss_idle.saturating_sub(rss_start)),
        kib(per_idle),
        met(per_idle, TARGET_IDLE_CLIENT)
    );
    println!(
        "| subscribed client (total) | {clients} | {:.1} | {:.2} | - | - |",
        mib(rss_sub.saturating_sub(rss_start)),
        kib(per_sub_total)
    );
    println!(
        "| subscription on top of idle | {clients} | {:.1} | {:.2} | - | - |",
        mib(rss_sub.saturating_sub(rss_idle)),
        kib(per_sub_extra)
    );
    println!(
        "| on-demand job | {jobs} | {:.1} | {:.2} | 64 | {} |",
        mib(rss_jobs.saturating_sub(rss_before_jobs)),
        kib(per_job),
        met(per_job, TARGET_JOB)
    );
    if confirmed < clients || upstream < jobs + 1 {
        println!("note: not every client/job settled before the time limit; the per-unit figures are over the full counts");
    }

    if std::env::var("KLINEGATE_BENCH_DEBUG").is_ok() {
        live.drain_logs();
        for l in live.seen_logs.iter().filter(|l| !(l.contains("subscribe_handled") && l.contains("BTC/USDT"))).take(400) {
            println!("LOG {l}");
        }
    }
    drop(socks);
    drop(jobbers);
    if live.terminate(Duration::from_secs(5)).is_none() {
        live.kill9();
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

/// Pushes forming updates until every client has received one (a subscribe
/// is processed when the update reaches it); returns how many did.
fn confirm_subscribed(ex: &FakeExchange, socks: &mut [TcpStream], limit: Duration) -> usize {
    let end = Instant::now() + limit;
    let open_ms = current_minute_ms();
    let mut pending: Vec<usize> = (0..socks.len()).collect();
    let mut seq = 0;
    let mut buf = vec![0u8; 16 << 10];
    while !pending.is_empty() && Instant::now() < end {
        let (o, h, l, c, v) = forming_prices(seq);
        ex.push_kline(STREAM, open_ms, o, h, l, c, v, false);
        seq += 1;
        std::thread::sleep(Duration::from_millis(300));
        pending.retain(|&i| !got_forming(&mut socks[i], &mut buf));
    }
    socks.len() - pending.len()
}

/// Reads what is waiting (non-blocking); true when it holds a forming frame.
fn got_forming(sock: &mut TcpStream, buf: &mut [u8]) -> bool {
    if sock.set_nonblocking(true).is_err() {
        return false;
    }
    let mut data = Vec::new();
    while let Ok(n) = sock.read(buf) {
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let _ = sock.set_nonblocking(false);
    let mut found = false;
    scan_server_frames(&data, |_, payload| found |= forming_seq(payload).is_some());
    found
}

/// Waits until the fake exchange carries `want` streams; returns the count.
fn wait_upstream_streams(ex: &FakeExchange, clients: &mut [TcpStream], want: usize, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    loop {
        let have = ex.subscriptions().len();
        if have >= want || Instant::now() >= end {
            return have;
        }
        clients.iter_mut().for_each(drain_nonblocking);
        std::thread::sleep(Duration::from_millis(100));
    }
}
