//! Catch-up against the real binary (issue #12 point 1): a client that reads at
//! loopback speed and subscribes to many series with a full history each gets
//! every catch-up candle in order, then the live ones, and is never closed; the
//! recording of that run replays to the same client bytes.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use klinegate::model::Candle;
use klinegate::store::{SeriesBatch, SqliteStore, Store};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::live::{Client, Live};

const SEC: Duration = Duration::from_secs(1);
const HISTORY: i64 = 5000;
const LIVE: i64 = 3;
const SERIES: usize = 8;

fn series(i: usize) -> String {
    format!("binance:spot:CU{i}/USDT:1m")
}

fn stream(i: usize) -> String {
    format!("cu{i}usdt@kline_1m")
}

/// What one client saw: its frames, the close it got (code, reason, after how
/// long) and how many closed candles it had received by then.
struct Seen {
    frames: Vec<Value>,
    close: Option<(u16, String, Duration)>,
}

impl Seen {
    fn candles(&self) -> usize {
        support::closed_times(&self.frames).len()
    }
}

/// Reads as fast as the socket gives (loopback speed) until every series has
/// `want` closed candles, a close frame comes, or 60 s pass.
fn read_all(mut c: Client, subscribed: usize, want: usize) -> Seen {
    let started = Instant::now();
    let mut frames = Vec::new();
    let mut per_series: BTreeMap<String, usize> = BTreeMap::new();
    let end = started + 60 * SEC;
    while Instant::now() < end {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("frames are JSON");
                let n = support::closed_times(std::slice::from_ref(&v)).len();
                if let Some(s) = v["series_id"].as_str() {
                    *per_series.entry(s.to_string()).or_default() += n;
                }
                frames.push(v);
                if per_series.len() == subscribed && per_series.values().all(|n| *n >= want) {
                    break;
                }
            }
            Ok(tungstenite::Message::Close(f)) => {
                let (code, reason) = f.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                return Seen { frames, close: Some((code, reason, started.elapsed())) };
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                return Seen { frames, close: Some((0, format!("read error: {e}"), started.elapsed())) };
            }
        }
    }
    Seen { frames, close: None }
}

#[test]
fn reading_client_gets_every_catchup_candle_of_many_series_then_live_and_is_never_closed() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dir = tempfile::tempdir().unwrap();
    // History ends long before now: nothing is "ahead", and the live candles continue it.
    let now_min = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / 60;
    let h0 = (now_min - 2 * HISTORY) * 60;
    {
        let mut store = SqliteStore::open(&dir.path().join("klinegate.db")).unwrap();
        let batches: Vec<SeriesBatch> = (0..SERIES)
            .map(|i| SeriesBatch {
                series_id: series(i),
                candles: (0..HISTORY)
                    .map(|k| {
                        // Realistic widths: prices and volumes with many digits.
                        let p = 43_251.37 + (k % 997) as f64 * 1.37 + i as f64 * 0.013;
                        let v = 12.345_678 + k as f64 * 0.001_3;
                        Candle { candle_time: h0 + k * 60, open: p, high: p + 15.21, low: p - 9.87, close: p + 3.11, volume: v }
                    })
                    .collect(),
            })
            .collect();
        store.write_batches(&batches).unwrap();
    }
    let journal = dir.path().join("run.journal.jsonl").display().to_string();
    let url = ex.ws_url();
    // A catch-up limit above history + live: every candle is expected, whenever
    // the live ones land relative to the catch-up.
    let mut args: Vec<String> =
        ["--spot-ws-url", &url, "--futures-ws-url", &url, "--derived", "", "--heal", "false", "--catchup-limit", "6000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in 0..SERIES {
        args.push("--pin".into());
        args.push(series(i));
    }
    args.extend(["--record".to_string(), journal.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut live = Live::start_in(dir, &argv);
    let streams: Vec<String> = (0..SERIES).map(stream).collect();
    let stream_refs: Vec<&str> = streams.iter().map(String::as_str).collect();
    assert!(ex.wait_for_subscriptions(&stream_refs, 10 * SEC), "pinned streams subscribed");

    // Client 1: six series from `since`, one frame per candle. Client 2: eight,
    // batched, the tail.
    let mut single = live.ws();
    let mut batched = live.ws();
    for i in 0..6 {
        single.send(json!({"type":"subscribe","series_id":series(i),"since":h0 - 60}));
    }
    for i in 0..SERIES {
        batched.send(json!({"type":"subscribe","series_id":series(i),"supports_batch":true}));
    }
    let want = (HISTORY + LIVE) as usize;
    let r1 = std::thread::spawn(move || read_all(single, 6, want));
    let r2 = std::thread::spawn(move || read_all(batched, SERIES, want));
    // Live candles arrive while the catch-up is under way.
    for j in 0..LIVE {
        for (i, s) in streams.iter().enumerate() {
            let p = 200.0 + i as f64;
            ex.push_kline(s, (h0 + (HISTORY + j) * 60) * 1000, p, p + 1.0, p - 1.0, p + 0.5, 2.0, true);
        }
    }
    let seen = [r1.join().unwrap(), r2.join().unwrap()];
    let expected: Vec<i64> = (0..HISTORY + LIVE).map(|k| h0 + k * 60).collect();
    let closes: Vec<String> = seen
        .iter()
        .enumerate()
        .filter_map(|(c, s)| {
            let (code, reason, after) = s.close.as_ref()?;
            Some(format!("client {} closed {code} {reason:?} after {} ms, {} candles received", c + 1, after.as_millis(), s.candles()))
        })
        .collect();
    assert!(closes.is_empty(), "a reading client was closed: {closes:?}");
    for (c, s) in seen.iter().enumerate() {
        let subscribed = if c == 0 { 6 } else { SERIES };
        for i in 0..subscribed {
            let of: Vec<Value> = s.frames.iter().filter(|f| f["series_id"] == json!(series(i))).cloned().collect();
            assert!(
                of.iter().all(|f| f["type"] == "candle_closed" || f["type"] == "candles_batch" || f["type"] == "candle_forming"),
                "client {} {}: only candles, no gap or error: {:?}",
                c + 1,
                series(i),
                of.iter().filter(|f| f["type"] == "gap" || f["type"] == "error").take(3).collect::<Vec<_>>()
            );
            let got = support::closed_times(&of);
            let first_diff = got.iter().zip(&expected).position(|(g, e)| g != e);
            assert!(
                got == expected,
                "client {} {}: catch-up in order then live: got {} candles ({:?}..{:?}), expected {} ({}..{}), first difference at {first_diff:?}",
                c + 1,
                series(i),
                got.len(),
                got.first(),
                got.last(),
                expected.len(),
                expected[0],
                expected[expected.len() - 1]
            );
        }
        eprintln!("client {}: {} candles, {} frames, never closed", c + 1, s.candles(), s.frames.len());
    }
    assert!(!live.seen_logs.iter().any(|l| l.contains("slow_consumer")));
    assert_eq!(live.terminate(10 * SEC), Some(0));

    // The recording replays to exactly the bytes each client received.
    let bin = env!("CARGO_BIN_EXE_klinegate");
    let out_path = live.dir.path().join("replay.out.jsonl");
    let out = std::process::Command::new(bin)
        .args(["replay", &journal, "--out", &out_path.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = std::fs::read_to_string(&out_path).unwrap().lines().map(str::to_string).collect();
    for (c, s) in seen.iter().enumerate() {
        let replayed = support::frames_for(&lines, c as u64 + 1);
        if replayed.len() < s.frames.len() {
            live.drain_logs();
            std::fs::write(live.dir.path().join("live.log"), live.seen_logs.join("\n")).unwrap();
            let kept = std::mem::replace(&mut live.dir, tempfile::tempdir().unwrap()).keep();
            panic!("client {}: replay has {} frames, live {} (kept {})", c + 1, replayed.len(), s.frames.len(), kept.display());
        }
        assert_eq!(&replayed[..s.frames.len()], &s.frames[..], "client {}: replayed frames are the live ones", c + 1);
    }
    let check = std::process::Command::new(bin)
        .args(["replay", &journal, "--check", &out_path.display().to_string()])
        .output()
        .unwrap();
    assert!(check.status.success(), "replay --check: {}", String::from_utf8_lossy(&check.stdout));
}
