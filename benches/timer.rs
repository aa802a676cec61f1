//! Timer wheel figures: the engine's hot patterns, timed with std only.
//! Run: `cargo bench --bench timer`. Prints nanoseconds per operation; nothing
//! is asserted (figures go in reports, not in tests).

use klinegate::rng::Rng;
use klinegate::time::{Duration, Timestamp};
use klinegate::timer::{TimerId, TimerWheel};
use std::hint::black_box;
use std::time::Instant;

const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn report(name: &str, ops: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64 / ops as f64;
    println!("{name:<58} {ns:>8.1} ns/op  ({ops} ops)");
}

fn after_ms(ms: u64) -> Timestamp {
    START.add(Duration::from_millis(ms))
}

/// A session re-arms its one wheel entry: cancel the old id, insert the new
/// deadline, with `live` other timers in the wheel.
fn rearm(live: usize) {
    let mut rng = Rng::new(1);
    let mut wheel = TimerWheel::new(START);
    let mut ids: Vec<TimerId> = (0..live)
        .map(|k| wheel.insert(after_ms(1 + rng.below(60_000)), k))
        .collect();
    let rounds = 2_000_000u64;
    let started = Instant::now();
    for round in 0..rounds {
        let k = (round as usize) % live;
        black_box(wheel.cancel(ids[k]));
        ids[k] = wheel.insert(after_ms(1 + rng.below(60_000)), k);
    }
    report(
        &format!("cancel+insert, {live} live, deadlines < 60 s"),
        rounds,
        started,
    );
}

/// Many timers fire as time advances 1 ms per turn (the shell's loop).
fn expire_ms_by_ms(count: usize, spread_ms: u64) {
    let mut rng = Rng::new(2);
    let mut wheel = TimerWheel::new(START);
    let started = Instant::now();
    for k in 0..count {
        wheel.insert(after_ms(1 + rng.below(spread_ms)), k);
    }
    report(
        &format!("insert, {count} timers over {spread_ms} ms"),
        count as u64,
        started,
    );
    let mut out = Vec::with_capacity(1_024);
    let mut fired = 0;
    let started = Instant::now();
    for ms in 1..=spread_ms {
        wheel.expire(after_ms(ms), &mut out);
        fired += out.len();
        out.clear();
    }
    assert_eq!(fired, count);
    report(
        &format!("expire 1 ms steps, per fired timer ({count} over {spread_ms} ms)"),
        count as u64,
        started,
    );
}

/// The shell asks for its poll timeout every loop turn.
fn next_deadline_query(live: usize) {
    let mut rng = Rng::new(3);
    let mut wheel = TimerWheel::new(START);
    for k in 0..live {
        wheel.insert(after_ms(1 + rng.below(3_600_000)), k);
    }
    let rounds = 10_000_000u64;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(black_box(&wheel).next_deadline());
    }
    report(
        &format!("next_deadline, {live} live over 1 h"),
        rounds,
        started,
    );
}

/// A suspended process wakes after a month: one expire fires everything.
fn big_jump(count: usize) {
    let mut rng = Rng::new(4);
    let mut wheel = TimerWheel::new(START);
    let month_ms = 30 * 86_400_000;
    for k in 0..count {
        wheel.insert(after_ms(1 + rng.below(month_ms)), k);
    }
    let mut out = Vec::with_capacity(count);
    let started = Instant::now();
    wheel.expire(after_ms(month_ms), &mut out);
    assert_eq!(out.len(), count);
    report(
        &format!("one expire after a 30-day jump, per timer ({count})"),
        count as u64,
        started,
    );
}

fn main() {
    // KLINEGATE_BENCH_QUICK=1 (CI): smaller sizes, same shape, a second or two.
    let quick = std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (small, large) = if quick { (1_000, 10_000) } else { (10_000, 100_000) };
    rearm(small);
    rearm(large);
    expire_ms_by_ms(large, 60_000);
    if !quick {
        expire_ms_by_ms(1_000_000, 600_000);
    }
    next_deadline_query(small);
    big_jump(if quick { 100_000 } else { 1_000_000 });
}
