//! The tick path: one exchange frame in → the core → the client frame bytes
//! queued, with one subscriber; forming and closed frames, with the derived
//! timeframes off and at their defaults (5m,15m,1h,4h,1d). The timed loop is
//! what the shell does per frame: `handle(UpstreamText)`, drain
//! `poll_output`, `ClientWritable` + `poll_client`. Building the `Input` (an owned String,
//! as the WebSocket layer hands it over) is outside the timing.
//! Baseline in the same run: `parse_frame` on the same frames, so the ratio is
//! the core's overhead beyond parsing (and `serde_json::Value` for scale).
//!
//! `cargo bench --bench tick`; `KLINEGATE_BENCH_QUICK=1` for a short run of the
//! same shape. Prints figures; asserts nothing about time (only that every
//! frame reached the client, so the figure measures what it claims).

#[path = "support/engine.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Engine, Input, Output};
use klinegate::wire::binance::{parse_frame, Frame};
use klinegate::replay::hosted;
use klinegate::store::MemoryStore;
use klinegate::time::Timestamp;

const SERIES: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
/// A 5-minute (and hour) boundary, so derived buckets start complete.
const T0: u64 = 1_700_002_800;
const FORMING_PER_MINUTE: u64 = 30;
/// Frames per timed batch; each round uses a fresh engine.
const BATCH: usize = 20_000;

/// A Binance combined-stream kline frame, shaped like the real ones.
fn kline_text(t_s: u64, close: f64, is_final: bool, n: u64) -> String {
    let t = t_s * 1000;
    format!(
        r#"{{"stream":"{STREAM}","data":{{"e":"kline","E":{e},"s":"BTCUSDT","k":{{"t":{t},"T":{tt},"s":"BTCUSDT","i":"1m","f":3467110{n:02},"L":3467111{n:02},"o":"36500.00000000","c":"{close:.8}","h":"{h:.8}","l":"36400.00000000","v":"{v:.8}","n":{n},"x":{is_final},"q":"146321.71560700","V":"46.98201000","Q":"97009.77617410","B":"0"}}}}}}"#,
        e = t + 1000 + n * 2000,
        tt = t + 59_999,
        h = close.max(36500.0) + 1.0,
        v = 10.0 + n as f64,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Forming,
    Closed,
}

/// Frame `i` of a batch with its receive time.
fn frame(kind: Kind, i: usize) -> (Timestamp, String) {
    let i = i as u64;
    match kind {
        Kind::Forming => {
            let minute = T0 + (i / FORMING_PER_MINUTE) * 60;
            let k = i % FORMING_PER_MINUTE;
            let close = 36450.0 + (i % 97) as f64 * 0.01;
            (Timestamp::from_millis((minute + 1 + k * 2) * 1000), kline_text(minute, close, false, k))
        }
        Kind::Closed => {
            let minute = T0 + i * 60;
            (Timestamp::from_millis((minute + 60) * 1000 + 100), kline_text(minute, 36450.5, true, 29))
        }
    }
}

/// An engine with the series pinned, its upstream connected and acked, and
/// one client (id 1) subscribed to the base series.
fn live_engine(derived: &str) -> (Engine, MemoryStore, u64, Timestamp) {
    let settings = Settings { pins: vec![SERIES.into()], derived: derived.into(), heal: false, ..Settings::default() };
    let now = Timestamp::from_secs(T0 - 2);
    let cfg = settings.to_engine_config().expect("bench settings are valid");
    let mut e = Engine::new(cfg, now);
    let mut store = MemoryStore::new();
    let conn = support::start_live(&mut e, &mut store, now);
    e.handle(Input::ClientConnected { client: ClientId(1) }, now);
    let sub = format!("{{\"type\":\"subscribe\",\"series_id\":\"{SERIES}\"}}");
    e.handle(Input::ClientText { client: ClientId(1), text: sub }, now);
    drain(&mut e, &mut store);
    let mut frames = Vec::new();
    klinegate::replay::hosted::write_all(&mut e, ClientId(1), &mut frames);
    (e, store, conn, now)
}

use support::drain;

/// One timed batch through a fresh engine: ns per frame, frames delivered.
fn engine_batch(kind: Kind, derived: &str) -> (f64, usize) {
    let (mut e, mut store, conn, _) = live_engine(derived);
    let inputs: Vec<(Timestamp, Input)> = (0..BATCH)
        .map(|i| {
            let (now, text) = frame(kind, i);
            (now, Input::UpstreamText { conn: ConnId(conn), text })
        })
        .collect();
    let mut frames = Vec::with_capacity(16);
    let mut delivered = 0usize;
    let started = Instant::now();
    for (now, input) in inputs {
        e.handle(input, now);
        // As the shell does each loop turn: due timers (the end-of-step flush).
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
        while let Some(out) = e.poll_output() {
            match out {
                Output::ClientReady { client } => {
                    klinegate::replay::hosted::write_all(&mut e, client, &mut frames);
                    delivered += frames.len();
                    black_box(&frames);
                    frames.clear();
                }
                o => {
                    hosted::carry(&mut e, &mut store, &o, now);
                }
            }
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / BATCH as f64;
    (ns, delivered)
}

fn parse_batch(texts: &[String]) -> f64 {
    let started = Instant::now();
    for t in texts {
        match parse_frame(black_box(t)) {
            Ok(Frame::Kline(k)) => {
                black_box((k.candle, k.is_final));
            }
            _ => panic!("bench frame rejected"),
        }
    }
    started.elapsed().as_nanos() as f64 / texts.len() as f64
}

fn serde_value_batch(texts: &[String]) -> f64 {
    let started = Instant::now();
    for t in texts {
        let v: serde_json::Value = serde_json::from_str(black_box(t)).expect("bench frame is JSON");
        black_box(v);
    }
    started.elapsed().as_nanos() as f64 / texts.len() as f64
}

struct Row {
    name: String,
    figure: f64,
    baseline_name: &'static str,
    baseline: f64,
    target_max: f64,
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>12} {:<26} {:>10} {:>7} {:>12} {:>7}",
        "bench", "figure", "baseline", "", "ratio", "target", "result"
    );
    for r in rows {
        let met = if r.figure <= r.target_max { "met" } else { "MISSED" };
        println!(
            "{:<44} {:>7.1} ns/f {:<26} {:>5.1} ns/f {:>6.2}x {:>9} ns {:>7}",
            r.name,
            r.figure,
            r.baseline_name,
            r.baseline,
            r.figure / r.baseline,
            format!("<= {:.0}", r.target_max),
            met
        );
    }
}

fn main() {
    let quick = std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let budget = if quick { Duration::from_millis(1_500) } else { Duration::from_secs(20) };
    println!(
        "tick path: exchange frame -> core -> client frame queued, 1 subscriber, {BATCH} frames per batch, \
         fresh engine per batch, best of interleaved rounds{}",
        if quick { " (QUICK mode)" } else { "" }
    );
    let variants: [(&str, Kind, &str); 4] = [
        ("forming, derived off", Kind::Forming, ""),
        ("closed (flush+publish), derived off", Kind::Closed, ""),
        ("forming, derived 5m,15m,1h,4h,1d", Kind::Forming, "5m,15m,1h,4h,1d"),
        ("closed (flush+publish), derived default", Kind::Closed, "5m,15m,1h,4h,1d"),
    ];
    let texts = |kind: Kind| -> Vec<String> { (0..BATCH).map(|i| frame(kind, i).1).collect() };
    let forming_texts = texts(Kind::Forming);
    let closed_texts = texts(Kind::Closed);

    let mut best_engine = [f64::INFINITY; 4];
    let mut all_engine: [Vec<f64>; 4] = Default::default();
    let mut best_parse = [f64::INFINITY; 2];
    let mut best_value = [f64::INFINITY; 2];
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || started.elapsed() < budget {
        rounds += 1;
        for (v, (name, kind, derived)) in variants.iter().enumerate() {
            let (ns, delivered) = engine_batch(*kind, derived);
            assert_eq!(delivered, BATCH, "{name}: every frame must reach the client exactly once");
            best_engine[v] = best_engine[v].min(ns);
            all_engine[v].push(ns);
        }
        for (k, t) in [&forming_texts, &closed_texts].into_iter().enumerate() {
            best_parse[k] = best_parse[k].min(parse_batch(t));
            best_value[k] = best_value[k].min(serde_value_batch(t));
        }
    }

    let rows: Vec<Row> = variants
        .iter()
        .enumerate()
        .map(|(v, (name, kind, _))| {
            let k = usize::from(*kind == Kind::Closed);
            Row {
                name: format!("tick: {name}"),
                figure: best_engine[v],
                baseline_name: "parse_frame, same frames",
                baseline: best_parse[k],
                target_max: 1000.0,
            }
        })
        .collect();
    print_table(&rows);
    for (v, (name, ..)) in variants.iter().enumerate() {
        let xs = &mut all_engine[v];
        xs.sort_by(f64::total_cmp);
        println!("  {name:<42} median {:.1} ns/frame over {} rounds", xs[xs.len() / 2], xs.len());
    }
    println!(
        "  serde_json::Value parse of the same frames (scale): forming {:.1} ns, closed {:.1} ns; \
         core beyond parse_frame: forming {:.1} ns, closed {:.1} ns (derived off)",
        best_value[0],
        best_value[1],
        best_engine[0] - best_parse[0],
        best_engine[1] - best_parse[1]
    );
}
