//! The real binary's exchange side against the fake exchange: many series
//! spread over connections within the exchange's limits, reconnect after a
//! drop, silence detection, make-before-break rotation with no lost frame,
//! ping/pong, TLS with a test CA, slow consumers, and start-up errors.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use support::live::{stalled_client, Live};

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

fn start(ex: &FakeExchange, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let mut args = vec!["--spot-ws-url", &url, "--futures-ws-url", &url];
    args.extend_from_slice(extra);
    Live::start(&args)
}

fn minute_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now / 60 - 10) * 60_000
}

#[test]
fn three_hundred_series_spread_over_connections_without_tripping_limits() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("binance:spot:S{i:03}/USDT:1m")).collect();
    let wl = dir.path().join("whitelist.json");
    std::fs::write(&wl, json!({ "series_ids": ids }).to_string()).unwrap();
    let url = ex.ws_url();
    let wl_arg = wl.display().to_string();
    let mut live = Live::start_in(
        dir,
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--whitelist", &wl_arg, "--derived", ""],
    );
    let ok = ex.wait_until(Duration::from_secs(20), |e| e.subscriptions().len() == 300);
    assert!(ok, "all 300 streams subscribed: {}", ex.subscriptions().len());
    let per_conn = ex.subscriptions_per_connection();
    assert_eq!(per_conn.len(), 2, "{per_conn:?}");
    assert!(per_conn.iter().all(|n| *n <= 200), "at most 200 streams per connection: {per_conn:?}");
    assert_eq!(ex.violation_count(), 0, "{:?}", ex.violations());
    for info in ex.connection_infos() {
        assert!(ex.max_messages_in_window(info.id, SEC) <= 4, "control messages paced");
    }
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn dropped_upstream_reconnects_with_backoff_and_resubscribes() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--pin", "binance:spot:ETH/USDT:1m", "--derived", ""]);
    assert!(ex.wait_for_subscriptions(&[STREAM, "ethusdt@kline_1m"], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(200));
    let dropped_at = Instant::now();
    ex.drop_all();
    let ok = ex.wait_until(10 * SEC, |e| e.connect_count() >= 2 && e.subscriptions().len() == 2);
    assert!(ok, "reconnected and resubscribed: {:?}", ex.subscriptions());
    let waited = dropped_at.elapsed();
    assert!(waited >= Duration::from_millis(900), "backoff before reconnecting: {waited:?}");
    // Data flows again on the new connection.
    let t = minute_ms();
    ex.push_kline(STREAM, t, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    let got = c.until(5 * SEC, |f| f["type"] == "candle_closed");
    assert_eq!(got.last().map(|f| f["candle"]["candle_time"].clone()), Some(json!(t / 1000)));
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn silent_upstream_is_replaced() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let _live = start(&ex, &["--pin", S1, "--derived", "", "--upstream-silence-s", "2"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    ex.set_silent(true);
    let ok = ex.wait_until(Duration::from_secs(10), |e| e.connect_count() >= 2);
    assert!(ok, "a silent connection is replaced");
}

#[test]
fn rotation_is_make_before_break_and_loses_no_frame() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--derived", "", "--upstream-rotate-s", "2"]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(200));
    // One close every 50 ms for 4 s: rotation happens in the middle.
    let t0 = minute_ms() - 200 * 60_000;
    let n = 80;
    for k in 0..n {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = (t0 + (n - 1) * 60_000) / 1000;
    let got = c.until(10 * SEC, |f| f["candle"]["candle_time"] == last);
    let closed: Vec<i64> =
        got.iter().filter(|f| f["type"] == "candle_closed").map(|f| f["candle"]["candle_time"].as_i64().unwrap()).collect();
    let want: Vec<i64> = (0..n).map(|k| (t0 + k * 60_000) / 1000).collect();
    assert_eq!(closed, want, "every close delivered once, in order");
    assert!(ex.connect_count() >= 2, "rotated at least once");
    assert!(!got.iter().any(|f| f["type"] == "gap"), "no gap");
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn server_pings_are_answered_with_the_same_payload() {
    let ex = FakeExchange::start(FakeOptions { ping_interval: Some(Duration::from_millis(300)), ..FakeOptions::spot() });
    let _live = start(&ex, &["--pin", S1, "--derived", ""]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let ok = ex.wait_until(5 * SEC, |e| e.pings().iter().filter(|p| p.pong_at.is_some()).count() >= 3);
    assert!(ok, "pongs: {:?}", ex.pings());
    assert_eq!(ex.unmatched_pongs(), 0);
}

#[test]
fn tls_exchange_with_a_test_ca() {
    let ex = FakeExchange::start(FakeOptions::spot().with_tls());
    let dir = tempfile::tempdir().unwrap();
    let ca = ex.write_ca_pem(dir.path()).expect("ca pem");
    let url = ex.ws_url();
    assert!(url.starts_with("wss://"));
    let ca_arg = ca.display().to_string();
    let _live = Live::start_in(
        dir,
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--extra-ca", &ca_arg, "--pin", S1, "--derived", ""],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC), "subscribed over TLS");
}

#[test]
fn stalled_client_is_closed_while_others_keep_receiving() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.journal.jsonl").display().to_string();
    let url = ex.ws_url();
    let mut live = Live::start_in(
        dir,
        &[
            "--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "",
            "--client-max-backlog-bytes", "1048576", "--record", &journal,
        ],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let _stalled = stalled_client(live.addr, S1);
    let mut healthy = live.ws();
    healthy.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(300));
    // ~10 MB of frames: more than the kernel's socket buffers absorb for the
    // stalled client, so its backlog builds up in the engine's bounded queue.
    let n: i64 = 60_000;
    let t0 = minute_ms() - (n + 10) * 60_000;
    let last = (t0 + (n - 1) * 60_000) / 1000;
    // The healthy client reads concurrently, as a real one does. The wait is a bound,
    // not a measure: a debug build on loaded shared cores needed ~45 s once.
    let reader = std::thread::spawn(move || {
        let got = healthy.until(120 * SEC, |f| f["candle"]["candle_time"] == last);
        got.iter().filter(|f| f["type"] == "candle_closed").count()
    });
    let started = Instant::now();
    for k in 0..n {
        ex.push_kline(STREAM, t0 + k * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0, true);
        if k % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let closed = reader.join().unwrap();
    assert_eq!(closed, n as usize, "the healthy client got every candle");
    eprintln!("healthy client received {n} closes in {:?}", started.elapsed());
    let line = live.wait_log("slow_consumer", 10 * SEC).expect("the stalled client was closed");
    assert!(line.contains("client=1 "), "only the stalled client is closed: {line}");
    assert!(!live.seen_logs.iter().any(|l| l.contains("client_close client=2 ")), "the healthy one is not");

    // The recording replays to the same story: the shell's writes (`client_writable`) are in it, so the
    // stalled client's backlog passes the limit at the same frame and it is closed.
    assert_eq!(live.terminate(10 * SEC), Some(0));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate")).args(["replay", &journal]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let closes: Vec<&serde_json::Value> = lines.iter().filter(|l| l["out"]["type"] == "client_close").collect();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!((closes[0]["out"]["client"].as_u64(), closes[0]["out"]["code"].as_u64()), (Some(1), Some(1008)));
    let healthy_closes = lines.iter().filter(|l| l["client"] == 2 && l["frame"]["type"] == "candle_closed").count();
    assert_eq!(healthy_closes, n as usize, "the healthy client's frames replay whole");
}

#[test]
fn invalid_configuration_stops_start_up_with_one_line_and_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
        .args(["run", "--max-ondemand-jobs", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--max-ondemand-jobs"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate")).args(["run", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--forming-interval-ms"));
}



#[test]
fn an_exchange_closing_with_1008_or_failing_tls_is_retried_while_clients_are_served() {
    // 1008 "Too many requests": reconnect with backoff, resubscribe.
    let ex = FakeExchange::start(FakeOptions::spot());
    let live = start(&ex, &["--pin", S1, "--derived", ""]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    ex.close_all(1008, "Too many requests");
    assert!(ex.wait_until(10 * SEC, |e| e.connect_count() >= 2 && e.subscriptions().len() == 1), "reconnected after 1008");
    assert_eq!(live.get("/health").0, 200);

    // An exchange whose certificate is not trusted: every handshake fails;
    // the server keeps retrying with backoff and keeps answering clients.
    let tls = FakeExchange::start(FakeOptions::spot().with_tls());
    let url = tls.ws_url();
    let live = Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", ""]);
    std::thread::sleep(3 * SEC);
    assert!(tls.tcp_accept_count() >= 2, "retried: {} attempts", tls.tcp_accept_count());
    // Up to 5 stream and history attempts, plus the two start-up exchangeInfo
    // fetches (the engine's symbol lists), which share the fake's port.
    assert!(tls.tcp_accept_count() <= 7, "with backoff, not a storm: {} attempts", tls.tcp_accept_count());
    let health = live.get_json("/health");
    assert_eq!(health["status"], "degraded", "{health}");
    let mut c = live.ws();
    c.send(json!({"type":"noop"}));
    assert_eq!(c.next(5 * SEC).unwrap()["message"], "unknown message type: noop", "clients still served");
}
