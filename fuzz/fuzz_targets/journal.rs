//! Fuzzes `journal::replay`: a journal file (header line + JSON records) fed
//! through a fresh engine on an in-memory store.
//!
//! Checks: never panics, whatever the header settings, record order or times;
//! and the core's promise "same journal in, same outputs out": replaying the
//! same bytes twice (with fresh hash-map seeds) writes identical output bytes.
//!
//! Journals whose records jump more than two days past the header's start are
//! skipped: replay fires every timer at its own deadline, so a jump of years
//! costs millions of reconnect/backoff timer steps (see README, finding J1) and
//! would only make every such unit a libFuzzer timeout.
#![no_main]

use klinegate::replay::journal;
use klinegate::store::MemoryStore;
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match journal::replay(data, Box::new(MemoryStore::new()), &mut out) {
        Ok(_) => Some(out),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

const MAX_SPAN_NS: u64 = 2 * 86_400 * 1_000_000_000;

/// Whether every `now` in the journal stays within two days of its start.
fn short_span(data: &[u8]) -> bool {
    // Lossy: replay reads line by line, so lines before an invalid one still run.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let Some(start) = lines.next().and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok()) else {
        return true;
    };
    let start = start["start_ns"].as_u64().unwrap_or(0);
    lines.filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).all(|rec| {
        rec["now"].as_u64().map_or(true, |now| now.saturating_sub(start) <= MAX_SPAN_NS)
    })
}

fuzz_target!(|data: &[u8]| {
    // Keep units small: a journal is a local file, and huge ones only slow the search.
    if data.len() > 16 << 10 || !short_span(data) {
        return;
    }
    let first = run(data);
    let second = run(data);
    assert_eq!(first.is_some(), second.is_some(), "replay outcome differs between runs");
    if let (Some(a), Some(b)) = (first, second) {
        assert!(a == b, "replay is not deterministic:\n{}\n---\n{}", String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    }
});
