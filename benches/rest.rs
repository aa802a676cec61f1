//! REST healing pages per second against the fake exchange (issue #14 §5): the
//! shell's own REST client (`RestConn`, driven by a `mio::Poll` as the event
//! loop drives it) fetching kline pages back to back, one at a time, with a new
//! TCP (and TLS) connection per page — what every request paid before keep-alive
//! — beside the same pages over kept-alive connections (`RestConn::start_pooled`
//! and `into_idle`, as the loop does), plain `http://` and `https://`, in the same
//! run. Pages of 1,000 candles (a heal page) and of 10 (a late-close fetch).
//!
//! `cargo bench --bench rest`; `KLINEGATE_BENCH_QUICK=1` for a smoke run.
//! Never reaches beyond 127.0.0.1; every wait is bounded.

#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
mod support;

use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::shell::conn::rest::{RestConn, RestOutcome, RestPool};
use klinegate::shell::conn::tls_client::TlsSetup;
use mio::{Events, Poll, Token};
use std::time::{Duration, Instant};

const TOKEN: Token = Token(1);
/// One page may take this long before the bench gives up.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// 1m history from 2023-11-14 22:13 UTC, 200,000 candles.
const FROM_MS: i64 = 1_700_000_000_000 / 60_000 * 60_000;
const HISTORY: i64 = 200_000;

fn main() {
    let quick = support::quick();
    let pages = if quick { 60 } else { 600 };
    println!("REST pages back to back against the fake exchange ({} mode), {pages} pages per row", if quick { "quick" } else { "full" });
    println!();
    println!("| transport | candles per page | new connection per page, pages/s | kept-alive, pages/s | ratio | connections (new / kept-alive) |");
    println!("|---|---|---|---|---|---|");
    for tls in [false, true] {
        let opts = if tls { FakeOptions::spot().with_tls() } else { FakeOptions::spot() };
        let fx = FakeExchange::start(opts);
        fx.fill_history("spot", "BTCUSDT", "1m", FROM_MS, FROM_MS + HISTORY * 60_000, |t| 30_000.0 + (t / 60_000 % 997) as f64);
        let dir = tempfile::tempdir().expect("temp dir");
        let setup = TlsSetup::new(fx.write_ca_pem(dir.path()).as_deref()).expect("TLS setup");
        let base = fx.rest_base_url("spot");
        for limit in [1000, 10] {
            let mut row = Vec::new();
            for pooled in [false, true] {
                let before = fx.rest_connection_count();
                let rate = run(&fx, &base, &setup, pages, limit, pooled);
                row.push((rate, fx.rest_connection_count() - before));
            }
            let ((fresh, fresh_conns), (kept, kept_conns)) = (row[0], row[1]);
            let transport = if tls { "https (TLS 1.3)" } else { "http" };
            println!("| {transport} | {limit} | {fresh:.0} | {kept:.0} | {:.2}x | {fresh_conns} / {kept_conns} |", kept / fresh);
        }
    }
}

/// `pages` kline pages of `limit` candles, one after the other; pages per second.
fn run(fx: &FakeExchange, base: &str, tls: &TlsSetup, pages: usize, limit: usize, pooled: bool) -> f64 {
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(8);
    let mut pool = RestPool::default();
    let started = Instant::now();
    for page in 0..pages {
        if page % 100 == 0 {
            // The bench measures the client, not the fake's weight limit.
            fx.rest_reset_weights();
        }
        let start = FROM_MS + ((page * limit) as i64 % (HISTORY - limit as i64)) * 60_000;
        let end = start + (limit as i64 - 1) * 60_000;
        let path = format!("/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={start}&endTime={end}&limit={limit}");
        let conn = if pooled {
            RestConn::start_pooled(base, &path, tls, &mut pool, poll.registry(), TOKEN)
        } else {
            RestConn::start(base, &path, tls, poll.registry(), TOKEN)
        };
        let mut conn = conn.expect("request starts");
        let outcome = drive(&mut poll, &mut events, &mut conn);
        match &outcome {
            RestOutcome::Response { status: 200, body, .. } if body.starts_with("[[") => {}
            other => panic!("page {page}: {other:?}"),
        }
        let _ = conn.deregister(poll.registry());
        match conn.into_idle(Instant::now()) {
            Some(idle) if pooled => pool.put(idle),
            _ => {} // closed (dropped), as every request's connection was before keep-alive
        }
    }
    pages as f64 / started.elapsed().as_secs_f64()
}

/// Turns the poll until the request's outcome.
fn drive(poll: &mut Poll, events: &mut Events, conn: &mut RestConn) -> RestOutcome {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    // A reused connection may be able to write at once; the first call is free.
    let mut outcome = conn.on_event(true, true);
    loop {
        conn.reregister(poll.registry(), TOKEN).expect("reregister");
        if let Some(outcome) = outcome {
            return outcome;
        }
        assert!(Instant::now() < deadline, "no answer within {PAGE_TIMEOUT:?}: {conn:?}");
        poll.poll(events, Some(Duration::from_millis(100))).expect("poll");
        outcome = if events.iter().any(|e| e.token() == TOKEN) { conn.on_event(true, true) } else { None };
    }
}
