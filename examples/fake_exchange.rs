//! The fake Binance exchange of the integration tests
//! (`tests/support/fake_exchange.rs`, reused as is) as a standalone process on
//! loopback, for scripts that run the real binary outside `cargo test`
//! (`.ci/live-checks.sh`). It prints `port=PORT` on its first stdout line
//! (streams at `ws://127.0.0.1:PORT/stream`, REST at `http://127.0.0.1:PORT`),
//! serves a day of 1m history and a 1 s forming cadence for every `SYMBOL`
//! given (e.g. `btcusdt`), and runs until it is killed (SIGTERM). It never
//! binds anything but loopback.
//!
//! `cargo run --example fake_exchange -- btcusdt ethusdt`

#[path = "../tests/support/fake_exchange.rs"]
#[allow(dead_code, unused_imports)]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use std::io::Write;
use std::time::Duration;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn main() {
    let symbols: Vec<String> = std::env::args().skip(1).map(|s| s.to_ascii_lowercase()).collect();
    let ex = FakeExchange::start(FakeOptions::spot());
    let now = ex.now_ms();
    let mut streams = Vec::new();
    for symbol in &symbols {
        let upper = symbol.to_ascii_uppercase();
        for market in ["spot", "futures"] {
            ex.fill_history(market, &upper, "1m", now - DAY_MS, now - 60_000, |t| 100.0 + ((t / 60_000) % 50) as f64);
        }
        streams.push(format!("{symbol}@kline_1m"));
    }
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    if !names.is_empty() {
        ex.start_cadence(&names, Duration::from_secs(1));
    }
    println!("port={}", ex.port());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
