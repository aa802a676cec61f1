//! The real binary against the fake exchange, which enforces Binance's
//! per-connection message limit (strict rolling second, pongs and control
//! messages counted, close 1008 "Too many requests"): bursts of new series and
//! client churn cause no violation; a frozen stream (frames stop, connection
//! and pings go on) is detected, logged, counted and resubscribed; a candle
//! whose closing frame never comes reaches subscribers from REST, once.
//!
//! The exchange sees messages with up to 40 ms of network delay variation,
//! as over a real network: pacing needs margin, not just an exact count.
//!
//! Each test prints the figures the report quotes (`--nocapture`).

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, SPOT};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::closed_times;
use support::live::{Client, Live};

const SEC: Duration = Duration::from_secs(1);
const MIN_MS: i64 = 60_000;
/// Network delay variation between klinegate and the exchange (see `FakeOptions::arrival_jitter`).
const JITTER: Duration = Duration::from_millis(40);
/// Four times as often as Binance spot pings (every 20 s).
const PING: Duration = Duration::from_secs(5);

fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url, "--derived", ""];
    args.extend_from_slice(extra);
    Live::start(&args)
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The most messages any connection (open or gone) sent within one second.
fn worst_second(ex: &FakeExchange) -> usize {
    let conns: std::collections::BTreeSet<u64> = ex.incoming().iter().map(|m| m.conn).collect();
    conns.into_iter().map(|c| ex.max_messages_in_window(c, SEC)).max().unwrap_or(0)
}

/// 300 clients each subscribe a new series, one every ~8 ms (2.4 s in all).
fn burst_of_new_series(market: &str, opts: FakeOptions) {
    let limit = opts.max_msgs_per_sec;
    let ex = FakeExchange::start(FakeOptions { ping_interval: Some(PING), arrival_jitter: JITTER, ..opts });
    let live = start(&ex, &["--heal", "false", "--pin", &format!("binance:{market}:BTC/USDT:1m")]);
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m"], 10 * SEC));
    let started = Instant::now();
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..300 {
        let mut c = live.ws();
        c.send(json!({"type":"subscribe","series_id":format!("binance:{market}:B{i:03}/USDT:1m")}));
        clients.push(c);
        std::thread::sleep(Duration::from_millis(8));
    }
    let sent_in = started.elapsed();
    let all = ex.wait_until(30 * SEC, |e| e.subscriptions().len() == 301);
    let took = started.elapsed();
    eprintln!(
        "{market}: 300 new series over {sent_in:?}: subscribed upstream after {took:?}, {} violations, \
         {} control messages, worst second {} messages, {} connects",
        ex.violation_count(),
        ex.control_messages().len(),
        worst_second(&ex),
        ex.connect_count()
    );
    assert_eq!(ex.violation_count(), 0, "{:?}", ex.violations());
    assert!(worst_second(&ex) < limit, "a message of headroom in every second, pongs included");
    assert!(all, "all 300 subscribed: {}", ex.subscriptions().len());
    // `took` is reported above, not bounded here (no wall-clock bound in a
    // test): tests/exchange_pacing.rs checks the 10 s in engine time.
    drop(clients);
}

#[test]
fn a_burst_of_300_new_series_is_subscribed_within_10_s_without_violation_spot() {
    burst_of_new_series("spot", FakeOptions::spot());
}

#[test]
fn a_burst_of_300_new_series_is_subscribed_within_10_s_without_violation_usdm() {
    burst_of_new_series("futures", FakeOptions::usdm());
}

/// A small deterministic generator for the churn schedule.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn client_churn_over_200_symbols_causes_no_violation() {
    let ex = FakeExchange::start(FakeOptions { ping_interval: Some(PING), arrival_jitter: JITTER, ..FakeOptions::spot() });
    // Jobs of series nobody watches end after 1 s: churn makes UNSUBSCRIBEs too.
    let live = start(&ex, &["--heal", "false", "--idle-ttl", "1", "--pin", "binance:spot:BTC/USDT:1m"]);
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m"], 10 * SEC));
    let mut rng = Lcg(7);
    let mut slots: Vec<Option<Client>> = (0..40).map(|_| None).collect();
    let (mut opened, mut subscriptions) = (0, 0);
    let end = Instant::now() + 15 * SEC;
    while Instant::now() < end {
        let slot = rng.below(slots.len() as u64) as usize;
        match slots[slot].take() {
            Some(c) => drop(c),
            None => {
                let mut c = live.ws();
                for _ in 0..1 + rng.below(3) {
                    let s = rng.below(200);
                    c.send(json!({"type":"subscribe","series_id":format!("binance:spot:C{s:03}/USDT:1m")}));
                    subscriptions += 1;
                }
                opened += 1;
                slots[slot] = Some(c);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(slots);
    // Everything settles: only the pin is left once the idle jobs end.
    let settled = ex.wait_until(20 * SEC, |e| e.subscriptions().len() == 1);
    let controls = ex.control_messages();
    let unsubscribes = controls.iter().filter(|m| m.text.contains("UNSUBSCRIBE")).count();
    eprintln!(
        "churn: {opened} clients, {subscriptions} subscriptions in 15 s: {} violations, {} connects, \
         {} control messages ({unsubscribes} UNSUBSCRIBE), worst second {} messages",
        ex.violation_count(),
        ex.connect_count(),
        controls.len(),
        worst_second(&ex)
    );
    assert_eq!(ex.violation_count(), 0, "{:?}", ex.violations());
    let all = ex.incoming();
    let t0 = all.first().map(|m| m.at);
    let seen: Vec<(u128, String)> = all
        .iter()
        .map(|m| (m.at.duration_since(t0.unwrap()).as_millis(), format!("{:?}:{}", m.kind, &m.text[..m.text.len().min(40)])))
        .collect();
    assert!(worst_second(&ex) < 5, "a message of headroom in every second, pongs included: {seen:?}");
    assert_eq!(ex.connect_count(), 1, "never disconnected");
    assert!(unsubscribes > 0, "the churn made UNSUBSCRIBEs");
    assert!(settled, "upstream follows the wanted set: {:?}", ex.subscriptions());
}

#[test]
fn a_frozen_stream_is_detected_logged_counted_and_resubscribed() {
    let ex = FakeExchange::start(FakeOptions { ping_interval: Some(SEC), ..FakeOptions::spot() });
    let mut live = start(
        &ex,
        &["--heal", "false", "--stream-stall-s", "2", "--pin", "binance:spot:BTC/USDT:1m", "--pin", "binance:spot:ETH/USDT:1m"],
    );
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m", "ethusdt@kline_1m"], 10 * SEC));
    ex.start_cadence(&["btcusdt@kline_1m", "ethusdt@kline_1m"], Duration::from_millis(300));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m"}));
    assert!(!c.until(5 * SEC, |f| f["type"] == "candle_forming").is_empty());
    std::thread::sleep(3 * SEC); // frames flowing: no stall
    live.drain_logs();
    assert!(!live.seen_logs.iter().any(|l| l.contains("stream_stalled")), "no stall while frames flow");

    ex.freeze_stream("btcusdt@kline_1m");
    let frozen_at = Instant::now();
    let controls_before = ex.control_messages().len();
    let line = live.wait_log("stream_stalled", 20 * SEC).expect("stream_stalled logged");
    let detected = frozen_at.elapsed();
    assert!(line.contains("stream=btcusdt@kline_1m"), "{line}");
    assert!(ex.wait_until(10 * SEC, |e| !e.is_frozen("btcusdt@kline_1m")), "resubscribed (which thaws it)");
    let resubscribed = frozen_at.elapsed();
    let after: Vec<String> = ex.control_messages()[controls_before..].iter().map(|m| m.text.clone()).collect();
    assert!(after.iter().any(|t| t.contains("UNSUBSCRIBE") && t.contains("btcusdt@kline_1m")), "{after:?}");
    assert!(after.iter().any(|t| t.contains("\"SUBSCRIBE\"") && t.contains("btcusdt@kline_1m")), "{after:?}");
    assert!(!after.iter().any(|t| t.contains("ethusdt")), "the healthy stream is left alone: {after:?}");
    // Frames flow to the client again.
    let _ = c.until(SEC, |_| false);
    assert!(!c.until(5 * SEC, |f| f["type"] == "candle_forming").is_empty(), "frames again");
    let stalls = live.metric("klinegate_stream_stalls_total");
    eprintln!("frozen stream (--stream-stall-s 2): stream_stalled after {detected:?}, resubscribed after {resubscribed:?}, stalls_total={stalls}");
    assert!(stalls >= 1.0);
    assert_eq!(ex.connect_count(), 1, "the connection was kept");
    assert_eq!(ex.violation_count(), 0, "{:?}", ex.violations());
}

#[test]
fn a_close_that_never_arrives_is_fetched_once_at_close_plus_grace() {
    // The candle must close during the test: wait for a minute with at least 8 s left.
    if wall_ms() % MIN_MS > 52_000 {
        std::thread::sleep(Duration::from_millis((MIN_MS - wall_ms() % MIN_MS) as u64 + 100));
    }
    let m = wall_ms() / MIN_MS * MIN_MS;
    let ex = FakeExchange::start(FakeOptions { ping_interval: Some(SEC), ..FakeOptions::spot() });
    ex.fill_history(SPOT, "BTCUSDT", "1m", m - 30 * MIN_MS, m + 2 * MIN_MS, |t| 100.0 + ((t / MIN_MS) % 50) as f64);
    let live = start(
        &ex,
        &["--pin", "binance:spot:BTC/USDT:1m", "--heal-first-visit-candles", "20", "--late-close-ms", "500", "--stream-stall-s", "600"],
    );
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m"], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","since":(m - 10 * MIN_MS) / 1000}));
    let first = c.until(5 * SEC, |f| closed_times(std::slice::from_ref(f)).contains(&((m - MIN_MS) / 1000)));
    assert!(closed_times(&first).contains(&((m - MIN_MS) / 1000)), "history up to the previous minute: {first:?}");
    // Candle m forms; then the stream says nothing more: no x:true, no newer candle.
    assert_eq!(ex.push_history_candle(SPOT, "btcusdt@kline_1m", m, false), 1);
    let close_at = m + MIN_MS;
    let wait = (close_at - wall_ms()).max(0) as u64 + 30_000;
    let got = c.until(Duration::from_millis(wait), |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == m / 1000);
    let arrived = wall_ms();
    let times = closed_times(&got);
    assert!(times.contains(&(m / 1000)), "the close reached the client: {got:?}");
    let more = c.until(2 * SEC, |_| false);
    let copies = times.iter().chain(closed_times(&more).iter()).filter(|t| **t == m / 1000).count();
    let fetches = ex.rest_requests_to("/api/v3/klines");
    let fetched = fetches.iter().filter(|r| r.param("startTime") == Some(m.to_string().as_str())).count();
    eprintln!(
        "late close: delivered {} ms after the candle's close (grace 500 ms), {copies} copy, {fetched} REST fetch",
        arrived - close_at
    );
    assert_eq!(copies, 1, "exactly once: {got:?} {more:?}");
    assert_eq!(fetched, 1, "{fetches:?}");
    assert_eq!(ex.violation_count(), 0);
}
