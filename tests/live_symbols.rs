//! Issue #12 points 4, 6 and two items of 7, against the real binary and the
//! fake exchange over loopback: unknown symbols are answered (and cost no
//! stream and no REST when the market's symbol list is known), a `-1121`
//! ends the job, paging stops at the first empty page, a first visit to a
//! derived timeframe is filled from the exchange's native interval klines,
//! derived volumes print the exchange's exact decimal, and every
//! `heal_started` ends in a `heal_done`/`heal_failed`/`heal_cancelled` line.
//! Every wait is bounded.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, FakeSymbol, SPOT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::live::{Client, Live};

const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;

fn now_minute_ms() -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    ms / MIN_MS * MIN_MS
}

fn price(t: i64) -> f64 {
    100.0 + ((t / MIN_MS) % 50) as f64
}

/// klinegate on `ex`, no pins, nothing derived unless `extra` says so.
fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", ""];
    if !extra.contains(&"--derived") {
        args.extend_from_slice(&["--derived", ""]);
    }
    args.extend_from_slice(extra);
    Live::start(&args)
}

fn subscribe(c: &mut Client, series: &str) {
    c.send(json!({"type":"subscribe","series_id":series,"supports_batch":true}));
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Every `heal_started` line of `series` has a matching end line.
fn heal_lines(live: &mut Live, series: &str) -> (usize, usize) {
    live.drain_logs();
    let of = |l: &&String| l.contains(&format!("series_id={series} "));
    let started = live.seen_logs.iter().filter(of).filter(|l| l.contains("heal_started")).count();
    let ended = live
        .seen_logs
        .iter()
        .filter(of)
        .filter(|l| l.contains("heal_done") || l.contains("heal_failed") || l.contains("heal_cancelled"))
        .count();
    (started, ended)
}

// ------------------------------------------------------------- point 7: heal ends

#[test]
fn a_job_reaped_or_evicted_mid_heal_logs_heal_cancelled() {
    const ETH: &str = "binance:spot:ETH/USDT:1m";
    const SOL: &str = "binance:spot:SOL/USDT:1m";
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = now_minute_ms();
    for sym in ["ETHUSDT", "SOLUSDT", "XRPUSDT"] {
        ex.fill_history(SPOT, sym, "1m", now - 100 * MIN_MS, now, price);
    }
    // Every REST answer takes 4 s: the heals are still running when their jobs go.
    ex.rest_delay(4 * SEC);
    let mut live = start(&ex, &["--idle-ttl", "1", "--max-ondemand-jobs", "1", "--heal-first-visit-candles", "50"]);

    // Reaped: subscribe, leave, the idle TTL (1 s) ends the job mid-heal.
    let mut c = live.ws();
    subscribe(&mut c, ETH);
    assert!(live.wait_log(&format!("heal_started series_id={ETH} "), 10 * SEC).is_some());
    c.send(json!({"type":"unsubscribe","series_id":ETH}));
    let stopped = live.wait_log(&format!("job_stopped series_id={ETH} "), 10 * SEC).expect("reaped");
    assert!(stopped.contains("reason=reaped"), "{stopped}");
    let cancelled = live.wait_log(&format!("heal_cancelled series_id={ETH} "), 2 * SEC);
    assert!(cancelled.is_some_and(|l| l.contains("cause=reaped")), "no heal_cancelled line for the reaped job");

    // Evicted: the one on-demand slot goes to the next series while SOL heals.
    subscribe(&mut c, SOL);
    assert!(live.wait_log(&format!("heal_started series_id={SOL} "), 10 * SEC).is_some());
    c.send(json!({"type":"unsubscribe","series_id":SOL}));
    subscribe(&mut c, "binance:spot:XRP/USDT:1m");
    let stopped = live.wait_log(&format!("job_stopped series_id={SOL} "), 10 * SEC).expect("evicted");
    assert!(stopped.contains("reason=evicted"), "{stopped}");
    assert!(live.wait_log(&format!("heal_cancelled series_id={SOL} "), 2 * SEC).is_some_and(|l| l.contains("cause=evicted")));

    for series in [ETH, SOL] {
        let (started, ended) = heal_lines(&mut live, series);
        assert!(started >= 1 && started == ended, "{series}: {started} heal_started, {ended} ends");
    }
}
