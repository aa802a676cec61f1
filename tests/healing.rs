//! History healing over REST (engine level, scripted exchange): first-visit
//! history, reconnect healing without a gap, the late-close watchdog, and a
//! REST failure reported as a gap and healed later. Each scenario is also a
//! fixture journal (tests/fixtures.rs).

mod support;
use serde_json::Value;
use support::scenarios::*;

fn closed_times(frames: &[Value], series: &str) -> Vec<i64> {
    let of_series: Vec<Value> = frames.iter().filter(|f| f["series_id"] == series).cloned().collect();
    support::closed_times(&of_series)
}

fn gaps(frames: &[Value]) -> usize {
    frames.iter().filter(|f| f["type"] == "gap").count()
}

#[test]
fn first_visit_fetches_recent_history_and_rolls_up_derived() {
    let h = heal_first_visit();
    // now = minute 40 + 10 s: minutes 10..=39 are the 30 most recent closed.
    let want: Vec<i64> = (10..40).map(|k| T0 + 60 * k).collect();
    assert_eq!(closed_times(&h.model.frames_of(1), BTC1), want, "published in order, forming row not stored");
    assert_eq!(h.engine_store[0].1, want);
    assert!(!h.engine_store[0].1.contains(&(T0 + 2400)), "the still-open candle is not stored as closed");
    // Complete 5m buckets among minutes 10..39: 10,15,...,35 (opens at minute 10 = bucket 2).
    let want5: Vec<i64> = (2..8).map(|b| T0 + 300 * b).collect();
    assert_eq!(closed_times(&h.model.frames_of(2), BTC5), want5);
    assert_eq!(h.engine_store[1].1, want5);
    assert_eq!(h.model.exchange.rest_log.len(), 1, "one page");
    assert!(h.model.exchange.rest_log[0].1.starts_with("/api/v3/klines?symbol=BTCUSDT&interval=1m&"));
}

#[test]
fn reconnect_heals_the_outage_before_the_live_candle_with_no_gap() {
    let h = heal_reconnect();
    let frames = h.model.frames_of(1);
    let got = closed_times(&frames, BTC1);
    let want: Vec<i64> = (0..=8).map(|k| T0 + 60 * k).collect();
    assert_eq!(got, want, "{got:?}");
    assert_eq!(gaps(&frames), 0);
    assert_eq!(h.engine_store[0].1, want);
}

#[test]
fn late_close_is_fetched_once_and_the_late_frame_is_not_republished() {
    let h = heal_late_close();
    let frames = h.model.frames_of(1);
    let got = closed_times(&frames, BTC1);
    assert_eq!(got, vec![T0 + 60], "fetched by the watchdog, delivered once: {frames:#?}");
    let fetches: Vec<&String> = h.model.exchange.rest_log.iter().map(|(_, p)| p).collect();
    assert_eq!(fetches.len(), 2, "first visit + one watchdog fetch: {fetches:?}");
    assert!(fetches[1].contains(&format!("startTime={}", (T0 + 60) * 1000)));
    assert_eq!(h.engine_store[0].1, vec![T0, T0 + 60], "stored once");
    assert_eq!(gaps(&frames), 0);
}

#[test]
fn rest_failure_sends_a_gap_and_the_hole_is_healed_later() {
    let h = heal_rest_failure();
    let frames = h.model.frames_of(1);
    assert_eq!(gaps(&frames), 1, "healing failed: the client is told: {frames:#?}");
    // The live close of minute 5; the stream says nothing after it, so each later
    // minute is fetched by the clock-armed late-close watchdog, once, in order.
    let closed = closed_times(&frames, BTC1);
    assert_eq!(closed.first(), Some(&(T0 + 300)), "{closed:?}");
    let want: Vec<i64> = (0..closed.len() as i64).map(|k| T0 + 300 + 60 * k).collect();
    assert_eq!(closed, want);
    // The hole (minutes 1..=4 of the first visit) is filled later, behind the head.
    let stored = &h.engine_store[0].1;
    for k in 1..=5 {
        assert!(stored.contains(&(T0 + 60 * k)), "minute {k} healed later: {stored:?}");
    }
    assert!(h.model.exchange.rest_log.len() >= 6, "retried: {:?}", h.model.exchange.rest_log);
    // The unfilled range was in the store's gap ledger while it was open, and
    // is removed once healed.
    assert_eq!(h.gaps_midway.len(), 1, "{:?}", h.gaps_midway);
    assert_eq!(h.gaps_midway[0].series_id, BTC1);
    assert!(h.gaps_midway[0].reason.contains("500"), "{:?}", h.gaps_midway[0]);
    assert!(h.gaps.is_empty(), "healed: {:?}", h.gaps);
}

#[test]
fn catch_up_older_than_the_store_is_healed_first_then_sent_without_a_gap() {
    let h = heal_catchup();
    let frames = h.model.frames_of(1);
    let want: Vec<i64> = (6..30).map(|k| T0 + 60 * k).collect();
    assert_eq!(closed_times(&frames, BTC1), want, "{frames:#?}");
    assert_eq!(gaps(&frames), 0);
    assert_eq!(h.engine_store[0].1, want.iter().copied().filter(|t| *t >= T0 + 360).collect::<Vec<_>>());
    // Old history rolled up into complete 5m buckets too (minutes 10..29 → buckets 2..5).
    let b5 = &h.engine_store[1].1;
    for b in 2..6 {
        assert!(b5.contains(&(T0 + 300 * b)), "5m bucket {b}: {b5:?}");
    }
}
