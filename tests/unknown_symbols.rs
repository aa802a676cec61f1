//! Unknown symbols in the deterministic core, as journals: the market's symbol
//! list (the `symbols_listed` input) refuses a series it lacks with one error
//! frame and no job, stream or REST request; without a list, a `-1121` answer
//! to a history request ends the job, its subscriptions and its stream. The
//! same journal replays to the same bytes.

mod support;
use serde_json::{json, Value};
use support::*;

const T: f64 = 1_700_000_100.0;
const TYPO: &str = "binance:spot:BTC/USTD:1m";
const TYPO5: &str = "binance:spot:BTC/USTD:5m";
const MSG: &str = "unknown symbol: BTC/USTD is not listed on binance spot";

fn error_frames(lines: &[String], client: u64) -> Vec<Value> {
    frames_for(lines, client).into_iter().filter(|f| f["type"] == "error").collect()
}

#[test]
fn a_listed_market_refuses_an_unlisted_symbol_without_a_job_stream_or_rest() {
    let mut j = JournalBuilder::new(T, json!({"pins": []}));
    j.input(T, json!({"type":"start"}))
        .input(T, json!({"type":"symbols_listed","market":"spot","symbols":["BTC/USDT","ETH/USDT"]}))
        .connect(T, 1)
        .client_text(T + 1.0, 1, json!({"type":"subscribe","series_id":TYPO}))
        .client_text(T + 1.0, 1, json!({"type":"subscribe","series_id":"binance:spot:ETH/USDT:1m"}))
        .end(T + 2.0);
    let text = j.text();
    let lines = replay_text(&text);
    assert_eq!(error_frames(&lines, 1), vec![json!({"type":"error","code":"bad_request","message":MSG})]);
    let rest: Vec<Value> = outputs_of(&lines, "rest_request").into_iter().filter(|r| r["path"].as_str().unwrap().contains("BTCUSTD")).collect();
    assert!(rest.is_empty(), "{rest:?}");
    let sends = outputs_of(&lines, "upstream_send");
    assert!(!sends.iter().any(|s| s["text"].as_str().unwrap().contains("btcustd")), "{sends:?}");
    assert!(outputs_of(&lines, "log").iter().filter(|l| l["line"].as_str().unwrap().starts_with("job_started")).count() == 1, "ETH/USDT only");
    assert_eq!(lines, replay_text(&text), "deterministic");
}

#[test]
fn without_a_list_an_invalid_symbol_answer_ends_job_subscriptions_and_stream() {
    let mut j = JournalBuilder::new(T, json!({"pins": [], "upstream_silence_s": 600, "heal": true}));
    j.input(T, json!({"type":"start"}))
        .connect(T, 1)
        .connect(T, 2)
        .client_text(T, 1, json!({"type":"subscribe","series_id":"binance:spot:ETH/USDT:1m"}))
        .client_text(T, 1, json!({"type":"subscribe","series_id":TYPO}))
        .client_text(T, 2, json!({"type":"subscribe","series_id":TYPO5}))
        .input(T + 0.1, json!({"type":"upstream_connected","conn":1}))
        .upstream(T + 0.2, 1, ack(1))
        .input(T + 0.5, json!({"type":"rest_response","id":2,"status":400,"body":"{\"code\":-1121,\"msg\":\"Invalid symbol.\"}"}))
        .client_text(T + 1.0, 1, json!({"type":"subscribe","series_id":TYPO}))
        .end(T + 5.0);
    let text = j.text();
    let lines = replay_text(&text);
    let frame = json!({"type":"error","code":"bad_request","message":MSG});
    assert_eq!(error_frames(&lines, 1), vec![frame.clone(), frame.clone()], "ended, then refused at once");
    assert_eq!(error_frames(&lines, 2), vec![frame], "the derived subscriber too");
    let sends: Vec<String> = outputs_of(&lines, "upstream_send").iter().map(|s| s["text"].as_str().unwrap().to_string()).collect();
    assert!(sends.iter().any(|s| s.contains("UNSUBSCRIBE") && s.contains("btcustd@kline_1m")), "{sends:?}");
    let requests = outputs_of(&lines, "rest_request");
    let after: Vec<&Value> = requests.iter().filter(|r| r["path"].as_str().unwrap().contains("BTCUSTD")).collect();
    assert!(after.len() <= 2, "the pages already asked for, nothing after: {after:?}");
    assert_eq!(outputs_of(&lines, "upstream_close").len(), 0, "the connection stays for ETH/USDT");
    assert_eq!(lines, replay_text(&text), "deterministic");
}
