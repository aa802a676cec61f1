//! Replays the three real Binance captures in ../shared/data/cryptofeed
//! (spot and USD-M, 2021) through the engine, via the project's own
//! capture-to-journal converter, and checks what a production feed must do:
//! - every `x:true` candle is stored exactly once, with the frame's values,
//!   and delivered to the subscribed client exactly once;
//! - forming updates of one candle are never closer than the throttle interval;
//! - derived 5m forming candles are the merge of their 1m inputs;
//! - the replay is byte-for-byte repeatable.
//! Skips (saying so) when ../shared/data is absent.

mod support;
use klinegate::replay::capture::{self, ConvertOptions};
use klinegate::model::Candle;
use klinegate::store::MemoryStore;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use support::*;

const CAPTURES: [&str; 3] = ["BINANCE-ee25be.0", "BINANCE_FUTURES.ws.1.0", "BINANCE_FUTURES.ws.5.0"];

fn capture_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("KLINEGATE_SHARED_DATA_DIR"), "/cryptofeed/sample_data")).join(name)
}

struct KlineIn {
    at_ns: u64,
    series: String,
    candle: Candle,
    is_final: bool,
}

fn num(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

/// The kline frames of a capture, decoded independently with serde_json.
fn klines_in(cap: &capture::Capture) -> Vec<KlineIn> {
    let mut out = Vec::new();
    for (t, frame) in &cap.frames {
        let Ok(v) = serde_json::from_str::<Value>(frame) else { continue };
        let Some(stream) = v["stream"].as_str() else { continue };
        if !stream.contains("@kline_") {
            continue;
        }
        let k = &v["data"]["k"];
        let Some(series) = capture::series_for_stream(stream, cap.market) else { continue };
        out.push(KlineIn {
            at_ns: t.as_nanos(),
            series,
            candle: Candle {
                candle_time: k["t"].as_i64().unwrap_or(0) / 1000,
                open: num(&k["o"]),
                high: num(&k["h"]),
                low: num(&k["l"]),
                close: num(&k["c"]),
                volume: num(&k["v"]),
            },
            is_final: k["x"].as_bool().unwrap_or(false),
        });
    }
    out
}

fn merge(minutes: &[Candle], bucket: i64) -> Candle {
    let mut c = minutes[0];
    c.candle_time = bucket;
    for m in &minutes[1..] {
        c.high = c.high.max(m.high);
        c.low = c.low.min(m.low);
        c.close = m.close;
        c.volume += m.volume;
    }
    c
}

fn frame_candle(f: &Value) -> Candle {
    serde_json::from_value(f["candle"].clone()).expect("candle shape")
}

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn real_captures_store_every_close_once_and_respect_throttle_and_derived_merge() {
    let mut ran = 0;
    for name in CAPTURES {
        let path = capture_path(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipping {name}: {} not present (../shared/data is absent)", path.display());
            continue;
        };
        ran += 1;
        let cap = capture::parse_capture(&text).expect("capture parses");
        let mut journal = Vec::new();
        let series = capture::capture_to_journal(&cap, ConvertOptions::default(), &mut journal).expect("converts");
        let journal = String::from_utf8(journal).unwrap();
        let (lines, _, store) = replay_with_store(&journal, Box::new(MemoryStore::new()));
        assert_eq!(lines, replay_text(&journal), "{name}: replay is repeatable");
        let inputs = klines_in(&cap);
        let frames: Vec<(u64, Value)> = parse(&lines)
            .into_iter()
            .filter(|v| v["client"] == 1)
            .map(|v| (v["now"].as_u64().unwrap(), v["frame"].clone()))
            .collect();

        // 1. Every close stored exactly once with the frame's values, and delivered once.
        let finals: Vec<&KlineIn> = inputs.iter().filter(|k| k.is_final).collect();
        for k in &finals {
            let stored = store.read_range(&k.series, k.candle.candle_time, k.candle.candle_time, 10).unwrap();
            assert_eq!(stored, vec![k.candle], "{name}: stored close of {} at {}", k.series, k.candle.candle_time);
            let delivered = frames
                .iter()
                .filter(|(_, f)| {
                    f["type"] == "candle_closed"
                        && f["series_id"] == k.series.as_str()
                        && f["candle"]["candle_time"] == k.candle.candle_time
                })
                .count();
            assert_eq!(delivered, 1, "{name}: close of {} delivered once", k.series);
        }
        for s in &series {
            let n = store.count_range(s, 0, i64::MAX).unwrap();
            let expected = finals.iter().filter(|k| &k.series == s).count() as u64;
            assert_eq!(n, expected, "{name}: {s} holds exactly the closed candles");
        }

        // 2. Forming updates of one candle are at least the throttle interval apart.
        let mut last: BTreeMap<(String, i64), u64> = BTreeMap::new();
        let mut forming = 0;
        for (at, f) in frames.iter().filter(|(_, f)| f["type"] == "candle_forming") {
            forming += 1;
            let key = (f["series_id"].as_str().unwrap().to_string(), f["candle"]["candle_time"].as_i64().unwrap());
            if let Some(prev) = last.insert(key.clone(), *at) {
                assert!(at - prev >= 250_000_000, "{name}: {key:?} forming {} ms apart", (at - prev) / 1_000_000);
            }
        }
        assert!(forming > 0, "{name}: forming updates delivered");

        // 3. Each derived 5m forming candle is the merge of the closed 1m minutes
        //    of its bucket plus the newest 1m update received by then.
        let mut checked = 0;
        for (at, f) in frames.iter().filter(|(_, f)| f["type"] == "candle_forming") {
            let sid = f["series_id"].as_str().unwrap();
            let Some(base) = sid.strip_suffix(":5m") else { continue };
            let base = format!("{base}:1m");
            let got = frame_candle(f);
            let seen: Vec<&KlineIn> = inputs.iter().filter(|k| k.series == base && k.at_ns <= *at).collect();
            let latest = seen.iter().rev().find(|k| !k.is_final).expect("a 1m update precedes").candle;
            let mut minutes: Vec<Candle> = seen
                .iter()
                .filter(|k| k.is_final && k.candle.candle_time / 300 * 300 == got.candle_time)
                .filter(|k| k.candle.candle_time < latest.candle_time)
                .map(|k| k.candle)
                .collect();
            minutes.push(latest);
            let want = merge(&minutes, got.candle_time);
            assert_eq!((got.open, got.high, got.low, got.close), (want.open, want.high, want.low, want.close), "{name}: {sid}");
            assert!((got.volume - want.volume).abs() <= 1e-9 * want.volume.max(1.0), "{name}: {sid} volume");
            checked += 1;
        }
        assert!(checked > 0, "{name}: derived 5m forming candles checked");
        eprintln!(
            "{name}: {} frames, {} kline, {} closes stored, {} forming delivered, {} derived checked",
            cap.frames.len(),
            inputs.len(),
            finals.len(),
            forming,
            checked
        );
    }
    if ran == 0 {
        eprintln!("skipping: no captures under ../shared/data/cryptofeed/sample_data");
    }
}
