//! What a live run's client saw against what `klinegate replay` of its
//! journal (no database) sends: the replay's frames per client, the journal's
//! client ids, the closed candle times in a list of frames.
#![allow(dead_code)]

use super::live::Client;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Reads what is left on `c` until the server's close.
pub fn read_rest(c: &mut Client, into: &mut Vec<Value>) {
    while let Some(f) = c.next(Duration::from_millis(300)) {
        into.push(f);
    }
}

/// Replays `journal` with no database; the frames each client was sent.
pub fn replay_frames(journal: &Path) -> BTreeMap<u64, Vec<Value>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
        .arg("replay")
        .arg(journal)
        .output()
        .expect("replay runs");
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate")).arg("replay").arg(journal).output().expect("replay runs");
    assert_eq!(again.stdout, out.stdout, "a replay is repeatable byte for byte");
    let mut frames: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("replay lines are JSON");
        if let Some(client) = v["client"].as_u64() {
            frames.entry(client).or_default().push(v["frame"].clone());
        }
    }
    frames
}

pub fn closed_times(frames: &[Value], series: &str) -> Vec<i64> {
    frames
        .iter()
        .flat_map(|f| match f["type"].as_str() {
            Some("candle_closed") if f["series_id"] == series => vec![f["candle"]["candle_time"].as_i64().unwrap_or(-1)],
            Some("candles_batch") if f["series_id"] == series => {
                f["candles"].as_array().into_iter().flatten().map(|c| c["candle_time"].as_i64().unwrap_or(-1)).collect()
            }
            _ => vec![],
        })
        .collect()
}

/// The journal's client ids in the order clients connected (the shell
/// numbers them; the test knows them only by order).
pub fn client_ids(journal: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(journal).expect("journal");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["input"]["type"] == "client_connected")
        .filter_map(|v| v["input"]["client"].as_u64())
        .collect()
}

