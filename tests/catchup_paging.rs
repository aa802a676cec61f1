//! Catch-up paging in the core (issue #12 points 1 and 7), through journals
//! whose takes say when the client reads (as a live recording's do): memory
//! per client stays bounded whatever the history, the slow-consumer rule is
//! about live frames piling up (never catch-up bytes), catch-up comes before
//! live with no duplicate and no spurious `gap`, and a client closed as a slow
//! consumer gets no second close at shutdown.

mod support;

use klinegate::cli::settings::Settings;
use klinegate::model::Candle;
use klinegate::replay::journal::Header;
use klinegate::store::{MemoryStore, SeriesBatch, Store};
use klinegate::time::Timestamp;
use serde_json::{json, Value};
use support::{candle_json, closed_times, frames_for, outputs_of, parse, replay_with_store, secs};

const S: &str = "binance:spot:BTC/USDT:1m";
const T0: i64 = 1_700_000_040;

/// A journal whose header records takes: the client reads only at `take` lines.
struct Journal {
    lines: Vec<String>,
    header: Header,
}

impl Journal {
    fn new(settings: Value, start_s: f64) -> Journal {
        let mut base = json!({"pins": [], "heal": false});
        for (k, v) in settings.as_object().unwrap() {
            base[k] = v.clone();
        }
        let settings: Settings = serde_json::from_value(base).unwrap();
        let header = Header::new(settings, Timestamp(secs(start_s)), false).with_recorded_writes();
        Journal { lines: Vec::new(), header }
    }

    fn input(&mut self, t: f64, input: Value) -> &mut Self {
        self.lines.push(json!({"now": secs(t), "input": input}).to_string());
        self
    }

    fn subscribe(&mut self, t: f64, client: u64, msg: Value) -> &mut Self {
        self.input(t, json!({"type":"client_connected","client":client}));
        self.input(t, json!({"type":"client_text","client":client,"text":msg.to_string()}))
    }

    fn take(&mut self, t: f64, client: u64) -> &mut Self {
        self.lines.push(json!({"now": secs(t), "take": client}).to_string());
        self
    }

    fn ingest(&mut self, t: f64, candle_time: i64) -> &mut Self {
        self.input(t, json!({"type":"ingest_closed","series_id":S,"candles":[candle_json(candle_time, 2.5)]}))
    }

    fn text(&self) -> String {
        let mut s = serde_json::to_string(&self.header).unwrap();
        s.push('\n');
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// A store holding `n` candles of `S` from `T0`, one a minute, wide prices.
fn history(n: i64) -> MemoryStore {
    let mut store = MemoryStore::new();
    let candles = (0..n)
        .map(|k| {
            let p = 43_251.37 + (k % 997) as f64 * 1.37;
            Candle { candle_time: T0 + 60 * k, open: p, high: p + 15.21, low: p - 9.87, close: p + 3.11, volume: 12.345_678 }
        })
        .collect();
    store.write_batches(&[SeriesBatch { series_id: S.into(), candles }]).unwrap();
    store
}

/// Client frames with the time they were taken.
fn taken(lines: &[String], client: u64) -> Vec<(u64, Value)> {
    parse(lines)
        .into_iter()
        .filter(|v| v["client"] == json!(client))
        .map(|v| (v["now"].as_u64().unwrap_or(0), v["frame"].clone()))
        .collect()
}

fn closes(lines: &[String]) -> Vec<(u64, u64, String)> {
    parse(lines)
        .into_iter()
        .filter(|v| v["out"]["type"] == "client_close")
        .map(|v| {
            let o = &v["out"];
            (o["client"].as_u64().unwrap_or(0), o["code"].as_u64().unwrap_or(0), o["reason"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn memory_per_client_stays_bounded_whatever_the_history_size() {
    const N: i64 = 100_000;
    let start = (T0 + 60 * N + 600) as f64;
    let mut j = Journal::new(json!({"catchup_limit": 200_000}), start);
    j.subscribe(start + 1.0, 1, json!({"type":"subscribe","series_id":S,"since":T0 - 60}));
    for i in 0..260 {
        j.take(start + 2.0 + i as f64 * 0.01, 1);
    }
    let (lines, _, _) = replay_with_store(&j.text(), Box::new(history(N)));
    assert_eq!(closes(&lines), vec![], "a reading client is never closed");
    let frames = taken(&lines, 1);
    // What one take hands over is what the engine held for the client.
    let mut per_take: std::collections::BTreeMap<u64, usize> = Default::default();
    for (t, f) in &frames {
        *per_take.entry(*t).or_default() += f.to_string().len();
    }
    let most = per_take.values().copied().max().unwrap_or(0);
    eprintln!("{} takes, at most {most} bytes queued for the client", per_take.len());
    assert!(most <= 256 << 10, "queued at most {most} bytes: bounded by the low-water mark plus one page");
    let got = closed_times(&frames.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>());
    assert_eq!(got.len(), N as usize, "every catch-up candle arrives");
    assert!(got.iter().enumerate().all(|(k, t)| *t == T0 + 60 * k as i64), "in order, no duplicate");
}

#[test]
fn a_client_that_stops_reading_is_closed_for_live_frames_not_for_its_catchup() {
    const N: i64 = 5_000; // ~700 KB of single frames: more than the backlog limit
    let start = (T0 + 60 * (N + 4_000) + 600) as f64;
    let mut j = Journal::new(json!({"client_max_backlog_bytes": 262_144}), start);
    j.subscribe(start + 1.0, 1, json!({"type":"subscribe","series_id":S,"since":T0 - 60}));
    for i in 0..30 {
        j.take(start + 2.0 + i as f64 * 0.01, 1);
    }
    // It stops reading; live candles pile up.
    let live_from = start + 10.0;
    for k in 0..3_000 {
        j.ingest(live_from + k as f64 * 0.01, T0 + 60 * (N + k));
    }
    let (lines, _, _) = replay_with_store(&j.text(), Box::new(history(N)));
    let frames: Vec<Value> = frames_for(&lines, 1);
    assert_eq!(closed_times(&frames), (0..N).map(|k| T0 + 60 * k).collect::<Vec<_>>(), "the whole catch-up, read");
    let closed: Vec<(u64, Value)> =
        parse(&lines).into_iter().filter(|v| v["out"]["type"] == "client_close").map(|v| (v["now"].as_u64().unwrap_or(0), v["out"].clone())).collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let (at, out) = &closed[0];
    assert_eq!((out["client"].as_u64(), out["code"].as_u64()), (Some(1), Some(1008)));
    assert!(out["reason"].as_str().unwrap_or("").starts_with("slow_consumer"), "{out}");
    // About 1,750 live frames of ~150 bytes pass 256 KiB: the close is theirs.
    assert!(*at >= secs(live_from + 1_000.0 * 0.01), "closed for live frames, after {} s", (*at as f64 - secs(live_from) as f64) / 1e9);
}

#[test]
fn live_candles_during_the_catchup_come_after_it_without_gap_or_duplicate() {
    const N: i64 = 3_000;
    for batch in [false, true] {
        let start = (T0 + 60 * (N + 100) + 600) as f64;
        let mut j = Journal::new(json!({}), start);
        j.subscribe(start + 1.0, 1, json!({"type":"subscribe","series_id":S,"since":T0 - 60,"supports_batch":batch}));
        // Live closes and forming updates land between the client's reads.
        for i in 0..12i64 {
            let t = start + 2.0 + i as f64 * 0.1;
            j.ingest(t, T0 + 60 * (N + i));
            let forming = candle_json(T0 + 60 * (N + i + 1), 3.5 + i as f64);
            j.input(t + 0.01, json!({"type":"ingest_forming","series_id":S,"candle":forming}));
            j.take(t + 0.02, 1);
        }
        for i in 0..4 {
            j.take(start + 5.0 + i as f64 * 0.01, 1);
        }
        let (lines, _, _) = replay_with_store(&j.text(), Box::new(history(N)));
        let frames = frames_for(&lines, 1);
        assert_eq!(closed_times(&frames), (0..N + 12).map(|k| T0 + 60 * k).collect::<Vec<_>>(), "batch={batch}");
        assert!(frames.iter().all(|f| f["type"] != "gap"), "no spurious gap (batch={batch})");
        // A forming update is never sent ahead of the catch-up it follows.
        let mut last_closed = i64::MIN;
        for f in &frames {
            match f["type"].as_str() {
                Some("candle_forming") => {
                    let t = f["candle"]["candle_time"].as_i64().unwrap_or(0);
                    assert_eq!(t, last_closed + 60, "forming right after the last closed candle (batch={batch})");
                }
                _ => last_closed = closed_times(std::slice::from_ref(f)).last().copied().unwrap_or(last_closed),
            }
        }
        assert_eq!(closes(&lines), vec![]);
    }
}

#[test]
fn when_the_catchup_limit_is_spent_live_candles_follow_after_a_gap() {
    const N: i64 = 3_000;
    let start = (T0 + 60 * (N + 100) + 600) as f64;
    let mut j = Journal::new(json!({"catchup_limit": 1_000}), start);
    j.subscribe(start + 1.0, 1, json!({"type":"subscribe","series_id":S,"since":T0 - 60}));
    for i in 0..6i64 {
        let t = start + 2.0 + i as f64 * 0.1;
        j.ingest(t, T0 + 60 * (N + i));
        j.take(t + 0.02, 1);
    }
    let (lines, _, _) = replay_with_store(&j.text(), Box::new(history(N)));
    let frames = frames_for(&lines, 1);
    let expected: Vec<i64> = (0..1_000).chain(N..N + 6).map(|k| T0 + 60 * k).collect();
    assert_eq!(closed_times(&frames), expected);
    let gaps: Vec<&Value> = frames.iter().filter(|f| f["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0]["expected_next_time"].as_i64(), gaps[0]["actual_time"].as_i64()), (Some(T0 + 60 * 1_000), Some(T0 + 60 * N)));
}

#[test]
fn a_client_closed_as_a_slow_consumer_gets_no_second_close_at_shutdown() {
    let start = (T0 + 60 * 1_000) as f64;
    let mut j = Journal::new(json!({"client_max_backlog_bytes": 4096}), start);
    j.subscribe(start + 1.0, 1, json!({"type":"subscribe","series_id":S}));
    j.subscribe(start + 1.0, 2, json!({"type":"subscribe","series_id":S}));
    j.take(start + 1.5, 1).take(start + 1.5, 2);
    for k in 0..100 {
        j.ingest(start + 2.0 + k as f64 * 0.01, T0 + 60 * k);
        j.take(start + 2.0 + k as f64 * 0.01, 2);
    }
    // Shut down before the shell reported the closed client gone.
    j.input(start + 5.0, json!({"type":"shutdown"}));
    let (lines, _, _) = replay_with_store(&j.text(), Box::new(MemoryStore::new()));
    let got: Vec<(u64, u64)> = closes(&lines).into_iter().map(|(c, code, _)| (c, code)).collect();
    assert_eq!(got, vec![(1, 1008), (2, 1001)], "client 1 closed once; the healthy client at shutdown");
    assert!(outputs_of(&lines, "client_close").len() == 2);
}
