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

/// `klinegate run` without the test harness's `--log-level debug` flag (which
/// would beat the file), on a port picked beforehand (`server_started` is an
/// info line the file's level may hide).
fn spawn_with_file_log_level(args: &[&str]) -> Live {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let db = dir.path().join("klinegate.db");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klinegate"));
    cmd.arg("run").args(["--listen", &addr.to_string()]).arg("--db").arg(&db).args(args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("KLINEGATE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn klinegate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = std::time::Instant::now() + 20 * SEC;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < end, "klinegate did not listen on {addr}");
        std::thread::sleep(SEC / 20);
    }
    Live { child, addr, dir, logs, seen_logs: Vec::new() }
}

#[test]
fn sighup_changes_the_log_level() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("klinegate.toml");
    let body = |level: &str| format!("pin = [{BTC:?}]\nderived = \"\"\nheal = false\nlog_level = {level:?}\n");
    std::fs::write(&file, body("warn")).unwrap();
    let url = ex.ws_url();
    let file_arg = file.display().to_string();
    let mut live = spawn_with_file_log_level(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--config", &file_arg]);
    assert!(ex.wait_for_subscriptions(&["btcusdt@kline_1m"], 10 * SEC));
    let subscribe = |live: &Live, series: &str| {
        let mut c = live.ws();
        c.send(serde_json::json!({"type": "subscribe", "series_id": series}));
        std::thread::sleep(SEC / 2);
    };
    subscribe(&live, BTC);
    assert!(live.wait_log("market_ws_subscribe_handled", SEC).is_none(), "a debug line under warn: {:?}", live.seen_logs);
    assert!(live.seen_logs.iter().all(|l| !l.contains("server_started")), "info lines hidden under warn");

    std::fs::write(&file, body("debug")).unwrap();
    signal(live.child.id(), "HUP");
    let line = live.wait_log("config_reload ", 10 * SEC).expect("the reload is logged at the new level");
    assert!(line.contains("log_level=debug"), "{line}");
    subscribe(&live, BTC);
    assert!(live.wait_log("market_ws_subscribe_handled", 10 * SEC).is_some(), "debug lines after the reload");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
