//! Fan-out in the core: one forming update for a series with 1, 1,000 and
//! 10,000 subscribed clients. Timed: `handle(UpstreamText)` alone — parse,
//! ingest, and queueing the frame for every subscriber (the `ClientReady`
//! outputs included). Two queue states: "fresh" (every client drained since
//! the last update: a push per client) and "coalesce" (nobody drained: the
//! queued forming frame is replaced in place). The drain the shell does
//! afterwards (`poll_output` + `ClientWritable` and `poll_client` per client) is reported
//! separately.
//!
//! Checks, not timings: every client gets the frame, the frame is serialized
//! once and shared (pointer-equal `Rc`s, strong count = clients), and the
//! allocations per publish are counted with a counting global allocator.
//! Baseline in the same run: pushing an `Rc` clone into 10,000 `Vec`s.
//!
//! Shapes (#15 §4): "10,000 mixed" subscribes every other client with
//! `"fields":"full"`; the publish then serializes two frames (the default and
//! the full one), each shared by its half (two distinct buffers in all).
//!
//! `cargo bench --bench fanout`; `KLINEGATE_BENCH_QUICK=1` for a short run.

#[path = "support/engine.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Engine, Input, Output};
use klinegate::store::MemoryStore;
use klinegate::time::Timestamp;

/// Counts allocations (alloc + realloc) so the bench can show the frame is
/// built once per publish, not once per client.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

const SERIES: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const T0: u64 = 1_700_002_800;

fn kline_text(t_s: u64, close: f64, n: u64) -> String {
    let t = t_s * 1000;
    format!(
        r#"{{"stream":"{STREAM}","data":{{"e":"kline","E":{e},"s":"BTCUSDT","k":{{"t":{t},"T":{tt},"s":"BTCUSDT","i":"1m","f":346711017,"L":346711087,"o":"36500.00000000","c":"{close:.8}","h":"36600.00000000","l":"36400.00000000","v":"12.86425000","n":{n},"x":false,"q":"146321.71560700","V":"46.98201000","Q":"97009.77617410","B":"0"}}}}}}"#,
        e = t + 1000 + n,
        tt = t + 59_999,
    )
}

use support::drain;

/// Pinned series, upstream connected and acked, `clients` clients subscribed.
fn engine_with_clients(clients: u64, mixed: bool) -> (Engine, MemoryStore, u64) {
    // Derived timeframes off: the figure is the hub's fan-out, not the folds.
    let settings = Settings { pins: vec![SERIES.into()], derived: String::new(), heal: false, ..Settings::default() };
    let now = Timestamp::from_secs(T0 - 2);
    let cfg = settings.to_engine_config().expect("bench settings are valid");
    let mut e = Engine::new(cfg, now);
    let mut store = MemoryStore::new();
    let conn = support::start_live(&mut e, &mut store, now);
    let sub = format!("{{\"type\":\"subscribe\",\"series_id\":\"{SERIES}\"}}");
    let full = format!("{{\"type\":\"subscribe\",\"series_id\":\"{SERIES}\",\"fields\":\"full\"}}");
    for client in 1..=clients {
        e.handle(Input::ClientConnected { client: ClientId(client) }, now);
        let text = if mixed && client % 2 == 0 { full.clone() } else { sub.clone() };
        e.handle(Input::ClientText { client: ClientId(client), text }, now);
    }
    drain(&mut e, &mut store);
    assert_eq!(e.subscription_count(), clients as usize);
    (e, store, conn)
}

/// Drains every output and every client's queue; returns the frames taken.
fn drain_all(e: &mut Engine, store: &mut MemoryStore, frames: &mut Vec<klinegate::engine::Frame>) -> usize {
    frames.clear();
    for out in drain(e, store) {
        if let Output::ClientReady { client } = out {
            klinegate::replay::hosted::write_all(e, client, frames);
        }
    }
    frames.len()
}

#[derive(Default, Clone, Copy)]
struct Figures {
    /// ns per publish, best round.
    fresh_ns: f64,
    coalesce_ns: f64,
    /// ns per publish for the shell's drain of every client.
    drain_ns: f64,
    allocs_per_publish: f64,
}

/// Timed publishes into `clients` subscribers.
fn measure(clients: u64, budget: Duration) -> Figures {
    measure_shapes(clients, false, budget)
}

/// [`measure`]; `mixed`: every other client in the full shape.
fn measure_shapes(clients: u64, mixed: bool, budget: Duration) -> Figures {
    let (mut e, mut store, conn) = engine_with_clients(clients, mixed);
    let mut frames = Vec::with_capacity(clients as usize);
    let mut n = 0u64;
    // One forming update per second of engine time: never throttled (250 ms).
    let next = |n: &mut u64| {
        *n += 1;
        let minute = T0 + (*n / 60) * 60;
        let now = Timestamp::from_secs(T0 + *n);
        (now, Input::UpstreamText { conn: ConnId(conn), text: kline_text(minute, 36450.0 + (*n % 89) as f64, *n % 60) })
    };

    // Warm-up: queues reach their capacity, and check what fan-out produces.
    for _ in 0..3 {
        let (now, input) = next(&mut n);
        e.handle(input, now);
        assert_eq!(drain_all(&mut e, &mut store, &mut frames), clients as usize, "every client gets the frame");
    }
    // `Bytes` clones share one buffer: the same data pointer for every client
    // (one buffer per shape).
    let mut buffers: Vec<*const u8> = frames.iter().map(|f| f.as_ptr()).collect();
    buffers.sort_unstable();
    buffers.dedup();
    assert_eq!(buffers.len(), if mixed { 2 } else { 1 }, "one frame per shape shared by its clients");

    let per_round = (2_000_000 / clients).clamp(20, 2_000);
    let mut fig = Figures { fresh_ns: f64::INFINITY, coalesce_ns: f64::INFINITY, drain_ns: f64::INFINITY, ..Figures::default() };
    let mut allocs = 0u64;
    let mut publishes = 0u64;
    let started = Instant::now();
    while started.elapsed() < budget || publishes == 0 {
        // Fresh: drain after every publish (untimed), time only the publish.
        let mut timed = Duration::ZERO;
        let mut drain_time = Duration::ZERO;
        for _ in 0..per_round {
            let (now, input) = next(&mut n);
            let a0 = allocations();
            let t = Instant::now();
            e.handle(input, now);
            timed += t.elapsed();
            allocs += allocations() - a0;
            publishes += 1;
            let t = Instant::now();
            let got = drain_all(&mut e, &mut store, &mut frames);
            drain_time += t.elapsed();
            debug_assert_eq!(got, clients as usize);
            black_box(got);
        }
        fig.fresh_ns = fig.fresh_ns.min(timed.as_nanos() as f64 / per_round as f64);
        fig.drain_ns = fig.drain_ns.min(drain_time.as_nanos() as f64 / per_round as f64);
        // Coalesce: nobody reads; each publish replaces the queued frame.
        let (now, input) = next(&mut n);
        e.handle(input, now);
        let t = Instant::now();
        for _ in 0..per_round {
            let (now, input) = next(&mut n);
            e.handle(input, now);
        }
        fig.coalesce_ns = fig.coalesce_ns.min(t.elapsed().as_nanos() as f64 / per_round as f64);
        assert_eq!(drain_all(&mut e, &mut store, &mut frames), clients as usize, "coalesced to one frame per client");
    }
    fig.allocs_per_publish = allocs as f64 / publishes as f64;
    fig
}

/// Baseline: push a clone of one `Rc<[u8]>` into each of `n` Vecs (kept
/// allocated), then clear them: ns per push.
fn rc_push_baseline(n: usize, budget: Duration) -> f64 {
    let frame: Rc<[u8]> = vec![b'x'; 200].into();
    let mut queues: Vec<Vec<Rc<[u8]>>> = (0..n).map(|_| Vec::with_capacity(4)).collect();
    let mut best = f64::INFINITY;
    let started = Instant::now();
    while started.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..20 {
            for q in queues.iter_mut() {
                q.push(frame.clone());
            }
            black_box(&queues);
            for q in queues.iter_mut() {
                q.clear();
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / (20 * n) as f64);
    }
    best
}

fn main() {
    let quick = std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let budget = if quick { Duration::from_millis(400) } else { Duration::from_secs(6) };
    println!(
        "fan-out: one forming update -> N subscribers of one series (derived off){}",
        if quick { " (QUICK mode)" } else { "" }
    );
    let one = measure(1, budget / 2);
    let k1 = measure(1_000, budget);
    let k10 = measure(10_000, budget);
    let k10_mixed = measure_shapes(10_000, true, budget);
    let push = rc_push_baseline(10_000, budget / 2);

    println!("{:<10} {:>14} {:>14} {:>14} {:>14} {:>14}", "clients", "fresh ns/pub", "coalesce ns", "ns/client", "drain ns/cl", "allocs/pub");
    for (n, label, f) in [(1u64, "1", one), (1_000, "1000", k1), (10_000, "10000", k10), (10_000, "10000 mix", k10_mixed)] {
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>14.1} {:>14.1} {:>14.2}",
            label,
            f.fresh_ns,
            f.coalesce_ns,
            f.fresh_ns / n as f64,
            f.drain_ns / n as f64,
            f.allocs_per_publish
        );
    }
    let per_extra_fresh = (k10.fresh_ns - k1.fresh_ns) / 9_000.0;
    let per_extra_coalesce = (k10.coalesce_ns - k1.coalesce_ns) / 9_000.0;
    let target = 50.0;
    let verdict = |x: f64| if x <= target { "met" } else { "MISSED" };
    println!();
    println!(
        "{:<46} {:>12} {:<28} {:>8} {:>8} {:>10} {:>7}",
        "bench", "figure", "baseline", "", "ratio", "target", "result"
    );
    for (name, x) in [
        ("fan-out: per extra client, fresh queues", per_extra_fresh),
        ("fan-out: per extra client, coalescing", per_extra_coalesce),
    ] {
        println!(
            "{:<46} {:>6.1} ns/cl {:<28} {:>5.1} ns {:>7.2}x {:>10} {:>7}",
            name,
            x,
            "Rc clone push, 10k Vecs",
            push,
            x / push,
            "<= 50 ns",
            verdict(x)
        );
    }
    println!(
        "  time to queue for all: 1k clients {:.1} us, 10k clients {:.1} us (fresh); the frame is serialized once \
         and shared: Rc::ptr_eq across clients, strong_count = clients; allocations per publish: 1k {:.2}, 10k {:.2}",
        k1.fresh_ns / 1e3,
        k10.fresh_ns / 1e3,
        k1.allocs_per_publish,
        k10.allocs_per_publish
    );
    println!(
        "  shapes: 10k clients, half with fields=full: {:.1} us per publish vs {:.1} us all default ({:.2}x); \
         allocations per publish {:.2} vs {:.2} (the full frame is built once, shared by its half)",
        k10_mixed.fresh_ns / 1e3,
        k10.fresh_ns / 1e3,
        k10_mixed.fresh_ns / k10.fresh_ns,
        k10_mixed.allocs_per_publish,
        k10.allocs_per_publish
    );
}
