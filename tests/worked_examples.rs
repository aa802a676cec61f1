//! The worked examples of reference-system.md §2.10 and the catch-up edge
//! cases of §2.5, replayed through the engine as journals. Each test states
//! the frames the client must receive, in order.

mod support;
use serde_json::json;
use support::*;

use support::scenarios::{bad_requests, rate_limited, seeded, sub, BAD_REQUESTS, FUT as S};

#[test]
fn since_100_gets_160_and_220_then_live_280() {
    let lines = replay_text(&seeded(&[100, 160, 220], sub(Some(100), false), &[280]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 160", "closed 220", "closed 280"]);
}

#[test]
fn since_100_with_batch_gets_one_batch_then_single_live_candle() {
    let lines = replay_text(&seeded(&[100, 160, 220], sub(Some(100), true), &[280]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["batch [160,220]", "closed 280"]);
}

#[test]
fn since_0_gets_everything() {
    let lines = replay_text(&seeded(&[100, 160, 220], sub(Some(0), false), &[]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 100", "closed 160", "closed 220"]);
}

#[test]
fn since_head_gets_nothing_then_next() {
    let lines = replay_text(&seeded(&[100, 160, 220], sub(Some(220), false), &[280]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 280"]);
}

#[test]
fn since_null_gets_the_tail() {
    let lines = replay_text(&seeded(&[100, 160, 220], sub(None, false), &[280]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 100", "closed 160", "closed 220", "closed 280"]);
}

#[test]
fn live_hole_is_reported_as_gap_before_the_candle() {
    let lines = replay_text(&seeded(&[100], sub(Some(100), false), &[220]));
    let frames = frames_for(&lines, 1);
    assert_eq!(briefs(&frames), ["gap 160->220", "closed 220"]);
    assert_eq!(frames[0], json!({"type":"gap","series_id":S,"expected_next_time":160,"actual_time":220}));
}

#[test]
fn live_hole_racing_the_subscribe_gives_exactly_one_gap() {
    // The reference's race: 220 is ingested while the catch-up read is running.
    // Here everything happens at the same instant; the result is the same.
    let mut j = JournalBuilder::new(1000.0, json!({}));
    j.ingest_closed(1000.0, S, &[100])
        .connect(1001.0, 1)
        .client_text(1001.0, 1, sub(Some(100), false))
        .ingest_closed(1001.0, S, &[220])
        .end(1003.0);
    let lines = replay_text(&j.text());
    assert_eq!(briefs(&frames_for(&lines, 1)), ["gap 160->220", "closed 220"]);
}

#[test]
fn catchup_hole_at_head_is_reported_once() {
    let lines = replay_text(&seeded(&[100, 220, 280], sub(Some(100), true), &[]));
    assert_eq!(briefs(&frames_for(&lines, 1)), ["gap 160->220", "batch [220,280]"]);
}

#[test]
fn plausible_future_since_is_clamped_to_latest_closed() {
    // 1h series, now = 7201: latest closed is 3600; the stored 7200 row is "ahead".
    let h1 = "binance:futures:BTC/USDT:1h";
    let mut j = JournalBuilder::new(7201.0, json!({}));
    j.ingest_closed(7201.0, h1, &[0, 3600, 7200])
        .connect(7201.0, 1)
        .client_text(7201.0, 1, json!({"type":"subscribe","series_id":h1,"since":7200}))
        .connect(7201.0, 2)
        .client_text(7201.0, 2, json!({"type":"subscribe","series_id":h1}))
        .input(7202.0, json!({"type":"ingest_forming","series_id":h1,"candle":candle_json(7200, 5.0)}))
        .end(7203.0);
    let lines = replay_text(&j.text());
    // since=7200 is clamped to 3600 (nothing to send), and the cursor is lowered
    // so the current bucket's forming candle flows again.
    assert_eq!(briefs(&frames_for(&lines, 1)), ["forming 7200 c=5.0"]);
    // The tail hides the "ahead" row 7200.
    assert_eq!(briefs(&frames_for(&lines, 2))[..2], ["closed 0", "closed 3600"]);
}

#[test]
fn duplicate_subscribe_resends_catchup_from_new_since() {
    let mut j = JournalBuilder::new(1000.0, json!({}));
    j.ingest_closed(1000.0, S, &[100, 160, 220])
        .connect(1001.0, 1)
        .client_text(1001.0, 1, json!({"type":"subscribe","series_id":S,"since":160}))
        .client_text(1001.5, 1, json!({"type":"subscribe","series_id":S,"since":100}))
        .end(1003.0);
    let lines = replay_text(&j.text());
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 220", "closed 160", "closed 220"]);
}

#[test]
fn unsubscribe_stops_delivery_and_unknown_unsubscribe_is_silent() {
    let mut j = JournalBuilder::new(1000.0, json!({}));
    j.ingest_closed(1000.0, S, &[100])
        .connect(1001.0, 1)
        .client_text(1001.0, 1, json!({"type":"subscribe","series_id":S,"since":100}))
        .client_text(1001.0, 1, json!({"type":"unsubscribe","series_id":"binance:spot:ETH/USDT:1m"}))
        .client_text(1001.0, 1, json!({"type":"unsubscribe"}))
        .ingest_closed(1002.0, S, &[160])
        .client_text(1002.5, 1, json!({"type":"unsubscribe","series_id":S}))
        .ingest_closed(1003.0, S, &[220])
        .end(1004.0);
    let lines = replay_text(&j.text());
    assert_eq!(briefs(&frames_for(&lines, 1)), ["closed 160"]);
}

#[test]
fn a_client_over_its_message_rate_is_refused_and_told_once_a_second() {
    let lines = replay_text(&rate_limited());
    let b = briefs(&frames_for(&lines, 1));
    let noop = "error bad_request unknown message type: noop";
    let limited = "error rate_limited too many messages: limit 2 per second";
    // t=1001: a burst of 4 answered, then one rate_limited for the other 6.
    // t=1002: 2 tokens refilled; the third message and the binary frame are refused, answered once.
    // t=1004: the subscribe is admitted and served.
    assert_eq!(b, [noop, noop, noop, noop, limited, noop, noop, limited, "closed 100"], "{b:?}");
}

#[test]
fn bad_requests_get_exact_errors_and_the_connection_lives_on() {
    assert_eq!(BAD_REQUESTS.len(), 11);
    let lines = replay_text(&bad_requests());
    let frames = frames_for(&lines, 1);
    let b = briefs(&frames);
    assert_eq!(b[0], "error bad_request invalid message envelope");
    assert_eq!(b[1], "error bad_request missing message type");
    assert_eq!(b[2], "error bad_request unknown message type: noop");
    assert_eq!(b[3], "error bad_request missing series_id");
    assert_eq!(b[4], "error bad_request invalid since");
    assert_eq!(b[5], "error bad_request invalid supports_batch");
    assert_eq!(b[6], "error bad_request invalid json");
    assert!(b[7].starts_with("error bad_request series_id must be"), "{}", b[7]);
    assert!(b[8].contains("unsupported timeframe unit: 'x'"), "{}", b[8]);
    assert!(b[9].contains("unsupported exchange: 'kraken'"), "{}", b[9]);
    assert!(b[10].contains("unsupported market: 'margin'"), "{}", b[10]);
    assert!(b[11].starts_with("error bad_request binary frames"), "{}", b[11]);
    assert_eq!(b[12], "closed 100", "the connection still works after every error");
    for f in &frames[..12] {
        assert!(f.get("series_id").is_none(), "bad_request frames carry no series_id: {f}");
    }
}
