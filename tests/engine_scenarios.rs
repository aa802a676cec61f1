//! Engine scenarios driven by exchange traffic: live ingest with the forming
//! throttle's trailing edge, derived timeframes sharing the base job, the
//! supervisor (capacity, eviction, reaper, pinned jobs), the upstream pool
//! (shared connections, pacing, reconnect backoff, breaker), slow consumers,
//! store failures and shutdown. Each is a journal replayed through the engine.

mod support;
use klinegate::engine::{ClientId, ConnId};
use klinegate::replay::hosted::Hosted;
use klinegate::store::{MemoryStore, Store};
use serde_json::json;
use support::*;

use support::scenarios::*;

#[test]
fn one_subscription_upstream_for_1m_and_5m_and_derived_closes_once() {
    let (lines, engine, store) = replay_with_store(&derived_shares_base_job(), Box::new(MemoryStore::new()));

    let sends = outputs_of(&lines, "upstream_send");
    assert_eq!(sends.len(), 1, "one SUBSCRIBE for both timeframes: {sends:?}");
    let req: serde_json::Value = serde_json::from_str(sends[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(req, json!({"method":"SUBSCRIBE","params":[STREAM],"id":1}));
    assert_eq!(outputs_of(&lines, "upstream_connect").len(), 1);
    assert_eq!(engine.job_count(), 1);

    let frames = frames_for(&lines, 1);
    let one_m: Vec<String> = frames.iter().filter(|f| f["series_id"] == BTC1).map(brief).collect();
    let first_minute: Vec<&str> = one_m.iter().take(4).map(String::as_str).collect();
    assert_eq!(
        first_minute,
        [
            "forming 1700000100 c=100.0",
            "forming 1700000100 c=100.1",
            "forming 1700000100 c=100.2", // trailing edge, never dropped
            "closed 1700000100",
        ]
    );
    assert_eq!(one_m.iter().filter(|b| b.starts_with("closed")).count(), 5);

    let five: Vec<&serde_json::Value> = frames.iter().filter(|f| f["series_id"] == BTC5).collect();
    let closed5: Vec<&&serde_json::Value> = five.iter().filter(|f| f["type"] == "candle_closed").collect();
    assert_eq!(closed5.len(), 1, "one complete 5m bucket");
    let c = &closed5[0]["candle"];
    assert_eq!(c["candle_time"], T0);
    assert_eq!(c["open"], 100.3);
    assert_eq!(c["close"], 104.3);
    assert_eq!(c["high"], 105.3);
    assert_eq!(c["low"], 99.8);
    assert_eq!(c["volume"], 5.0);
    // Derived forming candles carry the closed minutes of their bucket.
    let last_forming5 = five.iter().rev().find(|f| f["type"] == "candle_forming").unwrap();
    assert_eq!(last_forming5["candle"]["open"], 100.3);
    assert_eq!(last_forming5["candle"]["close"], 104.2);

    // Persisted before published: both series are in the store.
    assert_eq!(store.read_tail(BTC1, 10).unwrap().len(), 5);
    assert_eq!(store.read_tail(BTC5, 10).unwrap().len(), 1);
}

#[test]
fn forming_after_close_of_same_candle_is_never_sent() {
    let mut j = live_start(json!({}));
    j.upstream(t(1.0), 1, kline(STREAM, T0, 100.0, false))
        .upstream(t(60.1), 1, kline(STREAM, T0, 100.5, true))
        .upstream(t(60.2), 1, kline(STREAM, T0, 100.6, false)) // late forming for a closed candle
        .upstream(t(60.3), 1, kline(STREAM, T0, 100.7, true)) // duplicate close
        .end(t(62.0));
    let lines = replay_text(&j.text());
    let one_m: Vec<String> =
        frames_for(&lines, 1).iter().filter(|f| f["series_id"] == BTC1).map(brief).collect();
    assert_eq!(one_m, ["forming 1700000100 c=100.0", "closed 1700000100"]);
}

#[test]
fn capacity_full_rejects_without_catchup_and_idle_job_is_evicted() {
    let eth = ETH1;
    let rejected = replay_text(&capacity_rejects());
    let f2 = frames_for(&rejected, 2);
    assert_eq!(f2.len(), 1, "only the capacity error, no catch-up: {f2:?}");
    let lines = replay_text(&capacity_evicts_idle());
    assert!(frames_for(&lines, 2).is_empty(), "ETH has no history; no frame");

    assert_eq!(
        f2[0],
        json!({"type":"error","code":"capacity","message":"ondemand_ingest_capacity","series_id":eth})
    );
    let logs: Vec<String> =
        outputs_of(&lines, "log").iter().map(|l| l["line"].as_str().unwrap().to_string()).collect();
    assert!(logs.iter().any(|l| l.starts_with("job_stopped series_id=binance:spot:BTC/USDT:1m reason=evicted")));
    assert!(logs.iter().any(|l| l.starts_with("job_started series_id=binance:spot:ETH/USDT:1m")));
}

#[test]
fn idle_job_is_reaped_after_ttl_and_pinned_job_never() {
    let (lines, engine, _) = replay_with_store(&reaper_ttl_and_pinned(59.0), Box::new(MemoryStore::new()));
    assert_eq!(engine.job_count(), 2, "not reaped before the TTL: {lines:#?}");
    let (lines, engine, _) = replay_with_store(&reaper_ttl_and_pinned(3600.0), Box::new(MemoryStore::new()));
    assert_eq!(engine.job_count(), 1, "the on-demand job is reaped, the pinned one stays");
    let logs: Vec<String> =
        outputs_of(&lines, "log").iter().map(|l| l["line"].as_str().unwrap().to_string()).collect();
    let reaped: Vec<&String> = logs.iter().filter(|l| l.contains("reason=reaped")).collect();
    assert_eq!(reaped.len(), 1);
    assert!(reaped[0].contains("BTC/USDT"));
}

#[test]
fn lost_connection_reconnects_with_backoff_and_resubscribes_everything() {
    let lines = replay_text(&reconnect_backoff());
    let connects = parse(&lines)
        .into_iter()
        .filter(|v| v["out"]["type"] == "upstream_connect")
        .map(|v| (v["now"].as_u64().unwrap(), v["out"]["conn"].as_u64().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(connects.len(), 2, "{connects:?}");
    let delay_ms = (connects[1].0 - secs(t(2.0))) / 1_000_000;
    assert!((1000..=1250).contains(&delay_ms), "first backoff is 1 s plus up to 25% jitter, got {delay_ms} ms");
    assert_eq!(connects[1].1, 2, "a new connection id");
}

#[test]
fn repeated_failures_open_the_breaker_then_half_open_probe_recovers() {
    // Every attempt fails at once: backoff 1, 2, 4, 8 s (+ up to 25% jitter),
    // then the 5th failure within 60 s opens the breaker for 30 s; the failed
    // half-open probe re-opens it; the next probe succeeds and data closes it.
    let journal = breaker_open_then_half_open_recovers();
    let (lines, engine, _) = replay_with_store(&journal, Box::new(MemoryStore::new()));
    let secs: Vec<f64> = parse(&lines)
        .into_iter()
        .filter(|v| v["out"]["type"] == "upstream_connect")
        .map(|v| v["now"].as_u64().unwrap() as f64 / 1e9 - T0 as f64)
        .collect();
    let gaps: Vec<f64> = secs.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 6, "{secs:?}");
    for (i, base) in [1.0, 2.0, 4.0, 8.0].iter().enumerate() {
        assert!(gaps[i] >= *base && gaps[i] <= base * 1.25 + 0.01, "attempt {i}: {} vs {base}", gaps[i]);
    }
    assert!(gaps[4] >= 30.0, "the 5th failure opens the breaker for 30 s: {gaps:?}");
    assert!(gaps[5] >= 30.0, "a failed half-open probe re-opens it: {gaps:?}");
    assert_eq!(engine.upstream_connection_count(), 1, "the successful probe stays connected");
    let state = engine.ingest_state();
    assert_eq!(state["upstream"]["markets"][0]["breaker"]["state"], "closed", "{state:#}");
}

#[test]
fn slow_consumer_is_closed_and_others_keep_receiving() {
    // A client that never drains its queue, next to one that does.
    let s = "binance:futures:BTC/USDT:1m";
    use klinegate::cli::settings::Settings;
    use klinegate::engine::{Engine, Input, Output};
    use klinegate::time::Timestamp;
    let settings = Settings { pins: vec![], client_max_backlog_bytes: 4000, ..Settings::default() };
    let now = Timestamp::from_secs(1000);
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    for c in [1, 2] {
        e.handle(Input::ClientConnected { client: ClientId(c) }, now).unwrap();
        e.handle(Input::ClientText { client: ClientId(c), text: json!({"type":"subscribe","series_id":s}).to_string() }, now).unwrap();
    }
    let mut closed = Vec::new();
    let mut fast_frames = Vec::new();
    for k in 0..100i64 {
        let candle = klinegate::model::Candle { candle_time: 60 * k, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 };
        e.handle(Input::IngestClosed { request: 0, series_id: s.into(), candles: vec![candle] }, now).unwrap();
        while let Some(o) = e.poll_output() {
            if let Output::ClientClose { client, code, reason } = o {
                closed.push((client, code, reason));
            }
        }
        klinegate::replay::hosted::write_all(&mut e.engine, ClientId(2), &mut fast_frames); // client 2 reads; client 1 never does
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].0, ClientId(1));
    assert_eq!(closed[0].1, 1008);
    assert!(closed[0].2.starts_with("slow_consumer"));
    assert_eq!(fast_frames.len(), 100, "the reading client got every candle");
    assert_eq!(e.engine.counters().slow_consumer_closes, 1);
    // The shell reports the close; the slow client's subscriptions are released.
    e.handle(Input::ClientDisconnected { client: ClientId(1) }, now).unwrap();
    assert_eq!(e.engine.subscription_count(), 1);
}

#[test]
fn store_failure_keeps_the_batch_and_persists_it_on_recovery() {
    use klinegate::cli::settings::Settings;
    use klinegate::engine::{Engine, Input};
    use klinegate::time::{Duration, Timestamp};

    let settings =
        Settings { pins: vec![BTC1.into()], derived: "".into(), upstream_silence_s: 600, ..Settings::default() };
    let mut now = Timestamp::from_secs(T0 as u64 - 2);
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    let step = |e: &mut Hosted<MemoryStore>, now: Timestamp, input: Input| {
        e.handle(input, now).unwrap();
        let _ = e.take_outputs();
    };
    step(&mut e, now, Input::Start);
    step(&mut e, now, Input::UpstreamConnected { conn: ConnId(1) });
    step(&mut e, now, Input::UpstreamText { conn: ConnId(1), text: ack(1) });
    e.store.fail_writes(true);
    for k in 0..3i64 {
        now = Timestamp::from_secs((T0 + 60 * k + 61) as u64);
        e.handle_timeout(now);
        step(&mut e, now, Input::UpstreamText { conn: ConnId(1), text: kline(STREAM, T0 + 60 * k, 100.0, true) });
    }
    assert_eq!(e.engine.unpersisted_candles(), 3, "kept, not dropped");
    assert!(e.engine.counters().store_write_errors >= 1);
    e.store.fail_writes(false);
    // The retry timer brings the store up to date, in order.
    let until = now.add(Duration::from_secs(10));
    while let Some(at) = e.engine.poll_timeout() {
        if at > until {
            break;
        }
        e.handle_timeout(at);
        let _ = e.take_outputs();
    }
    assert_eq!(e.engine.unpersisted_candles(), 0);
    let stored: Vec<i64> = e.store.read_tail(BTC1, 10).unwrap().iter().map(|c| c.candle_time).collect();
    assert_eq!(stored, vec![T0, T0 + 60, T0 + 120]);
}

#[test]
fn shutdown_flushes_buffers_and_closes_clients_with_1001() {
    // batch_max large and flush_ms long: the closed candles sit in the buffer.
    let (lines, engine, store) = replay_with_store(&shutdown_flushes(), Box::new(MemoryStore::new()));
    assert_eq!(store.read_tail(BTC1, 10).unwrap().len(), 2);
    let closes = outputs_of(&lines, "client_close");
    assert_eq!(closes, vec![json!({"type":"client_close","client":1,"code":1001,"reason":"server_shutdown"})]);
    assert_eq!(engine.unpersisted_candles(), 0);
}

#[test]
fn malformed_and_unknown_exchange_frames_are_counted_and_skipped() {
    let mut j = live_start(json!({"derived": ""}));
    j.upstream(t(1.0), 1, "{not json".into())
        .upstream(t(1.0), 1, json!({"stream":"btcusdt@trade","data":{"e":"trade"}}).to_string())
        .upstream(t(1.0), 1, kline("ethusdt@kline_1m", T0, 1.0, false))
        .upstream(t(1.0), 1, kline(STREAM, T0 + 7, 1.0, false).replace(&format!("\"t\":{}", (T0 + 7) * 1000), &format!("\"t\":{}", (T0 + 7) * 1000)))
        .upstream(t(1.0), 1, kline(STREAM, T0, 1.0, false).replace("\"h\":\"2.00\"", "\"h\":\"0.10\""))
        .upstream(t(1.0), 1, kline(STREAM, T0, 1.0, false).replace("\"o\":\"1.00\"", "\"o\":\"-1.00\""))
        .upstream(t(2.0), 1, kline(STREAM, T0, 7.0, false))
        .end(t(3.0));
    let (lines, engine, _) = replay_with_store(&j.text(), Box::new(MemoryStore::new()));
    let c = engine.counters();
    assert_eq!(c.upstream_rejects, 6, "{:?}", c.upstream_rejects_by_kind);
    assert_eq!(c.upstream_rejects_by_kind.get("unknown_stream"), Some(&1));
    assert_eq!(c.upstream_rejects_by_kind.get("open_time_misaligned"), Some(&1));
    // The good frame after the bad ones still goes through.
    assert_eq!(briefs(&frames_for(&lines, 1)), ["forming 1700000100 c=7.0"]);
}


/// A subscription waiting for its store read holds a job reference only when
/// it made one: a re-subscribe (with a `since` that needs the store's bounds)
/// whose client leaves before the answer must not release the reference its
/// existing subscription holds — the other subscriber keeps the job wanted.
#[test]
fn a_resubscribe_pending_on_the_store_releases_no_reference_it_did_not_take() {
    use klinegate::cli::settings::Settings;
    use klinegate::engine::{Engine, Input, Output};
    use klinegate::store::StoreQuery;
    use klinegate::time::Timestamp;
    let now = Timestamp::from_secs(T0 as u64);
    let settings = Settings { pins: vec![], derived: String::new(), ..Settings::default() };
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    let sub = |client: u64, since: Option<i64>| Input::ClientText {
        client: ClientId(client),
        text: json!({"type":"subscribe","series_id":BTC1,"since":since}).to_string(),
    };
    for client in [1, 2] {
        e.handle(Input::ClientConnected { client: ClientId(client) }, now).unwrap();
        e.handle(sub(client, None), now).unwrap();
    }
    let refcount = |e: &Hosted<MemoryStore>| e.engine.ingest_state()["jobs"][0]["refcount"].as_i64();
    assert_eq!(refcount(&e), Some(2));
    // Client 1 re-subscribes from an old time; the shell has not answered
    // the bounds read when the client goes away.
    e.engine.handle(sub(1, Some(T0 - 3600)), now);
    let pending: Vec<Output> = std::iter::from_fn(|| e.engine.poll_output())
        .filter(|o| matches!(o, Output::ReadStore { query: StoreQuery::Bounds { .. }, .. }))
        .collect();
    assert_eq!(pending.len(), 1, "the re-subscribe waits for the series' bounds");
    e.handle(Input::ClientDisconnected { client: ClientId(1) }, now).unwrap();
    assert_eq!(refcount(&e), Some(1), "client 2 still holds the job");
    // The late answer changes nothing.
    if let Some(answer) = klinegate::replay::hosted::answer(&mut e.store, &pending[0]) {
        e.handle(answer, now).unwrap();
    }
    assert_eq!(refcount(&e), Some(1));
}

#[test]
fn every_http_ingest_input_is_answered_by_its_ingest_done() {
    // `handle` returns nothing: the shell replies to an HTTP ingest from the
    // `IngestDone` that carries its request (forming and touch at once, a
    // closed ingest once stored, any refusal at once).
    use klinegate::cli::settings::Settings;
    use klinegate::engine::{Engine, Input, Output};
    use klinegate::model::Candle;
    use klinegate::time::Timestamp;
    let s = "binance:futures:BTC/USDT:1m";
    let now = Timestamp::from_secs(1000);
    let settings = Settings { pins: vec![], ..Settings::default() };
    let mut e = Engine::new(settings.to_engine_config().unwrap(), now);
    let mut store = MemoryStore::new();
    let c = |t: i64, volume: f64| Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume };
    let mut answer = |e: &mut Engine, input: Input| -> Vec<(u64, Option<String>)> {
        e.handle(input, now);
        klinegate::replay::hosted::drain(e, &mut store, now)
            .into_iter()
            .filter_map(|o| match o {
                Output::IngestDone { request, error } => Some((request, error)),
                _ => None,
            })
            .collect()
    };
    let forming = Input::IngestForming { request: 7, series_id: s.into(), candle: c(960, 1.0) };
    assert_eq!(answer(&mut e, forming), vec![(7, None)]);
    let bad = Input::IngestForming { request: 8, series_id: s.into(), candle: c(960, -1.0) };
    assert_eq!(answer(&mut e, bad), vec![(8, Some("invalid candle at 960: negative value".into()))]);
    let closed = Input::IngestClosed { request: 9, series_id: s.into(), candles: vec![c(900, 1.0)] };
    assert_eq!(answer(&mut e, closed), vec![(9, None)], "stored (the store answered at once here)");
    let bad_id = Input::IngestClosed { request: 10, series_id: "nope".into(), candles: vec![c(900, 1.0)] };
    let got = answer(&mut e, bad_id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 10);
    assert!(got[0].1.is_some(), "a bad series id is refused: {got:?}");
    assert_eq!(answer(&mut e, Input::TouchSeries { request: 11, series_id: s.into() }), vec![(11, None)]);
    let got = answer(&mut e, Input::TouchSeries { request: 12, series_id: "nope".into() });
    assert_eq!((got.len(), got[0].0, got[0].1.is_some()), (1, 12, true), "{got:?}");
    // Journals recorded before requests were carried load with request 0.
    let old = r#"{"type":"touch_series","series_id":"binance:futures:BTC/USDT:1m"}"#;
    assert_eq!(serde_json::from_str::<Input>(old).unwrap(), Input::TouchSeries { request: 0, series_id: s.into() });
}

#[test]
fn next_wake_names_the_part_of_the_engine_poll_timeout_wakes_for() {
    // Through every fixture journal: `poll_timeout` is `next_wake`'s time at
    // every step, and the reasons cover the parts the scenarios exercise.
    use klinegate::engine::{TimerKind, WakeReason};
    use klinegate::replay::journal::{read_header, Record, Replayer};
    let mut seen = std::collections::BTreeSet::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut journals: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    journals.retain(|p| p.to_string_lossy().ends_with(".journal.jsonl"));
    journals.sort();
    assert!(!journals.is_empty());
    for path in journals {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let header = read_header(lines.next().unwrap()).unwrap();
        let mut r = Replayer::new(&header, Box::new(MemoryStore::new()), std::io::sink()).unwrap();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            r.step(serde_json::from_str::<Record>(line).unwrap()).unwrap();
            let wake = r.engine().next_wake();
            assert_eq!(r.engine().poll_timeout(), wake.map(|w| w.at), "{}", path.display());
            if let Some(w) = wake {
                seen.insert(w.why.name());
            }
        }
    }
    let want = [
        WakeReason::Timer(TimerKind::CloseDue),
        WakeReason::Timer(TimerKind::Forming),
        WakeReason::Upstream,
        WakeReason::Supervisor,
    ];
    for why in want {
        assert!(seen.contains(why.name()), "{why} never named; seen {seen:?}");
    }
}

#[test]
fn following_next_wake_walks_an_on_demand_job_through_its_reasons() {
    use klinegate::cli::settings::Settings;
    use klinegate::engine::{Engine, Input};
    use klinegate::time::Timestamp;
    let s = "binance:futures:BTC/USDT:1m";
    let now = Timestamp::from_secs(1000);
    let settings = Settings { pins: vec![], ..Settings::default() };
    let mut e = Hosted::new(Engine::new(settings.to_engine_config().unwrap(), now), MemoryStore::new());
    assert_eq!(e.engine.next_wake(), None, "an idle engine with nothing pinned sleeps");
    e.handle(Input::ClientConnected { client: ClientId(1) }, now).unwrap();
    e.handle(Input::ClientText { client: ClientId(1), text: json!({"type":"subscribe","series_id":s}).to_string() }, now).unwrap();
    let mut walked = Vec::new();
    for _ in 0..4 {
        let Some(w) = e.engine.next_wake() else { break };
        assert_eq!(e.engine.poll_timeout(), Some(w.at));
        walked.push(format!("{}@{}", w.why, w.at.as_secs()));
        e.handle_timeout(w.at);
        let _ = e.take_outputs();
    }
    // The job's first candle is due to close (plus the late-close grace);
    // the exchange never answers the connection, which times out; the
    // failed job is restarted after its backoff, and reconnects.
    assert_eq!(walked, ["close_due@1025", "upstream@1060", "supervisor@1061", "upstream@1061"]);
}

#[test]
fn typed_ids_are_plain_numbers_on_the_record() {
    // `ClientId`, `ConnId`, `RestId` are types in code, numbers in a journal.
    use klinegate::engine::{Input, Output, RestId};
    let input = Input::ClientText { client: ClientId(3), text: "x".into() };
    assert_eq!(serde_json::to_value(&input).unwrap(), json!({"type":"client_text","client":3,"text":"x"}));
    let back: Input = serde_json::from_value(json!({"type":"upstream_ping","conn":7})).unwrap();
    assert_eq!(back, Input::UpstreamPing { conn: ConnId(7) });
    let out = Output::RestRequest { id: RestId(9), market: klinegate::model::Market::Spot, path: "/p".into() };
    assert_eq!(serde_json::to_value(&out).unwrap()["id"], 9);
    assert_eq!(format!("conn={}", ConnId(7)), "conn=7", "logs keep the bare number");
}
