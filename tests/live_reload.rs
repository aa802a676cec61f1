//! `SIGHUP` against the real binary (#15 §3): after the `--config` file is
//! edited, a pin added starts its job (its stream is subscribed at the fake
//! exchange and the job shows pinned), a pin removed becomes on-demand and
//! is reaped after the idle TTL (its stream unsubscribed), and a bad file
//! keeps the running settings and logs exactly one line saying why.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::Value;
use std::time::Duration;
use support::live::{signal, Live};

const BTC: &str = "binance:spot:BTC/USDT:1m";
const ETH: &str = "binance:spot:ETH/USDT:1m";
const XRP: &str = "binance:spot:XRP/USDT:1m";
const SEC: Duration = Duration::from_secs(1);

fn job<'a>(state: &'a Value, series: &str) -> Option<&'a Value> {
    state["jobs"].as_array()?.iter().find(|j| j["series_id"] == series)
}

fn config(pins: &[&str]) -> String {
    let list: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
    format!("pin = [{}]\nidle_ttl = 2\nderived = \"\"\nmax_connections = 500\n", list.join(", "))
}

#[test]
fn sighup_applies_pin_changes_and_a_bad_file_keeps_the_running_settings() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("klinegate.toml");
    std::fs::write(&file, config(&[BTC, ETH])).unwrap();
    let url = ex.ws_url();
    let file_arg = file.display().to_string();
    let mut live = Live::start_in(dir, &["--spot-ws-url", &url, "--futures-ws-url", &url, "--config", &file_arg]);
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m", "ethusdt@kline_1m"], 10 * SEC), "{:?}", ex.subscriptions());

    // Edit: ETH out, XRP in.
    std::fs::write(&file, config(&[BTC, XRP])).unwrap();
    signal(live.child.id(), "HUP");
    let line = live.wait_log("config_reloaded", 10 * SEC).expect("config_reloaded logged");
    assert!(line.contains(&format!("pins_added=\"{XRP}\"")), "{line}");
    assert!(line.contains(&format!("pins_removed=\"{ETH}\"")), "{line}");
    assert!(ex.wait_for_subscriptions(&["xrpusdt@kline_1m"], 10 * SEC), "the added pin's stream: {:?}", ex.subscriptions());
    let state = live.get_json("/api/market/debug/ingest_state");
    assert_eq!(job(&state, XRP).map(|j| j["pinned"].clone()), Some(Value::Bool(true)), "{state}");
    assert_eq!(state["whitelist_series_ids"], serde_json::json!([BTC, XRP]));
    match job(&state, ETH) {
        // Not reaped yet: on-demand now, idle since the reload.
        Some(j) => assert_eq!((j["pinned"].clone(), j["refcount"].clone()), (Value::Bool(false), Value::from(0)), "{state}"),
        None => {} // already reaped (a slow machine took more than the TTL)
    }
    // The reaper removes it after the idle TTL (2 s), and its stream goes.
    let reaped = ex.wait_until(15 * SEC, |e| !e.subscriptions().iter().any(|s| s == "ethusdt@kline_1m"));
    assert!(reaped, "the removed pin's stream is unsubscribed after the TTL: {:?}", ex.subscriptions());
    let state = live.get_json("/api/market/debug/ingest_state");
    assert!(job(&state, ETH).is_none(), "the removed pin's job is reaped: {state}");
    assert!(job(&state, BTC).is_some_and(|j| j["pinned"] == true));
    let (_, health) = live.get("/health");
    assert!(health.contains(XRP) || !health.contains(ETH), "{health}");

    // A bad file: the running settings stay, one line says why.
    std::fs::write(&file, "pin = [\"binance:spot:BTC/USDT:1m\"\nidle_ttl = 2\n").unwrap();
    live.drain_logs();
    let before = live.seen_logs.len();
    signal(live.child.id(), "HUP");
    let line = live.wait_log("config_reload_failed", 10 * SEC).expect("config_reload_failed logged");
    assert!(line.contains("klinegate.toml"), "the line names the file: {line}");
    std::thread::sleep(SEC / 2);
    live.drain_logs();
    let reload_lines: Vec<&String> = live.seen_logs[before..].iter().filter(|l| l.contains("config_reload")).collect();
    assert_eq!(reload_lines.len(), 1, "exactly one line: {reload_lines:?}");
    let state = live.get_json("/api/market/debug/ingest_state");
    assert_eq!(state["whitelist_series_ids"], serde_json::json!([BTC, XRP]), "kept: {state}");
    assert!(job(&state, XRP).is_some_and(|j| j["pinned"] == true));
    assert!(ex.subscriptions().iter().any(|s| s == "xrpusdt@kline_1m"));

    // A valid value of the wrong kind is a bad file too (nothing applied).
    std::fs::write(&file, config(&[BTC]).replace("idle_ttl = 2", "idle_ttl = \"soon\"")).unwrap();
    signal(live.child.id(), "HUP");
    let line = live.wait_log("idle-ttl", 10 * SEC).expect("second config_reload_failed");
    assert!(line.contains("config_reload_failed"), "{line}");
    let state = live.get_json("/api/market/debug/ingest_state");
    assert!(job(&state, XRP).is_some_and(|j| j["pinned"] == true), "kept: {state}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
