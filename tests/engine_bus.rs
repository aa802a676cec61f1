//! The core's bus behaviour by role (issue #13), on a memory store carried
//! out at once: a read node publishes bus closes once, in order, without
//! writing, and reads a hole from the store on a resync; an ingest node is a
//! standby until it leads and puts on the bus only what is stored; a hybrid
//! node has no bus.

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, Engine, Input, Output};
use klinegate::model::Candle;
use klinegate::replay::hosted::Hosted;
use klinegate::store::{MemoryStore, SeriesBatch, Store};
use klinegate::time::Timestamp;
use serde_json::Value;

const S1: &str = "binance:spot:BTC/USDT:1m";

fn engine(role: &str) -> Hosted<MemoryStore> {
    engine_with(Settings { pins: vec![S1.into()], role: role.into(), heal: false, ..Default::default() })
}

fn engine_with(settings: Settings) -> Hosted<MemoryStore> {
    let cfg = settings.to_engine_config().unwrap();
    Hosted::new(Engine::new(cfg, Timestamp::from_secs(10_000)), MemoryStore::new())
}

fn c(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 }
}

fn now() -> Timestamp {
    Timestamp::from_secs(10_000)
}

/// Closed candle times the client was sent since the last call.
fn closed(h: &mut Hosted<MemoryStore>, client: u64) -> Vec<i64> {
    let _ = h.take_outputs();
    let mut frames = Vec::new();
    klinegate::replay::hosted::write_all(&mut h.engine, ClientId(client), &mut frames);
    let _ = h.take_outputs();
    let mut times = Vec::new();
    for f in frames {
        let v: Value = serde_json::from_slice(&f).unwrap();
        match v["type"].as_str() {
            Some("candle_closed") => times.push(v["candle"]["candle_time"].as_i64().unwrap()),
            Some("candles_batch") => {
                times.extend(v["candles"].as_array().unwrap().iter().map(|c| c["candle_time"].as_i64().unwrap()))
            }
            _ => {}
        }
    }
    times
}

fn bus_closed(h: &mut Hosted<MemoryStore>, times: &[i64]) {
    let candles = times.iter().map(|t| c(*t)).collect();
    h.handle(Input::BusClosed { series_id: S1.into(), candles, entry: "1-0".into() }, now()).unwrap();
}

#[test]
fn a_read_node_publishes_bus_closes_once_in_order_and_reads_a_hole_from_the_store() {
    let mut h = engine("read");
    h.store.write_batches(&[SeriesBatch { series_id: S1.into(), candles: vec![c(60), c(120)] }]).unwrap();
    h.handle(Input::Start, now()).unwrap();
    assert!(!h.take_outputs().iter().any(|o| matches!(o, Output::UpstreamConnect { .. })), "no exchange connection");
    h.handle(Input::ClientConnected { client: ClientId(1) }, now()).unwrap();
    let sub = format!(r#"{{"type":"subscribe","series_id":"{S1}","supports_batch":false}}"#);
    h.handle(Input::ClientText { client: ClientId(1), text: sub }, now()).unwrap();
    assert_eq!(closed(&mut h, 1), vec![60, 120], "catch-up from the shared store");
    bus_closed(&mut h, &[120, 180]);
    assert_eq!(closed(&mut h, 1), vec![180], "what was delivered is not sent again");
    bus_closed(&mut h, &[180]);
    assert_eq!(closed(&mut h, 1), Vec::<i64>::new(), "a resent entry is dropped");
    assert_eq!(h.engine.counters().bus_closed_dropped, 1, "the series-level drop (the client cursor drops the rest)");
    // The leader stored 240 and 300, the bus lost them: a resync reads them.
    h.store.write_batches(&[SeriesBatch { series_id: S1.into(), candles: vec![c(180), c(240), c(300)] }]).unwrap();
    h.handle(Input::BusResync { reason: "stream_trimmed".into() }, now()).unwrap();
    assert_eq!(closed(&mut h, 1), vec![240, 300], "the hole, from the store, no duplicate");
    bus_closed(&mut h, &[300, 360]);
    assert_eq!(closed(&mut h, 1), vec![360]);
    assert!(h.store.read_tail(S1, 10).unwrap().iter().all(|c| c.candle_time <= 300), "a read node never writes");
}

#[test]
fn an_ingest_node_is_a_standby_until_it_leads_and_publishes_only_what_is_stored() {
    let mut h = engine("ingest");
    h.handle(Input::Start, now()).unwrap();
    assert!(!h.take_outputs().iter().any(|o| matches!(o, Output::UpstreamConnect { .. })), "a standby starts no job");
    h.handle(Input::BusLeader { fence: 4 }, now()).unwrap();
    assert!(h.take_outputs().iter().any(|o| matches!(o, Output::UpstreamConnect { .. })), "the leader ingests");
    // A tool's closes: stored first (the write is carried out at once here),
    // then published to clients and the bus.
    h.engine.handle(Input::IngestClosed { request: 1, series_id: S1.into(), candles: vec![c(60), c(120)] }, now());
    let before: Vec<Output> = std::iter::from_fn(|| h.engine.poll_output()).collect();
    assert!(before.iter().any(|o| matches!(o, Output::Persist { .. })));
    assert!(!before.iter().any(|o| matches!(o, Output::BusPublish { .. })), "nothing on the bus before it is stored");
    for o in &before {
        klinegate::replay::hosted::carry(&mut h.engine, &mut h.store, o, now());
    }
    let after = h.take_outputs();
    let published: Vec<_> = after
        .iter()
        .filter_map(|o| match o {
            Output::BusPublish { series_id, candles } => Some((series_id.clone(), candles.iter().map(|c| c.candle_time).collect::<Vec<_>>())),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![(S1.to_string(), vec![60, 120])]);
}

#[test]
fn a_hybrid_node_has_no_bus() {
    let mut h = engine("hybrid");
    h.handle(Input::Start, now()).unwrap();
    h.handle(Input::IngestClosed { request: 1, series_id: S1.into(), candles: vec![c(60)] }, now()).unwrap();
    h.handle(Input::BusClosed { series_id: S1.into(), candles: vec![c(120)], entry: "1-0".into() }, now()).unwrap();
    let out = h.take_outputs();
    assert!(!out.iter().any(|o| matches!(o, Output::BusPublish { .. } | Output::BusForming { .. })));
    assert_eq!(h.engine.counters().bus_closed_in, 0, "bus input is ignored outside the read role");
}

#[test]
fn remote_demand_starts_a_job_counts_per_node_and_capacity_goes_back_to_the_read_node() {
    let settings = Settings { pins: vec![], role: "ingest".into(), heal: false, max_ondemand_jobs: 1, ..Default::default() };
    let mut h = engine_with(settings);
    h.handle(Input::Start, now()).unwrap();
    h.handle(Input::BusLeader { fence: 1 }, now()).unwrap();
    let _ = h.take_outputs();
    let eth = "binance:spot:ETH/USDT:1m";
    let want = |node: &str, s: &str, wanted: bool| Input::RemoteDemand { node: node.into(), series_id: s.into(), wanted };
    h.handle(want("r1", eth, true), now()).unwrap();
    h.handle(want("r2", eth, true), now()).unwrap();
    h.handle(want("r2", eth, true), now()).unwrap();
    assert!(h.take_outputs().iter().any(|o| matches!(o, Output::UpstreamConnect { .. })), "the job started");
    assert_eq!(h.engine.job_count(), 1);
    h.handle(want("r3", "binance:spot:SOL/USDT:1m", true), now()).unwrap();
    let refused: Vec<Output> = h.take_outputs().into_iter().filter(|o| matches!(o, Output::BusRefused { .. })).collect();
    assert_eq!(
        refused,
        vec![Output::BusRefused { node: "r3".into(), series_id: "binance:spot:SOL/USDT:1m".into(), reason: "capacity".into() }]
    );
    // Both nodes release it: the job idles, and is reaped after the idle TTL.
    h.handle(want("r1", eth, false), now()).unwrap();
    h.handle(want("r2", eth, false), now()).unwrap();
    h.handle_timeout(Timestamp::from_secs(10_000 + 61));
    assert_eq!(h.engine.job_count(), 0, "reaped once no node wants it");
}

#[test]
fn a_read_node_turns_a_refusal_into_the_capacity_error_and_tracks_its_demand() {
    let mut h = engine("read");
    h.handle(Input::ClientConnected { client: ClientId(7) }, now()).unwrap();
    let sol = "binance:spot:SOL/USDT:1m";
    h.handle(Input::ClientText { client: ClientId(7), text: format!(r#"{{"type":"subscribe","series_id":"{sol}"}}"#) }, now()).unwrap();
    let demand: Vec<Output> = h.take_outputs().into_iter().filter(|o| matches!(o, Output::BusDemand { .. })).collect();
    assert_eq!(demand, vec![Output::BusDemand { series_id: sol.into(), wanted: true }]);
    h.handle(Input::BusRefused { series_id: sol.into(), reason: "capacity".into() }, now()).unwrap();
    let out = h.take_outputs();
    assert!(out.contains(&Output::BusDemand { series_id: sol.into(), wanted: false }), "the demand is released");
    let mut frames = Vec::new();
    klinegate::replay::hosted::write_all(&mut h.engine, ClientId(7), &mut frames);
    let errors: Vec<Value> = frames.iter().map(|f| serde_json::from_slice::<Value>(f).unwrap()).filter(|v| v["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0]["code"].as_str(), errors[0]["series_id"].as_str()), (Some("capacity"), Some(sol)));
    assert_eq!(h.engine.subscription_count(), 0);
}

#[test]
fn a_standby_s_own_subscribers_get_their_jobs_when_it_leads() {
    let mut h = engine_with(Settings { pins: vec![], role: "ingest".into(), heal: false, ..Default::default() });
    h.handle(Input::Start, now()).unwrap();
    h.handle(Input::ClientConnected { client: ClientId(3) }, now()).unwrap();
    let eth = "binance:spot:ETH/USDT:1m";
    h.handle(Input::ClientText { client: ClientId(3), text: format!(r#"{{"type":"subscribe","series_id":"{eth}"}}"#) }, now()).unwrap();
    let _ = h.take_outputs();
    assert_eq!(h.engine.job_count(), 0, "a standby starts no job");
    h.handle(Input::BusLeader { fence: 2 }, now()).unwrap();
    assert_eq!(h.engine.job_count(), 1, "its subscriber's job starts once it leads");
    h.handle(Input::ClientDisconnected { client: ClientId(3) }, now()).unwrap();
    h.handle_timeout(Timestamp::from_secs(10_000 + 61));
    assert_eq!(h.engine.job_count(), 0, "and is reaped once the subscriber left");
}
