//! `klinegate run --io-uring` (issue #14 §2) against the fake exchange: 50
//! clients subscribed to one series get every closed candle, in order, while
//! forming updates stream too (the fan-out's first client is written directly,
//! the rest through io_uring sends); a stalled client is still closed as a slow
//! consumer while the others are served. Also: the default run writes with
//! epoll and says so in /metrics; on a kernel reported as 2.6 (`setarch --uname-2.6`)
//! `--io-uring` logs one `io_uring_unavailable` line and serves with epoll. Where io_uring is unavailable (old kernel,
//! `kernel.io_uring_disabled`, seccomp) the test prints a SKIP line and passes.
//! `LIVE_IO_URING_EPOLL=1` runs the same fan-out test with epoll writes (a comparison).

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::live::{stalled_client, Client, Live};

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);
const CLIENTS: usize = 50;

fn minute_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now / 60 - 10) * 60_000
}

/// `"candle_time":N` of a frame's text.
fn candle_time(text: &str) -> Option<i64> {
    let rest = &text[text.find("\"candle_time\":")? + 14..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

#[test]
fn io_uring_fan_out_delivers_every_close_in_order_and_still_closes_a_slow_consumer() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let writer = if std::env::var("LIVE_IO_URING_EPOLL").is_ok() { "--io-uring=false" } else { "--io-uring" };
    let mut live = Live::start(&[
        "--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "",
        "--forming-interval-ms", "0", "--client-max-backlog-bytes", "1048576", writer,
    ]);
    let line = if writer == "--io-uring" {
        live.wait_log("io_uring", 10 * SEC).expect("a client_writer line at start")
    } else {
        "client_writer kind=io_uring (epoll comparison run)".to_string()
    };
    if line.contains("io_uring_unavailable") {
        eprintln!("SKIP: io_uring unavailable here, klinegate fell back to epoll writes: {line}");
        let (_, metrics) = live.get("/metrics");
        assert!(metrics.contains("klinegate_client_writer{kind=\"epoll\"} 1"), "{metrics}");
        assert_eq!(live.terminate(10 * SEC), Some(0));
        return;
    }
    assert!(line.contains("client_writer kind=io_uring"), "{line}");
    let (_, metrics) = live.get("/metrics");
    assert!(writer != "--io-uring" || metrics.contains("klinegate_client_writer{kind=\"io_uring\"} 1"), "{metrics}");
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));

    let _stalled = stalled_client(live.addr, S1);
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| live.ws()).collect();
    for c in &mut clients {
        c.send(json!({"type":"subscribe","series_id":S1}));
    }
    std::thread::sleep(Duration::from_millis(500));

    // Closes (and forming updates) are pushed in chunks until the stalled
    // client's socket buffers and 1 MiB backlog overflow and it is closed;
    // then the readers are told the last close to wait for.
    const MAX_CLOSES: i64 = 60_000;
    let t0 = minute_ms() - (MAX_CLOSES + 10) * 60_000;
    let last = Arc::new(AtomicI64::new(i64::MAX));
    // Each client reads in its own thread, as a real one does; the wait is a bound.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let last = last.clone();
            std::thread::spawn(move || {
                let end = Instant::now() + 240 * SEC;
                let (mut closes, mut forming) = (Vec::new(), 0usize);
                while Instant::now() < end {
                    if closes.last().is_some_and(|t| *t >= last.load(Ordering::SeqCst)) {
                        break;
                    }
                    // Raw text, not parsed JSON: 50 debug-build readers share two cores.
                    let text = match c.ws.read() {
                        Ok(tungstenite::Message::Text(t)) => t,
                        Ok(_) => continue,
                        Err(tungstenite::Error::Io(e))
                            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                        Err(_) => break,
                    };
                    match candle_time(text.as_str()) {
                        Some(t) if text.as_str().contains("\"candle_closed\"") => closes.push(t),
                        _ => forming += 1,
                    }
                }
                (closes, forming)
            })
        })
        .collect();
    let started = Instant::now();
    let mut n = 0;
    while n < MAX_CLOSES {
        for _ in 0..1000 {
            let t = t0 + n * 60_000;
            if n % 10 == 0 {
                ex.push_kline(STREAM, t, 1.0, 2.0, 0.5, 1.2, 0.5, false);
            }
            ex.push_kline(STREAM, t, 1.0, 2.0, 0.5, 1.5, 1.0, true);
            n += 1;
            if n % 100 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if live.wait_log("slow_consumer", Duration::from_millis(50)).is_some() {
            break;
        }
    }
    last.store((t0 + (n - 1) * 60_000) / 1000, Ordering::SeqCst);
    let expected: Vec<i64> = (0..n).map(|k| (t0 + k * 60_000) / 1000).collect();
    let mut forming_total = 0;
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    live.drain_logs();
    let closed: Vec<&String> = live.seen_logs.iter().filter(|l| l.contains("client_close")).collect();
    for (i, (closes, forming)) in results.into_iter().enumerate() {
        forming_total += forming;
        assert_eq!(closes.len(), expected.len(), "client {i} got every close (first wrong at {:?}); closes logged: {closed:?}",
            closes.iter().zip(&expected).position(|(a, b)| a != b));
        assert_eq!(closes, expected, "client {i} got the closes in order");
    }
    eprintln!("{CLIENTS} clients received {n} closes each (and {forming_total} other frames) in {:?}", started.elapsed());

    let line = live.wait_log("slow_consumer", 20 * SEC).expect("the stalled client was closed");
    assert!(line.contains("client=1 "), "only the stalled client is closed: {line}");
    let others_closed = live.seen_logs.iter().filter(|l| l.contains("client_close client=") && !l.contains("client=1 ")).count();
    assert_eq!(others_closed, 0, "no reading client is closed");
    let sends = live.metric("klinegate_ws_uring_sends_total");
    assert!(sends > (n as f64), "the fan-out went through io_uring: {sends} sends");
    eprintln!("io_uring sends: {sends}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn the_default_writer_is_epoll() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let mut live = Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", ""]);
    let (_, metrics) = live.get("/metrics");
    assert!(metrics.contains("klinegate_client_writer{kind=\"epoll\"} 1"), "{metrics}");
    assert_eq!(live.metric("klinegate_ws_uring_sends_total"), 0.0);
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

/// `--io-uring` on a kernel that reports itself older than 5.6 (`setarch
/// --uname-2.6`): one `io_uring_unavailable` line, epoll writes, clients served.
#[test]
fn io_uring_on_an_old_kernel_falls_back_to_epoll_with_one_line() {
    if std::process::Command::new("setarch").args(["x86_64", "--uname-2.6", "true"]).status().map_or(true, |s| !s.success()) {
        eprintln!("SKIP: setarch --uname-2.6 unavailable here");
        return;
    }
    let ex = FakeExchange::start(FakeOptions::spot());
    let url = ex.ws_url();
    let mut live = Live::start_with(
        tempfile::tempdir().unwrap(),
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--pin", S1, "--derived", "", "--io-uring"],
        |cmd| {
            let mut wrapped = std::process::Command::new("setarch");
            wrapped.args(["x86_64", "--uname-2.6"]).arg(cmd.get_program()).args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            wrapped.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
            *cmd = wrapped;
        },
    );
    let line = live.wait_log("io_uring_unavailable", 10 * SEC).expect("the fallback is logged");
    assert!(line.contains("reason=") && line.contains("older than 5.6"), "{line}");
    assert_eq!(live.seen_logs.iter().filter(|l| l.contains("io_uring")).count(), 1, "one line");
    let (_, metrics) = live.get("/metrics");
    assert!(metrics.contains("klinegate_client_writer{kind=\"epoll\"} 1"), "{metrics}");
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut c = live.ws();
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(300));
    let t = minute_ms();
    ex.push_kline(STREAM, t, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    let got = c.until(10 * SEC, |f| f["type"] == "candle_closed");
    assert!(got.iter().any(|f| f["type"] == "candle_closed"), "served with epoll writes: {got:?}");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
