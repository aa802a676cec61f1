//! Replay throughput: a large generated journal (`klinegate::replay::gen`: 1,000,000
//! kline frames over 500 streams, spot and futures, forming every ~2 s and a
//! close per minute, a few subscribed clients) through
//! `klinegate::replay::journal::replay` into a sink that discards the output lines,
//! with `MemoryStore` (and, for scale, a temp-file `SqliteStore`). Baselines in
//! the same run, alternated with it round by round: the same journal written
//! as version 1 (frame text as escaped strings, what journals were before
//! version 2 embedded it as JSON) replayed the same way, and reading the
//! version 1 journal's lines and parsing each into a `journal::Record`
//! (serde_json), without the engine.
//!
//! `cargo bench --bench replay`; `KLINEGATE_BENCH_QUICK=1`: 100,000 frames over
//! 50 streams. Prints figures; asserts nothing about time. (Full mode takes
//! about 3 minutes on the 2-core machine: generation plus 3 replays.)
//! `KLINEGATE_BENCH_KEEP_JOURNAL=FILE` also copies the generated journal to
//! FILE and its version 1 form to FILE.v1 (to profile `klinegate replay FILE`).
//!
//! `journal::replay` is single-threaded: it reads, decodes and steps the
//! engine on the calling thread. "on-CPU (this thread)" leaves out the time
//! the shared machine gave to others.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use klinegate::replay::gen::{generate_journal, GenOptions, MarketMix};
use klinegate::replay::journal::{self, Record};
use klinegate::store::{MemoryStore, SqliteStore, Store};

const TARGET_FRAMES_PER_S: f64 = 1_000_000.0;

/// This thread's on-CPU time so far (Linux schedstat, ns): on a shared
/// machine it tells the work from the waiting. `None` elsewhere. For a replay
/// this is the engine's thread (the journal is decoded on a second one).
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// The whole process's user + system CPU time so far (Linux `/proc/self/stat`,
/// in USER_HZ = 100 ticks, ns), ended threads included.
fn process_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// Wall seconds, this thread's on-CPU seconds and the process's CPU seconds
/// (NaN when unknown) of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, f64, f64, T) {
    let cpu0 = cpu_ns();
    let process0 = process_cpu_ns();
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed().as_secs_f64();
    let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => f64::NAN,
    };
    (wall, secs(cpu0, cpu_ns()), secs(process0, process_cpu_ns()), out)
}

/// Reads and parses every record line (the header is skipped); the count.
fn parse_only(path: &Path) -> u64 {
    let mut lines = BufReader::new(File::open(path).expect("journal")).lines();
    lines.next();
    let mut records = 0u64;
    for line in lines {
        let line = line.expect("journal line");
        let rec: Record = serde_json::from_str(&line).expect("journal record");
        black_box(&rec);
        records += 1;
    }
    records
}

/// The journal at `v2` rewritten as version 1: the header's version, and each
/// record with embedded frame JSON written by serde (which writes `"text"`).
fn write_v1(v2: &Path, v1: &Path) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 16, File::create(v1).expect("v1 journal file"));
    let mut rewritten = 0;
    for (i, line) in BufReader::new(File::open(v2).expect("journal")).lines().enumerate() {
        let line = line.expect("journal line");
        if i == 0 {
            let mut header: journal::Header = serde_json::from_str(&line).expect("header");
            header.version = 1;
            serde_json::to_writer(&mut out, &header).expect("write");
        } else if line.contains("\"json\":") {
            let rec: Record = serde_json::from_str(&line).expect("journal record");
            serde_json::to_writer(&mut out, &rec).expect("write");
            rewritten += 1;
        } else {
            out.write_all(line.as_bytes()).expect("write");
        }
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("write");
    rewritten
}

/// Replays the journal into `io::sink()`; the engine's kline count and stats.
fn replay(path: &Path, store: Box<dyn Store>) -> (u64, journal::ReplayStats) {
    let reader = BufReader::with_capacity(1 << 16, File::open(path).expect("journal"));
    let (replayer, stats) = journal::replay(reader, store, io::sink()).expect("journal replays");
    let c = replayer.engine().counters();
    assert_eq!(c.upstream_rejects, 0, "{:?}", c.upstream_rejects_by_kind);
    (c.kline_frames, stats)
}

fn main() {
    let quick = std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let opts = GenOptions {
        series: if quick { 50 } else { 500 },
        frames: if quick { 100_000 } else { 1_000_000 },
        clients: 4,
        seed: 1,
        markets: MarketMix::Mixed { futures_percent: 50 },
        forming_per_minute: 30,
        ..GenOptions::default()
    };
    let rounds = if quick { 2 } else { 3 };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.journal");

    let started = Instant::now();
    let file = BufWriter::with_capacity(1 << 16, File::create(&path).expect("journal file"));
    let gen = generate_journal(file, &opts).expect("journal generates");
    let gen_secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "replay: generated journal in {gen_secs:.1} s, {:.0} MB: {gen}{}",
        bytes as f64 / 1e6,
        if quick { " (QUICK mode)" } else { "" }
    );

    let v1_path = dir.path().join("bench.v1.journal");
    let rewritten = write_v1(&path, &v1_path);
    let v1_bytes = std::fs::metadata(&v1_path).map(|m| m.len()).unwrap_or(0);
    println!(
        "  version 1 copy: {rewritten} frames as escaped strings, {:.0} MB (version 2: {:.0} MB)",
        v1_bytes as f64 / 1e6,
        bytes as f64 / 1e6
    );

    if let Ok(keep) = std::env::var("KLINEGATE_BENCH_KEEP_JOURNAL") {
        std::fs::copy(&path, &keep).expect("copy the journal to KLINEGATE_BENCH_KEEP_JOURNAL");
        std::fs::copy(&v1_path, format!("{keep}.v1")).expect("copy the v1 journal");
        println!("  journal kept at {keep} (version 1: {keep}.v1)");
    }

    // (wall, this thread's cpu, process cpu) seconds, best of the rounds.
    let best = |a: (f64, f64, f64), w: f64, c: f64, p: f64| (a.0.min(w), a.1.min(c), a.2.min(p));
    let mut best_parse = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut best_mem = best_parse;
    let mut best_v1 = best_parse;
    let mut best_sqlite = best_parse;
    let mut last_stats = None;
    for round in 0..rounds {
        let (w, c, p, records) = timed(|| parse_only(&v1_path));
        assert_eq!(records, gen.records, "every record parses");
        best_parse = best(best_parse, w, c, p);
        // Alternated, the order flipped each round: the machine's load hits both.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for v1 in order {
            let (w, c, p, (frames, stats)) =
                timed(|| replay(if v1 { &v1_path } else { &path }, Box::new(MemoryStore::new())));
            assert_eq!(frames, gen.frames, "every frame reaches the engine");
            if v1 {
                best_v1 = best(best_v1, w, c, p);
            } else {
                best_mem = best(best_mem, w, c, p);
                last_stats = Some(stats);
            }
        }
        // SQLite once per run is enough for scale (it writes a file each time).
        if round == 0 {
            let db = SqliteStore::open(&dir.path().join("replay.db")).expect("sqlite store");
            let (w, c, p, (frames, _)) = timed(|| replay(&path, Box::new(db)));
            assert_eq!(frames, gen.frames);
            best_sqlite = (w, c, p);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  machine load (1/5/15 min, /proc/loadavg) at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let frames = gen.frames as f64;
    let rate = |secs: f64| frames / secs;
    println!(
        "{:<40} {:>14} {:<30} {:>14} {:>7} {:>14} {:>7}",
        "bench (kline frames/s, wall clock)", "figure", "baseline", "", "ratio", "target", "result"
    );
    let verdict = |x: f64| if x >= TARGET_FRAMES_PER_S { "met" } else { "MISSED" };
    for (name, secs, base_name, base) in [
        ("replay v2, MemoryStore, io::sink", best_mem, "same journal as v1, replayed", best_v1),
        ("replay v2, MemoryStore, io::sink", best_mem, "read + parse v1 Records only", best_parse),
        ("replay v2, SqliteStore file, io::sink", best_sqlite, "read + parse v1 Records only", best_parse),
    ] {
        println!(
            "{:<40} {:>12.0}/s {:<30} {:>12.0}/s {:>6.2}x {:>14} {:>7}",
            name,
            rate(secs.0),
            base_name,
            rate(base.0),
            rate(secs.0) / rate(base.0),
            ">= 1000000/s",
            verdict(rate(secs.0))
        );
    }
    println!(
        "  on-CPU time (this thread; the machine is shared): replay v2 {:.0} frames/s, v1 {:.0} frames/s, \
         sqlite {:.0} frames/s, parse-only {:.0} frames/s",
        rate(best_mem.1),
        rate(best_v1.1),
        rate(best_sqlite.1),
        rate(best_parse.1)
    );
    println!(
        "  process CPU (10 ms ticks): replay v2 {:.0} frames per CPU-second, v1 {:.0}, sqlite {:.0}, parse-only {:.0}",
        rate(best_mem.2),
        rate(best_v1.2),
        rate(best_sqlite.2),
        rate(best_parse.2)
    );
    if let Some(st) = last_stats {
        println!(
            "  best of {rounds}: replay v2 {:.2} s, v1 {:.2} s, parse-only {:.2} s, sqlite {:.2} s (wall); records {} \
             ({:.0}/s), timeouts fired {}, output lines {}; {:.0} ns/frame replay vs {:.0} ns/frame parse-only (wall)",
            best_mem.0,
            best_v1.0,
            best_parse.0,
            best_sqlite.0,
            st.records,
            st.records as f64 / best_mem.0,
            st.timeouts,
            st.output_lines,
            best_mem.0 * 1e9 / frames,
            best_parse.0 * 1e9 / frames
        );
    }
}
