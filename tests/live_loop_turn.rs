//! A measurement, not a check (ignored by default): how long the event loop's
//! worst turn is while the store is busy — 30 first-visit heals of 2,000
//! candles each, then 6 clients catching up on all 30 series — read from the
//! binary's own `klinegate_loop_turn_seconds` metrics. Run:
//!
//! `cargo test --release --test live_loop_turn -- --ignored --nocapture`
//!
//! It prints the figures; a time is never asserted (see the README's table).

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, FakeSymbol, RestCandle};
use serde_json::json;
use std::time::{Duration, Instant};
use support::live::{metric_value, now_minute_ms, Live};

const SERIES: usize = 30;
const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;

fn symbol(i: usize) -> String {
    format!("S{i:02}")
}

#[test]
#[ignore = "a measurement: cargo test --release --test live_loop_turn -- --ignored --nocapture"]
fn worst_loop_turn_while_heals_and_catchups_use_the_store() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", (0..SERIES).map(|i| FakeSymbol::new(&symbol(i), "USDT")).collect());
    let now = now_minute_ms();
    for i in 0..SERIES {
        let base = 100.0 + i as f64;
        ex.set_history_fn("spot", &format!("{}USDT", symbol(i)), "1m", now - 3000 * MIN_MS, move |t| {
            let p = base + ((t / MIN_MS) % 50) as f64;
            RestCandle::new(t, "1m", p, p + 1.0, p - 1.0, p + 0.5, 2.0)
        });
    }
    let url = ex.ws_url();
    let dir = tempfile::tempdir().unwrap();
    let mut live = Live::start_in(dir, &["--spot-ws-url", &url, "--futures-ws-url", &url, "--derived", ""]);
    let ids: Vec<String> = (0..SERIES).map(|i| format!("binance:spot:{}/USDT:1m", symbol(i))).collect();

    let started = Instant::now();
    let mut c = live.ws();
    for id in &ids {
        c.send(json!({"type":"subscribe","series_id":id}));
    }
    let heals_done = || live.metric("klinegate_heals_done_total") as usize;
    while heals_done() < SERIES && started.elapsed() < 120 * SEC {
        let _ = c.next(Duration::from_millis(100));
    }
    let heal_s = started.elapsed().as_secs_f64();
    let after_heals = live.get("/metrics").1;

    let since = (now - 2500 * MIN_MS) / 1000;
    let mut readers: Vec<_> = (0..6).map(|_| live.ws()).collect();
    for r in readers.iter_mut() {
        for id in &ids {
            r.send(json!({"type":"subscribe","series_id":id,"since":since,"supports_batch":true}));
        }
    }
    let started = Instant::now();
    for r in readers.iter_mut() {
        while r.next(SEC).is_some() && started.elapsed() < 120 * SEC {}
    }
    let catchup_s = started.elapsed().as_secs_f64();
    let (_, text) = live.get("/metrics");
    let m = |name: &str| metric_value(&text, name).unwrap_or(f64::NAN);
    let turns = m("klinegate_loop_turn_seconds_count");
    let over = |le: &str| turns - metric_value(&text, &format!("klinegate_loop_turn_seconds_bucket{{le=\"{le}\"}}")).unwrap_or(f64::NAN);
    println!(
        "heals: {} done in {heal_s:.1} s, worst turn then {:.1} ms",
        heals_done(),
        metric_value(&after_heals, "klinegate_loop_turn_seconds_max").unwrap_or(f64::NAN) * 1e3
    );
    println!(
        "catch-ups: 6 clients x {SERIES} series in {catchup_s:.1} s; loop turns {turns:.0}, worst {:.1} ms, over 5 ms {:.0}, over 10 ms {:.0}, over 25 ms {:.0}; worst store slice {:.1} ms; worst single write {:.1} ms",
        m("klinegate_loop_turn_seconds_max") * 1e3,
        over("0.005"),
        over("0.01"),
        over("0.025"),
        m("klinegate_store_slice_seconds_max") * 1e3,
        m("klinegate_store_write_seconds_max") * 1e3,
    );
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
