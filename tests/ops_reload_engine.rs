//! `Input::Reload` through the engine (#15 §3), deterministic: a pin added
//! starts its job, a pin removed becomes on-demand held by its subscribers
//! and is reaped after the idle TTL once they leave, and the input
//! round-trips through a journal line so a replay reloads at the same point.

use klinegate::cli::settings::Settings;
use klinegate::engine::reload::Reloadable;
use klinegate::engine::{ClientId, Engine, Input, Output};
use klinegate::replay::hosted::Hosted;
use klinegate::store::MemoryStore;
use klinegate::time::Timestamp;
use serde_json::{json, Value};

const BTC: &str = "binance:spot:BTC/USDT:1m";
const ETH: &str = "binance:spot:ETH/USDT:1m";
const T0: u64 = 1_700_000_000;

fn at(s: u64) -> Timestamp {
    Timestamp(s * 1_000_000_000)
}

fn engine() -> (Hosted<MemoryStore>, Reloadable) {
    let settings = Settings {
        pins: vec![BTC.into()],
        derived: String::new(),
        heal: false,
        idle_ttl_s: 60,
        upstream_silence_s: 100_000,
        stream_stall_s: 0,
        ..Settings::default()
    };
    let cfg = settings.to_engine_config().unwrap();
    let reloadable = Reloadable::of(&cfg);
    let mut h = Hosted::new(Engine::new(cfg, at(T0)), MemoryStore::new());
    h.handle(Input::Start, at(T0)).unwrap();
    exchange(&mut h, T0);
    (h, reloadable)
}

/// Plays the exchange: connections open, subscriptions are acknowledged.
/// Log lines are kept for the caller.
fn exchange(h: &mut Hosted<MemoryStore>, t: u64) -> Vec<String> {
    let mut logs = Vec::new();
    for _ in 0..10 {
        let outs = h.take_outputs();
        if outs.is_empty() {
            break;
        }
        for o in outs {
            match o {
                Output::UpstreamConnect { conn, .. } => h.handle(Input::UpstreamConnected { conn }, at(t)).unwrap(),
                Output::UpstreamSend { conn, text } => {
                    let req: Value = serde_json::from_str(&text).unwrap();
                    let ack = json!({"result": null, "id": req["id"]}).to_string();
                    h.handle(Input::UpstreamText { conn, text: ack }, at(t)).unwrap();
                }
                Output::Log { line, .. } => logs.push(line),
                _ => {}
            }
        }
    }
    logs
}

fn job(h: &Hosted<MemoryStore>, series: &str) -> Option<Value> {
    let state = h.engine.ingest_state();
    state["jobs"].as_array()?.iter().find(|j| j["series_id"] == series).cloned()
}

fn reload(h: &mut Hosted<MemoryStore>, base: &Reloadable, pins: &[&str], t: u64) {
    let settings = Reloadable { pins: pins.iter().map(|p| p.to_string()).collect(), ..base.clone() };
    h.handle(Input::Reload { settings }, at(t)).unwrap();
}

fn tick(h: &mut Hosted<MemoryStore>, t: u64) {
    h.handle_timeout(at(t));
    exchange(h, t);
}

#[test]
fn a_pin_swapped_on_reload_starts_one_job_and_reaps_the_other_after_the_ttl() {
    let (mut h, base) = engine();
    assert_eq!(job(&h, BTC).unwrap()["pinned"], true);
    reload(&mut h, &base, &[ETH], T0 + 10);
    let logs: Vec<String> =
        exchange(&mut h, T0 + 10).into_iter().filter(|l| l.starts_with("config_reloaded")).collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].contains(&format!("pins_added=\"{ETH}\" pins_removed=\"{BTC}\"")), "{}", logs[0]);
    assert_eq!(job(&h, ETH).unwrap()["pinned"], true);
    let btc = job(&h, BTC).unwrap();
    assert_eq!((btc["pinned"].clone(), btc["refcount"].clone()), (json!(false), json!(0)));
    assert_eq!(h.engine.whitelist(), vec![ETH.to_string()]);
    tick(&mut h, T0 + 69);
    assert!(job(&h, BTC).is_some(), "kept until the TTL has run");
    tick(&mut h, T0 + 70);
    assert!(job(&h, BTC).is_none(), "reaped 60 s after the reload");
    assert!(job(&h, ETH).is_some());
}

#[test]
fn a_removed_pin_with_a_subscriber_is_held_until_it_leaves() {
    let (mut h, base) = engine();
    h.handle(Input::ClientConnected { client: ClientId(1) }, at(T0 + 1)).unwrap();
    let sub = json!({"type": "subscribe", "series_id": BTC}).to_string();
    h.handle(Input::ClientText { client: ClientId(1), text: sub }, at(T0 + 1)).unwrap();
    exchange(&mut h, T0 + 1);
    reload(&mut h, &base, &[], T0 + 2);
    assert_eq!(job(&h, BTC).unwrap()["refcount"], 1);
    tick(&mut h, T0 + 500);
    assert!(job(&h, BTC).is_some(), "held by its subscriber");
    h.handle(Input::ClientDisconnected { client: ClientId(1) }, at(T0 + 600)).unwrap();
    exchange(&mut h, T0 + 600);
    tick(&mut h, T0 + 659);
    assert!(job(&h, BTC).is_some());
    tick(&mut h, T0 + 660);
    assert!(job(&h, BTC).is_none(), "reaped a TTL after its last subscriber left");
}

#[test]
fn the_reload_input_round_trips_through_a_journal_line_and_replays_the_same() {
    let (_, base) = engine();
    let input = Input::Reload { settings: Reloadable { pins: vec![ETH.into()], max_ondemand_jobs: 3, ..base.clone() } };
    let line = serde_json::to_string(&input).unwrap();
    assert!(line.starts_with("{\"type\":\"reload\""), "{line}");
    assert_eq!(serde_json::from_str::<Input>(&line).unwrap(), input);
    let run = || {
        let (mut h, _) = engine();
        h.handle(input.clone(), at(T0 + 5)).unwrap();
        tick(&mut h, T0 + 100);
        format!("{:?}", h.take_outputs())
    };
    assert_eq!(run(), run());
}
