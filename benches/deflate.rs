//! permessage-deflate (issue #14 §3): what compression costs and saves.
//!
//! 1. In process: the compressed size and the compression time of frames of
//!    each size (the threshold below which compressing does not pay), a
//!    catch-up page of 500 candles, and the cost of serving a frame from the
//!    shared cache.
//! 2. Over loopback, the real binary fed by the fake exchange: N clients
//!    subscribed to one series, the same forming updates sent to clients that
//!    offered permessage-deflate and, in alternated runs, to clients that did
//!    not. Per run: bytes on the wire per delivered update (from
//!    `ws_bytes_out_total`, which counts bytes as sent), server CPU per
//!    delivered message (user + system clock ticks over the measured updates /
//!    (updates × clients)), the last client's latency (from the push to the
//!    receiver thread reading it: user-space read times, so it includes the
//!    receiver's own pace; it inflates each distinct compressed frame once),
//!    and memory per client (RSS with the clients minus
//!    RSS before them).
//!
//! `cargo bench --bench deflate`; `KLINEGATE_BENCH_QUICK=1` for a smoke run
//! (200 clients, a few updates); `KLINEGATE_BENCH_SIZES=1000` sets the client
//! counts. Loopback only; every wait is bounded.

#[path = "../tests/support/fake_exchange.rs"]
mod fake_exchange;
#[path = "../tests/support/live.rs"]
mod live;
mod support;

use bytes::Bytes;
use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::shell::conn::deflate_cache::{DeflateCache, LEVEL};
use klinegate::wire::ws::deflate::{inflate, Compressor};
use klinegate::wire::ws::frame::parse_head;
use live::Live;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const STREAM: &str = "btcusdt@kline_1m";
const WARMUPS: i64 = 40;

fn main() {
    let quick = quick();
    println!("permessage-deflate bench ({} mode)", if quick { "quick" } else { "full" });
    in_process(quick);
    let default_sizes: &[usize] = if quick { &[200] } else { &[1_000] };
    let sizes: Vec<usize> = std::env::var("KLINEGATE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default_sizes.to_vec());
    let updates = if quick { 10 } else { 60 };
    let rounds = if quick { 1 } else { 3 };
    for n in sizes {
        let (mut plain, mut deflate) = (Run::default(), Run::default());
        for _ in 0..rounds {
            plain.absorb(run(n, updates, false));
            deflate.absorb(run(n, updates, true));
        }
        println!("loopback, {n} clients, {} updates per mode ({rounds} alternated rounds):", updates * rounds);
        for (name, r) in [("plain", &plain), ("deflate", &deflate)] {
            println!(
                "  {name:<8} bytes/update/client {:>6.1} B | CPU {:>5.2} µs per delivered message | last client p50 {:>7.3} ms p99 {:>7.3} ms | memory {:>5.2} KiB per client | {} missed",
                r.bytes as f64 / r.delivered as f64,
                r.cpu_s * 1e6 / r.delivered as f64,
                percentile(&r.last_ms, 50.0),
                percentile(&r.last_ms, 99.0),
                r.rss_per_client / rounds as f64 / 1024.0,
                r.missed
            );
        }
        println!(
            "  -> deflate/plain: bytes {:.3}, CPU {:.3}, last p50 {:.3}",
            (deflate.bytes as f64 / deflate.delivered as f64) / (plain.bytes as f64 / plain.delivered as f64),
            (deflate.cpu_s / deflate.delivered as f64) / (plain.cpu_s / plain.delivered as f64),
            percentile(&deflate.last_ms, 50.0) / percentile(&plain.last_ms, 50.0)
        );
    }
}

// ------------------------------------------------------------------ in process

fn candle_json(t: i64, k: usize) -> String {
    let c = 20_000.0 + (k % 97) as f64 * 0.37;
    format!(
        r#"{{"candle_time":{t},"open":{:?},"high":{:?},"low":{:?},"close":{c:?},"volume":{:?}}}"#,
        c - 0.5,
        c + 1.25,
        c - 2.0,
        1.5 + (k % 13) as f64 * 0.125
    )
}

fn in_process(quick: bool) {
    let reps = if quick { 2_000 } else { 20_000 };
    let mut c = Compressor::new(LEVEL);
    println!("compressed size and time by frame size (level {LEVEL}, no context takeover):");
    let forming = String::from_utf8(forming_payload(current_minute_ms(), 1)).unwrap_or_default();
    let mut samples: Vec<(String, String)> = vec![
        ("64 B error".into(), r#"{"type":"error","code":"rate_limited","message":"too many"}"#.into()),
        ("96 B gap".into(), format!(r#"{{"type":"gap","series_id":"{SERIES}","expected_next_time":1700000040}}"#)),
        ("forming update".into(), forming),
    ];
    for n in [2usize, 20, 500] {
        let candles: Vec<String> = (0..n).map(|k| candle_json(1_700_000_040 + 60 * k as i64, k)).collect();
        samples.push((
            format!("batch of {n} candles"),
            format!(r#"{{"type":"candles_batch","series_id":"{SERIES}","candles":[{}]}}"#, candles.join(",")),
        ));
    }
    for (name, text) in &samples {
        let mut out = Vec::new();
        let t = Instant::now();
        let iters = (reps * 200 / text.len().max(200)).max(20);
        for _ in 0..iters {
            out.clear();
            c.compress(text.as_bytes(), &mut out);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        assert_eq!(inflate(&out, 1 << 24).ok().as_deref(), Some(text.as_bytes()));
        println!(
            "  {name:<22} {:>7} B -> {:>6} B (ratio {:.2}, {:+} B) in {us:>8.2} µs",
            text.len(),
            out.len(),
            out.len() as f64 / text.len() as f64,
            out.len() as i64 - text.len() as i64,
        );
    }
    // Serving a shared frame from the cache: the cost per client after the first.
    let mut cache = DeflateCache::default();
    let frame = Bytes::from(forming_payload(current_minute_ms(), 2));
    let holders: Vec<Bytes> = (0..4).map(|_| frame.clone()).collect();
    let t = Instant::now();
    let mut total = 0usize;
    for i in 0..reps * 10 {
        total += cache.compressed(&holders[i % 4], usize::MAX).map_or(0, <[u8]>::len);
    }
    println!(
        "  cache hit for a shared forming update: {:.3} µs per client ({} B served)",
        t.elapsed().as_secs_f64() * 1e6 / (reps * 10) as f64,
        total / (reps * 10)
    );
}

// ------------------------------------------------------------------ loopback

#[derive(Default)]
struct Run {
    last_ms: Vec<f64>,
    cpu_s: f64,
    bytes: u64,
    delivered: u64,
    missed: usize,
    rss_per_client: f64,
}

impl Run {
    fn absorb(&mut self, o: Run) {
        self.last_ms.extend(o.last_ms);
        self.cpu_s += o.cpu_s;
        self.bytes += o.bytes;
        self.delivered += o.delivered;
        self.missed += o.missed;
        self.rss_per_client += o.rss_per_client;
    }
}

/// Upgrades with or without the browsers' offer; returns the socket.
fn connect(addr: SocketAddr, deflate: bool) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    write!(
        s,
        "GET /ws/market HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") || head.contains("permessage-deflate") != deflate {
        return Err(io::Error::other(format!("unexpected answer: {head}")));
    }
    send_all(&mut s, &subscribe_frame(SERIES))?;
    Ok(s)
}

fn run(n: usize, updates: usize, deflate: bool) -> Run {
    let ex = FakeExchange::start(FakeOptions::spot());
    let args = server_args(&ex.ws_url());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start(&arg_refs);
    assert!(ex.wait_for_subscriptions(&[STREAM], Duration::from_secs(10)), "klinegate subscribed upstream");
    let pid = live.child.id();
    let rss_before = settled_rss(pid, Duration::from_secs(2));
    let socks: Vec<TcpStream> = (0..n).map(|_| connect(live.addr, deflate).expect("client")).collect();
    let open_ms = current_minute_ms();
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop.clone();
        thread::spawn(move || receive(socks, tx, &stop))
    };
    let push = |seq: i64| {
        let (o, h, l, c, v) = forming_prices(seq);
        ex.push_kline(STREAM, open_ms, o, h, l, c, v, false);
    };
    let mut seq = 0;
    let mut ready = false;
    while seq < WARMUPS && !ready {
        push(seq);
        ready = wait_done(&rx, seq, Duration::from_millis(1000)).is_some();
        seq += 1;
    }
    assert!(ready, "every client got a warm-up update");
    let rss_after = settled_rss(pid, Duration::from_secs(2));
    let bytes_before = live.metric("klinegate_ws_bytes_out_total");
    let ticks_before = cpu_ticks(pid);
    let mut r = Run { rss_per_client: rss_after.saturating_sub(rss_before) as f64 / n as f64, ..Run::default() };
    for k in 0..updates as i64 {
        thread::sleep(Duration::from_millis(2));
        let s = WARMUPS + k;
        let pushed = Instant::now();
        push(s);
        match wait_done(&rx, s, Duration::from_secs(5)) {
            Some(at) => {
                r.last_ms.push(at.saturating_duration_since(pushed).as_secs_f64() * 1e3);
                r.delivered += n as u64;
            }
            None => r.missed += 1,
        }
    }
    if let (Some(a), Some(b)) = (ticks_before, cpu_ticks(pid)) {
        r.cpu_s = b.saturating_sub(a) as f64 / clock_ticks_per_sec();
    }
    // The /metrics request itself is not a client frame: ws_bytes_out counts only WebSocket bytes.
    r.bytes = (live.metric("klinegate_ws_bytes_out_total") - bytes_before).max(0.0) as u64;
    if deflate {
        println!(
            "  deflate run, {n} clients: {} frames compressed, {} sent compressed, {} cache hits, {} B saved",
            live.metric("klinegate_ws_deflate_frames_compressed_total"),
            live.metric("klinegate_ws_deflate_frames_sent_total"),
            live.metric("klinegate_ws_deflate_cache_hits_total"),
            live.metric("klinegate_ws_deflate_bytes_saved_total"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    if live.terminate(Duration::from_secs(5)).is_none() {
        live.kill9();
    }
    r
}

/// Every client holds update `seq`: when the last one was read.
fn wait_done(rx: &Receiver<(i64, Instant)>, seq: i64, timeout: Duration) -> Option<Instant> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok((s, at)) if s == seq => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

struct Rx {
    stream: mio::net::TcpStream,
    partial: Vec<u8>,
    seen: i64,
}

/// One thread reads every client, inflating compressed frames, and reports
/// when the last client holds each update.
fn receive(socks: Vec<TcpStream>, tx: Sender<(i64, Instant)>, stop: &AtomicBool) {
    let n = socks.len();
    let mut poll = Poll::new().expect("poll");
    let mut clients: Vec<Rx> = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let mut stream = mio::net::TcpStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE).expect("register");
        clients.push(Rx { stream, partial: Vec::new(), seen: -1 });
    }
    let mut holders: Vec<usize> = vec![0; (WARMUPS as usize) + 1000];
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 64 << 10];
    let mut last_compressed: (Vec<u8>, Option<i64>) = (Vec::new(), None);
    while !stop.load(Ordering::Relaxed) {
        if poll.poll(&mut events, Some(Duration::from_millis(20))).is_err() {
            continue;
        }
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(got) => c.partial.extend_from_slice(&buf[..got]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            let mut at = 0;
            let mut newest = None;
            while let Ok(Some(h)) = parse_head(&c.partial[at..]) {
                let end = at + h.head_len + h.len as usize;
                if end > c.partial.len() {
                    break;
                }
                let payload = &c.partial[at + h.head_len..end];
                let seq = if !h.rsv1 {
                    forming_seq(payload)
                } else if payload == &last_compressed.0[..] {
                    // Every client gets the same compressed bytes: inflate once
                    // (a fresh inflater per frame would make this thread the bottleneck).
                    last_compressed.1
                } else {
                    let seq = inflate(payload, 1 << 20).ok().and_then(|p| forming_seq(&p));
                    last_compressed = (payload.to_vec(), seq);
                    seq
                };
                newest = seq.or(newest);
                at = end;
            }
            c.partial.drain(..at);
            if let Some(s) = newest.filter(|s| *s > c.seen) {
                for k in (c.seen + 1).max(0)..=s {
                    if let Some(h) = holders.get_mut(k as usize) {
                        *h += 1;
                        if *h == n {
                            let _ = tx.send((k, now));
                        }
                    }
                }
                c.seen = s;
            }
        }
    }
}
